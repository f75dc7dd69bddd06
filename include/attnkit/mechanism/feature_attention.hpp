// The chunked kernel shared by the feature-map mechanisms (Linear, Performer): given a feature
// map phi, out_i = phi(q_i)ᵀ S / (phi(q_i) · z + eps) with S = Σ_j phi(k_j) v_jᵀ and
// z = Σ_j phi(k_j) over the keys j that query i sees.
//   Non-causal: one pass over the keys builds S and z, then every query chunk is two small GEMMs.
//   Causal: queries and keys advance together in chunks of kFeatureChunk positions; a chunk sees
//   the running state (all earlier keys) plus its own keys through a masked chunk x chunk product,
//   so all the work is GEMM-shaped (no per-token outer products).
// Work items are (sequence, kv head): the state depends on keys and values only, so the out heads
// of a GQA group share it. Each item runs start to end on one thread, so results do not depend on
// the thread count. The feature maps themselves live with their mechanisms (linear.hpp,
// performer.hpp); they fill row-major (rows, features) blocks through the interface below.
// Not here: validation and the front doors (mechanism headers), the references (reference/).
#pragma once

#include <algorithm>
#include <cstddef>

#include "attnkit/backend/arrays.hpp"
#include "attnkit/backend/vec.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
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
  Index features = 0;      // m: features per row
  Index feature_rows = 0;  // m padded to the register tile (rows of the transposed key block)
  Index chunk_rows = 0;    // kFeatureChunk padded to the register tile
  Index group = 1;         // out heads per kv head
  Index kv_groups = 0;     // kv heads
  Index items = 0;         // sequences * kv_groups
  Index v_dim = 0;
  std::size_t feature_scratch = 0;  // floats the feature map needs per thread
  std::size_t scratch_bytes = 0;    // per thread
};

template <class V>
FeaturePlan make_feature_plan(const AttentionShape& shape, const SequenceLayout& seqs, Index features,
                              std::size_t feature_scratch) {
  using Tile = RegisterTile<V>;
  FeaturePlan plan;
  plan.features = features;
  plan.feature_rows = Tile::pad_rows(features);
  plan.chunk_rows = Tile::pad_rows(kFeatureChunk);
  plan.group = shape.heads.group();
  plan.kv_groups = shape.heads.out_heads() / plan.group;
  plan.items = seqs.count() * plan.kv_groups;
  plan.v_dim = shape.v_dim;
  plan.feature_scratch = feature_scratch;
  const Index m = features, mp = plan.feature_rows, cr = plan.chunk_rows, c = kFeatureChunk, dv = shape.v_dim;
  plan.scratch_bytes = 2 * array_bytes<float>(cr * m) +  // phi(q), phi(k) chunks
                       array_bytes<float>(mp * c) +      // phi(k) chunk transposed
                       array_bytes<float>(cr * c) +      // masked chunk scores
                       array_bytes<float>(cr * dv) +     // numerators
                       array_bytes<float>(mp * dv) +     // S
                       array_bytes<float>(mp) +          // z
                       array_bytes<float>(cr) +          // denominators
                       array_bytes<float>(feature_scratch);
  return plan;
}

