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
// Selection per (batch, head, query block) with threshold tau, by Options::selection:
//   kSinkDiagonalThreshold (default, the documented rule): always keep the sink (key block 0)
//   and the diagonal block (the block of key min(qb B + B - 1, q_len - 1) + off); then the other
//   blocks (causal: at or left of the diagonal) in descending score, ties to the lower index, each
//   kept while the kept sum so far is < tau · (sum of the row's scores). tau = 1 keeps every
//   block with a positive score; tau = 0 keeps the sink and the diagonal only.
//   kReferenceChunked (the reference's find_blocks_chunked, as xattn_estimate calls it on chunks
//   of Options::chunk query positions): causal, it pre-selects the diagonal and the sink, except
//   in a chunk whose diagonal write covers key block 0 (the first chunk when q_len == kv_len),
//   where the write overwrites the sink column and only the diagonal is pre-selected; the other
//   blocks at or left of the diagonal rank in descending score (ties to the higher index:
//   torch.sort leaves their order open) and rank position p, pre-selected blocks first, is kept
//   iff c_p < tau · total with c_0 = c_1 = 0, c_p = (pre-selected sum) + (sum of the first p - 2
//   ranked blocks). With both pre-selected that is the default rule; with the diagonal alone the
//   sums lag one block, so one more block is kept. Not causal, nothing is pre-selected (the
//   diagonal is not forced): every block ranks and position p is kept iff the sum ranked before it
//   is < tau · total. Both ways block 0 is always kept (positions past the threshold fall back to
//   index 0). Example (L 512, block 64, query block 4, causal, tau 0.9, scores
//   [0, 0, 0, 2.603, 5.397, 0, 0, 0]): the default keeps {0, 3, 4}, the reference rule {0, 2, 3, 4}.
//   The reference ranks blocks right of the diagonal too (their scores are zero) and clears them
//   afterwards; here they are not ranked, so a tie at zero goes to a visible block. Its block
//   counts come from lengths padded to the chunk, which agree with these when q_len == kv_len.
// Causal query blocks that see no key list nothing.
// Batch > 1 and GQA (x-attention #12): every out head scores with its own query head against its
// kv head and gets its own mask (the block-sparse kernel takes masks per out head); tau is one
// value or one per out head. The reference code asserts batch 1 and q_heads == kv_heads.
// Storage types as for Dense (DenseStorage): q, k, v and out float, bfloat16 or float16 (k and v
// of one type); scoring and attention convert where they read, the math is float.
// A call given a workspace allocates nothing: the scores, the selected lists and the kernel's
// scratch are carved from it (a reused Args::selected keeps its capacity).
// Not here: the kernels (kernel/xattention.hpp), the reference (reference/xattention.hpp).
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "attnkit/core/scale.hpp"
#include "attnkit/kernel/xattention.hpp"
#include "attnkit/mechanism/block_sparse.hpp"

