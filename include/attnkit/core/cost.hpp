// Cost of one call: floating-point operations and bytes moved, as reported by cost().
// FLOP convention (design.md section 5): dense attention counts 2 per multiply-add of Q·Kᵀ and
// P·V over the visible (query, key) pairs; exp and softmax are not counted. Approximations count
// what their algorithm performs. attention_bytes() is the byte count of a call that reads q, k, v
// and writes out once. Not here: the FLOP counts themselves (each mechanism's cost()).
#pragma once

#include <cstddef>

#include "attnkit/core/shape.hpp"

namespace attnkit {

struct Cost {
  double flops = 0;  // floating-point operations performed
  double bytes = 0;  // bytes of inputs read and outputs written once
};

namespace detail {

// Bytes of q (batch, q_len, q_heads, head_dim), k (batch, kv_len, kv_heads, head_dim),
// v (batch, kv_len, kv_heads, v_dim) read and out (batch, q_len, out_heads, v_dim) written once.
// k and v elements of kv_bytes each (a storage type's size; q and out counted as float).
inline double attention_bytes(const AttentionShape& shape, std::size_t kv_bytes = sizeof(float)) {
  const double batch = static_cast<double>(shape.batch);
  const double out_heads = static_cast<double>(shape.heads.out_heads());
  return batch * (sizeof(float) * static_cast<double>(shape.q_len) *
                      (shape.heads.q_heads * shape.head_dim + out_heads * shape.v_dim) +
                  static_cast<double>(kv_bytes) * static_cast<double>(shape.kv_len) * shape.heads.kv_heads *
                      (shape.head_dim + shape.v_dim));
}

}  // namespace detail
}  // namespace attnkit
