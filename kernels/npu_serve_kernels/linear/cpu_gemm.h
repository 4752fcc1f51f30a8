// bf16 linear on CPUs with AVX512-BF16 over a weight packed once at load: y = x @ w.T (+ bias).
//
// Why packed: the dot-product GEMV kernel before it (each weight row read along K, one fp32 lane sum
// per output, reduced across lanes at the end) was bound by loads and lane reductions once a decode
// batch had more than a few rows (75 ms for a SmolLM2 step's linears at 32 rows on a 2-core Xeon, 2
// threads), and oneDNN repacks bf16 weights on every call (116 ms). Here the weight is stored in
// VDPBF16PS's own layout, 16 output features x one pair of inputs per 64-byte vector
// ([N/16][K/2][16][2], `pack`), so a vector of weights meets a broadcast pair of one input row's values
// and yields 16 outputs' partial sums in 16 fp32 lanes: no lane reduction, and each weight load serves
// MR input rows (MR x NV accumulators, NV weight vectors per step). At one row it streams NV weight
// blocks side by side (memory-bound, as before). docs/speed-issue12.md has the figures.
//
// Numerics: products and sums in fp32 (VDPBF16PS: pairs of bf16 products summed into fp32, round to
// nearest even, denormals flushed, as oneDNN's AVX512-BF16 kernels do), the bias added in fp32, the
// result rounded once to bf16 (nearest even, as c10::BFloat16). Only the order of the fp32 sums
// differs from oneDNN's (tests/worker/test_cpu_linear.py bounds the difference against fp32 sums).
// The sums of one output do not depend on how many rows or threads the call has, nor on the tile
// variant: a row's result is the same alone, in a batch of 32 or in a prefill chunk (tested), so
// batching never changes a request's tokens.
//
// Threads: tasks are (panel of rows, group of NV x 16 output features), claimed in order by the calling
// thread and the pool's helpers (../cpu_pool.h); a group's packed weights (<= 150 KiB for SmolLM2) stay
// in L2 while the panel's row blocks pass over them.
//
// Header-only so that the decoder layer (../decoder/cpu_decoder.h) calls it without Python;
// ../cpu_ops.cpp is its binding.

#pragma once

#include <torch/extension.h>

#include "../cpu_pool.h"
#include "../cpu_simd.h"
#include "cpu_amx.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define NPU_SERVE_HAS_BF16_GEMM 1
#else
#define NPU_SERVE_HAS_BF16_GEMM 0
#endif

namespace npu_serve_gemm {

inline constexpr int64_t kLanes = 16;  // output features per packed block (one fp32 vector)
// The dot tiles: 8 input rows x 3 weight vectors = 24 accumulators, + 3 weight vectors + 1 broadcast:
// 28 of the 32 vector registers (6 x 4, 4 x 6 and 12 x 2 measured no faster at 8-250 rows).
inline constexpr int kMR = 8;
inline constexpr int kNV = 3;
// The FMA tiles: 8 x 2 = 16 accumulators, + 4 widened weight vectors + 2 broadcasts (12 x 2 was as
// fast; 6 x 3, 4 x 4 and 14 x 1 slower at 250 rows).
inline constexpr int kFmaMR = 8;
inline constexpr int kFmaNV = 2;

inline bool available() { return NPU_SERVE_HAS_BF16_GEMM; }

// w [N, K] bf16 -> [ceil(N/16), ceil(K/2), 16, 2] bf16, zero-padded: element (n, k) at
// [n / 16][k / 2][n % 16][k % 2].
inline torch::Tensor pack(const torch::Tensor& w_in) {
  TORCH_CHECK(w_in.dim() == 2 && w_in.scalar_type() == at::kBFloat16 && w_in.device().is_cpu(),
              "gemm pack: a CPU bf16 [N, K] weight");
  const torch::Tensor w = w_in.contiguous();
  const int64_t N = w.size(0), K = w.size(1);
  const int64_t nb = (N + kLanes - 1) / kLanes, pairs = (K + 1) / 2;
  auto packed = torch::empty({nb, pairs, kLanes, 2}, w.options());
  // Plain loops on our own pool, not torch ops: torch's OpenMP regions hang in a forked child of a
  // process that used them, and a model may be loaded after a fork (tests/worker/test_cpu_linear.py).
  struct Task {
    const uint16_t* w;
    uint16_t* out;
    int64_t N, K, pairs;
  } task{reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()),
         reinterpret_cast<uint16_t*>(packed.data_ptr<at::BFloat16>()), N, K, pairs};
  npu_serve_pool::Pool::instance().run(nb, [](void* ctx, int64_t b) {
    const Task& t = *static_cast<const Task*>(ctx);
    uint16_t* out = t.out + b * t.pairs * kLanes * 2;
    for (int64_t p = 0; p < t.pairs; ++p)
      for (int64_t l = 0; l < kLanes; ++l)
        for (int64_t j = 0; j < 2; ++j) {
          const int64_t n = b * kLanes + l, k = 2 * p + j;
          *out++ = n < t.N && k < t.K ? t.w[n * t.K + k] : 0;
        }
  }, &task);
  return packed;
}

#if NPU_SERVE_HAS_BF16_GEMM

// Adds the bias (fp32) to MR x NV accumulators and stores them as bf16; `cols` is how many of the
// NV x 16 outputs exist (the last group of a matrix may end inside its last block).
template <int MR, int NV>
inline void store_tile(const __m512* acc, const at::BFloat16* bias, int64_t cols, at::BFloat16* y, int64_t ldy) {
  for (int v = 0; v < NV; ++v) {
    const int64_t n = std::min<int64_t>(kLanes, cols - v * kLanes);
    if (n <= 0) break;
    const __mmask16 mask = npu_serve_simd::lanes_left(n);
    __m512 b = _mm512_setzero_ps();
    if (bias != nullptr) {
      b = npu_serve_simd::widen_bf16(_mm256_maskz_loadu_epi16(mask, bias + v * kLanes));
    }
    for (int m = 0; m < MR; ++m) {
      const __m512 r = bias != nullptr ? _mm512_add_ps(acc[m * NV + v], b) : acc[m * NV + v];
      _mm256_mask_storeu_epi16(y + m * ldy + v * kLanes, mask, npu_serve_simd::narrow_bf16(r));
    }
  }
}

