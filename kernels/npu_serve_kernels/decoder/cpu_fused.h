// RMSNorm and RoPE as transformers computes them, with fewer passes over memory and the same bits.
//
// (And a plain add or multiply of two same-shaped tensors, on both cores: torch's run on one core
// below its grain size, where cpu_decoder.h's Serial scope keeps them.)
//
// Why: in a 2048-token prefill step of SmolLM2 (bf16, 2-core Xeon) torch's elementwise ops took more
// time than the linears: per layer two RMSNorms of 8 ops (to float, pow, mean, add, rsqrt, mul, to
// bf16, mul: five full passes over [T, C]) and RoPE's 5 ops on q and on k (neg, cat, two muls, add),
// each op one pass that rounds its result (torch.profiler: mul 319 ms, copy 109, pow 86, add 71, cat 30,
// neg 13 of a 2.3 s step).
//
// Same bits by construction: every op here is one IEEE operation per element in transformers' order,
// rounded where torch rounds. For bf16 tensors, torch's elementwise ops compute in fp32 and round each
// result to bf16 (nearest even), so the fused loops round after each op too; products and sums of the
// fp32 path are single correctly rounded operations, vectorised or not; rsqrt is 1/sqrt (torch's
// Vectorized<float>::rsqrt and its scalar tail both are, and both are correctly rounded). The one
// reduction, RMSNorm's mean of squares, adds the squares in the order of torch's own sum kernel
// (torch_row_sum), used for a width only after it matched torch's `mean` bit for bit here, else it is
// torch's `mean` on a tensor of the same shape, dtype and values as in transformers. The model runner's
// start-up check (ModelRunner._fast_matches) compares the whole forward with transformers' bit for bit
// anyway.
//
// Where the CPU lacks AVX-512, or a tensor is not contiguous or not bf16/fp32, the op-for-op versions
// in cpu_decoder.h run instead.

#pragma once

#include <torch/extension.h>

#include "../cpu_pool.h"
#include "../cpu_simd.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define NPU_SERVE_HAS_FUSED 1
#else
#define NPU_SERVE_HAS_FUSED 0
#endif

