// Attention<Mamba, Backend> (Mamba-1 selective scan) against reference::mamba on every backend:
// both layouts, groups, the optional D / z / delta_bias / softplus / states, L = 1 and L and
// d_inner off every vector width, d_state 1 and 64, packed sequences with state resets, the decode
// step equal to the scan, determinism across backends and thread counts, and every error message.
#include <catch2/catch.hpp>

#include <attnkit/mechanism/mamba.hpp>
#include <attnkit/reference/mamba.hpp>
#include <cstring>
#include <memory>

#include "test_util.hpp"

namespace ak = attnkit;
using ak::Index;

namespace {

struct MambaCase {
  Index batch = 1, len = 1, d_inner = 8, d_state = 4, groups = 1;
  bool channel_major = false;  // Mamba's (batch, d_inner, L) and (batch, groups, d_state, L) layouts
  bool skip = false, gate = false, bias = false, softplus = false, initial = false;
  std::vector<std::int32_t> cu_seqlens{};
  std::uint32_t seed = 1;
};

// A (batch, L, channels) tensor in token-major or channel-major memory.
struct Tokens {
  std::vector<float> data;
  ak::View<float, 3> view;
  Tokens(Index b, Index l, Index d, bool channel_major)
      : data(static_cast<std::size_t>(std::max<Index>(b * l * d, 1))) {
    view = channel_major ? ak::View<float, 3>(data.data(), {b, l, d}, {d * l, 1, l})
                         : ak::View<float, 3>::contiguous(data.data(), {b, l, d});
  }
  void fill(std::uint32_t seed, float lo, float hi) {
    const std::vector<float> v = ak::test::uniform(data.size(), seed, lo, hi);
    std::copy(v.begin(), v.end(), data.begin());
  }
};

// B or C: (batch, L, groups, d_state), or Mamba's (batch, groups, d_state, L) memory.
struct Projection {
  std::vector<float> data;
  ak::View<float, 4> view;
  Projection(Index b, Index l, Index g, Index n, bool channel_major, std::uint32_t seed)
      : data(ak::test::uniform(static_cast<std::size_t>(std::max<Index>(b * l * g * n, 1)), seed)) {
    view = channel_major ? ak::View<float, 4>(data.data(), {b, l, g, n}, {g * n * l, 1, n * l, l})
                         : ak::View<float, 4>::contiguous(data.data(), {b, l, g, n});
  }
};

struct MambaRun {
  MambaCase c;
  Index sequences;
  Tokens u, delta, z;
  Projection b, cc;
  std::vector<float> a, d, bias, initial;
  ak::Mamba::Args args;
  ak::reference::MambaInputs ref;

