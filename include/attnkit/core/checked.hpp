// Overflow-checked size arithmetic: every product of extents, strides and workspace sizes goes
// through these, so a shape too large for the index types is an attnkit::Error naming what
// overflowed, never signed overflow or a wrapped allocation size.
#pragma once

#include <cstddef>
#include <cstdint>

#include "attnkit/core/error.hpp"

namespace attnkit::detail {

inline std::int64_t checked_mul(std::int64_t a, std::int64_t b, const char* what) {
  std::int64_t product = 0;
  if (__builtin_mul_overflow(a, b, &product)) fail(what, " overflows int64 (", a, " x ", b, ")");
  return product;
}
inline std::int64_t checked_add(std::int64_t a, std::int64_t b, const char* what) {
  std::int64_t sum = 0;
  if (__builtin_add_overflow(a, b, &sum)) fail(what, " overflows int64 (", a, " + ", b, ")");
  return sum;
}
inline std::size_t checked_mul(std::size_t a, std::size_t b, const char* what) {
  std::size_t product = 0;
  if (__builtin_mul_overflow(a, b, &product)) fail(what, " overflows size_t (", a, " x ", b, ")");
  return product;
}
inline std::size_t checked_add(std::size_t a, std::size_t b, const char* what) {
  std::size_t sum = 0;
  if (__builtin_add_overflow(a, b, &sum)) fail(what, " overflows size_t (", a, " + ", b, ")");
  return sum;
}

}  // namespace attnkit::detail
