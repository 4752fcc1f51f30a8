// A Llama-shaped decoder layer's work outside attention, in C++: the same ATen ops, in the same
// order and on tensors of the same shapes as transformers' Python forward, so every result is bit
// for bit the one that forward computes; only the Python around each op is gone.
//
// Why: at one request per step (c=1) SmolLM2's 30 layers cost ~20 ms per token on this CPU, of which
// ~10 ms are the linears and ~2 ms the ATen ops themselves; the rest is Python: ~45 op calls and ~13
// nn.Module calls per layer, each a few microseconds (torch.profiler against wall time, 2026-12-02).
// Called from C++ the same ops cost their dispatch only (~1 us), so a decode token should drop to
// ~13-14 ms (docs/speed-issue12.md has the measurement).
//
// Why "the same ops" rather than our own fused loops: transformers' RMSNorm takes the mean of squares
// through torch's vectorised cascade sum and SiLU through its vectorised exp (with a scalar tail
// whose position depends on the tensor's length); reproducing those bit for bit is fragile, calling
// them is exact by construction. The model runner (ModelRunner._fast_matches) checks it at every engine build
// (both forwards, compared with torch.equal) and keeps transformers' forward if anything differs.
//
// Shapes follow transformers (hidden states [1, T, C] for a packed batch of T tokens), because
// TensorIterator's vector/scalar split and its threading chunks depend on them. Linears go through
// the bf16 kernel over packed weights exactly where npu_serve/worker/cpu_linear.py would send them
// (inputs of at most `gemm_rows` rows, bf16), else at::linear, as F.linear does.

#pragma once

#include <torch/extension.h>

#include "../linear/cpu_gemm.h"
#include "../paged_attention/cpu_decode.h"
#include "../paged_attention/cpu_prefill.h"
#include "cpu_fused.h"

#include <omp.h>

#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

namespace npu_serve_decoder {

using at::Tensor;
using OptTensor = c10::optional<Tensor>;

// Runs the ops in its scope on the calling thread alone: torch's elementwise ops split a big tensor over
// OpenMP's threads, and with OMP_WAIT_POLICY=PASSIVE each such region wakes a sleeping thread for less
// work than the wake-up costs. Only for ops whose every output element is computed the same way
// whatever the split (copies, +, *, neg, pow(2), per-row means): SiLU is not (torch's vectorised exp
// and its scalar tail differ in the last bit, and the tail moves with the split), nor the matmuls.
// (RMSNorm's rsqrt runs on one value per normalised row: torch never splits it below its grain size,
// so the scope is on only while those values number at most at::internal::GRAIN_SIZE; `rows` is that
// count: T for the layer norms, T x heads for Qwen3's per-head q/k norms.)
class Serial {
 public:
  explicit Serial(int64_t rows) : threads_(omp_get_max_threads()), on_(rows <= at::internal::GRAIN_SIZE) {
    if (on_) omp_set_num_threads(1);
  }
  ~Serial() {
    if (on_) omp_set_num_threads(threads_);
  }
  Serial(const Serial&) = delete;
  Serial& operator=(const Serial&) = delete;

 private:
  int threads_;
  bool on_;
};

struct Linear {
  Tensor weight;
  OptTensor bias;
  std::shared_ptr<npu_serve_gemm::PackedWeight> packed;  // the kernel's copy of weight, or null
  int64_t gemm_rows;  // inputs of 1..gemm_rows rows (bf16) go to the kernel; 0: never

  // Whether x goes to the kernel (else at::linear, as cpu_linear.py decides).
  bool runs_kernel(const Tensor& x) const {
    const int64_t k = x.size(-1);
    const int64_t rows = k ? x.numel() / k : 0;
    return packed && rows >= 1 && rows <= gemm_rows && x.scalar_type() == at::kBFloat16;
  }

  Tensor operator()(const Tensor& x) const {
    if (runs_kernel(x)) return shaped_like(x, (*packed)(rows_of(x), bias));
    return at::linear(x, weight, bias);
  }

  // (this linear of x, torch.argmax of its output over the last dimension, int64 [rows]) where the kernel's
  // AMX tiles run it (npu_serve_gemm::linear_argmax); else the output and an undefined tensor.
  std::tuple<Tensor, Tensor> with_argmax(const Tensor& x) const {
    if (runs_kernel(x)) {
      auto [y, ids] = npu_serve_gemm::linear_argmax(rows_of(x), packed->data, packed->out_features,
                                                    packed->in_features, bias);
      return {shaped_like(x, y), ids};
    }
    return {at::linear(x, weight, bias), Tensor()};
  }

