// Mamba-1 selective scan (S6): Attention<Mamba, Backend>, with state-spaces/mamba's
// selective_scan_ref semantics (see reference/mamba.hpp for the recurrence), plus a decode step on
// a caller-held state (selective_state_update semantics; stepping equals the scan).
// Layout: u, delta, z and out are (batch, L, d_inner) views; any strides work, so the library's
// [batch, L, channels] layout and Mamba's (batch, d_inner, L) layout (strides {d_inner * L, 1, L})
// both run without a copy. B and C are (batch, L, groups, d_state) views (ungrouped: groups 1;
// Mamba's (batch, groups, d_state, L) is again a choice of strides); channel d reads group
// d / (d_inner / groups). A is (d_inner, d_state) and real: a complex A (Mamba's is_complex
// variant) cannot be expressed by this API and is not supported. States are
// (sequences, d_inner, d_state).
// Kernel: the scan is sequential in L and parallel over (sequence, channel): a work item is a
// block of 64 channels of one group of one sequence (whole cache lines of each token row). Per
// chunk of 16 tokens it stages delta (bias, softplus) and delta·u, then runs the recurrence
// vector by vector of channels over register-held groups of states with
// exp(delta A) from exp_approx, and applies D and the silu gate on the way out. Work items never
// share data, so OpenMP<Simd> gives Simd's bits at any thread count.
// Not here: the reference (reference/mamba.hpp), Mamba-2 (mechanism/mamba2.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
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

struct Mamba {
  struct Options {
    bool delta_softplus = false;  // delta' = softplus(delta + delta_bias)
  };
  // Optional extras of one scan; an empty view means "not given".
  struct Args {
    View<const float, 1> d{};                    // (d_inner) skip: out = (y + D u) ...
    View<const float, 3> z{};                    // (batch, L, d_inner) gate: ... · silu(z)
    View<const float, 1> delta_bias{};           // (d_inner)
    View<const float, 3> initial_state{};        // (sequences, d_inner, d_state); none: zeros
    View<float, 3> final_state{};                // (sequences, d_inner, d_state) written after the last token
    std::span<const std::int32_t> cu_seqlens{};  // packed sequences along L of batch entry 0 (batch
                                                 // must be 1); the state restarts at each offset
    Workspace workspace{};                       // >= workspace_bytes(...) bytes, 64-byte aligned
  };
  // Optional extras of one decode step.
  struct StepArgs {
    View<const float, 1> d{};           // (d_inner)
    View<const float, 2> z{};           // (batch, d_inner)
    View<const float, 1> delta_bias{};  // (d_inner)
    Workspace workspace{};
  };
};

namespace detail {

// Shape of one Mamba-1 call, read off the validated views.
struct MambaShape {
  Index batch = 0, len = 0, d_inner = 0, d_state = 0, groups = 1, sequences = 0;
  Index group_channels() const { return d_inner / groups; }
};

// Channels of one work item (a multiple of every vector width): wide enough that each token row
// is read as whole cache lines, narrow enough that the staged chunk stays in L1.
inline constexpr Index kMambaBlockChannels = 64;
// Tokens staged per pass over the state groups.
inline constexpr Index kMambaTokenChunk = 16;

template <class V>
class MambaKernel {
  using Ops = VecOps<V>;
  static constexpr Index W = Ops::width;
  static constexpr Index C = kMambaBlockChannels;
  static constexpr Index T = kMambaTokenChunk;
  static_assert(C % W == 0, "a channel block holds whole vectors");

 public:
  // Floats of scratch one thread needs, padded to keep every thread's block aligned.
  static Index scratch_floats(const MambaShape& s) {
    return static_cast<Index>(array_bytes<float>(5 * T * C + 2 * s.d_state * C) / sizeof(float));
  }

