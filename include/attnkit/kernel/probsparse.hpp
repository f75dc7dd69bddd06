// The ProbSparse kernel (mechanism/probsparse.hpp): per (batch, out head) work item, the
// sparsity of every query from its sampled keys, the top-u queries through the key-set kernel
// (kernel/key_set.hpp) over the keys they see, and the lazy rows' mean or running aggregate.
//   ProbSparsePlan       sample counts and sizes of one call; it owns every buffer extent.
//   ProbSparseScratch    one thread's scratch (carve: the only description of its layout).
//   ProbSparseWorkspace  the whole workspace: the threads' scratch, then drawn sample indices.
//   ProbSparseKernel     runs the items.
// Not here: options, validation, U / u and the seeded sampler (mechanism/probsparse.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <span>

#include "attnkit/backend/arrays.hpp"
#include "attnkit/backend/vec.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/core/workspace_layout.hpp"
#include "attnkit/kernel/key_set.hpp"
#include "attnkit/tile/mask.hpp"
#include "attnkit/tile/online_softmax.hpp"
#include "attnkit/tile/tile_shape.hpp"

namespace attnkit::detail {

// Sizes of one ProbSparse call; a function of the shape and the sample counts only.
struct ProbSparsePlan {
  Index samples = 0;  // U
  Index top = 0;      // u
  Index items = 0;    // batch * out_heads
  Index rows = 1;     // query rows per tile: the register tile's
  Index q_len = 0, head_dim = 0, v_dim = 0;
  Index score_floats = 0;         // the key-set kernel's score buffer
  Index drawn = 0;                // sample indices the kernel holds: q_len * U when drawn, else 0
  std::size_t scratch_bytes = 0;  // per thread: ProbSparseScratch::carve
};

// One thread's scratch.
struct ProbSparseScratch {
  float* sparsity = nullptr;           // (q_len) M
  std::int32_t* order = nullptr;       // (q_len) query order
  float* q_tile = nullptr;             // (rows, head_dim) scaled queries
  float* scores = nullptr;             // (score_floats)
  float* acc = nullptr;                // (rows, v_dim)
  double* running = nullptr;           // (v_dim) lazy running sum
  tile::SoftmaxRow* states = nullptr;  // (rows)

  static ProbSparseScratch carve(Arena& arena, const ProbSparsePlan& plan) {
    ProbSparseScratch sc;
    sc.sparsity = arena.take<float>(plan.q_len);
    sc.order = arena.take<std::int32_t>(plan.q_len);
    sc.q_tile = arena.take<float>(plan.rows * plan.head_dim);
    sc.scores = arena.take<float>(plan.score_floats);
    sc.acc = arena.take<float>(plan.rows * plan.v_dim);
    sc.running = arena.take<double>(plan.v_dim);
    sc.states = arena.take<tile::SoftmaxRow>(plan.rows);
    return sc;
  }
};

// The whole workspace: the threads' scratch, then the drawn sample indices.
struct ProbSparseWorkspace {
  std::byte* scratch = nullptr;
  std::int32_t* drawn = nullptr;  // (q_len, U) when the kernel draws them

  static ProbSparseWorkspace carve(Arena& arena, const ProbSparsePlan& plan, int threads) {
    ProbSparseWorkspace w;
    w.scratch = take_thread_slots(arena, plan, threads);
    w.drawn = arena.take<std::int32_t>(plan.drawn);
    return w;
  }
};

// samples, top: U and u of the call; draw: the kernel holds the sample indices (none given).
template <class V>
ProbSparsePlan make_probsparse_plan(const AttentionShape& shape, Index samples, Index top, bool draw_samples) {
  ProbSparsePlan plan;
  plan.samples = samples;
  plan.top = top;
  plan.items = shape.batch * shape.heads.out_heads();
  plan.rows = RegisterTile<V>::mr;
  plan.q_len = shape.q_len;
  plan.head_dim = shape.head_dim;
  plan.v_dim = shape.v_dim;
  plan.score_floats = key_set_score_floats<V>();
  plan.drawn = draw_samples ? shape.q_len * samples : 0;
  plan.scratch_bytes = scratch_bytes_of<ProbSparseScratch>(plan);
  return plan;
}

template <class V>
class ProbSparseKernel {
  using Ops = VecOps<V>;
  static constexpr int MR = RegisterTile<V>::mr;

