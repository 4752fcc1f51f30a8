// CPU paged-attention decode: one query per request, reading the paged KV cache in place.
//
// Why: the torch path gathers every request's blocks into a padded copy and SDPA copies again
// after a transpose; decode attention is memory bound, so those copies dominate. Here a task is one
// request's KV heads (all of them once a step has kWholeRequestTasks requests, else one): it reads
// their K rows once (scores for all G query heads that share each), then their V rows once,
// straight from the cache blocks, asking for the next rows ahead of use (prefetch_bytes).
//
// Numerics: float accumulation, IEEE semantics (no -ffast-math). Softmax is two-pass over a
// per-thread score buffer [G, seq_len]: exact max first, then exp/sum, then the weighted V sum.
// Dot products keep LANES independent partial sums so that GCC vectorises them without being
// allowed to reassociate (the summation order is fixed, hence deterministic).
//
// Layer features (all off costs nothing extra): a sliding window reads only a request's last
// `window` keys (the loops start at L - window, so blocks before it are never touched); a logit
// softcap maps each scaled score x to softcap * tanh(x / softcap) before the softmax (tanh_vec); per-head sink
// logits take part in the softmax's max and denominator only. Values may have another head size
// than keys (MLA as transformers runs it): compiled-in sizes apply only where the two agree.
//
// Header-only so that the C++ decoder layer (../decoder/cpu_decoder.h) runs a decode step's
// attention without going back through Python; ../cpu_ops.cpp is its Python binding.

#pragma once

#include <torch/extension.h>

#include "../cpu_pool.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "../cpu_simd.h"

namespace npu_serve_decode {

inline constexpr int LANES = 16;

// Row of `d` cache elements as floats: fp32 rows are used in place, others converted into buf.
inline const float* load_row(const float* src, float* /*buf*/, int64_t /*d*/) { return src; }

inline const float* load_row(const at::BFloat16* src, float* buf, int64_t d) {
  // bf16 is the high half of an fp32: a shift is an exact conversion, and vectorises.
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
  uint32_t* out = reinterpret_cast<uint32_t*>(buf);
  for (int64_t i = 0; i < d; ++i) out[i] = static_cast<uint32_t>(bits[i]) << 16;
  return buf;
}

inline const float* load_row(const at::Half* src, float* buf, int64_t d) {
  for (int64_t i = 0; i < d; ++i) buf[i] = static_cast<float>(src[i]);
  return buf;
}

inline float dot(const float* a, const float* b, int64_t d) {
  float lanes[LANES] = {0.f};
  int64_t i = 0;
  for (; i + LANES <= d; i += LANES)
    for (int j = 0; j < LANES; ++j) lanes[j] += a[i + j] * b[i + j];
  float tail = 0.f;
  for (; i < d; ++i) tail += a[i] * b[i];
  // Pairwise fold instead of a serial 16-add chain: each step is one vector add.
  for (int j = 0; j < 8; ++j) lanes[j] += lanes[j + 8];
  for (int j = 0; j < 4; ++j) lanes[j] += lanes[j + 4];
  for (int j = 0; j < 2; ++j) lanes[j] += lanes[j + 2];
  return (lanes[0] + lanes[1]) + tail;
}

inline float lanes_sum(const float* x, int64_t n) {
  float lanes[LANES] = {0.f};
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int j = 0; j < LANES; ++j) lanes[j] += x[i + j];
  float tail = 0.f;
  for (; i < n; ++i) tail += x[i];
  for (int j = 0; j < 8; ++j) lanes[j] += lanes[j + 8];
  for (int j = 0; j < 4; ++j) lanes[j] += lanes[j + 4];
  for (int j = 0; j < 2; ++j) lanes[j] += lanes[j + 2];
  return (lanes[0] + lanes[1]) + tail;
}

inline float lanes_max(const float* x, int64_t n) {
  float lanes[LANES];
  for (int j = 0; j < LANES; ++j) lanes[j] = -std::numeric_limits<float>::infinity();
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int j = 0; j < LANES; ++j) lanes[j] = x[i + j] > lanes[j] ? x[i + j] : lanes[j];
  float m = -std::numeric_limits<float>::infinity();
  for (int j = 0; j < LANES; ++j) m = lanes[j] > m ? lanes[j] : m;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// exp(x) for x <= 0 (softmax numerators), branch-free so that the loop calling it vectorises;
