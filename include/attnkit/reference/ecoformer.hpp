// Naive twin of Attention<EcoFormer>: the kernelized hash and the quadratic form of the definition,
// accumulating in Acc (double for the reference; float gives the tests' float implementation).
// No SIMD, no threads, no bit packing, no running sums:
//   kappa_j(x) = exp(-|x - a_j|² / (2 sigma)) - mvec_j,  y_t(x) = Σ_j A[hh, t, j] kappa_j(x),
//   h_t(x) = +1 if y_t > 0 else -1, with hh the kv head of the out head (q and k share A[hh]);
//   sigma = options.sigma when > 0, otherwise the mean of |x_n - a_j|² over every row n of the
//   tensor's (batch entry, head) and every anchor j, separately for q and for k (0 gives kappa = 1);
//   w_ij = h(q_i) · h(k_j) + b + 1 (an integer in [1, 2b + 1]), NaN when a projection y of q_i or
//   k_j is NaN (IEEE arithmetic otherwise: an infinite row is infinitely far from every anchor,
//   kappa = -mvec; a NaN or infinite row in the mean makes sigma NaN or inf for its whole head),
//   out[b, i, o] = Σ_j w_ij v_j / Σ_j w_ij over the keys j visible to query i (causal:
//   j <= i + kv_len - q_len); no visible key: zeros. Head mapping as reference/dense.hpp.
// With options.lengths, batch entry b has q_len = lengths.q[b] and kv_len = lengths.kv[b] real rows
// (sigma and everything above use only those); its rows past q_len are zeros.
// Not here: the packed-bit linear-time kernel (mechanism/ecoformer.hpp), calibration (tools/).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"

namespace attnkit::reference {

struct EcoFormerOptions {
  bool causal = false;
  double sigma = 0;      // > 0: fixed; otherwise the per-(batch, head) mean squared anchor distance
  SeqLengths lengths{};  // empty: every row is real
};

// Mean of |x[b, n, h] - a_j|² over the rows n < rows and the anchors j (anchors (m, d)),
// accumulated in double whatever Acc (as the kernel does: it is one scalar per (batch, head)).
template <class Acc>
Acc ecoformer_sigma(const View<const float, 4>& x, Index b, Index h, Index rows, const View<const float, 2>& anchors) {
  const Index m = anchors.extent(0), d = anchors.extent(1);
  double total = 0;
  for (Index n = 0; n < rows; ++n)
    for (Index j = 0; j < m; ++j)
      for (Index f = 0; f < d; ++f) {
        const double diff = static_cast<double>(x(b, n, h, f)) - static_cast<double>(anchors(j, f));
        total += diff * diff;
      }
  return rows > 0 ? static_cast<Acc>(total / static_cast<double>(rows * m)) : Acc(0);
}

// y (bits) of row x[b, n, h] with A head a_head (a: (heads, bits, m), mvec: (m)).
template <class Acc>
std::vector<Acc> ecoformer_projection(const View<const float, 4>& x, Index b, Index n, Index h,
                                      const View<const float, 2>& anchors, const View<const float, 1>& mvec,
                                      const View<const float, 3>& a, Index a_head, Acc sigma) {
  const Index m = anchors.extent(0), d = anchors.extent(1), bits = a.extent(1);
  std::vector<Acc> y(static_cast<std::size_t>(bits), Acc(0));
  for (Index j = 0; j < m; ++j) {
    Acc dist = 0;
    for (Index f = 0; f < d; ++f) {
      const Acc diff = static_cast<Acc>(x(b, n, h, f)) - static_cast<Acc>(anchors(j, f));
      dist += diff * diff;
    }
    const Acc kappa = (sigma == 0 ? Acc(1) : std::exp(-dist / (Acc(2) * sigma))) - static_cast<Acc>(mvec(j));
    for (Index t = 0; t < bits; ++t) y[t] += static_cast<Acc>(a(a_head, t, j)) * kappa;
  }
  return y;
}

// q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv) -> out (B, Lq, Ho, Dv); anchors (m, D),
// mvec (m), a (Hkv, bits, m). When `projections` is given, every y value used is appended to it
// (the tests compare float against double there, and check the margins of the signs).
template <class Acc>
void ecoformer(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
               const View<const float, 2>& anchors, const View<const float, 1>& mvec, const View<const float, 3>& a,
               const View<Acc, 4>& out, EcoFormerOptions options, std::vector<Acc>* projections = nullptr) {
  const Index q_heads = q.extent(2), kv_heads = k.extent(2), v_dim = v.extent(3);
  const Index bits = a.extent(1);
  const Index out_heads = std::max(q_heads, kv_heads);
  // Codes of rows [0, len): +1 / -1 per bit, or empty for a row with a NaN projection (its weights
  // are NaN).
  auto codes = [&](const View<const float, 4>& x, Index b, Index h, Index a_head, Index len) {
    const Acc sigma = options.sigma > 0 ? static_cast<Acc>(options.sigma) : ecoformer_sigma<Acc>(x, b, h, len, anchors);
    std::vector<std::vector<int>> rows(static_cast<std::size_t>(len));
    for (Index n = 0; n < len; ++n) {
      const std::vector<Acc> y = ecoformer_projection<Acc>(x, b, n, h, anchors, mvec, a, a_head, sigma);
      for (Index t = 0; t < bits; ++t) rows[n].push_back(y[t] > 0 ? 1 : -1);
      if (std::any_of(y.begin(), y.end(), [](Acc value) { return std::isnan(value); })) rows[n].clear();
      if (projections != nullptr) projections->insert(projections->end(), y.begin(), y.end());
    }
    return rows;
  };
  for (Index b = 0; b < q.extent(0); ++b)
    for (Index o = 0; o < out_heads; ++o) {
      const Index q_len = options.lengths.q.empty() ? q.extent(1) : options.lengths.q[b];
      const Index kv_len = options.lengths.kv.empty() ? k.extent(1) : options.lengths.kv[b];
      for (Index i = q_len; i < q.extent(1); ++i)
        for (Index c = 0; c < v_dim; ++c) out(b, i, o, c) = Acc(0);
      const Index qh = q_heads >= kv_heads ? o : o % q_heads;
      const Index kh = q_heads >= kv_heads ? o / (q_heads / kv_heads) : o;
      const std::vector<std::vector<int>> hq = codes(q, b, qh, kh, q_len), hk = codes(k, b, kh, kh, kv_len);
      for (Index i = 0; i < q_len; ++i) {
        const Index visible = options.causal ? std::clamp<Index>(i + kv_len - q_len + 1, 0, kv_len) : kv_len;
        std::vector<Acc> num(static_cast<std::size_t>(v_dim), Acc(0));
        Acc den = 0;
        for (Index j = 0; j < visible; ++j) {
          std::int64_t w = bits + 1;
          const bool nan = hq[i].empty() || hk[j].empty();
          for (Index t = 0; t < bits && !nan; ++t) w += hq[i][t] * hk[j][t];
          const Acc weight = nan ? std::numeric_limits<Acc>::quiet_NaN() : static_cast<Acc>(w);
          den += weight;
          for (Index c = 0; c < v_dim; ++c) num[c] += weight * static_cast<Acc>(v(b, j, kh, c));
        }
        for (Index c = 0; c < v_dim; ++c) out(b, i, o, c) = visible > 0 ? num[c] / den : Acc(0);
      }
    }
}

}  // namespace attnkit::reference
