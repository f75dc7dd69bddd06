// Attention<Mamba2, Backend> (SSD) against reference::mamba2 on every backend, in both forms:
// chunked equals recurrent for chunk sizes 32-256 and L off the chunk, heads of dimension off the
// vector width, groups, d_state 1 and 64, strided layouts, the optional D / z / dt_bias / softplus
// / states, a state carried between calls, determinism across thread counts, and every error
// message.
#include <catch2/catch.hpp>

#include <attnkit/mechanism/mamba2.hpp>
#include <attnkit/reference/mamba2.hpp>
#include <cstring>
#include <memory>

#include "test_util.hpp"

namespace ak = attnkit;
using ak::Index;
using ak::test::Layout;
using ak::test::Tensor4;
using Form = ak::Mamba2::Form;

namespace {

struct Mamba2Case {
  Index batch = 1, len = 1, heads = 2, head_dim = 8, groups = 1, d_state = 4;
  Index chunk = 64;
  Layout layout = Layout::kBshd;
  bool skip = false, gate = false, bias = false, softplus = false, initial = false;
  std::uint32_t seed = 1;
};

struct Mamba2Run {
  Tensor4 x, z, b, c;
  std::vector<float> dt, a, d, bias, initial;
  ak::Mamba2::Args args;
  ak::reference::Mamba2Inputs ref;

