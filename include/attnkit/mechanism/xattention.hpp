// XAttention (Xu et al. 2025; mit-han-lab/x-attention xattn_estimate + find_blocks_chunked):
// Attention<XAttention, Backend> = antidiagonal block scoring + threshold selection + the
// block-sparse kernel (mechanism/block_sparse.hpp), in one call.
// Scoring, with stride S, block B (a multiple of S), R = B / S strided rows per block, positions
// past a length read as zero vectors, off = kv_len - q_len:
//   strided query r (r < ceil(q_len / S)):  q'_r = concat_t q[rS + S - 1 - t]  (t = 0..S-1)
//   strided key   c (c < ceil(kv_len / S)): k'_c = concat_t k[cS + t]
//   so q'_r · k'_c is the antidiagonal sum of the S x S tile; logits q'_r · k'_c · scale / S
//   (scale defaults to 1 / sqrt(head_dim)); causal at stride granularity: c is visible to r iff
//   cS <= rS + S - 1 + off (its first key is visible to the group's last query); fp32 softmax per
//   strided row over its visible columns; score(qb, kb) = Σ of the probabilities of rows
//   [qb R, qb R + R) and columns [kb R, kb R + R).
// Selection per (batch, head, query block) with threshold tau: always keep the sink (key block 0)
// and the diagonal block (the block of key min(qb B + B - 1, q_len - 1) + off); then the other
// blocks (causal: at or left of the diagonal) in descending score, ties to the lower index, each
// kept while the kept sum so far is < tau · (sum of the row's scores). tau = 1 keeps every block
// with a positive score; tau = 0 keeps the sink and the diagonal only. Causal query blocks that see
// no key list nothing.
// Batch > 1 and GQA (x-attention #12): every out head scores with its own query head against its
// kv head and gets its own mask (the block-sparse kernel takes masks per out head); tau is one
// value or one per out head. The reference code asserts batch 1 and q_heads == kv_heads.
// Not here: the reference (reference/xattention.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "attnkit/mechanism/block_sparse.hpp"

namespace attnkit {

struct XAttention {
  struct Options {
    Index stride = 8;              // S, >= 1
    Index block = 128;             // B, a multiple of stride
    std::vector<float> tau{0.9f};  // in [0, 1]: one for every head, or one per out head
    bool causal = true;            // bottom-right aligned when q_len != kv_len
    std::optional<float> scale{};  // default 1 / sqrt(head_dim); must be finite and > 0
  };
  struct Args {
    BlockMask* selected = nullptr;  // receives the selected blocks (its capacity is reused)
    Workspace workspace{};          // >= workspace_bytes(...) bytes, 64-byte aligned; none: allocated
  };
};

namespace detail {

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
        q_blocks(block_count(shape.q_len, b)),
        kv_blocks(block_count(shape.kv_len, b)),
        causal(c) {}

