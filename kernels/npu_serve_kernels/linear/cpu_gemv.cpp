// bf16 linear for a few rows (decode batches) on CPUs with AVX512-BF16: y = x @ w.T (+ bias).
//
// Why: at M = 1..8 rows a decode step's linears are matrix-vector products bound by reading the
// weights, but oneDNN's bf16 path through torch reads SmolLM2's weights at ~10-20 GB/s on this
// machine (perf-notes.md), a third of what one core can stream. Here each weight row is read once,
// 32 bf16 at a time, and multiplied into every input row with VDPBF16PS (pairs of bf16 products
// summed into fp32 lanes), several weight rows at once so the FMA chains overlap.
//
// Numerics: products and sums in fp32 (VDPBF16PS rounds to nearest even and flushes denormals, as
// oneDNN's AVX512-BF16 kernels do), the bias added in fp32, the result rounded once to bf16. Only
// the order of the fp32 sums differs from oneDNN's, so results agree to fp32 rounding before the
// final bf16 rounding (tests/attention/test_cpu_gemv_kernel.py).
//
// Threads: output features are split over at most at::get_num_threads() OpenMP threads, in blocks
// large enough that a thread's share is worth a wake-up (small layers run on the calling thread).
// The GIL is released for the call (binding below).

#include <torch/extension.h>

#include <omp.h>

#include <algorithm>
#include <cstdint>

#if defined(__AVX512BF16__) && defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define NPU_SERVE_HAS_BF16_GEMV 1
#else
#define NPU_SERVE_HAS_BF16_GEMV 0
#endif

namespace {

constexpr int64_t kMaxRows = 8;

#if NPU_SERVE_HAS_BF16_GEMV

// M input rows x NB weight rows: M * NB fp32 accumulators (<= 16 of the 32 zmm registers), NB weight
// streams in flight.
template <int M, int NB>
inline void gemv_block(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t K, float* out /*[M][NB]*/) {
  __m512 acc[M][NB];
  for (int m = 0; m < M; ++m)
    for (int b = 0; b < NB; ++b) acc[m][b] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512i wv[NB];
    for (int b = 0; b < NB; ++b) wv[b] = _mm512_loadu_si512(w + b * K + k);
    for (int m = 0; m < M; ++m) {
      const __m512i xv = _mm512_loadu_si512(x + m * ldx + k);
      for (int b = 0; b < NB; ++b)
        acc[m][b] = _mm512_dpbf16_ps(acc[m][b], (__m512bh)xv, (__m512bh)wv[b]);
    }
  }
  if (k < K) {  // tail: masked loads read zeros past K (0 * 0 adds nothing)
    const __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (K - k)) - 1);
    __m512i wv[NB];
    for (int b = 0; b < NB; ++b) wv[b] = _mm512_maskz_loadu_epi16(mask, w + b * K + k);
    for (int m = 0; m < M; ++m) {
      const __m512i xv = _mm512_maskz_loadu_epi16(mask, x + m * ldx + k);
      for (int b = 0; b < NB; ++b)
        acc[m][b] = _mm512_dpbf16_ps(acc[m][b], (__m512bh)xv, (__m512bh)wv[b]);
    }
  }
  for (int m = 0; m < M; ++m)
    for (int b = 0; b < NB; ++b) out[m * NB + b] = _mm512_reduce_add_ps(acc[m][b]);
}

template <int M>
void gemv_rows(const uint16_t* x, int64_t ldx, const uint16_t* w, const at::BFloat16* bias, int64_t K, int64_t n0,
               int64_t n1, at::BFloat16* y, int64_t ldy) {
  constexpr int NB = M <= 4 ? 4 : 2;
  float tmp[M * NB];
  int64_t n = n0;
  auto store = [&](int64_t first, int nb) {
    for (int m = 0; m < M; ++m)
      for (int b = 0; b < nb; ++b) {
        float v = tmp[m * nb + b];
        if (bias != nullptr) v += static_cast<float>(bias[first + b]);
        y[m * ldy + first + b] = static_cast<at::BFloat16>(v);  // round to nearest even
      }
  };
  for (; n + NB <= n1; n += NB) {
    gemv_block<M, NB>(x, ldx, w + n * K, K, tmp);
    store(n, NB);
  }
  for (; n < n1; ++n) {
    gemv_block<M, 1>(x, ldx, w + n * K, K, tmp);
    store(n, 1);
  }
}

using RowsFn = void (*)(const uint16_t*, int64_t, const uint16_t*, const at::BFloat16*, int64_t, int64_t, int64_t,
                        at::BFloat16*, int64_t);
constexpr RowsFn kRows[kMaxRows] = {gemv_rows<1>, gemv_rows<2>, gemv_rows<3>, gemv_rows<4>,
                                    gemv_rows<5>, gemv_rows<6>, gemv_rows<7>, gemv_rows<8>};

#endif

bool available() { return NPU_SERVE_HAS_BF16_GEMV; }

// x [M, K] (any leading shape flattened by the caller), w [N, K], bias [N] or None; all bf16.
torch::Tensor linear_bf16(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& bias) {
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
  // A thread gets at least ~4 MiB of weights: waking a sleeping OpenMP thread costs ~10 us, and one
  // core streams a decode model's layers (0.2-2 MiB each) faster alone (measured: 576x576 at M = 1
  // takes 7 us on one thread, 19 us on two).
  const int64_t min_rows_per_thread = std::max<int64_t>(8, (int64_t{2} << 20) / std::max<int64_t>(K, 1));
  const int nthreads = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), N / min_rows_per_thread)));
  if (nthreads == 1) {
    rows(xp, x.stride(0), wp, bp, K, 0, N, yp, N);
  } else {
#pragma omp parallel num_threads(nthreads)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      const int64_t chunk = (N + nt - 1) / nt;
      const int64_t n0 = std::min<int64_t>(N, t * chunk), n1 = std::min<int64_t>(N, n0 + chunk);
      if (n0 < n1) rows(xp, x.stride(0), wp, bp, K, n0, n1, yp, N);
    }
  }
#endif
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("available", &available, "True when built with AVX512-BF16");
  m.def("max_rows", []() { return kMaxRows; });
  m.def("linear_bf16", &linear_bf16, "y = x @ w.T (+ bias), bf16, 1-8 rows (CPU, AVX512-BF16)",
        pybind11::arg("x"), pybind11::arg("w"), pybind11::arg("bias") = pybind11::none(),
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