namespace npu_serve_fused {

using at::Tensor;

#if NPU_SERVE_HAS_FUSED

// Element access for the two dtypes, 16 lanes at a time, as fp32; `round` is what torch does to an
// op's fp32 result in that dtype (bf16: nearest even, NaN -> 0x7FC0, as c10::BFloat16; fp32: nothing).
template <typename T>
struct Lanes;

template <>
struct Lanes<float> {
  static __m512 load(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, __mmask16 m, __m512 v) { _mm512_mask_storeu_ps(p, m, v); }
  // Already rounded; the empty asm keeps the compiler from contracting this product and a following
  // sum into one FMA (GCC contracts by default), which would skip the rounding torch does between them.
  static __m512 round(__m512 v) {
    asm("" : "+v"(v));
    return v;
  }
};

template <>
struct Lanes<at::BFloat16> {
  static __m512 load(const at::BFloat16* p, __mmask16 m) {
    return npu_serve_simd::widen_bf16(_mm256_maskz_loadu_epi16(m, p));
  }
  static __m256i bits(__m512 v) { return npu_serve_simd::narrow_bf16(v); }
  static void store(at::BFloat16* p, __mmask16 m, __m512 v) { _mm256_mask_storeu_epi16(p, m, bits(v)); }
  static __m512 round(__m512 v) {
    return npu_serve_simd::widen_bf16(bits(v));
  }
};

using npu_serve_simd::lanes_left;

// Runs fn(lo, hi) over [0, rows) in chunks on the extension's pool (rows are independent).
template <typename Fn>
inline void for_rows(int64_t rows, int64_t row_elems, Fn fn) {
  const int64_t per_chunk = std::max<int64_t>(1, (int64_t{16} << 10) / std::max<int64_t>(row_elems, 1));
  struct Ctx {
    Fn* fn;
    int64_t rows, per_chunk;
  } ctx{&fn, rows, per_chunk};
  npu_serve_pool::Pool::instance().run((rows + per_chunk - 1) / per_chunk, [](void* p, int64_t i) {
    const Ctx& c = *static_cast<const Ctx*>(p);
    (*c.fn)(i * c.per_chunk, std::min(c.rows, (i + 1) * c.per_chunk));
  }, &ctx);
}

// fn(i, lanes) for every 16 elements of [0, n) (lanes: those of the 16 that exist), in chunks of 16 Ki
// elements on the extension's pool: the loop of the elementwise ops below.
template <typename Fn>
inline void for_lanes(int64_t n, Fn fn) {
  constexpr int64_t kChunk = 16 << 10;
  for_rows((n + kChunk - 1) / kChunk, kChunk, [&](int64_t lo, int64_t hi) {
    const int64_t end = std::min(n, hi * kChunk);
    for (int64_t i = lo * kChunk; i < end; i += 16) fn(i, lanes_left(end - i));
  });
}

// sq = float(x)^2, elementwise (torch: x.to(float32).pow(2), which is x * x).
// Rows lo .. hi-1 of it, on the calling thread.
template <typename T>
inline void square_rows(const T* x, float* sq, int64_t lo, int64_t hi, int64_t C) {
  for (int64_t i = lo * C; i < hi * C; i += 16) {
    const __mmask16 m = lanes_left(hi * C - i);
    const __m512 v = Lanes<T>::load(x + i, m);
    _mm512_mask_storeu_ps(sq + i, m, _mm512_mul_ps(v, v));
  }
}

// All rows, on the pool.
template <typename T>
inline void squares(const T* x, float* sq, int64_t rows, int64_t C) {
  for_rows(rows, C, [&](int64_t lo, int64_t hi) { square_rows(x, sq, lo, hi, C); });
}

// out = weight * to_T(float(x) * (1 / sqrt(var + eps))), row by row.
// Rows lo .. hi-1 of it, on the calling thread.
template <typename T>
inline void normalise_rows(const T* x, const float* var, const T* weight, float eps, T* out, int64_t lo, int64_t hi,
                           int64_t C) {
  for (int64_t r = lo; r < hi; ++r) {
    const __m512 scale = _mm512_set1_ps(1.0f / std::sqrt(var[r] + eps));
    for (int64_t j = 0; j < C; j += 16) {
      const __mmask16 m = lanes_left(C - j);
      const __m512 h = Lanes<T>::round(_mm512_mul_ps(Lanes<T>::load(x + r * C + j, m), scale));
      Lanes<T>::store(out + r * C + j, m, _mm512_mul_ps(Lanes<T>::load(weight + j, m), h));
    }
  }
}

// All rows, on the pool.
template <typename T>
inline void normalise(const T* x, const float* var, const T* weight, float eps, T* out, int64_t rows, int64_t C) {
  for_rows(rows, C, [&](int64_t lo, int64_t hi) { normalise_rows(x, var, weight, eps, out, lo, hi, C); });
}

// out[t, h] = x[t, h] * cos[t] + rotate_half(x[t, h]) * sin[t], each op rounded to T; x [T, H, D], cos/sin [T, D].
template <typename T>
inline void rotary(const T* x, const T* cos, const T* sin, T* out, int64_t tokens, int64_t heads, int64_t D) {
  const int64_t half = D / 2;
  for_rows(tokens, heads * D, [&](int64_t lo, int64_t hi) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int64_t t = lo; t < hi; ++t) {
      const T* c = cos + t * D;
      const T* s = sin + t * D;
      for (int64_t h = 0; h < heads; ++h) {
        const T* xr = x + (t * heads + h) * D;
        T* o = out + (t * heads + h) * D;
        for (int64_t j = 0; j < half; j += 16) {
          const __mmask16 m = lanes_left(half - j);
          const __m512 x1 = Lanes<T>::load(xr + j, m), x2 = Lanes<T>::load(xr + half + j, m);
          // First half: x1 * cos + (-x2) * sin; second half: x2 * cos + x1 * sin.
          const __m512 a1 = Lanes<T>::round(_mm512_mul_ps(x1, Lanes<T>::load(c + j, m)));
          const __m512 b1 = Lanes<T>::round(_mm512_mul_ps(_mm512_xor_ps(x2, sign), Lanes<T>::load(s + j, m)));
          Lanes<T>::store(o + j, m, _mm512_add_ps(a1, b1));
          const __m512 a2 = Lanes<T>::round(_mm512_mul_ps(x2, Lanes<T>::load(c + half + j, m)));
          const __m512 b2 = Lanes<T>::round(_mm512_mul_ps(x1, Lanes<T>::load(s + half + j, m)));
          Lanes<T>::store(o + half + j, m, _mm512_add_ps(a2, b2));
        }
      }
    }
  });
}

