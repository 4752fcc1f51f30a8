// Greedy sampling's argmax over a step's fp32 or bf16 logits rows, with torch.argmax's rule: the first index
// of the largest value, where NaN counts as larger than any number (the first NaN wins).
//
// Why: torch's CPU argmax compares one element at a time; at 32 rows of a 49k vocabulary it took
// ~2.3 ms a decode step (3.6% of a c=32 step's samples in perf, more than the sampler's Python),
// where reading the 6 MiB of logits takes ~0.2 ms (torch's amax over the same rows). Here each row is
// two vector passes over data that stays in L2: its maximum (and whether it holds a NaN), then the
// first index equal to it; rows are spread over the helper pool (../cpu_pool.h).
//
// bf16 rows: every bf16 value is an fp32 value (its high half), so the argmax of the widened row is the
// argmax of the row, and greedy rows need no fp32 copy of their logits: the model runner hands the
// sampler lm_head's bf16 output, which this reads in half the bytes (a c=32 decode step's 32 x 49152
// logits: no 6 MiB fp32 copy written, 3 MiB read instead of 6).

#pragma once

#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../cpu_pool.h"
#include "../cpu_simd.h"

namespace npu_serve_sampling {

inline float widen(float x) { return x; }
inline float widen(at::BFloat16 x) { return static_cast<float>(x); }  // exact

#if defined(__AVX512F__)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::BFloat16* p) {
  return npu_serve_simd::widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
#endif

// The first index of row[0..n)'s maximum (n >= 1); a NaN anywhere: the first NaN's index.
template <typename T>
inline int64_t argmax_row(const T* row, int64_t n) {
  float best = -std::numeric_limits<float>::infinity();
  bool nan = false;
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 vmax = _mm512_set1_ps(best);
  __mmask16 unordered = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = load16(row + i);
    unordered |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    vmax = _mm512_max_ps(vmax, v);
  }
  nan = unordered != 0;
  best = _mm512_reduce_max_ps(vmax);
#endif
  for (; i < n; ++i) {
    const float v = widen(row[i]);
    if (std::isnan(v)) nan = true;
    else if (v > best) best = v;
  }
  if (nan) {
    for (int64_t j = 0; j < n; ++j)
      if (std::isnan(widen(row[j]))) return j;
  }
  int64_t j = 0;
#if defined(__AVX512F__)
  const __m512 target = _mm512_set1_ps(best);
  for (; j + 16 <= n; j += 16) {
    const __mmask16 hit = _mm512_cmp_ps_mask(load16(row + j), target, _CMP_EQ_OQ);
    if (hit) return j + __builtin_ctz(hit);
  }
#endif
  for (; j < n; ++j)
    if (widen(row[j]) == best) return j;
  return n - 1;  // unreachable: best is one of the row's values (-inf when they all are)
}

template <typename T>
inline void argmax_rows_of(const T* data, int64_t rows, int64_t n, int64_t ld, int64_t* idx) {
  auto one = [&](int64_t r) { idx[r] = argmax_row(data + r * ld, n); };
  npu_serve_pool::parallel_chunks(rows, one);
}

// logits: fp32 or bf16 [N, V] on the CPU, rows contiguous, V >= 1. Returns int64 [N], torch.argmax(logits, -1).
inline at::Tensor argmax_rows(const at::Tensor& logits) {
  TORCH_CHECK(logits.device().is_cpu() && logits.dim() == 2 &&
                  (logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16),
              "argmax_rows: logits must be a float32 or bfloat16 [N, V] CPU tensor");
  TORCH_CHECK(logits.size(1) >= 1 && logits.stride(1) == 1, "argmax_rows: rows must be non-empty and contiguous");
  const int64_t rows = logits.size(0), n = logits.size(1), ld = logits.stride(0);
  at::Tensor out = at::empty({rows}, logits.options().dtype(at::kLong));
  int64_t* idx = out.data_ptr<int64_t>();
  if (logits.scalar_type() == at::kFloat) argmax_rows_of(logits.data_ptr<float>(), rows, n, ld, idx);
  else argmax_rows_of(logits.data_ptr<at::BFloat16>(), rows, n, ld, idx);
  return out;
}

}  // namespace npu_serve_sampling
