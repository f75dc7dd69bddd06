// Naive twin of Attention<Linear>: the quadratic form of the definition, accumulating in Acc
// (double for the reference; float gives the tests' "straightforward float implementation").
// No SIMD, no threads, no chunks, no running state:
//   out[b, i, o] = Σ_j (phi(q_i) · phi(k_j)) v_j / (Σ_j phi(q_i) · phi(k_j) + eps)
//   over the real keys j visible to query i (causal: j <= i + kv_len - q_len), q_i = q[b, i, qh(o)],
//   k_j = k[b, j, kh(o)], head mapping as reference/dense.hpp; no visible key or a row past its
//   length: zeros. phi is elementwise: elu(x) + 1 by default, or any callable Acc -> Acc.
#pragma once

#include <cmath>
#include <vector>

#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"

namespace attnkit::reference {

struct LinearOptions {
  bool causal = false;
  double eps = 1e-6;
};

// elu(x) + 1.
struct EluPlusOneMap {
  template <class Acc>
  Acc operator()(Acc x) const {
    return x > Acc(0) ? x + Acc(1) : std::exp(x);
  }
};

// phi applied to one row of a view, in Acc.
template <class Acc, class Map>
std::vector<Acc> map_row(const View<const float, 4>& x, Index b, Index s, Index h, Map map) {
  std::vector<Acc> row(static_cast<std::size_t>(x.extent(3)));
  for (Index d = 0; d < x.extent(3); ++d) row[d] = map(static_cast<Acc>(x(b, s, h, d)));
  return row;
}

// Padded inputs q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv) -> out (B, Lq, Ho, Dv).
template <class Acc, class Map = EluPlusOneMap>
void linear(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
            const View<Acc, 4>& out, LinearOptions options, SeqLengths lengths = {}, Map map = {}) {
  const Index q_heads = q.extent(2), kv_heads = k.extent(2), v_dim = v.extent(3);
  const Index out_heads = std::max(q_heads, kv_heads);
  const Acc eps = static_cast<Acc>(options.eps);
  for (Index b = 0; b < q.extent(0); ++b) {
    const Index q_len = lengths.q.empty() ? q.extent(1) : lengths.q[b];
    const Index kv_len = lengths.kv.empty() ? k.extent(1) : lengths.kv[b];
    for (Index o = 0; o < out_heads; ++o) {
      const Index qh = q_heads >= kv_heads ? o : o % q_heads;
      const Index kh = q_heads >= kv_heads ? o / (q_heads / kv_heads) : o;
      std::vector<std::vector<Acc>> phi_k(static_cast<std::size_t>(kv_len));
      for (Index j = 0; j < kv_len; ++j) phi_k[j] = map_row<Acc>(k, b, j, kh, map);
      for (Index i = 0; i < q.extent(1); ++i) {
        Index visible = i < q_len ? kv_len : 0;
        if (options.causal && i < q_len) visible = std::clamp<Index>(i + kv_len - q_len + 1, 0, kv_len);
        std::vector<Acc> num(static_cast<std::size_t>(v_dim), Acc(0));
        Acc den = 0;
        if (visible > 0) {
          const std::vector<Acc> phi_q = map_row<Acc>(q, b, i, qh, map);
          for (Index j = 0; j < visible; ++j) {
            Acc weight = 0;
            for (std::size_t f = 0; f < phi_q.size(); ++f) weight += phi_q[f] * phi_k[j][f];
            den += weight;
            for (Index d = 0; d < v_dim; ++d) num[d] += weight * static_cast<Acc>(v(b, j, kh, d));
          }
        }
        for (Index d = 0; d < v_dim; ++d) out(b, i, o, d) = visible > 0 ? num[d] / (den + eps) : Acc(0);
      }
    }
  }
}

}  // namespace attnkit::reference
