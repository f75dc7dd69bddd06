// Overflow-checked size arithmetic: every product of extents, strides and workspace sizes goes
// through these (or through check_strided_view / check_problem_size, core/shape.hpp), so a shape
// too large for the index types is an attnkit::Error naming what overflowed, never signed
// overflow or a wrapped allocation size. For Index (int64) and std::size_t operands.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "attnkit/core/error.hpp"

namespace attnkit::detail {

template <class T>
concept SizeType = std::is_same_v<T, std::int64_t> || std::is_same_v<T, std::size_t>;

template <SizeType T>
constexpr const char* size_type_name() {
  return std::is_signed_v<T> ? "int64" : "size_t";
}

template <SizeType T>
T checked_mul(T a, T b, const char* what) {
  T product{};
  if (__builtin_mul_overflow(a, b, &product)) fail(what, " overflows ", size_type_name<T>(), " (", a, " x ", b, ")");
  return product;
}

template <SizeType T>
T checked_add(T a, T b, const char* what) {
  T sum{};
  if (__builtin_add_overflow(a, b, &sum)) fail(what, " overflows ", size_type_name<T>(), " (", a, " + ", b, ")");
  return sum;
}

}  // namespace attnkit::detail
