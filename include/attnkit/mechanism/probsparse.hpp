// Informer ProbSparse self-attention (Zhou et al. 2021, arXiv 2012.07436; Informer2020
// models/attn.py ProbAttention): Attention<ProbSparse, Backend>.
// Per (batch, out head), with U = min(L_K, c · ceil(ln L_K)) and u = min(L_Q, c · ceil(ln L_Q)),
// both at least 1:
//   1. sample U key indices per query (with replacement; given by the caller or drawn from
//      options.seed by probsparse_sample_indices), the same for every batch entry and head;
//   2. sparsity M(q_i) = max_s(q_i·k_{idx[i,s]}) - Σ_s q_i·k_{idx[i,s]} / L_K (unscaled dot products,
//      the sum divided by L_K as the reference does, not by U);
//   3. the u queries of largest M (ties: lower position first; a NaN M, from a non-finite
//      input, ranks above every number, so NaN reaches that query's row) get exact softmax
//      attention, scale · q·k over the keys they see (causal: bottom-right aligned, key
//      j <= i + L_K - L_Q);
//   4. every other ("lazy") row gets mean(V) over all keys (non-causal) or, causal, the running
//      aggregate of the values it sees: their mean (default, Lazy::kCumulativeMean) or their sum
//      (Lazy::kCumulativeSum, the reference code's cumsum, reported as a bug in Informer2020 #88,
//      #140, #633). A row that sees no key is zeros.
// Differences from the reference code: u and U are at least 1 (the code gives 0 for length 1);
// causal works for L_Q != L_K (the code asserts L_Q == L_K); GQA / MQA head maps are supported;
// top-u ties are broken by position; the sampler is our own (below), so indices differ from
// torch.randint's — pass the reference's indices in Args::samples to reproduce it exactly.
// Work items are (batch, out head); results do not depend on the thread count.
// Not here: the reference (reference/probsparse.hpp); varlen / packed batches (not supported).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <optional>
#include <span>
#include <string>

#include "attnkit/attention.hpp"
#include "attnkit/backend/arrays.hpp"
#include "attnkit/backend/backend.hpp"
#include "attnkit/core/cost.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/scale.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/core/workspace_layout.hpp"
#include "attnkit/kernel/probsparse.hpp"

namespace attnkit {

struct ProbSparse {
  // Causal lazy rows: the mean (default) or the sum (reference code) of the values a row sees.
  enum class Lazy { kCumulativeMean, kCumulativeSum };
  struct Options {
    int factor = 5;                // c: U = c · ceil(ln L_K) samples, u = c · ceil(ln L_Q) rows
    bool causal = false;           // bottom-right aligned when q_len != kv_len
    std::optional<float> scale{};  // default 1 / sqrt(head_dim); finite and > 0
    Lazy lazy = Lazy::kCumulativeMean;
    std::uint64_t seed = 0;  // of the sampler when Args::samples is empty
  };
  struct Args {
    std::span<const std::int32_t> samples{};  // (q_len, U) key indices in [0, kv_len); empty: drawn
    Workspace workspace{};                    // >= workspace_bytes(...) bytes, 64-byte aligned
  };
};

// U: keys sampled per query for kv_len keys.
inline Index probsparse_samples_per_query(int factor, Index kv_len) {
  if (kv_len <= 0) return 0;
  const Index c = factor * static_cast<Index>(std::ceil(std::log(static_cast<double>(kv_len))));
  return std::clamp<Index>(c, 1, kv_len);
}

// u: query rows per (batch, head) that get exact attention.
inline Index probsparse_top_queries(int factor, Index q_len) {
  if (q_len <= 0) return 0;
  const Index c = factor * static_cast<Index>(std::ceil(std::log(static_cast<double>(q_len))));
  return std::clamp<Index>(c, 1, q_len);
}

// The seeded sampler: out (q_len, samples) gets key indices in [0, kv_len), entry e of the array
// being splitmix64(seed + (e + 1) · golden ratio) mod kv_len (independent per query, with
// replacement; the modulo bias is below kv_len / 2^64).
inline void probsparse_sample_indices(std::uint64_t seed, Index q_len, Index kv_len, Index samples,
                                      std::span<std::int32_t> out) {
  ATTNKIT_CHECK(static_cast<Index>(out.size()) >= q_len * samples, "samples: ", out.size(), " entries, expected ",
                q_len * samples);
  for (Index e = 0; e < q_len * samples; ++e) {
    std::uint64_t x = seed + static_cast<std::uint64_t>(e + 1) * 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    out[e] = static_cast<std::int32_t>(x % static_cast<std::uint64_t>(kv_len));
  }
}

template <class Backend>
class Attention<ProbSparse, Backend> {
  using V = vector_t<Backend>;

