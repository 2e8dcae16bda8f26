// Flash-attention backward on CPU that also scores heads: adds sum_ij |P_ij * dP_ij| (P the attention
// probabilities, dP = dL/dP = dO V^T) into scores[b, h] and, with input_grads, returns dQ, dK, dV.
//
// Each (example, query head) is one task of at::parallel_for. It walks blocks of kBlockRows queries and,
// within the keys a block can see, tiles of kKeyTile keys, with two float32 [kBlockRows, kKeyTile] buffers
// that stay in the core's cache: S -> P = exp(scale Q K^T + mask - lse) in one, dP = dO V^T ->
// dS = P (dP - Delta) in the other, |P dP| summed in the same pass (Delta = rowsum(dO O)). The five
// products per tile (S, dP, dV += P^T dO, dQ += scale dS K, dK += scale dS^T Q) go to the BLAS torch
// links (sgemm_), as in PyTorch's own CPU flash-attention backward.
//
// Shapes, float32, last dimension contiguous: query [B, Hq, Tq, D], key [B, Hkv, Tk, D], value and
// output/grad_output [B, Hkv, Tk, Dv] / [B, Hq, Tq, Dv], logsumexp [B, Hq, Tq] (0 for rows with no key);
// mask None or [Bm, Hm, Tm, Tk] with Bm in {1, B}, Hm in {1, Hq}, Tm in {1, Tq}, bool (true attends) or
// float32 (added to the logits); scores [B, Hq] float32. Query head h reads key/value head h / (Hq / Hkv).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

extern "C" void sgemm_(const char* op_a, const char* op_b, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc);

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kBlockRows = 128;  // queries per block
constexpr int64_t kKeyTile = 256;  // keys per tile
constexpr float kMinusInfinity = -std::numeric_limits<float>::infinity();

// An optional attention mask [Bm, Hm, Tm, Tk], read a row at a time (broadcast dimensions have stride 0).
struct Mask {
  const void* data = nullptr;  // nullptr: no mask
  bool is_bool = false;
  int64_t batch_stride = 0, head_stride = 0, row_stride = 0;

  explicit Mask(const std::optional<at::Tensor>& tensor) {
    if (!tensor.has_value()) return;
    const at::Tensor& t = *tensor;
    data = t.data_ptr();
    is_bool = t.scalar_type() == at::kBool;
    batch_stride = t.size(0) > 1 ? t.stride(0) : 0;
    head_stride = t.size(1) > 1 ? t.stride(1) : 0;
    row_stride = t.size(2) > 1 ? t.stride(2) : 0;
  }
  int64_t offset(int64_t b, int64_t h, int64_t row) const {
    return b * batch_stride + h * head_stride + row * row_stride;
  }
  const bool* bool_row(int64_t b, int64_t h, int64_t row) const {
    return static_cast<const bool*>(data) + offset(b, h, row);
  }
  const float* float_row(int64_t b, int64_t h, int64_t row) const {
    return static_cast<const float*>(data) + offset(b, h, row);
  }
};

// Keys [first, last) that some query of each block of kBlockRows rows may attend to, per (mask example,
// mask head, block): int64 [Bm, Hm, blocks, 2] ([0, 0) where none may).
at::Tensor mask_key_ranges(const Mask& mask, int64_t mask_batch, int64_t mask_heads, int64_t queries,
                           int64_t keys) {
  const int64_t blocks = (queries + kBlockRows - 1) / kBlockRows;
  at::Tensor ranges = at::empty({mask_batch, mask_heads, blocks, 2}, at::kLong);
  int64_t* out = ranges.data_ptr<int64_t>();
  at::parallel_for(0, mask_batch * mask_heads * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t block = task % blocks, h = task / blocks % mask_heads, b = task / blocks / mask_heads;
      const int64_t start = block * kBlockRows, stop = std::min(start + kBlockRows, queries);
      int64_t first = keys, last = 0;
      for (int64_t row = start; row < stop; ++row) {
        const bool* allowed_bool = mask.is_bool ? mask.bool_row(b, h, row) : nullptr;
        const float* additive = mask.is_bool ? nullptr : mask.float_row(b, h, row);
        auto allowed = [&](int64_t col) { return allowed_bool ? allowed_bool[col] : additive[col] != kMinusInfinity; };
        int64_t col = 0;
        while (col < first && !allowed(col)) ++col;
        first = std::min(first, col);
        col = keys;
        while (col > last && !allowed(col - 1)) --col;
        last = std::max(last, col);
      }
      out[2 * task] = first < last ? first : 0;
      out[2 * task + 1] = first < last ? last : 0;
    }
  });
  return ranges;
}

// P = exp(S + mask - lse) in place on the row's logits for keys [first, last); without a mask but causal,
// the keys after `row` get 0, as does every key of a row without any (lse -inf).
void probabilities_row(float* logits, int64_t row, int64_t first, int64_t last, float lse, const Mask& mask,
                       int64_t b, int64_t h, bool is_causal) {
  const int64_t count = last - first;
  int64_t open = count;  // columns [open, count) get 0
  if (lse == kMinusInfinity) {
    open = 0;
  } else if (mask.data == nullptr && is_causal) {
    open = std::clamp<int64_t>(row + 1 - first, 0, count);
  } else if (mask.is_bool) {
    const bool* allowed = mask.bool_row(b, h, row) + first;
    for (int64_t c = 0; c < count; ++c) logits[c] = allowed[c] ? logits[c] : kMinusInfinity;
  } else if (mask.data != nullptr) {
    at::vec::map2([](Vec s, Vec m) { return s + m; }, logits, logits, mask.float_row(b, h, row) + first, count);
  }
  const Vec shift(lse);
  at::vec::map([&](Vec s) { return (s - shift).exp(); }, logits, logits, open);
  std::fill(logits + open, logits + count, 0.0f);
}

// sum_c |P G| over the row; with grads G becomes dS = P (G - delta) in place.
double score_row(const float* probs, float* grads, int64_t count, float delta, bool with_grads) {
  Vec total(0.0f);
  const Vec shift(delta);
  int64_t c = 0;
  for (; c + Vec::size() <= count; c += Vec::size()) {
    const Vec p = Vec::loadu(probs + c), g = Vec::loadu(grads + c);
    total = total + (p * g).abs();
    if (with_grads) (p * (g - shift)).store(grads + c);
  }
  double sum = at::vec::vec_reduce_all<float>([](Vec x, Vec y) { return x + y; }, total);
  for (; c < count; ++c) {
    sum += std::abs(probs[c] * grads[c]);
    if (with_grads) grads[c] = probs[c] * (grads[c] - delta);
  }
  return sum;
}

// Row-major C [m, n] = alpha op(A) op(B) + beta C through BLAS (column-major: C^T = op(B)^T op(A)^T).
// op 'N': A is [m, k] with row stride lda; 'T': A is stored [k, m]. Likewise B: [k, n] or stored [n, k].
void gemm(char op_a, char op_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const int rows = m, cols = n, inner = k, a_ld = lda, b_ld = ldb, c_ld = ldc;
  sgemm_(&op_b, &op_a, &cols, &rows, &inner, &alpha, b, &b_ld, a, &a_ld, &beta, c, &c_ld);
}

