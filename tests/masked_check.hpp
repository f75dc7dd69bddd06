// Test helper shared by the window, block-sparse and XAttention tests: random inputs, and the
// check of a kernel's output against reference::masked (double) with the tolerance rule of
// design.md section 4 (twice the error of the float reference, plus a tiny floor).
#pragma once

#include <catch2/catch.hpp>

#include <attnkit/reference/masked.hpp>
#include <optional>
#include <vector>

#include "test_util.hpp"

namespace attnkit::test {

struct MaskedCase {
  Index batch = 1, q_len = 1, kv_len = 1, q_heads = 1, kv_heads = 1, head_dim = 8, v_dim = 8;
  Layout layout = Layout::kBshd;
  float lo = -1.0f, hi = 1.0f;  // range of q and k entries
  std::uint32_t seed = 1;
  Index out_heads() const { return std::max(q_heads, kv_heads); }
};

// A random shape: batch 1-2, lengths up to max_len, 2 or 4 query heads with MHA or MQA, dims up
// to 40, any layout.
inline MaskedCase random_case(std::mt19937& rng, Index max_len, std::uint32_t seed) {
  MaskedCase c;
  c.batch = 1 + rng() % 2;
  c.q_len = 1 + rng() % max_len;
  c.kv_len = 1 + rng() % max_len;
  c.q_heads = 2 * (1 + rng() % 2);
  c.kv_heads = rng() % 2 ? c.q_heads : 1;
  c.head_dim = 1 + rng() % 40;
  c.v_dim = 1 + rng() % 40;
  c.layout = static_cast<Layout>(rng() % 3);
  c.seed = seed;
  return c;
}

// q, k, v filled from the case's seed and an output tensor of the case's layout.
struct MaskedRun {
  Tensor4 q, k, v, out;
  explicit MaskedRun(const MaskedCase& c)
      : q(c.batch, c.q_len, c.q_heads, c.head_dim, c.layout),
        k(c.batch, c.kv_len, c.kv_heads, c.head_dim, c.layout),
        v(c.batch, c.kv_len, c.kv_heads, c.v_dim, c.layout),
        out(c.batch, c.q_len, c.out_heads(), c.v_dim, c.layout) {
    q.fill_uniform(c.seed, c.lo, c.hi);
    k.fill_uniform(c.seed + 1, c.lo, c.hi);
    v.fill_uniform(c.seed + 2);
  }
};

// The kernel's output in run.out against reference::masked with `allowed`.
template <class Allowed>
void check_masked(const MaskedCase& c, const MaskedRun& run, const Allowed& allowed) {
  INFO("batch " << c.batch << " q_len " << c.q_len << " kv_len " << c.kv_len << " heads " << c.q_heads << "/"
                << c.kv_heads << " dims " << c.head_dim << "/" << c.v_dim);
  const std::array<Index, 4> shape{c.batch, c.q_len, c.out_heads(), c.v_dim};
  const std::size_t n = static_cast<std::size_t>(c.batch * c.q_len * c.out_heads() * c.v_dim) + 1;
  std::vector<double> exact(n);
  std::vector<float> naive(n);
  const auto exact_view = View<double, 4>::contiguous(exact.data(), shape);
  const auto naive_view = View<float, 4>::contiguous(naive.data(), shape);
  reference::masked<double>(run.q.view, run.k.view, run.v.view, exact_view, allowed);
  reference::masked<float>(run.q.view, run.k.view, run.v.view, naive_view, allowed);
  const double float_error = max_abs_diff(naive_view, exact_view);
  const double error = max_abs_diff(run.out.view, exact_view);
  INFO("kernel error " << error << ", float reference error " << float_error);
  CHECK(error <= exact_tolerance(float_error));
}

}  // namespace attnkit::test
