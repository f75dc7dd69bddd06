// The Mamba-2 state-space duality kernel (mechanism/mamba2.hpp), two forms with the same results
// within rounding:
//   chunked    Dao & Gu's SSD algorithm (ssd_minimal_discrete) over chunks of `chunk` tokens:
//              per chunk, the masked C·Bᵀ with segment-sum decays exp(cum_i - cum_j) times dt·x
//              (intra-chunk, quadratic in the chunk), plus C times the carried state decayed by
//              exp(cum_i) (inter-chunk), then the state advanced by the chunk; each of the three
//              is a small dense product on 4-row x 3-vector register tiles. Segment sums are
//              taken in double so a long chunk's decays lose no precision.
//   recurrent  the plain recurrence token by token (state (n, p) held in L1).
//   SsdPlan       work items and buffer extents (padding to the vector width), a function of the
//                 shape and the chunk length only; SsdScratch::carve lays out a thread's scratch.
//   Mamba2Kernel  runs the (batch entry, head) items; they share nothing, so OpenMP<Simd> gives
//                 Simd's bits at any thread count for a given form.
// Not here: options and validation (mechanism/mamba2.hpp), the reference (reference/mamba2.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "attnkit/backend/exp.hpp"
#include "attnkit/backend/vec.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/core/workspace_layout.hpp"
#include "attnkit/kernel/ssm_common.hpp"
#include "attnkit/tile/microkernel.hpp"

