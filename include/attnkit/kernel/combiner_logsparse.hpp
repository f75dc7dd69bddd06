// The Combiner-Logsparse kernel (mechanism/combiner_logsparse.hpp): the span coverage
// (LogSpan, combiner_log_split: which aligned chunks a query sees) and the two passes over it.
//   LogsparsePlan            levels, spans and work items of one call, a function of the shape
//                            only; it owns every buffer extent.
//   LogsparseScratch         one thread's scratch (carve: the only description of its layout).
//   LogsparseWorkspace       the whole workspace: every span, then the threads' scratch.
//   CombinerLogsparseKernel  span_item (pass 1: the spans of one level, through the key-set
//                            kernel), row_item (pass 2: each row's spans in one softmax).
// Not here: options and validation (mechanism/combiner_logsparse.hpp).
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>

#include "attnkit/backend/arrays.hpp"
#include "attnkit/backend/exp.hpp"
#include "attnkit/backend/vec.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/core/workspace_layout.hpp"
#include "attnkit/kernel/key_set.hpp"
#include "attnkit/tile/mask.hpp"
#include "attnkit/tile/online_softmax.hpp"

namespace attnkit {

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

}  // namespace attnkit

namespace attnkit::detail {

struct LogsparsePlan {
  Index levels = 0;  // floor(log2 N) + 1
  Index spans = 0;   // Σ_l floor(N / 2^l): spans of one (batch, out head)
  Index heads = 0;   // batch * out_heads
  Index rows_per_item = 256;
  Index row_chunks = 0;  // ceil(N / rows_per_item)
  Index items = 0;       // row items: heads * row_chunks
  Index max_set = 0;     // spans one query sees, at most
  Index head_dim = 0, v_dim = 0;
  Index score_floats = 0;         // the key-set kernel's score buffer
  std::size_t scratch_bytes = 0;  // per thread: LogsparseScratch::carve
};

// One thread's scratch; pass 1 uses q_row as q̄ and row as the accumulator, pass 2 row as logits.
struct LogsparseScratch {
  float* q_row = nullptr;   // (head_dim) scaled
  float* scores = nullptr;  // (score_floats)
  float* row = nullptr;     // (max(max_set, v_dim))
  LogSpan* set = nullptr;   // (max_set)

  static LogsparseScratch carve(Arena& arena, const LogsparsePlan& plan) {
    LogsparseScratch sc;
    sc.q_row = arena.take<float>(plan.head_dim);
    sc.scores = arena.take<float>(plan.score_floats);
    sc.row = arena.take<float>(std::max(plan.max_set, plan.v_dim));
    sc.set = arena.take<LogSpan>(plan.max_set);
    return sc;
  }
};

// The whole workspace: every span (keys of all heads, then values), then the threads' scratch.
struct LogsparseWorkspace {
  float* spans = nullptr;  // (heads * spans * (head_dim + v_dim))
  std::byte* scratch = nullptr;

  static LogsparseWorkspace carve(Arena& arena, const LogsparsePlan& plan, int threads) {
    LogsparseWorkspace w;
    w.spans = arena.take<float>(plan.heads * plan.spans * (plan.head_dim + plan.v_dim));
    w.scratch = take_thread_slots(arena, plan, threads);
    return w;
  }
};

template <class V>
LogsparsePlan make_logsparse_plan(const AttentionShape& shape) {
  LogsparsePlan plan;
  const Index n = shape.q_len;
  plan.levels = n > 0 ? static_cast<Index>(std::bit_width(static_cast<std::uint64_t>(n))) : 0;
  for (Index l = 0; l < plan.levels; ++l) plan.spans += n >> l;
  plan.heads = shape.batch * shape.heads.out_heads();
  plan.row_chunks = (n + plan.rows_per_item - 1) / plan.rows_per_item;
  plan.items = plan.heads * plan.row_chunks;
  plan.max_set = 2 * plan.levels + 1;
  plan.head_dim = shape.head_dim;
  plan.v_dim = shape.v_dim;
  plan.score_floats = key_set_score_floats<V>();
  plan.scratch_bytes = scratch_bytes_of<LogsparseScratch>(plan);
  return plan;
}

template <class V>
class CombinerLogsparseKernel {
  using Ops = VecOps<V>;

 public:
  CombinerLogsparseKernel(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                          const View<float, 4>& out, const AttentionShape& shape, const LogsparsePlan& plan,
                          bool causal, float scale, void* workspace, int slots)
      : q_(q),
        k_(k),
        v_(v),
        out_(out),
        shape_(shape),
        plan_(plan),
        causal_(causal),
        scale_(scale),
        arena_(workspace, workspace_bytes_of<LogsparseWorkspace>(plan, slots)) {
    const LogsparseWorkspace w = LogsparseWorkspace::carve(arena_, plan, slots);
    spans_ = w.spans;
    scratch_ = w.scratch;
  }

  Index span_items() const { return plan_.heads * plan_.levels; }

  // Pass 1, item (batch, out head, level): every span of that level.
  void span_item(Index item, int slot) const {
    const Index head = item / plan_.levels, level = item % plan_.levels;
    const Index batch = head / shape_.heads.out_heads(), out_head = head % shape_.heads.out_heads();
    const Index qh = shape_.heads.q_head(out_head), kh = shape_.heads.kv_head(out_head);
    const Index dim = shape_.head_dim, v_dim = shape_.v_dim, width = Index(1) << level;
    Arena arena = thread_slot(scratch_, plan_, slot);
    const LogsparseScratch sc = LogsparseScratch::carve(arena, plan_);
    float* qbar = sc.q_row;  // (head_dim), scaled
    float* scores = sc.scores;
    float* acc = sc.row;  // (v_dim)
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
      attend_key_set<V>(q_ptrs, 1, k_.at(batch, c * width, kh, 0), k_.stride(1), v_.at(batch, c * width, kh, 0),
                        v_.stride(1), width, dim, v_dim, &all, scores, &state, acc, v_dim);
      tile::finalize_row<V>(acc, v_dim, state, span_value(head, level, c));
    }
  }

  // Pass 2, item (batch, out head, row chunk): each row's spans in one softmax.
  void row_item(Index item, int slot) const {
    const Index head = item / plan_.row_chunks, first = item % plan_.row_chunks * plan_.rows_per_item;
    const Index batch = head / shape_.heads.out_heads(), out_head = head % shape_.heads.out_heads();
    const Index qh = shape_.heads.q_head(out_head), dim = shape_.head_dim, v_dim = shape_.v_dim;
    Arena arena = thread_slot(scratch_, plan_, slot);
    const LogsparseScratch sc = LogsparseScratch::carve(arena, plan_);
    float* q_row = sc.q_row;  // (head_dim), scaled
    float* logits = sc.row;   // (max_set)
    LogSpan* set = sc.set;    // (max_set)
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
  Arena arena_;  // the whole workspace; its guards (sanitize builds) are checked when the kernel ends
  float* spans_ = nullptr;
  std::byte* scratch_ = nullptr;
};

}  // namespace attnkit::detail
