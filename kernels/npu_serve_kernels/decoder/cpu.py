"""The C++ decoder layer (`cpu_decoder.h`): build on first use, hand out its classes.

`available()` never raises: where the extension cannot be built (no compiler, no headers) it logs a
warning once and returns False, and the model runner keeps transformers' own forward.
"""

from __future__ import annotations

from npu_serve_kernels.cpu_ops import EXT as _EXT


def available() -> bool:
    """True when the extension is built (building it now if needed)."""
    return _EXT.available()


def module():
    """The compiled module: `Linear`, `DecoderLayer`, `rms_norm` (see cpu_decoder.h)."""
    return _EXT.load()