  // x as the kernel takes it: [rows, k] with contiguous rows.
  static Tensor rows_of(const Tensor& x) {
    const int64_t k = x.size(-1);
    Tensor x2 = x.reshape({k ? x.numel() / k : 0, k});
    return x2.stride(1) != 1 ? x2.contiguous() : x2;
  }

  // The kernel's y [rows, n] viewed with x's leading dimensions.
  static Tensor shaped_like(const Tensor& x, const Tensor& y) {
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = y.size(1);
    return y.view(shape);
  }
};

// Each of `ls` applied to x (linears that read the same input: q/k/v, gate/up). Where all of them go to the
// kernel, one call (npu_serve_gemm::linear_many: on the AMX tiles their tasks share one list, which keeps
// both threads busy to the end); else one call each. Either way each result is that linear's alone.
inline std::vector<Tensor> linears(const Tensor& x, std::initializer_list<const Linear*> ls) {
  std::vector<Tensor> out;
  bool together = true;
  for (const Linear* l : ls) together = together && l->runs_kernel(x);
  if (!together) {
    for (const Linear* l : ls) out.push_back((*l)(x));
    return out;
  }
  std::vector<const npu_serve_gemm::PackedWeight*> ws;
  std::vector<OptTensor> biases;
  for (const Linear* l : ls) {
    ws.push_back(l->packed.get());
    biases.push_back(l->bias);
  }
  for (const Tensor& y : npu_serve_gemm::linear_many(Linear::rows_of(x), ws, biases))
    out.push_back(Linear::shaped_like(x, y));
  return out;
}

// torch's mean over the last dimension of the squares `sq`, as the fused RMSNorm (cpu_fused.h) is handed
// it: on one thread while its rows are few enough for the Serial scope (one rsqrt value a row).
inline Tensor row_means(const Tensor& sq) {
  Serial serial(sq.numel() / std::max<int64_t>(sq.size(-1), 1));
  return sq.mean(-1, /*keepdim=*/true);
}

// transformers' LlamaRMSNorm.forward: fused (cpu_fused.h: the same bits in one pass a row, or in two
// passes around torch's mean) where it can, else op for op. Its rsqrt values number x's rows (T, or
// T x heads for Qwen3's q/k norms): the Serial scope's count.
inline Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  Tensor fused = npu_serve_fused::rms_norm(x, weight, eps, row_means);
  if (fused.defined()) return fused;
  const int64_t C = x.dim() ? x.size(-1) : 1, rows = C ? x.numel() / C : 0;
  Serial serial(rows);
  Tensor h = x.to(at::kFloat);
  Tensor variance = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * at::rsqrt(variance + eps);
  return weight * h.to(x.scalar_type());
}

// The vector width of torch's sum that rms_norm reproduces for rows of C values here (8 or 16), or 0
// where it calls torch's mean instead (npu_serve_fused::mean_order; for tests and logs).
inline int rms_norm_sum_lanes(int64_t C) {
  auto mean = row_means;
  return npu_serve_fused::mean_order(C, mean);
}

// transformers' rotate_half and apply_rotary_pos_emb for one of q / k: x [1, T, H, D], cos/sin [1, T, D];
// returns [T, H, D]. Fused (cpu_fused.h) where it can, else op for op. (transformers applies it to the
// transposed [1, H, T, D] view; elementwise ops give the same values.)
inline Tensor rotary(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  Tensor fused = npu_serve_fused::rotary(x, cos, sin);
  if (fused.defined()) return fused;
  Serial serial(x.size(1));
  const int64_t half = x.size(-1) / 2;
  const Tensor c = cos.unsqueeze(2), s = sin.unsqueeze(2);  // [1, T, 1, D]: broadcast over heads
  Tensor rotated = at::cat({x.slice(-1, half).neg(), x.slice(-1, 0, half)}, -1);
  return (x * c + rotated * s)[0];
}

// a + b and a * b of same-shaped [1, T, ...] tensors: fused (cpu_fused.h, both cores) where it can,
// else torch's op on one thread.
inline Tensor add(const Tensor& a, const Tensor& b, int64_t T) {
  Tensor fused = npu_serve_fused::binary<false>(a, b);
  if (fused.defined()) return fused;
  Serial serial(T);
  return a + b;
}

inline Tensor mul(const Tensor& a, const Tensor& b, int64_t T) {
  Tensor fused = npu_serve_fused::binary<true>(a, b);
  if (fused.defined()) return fused;
  Serial serial(T);
  return a * b;
}

