"""The C++ decoder layers (npu_serve/worker/fast_decoder.py, kernels/npu_serve_kernels/decoder/):
bit-identical to transformers' forward at every step of a mixed workload, or not used at all."""

from __future__ import annotations

import logging

import pytest
import torch

from npu_serve import LLM, SamplingParams
from npu_serve.worker import fast_decoder
from npu_serve_kernels.decoder import cpu as decoder_ext
from tests.engine.exactness_util import corpus_ids
from tests.engine.model_families import BY_NAME

pytestmark = pytest.mark.skipif(not decoder_ext.available(), reason="the C++ decoder layer cannot be built here")

BLOCK = 8


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _save(tok, tmp_path, name: str) -> str:
    builders = {"qwen2_bias": _qwen2_with_bias, "llama_hd64": _llama_head_dim_64}
    model = builders[name](tok) if name in builders else BY_NAME[name].build(len(tok))
    path = tmp_path / name
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _qwen2_with_bias(tok):
    """Qwen2's q/k/v biases, with values that matter (transformers initialises them to zero)."""
    import transformers

    config = transformers.Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                lin.bias.normal_(0, 0.5)
    return model


def _llama_head_dim_64(tok):
    """SmolLM2's head size (64) and grouping (3 query heads a KV head), so that bf16 prefills run the AMX
    prefill kernel (kernels/npu_serve_kernels/paged_attention/cpu_prefill.h) on both paths."""
    import transformers

    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=192, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=3, num_key_value_heads=1, head_dim=64,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def _compare_every_step(llm: LLM) -> list[str]:
    """Wrap the runner's forward: each step runs through the C++ layers, then through transformers'
    forward on the same message (which rewrites the same K/V); the logits must be equal bit for bit."""
    runner = llm.engine.executor
    fast = runner.fast
    assert fast is not None, "the C++ decoder layers were not used"
    forward = runner.forward
    kinds = []

    def both(so):
        got = forward(so)
        runner.fast = None
        try:
            ref = forward(so)
        finally:
            runner.fast = fast
        assert (got is None) == (ref is None)
        if got is not None:
            assert torch.equal(got, ref), f"step {len(kinds)}: max diff {(got - ref).abs().max().item()}"
        kinds.append("decode" if so.num_decodes == len(so.scheduled) else "mixed")
        return got

    runner.forward = both
    return kinds


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["llama", "mistral_window", "qwen2_window", "qwen3", "qwen2_bias", "llama_hd64"])
def test_every_step_equals_transformers_forward(name, dtype, tok, tmp_path, monkeypatch):
    """Chunked prefills beside decodes, prefix-cache hits, preemptions, windows, Qwen3's q/k norms and
    Qwen2's biases; bf16 also crosses the GEMV kernel's row limit (4 here) both ways, and with head size
    64 runs the AMX prefill kernel where the CPU has AMX."""
    from npu_serve_kernels.linear import cpu as linear
    from npu_serve_kernels.paged_attention import cpu as attention_kernels

    prefill_calls = []
    kernel_prefill = attention_kernels.paged_prefill
    monkeypatch.setattr(attention_kernels, "paged_prefill",
                        lambda *a, **k: prefill_calls.append(kernel_prefill(*a, **k)) or prefill_calls[-1])
    path = _save(tok, tmp_path, name)
    llm = LLM(path, device="cpu", dtype=dtype, block_size=BLOCK, max_num_batched_tokens=24, num_kv_blocks=24,
              max_model_len=128, cpu_gemv_rows=4)
    kinds = _compare_every_step(llm)
    # Steps with prompt tokens run DecoderLayer.step_layer where every layer is plain causal attention,
    # the backend's Python attention where a layer has a window.
    assert llm.engine.executor.fast._plain == (name not in ("mistral_window", "qwen2_window"))
    # A step's embeddings and cos/sin come from row lookups (step_inputs.py) where the rotary width allows.
    fast = llm.engine.executor.fast
    assert (fast._inputs is not None) == ((2 * fast._rotary.inv_freq.numel()) % 32 == 0)
    assert fast._inputs is not None or name != "llama_hd64"
    ids = corpus_ids(tok, 400)
    prefix = ids[:40]
    prompts = [prefix + ids[40 + 9 * i : 40 + 9 * i + 3 + 7 * i] for i in range(6)] + [ids[300:302]]
    out = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))
    assert all(len(o.outputs[0].token_ids) == 10 for o in out)
    assert "decode" in kinds and "mixed" in kinds
    assert llm.engine.scheduler.num_prefix_hit_tokens > 0
    # The reference forward's prefills went through the CPU backend: to the kernel exactly where it runs.
    ran = [out for out in prefill_calls if out is not None]
    if name == "llama_hd64" and dtype == "bfloat16" and linear.available():  # AVX512-BF16, with or without AMX
        assert ran and len(ran) == len(prefill_calls)
    else:
        assert not ran


