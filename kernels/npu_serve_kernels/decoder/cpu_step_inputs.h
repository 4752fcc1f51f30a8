// A step's inputs to the decoder stack by row copies: the token embeddings (nn.Embedding's rows) and the
// RoPE cos/sin rows of each position, read from tables the model runner built once with transformers'
// own rotary module (npu_serve/worker/step_inputs.py says when that gives the module's bits).
//
// Why: the embedding and the rotary module are the first torch calls of every step, right after 30
// layers of kernels have streamed ~500 MB through the caches, so their code runs cold: in the c=32 decode
// loop nn.Embedding took 134 us and the rotary module (about ten ops) 200 us a step (median), against 6
// and 22 us when called in a loop. Both are row lookups here, in one call without torch's dispatcher.

#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <cstring>
#include <tuple>

namespace npu_serve_decoder {

// table.index_select(0, idx) for a contiguous CPU table [R, D] and int64 indices [T] (any shape, contiguous),
// as [1, T, D]: the same bytes. An index outside [0, R) is an error naming it, as torch's is.
inline at::Tensor gather_rows(const at::Tensor& table, const at::Tensor& idx, const char* what) {
  TORCH_CHECK(table.device().is_cpu() && table.dim() == 2 && table.is_contiguous(), what,
              ": the table must be a contiguous CPU [rows, width] tensor");
  TORCH_CHECK(idx.device().is_cpu() && idx.scalar_type() == at::kLong && idx.is_contiguous(), what,
              ": the indices must be a contiguous CPU int64 tensor");
  const int64_t n = idx.numel(), rows = table.size(0), width = table.size(1);
  const int64_t* ix = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK(ix[i] >= 0 && ix[i] < rows, what, ": index ", ix[i], " is out of range for ", rows, " rows");
  at::Tensor out = at::empty({1, n, width}, table.options());
  const int64_t row_bytes = width * table.element_size();
  const char* src = static_cast<const char*>(table.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  for (int64_t i = 0; i < n; ++i) std::memcpy(dst + i * row_bytes, src + ix[i] * row_bytes, row_bytes);
  return out;
}

// (embedding rows of input_ids, cos rows and sin rows of positions), each [1, T, width].
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> step_inputs(const at::Tensor& input_ids,
                                                                  const at::Tensor& positions,
                                                                  const at::Tensor& embedding, const at::Tensor& cos,
                                                                  const at::Tensor& sin) {
  TORCH_CHECK(input_ids.numel() == positions.numel(), "step_inputs: ", input_ids.numel(), " ids but ",
              positions.numel(), " positions");
  return {gather_rows(embedding, input_ids, "embedding"), gather_rows(cos, positions, "rope cos"),
          gather_rows(sin, positions, "rope sin")};
}

}  // namespace npu_serve_decoder
