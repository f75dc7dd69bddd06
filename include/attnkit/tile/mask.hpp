// Mask policies. A policy answers, for a query position, which keys it sees (a half-open range),
// so a kernel derives from it both which key blocks a tile visits (its trip count) and whether a
// visited block needs masking inside. Positions and keys are relative to their sequence.
//   NoMask       every key
//   CausalMask   bottom-right aligned: query i of q_len sees key j iff j <= i + kv_len - q_len
//   WindowMask   a band around the bottom-right aligned position i' = i + kv_len - q_len:
//                keys [i' - left, i' + right]; a negative side is unbounded (flash-attn's -1)
// Visible ranges are non-decreasing in the position for every policy here, so the keys a run of
// rows sees lie between the first row's begin and the last row's end.
#pragma once

#include <algorithm>

#include "attnkit/core/view.hpp"

namespace attnkit::tile {

struct KeyRange {
  Index begin = 0;
  Index end = 0;  // exclusive
};

struct NoMask {
  static KeyRange visible(Index /*pos*/, Index /*q_len*/, Index kv_len) { return {0, kv_len}; }
};

struct CausalMask {
  static KeyRange visible(Index pos, Index q_len, Index kv_len) {
    return {0, std::clamp<Index>(pos + kv_len - q_len + 1, 0, kv_len)};
  }
};

struct WindowMask {
  Index left = -1;   // keys before the aligned position; < 0: unbounded
  Index right = -1;  // keys after it; < 0: unbounded
  KeyRange visible(Index pos, Index q_len, Index kv_len) const {
    const Index aligned = pos + kv_len - q_len;
    const Index begin = left < 0 ? 0 : std::clamp<Index>(aligned - left, 0, kv_len);
    const Index end = right < 0 ? kv_len : std::clamp<Index>(aligned + right + 1, 0, kv_len);
    return {begin, std::max(begin, end)};
  }
};

// Sets s[c] = -inf for the columns of a block starting at key `first_key` that fall outside
// `range`; s holds `cols` columns.
inline void mask_block_row(float* s, Index cols, Index first_key, KeyRange range, float neg_inf) {
  const Index lo = std::clamp<Index>(range.begin - first_key, 0, cols);
  const Index hi = std::clamp<Index>(range.end - first_key, lo, cols);
  for (Index c = 0; c < lo; ++c) s[c] = neg_inf;
  for (Index c = hi; c < cols; ++c) s[c] = neg_inf;
}

}  // namespace attnkit::tile
