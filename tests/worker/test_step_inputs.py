"""A step's embeddings and RoPE cos/sin by row lookups (npu_serve/worker/step_inputs.py): the bits of
transformers' nn.Embedding and rotary module wherever they are used, and not used where they could differ."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from npu_serve.worker import step_inputs
from npu_serve_kernels.decoder import cpu as decoder_ext

pytestmark = pytest.mark.skipif(not decoder_ext.available(), reason="the C++ decoder extension cannot be built here")

ROPES = {
    "default": None,
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 512},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
}


def _modules(rope, head_dim=64, dtype=torch.bfloat16, vocab=1000):
    kw = {} if ROPES[rope] is None else {"rope_parameters": ROPES[rope]}
    config = LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim, **kw)
    torch.manual_seed(0)
    embed = torch.nn.Embedding(vocab, 48).to(dtype)
    return embed, LlamaRotaryEmbedding(config)


def _expected(embed, rotary, ids, positions):
    with torch.inference_mode():
        h = embed(ids)
        return (h, *rotary(h, position_ids=positions))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rope", sorted(ROPES))
@pytest.mark.parametrize("head_dim", [64, 128])
def test_lookups_equal_the_modules(rope, dtype, head_dim):
    embed, rotary = _modules(rope, head_dim, dtype)
    inputs = step_inputs.build(embed, rotary, decoder_ext.module())
    assert inputs is not None
    gen = torch.Generator().manual_seed(1)
    most = step_inputs.GRAIN_SIZE // inputs.width
    # Decode batches, a whole chunk of the most rows the tables serve, and positions far past the tables'
    # size so far (they grow).
    for n, top in ((1, 3), (32, 700), (most, most), (5, 40000), (most, 9000)):
        ids = torch.randint(0, embed.num_embeddings, (1, n), generator=gen)
        positions = torch.randint(0, top, (1, n), generator=gen)
        got = inputs.rows(ids, positions, int(positions.max()))
        want = _expected(embed, rotary, ids, positions)
        assert inputs.size > int(positions.max())
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.equal(a, b)


def test_more_rotary_values_than_one_thread_runs_take_the_modules():
    embed, rotary = _modules("default")
    inputs = step_inputs.build(embed, rotary, decoder_ext.module())
    n = step_inputs.GRAIN_SIZE // inputs.width + 1
    ids = torch.zeros((1, n), dtype=torch.long)
    positions = torch.arange(n)[None]
    assert inputs.rows(ids, positions, n - 1) is None
    assert inputs.rows(ids[:, :-1], positions[:, :-1], n - 2) is not None


def test_unfit_names_what_the_lookups_cannot_stand_in_for():
    embed, rotary = _modules("default")
    assert step_inputs.unfit(embed, rotary) is None
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64,
                         rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    assert "dynamic" in step_inputs.unfit(embed, LlamaRotaryEmbedding(config))
    _, narrow = _modules("default", head_dim=48)
    assert "multiple of 32" in step_inputs.unfit(embed, narrow)
    assert "max_norm" in step_inputs.unfit(torch.nn.Embedding(10, 8, max_norm=1.0), rotary)

    class Scaled(torch.nn.Embedding):
        pass

    assert "Scaled" in step_inputs.unfit(Scaled(10, 8), rotary)
    assert step_inputs.build(Scaled(10, 8), rotary, decoder_ext.module()) is None


def test_a_table_that_differs_from_the_module_is_not_used(monkeypatch, caplog):
    embed, rotary = _modules("default")
    real = step_inputs.StepInputs._grow

    def off_by_one(self, need):
        real(self, need)
        self._cos = torch.roll(self._cos, 1, dims=0)  # each position gets its neighbour's row

    monkeypatch.setattr(step_inputs.StepInputs, "_grow", off_by_one)
    with caplog.at_level("INFO", logger="npu_serve.worker.step_inputs"):
        assert step_inputs.build(embed, rotary, decoder_ext.module()) is None
    assert "cos lookup differs" in caplog.text


def test_an_index_out_of_range_is_an_error_naming_it():
    ext = decoder_ext.module()
    table = torch.zeros(4, 32, dtype=torch.bfloat16)
    ok = torch.tensor([[0, 3]])
    with pytest.raises(RuntimeError, match="embedding: index 4 is out of range for 4 rows"):
        ext.step_inputs(torch.tensor([[0, 4]]), ok, table, table, table)
    with pytest.raises(RuntimeError, match="rope cos: index -1 is out of range"):
        ext.step_inputs(ok, torch.tensor([[0, -1]]), table, table, table)
    with pytest.raises(RuntimeError, match="2 ids but 1 positions"):
        ext.step_inputs(ok, torch.tensor([[0]]), table, table, table)
