"""Llama-shaped models on CPU without Python inside the layers (kernels/npu_serve_kernels/decoder).

A decode step of a small model on CPU is mostly interpreter: at one request per step SmolLM2's
transformers forward makes ~45 torch calls and ~13 module calls per layer, and those cost more than
the arithmetic they launch (cpu_decoder.h has the figures). For the families whose decoder layer is
transformers' Llama layer (Llama, Mistral, Qwen2; Qwen3 adds per-head q/k norms), each layer here is
two C++ calls around our attention backend: `attention_in` (norm, q/k/v, RoPE) and
`attention_out_mlp` (o_proj, residual, norm, SwiGLU, residual); on the CPU attention backend the whole
layer, attention included, is one call (`decode_layer` for decodes only, `step_layer` for steps with
prompt tokens where no layer has a window, softcap or sinks). They call the same ATen ops on tensors
of the same shapes as transformers does, and the linears that `cpu_linear` sent to the linear kernel go
to the same kernel, so the hidden states are bit-identical.

"Bit-identical" is checked, not assumed: the model runner's dry run at engine build runs a prefill
and a decode through both forwards and compares them with torch.equal (`ModelRunner._fast_matches`); any difference
(another transformers version, a model whose modules were swapped) keeps transformers' forward and
logs why. So does anything this module does not recognise: another family, forward hooks (tensor
parallelism installs them), sharded parameters.

The embedding and the rotary module run once per step, not per layer; where step_inputs.py shows that
lookups give their bits, a step's embeddings and cos/sin are row lookups instead (StepInputs).
"""

from __future__ import annotations

import logging

import torch

from npu_serve.attention.backend import AttentionLayer
from npu_serve.worker import step_inputs
from npu_serve.worker.forward_context import ForwardContext

logger = logging.getLogger(__name__)

# The causal-LM classes whose decoder layer, MLP and RMSNorm are transformers' Llama ones (checked
# against transformers 5.24: Qwen2/Mistral attention differs only by passing sliding_window, which our
# backends read from the layer facts; Qwen3 adds q_norm/k_norm).
FAMILIES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")


def unfit(model: torch.nn.Module) -> str | None:
    """None when `model` has the shape FastDecoder runs; else why not (one phrase, for the log)."""
    name = type(model).__name__
    if name not in FAMILIES:
        return f"{name} is not one of {', '.join(FAMILIES)}"
    if torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks:
        return "global module hooks are installed"
    if not _plain_linear(getattr(model, "lm_head", None)):
        return "lm_head is not a plain nn.Linear"
    for mod_name, module in model.named_modules():
        if module._forward_hooks or module._forward_pre_hooks:
            return f"{mod_name or 'the model'} has forward hooks (tensor parallelism?)"
    for p_name, param in model.named_parameters():
        if type(param.data) is not torch.Tensor or param.device.type != "cpu":
            return f"parameter {p_name} is not a plain CPU tensor"
    if getattr(model.config, "hidden_act", None) != "silu":
        return f"hidden_act {getattr(model.config, 'hidden_act', None)!r} is not silu"
    base = model.model
    for layer in base.layers[: model.config.num_hidden_layers]:
        attn, mlp = layer.self_attn, layer.mlp
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            if not _plain_linear(lin):
                return f"layer {attn.layer_idx} has a {type(lin).__name__} that is not a plain nn.Linear"
    return None


def _plain_linear(module) -> bool:
    """An nn.Linear whose forward is its class's or the one cpu_linear gave it (which the C++ Linear
    reproduces), not a subclass or somebody else's replacement."""
    return type(module) is torch.nn.Linear and ("forward" not in module.__dict__
                                                or hasattr(module, "_npu_serve_gemv_rows"))