  MambaKernel(const View<const float, 3>& u, const View<const float, 3>& delta, const View<const float, 2>& a,
              const View<const float, 4>& b, const View<const float, 4>& c, const View<float, 3>& out,
              const Mamba::Args& args, const MambaShape& shape, bool softplus_delta, float* scratch)
      : u_(u),
        delta_(delta),
        a_(a),
        b_(b),
        c_(c),
        out_(out),
        args_(args),
        shape_(shape),
        softplus_(softplus_delta),
        scratch_(scratch) {
    blocks_per_group_ = (shape.group_channels() + C - 1) / C;
  }

  Index items() const { return shape_.sequences * shape_.groups * blocks_per_group_; }

  void run_item(Index item, int slot) const {
    const Index block = item % blocks_per_group_;
    const Index group = item / blocks_per_group_ % shape_.groups;
    const Index seq = item / blocks_per_group_ / shape_.groups;
    const Index c0 = group * shape_.group_channels() + block * C;  // first channel
    const Index count = std::min(C, (group + 1) * shape_.group_channels() - c0);
    const Index vectors = (count + W - 1) / W;
    const bool packed = !args_.cu_seqlens.empty();
    const Index bi = packed ? 0 : seq;
    const Index begin = packed ? args_.cu_seqlens[seq] : 0;
    const Index end = packed ? args_.cu_seqlens[seq + 1] : shape_.len;
    const Index n_state = shape_.d_state;

    float* base = scratch_ + scratch_floats(shape_) * slot;
    float* u_buf = base;                 // (T, C) u
    float* dt_buf = u_buf + T * C;       // (T, C) delta'
    float* du_buf = dt_buf + T * C;      // (T, C) delta' · u
    float* y_buf = du_buf + T * C;       // (T, C) Σ_n x C
    float* z_buf = y_buf + T * C;        // (T, C) gate
    float* a_buf = z_buf + T * C;        // (d_state, C) A transposed
    float* x_buf = a_buf + n_state * C;  // (d_state, C) state

    for (Index n = 0; n < n_state; ++n)
      for (Index l = 0; l < C; ++l) {
        a_buf[n * C + l] = l < count ? a_(c0 + l, n) : 0.0f;
        x_buf[n * C + l] = l < count && given(args_.initial_state) ? args_.initial_state(seq, c0 + l, n) : 0.0f;
      }
    alignas(64) float bias_lanes[C] = {}, d_lanes[C] = {};
    for (Index l = 0; l < count; ++l) {
      if (given(args_.delta_bias)) bias_lanes[l] = args_.delta_bias(c0 + l);
      if (given(args_.d)) d_lanes[l] = args_.d(c0 + l);
    }

    for (Index t0 = begin; t0 < end; t0 += T) {
      const Index tokens = std::min(T, end - t0);
      stage(u_, bi, t0, tokens, c0, count, u_buf);
      stage(delta_, bi, t0, tokens, c0, count, dt_buf);
      for (Index t = 0; t < tokens; ++t)
        for (Index v = 0; v < vectors * W; v += W) {
          const Index at = t * C + v;
          V dt = Ops::load(dt_buf + at) + Ops::load(bias_lanes + v);
          if (softplus_) dt = softplus(dt);
          Ops::store(dt_buf + at, dt);
          Ops::store(du_buf + at, dt * Ops::load(u_buf + at));
          Ops::store(y_buf + at, Ops::zero());
        }
      const float* b_row = b_.at(bi, t0, group, 0);
      const float* c_row = c_.at(bi, t0, group, 0);
      for (Index v = 0; v < vectors * W; v += W) {
        const Lanes lanes{dt_buf + v, du_buf + v, y_buf + v, a_buf + v, x_buf + v};
        Index n = 0;
        for (; n + 4 <= n_state; n += 4) scan_states<4>(n, tokens, b_row, c_row, lanes);
        if (n + 2 <= n_state) scan_states<2>(n, tokens, b_row, c_row, lanes), n += 2;
        if (n < n_state) scan_states<1>(n, tokens, b_row, c_row, lanes);
      }

      const bool gated = given(args_.z);
      if (gated) stage(args_.z, bi, t0, tokens, c0, count, z_buf);
      for (Index t = 0; t < tokens; ++t)
        for (Index v = 0; v < vectors * W; v += W) {
          const Index at = t * C + v;
          V y = Ops::fma(Ops::load(d_lanes + v), Ops::load(u_buf + at), Ops::load(y_buf + at));
          if (gated) y = y * silu(Ops::load(z_buf + at));
          write_lanes(bi, t0 + t, c0 + v, std::min(W, count - v), y);
        }
    }
    if (given(args_.final_state))
      for (Index l = 0; l < count; ++l)
        for (Index n = 0; n < n_state; ++n) args_.final_state(seq, c0 + l, n) = x_buf[n * C + l];
  }

