"""The one extension module that holds npu-serve's CPU kernels (`cpu_ops.cpp`), built on first use.

linear/cpu.py, paged_attention/cpu.py and decoder/cpu.py each hand out their part of it; a failed
build (no compiler, no headers) leaves all three unavailable and every caller on its torch path.
"""

from __future__ import annotations

import glob
import os

from npu_serve_kernels._cpu_build import CpuExtension

_HERE = os.path.dirname(os.path.abspath(__file__))

EXT = CpuExtension(
    "npu_serve_cpu_ops", os.path.join(_HERE, "cpu_ops.cpp"), "npu-serve's CPU kernels",
    # Every header of the package, so that a new header cannot be left out of the module's hash.
    depends=tuple(sorted(glob.glob(os.path.join(_HERE, "**", "*.h"), recursive=True))),
)
