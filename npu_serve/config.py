"""EngineConfig: what the user asked of the engine, declared once, frozen and validated once.

Every engine option is one field here, with its help text in the field's metadata. The rest follows
from the fields, never restated: `LLM(model, **options)` and `AsyncEngine(model, **options)` accept
exactly these names (`EngineConfig.from_kwargs`, which names an unknown one and the closest match),
their `inspect.signature` lists them (`engine_options`), and `npu-serve serve` generates one flag per
field (`add_cli_arguments`, `EngineConfig.from_cli`). Torch-free.

Runtime facts discovered while loading (the resolved device, dtype, block count, EOS ids, the
effective max_model_len) travel in `EngineFacts`, never by mutating the config.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import os
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from npu_serve.errors import InvalidParameter


def option(default: Any, help: str, *, flag: str | None = None, choices: tuple[str, ...] | None = None,
           metavar: str | None = None) -> Any:
    """A config field with its command-line help. `flag` overrides the generated `--field-name`
    (a boolean that defaults to True gets a `--no-...` flag that turns it off)."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "metavar": metavar})


def _attention_backends() -> tuple[str, ...]:
    from npu_serve.attention.registry import backend_names  # torch-free: backends load on first use

    return tuple(backend_names())


@dataclass(frozen=True)
class EngineConfig:
    model: str | None = option(None, "HF model directory or .gguf file (default: SmolLM2-135M-Instruct)")
    device: str = option("auto", "auto | npu | cuda | cpu (with tensor parallelism each rank takes the device "
                         "of its local rank; pick devices with ASCEND_RT_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES)")
    dtype: str = option("auto", "auto | float32 | float16 | bfloat16")
    max_model_len: int | None = option(None, "longest prompt + completion, in tokens (default: the model's, "
                                       "lowered to what the KV cache holds)")
    max_num_seqs: int = option(128, "most sequences in one step")
    max_num_batched_tokens: int | None = option(None, "token budget of one step (longer prompts are chunked; "
                                                "default: 512 on CPU, 2048 on accelerators)")
    block_size: int | None = option(None, "KV cache block size in tokens (default: 128 on npu, 16 elsewhere)")
    num_kv_blocks: int | None = option(None, "KV cache blocks (default: sized from free memory)")
    enable_prefix_caching: bool = option(True, "turn off prefix caching (reuse of KV blocks of shared prompt prefixes)",
                                         flag="--no-prefix-caching")
    # KV cache budget when num_kv_blocks is not given: on CPU a fixed share of available RAM, capped;
    # on accelerators the cache grows until the process uses this fraction of the device's total memory,
    # counting the weights and the peak of a profiling forward at max_num_batched_tokens (as vLLM's
    # gpu_memory_utilization; worker/memory_profile.py).
    kv_cache_memory_fraction: float = option(0.9, "share of each accelerator's total memory the process may use, "
                                             "weights and a profiling forward included; the KV cache gets the rest")
    cpu_kv_cache_max_bytes: int = option(4 << 30, "cap of the KV cache on CPU, in bytes (all ranks together)")
    seed: int = option(0, "seed of the global random generator (unseeded sampling)")
    attention_backend: str | None = option(None, "attention backend (default: the device's; the "
                                           "NPU_SERVE_ATTENTION_BACKEND environment variable is the fallback)",
                                           metavar="NAME")
    # Measured on SmolLM2 (docs/speed-issue12.md): the kernel over packed weights against oneDNN, 2 threads,
    # a step's linears: 0.24x at 1 row, 0.51x at 32, 0.63x at 250 (a Xeon without AMX); with AMX oneDNN
    # runs prefill-sized products on its tiles, which VDPBF16PS does not approach.
    cpu_gemv_rows: int | None = option(None, "on CPU with bfloat16 weights, linear layers whose input has at most "
                                       "this many rows run on npu-serve's AVX512-BF16 kernel over packed weights "
                                       "instead of oneDNN (0 turns it off; default: every input on CPUs without "
                                       "AMX, decode batches of up to 32 rows on CPUs with AMX)", metavar="ROWS")
    # Measured on SmolLM2 (docs/speed-issue12.md): the per-layer Python of transformers' forward was about
    # a third of a decode step at one request.
    cpu_fast_decoder: bool = option(True, "turn off npu-serve's C++ decoder layers on CPU (Llama, Mistral, Qwen2, "
                                    "Qwen3: transformers' ops called from C++, checked bit-identical at start) and "
                                    "run transformers' own forward", flag="--no-cpu-fast-decoder")
    tensor_parallel_size: int = option(1, "split the model over this many devices (ranks), over all nodes")
    nnodes: int = option(1, "nodes that share the ranks (tensor_parallel_size / nnodes ranks each)")
    node_rank: int = option(0, "this node's index; node 0 serves HTTP, the others only compute")
    master_addr: str = option("127.0.0.1", "address of node 0, where the ranks meet (torch.distributed rendezvous)")
    master_port: int | None = option(None, "port of the rendezvous on node 0 (default: a free one on one node, "
                                     "29500 across nodes)")
    distributed_timeout: float = option(300.0, "seconds a collective may take before the engine gives up on the "
                                        "ranks, fails its requests and stops (joining at start waits at least 180 s)",
                                        metavar="SECONDS")
    step_timeout: float | None = option(None, "an engine step running longer turns /health 503 and fails waiting "
                                        "requests with 503 (0: off; default: off on CPU, 120 s on NPU/CUDA)",
                                        metavar="SECONDS")

    def __post_init__(self) -> None:
        def positive(name: str, value: int | None) -> None:
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InvalidParameter(name, f"{name} must be a positive integer, got {value!r}")

        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "block_size", "num_kv_blocks",
                     "tensor_parallel_size", "nnodes"):
            positive(name, getattr(self, name))
        if self.cpu_gemv_rows is not None and (not isinstance(self.cpu_gemv_rows, int)
                                               or isinstance(self.cpu_gemv_rows, bool) or self.cpu_gemv_rows < 0):
            raise InvalidParameter("cpu_gemv_rows", f"cpu_gemv_rows must be an integer >= 0, got {self.cpu_gemv_rows!r}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 2:
            raise InvalidParameter("num_kv_blocks", "num_kv_blocks must be at least 2 (block 0 is reserved)")
        if not 0.0 < self.kv_cache_memory_fraction <= 1.0:
            raise InvalidParameter("kv_cache_memory_fraction", "kv_cache_memory_fraction must be in (0, 1]")
        if self.step_timeout is not None and not self.step_timeout >= 0:
            raise InvalidParameter("step_timeout", "step_timeout must be 0 (off) or positive seconds, "
                                   f"got {self.step_timeout!r}")
        if self.attention_backend is not None and self.attention_backend not in _attention_backends():
            raise InvalidParameter("attention_backend", f"unknown attention backend {self.attention_backend!r}; "
                                   f"choose one of {', '.join(_attention_backends())}")
        self._check_distributed()

    def _check_distributed(self) -> None:
        tp, nnodes = self.tensor_parallel_size, self.nnodes
        if tp % nnodes:
            raise InvalidParameter("tensor_parallel_size", f"tensor_parallel_size ({tp}) must be a multiple of "
                                   f"nnodes ({nnodes}): every node runs tensor_parallel_size / nnodes ranks")
        if not 0 <= self.node_rank < nnodes:
            raise InvalidParameter("node_rank", f"node_rank must be in [0, nnodes={nnodes}), got {self.node_rank}")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise InvalidParameter("master_port", f"master_port must be a TCP port, got {self.master_port}")
        if not self.distributed_timeout > 0:
            raise InvalidParameter("distributed_timeout", "distributed_timeout must be positive")
        if tp > 1 and ":" in self.device:
            raise InvalidParameter("device", f"device {self.device!r} names one device, but tensor parallelism "
                                   "gives each rank the device of its local rank; choose the devices with "
                                   "ASCEND_RT_VISIBLE_DEVICES or CUDA_VISIBLE_DEVICES and pass the device type")

    @property
    def nproc_per_node(self) -> int:
        return self.tensor_parallel_size // self.nnodes

    # -- built in one place, from keyword arguments or from the command line ------------------------
    @classmethod
    def from_kwargs(cls, owner: str = "EngineConfig", **kwargs: Any) -> EngineConfig:
        """The config for `owner(**kwargs)`; an unknown name is a TypeError naming it and the closest option."""
        names = [f.name for f in fields(cls)]
        for key in kwargs:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise TypeError(f"{owner}() got an unexpected engine option {key!r}{hint}; the options are the "
                                f"fields of npu_serve.config.EngineConfig: {', '.join(names)}")
        return cls(**kwargs)

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> EngineConfig:
        """The config from flags that `add_cli_arguments` added (each field's value is on `args`)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def to_kwargs(self) -> dict[str, Any]:
        return asdict(self)


def add_cli_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """One flag per EngineConfig field: `--field-name` (or the field's own `flag`), typed from the
    annotation, defaulting to the field's default, with the field's help text."""
    hints = typing.get_type_hints(EngineConfig)
    for f in fields(EngineConfig):
        meta = f.metadata
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        kind = _scalar(hints[f.name])
        default_text = "" if f.default is None else f" (default: {f.default})"
        if kind is bool:
            action = "store_false" if f.default else "store_true"
            parser.add_argument(flag, dest=f.name, action=action, default=f.default, help=meta["help"])
            continue
        choices = meta.get("choices")
        if f.name == "attention_backend":
            choices = _attention_backends()
        parser.add_argument(flag, dest=f.name, type=kind, default=f.default, choices=choices,
                            metavar=meta.get("metavar"), help=meta["help"] + default_text)


def _scalar(annotation: Any) -> type:
    """int for `int | None`, str for `str`, ..."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    kind = args[0] if args else annotation
    if kind not in (int, float, str, bool):
        raise TypeError(f"EngineConfig field type {annotation!r} has no command-line form")
    return kind


def engine_options(cls: type) -> type:
    """Give `cls.__init__(self, model=None, **engine_kwargs)` the signature and docstring of the
    EngineConfig fields, so `help(cls)` and IDEs list every option (and the names are never restated)."""
    init = cls.__init__
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for f in fields(EngineConfig):
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if f.name == "model" else inspect.Parameter.KEYWORD_ONLY
        default = f.default if f.default is not MISSING else inspect.Parameter.empty
        params.append(inspect.Parameter(f.name, kind, default=default, annotation=f.type))
    init.__signature__ = inspect.Signature(params)
    lines = [f"    {f.name} (default {f.default!r}): {f.metadata['help']}" for f in fields(EngineConfig)]
    init.__doc__ = (init.__doc__ or "").rstrip() + "\n\nEngine options (npu_serve.config.EngineConfig):\n" + "\n".join(lines)
    return cls


@dataclass(frozen=True)
class EngineFacts:
    model_name: str
    device: str
    dtype: str
    block_size: int
    num_blocks: int
    max_model_len: int
    eos_token_ids: frozenset[int]
    attention_backend: str
    tensor_parallel_size: int = 1


def default_attention_backend(platform_backend: str, config: EngineConfig) -> str:
    """The backend to use: the config's, else NPU_SERVE_ATTENTION_BACKEND, else the platform's."""
    return config.attention_backend or os.environ.get("NPU_SERVE_ATTENTION_BACKEND") or platform_backend
