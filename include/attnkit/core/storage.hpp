// Storage types of tensors kept in reduced precision: bfloat16 and float16 (IEEE binary16). Each
// is 2 bytes, trivially copyable, explicitly constructible from float (round to nearest even,
// NaN kept as a quiet NaN with its sign) and explicitly convertible to float (exact). Kernels do
// their math in float: they read these through to_float() or VecOps<V>::load, never as numbers.
//   Storage      which element type an erased tensor holds (f32, bf16, f16)
//   ErasedView   a view whose element type is known at run time only: what crosses from a
//                mechanism into the compiled kernel variants, for Q and out, whose rows are
//                converted once per row.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "attnkit/core/view.hpp"

namespace attnkit {

namespace detail {
// float -> bfloat16 bits: the upper half of the float rounded to nearest even; NaN stays NaN
// (quiet bit set: truncation alone could turn a NaN with a low payload into infinity).
constexpr std::uint16_t bfloat16_bits(float x) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// float -> binary16 bits, round to nearest even: values at or past 65520 become infinity, values
// below the smallest normal (2^-14) become subnormals by adding 0.5f, whose exponent aligns the
// binary16 subnormal's last bit with the float's, so the float adder does the rounding.
constexpr std::uint16_t float16_bits(float x) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(x);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN
  if (a >= 0x47800000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65536 or infinity
  if (a < 0x38800000u) {                                                    // < 2^-14: subnormal or zero
    const float shifted = std::bit_cast<float>(a) + 0.5f;
    return static_cast<std::uint16_t>(sign | (std::bit_cast<std::uint32_t>(shifted) - 0x3f000000u));
  }
  // Rebias the exponent (127 -> 15) and round the 13 dropped bits to nearest even; a carry out
  // of the mantissa bumps the exponent, up to infinity for [65520, 65536).
  const std::uint32_t odd = (a >> 13) & 1u;
  return static_cast<std::uint16_t>(sign | ((a - 0x38000000u + 0xfffu + odd) >> 13));
}

// binary16 bits -> float. At run time: F16C where the build has it, else the 15 magnitude bits
// moved to a float's exponent and mantissa and multiplied by 2^112 (the bias difference), which
// is exact for normals and subnormals alike (unless the caller runs with denormals-are-zero);
// infinity and NaN get the float's all-ones exponent, a NaN its quiet bit.
constexpr float float16_value_portable(std::uint16_t h);
constexpr float float16_value(std::uint16_t h) {
  if (!std::is_constant_evaluated()) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const float magnitude = std::bit_cast<float>(static_cast<std::uint32_t>(h & 0x7fffu) << 13) * 0x1p112f;
    const std::uint32_t special = (h & 0x7c00u) != 0x7c00u ? 0u
                                  : (h & 0x3ffu) != 0      ? 0x7fc00000u
                                                           : 0x7f800000u;  // NaN made quiet
    return std::bit_cast<float>(sign | special | std::bit_cast<std::uint32_t>(magnitude));
#endif
  }
  return float16_value_portable(h);
}

constexpr float float16_value_portable(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  const std::uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1fu)  // infinity, or NaN made quiet (as F16C converts it)
    return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13) | (mantissa != 0 ? 0x00400000u : 0u));
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign != 0 ? -magnitude : magnitude;
  }
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}
}  // namespace detail

struct bfloat16 {
  std::uint16_t bits = 0;
  bfloat16() = default;
  constexpr explicit bfloat16(float x) : bits(detail::bfloat16_bits(x)) {}
  constexpr explicit operator float() const { return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16); }
  static constexpr bfloat16 from_bits(std::uint16_t b) {
    bfloat16 x;
    x.bits = b;
    return x;
  }
};

struct float16 {
  std::uint16_t bits = 0;
  float16() = default;
  constexpr explicit float16(float x) : bits(detail::float16_bits(x)) {}
  constexpr explicit operator float() const { return detail::float16_value(bits); }
  static constexpr float16 from_bits(std::uint16_t b) {
    float16 x;
    x.bits = b;
    return x;
  }
};

static_assert(sizeof(bfloat16) == 2 && std::is_trivially_copyable_v<bfloat16>);
static_assert(sizeof(float16) == 2 && std::is_trivially_copyable_v<float16>);

