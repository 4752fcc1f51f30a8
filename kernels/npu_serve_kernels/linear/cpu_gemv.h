// bf16 linear for a few rows (decode batches) on CPUs with AVX512-BF16: y = x @ w.T (+ bias).
//
// Why: at M = 1..32 rows a decode step's linears are bound by reading the weights (few rows) or by
// VDPBF16PS throughput (many), but oneDNN's bf16 path through torch costs about the same at every M
// up to ~16 and reads SmolLM2's weights at ~10-20 GB/s on this machine (perf-notes.md), a third of
// what one core can stream. Here each block of weight rows is read once, 32 bf16 at a time, and
// multiplied into every input row with VDPBF16PS (pairs of bf16 products summed into fp32 lanes),
// 16 accumulators per pass so the chains overlap, the next block prefetched, and the 16 sums
// reduced together (scripts/bench_cpu_gemv.py: 0.5x of F.linear's time at 1-4 rows, ~0.6x at 8,
// ~0.75x at 16, ~0.86x at 32, one thread, SmolLM2's shapes).
//
// Numerics: products and sums in fp32 (VDPBF16PS rounds to nearest even and flushes denormals, as
// oneDNN's AVX512-BF16 kernels do), the bias added in fp32, the result rounded once to bf16. Only
// the order of the fp32 sums differs from oneDNN's, so results agree to fp32 rounding before the
// final bf16 rounding (tests/worker/test_cpu_linear.py).
//
// Threads: output features are split in chunks that the calling thread and at::get_num_threads() - 1
// helper threads claim (../cpu_pool.h).
// The GIL is released for the call (binding below).

//
// Header-only so that other C++ ops (the decoder layer, ../decoder/cpu_decoder.h) call the same kernel
// without going back through Python; ../cpu_ops.cpp is its Python binding.

#pragma once

#include <torch/extension.h>

#include "../cpu_pool.h"

#include <algorithm>
#include <array>
#include <utility>
#include <cstdint>

#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define NPU_SERVE_HAS_BF16_GEMV 1
#else
#define NPU_SERVE_HAS_BF16_GEMV 0
#endif

namespace npu_serve_gemv {

inline constexpr int64_t kMaxRows = 32;

#if NPU_SERVE_HAS_BF16_GEMV

// Sums each of 16 vectors' lanes: out[i] = sum of v[i]'s 16 lanes. A transpose-and-add tree (45 shuffles
// and adds for 16 sums) instead of one _mm512_reduce_add_ps per vector (~8 dependent ops each): at
// K = 576 a sum is only 18 VDPBF16PS long, so per-output reductions were a third of the work at 8 rows.
inline void hsum16(const __m512* v, float* out) {
  __m512 a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [v2i, v2i+1, v2i, v2i+1] partial sums
    a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: [v4i .. v4i+3] partial sums
    const __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(a[2 * i]), _mm512_castps_pd(a[2 * i + 1]));
    const __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(a[2 * i]), _mm512_castps_pd(a[2 * i + 1]));
    b[i] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
  }
  for (int i = 0; i < 2; ++i)  // lanes [b2i: L0+L1, L2+L3; b2i+1: L0+L1, L2+L3]
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  _mm512_storeu_ps(out, _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                      _mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1))));
}

// M input rows x NB weight rows: M * NB <= 16 fp32 accumulators, NB weight streams in flight; each
// weight load is used for all M rows. out[m * NB + b] (room for 16 floats). `next` (the next block's
// weight rows, or nullptr) is prefetched one cache line per row per step: at 8 rows the loop spends
// ~8 VDPBF16PS per weight line, and the hardware prefetcher alone then kept too few lines in flight
// (measured: 10 GB/s streamed vs 26 GB/s at 1 row and ~40 GB/s from L2 at 8 rows).
template <int M, int NB>
inline void gemv_block(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t K, float* out,
                       const uint16_t* next) {
  static_assert(M * NB <= 16, "at most 16 accumulators");
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512i wv[NB];
    for (int b = 0; b < NB; ++b) wv[b] = _mm512_loadu_si512(w + b * K + k);
    if (next != nullptr)
      for (int b = 0; b < NB; ++b) _mm_prefetch(reinterpret_cast<const char*>(next + b * K + k), _MM_HINT_T0);
    for (int m = 0; m < M; ++m) {
      const __m512i xv = _mm512_loadu_si512(x + m * ldx + k);
      for (int b = 0; b < NB; ++b)
        acc[m * NB + b] = _mm512_dpbf16_ps(acc[m * NB + b], (__m512bh)xv, (__m512bh)wv[b]);
    }
  }
  if (k < K) {  // tail: masked loads read zeros past K (0 * 0 adds nothing)
    const __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (K - k)) - 1);
    __m512i wv[NB];
    for (int b = 0; b < NB; ++b) wv[b] = _mm512_maskz_loadu_epi16(mask, w + b * K + k);
    for (int m = 0; m < M; ++m) {
      const __m512i xv = _mm512_maskz_loadu_epi16(mask, x + m * ldx + k);
      for (int b = 0; b < NB; ++b)
        acc[m * NB + b] = _mm512_dpbf16_ps(acc[m * NB + b], (__m512bh)xv, (__m512bh)wv[b]);
    }
  }
  hsum16(acc, out);
}

