// Attention<Performer> against reference::performer on every backend (same W, so the comparison is
// exact up to rounding): random shapes, the edge cases of design.md section 4, padded batches,
// determinism across thread counts; the seeded generator of W; FAVOR+'s error against exact
// softmax attention falling as the feature count grows; every error message.
#include <catch2/catch.hpp>

#include <attnkit/reference/dense.hpp>
#include <attnkit/reference/performer.hpp>
#include <cstring>
#include <memory>
#include <new>

#include "test_util.hpp"

namespace ak = attnkit;
using ak::Index;
using ak::test::Layout;
using ak::test::Tensor4;

namespace {

struct PerformerCase {
  Index batch = 1, q_len = 1, kv_len = 1, q_heads = 1, kv_heads = 1, head_dim = 8, v_dim = 0, features = 32;
  bool causal = false;
  Layout layout = Layout::kBshd;
  std::vector<std::int32_t> q_lengths{}, kv_lengths{};
  std::uint32_t seed = 1;
};

Index out_heads(const PerformerCase& c) { return std::max(c.q_heads, c.kv_heads); }
Index v_dim(const PerformerCase& c) { return c.v_dim > 0 ? c.v_dim : c.head_dim; }

// Runs the kernel and both references; checks the output; returns it flattened.
template <class Backend>
std::vector<float> check_performer(const PerformerCase& c, Backend backend = {}) {
  INFO("batch " << c.batch << " q_len " << c.q_len << " kv_len " << c.kv_len << " heads " << c.q_heads << "/"
                << c.kv_heads << " dims " << c.head_dim << "/" << v_dim(c) << " features " << c.features << " causal "
                << c.causal << " layout " << int(c.layout));
  Tensor4 q(c.batch, c.q_len, c.q_heads, c.head_dim, c.layout), k(c.batch, c.kv_len, c.kv_heads, c.head_dim, c.layout),
      v(c.batch, c.kv_len, c.kv_heads, v_dim(c), c.layout), out(c.batch, c.q_len, out_heads(c), v_dim(c), c.layout);
  q.fill_uniform(c.seed);
  k.fill_uniform(c.seed + 1);
  v.fill_uniform(c.seed + 2);
  const ak::RandomProjection w = ak::gaussian_orthogonal_features(c.features, c.head_dim, c.seed + 3);
  const ak::SeqLengths lengths{c.q_lengths, c.kv_lengths};
  ak::Attention<ak::Performer, Backend> attn({.causal = c.causal}, backend);
  attn(q.view, k.view, v.view, w.view(), out.view, {.lengths = lengths});

  const ak::test::ReferenceOutputs reference({c.batch, c.q_len, out_heads(c), v_dim(c)});
  ak::reference::performer<double>(q.view, k.view, v.view, w.view(), reference.exact, {.causal = c.causal}, lengths);
  ak::reference::performer<float>(q.view, k.view, v.view, w.view(), reference.naive, {.causal = c.causal}, lengths);
  ak::test::check_exact(out.view, reference);

  return ak::test::flatten(out.view);
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("performer matches the reference on random shapes", "[performer]", ak::test::Backends) {
  std::mt19937 rng(5005);
  const std::array<std::pair<Index, Index>, 5> head_maps{{{1, 1}, {2, 1}, {4, 2}, {2, 4}, {1, 3}}};
  const std::array<Index, 4> dims{1, 5, 16, 33};
  const std::array<Index, 4> features{1, 7, 16, 40};
  for (int trial = 0; trial < 8; ++trial) {
    PerformerCase c;
    c.batch = 1 + rng() % 2;
    c.q_len = 1 + rng() % 130;
    c.kv_len = rng() % 2 ? c.q_len : 1 + rng() % 150;
    std::tie(c.q_heads, c.kv_heads) = head_maps[rng() % head_maps.size()];
    c.head_dim = dims[rng() % dims.size()];
    c.v_dim = rng() % 2 ? 0 : dims[rng() % dims.size()];
    c.features = features[rng() % features.size()];
    c.causal = rng() % 2;
    c.layout = static_cast<Layout>(rng() % 3);
    c.seed = 500 + trial;
    check_performer<TestType>(c);
  }
}

TEMPLATE_LIST_TEST_CASE("performer edge cases", "[performer]", ak::test::Backends) {
  SECTION("length one") {
    check_performer<TestType>({.head_dim = 7, .features = 9});
    check_performer<TestType>({.head_dim = 7, .features = 9, .causal = true});
  }
  SECTION("lengths, dims and features off every chunk and vector width") {
    check_performer<TestType>({.q_len = 131, .kv_len = 97, .q_heads = 2, .head_dim = 13, .v_dim = 19, .features = 29});
    check_performer<TestType>(
        {.q_len = 150, .kv_len = 150, .head_dim = 24, .v_dim = 9, .features = 50, .causal = true});
  }
  SECTION("the shared attention edge cases") {
    for (const auto& [what, c] : ak::test::attention_edge_cases<PerformerCase>()) {
      INFO(what);
      check_performer<TestType>(c);
    }
  }
}

TEST_CASE("performer results are bitwise equal across backends and thread counts", "[performer]") {
  for (bool causal : {false, true}) {
    const PerformerCase c{.batch = 2,
                          .q_len = 150,
                          .kv_len = 150,
                          .q_heads = 4,
                          .kv_heads = 2,
                          .head_dim = 32,
                          .features = 64,
                          .causal = causal};
    const std::vector<float> one = check_performer<ak::Simd<>>(c);
    const std::vector<float> single = check_performer<ak::OpenMP<>>(c, ak::OpenMP<>{.num_threads = 1});
    const std::vector<float> pair = check_performer<ak::OpenMP<>>(c, ak::OpenMP<>{.num_threads = 2});
    CHECK(std::memcmp(one.data(), single.data(), one.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(one.data(), pair.data(), one.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("gaussian orthogonal features: seeded, orthogonal blocks, both row norms", "[performer]") {
  const Index d = 16, m = 40;  // two full blocks and a partial one
  const ak::RandomProjection chi = ak::gaussian_orthogonal_features(m, d, 42);
  const ak::RandomProjection same = ak::gaussian_orthogonal_features(m, d, 42);
  const ak::RandomProjection other = ak::gaussian_orthogonal_features(m, d, 43);
  const ak::RandomProjection fixed = ak::gaussian_orthogonal_features(m, d, 42, ak::FeatureNorms::kSqrtDim);
  CHECK(chi.data == same.data);
  CHECK(chi.data != other.data);
  const auto w = fixed.view();
  auto dot = [&](const ak::View<const float, 2>& x, Index a, Index b) {
    double sum = 0;
    for (Index f = 0; f < d; ++f) sum += double(x(a, f)) * x(b, f);
    return sum;
  };
  for (Index a = 0; a < m; ++a) {
    CHECK(dot(w, a, a) == Approx(double(d)).epsilon(1e-5));
    for (Index b = a + 1; b < m && b / d == a / d; ++b) CHECK(std::abs(dot(w, a, b)) < 1e-4);
  }
  // Chi norms: the same directions, lengths of Gaussian 16-vectors (mean about 3.9, spread).
  double mean = 0, low = 1e9, high = 0;
  for (Index a = 0; a < m; ++a) {
    const double norm = std::sqrt(dot(chi.view(), a, a));
    for (Index f = 0; f < d; ++f) CHECK(chi.view()(a, f) / norm == Approx(w(a, f) / 4.0).margin(1e-5));
    mean += norm / m;
    low = std::min(low, norm);
    high = std::max(high, norm);
  }
  CHECK(mean == Approx(3.9).margin(0.4));
  CHECK(high - low > 0.5);
  CHECK(ak::gaussian_orthogonal_features(ak::Performer::kDefaultFeatures, 64, 1).data.size() == 256 * 64);
}

TEST_CASE("FAVOR+ error against exact softmax attention falls as features grow", "[performer]") {
  // Fixed seeds: the same q, k, v and, per m, the generator's W for seed 9. q and k entries in
  // [-0.5, 0.5] (|q| about 1.2); FAVOR+'s variance grows like exp(|q|² + |k|²), so with entries in
  // [-1.5, 1.5] the error stays near 1 up to m = 512 (measured: see the README).
  const Index n = 256, d = 16;
  Tensor4 q(1, n, 1, d, Layout::kBshd), k(1, n, 1, d, Layout::kBshd), v(1, n, 1, d, Layout::kBshd);
  q.fill_uniform(1, -0.5f, 0.5f);
  k.fill_uniform(2, -0.5f, 0.5f);
  v.fill_uniform(3);
  for (bool causal : {false, true}) {
    std::vector<double> exact(n * d);
    const auto exact_view = ak::bshd(exact.data(), 1, n, 1, d);
    ak::reference::dense<double>(q.view, k.view, v.view, exact_view, ak::View<double, 3>{}, {.causal = causal});
    double previous = INFINITY;
    for (Index m : {8, 32, 128, 512}) {
      std::vector<float> out(n * d);
      const ak::RandomProjection w = ak::gaussian_orthogonal_features(m, d, 9);
      ak::Attention<ak::Performer, ak::Simd<>>({.causal = causal})(q.view, k.view, v.view, w.view(),
                                                                   ak::bshd(out.data(), 1, n, 1, d));
      double diff = 0, norm = 0;
      for (std::size_t i = 0; i < out.size(); ++i) {
        diff += (out[i] - exact[i]) * (out[i] - exact[i]);
        norm += exact[i] * exact[i];
      }
      const double relative = std::sqrt(diff / norm);
      INFO("causal " << causal << " m " << m << " relative error " << relative);
      CHECK(relative < previous);
      previous = relative;
    }
    CHECK(previous < 0.06);  // measured 0.039 (bidirectional) at m = 512
  }
}

TEST_CASE("performer rejects bad input with a message naming the argument", "[performer][errors]") {
  std::vector<float> buf(4096, 0.0f), out_buf(4096, 0.0f);
  float* p = buf.data();      // inputs (they may share memory)
  float* o = out_buf.data();  // outputs, which must not
  const auto q = ak::bshd(p, 2, 4, 4, 8), k = ak::bshd(p, 2, 6, 2, 8), v = ak::bshd(p, 2, 6, 2, 8),
             out = ak::bshd(o, 2, 4, 4, 8);
  const ak::RandomProjection w = ak::gaussian_orthogonal_features(16, 8, 1);
  ak::Attention<ak::Performer, ak::Simd<>> attn;
  using Catch::Contains;
  CHECK_NOTHROW(attn(q, k, v, w.view(), out));
  CHECK_THROWS_AS(attn(q, ak::bshd(p, 2, 6, 2, 16), v, w.view(), out), ak::Error);
  CHECK_THROWS_WITH(attn(q, ak::bshd(p, 2, 6, 2, 16), v, w.view(), out), Contains("k: head_dim 16, expected 8"));
  CHECK_THROWS_WITH(attn(q, k, ak::bshd(p, 2, 5, 2, 8), w.view(), out), Contains("v: seq 5, expected 6"));
  CHECK_THROWS_WITH(attn(q, k, v, w.view(), ak::bshd(p, 2, 4, 2, 8)), Contains("out: heads 2, expected 4"));
  CHECK_THROWS_WITH(attn(ak::bshd(static_cast<float*>(nullptr), 2, 4, 4, 8), k, v, w.view(), out),
                    Contains("q: data is null"));
  const ak::RandomProjection w_wide = ak::gaussian_orthogonal_features(16, 12, 1);
  CHECK_THROWS_WITH(attn(q, k, v, w_wide.view(), out), Contains("w: columns 12, expected 8 (q's head_dim)"));
  CHECK_THROWS_WITH(attn(q, k, v, ak::View<const float, 2>(p, {0, 8}, {8, 1}), out),
                    Contains("w: features 0, expected >= 1"));
  CHECK_THROWS_WITH(attn(q, k, v, ak::View<const float, 2>(nullptr, {16, 8}, {8, 1}), out),
                    Contains("w: data is null"));
  CHECK_THROWS_WITH(attn(q, k, v, ak::View<const float, 2>(p, {16, 8}, {16, 2}), out),
                    Contains("w: stride of the last axis is 2, expected 1"));
  CHECK_THROWS_WITH(attn.cost(q, k, v, w_wide.view()), Contains("w: columns 12, expected 8"));
  CHECK_THROWS_WITH(ak::Attention<ak::Performer>({.stabilizer = 0.0f}),
                    Contains("options.stabilizer is 0, expected a finite value > 0"));
  CHECK_THROWS_WITH(ak::Attention<ak::Performer>({.stabilizer = INFINITY}), Contains("options.stabilizer is inf"));
  const std::vector<std::int32_t> too_long{4, 9};
  CHECK_THROWS_WITH(attn(q, k, v, w.view(), out, {.lengths = {.kv = too_long}}),
                    Contains("lengths.kv[1] is 9, expected in [0, 6]"));
  CHECK_THROWS_WITH(ak::gaussian_orthogonal_features(0, 8, 1), Contains("features: 0, expected >= 1"));
  CHECK_THROWS_WITH(ak::gaussian_orthogonal_features(8, -1, 1), Contains("head_dim: -1, expected >= 1"));
}

TEST_CASE("linear and performer run in exactly workspace_bytes of caller memory", "[performer][linear]") {
  const Index n = 300, heads = 4, dim = 24;
  const std::vector<float> q = ak::test::uniform(n * heads * dim, 1), k = ak::test::uniform(n * heads * dim, 2),
                           v = ak::test::uniform(n * heads * dim, 3);
  const auto qv = ak::bshd(q.data(), 1, n, heads, dim), kv = ak::bshd(k.data(), 1, n, heads, dim),
             vv = ak::bshd(v.data(), 1, n, heads, dim);
  std::vector<float> out(q.size()), expected(q.size());
  const auto ov = ak::bshd(out.data(), 1, n, heads, dim);
  struct Free {
    void operator()(void* p) const { ::operator delete (p, std::align_val_t{64}); }
  };
  const ak::RandomProjection w = ak::gaussian_orthogonal_features(48, dim, 5);
  ak::Attention<ak::Performer, ak::OpenMP<>> performer({.causal = true});
  const std::size_t performer_bytes = performer.workspace_bytes(qv, kv, vv, w.view());
  std::unique_ptr<void, Free> block(::operator new (performer_bytes, std::align_val_t{64}));
  performer(qv, kv, vv, w.view(), ak::bshd(expected.data(), 1, n, heads, dim));
  performer(qv, kv, vv, w.view(), ov, {.workspace = {block.get(), performer_bytes}});
  CHECK(out == expected);
  CHECK_THROWS_WITH(performer(qv, kv, vv, w.view(), ov, {.workspace = {block.get(), performer_bytes - 64}}),
                    Catch::Contains("workspace: ") && Catch::Contains("expected >= "));

  ak::Attention<ak::Linear, ak::OpenMP<>> linear;
  const std::size_t linear_bytes = linear.workspace_bytes(qv, kv, vv);
  CHECK(linear_bytes <= performer_bytes);
  linear(qv, kv, vv, ak::bshd(expected.data(), 1, n, heads, dim));
  linear(qv, kv, vv, ov, {.workspace = {block.get(), linear_bytes}});
  CHECK(out == expected);
  CHECK_THROWS_WITH(linear(qv, kv, vv, ov, {.workspace = {block.get(), linear_bytes - 64}}),
                    Catch::Contains("workspace: ") && Catch::Contains("expected >= "));
}