// out = a + b or a * b, elementwise, rounded to T (torch's add with alpha 1 is fmadd(b, 1, a): the
// same single rounding).
template <typename T, bool kMul>
inline void binary(const T* a, const T* b, T* out, int64_t n) {
  for_lanes(n, [&](int64_t i, __mmask16 m) {
    const __m512 x = Lanes<T>::load(a + i, m), y = Lanes<T>::load(b + i, m);
    Lanes<T>::store(out + i, m, kMul ? _mm512_mul_ps(x, y) : _mm512_add_ps(x, y));
  });
}

// out = to_bf16(float(act[gate]) * float(up)), elementwise: SwiGLU's silu(gate) * up, with silu read from
// `act`, the 65536 bf16 results of torch's silu by input bits (silu_table below).
inline void silu_mul(const at::BFloat16* gate, const at::BFloat16* up, const uint16_t* act, at::BFloat16* out,
                     int64_t n) {
  // A gather of 32 bits at act + 2 * bits: act[bits] in the low half (little endian) and its neighbour
  // above (act has one padding entry); shifted up 16, the low half is the fp32 value of act[bits].
  const int* base = reinterpret_cast<const int*>(act);
  for_lanes(n, [&](int64_t i, __mmask16 m) {
    const __m512i bits = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, gate + i));
    const __m512i got = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, bits, base, 2);
    const __m512 a = _mm512_castsi512_ps(_mm512_slli_epi32(got, 16));
    Lanes<at::BFloat16>::store(out + i, m, _mm512_mul_ps(a, Lanes<at::BFloat16>::load(up + i, m)));
  });
}

#endif

// torch's silu of every bf16 value, indexed by its bits (65536 entries and one padding entry), or null
// where torch's silu is not one function of its input here. Why a table: torch computes a bf16 silu in
// fp32 with Sleef's exp and rounds it; read from this table the result is the same by construction, and
// a gather costs a fraction of that exp (SmolLM2: ~1.1 ms of one core per layer at 512 tokens).
// One function of its input: torch runs whole vectors through Vectorized<float>::exp and the rest of a
// thread's range (its tail) through std::exp, so the table is built from both paths and used only
// where they agree on every input whose result is a number. A NaN result has no single pattern (the
// vector path writes 0xFFFF, the scalar one 0x7FC0: silu(NaN), silu(-inf)); the table keeps the vector
// path's, and silu_mul's product is NaN either way.
// Built on the calling thread in pieces of at most torch's grain size (no OpenMP region), once.
inline const uint16_t* silu_table() {
  static const std::vector<uint16_t> table = [] {
    constexpr int64_t kValues = 65536, kPiece = 16384;  // kPiece: under torch's grain size, whole vectors
    static_assert(kPiece <= at::internal::GRAIN_SIZE, "the vector table must be built without OpenMP");
    const Tensor all = at::arange(kValues, at::TensorOptions().dtype(at::kInt)).to(at::kShort).view(at::kBFloat16);
    std::vector<uint16_t> vec(kValues + 1, 0), tail(kValues, 0);
    for (int64_t lo = 0; lo < kValues; lo += kPiece) {
      const Tensor r = at::silu(all.narrow(0, lo, kPiece));
      std::memcpy(vec.data() + lo, r.data_ptr(), kPiece * sizeof(uint16_t));
    }
    // Pieces shorter than any vector loop's step (2 x 16 lanes): torch's scalar path alone.
    constexpr int64_t kShort = 31;
    for (int64_t lo = 0; lo < kValues; lo += kShort) {
      const int64_t len = std::min(kShort, kValues - lo);
      const Tensor r = at::silu(all.narrow(0, lo, len));
      std::memcpy(tail.data() + lo, r.data_ptr(), len * sizeof(uint16_t));
    }
    auto is_nan = [](uint16_t b) { return (b & 0x7F80) == 0x7F80 && (b & 0x7F) != 0; };
    for (int64_t i = 0; i < kValues; ++i)
      if (vec[i] != tail[i] && !(is_nan(vec[i]) && is_nan(tail[i]))) return std::vector<uint16_t>();
    return vec;
  }();
  return table.empty() ? nullptr : table.data();
}