class DecoderLayer {
 public:
  DecoderLayer(Tensor input_norm, Tensor post_norm, double eps, Linear q, Linear k, Linear v, Linear o, Linear gate,
               Linear up, Linear down, OptTensor q_norm, OptTensor k_norm, double qk_eps, int64_t num_heads,
               int64_t num_kv_heads, int64_t head_dim, int64_t v_head_dim)
      : input_norm_(std::move(input_norm)), post_norm_(std::move(post_norm)), eps_(eps), q_(std::move(q)),
        k_(std::move(k)), v_(std::move(v)), o_(std::move(o)), gate_(std::move(gate)), up_(std::move(up)),
        down_(std::move(down)), q_norm_(std::move(q_norm)), k_norm_(std::move(k_norm)), qk_eps_(qk_eps),
        num_heads_(num_heads), num_kv_heads_(num_kv_heads), head_dim_(head_dim), v_head_dim_(v_head_dim) {}

  // Input norm, q/k/v projections, (Qwen3's per-head q/k norms,) RoPE: the query [T, H, D], key
  // [T, Hkv, D] and value [T, Hkv, Dv] the attention backend takes. x: [1, T, C].
  std::tuple<Tensor, Tensor, Tensor> attention_in(const Tensor& x, const Tensor& cos, const Tensor& sin) const {
    const int64_t T = x.size(1);
    const Tensor h = rms_norm(x, input_norm_, eps_);
    const std::vector<Tensor> qkv = linears(h, {&q_, &k_, &v_});
    Tensor q = qkv[0].view({1, T, num_heads_, head_dim_});
    Tensor k = qkv[1].view({1, T, num_kv_heads_, head_dim_});
    Tensor v = qkv[2].view({T, num_kv_heads_, v_head_dim_});
    if (q_norm_.has_value()) q = rms_norm(q, *q_norm_, qk_eps_);  // Qwen3: one rsqrt per token and head
    if (k_norm_.has_value()) k = rms_norm(k, *k_norm_, qk_eps_);
    return {rotary(q, cos, sin), rotary(k, cos, sin), v};
  }

  // The whole layer for a step of decodes only (one new token per request) on the CPU attention
  // backend, with the attention that backend runs (attention/cpu.py): the new K/V written into their
  // slots (write_kv), then the paged-decode kernel (../paged_attention/cpu_decode.h).
  Tensor decode_layer(const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& key_cache,
                      const Tensor& value_cache, const Tensor& slot_mapping, const Tensor& block_tables,
                      const Tensor& seq_lens, double scale, int64_t window, double softcap) const {
    auto [q, k, v] = attention_in(x, cos, sin);
    write_kv(key_cache, value_cache, slot_mapping, k, v);
    const Tensor attn = npu_serve_decode::paged_decode(q.contiguous(), key_cache, value_cache, block_tables, seq_lens,
                                                       scale, window, softcap, c10::nullopt);
    return attention_out_mlp(x, attn);
  }