// libm's expf does not without -ffast-math, and it was a third of the kernel's time.
// Cephes' expf: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r (about 1 ulp), times 2^n
// put into the exponent bits. Round-to-nearest n via the 1.5 * 2^23 trick (exact under IEEE).
// x < -87 gives 0 (e^-87 ~ 1.6e-38 is below float's normal range and irrelevant next to the
// max term, which is 1); NaN stays NaN.
inline float exp_nonpos(float x) {
  const float magic = 12582912.f;  // 1.5 * 2^23
  float t = x * 1.44269504088896341f + magic;
  uint32_t tb;
  std::memcpy(&tb, &t, 4);
  const float n = t - magic;
  const int32_t ni = static_cast<int32_t>(tb) - 0x4B400000;  // bits of magic
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.f;
  uint32_t yb;
  std::memcpy(&yb, &y, 4);
  yb += static_cast<uint32_t>(ni) << 23;
  std::memcpy(&y, &yb, 4);
  y = x < -87.f ? 0.f : y;
  return x != x ? x : y;
}

// tanh(x), branch-free so that the softcap loop vectorises (libm's tanhf does not, and made a
// softcapped layer 3.5x slower than a plain one). tanh|x| = (1 - e) / (1 + e) with e = exp(-2|x|)
// from exp_nonpos; below |x| = 1/16, where 1 - e cancels, the series x - x^3/3 + 2x^5/15 (error
// under 2e-10 relative). Within a few ulp of tanhf; tanh(+-inf) = +-1, NaN stays NaN.
inline float tanh_vec(float x) {
  const float ax = std::fabs(x);
  const float e = exp_nonpos(-2.f * ax);
  const float x2 = ax * ax;
  const float series = ax * (1.f - x2 * (0.333333343f - x2 * 0.13333334f));
  const float t = ax < 0.0625f ? series : (1.f - e) / (1.f + e);
  return std::copysign(t, x);
}

// With G (query heads per KV head) and head_dim both fixed at compile time, q and the G output
// accumulators are small local arrays that GCC keeps in vector registers across the token loop,
// instead of loading and storing them per token. The V pass does the generic loop's operations in
// the same order (its accumulators wait in memory between blocks when a task has several heads); the
// K pass sums each dot product in a different (fixed) order, see hsum16.
// 16 floats as one vector (GCC vector extension): the compiler maps it to one AVX-512 register.
typedef float v16f __attribute__((vector_size(64)));
typedef int v16i __attribute__((vector_size(64)));

