// Naive attention under an explicit element mask: the reference the sliding-window, block-sparse
// and XAttention kernels are tested against. Obvious loops, accumulation in Acc (double for the
// reference, float for the "straightforward float implementation" of the tolerance rule), no
// SIMD, no threads, no tiling, sharing no code with the kernels.
//   out[b, i, o] = Σ_j softmax_j((scale · q[b, i, qh(o)]) · k[b, j, kh(o)]) v[b, j, kh(o)]
//   over the keys j with allowed(b, o, i, j); a row with no allowed key is zeros. Plain IEEE
//   arithmetic otherwise: a NaN or +inf score, or all allowed scores -inf, make the row NaN; the
//   values of keys that are not allowed never enter it.
// Padded inputs at full length only; head mapping as HeadMap (core/shape.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"

namespace attnkit::reference {

// q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv) -> out (B, Lq, Ho, Dv);
// allowed(batch, out_head, i, j) -> bool.
template <class Acc, class Allowed>
void masked(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
            const View<Acc, 4>& out, Allowed&& allowed, std::optional<double> scale_option = {}) {
  const HeadMap heads{q.extent(2), k.extent(2)};
  const Index head_dim = q.extent(3), v_dim = v.extent(3);
  const Acc scale = static_cast<Acc>(scale_option.value_or(1.0 / std::sqrt(static_cast<double>(head_dim))));
  std::vector<Acc> logits(static_cast<std::size_t>(k.extent(1)));
  std::vector<char> seen(logits.size());
  for (Index b = 0; b < q.extent(0); ++b)
    for (Index o = 0; o < heads.out_heads(); ++o) {
      const Index qh = heads.q_head(o), kh = heads.kv_head(o);
      for (Index i = 0; i < q.extent(1); ++i) {
        Index visible = 0;
        Acc max = -std::numeric_limits<Acc>::infinity();
        for (Index j = 0; j < k.extent(1); ++j) {
          seen[j] = allowed(b, o, i, j);
          if (!seen[j]) continue;
          ++visible;
          Acc dot = 0;
          for (Index d = 0; d < head_dim; ++d)
            dot += scale * static_cast<Acc>(q(b, i, qh, d)) * static_cast<Acc>(k(b, j, kh, d));
          logits[j] = dot;
          max = std::max(max, logits[j]);
        }
        Acc sum = 0;
        for (Index j = 0; j < k.extent(1); ++j)
          if (seen[j]) sum += logits[j] = std::exp(logits[j] - max);
        for (Index d = 0; d < v_dim; ++d) {
          Acc acc = 0;
          for (Index j = 0; j < k.extent(1); ++j)
            if (seen[j]) acc += logits[j] * static_cast<Acc>(v(b, j, kh, d));
          out(b, i, o, d) = visible > 0 ? acc / sum : Acc(0);
        }
      }
    }
}

// Sliding window around the bottom-right aligned position (see Dense::Window): allowed iff
// i' - left <= j <= i' + right with i' = i + kv_len - q_len, a negative side unbounded; causal
// additionally requires j <= i'.
struct WindowElements {
  Index q_len = 0, kv_len = 0, left = -1, right = -1;
  bool causal = false;
  bool operator()(Index, Index, Index i, Index j) const {
    const Index aligned = i + kv_len - q_len;
    if (left >= 0 && j < aligned - left) return false;
    if (right >= 0 && j > aligned + right) return false;
    return !(causal && j > aligned);
  }
};

}  // namespace attnkit::reference
