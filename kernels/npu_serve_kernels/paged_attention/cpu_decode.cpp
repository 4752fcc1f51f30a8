// Python binding of the CPU paged-decode kernel (cpu_decode.h, where the kernel and its reasons live).

#include "cpu_decode.h"

using npu_serve_decode::paged_decode;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode", &paged_decode, "Paged attention decode over the KV cache, read in place (CPU)",
        pybind11::arg("q"), pybind11::arg("k_cache"), pybind11::arg("v_cache"), pybind11::arg("block_tables"),
        pybind11::arg("seq_lens"), pybind11::arg("scale"), pybind11::arg("window") = 0,
        pybind11::arg("softcap") = 0.0, pybind11::arg("sinks") = pybind11::none(),
        // The GIL is released while the kernel runs: in the server the event loop's thread (SSE,
        // JSON) then runs beside the engine's attention instead of waiting for it.
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
