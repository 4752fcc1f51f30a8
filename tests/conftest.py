"""Shared fixtures: the default model (fetched once into the cache) and tiny random-weight models.

The tiny models reuse the default model's tokenizer (a real BPE tokenizer with a chat template), so
text in and text out behave as they would with a real model, at a fraction of the compute.
"""

from __future__ import annotations

import os

os.environ.setdefault("NPU_SERVE_OMP_WAIT_POLICY", "PASSIVE")
import npu_serve  # noqa: E402,F401  (applies thread/wait-policy settings before torch loads)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def default_model_dir():
    if os.environ.get("NPU_SERVE_TEST_SKIP_DEFAULT_MODEL"):
        pytest.skip("the default model is not available on this machine (NPU_SERVE_TEST_SKIP_DEFAULT_MODEL)")
    from npu_serve.models import default_model_dir as ensure

    return ensure()


@pytest.fixture(scope="session")
def tokenizer_dir(request):
    """The tokenizer the tiny models use: NPU_SERVE_TEST_TOKENIZER_DIR (a device machine without network
    carries just these few MB), else the default model's."""
    given = os.environ.get("NPU_SERVE_TEST_TOKENIZER_DIR")
    return given if given else request.getfixturevalue("default_model_dir")


def _save_tiny(path, config_cls, model_cls, tokenizer_dir, **cfg):
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = config_cls(vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=2, **cfg)
    torch.manual_seed(0)
    model = model_cls(config).to(torch.float32)
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 2
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory, tokenizer_dir):
    """GQA (4 query heads over 2 KV heads) with biased q/k/v projections, as Qwen2 has."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _save_tiny(
        tmp_path_factory.mktemp("tiny-qwen2"), Qwen2Config, Qwen2ForCausalLM, tokenizer_dir,
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
    )


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tokenizer_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    return _save_tiny(
        tmp_path_factory.mktemp("tiny-llama"), LlamaConfig, LlamaForCausalLM, tokenizer_dir,
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=2048, tie_word_embeddings=True,
    )
