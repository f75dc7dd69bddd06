// Attention<CombinerFixed> against reference::combiner_fixed on every backend: random shapes,
// N not a multiple of the segment, N below the segment, segment 1 and segment >= N (both exactly
// dense attention), GQA, strided layouts, determinism over thread counts, workspace, cost and
// every error message.
#include <catch2/catch.hpp>

#include <attnkit/mechanism/combiner.hpp>
#include <attnkit/mechanism/combiner_logsparse.hpp>
#include <attnkit/reference/combiner.hpp>
#include <attnkit/reference/dense.hpp>

#include <bit>

#include "test_util.hpp"

namespace ak = attnkit;
using ak::Index;
using ak::test::Layout;
using ak::test::Tensor4;

namespace {

struct CombinerCase {
  Index batch = 1, n = 50, q_heads = 1, kv_heads = 1, head_dim = 16, v_dim = 0, segment = 0;
  bool causal = false;
  Layout layout = Layout::kBshd;
  float lo = -1.0f, hi = 1.0f;
  std::uint32_t seed = 1;
};

Index v_dim_of(const CombinerCase& c) { return c.v_dim > 0 ? c.v_dim : c.head_dim; }
Index out_heads(const CombinerCase& c) { return std::max(c.q_heads, c.kv_heads); }

struct CombinerRun {
  Tensor4 q, k, v, out;
  explicit CombinerRun(const CombinerCase& c)
      : q(c.batch, c.n, c.q_heads, c.head_dim, c.layout),
        k(c.batch, c.n, c.kv_heads, c.head_dim, c.layout),
        v(c.batch, c.n, c.kv_heads, v_dim_of(c), c.layout),
        out(c.batch, c.n, out_heads(c), v_dim_of(c), c.layout) {
    q.fill_uniform(c.seed, c.lo, c.hi);
    k.fill_uniform(c.seed + 1, c.lo, c.hi);
    v.fill_uniform(c.seed + 2);
  }
};

template <class Backend>
std::vector<float> check_combiner(const CombinerCase& c, Backend backend = {}) {
  INFO("batch " << c.batch << " n " << c.n << " heads " << c.q_heads << "/" << c.kv_heads << " dims " << c.head_dim
                << "/" << v_dim_of(c) << " segment " << c.segment << " causal " << c.causal << " layout "
                << int(c.layout));
  CombinerRun in(c);
  ak::Attention<ak::CombinerFixed, Backend> attn({.causal = c.causal, .segment = c.segment}, backend);
  attn(in.q.view, in.k.view, in.v.view, in.out.view);

  const std::array<Index, 4> shape{c.batch, c.n, out_heads(c), v_dim_of(c)};
  std::vector<double> exact(static_cast<std::size_t>(c.batch * c.n * out_heads(c) * v_dim_of(c)) + 1);
  std::vector<float> naive(exact.size());
  auto exact_view = ak::View<double, 4>::contiguous(exact.data(), shape);
  auto naive_view = ak::View<float, 4>::contiguous(naive.data(), shape);
  const ak::reference::CombinerOptions ref{.causal = c.causal, .segment = c.segment};
  ak::reference::combiner_fixed<double>(in.q.view, in.k.view, in.v.view, exact_view, ref);
  ak::reference::combiner_fixed<float>(in.q.view, in.k.view, in.v.view, naive_view, ref);
  const double float_error = ak::test::max_abs_diff(naive_view, exact_view);
  const double error = ak::test::max_abs_diff(in.out.view, exact_view);
  INFO("kernel error " << error << ", float reference error " << float_error);
  CHECK(error <= ak::test::exact_tolerance(float_error));

  std::vector<float> flat;
  for (Index b = 0; b < c.batch; ++b)
    for (Index s = 0; s < c.n; ++s)
      for (Index h = 0; h < out_heads(c); ++h)
        for (Index d = 0; d < v_dim_of(c); ++d) flat.push_back(in.out.view(b, s, h, d));
  return flat;
}

// max |kernel - exact dense attention| on the case's inputs.
template <class Backend>
double error_against_dense(const CombinerCase& c) {
  CombinerRun in(c);
  ak::Attention<ak::CombinerFixed, Backend> attn({.causal = c.causal, .segment = c.segment});
  attn(in.q.view, in.k.view, in.v.view, in.out.view);
  std::vector<double> exact(static_cast<std::size_t>(c.batch * c.n * out_heads(c) * v_dim_of(c)));
  std::vector<double> lse(static_cast<std::size_t>(c.batch * c.n * out_heads(c)));
  auto exact_view = ak::View<double, 4>::contiguous(exact.data(), {c.batch, c.n, out_heads(c), v_dim_of(c)});
  ak::reference::dense<double>(in.q.view, in.k.view, in.v.view, exact_view,
                               ak::View<double, 3>::contiguous(lse.data(), {c.batch, c.n, out_heads(c)}),
                               {.causal = c.causal});
  return ak::test::max_abs_diff(in.out.view, exact_view);
}

}  // namespace