std::vector<at::Tensor> scored_attention_backward(const at::Tensor& query, const at::Tensor& key,
                                                  const at::Tensor& value, const at::Tensor& output,
                                                  const at::Tensor& logsumexp, const at::Tensor& grad_output,
                                                  const std::optional<at::Tensor>& mask_arg, at::Tensor& scores,
                                                  double scale, bool is_causal, bool input_grads) {
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{
           &query, &key, &value, &output, &logsumexp, &grad_output, &scores}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat, "scored_attention_backward: float32 CPU");
  }
  for (const at::Tensor* t : {&query, &key, &value, &output, &grad_output}) {
    TORCH_CHECK(t->stride(-1) == 1, "scored_attention_backward: the last dimension must be contiguous");
  }
  const int64_t batch = query.size(0), heads = query.size(1), queries = query.size(2), dim = query.size(3);
  const int64_t kv_heads = key.size(1), keys = key.size(2), value_dim = value.size(3);
  TORCH_CHECK(heads % kv_heads == 0, "scored_attention_backward: query heads not a multiple of key/value heads");
  const int64_t group = heads / kv_heads;
  const Mask mask(mask_arg);
  at::Tensor ranges;
  if (mask_arg.has_value()) {
    const at::Tensor& m = *mask_arg;
    TORCH_CHECK(m.dim() == 4 && m.size(3) == keys && m.stride(3) == 1 &&
                    (m.scalar_type() == at::kBool || m.scalar_type() == at::kFloat),
                "scored_attention_backward: mask must be bool or float32 [Bm, Hm, Tm, Tk], last dim contiguous");
    ranges = mask_key_ranges(mask, m.size(0), m.size(1), queries, keys);
  }
  // Gradients per query head, contiguous [B, Hq, T, D]; dK and dV are summed over each group at the end.
  at::Tensor grad_query, grad_key, grad_value;
  if (input_grads) {
    grad_query = at::zeros({batch, heads, queries, dim}, query.options());
    grad_key = at::zeros({batch, heads, keys, dim}, key.options());
    grad_value = at::zeros({batch, heads, keys, value_dim}, value.options());
  }
  const float alpha = static_cast<float>(scale);
  float* score_data = scores.data_ptr<float>();
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> probs(kBlockRows * kKeyTile), grads(kBlockRows * kKeyTile), delta(kBlockRows, 0.0f);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / heads, h = task % heads, kv_h = h / group;
      const float* q = query.data_ptr<float>() + b * query.stride(0) + h * query.stride(1);
      const float* k = key.data_ptr<float>() + b * key.stride(0) + kv_h * key.stride(1);
      const float* v = value.data_ptr<float>() + b * value.stride(0) + kv_h * value.stride(1);
      const float* o = output.data_ptr<float>() + b * output.stride(0) + h * output.stride(1);
      const float* d_o = grad_output.data_ptr<float>() + b * grad_output.stride(0) + h * grad_output.stride(1);
      const float* lse = logsumexp.data_ptr<float>() + b * logsumexp.stride(0) + h * logsumexp.stride(1);
      const int64_t q_ld = query.stride(2), k_ld = key.stride(2), v_ld = value.stride(2);
      const int64_t o_ld = output.stride(2), d_o_ld = grad_output.stride(2), lse_step = logsumexp.stride(2);
      float* d_q = input_grads ? grad_query.data_ptr<float>() + task * queries * dim : nullptr;
      float* d_k = input_grads ? grad_key.data_ptr<float>() + task * keys * dim : nullptr;
      float* d_v = input_grads ? grad_value.data_ptr<float>() + task * keys * value_dim : nullptr;
      double total = 0.0;
      for (int64_t start = 0; start < queries; start += kBlockRows) {
        const int64_t rows = std::min(kBlockRows, queries - start);
        int64_t first = 0, last = keys;
        if (mask.data != nullptr) {
          const int64_t* range = ranges.data_ptr<int64_t>() + (ranges.size(0) > 1 ? b * ranges.stride(0) : 0) +
                                 (ranges.size(1) > 1 ? h * ranges.stride(1) : 0) + start / kBlockRows * 2;
          first = range[0];
          last = range[1];
        } else if (is_causal) {
          last = std::min(start + rows, keys);
        }
        if (input_grads) {
          for (int64_t i = 0; i < rows; ++i) {
            delta[i] = at::vec::map2_reduce_all<float>([](Vec x, Vec y) { return x * y; },
                                                       [](Vec x, Vec y) { return x + y; }, o + (start + i) * o_ld,
                                                       d_o + (start + i) * d_o_ld, value_dim);
          }
        }
        for (int64_t tile = first; tile < last; tile += kKeyTile) {
          const int64_t cols = std::min(kKeyTile, last - tile);
          gemm('N', 'T', rows, cols, dim, alpha, q + start * q_ld, q_ld, k + tile * k_ld, k_ld, 0.0f, probs.data(),
               cols);
          gemm('N', 'T', rows, cols, value_dim, 1.0f, d_o + start * d_o_ld, d_o_ld, v + tile * v_ld, v_ld, 0.0f,
               grads.data(), cols);
          for (int64_t i = 0; i < rows; ++i) {
            float* p = probs.data() + i * cols;
            probabilities_row(p, start + i, tile, tile + cols, lse[(start + i) * lse_step], mask, b, h, is_causal);
            total += score_row(p, grads.data() + i * cols, cols, delta[i], input_grads);
          }
          if (!input_grads) continue;
          gemm('T', 'N', cols, value_dim, rows, 1.0f, probs.data(), cols, d_o + start * d_o_ld, d_o_ld, 1.0f,
               d_v + tile * value_dim, value_dim);
          gemm('N', 'N', rows, dim, cols, alpha, grads.data(), cols, k + tile * k_ld, k_ld, 1.0f, d_q + start * dim,
               dim);
          gemm('T', 'N', cols, dim, rows, alpha, grads.data(), cols, q + start * q_ld, q_ld, 1.0f, d_k + tile * dim,
               dim);
        }
      }
      score_data[b * scores.stride(0) + h * scores.stride(1)] += static_cast<float>(total);
    }
  });
  if (!input_grads) return {};
  if (group > 1) {
    grad_key = grad_key.view({batch, kv_heads, group, keys, dim}).sum(2);
    grad_value = grad_value.view({batch, kv_heads, group, keys, value_dim}).sum(2);
  }
  return {grad_query, grad_key, grad_value};
}

}  // namespace

TORCH_LIBRARY(lightning_sft, m) {
  m.def(
      "scored_attention_backward(Tensor query, Tensor key, Tensor value, Tensor output, Tensor logsumexp, "
      "Tensor grad_output, Tensor? mask, Tensor(a!) scores, float scale, bool is_causal, bool input_grads) "
      "-> Tensor[]");
}

TORCH_LIBRARY_IMPL(lightning_sft, CPU, m) {
  m.impl("scored_attention_backward", scored_attention_backward);
}