// The VDPBF16PS sums of MR input rows (bf16, `x`, row stride ldx) x NV blocks of 16 output features over
// all of K, into acc (row m, block v at acc[m * NV + v]). `w` is the first block's packed data, `wstride`
// the distance between blocks (pairs x 32). Each sum runs over K in order, whatever rows are beside it.
template <int MR, int NV>
inline void dot_sums(const uint16_t* x, int64_t ldx, int64_t K, const uint16_t* w, int64_t wstride, __m512* acc) {
  for (int i = 0; i < MR * NV; ++i) acc[i] = _mm512_setzero_ps();
  const int64_t full = K / 2;
  for (int64_t p = 0; p < full; ++p) {
    __m512i wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_si512(w + v * wstride + p * 32);
    for (int m = 0; m < MR; ++m) {
      int32_t pair;
      std::memcpy(&pair, x + m * ldx + 2 * p, sizeof(pair));
      const __m512i xb = _mm512_set1_epi32(pair);
      for (int v = 0; v < NV; ++v)
        acc[m * NV + v] = _mm512_dpbf16_ps(acc[m * NV + v], (__m512bh)xb, (__m512bh)wv[v]);
    }
  }
  if (K & 1) {  // the last pair holds one input; its partner is a zero (never read past the row)
    __m512i wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_si512(w + v * wstride + full * 32);
    for (int m = 0; m < MR; ++m) {
      const __m512i xb = _mm512_set1_epi32(static_cast<int32_t>(x[m * ldx + K - 1]));
      for (int v = 0; v < NV; ++v)
        acc[m * NV + v] = _mm512_dpbf16_ps(acc[m * NV + v], (__m512bh)xb, (__m512bh)wv[v]);
    }
  }
}

// The VDPBF16PS tile: dot_sums, then the bias and bf16 outputs (store_tile).
template <int MR, int NV>
inline void tile_dot(const uint16_t* x, int64_t ldx, int64_t K, const uint16_t* w, int64_t wstride,
                     const at::BFloat16* bias, int64_t cols, at::BFloat16* y, int64_t ldy) {
  __m512 acc[MR * NV];
  dot_sums<MR, NV>(x, ldx, K, w, wstride, acc);
  store_tile<MR, NV>(acc, bias, cols, y, ldy);
}

// dot_sums stored as they are, in fp32: c[m * ldc + v * 16 + j] (the CPU prefill attention's products
// where there are no AMX tiles, ../paged_attention/cpu_prefill.h).
template <int MR, int NV>
inline void tile_dot_f32(const uint16_t* x, int64_t ldx, int64_t K, const uint16_t* w, int64_t wstride, float* c,
                         int64_t ldc) {
  __m512 acc[MR * NV];
  dot_sums<MR, NV>(x, ldx, K, w, wstride, acc);
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c + m * ldc + v * kLanes, acc[m * NV + v]);
}

// The fp32-FMA tile, for CPUs whose VDPBF16PS is slower than two FMAs (seen: a Xeon whose VDPBF16PS
// ran at half the FMA rate, 77 vs 121 GFLOPS a core). Same operations, same order as VDPBF16PS's
// definition (Intel SDM: acc += odd product, then acc += even product; products of two bf16 are exact
// in fp32), with denormals treated as zero and flushed (MXCSR DAZ|FTZ, set by the caller), so both
// tiles give the same bits (tests/worker/test_cpu_linear.py). The weights widen in registers (a
// shift for the even element of each pair, a mask for the odd); `xf` is x already in fp32, its rows
// `ldxf` floats apart and padded with a zero to an even length.
template <int MR, int NV>
inline void tile_fma(const float* xf, int64_t ldxf, int64_t pairs, const uint16_t* w, int64_t wstride,
                     const at::BFloat16* bias, int64_t cols, at::BFloat16* y, int64_t ldy) {
  __m512 acc[MR * NV];
  for (int i = 0; i < MR * NV; ++i) acc[i] = _mm512_setzero_ps();
  const __m512i high = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  for (int64_t p = 0; p < pairs; ++p) {
    __m512 even[NV], odd[NV];
    for (int v = 0; v < NV; ++v) {
      const __m512i wv = _mm512_loadu_si512(w + v * wstride + p * 32);
      even[v] = _mm512_castsi512_ps(_mm512_slli_epi32(wv, 16));
      odd[v] = _mm512_castsi512_ps(_mm512_and_si512(wv, high));
    }
    for (int m = 0; m < MR; ++m) {
      const __m512 xo = _mm512_set1_ps(xf[m * ldxf + 2 * p + 1]);
      for (int v = 0; v < NV; ++v) acc[m * NV + v] = _mm512_fmadd_ps(xo, odd[v], acc[m * NV + v]);
      const __m512 xe = _mm512_set1_ps(xf[m * ldxf + 2 * p]);
      for (int v = 0; v < NV; ++v) acc[m * NV + v] = _mm512_fmadd_ps(xe, even[v], acc[m * NV + v]);
    }
  }
  store_tile<MR, NV>(acc, bias, cols, y, ldy);
}

using DotFn = void (*)(const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, const at::BFloat16*, int64_t,
                       at::BFloat16*, int64_t);
using FmaFn = void (*)(const float*, int64_t, int64_t, const uint16_t*, int64_t, const at::BFloat16*, int64_t,
                       at::BFloat16*, int64_t);
using DotF32Fn = void (*)(const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, float*, int64_t);