 public:
  // samples: the caller's (q_len, U) indices, or null when the plan draws them: the front door
  // fills samples_to_draw() before running any item.
  ProbSparseKernel(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                   const View<float, 4>& out, const AttentionShape& shape, const ProbSparsePlan& plan, bool causal,
                   bool lazy_mean, float scale, const std::int32_t* samples, void* workspace, int slots)
      : q_(q),
        k_(k),
        v_(v),
        out_(out),
        shape_(shape),
        plan_(plan),
        causal_(causal),
        lazy_mean_(lazy_mean),
        scale_(scale),
        samples_(samples),
        arena_(workspace, workspace_bytes_of<ProbSparseWorkspace>(plan, slots)) {
    ATTNKIT_CHECK(plan.rows == MR, "probsparse kernel: plan made for ", plan.rows, " rows, kernel runs ", MR,
                  " (internal error)");
    const ProbSparseWorkspace w = ProbSparseWorkspace::carve(arena_, plan, slots);
    scratch_ = w.scratch;
    drawn_ = w.drawn;
    if (plan.drawn > 0) samples_ = drawn_;
  }

  std::span<std::int32_t> samples_to_draw() { return {drawn_, static_cast<std::size_t>(plan_.drawn)}; }

  void run_item(Index item, int slot) const {
    const Index batch = item / shape_.heads.out_heads();
    const Index out_head = item % shape_.heads.out_heads();
    const Index qh = shape_.heads.q_head(out_head), kh = shape_.heads.kv_head(out_head);
    const Index q_len = shape_.q_len, kv_len = shape_.kv_len, dim = shape_.head_dim, v_dim = shape_.v_dim;
    Arena arena = thread_slot(scratch_, plan_, slot);
    const ProbSparseScratch sc = ProbSparseScratch::carve(arena, plan_);
    float* sparsity = sc.sparsity;   // (q_len)
    std::int32_t* order = sc.order;  // (q_len)
    float* q_tile = sc.q_tile;       // (mr, head_dim)
    float* scores = sc.scores;
    float* acc = sc.acc;           // (mr, v_dim)
    double* running = sc.running;  // (v_dim)
    tile::SoftmaxRow* states = sc.states;

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
    // A total order (NaN first, then larger, ties by position): NaN in the plain comparisons
    // would break nth_element's strict weak ordering.
    std::nth_element(order, order + (plan_.top - 1), order + q_len, [&](std::int32_t a, std::int32_t b) {
      const bool nan_a = std::isnan(sparsity[a]), nan_b = std::isnan(sparsity[b]);
      if (nan_a != nan_b) return nan_a;
      if (!nan_a && sparsity[a] != sparsity[b]) return sparsity[a] > sparsity[b];
      return a < b;
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
        ranges[r] = causal_ ? tile::CausalMask::visible(pos, q_len, kv_len) : tile::NoMask::visible(pos, q_len, kv_len);
        states[r] = tile::SoftmaxRow{};
      }
      std::fill(acc, acc + rows * v_dim, 0.0f);
      attend_key_set<V>(q_ptrs, rows, k_rows, ldk, v_rows, ldv, kv_len, dim, v_dim, ranges, scores, states, acc, v_dim);
      for (Index r = 0; r < rows; ++r)
        tile::finalize_row<V>(acc + r * v_dim, v_dim, states[r], out_.at(batch, order[t + r], out_head, 0));
    }
  }

 private:
  // 4. Every row gets the lazy value first; the top rows are overwritten afterwards.
  void write_lazy_rows(Index batch, Index out_head, Index kh, double* running) const {
    const Index q_len = shape_.q_len, kv_len = shape_.kv_len, v_dim = shape_.v_dim;
    std::fill(running, running + v_dim, 0.0);
    if (!causal_) {
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
      const double factor = seen == 0 ? 0.0 : lazy_mean_ ? 1.0 / static_cast<double>(seen) : 1.0;
      float* o = out_.at(batch, i, out_head, 0);
      for (Index d = 0; d < v_dim; ++d) o[d] = static_cast<float>(running[d] * factor);
    }
  }

  View<const float, 4> q_, k_, v_;
  View<float, 4> out_;
  AttentionShape shape_;
  ProbSparsePlan plan_;
  bool causal_;
  bool lazy_mean_;  // causal lazy rows: the mean of the values seen, else their sum
  float scale_;
  const std::int32_t* samples_;
  Arena arena_;  // the whole workspace; its guards (sanitize builds) are checked when the kernel ends
  std::byte* scratch_ = nullptr;
  std::int32_t* drawn_ = nullptr;
};

}  // namespace attnkit::detail
