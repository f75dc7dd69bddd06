// The vectorized exp of backend/exp.hpp against double-precision exp over its whole normal range,
// and its stated behaviour outside it: 0 below, +inf above ln(FLT_MAX), NaN for NaN.
#include <catch2/catch.hpp>

#include <attnkit/backend/exp.hpp>
#include <cmath>
#include <limits>

namespace {

// Distance in units of the float spacing at the exact value.
double ulp_error(float got, double exact) {
  const float rounded = static_cast<float>(exact);
  const double ulp = std::nextafter(rounded, std::numeric_limits<float>::infinity()) - rounded;
  return std::abs(static_cast<double>(got) - exact) / ulp;
}

}  // namespace

TEST_CASE("exp_approx is within 2 ulp of exp on [-86.98, 88.72]", "[exp]") {
  using Batch = xsimd::batch<float>;
  constexpr int W = static_cast<int>(Batch::size);
  double worst = 0;
  float worst_at = 0;
  alignas(64) float in[W], out[W];
  // Every float of [-1, 1] at a stride, plus a dense sweep of the whole range.
  int filled = 0;
  auto flush = [&] {
    attnkit::exp_approx(Batch::load_aligned(in)).store_aligned(out);
    for (int i = 0; i < filled; ++i) {
      const double error = ulp_error(out[i], std::exp(static_cast<double>(in[i])));
      if (error > worst) worst = error, worst_at = in[i];
    }
    filled = 0;
  };
  auto add = [&](float x) {
    in[filled++] = x;
    if (filled == W) flush();
  };
  for (float x = -1.0f; x <= 1.0f; x = std::nextafter(x, 2.0f) + 1e-6f) add(x);
  for (double x = -86.98; x <= 88.72; x += 1.37e-4) add(static_cast<float>(x));
  // The ends: the lowest argument kept, and the largest float below ln(FLT_MAX).
  for (float x : {-86.9899f, 88.72283f, 88.5f, 0.0f, -0.0f, 1e-30f, -1e-30f}) add(x);
  while (filled != 0) add(0.0f);
  INFO("worst error " << worst << " ulp at x = " << worst_at);
  CHECK(worst <= 2.0);
}

TEST_CASE("exp_approx flushes below the normal range and at -inf to zero", "[exp]") {
  using Batch = xsimd::batch<float>;
  for (float x : {-86.991f, -87.5f, -100.0f, -1e30f, -std::numeric_limits<float>::infinity()})
    CHECK(attnkit::exp_approx(Batch(x)).get(0) == 0.0f);
  CHECK(attnkit::exp_approx(Batch(0.0f)).get(0) == 1.0f);
  CHECK(attnkit::exp_approx(1.5f) == std::exp(1.5f));  // Scalar backend: std::exp
}

TEST_CASE("exp_approx overflows to +inf past ln(FLT_MAX) and keeps NaN, as std::exp", "[exp]") {
  using Batch = xsimd::batch<float>;
  constexpr float inf = std::numeric_limits<float>::infinity();
  CHECK(std::isfinite(attnkit::exp_approx(Batch(88.72283f)).get(0)));  // just below ln(FLT_MAX)
  for (float x : {88.7228394f, 89.0f, 100.0f, 1e30f, inf}) {
    INFO("x = " << x);
    CHECK(attnkit::exp_approx(Batch(x)).get(0) == inf);
    CHECK(std::exp(x) == inf);
  }
  CHECK(std::isnan(attnkit::exp_approx(Batch(std::nanf(""))).get(0)));
  CHECK(std::isnan(attnkit::exp_approx(Batch(-std::nanf(""))).get(0)));
  // Every lane on its own: a NaN or inf lane leaves its neighbours exact.
  constexpr int W = static_cast<int>(Batch::size);
  alignas(64) float in[W], out[W];
  for (int i = 0; i < W; ++i) in[i] = i % 3 == 0 ? std::nanf("") : i % 3 == 1 ? inf : -1.0f;
  attnkit::exp_approx(Batch::load_aligned(in)).store_aligned(out);
  for (int i = 0; i < W; ++i) {
    if (i % 3 == 0) CHECK(std::isnan(out[i]));
    if (i % 3 == 1) CHECK(out[i] == inf);
    if (i % 3 == 2) CHECK(out[i] == Approx(std::exp(-1.0f)).epsilon(3e-7));
  }
  CHECK(std::isnan(attnkit::exp_approx(std::nanf(""))));  // Scalar backend: std::exp
  CHECK(attnkit::exp_approx(inf) == inf);
}