// table[mr - 1][nv - 1]: the tile of mr rows (the last row block may be short) and nv blocks.
template <typename Fn, int NVMax, template <int, int> class Tile>
struct Tiles {
  template <int MR, int... NVs>
  static constexpr std::array<Fn, NVMax> row(std::integer_sequence<int, NVs...>) {
    return {Tile<MR, NVs + 1>::fn...};
  }
  template <int... MRs>
  static constexpr auto table(std::integer_sequence<int, MRs...>) {
    return std::array<std::array<Fn, NVMax>, sizeof...(MRs)>{row<MRs + 1>(std::make_integer_sequence<int, NVMax>{})...};
  }
};
template <int MR, int NV>
struct DotTile {
  static constexpr DotFn fn = tile_dot<MR, NV>;
};
template <int MR, int NV>
struct FmaTile {
  static constexpr FmaFn fn = tile_fma<MR, NV>;
};
template <int MR, int NV>
struct DotF32Tile {
  static constexpr DotF32Fn fn = tile_dot_f32<MR, NV>;
};
inline constexpr auto kDotTiles =
    Tiles<DotFn, kNV, DotTile>::table(std::make_integer_sequence<int, kMR>{});
inline constexpr auto kFmaTiles =
    Tiles<FmaFn, kFmaNV, FmaTile>::table(std::make_integer_sequence<int, kFmaMR>{});
// Up to two blocks: the prefill attention's products take 32 columns at a time.
inline constexpr auto kDotF32Tiles =
    Tiles<DotF32Fn, 2, DotF32Tile>::table(std::make_integer_sequence<int, kMR>{});

// Sets MXCSR's DAZ and FTZ bits for its scope (the FMA tiles' denormal rule = VDPBF16PS's).
class FlushDenormals {
 public:
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved_); }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  unsigned saved_;
};

#endif

enum Variant : int { kDot = 0, kFma = 1, kAmx = 2 };

// Rows of x per panel: tasks run panel by panel, each panel meeting every group of weights, so that a
// panel (~768 KiB) stays in the core's L2 while the weights stream past. Without panels, every group
// read all of x: at 2048 rows x 1536 inputs (12 MiB in fp32) the FMA tiles ran at 169 GFLOPS against
// 223 at 250 rows. A multiple of the tile height; decode batches are one panel.
inline int64_t panel_rows(int64_t row_bytes, int mr) {
  const int64_t rows = (int64_t{768} << 10) / std::max<int64_t>(row_bytes, 1);
  return std::max<int64_t>(mr, rows / mr * mr);
}

#if NPU_SERVE_HAS_BF16_GEMM
struct RowMax;  // linear_argmax's per-task row maxima (AMX only, below)

// One linear's operands, shared with the pool's tasks.
struct Task {
  const uint16_t* x;  // bf16 rows, ldx apart (the dot tiles)
  int64_t ldx;
  const float* xf;  // the same rows in fp32, 2 x pairs apart (the FMA tiles)
  int64_t M, K, N, pairs;
  const uint16_t* w;
  int64_t wstride;
  const at::BFloat16* bias;
  at::BFloat16* y;
  int64_t panel, groups;  // rows per panel; output groups per panel (a task is one panel x one group)
  // SwiGLU (gate_up_silu): w is the gate's packed data, w_up the up projection's (same N and K), act
  // torch's silu of every bf16 value (cpu_fused.h's silu_table); y gets silu(x @ gate.T) * (x @ up.T).
  const uint16_t* w_up = nullptr;
  const uint16_t* act = nullptr;
  // linear_argmax: each task's row maxima of the rounded outputs ([groups][M], see RowMax), or null.
  RowMax* row_max = nullptr;
};

// Runs every (panel, group) task of `t` on the pool with the MR x NV tiles of one variant; `row_bytes`
// is what one row of the x those tiles read takes (it sizes the panels).
template <int MR, int NV, bool kFma>
inline void run_tasks(Task& t, int64_t row_bytes) {
  t.panel = panel_rows(row_bytes, MR);
  t.groups = (t.N + NV * kLanes - 1) / (NV * kLanes);
  npu_serve_pool::Pool::instance().run((t.M + t.panel - 1) / t.panel * t.groups, [](void* ctx, int64_t i) {
    const Task& t = *static_cast<const Task*>(ctx);
    constexpr int64_t group = NV * kLanes;  // output features per task
    std::optional<FlushDenormals> daz_ftz;
    if constexpr (kFma) daz_ftz.emplace();
    const int64_t n0 = i % t.groups * group, cols = std::min(group, t.N - n0);
    const int64_t m_end = std::min(t.M, (i / t.groups + 1) * t.panel);
    const int nv = static_cast<int>((cols + kLanes - 1) / kLanes);
    const uint16_t* w = t.w + (n0 / kLanes) * t.wstride;
    const at::BFloat16* b = t.bias != nullptr ? t.bias + n0 : nullptr;
    for (int64_t m0 = i / t.groups * t.panel; m0 < m_end; m0 += MR) {
      const int mr = static_cast<int>(std::min<int64_t>(MR, m_end - m0));
      at::BFloat16* y = t.y + m0 * t.N + n0;
      if constexpr (kFma)
        kFmaTiles[mr - 1][nv - 1](t.xf + m0 * t.pairs * 2, t.pairs * 2, t.pairs, w, t.wstride, b, cols, y, t.N);
      else
        kDotTiles[mr - 1][nv - 1](t.x + m0 * t.ldx, t.ldx, t.K, w, t.wstride, b, cols, y, t.N);
    }
  }, &t);
}
#endif

#if NPU_SERVE_HAS_BF16_GEMM && NPU_SERVE_HAS_AMX
// Output blocks of 16 per AMX task: 4 (two block pairs) keep a decode batch's small matrices in several
// tasks for the helpers (SmolLM2's k/v projections: 12 blocks, 3 tasks).
inline constexpr int64_t kAmxGroupBlocks = 4;

// One row's argmax over one task's outputs, as torch.argmax takes it over the whole row of bf16 outputs:
// the largest value and its first index, and the first NaN's index (NaN counts as the largest); then
// reduced over the tasks in column order (linear_argmax).
struct RowMax {
  float best = -std::numeric_limits<float>::infinity();
  int32_t index = -1;  // of best; -1: no column
  int32_t nan = -1;    // the first NaN's column, or -1
};

