"""A stand-in for torch_npu on machines without an NPU, for contract tests only: it records every op
call, refuses what the real op refuses on the software stack it pretends to be, and otherwise performs
the op with plain torch (float32 math), so a wrong layout or length convention shows as a wrong answer.

Stacks (`PROFILES`), from op-plugin's op_plugin_functions.yaml and docs per branch (see
shared/ascend-notes.md):
- "cann8.5": CANN 8.5.0, torch-npu 2.8.0.post2. `npu_scatter_pa_kv_cache` exists without `cache_mode`
  and writes the NZ layout only; ATB and the FIA TND paged path are there.
- "cann9.1": CANN 9.1.0, torch-npu 2.10.0.post4. The scatter op takes `cache_mode` ("Norm" = ND).
- "cann8.2": CANN 8.2.RC1, torch-npu 2.6.0. No scatter op; FIA exists but not its TND paged path.

Limits enforced (op-plugin 26.0.0 docs/en/custom_APIs/torch_npu/*.md, the ATB operation docs as quoted in
ascend-notes.md): dtypes, contiguity, int32 block tables and slots, host int32 `context_lens`, host int
lists for TND lengths with len(actual_seq_lengths) == len(actual_seq_lengths_kv) == block_table rows,
TND head sizes 64/128/192, N <= 256 and a GQA group <= 64, block size 128..512 for FIA page attention, the pool at
least as large as the blocks the call needs, the 2048x2048 compressed mask, and ATB paged attention's
block_size x head_dim <= 128 x 128.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

INT_MAX = 2147483647


class FakeOpError(RuntimeError):
    """What the real op would raise (an aclnn/ATB error), with the documented rule that was broken."""


@dataclass(frozen=True)
class StackProfile:
    name: str
    cann: str
    torch_npu: str
    scatter: bool  # npu_scatter_pa_kv_cache exists
    cache_mode: bool  # ... and takes cache_mode
    fia_paged_tnd: bool  # FIA takes TND + block_table + sparse_mode 3
    soc: int = 223  # Ascend910B3 (Atlas A2)
    nnal: bool = True  # libatb.so loadable (nnal/atb/set_env.sh sourced)
    num_devices: int = 1

    def but(self, **changes) -> StackProfile:
        return replace(self, **changes)


PROFILES = {
    "cann8.5": StackProfile("cann8.5", "8.5.0", "2.8.0.post2", scatter=True, cache_mode=False, fia_paged_tnd=True),
    "cann9.1": StackProfile("cann9.1", "9.1.0", "2.10.0.post4", scatter=True, cache_mode=True, fia_paged_tnd=True),
    "cann8.2": StackProfile("cann8.2", "8.2.RC1", "2.6.0", scatter=False, cache_mode=False, fia_paged_tnd=False),
}


@dataclass
class Call:
    name: str
    kwargs: dict


def _refuse(op: str, rule: str) -> None:
    raise FakeOpError(f"{op}: {rule}")


def _check(cond: bool, op: str, rule: str) -> None:
    if not cond:
        _refuse(op, rule)


def _check_half(op: str, *tensors: torch.Tensor) -> None:
    for t in tensors:
        _check(t.dtype in (torch.float16, torch.bfloat16), op, f"dtype {t.dtype} is not float16/bfloat16")
        _check(t.is_contiguous(), op, "non-contiguous tensors are not supported")
    _check(len({t.dtype for t in tensors}) == 1, op, "query/key/value (and caches) must share one dtype")


def _attend(query, key_cache, value_cache, tables, q_ends, kv_lens, scale, pre_tokens=INT_MAX, next_tokens=0):
    """Per request r: its queries are the last q_len positions of kv_len; a query at position p sees keys j
    with p - pre_tokens <= j <= p + next_tokens (bottom-right aligned, as sparse_mode 3/4 define it)."""
    out = torch.zeros(query.shape[0], query.shape[1], value_cache.shape[-1], dtype=query.dtype)
    start = 0
    for r, (end, kv_len) in enumerate(zip(q_ends, kv_lens)):
        q = query[start:end].float()
        n_blocks = -(-kv_len // key_cache.shape[1])
        blocks = tables[r, :n_blocks].long()
        k = key_cache[blocks].flatten(0, 1)[:kv_len].float()
        v = value_cache[blocks].flatten(0, 1)[:kv_len].float()
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        pos = torch.arange(kv_len - q.shape[0], kv_len)[:, None]
        j = torch.arange(kv_len)[None, :]
        allowed = (j <= pos + next_tokens) & (j >= pos - pre_tokens)
        o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                           attn_mask=allowed, scale=scale)
        out[start:end] = o.transpose(0, 1).to(query.dtype)
        start = end
    return out


class FakeNpuDevice(types.ModuleType):
    """`torch.npu` / `torch_npu.npu` as far as the platform uses it (no real device memory)."""

    def __init__(self, profile: StackProfile):
        super().__init__("torch_npu.npu")
        self.profile = profile
        self.current: int | None = None
        self.device_calls: list[str] = []

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return self.profile.num_devices

    def set_device(self, index) -> None:
        self.device_calls.append(f"set_device({index})")
        self.current = int(index)

    def get_soc_version(self) -> int:
        return self.profile.soc

    def get_device_name(self, index=None) -> str:
        return "Ascend910B3 (fake)"


class FakeTorchNpu(types.ModuleType):
    """Installed as `torch_npu` (see `install_fake`). `calls` records every op call."""

    def __init__(self, profile: StackProfile):
        super().__init__("torch_npu")
        self.profile = profile
        self.__version__ = profile.torch_npu
        self.npu = FakeNpuDevice(profile)
        self.calls: list[Call] = []
        self.atb_registered = False
        if profile.scatter:
            self.npu_scatter_pa_kv_cache = self._scatter_91 if profile.cache_mode else self._scatter_85

    def _record(self, name: str, kwargs: dict) -> None:
        self.calls.append(Call(name, dict(kwargs)))

    # -- ATB (op_plugin/ops/atb/*.cpp, loaded through op_plugin/python/atb/_atb_ops.py) ----------------
    def _atb(self, name: str) -> None:
        if not self.profile.nnal:  # the lazy wrapper re-raises the libatb.so load error at the first call
            raise OSError(2, "Please check that the nnal package is installed. Please run 'source set_env.sh' "
                             "in the NNAL installation path.")
        self.atb_registered = True

    def _register_atb_extensions(self) -> None:
        self._atb("register")

    def _npu_matmul_add_fp32(self, x, weight, c) -> None:
        self._atb("_npu_matmul_add_fp32")
        self._record("_npu_matmul_add_fp32", {"x": x, "weight": weight, "c": c})

    def _npu_reshape_and_cache(self, key, value, key_cache, value_cache, slot_indices) -> None:
        self._atb("_npu_reshape_and_cache")
        self._record("_npu_reshape_and_cache", dict(key=key, value=value, key_cache=key_cache,
                                                    value_cache=value_cache, slot_indices=slot_indices))
        op = "_npu_reshape_and_cache"
        _check(slot_indices.dtype == torch.int32, op, "slot_indices must be int32")
        self._write(op, key, value, key_cache, value_cache, slot_indices)

    def _npu_paged_attention(self, query, key_cache, value_cache, num_kv_heads, num_heads, scale_value,
                             block_table, context_lens, out, *, workspace=None) -> None:
        self._atb("_npu_paged_attention")
        self._record("_npu_paged_attention", dict(query=query, key_cache=key_cache, value_cache=value_cache,
                                                  num_kv_heads=num_kv_heads, num_heads=num_heads,
                                                  scale_value=scale_value, block_table=block_table,
                                                  context_lens=context_lens, out=out))
        op = "_npu_paged_attention"
        _check_half(op, query, key_cache, value_cache)
        _, block_size, kv_heads, head_dim = key_cache.shape
        _check(block_size % 16 == 0 and block_size * head_dim <= 128 * 128, op,
               f"block_size x head_dim must be <= 128 x 128 with block_size % 16 == 0 (got {block_size} x {head_dim})")
        _check(query.dim() == 3 and query.shape[1] == num_heads and kv_heads == num_kv_heads, op,
               "num_heads/num_kv_heads disagree with the tensors")
        _check(block_table.dtype == torch.int32 and block_table.dim() == 2, op, "block_table must be 2-D int32")
        _check(context_lens.dtype == torch.int32 and context_lens.device.type == "cpu", op,
               "context_lens must be an int32 tensor on the host")
        _check(out.shape == query.shape and out.dtype == query.dtype, op, "out must be preallocated like query")
        lens = context_lens.tolist()
        _check(block_table.shape[0] == len(lens) == query.shape[0], op, "one query, one context length per row")
        out.copy_(_attend(query, key_cache, value_cache, block_table, list(range(1, len(lens) + 1)), lens,
                          float(scale_value)))

    # -- npu_scatter_pa_kv_cache, per op_plugin_functions.yaml: 7.2.0/7.3.0 (no cache_mode), 26.0.0 ------
    def _scatter_85(self, key, value, key_cache, value_cache, slot_mapping, *, compress_lens=None,
                    compress_seq_offsets=None, seq_lens=None) -> None:
        self._record("npu_scatter_pa_kv_cache", dict(key=key, value=value, key_cache=key_cache,
                                                     value_cache=value_cache, slot_mapping=slot_mapping))
        _refuse("npu_scatter_pa_kv_cache", f"on {self.profile.name} this op writes the NZ cache layout only; an ND "
                "[num_blocks, block_size, heads, dim] cache would be scrambled")

    def _scatter_91(self, key, value, key_cache, value_cache, slot_mapping, *, compress_lens=None,
                    compress_seq_offsets=None, seq_lens=None, cache_mode="PA_NZ") -> None:
        self._record("npu_scatter_pa_kv_cache", dict(key=key, value=value, key_cache=key_cache,
                                                     value_cache=value_cache, slot_mapping=slot_mapping,
                                                     cache_mode=cache_mode))
        op = "npu_scatter_pa_kv_cache"
        _check(cache_mode in (None, "Norm"), op, f"cache_mode={cache_mode!r} expects an NZ-formatted cache")
        _check(slot_mapping.dtype in (torch.int32, torch.int64), op, "slot_mapping must be int32 or int64")
        self._write(op, key, value, key_cache, value_cache, slot_mapping)

    @staticmethod
    def _write(op, key, value, key_cache, value_cache, slots) -> None:
        _check_half(op, key, value, key_cache, value_cache)
        _check(key.dim() == 3 and key_cache.dim() == 4, op, "key [T, heads, dim] and key_cache [blocks, block_size, heads, dim]")
        _check(key.shape[1:] == key_cache.shape[2:] and value.shape[1:] == value_cache.shape[2:], op,
               "heads/dims of the new K/V and of the caches differ")
        _check(slots.dim() == 1 and slots.shape[0] == key.shape[0] == value.shape[0], op, "one slot per token")
        capacity = key_cache.shape[0] * key_cache.shape[1]
        flat = slots.tolist()
        _check(all(0 <= s < capacity for s in flat) and len(set(flat)) == len(flat), op,
               "slots must be unique and within [0, num_blocks * block_size)")
        idx = slots.long()
        key_cache.view(capacity, *key_cache.shape[2:]).index_copy_(0, idx, key)
        value_cache.view(capacity, *value_cache.shape[2:]).index_copy_(0, idx, value)

    # -- npu_fused_infer_attention_score (op-plugin 26.0.0 docs prototype), the TND paged path ----------
    def npu_fused_infer_attention_score(self, query, key, value, *, pse_shift=None, atten_mask=None,
                                        actual_seq_lengths=None, actual_seq_lengths_kv=None, block_table=None,
                                        num_heads=1, scale=1.0, pre_tokens=INT_MAX, next_tokens=INT_MAX,
                                        input_layout="BSH", num_key_value_heads=0, sparse_mode=0,
                                        inner_precise=0, block_size=0, softmax_lse_flag=False):
        kw = dict(query=query, key=key, value=value, atten_mask=atten_mask, actual_seq_lengths=actual_seq_lengths,
                  actual_seq_lengths_kv=actual_seq_lengths_kv, block_table=block_table, num_heads=num_heads,
                  scale=scale, pre_tokens=pre_tokens, next_tokens=next_tokens, input_layout=input_layout,
                  num_key_value_heads=num_key_value_heads, sparse_mode=sparse_mode, block_size=block_size)
        self._record("npu_fused_infer_attention_score", kw)
        op = "npu_fused_infer_attention_score"
        _check(self.profile.fia_paged_tnd, op, f"{self.profile.name} has no TND paged path (needs CANN >= 8.3)")
        _check(input_layout == "TND" and block_table is not None, op, "the fake models the TND paged path only")
        _check_half(op, query, key, value)
        self._check_tnd(op, query, key, value, num_heads, num_key_value_heads, block_size)
        lens_q, lens_kv = actual_seq_lengths, actual_seq_lengths_kv
        for name, lens in (("actual_seq_lengths", lens_q), ("actual_seq_lengths_kv", lens_kv)):
            _check(isinstance(lens, list) and all(type(x) is int for x in lens), op, f"{name} must be a host list of int")
        batch = len(lens_q)
        _check(batch == len(lens_kv) == block_table.shape[0] and 0 < batch <= 4096, op,
               "len(actual_seq_lengths) == len(actual_seq_lengths_kv) == block_table rows, at most 4096")
        _check(all(b >= a for a, b in zip([0] + lens_q, lens_q)) and lens_q[-1] == query.shape[0], op,
               "TND actual_seq_lengths are cumulative query ends ending at T")
        q_lens = [b - a for a, b in zip([0] + lens_q, lens_q)]
        _check(all(kv >= q for q, kv in zip(q_lens, lens_kv)), op, "a request's KV length is below its query length")
        self._check_pages(op, block_table, lens_kv, key.shape[0], block_size)
        self._check_mask(op, atten_mask, sparse_mode, pre_tokens, next_tokens, query.device)
        kv_heads = num_key_value_heads or num_heads
        kc = key.view(key.shape[0], block_size, kv_heads, -1)
        vc = value.view(value.shape[0], block_size, kv_heads, -1)
        band = (pre_tokens, next_tokens) if sparse_mode == 4 else (INT_MAX, 0)
        out = _attend(query, kc, vc, block_table, lens_q, lens_kv, float(scale), *band)
        return out, torch.zeros(1)

    @staticmethod
    def _check_tnd(op, query, key, value, num_heads, num_kv_heads, block_size) -> None:
        kv_heads = num_kv_heads or num_heads
        _check(query.dim() == 3 and query.shape[1] == num_heads, op, "TND query is [T, num_heads, D]")
        _check(key.dim() == 3 and key.shape == value.shape, op,
               "paged key/value are [blocknum, block_size, KV_N*D] of identical shape")
        head_dim = query.shape[2]
        _check(key.shape[2] == kv_heads * head_dim, op, "key's last dim is not num_key_value_heads x D")
        _check(head_dim in (64, 128, 192), op,
               f"561002: When layout is TND, queryD({head_dim}), keyD and valueD must be same equal 192/128/64")
        _check(num_heads % kv_heads == 0 and num_heads // kv_heads <= 64 and num_heads <= 256, op,
               "num_heads must be a multiple of num_key_value_heads, ratio <= 64, N <= 256")
        _check(block_size == key.shape[1] and block_size % 128 == 0 and 128 <= block_size <= 512, op,
               "page attention block_size must be 128..512, a multiple of 128, and match the cache")

    @staticmethod
    def _check_pages(op, block_table, lens_kv, num_blocks, block_size) -> None:
        _check(block_table.dtype == torch.int32 and block_table.dim() == 2, op, "block_table must be 2-D int32")
        _check(block_table.is_contiguous(), op, "non-contiguous tensors are not supported")
        needs = [-(-n // block_size) for n in lens_kv]
        _check(block_table.shape[1] >= max(needs), op, "block_table narrower than maxBlockNumPerSeq")
        _check(sum(needs) <= num_blocks, op, f"blocknum {num_blocks} is less than the {sum(needs)} blocks the batch "
               "needs by actual_seq_lengths_kv")

    @staticmethod
    def _check_mask(op, mask, sparse_mode, pre_tokens, next_tokens, device) -> None:
        _check(sparse_mode in (3, 4), op, f"the fake models sparse_mode 3 and 4, not {sparse_mode}")
        _check(mask is not None and mask.shape[-2:] == (2048, 2048) and mask.dim() <= 4, op,
               "sparse_mode 2/3/4 need the optimized (2048, 2048) atten_mask")
        _check(mask.dtype in (torch.bool, torch.int8, torch.uint8) and mask.device == device, op,
               "atten_mask must be bool/int8/uint8 on the query's device")
        expected = torch.triu(torch.ones(2048, 2048, dtype=torch.int8), diagonal=1)
        _check(torch.equal(mask.reshape(2048, 2048).to(torch.int8).cpu(), expected), op,
               "atten_mask is not the compressed causal mask (1 above the diagonal)")
        if sparse_mode == 4:
            _check(type(pre_tokens) is int and type(next_tokens) is int and pre_tokens >= 0, op,
                   "band mode needs integer pre_tokens >= 0 and next_tokens")


def install_fake(monkeypatch, profile: StackProfile | str) -> FakeTorchNpu:
    """Make `import torch_npu` return a fake of `profile`, with torch.npu and torch.version.cann as the
    real import sets them; undone by monkeypatch at the end of the test."""
    if isinstance(profile, str):
        profile = PROFILES[profile]
    fake = FakeTorchNpu(profile)
    atb_ops = types.ModuleType("torch_npu.op_plugin.atb._atb_ops")
    atb_ops._register_atb_extensions = fake._register_atb_extensions
    modules = {"torch_npu": fake, "torch_npu.npu": fake.npu, "torch_npu.op_plugin": types.ModuleType("op_plugin"),
               "torch_npu.op_plugin.atb": types.ModuleType("atb"), "torch_npu.op_plugin.atb._atb_ops": atb_ops}
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(torch, "npu", fake.npu, raising=False)
    monkeypatch.setattr(torch.version, "cann", profile.cann, raising=False)
    return fake
