"""TLS with a self-signed certificate made here and the official openai client; the request log:
one line per finished request with the key's public id, never a key, no text unless --log-requests."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl

import httpx
import openai
import pytest
import requests

from npu_serve.server.keys import KeyStore
from tests.e2e.conftest import LiveServer

DIRECT_KEY = "sk-never-log-me-0123456789abcdef"
PROMPT = "A prompt whose text must stay out of the logs"


def self_signed(tmp_path):
    """A key and a certificate for 127.0.0.1 (subjectAltName IP), valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    key_file, cert_file = tmp_path / "key.pem", tmp_path / "cert.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(key_file), str(cert_file)


class TlsServer(LiveServer):
    def __init__(self, app, key_file, cert_file, **kw):
        super().__init__(app, **kw)
        self.server.config.ssl_keyfile, self.server.config.ssl_certfile = key_file, cert_file
        self.url = f"https://127.0.0.1:{self.port}"
        self.cert = cert_file

    def start(self, timeout: float = 180.0):
        self.thread.start()
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=2, verify=self.cert).status_code == 200:
                    return self
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.1)
        raise TimeoutError("TLS server did not become healthy")


def engine_factory(model_dir):
    from npu_serve import AsyncEngine

    return lambda: AsyncEngine(model=str(model_dir), device="cpu", dtype="float32", max_model_len=256,
                               num_kv_blocks=64)


def test_tls_with_the_openai_client(tiny_llama_dir, tmp_path):
    from npu_serve.server.app import build_app
    from npu_serve.server.config import ServerConfig

    key_file, cert_file = self_signed(tmp_path)
    app = build_app(engine_factory(tiny_llama_dir), ServerConfig(served_model_name="tiny", api_keys=(DIRECT_KEY,)))
    server = TlsServer(app, key_file, cert_file).start()
    try:
        client = openai.OpenAI(api_key=DIRECT_KEY, base_url=server.url + "/v1",
                               http_client=httpx.Client(verify=ssl.create_default_context(cafile=cert_file)))
        out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                             temperature=0)
        assert out.choices[0].finish_reason in ("length", "stop") and out.usage.completion_tokens >= 1
        chunks = list(client.completions.create(model="tiny", prompt="hi", max_tokens=3, stream=True, temperature=0))
        assert chunks[-1].choices[0].finish_reason in ("length", "stop")
        # An unverified client is refused by TLS; plain HTTP on the TLS port gets no HTTP answer.
        with pytest.raises(openai.APIConnectionError):
            openai.OpenAI(api_key=DIRECT_KEY, base_url=server.url + "/v1", max_retries=0).models.list()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{server.port}/health", timeout=5)
    finally:
        server.stop()


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def text(self) -> str:
        out = []
        for r in self.records:
            out.append(r.getMessage())
            if r.exc_info:
                out.append(logging.Formatter().formatException(r.exc_info))
        return "\n".join(out)


@pytest.fixture
def captured():
    """Every log record of the process while the test runs, uvicorn's too (its loggers do not
    propagate to the root; `attach` is called again after uvicorn configured them)."""
    handler = Capture()
    names = ["", "uvicorn", "uvicorn.access", "uvicorn.error"]
    saved = {n: logging.getLogger(n).level for n in names}

    def attach():
        for n in names:
            log = logging.getLogger(n)
            if handler not in log.handlers:
                log.addHandler(handler)
            log.setLevel(logging.DEBUG)

    handler.attach = attach
    attach()
    yield handler
    for n, level in saved.items():
        logging.getLogger(n).removeHandler(handler)
        logging.getLogger(n).setLevel(level)


def exercise(server, keys):
    """Requests of every kind, with good and bad keys."""
    good = {"Authorization": f"Bearer {keys[0]}"}
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 3, "temperature": 0, "ignore_eos": True}
    assert requests.post(server.url + "/v1/completions", json=body, headers=good, timeout=60).status_code == 200
    stream = {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 3, "stream": True,
              "ignore_eos": True}
    for key in keys:
        r = requests.post(server.url + "/v1/chat/completions", json=stream, headers={"Authorization": f"Bearer {key}"},
                          timeout=60)
        assert r.status_code == 200
    for bad in (keys[0] + "x", "sk-wrong"):
        r = requests.post(server.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {bad}"},
                          timeout=60)
        assert r.status_code == 401
    assert requests.post(server.url + "/v1/completions", json={**body, "top_p": 9}, headers=good,
                         timeout=60).status_code == 400
    assert requests.get(server.url + "/v1/models", headers=good, timeout=60).status_code == 200
    assert requests.get(server.url + "/metrics", timeout=60).status_code == 200


@pytest.mark.parametrize("log_requests", [False, True])
def test_request_log_lines_and_no_key_in_any_log(tiny_llama_dir, tmp_path, captured, log_requests):
    from npu_serve.server.app import build_app
    from npu_serve.server.config import ServerConfig

    db = tmp_path / "keys.db"
    db_key = KeyStore(db).create("ops", "log test")
    config = ServerConfig(served_model_name="tiny", keys_db=str(db), api_keys=(DIRECT_KEY,), log_requests=log_requests)
    server = LiveServer(build_app(engine_factory(tiny_llama_dir), config))
    captured.attach()
    server.start()
    try:
        exercise(server, [DIRECT_KEY, db_key])
    finally:
        server.stop()
    text = captured.text()
    assert any(r.name == "uvicorn.access" for r in captured.records)  # the capture sees uvicorn's lines too
    # The secret part is everything after "nps-<id>-" (token_urlsafe may itself contain "-").
    for secret in (DIRECT_KEY, db_key, db_key.split("-", 2)[2]):
        assert secret not in text
    finished = [r.getMessage() for r in captured.records if r.name == "npu_serve.requests"
                and r.getMessage().startswith("finished ")]
    assert len(finished) == 3, finished  # one per request that reached the engine
    public_id = "-".join(db_key.split("-", 2)[:2])
    assert any("key=api-key-1" in line for line in finished) and any(f"key={public_id}" in line for line in finished)
    for line in finished:
        for field in ("id=", "model=tiny", "prompt_tokens=", "completion_tokens=3", "ttft=", "e2e=",
                      "finish_reason="):
            assert field in line, (field, line)
    assert (PROMPT in text) is log_requests
