// Test tensors shared by the Catch2 tests and the fuzz target: seeded uniform values and rank-4
// tensors in the layouts the suite runs (their padding holds NaN, so a kernel reading it shows it).
#pragma once

#include <algorithm>
#include <array>
#include <attnkit/core/view.hpp>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace attnkit::test {

inline std::vector<float> uniform(std::size_t n, std::uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> x(n);
  for (float& e : x) e = dist(rng);
  return x;
}

// Memory layouts a rank-4 (batch, seq, head, dim) tensor is tested in.
// kBroadcastBatch: a batch axis of stride 0 (every batch entry reads the same memory; for inputs).
enum class Layout { kBshd, kBhsd, kPaddedStrides, kBroadcastBatch };
inline const char* layout_name(Layout layout) {
  static const char* names[] = {"bshd", "bhsd", "padded strides", "batch stride 0"};
  return names[static_cast<int>(layout)];
}

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
      case Layout::kBroadcastBatch:
        strides = {0, h * d, d, 1};
        size = b > 0 ? s * h * d : 0;
        break;
    }
    data.assign(static_cast<std::size_t>(std::max<Index>(size, 1)), std::nanf(""));
    view = View<float, 4>(data.data(), {b, s, h, d}, strides);
  }

  // A copy owns its own buffer and views it with the same extents and strides.
  Tensor4(const Tensor4& other) : data(other.data), view(data.data(), other.view.extents(), other.view.strides()) {}
  Tensor4& operator=(const Tensor4& other) {
    data = other.data;
    view = View<float, 4>(data.data(), other.view.extents(), other.view.strides());
    return *this;
  }
  Tensor4(Tensor4&&) = default;
  Tensor4& operator=(Tensor4&&) = default;

  // Elements of distinct memory (one batch entry of a broadcast batch), in logical order.
  Index distinct_elements() const {
    const Index batches = view.stride(0) == 0 ? std::min<Index>(view.extent(0), 1) : view.extent(0);
    return batches * view.extent(1) * view.extent(2) * view.extent(3);
  }
  // Writes values (distinct_elements() of them) in logical order.
  void assign(const std::vector<float>& values) {
    const Index batches = view.stride(0) == 0 ? std::min<Index>(view.extent(0), 1) : view.extent(0);
    std::size_t next = 0;
    for (Index b = 0; b < batches; ++b)
      for (Index s = 0; s < view.extent(1); ++s)
        for (Index h = 0; h < view.extent(2); ++h)
          for (Index d = 0; d < view.extent(3); ++d) view(b, s, h, d) = values[next++];
  }
  void fill_uniform(std::uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
    assign(uniform(static_cast<std::size_t>(distinct_elements()), seed, lo, hi));
  }
};

}  // namespace attnkit::test
