// Attention<Linear> against reference::linear on every backend: random shapes, the edge cases of
// design.md section 4, padded batches, a plugged-in feature map, decode steps through a
// LinearState, determinism across backends and thread counts, cost, and every error message.
#include <catch2/catch.hpp>

#include <attnkit/reference/linear.hpp>
#include <cstring>

#include "test_util.hpp"

namespace ak = attnkit;
using ak::Index;
using ak::test::Layout;
using ak::test::Tensor4;

namespace {

struct LinearCase {
  Index batch = 1, q_len = 1, kv_len = 1, q_heads = 1, kv_heads = 1, head_dim = 8, v_dim = 0;
  bool causal = false;
  Layout layout = Layout::kBshd;
  std::vector<std::int32_t> q_lengths{}, kv_lengths{};
  std::uint32_t seed = 1;
};

Index out_heads(const LinearCase& c) { return std::max(c.q_heads, c.kv_heads); }
Index v_dim(const LinearCase& c) { return c.v_dim > 0 ? c.v_dim : c.head_dim; }

struct LinearRun {
  Tensor4 q, k, v;
  explicit LinearRun(const LinearCase& c)
      : q(c.batch, c.q_len, c.q_heads, c.head_dim, c.layout),
        k(c.batch, c.kv_len, c.kv_heads, c.head_dim, c.layout),
        v(c.batch, c.kv_len, c.kv_heads, v_dim(c), c.layout) {
    q.fill_uniform(c.seed);
    k.fill_uniform(c.seed + 1);
    v.fill_uniform(c.seed + 2);
  }
};

// A second feature map, to show the policy plugs in: phi(x) = x² + 1/2 (positive, no exp).
struct SquarePlusHalf {
  template <class T>
  static T apply(const T& x) {
    return x * x + T(0.5f);
  }
};

struct SquarePlusHalfMap {
  template <class Acc>
  Acc operator()(Acc x) const {
    return x * x + Acc(0.5);
  }
};

// Runs the kernel and both references; checks the output; returns it flattened.
template <class Backend, class Map = ak::EluPlusOne, class RefMap = ak::reference::EluPlusOneMap>
std::vector<float> check_linear(const LinearCase& c, Backend backend = {}) {
  INFO("batch " << c.batch << " q_len " << c.q_len << " kv_len " << c.kv_len << " heads " << c.q_heads << "/"
                << c.kv_heads << " dims " << c.head_dim << "/" << v_dim(c) << " causal " << c.causal << " layout "
                << int(c.layout));
  LinearRun in(c);
  Tensor4 out(c.batch, c.q_len, out_heads(c), v_dim(c), c.layout);
  const ak::SeqLengths lengths{c.q_lengths, c.kv_lengths};
  ak::Attention<ak::LinearWith<Map>, Backend> attn({.causal = c.causal}, backend);
  attn(in.q.view, in.k.view, in.v.view, out.view, {.lengths = lengths});

  const ak::test::ReferenceOutputs reference({c.batch, c.q_len, out_heads(c), v_dim(c)});
  ak::reference::linear<double>(in.q.view, in.k.view, in.v.view, reference.exact, {.causal = c.causal}, lengths,
                                RefMap{});
  ak::reference::linear<float>(in.q.view, in.k.view, in.v.view, reference.naive, {.causal = c.causal}, lengths,
                               RefMap{});
  ak::test::check_exact(out.view, reference);

  return ak::test::flatten(out.view);
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("linear matches the reference on random shapes", "[linear]", ak::test::Backends) {
  std::mt19937 rng(4004);
  const std::array<std::pair<Index, Index>, 6> head_maps{{{1, 1}, {2, 1}, {4, 2}, {3, 3}, {2, 4}, {1, 3}}};
  const std::array<Index, 5> dims{1, 5, 16, 33, 64};
  for (int trial = 0; trial < 10; ++trial) {
    LinearCase c;
    c.batch = 1 + rng() % 3;
    c.q_len = 1 + rng() % 150;
    c.kv_len = rng() % 2 ? c.q_len : 1 + rng() % 200;
    std::tie(c.q_heads, c.kv_heads) = head_maps[rng() % head_maps.size()];
    c.head_dim = dims[rng() % dims.size()];
    c.v_dim = rng() % 2 ? 0 : dims[rng() % dims.size()];
    c.causal = rng() % 2;
    c.layout = static_cast<Layout>(rng() % 3);
    c.seed = 300 + trial;
    check_linear<TestType>(c);
  }
}

TEMPLATE_LIST_TEST_CASE("linear edge cases", "[linear]", ak::test::Backends) {
  SECTION("length one") {
    check_linear<TestType>({.head_dim = 7});
    check_linear<TestType>({.head_dim = 7, .causal = true});
  }
  SECTION("lengths and dims off every chunk and vector width") {
    check_linear<TestType>({.q_len = 131, .kv_len = 197, .q_heads = 2, .head_dim = 13, .v_dim = 19});
    check_linear<TestType>({.q_len = 193, .kv_len = 193, .head_dim = 24, .v_dim = 9, .causal = true});
  }
  SECTION("the shared attention edge cases") {
    for (const auto& [what, c] : ak::test::attention_edge_cases<LinearCase>()) {
      INFO(what);
      check_linear<TestType>(c);
    }
  }
  SECTION("a plugged-in feature map") {
    check_linear<TestType, SquarePlusHalf, SquarePlusHalfMap>(
        {.q_len = 90, .kv_len = 90, .head_dim = 12, .causal = true});
    check_linear<TestType, SquarePlusHalf, SquarePlusHalfMap>(
        {.q_len = 30, .kv_len = 90, .q_heads = 2, .head_dim = 12});
  }
}

TEMPLATE_LIST_TEST_CASE("linear decode steps through a state equal the causal result", "[linear]", ak::test::Backends) {
  const LinearCase c{.batch = 2,
                     .q_len = 75,
                     .kv_len = 75,
                     .q_heads = 4,
                     .kv_heads = 2,
                     .head_dim = 12,
                     .v_dim = 10,
                     .causal = true,
                     .layout = Layout::kBhsd,
                     .seed = 77};
  const std::vector<float> full = check_linear<TestType>(c);
  LinearRun in(c);
  ak::Attention<ak::Linear, TestType> attn({.causal = true});
  const Index heads = out_heads(c), dv = v_dim(c);
  auto token = [](const ak::View<float, 4>& x, Index s) {
    return ak::View<const float, 4>(x.at(0, s, 0, 0), {x.extent(0), 1, x.extent(2), x.extent(3)}, x.strides());
  };
  auto compare = [&](const std::vector<float>& out, Index s) {
    // Same sums in another order: the step result and the chunked one agree to float rounding.
    for (Index b = 0; b < c.batch; ++b)
      for (Index h = 0; h < heads; ++h)
        for (Index d = 0; d < dv; ++d)
          CHECK(out[(b * heads + h) * dv + d] ==
                Approx(full[((b * c.q_len + s) * heads + h) * dv + d]).epsilon(1e-5).margin(1e-6));
  };

  SECTION("token by token from an empty state") {
    ak::LinearState state(c.batch, c.kv_heads, c.head_dim, dv);
    std::vector<float> out(static_cast<std::size_t>(c.batch * heads * dv));
    for (Index s = 0; s < c.q_len; ++s) {
      attn.step(state, token(in.q.view, s), token(in.k.view, s), token(in.v.view, s),
                ak::bshd(out.data(), c.batch, 1, heads, dv));
      compare(out, s);
    }
  }
  SECTION("a causal prefill with the state, then steps") {
    ak::LinearState state(c.batch, c.kv_heads, c.head_dim, dv);
    const Index prefill = 40;
    auto first = [&](const ak::View<float, 4>& x) {
      return ak::View<const float, 4>(x.data(), {x.extent(0), prefill, x.extent(2), x.extent(3)}, x.strides());
    };
    std::vector<float> out_prefill(static_cast<std::size_t>(c.batch * prefill * heads * dv));
    attn(first(in.q.view), first(in.k.view), first(in.v.view),
         ak::bshd(out_prefill.data(), c.batch, prefill, heads, dv), {.state = &state});
    for (Index b = 0; b < c.batch; ++b)
      for (Index i = 0; i < prefill * heads * dv; ++i)
        CHECK(out_prefill[b * prefill * heads * dv + i] ==
              Approx(full[b * c.q_len * heads * dv + i]).epsilon(1e-5).margin(1e-6));
    std::vector<float> out(static_cast<std::size_t>(c.batch * heads * dv));
    for (Index s = prefill; s < c.q_len; ++s) {
      attn.step(state, token(in.q.view, s), token(in.k.view, s), token(in.v.view, s),
                ak::bshd(out.data(), c.batch, 1, heads, dv));
      compare(out, s);
    }
    state.reset();
    CHECK(state.z()(1, 1, 3) == 0.0f);
  }
}

TEST_CASE("linear results are bitwise equal across backends and thread counts", "[linear]") {
  for (bool causal : {false, true}) {
    const LinearCase c{
        .batch = 2, .q_len = 200, .kv_len = 200, .q_heads = 4, .kv_heads = 2, .head_dim = 40, .causal = causal};
    const std::vector<float> one = check_linear<ak::Simd<>>(c);
    const std::vector<float> single = check_linear<ak::OpenMP<>>(c, ak::OpenMP<>{.num_threads = 1});
    const std::vector<float> pair = check_linear<ak::OpenMP<>>(c, ak::OpenMP<>{.num_threads = 2});
    CHECK(std::memcmp(one.data(), single.data(), one.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(one.data(), pair.data(), one.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("linear cost grows linearly with the sequence", "[linear]") {
  const float* none = reinterpret_cast<const float*>(16);
  for (bool causal : {false, true}) {
    ak::Attention<ak::Linear, ak::Simd<>> attn({.causal = causal});
    auto flops = [&](Index n) {
      const auto x = ak::bshd(none, 1, n, 8, 64);
      return attn.cost(x, x, x).flops;
    };
    CHECK(flops(8192) == Approx(2 * flops(4096)).epsilon(1e-3));
    // state update + state read: 2 m (dv + 1) each per token; causal adds the full 64 x 64 chunk
    // blocks: 2 * 64 (m + dv + 1) per query.
    const double expected = 8.0 * 4096 * (4 * 64 * 65 + (causal ? 2 * 64 * 129 : 0));
    CHECK(flops(4096) == Approx(expected).epsilon(1e-6));
  }
}

TEST_CASE("linear rejects bad input with a message naming the argument", "[linear][errors]") {
  std::vector<float> buf(4096, 0.0f), out_buf(4096, 0.0f);
  float* p = buf.data();      // inputs (they may share memory)
  float* o = out_buf.data();  // outputs, which must not
  const auto q = ak::bshd(p, 2, 4, 4, 8), k = ak::bshd(p, 2, 6, 2, 8), v = ak::bshd(p, 2, 6, 2, 8),
             out = ak::bshd(o, 2, 4, 4, 8);
  ak::Attention<ak::Linear, ak::Simd<>> attn;
  ak::Attention<ak::Linear, ak::Simd<>> causal({.causal = true});
  using Catch::Contains;
  CHECK_NOTHROW(attn(q, k, v, out));
  CHECK_THROWS_AS(attn(q, ak::bshd(p, 2, 6, 2, 16), v, out), ak::Error);
  CHECK_THROWS_WITH(attn(q, ak::bshd(p, 2, 6, 2, 16), v, out), Contains("k: head_dim 16, expected 8"));
  CHECK_THROWS_WITH(attn(q, ak::bshd(p, 1, 6, 2, 8), v, out), Contains("k: batch 1, expected 2"));
  CHECK_THROWS_WITH(attn(q, k, ak::bshd(p, 2, 5, 2, 8), out), Contains("v: seq 5, expected 6"));
  CHECK_THROWS_WITH(attn(q, k, ak::bshd(p, 2, 6, 1, 8), out), Contains("v: heads 1, expected 2"));
  CHECK_THROWS_WITH(attn(q, ak::bshd(p, 2, 6, 3, 8), ak::bshd(p, 2, 6, 3, 8), out),
                    Contains("k: heads 3, expected a divisor or a multiple of q heads 4"));
  CHECK_THROWS_WITH(attn(q, k, v, ak::bshd(p, 2, 4, 2, 8)), Contains("out: heads 2, expected 4"));
  CHECK_THROWS_WITH(attn(q, k, v, ak::bshd(p, 2, 4, 4, 4)), Contains("out: head_dim 4, expected 8"));
  CHECK_THROWS_WITH(attn(ak::bshd(static_cast<float*>(nullptr), 2, 4, 4, 8), k, v, out), Contains("q: data is null"));
  CHECK_THROWS_WITH(attn(q, ak::View<float, 4>(p, {2, 6, 2, 8}, {96, -16, 8, 1}), v, out),
                    Contains("k: stride 1 is -16, expected >= 0"));
  CHECK_THROWS_WITH(attn(q, k, v, ak::View<float, 4>(p, {2, 4, 4, 8}, {128, 32, 8, 2})),
                    Contains("out: stride of the last axis is 2, expected 1"));
  CHECK_THROWS_WITH(ak::Attention<ak::Linear>({.eps = -1.0f}),
                    Contains("options.eps is -1, expected a finite value >= 0"));
  CHECK_THROWS_WITH(ak::Attention<ak::Linear>({.eps = std::nanf("")}), Contains("options.eps is nan"));
  const std::vector<std::int32_t> one_length{4}, too_long{4, 9};
  CHECK_THROWS_WITH(attn(q, k, v, out, {.lengths = {.q = one_length}}), Contains("lengths.q: 1 entries, expected 2"));
  CHECK_THROWS_WITH(attn(q, k, v, out, {.lengths = {.kv = too_long}}),
                    Contains("lengths.kv[1] is 9, expected in [0, 6]"));

  ak::LinearState state(2, 2, 8, 8), wrong(2, 1, 8, 8);
  CHECK_NOTHROW(causal(q, k, v, out, {.state = &state}));
  CHECK_THROWS_WITH(attn(q, k, v, out, {.state = &state}), Contains("args.state: expected options.causal = true"));
  CHECK_THROWS_WITH(causal(q, k, v, out, {.state = &wrong}),
                    Contains("args.state: shape (2, 1, 8, 8), expected (2, 2, 8, 8)"));
  CHECK_THROWS_WITH(causal.step(state, q, ak::bshd(p, 2, 1, 2, 8), ak::bshd(p, 2, 1, 2, 8), ak::bshd(p, 2, 1, 4, 8)),
                    Contains("q: seq 4, expected 1 (one decode step)"));
  CHECK_THROWS_WITH(causal.step(state, ak::bshd(p, 2, 1, 4, 8), k, v, ak::bshd(p, 2, 1, 4, 8)),
                    Contains("k: seq 6, expected 1 (one decode step)"));
  CHECK_THROWS_WITH(ak::LinearState(1, 0, 8, 8), Contains("state: shape (1, 0, 8, 8), expected batch >= 0"));
}
