// The chunked kernel shared by the feature-map mechanisms (Linear, Performer): given a feature
// map phi, out_i = phi(q_i)ᵀ S / (phi(q_i) · z + eps) with S = Σ_j phi(k_j) v_jᵀ and
// z = Σ_j phi(k_j) over the keys j that query i sees (a Mask policy, tile/mask.hpp: NoMask or
// CausalMask). Queries advance in chunks of kFeatureChunk positions; before a chunk, the keys
// every row of it sees in full (seen_before) enter the running state (S, z), and the rest of the
// keys its last row sees are a masked chunk x chunk product, so all the work is GEMM-shaped (no
// per-token outer products). Without a mask every key is in the state before the first chunk.
//   FeaturePlan       sizes of one call, a function of the shape and the feature count only; it
//                     owns every buffer extent and padding (FeatureScratch::carve lays them out).
//   FeatureKernel     runs the plan's work items (sequence, kv head): the state depends on keys
//                     and values only, so the out heads of a GQA group share it. Each item runs
//                     start to end on one thread, so results do not depend on the thread count.
// The feature maps themselves live with their mechanisms (mechanism/linear.hpp,
// mechanism/performer.hpp); they fill row-major (rows, features) blocks through the interface
// below. Not here: validation and the front doors (mechanism/), the references (reference/).
#pragma once

#include <algorithm>
#include <cstddef>

#include "attnkit/backend/arrays.hpp"
#include "attnkit/backend/vec.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/core/workspace_layout.hpp"
#include "attnkit/tile/mask.hpp"
#include "attnkit/tile/microkernel.hpp"
#include "attnkit/tile/pack.hpp"
#include "attnkit/tile/tile_shape.hpp"

namespace attnkit::detail {

using tile::prefetch_rows;

// Positions per chunk: queries and keys of one causal step, keys per state update.
inline constexpr Index kFeatureChunk = 64;

// c (rows, n) += a (rows, k) · b (k, n), rows a multiple of RegisterTile<V>::mr: the PV
// micro-kernel of the tile pieces over each tile of rows (any n, no column past n touched).
template <class V>
inline void gemm_accumulate(Index rows, Index n, Index k, const float* a, Index lda, const float* b, Index ldb,
                            float* c, Index ldc) {
  for (Index r = 0; r < rows; r += RegisterTile<V>::mr)
    tile::accumulate_pv<V>(a + r * lda, lda, b, ldb, k, n, c + r * ldc, ldc);
}

// Sizes of one feature-attention call; a function of the shape and the feature count only.
struct FeaturePlan {
  Index features = 0;           // m: features per row
  Index feature_rows = 0;       // m padded to the register tile (rows of the transposed key block)
  Index chunk = kFeatureChunk;  // query positions per chunk, keys per state update
  Index chunk_rows = 0;         // chunk padded to the register tile
  Index group = 1;              // out heads per kv head
  Index kv_groups = 0;          // kv heads
  Index items = 0;              // sequences * kv_groups
  Index v_dim = 0;
  std::size_t feature_shared = 0;   // floats the feature map keeps for all threads (FeatureKernel binds them)
  std::size_t feature_scratch = 0;  // floats the feature map needs per thread
  std::size_t scratch_bytes = 0;    // per thread: FeatureScratch::carve
};

// One thread's scratch. carve() is the only description of its layout: the plan sizes it by
// carving from a measuring arena, the kernel by carving the thread's slot.
struct FeatureScratch {
  float* qf = nullptr;       // (chunk_rows, m) phi(q) of a chunk
  float* kf = nullptr;       // (chunk_rows, m) phi(k) of a chunk
  float* kft = nullptr;      // (feature_rows, chunk) phi(k) transposed
  float* a = nullptr;        // (chunk_rows, chunk) masked chunk scores
  float* o = nullptr;        // (chunk_rows, v_dim) numerators
  float* s = nullptr;        // (feature_rows, v_dim) S
  float* z = nullptr;        // (feature_rows) z
  float* den = nullptr;      // (chunk_rows) denominators
  float* scratch = nullptr;  // (feature_scratch) the feature map's own

  static FeatureScratch carve(Arena& arena, const FeaturePlan& plan) {
    const Index m = plan.features, mp = plan.feature_rows, cr = plan.chunk_rows, c = plan.chunk, dv = plan.v_dim;
    FeatureScratch b;
    b.qf = arena.take<float>(cr * m);
    b.kf = arena.take<float>(cr * m);
    b.kft = arena.take<float>(mp * c);
    b.a = arena.take<float>(cr * c);
    b.o = arena.take<float>(cr * dv);
    b.s = arena.take<float>(mp * dv);
    b.z = arena.take<float>(mp);
    b.den = arena.take<float>(cr);
    b.scratch = arena.take<float>(plan.feature_scratch);
    return b;
  }
};

// The whole workspace of a call: the feature map's shared floats, then one scratch slot per thread.
struct FeatureWorkspace {
  float* shared = nullptr;       // (feature_shared)
  std::byte* scratch = nullptr;  // (threads, scratch_bytes)

