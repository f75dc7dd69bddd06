// The XAttention kernels (mechanism/xattention.hpp, whose header comment gives the algorithm and
// both selection rules): antidiagonal block scores through strided q' / k' rows packed into key
// panels and the register-tiled score micro-kernel, an fp32 softmax per strided row and block
// sums; then the selection of every (batch, head, query block) row from those scores.
//   XGeometry              the strided problem of one call: lengths, strided rows and columns,
//                          blocks, and which strided columns a row sees (from the mask policy).
//   XScorer                packs and scores into its workspace (carve: the only description of
//                          its layout).
//   SinkDiagonalThreshold, ReferenceChunked
//                          selection rules (policies): which blocks one row keeps.
//   XSelectionLayout, select_rows
//                          the selected lists (CSR) and the rows' scratch in a workspace, and the
//                          selection of every row into them, rows in parallel.
// Nothing here allocates. Not here: options and the block-sparse run (mechanism/).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <optional>
#include <span>

#include "attnkit/backend/vec.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/storage.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/core/workspace_layout.hpp"
#include "attnkit/tile/mask.hpp"
#include "attnkit/tile/microkernel.hpp"
#include "attnkit/tile/online_softmax.hpp"
#include "attnkit/tile/pack.hpp"
#include "attnkit/tile/tile_shape.hpp"

namespace attnkit::detail {

// Sizes of the strided problem of one call.
struct XGeometry {
  Index stride = 1, block = 1, rows_per_block = 1;
  Index q_len = 0, kv_len = 0, q_strided = 0, kv_strided = 0, q_blocks = 0, kv_blocks = 0;
  bool causal = true;

  XGeometry(const AttentionShape& shape, Index s, Index b, bool c)
      : stride(s),
        block(b),
        rows_per_block(b / s),
        q_len(shape.q_len),
        kv_len(shape.kv_len),
        q_strided((shape.q_len + s - 1) / s),
        kv_strided((shape.kv_len + s - 1) / s),
        q_blocks((shape.q_len + b - 1) / b),
        kv_blocks((shape.kv_len + b - 1) / b),
        causal(c) {}

  // Strided columns [0, end) visible to strided row r: those whose first key the row's last
  // query sees (its position may lie past q_len: positions are arithmetic).
  Index visible_end(Index r) const {
    const Index last = r * stride + stride - 1;
    const Index keys =
        causal ? tile::CausalMask::visible(last, q_len, kv_len).end : tile::NoMask::visible(last, q_len, kv_len).end;
    return (keys + stride - 1) / stride;
  }
  // Diagonal key block of query block qb: the block of the last key its last row sees under the
  // causal alignment (block 0 when it sees none and the call is not causal); -1 when a causal
  // block sees no key.
  Index diagonal(Index qb) const {
    const Index last_key =
        tile::CausalMask::visible(std::min(qb * block + block - 1, q_len - 1), q_len, kv_len).end - 1;
    if (kv_blocks == 0 || (causal && last_key < 0)) return -1;
    return std::max<Index>(last_key, 0) / block;
  }
};

// Antidiagonal scoring. Per (batch, kv head): pack the strided keys once (pack_panel, parallel),
// then score strided query rows in items of whole query blocks (run_item, parallel) into
// scores (batch, out_heads, q_blocks, kv_blocks).
template <class V>
class XScorer {
  using Tile = RegisterTile<V>;
  using Ops = VecOps<V>;

 public:
  // q and k: float, bfloat16 or float16 (converted to float where they are copied).
  XScorer(const ErasedView<const void, 4>& q, const ErasedView<const void, 4>& k, const AttentionShape& shape,
          const XGeometry& geo, float scale)
      : q_(q), k_(k), shape_(shape), geo_(geo), scale_(scale / static_cast<float>(geo.stride)) {
    depth_ = geo.stride * shape.head_dim;
    panels_ = (geo.kv_strided + Tile::cols - 1) / Tile::cols;
    item_rows_ = std::lcm<Index>(geo.rows_per_block, Tile::mr);
    items_per_head_ = (geo.q_strided + item_rows_ - 1) / item_rows_;
    chunk_cols_ = std::max<Index>(kChunkBytes / (depth_ * Index(sizeof(float))) / Tile::cols, 1) * Tile::cols;
  }

