// Register-blocked micro-kernels for the two products of a fused attention tile, written once on
// VecOps<V> so Scalar (V = float) and every xsimd architecture share them.
//   score_*:  S = Q · Kᵀ with K packed in panels of RegisterTile<V>::cols keys (see pack.hpp);
//             Q rows are broadcast one element at a time, so head_dim needs no padding.
//   score_rows_in_place:  S = Q · Kᵀ with K rows read where they are, vectorised along
//             head_dim: for a few query rows (decode) streaming K once beats packing it.
//   accumulate_pv_*:  O += P · V with V packed in strips (see pack.hpp) or rows read in place.
//   finite_rows, accumulate_pv_range:  for tiles whose rows see different keys of a block, the
//             test for non-finite values and the per-row product that leaves out the keys a row
//             does not see (a masked p of 0 times an inf or NaN value would be NaN).
// Tiles always compute mr rows: callers point unused rows at a zero row / padding rows.
#pragma once

#include <type_traits>

#include "attnkit/backend/vec.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/tile/tile_shape.hpp"

namespace attnkit::tile {

// The products of one step of a packed key panel: float elements, one fused multiply-add per
// (row, key). A Dot policy gives Element (what rows and panels hold), Keys (W keys' elements of a
// step, loaded), Query (a row's element, broadcast) and dot(acc, query, keys); tile/bf16_pairs.hpp
// has the bfloat16-pair one.
template <class V>
struct FloatDot {
  using Ops = VecOps<V>;
  using Element = float;
  using Keys = V;
  using Query = V;
  static Keys load(const float* p) { return Ops::load(p); }
  static Query broadcast(float x) { return Ops::broadcast(x); }
  static V dot(const V& acc, const Query& q, const Keys& k) { return Ops::fma(q, k, acc); }
};

// s[r][c] = Σ_d q_rows[r][d] · panel[d][c] for one packed key panel, d over `steps` elements.
// q_rows: MR pointers to (steps) rows; panel: (steps, NR * W); s: (MR, lds).
template <class V, int MR, int NR, class Dot = FloatDot<V>>
inline void score_panel(const typename Dot::Element* const* q_rows, const typename Dot::Element* panel, Index steps,
                        float* s, Index lds) {
  using Ops = VecOps<V>;
  constexpr int W = Ops::width;
  V acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NR; ++n) acc[r][n] = Ops::zero();
  for (Index d = 0; d < steps; ++d) {
    typename Dot::Keys k[NR];
    for (int n = 0; n < NR; ++n) k[n] = Dot::load(panel + d * (NR * W) + n * W);
    for (int r = 0; r < MR; ++r) {
      const typename Dot::Query q = Dot::broadcast(q_rows[r][d]);
      for (int n = 0; n < NR; ++n) acc[r][n] = Dot::dot(acc[r][n], q, k[n]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NR; ++n) Ops::store(s + r * lds + n * W, acc[r][n]);
}

// S (MR, padded_keys) for a whole packed K block: padded_keys / cols panels of `steps` rows side by
// side (steps: head_dim for floats; Dot says what a step holds).
template <class V, class Dot = FloatDot<V>>
inline void score_block(const typename Dot::Element* const* q_rows, const typename Dot::Element* packed_k, Index steps,
                        Index padded_keys, float* s, Index lds) {
  using Tile = RegisterTile<V>;
  for (Index c = 0; c < padded_keys; c += Tile::cols)
    score_panel<V, Tile::mr, Tile::nr, Dot>(q_rows, packed_k + c * steps, steps, s + c, lds);
}

// s[r][j] = Σ_d q_rows[r][d] · k[j][d] for j < keys; k rows `ldk` apart, read in place (and
// converted to float when KV is a reduced-precision storage type), two keys at a time.
// q_rows: MR pointers to (head_dim) rows; s: (MR, lds).
// Keys go G at a time with G = W / MR: the MR x G dot products of a group end in one
// transpose-and-add of W accumulators (a horizontal sum each would cost more than the FMAs of a
// short row); the last keys of a block, and tiles of more rows than lanes, two keys at a time.
template <class V, int MR, class KV>
inline void score_rows_in_place(const float* const* q_rows, const KV* k, Index ldk, Index keys, Index head_dim,
                                float* s, Index lds) {
  using Ops = VecOps<V>;
  constexpr int W = Ops::width;
  constexpr int G = MR <= W ? W / MR : 1;
  const Index vector_dims = head_dim / W * W;
  Index j = 0;
  if constexpr (W > 1 && MR <= W) {
    for (; j + G <= keys; j += G) {
      V acc[W];  // acc[r * G + c]: row r, key j + c; the rest stay zero
      for (int i = 0; i < W; ++i) acc[i] = Ops::zero();
      for (Index d = 0; d < vector_dims; d += W) {
        V q[MR];
        for (int r = 0; r < MR; ++r) q[r] = Ops::load(q_rows[r] + d);
        for (int c = 0; c < G; ++c) {
          const V kc = Ops::load(k + (j + c) * ldk + d);
          for (int r = 0; r < MR; ++r) acc[r * G + c] = Ops::fma(q[r], kc, acc[r * G + c]);
        }
      }
      alignas(64) float dots[W];
      Ops::store(dots, Ops::transpose_sum(acc));
      for (int r = 0; r < MR; ++r)
        for (int c = 0; c < G; ++c) {
          float dot = dots[r * G + c];
          const KV* kc = k + (j + c) * ldk;
          for (Index d = vector_dims; d < head_dim; ++d) dot += q_rows[r][d] * to_float(kc[d]);
          s[r * lds + j + c] = dot;
        }
    }
  }
  for (; j < keys; j += 2) {
    const KV* k0 = k + j * ldk;
    const KV* k1 = j + 1 < keys ? k0 + ldk : k0;
    V acc0[MR], acc1[MR];
    for (int r = 0; r < MR; ++r) acc0[r] = acc1[r] = Ops::zero();
    for (Index d = 0; d < vector_dims; d += W) {
      const V a = Ops::load(k0 + d), b = Ops::load(k1 + d);
      for (int r = 0; r < MR; ++r) {
        const V q = Ops::load(q_rows[r] + d);
        acc0[r] = Ops::fma(q, a, acc0[r]);
        acc1[r] = Ops::fma(q, b, acc1[r]);
      }
    }
    for (int r = 0; r < MR; ++r) {
      float dot0 = Ops::sum(acc0[r]), dot1 = Ops::sum(acc1[r]);
      for (Index d = vector_dims; d < head_dim; ++d) {
        dot0 += q_rows[r][d] * to_float(k0[d]);
        dot1 += q_rows[r][d] * to_float(k1[d]);
      }
      s[r * lds + j] = dot0;
      if (j + 1 < keys) s[r * lds + j + 1] = dot1;
    }
  }
}

// o[r][c] += Σ_j p[r][j] · v[j][c] for an (MR, NR * W) strip of the output.
// p: (MR, ldp); v: rows j at v + j * ldv (KV: float or a storage type); o: (MR, ldo).
template <class V, int MR, int NR, class KV>
inline void accumulate_pv_strip(const float* p, Index ldp, const KV* v, Index ldv, Index keys, float* o, Index ldo) {
  using Ops = VecOps<V>;
  constexpr int W = Ops::width;
  V acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NR; ++n) acc[r][n] = Ops::load(o + r * ldo + n * W);
  for (Index j = 0; j < keys; ++j) {
    V vj[NR];
    for (int n = 0; n < NR; ++n) vj[n] = Ops::load(v + j * ldv + n * W);
    for (int r = 0; r < MR; ++r) {
      const V pj = Ops::broadcast(p[r * ldp + j]);
      for (int n = 0; n < NR; ++n) acc[r][n] = Ops::fma(pj, vj[n], acc[r][n]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NR; ++n) Ops::store(o + r * ldo + n * W, acc[r][n]);
}

// O (MR, padded v_dim) += P (MR, keys) · V for V packed in strips by pack_value_strips(): `strips`
// strips of (packed keys >= keys, cols), `strip_floats` apart; o rows hold strips * cols floats.
template <class V>
inline void accumulate_pv_packed(const float* p, Index ldp, const float* packed_v, Index strip_floats, Index keys,
                                 Index strips, float* o, Index ldo) {
  using Tile = RegisterTile<V>;
  for (Index s = 0; s < strips; ++s)
    accumulate_pv_strip<V, Tile::mr, Tile::nr>(p, ldp, packed_v + s * strip_floats, Tile::cols, keys,
                                               o + s * Tile::cols, ldo);
}

// O (MR, v_dim) += P (MR, keys) · V (keys, v_dim) with V rows read in place: full strips, then
// single vectors, then a scalar tail, so any v_dim works without reading past a row.
template <class V, int MR = RegisterTile<V>::mr, class KV>
inline void accumulate_pv(const float* p, Index ldp, const KV* v, Index ldv, Index keys, Index v_dim, float* o,
                          Index ldo) {
  using Tile = RegisterTile<V>;
  constexpr int W = Tile::width;
  const Index strips = v_dim / Tile::cols;
  const Index vectors = v_dim % Tile::cols / W;
  for (Index s = 0; s < strips; ++s)
    accumulate_pv_strip<V, MR, Tile::nr>(p, ldp, v + s * Tile::cols, ldv, keys, o + s * Tile::cols, ldo);
  const Index first_vector = strips * Tile::cols;
  if constexpr (Tile::nr > 1)
    for (Index s = 0; s < vectors; ++s)
      accumulate_pv_strip<V, MR, 1>(p, ldp, v + first_vector + s * W, ldv, keys, o + first_vector + s * W, ldo);
  if constexpr (W > 1)
    for (Index c = first_vector + vectors * W; c < v_dim; ++c)
      accumulate_pv_strip<float, MR, 1>(p, ldp, v + c, ldv, keys, o + c, ldo);
}

// True when the rows [0, keys) x [0, cols) of v (rows ldv apart) are all finite.
template <class V, class KV>
inline bool finite_rows(const KV* v, Index ldv, Index keys, Index cols) {
  using Ops = VecOps<V>;
  constexpr int W = Ops::width;
  V bad = Ops::zero();  // x - x: 0 for a finite x, NaN for NaN and +-inf
  float tail = 0.0f;
  for (Index j = 0; j < keys; ++j) {
    const KV* row = v + j * ldv;
    Index c = 0;
    for (; c + W <= cols; c += W) bad = bad + (Ops::load(row + c) - Ops::load(row + c));
    for (; c < cols; ++c) tail += to_float(row[c]) - to_float(row[c]);
  }
  return Ops::sum(bad) + tail == 0.0f;
}

// o (v_dim) += Σ_{j in [begin, end)} p[j] · v[j] for one row over its own keys only: the exact
// terms the full-block products compute for it, without the 0 · v of keys it does not see
// (0 · inf and 0 · NaN are NaN). p: scores from key 0; v: rows j at v + j * ldv.
template <class V, class KV>
inline void accumulate_pv_range(const float* p, const KV* v, Index ldv, Index begin, Index end, Index v_dim, float* o) {
  if (end > begin) accumulate_pv<V, 1>(p + begin, 0, v + begin * ldv, ldv, end - begin, v_dim, o, 0);
}

// Calls f(std::integral_constant<int, M>{}) with M = rows, for rows in [1, Max]: runs a
// micro-kernel instantiated for exactly the rows a tile has.
template <int Max, class F>
inline void with_tile_rows(Index rows, F&& f) {
  if constexpr (Max > 1) {
    if (rows < Max) return with_tile_rows<Max - 1>(rows, f);
  }
  f(std::integral_constant<int, Max>{});
}

}  // namespace attnkit::tile