inline v16f load16(const float* p) {
  v16f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// 16 cache elements as one float vector, converted in registers. Why not load_row's buffer: GCC
// converts bf16 in 256-bit halves, stores them to the row buffer and reloads them as one 512-bit
// vector, which no store can forward to; every row stalled on it, and the bf16 kernel ran 2.5x slower
// than the fp32 one on the same cache-resident data (1.46 vs 0.58 ms, 32 requests x 320 tokens, one
// thread).
typedef uint16_t v16u16 __attribute__((vector_size(32)));
typedef uint32_t v16u32 __attribute__((vector_size(64)));

inline v16f load16_cvt(const float* p) { return load16(p); }

inline v16f load16_cvt(const at::BFloat16* p) {
#if defined(__AVX512F__)
  // One widening load and a shift (GCC's generic form below takes two 256-bit halves and a merge).
  return reinterpret_cast<v16f>(npu_serve_simd::widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#else
  v16u16 h;
  std::memcpy(&h, p, sizeof h);
  const v16u32 bits = __builtin_convertvector(h, v16u32) << 16;  // bf16 is fp32's high half: exact
  v16f f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

inline v16f load16_cvt(const at::Half* p) {
  v16f f;
  for (int i = 0; i < 16; ++i) f[i] = static_cast<float>(p[i]);
  return f;
}

// Horizontal sums of 16 vectors at once, as a tree of shuffle+add: the result's lane j is the sum
// of acc[j]'s 16 lanes. 15 pair steps (2 shuffles + 1 add each) instead of 16 separate folds of
// 4 steps; the per-token folds were the K pass's main cost.
inline v16f hsum16(v16f acc[16]) {
  const v16i l1a = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
  const v16i l1b = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
  const v16i l2a = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
  const v16i l2b = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
  const v16i l3a = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
  const v16i l3b = {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31};
  const v16i l4a = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
  const v16i l4b = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
  v16f s[8], t[4], u[2];
  for (int i = 0; i < 8; ++i)  // lanes 0-7: token 2i, lanes 8-15: token 2i+1 (8 partials each)
    s[i] = __builtin_shuffle(acc[2 * i], acc[2 * i + 1], l1a) + __builtin_shuffle(acc[2 * i], acc[2 * i + 1], l1b);
  for (int i = 0; i < 4; ++i)  // 4 partials for each of tokens 4i..4i+3
    t[i] = __builtin_shuffle(s[2 * i], s[2 * i + 1], l2a) + __builtin_shuffle(s[2 * i], s[2 * i + 1], l2b);
  for (int i = 0; i < 2; ++i)  // 2 partials for each of tokens 8i..8i+7
    u[i] = __builtin_shuffle(t[2 * i], t[2 * i + 1], l3a) + __builtin_shuffle(t[2 * i], t[2 * i + 1], l3b);
  return __builtin_shuffle(u[0], u[1], l4a) + __builtin_shuffle(u[0], u[1], l4b);
}

// Asks for `bytes` from p on to be brought into cache while the current rows are computed. Why: blocks
// are scattered over the cache, so the hardware prefetchers see no stream at a block's end and each
// first row of a block waited for memory (the bf16 loads were a third of the K pass's samples in perf,
// 32 requests x 320 tokens). The passes ask for head h of the next group's row j while computing head h
// of row j, which spreads the requests over the whole group instead of a burst the fill buffers cannot
// hold: asking for whole rows (all heads) during head 0 only made a thread wait on its own prefetches
// for the first third of each group. Spread over every head, the kernel ran 1.13x faster (30 layers of
// 32 requests x ~400 tokens, 2 threads, 14.5 -> 16.3 GB/s; cache-resident it reads 28 GB/s, so the
// passes still wait on memory).
inline void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 0, 3);
}

// One task's heads: nh consecutive KV heads of one request (kbase points at the first), keys `first ..
// L-1` (the window; first = 0 without one). scores[(h * GC + g) * (L - first) + i] gets the score of
// key first + i for query head g of the task's KV head h. Why several heads per task: a token's heads
// lie side by side in the cache (SmolLM2: 3 x 128 bytes), so a task that takes all of them reads each
// block as one contiguous run, which memory streams; one head per task read 128 bytes of every 384,
// at a third of the bandwidth (5 GB/s against 20 for a plain read on this box, 32 requests x 320
// tokens x 30 layers). Each head's arithmetic is the same either way, in the same order.
template <typename scalar_t, int GC, int DC>
inline void k_pass_fixed(const scalar_t* kbase, int64_t nh, const int32_t* table, int64_t block_stride,
                         int64_t token_stride, int64_t block_size, int64_t first, int64_t L, const float* qf,
                         float fscale, float* scores) {
  static_assert(DC % 16 == 0, "the vector K pass needs head_dim in whole 16-float vectors");
  constexpr int C = DC / 16;
  const int64_t nk = L - first;
  const int64_t head_bytes = DC * static_cast<int64_t>(sizeof(scalar_t));
  v16f acc[GC][16];
  // Tokens in groups of 16 that never straddle a block (block sizes are multiples of 16 or < 16).
  for (int64_t t0 = first; t0 < L;) {
    const scalar_t* base = kbase + table[t0 / block_size] * block_stride + (t0 % block_size) * token_stride;
    const int64_t n = std::min<int64_t>({16, block_size - t0 % block_size, L - t0});
    const int64_t t1 = t0 + n;
    const int64_t n1 = t1 < L ? std::min<int64_t>({16, block_size - t1 % block_size, L - t1}) : 0;
    const scalar_t* next = n1 ? kbase + table[t1 / block_size] * block_stride + (t1 % block_size) * token_stride : base;
    for (int64_t h = 0; h < nh; ++h) {
      v16f q[GC][C];
      for (int g = 0; g < GC; ++g)
        for (int c = 0; c < C; ++c) q[g][c] = load16(qf + (h * GC + g) * DC + c * 16);
      for (int64_t j = 0; j < 16; ++j) {
        if (j < n1) prefetch_bytes(next + j * token_stride + h * DC, head_bytes);
        if (j < n) {
          v16f kv[C];
          for (int c = 0; c < C; ++c) kv[c] = load16_cvt(base + j * token_stride + h * DC + c * 16);
          for (int g = 0; g < GC; ++g) {
            v16f a = q[g][0] * kv[0];
            for (int c = 1; c < C; ++c) a += q[g][c] * kv[c];
            acc[g][j] = a;
          }
        } else {
          for (int g = 0; g < GC; ++g) acc[g][j] = v16f{};
        }
      }
      for (int g = 0; g < GC; ++g) {
        const v16f sums = hsum16(acc[g]) * fscale;
        float* dst = scores + (h * GC + g) * nk + t0 - first;
        if (n == 16) {  // a whole group: one vector store (the loop below became a call to memmove)
          std::memcpy(dst, &sums, sizeof sums);
        } else {
          float out[16];
          std::memcpy(out, &sums, sizeof out);
          for (int64_t j = 0; j < n; ++j) dst[j] = out[j];
        }
      }
    }
    t0 = t1;
  }
}

// The V pass of the same nh heads: acc_out[(h * GC + g) * DC ..] = sum over keys of p * v, the keys in
// order, each head's GC accumulators in registers through a block (kept in acc_out between blocks).
template <typename scalar_t, int GC, int DC>
inline void v_pass_fixed(const scalar_t* vbase, int64_t nh, const int32_t* table, int64_t block_stride,
                         int64_t token_stride, int64_t block_size, int64_t first, int64_t L, const float* scores,
                         float* acc_out) {
  static_assert(DC % 16 == 0, "the vector V pass needs head_dim in whole 16-float vectors");
  constexpr int C = DC / 16;
  const int64_t nk = L - first;
  const int64_t head_bytes = DC * static_cast<int64_t>(sizeof(scalar_t));
  std::fill(acc_out, acc_out + nh * GC * DC, 0.f);
  // Block by block; only the window's first block may start mid-block.
  for (int64_t t0 = first, off = first % block_size; t0 < L; off = 0) {
    const scalar_t* base = vbase + table[t0 / block_size] * block_stride + off * token_stride;
    const int64_t n = std::min(block_size - off, L - t0);
    const int64_t t1 = t0 + n;
    const int64_t n1 = t1 < L ? std::min(block_size, L - t1) : 0;
    const scalar_t* next = n1 ? vbase + table[t1 / block_size] * block_stride : base;
    for (int64_t h = 0; h < nh; ++h) {
      v16f acc[GC][C];
      for (int g = 0; g < GC; ++g)
        for (int c = 0; c < C; ++c) acc[g][c] = load16(acc_out + (h * GC + g) * DC + c * 16);
      for (int64_t j = 0; j < n; ++j) {
        if (j < n1) prefetch_bytes(next + j * token_stride + h * DC, head_bytes);
        v16f v[C];
        for (int c = 0; c < C; ++c) v[c] = load16_cvt(base + j * token_stride + h * DC + c * 16);
        for (int g = 0; g < GC; ++g) {
          const float p = scores[(h * GC + g) * nk + t0 - first + j];
          for (int c = 0; c < C; ++c) acc[g][c] += p * v[c];
        }
      }
      for (int g = 0; g < GC; ++g)
        for (int c = 0; c < C; ++c) std::memcpy(acc_out + (h * GC + g) * DC + c * 16, &acc[g][c], sizeof(v16f));
    }
    t0 = t1;
  }
}

// What a layer asks beyond plain causal attention (all off: window 0, softcap 0, no sinks).
struct Features {
  int64_t window;       // > 0: a query at position L-1 sees keys L-window .. L-1 only
  float softcap;        // > 0: scores -> softcap * tanh(scores / softcap)
  const float* sinks;   // [H] per-head sink logits in the softmax denominator, or nullptr
};

// Softmax numerators in place over s[0 .. n-1] (a max shift first; a sink logit takes part in the
// max and the sum but gets no value); returns 1 / sum.
inline float softmax_numerators(float* s, int64_t n, const float* sink) {
  float m = lanes_max(s, n);
  if (sink != nullptr) m = *sink > m ? *sink : m;
  for (int64_t t = 0; t < n; ++t) s[t] = exp_nonpos(s[t] - m);
  float sum = lanes_sum(s, n);
  if (sink != nullptr) sum += exp_nonpos(*sink - m);
  return 1.f / sum;
}

// From this many requests in a step on, a task takes all of a request's KV heads (k_pass_fixed says
// why); below it, one head, so that a few requests still make tasks for every thread.
inline constexpr int64_t kWholeRequestTasks = 8;

// One thread's buffers: scores [G, keys], the G queries as floats, G accumulators, a converted row.
struct Scratch {
  std::vector<float> scores, qf, acc, row, inv_sum;
  void size(int64_t n_scores, int64_t n_q, int64_t n_acc, int64_t n_row, int64_t n_heads) {
    scores.resize(n_scores);
    qf.resize(n_q);
    acc.resize(n_acc);
    row.resize(n_row);
    inv_sum.resize(n_heads);
  }
};

// DC > 0 fixes head_dim (keys and values alike) at compile time (unrolled inner loops; ~10% faster
// at D=64 in bf16); DC == 0 reads the key size from q and the value size from v_cache.
template <typename scalar_t, int DC, int GC>
inline void decode_impl(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                 const at::Tensor& block_tables, const at::Tensor& seq_lens, double scale, const Features& f,
                 at::Tensor& out) {
  const int64_t nd = q.size(0), H = q.size(1);
  constexpr int64_t kD = DC;
  const int64_t D = DC > 0 ? kD : q.size(2);
  const int64_t DV = DC > 0 ? kD : v_cache.size(3);
  const int64_t block_size = k_cache.size(1), Hkv = k_cache.size(2);
  const int64_t G = GC > 0 ? GC : H / Hkv;
  const int64_t max_blocks = block_tables.size(1);
  const float fscale = static_cast<float>(scale);

  const scalar_t* qp = q.data_ptr<scalar_t>();
  const scalar_t* kp = k_cache.data_ptr<scalar_t>();
  const scalar_t* vp = v_cache.data_ptr<scalar_t>();
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  scalar_t* op = out.data_ptr<scalar_t>();

  // The first key each request sees, and how many keys that makes.
  std::vector<int64_t> first(nd), keys(nd);
  int64_t max_keys = 0;
  for (int64_t r = 0; r < nd; ++r) {
    first[r] = f.window > 0 ? std::max<int64_t>(0, lens[r] - f.window) : 0;
    keys[r] = lens[r] - first[r];
    max_keys = std::max(max_keys, keys[r]);
  }
  // Most keys first, so that dynamic scheduling does not end on one long straggler.
  std::vector<int64_t> order(nd);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys[a] > keys[b]; });

  // A task is one request's `nh` KV heads: all of them (one contiguous run per block, see k_pass_fixed)
  // once there are requests enough to keep every thread busy, else one head, so that a step of a few
  // requests still spreads over the threads. The generic loops take one head per task.
  constexpr bool kFixed = GC > 0 && DC > 0;
  const int64_t nh = kFixed && nd >= kWholeRequestTasks ? Hkv : 1;
  const int64_t per_request = Hkv / nh;
  const int64_t tasks = nd * per_request;
  const int64_t token_stride = Hkv * D;  // between consecutive tokens of one head
  const int64_t block_stride = block_size * token_stride;
  const int64_t v_token_stride = Hkv * DV;
  const int64_t v_block_stride = block_size * v_token_stride;

  // Tasks are claimed by the caller and the pool's helpers (../cpu_pool.h), most keys first; each
  // thread keeps its scratch buffers between calls.
  auto one_task = [&](int64_t task) {
    thread_local Scratch scratch;
    const int64_t NG = nh * G;  // query heads of the task
    scratch.size(NG * std::max<int64_t>(max_keys, 1), NG * D, NG * DV, std::max(D, DV), NG);
    std::vector<float>& scores = scratch.scores;
    std::vector<float>& qf = scratch.qf;
    std::vector<float>& acc = scratch.acc;
    std::vector<float>& row = scratch.row;
    std::vector<float>& inv_sum = scratch.inv_sum;
    {
      const int64_t r = order[task / per_request], h = (task % per_request) * nh;
      const int64_t L = lens[r], t_first = first[r], nk = keys[r];
      const int32_t* table = tables + r * max_blocks;
      scalar_t* o = op + (r * H + h * G) * DV;  // the task's heads are consecutive in out, as in q
      if (L <= 0) {  // nothing to attend to: zeros rather than NaN
        for (int64_t i = 0; i < NG * DV; ++i) o[i] = static_cast<scalar_t>(0.f);
        return;
      }
      const scalar_t* src = qp + (r * H + h * G) * D;
      for (int64_t i = 0; i < NG * D; ++i) qf[i] = static_cast<float>(src[i]);

      // Pass 1: scores[g, t] = scale * q_g . k_t, one read of each K row for all G heads.
      if constexpr (kFixed) {
        k_pass_fixed<scalar_t, GC, DC>(kp + h * D, nh, table, block_stride, token_stride, block_size, t_first, L,
                                       qf.data(), fscale, scores.data());
      } else
      for (int64_t t0 = t_first, off = t_first % block_size; t0 < L; off = 0) {
        const scalar_t* base = kp + table[t0 / block_size] * block_stride + off * token_stride + h * D;
        const int64_t n = std::min(block_size - off, L - t0);
        for (int64_t j = 0; j < n; ++j) {
          const float* k = load_row(base + j * token_stride, row.data(), D);
          for (int64_t g = 0; g < G; ++g) scores[g * nk + t0 - t_first + j] = fscale * dot(qf.data() + g * D, k, D);
        }
        t0 += n;
      }
      if (f.softcap > 0.f) {
        const float cap = f.softcap;
        for (int64_t i = 0; i < NG * nk; ++i) scores[i] = cap * tanh_vec(scores[i] / cap);
      }

      // Softmax numerators in place, per query head.
      for (int64_t g = 0; g < NG; ++g)
        inv_sum[g] = softmax_numerators(scores.data() + g * nk, nk, f.sinks ? f.sinks + h * G + g : nullptr);

      // Pass 2: acc[g] = sum_t p[g, t] * v_t, one read of each V row.
      if constexpr (kFixed) {
        v_pass_fixed<scalar_t, GC, DC>(vp + h * DV, nh, table, v_block_stride, v_token_stride, block_size, t_first,
                                       L, scores.data(), acc.data());
      } else {
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t0 = t_first, off = t_first % block_size; t0 < L; off = 0) {
        const scalar_t* base = vp + table[t0 / block_size] * v_block_stride + off * v_token_stride + h * DV;
        const int64_t n = std::min(block_size - off, L - t0);
        for (int64_t j = 0; j < n; ++j) {
          const float* v = load_row(base + j * v_token_stride, row.data(), DV);
          for (int64_t g = 0; g < G; ++g) {
            const float p = scores[g * nk + t0 - t_first + j];
            float* a = acc.data() + g * DV;
            for (int64_t i = 0; i < DV; ++i) a[i] += p * v[i];
          }
        }
        t0 += n;
      }
      }
      for (int64_t g = 0; g < NG; ++g)
        for (int64_t i = 0; i < DV; ++i) o[g * DV + i] = static_cast<scalar_t>(acc[g * DV + i] * inv_sum[g]);
    }
  };
  npu_serve_pool::parallel_chunks(tasks, one_task);
}

