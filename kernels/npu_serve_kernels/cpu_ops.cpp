// npu-serve's CPU kernels, built into one extension module (on first use, _cpu_build.py): compiling
// torch's headers is most of a build (~40 s on 2 cores), and one module has one helper-thread pool.
// Each kernel, and its reasons, lives in its header; this file is only their Python bindings.

#include "decoder/cpu_decoder.h"
#include "decoder/cpu_step_inputs.h"
#include "linear/cpu_gemm.h"
#include "paged_attention/cpu_decode.h"
#include "paged_attention/cpu_prefill.h"
#include "sampling/cpu_argmax.h"

namespace py = pybind11;
using npu_serve_decoder::DecoderLayer;
using npu_serve_decoder::Linear;
using npu_serve_decoder::OptTensor;
using npu_serve_decoder::rms_norm;
using npu_serve_gemm::PackedWeight;
using at::Tensor;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // linear/cpu_gemm.h
  m.def("gemm_available", &npu_serve_gemm::available, "True when built with AVX512-BF16");
  m.def("gemm_variant", []() {
    static const char* names[] = {"dot", "fma", "amx"};
    return std::string(names[npu_serve_gemm::variant()]);
  }, "the tiles linear() uses on this CPU (timed on first use; dot and fma give the same bits)");
  m.def("gemm_amx_available", []() { return NPU_SERVE_HAS_AMX && npu_serve_gemm::amx_ready(); },
        "True when built with AMX and Linux lets this process use the tiles");
  m.def("gemm_set_variant", [](const std::string& name) {
    TORCH_CHECK(name == "dot" || name == "fma" || name == "amx", "gemm variant: 'dot', 'fma' or 'amx', got '",
                name, "'");
    const auto v = name == "amx" ? npu_serve_gemm::kAmx : name == "fma" ? npu_serve_gemm::kFma : npu_serve_gemm::kDot;
    TORCH_CHECK(npu_serve_gemm::set_variant(v), "gemm variant 'amx': this CPU, compiler or kernel has no AMX");
  }, py::arg("name"));
  py::class_<PackedWeight, std::shared_ptr<PackedWeight>>(m, "PackedWeight")
      .def(py::init<Tensor>(), py::arg("weight"), "a bf16 [N, K] weight packed for the kernel (a copy)")
      .def_readonly("data", &PackedWeight::data)
      .def_readonly("out_features", &PackedWeight::out_features)
      .def_readonly("in_features", &PackedWeight::in_features)
      .def("__call__", &PackedWeight::operator(), "y = x @ w.T (+ bias) for bf16 x [M, K] (CPU, AVX512-BF16)",
           py::arg("x"), py::arg("bias") = py::none(), py::call_guard<py::gil_scoped_release>());

  m.def("linear_many", [](const Tensor& x, const std::vector<std::shared_ptr<PackedWeight>>& ws,
                          const std::vector<OptTensor>& biases) {
          std::vector<const PackedWeight*> raw;
          for (const auto& w : ws) raw.push_back(w.get());
          return npu_serve_gemm::linear_many(x, raw, biases);
        }, "[w(x, b) for each packed weight w and bias b] (1 to 3 weights of x's K inputs): one task list on "
        "the AMX tiles, the same bits as one call each", py::arg("x"), py::arg("weights"), py::arg("biases"),
        py::call_guard<py::gil_scoped_release>());

  // paged_attention/cpu_decode.h. The GIL is released while the kernel runs: in the server the event
  // loop's thread (SSE, JSON) then runs beside the engine's attention instead of waiting for it.
  m.def("paged_decode", &npu_serve_decode::paged_decode,
        "Paged attention decode over the KV cache, read in place (CPU)", py::arg("q"), py::arg("k_cache"),
        py::arg("v_cache"), py::arg("block_tables"), py::arg("seq_lens"), py::arg("scale"), py::arg("window") = 0,
        py::arg("softcap") = 0.0, py::arg("sinks") = py::none(), py::call_guard<py::gil_scoped_release>());

  // paged_attention/cpu_prefill.h: None where it does not run (the caller keeps torch's SDPA).
  m.def("paged_prefill", [](const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& block_table,
                            int64_t seq_len, double scale) -> OptTensor {
          Tensor out = npu_serve_prefill::paged_prefill(q, k_cache, v_cache, block_table, seq_len, scale);
          return out.defined() ? OptTensor(out) : c10::nullopt;
        }, "Causal prefill attention of a request's last n tokens over its paged cache (CPU, bf16: AMX tiles or VDPBF16PS)",
        py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("block_table"), py::arg("seq_len"),
        py::arg("scale"), py::call_guard<py::gil_scoped_release>());

  // sampling/cpu_argmax.h.
  m.def("argmax_rows", &npu_serve_sampling::argmax_rows,
        "torch.argmax(logits, -1) for float32 or bfloat16 [N, V] CPU logits with contiguous rows", py::arg("logits"),
        py::call_guard<py::gil_scoped_release>());

  // decoder/cpu_decoder.h.
  // The GIL is released around every call: the server's event loop runs while the engine computes.
  py::class_<Linear>(m, "Linear")
      .def(py::init([](Tensor weight, OptTensor bias, std::shared_ptr<PackedWeight> packed, int64_t gemm_rows) {
             return Linear{std::move(weight), std::move(bias), std::move(packed), gemm_rows};
           }),
           py::arg("weight"), py::arg("bias"), py::arg("packed"), py::arg("gemm_rows"))
      .def("__call__", &Linear::operator(), py::call_guard<py::gil_scoped_release>())
      .def("with_argmax", [](const Linear& l, const Tensor& x) -> std::tuple<Tensor, OptTensor> {
             auto [y, ids] = l.with_argmax(x);
             return {y, ids.defined() ? OptTensor(ids) : c10::nullopt};
           }, "(this linear of x, its output's argmax over the last dimension or None where the AMX tiles do "
           "not run it)", py::arg("x"), py::call_guard<py::gil_scoped_release>());
  py::class_<DecoderLayer>(m, "DecoderLayer")
      .def(py::init<Tensor, Tensor, double, Linear, Linear, Linear, Linear, Linear, Linear, Linear, OptTensor,
                    OptTensor, double, int64_t, int64_t, int64_t, int64_t>(),
           py::arg("input_norm"), py::arg("post_norm"), py::arg("eps"), py::arg("q"), py::arg("k"), py::arg("v"),
           py::arg("o"), py::arg("gate"), py::arg("up"), py::arg("down"), py::arg("q_norm"), py::arg("k_norm"),
           py::arg("qk_eps"), py::arg("num_heads"), py::arg("num_kv_heads"), py::arg("head_dim"),
           py::arg("v_head_dim"))
      .def("attention_in", &DecoderLayer::attention_in, py::call_guard<py::gil_scoped_release>())
      .def("attention_out_mlp", &DecoderLayer::attention_out_mlp, py::call_guard<py::gil_scoped_release>())
      .def("decode_layer", &DecoderLayer::decode_layer, py::call_guard<py::gil_scoped_release>())
      .def("step_layer", &DecoderLayer::step_layer, py::call_guard<py::gil_scoped_release>());
  m.def("decode_layers", &npu_serve_decoder::decode_layers,
        "DecoderLayer.decode_layer of every layer in turn (a step of decodes only)", py::arg("layers"),
        py::arg("h"), py::arg("cos"), py::arg("sin"), py::arg("key_caches"), py::arg("value_caches"),
        py::arg("slot_mapping"), py::arg("block_tables"), py::arg("seq_lens"), py::arg("scales"),
        py::arg("windows"), py::arg("softcaps"), py::call_guard<py::gil_scoped_release>());
  m.def("step_inputs", &npu_serve_decoder::step_inputs,
        "(embedding rows of input_ids, cos rows, sin rows of positions), each [1, T, width], by row copies",
        py::arg("input_ids"), py::arg("positions"), py::arg("embedding"), py::arg("cos"), py::arg("sin"),
        py::call_guard<py::gil_scoped_release>());
  m.def("silu_mul", [](const Tensor& gate, const Tensor& up) -> OptTensor {
    Tensor out = npu_serve_fused::silu_mul(gate, up);
    return out.defined() ? OptTensor(out) : c10::nullopt;
  }, "silu(gate) * up with torch's bits (bf16), or None where the table cannot serve", py::arg("gate"),
        py::arg("up"), py::call_guard<py::gil_scoped_release>());
  m.def("to_float", &npu_serve_fused::to_float, "x.to(torch.float32), bf16 on both cores", py::arg("x"),
        py::call_guard<py::gil_scoped_release>());
  m.def("gate_up_silu", [](const Tensor& x, const std::shared_ptr<PackedWeight>& gate,
                           const std::shared_ptr<PackedWeight>& up) -> OptTensor {
    Tensor y = npu_serve_gemm::gate_up_silu(x, *gate, *up, npu_serve_fused::silu_table());
    return y.defined() ? OptTensor(y) : c10::nullopt;
  }, "silu(x @ gate.T) * (x @ up.T) in one AMX pass, with silu_mul's bits; None where it does not run",
        py::arg("x"), py::arg("gate"), py::arg("up"), py::call_guard<py::gil_scoped_release>());
  m.def("to_bf16", &npu_serve_fused::to_bf16, "x.to(torch.bfloat16) with c10's rounding, on both cores", py::arg("x"),
        py::call_guard<py::gil_scoped_release>());
  m.def("rms_norm_sum_lanes", &npu_serve_decoder::rms_norm_sum_lanes,
        "the width of torch's sum rms_norm reproduces for rows of C values (8, 16), or 0: torch's mean",
        py::arg("C"), py::call_guard<py::gil_scoped_release>());
  m.def("rms_norm", &rms_norm, "transformers' LlamaRMSNorm, op for op", py::arg("x"), py::arg("weight"),
        py::arg("eps"), py::call_guard<py::gil_scoped_release>());
}
