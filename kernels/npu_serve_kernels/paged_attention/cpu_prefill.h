// CPU prefill attention over the paged KV cache (bf16) with AMX tiles, or VDPBF16PS where there are none:
// the n queries of one prompt or chunk, at positions L-n .. L-1, each attending causally to keys 0..its
// position, read from the cache blocks in place.
//
// Why: torch's flash attention (what SDPA runs on CPU) took ~19% of a 512-token prefill step of
// SmolLM2 (torch.profiler, 2026-12-03), and its speed depends on the length: 585 us for 256 tokens but
// 1251 us for 250 (lengths off its block sizes take a slow path), 805 us for 256 with the explicit mask
// that a chunk after cached tokens needs, which also gathers the cached keys into a copy first. Prompts
// have any length, and a 512-token step budget splits most of them.
//
// How: per KV head, its L keys and values are packed once into the tiles' B layout (the packed layout
// of ../linear/cpu_gemm.h: the keys as the "weight" of Q K^T, the values transposed as the weight of
// P V), zero-padded to a multiple of 32 keys. A task is one query head x up to 32 query rows: scores
// for the keys its last row sees (Q K^T over head_dim), an exact two-pass softmax per row in fp32 (the
// decode kernel's exp), the probabilities rounded to bf16, then P V over the same keys (fp32 sums),
// divided by the row's sum and rounded once to bf16. Keys after a row's position get probability 0.
//
// Numerics: its own (the tiles' order of sums), not torch's. With finite keys and values, every output
// row depends only on its own query, its position and the cache: not on n, on the rows beside it, on
// how the work is split or on the number of threads (a zero probability adds nothing to the tiles'
// sums; each row's softmax runs over exactly its visible keys). So a prompt chunked at any point, or
// after a prefix-cache hit, gets the bits of the whole prompt (tests/attention/test_cpu_prefill_kernel.py).
// (A non-finite value after a row's position can still reach it: 0 x inf is NaN in P V. Activations
// that overflowed are wrong either way.)
// The products run on the AMX tiles where Linux grants them, else on VDPBF16PS (product()): the same
// properties, other bits (each a fixed choice per process). It runs for bf16 only, on CPUs with
// AVX512-BF16 (usable()); fp32 keeps torch's SDPA, whose bits the exactness tests compare with
// transformers' generate().
//
// Header-only so that the C++ decoder layer (../decoder/cpu_decoder.h) calls it without Python, as the
// CPU attention backend (npu_serve/attention/cpu.py) does through ../cpu_ops.cpp: both paths give the
// same bits.

#pragma once

#include <torch/extension.h>

#include "../cpu_pool.h"
#include "../cpu_simd.h"
#include "../linear/cpu_gemm.h"
#include "cpu_decode.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace npu_serve_prefill {

using at::Tensor;

inline constexpr int64_t kRows = 32;  // query rows per task: one AMX row block (two halves of 16)
inline constexpr int64_t kKeyStep = 32;  // keys are padded to a multiple of this (one K step of P V)
// Above this many keys the per-thread score rows (32 x keys x 6 bytes) outgrow L2; torch's SDPA runs.
inline constexpr int64_t kMaxKeys = 16384;

// Whether paged_prefill() computes these inputs here (else it returns an undefined tensor and the
// caller runs torch's SDPA): bf16 on the CPU, AVX512-BF16 (with or without AMX), head sizes the tiles take.
inline bool usable(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, int64_t seq_len) {
  if (!NPU_SERVE_HAS_BF16_GEMM) return false;
  if (q.scalar_type() != at::kBFloat16 || k_cache.scalar_type() != at::kBFloat16 ||
      v_cache.scalar_type() != at::kBFloat16)
    return false;
  if (!q.device().is_cpu() || !k_cache.device().is_cpu() || !v_cache.device().is_cpu()) return false;
  if (q.dim() != 3 || k_cache.dim() != 4 || v_cache.dim() != 4) return false;
  return q.size(2) % 32 == 0 && v_cache.size(3) % 16 == 0 && seq_len <= kMaxKeys;
}

#if NPU_SERVE_HAS_BF16_GEMM

