// Python binding of the bf16 GEMV kernel (cpu_gemv.h, where the kernel and its reasons live).

#include "cpu_gemv.h"

using npu_serve_gemv::available;
using npu_serve_gemv::kMaxRows;
using npu_serve_gemv::linear_bf16;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("available", &available, "True when built with AVX512-BF16");
  m.def("max_rows", []() { return kMaxRows; });
  m.def("linear_bf16", &linear_bf16, "y = x @ w.T (+ bias), bf16, 1-32 rows (CPU, AVX512-BF16)",
        pybind11::arg("x"), pybind11::arg("w"), pybind11::arg("bias") = pybind11::none(),
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