  // The whole layer for any step on the CPU attention backend when the layer has no window, softcap or
  // sinks: the attention of attention/cpu.py (CpuAttentionBackend, a TorchAttentionBackend): the prefill
  // kernel where it runs (bf16 with AVX512-BF16, ../paged_attention/cpu_prefill.h), else the same ATen calls on
  // tensors of the same shapes and strides as attention/torch_ref.py, with no Python between them.
  // Requests are in the scheduler's order, decodes first: request i's queries are rows
  // query_start[i]..query_start[i+1] of the step, and it has seq_lens_cpu[i] tokens once they are in.
  //
  // Why: with prompts in the step each layer's attention was ~15 torch calls from Python, each taking
  // and dropping the GIL, and in the server the event loop's thread takes it in between (py-spy on the
  // server at c=1: attention 46% of a prefill step's samples, 19-31% in-process).
  //
  // One difference from the Python path, with the same bits: a prompt that starts at position 0
  // attends to its new keys and values as attention_in returned them, not to the copy just written
  // into the cache and gathered back (the same values, the same [Hkv, L, D] strides).
  Tensor step_layer(const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& key_cache,
                    const Tensor& value_cache, const Tensor& slot_mapping, const Tensor& block_tables,
                    const Tensor& seq_lens, int64_t num_decodes, const std::vector<int64_t>& query_start,
                    const std::vector<int64_t>& seq_lens_cpu, double scale) const {
    TORCH_CHECK(query_start.size() == seq_lens_cpu.size() + 1 && num_decodes >= 0 &&
                    num_decodes <= static_cast<int64_t>(seq_lens_cpu.size()),
                "step_layer: query_start must have one entry more than seq_lens_cpu, and num_decodes <= requests");
    auto [q, k, v] = attention_in(x, cos, sin);
    write_kv(key_cache, value_cache, slot_mapping, k, v);
    const Tensor attn = q.new_empty({q.size(0), q.size(1), v.size(2)});
    const int64_t nd = num_decodes;
    if (nd > 0) {
      attn.narrow(0, 0, nd).copy_(npu_serve_decode::paged_decode(
          q.narrow(0, 0, nd).contiguous(), key_cache, value_cache, block_tables.narrow(0, 0, nd).contiguous(),
          seq_lens.narrow(0, 0, nd).contiguous(), scale, 0, 0.0, c10::nullopt));
    }
    const bool gqa = num_heads_ != num_kv_heads_;
    const int64_t block_size = key_cache.size(1);
    for (size_t i = static_cast<size_t>(nd); i < seq_lens_cpu.size(); ++i) {
      const int64_t a = query_start[i], n = query_start[i + 1] - a, len = seq_lens_cpu[i];
      // bf16 with AVX512-BF16: the prefill kernel, as the CPU backend's _prefill calls it (the same bits).
      const Tensor fast = npu_serve_prefill::paged_prefill(q.narrow(0, a, n), key_cache, value_cache,
                                                           block_tables[static_cast<int64_t>(i)], len, scale);
      if (fast.defined()) {
        attn.narrow(0, a, n).copy_(fast);
        continue;
      }
      const Tensor qh = q.narrow(0, a, n).transpose(0, 1).unsqueeze(0);  // [1, H, n, D]
      Tensor out;
      if (n == len) {  // the whole prompt is in this step: causal over its own keys
        out = at::scaled_dot_product_attention(qh, k.narrow(0, a, n).transpose(0, 1).unsqueeze(0),
                                               v.narrow(0, a, n).transpose(0, 1).unsqueeze(0), c10::nullopt, 0.0,
                                               /*is_causal=*/true, scale, gqa);
      } else {  // after cached tokens (a prefix hit or an earlier chunk): its context from the cache
        const Tensor table = block_tables[static_cast<int64_t>(i)].narrow(0, 0, (len + block_size - 1) / block_size).to(at::kLong);
        const Tensor keys = key_cache.index({table}).flatten(0, 1).narrow(0, 0, len).transpose(0, 1).unsqueeze(0);
        const Tensor values = value_cache.index({table}).flatten(0, 1).narrow(0, 0, len).transpose(0, 1).unsqueeze(0);
        const auto opts = at::TensorOptions().dtype(at::kLong);
        const Tensor rows = at::arange(n, opts).unsqueeze(1) + (len - n);
        const Tensor cols = at::arange(0, len, opts).unsqueeze(0);
        out = at::scaled_dot_product_attention(qh, keys, values, cols <= rows, 0.0, /*is_causal=*/false, scale, gqa);
      }
      attn.narrow(0, a, n).copy_(out[0].transpose(0, 1));
    }
    return attention_out_mlp(x, attn);
  }

  // silu(gate_(h)) * up_(h): in one pass on the AMX tiles where both linears run there without a bias
  // (npu_serve_gemm::gate_up_silu, the same bits), else the two linears and silu_mul.
  Tensor swiglu(const Tensor& h, int64_t T) const {
    if (gate_.runs_kernel(h) && up_.runs_kernel(h) && !(gate_.bias.has_value() && gate_.bias->defined()) &&
        !(up_.bias.has_value() && up_.bias->defined())) {
      const Tensor y = npu_serve_gemm::gate_up_silu(Linear::rows_of(h), *gate_.packed, *up_.packed,
                                                    npu_serve_fused::silu_table());
      if (y.defined()) return Linear::shaped_like(h, y);
    }
    const std::vector<Tensor> gate_up = linears(h, {&gate_, &up_});
    const Tensor& gate = gate_up[0];
    const Tensor& up = gate_up[1];
    Tensor hidden = npu_serve_fused::silu_mul(gate, up);  // torch's silu and mul, from a table (cpu_fused.h)
    if (!hidden.defined()) hidden = mul(at::silu(gate), up, T);
    return hidden;
  }

