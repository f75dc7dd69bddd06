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
#include "attnkit/core/scale.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/core/workspace_layout.hpp"
#include "attnkit/kernel/combiner.hpp"

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

template <class Backend>
class Attention<CombinerFixed, Backend> {
  using V = vector_t<Backend>;

 public:
  using Options = CombinerFixed::Options;
  using Args = CombinerFixed::Args;

  explicit Attention(Options options = {}, Backend backend = {}) : options_(options), backend_(backend) {
    ATTNKIT_CHECK(options_.segment >= 0, "options.segment is ", options_.segment,
                  ", expected >= 1, or 0 for round(sqrt(seq))");
    detail::check_scale_option(options_.scale);
  }

  std::string name() const {
    return std::string(options_.causal ? "combiner-fixed-causal/" : "combiner-fixed/") + Backend::name();
  }
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
    cost.bytes = detail::attention_bytes(s);
    return cost;
  }

  std::size_t workspace_bytes(const View<const float, 4>& q, const View<const float, 4>& k,
                              const View<const float, 4>& v, const Args& = {}) const {
    return workspace_of(make_plan(checked_shape(q, k, v, nullptr)));
  }

  void operator()(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                  const View<float, 4>& out, const Args& args = {}) const {
    const AttentionShape shape = checked_shape(q, k, v, &out);
    const detail::CombinerPlan plan = make_plan(shape);
    if (plan.items == 0) return;
    const detail::ScopedWorkspace workspace(args.workspace, workspace_of(plan));
    const float scale = detail::scale_or_default(options_.scale, shape.head_dim);
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

  detail::CombinerPlan make_plan(const AttentionShape& shape) const {
    return detail::make_combiner_plan<V>(shape, combiner_segment(options_.segment, shape.q_len));
  }
  std::size_t workspace_of(const detail::CombinerPlan& plan) const {
    return detail::workspace_bytes_of<detail::CombinerWorkspace>(plan, backend_.threads());
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
