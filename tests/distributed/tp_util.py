"""Helpers for the tensor-parallel tests: the near-tie rule, and `npu-serve serve` as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

NEAR_TIE = 1e-4  # a token may differ between TP sizes only where the top-2 logit margin is below this
LOGPROB_TOL = 1e-5  # chosen tokens' logprobs agree this closely where the tokens agree (measured: <= 1e-6)


def margin(position: dict) -> float:
    """Top-1 minus top-2 logprob at one position (= the logit margin: log_softmax shifts both alike).
    `position` maps token id -> object with `.logprob`, or -> float (the HTTP API's top_logprobs)."""
    values = sorted((v if isinstance(v, float) else v.logprob for v in position.values()), reverse=True)
    return values[0] - values[1]


def compare(got_ids: list[int], got_lps: list[dict], want_ids: list[int], want_lps: list[dict], what: str) -> int:
    """Assert `got` equals `want` token for token, except from a first differing position where both
    runs saw a near-tie (then the sequences legitimately diverge). Returns 1 for a near-tie, else 0."""
    for j, (a, b) in enumerate(zip(got_ids, want_ids)):
        if a != b:
            m_want, m_got = margin(want_lps[j]), margin(got_lps[j])
            assert m_want < NEAR_TIE and m_got < NEAR_TIE, (
                f"{what}: token {j} differs ({a} != {b}) where the top-2 margin is {m_want:.2e} (reference) / "
                f"{m_got:.2e}: not a near-tie")
            return 1
        got_lp, want_lp = _lp(got_lps[j], a), _lp(want_lps[j], b)
        assert abs(got_lp - want_lp) < LOGPROB_TOL, f"{what}: token {j} logprob {got_lp} != {want_lp}"
    assert len(got_ids) == len(want_ids), f"{what}: {len(got_ids)} tokens != {len(want_ids)}"
    return 0


def _lp(position: dict, token):
    v = position[token]
    return v if isinstance(v, float) else v.logprob


class ServeProcess:
    """`python -m npu_serve.cli serve ...` with its output in a log file; auth off (empty key store dir)."""

    def __init__(self, args: list[str], tmp: Path, name: str):
        self.log_path = tmp / f"{name}.log"
        self.log = open(self.log_path, "w")
        env = dict(os.environ, NPU_SERVE_DATA=str(tmp / "data"), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "npu_serve.cli", "serve", *args], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)

    def text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.text()[-4000:]}")
            try:
                if requests.get(url + "/health", timeout=5).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):  # not listening yet; a loaded box
                pass
            time.sleep(0.2)
        raise AssertionError(f"not healthy within {timeout} s:\n{self.text()[-4000:]}")

    def spawned_ranks(self) -> list[int]:
        """Pids of the ranks this process spawned (torch.multiprocessing spawn children)."""
        pids = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"spawn_main" in cmd:
                    pids.append(int(pid))
        return pids

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (uvicorn drains, shuts the engine down, then re-raises the signal: -15 is a clean
        stop for a server process), SIGKILL if it does not go."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode
