// Performer FAVOR+ (Choromanski et al. 2021): Attention<Performer, Backend>, an unbiased
// estimate of softmax(q kᵀ / sqrt(d)) v through positive random features.
//   x' = d^(-1/4) x,  u = W x' (W: features m x head_dim d, an input),
//   phi(x) = m^(-1/2) (exp(u - |x'|² / 2 - max) + stabilizer),
//   the max taken per row for queries and over all u of the (batch entry, kv head)'s real keys for
//   keys (google-research fast_attention.py: softmax_kernel_transformation), NaN u skipped (the max
//   only stabilises; a NaN input reaches the output through its own features); stabilizer 1e-6 as
//   its make_fast_softmax_attention passes.
//   out_i = phi(q_i)ᵀ Σ_j phi(k_j) v_jᵀ / (phi(q_i) · Σ_j phi(k_j)): bidirectional over all keys, or
//   unidirectional (causal, bottom-right aligned) over keys j <= i + kv_len - q_len, through the
//   chunked kernel of kernel/feature.hpp. A row that sees no key gets zeros.
// W is shared by all heads; gaussian_orthogonal_features() (performer_features.hpp) makes one from
// a seed. Keys past a padded length are left out (of the sums and of the key max); query rows past
// a length are zeros. Head mapping as dense. The key max needs every key first, so keys are
// projected twice (a max pass, then the feature pass); there is no decode state.
// Reference: reference/performer.hpp.
#pragma once

#include <cmath>
#include <limits>
#include <string>

#include "attnkit/attention.hpp"
#include "attnkit/backend/backend.hpp"
#include "attnkit/backend/exp.hpp"
#include "attnkit/core/cost.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/core/workspace_layout.hpp"
#include "attnkit/kernel/feature.hpp"
#include "attnkit/tile/mask.hpp"

namespace attnkit {

struct Performer {
  static constexpr Index kDefaultFeatures = 256;  // m of gaussian_orthogonal_features by default
  struct Options {
    bool causal = false;       // unidirectional; bottom-right aligned when q_len != kv_len
    float stabilizer = 1e-6f;  // added to every feature; finite and > 0 (keeps denominators > 0)
  };
  struct Args {
    SeqLengths lengths{};   // real q / kv length per batch entry
    Workspace workspace{};  // >= workspace_bytes(...) bytes, 64-byte aligned; none: allocated
  };
};

namespace detail {

// FAVOR+ positive random features of rows of x (head_dim floats each).
template <class V>
struct RandomFeatures {
  Index dim = 0;             // d
  Index m = 0;               // features
  View<const float, 2> w{};  // (m, d)
  float stabilizer = 0;
  const float* wt = nullptr;  // (d, m): Wᵀ, in the kernel's shared floats (bind)

  static std::size_t scratch_floats(Index dim) {
    const Index rows = RegisterTile<V>::pad_rows(kFeatureChunk);
    return static_cast<std::size_t>(rows * dim + rows);
  }

  Index count() const { return m; }
  static std::size_t shared_floats(Index dim, Index m) { return static_cast<std::size_t>(dim * m); }

  // Wᵀ into the shared floats.
  void bind(float* shared) {
    for (Index a = 0; a < m; ++a)
      for (Index f = 0; f < dim; ++f) shared[f * m + a] = w(a, f);
    wt = shared;
  }

  // max over the keys' projections u (all m of every real key); 0 without keys.
  float key_shift(const float* x, Index ldx, Index keys, float* block, float* scratch) const {
    float max = -std::numeric_limits<float>::infinity();
    for (Index j0 = 0; j0 < keys; j0 += kFeatureChunk) {
      const Index rows = std::min(kFeatureChunk, keys - j0);
      project(x + j0 * ldx, ldx, rows, block, scratch);
      max = std::max(max, max_of<V>(block, rows * m));
    }
    return keys > 0 ? max : 0.0f;
  }

  void queries(const float* x, Index ldx, Index rows, Index rows_pad, float* phi, float* scratch) const {
    const float* half_norms = project(x, ldx, rows, phi, scratch);
    for (Index r = 0; r < rows; ++r) {
      float* u = phi + r * m;
      exp_row(u, half_norms[r] + max_of<V>(u, m));
    }
    std::fill(phi + rows * m, phi + rows_pad * m, 0.0f);
  }

  void keys(const float* x, Index ldx, Index rows, Index rows_pad, float shift, float* phi, float* scratch) const {
    const float* half_norms = project(x, ldx, rows, phi, scratch);
    for (Index r = 0; r < rows; ++r) exp_row(phi + r * m, half_norms[r] + shift);
    std::fill(phi + rows * m, phi + rows_pad * m, 0.0f);
  }

 private:
  // u (rows, m) = x' Wᵀ into phi; returns |x'_r|² / 2 per row (in scratch).
  const float* project(const float* x, Index ldx, Index rows, float* phi, float* scratch) const {
    const Index padded = RegisterTile<V>::pad_rows(rows);
    float* xs = scratch;                         // (padded, d): x' rows
    float* half_norms = scratch + padded * dim;  // (padded)
    const float scale = 1.0f / std::sqrt(std::sqrt(static_cast<float>(dim)));
    for (Index r = 0; r < rows; ++r) {
      float squares = 0.0f;
      for (Index f = 0; f < dim; ++f) {
        const float value = x[r * ldx + f] * scale;
        xs[r * dim + f] = value;
        squares += value * value;
      }
      half_norms[r] = 0.5f * squares;
    }
    std::fill(xs + rows * dim, xs + padded * dim, 0.0f);
    std::fill(phi, phi + padded * m, 0.0f);
    gemm_accumulate<V>(padded, m, dim, xs, dim, wt, m, phi, m);  // (padded, m) = x' Wᵀ
    return half_norms;
  }

