// Attention<ProbSparse> against reference::probsparse on every backend: random shapes, drawn and
// given sample indices, causal lazy rows (mean and sum), L_Q != L_K, GQA, strided layouts, the
// all-rows-exact limit against dense attention, determinism over thread counts, workspace and
// every error message.
#include <catch2/catch.hpp>

#include <attnkit/mechanism/probsparse.hpp>
#include <attnkit/reference/dense.hpp>
#include <attnkit/reference/probsparse.hpp>

#include "test_util.hpp"

namespace ak = attnkit;
using ak::Index;
using ak::test::Layout;
using ak::test::Tensor4;

namespace {

struct ProbCase {
  Index batch = 1, q_len = 40, kv_len = 40, q_heads = 1, kv_heads = 1, head_dim = 16, v_dim = 0;
  bool causal = false;
  bool lazy_sum = false;
  bool given_samples = false;
  int factor = 2;
  Layout layout = Layout::kBshd;
  std::uint32_t seed = 1;
};

Index v_dim_of(const ProbCase& c) { return c.v_dim > 0 ? c.v_dim : c.head_dim; }
Index out_heads(const ProbCase& c) { return std::max(c.q_heads, c.kv_heads); }

struct ProbRun {
  Tensor4 q, k, v, out;
  explicit ProbRun(const ProbCase& c)
      : q(c.batch, c.q_len, c.q_heads, c.head_dim, c.layout),
        k(c.batch, c.kv_len, c.kv_heads, c.head_dim, c.layout),
        v(c.batch, c.kv_len, c.kv_heads, v_dim_of(c), c.layout),
        out(c.batch, c.q_len, out_heads(c), v_dim_of(c), c.layout) {
    q.fill_uniform(c.seed);
    k.fill_uniform(c.seed + 1);
    v.fill_uniform(c.seed + 2);
  }
};

// The indices the kernel uses: given ones (a different generator) or its own seeded draw.
std::vector<std::int32_t> samples_for(const ProbCase& c, std::uint64_t seed) {
  const Index n = ak::probsparse_samples_per_query(c.factor, c.kv_len);
  std::vector<std::int32_t> samples(static_cast<std::size_t>(c.q_len * n));
  if (c.given_samples) {
    std::mt19937 rng(c.seed + 7);
    for (auto& s : samples) s = static_cast<std::int32_t>(rng() % static_cast<std::uint32_t>(c.kv_len));
  } else if (c.kv_len > 0) {
    ak::probsparse_sample_indices(seed, c.q_len, c.kv_len, n, samples);
  }
  return samples;
}

template <class Backend>
std::vector<float> check_probsparse(const ProbCase& c, Backend backend = {}) {
  INFO("batch " << c.batch << " q_len " << c.q_len << " kv_len " << c.kv_len << " heads " << c.q_heads << "/"
                << c.kv_heads << " dims " << c.head_dim << "/" << v_dim_of(c) << " causal " << c.causal << " lazy_sum "
                << c.lazy_sum << " factor " << c.factor << " given " << c.given_samples);
  ProbRun in(c);
  const std::uint64_t seed = 99 + c.seed;
  const std::vector<std::int32_t> samples = samples_for(c, seed);
  ak::ProbSparse::Options options{.factor = c.factor, .causal = c.causal};
  options.lazy = c.lazy_sum ? ak::ProbSparse::Lazy::kCumulativeSum : ak::ProbSparse::Lazy::kCumulativeMean;
  options.seed = seed;
  ak::Attention<ak::ProbSparse, Backend> attn(options, backend);
  ak::ProbSparse::Args args;
  if (c.given_samples) args.samples = samples;
  attn(in.q.view, in.k.view, in.v.view, in.out.view, args);

  const std::array<Index, 4> shape{c.batch, c.q_len, out_heads(c), v_dim_of(c)};
  std::vector<double> exact(static_cast<std::size_t>(c.batch * c.q_len * out_heads(c) * v_dim_of(c)) + 1);
  std::vector<float> naive(exact.size());
  auto exact_view = ak::View<double, 4>::contiguous(exact.data(), shape);
  auto naive_view = ak::View<float, 4>::contiguous(naive.data(), shape);
  const ak::reference::ProbSparseOptions ref{.factor = c.factor, .causal = c.causal, .lazy_sum = c.lazy_sum};
  ak::reference::probsparse<double>(in.q.view, in.k.view, in.v.view, samples, exact_view, ref);
  ak::reference::probsparse<float>(in.q.view, in.k.view, in.v.view, samples, naive_view, ref);
  const double float_error = ak::test::max_abs_diff(naive_view, exact_view);
  const double error = ak::test::max_abs_diff(in.out.view, exact_view);
  const double magnitude = c.lazy_sum ? static_cast<double>(c.kv_len) : 1.0;
  INFO("kernel error " << error << ", float reference error " << float_error);
  CHECK(error <= ak::test::exact_tolerance(float_error, magnitude));

  std::vector<float> flat;
  for (Index b = 0; b < c.batch; ++b)
    for (Index s = 0; s < c.q_len; ++s)
      for (Index h = 0; h < out_heads(c); ++h)
        for (Index d = 0; d < v_dim_of(c); ++d) flat.push_back(in.out.view(b, s, h, d));
  return flat;
}

}  // namespace

