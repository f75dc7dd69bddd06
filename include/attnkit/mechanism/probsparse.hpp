// Informer ProbSparse self-attention (Zhou et al. 2021, arXiv 2012.07436; Informer2020
// models/attn.py ProbAttention): Attention<ProbSparse, Backend>.
// Per (batch, out head), with U = min(L_K, c · ceil(ln L_K)) and u = min(L_Q, c · ceil(ln L_Q)),
// both at least 1:
//   1. sample U key indices per query (with replacement; given by the caller or drawn from
//      options.seed by probsparse_sample_indices), the same for every batch entry and head;
//   2. sparsity M(q_i) = max_s(q_i·k_{idx[i,s]}) - Σ_s q_i·k_{idx[i,s]} / L_K (unscaled dot products,
//      the sum divided by L_K as the reference does, not by U);
//   3. the u queries of largest M (ties: lower position first) get exact softmax attention,
//      scale · q·k over the keys they see (causal: bottom-right aligned, key j <= i + L_K - L_Q);
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
#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/tile/key_set.hpp"
#include "attnkit/tile/mask.hpp"
#include "attnkit/tile/online_softmax.hpp"
#include "attnkit/tile/tile_shape.hpp"

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

namespace detail {

// Sizes of one ProbSparse call; a function of the shape and options only.
struct ProbSparsePlan {
  Index samples = 0;              // U
  Index top = 0;                  // u
  Index items = 0;                // batch * out_heads
  std::size_t scratch_bytes = 0;  // per thread
  std::size_t sample_bytes = 0;   // drawn indices, when the caller gives none
};

template <class V>
ProbSparsePlan make_probsparse_plan(const AttentionShape& shape, int factor, bool draw_samples) {
  ProbSparsePlan plan;
  plan.samples = probsparse_samples_per_query(factor, shape.kv_len);
  plan.top = probsparse_top_queries(factor, shape.q_len);
  plan.items = shape.batch * shape.heads.out_heads();
  const Index mr = RegisterTile<V>::mr;
  plan.scratch_bytes = array_bytes<float>(shape.q_len) +          // sparsity M
                       array_bytes<std::int32_t>(shape.q_len) +   // query order
                       array_bytes<float>(mr * shape.head_dim) +  // scaled query tile
                       array_bytes<float>(tile::key_set_score_floats<V>()) +
                       array_bytes<float>(mr * shape.v_dim) +  // accumulators
                       array_bytes<double>(shape.v_dim) +      // lazy running sum
                       array_bytes<tile::SoftmaxRow>(mr);
  if (draw_samples) plan.sample_bytes = array_bytes<std::int32_t>(shape.q_len * plan.samples);
  return plan;
}

template <class V>
class ProbSparseKernel {
  using Ops = VecOps<V>;
  static constexpr int MR = RegisterTile<V>::mr;

 public:
  ProbSparseKernel(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                   const View<float, 4>& out, const AttentionShape& shape, const ProbSparsePlan& plan,
                   const ProbSparse::Options& options, float scale, const std::int32_t* samples, std::byte* scratch)
      : q_(q),
        k_(k),
        v_(v),
        out_(out),
        shape_(shape),
        plan_(plan),
        options_(options),
        scale_(scale),
        samples_(samples),
        scratch_(scratch) {}

