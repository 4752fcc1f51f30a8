"""The CPU KV cache is advised onto 2 MiB pages before it is zeroed (runtime_env.advise_huge_pages):
the kernel marks the cache's mapping for transparent huge pages ("hg" in /proc/self/smaps), the cache
is still all zeros, and NPU_SERVE_HUGE_PAGES=0 leaves the mapping alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from npu_serve import runtime_env
from npu_serve.worker.kv_cache import KVCacheSpec, LayerKVShape, allocate_kv_caches

THP = "/sys/kernel/mm/transparent_hugepage/enabled"
pytestmark = pytest.mark.skipif(not (sys.platform.startswith("linux") and os.path.exists(THP)),
                                reason="Linux with transparent huge pages only")


def _vm_flags(address: int) -> set[str]:
    """The VmFlags of the mapping of /proc/self/smaps that holds `address`."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:  # a mapping's first line: "start-end perms ..."
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "VmFlags:":
                return set(line.split()[1:])
    raise AssertionError(f"no mapping holds {address:#x}")


def _caches():
    # 7000 blocks x 16 tokens x 3 heads x 64 x 2 bytes: 43 MB a tensor, past glibc's heap threshold,
    # so each tensor is a mapping of its own.
    spec = KVCacheSpec(layers=(LayerKVShape(3, 64, 64),), dtype=torch.bfloat16, block_size=16)
    return allocate_kv_caches(spec, 7000, torch.device("cpu"))


def test_cpu_cache_is_advised_onto_huge_pages_and_zeroed(monkeypatch):
    monkeypatch.delenv("NPU_SERVE_HUGE_PAGES", raising=False)
    (k, v), = _caches()
    for t in (k, v):
        middle = t.data_ptr() + t.numel() * t.element_size() // 2
        assert "hg" in _vm_flags(middle)
        assert not t.any()


def test_opt_out_leaves_the_mapping_alone():
    """In a fresh process: in this one, an earlier test's advised cache may have gone back to malloc's
    heap still marked, and a later tensor there keeps the mark (harmless, but not the opt-out's doing)."""
    code = ("from tests.worker.test_kv_cache_huge_pages import _caches, _vm_flags\n"
            "(k, _), = _caches()\n"
            "print('hg' in _vm_flags(k.data_ptr() + k.numel()))")
    env = {**os.environ, "NPU_SERVE_HUGE_PAGES": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.stdout.split()[-1] == "False"


def test_only_whole_huge_pages_inside_the_range_are_advised(monkeypatch):
    monkeypatch.delenv("NPU_SERVE_HUGE_PAGES", raising=False)
    page = runtime_env.HUGE_PAGE_BYTES
    assert not runtime_env.advise_huge_pages(page + 1, page)  # no whole 2 MiB page inside
    buf = torch.empty(4 * page, dtype=torch.uint8)
    assert runtime_env.advise_huge_pages(buf.data_ptr(), buf.numel())
    assert "hg" in _vm_flags(buf.data_ptr() + 2 * page)