namespace attnkit {

// Block selection rule of XAttention (see the file comment).
enum class XSelection {
  kSinkDiagonalThreshold,  // sink + diagonal, then by descending score while below tau (default)
  kReferenceChunked,       // the reference's find_blocks_chunked
};

// Xattention_prefill's default chunk_size for kv_len keys: max(min(max(2048, p), 2^28 / p), 2048)
// positions, p the smallest power of two >= kv_len (one chunk up to 16384 keys).
inline Index xattention_reference_chunk(Index kv_len) {
  const Index p = static_cast<Index>(std::bit_ceil(static_cast<std::uint64_t>(std::max<Index>(kv_len, 1))));
  return std::max<Index>(std::min<Index>(std::max<Index>(2048, p), (Index(1) << 28) / p), 2048);
}

struct XAttention {
  struct Options {
    Index stride = 8;              // S, >= 1
    Index block = 128;             // B, a multiple of stride
    std::vector<float> tau{0.9f};  // in [0, 1]: one for every head, or one per out head
    bool causal = false;           // bottom-right aligned when q_len != kv_len
    std::optional<float> scale{};  // default 1 / sqrt(head_dim); must be finite and > 0
    XSelection selection = XSelection::kSinkDiagonalThreshold;
    Index chunk = 0;  // kReferenceChunked: query positions per chunk (xattn_estimate's chunk_size),
                      // a multiple of block; 0: xattention_reference_chunk(kv_len)
  };
  struct Args {
    BlockMask* selected = nullptr;  // receives the selected blocks (its capacity is reused)
    Workspace workspace{};          // >= workspace_bytes(...) bytes, 64-byte aligned; none: allocated
  };
};

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
    detail::check_scale_option(options_.scale);
    ATTNKIT_CHECK(options_.chunk >= 0 && options_.chunk % options_.block == 0, "options.chunk is ", options_.chunk,
                  ", expected 0 or a positive multiple of options.block ", options_.block);
  }

  std::string name() const {
    return std::string(options_.causal ? "xattention-causal/" : "xattention/") + Backend::name();
  }
  const Options& options() const { return options_; }

  // q (B, Lq, Hq, D), k (B, Lk, Hkv, D) -> scores (B, Ho, ceil(Lq / block), ceil(Lk / block)).
  // Element types as for Dense (DenseStorage): float, bfloat16 or float16 q, k (and v, out).
  template <class Q, class K>
  requires DenseStorage<Q, K, K, float>
  void score(const View<Q, 4>& q, const View<K, 4>& k, const View<float, 4>& scores,
             const Workspace& workspace = {}) const {
    const AttentionShape shape = checked_shape(q, k, k);
    check_view(scores, "scores");
    const detail::XGeometry geo = geometry(shape);
    const std::array<Index, 4> expected{shape.batch, shape.heads.out_heads(), geo.q_blocks, geo.kv_blocks};
    for (int axis = 0; axis < 4; ++axis)
      ATTNKIT_CHECK(scores.extent(axis) == expected[axis], "scores: extent ", axis, " is ", scores.extent(axis),
                    ", expected ", expected[axis], " (batch, out_heads, q_blocks, kv_blocks)");
    check_output_view(scores, "scores", {memory_range(q, "q"), memory_range(k, "k")});
    detail::XScorer<V> scorer(q, k, shape, geo, scale_for(shape));
    const detail::ScopedWorkspace scratch(workspace, scorer.workspace_bytes(backend_.threads()));
    if (scores.empty()) return;
    const float* s = scorer.run(backend_, scratch.data());
    for (Index i = 0; i < scores.size(); ++i)
      scores(i / (expected[1] * expected[2] * expected[3]), i / (expected[2] * expected[3]) % expected[1],
             i / expected[3] % expected[2], i % expected[3]) = s[i];
    scorer.finish();  // checks the scoring workspace's guards while `scratch` still holds it
  }

  // The blocks options.selection selects with options.tau from scores (B, Ho, q_blocks,
  // kv_blocks) of a problem with these lengths (see the file comment).
  BlockMask select(const View<const float, 4>& scores, Index q_len, Index kv_len) const {
    check_view(scores, "scores");
    AttentionShape shape{scores.extent(0), q_len, kv_len, 1, 1, HeadMap{scores.extent(1), scores.extent(1)}};
    check_tau(shape.heads.out_heads());
    const detail::XGeometry geo = geometry(shape);
    ATTNKIT_CHECK(scores.extent(2) == geo.q_blocks && scores.extent(3) == geo.kv_blocks, "scores: blocks ",
                  scores.extent(2), " x ", scores.extent(3), ", expected ", geo.q_blocks, " x ", geo.kv_blocks,
                  " (ceil(q_len / block) x ceil(kv_len / block))");
    const Index heads = shape.heads.out_heads();
    const detail::ScopedWorkspace workspace(Workspace{}, selection_bytes(shape, geo));
    detail::Arena arena(workspace.data(), workspace.bytes());
    const auto lists = detail::XSelectionLayout::carve(arena, rows_of(shape, geo), geo.kv_blocks, backend_.threads());
    BlockMask mask;
    select_into(
        &mask, [&](Index b, Index h, Index qb, Index kb) { return scores(b, h, qb, kb); }, shape.batch, heads, geo,
        lists);
    return mask;
  }

  // FLOPs and bytes of a call that selected `selected`: scoring plus the block-sparse kernel.
  template <class Q, class K, class Val>
  requires DenseStorage<Q, K, Val, float> Cost cost(const View<Q, 4>& q, const View<K, 4>& k, const View<Val, 4>& v,
                                                    const BlockMask& selected)
  const {
    const AttentionShape shape = checked_shape(q, k, v);
    detail::check_block_mask(selected, shape, options_.block);
    const detail::XGeometry geo = geometry(shape);
    double pairs = 0;  // (strided row, strided column) pairs scored
    for (Index r = 0; r < geo.q_strided; ++r) pairs += static_cast<double>(geo.visible_end(r));
    Cost cost =
        detail::block_sparse_cost(shape, selected, options_.block, options_.causal, sizeof(std::remove_const_t<K>));
    cost.flops +=
        2.0 * pairs * static_cast<double>(geo.stride * shape.head_dim * shape.batch * shape.heads.out_heads());
    return cost;
  }
  template <class Q, class K, class Val>
  requires DenseStorage<Q, K, Val, float> std::size_t workspace_bytes(const View<Q, 4>& q, const View<K, 4>& k,
                                                                      const View<Val, 4>& v)
  const {
    const AttentionShape shape = checked_shape(q, k, v);
    const detail::XGeometry geo = geometry(shape);
    return call_bytes(shape, geo, stage_bytes(shape, detail::XScorer<V>(q, k, shape, geo, scale_for(shape))));
  }

  // q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv) -> out (B, Lq, Ho, Dv).
  template <class Q, class K, class Val, class O>
  requires DenseStorage<Q, K, Val, O>
  void operator()(const View<Q, 4>& q, const View<K, 4>& k, const View<Val, 4>& v, const View<O, 4>& out,
                  const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, &out);
    check_tau(shape.heads.out_heads());
    const detail::XGeometry geo = geometry(shape);
    detail::XScorer<V> scorer(q, k, shape, geo, scale_for(shape));
    const std::size_t stage = stage_bytes(shape, scorer);
    const detail::ScopedWorkspace workspace(args.workspace, call_bytes(shape, geo, stage));
    // The workspace: the selected lists, then the scoring and, once the lists are made, the
    // block-sparse kernel in the same bytes.
    detail::Arena arena(workspace.data(), workspace.bytes());
    const auto lists = detail::XSelectionLayout::carve(arena, rows_of(shape, geo), geo.kv_blocks, backend_.threads());
    std::byte* const stage_data = arena.take<std::byte>(stage);
    const Index heads = shape.heads.out_heads();
    if (shape.batch == 0 || shape.q_len == 0) {
      select_into(
          args.selected, [](Index, Index, Index, Index) { return 0.0f; }, shape.batch, heads, geo, lists);
      return;
    }
    const float* s = scorer.run(backend_, stage_data);
    select_into(
        args.selected,
        [&](Index b, Index h, Index qb, Index kb) {
          return s[((b * heads + h) * geo.q_blocks + qb) * geo.kv_blocks + kb];
        },
        shape.batch, heads, geo, lists);
    scorer.finish();  // the scores are no longer needed: the kernel reuses their bytes
    detail::run_block_sparse<V>(backend_, q, k, v,
                                detail::BlockLists{lists.offsets, lists.columns, heads, geo.q_blocks}, out, shape,
                                options_.block, options_.causal, scale_for(shape), stage_data);
  }

 private:
  template <class Q, class K, class Val>
  AttentionShape checked_shape(const View<Q, 4>& q, const View<K, 4>& k, const View<Val, 4>& v) const {
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
    return detail::scale_or_default(options_.scale, shape.head_dim);
  }
  static Index rows_of(const AttentionShape& shape, const detail::XGeometry& geo) {
    return shape.batch * shape.heads.out_heads() * geo.q_blocks;
  }
  std::size_t selection_bytes(const AttentionShape& shape, const detail::XGeometry& geo) const {
    return detail::XSelectionLayout::bytes(rows_of(shape, geo), geo.kv_blocks, backend_.threads());
  }
  // Bytes of a call's workspace: the selected lists, then the stage (carved as operator() does).
  std::size_t call_bytes(const AttentionShape& shape, const detail::XGeometry& geo, std::size_t stage) const {
    detail::Arena arena = detail::Arena::measuring();
    detail::XSelectionLayout::carve(arena, rows_of(shape, geo), geo.kv_blocks, backend_.threads());
    arena.take<std::byte>(stage);
    return arena.used();
  }
  // Bytes of the stage the scoring and then the block-sparse kernel run in.
  std::size_t stage_bytes(const AttentionShape& shape, const detail::XScorer<V>& scorer) const {
    return std::max(scorer.workspace_bytes(backend_.threads()),
                    detail::block_sparse_workspace<V>(shape, options_.block, backend_.threads()));
  }

  // Runs options.selection's rule on every row into `lists`, then copies them into `mask` (when
  // given; its vectors keep their capacity).
  template <class Scores>
  void select_into(BlockMask* mask, const Scores& at, Index batch, Index heads, const detail::XGeometry& geo,
                   const detail::XSelectionLayout& lists) const {
    const std::span<const float> tau(options_.tau);
    Index listed = 0;
    if (options_.selection == XSelection::kReferenceChunked) {
      const Index chunk = options_.chunk > 0 ? options_.chunk : xattention_reference_chunk(geo.kv_len);
      const detail::ReferenceChunked rule{std::max<Index>(chunk / options_.block, 1)};
      listed = detail::select_rows(backend_, at, batch, heads, geo, tau, rule, lists);
    } else {
      listed = detail::select_rows(backend_, at, batch, heads, geo, tau, detail::SinkDiagonalThreshold{}, lists);
    }
    if (mask == nullptr) return;
    mask->batch = batch;
    mask->heads = heads;
    mask->q_blocks = geo.q_blocks;
    mask->kv_blocks = geo.kv_blocks;
    mask->offsets.assign(lists.offsets, lists.offsets + batch * heads * geo.q_blocks + 1);
    mask->columns.assign(lists.columns, lists.columns + listed);
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