  static FeatureWorkspace carve(Arena& arena, const FeaturePlan& plan, int threads) {
    FeatureWorkspace w;
    w.shared = arena.take<float>(plan.feature_shared);
    w.scratch = take_thread_slots(arena, plan, threads);
    return w;
  }
};

template <class V>
FeaturePlan make_feature_plan(const AttentionShape& shape, const SequenceLayout& seqs, Index features,
                              std::size_t feature_shared, std::size_t feature_scratch) {
  using Tile = RegisterTile<V>;
  FeaturePlan plan;
  plan.features = features;
  plan.feature_rows = Tile::pad_rows(features);
  plan.chunk_rows = Tile::pad_rows(plan.chunk);
  plan.group = shape.heads.group();
  plan.kv_groups = shape.heads.out_heads() / plan.group;
  plan.items = seqs.count() * plan.kv_groups;
  plan.v_dim = shape.v_dim;
  plan.feature_shared = feature_shared;
  plan.feature_scratch = feature_scratch;
  plan.scratch_bytes = scratch_bytes_of<FeatureScratch>(plan);
  return plan;
}

// FLOPs of the chunk products for one call (feature maps add their own): per (sequence, kv head)
// the state update 2 m (dv + 1) per key, and per out head the state read 2 m (dv + 1) per query,
// plus each chunk's masked block 2 rows keys (m + dv + 1) as computed (full chunks).
template <class Mask>
double feature_products_flops(const FeaturePlan& plan, const SequenceLayout& seqs, const Mask& mask) {
  const double m = static_cast<double>(plan.features), dv = static_cast<double>(plan.v_dim);
  double flops = 0;
  for (Index s = 0; s < seqs.count(); ++s) {
    const Sequence seq = seqs[s];
    double per_group = 2.0 * m * (dv + 1) * static_cast<double>(seq.kv_len);
    per_group += 2.0 * m * (dv + 1) * static_cast<double>(seq.q_len * plan.group);
    for (Index i0 = 0; i0 < seq.q_len; i0 += plan.chunk) {
      const Index i1 = std::min(i0 + plan.chunk, seq.q_len);
      const Index lo = tile::seen_before(mask, i0, seq.q_len, seq.kv_len);
      const Index hi = mask.visible(i1 - 1, seq.q_len, seq.kv_len).end;
      if (hi > lo) per_group += 2.0 * static_cast<double>((i1 - i0) * (hi - lo) * plan.group) * (m + dv + 1);
    }
    flops += per_group * static_cast<double>(plan.kv_groups);
  }
  return flops;
}

// The state a causal call continues from and leaves behind: s (batch, kv_heads, m, dv),
// z (batch, kv_heads, m); empty views: none.
struct FeatureState {
  View<float, 4> s{};
  View<float, 3> z{};
};

// Features: the feature map of one call, copied into the kernel and shared by all threads. It provides
//   Index count() const                                              m
//   void bind(float* shared)                                         the plan's feature_shared floats,
//       called once by the kernel before any item runs (the map fills them: Performer's Wᵀ)
//   float key_shift(const float* k, Index ldk, Index keys, float* block, float* scratch) const
//       a constant of the item's keys (Performer: their max projection); block: (chunk_rows, m)
//   void queries(const float* x, Index ldx, Index rows, Index rows_pad, float* phi, float* scratch) const
//   void keys(const float* x, Index ldx, Index rows, Index rows_pad, float shift, float* phi, float* scratch) const
//       phi (rows_pad, m) row-major; rows past `rows` are zeros.
// Mask: NoMask or CausalMask (ranges starting at key 0, so earlier keys can live in the state).
template <class V, class Features, class Mask>
class FeatureKernel {
  using Tile = RegisterTile<V>;
  static constexpr Index C = kFeatureChunk;

