// Mamba-2 state-space duality (SSD): Attention<Mamba2, Backend>, with the recurrence of
// reference/mamba2.hpp (mamba_chunk_scan_combined semantics: scalar decay exp(dt A) per head,
// heads of dimension p, state n, B and C shared by the heads of a group).
// Layout: x, z and out (batch, L, heads, p); dt (batch, L, heads); A, D, dt_bias (heads); B and C
// (batch, L, groups, n), head h reading group h / (heads / groups); states (batch, heads, p, n).
// Any non-negative strides work. Mapping to attention: C ↔ Q, B ↔ K, dt·x ↔ V.
// Two forms, chosen by Options::form (same results within rounding):
//   kChunked   Dao & Gu's SSD algorithm (ssd_minimal_discrete) over chunks of chunk_size tokens:
//              per chunk, the masked C·Bᵀ with segment-sum decays exp(cum_i - cum_j) times dt·x
//              (intra-chunk, quadratic in the chunk), plus C times the carried state decayed by
//              exp(cum_i) (inter-chunk), then the state advanced by the chunk; each of the three
//              is a small dense product on 4-row x 3-vector register tiles. Segment sums are
//              taken in double so a long chunk's decays lose no precision.
//   kRecurrent the plain recurrence token by token (state (n, p) held in L1).
// A work item is one (batch entry, head); items share nothing, so OpenMP<Simd> gives Simd's bits
// at any thread count for a given form.
// Not here: the reference (reference/mamba2.hpp), Mamba-1 (mechanism/mamba.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <string>

#include "attnkit/attention.hpp"
#include "attnkit/backend/backend.hpp"
#include "attnkit/backend/exp.hpp"
#include "attnkit/backend/vec.hpp"
#include "attnkit/core/cost.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/mechanism/ssm_common.hpp"

namespace attnkit {

struct Mamba2 {
  enum class Form { kChunked, kRecurrent };
  struct Options {
    Index chunk_size = 64;     // tokens per chunk of the chunked form, in [1, 256]
    bool dt_softplus = false;  // dt' = softplus(dt + dt_bias)
    Form form = Form::kChunked;
  };
  // Optional extras of one call; an empty view means "not given".
  struct Args {
    View<const float, 1> d{};              // (heads) skip: out = (y + D x) ...
    View<const float, 4> z{};              // (batch, L, heads, p) gate: ... · silu(z)
    View<const float, 1> dt_bias{};        // (heads)
    View<const float, 4> initial_state{};  // (batch, heads, p, n); none: zeros
    View<float, 4> final_state{};          // (batch, heads, p, n) written after the last token
    Workspace workspace{};                 // >= workspace_bytes(...) bytes, 64-byte aligned
  };
};

namespace detail {

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

template <class V>
class Mamba2Kernel {
  using Ops = VecOps<V>;
  static constexpr Index W = Ops::width;

  // One thread's scratch, carved from its block of the workspace.
  struct Buffers {
    float* state;     // (n, pp) the state H transposed
    float* dtx;       // (chunk, pp) dt'·x per token
    float* bt;        // (n, qp) B of the chunk transposed, then weighted for the state update
    float* scores;    // (qp, qp) masked, decayed C·Bᵀ
    float* y;         // (chunk, pp) outputs before D and the gate
    float* exponent;  // (qp) decay exponents of one score row
    float* gate;      // (pp)
    double* cum;      // (chunk) cumulative dt'·A within the chunk
  };

 public:
  static Index round_up(Index n) { return (n + W - 1) / W * W; }

  // Floats of scratch one thread needs (padded so every thread's block stays aligned).
  static Index scratch_floats(const Mamba2Shape& s, Index chunk) {
    const Index pp = round_up(s.head_dim), qp = round_up(chunk);
    const Index floats = s.d_state * pp + 2 * chunk * pp + s.d_state * qp + qp * qp + qp + pp;
    return static_cast<Index>(array_bytes<float>(floats) / sizeof(float) + array_bytes<double>(chunk) / sizeof(float));
  }

