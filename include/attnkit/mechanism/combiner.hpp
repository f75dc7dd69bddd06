// Combiner-Fixed (Ren et al. 2021, arXiv 2107.05768; google-research combiner _SelfAttSqrtn):
// Attention<CombinerFixed, Backend>, full attention capability at O(N sqrt N) cost.
// Self-attention (q_len == kv_len = N) cut into segments of s positions (options.segment, default
// round(sqrt(N)); the last segment may be shorter). For each segment r, per (batch, out head):
//   span key    ks_r = elementwise max of the segment's keys                       (head_dim)
//   span value  vs_r = softmax(scale · q̄_r · K_rᵀ) V_r, q̄_r = elementwise max of its queries (v_dim)
// Query i in segment t sees, in one softmax with logits scale · q_i · key:
//   direct    keys j of segment t (causal: j <= i)          values v_j
//   indirect  span keys of segments r < t (causal) or r != t values vs_r
// so out_i = Σ_direct p v_j + Σ_indirect p vs_r. Head mapping: see HeadMap (span values depend
// on the query head, so they are per out head). A segment is a work item in both passes (spans,
// then rows), so results do not depend on the thread count.
// Not here: the reference (reference/combiner.hpp); Combiner-Logsparse (combiner_logsparse.hpp);
// varlen / packed batches (not supported).
#pragma once

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>

#include "attnkit/attention.hpp"
#include "attnkit/backend/backend.hpp"
#include "attnkit/core/cost.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/tile/key_set.hpp"
#include "attnkit/tile/online_softmax.hpp"
#include "attnkit/tile/tile_shape.hpp"

namespace attnkit {

struct CombinerFixed {
  struct Options {
    bool causal = false;
    std::optional<float> scale{};  // default 1 / sqrt(head_dim); finite and > 0
    Index segment = 0;             // positions per segment; 0: round(sqrt(seq)), at least 1
  };
  struct Args {
    Workspace workspace{};  // >= workspace_bytes(...) bytes, 64-byte aligned; none: allocated
  };
};

// Segment length of a Combiner-Fixed call: the option, or round(sqrt(seq)) (at least 1).
inline Index combiner_segment(Index option, Index seq) {
  if (option > 0) return option;
  return std::max<Index>(1, static_cast<Index>(std::lround(std::sqrt(static_cast<double>(seq)))));
}

namespace detail {

struct CombinerPlan {
  Index segment = 1;              // s
  Index segments = 0;             // ceil(N / s)
  Index heads = 0;                // batch * out_heads
  Index items = 0;                // heads * segments, in each pass
  std::size_t scratch_bytes = 0;  // per thread
  std::size_t span_bytes = 0;     // span keys and values of the call
};

template <class V>
CombinerPlan make_combiner_plan(const AttentionShape& shape, Index segment_option) {
  CombinerPlan plan;
  plan.segment = combiner_segment(segment_option, shape.q_len);
  plan.segments = (shape.q_len + plan.segment - 1) / plan.segment;
  plan.heads = shape.batch * shape.heads.out_heads();
  plan.items = plan.heads * plan.segments;
  const Index mr = RegisterTile<V>::mr;
  plan.scratch_bytes = array_bytes<float>(mr * shape.head_dim) +  // scaled query tile
                       array_bytes<float>(tile::key_set_score_floats<V>()) +
                       array_bytes<float>(mr * shape.v_dim) +  // accumulators
                       array_bytes<tile::SoftmaxRow>(mr);
  plan.span_bytes = array_bytes<float>(plan.items * shape.head_dim) + array_bytes<float>(plan.items * shape.v_dim);
  return plan;
}

template <class V>
class CombinerFixedKernel {
  static constexpr int MR = RegisterTile<V>::mr;

 public:
  CombinerFixedKernel(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                      const View<float, 4>& out, const AttentionShape& shape, const CombinerPlan& plan, bool causal,
                      float scale, void* workspace, int slots)
      : q_(q), k_(k), v_(v), out_(out), shape_(shape), plan_(plan), causal_(causal), scale_(scale) {
    Arena arena(workspace, plan.span_bytes + plan.scratch_bytes * slots);
    span_k_ = arena.take<float>(plan.items * shape.head_dim);
    span_v_ = arena.take<float>(plan.items * shape.v_dim);
    scratch_ = arena.take<std::byte>(plan.scratch_bytes * slots);
  }

