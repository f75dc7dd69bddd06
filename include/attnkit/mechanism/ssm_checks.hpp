// Argument checks shared by the state-space mechanisms (mechanism/mamba.hpp, mechanism/mamba2.hpp)
// for views whose feature axis may be strided (Mamba's (batch, d_inner, L) layout).
// Not here: the scans and their activations (kernel/ssm_scan.hpp, kernel/ssd.hpp, kernel/ssm_common.hpp).
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <span>

#include "attnkit/core/error.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/kernel/ssm_common.hpp"

namespace attnkit::detail {

// check_strided_view plus exact extents; axes names the axes for the message.
template <class T, int Rank, std::size_t N>
void check_extents(const View<T, Rank>& view, const char* name, const std::array<Index, N>& expected,
                   const std::array<const char*, N>& axes) {
  static_assert(N == Rank, "one expected extent and one name per axis");
  check_strided_view(view, name);
  for (int axis = 0; axis < Rank; ++axis)
    ATTNKIT_CHECK(view.extent(axis) == expected[axis], name, ": ", axes[axis], " ", view.extent(axis), ", expected ",
                  expected[axis]);
}

// Every element of a small parameter view is finite (A, D, biases).
template <int Rank>
void check_finite(const View<const float, Rank>& view, const char* name) {
  const float* p = view.data();
  const Index rows = Rank == 1 ? 1 : view.extent(0);
  const Index cols = view.extent(Rank - 1);
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) {
      const float value = p[(Rank == 1 ? 0 : r * view.stride(0)) + c * view.stride(Rank - 1)];
      if (!std::isfinite(value)) {
        if constexpr (Rank == 1)
          fail(name, "[", c, "] is ", value, ", expected a finite real value");
        else
          fail(name, "(", r, ", ", c, ") is ", value, ", expected a finite real value");
      }
    }
}

// The outputs of a scan: out and, when given, final_state, each overlapping neither itself, the
// other nor an input (inputs: all but initial_state); final_state may be exactly initial_state (a
// decode step updates its state in place).
template <class Out, class State, class InitialState>
void check_scan_outputs(const Out& out, const State& final_state, const InitialState& initial_state,
                        std::initializer_list<MemoryRange> inputs) {
  std::array<MemoryRange, 12> ranges{};
  std::size_t count = 0;
  for (const MemoryRange& input : inputs) ranges[count++] = input;
  const MemoryRange initial = memory_range(initial_state, "args.initial_state");
  const MemoryRange final = memory_range(final_state, "args.final_state");
  ranges[count++] = initial;
  ranges[count++] = final;
  check_output_view(out, "out", std::span<const MemoryRange>(ranges.data(), count));
  if (!given(final_state)) return;
  ranges[count - 1] = memory_range(out, "out");
  if (initial.begin == final.begin && initial.end == final.end) ranges[count - 2] = MemoryRange{};
  check_output_view(final_state, "args.final_state", std::span<const MemoryRange>(ranges.data(), count));
}

// Packed sequences: offsets start at 0, never decrease and end at the token count.
inline void check_cu_seqlens(std::span<const std::int32_t> cu, Index tokens, const char* name) {
  ATTNKIT_CHECK(cu.size() >= 2, name, ": ", cu.size(), " offsets, expected sequences + 1 >= 2");
  ATTNKIT_CHECK(cu[0] == 0, name, "[0] is ", cu[0], ", expected 0");
  for (std::size_t s = 1; s < cu.size(); ++s)
    ATTNKIT_CHECK(cu[s] >= cu[s - 1], name, "[", s, "] is ", cu[s], ", expected >= ", cu[s - 1],
                  " (offsets are non-decreasing)");
  ATTNKIT_CHECK(cu.back() == tokens, name, " ends at ", cu.back(), ", expected ", tokens,
                " (tokens in the packed view)");
}

}  // namespace attnkit::detail
