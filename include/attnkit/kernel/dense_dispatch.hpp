// The dense kernel behind any backend, dispatched ISA variants included (backend/dispatch.hpp):
//   dense_geometry(backend)   the register tile a plan for this backend must use
//   dense_backend_name(b)     the backend part of name(): the variant that runs
//   dense_products(b, ...)    the products a plan asks for: float, bfloat16 pairs or AMX tiles,
//                             each only where the variant that runs and the CPU have them
//   run_dense(backend, ...)   a static backend runs its own vector type here; a dispatched one
//                             calls the variant compiled into libattnkit_kernels_<isa>.
// Compiled variants export one table of entry points each (DenseVariants), one per mask policy.
#pragma once

#include <string>
#include <type_traits>

#include "attnkit/backend/backend.hpp"
#include "attnkit/backend/dispatch.hpp"
#include "attnkit/kernel/dense.hpp"
#include "attnkit/tile/mask.hpp"
#include "attnkit/tile/tile_shape.hpp"

namespace attnkit::detail {

// Entry points of one compiled variant: run_dense_kernel over `threads` OpenMP threads.
struct DenseVariants {
  void (*no_mask)(int threads, const DenseLaunch&, const tile::NoMask&);
  void (*causal)(int threads, const DenseLaunch&, const tile::CausalMask&);
  void (*window)(int threads, const DenseLaunch&, const tile::WindowMask&);
  bool native_bf16_pairs;  // built with AVX512-BF16: bfloat16 pairs run vdpbf16ps
  bool native_amx_bf16;    // an AVX-512 variant: AMX tiles run tdpbf16ps where the CPU has it

  void run(int threads, const DenseLaunch& call, const tile::NoMask& mask) const { no_mask(threads, call, mask); }
  void run(int threads, const DenseLaunch& call, const tile::CausalMask& mask) const { causal(threads, call, mask); }
  void run(int threads, const DenseLaunch& call, const tile::WindowMask& mask) const { window(threads, call, mask); }
};

}  // namespace attnkit::detail

#if ATTNKIT_DISPATCH
// Defined in src/dense_kernels.cpp, compiled once per variant.
extern "C" const attnkit::detail::DenseVariants* attnkit_dense_variants_sse2();
extern "C" const attnkit::detail::DenseVariants* attnkit_dense_variants_avx2();
extern "C" const attnkit::detail::DenseVariants* attnkit_dense_variants_avx512();
#endif

namespace attnkit::detail {

#if ATTNKIT_DISPATCH
inline const DenseVariants& dense_variants(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return *attnkit_dense_variants_avx512();
    case Isa::avx2:
      return *attnkit_dense_variants_avx2();
    case Isa::sse2:
      break;
  }
  return *attnkit_dense_variants_sse2();
}
#endif

template <class Backend>
TileGeometry dense_geometry(const Backend& backend) {
  if constexpr (is_dispatched<Backend>) {
    const Isa isa = dispatch_of(backend).resolved_isa();
    return tile_geometry(isa_width(isa), registers_for_width(isa_width(isa)));
  } else {
    return RegisterTile<vector_t<Backend>>::geometry;
  }
}

template <class Backend>
std::string dense_backend_name(const Backend& backend) {
  if constexpr (is_dispatched<Backend>) {
    const std::string variant = std::string("simd-") + isa_name(dispatch_of(backend).resolved_isa());
    if constexpr (std::is_same_v<Backend, SimdDispatch>)
      return variant;
    else
      return "openmp-" + variant;
  } else {
    return Backend::name();
  }
}

// The products of a plan for this backend, for bfloat16 Q and K, given the fastest wanted: AMX
// tiles where the kernels that run are AVX-512 ones and the CPU has AMX-BF16; else bfloat16 pairs
// where those kernels have vdpbf16ps and the CPU has AVX512-BF16; else float (never an
// emulation: those run only at the kernel layer, in tests).
template <class Backend>
DenseProducts dense_products(const Backend& backend, Storage q, Storage kv, DenseProducts wanted) {
  if (q != Storage::bf16 || kv != Storage::bf16) return DenseProducts::f32;
  bool native_pairs = false, native_amx = false;
  if constexpr (is_dispatched<Backend>) {
#if ATTNKIT_DISPATCH
    const DenseVariants& variant = dense_variants(dispatch_of(backend).resolved_isa());
    native_pairs = variant.native_bf16_pairs;
    native_amx = variant.native_amx_bf16;
#endif
  } else {
    native_pairs = tile::kNativeBf16Pairs<vector_t<Backend>>;
    native_amx = tile::kAmxVector<vector_t<Backend>> && ATTNKIT_AMX_ASM;
  }
  if (wanted == DenseProducts::amx_bf16 && native_amx && tile::amx_tiles_usable()) return DenseProducts::amx_bf16;
  if (wanted != DenseProducts::f32 && native_pairs && cpu_features().avx512bf16) return DenseProducts::bf16_pairs;
  return DenseProducts::f32;
}

template <class Backend, class Mask>
void run_dense(const Backend& backend, const DenseLaunch& call, const Mask& mask) {
  if constexpr (is_dispatched<Backend>) {
#if ATTNKIT_DISPATCH
    dense_variants(dispatch_of(backend).resolved_isa()).run(backend.threads(), call, mask);
#endif
  } else {
    run_dense_kernel<vector_t<Backend>>(backend, call, mask);
  }
}

}  // namespace attnkit::detail
