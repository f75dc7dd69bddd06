// Backend policies: how a kernel's loops run. They know nothing of attention.
//   Scalar             plain loops on float, one thread: the portable floor and a debugging aid.
//   Simd<Arch>         xsimd batches of Arch (default: the best the compiler targets), one thread;
//                      Simd<Emulated<Arch, N>> runs the tile geometry of an N times wider ISA.
//   SimdDispatch       one thread, the ISA variant chosen at run time (backend/dispatch.hpp).
//   OpenMP<Inner>      independent work items over OpenMP threads, each running Inner's loops;
//                      thread count from the OpenMP runtime unless `num_threads` is set.
//                      OpenMP<> runs SimdDispatch: the running CPU's best kernels.
// Each policy gives name(), threads(), parallel_for(items, f) calling f(item, thread_slot), and
// its vector type through vector_t<Backend>.
#pragma once

#include <string>
#include <xsimd/xsimd.hpp>

#include "attnkit/backend/dispatch.hpp"
#include "attnkit/backend/wide.hpp"
#include "attnkit/core/view.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace attnkit {

struct Scalar {
  using vector_type = float;
  static std::string name() { return "scalar"; }
  int threads() const { return 1; }
  template <class F>
  void parallel_for(Index items, F&& f) const {
    for (Index item = 0; item < items; ++item) f(item, 0);
  }
};

// The ISA of N vectors of Arch taken as one (backend/wide.hpp): Simd<Emulated<avx2, 2>> runs the
// AVX-512 tile geometry with AVX2 instructions, so it can be tested on a host without AVX-512.
template <class Arch, int N>
struct Emulated {
  static std::string name() { return std::string(Arch::name()) + "x" + std::to_string(N); }
};

namespace detail {
template <class Arch>
struct SimdVector {
  using type = xsimd::batch<float, Arch>;
};
template <class Arch, int N>
struct SimdVector<Emulated<Arch, N>> {
  using type = Wide<xsimd::batch<float, Arch>, N>;
};
}  // namespace detail

template <class Arch = xsimd::default_arch>
struct Simd {
  using vector_type = typename detail::SimdVector<Arch>::type;
  static std::string name() { return std::string("simd-") + Arch::name(); }
  int threads() const { return 1; }
  template <class F>
  void parallel_for(Index items, F&& f) const {
    for (Index item = 0; item < items; ++item) f(item, 0);
  }
};

template <class Inner = SimdDispatch>
struct OpenMP {
  using vector_type = typename Inner::vector_type;
  int num_threads = 0;  // 0: the OpenMP runtime's default (OMP_NUM_THREADS)
  Inner inner{};        // what each thread runs (SimdDispatch: which ISA variant)

  static std::string name() { return "openmp-" + Inner::name(); }
  int threads() const {
#if defined(_OPENMP)
    return num_threads > 0 ? num_threads : omp_get_max_threads();
#else
    return 1;
#endif
  }
  // Items are scheduled dynamically one at a time; f must not throw.
  template <class F>
  void parallel_for(Index items, F&& f) const {
#if defined(_OPENMP)
    const int team = static_cast<int>(std::min<Index>(threads(), std::max<Index>(items, 1)));
#pragma omp parallel for schedule(dynamic, 1) num_threads(team)
    for (Index item = 0; item < items; ++item) f(item, omp_get_thread_num());
#else
    for (Index item = 0; item < items; ++item) f(item, 0);
#endif
  }
};

template <class Backend>
using vector_t = typename Backend::vector_type;

// Whether a backend's kernels are picked at run time (SimdDispatch inside, compiled variants
// linked), and its inner SimdDispatch.
template <class Backend>
inline constexpr bool is_dispatched = false;
template <>
inline constexpr bool is_dispatched<SimdDispatch> = SimdDispatch::dispatched;
template <class Inner>
inline constexpr bool is_dispatched<OpenMP<Inner>> = is_dispatched<Inner>;

inline const SimdDispatch& dispatch_of(const SimdDispatch& backend) { return backend; }
template <class Inner>
const SimdDispatch& dispatch_of(const OpenMP<Inner>& backend) {
  return dispatch_of(backend.inner);
}

// The fastest backend: every thread, the CPU's best ISA variant.
using DefaultBackend = OpenMP<>;

}  // namespace attnkit
