// npu-serve's CPU kernels, built into one extension module (on first use, _cpu_build.py): compiling
// torch's headers is most of a build (~40 s on 2 cores), and one module has one helper-thread pool.
// Each kernel, and its reasons, lives in its header; this file is only their Python bindings.

#include "decoder/cpu_decoder.h"
#include "linear/cpu_gemv.h"
#include "paged_attention/cpu_decode.h"

namespace py = pybind11;
using npu_serve_decoder::DecoderLayer;
using npu_serve_decoder::Linear;
using npu_serve_decoder::OptTensor;
using npu_serve_decoder::rms_norm;
using at::Tensor;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // linear/cpu_gemv.h
  m.def("gemv_available", &npu_serve_gemv::available, "True when built with AVX512-BF16");
  m.def("gemv_max_rows", []() { return npu_serve_gemv::kMaxRows; });
  m.def("linear_bf16", &npu_serve_gemv::linear_bf16, "y = x @ w.T (+ bias), bf16, 1-32 rows (CPU, AVX512-BF16)",
        py::arg("x"), py::arg("w"), py::arg("bias") = py::none(), py::call_guard<py::gil_scoped_release>());

  // paged_attention/cpu_decode.h. The GIL is released while the kernel runs: in the server the event
  // loop's thread (SSE, JSON) then runs beside the engine's attention instead of waiting for it.
  m.def("paged_decode", &npu_serve_decode::paged_decode,
        "Paged attention decode over the KV cache, read in place (CPU)", py::arg("q"), py::arg("k_cache"),
        py::arg("v_cache"), py::arg("block_tables"), py::arg("seq_lens"), py::arg("scale"), py::arg("window") = 0,
        py::arg("softcap") = 0.0, py::arg("sinks") = py::none(), py::call_guard<py::gil_scoped_release>());

  // decoder/cpu_decoder.h.
  // The GIL is released around every call: the server's event loop runs while the engine computes.
  py::class_<Linear>(m, "Linear")
      .def(py::init([](Tensor weight, OptTensor bias, int64_t gemv_rows) {
             return Linear{std::move(weight), std::move(bias), gemv_rows};
           }),
           py::arg("weight"), py::arg("bias"), py::arg("gemv_rows"))
      .def("__call__", &Linear::operator(), py::call_guard<py::gil_scoped_release>());
  py::class_<DecoderLayer>(m, "DecoderLayer")
      .def(py::init<Tensor, Tensor, double, Linear, Linear, Linear, Linear, Linear, Linear, Linear, OptTensor,
                    OptTensor, double, int64_t, int64_t, int64_t, int64_t>(),
           py::arg("input_norm"), py::arg("post_norm"), py::arg("eps"), py::arg("q"), py::arg("k"), py::arg("v"),
           py::arg("o"), py::arg("gate"), py::arg("up"), py::arg("down"), py::arg("q_norm"), py::arg("k_norm"),
           py::arg("qk_eps"), py::arg("num_heads"), py::arg("num_kv_heads"), py::arg("head_dim"),
           py::arg("v_head_dim"))
      .def("attention_in", &DecoderLayer::attention_in, py::call_guard<py::gil_scoped_release>())
      .def("attention_out_mlp", &DecoderLayer::attention_out_mlp, py::call_guard<py::gil_scoped_release>())
      .def("decode_layer", &DecoderLayer::decode_layer, py::call_guard<py::gil_scoped_release>());
  m.def("rms_norm", &rms_norm, "transformers' LlamaRMSNorm, op for op", py::arg("x"), py::arg("weight"),
        py::arg("eps"), py::call_guard<py::gil_scoped_release>());
}