  // Strided columns [0, end) visible to strided row r.
  Index visible_end(Index r) const {
    if (!causal) return kv_strided;
    const Index last_key = r * stride + stride - 1 + kv_len - q_len;
    return last_key < 0 ? 0 : std::min(kv_strided, last_key / stride + 1);
  }
  // Diagonal key block of query block qb; -1 when a causal block sees no key.
  Index diagonal(Index qb) const {
    const Index key = std::min(qb * block + block - 1, q_len - 1) + kv_len - q_len;
    if (kv_blocks == 0 || (causal && key < 0)) return -1;
    return std::clamp<Index>(key / block, 0, kv_blocks - 1);
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

  // Bytes: shared (packed keys of one kv head + every score) and per thread.
  std::size_t shared_bytes() const {
    return array_bytes<float>(panels_ * Tile::cols * depth_) +
           array_bytes<float>(shape_.batch * shape_.heads.out_heads() * geo_.q_blocks * geo_.kv_blocks);
  }
  std::size_t thread_bytes() const {
    return array_bytes<float>(tile_rows() * depth_) + array_bytes<float>(tile_rows() * panels_ * Tile::cols);
  }

  // Runs the whole scoring into the workspace; returns the scores (batch, out_heads, q_blocks, kv_blocks).
  template <class Backend>
  const float* run(const Backend& backend, void* workspace) {
    Arena arena(workspace, shared_bytes() + thread_bytes() * backend.threads());
    packed_ = arena.take<float>(panels_ * Tile::cols * depth_);  // (panels, depth, cols)
    scores_ = arena.take<float>(shape_.batch * shape_.heads.out_heads() * geo_.q_blocks * geo_.kv_blocks);
    scratch_ = arena.take<std::byte>(thread_bytes() * backend.threads());
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
  float* packed_ = nullptr;
  float* scores_ = nullptr;
  std::byte* scratch_ = nullptr;
};

// Selection of every (batch, head, query block) row from scores (batch, heads, q_blocks,
// kv_blocks), `at(b, h, qb, kb)`; tau one value or one per head. Writes into `mask`.
template <class Scores>
void select_blocks(const Scores& at, Index batch, Index heads, const XGeometry& geo, const std::vector<float>& tau,
                   BlockMask& mask) {
  mask.batch = batch;
  mask.heads = heads;
  mask.q_blocks = geo.q_blocks;
  mask.kv_blocks = geo.kv_blocks;
  mask.offsets.assign(1, 0);
  mask.columns.clear();
  std::vector<std::int32_t> order;
  std::vector<std::int32_t> kept;
  for (Index b = 0; b < batch; ++b)
    for (Index h = 0; h < heads; ++h)
      for (Index qb = 0; qb < geo.q_blocks; ++qb) {
        const Index diagonal = geo.diagonal(qb);
        kept.clear();
        if (diagonal >= 0) {
          double total = 0, sum = 0;
          for (Index kb = 0; kb < geo.kv_blocks; ++kb) total += at(b, h, qb, kb);
          const double required = static_cast<double>(tau.size() == 1 ? tau[0] : tau[h]) * total;
          kept.push_back(0);
          sum += at(b, h, qb, 0);
          if (diagonal != 0) {
            kept.push_back(static_cast<std::int32_t>(diagonal));
            sum += at(b, h, qb, diagonal);
          }
          const Index last = geo.causal ? diagonal : geo.kv_blocks - 1;
          order.clear();
          for (Index kb = 1; kb <= last; ++kb)
            if (kb != diagonal) order.push_back(static_cast<std::int32_t>(kb));
          std::stable_sort(order.begin(), order.end(),
                           [&](std::int32_t x, std::int32_t y) { return at(b, h, qb, x) > at(b, h, qb, y); });
          for (const std::int32_t kb : order) {
            if (!(sum < required)) break;
            kept.push_back(kb);
            sum += at(b, h, qb, kb);
          }
          std::sort(kept.begin(), kept.end());
        }
        mask.columns.insert(mask.columns.end(), kept.begin(), kept.end());
        mask.offsets.push_back(static_cast<std::int32_t>(mask.columns.size()));
      }
}

}  // namespace detail

template <class Backend>
class Attention<XAttention, Backend> {
  using V = vector_t<Backend>;

 public:
  using Options = XAttention::Options;
  using Args = XAttention::Args;

  explicit Attention(Options options = {}, Backend backend = {}) : options_(std::move(options)), backend_(backend) {
    ATTNKIT_CHECK(options_.stride >= 1, "options.stride is ", options_.stride, ", expected >= 1");
    ATTNKIT_CHECK(options_.block >= 1 && options_.block % options_.stride == 0, "options.block is ", options_.block,
                  ", expected a positive multiple of options.stride ", options_.stride);
    ATTNKIT_CHECK(!options_.tau.empty(), "options.tau: empty, expected one value or one per out head");
    for (std::size_t h = 0; h < options_.tau.size(); ++h)
      ATTNKIT_CHECK(options_.tau[h] >= 0.0f && options_.tau[h] <= 1.0f, "options.tau[", h, "] is ", options_.tau[h],
                    ", expected in [0, 1]");
    detail::check_scale(options_.scale);
  }

  std::string name() const { return "xattention/" + Backend::name(); }
  const Options& options() const { return options_; }

  // q (B, Lq, Hq, D), k (B, Lk, Hkv, D) -> scores (B, Ho, ceil(Lq / block), ceil(Lk / block)).
  void score(const View<const float, 4>& q, const View<const float, 4>& k, const View<float, 4>& scores,
             const Workspace& workspace = {}) const {
    const AttentionShape shape = checked_shape(q, k, k);
    check_view(scores, "scores");
    const detail::XGeometry geo = geometry(shape);
    const std::array<Index, 4> expected{shape.batch, shape.heads.out_heads(), geo.q_blocks, geo.kv_blocks};
    for (int axis = 0; axis < 4; ++axis)
      ATTNKIT_CHECK(scores.extent(axis) == expected[axis], "scores: extent ", axis, " is ", scores.extent(axis),
                    ", expected ", expected[axis], " (batch, out_heads, q_blocks, kv_blocks)");
    detail::XScorer<V> scorer(q, k, shape, geo, scale_for(shape));
    const detail::ScopedWorkspace scratch(workspace, scoring_bytes(scorer));
    if (scores.empty()) return;
    const float* s = scorer.run(backend_, scratch.data());
    for (Index i = 0; i < scores.size(); ++i)
      scores(i / (expected[1] * expected[2] * expected[3]), i / (expected[2] * expected[3]) % expected[1],
             i / expected[3] % expected[2], i % expected[3]) = s[i];
  }

