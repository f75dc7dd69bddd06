// Naive twins of Attention<CombinerFixed> (combiner_fixed) and Attention<CombinerLogsparse>
// (combiner_logsparse, defined above its function): the written definitions in obvious loops, accumulating in Acc
// (double: the reference; float: the straightforward float implementation of the tolerance rule). No SIMD, no threads,
// no tiling.
//   segments of s positions (s = segment, or round(sqrt(N)) when 0); per segment r:
//   ks_r = max_{j in r} k_j, q̄_r = max_{j in r} q_j (elementwise, NaN skipped: IEEE maxNum, -inf
//   when all are NaN), vs_r = softmax(scale q̄_r K_rᵀ) V_r;
//   query i in segment t: one softmax over scale q_i·k_j for j in t (causal: j <= i) and
//   scale q_i·ks_r for r < t (causal) or r != t; out_i = Σ p_j v_j + Σ p_r vs_r.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "attnkit/core/view.hpp"

namespace attnkit::reference {

struct CombinerOptions {
  bool causal = false;
  std::optional<double> scale{};  // default 1 / sqrt(head_dim)
  Index segment = 0;              // 0: round(sqrt(N)), at least 1
};

// q (B, N, Hq, D), k (B, N, Hkv, D), v (B, N, Hkv, Dv) -> out (B, N, Ho, Dv).
template <class Acc>
void combiner_fixed(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                    const View<Acc, 4>& out, CombinerOptions options) {
  const Index batch = q.extent(0), n = q.extent(1), q_heads = q.extent(2), kv_heads = k.extent(2);
  const Index head_dim = q.extent(3), v_dim = v.extent(3), out_heads = std::max(q_heads, kv_heads);
  const Acc scale = static_cast<Acc>(options.scale.value_or(1.0 / std::sqrt(static_cast<double>(head_dim))));
  const Index seg = options.segment > 0
                        ? options.segment
                        : std::max<Index>(1, static_cast<Index>(std::lround(std::sqrt(static_cast<double>(n)))));
  const Index segments = (n + seg - 1) / seg;
  const Acc neg_inf = -std::numeric_limits<Acc>::infinity();
  std::vector<Acc> span_k(static_cast<std::size_t>(segments * head_dim));  // (segments, head_dim)
  std::vector<Acc> span_v(static_cast<std::size_t>(segments * v_dim));     // (segments, v_dim)
  std::vector<Acc> qbar(static_cast<std::size_t>(head_dim)), logits;
  std::vector<const Acc*> values;  // per logit: span value row, or null for a direct key
  std::vector<Index> keys;         // per logit: the direct key
  for (Index b = 0; b < batch; ++b)
    for (Index o = 0; o < out_heads; ++o) {
      const Index qh = q_heads >= kv_heads ? o : o % q_heads;
      const Index kh = q_heads >= kv_heads ? o / (q_heads / kv_heads) : o;
      for (Index r = 0; r < segments; ++r) {
        const Index begin = r * seg, end = std::min(n, begin + seg);
        for (Index d = 0; d < head_dim; ++d) {
          Acc kmax = neg_inf, qmax = neg_inf;
          for (Index j = begin; j < end; ++j) {
            kmax = std::max(kmax, static_cast<Acc>(k(b, j, kh, d)));
            qmax = std::max(qmax, static_cast<Acc>(q(b, j, qh, d)));
          }
          span_k[r * head_dim + d] = kmax;
          qbar[d] = qmax;
        }
        logits.assign(static_cast<std::size_t>(end - begin), Acc(0));
        Acc max = neg_inf, total = 0;
        for (Index j = begin; j < end; ++j) {
          Acc dot = 0;
          for (Index d = 0; d < head_dim; ++d) dot += scale * qbar[d] * static_cast<Acc>(k(b, j, kh, d));
          max = std::max(max, logits[j - begin] = dot);
        }
        for (Acc& x : logits) total += x = std::exp(x - max);
        for (Index d = 0; d < v_dim; ++d) {
          Acc acc = 0;
          for (Index j = begin; j < end; ++j) acc += logits[j - begin] * static_cast<Acc>(v(b, j, kh, d));
          span_v[r * v_dim + d] = acc / total;
        }
      }
      for (Index i = 0; i < n; ++i) {
        const Index t = i / seg, begin = t * seg, end = std::min(n, begin + seg);
        logits.clear();
        values.clear();
        keys.clear();
        for (Index j = begin; j < (options.causal ? i + 1 : end); ++j) {
          Acc dot = 0;
          for (Index d = 0; d < head_dim; ++d)
            dot += scale * static_cast<Acc>(q(b, i, qh, d)) * static_cast<Acc>(k(b, j, kh, d));
          logits.push_back(dot);
          values.push_back(nullptr);
          keys.push_back(j);
        }
        for (Index r = 0; r < (options.causal ? t : segments); ++r) {
          if (r == t) continue;
          Acc dot = 0;
          for (Index d = 0; d < head_dim; ++d)
            dot += scale * static_cast<Acc>(q(b, i, qh, d)) * span_k[r * head_dim + d];
          logits.push_back(dot);
          values.push_back(&span_v[r * v_dim]);
          keys.push_back(-1);
        }
        Acc max = neg_inf, total = 0;
        for (Acc x : logits) max = std::max(max, x);
        for (Acc& x : logits) total += x = std::exp(x - max);
        for (Index d = 0; d < v_dim; ++d) {
          Acc acc = 0;
          for (std::size_t e = 0; e < logits.size(); ++e)
            acc += logits[e] * (values[e] != nullptr ? values[e][d] : static_cast<Acc>(v(b, keys[e], kh, d)));
          out(b, i, o, d) = acc / total;
        }
      }
    }
}

// Span key (elementwise max of keys) and span value (softmax(scale q̄ K_cᵀ) V_c, q̄ the elementwise
// max of the queries) of keys [begin, end) for (batch b, q head qh, kv head kh). A span of one key
// is that key and its value exactly (a softmax over one logit is 1, whatever the logit).
template <class Acc>
void combiner_span(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v, Index b,
                   Index qh, Index kh, Index begin, Index end, Acc scale, std::vector<Acc>& key,
                   std::vector<Acc>& value) {
  const Index head_dim = q.extent(3), v_dim = v.extent(3);
  const Acc neg_inf = -std::numeric_limits<Acc>::infinity();
  if (end - begin == 1) {
    key.resize(static_cast<std::size_t>(head_dim));
    value.resize(static_cast<std::size_t>(v_dim));
    for (Index d = 0; d < head_dim; ++d) key[d] = static_cast<Acc>(k(b, begin, kh, d));
    for (Index d = 0; d < v_dim; ++d) value[d] = static_cast<Acc>(v(b, begin, kh, d));
    return;
  }
  std::vector<Acc> qbar(static_cast<std::size_t>(head_dim), neg_inf), logits;
  key.assign(static_cast<std::size_t>(head_dim), neg_inf);
  for (Index j = begin; j < end; ++j)
    for (Index d = 0; d < head_dim; ++d) {
      key[d] = std::max(key[d], static_cast<Acc>(k(b, j, kh, d)));
      qbar[d] = std::max(qbar[d], static_cast<Acc>(q(b, j, qh, d)));
    }
  Acc max = neg_inf, total = 0;
  for (Index j = begin; j < end; ++j) {
    Acc dot = 0;
    for (Index d = 0; d < head_dim; ++d) dot += scale * qbar[d] * static_cast<Acc>(k(b, j, kh, d));
    logits.push_back(dot);
    max = std::max(max, logits.back());
  }
  for (Acc& x : logits) total += x = std::exp(x - max);
  value.assign(static_cast<std::size_t>(v_dim), Acc(0));
  for (Index d = 0; d < v_dim; ++d) {
    for (Index j = begin; j < end; ++j) value[d] += logits[j - begin] * static_cast<Acc>(v(b, j, kh, d));
    value[d] /= total;
  }
}

// Combiner-Logsparse (see mechanism/combiner_logsparse.hpp): query i sees key i itself and one
// span per block of the dyadic cover of [0, i) — for every set bit l of i the aligned block
// [((i >> l) - 1) · 2^l, (i >> l) · 2^l) — and, non-causal, of (i, N): from p = i + 1 the block
// of size min(largest power of two dividing p, largest power of two <= N - p), repeatedly.
// The spans query i of n sees under Combiner-Logsparse, as [begin, end) key ranges, into blocks:
// key i itself, the dyadic cover of [0, i), and (non-causal) that of (i, N).
inline void combiner_logsparse_blocks(Index i, Index n, bool causal, std::vector<std::pair<Index, Index>>& blocks) {
  blocks.assign(1, {i, i + 1});
  for (Index l = 62; l >= 0; --l)
    if ((i >> l) & 1) blocks.push_back({((i >> l) - 1) << l, (i >> l) << l});
  for (Index p = i + 1; !causal && p < n;) {
    Index size = 1;
    while (p % (2 * size) == 0 && 2 * size <= n - p) size *= 2;
    blocks.push_back({p, p + size});
    p += size;
  }
}

template <class Acc>
void combiner_logsparse(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                        const View<Acc, 4>& out, CombinerOptions options) {
  const Index batch = q.extent(0), n = q.extent(1), q_heads = q.extent(2), kv_heads = k.extent(2);
  const Index head_dim = q.extent(3), v_dim = v.extent(3), out_heads = std::max(q_heads, kv_heads);
  const Acc scale = static_cast<Acc>(options.scale.value_or(1.0 / std::sqrt(static_cast<double>(head_dim))));
  std::vector<std::pair<Index, Index>> blocks;  // [begin, end) of each span a query sees
  std::vector<Acc> key, value, logits;
  std::vector<std::vector<Acc>> values;
  for (Index b = 0; b < batch; ++b)
    for (Index o = 0; o < out_heads; ++o) {
      const Index qh = q_heads >= kv_heads ? o : o % q_heads;
      const Index kh = q_heads >= kv_heads ? o / (q_heads / kv_heads) : o;
      for (Index i = 0; i < n; ++i) {
        combiner_logsparse_blocks(i, n, options.causal, blocks);
        logits.clear();
        values.clear();
        Acc max = -std::numeric_limits<Acc>::infinity(), total = 0;
        for (const auto& [begin, end] : blocks) {
          combiner_span<Acc>(q, k, v, b, qh, kh, begin, end, scale, key, value);
          Acc dot = 0;
          for (Index d = 0; d < head_dim; ++d) dot += scale * static_cast<Acc>(q(b, i, qh, d)) * key[d];
          logits.push_back(dot);
          values.push_back(value);
          max = std::max(max, logits.back());
        }
        for (Acc& x : logits) total += x = std::exp(x - max);
        for (Index d = 0; d < v_dim; ++d) {
          Acc acc = 0;
          for (std::size_t e = 0; e < logits.size(); ++e) acc += logits[e] * values[e][d];
          out(b, i, o, d) = acc / total;
        }
      }
    }
}

}  // namespace attnkit::reference