  void run_item(Index item, int slot) const {
    const Index batch = item / shape_.heads.out_heads();
    const Index out_head = item % shape_.heads.out_heads();
    const Index qh = shape_.heads.q_head(out_head), kh = shape_.heads.kv_head(out_head);
    const Index q_len = shape_.q_len, kv_len = shape_.kv_len, dim = shape_.head_dim, v_dim = shape_.v_dim;
    Arena arena(scratch_ + plan_.scratch_bytes * slot, plan_.scratch_bytes);
    float* sparsity = arena.take<float>(q_len);             // (q_len)
    std::int32_t* order = arena.take<std::int32_t>(q_len);  // (q_len)
    float* q_tile = arena.take<float>(MR * dim);            // (mr, head_dim)
    float* scores = arena.take<float>(tile::key_set_score_floats<V>());
    float* acc = arena.take<float>(MR * v_dim);   // (mr, v_dim)
    double* running = arena.take<double>(v_dim);  // (v_dim)
    tile::SoftmaxRow* states = arena.take<tile::SoftmaxRow>(MR);

    write_lazy_rows(batch, out_head, kh, running);
    if (kv_len == 0) return;

    // 1-2. Sparsity of every query from its sampled keys (unscaled dot products).
    for (Index i = 0; i < q_len; ++i) {
      const float* qi = q_.at(batch, i, qh, 0);
      float max = tile::kNegInf, sum = 0.0f;
      for (Index s = 0; s < plan_.samples; ++s) {
        const float score = dot<V>(qi, k_.at(batch, samples_[i * plan_.samples + s], kh, 0), dim);
        max = std::max(max, score);
        sum += score;
      }
      sparsity[i] = max - sum / static_cast<float>(kv_len);
    }
    // 3. The top u queries, in position order.
    std::iota(order, order + q_len, 0);
    std::nth_element(order, order + (plan_.top - 1), order + q_len, [&](std::int32_t a, std::int32_t b) {
      return sparsity[a] > sparsity[b] || (sparsity[a] == sparsity[b] && a < b);
    });
    std::sort(order, order + plan_.top);

    const Index ldk = k_.stride(1), ldv = v_.stride(1);
    const float* k_rows = k_.at(batch, 0, kh, 0);  // (kv_len, head_dim), ldk
    const float* v_rows = v_.at(batch, 0, kh, 0);  // (kv_len, v_dim), ldv
    for (Index t = 0; t < plan_.top; t += MR) {
      const Index rows = std::min<Index>(MR, plan_.top - t);
      const float* q_ptrs[MR];
      tile::KeyRange ranges[MR];
      for (Index r = 0; r < rows; ++r) {
        const Index pos = order[t + r];
        const float* src = q_.at(batch, pos, qh, 0);
        for (Index d = 0; d < dim; ++d) q_tile[r * dim + d] = src[d] * scale_;
        q_ptrs[r] = q_tile + r * dim;
        ranges[r] = options_.causal ? tile::CausalMask::visible(pos, q_len, kv_len) : tile::KeyRange{0, kv_len};
        states[r] = tile::SoftmaxRow{};
      }
      std::fill(acc, acc + rows * v_dim, 0.0f);
      tile::attend_key_set<V>(q_ptrs, rows, k_rows, ldk, v_rows, ldv, kv_len, dim, v_dim, ranges, scores, states, acc,
                              v_dim);
      for (Index r = 0; r < rows; ++r)
        tile::finalize_row<V>(acc + r * v_dim, v_dim, states[r], out_.at(batch, order[t + r], out_head, 0));
    }
  }

 private:
  // 4. Every row gets the lazy value first; the top rows are overwritten afterwards.
  void write_lazy_rows(Index batch, Index out_head, Index kh, double* running) const {
    const Index q_len = shape_.q_len, kv_len = shape_.kv_len, v_dim = shape_.v_dim;
    std::fill(running, running + v_dim, 0.0);
    if (!options_.causal) {
      for (Index j = 0; j < kv_len; ++j) {
        const float* vj = v_.at(batch, j, kh, 0);
        for (Index d = 0; d < v_dim; ++d) running[d] += vj[d];
      }
      const double inv = kv_len > 0 ? 1.0 / static_cast<double>(kv_len) : 0.0;
      for (Index i = 0; i < q_len; ++i) {
        float* o = out_.at(batch, i, out_head, 0);
        for (Index d = 0; d < v_dim; ++d) o[d] = static_cast<float>(running[d] * inv);
      }
      return;
    }
    Index summed = 0;  // keys folded into `running`
    for (Index i = 0; i < q_len; ++i) {
      const Index seen = tile::CausalMask::visible(i, q_len, kv_len).end;
      for (; summed < seen; ++summed) {
        const float* vj = v_.at(batch, summed, kh, 0);
        for (Index d = 0; d < v_dim; ++d) running[d] += vj[d];
      }
      const bool mean = options_.lazy == ProbSparse::Lazy::kCumulativeMean;
      const double factor = seen == 0 ? 0.0 : mean ? 1.0 / static_cast<double>(seen) : 1.0;
      float* o = out_.at(batch, i, out_head, 0);
      for (Index d = 0; d < v_dim; ++d) o[d] = static_cast<float>(running[d] * factor);
    }
  }