 private:
  // One vector of channels within the staged (T, C) and (d_state, C) buffers.
  struct Lanes {
    const float* dt;
    const float* du;
    float* y;
    const float* a;
    float* x;
  };

  // Copies (tokens, count) channels of x into (T, C) lanes, zero-padding the missing channels.
  static void stage(const View<const float, 3>& x, Index bi, Index t0, Index tokens, Index c0, Index count,
                    float* buf) {
    const Index stride = x.stride(2);
    const Index whole = stride == 1 ? count / W * W : 0;  // channels copied as whole vectors
    for (Index t = 0; t < tokens; ++t) {
      const float* row = x.at(bi, t0 + t, c0);
      float* lanes = buf + t * C;
      for (Index l = 0; l < whole; l += W) Ops::store(lanes + l, Ops::load(row + l));
      for (Index l = whole; l < C; ++l) lanes[l] = l < count ? row[l * stride] : 0.0f;
    }
  }

  // Writes the first `count` lanes of y to out(bi, t, c0 ...).
  void write_lanes(Index bi, Index t, Index c0, Index count, const V& y) const {
    float* row = out_.at(bi, t, c0);
    const Index stride = out_.stride(2);
    if (count == W && stride == 1) {
      Ops::store(row, y);
      return;
    }
    alignas(64) float lanes[W];
    Ops::store(lanes, y);
    for (Index l = 0; l < count; ++l) row[l * stride] = lanes[l];
  }

  // States [n0, n0 + S) over `tokens` staged tokens, the states held in registers.
  template <int S>
  void scan_states(Index n0, Index tokens, const float* b_row, const float* c_row, const Lanes& lanes) const {
    V a[S], x[S];
#pragma GCC unroll 8
    for (int k = 0; k < S; ++k) {
      a[k] = Ops::load(lanes.a + (n0 + k) * C);
      x[k] = Ops::load(lanes.x + (n0 + k) * C);
    }
    const Index b_step = b_.stride(1), c_step = c_.stride(1), b_n = b_.stride(3), c_n = c_.stride(3);
    for (Index t = 0; t < tokens; ++t) {
      const V dt = Ops::load(lanes.dt + t * C), du = Ops::load(lanes.du + t * C);
      const float* bt = b_row + t * b_step + n0 * b_n;
      const float* ct = c_row + t * c_step + n0 * c_n;
      V y = Ops::load(lanes.y + t * C);
#pragma GCC unroll 8
      for (int k = 0; k < S; ++k) {
        x[k] = Ops::fma(du, Ops::broadcast(bt[k * b_n]), exp_approx(dt * a[k]) * x[k]);
        y = Ops::fma(x[k], Ops::broadcast(ct[k * c_n]), y);
      }
      Ops::store(lanes.y + t * C, y);
    }
#pragma GCC unroll 8
    for (int k = 0; k < S; ++k) Ops::store(lanes.x + (n0 + k) * C, x[k]);
  }

  View<const float, 3> u_, delta_;
  View<const float, 2> a_;
  View<const float, 4> b_, c_;
  View<float, 3> out_;
  const Mamba::Args& args_;
  MambaShape shape_;
  bool softplus_;
  float* scratch_;
  Index blocks_per_group_ = 1;
};

}  // namespace detail