namespace attnkit::detail {

struct Mamba2Shape {
  Index batch = 0, len = 0, heads = 0, head_dim = 0, groups = 1, d_state = 0;
};

// out[r, 0 : NV·W) = scale · out[r, ...] + Σ_k coef[r · rs + k · ks] · m[k · ldm + (0 : NV·W)] for
// R rows: an R x NV-vector register tile (scale 0: out is only written).
template <class V, int R, int NV>
void product_tile(const float* coef, Index rs, Index ks, Index depth, const float* m, Index ldm, float* out, Index ldo,
                  float scale) {
  using Ops = VecOps<V>;
  constexpr Index W = Ops::width;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v)
      acc[r][v] = scale == 0.0f ? Ops::zero() : Ops::load(out + r * ldo + v * W) * Ops::broadcast(scale);
  for (Index k = 0; k < depth; ++k) {
    V row[NV];
    for (int v = 0; v < NV; ++v) row[v] = Ops::load(m + k * ldm + v * W);
    for (int r = 0; r < R; ++r) {
      const V c = Ops::broadcast(coef[r * rs + k * ks]);
      for (int v = 0; v < NV; ++v) acc[r][v] = Ops::fma(c, row[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) Ops::store(out + r * ldo + v * W, acc[r][v]);
}

// The same for R rows and `width` columns (a multiple of the vector width).
template <class V, int R>
void product_rows(const float* coef, Index rs, Index ks, Index depth, const float* m, Index ldm, Index width,
                  float* out, Index ldo, float scale) {
  constexpr Index W = VecOps<V>::width;
  Index v = 0;
  for (; v + 3 * W <= width; v += 3 * W) product_tile<V, R, 3>(coef, rs, ks, depth, m + v, ldm, out + v, ldo, scale);
  for (; v + 2 * W <= width; v += 2 * W) product_tile<V, R, 2>(coef, rs, ks, depth, m + v, ldm, out + v, ldo, scale);
  for (; v + W <= width; v += W) product_tile<V, R, 1>(coef, rs, ks, depth, m + v, ldm, out + v, ldo, scale);
}

// out (rows, width) = scale · out + coef (rows, depth) · m (depth, width): a small dense product,
// coef read with row stride rs and column stride ks.
template <class V>
void product(const float* coef, Index rs, Index ks, Index rows, Index depth, const float* m, Index ldm, Index width,
             float* out, Index ldo, float scale) {
  Index r = 0;
  for (; r + 4 <= rows; r += 4)
    product_rows<V, 4>(coef + r * rs, rs, ks, depth, m, ldm, width, out + r * ldo, ldo, scale);
  for (; r < rows; ++r) product_rows<V, 1>(coef + r * rs, rs, ks, depth, m, ldm, width, out + r * ldo, ldo, scale);
}

// The optional inputs and switches of a call, copied from the front door's Args and Options; an
// empty view: not given.
struct SsdParams {
  View<const float, 1> d{};              // (heads)
  View<const float, 4> z{};              // (batch, L, heads, p)
  View<const float, 1> dt_bias{};        // (heads)
  View<const float, 4> initial_state{};  // (batch, heads, p, n)
  View<float, 4> final_state{};          // (batch, heads, p, n)
  bool dt_softplus = false;
  bool recurrent = false;  // the plain recurrence token by token, else the chunked SSD algorithm
};

// Work items and buffer extents of one call; a function of the shape and the chunk length only.
struct SsdPlan {
  Mamba2Shape shape{};
  Index chunk = 1;                // tokens per chunk (1: recurrent)
  Index width = 1;                // the vector width every row is padded to
  Index p_pad = 0;                // head_dim padded to the vector width (pp)
  Index chunk_pad = 0;            // chunk padded to the vector width (qp)
  Index items = 0;                // batch * heads
  std::size_t scratch_bytes = 0;  // per thread: SsdScratch::carve
};

// One thread's scratch.
struct SsdScratch {
  float* state = nullptr;     // (n, pp) the state H transposed
  float* dtx = nullptr;       // (chunk, pp) dt'·x per token
  float* bt = nullptr;        // (n, qp) B of the chunk transposed, then weighted for the state update
  float* scores = nullptr;    // (qp, qp) masked, decayed C·Bᵀ
  float* y = nullptr;         // (chunk, pp) outputs before D and the gate
  float* exponent = nullptr;  // (qp) decay exponents of one score row
  float* gate = nullptr;      // (pp)
  double* cum = nullptr;      // (chunk) cumulative dt'·A within the chunk

  static SsdScratch carve(Arena& arena, const SsdPlan& plan) {
    const Index n = plan.shape.d_state, pp = plan.p_pad, qp = plan.chunk_pad;
    SsdScratch b;
    b.state = arena.take<float>(n * pp);
    b.dtx = arena.take<float>(plan.chunk * pp);
    b.bt = arena.take<float>(n * qp);
    b.scores = arena.take<float>(qp * qp);
    b.y = arena.take<float>(plan.chunk * pp);
    b.exponent = arena.take<float>(qp);
    b.gate = arena.take<float>(pp);
    b.cum = arena.take<double>(plan.chunk);
    return b;
  }
};

// chunk: tokens per chunk of the chunked form, 1 for the recurrent one.
template <class V>
SsdPlan make_ssd_plan(const Mamba2Shape& shape, Index chunk) {
  SsdPlan plan;
  plan.shape = shape;
  plan.chunk = chunk;
  plan.width = VecOps<V>::width;
  plan.p_pad = (shape.head_dim + plan.width - 1) / plan.width * plan.width;
  plan.chunk_pad = (chunk + plan.width - 1) / plan.width * plan.width;
  plan.items = shape.batch * shape.heads;
  plan.scratch_bytes = scratch_bytes_of<SsdScratch>(plan);
  return plan;
}

template <class V>
class Mamba2Kernel {
  using Ops = VecOps<V>;
  static constexpr Index W = Ops::width;
  using Buffers = SsdScratch;

 public:
  static Index round_up(Index n) { return (n + W - 1) / W * W; }

  Mamba2Kernel(const View<const float, 4>& x, const View<const float, 3>& dt, const View<const float, 1>& a,
               const View<const float, 4>& b, const View<const float, 4>& c, const View<float, 4>& out,
               const SsdParams& params, const SsdPlan& plan, void* workspace, int slots)
      : x_(x),
        dt_(dt),
        a_(a),
        b_(b),
        c_(c),
        out_(out),
        args_(params),
        shape_(plan.shape),
        plan_(plan),
        chunk_(plan.chunk),
        arena_(workspace, workspace_bytes_of<ThreadSlots>(plan, slots)) {
    ATTNKIT_CHECK(plan.width == W, "ssd kernel: plan made for vectors of ", plan.width, ", kernel runs ", W,
                  " (internal error)");
    scratch_ = ThreadSlots::carve(arena_, plan, slots).scratch;
  }

  void run_item(Index item, int slot) const {
    const Index bi = item / shape_.heads, h = item % shape_.heads;
    const Index g = h / (shape_.heads / shape_.groups);
    const Index p = shape_.head_dim, pp = plan_.p_pad, n = shape_.d_state, q_max = chunk_, qp = plan_.chunk_pad;
    Arena arena = thread_slot(scratch_, plan_, slot);
    const Buffers buf = SsdScratch::carve(arena, plan_);

    for (Index k = 0; k < n; ++k)
      for (Index i = 0; i < pp; ++i)
        buf.state[k * pp + i] = i < p && given(args_.initial_state) ? args_.initial_state(bi, h, i, k) : 0.0f;
    std::fill(buf.dtx, buf.dtx + q_max * pp, 0.0f);
    std::fill(buf.scores, buf.scores + qp * qp, 0.0f);
    std::fill(buf.gate, buf.gate + pp, 0.0f);
    const float a = a_(h);
    const float bias = given(args_.dt_bias) ? args_.dt_bias(h) : 0.0f;
    const float skip = given(args_.d) ? args_.d(h) : 0.0f;

    for (Index t0 = 0; t0 < shape_.len; t0 += q_max) {
      const Index q = std::min(q_max, shape_.len - t0);
      double running = 0;
      for (Index t = 0; t < q; ++t) {
        float step = dt_(bi, t0 + t, h) + bias;
        if (args_.dt_softplus) step = softplus(step);
        running += static_cast<double>(step) * a;
        buf.cum[t] = running;
        const float* xt = x_.at(bi, t0 + t, h, 0);
        for (Index i = 0; i < p; ++i) buf.dtx[t * pp + i] = step * xt[i * x_.stride(3)];
      }
      if (args_.recurrent)
        recurrent_token(bi, g, t0, static_cast<float>(std::exp(buf.cum[0])), buf.state, buf.dtx, buf.y);
      else
        chunk(bi, g, t0, q, buf);
      for (Index t = 0; t < q; ++t) write_row(bi, h, t0 + t, buf.y + t * pp, buf.gate, skip);
    }
    if (given(args_.final_state))
      for (Index i = 0; i < p; ++i)
        for (Index k = 0; k < n; ++k) args_.final_state(bi, h, i, k) = buf.state[k * pp + i];
  }

 private:
  // out[t] = (y + D x) · silu(z) for one token of head h.
  void write_row(Index bi, Index h, Index t, const float* y, float* gate, float skip) const {
    const Index p = shape_.head_dim;
    const float* xt = x_.at(bi, t, h, 0);
    float* ot = out_.at(bi, t, h, 0);
    const bool gated = given(args_.z);
    if (gated) {
      const float* zt = args_.z.at(bi, t, h, 0);
      for (Index i = 0; i < p; ++i) gate[i] = zt[i * args_.z.stride(3)];
      for (Index i = 0; i < plan_.p_pad; i += W) Ops::store(gate + i, silu(Ops::load(gate + i)));
    }
    for (Index i = 0; i < p; ++i) {
      const float value = y[i] + skip * xt[i * x_.stride(3)];
      ot[i * out_.stride(3)] = gated ? value * gate[i] : value;
    }
  }

  // One token of the recurrence: H = decay · H + dt·x ⊗ B; y = H C.
  void recurrent_token(Index bi, Index g, Index t, float decay, float* state, const float* dtx, float* y) const {
    const Index pp = plan_.p_pad;
    const float* bt = b_.at(bi, t, g, 0);
    const float* ct = c_.at(bi, t, g, 0);
    Index v = 0;
    for (; v + 4 * W <= pp; v += 4 * W) recurrent_block<4>(bt, ct, decay, state + v, dtx + v, y + v);
    for (; v + W <= pp; v += W) recurrent_block<1>(bt, ct, decay, state + v, dtx + v, y + v);
  }

  template <int R>
  void recurrent_block(const float* bt, const float* ct, float decay, float* state, const float* dtx, float* y) const {
    const Index pp = plan_.p_pad, b_n = b_.stride(3), c_n = c_.stride(3);
    V in[R], acc[R];
    const V dv = Ops::broadcast(decay);
    for (int r = 0; r < R; ++r) {
      in[r] = Ops::load(dtx + r * W);
      acc[r] = Ops::zero();
    }
    for (Index k = 0; k < shape_.d_state; ++k) {
      const V bk = Ops::broadcast(bt[k * b_n]), ck = Ops::broadcast(ct[k * c_n]);
      float* row = state + k * pp;
      for (int r = 0; r < R; ++r) {
        const V s = Ops::fma(bk, in[r], dv * Ops::load(row + r * W));
        Ops::store(row + r * W, s);
        acc[r] = Ops::fma(s, ck, acc[r]);
      }
    }
    for (int r = 0; r < R; ++r) Ops::store(y + r * W, acc[r]);
  }

  // One chunk of q tokens starting at t0: outputs y (q, pp), then the state advanced past the chunk.
  void chunk(Index bi, Index g, Index t0, Index q, const Buffers& buf) const {
    const Index pp = plan_.p_pad, qp = round_up(q), n = shape_.d_state;
    const double* cum = buf.cum;
    for (Index k = 0; k < n; ++k)
      for (Index j = 0; j < qp; ++j) buf.bt[k * qp + j] = j < q ? b_(bi, t0 + j, g, k) : 0.0f;
    const float* c_rows = c_.at(bi, t0, g, 0);
    const Index c_t = c_.stride(1), c_n = c_.stride(3);
    // scores = C Bᵀ on and below the diagonal (row blocks of 4 stop at their last column) ...
    for (Index i = 0; i < q; i += 4) {
      const Index rows = std::min<Index>(4, q - i), cols = round_up(std::min(i + 4, q));
      if (rows == 4)
        product_rows<V, 4>(c_rows + i * c_t, c_t, c_n, n, buf.bt, qp, cols, buf.scores + i * qp, qp, 0.0f);
      else
        product<V>(c_rows + i * c_t, c_t, c_n, rows, n, buf.bt, qp, cols, buf.scores + i * qp, qp, 0.0f);
    }
    // ... times the segment-sum decays exp(cum_i - cum_j), zero above the diagonal (set, not
    // multiplied by exp(-inf): a NaN or inf score of a later token must not reach row i).
    for (Index i = 0; i < q; ++i) {
      float* row = buf.scores + i * qp;
      const Index cols = round_up(std::min(i + 4 - i % 4, q));
      for (Index j = 0; j < cols; ++j) buf.exponent[j] = j <= i ? static_cast<float>(cum[i] - cum[j]) : -INFINITY;
      for (Index j = 0; j < cols; j += W)
        Ops::store(row + j, Ops::load(row + j) * exp_approx(Ops::load(buf.exponent + j)));
      for (Index j = i + 1; j < cols; ++j) row[j] = 0.0f;
    }
    // y = exp(cum_i) · C_i H (the state carried in) + scores · dt·x
    product<V>(c_rows, c_t, c_n, q, n, buf.state, pp, pp, buf.y, pp, 0.0f);
    for (Index i = 0; i < q; ++i) {
      const V carried = Ops::broadcast(static_cast<float>(std::exp(cum[i])));
      for (Index v = 0; v < pp; v += W) Ops::store(buf.y + i * pp + v, Ops::load(buf.y + i * pp + v) * carried);
    }
    for (Index i = 0; i < q; i += 4) {
      const Index rows = std::min<Index>(4, q - i), depth = std::min(i + 4, q);
      // Rows of the block take tokens up to themselves only: with an inf or NaN dt·x among the
      // block's later tokens, each row its own (their zero scores times it would be NaN).
      if (rows > 1 && !tile::finite_rows<V>(buf.dtx + (i + 1) * pp, pp, depth - i - 1, pp)) {
        for (Index r = i; r < i + rows; ++r)
          product<V>(buf.scores + r * qp, qp, 1, 1, r + 1, buf.dtx, pp, pp, buf.y + r * pp, pp, 1.0f);
        continue;
      }
      product<V>(buf.scores + i * qp, qp, 1, rows, depth, buf.dtx, pp, pp, buf.y + i * pp, pp, 1.0f);
    }
    // H = exp(cum_last) H + (B ∘ exp(cum_last - cum_j))ᵀ · dt·x
    const double last = cum[q - 1];
    for (Index j = 0; j < q; ++j) buf.exponent[j] = static_cast<float>(std::exp(last - cum[j]));
    for (Index k = 0; k < n; ++k)
      for (Index j = 0; j < q; ++j) buf.bt[k * qp + j] *= buf.exponent[j];
    product<V>(buf.bt, qp, 1, n, q, buf.dtx, pp, pp, buf.state, pp, static_cast<float>(std::exp(last)));
  }

  View<const float, 4> x_;
  View<const float, 3> dt_;
  View<const float, 1> a_;
  View<const float, 4> b_, c_;
  View<float, 4> out_;
  SsdParams args_;
  Mamba2Shape shape_;
  SsdPlan plan_;
  Index chunk_;
  Arena arena_;  // the whole workspace; its guards (sanitize builds) are checked when the kernel ends
  std::byte* scratch_ = nullptr;
};

}  // namespace attnkit::detail