  explicit Mamba2Run(const Mamba2Case& mc)
      : x(mc.batch, mc.len, mc.heads, mc.head_dim, mc.layout),
        z(mc.batch, mc.len, mc.heads, mc.head_dim, mc.layout),
        b(mc.batch, mc.len, mc.groups, mc.d_state, mc.layout),
        c(mc.batch, mc.len, mc.groups, mc.d_state, mc.layout),
        dt(ak::test::uniform(std::max<Index>(mc.batch * mc.len * mc.heads, 1), mc.seed + 1, mc.softplus ? -3.0f : 0.0f,
                             mc.softplus ? 1.0f : 0.5f)),
        a(ak::test::uniform(mc.heads, mc.seed + 2, -2.0f, -0.1f)),
        d(ak::test::uniform(mc.heads, mc.seed + 3)),
        bias(ak::test::uniform(mc.heads, mc.seed + 4, -1.0f, 0.5f)),
        initial(ak::test::uniform(std::max<Index>(mc.batch * mc.heads * mc.head_dim * mc.d_state, 1), mc.seed + 5)) {
    x.fill_uniform(mc.seed + 6);
    z.fill_uniform(mc.seed + 7, -3.0f, 3.0f);
    b.fill_uniform(mc.seed + 8);
    c.fill_uniform(mc.seed + 9);
    if (mc.skip) args.d = ak::View<const float, 1>::contiguous(d.data(), {mc.heads});
    if (mc.gate) args.z = z.view;
    if (mc.bias) args.dt_bias = ak::View<const float, 1>::contiguous(bias.data(), {mc.heads});
    if (mc.initial)
      args.initial_state =
          ak::View<const float, 4>::contiguous(initial.data(), {mc.batch, mc.heads, mc.head_dim, mc.d_state});
    ref = {x.view, dt_view(mc),  a_view(mc),         b.view,     c.view, args.d,
           args.z, args.dt_bias, args.initial_state, mc.softplus};
  }
  ak::View<const float, 3> dt_view(const Mamba2Case& mc) const {
    return ak::View<const float, 3>::contiguous(dt.data(), {mc.batch, mc.len, mc.heads});
  }
  ak::View<const float, 1> a_view(const Mamba2Case& mc) const {
    return ak::View<const float, 1>::contiguous(a.data(), {mc.heads});
  }
};

template <class T>
double max_abs_diff4(const ak::View<float, 4>& x, const ak::View<T, 4>& exact, double* magnitude = nullptr) {
  double worst = 0;
  for (Index i = 0; i < x.extent(0); ++i)
    for (Index j = 0; j < x.extent(1); ++j)
      for (Index k = 0; k < x.extent(2); ++k)
        for (Index l = 0; l < x.extent(3); ++l) {
          const double diff = std::abs(double(x(i, j, k, l)) - double(exact(i, j, k, l)));
          worst = std::isnan(diff) ? INFINITY : std::max(worst, diff);
          if (magnitude != nullptr) *magnitude = std::max(*magnitude, std::abs(double(exact(i, j, k, l))));
        }
  return worst;
}

struct Mamba2Result {
  std::vector<float> out, state;
  double tolerance = 0;
};

// Runs one form of the kernel and both references; checks the output and the final state.
template <class Backend>
Mamba2Result check_mamba2(const Mamba2Case& c, Form form, Backend backend = {}) {
  INFO("batch " << c.batch << " L " << c.len << " heads " << c.heads << " p " << c.head_dim << " groups " << c.groups
                << " n " << c.d_state << " chunk " << c.chunk << " form " << int(form) << " layout " << int(c.layout)
                << " D " << c.skip << " z " << c.gate << " bias " << c.bias << " softplus " << c.softplus << " initial "
                << c.initial);
  Mamba2Run in(c);
  Tensor4 out(c.batch, c.len, c.heads, c.head_dim, c.layout);
  const std::array<Index, 4> state_shape{c.batch, c.heads, c.head_dim, c.d_state};
  std::vector<float> state(in.initial.size(), std::nanf(""));
  const auto state_view = ak::View<float, 4>::contiguous(state.data(), state_shape);
  ak::Mamba2::Args args = in.args;
  args.final_state = state_view;
  ak::Attention<ak::Mamba2, Backend> ssd({.chunk_size = c.chunk, .dt_softplus = c.softplus, .form = form}, backend);
  ssd(in.x.view, in.dt_view(c), in.a_view(c), in.b.view, in.c.view, out.view, args);

  const std::size_t n = static_cast<std::size_t>(c.batch * c.len * c.heads * c.head_dim) + 1;
  std::vector<double> exact(n), exact_state(state.size());
  std::vector<float> naive(n), naive_state(state.size());
  const std::array<Index, 4> out_shape{c.batch, c.len, c.heads, c.head_dim};
  auto exact_view = ak::View<double, 4>::contiguous(exact.data(), out_shape);
  auto naive_view = ak::View<float, 4>::contiguous(naive.data(), out_shape);
  auto exact_state_view = ak::View<double, 4>::contiguous(exact_state.data(), state_shape);
  auto naive_state_view = ak::View<float, 4>::contiguous(naive_state.data(), state_shape);
  ak::reference::mamba2<double>(in.ref, exact_view, exact_state_view);
  ak::reference::mamba2<float>(in.ref, naive_view, naive_state_view);

  double magnitude = 0, state_magnitude = 0;
  const double float_error = max_abs_diff4(naive_view, exact_view);
  const double error = max_abs_diff4(out.view, exact_view, &magnitude);
  INFO("kernel error " << error << ", float reference error " << float_error << ", magnitude " << magnitude);
  Mamba2Result result;
  result.tolerance = ak::test::exact_tolerance(float_error, magnitude);
  CHECK(error <= result.tolerance);
  const double state_float_error = max_abs_diff4(naive_state_view, exact_state_view);
  const double state_error = max_abs_diff4(state_view, exact_state_view, &state_magnitude);
  INFO("state error " << state_error << ", float reference error " << state_float_error);
  CHECK(state_error <= ak::test::exact_tolerance(state_float_error, state_magnitude));

  result.state = state;
  for (Index b = 0; b < c.batch; ++b)
    for (Index t = 0; t < c.len; ++t)
      for (Index h = 0; h < c.heads; ++h)
        for (Index i = 0; i < c.head_dim; ++i) result.out.push_back(out.view(b, t, h, i));
  return result;
}

// Both forms against the reference, and chunked against recurrent.
template <class Backend>
void check_both_forms(const Mamba2Case& c) {
  const Mamba2Result chunked = check_mamba2<Backend>(c, Form::kChunked);
  const Mamba2Result recurrent = check_mamba2<Backend>(c, Form::kRecurrent);
  double worst = 0;
  for (std::size_t i = 0; i < chunked.out.size(); ++i)
    worst = std::max(worst, double(std::abs(chunked.out[i] - recurrent.out[i])));
  INFO("chunked vs recurrent " << worst << " chunk " << c.chunk << " L " << c.len);
  CHECK(worst <= chunked.tolerance + recurrent.tolerance);
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("mamba2 chunked and recurrent match the reference on random shapes", "[mamba][mamba2]",
                        ak::test::Backends) {
  std::mt19937 rng(99);
  const std::array<Index, 5> dims{1, 5, 8, 16, 19};
  for (int trial = 0; trial < 8; ++trial) {
    Mamba2Case c;
    c.batch = 1 + rng() % 2;
    c.len = 1 + rng() % 160;
    c.groups = 1 + rng() % 2;
    c.heads = c.groups * (1 + rng() % 3);
    c.head_dim = dims[rng() % dims.size()];
    c.d_state = dims[rng() % dims.size()];
    c.chunk = 1 + rng() % 70;
    c.layout = static_cast<Layout>(rng() % 3);
    c.skip = rng() % 2;
    c.gate = rng() % 2;
    c.bias = rng() % 2;
    c.softplus = rng() % 2;
    c.initial = rng() % 2;
    c.seed = 500 + trial;
    check_both_forms<TestType>(c);
  }
}

TEMPLATE_LIST_TEST_CASE("mamba2 chunked equals recurrent for chunk sizes 32 to 256", "[mamba][mamba2]",
                        ak::test::Backends) {
  for (Index chunk : {32, 64, 100, 128, 256}) {
    check_both_forms<TestType>({.len = 300,
                                .heads = 2,
                                .head_dim = 16,
                                .d_state = 16,
                                .chunk = chunk,
                                .skip = true,
                                .bias = true,
                                .softplus = true,
                                .initial = true});
  }
}

TEMPLATE_LIST_TEST_CASE("mamba2 edge cases", "[mamba][mamba2]", ak::test::Backends) {
  SECTION("L = 1") { check_both_forms<TestType>({.len = 1, .head_dim = 7, .d_state = 16, .skip = true, .gate = true}); }
  SECTION("d_state 1 and 64, head_dim off the vector width") {
    check_both_forms<TestType>({.len = 77, .heads = 2, .head_dim = 13, .d_state = 1, .chunk = 32});
    check_both_forms<TestType>({.len = 77, .heads = 2, .head_dim = 64, .d_state = 64, .chunk = 32, .gate = true});
  }
  SECTION("groups > 1 with strided layouts") {
    check_both_forms<TestType>({.batch = 2,
                                .len = 90,
                                .heads = 6,
                                .head_dim = 9,
                                .groups = 3,
                                .d_state = 12,
                                .chunk = 40,
                                .layout = Layout::kBhsd,
                                .skip = true,
                                .gate = true,
                                .initial = true});
    check_both_forms<TestType>({.batch = 2,
                                .len = 90,
                                .heads = 4,
                                .head_dim = 8,
                                .groups = 2,
                                .d_state = 8,
                                .chunk = 33,
                                .layout = Layout::kPaddedStrides,
                                .bias = true,
                                .softplus = true});
  }
  SECTION("empty batch and L = 0 (final state = initial state)") {
    check_both_forms<TestType>({.batch = 0, .len = 5});
    check_both_forms<TestType>({.len = 0, .initial = true});
  }
}

TEMPLATE_LIST_TEST_CASE("mamba2 carries the state between calls", "[mamba][mamba2]", ak::test::Backends) {
  const Mamba2Case whole{.len = 150, .heads = 2, .head_dim = 8, .d_state = 8, .chunk = 32, .initial = true};
  const Mamba2Result full = check_mamba2<TestType>(whole, Form::kChunked);
  Mamba2Run in(whole);
  const Index split = 70;
  auto part = [&](const auto& v, Index begin, Index len) {
    using View = std::remove_cvref_t<decltype(v)>;
    auto extents = v.extents();
    extents[1] = len;
    return View(v.data() + begin * v.stride(1), extents, v.strides());
  };
  std::vector<float> out(150 * 2 * 8), middle(2 * 8 * 8), last(2 * 8 * 8);
  const auto out_view = ak::bshd(out.data(), 1, 150, 2, 8);
  ak::Attention<ak::Mamba2, TestType> ssd({.chunk_size = 32});
  const auto dt = in.dt_view(whole);
  ssd(part(in.x.view, 0, split), part(dt, 0, split), in.a_view(whole), part(in.b.view, 0, split),
      part(in.c.view, 0, split), part(out_view, 0, split),
      {.initial_state = in.args.initial_state,
       .final_state = ak::View<float, 4>::contiguous(middle.data(), {1, 2, 8, 8})});
  ssd(part(in.x.view, split, 150 - split), part(dt, split, 150 - split), in.a_view(whole),
      part(in.b.view, split, 150 - split), part(in.c.view, split, 150 - split), part(out_view, split, 150 - split),
      {.initial_state = ak::View<const float, 4>::contiguous(middle.data(), {1, 2, 8, 8}),
       .final_state = ak::View<float, 4>::contiguous(last.data(), {1, 2, 8, 8})});
  for (std::size_t i = 0; i < out.size(); ++i) CHECK(out[i] == Approx(full.out[i]).margin(full.tolerance));
  for (std::size_t i = 0; i < last.size(); ++i) CHECK(last[i] == Approx(full.state[i]).margin(1e-5));
}

TEMPLATE_LIST_TEST_CASE("mamba2 decode: one-token calls on a state held in place equal the scan", "[mamba][mamba2]",
                        ak::test::Backends) {
  const Mamba2Case whole{.len = 12,
                         .heads = 4,
                         .head_dim = 8,
                         .groups = 2,
                         .d_state = 8,
                         .skip = true,
                         .gate = true,
                         .bias = true,
                         .softplus = true,
                         .initial = true};
  const Mamba2Result scanned = check_mamba2<TestType>(whole, Form::kRecurrent);
  Mamba2Run in(whole);
  std::vector<float> state(in.initial.begin(), in.initial.end()), out(4 * 8);
  const auto state_view = ak::View<float, 4>::contiguous(state.data(), {1, 4, 8, 8});
  ak::Attention<ak::Mamba2, TestType> ssd({.dt_softplus = true, .form = Form::kRecurrent});
  auto token = [](const auto& v, Index t) {
    using View = std::remove_cvref_t<decltype(v)>;
    auto extents = v.extents();
    extents[1] = 1;
    return View(v.data() + t * v.stride(1), extents, v.strides());
  };
  for (Index t = 0; t < whole.len; ++t) {
    ssd(token(in.x.view, t), token(in.dt_view(whole), t), in.a_view(whole), token(in.b.view, t), token(in.c.view, t),
        ak::bshd(out.data(), 1, 1, 4, 8),
        {.d = in.args.d,
         .z = token(in.z.view, t),
         .dt_bias = in.args.dt_bias,
         .initial_state = state_view,
         .final_state = state_view});
    for (std::size_t i = 0; i < out.size(); ++i) CHECK(out[i] == scanned.out[t * out.size() + i]);
  }
  CHECK(std::memcmp(state.data(), scanned.state.data(), state.size() * sizeof(float)) == 0);
}

TEST_CASE("mamba2 results are bitwise equal across backends and thread counts", "[mamba][mamba2]") {
  const Mamba2Case c{.batch = 2,
                     .len = 130,
                     .heads = 4,
                     .head_dim = 16,
                     .groups = 2,
                     .d_state = 16,
                     .chunk = 48,
                     .gate = true,
                     .softplus = true};
  for (Form form : {Form::kChunked, Form::kRecurrent}) {
    const Mamba2Result one = check_mamba2<ak::Simd<>>(c, form);
    for (int threads : {1, 2, 3}) {
      const Mamba2Result many = check_mamba2<ak::OpenMP<>>(c, form, ak::OpenMP<>{.num_threads = threads});
      CHECK(std::memcmp(one.out.data(), many.out.data(), one.out.size() * sizeof(float)) == 0);
      CHECK(std::memcmp(one.state.data(), many.state.data(), one.state.size() * sizeof(float)) == 0);
    }
  }
}

TEST_CASE("mamba2 rejects bad input with a message naming the argument", "[mamba][mamba2][errors]") {
  std::vector<float> buf(4096, 0.5f);
  float* p = buf.data();
  using V1 = ak::View<const float, 1>;
  using V3 = ak::View<const float, 3>;
  using V4 = ak::View<const float, 4>;
  const auto x = V4::contiguous(p, {2, 5, 4, 8});
  const auto dt = V3::contiguous(p, {2, 5, 4});
  const auto a = V1::contiguous(p, {4});
  const auto b = V4::contiguous(p, {2, 5, 2, 6}), c = b;
  const auto out = ak::View<float, 4>::contiguous(p + 2048, {2, 5, 4, 8});
  ak::Attention<ak::Mamba2, ak::Simd<>> ssd;
  using Catch::Contains;
  CHECK_NOTHROW(ssd(x, dt, a, b, c, out));
  CHECK_THROWS_AS(ssd(x, V3::contiguous(p, {2, 5, 3}), a, b, c, out), ak::Error);
  CHECK_THROWS_WITH(ak::Attention<ak::Mamba2>({.chunk_size = 0}),
                    Contains("options.chunk_size is 0, expected in [1, 256]"));
  CHECK_THROWS_WITH(ak::Attention<ak::Mamba2>({.chunk_size = 512}), Contains("options.chunk_size is 512"));
  CHECK_THROWS_WITH(ssd(V4::contiguous(p, {2, 5, 0, 8}), dt, a, b, c, out), Contains("x: heads 0, expected >= 1"));
  CHECK_THROWS_WITH(ssd(V4::contiguous(p, {2, 5, 4, 0}), dt, a, b, c, out), Contains("x: head_dim 0, expected >= 1"));
  CHECK_THROWS_WITH(ssd(V4(nullptr, {2, 5, 4, 8}, {160, 32, 8, 1}), dt, a, b, c, out), Contains("x: data is null"));
  CHECK_THROWS_WITH(ssd(x, V3::contiguous(p, {2, 5, 3}), a, b, c, out), Contains("dt: heads 3, expected 4"));
  CHECK_THROWS_WITH(ssd(x, V3(p, {2, 5, 4}, {20, -4, 1}), a, b, c, out), Contains("dt: stride 1 is -4, expected >= 0"));
  CHECK_THROWS_WITH(ssd(x, dt, V1::contiguous(p, {2}), b, c, out), Contains("A: heads 2, expected 4"));
  std::vector<float> bad_a{-1.0f, std::nanf(""), -1.0f, -1.0f};
  CHECK_THROWS_WITH(ssd(x, dt, V1::contiguous(bad_a.data(), {4}), b, c, out),
                    Contains("A[1] is nan, expected a finite real value"));
  CHECK_THROWS_WITH(ssd(x, dt, a, V4::contiguous(p, {2, 5, 3, 6}), c, out),
                    Contains("B: groups 3, expected a divisor of heads 4"));
  CHECK_THROWS_WITH(ssd(x, dt, a, V4::contiguous(p, {2, 5, 2, 0}), c, out), Contains("B: d_state 0, expected >= 1"));
  CHECK_THROWS_WITH(ssd(x, dt, a, V4::contiguous(p, {2, 4, 2, 6}), c, out), Contains("B: L 4, expected 5"));
  CHECK_THROWS_WITH(ssd(x, dt, a, b, V4::contiguous(p, {2, 5, 2, 5}), out), Contains("C: d_state 5, expected 6"));
  CHECK_THROWS_WITH(ssd(x, dt, a, b, c, ak::View<float, 4>::contiguous(p, {2, 5, 4, 7})),
                    Contains("out: head_dim 7, expected 8"));
  CHECK_THROWS_WITH(ssd(x, dt, a, b, c, out, {.d = V1::contiguous(p, {3})}), Contains("args.D: heads 3, expected 4"));
  CHECK_THROWS_WITH(ssd(x, dt, a, b, c, out, {.z = V4::contiguous(p, {1, 5, 4, 8})}),
                    Contains("args.z: batch 1, expected 2"));
  CHECK_THROWS_WITH(ssd(x, dt, a, b, c, out, {.dt_bias = V1::contiguous(p, {5})}),
                    Contains("args.dt_bias: heads 5, expected 4"));
  std::vector<float> inf_bias(4, INFINITY);
  CHECK_THROWS_WITH(ssd(x, dt, a, b, c, out, {.dt_bias = V1::contiguous(inf_bias.data(), {4})}),
                    Contains("args.dt_bias[0] is inf, expected a finite real value"));
  CHECK_THROWS_WITH(ssd(x, dt, a, b, c, out, {.initial_state = V4::contiguous(p, {2, 4, 6, 8})}),
                    Contains("args.initial_state: head_dim 6, expected 8"));
  CHECK_THROWS_WITH(ssd(x, dt, a, b, c, out, {.final_state = ak::View<float, 4>::contiguous(p, {2, 4, 8, 5})}),
                    Contains("args.final_state: d_state 5, expected 6"));

  // A caller's workspace of exactly workspace_bytes() is enough; less is rejected.
  const std::size_t bytes = ssd.workspace_bytes(x, dt, a, b, c);
  CHECK(bytes > 0);
  std::vector<float> block(bytes / sizeof(float) + 16);
  void* aligned = block.data();
  std::size_t space = block.size() * sizeof(float);
  std::align(64, bytes, aligned, space);
  CHECK_NOTHROW(ssd(x, dt, a, b, c, out, {.workspace = {aligned, bytes}}));
  CHECK_THROWS_WITH(ssd(x, dt, a, b, c, out, {.workspace = {aligned, bytes - 64}}),
                    Contains("workspace: ") && Contains("expected >= "));
}
