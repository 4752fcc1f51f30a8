"""The one error the benchmark raises for a bad argument, file or server answer: the CLI prints its
message (which names what to fix) and exits 2, without a traceback."""

from __future__ import annotations

from npu_serve.errors import NpuServeError


class BenchError(NpuServeError):
    """A benchmark cannot run as asked; the message says why and what to change."""
