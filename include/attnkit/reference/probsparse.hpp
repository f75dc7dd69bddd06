// Naive twin of Attention<ProbSparse>: the written definition (see mechanism/probsparse.hpp) in
// obvious loops, accumulating in Acc (double: the reference; float: the straightforward float
// implementation of the tolerance rule). No SIMD, no threads. Takes the sample indices explicitly.
//   U = min(L_K, max(1, c · ceil(ln L_K))), u = min(L_Q, max(1, c · ceil(ln L_Q)));
//   M(q_i) = max_s q_i·k_{idx[i,s]} - Σ_s q_i·k_{idx[i,s]} / L_K; the u largest (ties: lower i;
//   a NaN M ranks above every number) get softmax((scale · q_i) Kᵀ) V over visible keys (causal:
//   j <= i + L_K - L_Q); the others get mean(V) (non-causal) or the mean / sum of the values they
//   see (causal); no key: zeros.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <span>
#include <vector>

#include "attnkit/core/view.hpp"

namespace attnkit::reference {

struct ProbSparseOptions {
  int factor = 5;
  bool causal = false;
  std::optional<double> scale{};  // default 1 / sqrt(head_dim)
  bool lazy_sum = false;          // causal lazy rows: sum (reference code) instead of mean
};

// q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv), samples (Lq, U) -> out (B, Lq, Ho, Dv).
template <class Acc>
void probsparse(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                std::span<const std::int32_t> samples, const View<Acc, 4>& out, ProbSparseOptions options) {
  const Index batch = q.extent(0), q_len = q.extent(1), kv_len = k.extent(1);
  const Index q_heads = q.extent(2), kv_heads = k.extent(2), head_dim = q.extent(3), v_dim = v.extent(3);
  const Index out_heads = std::max(q_heads, kv_heads);
  const Acc scale = static_cast<Acc>(options.scale.value_or(1.0 / std::sqrt(static_cast<double>(head_dim))));
  auto count = [&](Index len) -> Index {
    if (len <= 0) return 0;
    const Index c = options.factor * static_cast<Index>(std::ceil(std::log(static_cast<double>(len))));
    return std::min(std::max<Index>(c, 1), len);
  };
  const Index n_samples = count(kv_len), n_top = count(q_len);
  // (query_scale q_i) . k_j, the query scaled first as the kernels do (1 for the sparsity).
  auto dot = [&](Index b, Index i, Index qh, Index j, Index kh, Acc query_scale) {
    Acc sum = 0;
    for (Index d = 0; d < head_dim; ++d)
      sum += query_scale * static_cast<Acc>(q(b, i, qh, d)) * static_cast<Acc>(k(b, j, kh, d));
    return sum;
  };
  auto visible = [&](Index i) -> Index {
    return options.causal ? std::clamp<Index>(i + kv_len - q_len + 1, 0, kv_len) : kv_len;
  };
  std::vector<Acc> sparsity(static_cast<std::size_t>(q_len)), logits;
  std::vector<Index> order(static_cast<std::size_t>(q_len));
  for (Index b = 0; b < batch; ++b)
    for (Index o = 0; o < out_heads; ++o) {
      const Index qh = q_heads >= kv_heads ? o : o % q_heads;
      const Index kh = q_heads >= kv_heads ? o / (q_heads / kv_heads) : o;
      // Lazy rows: mean of all values, or the causal running mean / sum.
      for (Index i = 0; i < q_len; ++i) {
        const Index seen = visible(i);
        for (Index d = 0; d < v_dim; ++d) {
          Acc sum = 0;
          for (Index j = 0; j < seen; ++j) sum += static_cast<Acc>(v(b, j, kh, d));
          const bool mean = !options.causal || !options.lazy_sum;
          out(b, i, o, d) = seen == 0 ? Acc(0) : mean ? sum / static_cast<Acc>(seen) : sum;
        }
      }
      if (kv_len == 0) continue;
      for (Index i = 0; i < q_len; ++i) {
        Acc max = -std::numeric_limits<Acc>::infinity(), sum = 0;
        for (Index s = 0; s < n_samples; ++s) {
          const Acc x = dot(b, i, qh, samples[i * n_samples + s], kh, Acc(1));
          max = std::max(max, x);
          sum += x;
        }
        sparsity[i] = max - sum / static_cast<Acc>(kv_len);
      }
      std::iota(order.begin(), order.end(), Index(0));
      // Larger first, a NaN measure above every number (a total order, as the kernel's).
      std::stable_sort(order.begin(), order.end(), [&](Index a, Index c) {
        if (std::isnan(sparsity[a]) || std::isnan(sparsity[c])) return !std::isnan(sparsity[c]);
        return sparsity[a] > sparsity[c];
      });
      for (Index t = 0; t < n_top; ++t) {
        const Index i = order[t], seen = visible(i);
        logits.assign(static_cast<std::size_t>(seen), Acc(0));
        Acc max = -std::numeric_limits<Acc>::infinity(), total = 0;
        for (Index j = 0; j < seen; ++j) max = std::max(max, logits[j] = dot(b, i, qh, j, kh, scale));
        for (Index j = 0; j < seen; ++j) total += logits[j] = std::exp(logits[j] - max);
        for (Index d = 0; d < v_dim; ++d) {
          Acc acc = 0;
          for (Index j = 0; j < seen; ++j) acc += logits[j] * static_cast<Acc>(v(b, j, kh, d));
          out(b, i, o, d) = seen > 0 ? acc / total : Acc(0);
        }
      }
    }
}

}  // namespace attnkit::reference
