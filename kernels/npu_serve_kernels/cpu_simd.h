// Small AVX-512 helpers shared by the CPU kernels (linear, fused decoder ops, decode and prefill attention).

#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>

#include <cstdint>

namespace npu_serve_simd {

// 16 bf16 values (their bits, one per 16-bit lane) as 16 floats: bf16 is a float's high half, so a
// zero-extension and a 16-bit shift convert exactly.
inline __m512 widen_bf16(__m256i bits) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// 16 floats as bf16 bits, rounded as c10::BFloat16 rounds (to nearest even; any NaN -> 0x7FC0), with
// integer arithmetic: the reference for narrow_bf16 below.
inline __m256i narrow_bf16_exact(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(r);
}

#if defined(__AVX512BF16__)
// Lanes where VCVTNEPS2BF16 and c10::BFloat16 differ: NaNs (the instruction keeps a NaN's sign and
// payload) and denormals (it flushes them to zero). Over all 2^32 floats these are the only ones
// (checked once with a C++ loop; tests/worker/test_cpu_to_bf16.py checks the boundaries on every run).
inline __mmask16 bf16_convert_differs(__m512 v) {
  return _mm512_fpclass_ps_mask(v, 0x01 | 0x20 | 0x80);  // QNaN | denormal | SNaN
}
#endif

// narrow_bf16_exact's bits, with VCVTNEPS2BF16 (one instruction for nine) where the CPU has it, and the
// integer path only for a vector holding a lane where the two differ. Why: every output of the linears,
// the fused ops and the prefill attention is rounded here; one thread's 512-row step of SmolLM2's
// linears took 108.6 -> 102.2 ms (scripts/bench_cpu_gemv.py-like loop, AMX tiles).
inline __m256i narrow_bf16(__m512 v) {
#if defined(__AVX512BF16__)
  const __mmask16 odd = bf16_convert_differs(v);
  const __m256i fast = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
  if (__builtin_expect(odd == 0, 1)) return fast;
  return _mm256_mask_blend_epi16(odd, fast, narrow_bf16_exact(v));
#else
  return narrow_bf16_exact(v);
#endif
}

// The first n of 16 lanes: all for n >= 16, none for n <= 0 (a row's tail, or a vector past its end).
inline __mmask16 lanes_left(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1);
}

}  // namespace npu_serve_simd

#endif