// G = 1 (MHA), 2, 3 (SmolLM2: 9 over 3), 4 (Llama-3.2-1B: 32 over 8) and 8 get register-resident
// passes; other layouts take the generic loops.
template <typename scalar_t, int DC>
inline void dispatch_group(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                    const at::Tensor& block_tables, const at::Tensor& seq_lens, double scale, const Features& f,
                    at::Tensor& out) {
  switch (q.size(1) / k_cache.size(2)) {
    case 1: decode_impl<scalar_t, DC, 1>(q, k_cache, v_cache, block_tables, seq_lens, scale, f, out); break;
    case 2: decode_impl<scalar_t, DC, 2>(q, k_cache, v_cache, block_tables, seq_lens, scale, f, out); break;
    case 3: decode_impl<scalar_t, DC, 3>(q, k_cache, v_cache, block_tables, seq_lens, scale, f, out); break;
    case 4: decode_impl<scalar_t, DC, 4>(q, k_cache, v_cache, block_tables, seq_lens, scale, f, out); break;
    case 8: decode_impl<scalar_t, DC, 8>(q, k_cache, v_cache, block_tables, seq_lens, scale, f, out); break;
    default: decode_impl<scalar_t, DC, 0>(q, k_cache, v_cache, block_tables, seq_lens, scale, f, out);
  }
}