TEST_CASE("combiner segment defaults to round(sqrt(N))", "[combiner]") {
  CHECK(ak::combiner_segment(0, 1024) == 32);
  CHECK(ak::combiner_segment(0, 1000) == 32);  // sqrt = 31.6
  CHECK(ak::combiner_segment(0, 1) == 1);
  CHECK(ak::combiner_segment(0, 0) == 1);
  CHECK(ak::combiner_segment(7, 1000) == 7);
}

TEMPLATE_LIST_TEST_CASE("combiner-fixed matches the reference on random shapes", "[combiner]", ak::test::Backends) {
  std::mt19937 rng(11);
  const std::array<std::pair<Index, Index>, 5> head_maps{{{1, 1}, {2, 1}, {4, 2}, {2, 4}, {3, 3}}};
  const std::array<Index, 5> dims{1, 7, 16, 33, 64};
  for (int trial = 0; trial < 10; ++trial) {
    CombinerCase c;
    c.batch = 1 + rng() % 2;
    c.n = 1 + rng() % 200;
    std::tie(c.q_heads, c.kv_heads) = head_maps[rng() % head_maps.size()];
    c.head_dim = dims[rng() % dims.size()];
    c.v_dim = rng() % 2 ? 0 : dims[rng() % dims.size()];
    c.segment = rng() % 3 == 0 ? 0 : 1 + rng() % 40;
    c.causal = rng() % 2;
    c.layout = static_cast<Layout>(rng() % 3);
    c.seed = 500 + trial;
    check_combiner<TestType>(c);
  }
}

TEMPLATE_LIST_TEST_CASE("combiner-fixed edge cases", "[combiner]", ak::test::Backends) {
  for (bool causal : {false, true}) {
    DYNAMIC_SECTION("causal " << causal) {
      check_combiner<TestType>({.n = 1, .head_dim = 5, .causal = causal});
      check_combiner<TestType>({.n = 103, .segment = 10, .causal = causal});                // N not a multiple of s
      check_combiner<TestType>({.n = 12, .segment = 40, .causal = causal});                 // N < s: one segment
      check_combiner<TestType>({.n = 300, .head_dim = 13, .v_dim = 19, .causal = causal});  // > one key block
      check_combiner<TestType>({.n = 70, .segment = 300, .causal = causal});  // a segment wider than a key block
      check_combiner<TestType>(
          {.batch = 2, .n = 61, .q_heads = 6, .kv_heads = 2, .causal = causal, .layout = Layout::kBhsd});
      check_combiner<TestType>(
          {.n = 45, .q_heads = 2, .kv_heads = 4, .causal = causal, .layout = Layout::kPaddedStrides});
      check_combiner<TestType>({.n = 40, .causal = causal, .lo = -40.0f, .hi = 40.0f});  // large logits
      check_combiner<TestType>({.batch = 0, .causal = causal});
      check_combiner<TestType>({.n = 0, .causal = causal});
    }
  }
}

TEMPLATE_LIST_TEST_CASE("combiner-fixed is dense attention for segment 1 and segment >= N", "[combiner]",
                        ak::test::Backends) {
  // s = 1: each span is one key with its own value; s >= N: one segment, all keys direct.
  for (bool causal : {false, true})
    for (Index segment : {1, 64}) {
      INFO("causal " << causal << " segment " << segment);
      CHECK(error_against_dense<TestType>({.n = 37, .q_heads = 2, .segment = segment, .causal = causal}) < 1e-5);
    }
}

TEST_CASE("combiner-fixed results do not depend on the backend's thread count", "[combiner]") {
  const CombinerCase c{.batch = 2, .n = 150, .q_heads = 4, .kv_heads = 2, .causal = true};
  const auto one = check_combiner<ak::OpenMP<>>(c, ak::OpenMP<>{1});
  CHECK(one == check_combiner<ak::OpenMP<>>(c, ak::OpenMP<>{2}));
  CHECK(one == check_combiner<ak::OpenMP<>>(c, ak::OpenMP<>{3}));
}