class FastDecoder:
    """The decoder stack of a model that `unfit` accepts, run layer by layer through the C++ layer."""

    def __init__(self, model: torch.nn.Module, ext, layers: list[AttentionLayer]):
        config = model.config
        base = model.model
        self._embed = base.embed_tokens
        self._rotary = base.rotary_emb
        self._inputs = step_inputs.build(self._embed, self._rotary, ext)
        self._rms_norm = ext.rms_norm
        self._norm_weight, self._norm_eps = base.norm.weight, float(base.norm.variance_epsilon)

        def linear(lin: torch.nn.Linear):
            # The packed copy and rows limit cpu_linear gave this linear (none: F.linear at every size).
            return ext.Linear(lin.weight, lin.bias, getattr(lin, "_npu_serve_packed", None),
                              int(getattr(lin, "_npu_serve_gemv_rows", 0)))

        # lm_head too, so that a step's kernel calls all go through this extension's thread pool.
        self._lm_head = linear(model.lm_head)
        # What the CPU backend passes its decode kernel for each layer (attention/cpu.py).
        self._decode_args = [(layer.scale, layer.sliding_window or 0, layer.logit_softcap or 0.0) for layer in layers]
        self._decode_lists = tuple(list(column) for column in zip(*self._decode_args))  # scales, windows, softcaps
        self._decode_layers = ext.decode_layers
        # Whether every layer's attention is the plain causal one that DecoderLayer.step_layer runs for
        # steps with prompt tokens (no window, softcap or sinks); else those steps take the backend's.
        self._plain = all(layer.sliding_window is None and layer.logit_softcap is None and not layer.has_sinks
                          for layer in layers)

        self._layers = []
        for layer in base.layers[: config.num_hidden_layers]:
            attn, mlp = layer.self_attn, layer.mlp
            q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
            num_kv_heads = attn.k_proj.out_features // attn.head_dim
            self._layers.append(ext.DecoderLayer(
                layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                float(layer.input_layernorm.variance_epsilon),
                linear(attn.q_proj), linear(attn.k_proj), linear(attn.v_proj), linear(attn.o_proj),
                linear(mlp.gate_proj), linear(mlp.up_proj), linear(mlp.down_proj),
                None if q_norm is None else q_norm.weight, None if k_norm is None else k_norm.weight,
                float(q_norm.variance_epsilon) if q_norm is not None else 0.0,
                attn.q_proj.out_features // attn.head_dim, num_kv_heads,
                attn.head_dim, attn.v_proj.out_features // num_kv_heads,
            ))

    def hidden_states(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """The decoder's output [1, T, C] (after the final norm), as `model.get_decoder()(...)` returns it."""
        backend, meta, caches, facts = ctx.backend, ctx.meta, ctx.kv_caches, ctx.layers
        # The positions are 0 .. seq_len - 1 of each request (the model runner's _prepare).
        rows = None if self._inputs is None else self._inputs.rows(input_ids, positions, max(meta.seq_lens_cpu) - 1)
        if rows is not None:
            h, cos, sin = rows
        else:
            h = self._embed(input_ids)
            cos, sin = self._rotary(h, position_ids=positions)
        if _runs_cpu_decode_kernel(backend):
            slots, tables, lens = meta.slot_mapping, meta.block_tables, meta.seq_lens
            if meta.num_decodes == meta.num_reqs:
                # Decodes only: the whole stack is one C++ call, the CPU backend's attention included.
                h = self._decode_layers(self._layers, h, cos, sin, [k for k, _ in caches], [v for _, v in caches],
                                        slots, tables, lens, *self._decode_lists)
                return self._rms_norm(h, self._norm_weight, self._norm_eps)
            if self._plain:
                # Prompt tokens in the step: still one C++ call a layer (DecoderLayer.step_layer).
                nd, qsl, lens_cpu = meta.num_decodes, meta.query_start_loc_cpu, meta.seq_lens_cpu
                for layer, (key_cache, value_cache), args in zip(self._layers, caches, self._decode_args):
                    h = layer.step_layer(h, cos, sin, key_cache, value_cache, slots, tables, lens, nd, qsl,
                                         lens_cpu, args[0])
                return self._rms_norm(h, self._norm_weight, self._norm_eps)
        for i, layer in enumerate(self._layers):
            q, k, v = layer.attention_in(h, cos, sin)
            attn = backend.forward(q, k, v, caches[i], meta, facts[i])
            h = layer.attention_out_mlp(h, attn)
        return self._rms_norm(h, self._norm_weight, self._norm_eps)

    def logits(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext,
               keep: torch.Tensor) -> torch.Tensor:
        """[1, len(keep), vocab] logits of the kept rows in the model's dtype: the model's forward with
        logits_to_keep=keep."""
        return self._lm_head(self.hidden_states(input_ids, positions, ctx)[:, keep, :])

    def logits_argmax(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext,
                      keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`logits(...)`, and each kept row's argmax (int64 [len(keep)], `logits.argmax(-1)`) where lm_head's
        kernel computes it beside the logits (cpu_gemm.h's linear_argmax), else None."""
        return self._lm_head.with_argmax(self.hidden_states(input_ids, positions, ctx)[:, keep, :])


def _runs_cpu_decode_kernel(backend) -> bool:
    """Whether `backend` computes decodes with the CPU paged-decode kernel (what decode_layer inlines)."""
    from npu_serve.attention.cpu import CpuAttentionBackend

    return type(backend) is CpuAttentionBackend and backend.uses_kernel


def build(model: torch.nn.Module, layers: list[AttentionLayer]) -> FastDecoder | None:
    """A FastDecoder for `model`, or None (logged) when it does not fit or the extension cannot build.
    The model runner still has to check it against transformers' forward (its dry run does)."""
    reason = unfit(model)
    if reason is None and any(layer.has_sinks for layer in layers):
        reason = "a layer has attention sinks"
    if reason is not None:
        logger.info("C++ decoder layers not used: %s", reason)
        return None
    from npu_serve_kernels.decoder import cpu as ext

    if not ext.available():
        return None
    return FastDecoder(model, ext.module(), layers)