// Compiled-in head sizes only where keys and values share one (MLA's differ: generic loops).
template <typename scalar_t>
inline void dispatch_dim(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                  const at::Tensor& block_tables, const at::Tensor& seq_lens, double scale, const Features& f,
                  at::Tensor& out) {
  const int64_t d = v_cache.size(3) == q.size(2) ? q.size(2) : 0;
  switch (d) {
    case 64: dispatch_group<scalar_t, 64>(q, k_cache, v_cache, block_tables, seq_lens, scale, f, out); break;
    case 128: dispatch_group<scalar_t, 128>(q, k_cache, v_cache, block_tables, seq_lens, scale, f, out); break;
    default: decode_impl<scalar_t, 0, 0>(q, k_cache, v_cache, block_tables, seq_lens, scale, f, out);
  }
}

inline at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& block_tables, const at::Tensor& seq_lens, double scale,
                        int64_t window, double softcap, const c10::optional<at::Tensor>& sinks) {
  TORCH_CHECK(q.device().is_cpu() && k_cache.device().is_cpu() && v_cache.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(q.dim() == 3, "q must be [nd, H, D]");
  TORCH_CHECK(k_cache.dim() == 4 && v_cache.dim() == 4 && v_cache.sizes().slice(0, 3) == k_cache.sizes().slice(0, 3),
              "k_cache must be [num_blocks, block_size, Hkv, D] and v_cache [num_blocks, block_size, Hkv, DV]");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type(),
              "q and the caches must share a dtype");
  TORCH_CHECK(q.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous(),
              "q and the caches must be contiguous");
  TORCH_CHECK(block_tables.scalar_type() == at::kInt && seq_lens.scalar_type() == at::kInt,
              "block_tables and seq_lens must be int32");
  TORCH_CHECK(block_tables.is_contiguous() && seq_lens.is_contiguous(), "block_tables and seq_lens must be contiguous");
  TORCH_CHECK(window >= 0, "window must be >= 0 (0: no window)");
  TORCH_CHECK(softcap >= 0.0, "softcap must be >= 0 (0: no softcap)");
  const int64_t nd = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t num_blocks = k_cache.size(0), block_size = k_cache.size(1), Hkv = k_cache.size(2);
  TORCH_CHECK(k_cache.size(3) == D, "head_dim of q and k_cache differ");
  TORCH_CHECK(Hkv > 0 && H % Hkv == 0, "num_heads must be a multiple of num_kv_heads");
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.size(0) == nd, "block_tables must be [nd, max_blocks]");
  TORCH_CHECK(seq_lens.dim() == 1 && seq_lens.size(0) == nd, "seq_lens must be [nd]");
  const float* sink_ptr = nullptr;
  if (sinks.has_value()) {
    const at::Tensor& s = *sinks;
    TORCH_CHECK(s.scalar_type() == at::kFloat && s.dim() == 1 && s.size(0) == H && s.is_contiguous() &&
                s.device().is_cpu(), "sinks must be a contiguous float32 CPU tensor [num_heads]");
    sink_ptr = s.data_ptr<float>();
  }

  // Validate every block id a request will read, so the parallel loop cannot run off the cache.
  const int32_t* tables = block_tables.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  const int64_t max_blocks = block_tables.size(1);
  for (int64_t r = 0; r < nd; ++r) {
    const int64_t need = (static_cast<int64_t>(lens[r]) + block_size - 1) / block_size;
    TORCH_CHECK(lens[r] >= 0 && need <= max_blocks, "seq_len ", lens[r], " of request ", r,
                " does not fit its block table");
    const int64_t skip = window > 0 ? std::max<int64_t>(0, lens[r] - window) / block_size : 0;
    for (int64_t b = skip; b < need; ++b)
      TORCH_CHECK(tables[r * max_blocks + b] >= 0 && tables[r * max_blocks + b] < num_blocks,
                  "block id out of range in request ", r);
  }

  const Features f{window, static_cast<float>(softcap), sink_ptr};
  at::Tensor out = at::empty({nd, H, v_cache.size(3)}, q.options());
  if (nd == 0) return out;
  switch (q.scalar_type()) {
    case at::kFloat: dispatch_dim<float>(q, k_cache, v_cache, block_tables, seq_lens, scale, f, out); break;
    case at::kBFloat16: dispatch_dim<at::BFloat16>(q, k_cache, v_cache, block_tables, seq_lens, scale, f, out); break;
    case at::kHalf: dispatch_dim<at::Half>(q, k_cache, v_cache, block_tables, seq_lens, scale, f, out); break;
    default: TORCH_CHECK(false, "unsupported dtype ", q.scalar_type());
  }
  return out;
}

}  // namespace npu_serve_decode