  // The rest of the layer after attention: o_proj, residual, post-attention norm, SwiGLU MLP, residual.
  // x: the layer's input [1, T, C]; attn: the backend's output [T, H, Dv].
  Tensor attention_out_mlp(const Tensor& x, const Tensor& attn) const {
    const int64_t T = x.size(1);
    Tensor a;
    {
      Serial serial(T);
      a = attn.reshape({1, T, -1}).contiguous();
    }
    const Tensor mid = add(x, o_(a), T);
    const Tensor h = rms_norm(mid, post_norm_, eps_);
    return add(mid, down_(swiglu(h, T)), T);
  }

 private:
  // The step's new keys and values into their cache slots, as the Python backends' write_kv does:
  // caches [num_blocks, block_size, Hkv, D] seen as one row per slot, slot_mapping [T] of slot ids.
  static void write_kv(const Tensor& key_cache, const Tensor& value_cache, const Tensor& slot_mapping,
                       const Tensor& k, const Tensor& v) {
    copy_rows(key_cache, slot_mapping, k);
    copy_rows(value_cache, slot_mapping, v);
  }

  // index_copy_(0, slots, rows) into the cache's one-row-per-slot view, as plain row copies where the
  // layouts allow (the same bytes land in the same slots): torch's index_copy_ took ~100 us a call for a
  // 512-token step's rows (2.4% of the step, torch.profiler), a copy loop a few. Else index_copy_ itself.
  static void copy_rows(const Tensor& cache, const Tensor& slots, const Tensor& rows) {
    const bool plain = cache.dim() == 4 && cache.is_contiguous() && rows.is_contiguous() &&
                       rows.scalar_type() == cache.scalar_type() && slots.scalar_type() == at::kLong &&
                       slots.is_contiguous() && slots.dim() == 1 && rows.dim() == 3 && rows.size(0) == slots.size(0) &&
                       rows.size(1) == cache.size(2) && rows.size(2) == cache.size(3) && rows.device().is_cpu() &&
                       cache.device().is_cpu() && slots.device().is_cpu();
    if (!plain) {
      cache.view({-1, cache.size(2), cache.size(3)}).index_copy_(0, slots, rows);
      return;
    }
    // Straight from the pointers: building the one-row-per-slot view tensor cost more than the copies
    // (perf: 1.5% of a c=32 decode step's main thread in copy_rows, a third of it the memcpy).
    const int64_t n = slots.size(0), num_slots = cache.size(0) * cache.size(1);
    const int64_t* slot = slots.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i)
      TORCH_CHECK(slot[i] >= 0 && slot[i] < num_slots, "write_kv: slot ", slot[i], " is outside the cache's ",
                  num_slots, " slots");
    const int64_t row_bytes = cache.size(2) * cache.size(3) * cache.element_size();
    char* dst = static_cast<char*>(cache.data_ptr());
    const char* src = static_cast<const char*>(rows.data_ptr());
    for (int64_t i = 0; i < n; ++i) std::memcpy(dst + slot[i] * row_bytes, src + i * row_bytes, row_bytes);
  }

  Tensor input_norm_, post_norm_;
  double eps_;
  Linear q_, k_, v_, o_, gate_, up_, down_;
  OptTensor q_norm_, k_norm_;
  double qk_eps_;
  int64_t num_heads_, num_kv_heads_, head_dim_, v_head_dim_;
};

// Every layer's decode_layer in turn, for a step of decodes only, in one call from Python. Why: one call
// a layer paid pybind's conversion of eleven arguments and the interpreter's loop thirty times a step
// (perf: 1% of a c=32 decode step's main thread in pybind's wrapper, with the helper idle).
inline Tensor decode_layers(const std::vector<const DecoderLayer*>& layers, Tensor h, const Tensor& cos,
                            const Tensor& sin, const std::vector<Tensor>& key_caches,
                            const std::vector<Tensor>& value_caches, const Tensor& slot_mapping,
                            const Tensor& block_tables, const Tensor& seq_lens, const std::vector<double>& scales,
                            const std::vector<int64_t>& windows, const std::vector<double>& softcaps) {
  const size_t n = layers.size();
  TORCH_CHECK(key_caches.size() == n && value_caches.size() == n && scales.size() == n && windows.size() == n &&
                  softcaps.size() == n,
              "decode_layers: one cache pair, scale, window and softcap per layer");
  for (size_t i = 0; i < n; ++i)
    h = layers[i]->decode_layer(h, cos, sin, key_caches[i], value_caches[i], slot_mapping, block_tables, seq_lens,
                                scales[i], windows[i], softcaps[i]);
  return h;
}

}  // namespace npu_serve_decoder

