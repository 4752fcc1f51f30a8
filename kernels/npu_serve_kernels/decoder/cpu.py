"""The C++ decoder layer (`cpu_decoder.cpp`): build on first use, hand out its classes.

`available()` never raises: where the extension cannot be built (no compiler, no headers) it logs a
warning once and returns False, and the model runner keeps transformers' own forward.
"""

from __future__ import annotations

import os

from npu_serve_kernels._cpu_build import CpuExtension

_HERE = os.path.dirname(os.path.abspath(__file__))
_EXT = CpuExtension("npu_serve_cpu_decoder", os.path.join(_HERE, "cpu_decoder.cpp"), "CPU decoder layer",
                    depends=tuple(os.path.join(_HERE, "..", f) for f in ("linear/cpu_gemv.h", "paged_attention/cpu_decode.h",
                                                                              "cpu_pool.h")))


def available() -> bool:
    """True when the extension is built (building it now if needed)."""
    return _EXT.available()


def module():
    """The compiled module: `Linear`, `DecoderLayer`, `rms_norm` (see cpu_decoder.cpp)."""
    return _EXT.load()
