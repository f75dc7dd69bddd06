// Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"): Attention<Linear, Backend>.
//   out_i = phi(q_i)ᵀ (Σ_j phi(k_j) v_jᵀ) / (phi(q_i) · Σ_j phi(k_j) + eps), eps = 1e-6 by default,
//   no 1/sqrt(d) scaling; sums over all keys, or (causal) over keys j <= i + kv_len - q_len
//   (bottom-right aligned, as dense). A row that sees no key gets zeros.
// The feature map is an elementwise policy (EluPlusOne: phi(x) = elu(x) + 1, the default);
// LinearWith<Map> plugs in another. Keys past a padded length contribute nothing (their phi is
// zero); query rows past a length are zeros. Head mapping as dense (HeadMap).
// Decode: LinearState holds S (features x v_dim) and z (features) per batch entry and kv head; a
// causal call given a state continues from it and leaves it holding every key seen, so step()
// (one token) repeated over a sequence equals the causal result.
// cost() counts the chunk products (kernel/feature.hpp); the elementwise map, like dense's exp,
// is not counted. The chunked kernel lives in kernel/feature.hpp; the reference in
// reference/linear.hpp.
#pragma once

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

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

// phi(x) = elu(x) + 1 elementwise: x + 1 for x > 0, exp(x) otherwise; always > 0.
// A feature map policy gives apply(x) for T = float, double and every backend vector type
// (through VecOps<T>).
struct EluPlusOne {
  template <class T>
  static T apply(const T& x) {
    if constexpr (std::is_floating_point_v<T>) {
      return x > T(0) ? x + T(1) : std::exp(x);
    } else {
      using Ops = VecOps<T>;
      return Ops::greater_select(x, 0.0f, x + T(1.0f), exp_approx(Ops::min(x, T(0.0f))));
    }
  }
};

// Running state of causal linear attention for one batch of sequences:
// s (batch, kv_heads, features, v_dim) = Σ_j phi(k_j) v_jᵀ, z (batch, kv_heads, features) = Σ_j phi(k_j).
// The caller keeps it between calls; a new state is empty (all zeros).
class LinearState {
 public:
  LinearState() = default;
  LinearState(Index batch, Index kv_heads, Index features, Index v_dim)
      : batch_(batch), kv_heads_(kv_heads), features_(features), v_dim_(v_dim) {
    ATTNKIT_CHECK(batch >= 0 && kv_heads >= 1 && features >= 1 && v_dim >= 1, "state: shape (", batch, ", ", kv_heads,
                  ", ", features, ", ", v_dim, "), expected batch >= 0 and the rest >= 1");
    const Index z_size =
        detail::checked_mul(detail::checked_mul(batch, kv_heads, "state: size"), features, "state: size");
    s_.assign(static_cast<std::size_t>(detail::checked_mul(z_size, v_dim, "state: size")), 0.0f);
    z_.assign(static_cast<std::size_t>(z_size), 0.0f);
  }

  Index batch() const { return batch_; }
  Index kv_heads() const { return kv_heads_; }
  Index features() const { return features_; }
  Index v_dim() const { return v_dim_; }
  View<float, 4> s() { return View<float, 4>::contiguous(s_.data(), {batch_, kv_heads_, features_, v_dim_}); }
  View<float, 3> z() { return View<float, 3>::contiguous(z_.data(), {batch_, kv_heads_, features_}); }
  void reset() {
    std::fill(s_.begin(), s_.end(), 0.0f);
    std::fill(z_.begin(), z_.end(), 0.0f);
  }

 private:
  Index batch_ = 0, kv_heads_ = 1, features_ = 1, v_dim_ = 1;
  std::vector<float> s_, z_;
};

template <class FeatureMap>
struct LinearWith {
  using Map = FeatureMap;
  struct Options {
    bool causal = false;  // bottom-right aligned when q_len != kv_len
    float eps = 1e-6f;    // added to the denominator; finite and >= 0
  };
  // Optional extras of one call.
  struct Args {
    SeqLengths lengths{};          // real q / kv length per batch entry
    LinearState* state = nullptr;  // causal only: continue from this state and update it
    Workspace workspace{};         // >= workspace_bytes(...) bytes, 64-byte aligned; none: allocated
  };
};

using Linear = LinearWith<EluPlusOne>;

namespace detail {

// Elementwise features: m = head_dim, phi(x)_f = Map::apply(x_f).
template <class V, class Map>
struct ElementwiseFeatures {
  Index dim = 0;

  Index count() const { return dim; }
  void bind(float*) {}
  float key_shift(const float*, Index, Index, float*, float*) const { return 0.0f; }
  void queries(const float* x, Index ldx, Index rows, Index rows_pad, float* phi, float*) const {
    map_rows(x, ldx, rows, rows_pad, phi);
  }
  void keys(const float* x, Index ldx, Index rows, Index rows_pad, float, float* phi, float*) const {
    map_rows(x, ldx, rows, rows_pad, phi);
  }