// exp(x) for x <= 0, 16 lanes: cpu_decode.h's exp_nonpos (Cephes' expf, about 1 ulp) written with
// intrinsics, because GCC left the scalar one unvectorised in the softmax loop here (70% of the kernel's
// time). x < -87 gives 0; NaN stays NaN.
inline __m512 exp_nonpos16(__m512 x) {
  const __m512 magic = _mm512_set1_ps(12582912.f);  // 1.5 * 2^23: adding it rounds to an integer
  const __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), magic);
  const __m512 n = _mm512_sub_ps(t, magic);
  const __m512i ni = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(0x4B400000));
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  y = _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(y), _mm512_slli_epi32(ni, 23)));
  y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.f), _CMP_LT_OQ), _mm512_setzero_ps());
  return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}

// mr (1..32) rows of x (bf16, ldx apart) x one or two packed blocks of 16 columns (w, and w + wstride when
// `two`: ../linear/cpu_gemm.h's layout) over K inputs, fp32 sums into c (row m, column j of the pair at
// c[m * ldc + j]): the AMX tiles where `amx`, else the linears' VDPBF16PS tiles kMR rows at a time
// (tile_dot_f32). Either way each sum runs over K in order whatever rows are beside it, so a row's result
// does not depend on how the queries are split (the two give other bits). Why VDPBF16PS: on a Zen 5 EPYC
// without AMX, torch's flash attention (the fallback) took ~1.1 ms a layer for a 250-token prompt, ~16%
// of the c=32 benchmark's time; these products 0.17 ms.
inline void product(bool amx, int64_t mr, bool two, const uint16_t* x, int64_t ldx, int64_t K, const uint16_t* w,
                    int64_t wstride, float* c, int64_t ldc) {
#if NPU_SERVE_HAS_AMX
  if (amx)
    return npu_serve_gemm::amx_block_for(mr > npu_serve_gemm::kAmxHalf, two, x, ldx, K, w, w + wstride, c, ldc);
#else
  (void)amx;
#endif
  for (int64_t m = 0; m < mr; m += npu_serve_gemm::kMR) {
    const int64_t rows = std::min<int64_t>(npu_serve_gemm::kMR, mr - m);
    npu_serve_gemm::kDotF32Tiles[rows - 1][two ? 1 : 0](x + m * ldx, ldx, K, w, wstride, c + m * ldc, ldc);
  }
}

// One call's operands, shared with the pool's tasks.
struct Prefill {
  const uint16_t* q;  // [n, H, D], rows q_row apart
  int64_t q_row;
  const uint16_t *k_cache, *v_cache;  // [blocks, block_size, Hkv, D | Dv], contiguous
  const int32_t* table;
  int64_t n, L, H, Hkv, D, Dv, block_size, Lpad;
  float scale;
  bool amx;  // the AMX tiles (granted here), else VDPBF16PS: one choice per process, so the same bits every call
  uint16_t* kp;  // [Hkv][Lpad/16][D/2][16][2]: keys as B tiles of Q K^T
  uint16_t* vp;  // [Hkv][Dv/16][Lpad/2][16][2]: values, transposed, as B tiles of P V
  at::BFloat16* out;  // [n, H, Dv]

  const uint16_t* cache_row(const uint16_t* cache, int64_t t, int64_t g, int64_t d) const {
    return cache + ((static_cast<int64_t>(table[t / block_size]) * block_size + t % block_size) * Hkv + g) * d;
  }

  // Task i < Hkv packs KV head i's keys, task Hkv + i its values.
  void pack(int64_t i) const {
    const int64_t g = i % Hkv;
    if (i < Hkv) {
      uint32_t* dst = reinterpret_cast<uint32_t*>(kp + g * Lpad * D);
      for (int64_t t = 0; t < L; ++t) {
        const uint32_t* src = reinterpret_cast<const uint32_t*>(cache_row(k_cache, t, g, D));
        uint32_t* blk = dst + (t / 16) * (D / 2) * 16 + t % 16;  // pair p of key t at blk[p * 16]
        for (int64_t p = 0; p < D / 2; ++p) blk[p * 16] = src[p];
      }
    } else {
      uint16_t* dst = vp + g * Dv * Lpad;
      for (int64_t t = 0; t < L; ++t) {
        const uint16_t* src = cache_row(v_cache, t, g, Dv);
        uint16_t* col = dst + (t / 2) * 32 + t % 2;  // value d of key t at col[(d / 16) * Lpad * 16 + (d % 16) * 2]
        for (int64_t d = 0; d < Dv; ++d) col[(d / 16) * Lpad * 16 + (d % 16) * 2] = src[d];
      }
    }
  }

