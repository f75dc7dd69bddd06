// Combiner-Logsparse (Ren et al. 2021, arXiv 2107.05768, section 4.2; google-research combiner
// _SelfAttLogn): Attention<CombinerLogsparse, Backend>, full attention capability at O(N log N).
// Self-attention (q_len == kv_len = N). Level l >= 0 cuts the sequence into aligned chunks
// [c·2^l, (c+1)·2^l) (full chunks only); each chunk has, per (batch, out head),
//   span key    ks = elementwise max of its keys                                     (head_dim)
//   span value  vs = softmax(scale · q̄ · K_cᵀ) V_c, q̄ = elementwise max of its queries  (v_dim)
// (a level-0 chunk {j} has ks = k_j, vs = v_j exactly). Coverage, written down here and tested
// against reference/combiner.hpp: split(b, e) cuts [b, e) greedily from b into the largest aligned
// chunk that starts at the cursor and fits, so [0, i) splits along the set bits of i. Query i sees
//   causal      {i} ∪ split(0, i)
//   non-causal  {i} ∪ split(0, i) ∪ split(i + 1, N)
// in one softmax over scale · q_i · ks, out_i = Σ p vs: every key is covered exactly once, by at
// most 2 log2(N) + 1 spans. The reference code differs (anchors.md): at level l >= 1 it attends
// chunk floor(i / 2^l) - 1 only when that index is even — the same chunks as split(0, i) — but has
// no level-0 span, so an odd i never covers i - 1 (i = 5 sees {5} and [0, 4)); here it does.
// Work items: (batch, out head, level) for the spans, then (batch, out head, 256-row chunk);
// results do not depend on the thread count.
// Not here: Combiner-Fixed (combiner.hpp), the reference (reference/combiner.hpp).
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "attnkit/attention.hpp"
#include "attnkit/backend/arrays.hpp"
#include "attnkit/backend/backend.hpp"
#include "attnkit/backend/exp.hpp"
#include "attnkit/backend/vec.hpp"
#include "attnkit/core/cost.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/tile/key_set.hpp"
#include "attnkit/tile/online_softmax.hpp"

namespace attnkit {

struct CombinerLogsparse {
  struct Options {
    bool causal = false;
    std::optional<float> scale{};  // default 1 / sqrt(head_dim); finite and > 0
  };
  struct Args {
    Workspace workspace{};  // >= workspace_bytes(...) bytes, 64-byte aligned; none: allocated
  };
};

// One span of the coverage: chunk `chunk` of level `level`, keys [chunk·2^level, (chunk+1)·2^level).
struct LogSpan {
  Index level = 0;
  Index chunk = 0;
};

// Calls f(LogSpan) for split(begin, end): greedy largest aligned chunks from begin.
template <class F>
void combiner_log_split(Index begin, Index end, F&& f) {
  for (Index p = begin; p < end;) {
    Index level = 0;  // grow while the doubled chunk stays aligned at p and fits
    while ((p & ((Index(2) << level) - 1)) == 0 && p + (Index(2) << level) <= end) ++level;
    f(LogSpan{level, p >> level});
    p += Index(1) << level;
  }
}

namespace detail {

struct LogsparsePlan {
  Index levels = 0;  // floor(log2 N) + 1
  Index spans = 0;   // Σ_l floor(N / 2^l): spans of one (batch, out head)
  Index heads = 0;   // batch * out_heads
  Index rows_per_item = 256;
  Index row_items = 0;  // heads * ceil(N / rows_per_item)
  Index max_set = 0;    // spans one query sees, at most
  std::size_t scratch_bytes = 0;
  std::size_t span_bytes = 0;
};

template <class V>
LogsparsePlan make_logsparse_plan(const AttentionShape& shape) {
  LogsparsePlan plan;
  const Index n = shape.q_len;
  plan.levels = n > 0 ? static_cast<Index>(std::bit_width(static_cast<std::uint64_t>(n))) : 0;
  for (Index l = 0; l < plan.levels; ++l) plan.spans += n >> l;
  plan.heads = shape.batch * shape.heads.out_heads();
  plan.row_items = plan.heads * ((n + plan.rows_per_item - 1) / plan.rows_per_item);
  plan.max_set = 2 * plan.levels + 1;
  plan.scratch_bytes = array_bytes<float>(shape.head_dim) +  // scaled query (or q̄)
                       array_bytes<float>(tile::key_set_score_floats<V>()) +
                       array_bytes<float>(std::max(plan.max_set, shape.v_dim)) +  // logits / accumulator
                       array_bytes<LogSpan>(plan.max_set);
  plan.span_bytes = array_bytes<float>(plan.heads * plan.spans * (shape.head_dim + shape.v_dim));
  return plan;
}

template <class V>
class CombinerLogsparseKernel {
  using Ops = VecOps<V>;