  View<const float, 4> q_, k_, v_;
  View<float, 4> out_;
  AttentionShape shape_;
  ProbSparsePlan plan_;
  ProbSparse::Options options_;
  float scale_;
  const std::int32_t* samples_;
  std::byte* scratch_;
};

}  // namespace detail

template <class Backend>
class Attention<ProbSparse, Backend> {
  using V = vector_t<Backend>;

 public:
  using Options = ProbSparse::Options;
  using Args = ProbSparse::Args;

  explicit Attention(Options options = {}, Backend backend = {}) : options_(options), backend_(backend) {
    ATTNKIT_CHECK(options_.factor >= 1, "options.factor is ", options_.factor, ", expected >= 1");
    if (options_.scale)
      ATTNKIT_CHECK(std::isfinite(*options_.scale) && *options_.scale > 0.0f, "options.scale is ", *options_.scale,
                    ", expected a finite value > 0");
  }

  std::string name() const { return "probsparse/" + Backend::name(); }
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
    cost.bytes = sizeof(float) * double(s.batch) *
                 (double(s.q_len) * (s.heads.q_heads * s.head_dim + s.heads.out_heads() * s.v_dim) +
                  double(s.kv_len) * s.heads.kv_heads * (s.head_dim + s.v_dim));
    return cost;
  }

  std::size_t workspace_bytes(const View<const float, 4>& q, const View<const float, 4>& k,
                              const View<const float, 4>& v, const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, nullptr);
    return workspace_of(detail::make_probsparse_plan<V>(shape, options_.factor, args.samples.empty()));
  }

  void operator()(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                  const View<float, 4>& out, const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, &out);
    const detail::ProbSparsePlan plan = detail::make_probsparse_plan<V>(shape, options_.factor, args.samples.empty());
    if (!args.samples.empty()) check_samples(args.samples, shape, plan);
    if (plan.items == 0 || shape.q_len == 0) return;
    const detail::ScopedWorkspace workspace(args.workspace, workspace_of(plan));
    detail::Arena arena(workspace.data(), workspace.bytes());
    std::byte* scratch = arena.take<std::byte>(plan.scratch_bytes * static_cast<std::size_t>(backend_.threads()));
    const std::int32_t* samples = args.samples.data();
    if (args.samples.empty() && shape.kv_len > 0) {
      std::int32_t* drawn = arena.take<std::int32_t>(shape.q_len * plan.samples);
      probsparse_sample_indices(options_.seed, shape.q_len, shape.kv_len, plan.samples,
                                std::span<std::int32_t>(drawn, shape.q_len * plan.samples));
      samples = drawn;
    }
    const detail::ProbSparseKernel<V> kernel(q, k, v, out, shape, plan, options_, scale_for(shape), samples, scratch);
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

  float scale_for(const AttentionShape& shape) const {
    return options_.scale.value_or(1.0f / std::sqrt(static_cast<float>(shape.head_dim)));
  }

  std::size_t workspace_of(const detail::ProbSparsePlan& plan) const {
    if (plan.items == 0) return 0;
    return plan.scratch_bytes * static_cast<std::size_t>(backend_.threads()) + plan.sample_bytes;
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