// Weight rows per block for M input rows: 16 accumulators (4 weight rows at 1 input row: memory-bound,
// 8 streams measured slower); above 8 input rows a block of 2 weight rows meets rows 0-7, then the rest
// (the second pass reads those weight lines from L1; 16 x loads per weight load were load-bound).
constexpr int block_rows(int M) { return M == 1 ? 4 : M > 8 ? 2 : (16 / M > 8 ? 8 : 16 / M); }

// One block of NB weight rows against all M input rows into tmp: input rows 8g..8g+7 at tmp + 16g.
template <int M, int NB>
inline void gemv_all_rows(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t K, float* tmp,
                          const uint16_t* next) {
  if constexpr (M <= 8) {
    gemv_block<M, NB>(x, ldx, w, K, tmp, next);
  } else {
    gemv_block<8, NB>(x, ldx, w, K, tmp, next);
    gemv_all_rows<M - 8, NB>(x + 8 * ldx, ldx, w, K, tmp + 16, nullptr);
  }
}

template <int M>
void gemv_rows(const uint16_t* x, int64_t ldx, const uint16_t* w, const at::BFloat16* bias, int64_t K, int64_t n0,
               int64_t n1, at::BFloat16* y, int64_t ldy) {
  constexpr int NB = block_rows(M);
  alignas(64) float tmp[16 * ((M + 7) / 8)];
  int64_t n = n0;
  auto store = [&](int64_t first, int nb) {
    for (int m = 0; m < M; ++m)
      for (int b = 0; b < nb; ++b) {
        float v = tmp[(m / 8) * 16 + (m % 8) * nb + b];
        if (bias != nullptr) v += static_cast<float>(bias[first + b]);
        y[m * ldy + first + b] = static_cast<at::BFloat16>(v);  // round to nearest even
      }
  };
  for (; n + NB <= n1; n += NB) {
    gemv_all_rows<M, NB>(x, ldx, w + n * K, K, tmp, n + 2 * NB <= n1 ? w + (n + NB) * K : nullptr);
    store(n, NB);
  }
  for (; n < n1; ++n) {
    gemv_all_rows<M, 1>(x, ldx, w + n * K, K, tmp, nullptr);
    store(n, 1);
  }
}

using RowsFn = void (*)(const uint16_t*, int64_t, const uint16_t*, const at::BFloat16*, int64_t, int64_t, int64_t,
                        at::BFloat16*, int64_t);
template <size_t... I>
constexpr std::array<RowsFn, sizeof...(I)> rows_table(std::index_sequence<I...>) {
  return {gemv_rows<static_cast<int>(I) + 1>...};
}
inline constexpr auto kRows = rows_table(std::make_index_sequence<kMaxRows>{});

#endif

inline bool available() { return NPU_SERVE_HAS_BF16_GEMV; }

// x [M, K] (any leading shape flattened by the caller), w [N, K], bias [N] or None; all bf16.
inline torch::Tensor linear_bf16(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(NPU_SERVE_HAS_BF16_GEMV, "this CPU (or compiler) has no AVX512-BF16");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "linear_bf16: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16, "linear_bf16: bf16 only");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "linear_bf16: x [M, K] and w [N, K]");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= kMaxRows, "linear_bf16: 1 to ", kMaxRows, " rows, got ", x.size(0));
  TORCH_CHECK(x.stride(1) == 1 && w.is_contiguous(), "linear_bf16: rows of x and w must be contiguous");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const at::BFloat16* bp = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kBFloat16 && bias->is_contiguous() && bias->numel() == N,
                "linear_bf16: bias must be a contiguous bf16 [N]");
    bp = bias->data_ptr<at::BFloat16>();
  }
  auto y = torch::empty({M, N}, x.options());
#if NPU_SERVE_HAS_BF16_GEMV
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const auto* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  auto* yp = y.data_ptr<at::BFloat16>();
  const RowsFn rows = kRows[M - 1];
  // Chunks of ~64 KiB of weights (a multiple of every block height), shared with the pool's helper
  // threads (../cpu_pool.h: no wake-up or barrier cost, so even a 576x192 layer at one row splits).
  // Two threads stream SmolLM2's weights at ~1.4x one thread's rate at one row; from ~8 rows the
  // work is VDPBF16PS-bound and splits ~2x.
  const int64_t chunk = std::max<int64_t>(16, ((int64_t{32} << 10) / std::max<int64_t>(K, 1) + 15) / 16 * 16);
  struct Task {
    RowsFn rows;
    const uint16_t* x;
    int64_t ldx;
    const uint16_t* w;
    const at::BFloat16* bias;
    int64_t K, N, chunk;
    at::BFloat16* y;
  } task{rows, xp, x.stride(0), wp, bp, K, N, chunk, yp};
  npu_serve_pool::Pool::instance().run((N + chunk - 1) / chunk, [](void* ctx, int64_t i) {
    const Task& t = *static_cast<const Task*>(ctx);
    const int64_t n0 = i * t.chunk, n1 = std::min(t.N, n0 + t.chunk);
    t.rows(t.x, t.ldx, t.w, t.bias, t.K, n0, n1, t.y, t.N);
  }, &task);
#endif
  return y;
}

}  // namespace npu_serve_gemv
