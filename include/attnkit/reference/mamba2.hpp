// Naive twin of Attention<Mamba2>: the Mamba-2 state-space model in its plain recurrent form
// (the semantics of state-spaces/mamba's mamba_chunk_scan_combined; ssd_minimal_discrete is the
// case dt = 1 with x and A pre-multiplied by dt), accumulating in Acc (double for the reference;
// float gives the "straightforward float implementation" of the tests' tolerance rule). No SIMD,
// no threads, no chunks.
//   dt'_t = softplus(dt_t[h] + dt_bias[h]) (softplus only when asked)
//   H_t = exp(dt'_t A[h]) H_{t-1} + dt'_t x_t[h] ⊗ B_t[g(h)]      H: (head_dim p, d_state n)
//   y_t[h] = H_t C_t[g(h)] + D[h] x_t[h];   out_t[h] = y_t[h] · silu(z_t[h])
// with group g(h) = h / (heads / groups) and H_{-1} the initial state (zeros when none).
// Not here: the chunked (SSD) and recurrent kernels (mechanism/mamba2.hpp).
#pragma once

#include <cmath>
#include <vector>

#include "attnkit/core/view.hpp"
#include "attnkit/reference/mamba.hpp"

namespace attnkit::reference {

struct Mamba2Inputs {
  View<const float, 4> x;                // (batch, L, heads, p)
  View<const float, 3> dt;               // (batch, L, heads)
  View<const float, 1> a;                // (heads)
  View<const float, 4> b;                // (batch, L, groups, n)
  View<const float, 4> c;                // (batch, L, groups, n)
  View<const float, 1> d{};              // (heads) or empty
  View<const float, 4> z{};              // (batch, L, heads, p) or empty
  View<const float, 1> dt_bias{};        // (heads) or empty
  View<const float, 4> initial_state{};  // (batch, heads, p, n) or empty
  bool dt_softplus = false;
};

// out (batch, L, heads, p); final_state (batch, heads, p, n) may be empty.
template <class Acc>
void mamba2(const Mamba2Inputs& in, const View<Acc, 4>& out, const View<Acc, 4>& final_state) {
  const Index batch = in.x.extent(0), len = in.x.extent(1), heads = in.x.extent(2), p = in.x.extent(3);
  const Index groups = in.b.extent(2), n = in.b.extent(3);
  std::vector<Acc> h_state(static_cast<std::size_t>(p * n));
  for (Index bi = 0; bi < batch; ++bi)
    for (Index h = 0; h < heads; ++h) {
      const Index g = h / (heads / groups);
      for (Index i = 0; i < p; ++i)
        for (Index k = 0; k < n; ++k)
          h_state[i * n + k] = in.initial_state.data() != nullptr ? Acc(in.initial_state(bi, h, i, k)) : Acc(0);
      for (Index t = 0; t < len; ++t) {
        Acc dt = static_cast<Acc>(in.dt(bi, t, h));
        if (in.dt_bias.data() != nullptr) dt += static_cast<Acc>(in.dt_bias(h));
        if (in.dt_softplus) dt = softplus(dt);
        const Acc decay = std::exp(dt * static_cast<Acc>(in.a(h)));
        for (Index i = 0; i < p; ++i) {
          const Acc x = static_cast<Acc>(in.x(bi, t, h, i));
          Acc y = 0;
          for (Index k = 0; k < n; ++k) {
            Acc& s = h_state[i * n + k];
            s = decay * s + dt * x * static_cast<Acc>(in.b(bi, t, g, k));
            y += s * static_cast<Acc>(in.c(bi, t, g, k));
          }
          if (in.d.data() != nullptr) y += static_cast<Acc>(in.d(h)) * x;
          if (in.z.data() != nullptr) y *= silu(static_cast<Acc>(in.z(bi, t, h, i)));
          out(bi, t, h, i) = y;
        }
      }
      if (final_state.data() != nullptr)
        for (Index i = 0; i < p; ++i)
          for (Index k = 0; k < n; ++k) final_state(bi, h, i, k) = h_state[i * n + k];
    }
}

}  // namespace attnkit::reference