inline bool fusable(const Tensor& t) {
  return NPU_SERVE_HAS_FUSED && t.device().is_cpu() && t.is_contiguous() &&
         (t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kFloat);
}

// torch's float32 sum of one contiguous row of n values, in the order its CPU sum kernel adds them
// (ATen/native/cpu/SumKernel.cpp, read at pytorch/pytorch 018dc41: vectorized_inner_sum over W-lane
// vectors; row_sum's 4 interleaved partial sums; multi_row_sum's 4-level cascade, whose level size is
// 2^max(4, ceil(log2(size)) / 4); the scalar tail; then the lanes in order). Lane-wise IEEE adds only, so
// the order is all there is to match. W is the vector width of the kernel torch runs here (8 in its AVX2
// build, 16 in AVX-512), which mean_order() finds by comparing with torch itself.
template <int W>
inline float torch_row_sum(const float* x, int64_t n) {
  constexpr int kIlp = 4, kLevels = 4;
  const int64_t vecs = n / W, size = vecs / kIlp;  // row_sum: a (size, kIlp) array of vectors
  float acc[kLevels][kIlp][W] = {};
  auto add_vec = [&](float* a, int64_t v) {
    for (int l = 0; l < W; ++l) a[l] += x[v * W + l];
  };
  int64_t ceil_log2 = 0;
  while ((int64_t{1} << ceil_log2) < size) ++ceil_log2;
  const int64_t power = std::max<int64_t>(4, ceil_log2 / kLevels), step = int64_t{1} << power, mask = step - 1;
  int64_t i = 0;
  while (i + step <= size) {
    for (int64_t j = 0; j < step; ++j, ++i)
      for (int k = 0; k < kIlp; ++k) add_vec(acc[0][k], i * kIlp + k);
    for (int j = 1; j < kLevels; ++j) {
      for (int k = 0; k < kIlp; ++k)
        for (int l = 0; l < W; ++l) acc[j][k][l] += acc[j - 1][k][l], acc[j - 1][k][l] = 0.f;
      if ((i & (mask << (j * power))) != 0) break;
    }
  }
  for (; i < size; ++i)
    for (int k = 0; k < kIlp; ++k) add_vec(acc[0][k], i * kIlp + k);
  for (int j = 1; j < kLevels; ++j)
    for (int k = 0; k < kIlp; ++k)
      for (int l = 0; l < W; ++l) acc[0][k][l] += acc[j][k][l];
  for (int64_t v = size * kIlp; v < vecs; ++v) add_vec(acc[0][0], v);
  for (int k = 1; k < kIlp; ++k)
    for (int l = 0; l < W; ++l) acc[0][0][l] += acc[0][k][l];
  float sum = 0.f;
  for (int64_t e = vecs * W; e < n; ++e) sum += x[e];
  for (int l = 0; l < W; ++l) sum += acc[0][0][l];
  return 0.f + sum;  // torch adds the row's sum into its zero-filled output
}

// Which torch_row_sum width, divided by C, gives torch's mean over rows of C float32 values here, bit
// for bit: 8 or 16, or 0 for neither (then rms_norm keeps calling torch's mean). Decided once per C, by
// comparing with `mean` (torch's, as rms_norm's caller runs it) on 64 rows of squares of varied
// magnitude; an order that differed would show on such rows in almost every one.
template <typename Mean>
inline int mean_order(int64_t C, Mean& mean) {
  static std::mutex lock;
  static std::map<int64_t, int> known;
  std::lock_guard<std::mutex> guard(lock);
  const auto found = known.find(C);
  if (found != known.end()) return found->second;
  constexpr int64_t kRows = 64;
  Tensor sq = at::empty({1, kRows, C}, at::TensorOptions().dtype(at::kFloat));
  float* v = sq.data_ptr<float>();
  uint32_t state = 12345;  // our own generator: torch's global one (seeded sampling) stays untouched
  for (int64_t i = 0; i < kRows * C; ++i) {
    state = state * 1664525u + 1013904223u;
    const float u = static_cast<float>(state >> 8) / 16777216.0f;  // [0, 1)
    v[i] = u * u * std::ldexp(1.0f, static_cast<int>((state >> 4) % 24) - 12);
  }
  const Tensor want = mean(sq).contiguous();
  const float* w = want.data_ptr<float>();
  int order = 0;
  for (const int lanes : {8, 16}) {
    bool same = true;
    for (int64_t r = 0; r < kRows && same; ++r) {
      const float s = lanes == 8 ? torch_row_sum<8>(v + r * C, C) : torch_row_sum<16>(v + r * C, C);
      const float m = s / static_cast<float>(C);
      same = std::memcmp(&m, w + r, sizeof m) == 0;
    }
    if (same) {
      order = lanes;
      break;
    }
  }
  known.emplace(C, order);
  return order;
}

