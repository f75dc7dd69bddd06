// What the fuzz target (attnkit_fuzz.cpp) is made of besides the mechanisms: a reader that turns
// libFuzzer's bytes into choices, tensors in the layouts the tests use filled from a byte-chosen
// seed and byte-placed values, aligned caller workspaces, and the oracle that compares a kernel's
// output with its float64 reference twin by the tolerance rule of design.md section 4 and the
// non-finite contract (NaN where the reference is NaN, the same infinity where it is infinite).
// Needs no Catch2. Not here: which mechanism runs how (attnkit_fuzz.cpp).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <new>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <attnkit/core/view.hpp>

#include "../tests/tensor.hpp"

namespace attnkit::fuzz {

// Non-finite inputs (NaN, +-Inf, huge, denormal values) are generated only in this mode: compiled
// in with -DATTNKIT_FUZZ_NONFINITE=1, or at run time with the environment ATTNKIT_FUZZ_NONFINITE=1.
inline bool nonfinite_mode() {
  static const bool on = [] {
#if defined(ATTNKIT_FUZZ_NONFINITE) && ATTNKIT_FUZZ_NONFINITE
    return true;
#else
    const char* env = std::getenv("ATTNKIT_FUZZ_NONFINITE");
    return env != nullptr && std::string_view(env) == "1";
#endif
  }();
  return on;
}

// Choices from the input bytes. An exhausted input reads zeros, which decode to the plainest
// choice (the first of a list, the low end of a range, no rare flag).
class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t size) : p_(data), end_(data + size) {}

  std::uint8_t byte() { return p_ < end_ ? *p_++ : 0; }
  std::uint32_t u16() { return byte() | (std::uint32_t(byte()) << 8); }
  std::uint32_t u32() { return u16() | (u16() << 16); }
  // An integer in [lo, hi].
  Index range(Index lo, Index hi) {
    const std::uint64_t span = static_cast<std::uint64_t>(hi - lo) + 1;
    const std::uint64_t raw = span <= 256 ? byte() : span <= 65536 ? u16() : u32();
    return lo + static_cast<Index>(raw % span);
  }
  bool flag() { return byte() & 1; }
  // True for one byte value in n (never for an exhausted input).
  bool one_in(int n) { return byte() % n == static_cast<unsigned>(n - 1); }
  template <class T, std::size_t N>
  T pick(const std::array<T, N>& choices) {
    return choices[byte() % N];
  }
  std::size_t left() const { return static_cast<std::size_t>(end_ - p_); }

 private:
  const std::uint8_t* p_;
  const std::uint8_t* end_;
};

// Values of one input tensor: a seeded distribution, optionally non-finite specials mixed in,
// then a few values placed by the bytes.
struct ValueSpec {
  enum Kind { kUniform, kSmallIntegers, kSparse, kConstant };
  Kind kind = kUniform;
  float lo = -1.0f, hi = 1.0f;
  std::uint32_t seed = 1;
  int special_per_mille = 0;  // non-finite mode: share of special values

  static ValueSpec decode(Reader& r, float lo, float hi) {
    ValueSpec s;
    s.kind = static_cast<Kind>(r.byte() % 4 == 3 ? 1 + r.byte() % 3 : 0);
    s.lo = lo;
    s.hi = hi;
    s.seed = r.u16();
    if (nonfinite_mode() && r.one_in(2)) s.special_per_mille = 1 + r.byte() % 50;
    return s;
  }
  std::string describe() const {
    static const char* kinds[] = {"uniform", "small integers", "sparse", "constant"};
    std::ostringstream out;
    out << kinds[kind] << " [" << lo << ", " << hi << "] seed " << seed;
    if (special_per_mille > 0) out << " specials " << special_per_mille << "/1000";
    return out.str();
  }
};

inline float special_value(std::uint32_t which) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  const float specials[] = {
      std::numeric_limits<float>::quiet_NaN(), inf,    -inf,  1e30f, -1e30f, std::numeric_limits<float>::max(),
      -std::numeric_limits<float>::max(),      1e-40f, -0.0f, 3e38f};
  return specials[which % (sizeof(specials) / sizeof(specials[0]))];
}

