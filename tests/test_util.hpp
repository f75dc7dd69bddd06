// Shared test helpers: seeded random tensors, strided layouts, the backend type list and the
// tolerance rule of design.md section 4.
#pragma once

#include <algorithm>
#include <attnkit/attnkit.hpp>
#include <cmath>
#include <cstdint>
#include <random>
#include <tuple>
#include <vector>

namespace attnkit::test {

using Backends = std::tuple<Scalar, Simd<>, OpenMP<>>;

inline std::vector<float> uniform(std::size_t n, std::uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> x(n);
  for (float& e : x) e = dist(rng);
  return x;
}

// Memory layouts a rank-4 (batch, seq, head, dim) tensor is tested in.
enum class Layout { kBshd, kBhsd, kPaddedStrides };

// A rank-4 tensor in its own buffer with the given layout; padding elements hold NaN so a kernel
// that reads them shows it.
struct Tensor4 {
  std::vector<float> data;
  View<float, 4> view;

  Tensor4(Index b, Index s, Index h, Index d, Layout layout) {
    std::array<Index, 4> strides{};
    Index size = 0;
    switch (layout) {
      case Layout::kBshd:
        strides = {s * h * d, h * d, d, 1};
        size = b * s * h * d;
        break;
      case Layout::kBhsd:
        strides = {h * s * d, d, s * d, 1};
        size = b * s * h * d;
        break;
      case Layout::kPaddedStrides:  // gaps between heads, rows and batch entries
        strides = {s * (h * (d + 3) + 5) + 7, h * (d + 3) + 5, d + 3, 1};
        size = b * strides[0];
        break;
    }
    data.assign(static_cast<std::size_t>(std::max<Index>(size, 1)), std::nanf(""));
    view = View<float, 4>(data.data(), {b, s, h, d}, strides);
  }

  void fill_uniform(std::uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
    const std::vector<float> values = uniform(static_cast<std::size_t>(view.size()), seed, lo, hi);
    std::size_t next = 0;
    for (Index b = 0; b < view.extent(0); ++b)
      for (Index s = 0; s < view.extent(1); ++s)
        for (Index h = 0; h < view.extent(2); ++h)
          for (Index d = 0; d < view.extent(3); ++d) view(b, s, h, d) = values[next++];
  }
};

// max |a - b| over a rank-4 view of float against one of Acc.
template <class Acc>
double max_abs_diff(const View<float, 4>& a, const View<Acc, 4>& b) {
  double worst = 0;
  for (Index i = 0; i < a.extent(0); ++i)
    for (Index j = 0; j < a.extent(1); ++j)
      for (Index h = 0; h < a.extent(2); ++h)
        for (Index d = 0; d < a.extent(3); ++d) {
          const double diff = std::abs(static_cast<double>(a(i, j, h, d)) - static_cast<double>(b(i, j, h, d)));
          worst = std::isnan(diff) ? INFINITY : std::max(worst, diff);
        }
  return worst;
}

// Tolerance rule: an exact kernel may err at most twice as much as the straightforward float
// implementation of the same math, plus a tiny absolute floor.
inline double exact_tolerance(double float_error, double magnitude = 1.0) {
  return 2.0 * float_error + 1e-6 * std::max(1.0, magnitude);
}

}  // namespace attnkit::test