 public:
  CombinerLogsparseKernel(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                          const View<float, 4>& out, const AttentionShape& shape, const LogsparsePlan& plan,
                          bool causal, float scale, void* workspace, int slots)
      : q_(q), k_(k), v_(v), out_(out), shape_(shape), plan_(plan), causal_(causal), scale_(scale) {
    Arena arena(workspace, plan.span_bytes + plan.scratch_bytes * slots);
    spans_ = arena.take<float>(plan.heads * plan.spans * (shape.head_dim + shape.v_dim));
    scratch_ = arena.take<std::byte>(plan.scratch_bytes * slots);
  }

  Index span_items() const { return plan_.heads * plan_.levels; }

  // Pass 1, item (batch, out head, level): every span of that level.
  void span_item(Index item, int slot) const {
    const Index head = item / plan_.levels, level = item % plan_.levels;
    const Index batch = head / shape_.heads.out_heads(), out_head = head % shape_.heads.out_heads();
    const Index qh = shape_.heads.q_head(out_head), kh = shape_.heads.kv_head(out_head);
    const Index dim = shape_.head_dim, v_dim = shape_.v_dim, width = Index(1) << level;
    Arena arena(scratch_ + plan_.scratch_bytes * slot, plan_.scratch_bytes);
    float* qbar = arena.take<float>(dim);  // (head_dim), scaled
    float* scores = arena.take<float>(tile::key_set_score_floats<V>());
    float* acc = arena.take<float>(std::max(plan_.max_set, v_dim));  // (v_dim)
    for (Index c = 0; c < (shape_.q_len >> level); ++c) {
      float* ks = span_key(head, level, c);
      if (level == 0) {  // one key: the span is the key and its value, exactly
        std::copy_n(k_.at(batch, c, kh, 0), dim, ks);
        std::copy_n(v_.at(batch, c, kh, 0), v_dim, span_value(head, 0, c));
        continue;
      }
      std::fill(ks, ks + dim, tile::kNegInf);
      std::fill(qbar, qbar + dim, tile::kNegInf);
      for (Index j = c * width; j < (c + 1) * width; ++j) {
        const float* kj = k_.at(batch, j, kh, 0);
        const float* qj = q_.at(batch, j, qh, 0);
        for (Index d = 0; d < dim; ++d) {
          ks[d] = std::max(ks[d], kj[d]);
          qbar[d] = std::max(qbar[d], qj[d]);
        }
      }
      for (Index d = 0; d < dim; ++d) qbar[d] *= scale_;
      const float* q_ptrs[1] = {qbar};
      const tile::KeyRange all{0, width};
      tile::SoftmaxRow state;
      std::fill(acc, acc + v_dim, 0.0f);
      tile::attend_key_set<V>(q_ptrs, 1, k_.at(batch, c * width, kh, 0), k_.stride(1), v_.at(batch, c * width, kh, 0),
                              v_.stride(1), width, dim, v_dim, &all, scores, &state, acc, v_dim);
      tile::finalize_row<V>(acc, v_dim, state, span_value(head, level, c));
    }
  }

  // Pass 2, item (batch, out head, row chunk): each row's spans in one softmax.
  void row_item(Index item, int slot) const {
    const Index chunks = (shape_.q_len + plan_.rows_per_item - 1) / plan_.rows_per_item;
    const Index head = item / chunks, first = item % chunks * plan_.rows_per_item;
    const Index batch = head / shape_.heads.out_heads(), out_head = head % shape_.heads.out_heads();
    const Index qh = shape_.heads.q_head(out_head), dim = shape_.head_dim, v_dim = shape_.v_dim;
    Arena arena(scratch_ + plan_.scratch_bytes * slot, plan_.scratch_bytes);
    float* q_row = arena.take<float>(dim);  // (head_dim), scaled
    arena.take<float>(tile::key_set_score_floats<V>());
    float* logits = arena.take<float>(std::max(plan_.max_set, v_dim));  // (max_set)
    LogSpan* set = arena.take<LogSpan>(plan_.max_set);
    for (Index i = first; i < std::min(first + plan_.rows_per_item, shape_.q_len); ++i) {
      const float* src = q_.at(batch, i, qh, 0);
      for (Index d = 0; d < dim; ++d) q_row[d] = src[d] * scale_;
      Index count = 0;
      set[count++] = LogSpan{0, i};
      combiner_log_split(0, i, [&](LogSpan s) { set[count++] = s; });
      if (!causal_) combiner_log_split(i + 1, shape_.q_len, [&](LogSpan s) { set[count++] = s; });
      float max = tile::kNegInf;
      for (Index e = 0; e < count; ++e) {
        logits[e] = dot<V>(q_row, span_key(head, set[e].level, set[e].chunk), dim);
        max = std::max(max, logits[e]);
      }
      float sum = 0.0f;
      for (Index e = 0; e < count; ++e) sum += logits[e] = exp_approx(logits[e] - max);
      float* o = out_.at(batch, i, out_head, 0);  // (v_dim)
      std::fill(o, o + v_dim, 0.0f);
      for (Index e = 0; e < count; ++e)
        axpy<V>(logits[e] / sum, span_value(head, set[e].level, set[e].chunk), o, v_dim);
    }
  }