  Mamba2Kernel(const View<const float, 4>& x, const View<const float, 3>& dt, const View<const float, 1>& a,
               const View<const float, 4>& b, const View<const float, 4>& c, const View<float, 4>& out,
               const Mamba2::Args& args, const Mamba2Shape& shape, const Mamba2::Options& options, float* scratch)
      : x_(x),
        dt_(dt),
        a_(a),
        b_(b),
        c_(c),
        out_(out),
        args_(args),
        shape_(shape),
        options_(options),
        chunk_(options.form == Mamba2::Form::kChunked ? options.chunk_size : 1),
        scratch_(scratch) {}

  Index items() const { return shape_.batch * shape_.heads; }

  void run_item(Index item, int slot) const {
    const Index bi = item / shape_.heads, h = item % shape_.heads;
    const Index g = h / (shape_.heads / shape_.groups);
    const Index p = shape_.head_dim, pp = round_up(p), n = shape_.d_state, q_max = chunk_, qp = round_up(chunk_);
    float* base = scratch_ + scratch_floats(shape_, chunk_) * slot;
    Buffers buf;
    buf.state = base;
    buf.dtx = buf.state + n * pp;
    buf.bt = buf.dtx + q_max * pp;
    buf.scores = buf.bt + n * qp;
    buf.y = buf.scores + qp * qp;
    buf.exponent = buf.y + q_max * pp;
    buf.gate = buf.exponent + qp;
    buf.cum = reinterpret_cast<double*>(base + array_bytes<float>(buf.gate + pp - base) / sizeof(float));

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
        if (options_.dt_softplus) step = softplus(step);
        running += static_cast<double>(step) * a;
        buf.cum[t] = running;
        const float* xt = x_.at(bi, t0 + t, h, 0);
        for (Index i = 0; i < p; ++i) buf.dtx[t * pp + i] = step * xt[i * x_.stride(3)];
      }
      if (options_.form == Mamba2::Form::kRecurrent)
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
      for (Index i = 0; i < round_up(p); i += W) Ops::store(gate + i, silu(Ops::load(gate + i)));
    }
    for (Index i = 0; i < p; ++i) {
      const float value = y[i] + skip * xt[i * x_.stride(3)];
      ot[i * out_.stride(3)] = gated ? value * gate[i] : value;
    }
  }

  // One token of the recurrence: H = decay · H + dt·x ⊗ B; y = H C.
  void recurrent_token(Index bi, Index g, Index t, float decay, float* state, const float* dtx, float* y) const {
    const Index pp = round_up(shape_.head_dim);
    const float* bt = b_.at(bi, t, g, 0);
    const float* ct = c_.at(bi, t, g, 0);
    Index v = 0;
    for (; v + 4 * W <= pp; v += 4 * W) recurrent_block<4>(bt, ct, decay, state + v, dtx + v, y + v);
    for (; v + W <= pp; v += W) recurrent_block<1>(bt, ct, decay, state + v, dtx + v, y + v);
  }

