// Mask policies. A policy answers, for a query position, which keys it sees (a half-open range),
// so a kernel derives from it both which key blocks a tile visits (its trip count) and whether a
// visited block needs masking inside. Positions and keys are relative to their sequence.
//   NoMask       every key
//   CausalMask   bottom-right aligned: query i of q_len sees key j iff j <= i + kv_len - q_len
//   WindowMask   a band around the bottom-right aligned position i' = i + kv_len - q_len:
//                keys [i' - left, i' + right]; a negative side is unbounded (flash-attn's -1)
// Visible ranges are non-decreasing in the position for every policy here, so the keys a run of
// rows sees lie between the first row's begin and the last row's end (visible_rows), and a
// policy whose ranges start at key 0 (NoMask, CausalMask) lets a chunked kernel carry the keys of
// earlier rows in a running state (seen_before).
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

// Keys any row of [first, last] sees: from the first row's begin to the last row's end.
template <class Mask>
KeyRange visible_rows(const Mask& mask, Index first, Index last, Index q_len, Index kv_len) {
  const KeyRange a = mask.visible(first, q_len, kv_len), b = mask.visible(last, q_len, kv_len);
  return {std::min(a.begin, b.begin), std::max(a.end, b.end)};
}

// End of the keys the row before `pos` sees (its range starts at key 0 for NoMask and
// CausalMask). Positions are arithmetic, so pos 0 asks for row -1: under CausalMask the keys
// before row 0's aligned position, under NoMask every key. A chunked kernel holds keys
// [0, seen_before(first row)) of a chunk in its running state and masks the rest.
template <class Mask>
Index seen_before(const Mask& mask, Index pos, Index q_len, Index kv_len) {
  return mask.visible(pos - 1, q_len, kv_len).end;
}

// Calls f with the policy of a causal flag: f(CausalMask{}) or f(NoMask{}).
template <class F>
void with_causal_mask(bool causal, F&& f) {
  if (causal)
    f(CausalMask{});
  else
    f(NoMask{});
}

// Sets s[c] = -inf for the columns of a block starting at key `first_key` that fall outside
// `range`; s holds `cols` columns.
inline void mask_block_row(float* s, Index cols, Index first_key, KeyRange range, float neg_inf) {
  const Index lo = std::clamp<Index>(range.begin - first_key, 0, cols);
  const Index hi = std::clamp<Index>(range.end - first_key, lo, cols);
  for (Index c = 0; c < lo; ++c) s[c] = neg_inf;
  for (Index c = hi; c < cols; ++c) s[c] = neg_inf;
}

}  // namespace attnkit::tile