TEST_CASE("combiner-fixed uses a caller workspace and reports its cost", "[combiner]") {
  Tensor4 q(1, 100, 2, 16, Layout::kBshd), k(1, 100, 2, 16, Layout::kBshd), v(1, 100, 2, 16, Layout::kBshd);
  Tensor4 a(1, 100, 2, 16, Layout::kBshd), b(1, 100, 2, 16, Layout::kBshd);
  q.fill_uniform(1);
  k.fill_uniform(2);
  v.fill_uniform(3);
  ak::Attention<ak::CombinerFixed, ak::OpenMP<>> attn;
  const std::size_t bytes = attn.workspace_bytes(q.view, k.view, v.view);
  std::vector<std::byte> owner(bytes + 64);
  void* aligned = owner.data();
  std::size_t space = owner.size();
  std::align(64, bytes, aligned, space);
  attn(q.view, k.view, v.view, a.view, {.workspace = {aligned, bytes}});
  attn(q.view, k.view, v.view, b.view);
  CHECK(a.data == b.data);
  // s = 10, 10 segments: each query sees 10 keys + 9 spans; spans cost 2 N (D + Dv) more.
  CHECK(attn.cost(q.view, k.view, v.view).flops == 2.0 * 2.0 * 32 * (100 + 100 * 19));
  ak::Attention<ak::CombinerFixed, ak::OpenMP<>> causal({.causal = true});
  // per segment: 10 * 11 / 2 direct pairs + 10 * t spans.
  CHECK(causal.cost(q.view, k.view, v.view).flops == 2.0 * 2.0 * 32 * (100 + 10 * 55 + 10 * 45));
  CHECK(attn.name().rfind("combiner-fixed/", 0) == 0);
}

TEST_CASE("combiner-fixed rejects bad input naming the argument", "[combiner]") {
  using Catch::Matchers::Contains;
  Tensor4 q(1, 8, 2, 4, Layout::kBshd), k(1, 8, 2, 4, Layout::kBshd), v(1, 8, 2, 4, Layout::kBshd);
  Tensor4 out(1, 8, 2, 4, Layout::kBshd), k_long(1, 9, 2, 4, Layout::kBshd), k_dim(1, 8, 2, 5, Layout::kBshd);
  Tensor4 v_len(1, 7, 2, 4, Layout::kBshd), out_heads(1, 8, 3, 4, Layout::kBshd), k_heads(1, 8, 3, 4, Layout::kBshd);
  q.fill_uniform(1);
  k.fill_uniform(2);
  v.fill_uniform(3);
  CHECK_THROWS_WITH((ak::Attention<ak::CombinerFixed, ak::Scalar>({.segment = -2})),
                    Contains("options.segment is -2, expected >= 1, or 0 for round(sqrt(seq))"));
  CHECK_THROWS_WITH((ak::Attention<ak::CombinerFixed, ak::Scalar>({.scale = 0.0f})),
                    Contains("options.scale is 0, expected a finite value > 0"));
  CHECK_THROWS_WITH((ak::Attention<ak::CombinerFixed, ak::Scalar>({.scale = INFINITY})),
                    Contains("options.scale is inf"));
  ak::Attention<ak::CombinerFixed, ak::Scalar> attn;
  k_long.fill_uniform(4);
  CHECK_THROWS_WITH(attn(q.view, k_long.view, k_long.view, out.view),
                    Contains("k: seq 9, expected 8 (q's seq: Combiner is self-attention)"));
  CHECK_THROWS_WITH(attn(q.view, k_dim.view, v.view, out.view), Contains("k: head_dim 5, expected 4"));
  CHECK_THROWS_WITH(attn(q.view, k.view, v_len.view, out.view), Contains("v: seq 7, expected 8"));
  CHECK_THROWS_WITH(attn(q.view, k_heads.view, k_heads.view, out.view), Contains("k: heads 3, expected a divisor"));
  CHECK_THROWS_WITH(attn(q.view, k.view, v.view, out_heads.view), Contains("out: heads 3, expected 2"));
  const ak::View<const float, 4> null_k(nullptr, k.view.extents(), k.view.strides());
  CHECK_THROWS_WITH(attn(q.view, null_k, v.view, out.view), Contains("k: data is null"));
  const ak::View<const float, 4> negative(q.view.data(), q.view.extents(), {-1, 8, 4, 1});
  CHECK_THROWS_WITH(attn(negative, k.view, v.view, out.view), Contains("q: stride 0 is -1"));
}

