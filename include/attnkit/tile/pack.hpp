// Packing of key and value blocks into the layouts the micro-kernels stream, so that they read
// contiguous memory whatever the caller's strides:
//   keys:   a block of `keys` rows (head_dim floats each, rows `row_stride` apart) becomes
//           ceil(keys / cols) panels of (head_dim, cols), keys past the block zero-filled.
//   values: a block of `keys` rows (v_dim floats each) becomes ceil(v_dim / cols) strips of
//           (keys, cols), columns past v_dim zero-filled.
// Both request their source rows ahead of the copy; prefetch_rows is also used by other kernels.
#pragma once

#include <algorithm>

#include "attnkit/core/storage.hpp"
#include "attnkit/core/view.hpp"

namespace attnkit::tile {

// Rows ahead of the one being copied whose cache lines are requested: source rows far apart each
// sit in their own page, where the hardware prefetchers do not follow.
inline constexpr Index kPrefetchRowsAhead = 8;

// Requests the cache lines of `rows` rows of `cols` elements, `row_stride` apart (kForWrite: rows
// about to be written).
template <bool kForWrite = false, class T>
inline void prefetch_rows(const T* x, Index row_stride, Index rows, Index cols) {
  constexpr Index kLineElements = 64 / sizeof(T);
  for (Index j = 0; j < rows; ++j)
    for (Index c = 0; c < cols; c += kLineElements) __builtin_prefetch(x + j * row_stride + c, kForWrite ? 1 : 0);
}

// Floats a packed block of `keys` keys occupies.
constexpr Index packed_key_floats(Index keys, Index head_dim, Index cols) {
  return (keys + cols - 1) / cols * cols * head_dim;
}

// packed: (ceil(keys / cols), head_dim, cols) from k: rows j at k + j * row_stride, (head_dim),
// of float or a storage type (converted to float here).
template <int Cols, class KV>
inline void pack_key_panels(const KV* k, Index row_stride, Index keys, Index head_dim, float* packed) {
  for (Index j0 = 0; j0 < keys; j0 += Cols) {
    float* panel = packed + j0 * head_dim;  // (head_dim, Cols)
    const Index n = std::min<Index>(Cols, keys - j0);
    prefetch_rows(k + (j0 + Cols) * row_stride, row_stride, std::min<Index>(Cols, keys - j0 - Cols), head_dim);
    for (Index c = 0; c < n; ++c) {
      const KV* row = k + (j0 + c) * row_stride;
      for (Index d = 0; d < head_dim; ++d) panel[d * Cols + c] = to_float(row[d]);
    }
    for (Index c = n; c < Cols; ++c)
      for (Index d = 0; d < head_dim; ++d) panel[d * Cols + c] = 0.0f;
  }
}

// Floats a packed block of `keys` value rows occupies.
constexpr Index packed_value_floats(Index keys, Index v_dim, Index cols) {
  return (v_dim + cols - 1) / cols * cols * keys;
}

// packed: (ceil(v_dim / cols), keys, cols) from v: rows j at v + j * row_stride, (v_dim), of
// float or a storage type.
template <int Cols, class KV>
inline void pack_value_strips(const KV* v, Index row_stride, Index keys, Index v_dim, float* packed) {
  for (Index c0 = 0; c0 < v_dim; c0 += Cols) {
    float* strip = packed + c0 * keys;  // (keys, Cols)
    const Index n = std::min<Index>(Cols, v_dim - c0);
    for (Index j = 0; j < keys; ++j) {
      if (c0 == 0 && j + kPrefetchRowsAhead < keys)
        prefetch_rows(v + (j + kPrefetchRowsAhead) * row_stride, 0, 1, v_dim);
      const KV* row = v + j * row_stride + c0;
      float* out = strip + j * Cols;
      for (Index c = 0; c < n; ++c) out[c] = to_float(row[c]);
      for (Index c = n; c < Cols; ++c) out[c] = 0.0f;
    }
  }
}

}  // namespace attnkit::tile