  template <int R>
  void recurrent_block(const float* bt, const float* ct, float decay, float* state, const float* dtx, float* y) const {
    const Index pp = round_up(shape_.head_dim), b_n = b_.stride(3), c_n = c_.stride(3);
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
    const Index pp = round_up(shape_.head_dim), qp = round_up(q), n = shape_.d_state;
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
    // ... times the segment-sum decays exp(cum_i - cum_j), zero above the diagonal.
    for (Index i = 0; i < q; ++i) {
      float* row = buf.scores + i * qp;
      const Index cols = round_up(std::min(i + 4 - i % 4, q));
      for (Index j = 0; j < cols; ++j) buf.exponent[j] = j <= i ? static_cast<float>(cum[i] - cum[j]) : -INFINITY;
      for (Index j = 0; j < cols; j += W)
        Ops::store(row + j, Ops::load(row + j) * exp_approx(Ops::load(buf.exponent + j)));
    }
    // y = exp(cum_i) · C_i H (the state carried in) + scores · dt·x
    product<V>(c_rows, c_t, c_n, q, n, buf.state, pp, pp, buf.y, pp, 0.0f);
    for (Index i = 0; i < q; ++i) {
      const V carried = Ops::broadcast(static_cast<float>(std::exp(cum[i])));
      for (Index v = 0; v < pp; v += W) Ops::store(buf.y + i * pp + v, Ops::load(buf.y + i * pp + v) * carried);
    }
    for (Index i = 0; i < q; i += 4) {
      const Index rows = std::min<Index>(4, q - i), depth = std::min(i + 4, q);
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
  const Mamba2::Args& args_;
  Mamba2Shape shape_;
  Mamba2::Options options_;
  Index chunk_;
  float* scratch_;
};

}  // namespace detail

template <class Backend>
class Attention<Mamba2, Backend> {
  using V = vector_t<Backend>;
  using Kernel = detail::Mamba2Kernel<V>;

 public:
  using Options = Mamba2::Options;
  using Args = Mamba2::Args;

  explicit Attention(Options options = {}, Backend backend = {}) : options_(options), backend_(backend) {
    ATTNKIT_CHECK(options_.chunk_size >= 1 && options_.chunk_size <= 256, "options.chunk_size is ", options_.chunk_size,
                  ", expected in [1, 256]");
  }

  std::string name() const {
    return std::string(options_.form == Mamba2::Form::kChunked ? "mamba2-chunked/" : "mamba2-recurrent/") +
           Backend::name();
  }
  const Options& options() const { return options_; }

  // FLOPs of the form that runs (2 per multiply-add; exp not counted). Recurrent: 4·p·n per
  // (token, head). Chunked, per chunk of q tokens and head: C·Bᵀ over the lower triangle
  // q(q+1)/2·n, G·(dt x) q(q+1)/2·p, C·H q·n·p and the state update q·n·p, each times 2.
  // Bytes: x, z, out per (token, head, p), dt per (token, head), B and C per (token, group, n).
  Cost cost(const View<const float, 4>& x, const View<const float, 3>& dt, const View<const float, 1>& a,
            const View<const float, 4>& b, const View<const float, 4>& c, const Args& args = {}) const {
    const detail::Mamba2Shape s = shape_of(x, dt, a, b, c, nullptr, args);
    const double heads = static_cast<double>(s.batch * s.heads), p = double(s.head_dim), n = double(s.d_state);
    Cost cost;
    if (options_.form == Mamba2::Form::kRecurrent) {
      cost.flops = 4.0 * heads * double(s.len) * p * n;
    } else {
      double per_head = 0;
      for (Index t0 = 0; t0 < s.len; t0 += options_.chunk_size) {
        const double q = double(std::min(options_.chunk_size, s.len - t0));
        per_head += 2.0 * (q * (q + 1) / 2 * (n + p) + 2.0 * q * n * p);
      }
      cost.flops = heads * per_head;
    }
    const double tokens = static_cast<double>(s.batch * s.len);
    const double streams = 2.0 + (detail::given(args.z) ? 1.0 : 0.0);
    cost.bytes = sizeof(float) * tokens * (s.heads * (streams * p + 1.0) + 2.0 * s.groups * n);
    return cost;
  }
  std::size_t workspace_bytes(const View<const float, 4>& x, const View<const float, 3>& dt,
                              const View<const float, 1>& a, const View<const float, 4>& b,
                              const View<const float, 4>& c, const Args& args = {}) const {
    return workspace_of(shape_of(x, dt, a, b, c, nullptr, args));
  }