 public:
  using Options = ProbSparse::Options;
  using Args = ProbSparse::Args;

  explicit Attention(Options options = {}, Backend backend = {}) : options_(options), backend_(backend) {
    ATTNKIT_CHECK(options_.factor >= 1, "options.factor is ", options_.factor, ", expected >= 1");
    detail::check_scale_option(options_.scale);
  }

  std::string name() const {
    return std::string(options_.causal ? "probsparse-causal/" : "probsparse/") + Backend::name();
  }
  const Options& options() const { return options_; }

  // q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv) -> out (B, Lq, Ho, Dv).
  // FLOPs: sampling 2·Lq·U·D, exact rows 2·u·Lk·(D + Dv) (causal: an upper bound, the selected
  // rows are counted as seeing every key), lazy aggregate Lk·Dv; per batch entry and out head.
  Cost cost(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
            const Args& = {}) const {
    const AttentionShape s = attention_shape(q, k, v, nullptr);
    const double samples = static_cast<double>(probsparse_samples_per_query(options_.factor, s.kv_len));
    const double top = static_cast<double>(probsparse_top_queries(options_.factor, s.q_len));
    const double per_head = 2.0 * s.q_len * samples * s.head_dim + 2.0 * top * s.kv_len * (s.head_dim + s.v_dim) +
                            double(s.kv_len) * s.v_dim;
    const double heads = static_cast<double>(s.batch * s.heads.out_heads());
    Cost cost;
    cost.flops = heads * per_head;
    cost.bytes = detail::attention_bytes(s);
    return cost;
  }

  std::size_t workspace_bytes(const View<const float, 4>& q, const View<const float, 4>& k,
                              const View<const float, 4>& v, const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, nullptr);
    return workspace_of(make_plan(shape, args.samples.empty()));
  }

  void operator()(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                  const View<float, 4>& out, const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, &out);
    const detail::ProbSparsePlan plan = make_plan(shape, args.samples.empty());
    if (!args.samples.empty()) check_samples(args.samples, shape, plan);
    if (plan.items == 0 || shape.q_len == 0) return;
    const detail::ScopedWorkspace workspace(args.workspace, workspace_of(plan));
    detail::ProbSparseKernel<V> kernel(q, k, v, out, shape, plan, options_.causal,
                                       options_.lazy == ProbSparse::Lazy::kCumulativeMean,
                                       detail::scale_or_default(options_.scale, shape.head_dim), args.samples.data(),
                                       workspace.data(), backend_.threads());
    if (plan.drawn > 0)
      probsparse_sample_indices(options_.seed, shape.q_len, shape.kv_len, plan.samples, kernel.samples_to_draw());
    backend_.parallel_for(plan.items, [&](Index item, int slot) { kernel.run_item(item, slot); });
  }

 private:
  static void check_samples(std::span<const std::int32_t> samples, const AttentionShape& shape,
                            const detail::ProbSparsePlan& plan) {
    const Index expected = shape.q_len * plan.samples;
    ATTNKIT_CHECK(static_cast<Index>(samples.size()) == expected, "args.samples: ", samples.size(),
                  " entries, expected ", expected, " (q_len ", shape.q_len, " x ", plan.samples,
                  " samples per query), or none");
    for (std::size_t e = 0; e < samples.size(); ++e)
      ATTNKIT_CHECK(samples[e] >= 0 && samples[e] < shape.kv_len, "args.samples[", e, "] is ", samples[e],
                    ", expected in [0, ", shape.kv_len, ")");
  }

  detail::ProbSparsePlan make_plan(const AttentionShape& shape, bool draw_samples) const {
    return detail::make_probsparse_plan<V>(shape, probsparse_samples_per_query(options_.factor, shape.kv_len),
                                           probsparse_top_queries(options_.factor, shape.q_len), draw_samples);
  }
  std::size_t workspace_of(const detail::ProbSparsePlan& plan) const {
    return detail::workspace_bytes_of<detail::ProbSparseWorkspace>(plan, backend_.threads());
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