  // Pass 1, item (batch, out head, segment r): span key and span value of segment r.
  void span_item(Index item, int slot) const {
    const Segment seg = segment_of(item);
    Scratch sc = scratch(slot);
    const Index dim = shape_.head_dim;
    float* ks = span_k_ + item * dim;  // (head_dim)
    float* qbar = sc.q_tile;           // (head_dim), scaled
    std::fill(ks, ks + dim, tile::kNegInf);
    std::fill(qbar, qbar + dim, tile::kNegInf);
    for (Index j = seg.begin; j < seg.end; ++j) {
      const float* kj = k_.at(seg.batch, j, seg.kh, 0);
      const float* qj = q_.at(seg.batch, j, seg.qh, 0);
      for (Index d = 0; d < dim; ++d) {
        ks[d] = std::max(ks[d], kj[d]);
        qbar[d] = std::max(qbar[d], qj[d]);
      }
    }
    for (Index d = 0; d < dim; ++d) qbar[d] *= scale_;
    const float* q_ptrs[1] = {qbar};
    const tile::KeyRange all{0, seg.end - seg.begin};
    *sc.states = tile::SoftmaxRow{};
    std::fill(sc.acc, sc.acc + shape_.v_dim, 0.0f);
    tile::attend_key_set<V>(q_ptrs, 1, k_.at(seg.batch, seg.begin, seg.kh, 0), k_.stride(1),
                            v_.at(seg.batch, seg.begin, seg.kh, 0), v_.stride(1), all.end, dim, shape_.v_dim, &all,
                            sc.scores, sc.states, sc.acc, shape_.v_dim);
    tile::finalize_row<V>(sc.acc, shape_.v_dim, *sc.states, span_v_ + item * shape_.v_dim);
  }

  // Pass 2, item (batch, out head, segment t): the rows of segment t.
  void row_item(Index item, int slot) const {
    const Segment seg = segment_of(item);
    Scratch sc = scratch(slot);
    const Index dim = shape_.head_dim, v_dim = shape_.v_dim;
    const Index t = item % plan_.segments;
    const Index head_first = item - t;                   // span rows of this (batch, out head) start here
    const float* span_k = span_k_ + head_first * dim;    // (segments, head_dim)
    const float* span_v = span_v_ + head_first * v_dim;  // (segments, v_dim)
    for (Index first = seg.begin; first < seg.end; first += MR) {
      const Index rows = std::min<Index>(MR, seg.end - first);
      const float* q_ptrs[MR];
      tile::KeyRange direct[MR], before[MR], after[MR];
      for (Index r = 0; r < rows; ++r) {
        const float* src = q_.at(seg.batch, first + r, seg.qh, 0);
        for (Index d = 0; d < dim; ++d) sc.q_tile[r * dim + d] = src[d] * scale_;
        q_ptrs[r] = sc.q_tile + r * dim;
        direct[r] = {0, causal_ ? first + r - seg.begin + 1 : seg.end - seg.begin};
        before[r] = {0, t};
        after[r] = {0, causal_ ? 0 : plan_.segments - t - 1};
        sc.states[r] = tile::SoftmaxRow{};
      }
      std::fill(sc.acc, sc.acc + rows * v_dim, 0.0f);
      tile::attend_key_set<V>(q_ptrs, rows, k_.at(seg.batch, seg.begin, seg.kh, 0), k_.stride(1),
                              v_.at(seg.batch, seg.begin, seg.kh, 0), v_.stride(1), seg.end - seg.begin, dim, v_dim,
                              direct, sc.scores, sc.states, sc.acc, v_dim);
      tile::attend_key_set<V>(q_ptrs, rows, span_k, dim, span_v, v_dim, t, dim, v_dim, before, sc.scores, sc.states,
                              sc.acc, v_dim);
      if (!causal_)
        tile::attend_key_set<V>(q_ptrs, rows, span_k + (t + 1) * dim, dim, span_v + (t + 1) * v_dim, v_dim,
                                plan_.segments - t - 1, dim, v_dim, after, sc.scores, sc.states, sc.acc, v_dim);
      for (Index r = 0; r < rows; ++r)
        tile::finalize_row<V>(sc.acc + r * v_dim, v_dim, sc.states[r], out_.at(seg.batch, first + r, seg.out_head, 0));
    }
  }

 private:
  struct Segment {
    Index batch, out_head, qh, kh, begin, end;
  };
  Segment segment_of(Index item) const {
    const Index r = item % plan_.segments;
    const Index head = item / plan_.segments;
    const Index out_head = head % shape_.heads.out_heads();
    return Segment{head / shape_.heads.out_heads(), out_head,          shape_.heads.q_head(out_head),
                   shape_.heads.kv_head(out_head),  r * plan_.segment, std::min((r + 1) * plan_.segment, shape_.q_len)};
  }

