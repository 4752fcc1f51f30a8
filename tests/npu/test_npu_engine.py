"""The engine on npu:0 against the same engine on the CPU: greedy tokens of the default model (real
weights, so no near-ties) for prompts that mix a long shared prefix (prefix-cache hits), a short prompt
and one longer than the 2048x2048 mask, through chunked prefill. bf16 on the NPU, float32 on the CPU:
the first tokens must agree."""

from __future__ import annotations

import pytest

from npu_serve import LLM, SamplingParams

FIRST_TOKENS = 8


@pytest.fixture(scope="module")
def prompts(request):
    import os

    if os.environ.get("NPU_SERVE_TEST_SKIP_DEFAULT_MODEL"):
        pytest.skip("the default model is not available on this machine (NPU_SERVE_TEST_SKIP_DEFAULT_MODEL)")
    from npu_serve.models import default_model_dir

    path = str(default_model_dir())
    shared = "The history of the Ascend processor family begins with a simple question about compute. " * 12
    texts = [shared + "Summarise it in one sentence:", shared + "Name three uses:", "The capital of France is",
             "Count slowly: " + " ".join(str(i) for i in range(700))]
    return path, texts


def test_greedy_on_npu_matches_cpu(npu, prompts):
    path, texts = prompts
    params = SamplingParams(temperature=0, max_tokens=FIRST_TOKENS, ignore_eos=True)
    on_npu = LLM(path, device="npu", max_num_batched_tokens=1024, max_model_len=4096)
    npu_out = [o.outputs[0].token_ids for o in on_npu.generate(texts, params)]
    assert any(len(on_npu.tokenizer.encode(t)) > 2048 for t in texts)
    del on_npu
    on_cpu = LLM(path, device="cpu", dtype="float32", max_num_batched_tokens=1024, max_model_len=4096)
    cpu_out = [o.outputs[0].token_ids for o in on_cpu.generate(texts, params)]
    for i, (a, b) in enumerate(zip(npu_out, cpu_out)):
        assert a == b, f"prompt {i}: npu {a} vs cpu {b}"