  // x (batch, L, heads, p); dt (batch, L, heads); a (heads); b, c (batch, L, groups, n)
  //   -> out (batch, L, heads, p).
  void operator()(const View<const float, 4>& x, const View<const float, 3>& dt, const View<const float, 1>& a,
                  const View<const float, 4>& b, const View<const float, 4>& c, const View<float, 4>& out,
                  const Args& args = {}) const {
    const detail::Mamba2Shape shape = shape_of(x, dt, a, b, c, &out, args);
    const std::size_t bytes = workspace_of(shape);
    if (bytes == 0) return;
    const detail::ScopedWorkspace workspace(args.workspace, bytes);
    const Kernel kernel(x, dt, a, b, c, out, args, shape, options_, static_cast<float*>(workspace.data()));
    backend_.parallel_for(kernel.items(), [&](Index item, int slot) { kernel.run_item(item, slot); });
  }

 private:
  static detail::Mamba2Shape shape_of(const View<const float, 4>& x, const View<const float, 3>& dt,
                                      const View<const float, 1>& a, const View<const float, 4>& b,
                                      const View<const float, 4>& c, const View<float, 4>* out, const Args& args) {
    using detail::check_extents;
    check_strided_view(x, "x");
    detail::Mamba2Shape s;
    s.batch = x.extent(0);
    s.len = x.extent(1);
    s.heads = x.extent(2);
    s.head_dim = x.extent(3);
    ATTNKIT_CHECK(s.heads >= 1, "x: heads ", s.heads, ", expected >= 1");
    ATTNKIT_CHECK(s.head_dim >= 1, "x: head_dim ", s.head_dim, ", expected >= 1");
    const std::array<Index, 4> tokens{s.batch, s.len, s.heads, s.head_dim};
    const std::array<const char*, 4> token_axes{"batch", "L", "heads", "head_dim"};
    check_extents(dt, "dt", std::array<Index, 3>{s.batch, s.len, s.heads},
                  std::array<const char*, 3>{"batch", "L", "heads"});
    const std::array<Index, 1> per_head{s.heads};
    const std::array<const char*, 1> head_axis{"heads"};
    check_extents(a, "A", per_head, head_axis);
    detail::check_finite(a, "A");
    check_strided_view(b, "B");
    s.groups = b.extent(2);
    s.d_state = b.extent(3);
    ATTNKIT_CHECK(s.groups >= 1 && s.heads % s.groups == 0, "B: groups ", s.groups, ", expected a divisor of heads ",
                  s.heads);
    ATTNKIT_CHECK(s.d_state >= 1, "B: d_state ", s.d_state, ", expected >= 1");
    const std::array<Index, 4> bc{s.batch, s.len, s.groups, s.d_state};
    const std::array<const char*, 4> bc_axes{"batch", "L", "groups", "d_state"};
    check_extents(b, "B", bc, bc_axes);
    check_extents(c, "C", bc, bc_axes);
    if (out != nullptr) check_extents(*out, "out", tokens, token_axes);
    if (detail::given(args.d)) {
      check_extents(args.d, "args.D", per_head, head_axis);
      detail::check_finite(args.d, "args.D");
    }
    if (detail::given(args.dt_bias)) {
      check_extents(args.dt_bias, "args.dt_bias", per_head, head_axis);
      detail::check_finite(args.dt_bias, "args.dt_bias");
    }
    if (detail::given(args.z)) check_extents(args.z, "args.z", tokens, token_axes);
    const std::array<Index, 4> states{s.batch, s.heads, s.head_dim, s.d_state};
    const std::array<const char*, 4> state_axes{"batch", "heads", "head_dim", "d_state"};
    if (detail::given(args.initial_state)) check_extents(args.initial_state, "args.initial_state", states, state_axes);
    if (detail::given(args.final_state)) check_extents(args.final_state, "args.final_state", states, state_axes);
    return s;
  }

  std::size_t workspace_of(const detail::Mamba2Shape& s) const {
    if (s.batch == 0) return 0;
    const Index chunk = options_.form == Mamba2::Form::kChunked ? options_.chunk_size : 1;
    return sizeof(float) * Kernel::scratch_floats(s, chunk) * static_cast<std::size_t>(backend_.threads());
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