  // Bytes of one thread's scratch.
  std::size_t thread_bytes() const {
    return array_bytes<float>(tile_rows() * depth_) + array_bytes<float>(tile_rows() * panels_ * Tile::cols);
  }

  // Ends the scoring workspace (its guards are checked now): call before the workspace is reused.
  void finish() { arena_.reset(); }

  // Bytes of the whole scoring workspace for `threads` threads.
  std::size_t workspace_bytes(int threads) const {
    Arena arena = Arena::measuring();
    carve(arena, threads);
    return arena.used();
  }

  // Runs the whole scoring into the workspace; returns the scores (batch, out_heads, q_blocks,
  // kv_blocks), valid while the scorer lives (it holds the workspace's arena, whose guards are
  // checked when it ends).
  template <class Backend>
  const float* run(const Backend& backend, void* workspace) {
    arena_.emplace(workspace, workspace_bytes(backend.threads()));
    const Buffers b = carve(*arena_, backend.threads());
    packed_ = b.packed;
    scores_ = b.scores;
    scratch_ = b.scratch;
    // The out heads of kv head kvh are [kvh * per_kv, (kvh + 1) * per_kv) (HeadMap: a GQA group, or
    // the one out head of a kv head when there are more kv heads than query heads).
    const Index per_kv = shape_.heads.out_heads() / shape_.heads.kv_heads;
    for (Index b = 0; b < shape_.batch; ++b)
      for (Index kvh = 0; kvh < shape_.heads.kv_heads; ++kvh) {
        backend.parallel_for(panels_, [&](Index p, int) { pack_panel(b, kvh, p); });
        backend.parallel_for(per_kv * items_per_head_, [&](Index item, int slot) {
          run_item(b, kvh * per_kv + item / items_per_head_, item % items_per_head_, slot);
        });
      }
    return scores_;
  }

 private:
  // The whole workspace: packed keys (panels, depth, cols) of one kv head, every score, then the
  // threads' scratch; the only description of its layout.
  struct Buffers {
    float* packed;
    float* scores;
    std::byte* scratch;
  };
  Buffers carve(Arena& arena, int threads) const {
    Buffers b;
    b.packed = arena.take<float>(panels_ * Tile::cols * depth_);
    b.scores = arena.take<float>(shape_.batch * shape_.heads.out_heads() * geo_.q_blocks * geo_.kv_blocks);
    b.scratch = arena.take<std::byte>(thread_bytes() * static_cast<std::size_t>(threads));
    return b;
  }

  // panel p: (depth, cols), column c - p cols holds k'_c.
  void pack_panel(Index b, Index kvh, Index p) const {
    const Index d = shape_.head_dim;
    float* panel = packed_ + p * depth_ * Tile::cols;
    with_storage_type(k_.storage, [&](auto zero) {
      using T = decltype(zero);
      const View<const T, 4> k = k_.as<T>();
      for (Index j = 0; j < Tile::cols; ++j) {
        const Index c = p * Tile::cols + j;
        for (Index t = 0; t < geo_.stride; ++t) {
          const Index key = c * geo_.stride + t;
          const T* src = key < geo_.kv_len ? k.at(b, key, kvh, 0) : nullptr;  // (head_dim)
          for (Index dd = 0; dd < d; ++dd) panel[(t * d + dd) * Tile::cols + j] = src ? to_float(src[dd]) : 0.0f;
        }
      }
    });
  }