// The same for one row of one task, per lane while the task's epilogues (Finish) run: lane j holds the
// columns col + j of every block in column order, so each lane keeps its own first maximum and first NaN
// with a few vector operations a block; `fold` reduces the lanes once the task is done.
struct alignas(64) LaneMax {
  static constexpr int32_t kNone = std::numeric_limits<int32_t>::max();
  __m512 best = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512i index = _mm512_set1_epi32(kNone);
  __m512i nan = _mm512_set1_epi32(kNone);

  // Columns col .. col + 15 (those in `lanes`) with the values r, as they were stored (rounded, widened).
  void take(__m512 r, __mmask16 lanes, int64_t col) {
    const __m512i cols = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(col)),
                                          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    const __mmask16 unordered = _mm512_mask_cmp_ps_mask(lanes, r, r, _CMP_UNORD_Q);
    nan = _mm512_mask_mov_epi32(nan, unordered & _mm512_cmpeq_epi32_mask(nan, _mm512_set1_epi32(kNone)), cols);
    // Strictly greater keeps a lane's first maximum; a lane's first number is taken whatever it is (-inf).
    const __mmask16 better = (lanes & ~unordered) & (_mm512_cmp_ps_mask(r, best, _CMP_GT_OQ) |
                                                     _mm512_cmpeq_epi32_mask(index, _mm512_set1_epi32(kNone)));
    best = _mm512_mask_mov_ps(best, better, r);
    index = _mm512_mask_mov_epi32(index, better, cols);
  }

  // The row's RowMax over the task's columns: the smallest NaN column, else the largest value and the
  // smallest column holding it (each lane's is its first).
  RowMax fold() const {
    RowMax out;
    const int32_t first_nan = _mm512_reduce_min_epi32(nan);
    if (first_nan != kNone) {
      out.nan = first_nan;
      return out;
    }
    const __mmask16 seen = _mm512_cmpneq_epi32_mask(index, _mm512_set1_epi32(kNone));
    if (!seen) return out;
    const float top = _mm512_mask_reduce_max_ps(seen, best);
    const __mmask16 at = seen & _mm512_cmp_ps_mask(best, _mm512_set1_ps(top), _CMP_EQ_OQ);
    out.best = top;
    out.index = _mm512_mask_reduce_min_epi32(at, index);
    return out;
  }
};

// The epilogue of one AMX block: fp32 sums of up to 32 rows x 32 outputs (c, 32 floats a row) + bias,
// rounded to bf16 into y; one row a call.
struct Finish {
  const float* c = nullptr;
  const at::BFloat16* bias = nullptr;
  int64_t cols = 0;  // outputs that exist (the last block may end inside the matrix's last 16)
  at::BFloat16* y = nullptr;
  int64_t ldy = 0;
  int64_t rows = 0;  // 0: nothing pending
  bool stream = false;  // streaming stores (kStreamOutputBytes)
  // SwiGLU (Task::act): c holds gate block b's sums beside up block b's, c1 (or null) block b + 1's;
  // the 16 or 32 outputs are silu(gate) * up, rounded as the two linears and silu_mul round them.
  const float* c1 = nullptr;
  const uint16_t* act = nullptr;
  // linear_argmax: row m's LaneMax at lane_max[m], and the block's first column.
  LaneMax* lane_max = nullptr;
  int64_t col = 0;

  void operator()(int64_t m) const {
    if (lane_max != nullptr) track_max(m);
    if (act != nullptr) {
      const __m256i h0 = silu_mul_of(c + m * 32);
      at::BFloat16* row = y + m * ldy;
      if (c1 == nullptr) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(row), h0);
        return;
      }
      store_line(row, _mm512_inserti64x4(_mm512_castsi256_si512(h0), silu_mul_of(c1 + m * 32), 1));
      return;
    }
    const __m512 acc[2] = {_mm512_load_ps(c + m * 32), _mm512_load_ps(c + m * 32 + 16)};
    // A whole pair with no bias: both halves rounded by one VCVTNE2PS2BF16 and stored as one line
    // (cpu_simd.h's narrow_bf16 says when that instruction is exact; otherwise store_tile's path).
    if (cols == 2 * kLanes && bias == nullptr &&
        (npu_serve_simd::bf16_convert_differs(acc[0]) | npu_serve_simd::bf16_convert_differs(acc[1])) == 0) {
      store_line(y + m * ldy, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(acc[1], acc[0])));
      return;
    }
    store_tile<1, 2>(acc, bias, cols, y + m * ldy, ldy);
  }

  // Row m's outputs into its LaneMax, with the values store_tile and the one-line path store (the bias
  // added in fp32, rounded as narrow_bf16 rounds: the same bits either path writes), widened back.
  void track_max(int64_t m) const {
    LaneMax& slot = lane_max[m];
    for (int v = 0; v < 2; ++v) {
      const int64_t n = std::min<int64_t>(kLanes, cols - v * kLanes);
      if (n <= 0) break;
      const __mmask16 lanes = npu_serve_simd::lanes_left(n);
      __m512 r = _mm512_load_ps(c + m * 32 + v * kLanes);
      if (bias != nullptr)
        r = _mm512_add_ps(r, npu_serve_simd::widen_bf16(_mm256_maskz_loadu_epi16(lanes, bias + v * kLanes)));
      slot.take(npu_serve_simd::widen_bf16(npu_serve_simd::narrow_bf16(r)), lanes, col + v * kLanes);
    }
  }

  // 32 outputs (64 bytes) of a row: streamed when asked and the row's line is aligned (it is where y is:
  // torch's CPU allocations are 64-byte aligned, and N a multiple of 32), else an ordinary store.
  void store_line(at::BFloat16* row, __m512i line) const {
    if (stream && (reinterpret_cast<uintptr_t>(row) & 63) == 0) _mm512_stream_si512(reinterpret_cast<__m512i*>(row), line);
    else _mm512_storeu_si512(row, line);
  }

  // 16 outputs of SwiGLU from one row's sums (16 of the gate, then 16 of the up projection): each linear's
  // bf16 output as store_tile rounds it, then silu_mul's (cpu_fused.h) table lookup, product and rounding.
  __m256i silu_mul_of(const float* sums) const {
    const __m256i gate = npu_serve_simd::narrow_bf16(_mm512_load_ps(sums));
    const __m512 up = npu_serve_simd::widen_bf16(npu_serve_simd::narrow_bf16(_mm512_load_ps(sums + 16)));
    const __m512i got = _mm512_i32gather_epi32(_mm512_cvtepu16_epi32(gate), reinterpret_cast<const int*>(act), 2);
    return npu_serve_simd::narrow_bf16(_mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(got, 16)), up));
  }
};

