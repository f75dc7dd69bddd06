// Runtime ISA dispatch: the x86 vector ISA variants attnkit compiles its kernels for, the one the
// running CPU (capped by the ATTNKIT_ISA environment variable) supports best, and SimdDispatch,
// the inner backend of OpenMP<> that runs kernels of the variant chosen at run time.
//   Isa::sse2     x86-64 baseline (SSE2), 4 floats per vector
//   Isa::avx2     x86-64-v3 (AVX2 + FMA), 8 floats
//   Isa::avx512   x86-64-v4 (AVX-512 F/BW/DQ/VL), 16 floats
// Where the kernels come from: a build through the CMake target attnkit::attnkit links one shared
// library of kernels per variant (libattnkit_kernels_<isa>) and defines ATTNKIT_DISPATCH=1, so a
// consumer compiled with default flags still runs the CPU's best kernels. Header-only use without
// ATTNKIT_DISPATCH runs the ISA the compiler targets (-march=...), whatever SimdDispatch asks.
// Mechanisms whose kernels have no compiled variants yet run the compile-time ISA; their name()
// says which ran.
#pragma once

#include <cstdlib>
#include <optional>
#include <string>
#include <type_traits>
#include <xsimd/xsimd.hpp>

#include "attnkit/backend/cpu.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/view.hpp"

#if !defined(ATTNKIT_DISPATCH)
#define ATTNKIT_DISPATCH 0
#endif

namespace attnkit {

enum class Isa { sse2 = 0, avx2 = 1, avx512 = 2 };

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::sse2:
      return "sse2";
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
  }
  return "?";
}

// Floats per vector of a variant (its registers: registers_for_width, backend/vec.hpp).
constexpr int isa_width(Isa isa) { return isa == Isa::avx512 ? 16 : isa == Isa::avx2 ? 8 : 4; }

// The best variant this CPU runs.
inline Isa cpu_isa() {
  const CpuFeatures& f = cpu_features();
  if (f.avx512f && f.avx512bw && f.avx512dq && f.avx512vl && f.avx2 && f.fma) return Isa::avx512;
  if (f.avx2 && f.fma) return Isa::avx2;
  return Isa::sse2;
}

// The variant whose kernels the compile-time ISA (xsimd::default_arch) runs, if it is one of them:
// a dispatched call pinned to it gives the same bits as Simd<>.
inline std::optional<Isa> compile_time_isa() {
  if constexpr (std::is_same_v<xsimd::default_arch, xsimd::avx512bw>) return Isa::avx512;
  if constexpr (std::is_same_v<xsimd::default_arch, xsimd::fma3<xsimd::avx2>>) return Isa::avx2;
  if constexpr (std::is_same_v<xsimd::default_arch, xsimd::sse2>) return Isa::sse2;
  return std::nullopt;
}

namespace detail {
inline Isa parse_isa(const std::string& text, const char* what) {
  for (Isa isa : {Isa::sse2, Isa::avx2, Isa::avx512})
    if (text == isa_name(isa)) return isa;
  fail(what, " is '", text, "', expected sse2, avx2 or avx512");
}
}  // namespace detail

// The variant kernels run by default: the CPU's best, or less when the environment variable
// ATTNKIT_ISA (sse2, avx2 or avx512) asks for less. Read once.
inline Isa default_isa() {
  static const Isa isa = [] {
    const char* cap = std::getenv("ATTNKIT_ISA");
    if (cap == nullptr || *cap == '\0') return cpu_isa();
    const Isa asked = detail::parse_isa(cap, "environment variable ATTNKIT_ISA");
    return asked < cpu_isa() ? asked : cpu_isa();
  }();
  return isa;
}

// One thread running the kernels of a variant chosen at run time (see the header comment).
// vector_type is the compile-time ISA's: mechanisms without compiled variants use it.
struct SimdDispatch {
  using vector_type = xsimd::batch<float, xsimd::default_arch>;
  std::optional<Isa> isa{};  // the variant to run; none: default_isa()

  static constexpr bool dispatched = ATTNKIT_DISPATCH != 0;
  // The compile-time ISA, for mechanisms that run it.
  static std::string name() { return std::string("simd-") + xsimd::default_arch::name(); }
  int threads() const { return 1; }
  template <class F>
  void parallel_for(Index items, F&& f) const {
    for (Index item = 0; item < items; ++item) f(item, 0);
  }
  // The variant a dispatched kernel runs; an ISA the CPU lacks is an Error.
  Isa resolved_isa() const {
    if (!isa) return default_isa();
    ATTNKIT_CHECK(*isa <= cpu_isa(), "backend isa is ", isa_name(*isa), ", this CPU runs at most ",
                  isa_name(cpu_isa()));
    return *isa;
  }
};

}  // namespace attnkit
