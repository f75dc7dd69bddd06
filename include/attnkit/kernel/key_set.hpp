// Online-softmax attention of a few query rows over one set of keys read in place: the building
// block of the sparse mechanisms (Combiner, ProbSparse), whose rows see one or more key sets (a
// segment's keys, span summaries, a causal prefix) joined in a single softmax.
//   attend_key_set   scores (score_rows_in_place), per-row visible range, online softmax
//                    (softmax_block_row) and O += P·V (accumulate_pv), key block by key block;
//                    a row that sees no key of any set is zeros after finalize_row, and a row
//                    never takes the values of keys outside its range (non-finite ones included).
// The caller owns the rows' SoftmaxRow states and accumulators and finalises them with
// tile::finalize_row after its last key set; its plan sizes the score buffer from
// key_set_score_floats. Not here: packing (tile/pack.hpp), the micro-kernels (tile/microkernel.hpp).
#pragma once

#include <algorithm>

#include "attnkit/backend/vec.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/tile/mask.hpp"
#include "attnkit/tile/microkernel.hpp"
#include "attnkit/tile/online_softmax.hpp"
#include "attnkit/tile/tile_shape.hpp"

namespace attnkit::detail {

// Keys per block of attend_key_set; its score buffer holds RegisterTile<V>::mr rows of this many.
inline constexpr Index kKeySetBlock = 256;

// Floats of the score buffer attend_key_set needs.
template <class V>
constexpr Index key_set_score_floats() {
  return RegisterTile<V>::mr * kKeySetBlock;
}

// Attends `rows` (1..mr) query rows to keys [0, keys) of one key set.
//   q_rows: mr pointers to pre-scaled (head_dim) rows (rows past `rows` may repeat a real row);
//   k: key j at k + j * ldk (head_dim); v: value j at v + j * ldv (v_dim);
//   ranges: per row, the keys of this set it sees (half-open, may be empty);
//   scores: key_set_score_floats<V>() floats of scratch;
//   states: per-row running softmax; acc: (rows, ldo) unnormalised outputs, v_dim <= ldo.
template <class V>
inline void attend_key_set(const float* const* q_rows, Index rows, const float* k, Index ldk, const float* v, Index ldv,
                           Index keys, Index head_dim, Index v_dim, const tile::KeyRange* ranges, float* scores,
                           tile::SoftmaxRow* states, float* acc, Index ldo) {
  constexpr int W = VecOps<V>::width;
  constexpr int MR = RegisterTile<V>::mr;
  constexpr Index lds = kKeySetBlock;
  Index seen_begin = keys, seen_end = 0;  // keys any row sees
  for (Index r = 0; r < rows; ++r) {
    if (ranges[r].begin >= ranges[r].end) continue;
    seen_begin = std::min(seen_begin, ranges[r].begin);
    seen_end = std::max(seen_end, std::min(ranges[r].end, keys));
  }
  for (Index block = seen_begin; block < seen_end; block += kKeySetBlock) {
    const Index n = std::min(kKeySetBlock, seen_end - block);
    const Index padded = (n + W - 1) / W * W;
    tile::with_tile_rows<MR>(rows, [&](auto tile_rows) {
      tile::score_rows_in_place<V, tile_rows()>(q_rows, k + block * ldk, ldk, n, head_dim, scores, lds);
    });
    bool ragged = false;  // rows see different keys of the block
    for (Index r = 0; r < rows; ++r) {
      float* s = scores + r * lds;  // (padded)
      const Index begin = std::max(ranges[r].begin, block), end = std::min(ranges[r].end, block + n);
      ragged |= begin > block || end < block + n;
      tile::mask_block_row(s, padded, block, ranges[r], tile::kNegInf);
      const float rescale = tile::softmax_block_row<V>(s, padded, 1.0f, states[r], begin < end);
      if (rescale != 1.0f) tile::scale_row<V>(acc + r * ldo, v_dim, rescale);
    }
    // A row must not see the values of keys it does not see (0 · inf and 0 · NaN are NaN): with
    // a non-finite value in the block, each row of a ragged tile takes only its own keys.
    if (ragged && !tile::finite_rows<V>(v + block * ldv, ldv, n, v_dim)) {
      for (Index r = 0; r < rows; ++r)
        tile::accumulate_pv_range<V>(scores + r * lds, v + block * ldv, ldv, std::max(ranges[r].begin, block) - block,
                                     std::min(ranges[r].end, block + n) - block, v_dim, acc + r * ldo);
      continue;
    }
    tile::with_tile_rows<MR>(rows, [&](auto tile_rows) {
      tile::accumulate_pv<V, tile_rows()>(scores, lds, v + block * ldv, ldv, n, v_dim, acc, ldo);
    });
  }
}

}  // namespace attnkit::detail
