// The XAttention scoring kernel (mechanism/xattention.hpp, whose header comment gives the
// algorithm): antidiagonal block scores through strided q' / k' rows packed into key panels and
// the register-tiled score micro-kernel, an fp32 softmax per strided row and block sums.
//   XGeometry   the strided problem of one call: lengths, strided rows and columns, blocks, and
//               which strided columns a row sees (from the mask policy's visible keys).
//   XScorer     packs and scores into its workspace (carve: the only description of its layout).
// Not here: options, selection (select_blocks) and the block-sparse run (mechanism/).
#pragma once

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <optional>
#include <vector>

#include "attnkit/backend/vec.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
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
  XScorer(const View<const float, 4>& q, const View<const float, 4>& k, const AttentionShape& shape,
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
    std::vector<Index> heads;  // out heads of the current kv head
    for (Index b = 0; b < shape_.batch; ++b)
      for (Index kvh = 0; kvh < shape_.heads.kv_heads; ++kvh) {
        heads.clear();
        for (Index o = 0; o < shape_.heads.out_heads(); ++o)
          if (shape_.heads.kv_head(o) == kvh) heads.push_back(o);
        if (heads.empty()) continue;
        backend.parallel_for(panels_, [&](Index p, int) { pack_panel(b, kvh, p); });
        backend.parallel_for(static_cast<Index>(heads.size()) * items_per_head_, [&](Index item, int slot) {
          run_item(b, heads[item / items_per_head_], item % items_per_head_, slot);
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
    for (Index j = 0; j < Tile::cols; ++j) {
      const Index c = p * Tile::cols + j;
      for (Index t = 0; t < geo_.stride; ++t) {
        const Index key = c * geo_.stride + t;
        const float* src = key < geo_.kv_len ? k_.at(b, key, kvh, 0) : nullptr;  // (head_dim)
        for (Index dd = 0; dd < d; ++dd) panel[(t * d + dd) * Tile::cols + j] = src ? src[dd] : 0.0f;
      }
    }
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
    for (Index i = 0; i < tiles * Tile::mr; ++i)
      for (Index t = 0; t < geo_.stride; ++t) {
        const Index pos = (r_begin + i) * geo_.stride + geo_.stride - 1 - t;
        const float* src = i < rows && pos < geo_.q_len ? q_.at(b, pos, qh, 0) : nullptr;  // (head_dim)
        float* dst = q_all + i * depth_ + t * d;
        for (Index dd = 0; dd < d; ++dd) dst[dd] = src ? src[dd] * scale_ : 0.0f;
      }
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

  View<const float, 4> q_, k_;
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

}  // namespace attnkit::detail
