// The ISA axis of the suite: which ISA variants and tile geometries the backend list runs on this
// host (printed), that the list covers the AVX2 and AVX-512 geometries whatever the host, and that
// emulated wide vectors compute what the plain loops compute.
#include <cstdio>
#include <string>

#include "test_util.hpp"

namespace ak = attnkit;

namespace {

template <class Backend>
ak::TileGeometry geometry_of() {
  return ak::RegisterTile<ak::vector_t<Backend>>::geometry;
}

template <class... B>
void print_backends(std::tuple<B...>*) {
  (std::printf("  %-28s vector %2d floats, register tile %2d x %2d\n", B::name().c_str(), geometry_of<B>().width,
               geometry_of<B>().mr, geometry_of<B>().cols()),
   ...);
}

}  // namespace

TEST_CASE("the backend list covers the SSE2, AVX2 and AVX-512 tile geometries on any host", "[isa]") {
  std::printf("host ISA: %s\nbackends the suite runs:\n", ak::cpu_features().describe().c_str());
  print_backends(static_cast<ak::test::Backends*>(nullptr));
  CHECK(geometry_of<ak::test::Sse2>() == ak::tile_geometry(4, 16));
  CHECK(geometry_of<ak::test::Avx2Geometry>() == ak::tile_geometry(8, 16));
  CHECK(geometry_of<ak::test::Avx512Geometry>() == ak::tile_geometry(16, 32));
  CHECK(ak::tile_geometry(8, 16).mr == 6);
  CHECK(ak::tile_geometry(16, 32).mr == 12);
  CHECK(ak::tile_geometry(16, 32).cols() == 32);
}

TEMPLATE_TEST_CASE("emulated wide vectors compute what plain loops compute", "[isa]",
                   (ak::Wide<xsimd::batch<float, xsimd::sse2>, 4>), (ak::Wide<float, 8>)) {
  using V = TestType;
  using Ops = ak::VecOps<V>;
  constexpr int W = Ops::width;
  const std::vector<float> a = ak::test::uniform(W, 1, -3.0f, 3.0f), b = ak::test::uniform(W, 2, -3.0f, 3.0f),
                           c = ak::test::uniform(W, 3, -3.0f, 3.0f);
  const V va = Ops::load(a.data()), vb = Ops::load(b.data()), vc = Ops::load(c.data());
  float got[W];
  auto check_lanes = [&](const V& x, auto&& expected) {
    Ops::store(got, x);
    for (int i = 0; i < W; ++i) CHECK(got[i] == Approx(expected(i)).epsilon(1e-6).margin(1e-30));
  };
  check_lanes(Ops::fma(va, vb, vc), [&](int i) { return std::fma(a[i], b[i], c[i]); });
  check_lanes(va + vb * vc - va / vb, [&](int i) { return a[i] + b[i] * c[i] - a[i] / b[i]; });
  check_lanes(-va, [&](int i) { return -a[i]; });
  check_lanes(Ops::max(va, vb), [&](int i) { return std::max(a[i], b[i]); });
  check_lanes(Ops::min(va, vb), [&](int i) { return std::min(a[i], b[i]); });
  check_lanes(Ops::greater_select(va, 0.5f, vb, vc), [&](int i) { return a[i] > 0.5f ? b[i] : c[i]; });
  check_lanes(ak::exp_approx(va), [&](int i) { return std::exp(a[i]); });
  check_lanes(Ops::log1p(Ops::max(va, Ops::zero())), [&](int i) { return std::log1p(std::max(a[i], 0.0f)); });
  double sum = 0, best = a[0];
  std::uint32_t bits = 0;
  for (int i = 0; i < W; ++i) {
    sum += a[i];
    best = std::max<double>(best, a[i]);
    bits |= static_cast<std::uint32_t>(a[i] > 0.0f) << i;
  }
  CHECK(Ops::sum(va) == Approx(sum).margin(1e-5));
  CHECK(Ops::reduce_max(va) == static_cast<float>(best));
  CHECK(Ops::positive_lanes(va) == bits);
}