 private:
  // phi (rows_pad, dim): mapped rows of x, then zero rows.
  void map_rows(const float* x, Index ldx, Index rows, Index rows_pad, float* phi) const {
    using Ops = VecOps<V>;
    constexpr int W = Ops::width;
    for (Index r = 0; r < rows; ++r) {
      const float* in = x + r * ldx;
      float* row = phi + r * dim;
      Index f = 0;
      for (; f + W <= dim; f += W) Ops::store(row + f, Map::apply(Ops::load(in + f)));
      for (; f < dim; ++f) row[f] = Map::apply(in[f]);
    }
    std::fill(phi + rows * dim, phi + rows_pad * dim, 0.0f);
  }
};

}  // namespace detail

template <class FeatureMap, class Backend>
class Attention<LinearWith<FeatureMap>, Backend> {
  using V = vector_t<Backend>;
  using Mechanism = LinearWith<FeatureMap>;
  using Features = detail::ElementwiseFeatures<V, FeatureMap>;

 public:
  using Options = typename Mechanism::Options;
  using Args = typename Mechanism::Args;

  explicit Attention(Options options = {}, Backend backend = {}) : options_(options), backend_(backend) {
    ATTNKIT_CHECK(std::isfinite(options_.eps) && options_.eps >= 0.0f, "options.eps is ", options_.eps,
                  ", expected a finite value >= 0");
  }

  std::string name() const { return std::string(options_.causal ? "linear-causal/" : "linear/") + Backend::name(); }
  const Options& options() const { return options_; }

  // q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv) -> out (B, Lq, Ho, Dv).
  Cost cost(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
            const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, nullptr);
    const SequenceLayout seqs = SequenceLayout::padded(shape, args.lengths);
    const detail::FeaturePlan plan = make_plan(shape, seqs);
    Cost cost;
    tile::with_causal_mask(options_.causal,
                           [&](auto mask) { cost.flops = detail::feature_products_flops(plan, seqs, mask); });
    cost.bytes = detail::attention_bytes(shape);
    return cost;
  }

  std::size_t workspace_bytes(const View<const float, 4>& q, const View<const float, 4>& k,
                              const View<const float, 4>& v, const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, nullptr);
    return workspace_of(make_plan(shape, SequenceLayout::padded(shape, args.lengths)));
  }

  void operator()(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                  const View<float, 4>& out, const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, &out);
    const SequenceLayout seqs = SequenceLayout::padded(shape, args.lengths);
    detail::FeatureState state;
    if (args.state != nullptr) {
      ATTNKIT_CHECK(options_.causal, "args.state: expected options.causal = true (a state carries a causal prefix)");
      const LinearState& st = *args.state;
      ATTNKIT_CHECK(st.batch() == shape.batch && st.kv_heads() == shape.heads.kv_heads &&
                        st.features() == shape.head_dim && st.v_dim() == shape.v_dim,
                    "args.state: shape (", st.batch(), ", ", st.kv_heads(), ", ", st.features(), ", ", st.v_dim(),
                    "), expected (", shape.batch, ", ", shape.heads.kv_heads, ", ", shape.head_dim, ", ", shape.v_dim,
                    ") (batch, kv_heads, head_dim, v_dim)");
      state = {args.state->s(), args.state->z()};
    }
    detail::zero_rows_past_lengths(out, seqs);
    const detail::FeaturePlan plan = make_plan(shape, seqs);
    if (plan.items == 0) return;
    const detail::ScopedWorkspace workspace(args.workspace, workspace_of(plan));
    tile::with_causal_mask(options_.causal, [&](auto mask) {
      const detail::FeatureKernel<V, Features, decltype(mask)> kernel(q, k, v, out, shape, seqs, plan,
                                                                      Features{shape.head_dim}, options_.eps, state,
                                                                      workspace.data(), backend_.threads(), mask);
      backend_.parallel_for(plan.items, [&](Index item, int slot) { kernel.run_item(item, slot); });
    });
  }

  // One decode step: q (B, 1, Hq, D), k (B, 1, Hkv, D), v (B, 1, Hkv, Dv) -> out (B, 1, Ho, Dv);
  // adds the token's key and value to `state`, then attends to every token the state holds.
  void step(LinearState& state, const View<const float, 4>& q, const View<const float, 4>& k,
            const View<const float, 4>& v, const View<float, 4>& out, Workspace workspace = {}) const {
    ATTNKIT_CHECK(q.extent(1) == 1, "q: seq ", q.extent(1), ", expected 1 (one decode step)");
    ATTNKIT_CHECK(k.extent(1) == 1, "k: seq ", k.extent(1), ", expected 1 (one decode step)");
    (*this)(q, k, v, out, Args{.state = &state, .workspace = workspace});
  }

 private:
  static detail::FeaturePlan make_plan(const AttentionShape& shape, const SequenceLayout& seqs) {
    return detail::make_feature_plan<V>(shape, seqs, shape.head_dim, 0, 0);
  }
  std::size_t workspace_of(const detail::FeaturePlan& plan) const {
    return detail::workspace_bytes_of<detail::FeatureWorkspace>(plan, backend_.threads());
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
