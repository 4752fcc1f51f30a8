"""ModelRunner: packs one varlen batch, runs the HF model with our attention, samples.

Input of a step is a SchedulerOutput (decodes first); output is {request_id: sampled token} plus
logprobs where asked. The batch is one packed "sequence" of T tokens: input_ids and position_ids of
shape [1, T]; the attention metadata tells the backend where each request starts, how long its
context is and where its blocks are. Only the last position of each request that samples goes
through lm_head (transformers' `logits_to_keep` with an index tensor).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from npu_serve.attention import hf_bridge
from npu_serve.attention.backend import AttentionBackend, AttentionMetadata
from npu_serve.engine.scheduler import SchedulerOutput
from npu_serve.worker.forward_context import ForwardContext, forward_context
from npu_serve.worker.kv_cache import KVCacheSpec, allocate_kv_caches
from npu_serve.worker.sampler import Sampler, SamplingRow, TokenLogprobs


@dataclass
class RunnerOutput:
    sampled: dict[str, int]
    logprobs: dict[str, TokenLogprobs]


class ModelRunner:
    def __init__(self, model: torch.nn.Module, device: torch.device, spec: KVCacheSpec, num_blocks: int,
                 backend: AttentionBackend):
        self.model = model
        self.device = device
        self.spec = spec
        self.block_size = spec.block_size
        self.backend = backend
        self.sampler = Sampler()
        self.kv_caches = allocate_kv_caches(spec, num_blocks, device)
        self._generators: dict[str, torch.Generator] = {}
        hf_bridge.install(model)

    # -- batch packing ------------------------------------------------------------------------------
    def _prepare(self, so: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        qsl = [0]
        seq_lens: list[int] = []
        sample_idx: list[int] = []
        max_blocks = max(len(s.block_ids) for s in so.scheduled)
        tables = torch.zeros((len(so.scheduled), max_blocks), dtype=torch.int32)
        for i, s in enumerate(so.scheduled):
            end = s.start + s.num_new_tokens
            input_ids += s.request.token_slice(s.start, end)
            positions += range(s.start, end)
            ids = s.block_ids
            slots += [ids[p // bs] * bs + p % bs for p in range(s.start, end)]
            qsl.append(qsl[-1] + s.num_new_tokens)
            seq_lens.append(end)
            tables[i, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
            if s.sample:
                sample_idx.append(qsl[-1] - 1)
        dev = self.device
        meta = AttentionMetadata(
            num_tokens=len(input_ids),
            num_decodes=so.num_decodes,
            query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_tables=tables.to(dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            query_start_loc_cpu=qsl,
            seq_lens_cpu=seq_lens,
            block_size=bs,
        )
        ids_t = torch.tensor([input_ids], dtype=torch.long, device=dev)
        pos_t = torch.tensor([positions], dtype=torch.long, device=dev)
        return ids_t, pos_t, meta, sample_idx

    # -- the step -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, so: SchedulerOutput) -> RunnerOutput:
        for rid in so.finished_ids:
            self._generators.pop(rid, None)
        if not so.scheduled:
            return RunnerOutput({}, {})
        input_ids, positions, meta, sample_idx = self._prepare(so)
        ctx = ForwardContext(meta, self.kv_caches, self.backend)
        with forward_context(ctx):
            if sample_idx:
                keep = torch.tensor(sample_idx, dtype=torch.long, device=self.device)
                logits = self.model(input_ids=input_ids, position_ids=positions, use_cache=False,
                                    logits_to_keep=keep).logits[0]
            else:
                # Only prompt chunks this step: run the layers for their KV, skip lm_head entirely.
                self.model.get_decoder()(input_ids=input_ids, position_ids=positions, use_cache=False)
                return RunnerOutput({}, {})
        sampling = [s for s in so.scheduled if s.sample]
        rows = [self._row(s.request) for s in sampling]
        result = self.sampler(logits.float(), rows)
        sampled = {s.request.request_id: t for s, t in zip(sampling, result.token_ids)}
        logprobs = {s.request.request_id: lp for s, lp in zip(sampling, result.logprobs) if lp is not None}
        return RunnerOutput(sampled, logprobs)

    def _row(self, req) -> SamplingRow:
        p = req.sampling_params
        gen = None
        if p.seed is not None and not p.is_greedy:
            gen = self._generators.get(req.request_id)
            if gen is None:
                # Child i of an n>1 request gets seed+i, so the n outputs differ but stay reproducible.
                gen = torch.Generator(device=self.device).manual_seed(p.seed + req.output_index)
                self._generators[req.request_id] = gen
        return SamplingRow(p, req.prompt_token_ids, req.output_token_ids, gen)