TEST_CASE("probsparse sample and row counts follow c * ceil(ln L)", "[probsparse]") {
  CHECK(ak::probsparse_samples_per_query(5, 96) == 25);  // ceil(ln 96) = 5
  CHECK(ak::probsparse_top_queries(5, 16384) == 50);     // ceil(ln 16384) = 10
  CHECK(ak::probsparse_top_queries(5, 10) == 10);        // capped at L_Q
  CHECK(ak::probsparse_top_queries(5, 1) == 1);          // at least one row
  CHECK(ak::probsparse_samples_per_query(5, 0) == 0);
  std::vector<std::int32_t> a(300), b(300);
  ak::probsparse_sample_indices(7, 30, 17, 10, a);
  ak::probsparse_sample_indices(7, 30, 17, 10, b);
  CHECK(a == b);
  CHECK(*std::min_element(a.begin(), a.end()) >= 0);
  CHECK(*std::max_element(a.begin(), a.end()) < 17);
  ak::probsparse_sample_indices(8, 30, 17, 10, b);
  CHECK(a != b);
}

TEMPLATE_LIST_TEST_CASE("probsparse matches the reference on random shapes", "[probsparse]", ak::test::Backends) {
  std::mt19937 rng(77);
  const std::array<std::pair<Index, Index>, 5> head_maps{{{1, 1}, {2, 1}, {4, 2}, {2, 4}, {3, 3}}};
  const std::array<Index, 5> dims{1, 7, 16, 33, 64};
  for (int trial = 0; trial < 10; ++trial) {
    ProbCase c;
    c.batch = 1 + rng() % 2;
    c.q_len = 1 + rng() % 120;
    c.kv_len = rng() % 2 ? c.q_len : 1 + rng() % 300;
    std::tie(c.q_heads, c.kv_heads) = head_maps[rng() % head_maps.size()];
    c.head_dim = dims[rng() % dims.size()];
    c.v_dim = rng() % 2 ? 0 : dims[rng() % dims.size()];
    c.causal = rng() % 2;
    c.lazy_sum = rng() % 2;
    c.given_samples = rng() % 2;
    c.factor = 1 + static_cast<int>(rng() % 3);
    c.layout = static_cast<Layout>(rng() % 3);
    c.seed = 300 + trial;
    check_probsparse<TestType>(c);
  }
}