template <class Backend>
class Attention<Mamba, Backend> {
  using V = vector_t<Backend>;
  using Kernel = detail::MambaKernel<V>;

 public:
  using Options = Mamba::Options;
  using Args = Mamba::Args;
  using StepArgs = Mamba::StepArgs;

  explicit Attention(Options options = {}, Backend backend = {}) : options_(options), backend_(backend) {}

  std::string name() const { return "mamba/" + Backend::name(); }
  const Options& options() const { return options_; }

  // FLOPs per (token, channel, state): delta·A, exp(...)·x, + du·B (2), + x·C (2) = 6, exp not
  // counted; bytes: u, delta, z, out once per (token, channel), B and C once per (token, group).
  Cost cost(const View<const float, 3>& u, const View<const float, 3>& delta, const View<const float, 2>& a,
            const View<const float, 4>& b, const View<const float, 4>& c, const Args& args = {}) const {
    const detail::MambaShape s = shape_of(u, delta, a, b, c, nullptr, args);
    const double tokens = static_cast<double>(s.batch * s.len);
    Cost cost;
    cost.flops = 6.0 * tokens * static_cast<double>(s.d_inner * s.d_state);
    const double streams = 3.0 + (detail::given(args.z) ? 1.0 : 0.0);
    cost.bytes = sizeof(float) * (tokens * (streams * s.d_inner + 2.0 * s.groups * s.d_state) +
                                  static_cast<double>(s.d_inner * s.d_state));
    return cost;
  }
  std::size_t workspace_bytes(const View<const float, 3>& u, const View<const float, 3>& delta,
                              const View<const float, 2>& a, const View<const float, 4>& b,
                              const View<const float, 4>& c, const Args& args = {}) const {
    return workspace_of(shape_of(u, delta, a, b, c, nullptr, args));
  }

  // u, delta (batch, L, d_inner); a (d_inner, d_state); b, c (batch, L, groups, d_state)
  //   -> out (batch, L, d_inner). Sequences: the batch entries, or args.cu_seqlens over L.
  void operator()(const View<const float, 3>& u, const View<const float, 3>& delta, const View<const float, 2>& a,
                  const View<const float, 4>& b, const View<const float, 4>& c, const View<float, 3>& out,
                  const Args& args = {}) const {
    const detail::MambaShape shape = shape_of(u, delta, a, b, c, &out, args);
    const std::size_t bytes = workspace_of(shape);
    if (bytes == 0) return;
    const detail::ScopedWorkspace workspace(args.workspace, bytes);
    const Kernel kernel(u, delta, a, b, c, out, args, shape, options_.delta_softplus,
                        static_cast<float*>(workspace.data()));
    backend_.parallel_for(kernel.items(), [&](Index item, int slot) { kernel.run_item(item, slot); });
  }

  // Decode step on a caller-held state, in place: u, delta (batch, d_inner); b, c (batch, groups,
  // d_state); state (batch, d_inner, d_state) -> out (batch, d_inner). Equals the scan of one token
  // with initial and final state `state` (so its errors name it args.initial_state).
  void step(const View<const float, 2>& u, const View<const float, 2>& delta, const View<const float, 2>& a,
            const View<const float, 3>& b, const View<const float, 3>& c, const View<float, 3>& state,
            const View<float, 2>& out, const StepArgs& step_args = {}) const {
    check_strided_view(u, "u");
    check_strided_view(b, "B");
    check_strided_view(c, "C");
    check_strided_view(out, "out");
    check_strided_view(step_args.z, "args.z");
    Args args;
    args.d = step_args.d;
    args.z = token_axis(step_args.z);
    args.delta_bias = step_args.delta_bias;
    args.initial_state = state;
    args.final_state = state;
    args.workspace = step_args.workspace;
    (*this)(token_axis(u), token_axis(delta), a, token_axis(b), token_axis(c), token_axis(out), args);
  }

