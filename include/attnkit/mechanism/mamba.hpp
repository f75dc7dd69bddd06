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
// Kernel (kernel/ssm_scan.hpp): sequential in L, parallel over (sequence, channel block); work
// items never share data, so OpenMP<Simd> gives Simd's bits at any thread count.
// Non-finite values (README "Conventions"): NaN and +-Inf inputs propagate as in the reference
// (a z of -Inf gives NaN: -Inf / (1 + e^Inf) in silu). A state or exp(delta A) past FLT_MAX is
// +-Inf as in any float implementation of the recurrence (PyTorch's float32), with NaN from
// Inf · 0 and Inf - Inf where the double reference may still be finite.
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
#include "attnkit/core/workspace_layout.hpp"
#include "attnkit/kernel/ssm_scan.hpp"
#include "attnkit/mechanism/ssm_checks.hpp"

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
    return workspace_of(detail::make_mamba_plan(shape_of(u, delta, a, b, c, nullptr, args)));
  }

  // u, delta (batch, L, d_inner); a (d_inner, d_state); b, c (batch, L, groups, d_state)
  //   -> out (batch, L, d_inner). Sequences: the batch entries, or args.cu_seqlens over L.
  void operator()(const View<const float, 3>& u, const View<const float, 3>& delta, const View<const float, 2>& a,
                  const View<const float, 4>& b, const View<const float, 4>& c, const View<float, 3>& out,
                  const Args& args = {}) const {
    const detail::MambaPlan plan = detail::make_mamba_plan(shape_of(u, delta, a, b, c, &out, args));
    if (plan.items == 0) return;
    const detail::ScopedWorkspace workspace(args.workspace, workspace_of(plan));
    const detail::MambaScanParams params{args.d,           args.z,          args.delta_bias,        args.initial_state,
                                         args.final_state, args.cu_seqlens, options_.delta_softplus};
    const Kernel kernel(u, delta, a, b, c, out, params, plan, workspace.data(), backend_.threads());
    backend_.parallel_for(plan.items, [&](Index item, int slot) { kernel.run_item(item, slot); });
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
    check_problem_size({s.batch, s.len, s.d_inner, s.d_state}, "u, A (batch x L x d_inner x d_state)");
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
    if (out != nullptr)
      detail::check_scan_outputs(*out, args.final_state, args.initial_state,
                                 {memory_range(u, "u"), memory_range(delta, "delta"), memory_range(a, "A"),
                                  memory_range(b, "B"), memory_range(c, "C"), memory_range(args.z, "args.z"),
                                  memory_range(args.d, "args.D"), memory_range(args.delta_bias, "args.delta_bias")});
    return s;
  }

  std::size_t workspace_of(const detail::MambaPlan& plan) const {
    return detail::workspace_bytes_of<detail::ThreadSlots>(plan, backend_.threads());
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
