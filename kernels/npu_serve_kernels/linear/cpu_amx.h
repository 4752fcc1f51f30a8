// The AMX tiles of the packed bf16 linear (cpu_gemm.h): TDPBF16PS over the same packed weights.
//
// Why: on CPUs with AMX, oneDNN beat the AVX512 tiles from ~24 rows up, yet it repacks the weights on
// every call: a SmolLM2 step's linears took 52 ms at 32 rows and 661 ms at 2048 rows (2 threads, a
// 2-core Xeon with AMX), where reading the weights once takes ~12 ms. An AMX B tile is 16 rows of
// 64 bytes, each row one pair of inputs for 16 output features: exactly 16 consecutive pairs of one
// packed block ([N/16][K/2][16][2]), so the packed weights load as tiles with a 64-byte stride and
// need no second copy.
//
// Tiles (8 registers): C0..C3 = 2 halves of up to 16 rows x 2 blocks of 16 outputs (fp32), A0/A1 =
// the halves' 32 inputs, B0/B1 = the blocks' 32 inputs. One step of K (32 inputs) is 4 loads and up
// to 4 TDPBF16PS; a row block is up to 32 rows, configured exactly (rows past M are never read).
//
// Numerics: TDPBF16PS sums pairs of bf16 products in fp32, denormals flushed, round to nearest even,
// like VDPBF16PS, but in its own order (the SDM sums a tile row's products before adding them to C),
// so its bits are not the dot/FMA tiles'. Within these tiles an output's sums do not depend on the
// rows beside it: the kernel runs them at every row count (cpu_gemm.h), so a row's result is still
// the same alone, in a decode batch or in a prefill chunk.
//
// Linux gives a process AMX's tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM, since
// 5.16); where that fails the kernel keeps its AVX512 tiles.

#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define NPU_SERVE_HAS_AMX 1
#else
#define NPU_SERVE_HAS_AMX 0
#endif