  // Strided rows [chunk item_rows, +item_rows) of one out head: all their q' rows are built first,
  // then the keys are walked in chunks small enough to stay in L2 while every row tile uses them,
  // then each row's softmax is folded into block sums.
  void run_item(Index b, Index out_head, Index chunk, int slot) const {
    const Index d = shape_.head_dim, ld = panels_ * Tile::cols;
    Arena arena(scratch_ + thread_bytes() * slot, thread_bytes());
    float* q_all = arena.take<float>(tile_rows() * depth_);  // (tile_rows, depth): q'_r, scaled
    float* s = arena.take<float>(tile_rows() * ld);          // (tile_rows, padded kv_strided)
    const Index r_begin = chunk * item_rows_, r_end = std::min(r_begin + item_rows_, geo_.q_strided);
    float* out = scores_ + ((b * shape_.heads.out_heads() + out_head) * geo_.q_blocks) * geo_.kv_blocks;
    const Index first_block = r_begin / geo_.rows_per_block;
    const Index end_block = (r_end + geo_.rows_per_block - 1) / geo_.rows_per_block;
    std::fill(out + first_block * geo_.kv_blocks, out + end_block * geo_.kv_blocks, 0.0f);
    const Index qh = shape_.heads.q_head(out_head);
    const Index rows = r_end - r_begin, tiles = (rows + Tile::mr - 1) / Tile::mr;
    with_storage_type(q_.storage, [&](auto zero) {
      using T = decltype(zero);
      const View<const T, 4> q = q_.as<T>();
      for (Index i = 0; i < tiles * Tile::mr; ++i)
        for (Index t = 0; t < geo_.stride; ++t) {
          const Index pos = (r_begin + i) * geo_.stride + geo_.stride - 1 - t;
          const T* src = i < rows && pos < geo_.q_len ? q.at(b, pos, qh, 0) : nullptr;  // (head_dim)
          float* dst = q_all + i * depth_ + t * d;
          for (Index dd = 0; dd < d; ++dd) dst[dd] = src ? to_float(src[dd]) * scale_ : 0.0f;
        }
    });
    // Columns a tile scores: its last row's visible ones, padded to whole panels.
    auto tile_cols = [&](Index tile) {
      const Index last = std::min(r_begin + (tile + 1) * Tile::mr, r_end) - 1;
      return Tile::pad_cols(geo_.visible_end(last));
    };
    for (Index c0 = 0; c0 < tile_cols(tiles - 1); c0 += chunk_cols_)
      for (Index tile = 0; tile < tiles; ++tile) {
        const Index cols = std::min(tile_cols(tile), c0 + chunk_cols_) - c0;
        if (cols <= 0) continue;
        const float* q_rows[Tile::mr];
        for (int i = 0; i < Tile::mr; ++i) q_rows[i] = q_all + (tile * Tile::mr + i) * depth_;
        tile::score_block<V>(q_rows, packed_ + c0 * depth_, depth_, cols, s + tile * Tile::mr * ld + c0, ld);
      }
    for (Index i = 0; i < rows; ++i) {
      const Index r = r_begin + i, n = geo_.visible_end(r);
      if (n == 0) continue;
      const Index padded = Tile::pad_cols(n);
      float* row = s + i * ld;
      tile::mask_block_row(row, padded, 0, {0, n}, tile::kNegInf);
      tile::SoftmaxRow state;
      tile::softmax_block_row<V>(row, padded, 1.0f, state);
      add_block_sums(row, n, 1.0f / state.sum, out + (r / geo_.rows_per_block) * geo_.kv_blocks);
    }
  }

  // sums[kb] += inv · Σ p[c] over c in [kb R, kb R + R) ∩ [0, n).
  void add_block_sums(const float* p, Index n, float inv, float* sums) const {
    constexpr int W = Ops::width;
    for (Index kb = 0; kb * geo_.rows_per_block < n; ++kb) {
      const Index lo = kb * geo_.rows_per_block, hi = std::min(lo + geo_.rows_per_block, n);
      V acc = Ops::zero();
      Index c = lo;
      for (; c + W <= hi; c += W) acc = acc + Ops::load(p + c);
      float total = Ops::sum(acc);
      for (; c < hi; ++c) total += p[c];
      sums[kb] += total * inv;
    }
  }

  ErasedView<const void, 4> q_, k_;
  AttentionShape shape_;
  XGeometry geo_;
  float scale_;
  // Bytes of packed keys one chunk of columns takes: half the L2 budget, so that the chunk
  // and the item's q' rows stay in L2 while every row tile of the item uses the chunk.
  static constexpr Index kChunkBytes = kL2BudgetBytes / 2;
  Index tile_rows() const { return Tile::pad_rows(item_rows_); }

  Index depth_ = 0, panels_ = 0, item_rows_ = 0, items_per_head_ = 0, chunk_cols_ = 0;
  std::optional<Arena> arena_;  // the scoring workspace, from run() on
  float* packed_ = nullptr;
  float* scores_ = nullptr;
  std::byte* scratch_ = nullptr;
};

// ---- Selection ----

// One row's scratch: its scores, the ranking of its candidate blocks and the kept flags
// (kv_blocks each).
struct XRowScratch {
  float* scores = nullptr;
  std::int32_t* order = nullptr;
  std::uint8_t* keep = nullptr;

