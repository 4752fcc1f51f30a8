"""Paged attention over the `(2, num_blocks, block_size, num_kv_heads, head_dim)` KV cache.

`reference.paged_attention_ref` is the torch oracle; `triton_kernels` has the CUDA kernels (decode,
and varlen prefill over paged KV). Imports stay in the submodules so that the reference never needs
triton.
"""