 private:
  // Spans of one head: level by level, chunk by chunk; keys then values.
  Index span_index(Index head, Index level, Index chunk) const {
    Index offset = 0;
    for (Index l = 0; l < level; ++l) offset += shape_.q_len >> l;
    return head * plan_.spans + offset + chunk;
  }
  float* span_key(Index head, Index level, Index chunk) const {
    return spans_ + span_index(head, level, chunk) * shape_.head_dim;
  }
  float* span_value(Index head, Index level, Index chunk) const {
    return spans_ + plan_.heads * plan_.spans * shape_.head_dim + span_index(head, level, chunk) * shape_.v_dim;
  }

  View<const float, 4> q_, k_, v_;
  View<float, 4> out_;
  AttentionShape shape_;
  LogsparsePlan plan_;
  bool causal_;
  float scale_;
  float* spans_ = nullptr;
  std::byte* scratch_ = nullptr;
};

}  // namespace detail

template <class Backend>
class Attention<CombinerLogsparse, Backend> {
  using V = vector_t<Backend>;

 public:
  using Options = CombinerLogsparse::Options;
  using Args = CombinerLogsparse::Args;

  explicit Attention(Options options = {}, Backend backend = {}) : options_(options), backend_(backend) {
    if (options_.scale)
      ATTNKIT_CHECK(std::isfinite(*options_.scale) && *options_.scale > 0.0f, "options.scale is ", *options_.scale,
                    ", expected a finite value > 0");
  }

  std::string name() const { return "combiner-logsparse/" + Backend::name(); }
  const Options& options() const { return options_; }

  // q (B, N, Hq, D), k (B, N, Hkv, D), v (B, N, Hkv, Dv) -> out (B, N, Ho, Dv).
  // FLOPs per (batch, out head): spans 2·(D + Dv) per key per level, rows 2·(D + Dv) per
  // (query, span) pair.
  Cost cost(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
            const Args& = {}) const {
    const AttentionShape s = checked_shape(q, k, v, nullptr);
    const detail::LogsparsePlan plan = detail::make_logsparse_plan<V>(s);
    double pairs = 0, span_keys = 0;
    for (Index l = 0; l < plan.levels; ++l) span_keys += double((s.q_len >> l) << l);
    for (Index i = 0; i < s.q_len; ++i) {
      pairs += 1.0 + double(std::popcount(static_cast<std::uint64_t>(i)));
      if (!options_.causal) combiner_log_split(i + 1, s.q_len, [&](LogSpan) { pairs += 1.0; });
    }
    Cost cost;
    cost.flops = double(plan.heads) * 2.0 * double(s.head_dim + s.v_dim) * (span_keys + pairs);
    cost.bytes =
        sizeof(float) * double(s.batch) * double(s.q_len) *
        (s.heads.q_heads * s.head_dim + s.heads.out_heads() * s.v_dim + s.heads.kv_heads * (s.head_dim + s.v_dim));
    return cost;
  }

  std::size_t workspace_bytes(const View<const float, 4>& q, const View<const float, 4>& k,
                              const View<const float, 4>& v, const Args& = {}) const {
    return workspace_of(detail::make_logsparse_plan<V>(checked_shape(q, k, v, nullptr)));
  }

  void operator()(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                  const View<float, 4>& out, const Args& args = {}) const {
    const AttentionShape shape = checked_shape(q, k, v, &out);
    const detail::LogsparsePlan plan = detail::make_logsparse_plan<V>(shape);
    if (plan.row_items == 0) return;
    const detail::ScopedWorkspace workspace(args.workspace, workspace_of(plan));
    const float scale = options_.scale.value_or(1.0f / std::sqrt(static_cast<float>(shape.head_dim)));
    const detail::CombinerLogsparseKernel<V> kernel(q, k, v, out, shape, plan, options_.causal, scale, workspace.data(),
                                                    backend_.threads());
    backend_.parallel_for(kernel.span_items(), [&](Index item, int slot) { kernel.span_item(item, slot); });
    backend_.parallel_for(plan.row_items, [&](Index item, int slot) { kernel.row_item(item, slot); });
  }

 private:
  static AttentionShape checked_shape(const View<const float, 4>& q, const View<const float, 4>& k,
                                      const View<const float, 4>& v, const View<float, 4>* out) {
    const AttentionShape shape = attention_shape(q, k, v, out);
    ATTNKIT_CHECK(shape.kv_len == shape.q_len, "k: seq ", shape.kv_len, ", expected ", shape.q_len,
                  " (q's seq: Combiner is self-attention)");
    return shape;
  }

  std::size_t workspace_of(const detail::LogsparsePlan& plan) const {
    if (plan.row_items == 0) return 0;
    return plan.span_bytes + plan.scratch_bytes * static_cast<std::size_t>(backend_.threads());
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
