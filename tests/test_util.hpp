// Shared test helpers: seeded random tensors, strided layouts, the backend type list and the
// tolerance rule of design.md section 4.
#pragma once

#include <algorithm>
#include <attnkit/attnkit.hpp>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <random>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "tensor.hpp"

namespace attnkit::test {

// The ISA axis: every register tile geometry a supported x86 ISA uses runs on any host. SSE2
// natively; AVX2 (6 x 16 tiles) natively where the build targets it, else emulated with two SSE2
// vectors; AVX-512 (12 x 32 tiles) natively where the build targets it, else emulated with two
// AVX2 (or four SSE2) vectors. isa_test.cpp prints what this list ran on the host.
using Sse2 = Simd<xsimd::sse2>;
#if XSIMD_WITH_FMA3_AVX2
using Avx2Geometry = Simd<xsimd::fma3<xsimd::avx2>>;
#else
using Avx2Geometry = Simd<Emulated<xsimd::sse2, 2>>;
#endif
#if XSIMD_WITH_AVX512BW
using Avx512Geometry = Simd<xsimd::avx512bw>;
#elif XSIMD_WITH_FMA3_AVX2
using Avx512Geometry = Simd<Emulated<xsimd::fma3<xsimd::avx2>, 2>>;
#else
using Avx512Geometry = Simd<Emulated<xsimd::sse2, 4>>;
#endif
using IsaBackends = std::tuple<Sse2, Avx2Geometry, Avx512Geometry>;
using Backends = std::tuple<Scalar, Sse2, Avx2Geometry, Avx512Geometry, OpenMP<>>;

// A backend of type B whose dispatched kernels, if any, are those of the compile-time ISA, so that
// its results equal the static backends' bit for bit even where the CPU runs a wider variant
// (a build for AVX2 on an AVX-512 machine).
template <class B>
B compile_time_kernels(B backend = {}) {
  if constexpr (std::is_same_v<B, OpenMP<>>) backend.inner.isa = compile_time_isa();
  return backend;
}

// The shape edge cases of design.md section 4 that every attention-like mechanism runs on, as
// (what, case) pairs of the caller's case type: any struct with the members set here (batch,
// q_len, kv_len, q_heads, kv_heads, head_dim, causal, layout, q_lengths, kv_lengths); its other
// members keep their defaults. Lengths cross 64-position chunks.
template <class Case>
std::vector<std::pair<const char*, Case>> attention_edge_cases() {
  struct Shape {
    Index batch, q_len, kv_len, q_heads, kv_heads, head_dim;
    bool causal;
    Layout layout = Layout::kBshd;
    std::vector<std::int32_t> q_lengths{}, kv_lengths{};
  };
  const std::pair<const char*, Shape> shapes[] = {
      {"GQA", {1, 70, 70, 8, 2, 16, true}},
      {"MQA", {1, 20, 40, 6, 1, 16, true}},
      {"reverse SQA", {1, 20, 40, 2, 6, 16, false}},
      {"causal, q_len < kv_len", {1, 17, 150, 4, 2, 32, true}},
      {"causal, q_len > kv_len (rows that see no key)", {1, 100, 23, 2, 1, 32, true}},
      {"BHSD layout", {2, 33, 70, 4, 2, 20, true, Layout::kBhsd}},
      {"gaps between heads, rows and batch entries", {2, 33, 70, 4, 2, 20, false, Layout::kPaddedStrides}},
      {"empty batch", {0, 5, 5, 1, 1, 8, false}},
      {"no queries", {1, 0, 5, 1, 1, 8, true}},
      {"no keys", {1, 4, 0, 1, 1, 8, false}},
      {"no keys, causal", {1, 4, 0, 1, 1, 8, true}},
      {"padded lengths", {3, 80, 90, 4, 2, 16, false, Layout::kBshd, {80, 0, 11}, {90, 7, 0}}},
      {"padded lengths, causal", {3, 80, 90, 2, 1, 16, true, Layout::kBshd, {12, 80, 1}, {70, 9, 90}}},
  };
  std::vector<std::pair<const char*, Case>> cases;
  for (const auto& [what, shape] : shapes) {
    Case c{};
    c.batch = shape.batch;
    c.q_len = shape.q_len;
    c.kv_len = shape.kv_len;
    c.q_heads = shape.q_heads;
    c.kv_heads = shape.kv_heads;
    c.head_dim = shape.head_dim;
    c.causal = shape.causal;
    c.layout = shape.layout;
    c.q_lengths = shape.q_lengths;
    c.kv_lengths = shape.kv_lengths;
    cases.emplace_back(what, c);
  }
  return cases;
}

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

// Outputs of a mechanism's reference twin for one case: in double (the reference) and in float
// (the straightforward float implementation the tolerance rule compares against), both
// contiguous (batch, seq, head, dim).
struct ReferenceOutputs {
  std::vector<double> exact_data;
  std::vector<float> naive_data;
  View<double, 4> exact;
  View<float, 4> naive;

  explicit ReferenceOutputs(const std::array<Index, 4>& shape)
      : exact_data(static_cast<std::size_t>(shape[0] * shape[1] * shape[2] * shape[3]) + 1),
        naive_data(exact_data.size()),
        exact(View<double, 4>::contiguous(exact_data.data(), shape)),
        naive(View<float, 4>::contiguous(naive_data.data(), shape)) {}
};

// Checks a kernel's output against the references with the tolerance rule.
inline void check_exact(const View<float, 4>& got, const ReferenceOutputs& reference) {
  const double float_error = max_abs_diff(reference.naive, reference.exact);
  const double error = max_abs_diff(got, reference.exact);
  INFO("kernel error " << error << ", float reference error " << float_error);
  CHECK(error <= exact_tolerance(float_error));
}

// The elements of a rank-4 view in logical order (for bitwise comparisons across backends).
inline std::vector<float> flatten(const View<float, 4>& x) {
  std::vector<float> flat;
  flat.reserve(static_cast<std::size_t>(x.size()));
  for (Index b = 0; b < x.extent(0); ++b)
    for (Index s = 0; s < x.extent(1); ++s)
      for (Index h = 0; h < x.extent(2); ++h)
        for (Index d = 0; d < x.extent(3); ++d) flat.push_back(x(b, s, h, d));
  return flat;
}

}  // namespace attnkit::test
