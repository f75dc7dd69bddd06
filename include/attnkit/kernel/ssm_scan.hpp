// The Mamba-1 selective scan kernel (mechanism/mamba.hpp): sequential in L, parallel over
// (sequence, channel block). A work item is a block of kMambaBlockChannels channels of one group
// of one sequence (whole cache lines of each token row). Per chunk of kMambaTokenChunk tokens it
// stages delta (bias, softplus) and delta·u, then runs the recurrence vector by vector of
// channels over register-held groups of states with exp(delta A) from exp_approx, and applies D
// and the silu gate on the way out. Work items never share data, so OpenMP<Simd> gives Simd's
// bits at any thread count.
//   MambaPlan        work split and buffer extents, a function of the shape only.
//   MambaScratch     one thread's scratch (carve: the only description of its layout).
//   MambaKernel      runs the items.
// Not here: options and validation (mechanism/mamba.hpp), the reference (reference/mamba.hpp).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>

#include "attnkit/backend/exp.hpp"
#include "attnkit/backend/vec.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/core/workspace_layout.hpp"
#include "attnkit/kernel/ssm_common.hpp"

namespace attnkit::detail {

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

// The optional inputs of a scan, copied from the front door's Args; an empty view: not given.
struct MambaScanParams {
  View<const float, 1> d{};                    // (d_inner)
  View<const float, 3> z{};                    // (batch, L, d_inner)
  View<const float, 1> delta_bias{};           // (d_inner)
  View<const float, 3> initial_state{};        // (sequences, d_inner, d_state)
  View<float, 3> final_state{};                // (sequences, d_inner, d_state)
  std::span<const std::int32_t> cu_seqlens{};  // packed sequences along L of batch entry 0
  bool delta_softplus = false;
};

// Work split and buffer extents of one scan; a function of the shape only.
struct MambaPlan {
  MambaShape shape{};
  Index channels = kMambaBlockChannels;  // C: channels per work item (whole vectors)
  Index tokens = kMambaTokenChunk;       // T: tokens staged per pass
  Index blocks_per_group = 1;            // ceil(group channels / C)
  Index items = 0;                       // sequences * groups * blocks_per_group
  std::size_t scratch_bytes = 0;         // per thread: MambaScratch::carve
};

// One thread's scratch.
struct MambaScratch {
  float* u = nullptr;   // (T, C) u
  float* dt = nullptr;  // (T, C) delta'
  float* du = nullptr;  // (T, C) delta' · u
  float* y = nullptr;   // (T, C) Σ_n x C
  float* z = nullptr;   // (T, C) gate
  float* a = nullptr;   // (d_state, C) A transposed
  float* x = nullptr;   // (d_state, C) state

  static MambaScratch carve(Arena& arena, const MambaPlan& plan) {
    const Index tc = plan.tokens * plan.channels, nc = plan.shape.d_state * plan.channels;
    MambaScratch b;
    b.u = arena.take<float>(tc);
    b.dt = arena.take<float>(tc);
    b.du = arena.take<float>(tc);
    b.y = arena.take<float>(tc);
    b.z = arena.take<float>(tc);
    b.a = arena.take<float>(nc);
    b.x = arena.take<float>(nc);
    return b;
  }
};

inline MambaPlan make_mamba_plan(const MambaShape& shape) {
  MambaPlan plan;
  plan.shape = shape;
  plan.blocks_per_group = (shape.group_channels() + plan.channels - 1) / plan.channels;
  plan.items = shape.sequences * shape.groups * plan.blocks_per_group;
  plan.scratch_bytes = scratch_bytes_of<MambaScratch>(plan);
  return plan;
}

template <class V>
class MambaKernel {
  using Ops = VecOps<V>;
  static constexpr Index W = Ops::width;
  static constexpr Index C = kMambaBlockChannels;
  static constexpr Index T = kMambaTokenChunk;
  static_assert(C % W == 0, "a channel block holds whole vectors");

 public:
  MambaKernel(const View<const float, 3>& u, const View<const float, 3>& delta, const View<const float, 2>& a,
              const View<const float, 4>& b, const View<const float, 4>& c, const View<float, 3>& out,
              const MambaScanParams& params, const MambaPlan& plan, void* workspace, int slots)
      : u_(u),
        delta_(delta),
        a_(a),
        b_(b),
        c_(c),
        out_(out),
        args_(params),
        shape_(plan.shape),
        plan_(plan),
        softplus_(params.delta_softplus),
        blocks_per_group_(plan.blocks_per_group),
        arena_(workspace, workspace_bytes_of<ThreadSlots>(plan, slots)) {
    ATTNKIT_CHECK(plan.channels == C && plan.tokens == T, "mamba kernel: plan made for ", plan.channels, " x ",
                  plan.tokens, ", kernel runs ", C, " x ", T, " (internal error)");
    scratch_ = ThreadSlots::carve(arena_, plan, slots).scratch;
  }

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

    Arena arena = thread_slot(scratch_, plan_, slot);
    const MambaScratch sc = MambaScratch::carve(arena, plan_);
    float* u_buf = sc.u;    // (T, C) u
    float* dt_buf = sc.dt;  // (T, C) delta'
    float* du_buf = sc.du;  // (T, C) delta' · u
    float* y_buf = sc.y;    // (T, C) Σ_n x C
    float* z_buf = sc.z;    // (T, C) gate
    float* a_buf = sc.a;    // (d_state, C) A transposed
    float* x_buf = sc.x;    // (d_state, C) state

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
  MambaScanParams args_;
  MambaShape shape_;
  MambaPlan plan_;
  bool softplus_;
  Index blocks_per_group_ = 1;
  Arena arena_;  // the whole workspace; its guards (sanitize builds) are checked when the kernel ends
  std::byte* scratch_ = nullptr;
};

}  // namespace attnkit::detail
