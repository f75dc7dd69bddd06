// Pieces shared by the state-space scan kernels (kernel/ssm_scan.hpp, kernel/ssd.hpp): the
// softplus / silu activations on floats and every backend vector type, and the test for an
// optional view argument. Not here: argument checks (mechanism/ssm_checks.hpp), the scans.
#pragma once

#include <cmath>

#include "attnkit/backend/exp.hpp"
#include "attnkit/backend/vec.hpp"
#include "attnkit/core/view.hpp"

namespace attnkit::detail {

// An optional argument is absent when its view has no data and no elements.
template <class T, int Rank>
bool given(const View<T, Rank>& view) {
  return view.data() != nullptr || !view.empty();
}

// softplus(x) = log(1 + e^x), and x itself above 20 (PyTorch's threshold, as in Mamba).
inline float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

template <class V>
V softplus(const V& x) {
  using Ops = VecOps<V>;
  return Ops::greater_select(x, 20.0f, x, Ops::log1p(exp_approx(Ops::min(x, V(20.0f)))));
}

// silu(x) = x / (1 + e^-x).
inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

template <class V>
V silu(const V& x) {
  return x / (V(1.0f) + exp_approx(-x));
}

}  // namespace attnkit::detail