// n values of a spec, then up to 3 byte-placed values ((int8) byte / 8, or in non-finite mode a
// special for the top byte values).
inline std::vector<float> make_values(std::size_t n, const ValueSpec& spec, Reader& r) {
  std::vector<float> x(n);
  std::mt19937 rng(spec.seed);
  std::uniform_real_distribution<float> uniform(spec.lo, spec.hi);
  const float constant = uniform(rng);
  const int lo = static_cast<int>(std::ceil(spec.lo)), hi = static_cast<int>(std::floor(spec.hi));
  for (float& e : x) {
    switch (spec.kind) {
      case ValueSpec::kUniform:
        e = uniform(rng);
        break;
      case ValueSpec::kSmallIntegers:
        e = hi >= lo ? static_cast<float>(lo + static_cast<int>(rng() % static_cast<unsigned>(hi - lo + 1))) : 0.0f;
        break;
      case ValueSpec::kSparse:
        e = rng() % 8 == 0 ? uniform(rng) : 0.0f;
        break;
      case ValueSpec::kConstant:
        e = constant;
        break;
    }
    if (spec.special_per_mille > 0 && static_cast<int>(rng() % 1000) < spec.special_per_mille) e = special_value(rng());
  }
  const int placed = r.byte() % 4;
  for (int i = 0; i < placed && n > 0; ++i) {
    const std::size_t at = r.u16() % n;
    const std::uint8_t b = r.byte();
    x[at] = nonfinite_mode() && b >= 240 ? special_value(b) : static_cast<float>(static_cast<std::int8_t>(b)) / 8.0f;
  }
  return x;
}

using test::Layout;
using test::layout_name;
using test::Tensor4;

// Fills a tensor's logical elements from the bytes (once per memory element for a broadcast
// batch).
inline void fill(Tensor4& t, const ValueSpec& spec, Reader& r) {
  t.assign(make_values(static_cast<std::size_t>(t.distinct_elements()), spec, r));
}

// Caller workspace of exactly `bytes`, 64-byte aligned: AddressSanitizer sees a kernel that
// writes past what workspace_bytes() promised.
class AlignedBlock {
 public:
  explicit AlignedBlock(std::size_t bytes)
      : bytes_(bytes), data_(bytes > 0 ? ::operator new (bytes, std::align_val_t{64}) : nullptr) {}
  ~AlignedBlock() {
    if (data_ != nullptr) ::operator delete (data_, std::align_val_t{64});
  }
  AlignedBlock(const AlignedBlock&) = delete;
  AlignedBlock& operator=(const AlignedBlock&) = delete;
  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }

 private:
  std::size_t bytes_;
  void* data_;
};

// Outputs of one check, element by element in logical order: the kernel's (float), the
// reference's in double (exact) and in float (naive, the "straightforward float implementation"
// of the tolerance rule).
struct Oracle {
  std::vector<float> got;
  std::vector<double> exact, naive;

  void add(double g, double e, double n) {
    got.push_back(static_cast<float>(g));
    exact.push_back(e);
    naive.push_back(n);
  }
  template <class A, class B>
  void add_all(const View<float, 4>& g, const View<A, 4>& e, const View<B, 4>& n) {
    for (Index i = 0; i < g.extent(0); ++i)
      for (Index j = 0; j < g.extent(1); ++j)
        for (Index k = 0; k < g.extent(2); ++k)
          for (Index l = 0; l < g.extent(3); ++l) add(g(i, j, k, l), e(i, j, k, l), n(i, j, k, l));
  }
  template <class A, class B>
  void add_all(const View<float, 3>& g, const View<A, 3>& e, const View<B, 3>& n) {
    for (Index i = 0; i < g.extent(0); ++i)
      for (Index j = 0; j < g.extent(1); ++j)
        for (Index k = 0; k < g.extent(2); ++k) add(g(i, j, k), e(i, j, k), n(i, j, k));
  }
};

// Whether x and y are the same kind of non-finite value (both NaN, or the same infinity).
inline bool same_nonfinite(double x, double y) { return (std::isnan(x) && std::isnan(y)) || (std::isinf(x) && x == y); }