// Output blocks of t per task: kAmxGroupBlocks, or half as many for SwiGLU, whose every block brings the
// up projection's block with it (the same weights a task).
inline int64_t amx_task_blocks(const Task& t) { return t.act != nullptr ? kAmxGroupBlocks / 2 : kAmxGroupBlocks; }

// Sizes t's panels and output groups for the AMX tiles; returns its (panel, group) task count.
inline int64_t amx_plan(Task& t) {
  t.panel = panel_rows(t.K * 2, kAmxRows);
  const int64_t blocks = (t.N + kLanes - 1) / kLanes, per_task = amx_task_blocks(t);
  t.groups = (blocks + per_task - 1) / per_task;
  return (t.M + t.panel - 1) / t.panel * t.groups;
}

// K chunks of an AMX task: from kAmxChunkRows rows a panel on, a task runs its row blocks over one chunk
// of about kAmxKChunk inputs at a time (the sums wait in fp32 between chunks, amx_block's `accumulate`),
// so that the chunk of its weights (4 blocks x 192 inputs: 24 KiB) stays in L1 across the row blocks
// and a row block's chunk (12 KiB) across the block pairs. Why: the 2x2 step runs at ~17 cycles a
// TDPBF16PS on operands in L1 but 35-44 on operands from L2 (scripts/probe_amx_tiles.cpp), where a task
// over the whole K (72 KiB of weights, 36 KiB a row block at K = 576) read them. A step's linears
// (SmolLM2, 2 threads, scripts/bench_cpu_gemv.py, alternated): 512 rows 67.7-69.9 -> 63.2-66.8 ms, 256
// rows 40.4-41.4 -> 37.1-37.5, 2048 rows 265-269 -> 242-256; at 64-128 rows it was neutral to slightly
// worse (the sums' reloads, with few row blocks to share a weight chunk), so it starts at 256 rows.
// Chunks of 96-128 inputs were slower than none at 512 rows, and 288 gained about half as much. The bits
// are the same as with K whole (tests/worker/test_cpu_linear.py).
inline constexpr int64_t kAmxKChunk = 192;
inline constexpr int64_t kAmxChunkRows = 256;

// Inputs per K chunk for a task of `rows` rows: the largest multiple of 32 up to kAmxKChunk that divides
// K, or K itself (one chunk) below kAmxChunkRows rows or when K is no longer than a chunk.
inline int64_t amx_k_chunk(int64_t K, int64_t rows) {
  if (rows < kAmxChunkRows || K <= kAmxKChunk) return K;
  for (int64_t kc = kAmxKChunk; kc >= kAmxK; kc -= kAmxK)
    if (K % kc == 0) return kc;
  return K;  // unreachable: K is a multiple of kAmxK
}

// Outputs of at least this many bytes are written with streaming stores (no read for ownership) where
// Finish's one-line path applies. Why: at prefill sizes each output line missed the core's caches (a
// layer's outputs at 512 rows, ~8 MiB, are more than the two L2s hold) and was read from memory before
// being written; those reads stalled the tile loads beside them. A step's linears at 512 rows
// (scripts/bench_cpu_gemv.py --threads 2 --no-lm-head, alternated): 70.1-71.2 -> 60.5-61.8 ms (with the
// stores sent to one L1 line instead: 54.5-54.8, the bound); a 512-token prefill step 142-145 -> 134-136
// ms, the same with every output streamed. Smaller outputs (a decode batch's) are read again while
// still in cache, and keep ordinary stores.
inline constexpr int64_t kStreamOutputBytes = int64_t{1} << 20;