// ---- Combiner-Logsparse ----

namespace {

template <class Backend>
void check_logsparse(const CombinerCase& c, Backend backend = {}) {
  INFO("logsparse batch " << c.batch << " n " << c.n << " heads " << c.q_heads << "/" << c.kv_heads << " dims "
                          << c.head_dim << "/" << v_dim_of(c) << " causal " << c.causal);
  CombinerRun in(c);
  ak::Attention<ak::CombinerLogsparse, Backend> attn({.causal = c.causal}, backend);
  attn(in.q.view, in.k.view, in.v.view, in.out.view);
  const std::array<Index, 4> shape{c.batch, c.n, out_heads(c), v_dim_of(c)};
  std::vector<double> exact(static_cast<std::size_t>(c.batch * c.n * out_heads(c) * v_dim_of(c)) + 1);
  std::vector<float> naive(exact.size());
  auto exact_view = ak::View<double, 4>::contiguous(exact.data(), shape);
  auto naive_view = ak::View<float, 4>::contiguous(naive.data(), shape);
  ak::reference::combiner_logsparse<double>(in.q.view, in.k.view, in.v.view, exact_view, {.causal = c.causal});
  ak::reference::combiner_logsparse<float>(in.q.view, in.k.view, in.v.view, naive_view, {.causal = c.causal});
  const double float_error = ak::test::max_abs_diff(naive_view, exact_view);
  const double error = ak::test::max_abs_diff(in.out.view, exact_view);
  INFO("kernel error " << error << ", float reference error " << float_error);
  CHECK(error <= ak::test::exact_tolerance(float_error));
}

}  // namespace

