"""_cpu_build: every process builds our kernels with the same ninja (the pip package's), whatever PATH says."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from npu_serve_kernels import _cpu_build

ninja = pytest.importorskip("ninja", reason="the [dev] extras install the pip ninja")
OURS = os.path.realpath(os.path.join(ninja.BIN_DIR, "ninja"))


def test_a_system_ninja_earlier_on_path_does_not_build_our_kernels(tmp_path, monkeypatch):
    # Debian's ninja 1.11 and pip's 1.13 disagree about .ninja_log: a process that used the other one
    # rebuilt the kernels from scratch.
    other = tmp_path / "ninja"
    other.write_text("#!/bin/sh\necho 1.11.1\n")
    other.chmod(other.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin:/bin")
    assert shutil.which("ninja") == str(other)
    _cpu_build._ensure_ninja_on_path()
    assert os.path.realpath(shutil.which("ninja")) == OURS


def test_path_is_left_alone_when_ours_is_found_first(monkeypatch):
    path = f"{ninja.BIN_DIR}{os.pathsep}/usr/bin:/bin"
    monkeypatch.setenv("PATH", path)
    _cpu_build._ensure_ninja_on_path()
    assert os.environ["PATH"] == path


def test_no_ninja_on_path_at_all(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    _cpu_build._ensure_ninja_on_path()
    assert os.path.realpath(shutil.which("ninja")) == OURS
