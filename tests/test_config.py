"""EngineConfig is the one declaration of every engine option: the LLM / AsyncEngine keyword
arguments and the `npu-serve serve` flags follow from its fields."""

from __future__ import annotations

import argparse
import inspect
from dataclasses import fields

import pytest

from npu_serve import AsyncEngine, LLM
from npu_serve.cli import build_parser
from npu_serve.config import EngineConfig, add_cli_arguments
from npu_serve.errors import InvalidParameter

FIELDS = [f.name for f in fields(EngineConfig)]


def serve_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_every_field_is_a_flag_with_help_and_its_default():
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert sorted(actions) == sorted(FIELDS)
    for f in fields(EngineConfig):
        assert actions[f.name].default == f.default and actions[f.name].help, f.name
    assert EngineConfig.from_cli(parser.parse_args([])) == EngineConfig()


def test_existing_flags_keep_their_names_and_meaning():
    args = serve_args("--model", "m", "--device", "cpu", "--dtype", "float32", "--max-model-len", "512",
                      "--max-num-seqs", "8", "--max-num-batched-tokens", "64", "--block-size", "32",
                      "--num-kv-blocks", "100", "--no-prefix-caching")
    assert EngineConfig.from_cli(args) == EngineConfig(
        model="m", device="cpu", dtype="float32", max_model_len=512, max_num_seqs=8, max_num_batched_tokens=64,
        block_size=32, num_kv_blocks=100, enable_prefix_caching=False)
    assert EngineConfig.from_cli(serve_args()).enable_prefix_caching is True


def test_attention_backend_flag():
    assert EngineConfig.from_cli(serve_args("--attention-backend", "torch")).attention_backend == "torch"
    with pytest.raises(SystemExit):
        serve_args("--attention-backend", "nope")


@pytest.mark.parametrize("kwargs, param, words", [
    ({"attention_backend": "flash"}, "attention_backend", "choose one of"),
    ({"max_num_seqs": 0}, "max_num_seqs", "positive integer"),
    ({"kv_cache_memory_fraction": 1.5}, "kv_cache_memory_fraction", "(0, 1]"),
])
def test_bad_values_are_refused_naming_the_option(kwargs, param, words):
    with pytest.raises(InvalidParameter) as err:
        EngineConfig(**kwargs)
    assert err.value.param == param and words in str(err.value)


@pytest.mark.parametrize("cls", [LLM, AsyncEngine])
def test_front_ends_take_exactly_the_config_fields(cls):
    sig = inspect.signature(cls)
    assert list(sig.parameters) == FIELDS
    assert all(sig.parameters[name].default == f.default for name, f in zip(FIELDS, fields(EngineConfig)))
    assert "attention_backend" in cls.__init__.__doc__
    with pytest.raises(TypeError, match=r"unexpected engine option 'max_num_seq' \(did you mean 'max_num_seqs'\?\)"):
        cls("unused", max_num_seq=4)  # refused before anything loads


def test_from_kwargs_builds_the_same_config():
    assert EngineConfig.from_kwargs(model="m", max_num_seqs=2) == EngineConfig(model="m", max_num_seqs=2)
    assert EngineConfig(model="m").to_kwargs()["model"] == "m"
