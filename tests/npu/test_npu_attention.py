"""NpuAttentionBackend on a real Ascend NPU against the torch reference (skipped elsewhere).

The same batches as the CPU contract tests (tests/attention/test_npu_contract.py), but the ops are
torch_npu's own: this is where a wrong reading of an op's conventions would show.
"""

from __future__ import annotations

import pytest
import torch

from npu_serve.device.npu import NpuPlatform

pytestmark = pytest.mark.npu
if not NpuPlatform.is_available():
    pytest.skip("needs a real Ascend NPU with torch_npu", allow_module_level=True)

from npu_serve.attention.npu import NpuAttentionBackend  # noqa: E402
from npu_serve_kernels.paged_attention.reference import paged_attention_ref  # noqa: E402
from npu_serve_kernels.reshape_and_cache.reference import reshape_and_cache_ref  # noqa: E402
from tests.attention.paged_cases import make_case  # noqa: E402

CASES = {
    "mixed": ([1, 1, 30, 7], [5, 200, 180, 7], 2),
    "decode": ([1, 1, 1, 1], [1, 127, 129, 300], 4),
    "prefill": ([64, 300], [64, 300], 0),
    "long-chunk": ([1, 2049], [3000, 2300], 1),  # query longer than the 2048 mask
}


@pytest.mark.parametrize("write_op", ["scatter", "atb"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(CASES))
def test_backend_matches_reference_on_npu(name, dtype, write_op):
    q_lens, seq_lens, num_decodes = CASES[name]
    case = make_case(q_lens, seq_lens, num_decodes, 8, 2, 128, 128, dtype, seed=5, device="npu")
    kv_cache = case.kv_cache.clone()
    out = NpuAttentionBackend(write_op).forward(case.query, case.key, case.value, kv_cache, case.meta, case.layer)
    torch.npu.synchronize()

    expected_cache = case.kv_cache.cpu()
    reshape_and_cache_ref(case.key.cpu(), case.value.cpu(), expected_cache, case.meta.slot_mapping.cpu())
    m = case.meta
    expected = paged_attention_ref(case.query.cpu(), expected_cache, m.block_tables.cpu(), m.query_start_loc_cpu,
                                   m.seq_lens_cpu, case.scale)
    assert torch.equal(kv_cache.cpu(), expected_cache)
    torch.testing.assert_close(out.cpu(), expected, atol=2e-2, rtol=2e-2)
