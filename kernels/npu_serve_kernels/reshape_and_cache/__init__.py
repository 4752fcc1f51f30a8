"""Writing each new token's K/V into its cache slot (`slot = block * block_size + offset`).

`reference.reshape_and_cache_ref` is the torch oracle (`index_copy_`); `triton_kernels` has the CUDA
kernel.
"""
