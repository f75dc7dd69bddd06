// Vector primitives over the backends' vector types, so one kernel template serves Scalar (V =
// float, plain loops), Simd (V = xsimd::batch<float, Arch>) and emulated wide vectors (wide.hpp).
// VecOps<V> gives width, register count, load / store / broadcast / fma / max / min, log1p, a
// select on x > threshold, horizontal sum and max (and the sums of `width` vectors at once), and
// the lanes that are > 0 as bits, and the two bfloat16 halves of 32-bit words as floats. Kernels use
// these (and V's arithmetic operators) only, never xsimd directly. exp lives in exp.hpp.
// NaN: max(a, b) and min(a, b) are std::max / std::min lane by lane on every V: b when it is
// strictly larger (smaller), else a, so a NaN in b is skipped and a NaN in a is kept (fold a
// running maximum as max(acc, x) to skip NaN elements, clamp as min(x, bound) to keep them).
// reduce_max skips NaN lanes (-inf when every lane is NaN).
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <xsimd/xsimd.hpp>

#include "attnkit/core/storage.hpp"

namespace attnkit {

template <class V>
struct VecOps;

// Vector registers of the x86 ISA whose vectors hold `width` floats: AVX-512 has 32, the SSE and
// AVX families 16 (and a scalar tile may use 16 FP registers).
constexpr int registers_for_width(int width) { return width >= 16 ? 32 : 16; }

template <>
struct VecOps<float> {
  static constexpr int width = 1;
  static constexpr int registers = registers_for_width(width);
  static float load(const float* p) { return *p; }
  static float load(const bfloat16* p) { return to_float(*p); }
  static float load(const float16* p) { return to_float(*p); }
  // Word i holds two bfloat16: even = its low 16 bits, odd = its high 16 bits, each as a float.
  static void load_pair_halves(const std::uint32_t* words, float& even, float& odd) {
    even = std::bit_cast<float>(*words << 16);
    odd = std::bit_cast<float>(*words & 0xFFFF0000u);
  }
  // The inverse, rounding: a word of bfloat16(low) (its low 16 bits) and bfloat16(high).
  static void store_bf16_pairs(float low, float high, std::uint32_t* words) {
    *words = static_cast<std::uint32_t>(detail::bfloat16_bits(low)) |
             static_cast<std::uint32_t>(detail::bfloat16_bits(high)) << 16;
  }
  static void store(float* p, float x) { *p = x; }
  static float broadcast(float x) { return x; }
  static float zero() { return 0.0f; }
  // Always fused (std::fma): a * b + c would be contracted or not depending on where the compiler
  // inlines it, and results would differ in the last bit between code paths.
  static float fma(float a, float b, float c) { return std::fma(a, b, c); }
  static float max(float a, float b) { return std::max(a, b); }  // a when either is NaN
  static float min(float a, float b) { return std::min(a, b); }
  static float log1p(float x) { return std::log1p(x); }
  static float greater_select(float x, float threshold, float if_greater, float otherwise) {
    return x > threshold ? if_greater : otherwise;
  }
  static float sum(float x) { return x; }
  static float transpose_sum(const float* rows) { return rows[0]; }
  static float reduce_max(float x) { return std::isnan(x) ? -std::numeric_limits<float>::infinity() : x; }
  static std::uint32_t positive_lanes(float x) { return x > 0.0f ? 1u : 0u; }
};

template <class Arch>
struct VecOps<xsimd::batch<float, Arch>> {
  using V = xsimd::batch<float, Arch>;
  static constexpr int width = static_cast<int>(V::size);
  static constexpr int registers = registers_for_width(width);
  static V load(const float* p) { return V::load_unaligned(p); }
  // bfloat16: the 16 bits moved to the top of each float lane.
  static V load(const bfloat16* p) {
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>)
      return _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
#endif
#if defined(__AVX2__)
    if constexpr (std::is_base_of_v<xsimd::avx2, Arch>)
      return _mm256_castsi256_ps(
          _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
#endif
#if defined(__SSE2__)
    if constexpr (std::is_base_of_v<xsimd::sse2, Arch> && width == 4)
      return _mm_castsi128_ps(
          _mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#endif
    return load_lanes(p);
  }
  // float16: F16C's conversion where the build has it (x86-64-v3 and up).
  static V load(const float16* p) {
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>)
      return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#endif
#if defined(__F16C__)
    if constexpr (std::is_base_of_v<xsimd::avx, Arch>)
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    if constexpr (std::is_base_of_v<xsimd::sse2, Arch> && width == 4)
      return _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
#endif
    return load_lanes(p);
  }
  static void load_pair_halves(const std::uint32_t* words, V& even, V& odd) {
    using Words = xsimd::batch<std::uint32_t, Arch>;
    const Words w = Words::load_unaligned(words);
    even = xsimd::bitwise_cast<V>(w << 16);
    odd = xsimd::bitwise_cast<V>(w & Words(0xFFFF0000u));
  }
  // Lane i of words = bfloat16(low[i]) | bfloat16(high[i]) << 16, rounded to nearest even with NaN
  // kept (detail::bfloat16_bits, lane by lane).
  static void store_bf16_pairs(const V& low, const V& high, std::uint32_t* words) {
    using Words = xsimd::batch<std::uint32_t, Arch>;
    const auto bits = [](const V& x) {
      const Words u = xsimd::bitwise_cast<Words>(x);
      const Words rounded = (u + Words(0x7fffu) + ((u >> 16) & Words(1u))) >> 16;
      return xsimd::select((u & Words(0x7fffffffu)) > Words(0x7f800000u), (u >> 16) | Words(0x0040u), rounded);
    };
    (bits(low) | bits(high) << 16).store_unaligned(words);
  }
  // Any element type, one lane at a time.
  template <class T>
  static V load_lanes(const T* p) {
    alignas(64) float lanes[width];
    for (int i = 0; i < width; ++i) lanes[i] = to_float(p[i]);
    return V::load_aligned(lanes);
  }
  static void store(float* p, const V& x) { x.store_unaligned(p); }
  static V broadcast(float x) { return V(x); }
  static V zero() { return V(0.0f); }
  static V fma(const V& a, const V& b, const V& c) { return xsimd::fma(a, b, c); }
  // std::max / std::min semantics: x86 MAXPS / MINPS return their second operand when either is
  // NaN, so the operands go in swapped; elsewhere a select says the same.
  static V max(const V& a, const V& b) {
#if defined(__SSE2__)
    return xsimd::max(b, a);
#else
    return xsimd::select(a < b, b, a);
#endif
  }
  static V min(const V& a, const V& b) {
#if defined(__SSE2__)
    return xsimd::min(b, a);
#else
    return xsimd::select(b < a, b, a);
#endif
  }
  static V log1p(const V& x) { return xsimd::log1p(x); }
  static V greater_select(const V& x, float threshold, const V& if_greater, const V& otherwise) {
    return xsimd::select(x > V(threshold), if_greater, otherwise);
  }
  static float sum(const V& x) { return xsimd::hadd(x); }
  // Lane i = the sum of rows[i]'s lanes, for `width` rows: one transpose-and-add.
  // AVX-512: each row's halves added, then AVX's haddp on each half of the rows (xsimd 8.1's
  // AVX-512 haddp returns the sums in a permuted lane order).
  static V transpose_sum(const V* rows) {
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>) {
      using Half = xsimd::batch<float, xsimd::avx>;
      Half low[8], high[8];
      for (int i = 0; i < 8; ++i) {
        low[i] = folded_halves(rows[i]);
        high[i] = folded_halves(rows[8 + i]);
      }
      const __m256 a = xsimd::haddp(low), b = xsimd::haddp(high);
      return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(a)), _mm256_castps_pd(b), 1));
    }
