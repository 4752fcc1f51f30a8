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

// The first n of 16 lanes: all for n >= 16, none for n <= 0 (a row's tail, or a vector past its end).
inline __mmask16 lanes_left(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1);
}

}  // namespace npu_serve_simd

#endif
