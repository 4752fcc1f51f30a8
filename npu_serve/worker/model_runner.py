"""ModelRunner: packs one varlen batch, runs the HF model with our attention, samples.

Input of a step is a SchedulerOutput message (decodes first; engine/messages.py); output is a
RunnerOutput. The batch is one packed "sequence" of T tokens: input_ids and position_ids of shape
[1, T]; the attention metadata tells the backend where each request starts, how long its context is
and where its blocks are. Only the positions whose logits are needed (the last position of each
request that samples, then prompt-logprob positions) go through lm_head (transformers'
`logits_to_keep` with an index tensor).

The step is two halves: `forward` (every tensor-parallel rank runs it, in lockstep, on the same
message) and `sample` (rank 0 only, from the `sampling` part of the message that only it gets).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable

import torch

from npu_serve.attention import hf_bridge
from npu_serve.attention.backend import AttentionBackend, AttentionLayer, AttentionMetadata
from npu_serve.engine.beam_search import candidates_per_beam
from npu_serve.engine.messages import RunnerOutput, SamplingRequest, ScheduledRequest, SchedulerOutput
from npu_serve.errors import UnsupportedModel
from npu_serve.sampling_params import SamplingParams
from npu_serve.worker.fast_decoder import FastDecoder
from npu_serve.worker.forward_context import ForwardContext, forward_context
from npu_serve.worker.kv_cache import KVCacheSpec, allocate_kv_caches
from npu_serve.worker.sampler import Sampler, SamplingRow, gather_logprobs

logger = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, model: torch.nn.Module, device: torch.device, spec: KVCacheSpec, num_blocks: int,
                 backend: AttentionBackend, layers: list[AttentionLayer], fast: FastDecoder | None = None,
                 argmax: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 to_float: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """`layers` are the facts `hf_bridge.install(model, backend)` returned; the constructor runs the
        dry forward that checks them against what transformers really passes (UnsupportedModel).
        `fast`: the platform's own forward of the decoder stack (worker/fast_decoder.py), used only if
        the dry run finds it bit-identical to transformers' forward. `argmax`, `to_float`: the platform's
        greedy argmax and fp32 copy of the logits for the sampler (Platform.greedy_argmax and
        Platform.logits_to_float; None: torch's)."""
        self.model = model
        self.device = device
        self.spec = spec
        self.block_size = spec.block_size
        self.backend = backend
        self.layers = layers
        self.sampler = Sampler(argmax, to_float)
        self.kv_caches = allocate_kv_caches(spec, num_blocks, device)
        self._generators: dict[str, torch.Generator] = {}
        self._ranked_params: dict[str, SamplingParams] = {}  # best_of > n: params that ask for logprobs
        # (logits, their argmax or None) of the last forward, when lm_head's kernel computed the argmax.
        self._argmax_of: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        self.fast: FastDecoder | None = None
        self._dry_run()
        if fast is not None:
            self.fast = fast if self._fast_matches(fast) else None

    @torch.inference_mode()
    def _dry_run(self) -> None:
        """One token through the model with every mask and attention call checked against the layer
        facts (hf_bridge.CallCheck), then once more with the masks absent as in serving steps: an
        attention feature we would drop is refused here, at engine build, not discovered as wrong
        tokens. The token goes into block 1, which is zeroed afterwards."""
        for with_masks in (True, False):
            self._dry_forward(hf_bridge.dry_run_check(self.model, with_masks))
        for key_cache, value_cache in self.kv_caches:
            key_cache[1].zero_()
            value_cache[1].zero_()

    def _dry_forward(self, check: hf_bridge.CallCheck) -> None:
        bs = self.block_size
        one = torch.tensor([1], dtype=torch.int32, device=self.device)
        meta = AttentionMetadata(
            num_tokens=1, num_decodes=0,
            query_start_loc=torch.tensor([0, 1], dtype=torch.int32, device=self.device), seq_lens=one,
            block_tables=one.view(1, 1), slot_mapping=torch.tensor([bs], dtype=torch.int64, device=self.device),
            query_start_loc_cpu=[0, 1], seq_lens_cpu=[1], block_size=bs,
        )
        zeros = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        try:
            with forward_context(ForwardContext(meta, self.kv_caches, self.backend, self.layers, check)):
                self.model.get_decoder()(input_ids=zeros, position_ids=zeros, use_cache=False)
        except UnsupportedModel:
            raise
        except Exception as exc:  # the model's own code trips over our attention (a mask it edits, ...)
            raise UnsupportedModel(f"{check.label}: a one-token forward through npu-serve's attention fails "
                                   f"({type(exc).__name__}: {exc})") from exc
        check.finish(self.layers)

    def _fast_matches(self, fast: FastDecoder) -> bool:
        """Whether `fast` computes transformers' hidden states bit for bit: a prefill of at least 64 tokens
        (more rows than a decode batch, so oneDNN's where the linear kernel keeps to decode batches, and
        enough that torch splits the layers' elementwise ops over its threads) into blocks 1.., then one decode over them into the next block, each through
        both forwards (the second writes the same K/V over the first's). Those blocks are zeroed
        afterwards. False (logged) on any difference or when the pool is too small to check."""
        bs = self.block_size
        prefill_blocks = max(2, -(-64 // bs))
        blocks = list(range(1, prefill_blocks + 2))
        if len(self.kv_caches) == 0 or self.kv_caches[0][0].shape[0] <= blocks[-1]:
            logger.info("C++ decoder layers not used: the KV pool is too small to check them")
            return False
        vocab = self.model.get_input_embeddings().num_embeddings
        n = prefill_blocks * bs
        ids = [(p * 7919 + 11) % vocab for p in range(n + 1)]
        # Packed by _prepare, as serving steps are: the prefill, then one decode over it.
        steps = [ScheduledRequest("fast-check", 0, ids[:n], blocks[:-1], sample=False),
                 ScheduledRequest("fast-check", n, ids[n:], blocks, sample=False)]
        same = True
        try:
            for step in steps:
                input_ids, positions, meta, _ = self._prepare(SchedulerOutput([step], step.num_new_tokens))
                ctx = ForwardContext(meta, self.kv_caches, self.backend, self.layers)
                with torch.inference_mode(), forward_context(ctx):
                    ref = self.model.get_decoder()(input_ids=input_ids, position_ids=positions,
                                                   use_cache=False).last_hidden_state
                    got = fast.hidden_states(input_ids, positions, ctx)
                if not torch.equal(ref, got):
                    diff = (ref.float() - got.float()).abs().max().item()
                    logger.warning("C++ decoder layers not used: their hidden states differ from transformers' "
                                   "(max abs difference %.3g at %d tokens)", diff, meta.num_tokens)
                    same = False
                    break
        finally:
            for key_cache, value_cache in self.kv_caches:
                for b in blocks:
                    key_cache[b].zero_()
                    value_cache[b].zero_()
        if same:
            logger.info("C++ decoder layers in use (checked bit-identical to transformers' forward)")
        return same

    # -- batch packing ------------------------------------------------------------------------------
    def _prepare(self, so: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        """Packed input ids, positions, attention metadata, and the packed rows whose logits are kept
        (sampled rows in order, then each request's prompt-logprob rows)."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        qsl = [0]
        seq_lens: list[int] = []
        sample_idx: list[int] = []
        prompt_idx: list[int] = []
        max_blocks = max(len(s.block_ids) for s in so.scheduled)
        tables: list[list[int]] = []  # padded with the null block 0
        for s in so.scheduled:
            end = s.start + len(s.token_ids)
            input_ids += s.token_ids
            positions += range(s.start, end)
            ids = s.block_ids
            slots += [ids[p // bs] * bs + p % bs for p in range(s.start, end)]
            if s.prompt_logprob_rows:
                prompt_idx += range(qsl[-1], qsl[-1] + s.prompt_logprob_rows)
            qsl.append(qsl[-1] + len(s.token_ids))
            seq_lens.append(end)
            tables.append(ids + [0] * (max_blocks - len(ids)))
            if s.sample:
                sample_idx.append(qsl[-1] - 1)
        dev = self.device
        meta = AttentionMetadata(
            num_tokens=len(input_ids),
            num_decodes=so.num_decodes,
            query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            query_start_loc_cpu=qsl,
            seq_lens_cpu=seq_lens,
            block_size=bs,
        )
        ids_t = torch.tensor([input_ids], dtype=torch.long, device=dev)
        pos_t = torch.tensor([positions], dtype=torch.long, device=dev)
        return ids_t, pos_t, meta, sample_idx + prompt_idx

    # -- the step -----------------------------------------------------------------------------------
    # A runner in the engine's own process is its own Executor (engine/engine_core.py): its failures
    # surface from execute(), and there is nothing to watch or stop.
    def execute(self, so: SchedulerOutput) -> RunnerOutput:
        return self.sample(so, self.forward(so))

    def watch(self, on_dead) -> None:
        pass

    def shutdown(self) -> None:
        pass

    @torch.inference_mode()
    def forward(self, so: SchedulerOutput) -> torch.Tensor | None:
        """Run the model over the step's batch: the logits of the kept rows (see `_prepare`) in the
        model's dtype, or None when no row is kept. Reads only the part of `so` every rank gets.
        Why not float32 here: greedy rows need only an argmax, which is exact on bf16 logits (the
        sampler copies them to fp32 where it computes more)."""
        if so.block_copies:
            self._copy_blocks(so.block_copies)
        if not so.scheduled:
            return None
        input_ids, positions, meta, keep_idx = self._prepare(so)
        ctx = ForwardContext(meta, self.kv_caches, self.backend, self.layers)
        fast = self.fast
        with forward_context(ctx):
            if not keep_idx:
                # Only prompt chunks this step: run the layers for their KV, skip lm_head entirely.
                if fast is not None:
                    fast.hidden_states(input_ids, positions, ctx)
                else:
                    self.model.get_decoder()(input_ids=input_ids, position_ids=positions, use_cache=False)
                return None
            keep = torch.tensor(keep_idx, dtype=torch.long, device=self.device)
            if fast is not None:
                logits, argmax = fast.logits_argmax(input_ids, positions, ctx, keep)
                logits = logits[0]
                self._argmax_of = (logits, argmax)  # for sample(), which gets these logits next
                return logits
            return self.model(input_ids=input_ids, position_ids=positions, use_cache=False,
                              logits_to_keep=keep).logits[0]

    @torch.inference_mode()
    def sample(self, so: SchedulerOutput, logits: torch.Tensor | None) -> RunnerOutput:
        """Sampled tokens, beam candidates and logprobs from the logits `forward` returned (rank 0)."""
        for rid in so.finished_ids:
            self._generators.pop(rid, None)
            self._ranked_params.pop(rid, None)
        out = RunnerOutput()
        # The argmax lm_head's kernel computed beside these logits (forward), if it did: greedy rows take it.
        (of, argmax), self._argmax_of = self._argmax_of, (None, None)
        if logits is None:
            return out
        sampled = [s for s in so.scheduled if s.sample]
        argmax = argmax[: len(sampled)] if of is logits and argmax is not None else None
        self._sample([so.sampling[s.request_id] for s in sampled], logits[: len(sampled)], out, argmax)
        offset = len(sampled)
        for s in so.scheduled:
            if not s.prompt_logprob_rows:
                continue
            req = so.sampling[s.request_id]
            rows = logits[offset : offset + s.prompt_logprob_rows]
            out.prompt_logprobs[s.request_id] = (s.start, gather_logprobs(rows, req.prompt_logprob_targets,
                                                                          req.params.prompt_logprobs))
            offset += s.prompt_logprob_rows
        return out

    def _copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: duplicate shared partial blocks in every layer (the gather on the right
        reads every source before any destination is written)."""
        src = torch.tensor([c[0] for c in copies], dtype=torch.long, device=self.device)
        dst = torch.tensor([c[1] for c in copies], dtype=torch.long, device=self.device)
        for key_cache, value_cache in self.kv_caches:
            key_cache[dst] = key_cache[src]
            value_cache[dst] = value_cache[src]

    def _sample(self, leaders: list[SamplingRequest], logits: torch.Tensor, out: RunnerOutput,
                argmax: torch.Tensor | None = None) -> None:
        """Sampled tokens (one per request, plus one per follower forking off a leader's prompt, drawn
        from the leader's logits row) and beam candidates, into `out`. `leaders[i]` owns row i; `argmax`
        (or None) is `logits.argmax(-1)`, already computed."""
        reqs, row_of = [], []
        beam = []
        for row, lead in enumerate(leaders):
            if lead.params.use_beam_search:
                beam.append((row, lead))
                continue
            for req in (lead, *lead.fork_children):
                reqs.append(req)
                row_of.append(row)
        if reqs:
            if row_of == list(range(logits.shape[0])):
                rows = logits  # the common case: one row per request, in order
            else:
                rows = logits.index_select(0, torch.tensor(row_of, dtype=torch.long, device=logits.device))
                argmax = None
            result = self.sampler(rows, [self._row(r) for r in reqs], argmax)
            for req, token, lp in zip(reqs, result.token_ids, result.logprobs):
                out.sampled[req.request_id] = token
                if lp is not None:
                    out.logprobs[req.request_id] = lp
        if beam:
            idx = torch.tensor([r for r, _ in beam], dtype=torch.long, device=logits.device)
            k = max(candidates_per_beam(req.params) for _, req in beam)
            logprobs = torch.log_softmax(self.sampler.to_float(logits.index_select(0, idx)), dim=-1)
            values, tokens = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
            for (_, req), vals, toks in zip(beam, values.tolist(), tokens.tolist()):
                n = candidates_per_beam(req.params)
                out.beam_candidates[req.request_id] = list(zip(toks[:n], vals[:n]))

    def _row(self, req: SamplingRequest) -> SamplingRow:
        p = req.params
        if p.best_of > p.n and p.logprobs is None:
            # Ranking best_of outputs needs each chosen token's logprob even when the user wants none.
            ranked = self._ranked_params.get(req.request_id)
            if ranked is None:
                ranked = self._ranked_params[req.request_id] = replace(p, logprobs=0)
            p = ranked
        gen = None
        if p.seed is not None and not p.is_greedy:
            gen = self._generators.get(req.request_id)
            if gen is None:
                # Child i of an n>1 request gets seed+i, so the n outputs differ but stay reproducible.
                gen = torch.Generator(device=self.device).manual_seed(p.seed + req.output_index)
                self._generators[req.request_id] = gen
        return SamplingRow(p, req.prompt_token_ids, req.output_token_ids, gen)
