// Loops over float arrays on VecOps<V> (vector body, scalar tail), shared by the mechanisms that
// work row by row: dot, sum, max (skipping NaN), y += x, y = x / d, y += a x. The summation order is fixed (one
// vector accumulator, then the tail), so every caller gets the same bits for the same inputs.
#pragma once

#include <algorithm>
#include <limits>

#include "attnkit/backend/vec.hpp"
#include "attnkit/core/view.hpp"

namespace attnkit::detail {

// Σ_i x[i] · y[i] over n floats.
template <class V>
inline float dot(const float* x, const float* y, Index n) {
  using Ops = VecOps<V>;
  constexpr int W = Ops::width;
  V acc = Ops::zero();
  Index i = 0;
  for (; i + W <= n; i += W) acc = Ops::fma(Ops::load(x + i), Ops::load(y + i), acc);
  float sum = Ops::sum(acc);
  for (; i < n; ++i) sum += x[i] * y[i];
  return sum;
}

// Σ_i x[i] over n floats.
template <class V>
inline float sum(const float* x, Index n) {
  using Ops = VecOps<V>;
  constexpr int W = Ops::width;
  V acc = Ops::zero();
  Index i = 0;
  for (; i + W <= n; i += W) acc = acc + Ops::load(x + i);
  float total = Ops::sum(acc);
  for (; i < n; ++i) total += x[i];
  return total;
}

// max_i x[i] over n floats, NaN elements skipped (IEEE maxNum, std::fmax): -inf when n is 0 or
// every element is NaN.
template <class V>
inline float max_of(const float* x, Index n) {
  using Ops = VecOps<V>;
  constexpr int W = Ops::width;
  float best = -std::numeric_limits<float>::infinity();
  Index i = 0;
  if (n >= W) {
    V acc = Ops::broadcast(best);
    for (; i + W <= n; i += W) acc = Ops::max(acc, Ops::load(x + i));
    best = Ops::reduce_max(acc);
  }
  for (; i < n; ++i) best = std::max(best, x[i]);
  return best;
}

// y[i] += x[i], or y[i] = x[i] / divisor, over n floats.
template <class V>
inline void add_to(const float* x, float* y, Index n) {
  using Ops = VecOps<V>;
  constexpr int W = Ops::width;
  Index i = 0;
  for (; i + W <= n; i += W) Ops::store(y + i, Ops::load(y + i) + Ops::load(x + i));
  for (; i < n; ++i) y[i] += x[i];
}
template <class V>
inline void divide(const float* x, float divisor, float* y, Index n) {
  using Ops = VecOps<V>;
  constexpr int W = Ops::width;
  Index i = 0;
  for (; i + W <= n; i += W) Ops::store(y + i, Ops::load(x + i) / Ops::broadcast(divisor));
  for (; i < n; ++i) y[i] = x[i] / divisor;
}

// y[i] += a · x[i] over n floats.
template <class V>
inline void axpy(float a, const float* x, float* y, Index n) {
  using Ops = VecOps<V>;
  constexpr int W = Ops::width;
  const V av = Ops::broadcast(a);
  Index i = 0;
  for (; i + W <= n; i += W) Ops::store(y + i, Ops::fma(av, Ops::load(x + i), Ops::load(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}

}  // namespace attnkit::detail
