// Naive twin of Attention<Performer>: FAVOR+ features from their written definition and the
// quadratic form, accumulating in Acc (double for the reference; float gives the tests' float
// implementation). No SIMD, no threads, no chunks:
//   x' = d^(-1/4) x, u = W x', phi(x) = m^(-1/2) (exp(u - |x'|² / 2 - max) + stabilizer), the max
//   per row for queries and over every u of the (batch entry, kv head)'s real keys for keys, NaN
//   u skipped (IEEE maxNum, std::fmax; -inf when all are NaN): the max is a stabilizer, a NaN
//   input reaches the output through its own features;
//   out[b, i, o] = Σ_j (phi(q_i) · phi(k_j)) v_j / Σ_j phi(q_i) · phi(k_j) over the real keys j
//   visible to query i (causal: j <= i + kv_len - q_len); no visible key or a row past its
//   length: zeros. Head mapping as reference/dense.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"

namespace attnkit::reference {

struct PerformerOptions {
  bool causal = false;
  double stabilizer = 1e-6;
};

// u = W x' of one row and |x'|² / 2.
template <class Acc>
std::vector<Acc> performer_projection(const View<const float, 4>& x, Index b, Index s, Index h,
                                      const View<const float, 2>& w, Acc& half_norm) {
  const Index d = x.extent(3), m = w.extent(0);
  const Acc scale = static_cast<Acc>(1.0 / std::sqrt(std::sqrt(static_cast<double>(d))));
  std::vector<Acc> u(static_cast<std::size_t>(m), Acc(0));
  half_norm = 0;
  for (Index f = 0; f < d; ++f) {
    const Acc xs = static_cast<Acc>(x(b, s, h, f)) * scale;
    half_norm += xs * xs / Acc(2);
    for (Index a = 0; a < m; ++a) u[a] += static_cast<Acc>(w(a, f)) * xs;
  }
  return u;
}

// Padded inputs q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv), w (m, D) -> out (B, Lq, Ho, Dv).
template <class Acc>
void performer(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
               const View<const float, 2>& w, const View<Acc, 4>& out, PerformerOptions options,
               SeqLengths lengths = {}) {
  const Index q_heads = q.extent(2), kv_heads = k.extent(2), v_dim = v.extent(3), m = w.extent(0);
  const Index out_heads = std::max(q_heads, kv_heads);
  const Acc ratio = static_cast<Acc>(1.0 / std::sqrt(static_cast<double>(m)));
  const Acc stabilizer = static_cast<Acc>(options.stabilizer);
  for (Index b = 0; b < q.extent(0); ++b) {
    const Index q_len = lengths.q.empty() ? q.extent(1) : lengths.q[b];
    const Index kv_len = lengths.kv.empty() ? k.extent(1) : lengths.kv[b];
    for (Index o = 0; o < out_heads; ++o) {
      const Index qh = q_heads >= kv_heads ? o : o % q_heads;
      const Index kh = q_heads >= kv_heads ? o / (q_heads / kv_heads) : o;
      // Key features with one max over all of this (batch entry, kv head)'s projections.
      std::vector<std::vector<Acc>> phi_k(static_cast<std::size_t>(kv_len));
      std::vector<Acc> key_half_norms(static_cast<std::size_t>(kv_len));
      Acc key_max = -std::numeric_limits<Acc>::infinity();
      for (Index j = 0; j < kv_len; ++j) {
        phi_k[j] = performer_projection<Acc>(k, b, j, kh, w, key_half_norms[j]);
        for (const Acc u : phi_k[j]) key_max = std::max(key_max, u);  // NaN skipped
      }
      for (Index j = 0; j < kv_len; ++j)
        for (Acc& u : phi_k[j]) u = ratio * (std::exp(u - key_half_norms[j] - key_max) + stabilizer);

      for (Index i = 0; i < q.extent(1); ++i) {
        Index visible = i < q_len ? kv_len : 0;
        if (options.causal && i < q_len) visible = std::clamp<Index>(i + kv_len - q_len + 1, 0, kv_len);
        std::vector<Acc> num(static_cast<std::size_t>(v_dim), Acc(0));
        Acc den = 0;
        if (visible > 0) {
          Acc half_norm = 0;
          std::vector<Acc> phi_q = performer_projection<Acc>(q, b, i, qh, w, half_norm);
          Acc row_max = -std::numeric_limits<Acc>::infinity();
          for (const Acc u : phi_q) row_max = std::max(row_max, u);  // NaN skipped
          for (Acc& u : phi_q) u = ratio * (std::exp(u - half_norm - row_max) + stabilizer);
          for (Index j = 0; j < visible; ++j) {
            Acc weight = 0;
            for (Index a = 0; a < m; ++a) weight += phi_q[a] * phi_k[j][a];
            den += weight;
            for (Index d = 0; d < v_dim; ++d) num[d] += weight * static_cast<Acc>(v(b, j, kh, d));
          }
        }
        for (Index d = 0; d < v_dim; ++d) out(b, i, o, d) = visible > 0 ? num[d] / den : Acc(0);
      }
    }
  }
}

}  // namespace attnkit::reference
