// Mamba-2 state-space duality (SSD): Attention<Mamba2, Backend>, with the recurrence of
// reference/mamba2.hpp (mamba_chunk_scan_combined semantics: scalar decay exp(dt A) per head,
// heads of dimension p, state n, B and C shared by the heads of a group).
// Layout: x, z and out (batch, L, heads, p); dt (batch, L, heads); A, D, dt_bias (heads); B and C
// (batch, L, groups, n), head h reading group h / (heads / groups); states (batch, heads, p, n).
// Any non-negative strides work. Mapping to attention: C ↔ Q, B ↔ K, dt·x ↔ V.
// Two forms, chosen by Options::form (same results within rounding; kernel/ssd.hpp):
//   kChunked   Dao & Gu's SSD algorithm over chunks of chunk_size tokens
//   kRecurrent the plain recurrence token by token.
// A work item is one (batch entry, head); items share nothing, so OpenMP<Simd> gives Simd's bits
// at any thread count for a given form.
// Non-finite inputs (README "Conventions"): NaN propagates as in the reference in both forms; an
// infinite x, B or C can be +-Inf in one form and NaN (Inf - Inf) in the other, because kChunked
// sums C·Bᵀ over the state before it sums over tokens; which elements are non-finite is the same.
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
#include "attnkit/core/workspace_layout.hpp"
#include "attnkit/kernel/ssd.hpp"
#include "attnkit/mechanism/ssm_checks.hpp"

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
    return workspace_of(make_plan(shape_of(x, dt, a, b, c, nullptr, args)));
  }

  // x (batch, L, heads, p); dt (batch, L, heads); a (heads); b, c (batch, L, groups, n)
  //   -> out (batch, L, heads, p).
  void operator()(const View<const float, 4>& x, const View<const float, 3>& dt, const View<const float, 1>& a,
                  const View<const float, 4>& b, const View<const float, 4>& c, const View<float, 4>& out,
                  const Args& args = {}) const {
    const detail::SsdPlan plan = make_plan(shape_of(x, dt, a, b, c, &out, args));
    if (plan.items == 0) return;
    const detail::ScopedWorkspace workspace(args.workspace, workspace_of(plan));
    const detail::SsdParams params{args.d,
                                   args.z,
                                   args.dt_bias,
                                   args.initial_state,
                                   args.final_state,
                                   options_.dt_softplus,
                                   options_.form == Mamba2::Form::kRecurrent};
    const Kernel kernel(x, dt, a, b, c, out, params, plan, workspace.data(), backend_.threads());
    backend_.parallel_for(plan.items, [&](Index item, int slot) { kernel.run_item(item, slot); });
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
    check_problem_size({s.batch, s.len, s.heads, s.head_dim, s.d_state},
                       "x, B (batch x L x heads x head_dim x d_state)");
    if (out != nullptr)
      detail::check_scan_outputs(*out, args.final_state, args.initial_state,
                                 {memory_range(x, "x"), memory_range(dt, "dt"), memory_range(a, "A"),
                                  memory_range(b, "B"), memory_range(c, "C"), memory_range(args.z, "args.z"),
                                  memory_range(args.d, "args.D"), memory_range(args.dt_bias, "args.dt_bias")});
    return s;
  }

  detail::SsdPlan make_plan(const detail::Mamba2Shape& shape) const {
    return detail::make_ssd_plan<V>(shape, options_.form == Mamba2::Form::kChunked ? options_.chunk_size : 1);
  }
  std::size_t workspace_of(const detail::SsdPlan& plan) const {
    return detail::workspace_bytes_of<detail::ThreadSlots>(plan, backend_.threads());
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