// The value a stored element stands for.
constexpr float to_float(float x) { return x; }
constexpr float to_float(bfloat16 x) { return static_cast<float>(x); }
constexpr float to_float(float16 x) { return static_cast<float>(x); }

// i8: symmetric int8 with a float scale per row (QuantizedView); for K and V only.
enum class Storage : std::uint8_t { f32, bf16, f16, i8 };

template <class T>
inline constexpr bool is_storage_type_v =
    std::is_same_v<T, float> || std::is_same_v<T, bfloat16> || std::is_same_v<T, float16>;
// Element types an erased view may hold: the storage types and int8 (quantized K / V values).
template <class T>
inline constexpr bool is_erasable_v = is_storage_type_v<T> || std::is_same_v<T, std::int8_t>;

template <class T>
requires is_erasable_v<std::remove_const_t<T>>
constexpr Storage storage_of() {
  using U = std::remove_const_t<T>;
  if constexpr (std::is_same_v<U, bfloat16>)
    return Storage::bf16;
  else if constexpr (std::is_same_v<U, float16>)
    return Storage::f16;
  else if constexpr (std::is_same_v<U, std::int8_t>)
    return Storage::i8;
  else
    return Storage::f32;
}

constexpr std::size_t storage_bytes(Storage s) { return s == Storage::f32 ? 4 : s == Storage::i8 ? 1 : 2; }

constexpr const char* storage_name(Storage s) {
  switch (s) {
    case Storage::bf16:
      return "bfloat16";
    case Storage::f16:
      return "float16";
    case Storage::i8:
      return "int8";
    case Storage::f32:
      break;
  }
  return "float";
}

// Calls f(T{}) with the element type of `s`, one of the storage types (not i8).
template <class F>
decltype(auto) with_storage_type(Storage s, F&& f) {
  switch (s) {
    case Storage::bf16:
      return f(bfloat16{});
    case Storage::f16:
      return f(float16{});
    case Storage::f32:
    case Storage::i8:
      break;
  }
  return f(0.0f);
}

// The same over every K / V element type, int8 included.
template <class F>
decltype(auto) with_kv_type(Storage s, F&& f) {
  if (s == Storage::i8) return f(std::int8_t{});
  return with_storage_type(s, f);
}

// A rank-Rank view of one of the storage types, the type known at run time. Element is void or
// const void.
template <class Element, int Rank>
struct ErasedView {
  Element* data = nullptr;
  std::array<Index, Rank> extents{};
  std::array<Index, Rank> strides{};
  Storage storage = Storage::f32;

  ErasedView() = default;
  template <class T>
  requires is_erasable_v<std::remove_const_t<T>> &&
      (std::is_const_v<Element> || !std::is_const_v<T>)ErasedView(const View<T, Rank>& view)  // NOLINT
      : data(view.data()), extents(view.extents()), strides(view.strides()), storage(storage_of<T>()) {}

  template <class T>
  View<std::conditional_t<std::is_const_v<Element>, const T, T>, Rank> as() const {
    using U = std::conditional_t<std::is_const_v<Element>, const T, T>;
    return View<U, Rank>(static_cast<U*>(data), extents, strides);
  }
  bool empty() const {
    for (Index e : extents)
      if (e == 0) return true;
    return false;
  }
};

namespace detail {
// dst[i] = to_float(src[i]) * scale for i < n; src holds elements of `storage`.
inline void load_row_scaled(const void* src, Storage storage, Index n, float scale, float* dst) {
  with_storage_type(storage, [&](auto zero) {
    using T = decltype(zero);
    const T* row = static_cast<const T*>(src);
    for (Index i = 0; i < n; ++i) dst[i] = to_float(row[i]) * scale;
  });
}
// dst[i] = src[i] rounded to `storage` for i < n.
inline void store_row(const float* src, Index n, void* dst, Storage storage) {
  with_storage_type(storage, [&](auto zero) {
    using T = decltype(zero);
    T* row = static_cast<T*>(dst);
    for (Index i = 0; i < n; ++i) row[i] = T(src[i]);
  });
}
}  // namespace detail

}  // namespace attnkit
