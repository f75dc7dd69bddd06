// Packing of key blocks into the panel layout score_panel() streams: a block of `keys` rows
// (each head_dim floats, rows `row_stride` apart) becomes ceil(keys / cols) panels of
// (head_dim, cols) floats, keys past the block zero-filled.
#pragma once

#include <algorithm>

#include "attnkit/core/view.hpp"

namespace attnkit::tile {

// Floats a packed block of `keys` keys occupies.
constexpr Index packed_key_floats(Index keys, Index head_dim, Index cols) {
  return (keys + cols - 1) / cols * cols * head_dim;
}

// packed: (ceil(keys / cols), head_dim, cols) from k: rows j at k + j * row_stride, (head_dim).
template <int Cols>
inline void pack_key_panels(const float* k, Index row_stride, Index keys, Index head_dim, float* packed) {
  for (Index j0 = 0; j0 < keys; j0 += Cols) {
    float* panel = packed + j0 * head_dim;  // (head_dim, Cols)
    const Index n = std::min<Index>(Cols, keys - j0);
    for (Index c = 0; c < n; ++c) {
      const float* row = k + (j0 + c) * row_stride;
      for (Index d = 0; d < head_dim; ++d) panel[d * Cols + c] = row[d];
    }
    for (Index c = n; c < Cols; ++c)
      for (Index d = 0; d < head_dim; ++d) panel[d * Cols + c] = 0.0f;
  }
}

}  // namespace attnkit::tile
