// Attention<EcoFormer> against reference::ecoformer on every backend (same anchors, mvec, A and
// sigma, so the comparison is exact up to rounding): random shapes, b in {8, 16, 32, 64}, fixed
// and per-head sigma, the edge cases of design.md section 4, determinism across thread counts,
// cost, and every error message. Calibration tests live in ecoformer_calibration_test.cpp.
#include <catch2/catch.hpp>

#include <attnkit/reference/ecoformer.hpp>
#include <cstring>
#include <optional>

#include "test_util.hpp"

namespace ak = attnkit;
using ak::Index;
using ak::test::Layout;
using ak::test::Tensor4;

namespace {

struct EcoCase {
  Index batch = 1, q_len = 1, kv_len = 1, q_heads = 1, kv_heads = 1, head_dim = 8, v_dim = 0;
  Index bits = 16, anchors = 12;
  bool causal = false;
  std::optional<float> sigma{};
  Layout layout = Layout::kBshd;
  std::uint32_t seed = 1;
  std::vector<std::int32_t> q_lengths{}, kv_lengths{};  // padded batches: real lengths per entry
};

Index out_heads(const EcoCase& c) { return std::max(c.q_heads, c.kv_heads); }
Index v_dim(const EcoCase& c) { return c.v_dim > 0 ? c.v_dim : c.head_dim; }

// Inputs and hash parameters: anchors drawn like the rows (so kernel values spread over (0, 1)),
// mvec 0.3, A standard-normal-ish uniform.
struct EcoRun {
  Tensor4 q, k, v;
  std::vector<float> anchors, mvec, a;
  ak::EcoFormerHash hash;
  explicit EcoRun(const EcoCase& c)
      : q(c.batch, c.q_len, c.q_heads, c.head_dim, c.layout),
        k(c.batch, c.kv_len, c.kv_heads, c.head_dim, c.layout),
        v(c.batch, c.kv_len, c.kv_heads, v_dim(c), c.layout),
        anchors(ak::test::uniform(static_cast<std::size_t>(c.anchors * c.head_dim), c.seed + 3)),
        mvec(static_cast<std::size_t>(c.anchors), 0.3f),
        a(ak::test::uniform(static_cast<std::size_t>(c.kv_heads * c.bits * c.anchors), c.seed + 4, -2.0f, 2.0f)) {
    q.fill_uniform(c.seed);
    k.fill_uniform(c.seed + 1);
    v.fill_uniform(c.seed + 2);
    hash.anchors = ak::View<const float, 2>::contiguous(anchors.data(), {c.anchors, c.head_dim});
    hash.mvec = ak::View<const float, 1>::contiguous(mvec.data(), {c.anchors});
    hash.a = ak::View<const float, 3>::contiguous(a.data(), {c.kv_heads, c.bits, c.anchors});
  }
};

// Runs the kernel and both references; checks the output; returns it flattened.
template <class Backend>
std::vector<float> check_eco(const EcoCase& c, Backend backend = {}) {
  INFO("batch " << c.batch << " q_len " << c.q_len << " kv_len " << c.kv_len << " heads " << c.q_heads << "/"
                << c.kv_heads << " dims " << c.head_dim << "/" << v_dim(c) << " bits " << c.bits << " anchors "
                << c.anchors << " causal " << c.causal << " sigma " << c.sigma.value_or(0) << " layout "
                << int(c.layout) << " lengths " << c.q_lengths.size() << "/" << c.kv_lengths.size());
  EcoRun in(c);
  Tensor4 out(c.batch, c.q_len, out_heads(c), v_dim(c), c.layout);
  const ak::SeqLengths lengths{c.q_lengths, c.kv_lengths};
  ak::Attention<ak::EcoFormer, Backend> attn({.causal = c.causal, .sigma = c.sigma}, backend);
  attn(in.q.view, in.k.view, in.v.view, in.hash, out.view, {.lengths = lengths});

  const std::array<Index, 4> out_shape{c.batch, c.q_len, out_heads(c), v_dim(c)};
  const std::size_t n = static_cast<std::size_t>(c.batch * c.q_len * out_heads(c) * v_dim(c)) + 1;
  std::vector<double> exact(n);
  std::vector<float> naive(n);
  const auto exact_view = ak::View<double, 4>::contiguous(exact.data(), out_shape);
  const auto naive_view = ak::View<float, 4>::contiguous(naive.data(), out_shape);
  const ak::reference::EcoFormerOptions options{
      .causal = c.causal, .sigma = c.sigma.value_or(0.0f), .lengths = lengths};
  std::vector<double> y_exact;
  std::vector<float> y_naive;
  ak::reference::ecoformer<double>(in.q.view, in.k.view, in.v.view, in.hash.anchors, in.hash.mvec, in.hash.a,
                                   exact_view, options, &y_exact);
  ak::reference::ecoformer<float>(in.q.view, in.k.view, in.v.view, in.hash.anchors, in.hash.mvec, in.hash.a, naive_view,
                                  options, &y_naive);
  // Codes are signs: a comparison is meaningful where every projection is farther from 0 than
  // the rounding of a float implementation could move it (kernel allowed 2x, as outputs). The
  // seeds are chosen so; a failure here means an unlucky seed, not a kernel bug.
  double y_error = 0, margin = INFINITY;
  for (std::size_t i = 0; i < y_exact.size(); ++i) {
    y_error = std::max(y_error, std::abs(double(y_naive[i]) - y_exact[i]));
    margin = std::min(margin, std::abs(y_exact[i]));
  }
  INFO("smallest |y| " << margin << ", float error of y " << y_error);
  REQUIRE(margin > ak::test::exact_tolerance(y_error));

  const double float_error = ak::test::max_abs_diff(naive_view, exact_view);
  const double error = ak::test::max_abs_diff(out.view, exact_view);
  INFO("kernel error " << error << ", float reference error " << float_error);
  CHECK(error <= ak::test::exact_tolerance(float_error));

  std::vector<float> flat;
  for (Index b = 0; b < c.batch; ++b)
    for (Index s = 0; s < c.q_len; ++s)
      for (Index h = 0; h < out_heads(c); ++h)
        for (Index d = 0; d < v_dim(c); ++d) flat.push_back(out.view(b, s, h, d));
  return flat;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("ecoformer matches the reference on random shapes, b in {8, 16, 32, 64}", "[ecoformer]",
                        ak::test::Backends) {
  std::mt19937 rng(7007);
  const std::array<std::pair<Index, Index>, 6> head_maps{{{1, 1}, {2, 1}, {4, 2}, {3, 3}, {2, 4}, {1, 3}}};
  const std::array<Index, 4> dims{1, 5, 16, 33};
  for (Index bits : {8, 16, 32, 64})
    for (int trial = 0; trial < 4; ++trial) {
      EcoCase c;
      c.bits = bits;
      c.batch = 1 + rng() % 2;
      c.q_len = 1 + rng() % 120;
      c.kv_len = rng() % 2 ? c.q_len : 1 + rng() % 150;
      std::tie(c.q_heads, c.kv_heads) = head_maps[rng() % head_maps.size()];
      c.head_dim = dims[rng() % dims.size()];
      c.v_dim = rng() % 2 ? 0 : dims[rng() % dims.size()];
      c.anchors = 1 + rng() % 40;
      c.causal = rng() % 2;
      if (rng() % 2) c.sigma = 0.25f + static_cast<float>(rng() % 8);
      c.layout = static_cast<Layout>(rng() % 3);
      c.seed = 600 + static_cast<std::uint32_t>(bits) + trial;
      check_eco<TestType>(c);
    }
}

TEMPLATE_LIST_TEST_CASE("ecoformer edge cases", "[ecoformer]", ak::test::Backends) {
  SECTION("length one, one bit, one anchor") {
    check_eco<TestType>({.head_dim = 7});
    check_eco<TestType>({.head_dim = 7, .bits = 1, .anchors = 1, .causal = true});
  }
  SECTION("lengths and dims off every chunk and vector width; 64 bits") {
    check_eco<TestType>({.q_len = 131, .kv_len = 197, .q_heads = 2, .head_dim = 13, .v_dim = 19, .bits = 64});
    check_eco<TestType>({.q_len = 193, .kv_len = 193, .head_dim = 24, .v_dim = 9, .bits = 64, .causal = true});
  }
  SECTION("GQA, MQA and reverse SQA head maps") {
    check_eco<TestType>({.q_len = 70, .kv_len = 70, .q_heads = 8, .kv_heads = 2, .head_dim = 16, .causal = true});
    check_eco<TestType>({.q_len = 20, .kv_len = 40, .q_heads = 6, .kv_heads = 1, .head_dim = 16});
    check_eco<TestType>({.q_len = 20, .kv_len = 40, .q_heads = 2, .kv_heads = 6, .head_dim = 16, .causal = true});
  }
  SECTION("causal with q_len < kv_len and q_len > kv_len (rows that see no key)") {
    check_eco<TestType>({.q_len = 17, .kv_len = 150, .q_heads = 4, .kv_heads = 2, .head_dim = 32, .causal = true});
    check_eco<TestType>({.q_len = 150, .kv_len = 23, .q_heads = 2, .head_dim = 32, .causal = true});
  }
  SECTION("strided layouts, fixed sigma") {
    check_eco<TestType>({.batch = 2,
                         .q_len = 33,
                         .kv_len = 70,
                         .q_heads = 4,
                         .kv_heads = 2,
                         .head_dim = 20,
                         .causal = true,
                         .sigma = 1.5f,
                         .layout = Layout::kBhsd});
    check_eco<TestType>({.batch = 2,
                         .q_len = 33,
                         .kv_len = 70,
                         .q_heads = 4,
                         .kv_heads = 2,
                         .head_dim = 20,
                         .sigma = 3.0f,
                         .layout = Layout::kPaddedStrides});
  }
  SECTION("padded batches: real lengths per entry, empty entries, causal alignment per entry") {
    check_eco<TestType>({.batch = 3,
                         .q_len = 70,
                         .kv_len = 90,
                         .q_heads = 4,
                         .kv_heads = 2,
                         .head_dim = 16,
                         .q_lengths = {70, 13, 0},
                         .kv_lengths = {41, 90, 7}});
    check_eco<TestType>({.batch = 3,
                         .q_len = 70,
                         .kv_len = 90,
                         .q_heads = 2,
                         .head_dim = 12,
                         .v_dim = 9,
                         .bits = 32,
                         .causal = true,
                         .layout = Layout::kBhsd,
                         .q_lengths = {70, 5, 33},
                         .kv_lengths = {90, 0, 20}});
    check_eco<TestType>({.batch = 2,
                         .q_len = 64,
                         .kv_len = 64,
                         .head_dim = 8,
                         .causal = true,
                         .sigma = 2.0f,
                         .q_lengths = {64, 17},
                         .kv_lengths = {}});
  }
  SECTION("empty batch, no queries, no keys") {
    check_eco<TestType>({.batch = 0, .q_len = 5, .kv_len = 5});
    check_eco<TestType>({.q_len = 0, .kv_len = 5, .causal = true});
    check_eco<TestType>({.q_len = 4, .kv_len = 0});
    check_eco<TestType>({.q_len = 4, .kv_len = 0, .causal = true});
  }
}

TEST_CASE("ecoformer weights are the paper's: equal codes give the mean of the values", "[ecoformer]") {
  // A = 0 makes every y = 0, so every code is all -1 bits: w_ij = b + b + 1 for every pair and
  // the output is the plain mean of the visible values (the reference code's (b + 1) v_i
  // numerator would not give a mean).
  const Index n = 9, d = 4, bits = 8;
  std::vector<float> q = ak::test::uniform(n * d, 1), k = ak::test::uniform(n * d, 2), v = ak::test::uniform(n * d, 3);
  std::vector<float> anchors = ak::test::uniform(3 * d, 4), mvec(3, 0.0f), a(bits * 3, 0.0f), out(n * d);
  const ak::EcoFormerHash hash{ak::View<const float, 2>::contiguous(anchors.data(), {3, d}),
                               ak::View<const float, 1>::contiguous(mvec.data(), {3}),
                               ak::View<const float, 3>::contiguous(a.data(), {1, bits, 3})};
  ak::Attention<ak::EcoFormer, ak::Simd<>>({.causal = true})(
      ak::bshd(q.data(), 1, n, 1, d), ak::bshd(k.data(), 1, n, 1, d), ak::bshd(v.data(), 1, n, 1, d), hash,
      ak::bshd(out.data(), 1, n, 1, d));
  for (Index i = 0; i < n; ++i)
    for (Index c = 0; c < d; ++c) {
      double mean = 0;
      for (Index j = 0; j <= i; ++j) mean += v[j * d + c] / double(i + 1);
      CHECK(out[i * d + c] == Approx(mean).epsilon(1e-5).margin(1e-6));
    }
}

TEST_CASE("ecoformer results are bitwise equal across backends and thread counts", "[ecoformer]") {
  for (bool causal : {false, true}) {
    const EcoCase c{.batch = 2,
                    .q_len = 150,
                    .kv_len = 150,
                    .q_heads = 4,
                    .kv_heads = 2,
                    .head_dim = 24,
                    .bits = 32,
                    .anchors = 20,
                    .causal = causal,
                    .seed = 41};
    const std::vector<float> one = check_eco<ak::Simd<>>(c);
    const std::vector<float> single = check_eco<ak::OpenMP<>>(c, ak::OpenMP<>{.num_threads = 1});
    const std::vector<float> pair = check_eco<ak::OpenMP<>>(c, ak::OpenMP<>{.num_threads = 2});
    CHECK(std::memcmp(one.data(), single.data(), one.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(one.data(), pair.data(), one.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("ecoformer runs in exactly workspace_bytes of caller memory", "[ecoformer]") {
  const EcoCase c{.q_len = 100, .kv_len = 90, .q_heads = 4, .kv_heads = 2, .head_dim = 16, .causal = true};
  EcoRun in(c);
  Tensor4 out(1, c.q_len, 4, 16, Layout::kBshd);
  ak::Attention<ak::EcoFormer, ak::OpenMP<>> attn({.causal = true}, ak::OpenMP<>{.num_threads = 2});
  const std::size_t bytes = attn.workspace_bytes(in.q.view, in.k.view, in.v.view, in.hash);
  REQUIRE(bytes > 0);
  void* block = ::operator new (bytes, std::align_val_t{64});
  attn(in.q.view, in.k.view, in.v.view, in.hash, out.view, {.workspace = {block, bytes}});
  std::vector<float> got(out.data);
  attn(in.q.view, in.k.view, in.v.view, in.hash, out.view);
  CHECK(std::memcmp(got.data(), out.data.data(), got.size() * sizeof(float)) == 0);
  CHECK_THROWS_WITH(attn(in.q.view, in.k.view, in.v.view, in.hash, out.view, {.workspace = {block, bytes - 1}}),
                    Catch::Matchers::Contains("workspace:"));
  ::operator delete (block, std::align_val_t{64});
}

TEST_CASE("ecoformer cost counts the hash and the additions of the sums", "[ecoformer]") {
  const float* none = reinterpret_cast<const float*>(16);
  const ak::EcoFormerHash hash{ak::View<const float, 2>(none, {32, 64}, {64, 1}),
                               ak::View<const float, 1>(none, {32}, {1}),
                               ak::View<const float, 3>(none, {8, 16, 32}, {512, 32, 1})};
  auto flops = [&](Index n, bool causal) {
    const auto x = ak::bshd(none, 1, n, 8, 64);
    return ak::Attention<ak::EcoFormer, ak::Simd<>>({.causal = causal}).cost(x, x, x, hash).flops;
  };
  // Per token and head: hashing q and k 2 * 2 * 32 * (64 + 16). Non-causal: keys 4 * 64 (four
  // nibbles), queries (4 + 2) * 64, and per head the tables 64 * (16 + 4 * (4 * 16 + 32 - 4)).
  // Causal: keys 17 * 64, queries 18 * 64.
  CHECK(flops(4096, false) == Approx(8.0 * 4096 * (4 * 32 * 80 + 4 * 64 + 6 * 64) + 8.0 * 64 * (16 + 4 * 92)));
  CHECK(flops(4096, true) == Approx(8.0 * 4096 * (4 * 32 * 80 + 17 * 64 + 18 * 64)).epsilon(1e-9));
  CHECK(flops(8192, true) == Approx(2 * flops(4096, true)).epsilon(1e-9));
}

TEST_CASE("ecoformer rejects bad input with a message naming the argument", "[ecoformer]") {
  using Catch::Matchers::Contains;
  std::vector<float> buffer(4096, 0.5f), out_buffer(4096, 0.0f);
  const float* p = buffer.data();  // inputs (they may share memory)
  float* w = out_buffer.data();    // outputs, which must not
  const auto q = ak::bshd(p, 2, 4, 4, 8), k = ak::bshd(p, 2, 6, 2, 8), v = ak::bshd(p, 2, 6, 2, 8);
  const auto out = ak::bshd(w, 2, 4, 4, 8);
  const ak::EcoFormerHash good{ak::View<const float, 2>(p, {5, 8}, {8, 1}), ak::View<const float, 1>(p, {5}, {1}),
                               ak::View<const float, 3>(p, {2, 16, 5}, {80, 5, 1})};
  ak::Attention<ak::EcoFormer, ak::Scalar> attn;
  CHECK_NOTHROW(attn(q, k, v, good, out));

  ak::EcoFormerHash h = good;
  h.a = ak::View<const float, 3>(p, {2, 65, 5}, {325, 5, 1});
  CHECK_THROWS_WITH(attn(q, k, v, h, out), Contains("hash.a: bits 65, expected 1 <= bits <= 64"));
  h.a = ak::View<const float, 3>(p, {2, 0, 5}, {0, 5, 1});
  CHECK_THROWS_WITH(attn(q, k, v, h, out), Contains("hash.a: bits 0, expected 1 <= bits <= 64"));
  h.a = ak::View<const float, 3>(p, {4, 16, 5}, {80, 5, 1});
  CHECK_THROWS_WITH(attn(q, k, v, h, out),
                    Contains("hash.a: shape (4, 16, 5), expected (2, 16, 5) (kv_heads, bits, m)"));
  h.a = ak::View<const float, 3>(p, {2, 16, 6}, {96, 6, 1});
  CHECK_THROWS_WITH(attn(q, k, v, h, out), Contains("hash.a: shape (2, 16, 6), expected (2, 16, 5)"));

  h = good;
  h.anchors = ak::View<const float, 2>(p, {5, 7}, {7, 1});
  CHECK_THROWS_WITH(attn(q, k, v, h, out), Contains("hash.anchors: shape (5, 7), expected (5, 8) (m, q's head_dim)"));
  h.anchors = ak::View<const float, 2>(p, {0, 8}, {8, 1});
  CHECK_THROWS_WITH(attn(q, k, v, h, out), Contains("hash.anchors: rows 0, expected >= 1"));
  h.anchors = ak::View<const float, 2>(nullptr, {5, 8}, {8, 1});
  CHECK_THROWS_WITH(attn(q, k, v, h, out), Contains("hash.anchors: data is null"));
  h = good;
  h.mvec = ak::View<const float, 1>(p, {4}, {1});
  CHECK_THROWS_WITH(attn(q, k, v, h, out), Contains("hash.mvec: size 4, expected 5 (anchors' rows)"));
  h.mvec = ak::View<const float, 1>(p, {5}, {-1});
  CHECK_THROWS_WITH(attn(q, k, v, h, out), Contains("hash.mvec: stride 0 is -1, expected >= 0"));

  using Eco = ak::Attention<ak::EcoFormer, ak::Scalar>;
  CHECK_THROWS_WITH(Eco({.sigma = 0.0f}), Contains("options.sigma is 0, expected a finite value > 0"));
  CHECK_THROWS_WITH(Eco({.sigma = -1.0f}), Contains("options.sigma is -1, expected a finite value > 0"));
  CHECK_THROWS_WITH(Eco({.sigma = std::nanf("")}), Contains("options.sigma is nan, expected a finite value > 0"));
  CHECK_NOTHROW(Eco({.sigma = 2.0f}));

  CHECK_THROWS_WITH(attn(q, ak::bshd(p, 2, 6, 2, 16), v, good, out), Contains("k: head_dim 16, expected 8"));
  CHECK_THROWS_WITH(attn(q, k, ak::bshd(p, 2, 5, 2, 8), good, out), Contains("v: seq 5, expected 6"));
  CHECK_THROWS_WITH(attn(q, k, v, good, ak::bshd(w, 2, 4, 2, 8)), Contains("out: heads 2, expected 4"));
  const std::vector<std::int32_t> one_length{4}, too_long{6, 7};
  CHECK_THROWS_WITH(attn(q, k, v, good, out, {.lengths = {.q = one_length}}),
                    Contains("lengths.q: 1 entries, expected 2"));
  CHECK_THROWS_WITH(attn(q, k, v, good, out, {.lengths = {.kv = too_long}}),
                    Contains("lengths.kv[1] is 7, expected in [0, 6]"));
  CHECK_THROWS_WITH(attn.cost(q, k, v, h), Contains("hash.mvec"));
  CHECK_THROWS_WITH(attn.workspace_bytes(q, k, v, h), Contains("hash.mvec"));
}

TEMPLATE_LIST_TEST_CASE("ecoformer: a sigma of zero from rows on the anchors gives kappa = 1, not NaN", "[ecoformer]",
                        ak::test::Backends) {
  // The one key is the anchor: the mean squared distance of k is exactly 0 (the twin's sigma),
  // which the kernel's |x|² - 2 x·a + |a|² only reaches up to rounding (found by the fuzz target).
  for (std::uint32_t seed = 0; seed < 20; ++seed) {
    const Index q_len = 9 + 7 * seed, d = 16 + seed % 5, dv = 5, heads = 2;
    Tensor4 q(1, q_len, heads, d, Layout::kBhsd), k(1, 1, heads, d, Layout::kBshd), v(1, 1, heads, dv, Layout::kBshd),
        out(1, q_len, heads, dv, Layout::kBshd);
    q.fill_uniform(seed);
    k.fill_uniform(seed + 100);
    v.fill_uniform(seed + 200);
    std::vector<float> anchors(d), mvec(1, 0.3f), a = ak::test::uniform(heads * 2, seed + 300);
    for (Index c = 0; c < d; ++c) anchors[c] = k.view(0, 0, 0, c);
    const ak::EcoFormerHash hash{ak::View<const float, 2>::contiguous(anchors.data(), {1, d}),
                                 ak::View<const float, 1>::contiguous(mvec.data(), {1}),
                                 ak::View<const float, 3>::contiguous(a.data(), {heads, 2, 1})};
    ak::Attention<ak::EcoFormer, TestType>()(q.view, k.view, v.view, hash, out.view);
    std::vector<double> expected(static_cast<std::size_t>(q_len * heads * dv));
    const auto expected_view = ak::View<double, 4>::contiguous(expected.data(), {1, q_len, heads, dv});
    ak::reference::ecoformer<double>(q.view, k.view, v.view, hash.anchors, hash.mvec, hash.a, expected_view, {});
    for (Index i = 0; i < q_len; ++i)
      for (Index h = 0; h < heads; ++h)
        for (Index c = 0; c < dv; ++c) {
          INFO("seed " << seed << " row " << i << " head " << h);
          CHECK(out.view(0, i, h, c) == Approx(expected_view(0, i, h, c)).margin(1e-5));
        }
  }
}
