// Wide<B, N>: N vectors of B (an xsimd batch or float) acting as one vector of N times the width.
// It lets the tile geometry of a wider ISA run, and be tested, on a host that lacks it: VecOps of
// Wide<batch<float, avx2>, 2> has the width and register count of AVX-512, so the kernels plan
// and run the AVX-512 tile shapes with AVX2 instructions. Lanes are part-major: lane i is lane
// i % width(B) of part i / width(B). Not a fast path; kernels never pick it themselves.
#pragma once

#include <algorithm>
#include <cstdint>

#include "attnkit/backend/exp.hpp"
#include "attnkit/backend/vec.hpp"

namespace attnkit {

template <class B, int N>
struct Wide {
  static_assert(N >= 1, "a wide vector has at least one part");
  B part[N];

  Wide() = default;
  Wide(float x) {  // NOLINT(google-explicit-constructor): broadcasts, like an xsimd batch
    for (int i = 0; i < N; ++i) part[i] = B(x);
  }

  template <class F>
  static Wide map(F&& f, const Wide& a) {
    Wide r;
    for (int i = 0; i < N; ++i) r.part[i] = f(a.part[i]);
    return r;
  }
  template <class F>
  static Wide zip(F&& f, const Wide& a, const Wide& b) {
    Wide r;
    for (int i = 0; i < N; ++i) r.part[i] = f(a.part[i], b.part[i]);
    return r;
  }

  friend Wide operator+(const Wide& a, const Wide& b) {
    return zip([](const B& x, const B& y) { return B(x + y); }, a, b);
  }
  friend Wide operator-(const Wide& a, const Wide& b) {
    return zip([](const B& x, const B& y) { return B(x - y); }, a, b);
  }
  friend Wide operator*(const Wide& a, const Wide& b) {
    return zip([](const B& x, const B& y) { return B(x * y); }, a, b);
  }
  friend Wide operator/(const Wide& a, const Wide& b) {
    return zip([](const B& x, const B& y) { return B(x / y); }, a, b);
  }
  friend Wide operator-(const Wide& a) {
    return map([](const B& x) { return B(-x); }, a);
  }
};

template <class B, int N>
Wide<B, N> exp_approx(const Wide<B, N>& x) {
  return Wide<B, N>::map([](const B& p) { return B(exp_approx(p)); }, x);
}

template <class B, int N>
struct VecOps<Wide<B, N>> {
  using V = Wide<B, N>;
  using Part = VecOps<B>;
  static constexpr int width = N * Part::width;
  static constexpr int registers = registers_for_width(width);  // those of the ISA it stands for
  template <class T>
  static V load(const T* p) {
    V r;
    for (int i = 0; i < N; ++i) r.part[i] = Part::load(p + i * Part::width);
    return r;
  }
  static void load_pair_halves(const std::uint32_t* words, V& even, V& odd) {
    for (int i = 0; i < N; ++i) Part::load_pair_halves(words + i * Part::width, even.part[i], odd.part[i]);
  }
  static void store_bf16_pairs(const V& low, const V& high, std::uint32_t* words) {
    for (int i = 0; i < N; ++i) Part::store_bf16_pairs(low.part[i], high.part[i], words + i * Part::width);
  }
  static void store(float* p, const V& x) {
    for (int i = 0; i < N; ++i) Part::store(p + i * Part::width, x.part[i]);
  }
  static V broadcast(float x) { return V(x); }
  static V zero() { return V(0.0f); }
  static V fma(const V& a, const V& b, const V& c) {
    V r;
    for (int i = 0; i < N; ++i) r.part[i] = Part::fma(a.part[i], b.part[i], c.part[i]);
    return r;
  }
  static V max(const V& a, const V& b) {
    return V::zip([](const B& x, const B& y) { return Part::max(x, y); }, a, b);
  }
  static V min(const V& a, const V& b) {
    return V::zip([](const B& x, const B& y) { return Part::min(x, y); }, a, b);
  }
  static V log1p(const V& x) {
    return V::map([](const B& p) { return Part::log1p(p); }, x);
  }
  static V greater_select(const V& x, float threshold, const V& if_greater, const V& otherwise) {
    V r;
    for (int i = 0; i < N; ++i)
      r.part[i] = Part::greater_select(x.part[i], threshold, if_greater.part[i], otherwise.part[i]);
    return r;
  }
  static float sum(const V& x) {
    float total = 0.0f;
    for (int i = 0; i < N; ++i) total += Part::sum(x.part[i]);
    return total;
  }
  // Lane i (part i / PW, lane i % PW) = the sum of rows[i]: each row's parts added, then the
  // part type's transpose-and-add over PW rows at a time.
  static V transpose_sum(const V* rows) {
    constexpr int PW = Part::width;
    V r;
    for (int p = 0; p < N; ++p) {
      B folded[PW];
      for (int l = 0; l < PW; ++l) {
        folded[l] = rows[p * PW + l].part[0];
        for (int i = 1; i < N; ++i) folded[l] = folded[l] + rows[p * PW + l].part[i];
      }
      r.part[p] = Part::transpose_sum(folded);
    }
    return r;
  }
  static float reduce_max(const V& x) {
    float best = Part::reduce_max(x.part[0]);  // parts skip NaN lanes, so best is never NaN
    for (int i = 1; i < N; ++i) best = std::max(best, Part::reduce_max(x.part[i]));
    return best;
  }
  static std::uint32_t positive_lanes(const V& x) {
    std::uint32_t bits = 0;
    for (int i = 0; i < N; ++i) bits |= Part::positive_lanes(x.part[i]) << (i * Part::width);
    return bits;
  }
};

}  // namespace attnkit