TEST_CASE("combiner-logsparse coverage: every key once, along the bits of i", "[combiner]") {
  for (Index n : {1, 2, 7, 64, 100}) {
    for (Index i = 0; i < n; ++i) {
      std::vector<int> hits(static_cast<std::size_t>(n), 0);
      hits[i] += 1;
      Index spans = 0;
      auto mark = [&](ak::LogSpan s) {
        ++spans;
        for (Index j = s.chunk << s.level; j < (s.chunk + 1) << s.level; ++j) hits[j] += 1;
      };
      ak::combiner_log_split(0, i, mark);
      CHECK(spans == static_cast<Index>(std::popcount(static_cast<std::uint64_t>(i))));
      ak::combiner_log_split(i + 1, n, mark);
      CHECK(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
      CHECK(spans <= 2 * static_cast<Index>(std::bit_width(static_cast<std::uint64_t>(n))));
    }
  }
  // The reference code's i = 5 sees {5} and [0, 4) only; here [4, 5) is a level-0 span.
  std::vector<std::pair<Index, Index>> five;
  ak::combiner_log_split(0, 5, [&](ak::LogSpan s) { five.push_back({s.level, s.chunk}); });
  CHECK(five == std::vector<std::pair<Index, Index>>{{2, 0}, {0, 4}});
}

TEMPLATE_LIST_TEST_CASE("combiner-logsparse matches the reference", "[combiner]", ak::test::Backends) {
  std::mt19937 rng(13);
  const std::array<std::pair<Index, Index>, 4> head_maps{{{1, 1}, {2, 1}, {4, 2}, {2, 4}}};
  const std::array<Index, 4> dims{1, 7, 16, 33};
  for (int trial = 0; trial < 6; ++trial) {
    CombinerCase c;
    c.batch = 1 + rng() % 2;
    c.n = 1 + rng() % 90;
    std::tie(c.q_heads, c.kv_heads) = head_maps[rng() % head_maps.size()];
    c.head_dim = dims[rng() % dims.size()];
    c.v_dim = rng() % 2 ? 0 : dims[rng() % dims.size()];
    c.causal = rng() % 2;
    c.layout = static_cast<Layout>(rng() % 3);
    c.seed = 700 + trial;
    check_logsparse<TestType>(c);
  }
  for (bool causal : {false, true}) {
    check_logsparse<TestType>({.n = 1, .causal = causal});
    check_logsparse<TestType>({.n = 2, .head_dim = 5, .causal = causal});
    check_logsparse<TestType>({.n = 64, .causal = causal});                  // a power of two
    check_logsparse<TestType>({.n = 300, .head_dim = 8, .causal = causal});  // a 256-key span, rows over one item
    check_logsparse<TestType>(
        {.n = 45, .q_heads = 2, .kv_heads = 4, .causal = causal, .layout = Layout::kPaddedStrides});
    check_logsparse<TestType>({.n = 40, .causal = causal, .lo = -40.0f, .hi = 40.0f});
    check_logsparse<TestType>({.batch = 0, .causal = causal});
    check_logsparse<TestType>({.n = 0, .causal = causal});
  }
}

TEST_CASE("combiner-logsparse results, workspace, cost and errors", "[combiner]") {
  using Catch::Matchers::Contains;
  CombinerRun a({.batch = 2, .n = 150, .q_heads = 4, .kv_heads = 2});
  CombinerRun b({.batch = 2, .n = 150, .q_heads = 4, .kv_heads = 2});
  ak::Attention<ak::CombinerLogsparse, ak::OpenMP<>> one({}, ak::OpenMP<>{1}), three({}, ak::OpenMP<>{3});
  one(a.q.view, a.k.view, a.v.view, a.out.view);
  const std::size_t bytes = three.workspace_bytes(b.q.view, b.k.view, b.v.view);
  std::vector<std::byte> owner(bytes + 64);
  void* aligned = owner.data();
  std::size_t space = owner.size();
  std::align(64, bytes, aligned, space);
  three(b.q.view, b.k.view, b.v.view, b.out.view, {.workspace = {aligned, bytes}});
  CHECK(a.out.data == b.out.data);

  // N = 4, causal: spans 2·(4 + 4 + 4) keys (levels 0..2); rows 1 + popcount(i) = 1, 2, 2, 3.
  CombinerRun small({.n = 4, .head_dim = 8});
  ak::Attention<ak::CombinerLogsparse, ak::Scalar> causal({.causal = true});
  CHECK(causal.cost(small.q.view, small.k.view, small.v.view).flops == 2.0 * 16 * (12 + 8));
  CHECK(causal.name().rfind("combiner-logsparse-causal/", 0) == 0);

  CHECK_THROWS_WITH((ak::Attention<ak::CombinerLogsparse, ak::Scalar>({.scale = -2.0f})),
                    Contains("options.scale is -2, expected a finite value > 0"));
  CombinerRun longer({.n = 5, .head_dim = 8});
  CHECK_THROWS_WITH(causal(small.q.view, longer.k.view, longer.v.view, small.out.view),
                    Contains("k: seq 5, expected 4 (q's seq: Combiner is self-attention)"));
  CHECK_THROWS_WITH(causal(small.q.view, small.k.view, longer.v.view, small.out.view),
                    Contains("v: seq 5, expected 4"));
  CHECK_THROWS_WITH(causal(small.q.view, small.k.view, small.v.view, longer.out.view),
                    Contains("out: seq 5, expected 4"));
}

TEMPLATE_LIST_TEST_CASE("combiner-logsparse causal query 5 covers key 4 through a level-0 span, as _SelfAttLogn does",
                        "[combiner][logsparse][conventions]", ak::test::Backends) {
  // One-hot values v_j = e_j: out_i's entry j is the weight key j gets from query i. Query 5
  // sees {5}, {4} and the level-2 span [0, 4); nothing after 5.
  const Index n = 8;
  const std::vector<float> q = ak::test::uniform(n * 4, 5), k = ak::test::uniform(n * 4, 6);
  std::vector<float> v(n * n, 0.0f), out(n * n, -1.0f);
  for (Index j = 0; j < n; ++j) v[j * n + j] = 1.0f;
  ak::Attention<ak::CombinerLogsparse, TestType>({.causal = true})(
      ak::bshd(q.data(), 1, n, 1, 4), ak::bshd(k.data(), 1, n, 1, 4), ak::bshd(v.data(), 1, n, 1, n),
      ak::bshd(out.data(), 1, n, 1, n));
  const float* row5 = out.data() + 5 * n;
  for (Index j = 0; j <= 5; ++j) CHECK(row5[j] > 0.0f);
  CHECK(row5[6] == 0.0f);
  CHECK(row5[7] == 0.0f);
  double sum = 0;
  for (Index j = 0; j < n; ++j) sum += row5[j];
  CHECK(sum == Approx(1.0).epsilon(1e-5));
}
