"""A step's embeddings and RoPE cos/sin by row lookups (FastDecoder's first call of every step).

Why: transformers' nn.Embedding and rotary module are the first torch calls after a step's kernels have
streamed ~500 MB through the caches, so their code runs cold: in the c=32 decode loop of SmolLM2 they
took 134 and 200 us a step (median), against 6 and 22 us called in a loop. Here one C++ call
(kernels/npu_serve_kernels/decoder/cpu_step_inputs.h) copies the embedding rows of the step's tokens
and the cos/sin rows of its positions from tables.

Same bits, and why: the tables are the rotary module's own output, computed once for positions 0..n-1
and grown by doubling when a step reaches past them. Its forward is elementwise per position (the
positions times the inverse frequencies, cos and sin, a scaling, the cast), so a position's row depends
only on the position and on how torch runs cos/sin over the tensor: its vector path (Sleef) for whole
vectors, std::cos/std::sin for a thread's tail. On a tensor of T x D values with D a multiple of 32 and
at most at::internal::GRAIN_SIZE of them, torch runs one thread and no tail, so every value takes the
vector path; the tables are computed in slices of that size, and a step uses them only under the same
conditions (`rows`: None otherwise, and the caller calls the modules). Only rotary types whose
frequencies never change at run time are tabled ("dynamic" and "longrope" recompute them from the
positions). `build` also checks the tables against the module before they are used, and the model
runner's start-up check compares FastDecoder's whole forward with transformers'.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

# torch's at::internal::GRAIN_SIZE: below (or at) this many elements an elementwise op runs on one thread.
GRAIN_SIZE = 32768
# transformers' rope types whose inverse frequencies and scaling are fixed at load.
STATIC_ROPE_TYPES = ("default", "linear", "llama3")
FIRST_POSITIONS = 2048  # the tables' first size; they double from there as steps reach further


def unfit(embed: torch.nn.Module, rotary: torch.nn.Module) -> str | None:
    """None when StepInputs can stand in for these two modules; else why not (one phrase, for the log)."""
    if type(embed) is not torch.nn.Embedding or "forward" in embed.__dict__:
        return f"the embedding is a {type(embed).__name__}, not a plain nn.Embedding"
    if embed.max_norm is not None:
        return "the embedding renormalises its rows (max_norm)"
    rope_type = getattr(rotary, "rope_type", None)
    if rope_type not in STATIC_ROPE_TYPES:
        return f"rope type {rope_type!r} is not one of {', '.join(STATIC_ROPE_TYPES)}"
    if "forward" in rotary.__dict__:
        return "the rotary module's forward was replaced"
    inv_freq = getattr(rotary, "inv_freq", None)
    if not isinstance(inv_freq, torch.Tensor) or inv_freq.dim() != 1 or (2 * inv_freq.numel()) % 32:
        return "the rotary width is not a multiple of 32"
    return None


class StepInputs:
    """(embeddings, cos, sin) of a step as FastDecoder's modules give them, by lookups; see the module
    docstring for when (`rows`)."""

    def __init__(self, embed: torch.nn.Embedding, rotary: torch.nn.Module, ext):
        self._rotary = rotary
        self._weight = embed.weight.detach()
        if not self._weight.is_contiguous():
            self._weight = self._weight.contiguous()
        self._lookup = ext.step_inputs
        self.width = 2 * rotary.inv_freq.numel()
        self._cos = self._sin = torch.empty(0, self.width, dtype=self._weight.dtype)
        self._slice = GRAIN_SIZE // self.width  # positions per rotary call while building: one thread, no tail

    @property
    def size(self) -> int:
        """Positions the tables hold now."""
        return self._cos.shape[0]

    def rows(self, input_ids: torch.Tensor, positions: torch.Tensor, max_position: int):
        """(h [1, T, C], cos [1, T, D], sin [1, T, D]) for the step's ids and positions (max_position: the
        largest of them), or None where the modules must run (more than GRAIN_SIZE rotary values)."""
        if positions.numel() * self.width > GRAIN_SIZE:
            return None
        if max_position >= self.size:
            self._grow(max_position + 1)
        return self._lookup(input_ids, positions, self._weight, self._cos, self._sin)

    @torch.inference_mode()
    def _grow(self, need: int) -> None:
        n = max(FIRST_POSITIONS, self.size)
        while n < need:
            n *= 2
        x = self._weight[:1]  # the dtype (and device) the module's outputs are cast to
        cos, sin = [self._cos], [self._sin]
        for start in range(self.size, n, self._slice):
            c, s = self._rotary(x, position_ids=torch.arange(start, min(n, start + self._slice))[None])
            cos.append(c[0])
            sin.append(s[0])
        self._cos, self._sin = torch.cat(cos).contiguous(), torch.cat(sin).contiguous()


def build(embed: torch.nn.Module, rotary: torch.nn.Module, ext) -> StepInputs | None:
    """A StepInputs checked against the modules on a few steps' shapes, or None (logged) where it does not
    fit or differs."""
    reason = unfit(embed, rotary)
    if reason is None:
        inputs = StepInputs(embed, rotary, ext)
        reason = _differs(inputs, embed, rotary)
        if reason is None:
            return inputs
    logger.info("step inputs from transformers' modules: %s", reason)
    return None


@torch.inference_mode()
def _differs(inputs: StepInputs, embed: torch.nn.Module, rotary: torch.nn.Module) -> str | None:
    """Why the lookups differ from the modules on a few shapes (decode batches, a prefill chunk, positions
    past the first table size), or None when they agree bit for bit."""
    vocab = embed.num_embeddings
    gen = torch.Generator().manual_seed(0)
    most = GRAIN_SIZE // inputs.width
    for n, top in ((1, 1), (7, 300), (32, 5000), (most, most), (most, 3 * FIRST_POSITIONS)):
        ids = torch.randint(0, vocab, (1, n), generator=gen)
        positions = torch.randint(0, top, (1, n), generator=gen)
        got = inputs.rows(ids, positions, int(positions.max()))
        h = embed(ids)
        cos, sin = rotary(h, position_ids=positions)
        for name, a, b in (("embeddings", got[0], h), ("cos", got[1], cos), ("sin", got[2], sin)):
            if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
                return f"the {name} lookup differs from the module's at {n} tokens"
    return None