// Task i of `t` (planned by amx_plan) with the AMX tiles (cpu_amx.h); K is a multiple of 32.
inline void amx_task(const Task& t, int64_t i) {
  const int64_t blocks = (t.N + kLanes - 1) / kLanes;
  const bool swiglu = t.act != nullptr;
  const int64_t per_task = amx_task_blocks(t), step = swiglu ? 1 : 2;  // output blocks an amx_block call
  const int64_t b0 = i % t.groups * per_task, b_end = std::min(blocks, b0 + per_task);
  const int64_t m_begin = i / t.groups * t.panel, m_end = std::min(t.M, m_begin + t.panel);
  const int64_t kc = amx_k_chunk(t.K, m_end - m_begin);
  // One fp32 sums buffer per (row block, amx_block call) of the task, kept across its K chunks; with one
  // chunk only two, used in turn. A call's epilogue (bias, rounding, stores: `Finish`) runs row by row
  // inside the next call's K loop (amx_block says why), in the last chunk; for SwiGLU once a row block's
  // (at most two) gate blocks are done, so that a row's 32 outputs go out as one line.
  const int64_t pairs = (b_end - b0 + step - 1) / step, row_blocks = (m_end - m_begin + kAmxRows - 1) / kAmxRows;
  const int64_t buffers = kc == t.K ? 2 : row_blocks * pairs;
  thread_local std::vector<float> sums_storage;
  if (static_cast<int64_t>(sums_storage.size()) < buffers * kAmxRows * 32 + 16)
    sums_storage.resize(buffers * kAmxRows * 32 + 16);
  float* sums = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(sums_storage.data()) + 63) & ~uintptr_t{63});
  const bool stream = t.M * t.N * 2 >= kStreamOutputBytes;
  thread_local std::vector<LaneMax> lanes;  // linear_argmax: the task's rows' lane maxima
  if (t.row_max != nullptr) lanes.assign(static_cast<size_t>(m_end - m_begin), LaneMax{});
  int64_t next = 0;  // the buffer the next block fills (one chunk)
  Finish pending;
  int configured = 0;  // the row count the loaded tile configuration is for
  for (int64_t k0 = 0; k0 < t.K; k0 += kc) {
    const bool last = k0 + kc == t.K;
    for (int64_t m0 = m_begin, rb = 0; m0 < m_end; m0 += kAmxRows, ++rb) {
      const int mr = static_cast<int>(std::min<int64_t>(kAmxRows, m_end - m0));
      if (mr != configured) {
        const TileConfig cfg = amx_config(mr);
        _tile_loadconfig(&cfg);
        configured = mr;
      }
      const uint16_t* x = t.x + m0 * t.ldx + k0;
      const float* first = nullptr;  // SwiGLU: the row block's first gate block's sums
      for (int64_t b = b0; b < b_end; b += step) {
        float* c = sums + (kc == t.K ? next : rb * pairs + (b - b0) / step) * (kAmxRows * 32);
        const uint16_t* w = t.w + b * t.wstride + k0 * 16;
        amx_block_for(mr > kAmxHalf, swiglu || b + 1 < b_end, x, t.ldx, kc, w,
                      swiglu ? t.w_up + b * t.wstride + k0 * 16 : w + t.wstride, c, 32, pending, pending.rows, k0 > 0);
        pending.rows = 0;
        if (last && swiglu) {
          if (b + 1 < b_end && first == nullptr) {
            first = c;
          } else {
            const int64_t n0 = (first != nullptr ? b - 1 : b) * kLanes;
            pending = Finish{first != nullptr ? first : c, nullptr, 0, t.y + m0 * t.N + n0, t.N, mr, stream,
                             first != nullptr ? c : nullptr, t.act};
          }
        } else if (last) {
          const int64_t n0 = b * kLanes;
          pending = Finish{c, t.bias != nullptr ? t.bias + n0 : nullptr, std::min<int64_t>(2 * kLanes, t.N - n0),
                           t.y + m0 * t.N + n0, t.N, mr, stream};
          if (t.row_max != nullptr) {
            pending.lane_max = lanes.data() + (m0 - m_begin);
            pending.col = n0;
          }
        }
        next ^= 1;
      }
    }
  }
  for (int64_t m = 0; m < pending.rows; ++m) pending(m);
  if (stream) _mm_sfence();  // streaming stores are weakly ordered: done before the pool's barrier
  if (configured) _tile_release();
  if (t.row_max != nullptr)
    for (int64_t m = m_begin; m < m_end; ++m) t.row_max[(i % t.groups) * t.M + m] = lanes[m - m_begin].fold();
}

// Every task of the linears ts[0 .. n) with the AMX tiles, as one list on the pool: linears that read the
// same input (q/k/v, gate/up) share their threads' tail. Why: SmolLM2's k and v projections are 3 tasks
// each, so at 32 rows one thread idled for a third of each while the other ran the last task; one list of
// q, k and v (15 tasks) and one of gate and up (48) made a decode step's linears 1.05-1.07x faster
// (the same bits: each task computes what it did alone).
inline void run_amx_tasks(Task* ts, int n) {
  struct Many {
    Task* ts;
    int n;
    int64_t first[4];  // first[j]: the list index of ts[j]'s task 0 (first[n]: the total)
  } many{ts, n, {0, 0, 0, 0}};
  TORCH_CHECK(n >= 1 && n <= 3, "gemm linear: 1 to 3 linears in one task list");
  for (int j = 0; j < n; ++j) many.first[j + 1] = many.first[j] + amx_plan(ts[j]);
  npu_serve_pool::Pool::instance().run(many.first[n], [](void* ctx, int64_t i) {
    const Many& m = *static_cast<const Many*>(ctx);
    int j = 0;
    while (i >= m.first[j + 1]) ++j;
    amx_task(m.ts[j], i - m.first[j]);
  }, &many);
}
#endif

// Checks one linear's operands (x [M, K] bf16 with contiguous rows, packed = pack(w) for w [N, K], bias
// [N] bf16 or None); returns the bias's data, or null for none.
inline const at::BFloat16* check_linear(const torch::Tensor& x, const torch::Tensor& packed, int64_t N,
                                        int64_t in_features, const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(NPU_SERVE_HAS_BF16_GEMM, "this CPU (or compiler) has no AVX512-BF16");
  TORCH_CHECK(x.device().is_cpu() && packed.device().is_cpu(), "gemm linear: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && packed.scalar_type() == at::kBFloat16, "gemm linear: bf16 only");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "gemm linear: x [M, K] with contiguous rows");
  const int64_t K = x.size(1);
  TORCH_CHECK(K == in_features, "gemm linear: x has K = ", K, " inputs, the weight ", in_features);
  const int64_t pairs = (K + 1) / 2;
  TORCH_CHECK(packed.dim() == 4 && packed.is_contiguous() && packed.size(0) == (N + kLanes - 1) / kLanes &&
                  packed.size(1) == pairs && packed.size(2) == kLanes && packed.size(3) == 2,
              "gemm linear: packed weight does not match x's K = ", K, " and N = ", N);
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kBFloat16 && bias->is_contiguous() && bias->numel() == N,
                "gemm linear: bias must be a contiguous bf16 [N]");
    return bias->data_ptr<at::BFloat16>();
  }
  return nullptr;
}

#if NPU_SERVE_HAS_BF16_GEMM
// The Task of y = x @ w.T (+ bias) for checked operands (check_linear), y [M, N] allocated.
inline Task make_task(const torch::Tensor& x, const torch::Tensor& packed, int64_t N, const at::BFloat16* bias,
                      torch::Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1), pairs = (K + 1) / 2;
  return Task{reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()), x.stride(0), nullptr, M, K, N, pairs,
              reinterpret_cast<const uint16_t*>(packed.data_ptr<at::BFloat16>()), pairs * 32, bias,
              y.data_ptr<at::BFloat16>(), 0, 0};
}
#endif