#endif
    return xsimd::haddp(rows);
  }
#if defined(__AVX512F__)
  static __m256 folded_halves(const V& x) {
    const __m512 z = x;
    return _mm256_add_ps(_mm512_castps512_ps256(z), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z), 1)));
  }
#endif
  static float reduce_max(const V& x) {
    alignas(64) float lanes[width];
    x.store_aligned(lanes);
    float best = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < width; ++i) best = std::max(best, lanes[i]);  // skips NaN lanes
    return best;
  }
  // Bit i set <=> lane i > 0 (a NaN lane gives 0): one compare and a mask move on x86.
  static std::uint32_t positive_lanes(const V& x) {
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>)
      return _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
#endif
#if defined(__AVX__)
    if constexpr (std::is_base_of_v<xsimd::avx, Arch>)
      return static_cast<std::uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ)));
#endif
#if defined(__SSE2__)
    if constexpr (std::is_base_of_v<xsimd::sse2, Arch>)
      return static_cast<std::uint32_t>(_mm_movemask_ps(_mm_cmpgt_ps(x, _mm_setzero_ps())));
#endif
    alignas(64) float lanes[width];
    x.store_aligned(lanes);
    std::uint32_t bits = 0;
    for (int i = 0; i < width; ++i) bits |= static_cast<std::uint32_t>(lanes[i] > 0.0f) << i;
    return bits;
  }
};

}  // namespace attnkit
