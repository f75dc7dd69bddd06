// exp for the softmax of every kernel.
//   float (Scalar backend): std::exp.
//   xsimd batches: Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, a degree-7 polynomial for
//   e^r (the minimax coefficients published with Cephes' expf), and 2^n built in the exponent
//   bits. Error bound (tested in tests/exp_test.cpp against double exp): at most 2 ulp relative
//   for x in [-87.33, 88.37]; x below -87.33 (including -inf) returns exactly 0, an absolute error
//   under 1.2e-38; x above 88.37 is clamped. Softmax arguments are <= 0, so that range is all the
//   kernels use.
#pragma once

#include <cmath>
#include <cstdint>
#include <xsimd/xsimd.hpp>

namespace attnkit {

inline float exp_approx(float x) { return std::exp(x); }

template <class Arch>
xsimd::batch<float, Arch> exp_approx(const xsimd::batch<float, Arch>& x) {
  using Floats = xsimd::batch<float, Arch>;
  using Ints = xsimd::batch<std::int32_t, Arch>;
  const Floats lowest(-87.33654f);  // ln(2^-126): smallest argument with a normal result
  const Floats highest(88.37626f);  // ln(FLT_MAX)
  const Floats clamped = xsimd::min(xsimd::max(x, lowest), highest);
  const Ints n = xsimd::nearbyint_as_int(clamped * Floats(1.44269504088896341f));
  const Floats nf = xsimd::to_float(n);
  Floats r = xsimd::fma(nf, Floats(-0.693359375f), clamped);  // ln2 split: high part exact
  r = xsimd::fma(nf, Floats(2.12194440e-4f), r);              // ... and the low part
  Floats poly(1.9875691500e-4f);
  poly = xsimd::fma(poly, r, Floats(1.3981999507e-3f));
  poly = xsimd::fma(poly, r, Floats(8.3334519073e-3f));
  poly = xsimd::fma(poly, r, Floats(4.1665795894e-2f));
  poly = xsimd::fma(poly, r, Floats(1.6666665459e-1f));
  poly = xsimd::fma(poly, r, Floats(5.0000001201e-1f));
  poly = xsimd::fma(poly, r * r, r + Floats(1.0f));
  const Floats two_to_n = xsimd::bitwise_cast<Floats>((n + Ints(127)) << 23);
  return xsimd::select(x < lowest, Floats(0.0f), poly * two_to_n);
}

}  // namespace attnkit