// transformers' LlamaRMSNorm.forward for a contiguous x [..., C] and weight [C] of x's dtype; an
// undefined tensor when it cannot (the caller then runs the op-for-op version). `mean` is torch's
// reduction, given the squares in a tensor of x's shape (the caller picks its thread scope). Where
// torch_row_sum reproduces that mean here (mean_order) and the rows are few enough that torch runs it on
// one thread, each row is done in one pass on the pool: squares, their sum in torch's order, the scale.
// Why: the three steps as torch op + two pool tasks cost ~17 us a call at 32 rows, and a SmolLM2 step
// has 61 of them (3.7% of a c=32 decode step's main thread, all of it with the helper idle).
template <typename Mean>
inline Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps, Mean mean) {
  if (!fusable(x) || !fusable(weight) || weight.scalar_type() != x.scalar_type() || x.dim() == 0 ||
      weight.numel() != x.size(-1))
    return Tensor();
#if NPU_SERVE_HAS_FUSED
  const int64_t C = x.size(-1), rows = C ? x.numel() / C : 0;
  Tensor out = at::empty_like(x);
  if (rows == 0) return out;
  // torch adds a Python float to a float32 tensor in fp32: the epsilon rounded to float once.
  const float feps = static_cast<float>(eps);
  const int order = rows <= at::internal::GRAIN_SIZE ? mean_order(C, mean) : 0;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    if (order != 0) {
      const T* xp = x.data_ptr<T>();
      const T* wp = weight.data_ptr<T>();
      T* op = out.data_ptr<T>();
      for_rows(rows, C, [&](int64_t lo, int64_t hi) {
        thread_local std::vector<float> sq;
        sq.resize(C);
        for (int64_t r = lo; r < hi; ++r) {
          square_rows<T>(xp + r * C, sq.data(), 0, 1, C);
          const float var = (order == 8 ? torch_row_sum<8>(sq.data(), C) : torch_row_sum<16>(sq.data(), C)) /
                            static_cast<float>(C);
          normalise_rows<T>(xp + r * C, &var, wp, feps, op + r * C, 0, 1, C);
        }
      });
      return;
    }
    Tensor sq = at::empty(x.sizes(), x.options().dtype(at::kFloat));
    squares<T>(x.data_ptr<T>(), sq.data_ptr<float>(), rows, C);
    const Tensor var = mean(sq).contiguous();
    normalise<T>(x.data_ptr<T>(), var.data_ptr<float>(), weight.data_ptr<T>(), feps, out.data_ptr<T>(), rows, C);
  };
  if (x.scalar_type() == at::kBFloat16) run(at::BFloat16{});
  else run(float{});
  return out;
#else
  return Tensor();
#endif
}