  struct Scratch {
    float* q_tile;  // (mr, head_dim)
    float* scores;
    float* acc;  // (mr, v_dim)
    tile::SoftmaxRow* states;
  };
  Scratch scratch(int slot) const {
    Arena arena(scratch_ + plan_.scratch_bytes * slot, plan_.scratch_bytes);
    Scratch sc;
    sc.q_tile = arena.take<float>(MR * shape_.head_dim);
    sc.scores = arena.take<float>(tile::key_set_score_floats<V>());
    sc.acc = arena.take<float>(MR * shape_.v_dim);
    sc.states = arena.take<tile::SoftmaxRow>(MR);
    return sc;
  }

  View<const float, 4> q_, k_, v_;
  View<float, 4> out_;
  AttentionShape shape_;
  CombinerPlan plan_;
  bool causal_;
  float scale_;
  float* span_k_ = nullptr;
  float* span_v_ = nullptr;
  std::byte* scratch_ = nullptr;
};

}  // namespace detail

template <class Backend>
class Attention<CombinerFixed, Backend> {
  using V = vector_t<Backend>;

 public:
  using Options = CombinerFixed::Options;
  using Args = CombinerFixed::Args;

  explicit Attention(Options options = {}, Backend backend = {}) : options_(options), backend_(backend) {
    ATTNKIT_CHECK(options_.segment >= 0, "options.segment is ", options_.segment,
                  ", expected >= 1, or 0 for round(sqrt(seq))");
    if (options_.scale)
      ATTNKIT_CHECK(std::isfinite(*options_.scale) && *options_.scale > 0.0f, "options.scale is ", *options_.scale,
                    ", expected a finite value > 0");
  }

  std::string name() const { return "combiner-fixed/" + Backend::name(); }
  const Options& options() const { return options_; }

  // q (B, N, Hq, D), k (B, N, Hkv, D), v (B, N, Hkv, Dv) -> out (B, N, Ho, Dv).
  // FLOPs per (batch, out head): spans 2·N·(D + Dv) (q̄_r·K_r and P·V_r), rows 2·(D + Dv) per
  // (query, direct key or span) pair.
  Cost cost(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
            const Args& = {}) const {
    const AttentionShape s = checked_shape(q, k, v, nullptr);
    const Index seg = combiner_segment(options_.segment, s.q_len);
    const Index segments = (s.q_len + seg - 1) / seg;
    double pairs = 0;  // (query, key or span) pairs of one head
    for (Index t = 0; t < segments; ++t) {
      const Index len = std::min(seg, s.q_len - t * seg);
      if (options_.causal)
        pairs += double(len) * double(len + 1) / 2 + double(len) * double(t);
      else
        pairs += double(len) * double(len + segments - 1);
    }
    const double heads = static_cast<double>(s.batch * s.heads.out_heads());
    Cost cost;
    cost.flops = heads * 2.0 * double(s.head_dim + s.v_dim) * (double(s.q_len) + pairs);
    cost.bytes =
        sizeof(float) * double(s.batch) * double(s.q_len) *
        (s.heads.q_heads * s.head_dim + s.heads.out_heads() * s.v_dim + s.heads.kv_heads * (s.head_dim + s.v_dim));
    return cost;
  }

  std::size_t workspace_bytes(const View<const float, 4>& q, const View<const float, 4>& k,
                              const View<const float, 4>& v, const Args& = {}) const {
    return workspace_of(detail::make_combiner_plan<V>(checked_shape(q, k, v, nullptr), options_.segment));
  }

  void operator()(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                  const View<float, 4>& out, const Args& args = {}) const {
    const AttentionShape shape = checked_shape(q, k, v, &out);
    const detail::CombinerPlan plan = detail::make_combiner_plan<V>(shape, options_.segment);
    if (plan.items == 0) return;
    const detail::ScopedWorkspace workspace(args.workspace, workspace_of(plan));
    const float scale = options_.scale.value_or(1.0f / std::sqrt(static_cast<float>(shape.head_dim)));
    const detail::CombinerFixedKernel<V> kernel(q, k, v, out, shape, plan, options_.causal, scale, workspace.data(),
                                                backend_.threads());
    backend_.parallel_for(plan.items, [&](Index item, int slot) { kernel.span_item(item, slot); });
    backend_.parallel_for(plan.items, [&](Index item, int slot) { kernel.row_item(item, slot); });
  }

 private:
  static AttentionShape checked_shape(const View<const float, 4>& q, const View<const float, 4>& k,
                                      const View<const float, 4>& v, const View<float, 4>* out) {
    const AttentionShape shape = attention_shape(q, k, v, out);
    ATTNKIT_CHECK(shape.kv_len == shape.q_len, "k: seq ", shape.kv_len, ", expected ", shape.q_len,
                  " (q's seq: Combiner is self-attention)");
    return shape;
  }

  std::size_t workspace_of(const detail::CombinerPlan& plan) const {
    if (plan.items == 0) return 0;
    return plan.span_bytes + plan.scratch_bytes * static_cast<std::size_t>(backend_.threads());
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