  static XRowScratch carve(Arena& arena, Index kv_blocks) {
    XRowScratch s;
    s.scores = arena.take<float>(kv_blocks);
    s.order = arena.take<std::int32_t>(kv_blocks);
    s.keep = arena.take<std::uint8_t>(kv_blocks);
    return s;
  }
};

// One row of the selection: scores s (kv_blocks), its query block, the diagonal block (>= 0) and
// required = tau · (sum of the row's scores). A rule sets keep[kb] = 1 for every block it keeps.
struct XRow {
  const float* s = nullptr;
  Index qb = 0, diagonal = 0;
  double required = 0;
};

// The order blocks are ranked in: descending score, NaN last, ties by index (lower first, or
// higher first when HigherOnTies). Sorts order[0, n) in place.
template <bool HigherOnTies>
inline void rank_blocks(const float* s, std::int32_t* order, Index n) {
  auto key = [&](std::int32_t kb) { return std::isnan(s[kb]) ? -INFINITY : s[kb]; };
  std::sort(order, order + n, [&](std::int32_t x, std::int32_t y) {
    const float kx = key(x), ky = key(y);
    if (kx != ky) return kx > ky;
    return HigherOnTies ? x > y : x < y;
  });
}

// The documented rule: the sink and the diagonal, then the other blocks (causal: at or left of
// the diagonal) in descending score, ties to the lower index, each kept while the kept sum so far
// is < required.
struct SinkDiagonalThreshold {
  void mark(const XRow& row, const XGeometry& geo, const XRowScratch& w) const {
    const Index diagonal = row.diagonal, last = geo.causal ? diagonal : geo.kv_blocks - 1;
    w.keep[0] = w.keep[diagonal] = 1;
    double sum = static_cast<double>(row.s[0]) + (diagonal != 0 ? static_cast<double>(row.s[diagonal]) : 0.0);
    Index n = 0;
    for (Index kb = 1; kb <= last; ++kb)
      if (kb != diagonal) w.order[n++] = static_cast<std::int32_t>(kb);
    rank_blocks<false>(row.s, w.order, n);
    for (Index i = 0; i < n && sum < row.required; ++i) {
      w.keep[w.order[i]] = 1;
      sum += row.s[w.order[i]];
    }
  }
};

// find_blocks_chunked as xattn_estimate calls it, per chunk of chunk_blocks query blocks:
//   causal: pre-selected are the diagonal block and the sink, except that the chunk's diagonal
//   write covers column 0 when the chunk's first query block has diagonal 0 (the first chunk when
//   q_len == kv_len), and then only the diagonal is. The other blocks at or left of the diagonal
//   rank in descending score, ties to the higher index; rank position p (pre-selected first) is
//   kept iff c_p < required, c_0 = c_1 = 0 and c_p = (pre-selected sum) + (sum of the first
//   p - 2 ranked blocks): with one block pre-selected that is one block more than the
//   documented rule. Block 0 is always kept (the reference's index-0 fallback).
//   not causal: nothing pre-selected; every block ranks, position p kept iff the sum of the
//   blocks ranked before it is < required; block 0 always kept.
struct ReferenceChunked {
  Index chunk_blocks = 1;  // query blocks per chunk, >= 1