// transformers' apply_rotary_pos_emb for one of q / k: x [1, T, H, D] contiguous, cos/sin [1, T, D] of
// x's dtype; returns [T, H, D], or an undefined tensor when it cannot.
inline Tensor rotary(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  if (!fusable(x) || !fusable(cos) || !fusable(sin) || x.dim() != 4 || x.size(0) != 1 || x.size(-1) % 2 ||
      cos.scalar_type() != x.scalar_type() || sin.scalar_type() != x.scalar_type() ||
      cos.numel() != x.size(1) * x.size(3) || sin.numel() != cos.numel())
    return Tensor();
#if NPU_SERVE_HAS_FUSED
  const int64_t T = x.size(1), H = x.size(2), D = x.size(3);
  Tensor out = at::empty({T, H, D}, x.options());
  if (T == 0 || H == 0) return out;
  auto run = [&](auto tag) {
    using E = decltype(tag);
    rotary<E>(x.data_ptr<E>(), cos.data_ptr<E>(), sin.data_ptr<E>(), out.data_ptr<E>(), T, H, D);
  };
  if (x.scalar_type() == at::kBFloat16) run(at::BFloat16{});
  else run(float{});
  return out;
#else
  return Tensor();
#endif
}

// a + b (kMul false) or a * b of two contiguous tensors of one shape and dtype, on the pool's threads;
// an undefined tensor when it cannot.
template <bool kMul>
inline Tensor binary(const Tensor& a, const Tensor& b) {
  if (!fusable(a) || !fusable(b) || a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return Tensor();
#if NPU_SERVE_HAS_FUSED
  Tensor out = at::empty_like(a);
  if (a.scalar_type() == at::kBFloat16)
    binary<at::BFloat16, kMul>(a.data_ptr<at::BFloat16>(), b.data_ptr<at::BFloat16>(), out.data_ptr<at::BFloat16>(),
                               a.numel());
  else
    binary<float, kMul>(a.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>(), a.numel());
  return out;
#else
  return Tensor();
#endif
}

// x.to(float32), exactly (bf16 is fp32's high half), on both cores for a contiguous bf16 x; anything
// else through torch. Why: the sampler needs fp32 logits for everything but a greedy argmax (sampling,
// penalties, logprobs), and torch's copy of a c=32 decode step's 32 x 49152 bf16 logits took ~1.2 ms on
// OpenMP's threads (py-spy: 3.1% of the step), for a pass that reads 3 MiB.
inline Tensor to_float(const Tensor& x) {
  if (!fusable(x) || x.scalar_type() != at::kBFloat16) return x.to(at::kFloat);
#if NPU_SERVE_HAS_FUSED
  Tensor out = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  const at::BFloat16* src = x.data_ptr<at::BFloat16>();
  float* dst = out.data_ptr<float>();
  for_lanes(x.numel(), [&](int64_t i, __mmask16 m) {
    _mm512_mask_storeu_ps(dst + i, m, Lanes<at::BFloat16>::load(src + i, m));
  });
  return out;
#else
  return x.to(at::kFloat);
#endif
}

// x.to(torch.bfloat16) for a float32 tensor, rounded as c10::BFloat16 rounds (NaN -> 0x7FC0) by the
// kernels' narrow_bf16 (cpu_simd.h): what the tests check that helper's fast path against.
inline Tensor to_bf16(const Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "to_bf16: float32 input");
#if NPU_SERVE_HAS_FUSED
  if (fusable(x)) {
    Tensor out = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
    const float* src = x.data_ptr<float>();
    at::BFloat16* dst = out.data_ptr<at::BFloat16>();
    for_lanes(x.numel(), [&](int64_t i, __mmask16 m) {
      Lanes<at::BFloat16>::store(dst + i, m, Lanes<float>::load(src + i, m));
    });
    return out;
  }
#endif
  return x.to(at::kBFloat16);
}

// silu(gate) * up for two contiguous bf16 tensors of one shape, with torch's bits wherever the result is
// a number (silu_table); an undefined tensor when it cannot (the caller then runs at::silu and a mul).
inline Tensor silu_mul(const Tensor& gate, const Tensor& up) {
  if (!fusable(gate) || !fusable(up) || gate.scalar_type() != at::kBFloat16 || up.scalar_type() != at::kBFloat16 ||
      gate.sizes() != up.sizes())
    return Tensor();
#if NPU_SERVE_HAS_FUSED
  const uint16_t* act = silu_table();
  if (act == nullptr) return Tensor();
  Tensor out = at::empty_like(gate);
  silu_mul(gate.data_ptr<at::BFloat16>(), up.data_ptr<at::BFloat16>(), act, out.data_ptr<at::BFloat16>(),
           gate.numel());
  return out;
#else
  return Tensor();
#endif
}

}  // namespace npu_serve_fused