// x [M, K] bf16 (rows contiguous), packed = pack(w) for w [N, K], bias [N] or None: y [M, N] bf16,
// computed by the given variant's tiles (dot and FMA: the same bits, only the speed differs; AMX:
// its own order of sums, and only where amx_usable(K)).
inline torch::Tensor linear_with(Variant variant, const torch::Tensor& x, const torch::Tensor& packed, int64_t N,
                                 int64_t in_features, const c10::optional<torch::Tensor>& bias) {
  const at::BFloat16* bp = check_linear(x, packed, N, in_features, bias);
  const int64_t M = x.size(0), K = x.size(1);
  auto y = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
#if NPU_SERVE_HAS_BF16_GEMM
  Task task = make_task(x, packed, N, bp, y);
  const int64_t pairs = task.pairs;
  if (variant == kAmx) {
#if NPU_SERVE_HAS_AMX
    TORCH_CHECK(amx_ready() && K % kAmxK == 0, "gemm linear: the AMX tiles need AMX and K a multiple of 32");
    run_amx_tasks(&task, 1);
    return y;
#else
    TORCH_CHECK(false, "gemm linear: built without AMX");
#endif
  }
  if (variant == kDot) {
    run_tasks<kMR, kNV, false>(task, K * 2);
    return y;
  }
  // x in fp32 once, rows padded with a zero to an even length (the last pair's partner).
  std::vector<float> xf(static_cast<size_t>(M * pairs * 2), 0.0f);
  for (int64_t m = 0; m < M; ++m) {
    const uint16_t* row = task.x + m * task.ldx;
    float* out = xf.data() + m * pairs * 2;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16)
      _mm512_storeu_ps(out + k, npu_serve_simd::widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k))));
    for (; k < K; ++k) out[k] = static_cast<float>(c10::bit_cast<at::BFloat16>(row[k]));
  }
  task.xf = xf.data();
  run_tasks<kFmaMR, kFmaNV, true>(task, pairs * 2 * 4);
#endif
  return y;
}

// Whether the AMX tiles can run a linear of K inputs here.
inline bool amx_usable(int64_t K) { return NPU_SERVE_HAS_AMX && amx_ready() && K % kAmxK == 0; }

// The variants linear() uses: the fastest overall, and the faster of the two AVX512 ones (for inputs
// the AMX tiles cannot take). -1 until chosen (on first use, by timing them here), or set for tests.
inline std::atomic<int>& variant_slot() {
  static std::atomic<int> slot{-1};
  return slot;
}
inline std::atomic<int>& avx_variant_slot() {
  static std::atomic<int> slot{-1};
  return slot;
}

// Times the variants on one SmolLM2-sized layer (64 rows x 576 -> 1536, weights in cache: the
// compute-bound case where they differ); best of 5 alternated runs each. Sets both slots.
inline void choose_variant() {
  const int64_t M = 64, K = 576, N = 1536;
  // Constant operands: the time does not depend on the values, and torch's global generator (which
  // seeded sampling may rely on) is left alone.
  const torch::Tensor x = torch::full({M, K}, 0.5, torch::dtype(at::kBFloat16));
  const torch::Tensor packed = pack(torch::full({N, K}, 0.25, torch::dtype(at::kBFloat16)));
  const bool amx = amx_usable(K);
  double best[3] = {1e30, 1e30, 1e30};
  for (int round = 0; round < 5; ++round)
    for (int v : {kDot, kFma, kAmx}) {
      if (v == kAmx && !amx) continue;
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < 4; ++i) linear_with(static_cast<Variant>(v), x, packed, N, K, c10::nullopt);
      best[v] = std::min(best[v], std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  const int avx = best[kFma] < best[kDot] ? kFma : kDot;
  avx_variant_slot().store(avx, std::memory_order_relaxed);
  variant_slot().store(best[kAmx] < best[avx] ? kAmx : avx, std::memory_order_relaxed);
}

inline Variant variant() {
  if (variant_slot().load(std::memory_order_relaxed) < 0) {
    if (!NPU_SERVE_HAS_BF16_GEMM) return kDot;
    choose_variant();
  }
  return static_cast<Variant>(variant_slot().load(std::memory_order_relaxed));
}

// Forces a variant (tests, benchmarks); false (nothing changed) for AMX where it cannot run.
inline bool set_variant(Variant v) {
  if (v == kAmx && !(NPU_SERVE_HAS_AMX && amx_ready())) return false;
  if (v != kAmx) avx_variant_slot().store(v, std::memory_order_relaxed);
  else if (avx_variant_slot().load(std::memory_order_relaxed) < 0) avx_variant_slot().store(kFma);
  variant_slot().store(v, std::memory_order_relaxed);
  return true;
}

// Below this many rows a linear is bound by reading the weights, and the dot tiles (three weight streams,
// no widening) read them fastest on every CPU measured; above, the variant timed fastest here.
inline constexpr int64_t kFmaMinRows = 8;

// Which tiles run x [M, K]: the AMX ones at every row count where chosen and usable (so a row's
// result never depends on its batch), else the dot tiles below kFmaMinRows rows and the faster AVX512
// variant above.
inline Variant variant_for(int64_t M, int64_t K) {
  const Variant v = variant();
  if (v == kAmx && amx_usable(K)) return kAmx;
  if (M < kFmaMinRows) return kDot;
  return static_cast<Variant>(v == kAmx ? avx_variant_slot().load(std::memory_order_relaxed) : v);
}

inline torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& packed, int64_t N, int64_t in_features,
                            const c10::optional<torch::Tensor>& bias) {
  const int64_t M = x.dim() == 2 ? x.size(0) : 0;
  return linear_with(variant_for(M, in_features), x, packed, N, in_features, bias);
}

// A linear's weight packed once (at model load), with its shape: what the layers hold and call.
struct PackedWeight {
  torch::Tensor data;  // pack(w)
  int64_t out_features, in_features;

  explicit PackedWeight(const torch::Tensor& w) : data(pack(w)), out_features(w.size(0)), in_features(w.size(1)) {}

  torch::Tensor operator()(const torch::Tensor& x, const c10::optional<torch::Tensor>& bias) const {
    return linear(x, data, out_features, in_features, bias);
  }
};

