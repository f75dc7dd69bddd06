// The Combiner-Fixed kernel (mechanism/combiner.hpp): two passes over (batch, out head, segment)
// work items, each running the key-set kernel (kernel/key_set.hpp) on keys read in place.
//   CombinerPlan          segments and work items of one call, a function of the shape and the
//                         segment length only; it owns every buffer extent.
//   CombinerScratch       one thread's scratch (carve: the only description of its layout).
//   CombinerWorkspace     the whole workspace: span keys and values, then the threads' scratch.
//   CombinerFixedKernel   span_item (pass 1: span key and value of a segment), row_item (pass 2:
//                         the rows of a segment over its keys and the other segments' spans).
// Not here: options, validation and the segment default (mechanism/combiner.hpp).
#pragma once

#include <algorithm>
#include <cstddef>

#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/core/workspace_layout.hpp"
#include "attnkit/kernel/key_set.hpp"
#include "attnkit/tile/mask.hpp"
#include "attnkit/tile/online_softmax.hpp"
#include "attnkit/tile/tile_shape.hpp"

namespace attnkit::detail {

struct CombinerPlan {
  Index segment = 1;   // s
  Index segments = 0;  // ceil(N / s)
  Index heads = 0;     // batch * out_heads
  Index items = 0;     // heads * segments, in each pass
  Index rows = 1;      // query rows per tile: the register tile's
  Index head_dim = 0, v_dim = 0;
  Index score_floats = 0;         // the key-set kernel's score buffer
  std::size_t scratch_bytes = 0;  // per thread: CombinerScratch::carve
};

// One thread's scratch.
struct CombinerScratch {
  float* q_tile = nullptr;             // (rows, head_dim) scaled queries
  float* scores = nullptr;             // (score_floats)
  float* acc = nullptr;                // (rows, v_dim)
  tile::SoftmaxRow* states = nullptr;  // (rows)

  static CombinerScratch carve(Arena& arena, const CombinerPlan& plan) {
    CombinerScratch sc;
    sc.q_tile = arena.take<float>(plan.rows * plan.head_dim);
    sc.scores = arena.take<float>(plan.score_floats);
    sc.acc = arena.take<float>(plan.rows * plan.v_dim);
    sc.states = arena.take<tile::SoftmaxRow>(plan.rows);
    return sc;
  }
};

// The whole workspace: span keys (items, head_dim), span values (items, v_dim), thread scratch.
struct CombinerWorkspace {
  float* span_k = nullptr;
  float* span_v = nullptr;
  std::byte* scratch = nullptr;

  static CombinerWorkspace carve(Arena& arena, const CombinerPlan& plan, int threads) {
    CombinerWorkspace w;
    w.span_k = arena.take<float>(plan.items * plan.head_dim);
    w.span_v = arena.take<float>(plan.items * plan.v_dim);
    w.scratch = take_thread_slots(arena, plan, threads);
    return w;
  }
};

// segment: positions per segment (>= 1), resolved by the front door.
template <class V>
CombinerPlan make_combiner_plan(const AttentionShape& shape, Index segment) {
  CombinerPlan plan;
  plan.segment = segment;
  plan.segments = (shape.q_len + plan.segment - 1) / plan.segment;
  plan.heads = shape.batch * shape.heads.out_heads();
  plan.items = plan.heads * plan.segments;
  plan.rows = RegisterTile<V>::mr;
  plan.head_dim = shape.head_dim;
  plan.v_dim = shape.v_dim;
  plan.score_floats = key_set_score_floats<V>();
  plan.scratch_bytes = scratch_bytes_of<CombinerScratch>(plan);
  return plan;
}

template <class V>
class CombinerFixedKernel {
  static constexpr int MR = RegisterTile<V>::mr;

 public:
  CombinerFixedKernel(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                      const View<float, 4>& out, const AttentionShape& shape, const CombinerPlan& plan, bool causal,
                      float scale, void* workspace, int slots)
      : q_(q),
        k_(k),
        v_(v),
        out_(out),
        shape_(shape),
        plan_(plan),
        causal_(causal),
        scale_(scale),
        arena_(workspace, workspace_bytes_of<CombinerWorkspace>(plan, slots)) {
    ATTNKIT_CHECK(plan.rows == MR, "combiner kernel: plan made for ", plan.rows, " rows, kernel runs ", MR,
                  " (internal error)");
    const CombinerWorkspace w = CombinerWorkspace::carve(arena_, plan, slots);
    span_k_ = w.span_k;
    span_v_ = w.span_v;
    scratch_ = w.scratch;
  }

  // Pass 1, item (batch, out head, segment r): span key and span value of segment r.
  void span_item(Index item, int slot) const {
    const Segment seg = segment_of(item);
    Arena arena = thread_slot(scratch_, plan_, slot);
    const CombinerScratch sc = CombinerScratch::carve(arena, plan_);
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
    attend_key_set<V>(q_ptrs, 1, k_.at(seg.batch, seg.begin, seg.kh, 0), k_.stride(1),
                      v_.at(seg.batch, seg.begin, seg.kh, 0), v_.stride(1), all.end, dim, shape_.v_dim, &all, sc.scores,
                      sc.states, sc.acc, shape_.v_dim);
    tile::finalize_row<V>(sc.acc, shape_.v_dim, *sc.states, span_v_ + item * shape_.v_dim);
  }

  // Pass 2, item (batch, out head, segment t): the rows of segment t.
  void row_item(Index item, int slot) const {
    const Segment seg = segment_of(item);
    Arena arena = thread_slot(scratch_, plan_, slot);
    const CombinerScratch sc = CombinerScratch::carve(arena, plan_);
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
      attend_key_set<V>(q_ptrs, rows, k_.at(seg.batch, seg.begin, seg.kh, 0), k_.stride(1),
                        v_.at(seg.batch, seg.begin, seg.kh, 0), v_.stride(1), seg.end - seg.begin, dim, v_dim, direct,
                        sc.scores, sc.states, sc.acc, v_dim);
      attend_key_set<V>(q_ptrs, rows, span_k, dim, span_v, v_dim, t, dim, v_dim, before, sc.scores, sc.states, sc.acc,
                        v_dim);
      if (!causal_)
        attend_key_set<V>(q_ptrs, rows, span_k + (t + 1) * dim, dim, span_v + (t + 1) * v_dim, v_dim,
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

  View<const float, 4> q_, k_, v_;
  View<float, 4> out_;
  AttentionShape shape_;
  CombinerPlan plan_;
  bool causal_;
  float scale_;
  Arena arena_;  // the whole workspace; its guards (sanitize builds) are checked when the kernel ends
  float* span_k_ = nullptr;
  float* span_v_ = nullptr;
  std::byte* scratch_ = nullptr;
};

}  // namespace attnkit::detail
