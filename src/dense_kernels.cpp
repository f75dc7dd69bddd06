// One ISA variant of the dense kernel, compiled once per variant by CMake into
// libattnkit_kernels_<isa> with that ISA's -march and ATTNKIT_VARIANT_<ISA> defined. It exports
// attnkit_dense_variants_<isa>(); every other symbol stays inside the library (version script),
// so inline code compiled for one ISA is never shared with another variant or the caller.
#include <attnkit/kernel/dense_dispatch.hpp>

#if defined(ATTNKIT_VARIANT_SSE2)
#define ATTNKIT_VARIANT_ARCH xsimd::sse2
#define ATTNKIT_VARIANT_ENTRY attnkit_dense_variants_sse2
#elif defined(ATTNKIT_VARIANT_AVX2)
#define ATTNKIT_VARIANT_ARCH xsimd::fma3<xsimd::avx2>
#define ATTNKIT_VARIANT_ENTRY attnkit_dense_variants_avx2
#elif defined(ATTNKIT_VARIANT_AVX512)
#define ATTNKIT_VARIANT_ARCH xsimd::avx512bw
#define ATTNKIT_VARIANT_ENTRY attnkit_dense_variants_avx512
#else
#error "define one of ATTNKIT_VARIANT_SSE2, ATTNKIT_VARIANT_AVX2, ATTNKIT_VARIANT_AVX512"
#endif

namespace {

using Arch = ATTNKIT_VARIANT_ARCH;
using V = xsimd::batch<float, Arch>;

template <class Mask>
void run(int threads, const attnkit::detail::DenseLaunch& call, const Mask& mask) {
  if (threads <= 1)
    attnkit::detail::run_dense_kernel<V>(attnkit::Simd<Arch>{}, call, mask);
  else
    attnkit::detail::run_dense_kernel<V>(attnkit::OpenMP<attnkit::Simd<Arch>>{threads}, call, mask);
}

const attnkit::detail::DenseVariants variants{&run<attnkit::tile::NoMask>, &run<attnkit::tile::CausalMask>,
                                              &run<attnkit::tile::WindowMask>, attnkit::tile::kNativeBf16Pairs<V>,
                                              attnkit::tile::kAmxVector<V>&& ATTNKIT_AMX_ASM};

}  // namespace

extern "C" const attnkit::detail::DenseVariants* ATTNKIT_VARIANT_ENTRY() { return &variants; }
