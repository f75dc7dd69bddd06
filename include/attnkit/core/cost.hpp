// Cost of one call: floating-point operations and bytes moved, as reported by cost().
// FLOP convention (design.md section 5): dense attention counts 2 per multiply-add of Q·Kᵀ and
// P·V over the visible (query, key) pairs; exp and softmax are not counted. Approximations count
// what their algorithm performs.
#pragma once

namespace attnkit {

struct Cost {
  double flops = 0;  // floating-point operations performed
  double bytes = 0;  // bytes of inputs read and outputs written once
};

}  // namespace attnkit