  // u <- m^(-1/2) (exp(u - shift) + stabilizer) over one row of m.
  void exp_row(float* u, float shift) const {
    using Ops = VecOps<V>;
    constexpr int W = Ops::width;
    const float ratio = 1.0f / std::sqrt(static_cast<float>(m));
    Index f = 0;
    for (; f + W <= m; f += W) {
      const V e = exp_approx(Ops::load(u + f) - Ops::broadcast(shift));
      Ops::store(u + f, (e + Ops::broadcast(stabilizer)) * Ops::broadcast(ratio));
    }
    for (; f < m; ++f) u[f] = (exp_approx(u[f] - shift) + stabilizer) * ratio;
  }
};

}  // namespace detail

template <class Backend>
class Attention<Performer, Backend> {
  using V = vector_t<Backend>;
  using Features = detail::RandomFeatures<V>;

 public:
  using Options = Performer::Options;
  using Args = Performer::Args;

  explicit Attention(Options options = {}, Backend backend = {}) : options_(options), backend_(backend) {
    ATTNKIT_CHECK(std::isfinite(options_.stabilizer) && options_.stabilizer > 0.0f, "options.stabilizer is ",
                  options_.stabilizer, ", expected a finite value > 0");
  }

  std::string name() const {
    return std::string(options_.causal ? "performer-causal/" : "performer/") + Backend::name();
  }
  const Options& options() const { return options_; }

  // q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv), w (m, D) -> out (B, Lq, Ho, Dv).
  Cost cost(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
            const View<const float, 2>& w, const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, nullptr);
    check_projection(w, shape);
    const SequenceLayout seqs = SequenceLayout::padded(shape, args.lengths);
    const detail::FeaturePlan plan = make_plan(shape, seqs, w);
    double q_rows = 0, k_rows = 0;
    for (Index s = 0; s < seqs.count(); ++s) {
      q_rows += static_cast<double>(seqs[s].q_len * shape.heads.out_heads());
      k_rows += static_cast<double>(seqs[s].kv_len * plan.kv_groups);
    }
    const double projection = 2.0 * static_cast<double>(w.extent(0) * shape.head_dim);
    Cost cost;
    // products + query projections + key projections (twice: the max pass and the feature pass)
    tile::with_causal_mask(options_.causal,
                           [&](auto mask) { cost.flops = detail::feature_products_flops(plan, seqs, mask); });
    cost.flops += projection * (q_rows + 2.0 * k_rows);
    cost.bytes = detail::attention_bytes(shape) + sizeof(float) * static_cast<double>(w.size());
    return cost;
  }

  std::size_t workspace_bytes(const View<const float, 4>& q, const View<const float, 4>& k,
                              const View<const float, 4>& v, const View<const float, 2>& w,
                              const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, nullptr);
    check_projection(w, shape);
    return workspace_of(make_plan(shape, SequenceLayout::padded(shape, args.lengths), w));
  }

  void operator()(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                  const View<const float, 2>& w, const View<float, 4>& out, const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, &out);
    check_projection(w, shape, &out);
    const SequenceLayout seqs = SequenceLayout::padded(shape, args.lengths);
    detail::zero_rows_past_lengths(out, seqs);
    const detail::FeaturePlan plan = make_plan(shape, seqs, w);
    if (plan.items == 0) return;
    const detail::ScopedWorkspace workspace(args.workspace, workspace_of(plan));
    const Features features{shape.head_dim, w.extent(0), w, options_.stabilizer};
    tile::with_causal_mask(options_.causal, [&](auto mask) {
      const detail::FeatureKernel<V, Features, decltype(mask)> kernel(q, k, v, out, shape, seqs, plan, features, 0.0f,
                                                                      {}, workspace.data(), backend_.threads(), mask);
      backend_.parallel_for(plan.items, [&](Index item, int slot) { kernel.run_item(item, slot); });
    });
  }

 private:
  static void check_projection(const View<const float, 2>& w, const AttentionShape& shape,
                               const View<float, 4>* out = nullptr) {
    check_view(w, "w");
    ATTNKIT_CHECK(w.extent(0) >= 1, "w: features ", w.extent(0), ", expected >= 1");
    ATTNKIT_CHECK(w.extent(1) == shape.head_dim, "w: columns ", w.extent(1), ", expected ", shape.head_dim,
                  " (q's head_dim)");
    check_problem_size({shape.batch, shape.heads.out_heads(), std::max(shape.q_len, shape.kv_len), w.extent(0),
                        std::max(shape.head_dim, shape.v_dim)},
                       "q, k, w (batch x heads x length x features x head_dim)");
    if (out != nullptr) check_output_view(*out, "out", {memory_range(w, "w")});
  }

  static detail::FeaturePlan make_plan(const AttentionShape& shape, const SequenceLayout& seqs,
                                       const View<const float, 2>& w) {
    return detail::make_feature_plan<V>(shape, seqs, w.extent(0), Features::shared_floats(shape.head_dim, w.extent(0)),
                                        Features::scratch_floats(shape.head_dim));
  }

  std::size_t workspace_of(const detail::FeaturePlan& plan) const {
    return detail::workspace_bytes_of<detail::FeatureWorkspace>(plan, backend_.threads());
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