// x [M, K] through 1 to 3 packed weights of K inputs each (q/k/v, gate/up), with a bias (or None) each:
// one y [M, N_j] per weight, each exactly what that weight's linear() gives. With the AMX tiles the
// linears run as one task list (run_amx_tasks says why), else one after the other.
inline std::vector<torch::Tensor> linear_many(const torch::Tensor& x, const std::vector<const PackedWeight*>& ws,
                                              const std::vector<c10::optional<torch::Tensor>>& biases) {
  TORCH_CHECK(!ws.empty() && ws.size() <= 3 && biases.size() == ws.size(),
              "gemm linear_many: 1 to 3 weights and one bias (or None) each");
  std::vector<torch::Tensor> ys;
#if NPU_SERVE_HAS_BF16_GEMM && NPU_SERVE_HAS_AMX
  const int64_t M = x.dim() == 2 ? x.size(0) : 0;
  if (M > 0 && variant_for(M, ws[0]->in_features) == kAmx) {
    Task ts[3];
    for (size_t j = 0; j < ws.size(); ++j) {
      const PackedWeight& w = *ws[j];
      const at::BFloat16* bp = check_linear(x, w.data, w.out_features, w.in_features, biases[j]);
      ys.push_back(torch::empty({M, w.out_features}, x.options()));
      ts[j] = make_task(x, w.data, w.out_features, bp, ys.back());
    }
    run_amx_tasks(ts, static_cast<int>(ws.size()));
    return ys;
  }
#endif
  for (size_t j = 0; j < ws.size(); ++j) ys.push_back((*ws[j])(x, biases[j]));
  return ys;
}

// linear(x, packed, N, in_features, bias) and, beside it, torch.argmax of each row of that bf16 output
// (int64 [M]: the first index of the row's largest value, the first NaN's where there is one), from each
// AMX task's epilogue, which sees its outputs as it rounds and stores them (Finish::track_max), then one
// pass over the tasks' maxima. Why: a greedy decode step's argmax read the 32 x 49152 logits again from
// memory (lm_head streams them out): ~0.3 ms a step (median, c=32 loop), where the epilogue has every
// value in a register already. Measured (the c=32 loop, alternated): lm_head +0.1 ms, the sampler -0.3 ms
// (0.41-0.44 -> 0.12-0.15 ms), so ~0.2 ms a decode step; a reduction per block instead of per lane cost
// +0.45 ms in lm_head. Where the AMX tiles do not run this linear, the second tensor is undefined (the
// caller takes the argmax of y itself).
inline std::tuple<torch::Tensor, torch::Tensor> linear_argmax(const torch::Tensor& x, const torch::Tensor& packed,
                                                              int64_t N, int64_t in_features,
                                                              const c10::optional<torch::Tensor>& bias) {
#if NPU_SERVE_HAS_BF16_GEMM && NPU_SERVE_HAS_AMX
  const int64_t M = x.dim() == 2 ? x.size(0) : 0;
  if (M > 0 && N > 0 && N < (int64_t{1} << 31) && variant_for(M, in_features) == kAmx) {
    const at::BFloat16* bp = check_linear(x, packed, N, in_features, bias);
    auto y = torch::empty({M, N}, x.options());
    Task t = make_task(x, packed, N, bp, y);
    amx_plan(t);
    std::vector<RowMax> maxima(static_cast<size_t>(t.groups * M));
    t.row_max = maxima.data();
    run_amx_tasks(&t, 1);
    auto ids = torch::empty({M}, x.options().dtype(at::kLong));
    int64_t* out = ids.data_ptr<int64_t>();
    for (int64_t m = 0; m < M; ++m) {
      int64_t index = -1;
      float best = 0.f;
      for (int64_t g = 0; g < t.groups; ++g) {  // in column order: ties and NaNs keep the first
        const RowMax& r = maxima[g * M + m];
        if (r.nan >= 0) {
          index = r.nan;
          break;
        }
        if (r.index >= 0 && (index < 0 || r.best > best)) best = r.best, index = r.index;
      }
      out[m] = index;
    }
    return {y, ids};
  }
#endif
  return {linear(x, packed, N, in_features, bias), torch::Tensor()};
}

// SwiGLU's first half in one pass: silu(x @ gate.T) * (x @ up.T) for x [M, K] (bf16, rows contiguous) and
// two packed weights of one shape with no bias, `act` torch's silu of every bf16 value (cpu_fused.h's
// silu_table). The same bits as linear() of each and silu_mul of the two, by construction: each output
// is rounded as the linear rounds it, then looked up, multiplied and rounded as silu_mul does. Only on
// the AMX tiles, where linear() itself would run them, and for N a multiple of 16; else an undefined
// tensor (the caller runs the two linears and silu_mul). Why: at prefill sizes the two outputs (2 x 1.5
// MiB a layer at 512 rows for SmolLM2) went to memory and silu_mul read them back; this writes one
// output of half their size, and a decode step has one pool region less a layer.
inline torch::Tensor gate_up_silu(const torch::Tensor& x, const PackedWeight& gate, const PackedWeight& up,
                                  const uint16_t* act) {
#if NPU_SERVE_HAS_BF16_GEMM && NPU_SERVE_HAS_AMX
  const int64_t N = gate.out_features, K = gate.in_features;
  if (act == nullptr || up.out_features != N || up.in_features != K || N % kLanes != 0 || x.dim() != 2 ||
      x.size(0) == 0 || variant_for(x.size(0), K) != kAmx)
    return torch::Tensor();
  check_linear(x, gate.data, N, K, c10::nullopt);
  check_linear(x, up.data, N, K, c10::nullopt);
  auto y = torch::empty({x.size(0), N}, x.options());
  Task t = make_task(x, gate.data, N, nullptr, y);
  t.w_up = reinterpret_cast<const uint16_t*>(up.data.data_ptr<at::BFloat16>());
  t.act = act;
  run_amx_tasks(&t, 1);
  return y;
#else
  (void)x, (void)gate, (void)up, (void)act;
  return torch::Tensor();
#endif
}

}  // namespace npu_serve_gemm
