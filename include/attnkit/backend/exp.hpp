// exp for the softmax of every kernel.
//   float (Scalar backend): std::exp.
//   xsimd batches: Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, a degree-7 polynomial for
//   e^r (the minimax coefficients published with Cephes' expf), and 2^n built in the exponent
//   bits (as 2^(n-1) times a polynomial for 2 e^r, so that n = 128 fits). Error bound (tested in
//   tests/exp_test.cpp against double exp): at most 2 ulp relative for x in [-86.99, 88.72], the
//   whole range with a normal result but its lowest 0.35 (ln(2^-125.5) to ln(FLT_MAX)).
//   Outside it, as std::exp: x below -86.99 (including -inf) returns exactly 0 (an absolute error
//   under 1.7e-38: subnormal results are flushed); x above ln(FLT_MAX) = 88.72 (including +inf)
//   returns +inf; NaN returns NaN.
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
  const Floats lowest(-86.9899f);  // just above ln(2^-125.5): n >= -125, so 2^(n-1) is normal
  // Clamped so that n is in [-125, 128]: from ln(FLT_MAX) = 88.72 to the bound 89 the result
  // exceeds FLT_MAX and the last product rounds to +inf, as it does for every larger x. The operand
  // order lets NaN through: x86 MAXPS / MINPS return their second operand when either is NaN.
  const Floats clamped = xsimd::min(Floats(89.0f), xsimd::max(lowest, x));
  const Ints n = xsimd::nearbyint_as_int(clamped * Floats(1.44269504088896341f));
  const Floats nf = xsimd::to_float(n);
  Floats r = xsimd::fma(nf, Floats(-0.693359375f), clamped);  // ln2 split: high part exact
  r = xsimd::fma(nf, Floats(2.12194440e-4f), r);              // ... and the low part
  // 2 e^r: Cephes' coefficients doubled (exact), so the result has the bits of e^r times 2.
  Floats poly(2.0f * 1.9875691500e-4f);
  poly = xsimd::fma(poly, r, Floats(2.0f * 1.3981999507e-3f));
  poly = xsimd::fma(poly, r, Floats(2.0f * 8.3334519073e-3f));
  poly = xsimd::fma(poly, r, Floats(2.0f * 4.1665795894e-2f));
  poly = xsimd::fma(poly, r, Floats(2.0f * 1.6666665459e-1f));
  poly = xsimd::fma(poly, r, Floats(2.0f * 5.0000001201e-1f));
  poly = xsimd::fma(poly, r * r, xsimd::fma(r, Floats(2.0f), Floats(2.0f)));
  const Floats two_to_n_minus_1 = xsimd::bitwise_cast<Floats>((n + Ints(126)) << 23);
  return xsimd::select(x < lowest, Floats(0.0f), poly * two_to_n_minus_1);
}

}  // namespace attnkit
