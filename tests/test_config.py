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


def test_distributed_and_backend_flags():
    args = serve_args("--tensor-parallel-size", "4", "--nnodes", "2", "--node-rank", "1", "--master-addr", "10.0.0.1",
                      "--master-port", "29555", "--distributed-timeout", "30", "--attention-backend", "torch")
    cfg = EngineConfig.from_cli(args)
    assert (cfg.tensor_parallel_size, cfg.nnodes, cfg.node_rank, cfg.nproc_per_node) == (4, 2, 1, 2)
    assert (cfg.master_addr, cfg.master_port, cfg.distributed_timeout, cfg.attention_backend) == \
        ("10.0.0.1", 29555, 30.0, "torch")
    with pytest.raises(SystemExit):
        serve_args("--attention-backend", "nope")


@pytest.mark.parametrize("kwargs, param, words", [
    ({"tensor_parallel_size": 3, "nnodes": 2}, "tensor_parallel_size", "multiple of nnodes"),
    ({"tensor_parallel_size": 2, "nnodes": 2, "node_rank": 2}, "node_rank", "[0, nnodes=2)"),
    ({"tensor_parallel_size": 2, "device": "npu:1"}, "device", "ASCEND_RT_VISIBLE_DEVICES"),
    ({"attention_backend": "flash"}, "attention_backend", "choose one of"),
    ({"distributed_timeout": 0}, "distributed_timeout", "positive"),
    ({"tensor_parallel_size": 0}, "tensor_parallel_size", "positive integer"),
    ({"step_timeout": -2.0}, "step_timeout", "0 (off) or positive seconds"),
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
    assert "tensor_parallel_size" in cls.__init__.__doc__
    with pytest.raises(TypeError, match=r"unexpected engine option 'max_num_seq' \(did you mean 'max_num_seqs'\?\)"):
        cls("unused", max_num_seq=4)  # refused before anything loads


def test_from_kwargs_builds_the_same_config():
    assert EngineConfig.from_kwargs(model="m", tensor_parallel_size=2) == EngineConfig(model="m", tensor_parallel_size=2)
    assert EngineConfig(model="m").to_kwargs()["model"] == "m"
