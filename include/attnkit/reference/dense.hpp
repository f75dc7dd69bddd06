// Naive twin of Attention<Dense>: the obvious loops, accumulating in Acc (double for the
// reference; float gives the "straightforward float implementation" the tests' tolerance rule
// compares against). No SIMD, no threads, no tiling; written from the definition, sharing no code
// with the kernel but the views and sequence bookkeeping.
//   out[b, i, o] = Σ_j softmax_j((scale · q[b, i, qh(o)]) · k[b, j, kh(o)]) v[b, j, kh(o)]
//   over keys j visible to query i (causal: j <= i + kv_len - q_len); no visible key: zeros and
//   log-sum-exp -inf (decided by the count of visible keys); inputs of a storage type are read as
//   the values they stand for (to_float). Plain IEEE arithmetic otherwise: a
//   NaN or +inf score, or visible scores all -inf, make the row NaN. Head mapping: q_heads >=
//   kv_heads: qh(o) = o, kh(o) = o / (q_heads / kv_heads); otherwise qh(o) = o % q_heads, kh(o) = o.
#pragma once

#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "attnkit/core/shape.hpp"
#include "attnkit/core/storage.hpp"
#include "attnkit/core/view.hpp"

namespace attnkit::reference {

struct DenseOptions {
  bool causal = false;
  std::optional<double> scale{};  // default 1 / sqrt(head_dim)
};

// Sequences of `seqs` over (batch, seq, head, dim) views; lse may be empty.
template <class Acc, class Q, class K, class Val>
void dense(const View<Q, 4>& q, const View<K, 4>& k, const View<Val, 4>& v, const View<Acc, 4>& out,
           const View<Acc, 3>& lse, const SequenceLayout& seqs, DenseOptions options) {
  const Index q_heads = q.extent(2), kv_heads = k.extent(2), head_dim = q.extent(3), v_dim = v.extent(3);
  const Index out_heads = std::max(q_heads, kv_heads);
  const Acc scale = static_cast<Acc>(options.scale.value_or(1.0 / std::sqrt(static_cast<double>(head_dim))));
  std::vector<Acc> logits;
  for (Index s = 0; s < seqs.count(); ++s) {
    const Sequence seq = seqs[s];
    for (Index o = 0; o < out_heads; ++o) {
      const Index qh = q_heads >= kv_heads ? o : o % q_heads;
      const Index kh = q_heads >= kv_heads ? o / (q_heads / kv_heads) : o;
      for (Index i = 0; i < seq.q_extent; ++i) {
        const Index row = seq.q_begin + i;
        Index visible = i < seq.q_len ? seq.kv_len : 0;
        if (options.causal && i < seq.q_len) visible = std::clamp<Index>(i + seq.kv_len - seq.q_len + 1, 0, seq.kv_len);
        logits.assign(static_cast<std::size_t>(visible), Acc(0));
        Acc max = -std::numeric_limits<Acc>::infinity();
        for (Index j = 0; j < visible; ++j) {
          Acc dot = 0;
          for (Index d = 0; d < head_dim; ++d)
            dot += scale * static_cast<Acc>(to_float(q(seq.batch, row, qh, d))) *
                   static_cast<Acc>(to_float(k(seq.batch, seq.kv_begin + j, kh, d)));
          logits[j] = dot;
          max = std::max(max, logits[j]);
        }
        Acc sum = 0;
        for (Index j = 0; j < visible; ++j) {
          logits[j] = std::exp(logits[j] - max);
          sum += logits[j];
        }
        for (Index d = 0; d < v_dim; ++d) {
          Acc acc = 0;
          for (Index j = 0; j < visible; ++j)
            acc += logits[j] * static_cast<Acc>(to_float(v(seq.batch, seq.kv_begin + j, kh, d)));
          out(seq.batch, row, o, d) = visible > 0 ? acc / sum : Acc(0);
        }
        if (lse.data() != nullptr)
          lse(seq.batch, row, o) = visible > 0 ? max + std::log(sum) : -std::numeric_limits<Acc>::infinity();
      }
    }
  }
}

// Padded inputs, optional real lengths per batch entry.
template <class Acc, class Q, class K, class Val>
void dense(const View<Q, 4>& q, const View<K, 4>& k, const View<Val, 4>& v, const View<Acc, 4>& out,
           const View<Acc, 3>& lse, DenseOptions options, SeqLengths lengths = {}) {
  const AttentionShape shape{q.extent(0), q.extent(1), k.extent(1),
                             q.extent(3), v.extent(3), HeadMap{q.extent(2), k.extent(2)}};
  dense<Acc>(q, k, v, out, lse, SequenceLayout::padded(shape, lengths), options);
}

}  // namespace attnkit::reference
