// Naive twin of Attention<Mamba>: the Mamba-1 selective scan (S6) written from the recurrence of
// state-spaces/mamba's selective_scan_ref, accumulating in Acc (double for the reference; float
// gives the "straightforward float implementation" of the tests' tolerance rule). No SIMD, no
// threads, no staging; shares nothing with the kernel but the views.
//   delta' = softplus(delta + delta_bias) (softplus only when asked; softplus(x) = x for x > 20)
//   x_t[d, n] = exp(delta'_t[d] A[d, n]) x_{t-1}[d, n] + delta'_t[d] B_t[g(d), n] u_t[d]
//   y_t[d] = Σ_n x_t[d, n] C_t[g(d), n];   out_t[d] = (y_t[d] + D[d] u_t[d]) · silu(z_t[d])
// with group g(d) = d / (d_inner / groups), x_{-1} = the initial state (zeros when none), and the
// state reset to the initial state of the next sequence at every cu_seqlens boundary.
// Not here: the kernel (mechanism/mamba.hpp).
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "attnkit/core/view.hpp"

namespace attnkit::reference {

struct MambaInputs {
  View<const float, 3> u;                      // (batch, L, d_inner)
  View<const float, 3> delta;                  // (batch, L, d_inner)
  View<const float, 2> a;                      // (d_inner, d_state)
  View<const float, 4> b;                      // (batch, L, groups, d_state)
  View<const float, 4> c;                      // (batch, L, groups, d_state)
  View<const float, 1> d{};                    // (d_inner) or empty
  View<const float, 3> z{};                    // (batch, L, d_inner) or empty
  View<const float, 1> delta_bias{};           // (d_inner) or empty
  View<const float, 3> initial_state{};        // (sequences, d_inner, d_state) or empty
  std::span<const std::int32_t> cu_seqlens{};  // packed sequences of batch entry 0, or empty
  bool delta_softplus = false;
};

template <class Acc>
Acc softplus(Acc x) {
  return x > Acc(20) ? x : std::log1p(std::exp(x));
}

template <class Acc>
Acc silu(Acc x) {
  return x / (Acc(1) + std::exp(-x));
}

// out (batch, L, d_inner); final_state (sequences, d_inner, d_state) may be empty.
template <class Acc>
void mamba(const MambaInputs& in, const View<Acc, 3>& out, const View<Acc, 3>& final_state) {
  const Index batch = in.u.extent(0), len = in.u.extent(1), d_inner = in.u.extent(2);
  const Index d_state = in.a.extent(1), groups = in.b.extent(2);
  const Index sequences = in.cu_seqlens.empty() ? batch : static_cast<Index>(in.cu_seqlens.size()) - 1;
  std::vector<Acc> x(static_cast<std::size_t>(d_state));
  for (Index s = 0; s < sequences; ++s) {
    const Index bi = in.cu_seqlens.empty() ? s : 0;
    const Index begin = in.cu_seqlens.empty() ? 0 : in.cu_seqlens[s];
    const Index end = in.cu_seqlens.empty() ? len : in.cu_seqlens[s + 1];
    for (Index d = 0; d < d_inner; ++d) {
      const Index g = d / (d_inner / groups);
      for (Index n = 0; n < d_state; ++n)
        x[n] = in.initial_state.data() != nullptr ? static_cast<Acc>(in.initial_state(s, d, n)) : Acc(0);
      for (Index t = begin; t < end; ++t) {
        Acc dt = static_cast<Acc>(in.delta(bi, t, d));
        if (in.delta_bias.data() != nullptr) dt += static_cast<Acc>(in.delta_bias(d));
        if (in.delta_softplus) dt = softplus(dt);
        const Acc u = static_cast<Acc>(in.u(bi, t, d));
        Acc y = 0;
        for (Index n = 0; n < d_state; ++n) {
          x[n] = std::exp(dt * static_cast<Acc>(in.a(d, n))) * x[n] + dt * static_cast<Acc>(in.b(bi, t, g, n)) * u;
          y += x[n] * static_cast<Acc>(in.c(bi, t, g, n));
        }
        if (in.d.data() != nullptr) y += static_cast<Acc>(in.d(d)) * u;
        if (in.z.data() != nullptr) y *= silu(static_cast<Acc>(in.z(bi, t, d)));
        out(bi, t, d) = y;
      }
      if (final_state.data() != nullptr)
        for (Index n = 0; n < d_state; ++n) final_state(s, d, n) = x[n];
    }
  }
}

}  // namespace attnkit::reference
