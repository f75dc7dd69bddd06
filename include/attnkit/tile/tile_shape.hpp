// Tile sizes: the register tile geometry (a value a plan owns; RegisterTile<V> gives the one of a
// vector type), and the constexpr heuristics that size cache blocks from head_dim and the cache
// budget. Plans take every size from here.
#pragma once

#include <algorithm>

#include "attnkit/backend/vec.hpp"
#include "attnkit/core/view.hpp"

namespace attnkit {

// Register tile of the micro-kernels: mr rows by nr vectors of `width` floats (cols = nr * width
// columns of one packed key panel). A plain value, so a plan can own it and a test can check that a
// kernel runs the geometry its plan was sized for. With R vector registers, mr * nr accumulators +
// nr column loads + 1 broadcast must fit: AVX2 / SSE (16 registers): 6 x 2; AVX-512 (32): 12 x 2;
// Scalar (width 1): 4 x 4 floats.
struct TileGeometry {
  int width = 1;
  int mr = 1;
  int nr = 1;
  constexpr int cols() const { return nr * width; }
  constexpr Index pad_rows(Index rows) const { return (rows + mr - 1) / mr * mr; }
  constexpr Index pad_cols(Index cols_) const { return (cols_ + cols() - 1) / cols() * cols(); }
  constexpr bool operator==(const TileGeometry&) const = default;
};

// The geometry for a vector of `width` floats on an ISA with `registers` vector registers.
constexpr TileGeometry tile_geometry(int width, int registers) {
  const int nr = width == 1 ? 4 : 2;
  const int mr = width == 1 ? 4 : std::min(12, (registers - nr - 2) / nr);
  return {width, mr, nr};
}

// The compile-time view of the same geometry for a vector type V.
template <class V>
struct RegisterTile {
  static constexpr TileGeometry geometry = tile_geometry(VecOps<V>::width, VecOps<V>::registers);
  static constexpr int width = geometry.width;
  static constexpr int nr = geometry.nr;
  static constexpr int mr = geometry.mr;
  static constexpr int cols = geometry.cols();  // columns of one packed key panel
  static constexpr Index pad_rows(Index rows) { return geometry.pad_rows(rows); }
  static constexpr Index pad_cols(Index cols_) { return geometry.pad_cols(cols_); }
};

// Cache budget a packed key/value block should fit in: half of a 512 KiB L2 (Zen 3; Ice Lake
// has 1.25 MiB), leaving the rest to the query rows and accumulators of the work item.
inline constexpr Index kL2BudgetBytes = 256 * 1024;

// Keys per block: the packed K block (head_dim x keys) and the V rows (keys x v_dim) it pairs
// with fit the L2 budget; a multiple of the panel width, between 64 and 512.
constexpr Index kv_block_keys(Index head_dim, Index v_dim, Index panel_cols) {
  const Index bytes_per_key = (head_dim + v_dim) * Index(sizeof(float));
  Index keys = kL2BudgetBytes / std::max<Index>(bytes_per_key, 1);
  keys = std::clamp<Index>(keys, 64, 512);
  return std::max<Index>(keys / panel_cols * panel_cols, panel_cols);
}

// Query rows per work item: enough rows that packing a K block is amortised over ~256 rows of
// compute, few enough that the accumulators (rows x v_dim) stay in L2.
constexpr Index rows_per_item(Index v_dim) {
  return std::clamp<Index>(kL2BudgetBytes / (std::max<Index>(v_dim, 1) * Index(sizeof(float))), 32, 256);
}

}  // namespace attnkit