TEMPLATE_LIST_TEST_CASE("probsparse edge cases", "[probsparse]", ak::test::Backends) {
  SECTION("length one") { check_probsparse<TestType>({.q_len = 1, .kv_len = 1, .head_dim = 5}); }
  SECTION("L_Q != L_K, non-causal") { check_probsparse<TestType>({.q_len = 24, .kv_len = 200, .head_dim = 19}); }
  SECTION("L_Q > L_K, non-causal") { check_probsparse<TestType>({.q_len = 150, .kv_len = 30}); }
  SECTION("causal, L_Q != L_K (bottom-right; early rows see no key)") {
    check_probsparse<TestType>({.q_len = 90, .kv_len = 60, .causal = true});
    check_probsparse<TestType>({.q_len = 33, .kv_len = 130, .causal = true, .lazy_sum = true});
  }
  SECTION("causal lazy sum, the reference code's cumsum") {
    check_probsparse<TestType>({.q_len = 64, .kv_len = 64, .causal = true, .lazy_sum = true});
  }
  SECTION("GQA and reverse SQA, strided layouts") {
    check_probsparse<TestType>({.q_len = 50, .kv_len = 70, .q_heads = 6, .kv_heads = 2, .layout = Layout::kBhsd});
    check_probsparse<TestType>(
        {.q_len = 41, .kv_len = 41, .q_heads = 2, .kv_heads = 4, .causal = true, .layout = Layout::kPaddedStrides});
  }
  SECTION("given sample indices") {
    check_probsparse<TestType>({.q_len = 77, .kv_len = 77, .causal = true, .given_samples = true});
  }
  SECTION("empty batch and empty sequences") {
    check_probsparse<TestType>({.batch = 0});
    check_probsparse<TestType>({.q_len = 0, .kv_len = 10});
    check_probsparse<TestType>({.q_len = 6, .kv_len = 0});
  }
}

TEMPLATE_LIST_TEST_CASE("probsparse with every row selected is dense attention", "[probsparse]", ak::test::Backends) {
  // u = min(L_Q, c ceil(ln L_Q)) = L_Q once c is large: every row is exact.
  for (bool causal : {false, true}) {
    Tensor4 q(2, 20, 2, 24, Layout::kBshd), k(2, 31, 2, 24, Layout::kBshd), v(2, 31, 2, 24, Layout::kBshd);
    Tensor4 out(2, 20, 2, 24, Layout::kBshd);
    q.fill_uniform(1);
    k.fill_uniform(2);
    v.fill_uniform(3);
    ak::Attention<ak::ProbSparse, TestType> attn({.factor = 20, .causal = causal});
    attn(q.view, k.view, v.view, out.view);
    std::vector<double> exact(2 * 20 * 2 * 24), lse(2 * 20 * 2);
    auto exact_view = ak::View<double, 4>::contiguous(exact.data(), {2, 20, 2, 24});
    ak::reference::dense<double>(q.view, k.view, v.view, exact_view,
                                 ak::View<double, 3>::contiguous(lse.data(), {2, 20, 2}), {.causal = causal});
    CHECK(ak::test::max_abs_diff(out.view, exact_view) < 1e-5);
  }
}

TEST_CASE("probsparse results do not depend on the backend's thread count", "[probsparse]") {
  const ProbCase c{.batch = 2, .q_len = 100, .kv_len = 100, .q_heads = 4, .kv_heads = 2, .causal = true};
  const auto one = check_probsparse<ak::OpenMP<>>(c, ak::OpenMP<>{1});
  const auto two = check_probsparse<ak::OpenMP<>>(c, ak::OpenMP<>{2});
  const auto three = check_probsparse<ak::OpenMP<>>(c, ak::OpenMP<>{3});
  CHECK(one == two);
  CHECK(one == three);
}

