"""guidellm (PyPI; the benchmark tool the vLLM project recommends), unchanged, against a live
server: its chat and text-completions benchmarks finish with zero errors, and the token counts it
reports are the usage we sent.

guidellm lives in its own venv (it wants an unpinned torch and other pins than ours):
`.venv-tools/bin/guidellm`, which ./scripts/test creates (scripts/_setup.sh `setup_tools_venv`),
or the executable named by NPU_SERVE_GUIDELLM. Without it the tests skip, except under CI=true,
where a missing tool is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from npu_serve.server.app import build_app
from npu_serve.server.config import ServerConfig
from tests.e2e.conftest import LiveServer

REPO = Path(__file__).resolve().parents[2]
REQUESTS = 4  # asked of each benchmark, at concurrency 2


def guidellm_executable() -> str:
    path = os.environ.get("NPU_SERVE_GUIDELLM") or str(REPO / ".venv-tools" / "bin" / "guidellm")
    if not os.access(path, os.X_OK):
        message = f"guidellm not found at {path}: ./scripts/test creates .venv-tools (scripts/_setup.sh)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


class UsageRecorder:
    """ASGI wrapper in front of the real app: keeps the status of every response per path, and the
    `usage` of every completion response by response id (for a stream, the last one: the final
    usage chunk)."""

    def __init__(self, app):
        self.app = app
        self.state = app.state
        self.usage: dict[str, dict] = {}
        self.statuses: dict[str, list[int]] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body = bytearray()

        async def tee(message):
            if message["type"] == "http.response.start":
                self.statuses.setdefault(scope["path"], []).append(message["status"])
            if message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                if not message.get("more_body"):
                    self._record(body.decode("utf-8", errors="replace"))
            await send(message)

        await self.app(scope, receive, tee)

    def _record(self, text: str) -> None:
        payloads = [ln[len("data: "):] for ln in text.splitlines() if ln.startswith("data: ")] or [text]
        for p in payloads:
            try:
                obj = json.loads(p)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and obj.get("id") and obj.get("usage"):
                self.usage[obj["id"]] = obj["usage"]


@pytest.fixture(scope="module")
def recorded_server(tiny_server):
    recorder = UsageRecorder(build_app(tiny_server.engine, ServerConfig(served_model_name="tiny", warmup=False)))
    server = LiveServer(recorder).start()
    yield server, recorder
    server.stop()


def guidellm_command(exe: str, url: str, tokenizer: str, request_format: str, out: Path) -> list[str]:
    return [exe, "run",
            "--backend", f"kind=openai_http,target={url}/v1,model=tiny,request_format={request_format}",
            "--profile", "kind=concurrent,streams=2",
            "--constraint", f"kind=max_requests,count={REQUESTS}",
            "--data", "kind=synthetic_text,prompt_tokens=24,output_tokens=6,output_tokens_stdev=3,"
                      "output_tokens_min=2,output_tokens_max=12",
            "--tokenizer", f"kind=hf_auto,model={tokenizer}",  # a local directory: no hub download
            "--output", f"kind=json,path={out}",
            "--disable-console"]


@pytest.fixture(scope="module")
def guidellm_reports(recorded_server, tiny_llama_dir, tmp_path_factory):
    """Both benchmarks, run at the same time (each spends most of its time starting up)."""
    exe = guidellm_executable()
    server, _ = recorded_server
    out_dir = tmp_path_factory.mktemp("guidellm")
    # Offline: the tokenizer is the tiny model's directory. One worker process runs both streams
    # (guidellm spawns a fresh interpreter per worker; one is enough at concurrency 2).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "GUIDELLM__MAX_WORKER_PROCESSES": "1"}
    runs = {}
    for name, fmt in (("chat", "/v1/chat/completions"), ("completions", "/v1/completions")):
        out = out_dir / f"{name}.json"
        log = open(out_dir / f"{name}.log", "w")
        runs[name] = (subprocess.Popen(guidellm_command(exe, server.url, str(tiny_llama_dir), fmt, out), env=env,
                                       cwd=out_dir, stdout=log, stderr=subprocess.STDOUT), out, log)
    reports = {}
    for name, (proc, out, log) in runs.items():
        try:
            rc = proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
        text = (out_dir / f"{name}.log").read_text()[-4000:]
        assert rc == 0, f"guidellm {name} exited {rc}:\n{text}"
        reports[name] = json.loads(out.read_text())
    return reports


@pytest.mark.parametrize("name,path,cap_field", [("chat", "/v1/chat/completions", "max_completion_tokens"),
                                                 ("completions", "/v1/completions", "max_tokens")])
def test_guidellm_benchmark_has_no_errors_and_reports_our_usage(recorded_server, guidellm_reports, name, path,
                                                               cap_field):
    _, recorder = recorded_server
    bench = guidellm_reports[name]["benchmarks"][0]
    reqs = bench["requests"]
    # guidellm may leave a request out of its report (its phase bookkeeping), never as an error;
    # every request it sent was answered 200.
    totals = bench["metrics"]["request_totals"]
    assert totals["errored"] == totals["incomplete"] == 0 and totals["successful"] == totals["total"] >= 2, totals
    assert reqs["errored"] == [] and reqs["incomplete"] == [] and len(reqs["successful"]) == totals["successful"]
    statuses = recorder.statuses[path]
    assert set(statuses) == {200} and len(statuses) >= totals["successful"], statuses
    outputs = []
    for r in reqs["successful"]:
        body = json.loads(r["request_args"])["body"]
        assert cap_field in body  # chat: the field that used to be a 400
        usage = recorder.usage[r["response_id"]]
        assert r["output_metrics"]["text_tokens"] == usage["completion_tokens"] == body[cap_field]
        assert r["input_metrics"]["text_tokens"] == usage["prompt_tokens"]
        outputs.append(usage["completion_tokens"])
    assert bench["metrics"]["output_token_count"]["successful"]["total_sum"] == sum(outputs)
