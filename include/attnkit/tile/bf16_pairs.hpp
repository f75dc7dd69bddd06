// Q · Kᵀ on bfloat16 pairs (AVX512-BF16's vdpbf16ps): for bfloat16 Q and K, each 32-bit word
// holds the elements 2p (low half) and 2p + 1 (high half) of a row, and one instruction adds the
// two products of a pair to a float lane. Products of two bfloat16 are exact in float, so the
// scores are those of float math on the stored values; the query is not scaled (a rounded
// scale · q would not be a bfloat16): the softmax applies the scale to the score.
//   pack_key_pairs:     a block of key rows -> panels of (words, cols) words, keys past the
//                       block, the high half of an odd head_dim's last pair and words past
//                       pair_words(head_dim) (padding for AMX's tiles, tile/amx_bf16.hpp) zero.
//   pack_query_pairs:   a query row -> (words) words, the same way.
//   Bf16PairDot<V>:     acc + the pair products of a broadcast query word and `width` key words:
//                       vdpbf16ps where V is an AVX-512 batch and the build has AVX512-BF16,
//                       else an emulation with the same rounding (one fused multiply-add per
//                       half, the high half first, as the instruction's definition orders them).
//                       The instruction treats subnormal inputs as zero and flushes subnormal
//                       sums to zero; the emulation keeps them, so the two agree bit for bit
//                       unless a value or a partial sum is below FLT_MIN in magnitude.
// The scores of a packed block are score_block<V, Bf16PairDot<V>> (tile/microkernel.hpp) over
// pair_words(head_dim) steps.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "attnkit/backend/vec.hpp"
#include "attnkit/core/storage.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/tile/microkernel.hpp"
#include "attnkit/tile/pack.hpp"
#include "attnkit/tile/tile_shape.hpp"

namespace attnkit::tile {

// Words of one row of head_dim bfloat16 elements.
constexpr Index pair_words(Index head_dim) { return (head_dim + 1) / 2; }

// Words a packed block of `keys` keys occupies, `words` per key.
constexpr Index packed_key_pair_words(Index keys, Index words, Index cols) {
  return (keys + cols - 1) / cols * cols * words;
}

// Word p of a row: elements 2p (low) and 2p + 1 (high), 0 past head_dim.
inline std::uint32_t pair_word(const bfloat16* row, Index p, Index head_dim) {
  if (2 * p >= head_dim) return 0u;
  const std::uint32_t low = row[2 * p].bits;
  const std::uint32_t high = 2 * p + 1 < head_dim ? row[2 * p + 1].bits : 0u;
  return low | high << 16;
}

// packed: (ceil(keys / cols), words, cols) from k: rows j at k + j * row_stride, (head_dim);
// words >= pair_words(head_dim).
template <int Cols>
inline void pack_key_pairs(const bfloat16* k, Index row_stride, Index keys, Index head_dim, Index words,
                           std::uint32_t* packed) {
  for (Index j0 = 0; j0 < keys; j0 += Cols) {
    std::uint32_t* panel = packed + j0 * words;  // (words, Cols)
    const Index n = std::min<Index>(Cols, keys - j0);
    prefetch_rows(k + (j0 + Cols) * row_stride, row_stride, std::min<Index>(Cols, keys - j0 - Cols), head_dim);
    const Index pairs = pair_words(head_dim);
    for (Index c = 0; c < n; ++c) {
      const bfloat16* row = k + (j0 + c) * row_stride;
      if (head_dim % 2 == 0)  // a word is two elements as they lie in memory
        for (Index p = 0; p < pairs; ++p) std::memcpy(panel + p * Cols + c, row + 2 * p, sizeof(std::uint32_t));
      else
        for (Index p = 0; p < pairs; ++p) panel[p * Cols + c] = pair_word(row, p, head_dim);
      for (Index p = pairs; p < words; ++p) panel[p * Cols + c] = 0u;
    }
    for (Index c = n; c < Cols; ++c)
      for (Index p = 0; p < words; ++p) panel[p * Cols + c] = 0u;
  }
}

// dst (words) from a query row of head_dim bfloat16 elements; words >= pair_words(head_dim).
inline void pack_query_pairs(const bfloat16* q, Index head_dim, Index words, std::uint32_t* dst) {
  for (Index p = 0; p < words; ++p) dst[p] = pair_word(q, p, head_dim);
}

// True where Bf16PairDot<V> runs vdpbf16ps.
template <class V>
inline constexpr bool kNativeBf16Pairs = false;
#if defined(__AVX512BF16__)
template <class Arch>
inline constexpr bool kNativeBf16Pairs<xsimd::batch<float, Arch>> = std::is_base_of_v<xsimd::avx512f, Arch>;
#endif

// A Dot policy of score_panel (tile/microkernel.hpp) over pair words.
template <class V>
struct Bf16PairDot {
  using Ops = VecOps<V>;
  using Element = std::uint32_t;
  struct Keys {  // `width` key words as their two halves
    V even, odd;
  };
  struct Query {
    V even, odd;
  };
  static Keys load(const std::uint32_t* words) {
    Keys k;
    Ops::load_pair_halves(words, k.even, k.odd);
    return k;
  }
  static Query broadcast(std::uint32_t word) {
    float even = 0.0f, odd = 0.0f;
    VecOps<float>::load_pair_halves(&word, even, odd);
    return {Ops::broadcast(even), Ops::broadcast(odd)};
  }
  static V dot(const V& acc, const Query& q, const Keys& k) {
    return Ops::fma(q.even, k.even, Ops::fma(q.odd, k.odd, acc));
  }
};

#if defined(__AVX512BF16__)
template <class Arch>
requires std::is_base_of_v<xsimd::avx512f, Arch>
struct Bf16PairDot<xsimd::batch<float, Arch>> {
  using V = xsimd::batch<float, Arch>;
  using Element = std::uint32_t;
  using Keys = __m512i;
  using Query = __m512i;
  static Keys load(const std::uint32_t* words) { return _mm512_loadu_si512(words); }
  static Query broadcast(std::uint32_t word) { return _mm512_set1_epi32(static_cast<int>(word)); }
  static V dot(const V& acc, const Query& q, const Keys& k) {
    return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(q), reinterpret_cast<__m512bh>(k));
  }
};
#endif

}  // namespace attnkit::tile