struct Verdict {
  bool ok = true;     // within the fuzz tolerance (below); a failure is a finding
  bool tight = true;  // within the tests' tolerance (2x the float twin's error plus 1e-6)
  double error = 0, float_error = 0, tolerance = 0, tight_tolerance = 0, magnitude = 0;
  std::size_t worst = 0;
  std::string what;
};

// Over the elements where the reference and its float twin are finite: the tests' rule (the
// kernel's max error at most 2x the float twin's plus 1e-6 * max(1, largest |reference|)) holds
// on their random data, but a fuzzer finds inputs where the float twin's rounding is lucky (one
// key dominating a softmax of logits ~1e3, say) and the kernel's reduction order is not. So a
// finding is an error above 4x the float twin's plus 1e-4 * max(1, largest |reference|) (~1700
// ulp, far below what a wrong mask, scale, length or state gives); the tests' rule is reported
// separately (Verdict::tight). Where the reference is NaN or infinite the kernel must be the same
// (or, where float rounding made the float twin non-finite differently, the same as the float
// twin); where only the float twin overflowed, a finite kernel value is accepted. Where the finite
// references come within 2^10 of FLT_MAX, float intermediates overflow or not by rounding and
// summation order (an SSM state at 3.3e38 in one order is +Inf in another, and then meets -Inf),
// so there a non-finite kernel value is accepted where the reference is non-finite, whichever
// it is (README, Conventions).
inline Verdict judge(const Oracle& o, double magnitude_floor = 1.0) {
  Verdict v;
  v.magnitude = magnitude_floor;
  for (std::size_t i = 0; i < o.exact.size(); ++i)
    if (std::isfinite(o.exact[i]) && std::isfinite(o.naive[i])) {
      v.float_error = std::max(v.float_error, std::abs(o.naive[i] - o.exact[i]));
      v.magnitude = std::max(v.magnitude, std::abs(o.exact[i]));
    }
  v.tight_tolerance = 2.0 * v.float_error + 1e-6 * std::max(1.0, v.magnitude);
  v.tolerance = 4.0 * v.float_error + 1e-4 * std::max(1.0, v.magnitude);
  const bool near_overflow = v.magnitude >= std::numeric_limits<float>::max() / 1024;
  double worst_excess = 0;
  for (std::size_t i = 0; i < o.exact.size(); ++i) {
    const double g = o.got[i], e = o.exact[i], n = o.naive[i];
    if (std::isfinite(e) && std::isfinite(n)) {
      const double diff = std::isfinite(g) ? std::abs(g - e) : INFINITY;
      v.error = std::max(v.error, diff);
      if (diff > v.tight_tolerance) v.tight = false;
      if (diff > v.tolerance && diff - v.tolerance >= worst_excess) {
        worst_excess = diff - v.tolerance;
        v.ok = false;
        v.worst = i;
        v.what = "error above tolerance";
      }
    } else if (std::isfinite(e)) {
      // The float twin overflowed where the double one did not: the float formula's result is
      // non-finite there and which non-finite value depends on summation order, while a finite
      // one is nearer the reference (README, Conventions): any kernel value passes. (A non-finite
      // kernel value where both twins are finite fails above, as an infinite error.)
      continue;
    } else if (!same_nonfinite(g, e) && !(!std::isfinite(n) && same_nonfinite(g, n)) &&
               !(near_overflow && !std::isfinite(g))) {
      v.ok = v.tight = false;
      v.worst = i;
      v.what = "reference non-finite, kernel differs";
    }
  }
  return v;
}

inline std::string describe(const Oracle& o, const Verdict& v) {
  std::ostringstream out;
  out << v.what << ": kernel error " << v.error << ", float twin error " << v.float_error << ", tolerance "
      << v.tolerance << " (tests' rule " << v.tight_tolerance << "), largest |reference| " << v.magnitude;
  if (!o.exact.empty())
    out << "; element " << v.worst << " of " << o.exact.size() << ": kernel " << o.got[v.worst] << ", reference "
        << o.exact[v.worst] << ", float twin " << o.naive[v.worst];
  return out.str();
}

}  // namespace attnkit::fuzz