  // One thread's buffers, kept between calls.
  struct Scratch {
    std::vector<float> s;  // [32][keys] scores, then exp(score - max)
    std::vector<uint16_t> p;  // [32][keys] probabilities, bf16
    alignas(64) float c[kRows * 32];
    float sum[kRows];
  };

  // Task i: query head i % H, rows of block nqb - 1 - i / H (the longest rows first, for balance).
  void attend(int64_t i) const {
    static thread_local Scratch sc;
    const int64_t nqb = (n + kRows - 1) / kRows, h = i % H, g = h / (H / Hkv);
    const int64_t r0 = (nqb - 1 - i / H) * kRows, mr = std::min(kRows, n - r0);
    const int64_t start = L - n;                                      // position of query row 0
    const int64_t keys = (start + r0 + mr + kKeyStep - 1) / kKeyStep * kKeyStep;  // what the last row sees, padded
    if (static_cast<int64_t>(sc.s.size()) < kRows * keys) sc.s.resize(kRows * keys), sc.p.resize(kRows * keys);
    float* s = sc.s.data();
    uint16_t* p = sc.p.data();
#if NPU_SERVE_HAS_AMX
    if (amx) {
      const npu_serve_gemm::TileConfig cfg = npu_serve_gemm::amx_config(static_cast<int>(mr));
      _tile_loadconfig(&cfg);
    }
#endif
    // Scores: 32 keys (two B tiles) at a time, straight into the rows of s.
    const uint16_t* qh = q + r0 * q_row + h * D;
    const uint16_t* kh = kp + g * Lpad * D;
    for (int64_t k0 = 0; k0 < keys; k0 += 32) {
      const uint16_t* w = kh + (k0 / 16) * D * 16;
      product(amx, mr, true, qh, q_row, D, w, D * 16, s + k0, keys);
    }
    // Softmax numerators over each row's visible keys, as bf16 (zeros after them), and their sums.
    for (int64_t m = 0; m < mr; ++m) {
      const float* row = s + m * keys;
      uint16_t* prow = p + m * keys;
      const int64_t visible = start + r0 + m + 1;
      __m512 top = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
      for (int64_t j = 0; j < visible; j += 16)
        top = _mm512_mask_max_ps(top, npu_serve_simd::lanes_left(visible - j), top, _mm512_loadu_ps(row + j));
      // scale > 0: the largest scaled score is the largest score, scaled.
      const __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(top) * scale), vscale = _mm512_set1_ps(scale);
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j = 0; j < keys; j += 16) {
        const __mmask16 mask = npu_serve_simd::lanes_left(visible - j);
        const __m512 e = _mm512_maskz_mov_ps(mask, exp_nonpos16(_mm512_fmsub_ps(_mm512_loadu_ps(row + j), vscale, shift)));
        sum = _mm512_add_ps(sum, e);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(prow + j), npu_serve_simd::narrow_bf16(e));
      }
      sc.sum[m] = _mm512_reduce_add_ps(sum);
    }
    // P V: up to 32 of the Dv outputs at a time, over the same keys; divided by the sums.
    const uint16_t* vh = vp + g * Dv * Lpad;
    for (int64_t d0 = 0; d0 < Dv; d0 += 32) {
      const uint16_t* w = vh + (d0 / 16) * Lpad * 16;
      product(amx, mr, d0 + 16 < Dv, p, keys, keys, w, Lpad * 16, sc.c, 32);
      const int64_t cols = std::min<int64_t>(32, Dv - d0);
      for (int64_t m = 0; m < mr; ++m) {
        const __m512 total = _mm512_set1_ps(sc.sum[m]);
        at::BFloat16* y = out + ((r0 + m) * H + h) * Dv + d0;
        for (int64_t j = 0; j < cols; j += 16) {
          const __m256i v = npu_serve_simd::narrow_bf16(_mm512_div_ps(_mm512_load_ps(sc.c + m * 32 + j), total));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + j), v);
        }
      }
    }
