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

#include "attnkit/core/scale.hpp"
#include "attnkit/kernel/xattention.hpp"
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
    detail::check_scale_option(options_.scale);
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
    scorer.finish();
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
    return detail::scale_or_default(options_.scale, shape.head_dim);
  }
  std::size_t call_bytes(const AttentionShape& shape, const detail::XScorer<V>& scorer) const {
    return std::max(scorer.workspace_bytes(backend_.threads()),
                    detail::block_sparse_workspace<V>(shape, options_.block, backend_.threads()));
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
