# silu(gate) * up: torch (silu, then mul) against the table kernel (decoder/cpu_fused.h), alternated in one
# process, at SmolLM2 MLP sizes: 1, 32 and 512 tokens x 1536.
import npu_serve  # noqa: F401  (its thread and wait-policy settings, before torch loads)
import time, torch, torch.nn.functional as F
from npu_serve_kernels.decoder import cpu as dk
ext = dk.module()
for T in (1, 32, 512):
    g, u = torch.randn(1, T, 1536).bfloat16(), torch.randn(1, T, 1536).bfloat16()
    a, b = [], []
    for _ in range(300):
        t = time.perf_counter(); F.silu(g) * u; a.append(time.perf_counter() - t)
        t = time.perf_counter(); ext.silu_mul(g, u); b.append(time.perf_counter() - t)
    ma, mb = sorted(a)[150], sorted(b)[150]
    print(f"T={T}: torch silu+mul {ma*1e6:.1f} us, table {mb*1e6:.1f} us, {ma/mb:.2f}x; x30 layers saves {(ma-mb)*30e3:.2f} ms")
