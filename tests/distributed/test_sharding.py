"""How models split over ranks (distributed/sharding.py) and who is who (topology.py), without starting
any process: per-rank head counts, the refusals at start, and the KV-head replication slices."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from transformers import (GPT2Config, LlamaConfig, LlamaForCausalLM, Olmo2Config, Phi3Config, Qwen2Config,
                          Qwen2ForCausalLM)

from npu_serve.attention.layer_facts import attention_layers_from_config
from npu_serve.config import EngineConfig
from npu_serve.distributed.sharding import ShardPlan
from npu_serve.distributed.topology import TORCHRUN_DEFAULT_PORT, node_ranks, resolve_master_port
from npu_serve.errors import UnsupportedModel
from npu_serve.worker.kv_cache import KVCacheSpec

SMOL = dict(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64, intermediate_size=1536,
            num_hidden_layers=2, vocab_size=256)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=128, max_position_embeddings=64)


@pytest.mark.parametrize("tp, heads, kv_heads, replicas, first_kv", [
    (1, 9, 3, 1, [0]), (3, 3, 1, 1, [0, 1, 2]), (9, 1, 1, 3, [0, 0, 0, 1, 1, 1, 2, 2, 2])])
def test_smollm2_heads_per_rank(tp, heads, kv_heads, replicas, first_kv):
    plan = ShardPlan.for_config(LlamaConfig(**SMOL), tp)
    assert (plan.num_heads, plan.num_kv_heads, plan.kv_replicas, plan.head_dim) == (heads, kv_heads, replicas, 64)
    if tp > 1:
        assert [plan.kv_head_of(r) for r in range(tp)] == first_kv
    # The rank's layer facts (hf_bridge.install(..., heads)) size its cache: its share of the KV heads.
    layers = [dataclasses.replace(layer, num_heads=plan.num_heads, num_kv_heads=plan.num_kv_heads)
              for layer in attention_layers_from_config(LlamaConfig(**SMOL))]
    spec = KVCacheSpec.from_layers(layers, torch.float32, 16)
    assert {(shape.num_kv_heads, shape.head_dim, shape.v_head_dim) for shape in spec.layers} == {(kv_heads, 64, 64)}


@pytest.mark.parametrize("config, tp, words", [
    (LlamaConfig(**SMOL), 2, "9 query heads do not split evenly over 2 ranks"),
    (LlamaConfig(**dict(SMOL, num_attention_heads=12, num_key_value_heads=3, head_dim=48)), 2,
     "3 KV heads neither split evenly over 2 ranks nor divide them"),
    (GPT2Config(n_embd=64, n_head=4), 2, "verified for model types"),
    (Olmo2Config(**TINY), 2, "verified for model types"),
])
def test_models_that_do_not_split_are_refused_before_anything_starts(config, tp, words):
    with pytest.raises(UnsupportedModel, match=words):
        ShardPlan.for_config(config, tp)


def test_a_plan_that_gathers_the_heads_is_refused(monkeypatch):
    # phi3's plan computes every head on every rank: no KV sharding, so we do not take it.
    from npu_serve.distributed import sharding

    monkeypatch.setattr(sharding, "SUPPORTED_MODEL_TYPES", frozenset({"phi3"}))
    with pytest.raises(UnsupportedModel, match="does not shard the attention heads"):
        ShardPlan.for_config(Phi3Config(**TINY, pad_token_id=0), 2)


@pytest.mark.parametrize("config_cls, model_cls", [(LlamaConfig, LlamaForCausalLM), (Qwen2Config, Qwen2ForCausalLM)])
def test_replicated_kv_heads_keep_the_rows_of_the_ranks_own_head(config_cls, model_cls):
    torch.manual_seed(0)
    full = model_cls(config_cls(**TINY)).eval()
    plan = ShardPlan.for_config(full.config, 4)  # 4 ranks over 2 KV heads: 2 ranks per head
    assert plan.kv_replicas == 2 and plan.distributed_config().tp_plan == {
        "model.layers.*.self_attn.k_proj": "replicate", "model.layers.*.self_attn.v_proj": "replicate"}
    d = plan.head_dim
    for rank in range(4):
        model = copy.deepcopy(full)
        plan.finish(model, rank)
        head = rank // 2
        for layer, ref in zip(model.model.layers, full.model.layers):
            for proj in ("k_proj", "v_proj"):
                got, want = getattr(layer.self_attn, proj), getattr(ref.self_attn, proj)
                assert torch.equal(got.weight, want.weight[head * d:(head + 1) * d]) and got.out_features == d
                if want.bias is not None:
                    assert torch.equal(got.bias, want.bias[head * d:(head + 1) * d])


def test_finish_refuses_a_rank_that_did_not_get_its_share():
    model = LlamaForCausalLM(LlamaConfig(**TINY))  # loaded whole, as if the plan had not been applied
    with pytest.raises(UnsupportedModel, match="expected 1 KV heads"):
        ShardPlan.for_config(model.config, 2).finish(model, 1)


def test_ranks_of_a_node():
    cfg = EngineConfig(tensor_parallel_size=4, nnodes=2, node_rank=1, master_addr="10.1.2.3", master_port=1234)
    infos = node_ranks(cfg, "npu", resolve_master_port(cfg))
    assert [(i.rank, i.local_rank, i.node_rank, i.world_size) for i in infos] == [(2, 0, 1, 4), (3, 1, 1, 4)]
    assert infos[0].init_method == "tcp://10.1.2.3:1234" and infos[0].threads is None  # not a CPU rank
    assert resolve_master_port(EngineConfig(tensor_parallel_size=2, nnodes=2)) == TORCHRUN_DEFAULT_PORT
    assert 0 < resolve_master_port(EngineConfig(tensor_parallel_size=2)) < 65536  # a free port on one node


def test_cpu_ranks_share_the_cores_unless_threads_were_chosen(monkeypatch):
    monkeypatch.delenv("NPU_SERVE_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    infos = node_ranks(EngineConfig(tensor_parallel_size=2), "cpu", 1)
    assert all(i.threads is not None and i.threads >= 1 for i in infos)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert node_ranks(EngineConfig(tensor_parallel_size=2), "cpu", 1)[0].threads is None


def test_the_attention_facts_are_the_ranks_own():
    from npu_serve.attention import hf_bridge
    from npu_serve.attention.registry import get_backend

    model = LlamaForCausalLM(LlamaConfig(**TINY))
    plan = ShardPlan.for_config(model.config, 2)
    layers = hf_bridge.install(model, get_backend("torch"), (plan.num_heads, plan.num_kv_heads))
    assert {(layer.num_heads, layer.num_kv_heads, layer.head_dim) for layer in layers} == {(2, 1, 16)}
    assert len(layers) == 2
