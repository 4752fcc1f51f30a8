"""Attention tests run on NPU_SERVE_TEST_DEVICE (default cpu). On cpu the Triton kernels run under
the interpreter, which triton reads from TRITON_INTERPRET when a kernel is defined: set it here, at
collection, before any test imports the kernel modules."""

from __future__ import annotations

import os

if os.environ.get("NPU_SERVE_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
