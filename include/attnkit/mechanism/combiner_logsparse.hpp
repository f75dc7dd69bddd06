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
// most 2 log2(N) + 1 spans. The causal coverage is the JAX layer's: its rolled-span step runs at
// every level, level 0 included, so i = 5 sees {5}, {4} and [0, 4).
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
#include "attnkit/core/scale.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/core/workspace_layout.hpp"
#include "attnkit/kernel/combiner_logsparse.hpp"
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

template <class Backend>
class Attention<CombinerLogsparse, Backend> {
  using V = vector_t<Backend>;

 public:
  using Options = CombinerLogsparse::Options;
  using Args = CombinerLogsparse::Args;

  explicit Attention(Options options = {}, Backend backend = {}) : options_(options), backend_(backend) {
    detail::check_scale_option(options_.scale);
  }

  std::string name() const {
    return std::string(options_.causal ? "combiner-logsparse-causal/" : "combiner-logsparse/") + Backend::name();
  }
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
    cost.bytes = detail::attention_bytes(s);
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
    if (plan.items == 0) return;
    const detail::ScopedWorkspace workspace(args.workspace, workspace_of(plan));
    const float scale = detail::scale_or_default(options_.scale, shape.head_dim);
    const detail::CombinerLogsparseKernel<V> kernel(q, k, v, out, shape, plan, options_.causal, scale, workspace.data(),
                                                    backend_.threads());
    backend_.parallel_for(kernel.span_items(), [&](Index item, int slot) { kernel.span_item(item, slot); });
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

  std::size_t workspace_of(const detail::LogsparsePlan& plan) const {
    return detail::workspace_bytes_of<detail::LogsparseWorkspace>(plan, backend_.threads());
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
