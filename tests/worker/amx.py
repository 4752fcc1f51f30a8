"""What the tests of the AMX kernels share: the skip condition (the decoder extension, the linear
extension and AMX tiles on this CPU) and a fixture that routes the linears to the tiles for one test
and puts the previous variant back after it."""

from __future__ import annotations

import pytest
from npu_serve_kernels.decoder import cpu as decoder_kernels
from npu_serve_kernels.linear import cpu as gemv

needs_tiles = pytest.mark.skipif(
    not (decoder_kernels.available() and gemv.available() and gemv.amx_available()),
    reason="no AMX tiles here (these kernels run on them only)")


@pytest.fixture
def amx():
    before = gemv.variant()
    gemv.set_variant("amx")
    yield
    gemv.set_variant(before)