 public:
  FeatureKernel(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                const View<float, 4>& out, const AttentionShape& shape, const SequenceLayout& seqs,
                const FeaturePlan& plan, const Features& features, float eps, FeatureState state, void* workspace,
                int slots, Mask mask = {})
      : q_(q),
        k_(k),
        v_(v),
        out_(out),
        shape_(shape),
        seqs_(seqs),
        plan_(plan),
        features_(features),
        eps_(eps),
        state_(state),
        mask_(mask),
        arena_(workspace, workspace_bytes_of<FeatureWorkspace>(plan, slots)) {
    ATTNKIT_CHECK(plan.chunk == C, "feature kernel: plan chunk ", plan.chunk, ", kernel runs ", C, " (internal error)");
    const FeatureWorkspace w = FeatureWorkspace::carve(arena_, plan, slots);
    features_.bind(w.shared);
    scratch_ = w.scratch;
  }

  void run_item(Index item, int slot) const {
    const Index kv_group = item % plan_.kv_groups;
    const Sequence seq = seqs_[item / plan_.kv_groups];
    const Index kv_head = shape_.heads.kv_head(kv_group * plan_.group);
    const Index m = plan_.features, mp = plan_.feature_rows, dv = plan_.v_dim;

    Arena arena = thread_slot(scratch_, plan_, slot);
    const FeatureScratch buf = FeatureScratch::carve(arena, plan_);
    std::fill(buf.s, buf.s + mp * dv, 0.0f);
    std::fill(buf.z, buf.z + mp, 0.0f);
    const bool stateful = state_.s.data() != nullptr;
    if (stateful)
      for (Index f = 0; f < m; ++f) {
        for (Index c = 0; c < dv; ++c) buf.s[f * dv + c] = state_.s(seq.batch, kv_head, f, c);
        buf.z[f] = state_.z(seq.batch, kv_head, f);
      }

    Keys keys{k_.at(seq.batch, seq.kv_begin, kv_head, 0),
              k_.stride(1),
              v_.at(seq.batch, seq.kv_begin, kv_head, 0),
              v_.stride(1),
              seq.kv_len,
              0.0f};
    keys.shift = features_.key_shift(keys.k, keys.ldk, seq.kv_len, buf.kf, buf.scratch);

    Index done = 0;  // keys [0, done) are in the state
    for (Index i0 = 0; i0 < seq.q_len; i0 += C) {
      const Index i1 = std::min(i0 + C, seq.q_len);
      // Keys [0, lo) every row of the chunk sees: the state; [lo, hi) the rest its last row sees.
      const Index lo = tile::seen_before(mask_, i0, seq.q_len, seq.kv_len);
      const Index hi = mask_.visible(i1 - 1, seq.q_len, seq.kv_len).end;
      add_keys(keys, done, lo, buf);
      if (hi > lo) key_block(keys, lo, hi - lo, buf);
      for (Index h = 0; h < plan_.group; ++h) query_block(seq, kv_group * plan_.group + h, i0, i1 - i0, lo, hi, buf);
      if (hi > lo) add_to_state(keys, lo, hi - lo, buf);
      done = std::max(done, hi);
    }
    if (stateful) add_keys(keys, done, seq.kv_len, buf);

    if (stateful)
      for (Index f = 0; f < m; ++f) {
        for (Index c = 0; c < dv; ++c) state_.s(seq.batch, kv_head, f, c) = buf.s[f * dv + c];
        state_.z(seq.batch, kv_head, f) = buf.z[f];
      }
  }

 private:
  struct Keys {
    const float* k;
    Index ldk;
    const float* v;
    Index ldv;
    Index count;  // keys of the sequence
    float shift;
  };

  // Adds keys [done, end) to the state in chunks of C and advances done to end (when below it).
  void add_keys(const Keys& keys, Index& done, Index end, const FeatureScratch& buf) const {
    for (; done < end; done += std::min(C, end - done)) {
      key_block(keys, done, std::min(C, end - done), buf);
      add_to_state(keys, done, std::min(C, end - done), buf);
    }
  }

  // kft (feature_rows, chunk) = phi(k) of keys [j0, j0 + n) transposed, zero past n and m.
  void key_block(const Keys& keys, Index j0, Index n, const FeatureScratch& buf) const {
    const Index m = plan_.features, mp = plan_.feature_rows;
    const Index next = std::min(C, keys.count - (j0 + n));  // the chunk after this one
    prefetch_rows(keys.k + (j0 + n) * keys.ldk, keys.ldk, next, shape_.head_dim);
    prefetch_rows(keys.v + (j0 + n) * keys.ldv, keys.ldv, next, plan_.v_dim);
    features_.keys(keys.k + j0 * keys.ldk, keys.ldk, n, plan_.chunk_rows, keys.shift, buf.kf, buf.scratch);
    std::fill(buf.kft, buf.kft + mp * C, 0.0f);
    for (Index j = 0; j < n; ++j)
      for (Index f = 0; f < m; ++f) buf.kft[f * C + j] = buf.kf[j * m + f];
  }