TEST_CASE("probsparse uses a caller workspace and reports its cost", "[probsparse]") {
  Tensor4 q(1, 64, 2, 16, Layout::kBshd), k(1, 64, 2, 16, Layout::kBshd), v(1, 64, 2, 16, Layout::kBshd);
  Tensor4 a(1, 64, 2, 16, Layout::kBshd), b(1, 64, 2, 16, Layout::kBshd);
  q.fill_uniform(1);
  k.fill_uniform(2);
  v.fill_uniform(3);
  ak::Attention<ak::ProbSparse, ak::OpenMP<>> attn({.seed = 5});
  const std::size_t bytes = attn.workspace_bytes(q.view, k.view, v.view);
  CHECK(bytes > 0);
  std::vector<std::byte> owner(bytes + 64);
  void* aligned = owner.data();
  std::size_t space = owner.size();
  std::align(64, bytes, aligned, space);
  attn(q.view, k.view, v.view, a.view, {.workspace = {aligned, bytes}});
  attn(q.view, k.view, v.view, b.view);
  CHECK(a.data == b.data);
  // U = u = 5 * ceil(ln 64) = 25: 2 heads x (2*64*25*16 + 2*25*64*32 + 64*16).
  CHECK(attn.cost(q.view, k.view, v.view).flops == 2.0 * (2 * 64 * 25 * 16 + 2 * 25 * 64 * 32 + 64 * 16));
  CHECK(attn.name().rfind("probsparse/", 0) == 0);
}

TEST_CASE("probsparse rejects bad input naming the argument", "[probsparse]") {
  using Catch::Matchers::Contains;
  Tensor4 q(1, 8, 2, 4, Layout::kBshd), k(1, 10, 2, 4, Layout::kBshd), v(1, 10, 2, 4, Layout::kBshd);
  Tensor4 out(1, 8, 2, 4, Layout::kBshd);
  q.fill_uniform(1);
  k.fill_uniform(2);
  v.fill_uniform(3);
  ak::Attention<ak::ProbSparse, ak::Scalar> attn({.factor = 1});
  CHECK_THROWS_WITH((ak::Attention<ak::ProbSparse, ak::Scalar>({.factor = 0})),
                    Contains("options.factor is 0, expected >= 1"));
  CHECK_THROWS_WITH((ak::Attention<ak::ProbSparse, ak::Scalar>({.scale = -1.0f})),
                    Contains("options.scale is -1, expected a finite value > 0"));
  CHECK_THROWS_WITH((ak::Attention<ak::ProbSparse, ak::Scalar>({.scale = NAN})), Contains("options.scale is nan"));
  // U = ceil(ln 10) = 3 samples per query.
  std::vector<std::int32_t> samples(8 * 3, 0);
  std::vector<std::int32_t> short_samples(5, 0);
  CHECK_THROWS_WITH(attn(q.view, k.view, v.view, out.view, {.samples = short_samples}),
                    Contains("args.samples: 5 entries, expected 24 (q_len 8 x 3 samples per query)"));
  samples[7] = 10;
  CHECK_THROWS_WITH(attn(q.view, k.view, v.view, out.view, {.samples = samples}),
                    Contains("args.samples[7] is 10, expected in [0, 10)"));
  samples[7] = -1;
  CHECK_THROWS_WITH(attn(q.view, k.view, v.view, out.view, {.samples = samples}),
                    Contains("args.samples[7] is -1, expected in [0, 10)"));
  Tensor4 k_dim(1, 10, 2, 5, Layout::kBshd), v_len(1, 9, 2, 4, Layout::kBshd), out_len(1, 7, 2, 4, Layout::kBshd);
  Tensor4 k_heads(1, 10, 3, 4, Layout::kBshd);
  CHECK_THROWS_WITH(attn(q.view, k_dim.view, v.view, out.view), Contains("k: head_dim 5, expected 4"));
  CHECK_THROWS_WITH(attn(q.view, k.view, v_len.view, out.view), Contains("v: seq 9, expected 10"));
  CHECK_THROWS_WITH(attn(q.view, k_heads.view, k_heads.view, out.view), Contains("k: heads 3, expected a divisor"));
  CHECK_THROWS_WITH(attn(q.view, k.view, v.view, out_len.view), Contains("out: seq 7, expected 8"));
  const ak::View<const float, 4> null_q(nullptr, q.view.extents(), q.view.strides());
  CHECK_THROWS_WITH(attn(null_q, k.view, v.view, out.view), Contains("q: data is null"));
}