  void mark(const XRow& row, const XGeometry& geo, const XRowScratch& w) const {
    w.keep[0] = 1;
    if (!geo.causal) {
      Index n = 0;
      for (Index kb = 0; kb < geo.kv_blocks; ++kb) w.order[n++] = static_cast<std::int32_t>(kb);
      rank_blocks<true>(row.s, w.order, n);
      double before = 0;
      for (Index i = 0; i < n && before < row.required; ++i) {
        w.keep[w.order[i]] = 1;
        before += row.s[w.order[i]];
      }
      return;
    }
    const Index diagonal = row.diagonal;
    const bool sink = diagonal != 0 && geo.diagonal(row.qb / chunk_blocks * chunk_blocks) != 0;
    const Index pre = sink ? 2 : 1;
    const double pre_sum = static_cast<double>(row.s[diagonal]) + (sink ? static_cast<double>(row.s[0]) : 0.0);
    w.keep[diagonal] = 1;
    Index n = 0;
    for (Index kb = sink ? 1 : 0; kb <= diagonal; ++kb)
      if (kb != diagonal) w.order[n++] = static_cast<std::int32_t>(kb);
    rank_blocks<true>(row.s, w.order, n);
    double taken = 0, lagged = 0;  // sums of the first i and the first i - 1 ranked blocks
    for (Index i = 0; i < n; ++i) {
      const double before = pre + i <= 1 ? 0.0 : pre_sum + (pre == 2 ? taken : lagged);
      if (!(before < row.required)) break;
      w.keep[w.order[i]] = 1;
      lagged = taken;
      taken += row.s[w.order[i]];
    }
  }
};

// The selection's workspace: the selected lists (CSR; row r first fills columns
// [r kv_blocks, r kv_blocks + kept) and select_rows then packs them) and one XRowScratch per thread.
struct XSelectionLayout {
  std::int32_t* offsets = nullptr;  // (rows + 1)
  std::int32_t* columns = nullptr;  // (rows * kv_blocks)
  std::byte* slots = nullptr;       // (threads, slot_bytes)
  std::size_t slot_bytes = 0;

  static XSelectionLayout carve(Arena& arena, Index rows, Index kv_blocks, int threads) {
    XSelectionLayout l;
    l.offsets = arena.take<std::int32_t>(rows + 1);
    l.columns = arena.take<std::int32_t>(rows * kv_blocks);
    l.slot_bytes = scratch_bytes_of<XRowScratch>(kv_blocks);
    l.slots = arena.take<std::byte>(l.slot_bytes * static_cast<std::size_t>(threads));
    return l;
  }
  static std::size_t bytes(Index rows, Index kv_blocks, int threads) {
    Arena arena = Arena::measuring();
    carve(arena, rows, kv_blocks, threads);
    return arena.used();
  }
};

// Selects every (batch, head, query block) row of scores `at(b, h, qb, kb)` (batch, heads,
// q_blocks, kv_blocks) by `rule` into `out`; tau one value or one per head. Causal rows that see no
// key list nothing. Returns the number of listed blocks (offsets[rows]).
template <class Rule, class Backend, class Scores>
Index select_rows(const Backend& backend, const Scores& at, Index batch, Index heads, const XGeometry& geo,
                  std::span<const float> tau, const Rule& rule, const XSelectionLayout& out) {
  const Index rows = batch * heads * geo.q_blocks, kv_blocks = geo.kv_blocks;
  out.offsets[0] = 0;
  backend.parallel_for(rows, [&](Index r, int slot) {
    const Index qb = r % geo.q_blocks, h = r / geo.q_blocks % heads, b = r / (geo.q_blocks * heads);
    Arena arena(out.slots + out.slot_bytes * static_cast<std::size_t>(slot), out.slot_bytes);
    const XRowScratch w = XRowScratch::carve(arena, kv_blocks);
    const Index diagonal = geo.diagonal(qb);
    Index kept = 0;
    if (diagonal >= 0) {
      double total = 0;
      for (Index kb = 0; kb < kv_blocks; ++kb) {
        w.scores[kb] = at(b, h, qb, kb);
        w.keep[kb] = 0;
        total += w.scores[kb];
      }
      const double required = static_cast<double>(tau.size() == 1 ? tau[0] : tau[h]) * total;
      rule.mark(XRow{w.scores, qb, diagonal, required}, geo, w);
      std::int32_t* columns = out.columns + r * kv_blocks;
      for (Index kb = 0; kb < kv_blocks; ++kb)
        if (w.keep[kb]) columns[kept++] = static_cast<std::int32_t>(kb);
    }
    out.offsets[r + 1] = static_cast<std::int32_t>(kept);  // a count until packed below
  });
  for (Index r = 0; r < rows; ++r) {
    const std::int32_t kept = out.offsets[r + 1];
    if (kept > 0) std::memmove(out.columns + out.offsets[r], out.columns + r * kv_blocks, sizeof(std::int32_t) * kept);
    out.offsets[r + 1] = out.offsets[r] + kept;
  }
  return rows > 0 ? out.offsets[rows] : 0;
}

}  // namespace attnkit::detail