#if NPU_SERVE_HAS_AMX
    if (amx) _tile_release();
#endif
  }
};

#endif

// Causal attention of q [n, H, D] (the last n of a request's seq_len tokens, its K/V already in the
// cache) over keys 0..seq_len-1 read through block_table (int32, at least ceil(seq_len / block_size)
// ids): [n, H, Dv], bf16. Query head h uses KV head h / (H / Hkv). An undefined tensor where usable()
// is false; a RuntimeError for inputs that do not fit together.
inline Tensor paged_prefill(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& block_table,
                            int64_t seq_len, double scale) {
  if (!usable(q, k_cache, v_cache, seq_len)) return Tensor();
  const int64_t n = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t num_blocks = k_cache.size(0), block_size = k_cache.size(1), Hkv = k_cache.size(2);
  const int64_t Dv = v_cache.size(3);
  TORCH_CHECK(q.stride(2) == 1 && q.stride(1) == D, "paged_prefill: q must be [n, H, D] with contiguous heads");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "paged_prefill: the caches must be contiguous");
  TORCH_CHECK(k_cache.size(3) == D && v_cache.sizes().slice(0, 3) == k_cache.sizes().slice(0, 3),
              "paged_prefill: k_cache must be [blocks, block_size, Hkv, D] for q's D, v_cache the same but Dv");
  TORCH_CHECK(Hkv > 0 && H % Hkv == 0, "paged_prefill: num_heads must be a multiple of num_kv_heads");
  TORCH_CHECK(n > 0 && n <= seq_len, "paged_prefill: need 0 < n <= seq_len, got n = ", n, ", seq_len = ", seq_len);
  TORCH_CHECK(scale > 0.0, "paged_prefill: scale must be > 0");
  TORCH_CHECK(block_table.scalar_type() == at::kInt && block_table.dim() == 1 && block_table.is_contiguous(),
              "paged_prefill: block_table must be a contiguous int32 [max_blocks]");
  const int64_t used = (seq_len + block_size - 1) / block_size;
  TORCH_CHECK(block_table.size(0) >= used, "paged_prefill: block_table has ", block_table.size(0),
              " ids, seq_len needs ", used);
  const int32_t* table = block_table.data_ptr<int32_t>();
  for (int64_t b = 0; b < used; ++b)
    TORCH_CHECK(table[b] >= 0 && table[b] < num_blocks, "paged_prefill: block id ", table[b], " out of range");
  Tensor out = at::empty({n, H, Dv}, q.options());
#if NPU_SERVE_HAS_BF16_GEMM
  const int64_t Lpad = (seq_len + kKeyStep - 1) / kKeyStep * kKeyStep;
  std::vector<uint16_t> packed(static_cast<size_t>(Hkv * Lpad * (D + Dv)), 0);  // zeros: the padded keys
  Prefill job{reinterpret_cast<const uint16_t*>(q.data_ptr<at::BFloat16>()), q.stride(0),
              reinterpret_cast<const uint16_t*>(k_cache.data_ptr<at::BFloat16>()),
              reinterpret_cast<const uint16_t*>(v_cache.data_ptr<at::BFloat16>()), table, n, seq_len, H, Hkv, D, Dv,
              block_size, Lpad, static_cast<float>(scale), NPU_SERVE_HAS_AMX && npu_serve_gemm::amx_ready(),
              packed.data(), packed.data() + Hkv * Lpad * D, out.data_ptr<at::BFloat16>()};
  auto pack = [&job](int64_t i) { job.pack(i); };
  npu_serve_pool::parallel_chunks(2 * Hkv, pack);
  auto attend = [&job](int64_t i) { job.attend(i); };
  npu_serve_pool::parallel_chunks((n + kRows - 1) / kRows * H, attend);
#endif
  return out;
}

}  // namespace npu_serve_prefill
