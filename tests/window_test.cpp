// Sliding-window attention (Dense::Options::window) against reference::masked with the band as
// explicit element mask, on every backend: random windows, one-sided and causal windows,
// q_len != kv_len, GQA, strided layouts, rows that see no key; cost() and option errors.
#include <catch2/catch.hpp>

#include "masked_check.hpp"

namespace ak = attnkit;
using ak::Index;
using ak::test::Layout;
using ak::test::MaskedCase;

namespace {

template <class Backend>
void check_window(const MaskedCase& c, Index left, Index right, bool causal) {
  INFO("window [" << left << ", " << right << "] causal " << causal);
  ak::test::MaskedRun run(c);
  const ak::Attention<ak::Dense, Backend> attn(
      ak::Dense::Options{.causal = causal, .window = {.left = left, .right = right}});
  attn(run.q.view, run.k.view, run.v.view, run.out.view);
  ak::test::check_masked(c, run, ak::reference::WindowElements{c.q_len, c.kv_len, left, right, causal});
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("window attention matches the band reference", "[sparse][window]", ak::test::Backends) {
  std::mt19937 rng(77);
  const std::array<Index, 6> sides{-1, 0, 1, 7, 40, 300};
  for (int trial = 0; trial < 10; ++trial) {
    const MaskedCase c = ak::test::random_case(rng, 400, 300 + trial);
    Index left = sides[rng() % sides.size()], right = sides[rng() % sides.size()];
    if (left < 0 && right < 0) left = 5;
    check_window<TestType>(c, left, right, rng() % 2);
  }
}

TEMPLATE_LIST_TEST_CASE("window edge cases", "[sparse][window]", ak::test::Backends) {
  SECTION("causal local window over a long sequence: most key blocks skipped") {
    check_window<TestType>({.q_len = 1100, .kv_len = 1100, .q_heads = 2, .head_dim = 16, .v_dim = 16}, 37, -1, true);
  }
  SECTION("window of one key (the aligned position itself)") {
    check_window<TestType>({.q_len = 50, .kv_len = 80, .head_dim = 8, .v_dim = 8}, 0, 0, false);
  }
  SECTION("q_len > kv_len: rows whose band misses every key are zeros") {
    check_window<TestType>({.q_len = 90, .kv_len = 30, .q_heads = 4, .kv_heads = 2, .head_dim = 12, .v_dim = 5}, 3, 2,
                           false);
    check_window<TestType>({.q_len = 90, .kv_len = 30, .head_dim = 12, .v_dim = 5}, 10, -1, true);
  }
  SECTION("right-only window, strided layout") {
    check_window<TestType>({.q_len = 70, .kv_len = 70, .head_dim = 20, .v_dim = 20, .layout = Layout::kPaddedStrides},
                           -1, 9, false);
  }
}

TEMPLATE_LIST_TEST_CASE("window on packed variable-length sequences", "[sparse][window]", ak::test::Backends) {
  // Each sequence's band is aligned to its own lengths; checked per sequence against the reference
  // on a view of that sequence's tokens.
  const std::vector<std::int32_t> cu_q{0, 40, 41, 141, 141}, cu_kv{0, 60, 61, 141, 200};
  const Index q_heads = 4, kv_heads = 2, dim = 16, tokens_q = 141, tokens_kv = 200;
  const Index left = 9, right = 3;
  std::vector<float> q = ak::test::uniform(tokens_q * q_heads * dim, 11),
                     k = ak::test::uniform(tokens_kv * kv_heads * dim, 12),
                     v = ak::test::uniform(tokens_kv * kv_heads * dim, 13), out(tokens_q * q_heads * dim);
  for (const bool causal : {false, true}) {
    INFO("causal " << causal);
    ak::Attention<ak::Dense, TestType>({.causal = causal, .window = {.left = left, .right = right}})(
        ak::thd(q.data(), tokens_q, q_heads, dim), ak::thd(k.data(), tokens_kv, kv_heads, dim),
        ak::thd(v.data(), tokens_kv, kv_heads, dim), ak::thd(out.data(), tokens_q, q_heads, dim),
        ak::CuSeqlens{cu_q, cu_kv});
    for (std::size_t s = 0; s + 1 < cu_q.size(); ++s) {
      const Index q_len = cu_q[s + 1] - cu_q[s], kv_len = cu_kv[s + 1] - cu_kv[s];
      const auto qs = ak::bshd(static_cast<const float*>(q.data()) + cu_q[s] * q_heads * dim, 1, q_len, q_heads, dim);
      const auto ks =
          ak::bshd(static_cast<const float*>(k.data()) + cu_kv[s] * kv_heads * dim, 1, kv_len, kv_heads, dim);
      const auto vs =
          ak::bshd(static_cast<const float*>(v.data()) + cu_kv[s] * kv_heads * dim, 1, kv_len, kv_heads, dim);
      const ak::reference::WindowElements band{q_len, kv_len, left, right, causal};
      std::vector<double> exact(static_cast<std::size_t>(q_len * q_heads * dim) + 1);
      std::vector<float> naive(exact.size());
      const auto exact_view = ak::bshd(exact.data(), 1, q_len, q_heads, dim);
      const auto naive_view = ak::bshd(naive.data(), 1, q_len, q_heads, dim);
      ak::reference::masked<double>(qs, ks, vs, exact_view, band);
      ak::reference::masked<float>(qs, ks, vs, naive_view, band);
      const auto got = ak::bshd(out.data() + cu_q[s] * q_heads * dim, 1, q_len, q_heads, dim);
      CHECK(ak::test::max_abs_diff(got, exact_view) <=
            ak::test::exact_tolerance(ak::test::max_abs_diff(naive_view, exact_view)));
    }
  }
}

TEST_CASE("window cost counts only the visible pairs", "[sparse][window]") {
  const Index n = 1000, heads = 2, dim = 16;
  const float* none = reinterpret_cast<const float*>(16);
  const auto x = ak::bshd(none, 1, n, heads, dim);
  const ak::Attention<ak::Dense, ak::Simd<>> window(ak::Dense::Options{.causal = true, .window = {.left = 99}});
  // Row i sees min(i, 99) + 1 keys.
  double pairs = 0;
  for (Index i = 0; i < n; ++i) pairs += static_cast<double>(std::min<Index>(i, 99) + 1);
  CHECK(window.cost(x, x, x).flops == Approx(2.0 * pairs * heads * (dim + dim)));
  const ak::Attention<ak::Dense, ak::Simd<>> causal(ak::Dense::Options{.causal = true});
  CHECK(causal.cost(x, x, x).flops > 4.0 * window.cost(x, x, x).flops);
}

TEST_CASE("window rejects bad options with a message naming the argument", "[sparse][window][errors]") {
  using Catch::Contains;
  CHECK_THROWS_AS(ak::Attention<ak::Dense>(ak::Dense::Options{.window = {.left = -2}}), ak::Error);
  CHECK_THROWS_WITH(ak::Attention<ak::Dense>(ak::Dense::Options{.window = {.left = -2}}),
                    Contains("options.window.left is -2, expected >= 0 or -1 (unbounded)"));
  CHECK_THROWS_WITH(ak::Attention<ak::Dense>(ak::Dense::Options{.window = {.right = -5}}),
                    Contains("options.window.right is -5, expected >= 0 or -1 (unbounded)"));
}

TEMPLATE_LIST_TEST_CASE("top-left causal (torch is_causal, fast-transformers) through the README recipes",
                        "[sparse][window][conventions]", ak::test::Backends) {
  // Top-left: query i sees keys j <= i. q_len <= kv_len: bottom-right causal on the first q_len
  // keys; q_len > kv_len: a window right of q_len - kv_len, not causal.
  const auto top_left = [](Index, Index, Index i, Index j) { return j <= i; };
  std::mt19937 rng(91);
  for (int trial = 0; trial < 6; ++trial) {
    MaskedCase c = ak::test::random_case(rng, 150, 900 + trial);
    INFO("q_len " << c.q_len << " kv_len " << c.kv_len);
    ak::test::MaskedRun run(c);
    if (c.q_len <= c.kv_len) {
      const auto prefix = [&](const ak::View<const float, 4>& x) {
        return ak::View<const float, 4>(x.data(), {x.extent(0), c.q_len, x.extent(2), x.extent(3)}, x.strides());
      };
      ak::Attention<ak::Dense, TestType>({.causal = true})(run.q.view, prefix(run.k.view), prefix(run.v.view),
                                                           run.out.view);
    } else {
      ak::Attention<ak::Dense, TestType>({.window = {.left = -1, .right = c.q_len - c.kv_len}})(
          run.q.view, run.k.view, run.v.view, run.out.view);
    }
    ak::test::check_masked(c, run, top_left);
  }
}