// FLOPs of the chunk products for one call (feature maps add their own): per (sequence, kv head)
// the state update 2 m (dv + 1) per key, and per out head the state read 2 m (dv + 1) per query,
// plus, when causal, the masked chunk block 2 rows keys (m + dv + 1) as computed (full chunks).
inline double feature_products_flops(const FeaturePlan& plan, const SequenceLayout& seqs, bool causal) {
  const double m = static_cast<double>(plan.features), dv = static_cast<double>(plan.v_dim);
  double flops = 0;
  for (Index s = 0; s < seqs.count(); ++s) {
    const Sequence seq = seqs[s];
    double per_group = 2.0 * m * (dv + 1) * static_cast<double>(seq.kv_len);
    per_group += 2.0 * m * (dv + 1) * static_cast<double>(seq.q_len * plan.group);
    if (causal) {
      const Index offset = seq.kv_len - seq.q_len;
      for (Index i0 = 0; i0 < seq.q_len; i0 += kFeatureChunk) {
        const Index i1 = std::min(i0 + kFeatureChunk, seq.q_len);
        const Index lo = std::clamp<Index>(i0 + offset, 0, seq.kv_len),
                    hi = std::clamp<Index>(i1 + offset, 0, seq.kv_len);
        per_group += 2.0 * static_cast<double>((i1 - i0) * (hi - lo) * plan.group) * (m + dv + 1);
      }
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

// Features: the feature map of one call, const and shared by all threads. It provides
//   Index count() const                                              m
//   float key_shift(const float* k, Index ldk, Index keys, float* block, float* scratch) const
//       a constant of the item's keys (Performer: their max projection); block: (chunk_rows, m)
//   void queries(const float* x, Index ldx, Index rows, Index rows_pad, float* phi, float* scratch) const
//   void keys(const float* x, Index ldx, Index rows, Index rows_pad, float shift, float* phi, float* scratch) const
//       phi (rows_pad, m) row-major; rows past `rows` are zeros.
template <class V, class Features>
class FeatureKernel {
  using Tile = RegisterTile<V>;
  static constexpr Index C = kFeatureChunk;

 public:
  FeatureKernel(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                const View<float, 4>& out, const AttentionShape& shape, const SequenceLayout& seqs,
                const FeaturePlan& plan, const Features& features, float eps, bool causal, FeatureState state,
                std::byte* scratch)
      : q_(q),
        k_(k),
        v_(v),
        out_(out),
        shape_(shape),
        seqs_(seqs),
        plan_(plan),
        features_(features),
        eps_(eps),
        causal_(causal),
        state_(state),
        scratch_(scratch) {}

  void run_item(Index item, int slot) const {
    const Index kv_group = item % plan_.kv_groups;
    const Sequence seq = seqs_[item / plan_.kv_groups];
    const Index kv_head = shape_.heads.kv_head(kv_group * plan_.group);
    const Index m = plan_.features, mp = plan_.feature_rows, cr = plan_.chunk_rows, dv = plan_.v_dim;

    Arena arena(scratch_ + plan_.scratch_bytes * slot, plan_.scratch_bytes);
    Buffers buf;
    buf.qf = arena.take<float>(cr * m);   // (chunk_rows, m)
    buf.kf = arena.take<float>(cr * m);   // (chunk_rows, m)
    buf.kft = arena.take<float>(mp * C);  // (feature_rows, chunk)
    buf.a = arena.take<float>(cr * C);    // (chunk_rows, chunk)
    buf.o = arena.take<float>(cr * dv);   // (chunk_rows, dv)
    buf.s = arena.take<float>(mp * dv);   // (feature_rows, dv)
    buf.z = arena.take<float>(mp);        // (feature_rows)
    buf.den = arena.take<float>(cr);      // (chunk_rows)
    buf.scratch = arena.take<float>(plan_.feature_scratch);

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

    if (!causal_) {
      for (Index j0 = 0; j0 < seq.kv_len; j0 += C) {
        const Index n = std::min(C, seq.kv_len - j0);
        key_block(keys, j0, n, buf);
        add_to_state(keys, j0, n, buf);
      }
      for (Index i0 = 0; i0 < seq.q_len; i0 += C)
        for (Index h = 0; h < plan_.group; ++h)
          query_block(seq, kv_group * plan_.group + h, i0, std::min(C, seq.q_len - i0), 0, 0, buf);
    } else {
      // Bottom-right aligned: query i sees keys j <= i + offset.
      const Index offset = seq.kv_len - seq.q_len;
      Index done = 0;  // keys [0, done) are in the state
      for (Index i0 = 0; i0 < seq.q_len; i0 += C) {
        const Index i1 = std::min(i0 + C, seq.q_len);
        const Index lo = std::clamp<Index>(i0 + offset, 0, seq.kv_len);
        const Index hi = std::clamp<Index>(i1 + offset, 0, seq.kv_len);
        for (; done < lo; done += std::min(C, lo - done)) {
          key_block(keys, done, std::min(C, lo - done), buf);
          add_to_state(keys, done, std::min(C, lo - done), buf);
        }
        if (hi > lo) key_block(keys, lo, hi - lo, buf);
        for (Index h = 0; h < plan_.group; ++h) query_block(seq, kv_group * plan_.group + h, i0, i1 - i0, lo, hi, buf);
        if (hi > lo) add_to_state(keys, lo, hi - lo, buf);
        done = std::max(done, hi);
      }
      if (stateful)
        for (; done < seq.kv_len; done += std::min(C, seq.kv_len - done)) {
          key_block(keys, done, std::min(C, seq.kv_len - done), buf);
          add_to_state(keys, done, std::min(C, seq.kv_len - done), buf);
        }
    }

    if (stateful)
      for (Index f = 0; f < m; ++f) {
        for (Index c = 0; c < dv; ++c) state_.s(seq.batch, kv_head, f, c) = buf.s[f * dv + c];
        state_.z(seq.batch, kv_head, f) = buf.z[f];
      }
  }

 private:
  struct Buffers {
    float *qf, *kf, *kft, *a, *o, *s, *z, *den, *scratch;
  };
  struct Keys {
    const float* k;
    Index ldk;
    const float* v;
    Index ldv;
    Index count;  // keys of the sequence
    float shift;
  };

  // kft (feature_rows, chunk) = phi(k) of keys [j0, j0 + n) transposed, zero past n and m.
  void key_block(const Keys& keys, Index j0, Index n, const Buffers& buf) const {
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
  void add_to_state(const Keys& keys, Index j0, Index n, const Buffers& buf) const {
    gemm_accumulate<V>(plan_.feature_rows, plan_.v_dim, n, buf.kft, C, keys.v + j0 * keys.ldv, keys.ldv, buf.s,
                       plan_.v_dim);
    for (Index j = 0; j < n; ++j) add_to<V>(buf.kf + j * plan_.features, buf.z, plan_.features);
  }

  // Out rows [i0, i0 + rows) of one out head: the state's share, plus (causal) the masked block
  // of keys [lo, hi) held in kft.
  void query_block(const Sequence& seq, Index out_head, Index i0, Index rows, Index lo, Index hi,
                   const Buffers& buf) const {
    const Index m = plan_.features, cr = plan_.chunk_rows, dv = plan_.v_dim;
    const Index q_head = shape_.heads.q_head(out_head);
    const Index next = std::min(C, seq.q_len - (i0 + rows));  // this head's next chunk
    prefetch_rows(q_.at(seq.batch, seq.q_begin + i0 + rows, q_head, 0), q_.stride(1), next, shape_.head_dim);
    prefetch_rows<true>(out_.at(seq.batch, seq.q_begin + i0, out_head, 0), out_.stride(1), rows, dv);
    features_.queries(q_.at(seq.batch, seq.q_begin + i0, q_head, 0), q_.stride(1), rows, cr, buf.qf, buf.scratch);
    std::fill(buf.o, buf.o + cr * dv, 0.0f);
    gemm_accumulate<V>(cr, dv, m, buf.qf, m, buf.s, dv, buf.o, dv);  // (rows, dv) = phi(Q) S
    for (Index r = 0; r < rows; ++r) buf.den[r] = dot<V>(buf.qf + r * m, buf.z, m);
    const Index offset = seq.kv_len - seq.q_len;
    if (hi > lo) {
      std::fill(buf.a, buf.a + cr * C, 0.0f);
      gemm_accumulate<V>(cr, C, m, buf.qf, m, buf.kft, C, buf.a, C);  // (rows, keys) = phi(Q) phi(K)ᵀ
      for (Index r = 0; r < rows; ++r) {
        float* a_row = buf.a + r * C;
        const Index seen = std::clamp<Index>(i0 + r + offset + 1 - lo, 0, hi - lo);  // keys lo .. lo + seen - 1
        std::fill(a_row + seen, a_row + C, 0.0f);
        buf.den[r] += sum<V>(a_row, seen);
      }
      gemm_accumulate<V>(cr, dv, hi - lo, buf.a, C,
                         v_.at(seq.batch, seq.kv_begin + lo, shape_.heads.kv_head(out_head), 0), v_.stride(1), buf.o,
                         dv);  // (rows, dv) += masked block · V
    }
    for (Index r = 0; r < rows; ++r) {
      const Index pos = i0 + r;
      const bool sees_keys = causal_ ? pos + offset >= 0 && seq.kv_len > 0 : seq.kv_len > 0;
      float* out_row = out_.at(seq.batch, seq.q_begin + pos, out_head, 0);
      const float* o_row = buf.o + r * dv;
      if (!sees_keys) {
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
  const Features& features_;
  float eps_;
  bool causal_;
  FeatureState state_;
  std::byte* scratch_;
};

}  // namespace attnkit::detail