namespace npu_serve_gemm {

inline constexpr int kAmxHalf = 16;     // rows of an A/C tile
inline constexpr int kAmxRows = 32;     // rows of a row block (two halves)
inline constexpr int64_t kAmxK = 32;    // inputs per step: 64 bytes of an A row, 16 pair rows of a B tile
inline constexpr int64_t kPrefetchK = 2 * kAmxK;  // how far ahead (in inputs) the B tiles are prefetched

#if NPU_SERVE_HAS_AMX

// Whether this process may use the tiles (asked once; the answer holds for all its threads).
inline bool amx_ready() {
  static const bool ok = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;  // <asm/prctl.h>, Linux 5.16
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

// LDTILECFG's 64-byte operand (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// The configuration for a row block of `mr` (1..32) rows: C0/C1 and A0 hold its first min(mr, 16)
// rows, C2/C3 and A1 the rest (left unconfigured when there is none), B0/B1 16 pair rows.
inline TileConfig amx_config(int mr) {
  TileConfig c;
  const int r0 = std::min(mr, kAmxHalf), r1 = mr - r0;
  for (int t : {0, 1, 4}) c.rows[t] = static_cast<uint8_t>(r0), c.colsb[t] = 64;
  if (r1 > 0)
    for (int t : {2, 3, 5}) c.rows[t] = static_cast<uint8_t>(r1), c.colsb[t] = 64;
  for (int t : {6, 7}) c.rows[t] = 16, c.colsb[t] = 64;
  return c;
}

// No work beside the tiles (amx_block's default).
struct NoRows {
  void operator()(int64_t) const {}
};

// One row block (x: its first row, ldx elements apart; two halves when kHalf1) x one or two blocks of
// 16 outputs (w0, w1: the blocks' packed data; w1 unread without kBlock1) over K (a multiple of
// 32): the fp32 sums into c (row m, output j of the pair at c[m * ldc + j]; ldc a multiple of 16).
// Beside it, rows(0) .. rows(num_rows - 1), a few each step of K: the caller's vector work on an earlier
// block (cpu_gemm.h: its bias, rounding and stores). Why: the tile unit and the vector units run side
// by side only when their instructions are interleaved within the core's reorder window; after the
// loop, that epilogue had the core to itself (SmolLM2's linears, 2 threads, paired builds: 1.07x
// faster at 96 rows, 1.10x at 512, 1.14x at 2048, unchanged at 1-8).
// With `accumulate`, the sums start from what c holds (an earlier call over the inputs before these K)
// instead of zero: TDPBF16PS adds to the fp32 tile it loads, so splitting K this way keeps the bits.
template <bool kHalf1, bool kBlock1, typename Rows = NoRows>
inline void amx_block(const uint16_t* x, int64_t ldx, int64_t K, const uint16_t* w0, const uint16_t* w1, float* c,
                      int64_t ldc = 32, const Rows& rows = Rows{}, int64_t num_rows = 0, bool accumulate = false) {
  const int64_t per_step = (num_rows + K / kAmxK - 1) / std::max<int64_t>(K / kAmxK, 1);
  int64_t done = 0;
  const int64_t cstride = ldc * 4;
  if (accumulate) {
    _tile_loadd(0, c, cstride);
    if constexpr (kBlock1) _tile_loadd(1, c + 16, cstride);
    if constexpr (kHalf1) {
      _tile_loadd(2, c + kAmxHalf * ldc, cstride);
      if constexpr (kBlock1) _tile_loadd(3, c + kAmxHalf * ldc + 16, cstride);
    }
  } else {
    _tile_zero(0);
    if constexpr (kBlock1) _tile_zero(1);
    if constexpr (kHalf1) {
      _tile_zero(2);
      if constexpr (kBlock1) _tile_zero(3);
    }
  }
  const int64_t xstride = ldx * 2;
  for (int64_t k = 0; k < K; k += kAmxK) {
    for (int64_t l = 0; l < 1024; l += 64) {  // the B tiles of a step ahead
      _mm_prefetch(reinterpret_cast<const char*>(w0 + (k + kPrefetchK) * 16) + l, _MM_HINT_T0);
      if constexpr (kBlock1) _mm_prefetch(reinterpret_cast<const char*>(w1 + (k + kPrefetchK) * 16) + l, _MM_HINT_T0);
    }
    _tile_loadd(4, x + k, xstride);
    _tile_loadd(6, w0 + k * 16, 64);  // pair k/2 of the block starts at (k/2) * 32 elements
    if constexpr (kHalf1) _tile_loadd(5, x + kAmxHalf * ldx + k, xstride);
    if constexpr (kBlock1) _tile_loadd(7, w1 + k * 16, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (kBlock1) _tile_dpbf16ps(1, 4, 7);
    if constexpr (kHalf1) {
      _tile_dpbf16ps(2, 5, 6);
      if constexpr (kBlock1) _tile_dpbf16ps(3, 5, 7);
    }
    for (const int64_t end = std::min(num_rows, done + per_step); done < end; ++done) rows(done);
  }
  for (; done < num_rows; ++done) rows(done);
  _tile_stored(0, c, cstride);
  if constexpr (kBlock1) _tile_stored(1, c + 16, cstride);
  if constexpr (kHalf1) {
    _tile_stored(2, c + kAmxHalf * ldc, cstride);
    if constexpr (kBlock1) _tile_stored(3, c + kAmxHalf * ldc + 16, cstride);
  }
}

// amx_block for a row block of more than 16 rows or not (`half1`) and two output blocks or one (`two`).
template <typename Rows = NoRows>
inline void amx_block_for(bool half1, bool two, const uint16_t* x, int64_t ldx, int64_t K, const uint16_t* w0,
                          const uint16_t* w1, float* c, int64_t ldc = 32, const Rows& rows = Rows{},
                          int64_t num_rows = 0, bool accumulate = false) {
  if (half1 && two) amx_block<true, true>(x, ldx, K, w0, w1, c, ldc, rows, num_rows, accumulate);
  else if (half1) amx_block<true, false>(x, ldx, K, w0, w1, c, ldc, rows, num_rows, accumulate);
  else if (two) amx_block<false, true>(x, ldx, K, w0, w1, c, ldc, rows, num_rows, accumulate);
  else amx_block<false, false>(x, ldx, K, w0, w1, c, ldc, rows, num_rows, accumulate);
}

#else

inline bool amx_ready() { return false; }

#endif

}  // namespace npu_serve_gemm