  // The blocks options.tau selects from scores (B, Ho, q_blocks, kv_blocks) of a problem with
  // these lengths (see the file comment).
  BlockMask select(const View<const float, 4>& scores, Index q_len, Index kv_len) const {
    check_view(scores, "scores");
    AttentionShape shape{scores.extent(0), q_len, kv_len, 1, 1, HeadMap{scores.extent(1), scores.extent(1)}};
    check_tau(shape.heads.out_heads());
    const detail::XGeometry geo = geometry(shape);
    ATTNKIT_CHECK(scores.extent(2) == geo.q_blocks && scores.extent(3) == geo.kv_blocks, "scores: blocks ",
                  scores.extent(2), " x ", scores.extent(3), ", expected ", geo.q_blocks, " x ", geo.kv_blocks,
                  " (ceil(q_len / block) x ceil(kv_len / block))");
    BlockMask mask;
    detail::select_blocks([&](Index b, Index h, Index qb, Index kb) { return scores(b, h, qb, kb); }, shape.batch,
                          shape.heads.out_heads(), geo, options_.tau, mask);
    return mask;
  }

  // FLOPs and bytes of a call that selected `selected`: scoring plus the block-sparse kernel.
  Cost cost(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
            const BlockMask& selected) const {
    const AttentionShape shape = checked_shape(q, k, v);
    detail::check_block_mask(selected, shape, options_.block);
    const detail::XGeometry geo = geometry(shape);
    double pairs = 0;  // (strided row, strided column) pairs scored
    for (Index r = 0; r < geo.q_strided; ++r) pairs += static_cast<double>(geo.visible_end(r));
    Cost cost = detail::block_sparse_cost(shape, selected, options_.block, options_.causal);
    cost.flops +=
        2.0 * pairs * static_cast<double>(geo.stride * shape.head_dim * shape.batch * shape.heads.out_heads());
    return cost;
  }
  std::size_t workspace_bytes(const View<const float, 4>& q, const View<const float, 4>& k,
                              const View<const float, 4>& v) const {
    const AttentionShape shape = checked_shape(q, k, v);
    return call_bytes(shape, detail::XScorer<V>(q, k, shape, geometry(shape), scale_for(shape)));
  }

  // q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv) -> out (B, Lq, Ho, Dv).
  void operator()(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                  const View<float, 4>& out, const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, &out);
    check_tau(shape.heads.out_heads());
    const detail::XGeometry geo = geometry(shape);
    detail::XScorer<V> scorer(q, k, shape, geo, scale_for(shape));
    const detail::ScopedWorkspace workspace(args.workspace, call_bytes(shape, scorer));
    BlockMask local;
    BlockMask& mask = args.selected != nullptr ? *args.selected : local;
    const Index out_heads = shape.heads.out_heads();
    if (shape.batch == 0 || shape.q_len == 0) {
      detail::select_blocks([](Index, Index, Index, Index) { return 0.0f; }, shape.batch, out_heads, geo, options_.tau,
                            mask);
      return;
    }
    const float* s = scorer.run(backend_, workspace.data());
    detail::select_blocks([&](Index b, Index h, Index qb,
                              Index kb) { return s[((b * out_heads + h) * geo.q_blocks + qb) * geo.kv_blocks + kb]; },
                          shape.batch, out_heads, geo, options_.tau, mask);
    // The scores are no longer needed: the kernel reuses the workspace.
    detail::run_block_sparse<V>(backend_, q, k, v, mask, out, shape, options_.block, options_.causal, scale_for(shape),
                                workspace.data());
  }

 private:
  AttentionShape checked_shape(const View<const float, 4>& q, const View<const float, 4>& k,
                               const View<const float, 4>& v) const {
    const AttentionShape shape = attention_shape(q, k, v, nullptr);
    check_tau(shape.heads.out_heads());
    return shape;
  }
  void check_tau(Index out_heads) const {
    const Index n = static_cast<Index>(options_.tau.size());
    ATTNKIT_CHECK(n == 1 || n == out_heads, "options.tau: ", n, " values, expected 1 or ", out_heads, " (out heads)");
  }
  detail::XGeometry geometry(const AttentionShape& shape) const {
    return detail::XGeometry(shape, options_.stride, options_.block, options_.causal);
  }
  float scale_for(const AttentionShape& shape) const {
    return options_.scale.value_or(1.0f / std::sqrt(static_cast<float>(shape.head_dim)));
  }
  std::size_t scoring_bytes(const detail::XScorer<V>& scorer) const {
    return scorer.shared_bytes() + scorer.thread_bytes() * static_cast<std::size_t>(backend_.threads());
  }
  std::size_t call_bytes(const AttentionShape& shape, const detail::XScorer<V>& scorer) const {
    return std::max(scoring_bytes(scorer),
                    detail::block_sparse_workspace<V>(shape, options_.block, backend_.threads()));
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