def test_not_used_when_turned_off_or_for_other_families(tok, tmp_path):
    llama = _save(tok, tmp_path, "llama")
    assert LLM(llama, device="cpu", dtype="float32", num_kv_blocks=16, cpu_fast_decoder=False).engine.executor.fast is None
    gemma = _save(tok, tmp_path, "gemma2")
    assert LLM(gemma, device="cpu", dtype="float32", num_kv_blocks=16).engine.executor.fast is None


def test_unfit_names_what_it_does_not_recognise(tok):
    model = BY_NAME["llama"].build(len(tok))
    assert fast_decoder.unfit(model) is None
    handle = model.model.layers[1].mlp.register_forward_hook(lambda *a: None)
    assert "forward hooks" in fast_decoder.unfit(model)
    handle.remove()
    model.config.hidden_act = "gelu"
    assert "silu" in fast_decoder.unfit(model)
    assert "is not one of" in fast_decoder.unfit(BY_NAME["gemma2"].build(len(tok)))


def test_a_decoder_that_differs_is_dropped_at_start(tok, tmp_path, monkeypatch, caplog):
    """The start-up check compares with torch.equal: one ulp anywhere keeps transformers' forward."""
    path = _save(tok, tmp_path, "llama")
    real = fast_decoder.FastDecoder.hidden_states

    def off_by_a_little(self, input_ids, positions, ctx):
        h = real(self, input_ids, positions, ctx)
        return h + h.abs().max() * 2.0**-20 * (input_ids.shape[1] == 1)  # wrong at the decode only

    monkeypatch.setattr(fast_decoder.FastDecoder, "hidden_states", off_by_a_little)
    with caplog.at_level(logging.WARNING, logger="npu_serve.worker.model_runner"):
        llm = LLM(path, device="cpu", dtype="float32", num_kv_blocks=16)
    assert llm.engine.executor.fast is None
    assert "differ from transformers'" in caplog.text
    # The check's blocks are clean again, and the engine still serves.
    assert all(int(k[1:].count_nonzero()) == 0 for k, _ in llm.engine.executor.kv_caches)
    out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 3


def test_default_model_in_bf16_with_prompts_long_enough_that_torch_splits_its_ops(default_model_dir, tok):
    """SmolLM2's real shapes: a 600-token chunk makes torch split the layers' elementwise ops over its
    threads (the C++ layer runs the split-insensitive ones on one thread; SiLU stays split as in
    transformers), beside decodes; every step must still equal transformers' forward bit for bit."""
    llm = LLM(default_model_dir, device="cpu", dtype="bfloat16", max_num_batched_tokens=640, num_kv_blocks=128)
    kinds = _compare_every_step(llm)
    ids = corpus_ids(tok, 1200)
    out = llm.generate([ids[:20], ids[100:700], ids[700:760]],
                       SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))
    assert all(len(o.outputs[0].token_ids) == 4 for o in out)
    assert "decode" in kinds and "mixed" in kinds


@pytest.mark.skipif(not decoder_ext.available(), reason="the C++ CPU kernels cannot be built here")
def test_decode_layers_refuses_lists_of_other_lengths():
    """The one-call decode stack takes one cache pair, scale, window and softcap per layer, or says so."""
    t = torch.zeros(1)
    with pytest.raises(RuntimeError, match="one cache pair, scale, window and softcap per layer"):
        decoder_ext.module().decode_layers([], t, t, t, [], [], t, t, t, [0.125], [], [])