  // S (m, dv) += phi(K)ᵀ V and z += Σ_j phi(k_j) over the n keys of the current kf / kft block.
  void add_to_state(const Keys& keys, Index j0, Index n, const FeatureScratch& buf) const {
    gemm_accumulate<V>(plan_.feature_rows, plan_.v_dim, n, buf.kft, C, keys.v + j0 * keys.ldv, keys.ldv, buf.s,
                       plan_.v_dim);
    for (Index j = 0; j < n; ++j) add_to<V>(buf.kf + j * plan_.features, buf.z, plan_.features);
  }

  // Out rows [i0, i0 + rows) of one out head: the state's share, plus the masked block of keys
  // [lo, hi) held in kft.
  void query_block(const Sequence& seq, Index out_head, Index i0, Index rows, Index lo, Index hi,
                   const FeatureScratch& buf) const {
    const Index m = plan_.features, cr = plan_.chunk_rows, dv = plan_.v_dim;
    const Index q_head = shape_.heads.q_head(out_head);
    const Index next = std::min(C, seq.q_len - (i0 + rows));  // this head's next chunk
    prefetch_rows(q_.at(seq.batch, seq.q_begin + i0 + rows, q_head, 0), q_.stride(1), next, shape_.head_dim);
    prefetch_rows<true>(out_.at(seq.batch, seq.q_begin + i0, out_head, 0), out_.stride(1), rows, dv);
    features_.queries(q_.at(seq.batch, seq.q_begin + i0, q_head, 0), q_.stride(1), rows, cr, buf.qf, buf.scratch);
    std::fill(buf.o, buf.o + cr * dv, 0.0f);
    gemm_accumulate<V>(cr, dv, m, buf.qf, m, buf.s, dv, buf.o, dv);  // (rows, dv) = phi(Q) S
    for (Index r = 0; r < rows; ++r) buf.den[r] = dot<V>(buf.qf + r * m, buf.z, m);
    if (hi > lo) {
      std::fill(buf.a, buf.a + cr * C, 0.0f);
      gemm_accumulate<V>(cr, C, m, buf.qf, m, buf.kft, C, buf.a, C);  // (rows, keys) = phi(Q) phi(K)ᵀ
      for (Index r = 0; r < rows; ++r) {
        float* a_row = buf.a + r * C;
        const Index end = mask_.visible(i0 + r, seq.q_len, seq.kv_len).end;
        const Index seen = std::clamp<Index>(end - lo, 0, hi - lo);  // keys lo .. lo + seen - 1
        std::fill(a_row + seen, a_row + C, 0.0f);
        buf.den[r] += sum<V>(a_row, seen);
      }
      const float* v_block = v_.at(seq.batch, seq.kv_begin + lo, shape_.heads.kv_head(out_head), 0);
      if (tile::finite_rows<V>(v_block, v_.stride(1), hi - lo, dv)) {
        gemm_accumulate<V>(cr, dv, hi - lo, buf.a, C, v_block, v_.stride(1), buf.o,
                           dv);  // (rows, dv) += masked block · V
      } else {
        // An inf or NaN value: each row takes only the keys it sees (0 · inf would be NaN).
        for (Index r = 0; r < rows; ++r) {
          const Index end = mask_.visible(i0 + r, seq.q_len, seq.kv_len).end;
          tile::accumulate_pv_range<V>(buf.a + r * C, v_block, v_.stride(1), 0, std::clamp<Index>(end - lo, 0, hi - lo),
                                       dv, buf.o + r * dv);
        }
      }
    }
    for (Index r = 0; r < rows; ++r) {
      const Index pos = i0 + r;
      const tile::KeyRange seen = mask_.visible(pos, seq.q_len, seq.kv_len);
      float* out_row = out_.at(seq.batch, seq.q_begin + pos, out_head, 0);
      const float* o_row = buf.o + r * dv;
      if (seen.begin >= seen.end) {
        std::fill(out_row, out_row + dv, 0.0f);
        continue;
      }
      divide<V>(o_row, buf.den[r] + eps_, out_row, dv);
    }
  }

  View<const float, 4> q_, k_, v_;
  View<float, 4> out_;
  AttentionShape shape_;
  SequenceLayout seqs_;
  FeaturePlan plan_;
  Features features_;
  float eps_;
  FeatureState state_;
  Mask mask_;
  Arena arena_;  // the whole workspace; its guards (sanitize builds) are checked when the kernel ends
  std::byte* scratch_ = nullptr;
};

}  // namespace attnkit::detail