  explicit MambaRun(const MambaCase& mc)
      : c(mc),
        sequences(mc.cu_seqlens.empty() ? mc.batch : Index(mc.cu_seqlens.size()) - 1),
        u(mc.batch, mc.len, mc.d_inner, mc.channel_major),
        delta(mc.batch, mc.len, mc.d_inner, mc.channel_major),
        z(mc.batch, mc.len, mc.d_inner, mc.channel_major),
        b(mc.batch, mc.len, mc.groups, mc.d_state, mc.channel_major, mc.seed + 3),
        cc(mc.batch, mc.len, mc.groups, mc.d_state, mc.channel_major, mc.seed + 4),
        a(ak::test::uniform(mc.d_inner * mc.d_state, mc.seed + 5, -2.0f, -0.1f)),
        d(ak::test::uniform(mc.d_inner, mc.seed + 6)),
        bias(ak::test::uniform(mc.d_inner, mc.seed + 7, -1.0f, 0.5f)),
        initial(ak::test::uniform(std::max<Index>(sequences * mc.d_inner * mc.d_state, 1), mc.seed + 8)) {
    u.fill(mc.seed, -1.0f, 1.0f);
    delta.fill(mc.seed + 1, mc.softplus ? -3.0f : 0.0f, mc.softplus ? 1.0f : 0.6f);
    z.fill(mc.seed + 2, -3.0f, 3.0f);
    const auto a_view = ak::View<const float, 2>::contiguous(a.data(), {mc.d_inner, mc.d_state});
    if (mc.skip) args.d = ak::View<const float, 1>::contiguous(d.data(), {mc.d_inner});
    if (mc.gate) args.z = z.view;
    if (mc.bias) args.delta_bias = ak::View<const float, 1>::contiguous(bias.data(), {mc.d_inner});
    if (mc.initial)
      args.initial_state = ak::View<const float, 3>::contiguous(initial.data(), {sequences, mc.d_inner, mc.d_state});
    args.cu_seqlens = c.cu_seqlens;
    ref = {u.view,          delta.view,         a_view,       b.view,     cc.view, args.d, args.z,
           args.delta_bias, args.initial_state, c.cu_seqlens, mc.softplus};
  }
  ak::View<const float, 2> a_view() const {
    return ak::View<const float, 2>::contiguous(a.data(), {c.d_inner, c.d_state});
  }
};

template <class T>
double max_abs_diff3(const ak::View<float, 3>& x, const ak::View<T, 3>& exact, double* magnitude = nullptr) {
  double worst = 0;
  for (Index i = 0; i < x.extent(0); ++i)
    for (Index j = 0; j < x.extent(1); ++j)
      for (Index k = 0; k < x.extent(2); ++k) {
        const double diff = std::abs(double(x(i, j, k)) - double(exact(i, j, k)));
        worst = std::isnan(diff) ? INFINITY : std::max(worst, diff);
        if (magnitude != nullptr) *magnitude = std::max(*magnitude, std::abs(double(exact(i, j, k))));
      }
  return worst;
}

struct MambaResult {
  std::vector<float> out, state;
};

// Runs the kernel and both references; checks the output and the final state.
template <class Backend>
MambaResult check_mamba(const MambaCase& c, Backend backend = {}) {
  INFO("batch " << c.batch << " L " << c.len << " d_inner " << c.d_inner << " d_state " << c.d_state << " groups "
                << c.groups << " channel_major " << c.channel_major << " D " << c.skip << " z " << c.gate << " bias "
                << c.bias << " softplus " << c.softplus << " initial " << c.initial << " sequences "
                << c.cu_seqlens.size());
  MambaRun in(c);
  Tokens out(c.batch, c.len, c.d_inner, c.channel_major);
  std::fill(out.data.begin(), out.data.end(), std::nanf(""));
  const std::array<Index, 3> state_shape{in.sequences, c.d_inner, c.d_state};
  std::vector<float> state(static_cast<std::size_t>(std::max<Index>(in.sequences * c.d_inner * c.d_state, 1)));
  const auto state_view = ak::View<float, 3>::contiguous(state.data(), state_shape);
  ak::Mamba::Args args = in.args;
  args.final_state = state_view;
  ak::Attention<ak::Mamba, Backend> scan(ak::Mamba::Options{.delta_softplus = c.softplus}, backend);
  scan(in.u.view, in.delta.view, in.a_view(), in.b.view, in.cc.view, out.view, args);

  const std::size_t n = static_cast<std::size_t>(c.batch * c.len * c.d_inner) + 1, ns = state.size();
  std::vector<double> exact(n), exact_state(ns);
  std::vector<float> naive(n), naive_state(ns);
  const std::array<Index, 3> out_shape{c.batch, c.len, c.d_inner};
  auto exact_view = ak::View<double, 3>::contiguous(exact.data(), out_shape);
  auto naive_view = ak::View<float, 3>::contiguous(naive.data(), out_shape);
  auto exact_state_view = ak::View<double, 3>::contiguous(exact_state.data(), state_shape);
  auto naive_state_view = ak::View<float, 3>::contiguous(naive_state.data(), state_shape);
  ak::reference::mamba<double>(in.ref, exact_view, exact_state_view);
  ak::reference::mamba<float>(in.ref, naive_view, naive_state_view);

  double magnitude = 0, state_magnitude = 0;
  const double float_error = max_abs_diff3(naive_view, exact_view);
  const double error = max_abs_diff3(out.view, exact_view, &magnitude);
  INFO("kernel error " << error << ", float reference error " << float_error << ", magnitude " << magnitude);
  CHECK(error <= ak::test::exact_tolerance(float_error, magnitude));
  const double state_float_error = max_abs_diff3(naive_state_view, exact_state_view);
  const double state_error = max_abs_diff3(state_view, exact_state_view, &state_magnitude);
  INFO("state error " << state_error << ", float reference error " << state_float_error);
  CHECK(state_error <= ak::test::exact_tolerance(state_float_error, state_magnitude));

  MambaResult result{{}, state};
  for (Index b = 0; b < c.batch; ++b)
    for (Index t = 0; t < c.len; ++t)
      for (Index d = 0; d < c.d_inner; ++d) result.out.push_back(out.view(b, t, d));
  return result;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("mamba matches the reference on random shapes", "[mamba]", ak::test::Backends) {
  std::mt19937 rng(77);
  const std::array<Index, 5> states{1, 3, 8, 16, 21};
  for (int trial = 0; trial < 10; ++trial) {
    MambaCase c;
    c.batch = 1 + rng() % 3;
    c.len = 1 + rng() % 150;
    c.groups = 1 + rng() % 3;
    c.d_inner = c.groups * (1 + rng() % 20);
    c.d_state = states[rng() % states.size()];
    c.channel_major = rng() % 2;
    c.skip = rng() % 2;
    c.gate = rng() % 2;
    c.bias = rng() % 2;
    c.softplus = rng() % 2;
    c.initial = rng() % 2;
    c.seed = 300 + trial;
    check_mamba<TestType>(c);
  }
}

TEMPLATE_LIST_TEST_CASE("mamba edge cases", "[mamba]", ak::test::Backends) {
  SECTION("L = 1") { check_mamba<TestType>({.len = 1, .d_inner = 5, .d_state = 16, .skip = true, .gate = true}); }
  SECTION("L and d_inner off every vector width and token chunk") {
    check_mamba<TestType>({.batch = 2, .len = 131, .d_inner = 37, .d_state = 7, .bias = true, .softplus = true});
  }
  SECTION("d_state 1 and 64") {
    check_mamba<TestType>({.len = 70, .d_inner = 17, .d_state = 1, .skip = true});
    check_mamba<TestType>({.len = 70, .d_inner = 24, .d_state = 64, .gate = true, .initial = true});
  }
  SECTION("groups > 1, groups not a multiple of the vector width, both layouts") {
    check_mamba<TestType>({.batch = 2,
                           .len = 45,
                           .d_inner = 30,
                           .d_state = 16,
                           .groups = 3,
                           .skip = true,
                           .gate = true,
                           .bias = true,
                           .softplus = true});
    check_mamba<TestType>({.batch = 2,
                           .len = 45,
                           .d_inner = 20,
                           .d_state = 5,
                           .groups = 2,
                           .channel_major = true,
                           .gate = true,
                           .initial = true});
  }
  SECTION("everything on, Mamba's channel-major layout") {
    check_mamba<TestType>({.batch = 2,
                           .len = 200,
                           .d_inner = 150,
                           .d_state = 16,
                           .channel_major = true,
                           .skip = true,
                           .gate = true,
                           .bias = true,
                           .softplus = true,
                           .initial = true});
  }
  SECTION("empty batch and L = 0 (final state = initial state)") {
    check_mamba<TestType>({.batch = 0, .len = 5});
    check_mamba<TestType>({.batch = 2, .len = 0, .initial = true});
  }
}

TEMPLATE_LIST_TEST_CASE("mamba with time-invariant per-channel B and C (stride 0 over batch and L)", "[mamba]",
                        ak::test::Backends) {
  // selective_scan_ref's B, C of shape (d_inner, d_state): one group per channel, broadcast in time.
  const Index batch = 2, len = 50, d_inner = 20, d_state = 16;
  const std::vector<float> u = ak::test::uniform(batch * len * d_inner, 41),
                           delta = ak::test::uniform(batch * len * d_inner, 42, 0.0f, 0.6f);
  const std::vector<float> a = ak::test::uniform(d_inner * d_state, 43, -2.0f, -0.1f);
  const std::vector<float> b = ak::test::uniform(d_inner * d_state, 44), c = ak::test::uniform(d_inner * d_state, 45);
  const auto tokens = [&](const float* p) { return ak::View<const float, 3>::contiguous(p, {batch, len, d_inner}); };
  const auto constant = [&](const float* p) {
    return ak::View<const float, 4>(p, {batch, len, d_inner, d_state}, {0, 0, d_state, 1});
  };
  const auto a_view = ak::View<const float, 2>::contiguous(a.data(), {d_inner, d_state});
  std::vector<float> out(batch * len * d_inner), naive(out.size());
  std::vector<double> exact(out.size());
  ak::Attention<ak::Mamba, TestType>()(tokens(u.data()), tokens(delta.data()), a_view, constant(b.data()),
                                       constant(c.data()),
                                       ak::View<float, 3>::contiguous(out.data(), {batch, len, d_inner}));
  const ak::reference::MambaInputs in{tokens(u.data()), tokens(delta.data()), a_view, constant(b.data()),
                                      constant(c.data())};
  ak::reference::mamba<double>(in, ak::View<double, 3>::contiguous(exact.data(), {batch, len, d_inner}), {});
  ak::reference::mamba<float>(in, ak::View<float, 3>::contiguous(naive.data(), {batch, len, d_inner}), {});
  double float_error = 0, error = 0, magnitude = 0;
  for (std::size_t i = 0; i < out.size(); ++i) {
    float_error = std::max(float_error, std::abs(naive[i] - exact[i]));
    error = std::max(error, std::abs(out[i] - exact[i]));
    magnitude = std::max(magnitude, std::abs(exact[i]));
  }
  INFO("kernel error " << error << ", float reference error " << float_error);
  CHECK(error <= ak::test::exact_tolerance(float_error, magnitude));
}

TEMPLATE_LIST_TEST_CASE("mamba on packed sequences resets the state at every offset", "[mamba]", ak::test::Backends) {
  const std::vector<std::int32_t> cu{0, 13, 13, 90, 91, 160};
  check_mamba<TestType>({.len = 160,
                         .d_inner = 19,
                         .d_state = 16,
                         .groups = 1,
                         .skip = true,
                         .gate = true,
                         .bias = true,
                         .softplus = true,
                         .initial = true,
                         .cu_seqlens = cu});
  check_mamba<TestType>(
      {.len = 160, .d_inner = 24, .d_state = 8, .groups = 2, .channel_major = true, .cu_seqlens = cu});
  // Each packed sequence equals that sequence scanned alone.
  const MambaCase whole{.len = 160, .d_inner = 16, .d_state = 8, .cu_seqlens = cu};
  const MambaResult packed = check_mamba<TestType>(whole);
  for (std::size_t s = 0; s + 1 < cu.size(); ++s) {
    const Index begin = cu[s], len = cu[s + 1] - cu[s];
    MambaRun in(whole);
    auto shift = [&](const auto& v) {
      using View = std::remove_cvref_t<decltype(v)>;
      auto extents = v.extents();
      extents[1] = len;
      return View(v.data() + begin * v.stride(1), extents, v.strides());
    };
    std::vector<float> out(static_cast<std::size_t>(std::max<Index>(len * 16, 1)));
    ak::Attention<ak::Mamba, TestType>()(shift(in.u.view), shift(in.delta.view), in.a_view(), shift(in.b.view),
                                         shift(in.cc.view), ak::View<float, 3>::contiguous(out.data(), {1, len, 16}));
    for (Index i = 0; i < len * 16; ++i) CHECK(out[i] == packed.out[begin * 16 + i]);
  }
}

TEMPLATE_LIST_TEST_CASE("mamba decode steps equal the scan", "[mamba]", ak::test::Backends) {
  for (bool channel_major : {false, true}) {
    const MambaCase c{.batch = 2,
                      .len = 21,
                      .d_inner = 20,
                      .d_state = 16,
                      .groups = 2,
                      .channel_major = channel_major,
                      .skip = true,
                      .gate = true,
                      .bias = true,
                      .softplus = true,
                      .initial = true};
    const MambaResult scanned = check_mamba<TestType>(c);
    MambaRun in(c);
    std::vector<float> state(in.initial.begin(), in.initial.end()), out(2 * 20);
    const auto state_view = ak::View<float, 3>::contiguous(state.data(), {2, 20, 16});
    ak::Attention<ak::Mamba, TestType> scan(ak::Mamba::Options{.delta_softplus = true});
    auto token = [](const auto& v, Index t) {  // (batch, L, d) -> (batch, d) at token t
      using T = std::remove_pointer_t<decltype(v.data())>;
      return ak::View<T, 2>(v.at(0, t, 0), {v.extent(0), v.extent(2)}, {v.stride(0), v.stride(2)});
    };
    auto token_bc = [](const auto& v, Index t) {
      using T = std::remove_pointer_t<decltype(v.data())>;
      return ak::View<T, 3>(v.at(0, t, 0, 0), {v.extent(0), v.extent(2), v.extent(3)},
                            {v.stride(0), v.stride(2), v.stride(3)});
    };
    for (Index t = 0; t < c.len; ++t) {
      const auto out_view = ak::View<float, 2>::contiguous(out.data(), {2, 20});
      scan.step(token(in.u.view, t), token(in.delta.view, t), in.a_view(), token_bc(in.b.view, t),
                token_bc(in.cc.view, t), state_view, out_view,
                {.d = in.args.d, .z = token(in.z.view, t), .delta_bias = in.args.delta_bias});
      for (Index b = 0; b < 2; ++b)
        for (Index d = 0; d < 20; ++d) CHECK(out_view(b, d) == scanned.out[(b * c.len + t) * 20 + d]);
    }
    CHECK(std::memcmp(state.data(), scanned.state.data(), state.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("mamba results are bitwise equal across backends and thread counts", "[mamba]") {
  const MambaCase c{.batch = 2,
                    .len = 150,
                    .d_inner = 72,
                    .d_state = 16,
                    .groups = 2,
                    .skip = true,
                    .gate = true,
                    .bias = true,
                    .softplus = true};
  const MambaResult one = check_mamba<ak::Simd<>>(c);
  for (int threads : {1, 2, 3}) {
    const MambaResult many = check_mamba<ak::OpenMP<>>(c, ak::OpenMP<>{.num_threads = threads});
    CHECK(std::memcmp(one.out.data(), many.out.data(), one.out.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(one.state.data(), many.state.data(), one.state.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("mamba rejects bad input with a message naming the argument", "[mamba][errors]") {
  std::vector<float> buf(4096, 0.5f);
  float* p = buf.data();
  using V1 = ak::View<const float, 1>;
  using V2 = ak::View<const float, 2>;
  using V3 = ak::View<const float, 3>;
  using V4 = ak::View<const float, 4>;
  const auto u = V3::contiguous(p, {2, 5, 8}), delta = u;
  const auto a = V2::contiguous(p, {8, 4});
  const auto b = V4::contiguous(p, {2, 5, 2, 4}), c = b;
  const auto out = ak::View<float, 3>::contiguous(p + 2048, {2, 5, 8});
  ak::Attention<ak::Mamba, ak::Simd<>> scan;
  using Catch::Contains;
  CHECK_NOTHROW(scan(u, delta, a, b, c, out));
  CHECK_THROWS_AS(scan(u, V3::contiguous(p, {2, 6, 8}), a, b, c, out), ak::Error);
  CHECK_THROWS_WITH(scan(V3::contiguous(p, {2, 5, 0}), delta, a, b, c, out), Contains("u: d_inner 0, expected >= 1"));
  CHECK_THROWS_WITH(scan(V3::contiguous(nullptr, {2, 5, 8}), delta, a, b, c, out), Contains("u: data is null"));
  CHECK_THROWS_WITH(scan(u, V3::contiguous(p, {2, 6, 8}), a, b, c, out), Contains("delta: L 6, expected 5"));
  CHECK_THROWS_WITH(scan(u, V3(p, {2, 5, 8}, {40, -8, 1}), a, b, c, out),
                    Contains("delta: stride 1 is -8, expected >= 0"));
  CHECK_THROWS_WITH(scan(u, delta, V2::contiguous(p, {7, 4}), b, c, out), Contains("A: d_inner 7, expected 8"));
  CHECK_THROWS_WITH(scan(u, delta, V2::contiguous(p, {8, 0}), b, c, out), Contains("A: d_state 0, expected >= 1"));
  std::vector<float> bad_a(32, -1.0f);
  bad_a[9] = INFINITY;
  CHECK_THROWS_WITH(scan(u, delta, V2::contiguous(bad_a.data(), {8, 4}), b, c, out),
                    Contains("A(2, 1) is inf, expected a finite real value"));
  CHECK_THROWS_WITH(scan(u, delta, a, V4::contiguous(p, {2, 5, 3, 4}), c, out),
                    Contains("B: groups 3, expected a divisor of d_inner 8"));
  CHECK_THROWS_WITH(scan(u, delta, a, V4::contiguous(p, {2, 5, 2, 3}), c, out), Contains("B: d_state 3, expected 4"));
  CHECK_THROWS_WITH(scan(u, delta, a, b, V4::contiguous(p, {1, 5, 2, 4}), out), Contains("C: batch 1, expected 2"));
  CHECK_THROWS_WITH(scan(u, delta, a, b, V4::contiguous(p, {2, 5, 1, 4}), out), Contains("C: groups 1, expected 2"));
  CHECK_THROWS_WITH(scan(u, delta, a, b, c, ak::View<float, 3>::contiguous(p, {2, 5, 9})),
                    Contains("out: d_inner 9, expected 8"));
  CHECK_THROWS_WITH(scan(u, delta, a, b, c, out, {.d = V1::contiguous(p, {4})}),
                    Contains("args.D: d_inner 4, expected 8"));
  std::vector<float> nan_d(8, std::nanf(""));
  CHECK_THROWS_WITH(scan(u, delta, a, b, c, out, {.d = V1::contiguous(nan_d.data(), {8})}),
                    Contains("args.D[0] is nan, expected a finite real value"));
  CHECK_THROWS_WITH(scan(u, delta, a, b, c, out, {.z = V3::contiguous(p, {2, 4, 8})}),
                    Contains("args.z: L 4, expected 5"));
  CHECK_THROWS_WITH(scan(u, delta, a, b, c, out, {.delta_bias = V1::contiguous(p, {9})}),
                    Contains("args.delta_bias: d_inner 9, expected 8"));
  CHECK_THROWS_WITH(scan(u, delta, a, b, c, out, {.initial_state = V3::contiguous(p, {2, 8, 5})}),
                    Contains("args.initial_state: d_state 5, expected 4"));
  CHECK_THROWS_WITH(scan(u, delta, a, b, c, out, {.final_state = ak::View<float, 3>::contiguous(p, {3, 8, 4})}),
                    Contains("args.final_state: sequences 3, expected 2"));
  const std::vector<std::int32_t> cu{0, 2, 5}, cu_short{0, 4}, cu_back{0, 3, 2};
  CHECK_THROWS_WITH(scan(u, delta, a, b, c, out, {.cu_seqlens = cu}),
                    Contains("args.cu_seqlens: given with batch 2, expected batch 1"));
  const auto u1 = V3::contiguous(p, {1, 5, 8});
  const auto b1 = V4::contiguous(p, {1, 5, 2, 4});
  const auto out1 = ak::View<float, 3>::contiguous(p + 2048, {1, 5, 8});
  CHECK_NOTHROW(scan(u1, u1, a, b1, b1, out1, {.cu_seqlens = cu}));
  CHECK_THROWS_WITH(scan(u1, u1, a, b1, b1, out1, {.cu_seqlens = cu_short}),
                    Contains("args.cu_seqlens ends at 4, expected 5"));
  CHECK_THROWS_WITH(scan(u1, u1, a, b1, b1, out1, {.cu_seqlens = cu_back}),
                    Contains("args.cu_seqlens[2] is 2, expected >= 3"));
  CHECK_THROWS_WITH(scan(u1, u1, a, b1, b1, out1, {.initial_state = V3::contiguous(p, {1, 8, 4}), .cu_seqlens = cu}),
                    Contains("args.initial_state: sequences 1, expected 2"));
  const auto state = ak::View<float, 3>::contiguous(p + 1024, {2, 8, 4});
  const auto u2 = V2::contiguous(p, {2, 8});
  const auto b2 = V3::contiguous(p, {2, 2, 4});
  const auto out2 = ak::View<float, 2>::contiguous(p + 2048, {2, 8});
  CHECK_NOTHROW(scan.step(u2, u2, a, b2, b2, state, out2));
  CHECK_THROWS_WITH(scan.step(u2, u2, a, b2, b2, ak::View<float, 3>::contiguous(p + 1024, {2, 8, 3}), out2),
                    Contains("args.initial_state: d_state 3, expected 4"));
  CHECK_THROWS_WITH(scan.step(u2, V2::contiguous(p, {2, 7}), a, b2, b2, state, out2),
                    Contains("delta: d_inner 7, expected 8"));

  // A caller's workspace of exactly workspace_bytes() is enough; less is rejected.
  const std::size_t bytes = scan.workspace_bytes(u, delta, a, b, c);
  CHECK(bytes > 0);
  std::vector<float> block(bytes / sizeof(float) + 16);
  void* aligned = block.data();
  std::size_t space = block.size() * sizeof(float);
  std::align(64, bytes, aligned, space);
  CHECK_NOTHROW(scan(u, delta, a, b, c, out, {.workspace = {aligned, bytes}}));
  CHECK_THROWS_WITH(scan(u, delta, a, b, c, out, {.workspace = {aligned, bytes - 64}}),
                    Contains("workspace: ") && Contains("expected >= "));
}
