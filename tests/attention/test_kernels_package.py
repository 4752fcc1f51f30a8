"""The kernels folder installs as npu_serve_kernels and never as a top-level `kernels` package,
whose name belongs to PyPI's `kernels` (transformers imports that one when it is installed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(code: str, cwd: Path, pythonpath: str | None = None) -> str:
    env = {"PATH": "/usr/bin:/bin"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_installed_as_npu_serve_kernels_from_anywhere(tmp_path):
    code = ("import npu_serve_kernels.paged_attention.reference as r, importlib.util, json; "
            "s = importlib.util.find_spec('kernels'); "
            "print(r.__file__); "
            "print(json.dumps(None if s is None else [s.origin, list(s.submodule_search_locations or [])]))")
    file, kernels_spec = _run(code, tmp_path).splitlines()
    assert Path(file).is_relative_to(REPO / "kernels" / "npu_serve_kernels")
    # A top-level `kernels` is either absent or PyPI's (transformers 5.25 and later depend on it), never
    # our folder, neither as a package nor as a namespace portion.
    spec = json.loads(kernels_spec)
    if spec is not None:
        origin, locations = spec
        ours = REPO / "kernels"
        assert origin is not None and not Path(origin).is_relative_to(ours), spec
        assert all(not Path(loc).is_relative_to(ours) for loc in locations), spec


def test_repo_on_sys_path_does_not_shadow_a_real_kernels_package(tmp_path):
    # kernels/ has no __init__.py, so with the repo root on sys.path (cwd, PYTHONPATH) it is at most an
    # empty namespace portion, and any regular `kernels` package later on the path wins.
    assert not (REPO / "kernels" / "__init__.py").exists()
    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("WHO = 'pypi'\n")
    out = _run("import kernels; print(kernels.WHO)", tmp_path, f"{REPO}:{tmp_path / 'site'}")
    assert out == "pypi"