 private:
  // (batch, rest...) -> (batch, 1, rest...)
  template <class T>
  static View<T, 3> token_axis(const View<T, 2>& x) {
    return View<T, 3>(x.data(), {x.extent(0), 1, x.extent(1)}, {x.stride(0), 0, x.stride(1)});
  }
  template <class T>
  static View<T, 4> token_axis(const View<T, 3>& x) {
    return View<T, 4>(x.data(), {x.extent(0), 1, x.extent(1), x.extent(2)}, {x.stride(0), 0, x.stride(1), x.stride(2)});
  }

  static detail::MambaShape shape_of(const View<const float, 3>& u, const View<const float, 3>& delta,
                                     const View<const float, 2>& a, const View<const float, 4>& b,
                                     const View<const float, 4>& c, const View<float, 3>* out, const Args& args) {
    using detail::check_extents;
    check_strided_view(u, "u");
    detail::MambaShape s;
    s.batch = u.extent(0);
    s.len = u.extent(1);
    s.d_inner = u.extent(2);
    ATTNKIT_CHECK(s.d_inner >= 1, "u: d_inner ", s.d_inner, ", expected >= 1");
    const std::array<Index, 3> tokens{s.batch, s.len, s.d_inner};
    const std::array<const char*, 3> token_axes{"batch", "L", "d_inner"};
    check_extents(delta, "delta", tokens, token_axes);
    check_strided_view(a, "A");
    s.d_state = a.extent(1);
    ATTNKIT_CHECK(a.extent(0) == s.d_inner, "A: d_inner ", a.extent(0), ", expected ", s.d_inner, " (u's d_inner)");
    ATTNKIT_CHECK(s.d_state >= 1, "A: d_state ", s.d_state, ", expected >= 1");
    detail::check_finite(a, "A");
    check_strided_view(b, "B");
    s.groups = b.extent(2);
    ATTNKIT_CHECK(s.groups >= 1 && s.d_inner % s.groups == 0, "B: groups ", s.groups,
                  ", expected a divisor of d_inner ", s.d_inner);
    const std::array<Index, 4> bc{s.batch, s.len, s.groups, s.d_state};
    const std::array<const char*, 4> bc_axes{"batch", "L", "groups", "d_state"};
    check_extents(b, "B", bc, bc_axes);
    check_extents(c, "C", bc, bc_axes);
    if (out != nullptr) check_extents(*out, "out", tokens, token_axes);
    const std::array<Index, 1> channels{s.d_inner};
    const std::array<const char*, 1> channel_axes{"d_inner"};
    if (detail::given(args.d)) {
      check_extents(args.d, "args.D", channels, channel_axes);
      detail::check_finite(args.d, "args.D");
    }
    if (detail::given(args.delta_bias)) {
      check_extents(args.delta_bias, "args.delta_bias", channels, channel_axes);
      detail::check_finite(args.delta_bias, "args.delta_bias");
    }
    if (detail::given(args.z)) check_extents(args.z, "args.z", tokens, token_axes);
    s.sequences = s.batch;
    if (!args.cu_seqlens.empty()) {
      ATTNKIT_CHECK(s.batch == 1, "args.cu_seqlens: given with batch ", s.batch,
                    ", expected batch 1 (sequences packed along L)");
      detail::check_cu_seqlens(args.cu_seqlens, s.len, "args.cu_seqlens");
      s.sequences = static_cast<Index>(args.cu_seqlens.size()) - 1;
    }
    const std::array<Index, 3> states{s.sequences, s.d_inner, s.d_state};
    const std::array<const char*, 3> state_axes{"sequences", "d_inner", "d_state"};
    if (detail::given(args.initial_state)) check_extents(args.initial_state, "args.initial_state", states, state_axes);
    if (detail::given(args.final_state)) check_extents(args.final_state, "args.final_state", states, state_axes);
    return s;
  }

  std::size_t workspace_of(const detail::MambaShape& s) const {
    if (s.sequences == 0) return 0;
    return sizeof(float) * Kernel::scratch_floats(s) * static_cast<std::size_t>(backend_.threads());
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
