// Symmetric int8 K / V with one float scale per (batch, token, kv head) row:
//   QuantizedView  values (batch, seq, kv_heads, dim) int8 and scales (batch, seq, kv_heads);
//                  element d of a row stands for the float product scale * values[d]
//   quantize_kv    float rows to that form (max-abs scaling, round to nearest)
//   dequantize     the value an element stands for, as every kernel and twin computes it
// The kernels read a key block's rows dequantized into scratch, then run the float code.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "attnkit/core/error.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"

namespace attnkit {

struct QuantizedView {
  View<const std::int8_t, 4> values{};
  View<const float, 3> scales{};
};

// The float an int8 element with its row's scale stands for: one float multiply.
constexpr float dequantize(float scale, std::int8_t value) { return scale * static_cast<float>(value); }

namespace detail {
// Checks a quantized K or V: its values view as any K / V view, its scales (batch, seq, heads)
// with non-negative strides.
inline void check_quantized(const QuantizedView& x, const char* name, const char* scales_name) {
  check_view(x.values, name);
  check_strided_view(x.scales, scales_name);
  for (int axis = 0; axis < 3; ++axis)
    ATTNKIT_CHECK(x.scales.extent(axis) == x.values.extent(axis), scales_name, ": extent ", axis, " is ",
                  x.scales.extent(axis), ", expected ", x.values.extent(axis), " (", name, "'s batch, seq, heads)");
}
}  // namespace detail

// Quantizes x (batch, seq, heads, dim) row by row: scale = max |x| / 127 (0 for a row of zeros),
// values = x / scale rounded to nearest (ties away from zero), clamped to [-127, 127]. A row
// with a NaN or an infinity gets a NaN scale (its values are 0), so attention over it is NaN as
// over the float row. values and scales have x's shape (scales without dim) and may not overlap x.
inline void quantize_kv(const View<const float, 4>& x, const View<std::int8_t, 4>& values,
                        const View<float, 3>& scales) {
  check_view(x, "x");
  check_strided_view(values, "values");
  check_strided_view(scales, "scales");
  for (int axis = 0; axis < 4; ++axis)
    ATTNKIT_CHECK(values.extent(axis) == x.extent(axis), "values: extent ", axis, " is ", values.extent(axis),
                  ", expected ", x.extent(axis), " (x's shape)");
  for (int axis = 0; axis < 3; ++axis)
    ATTNKIT_CHECK(scales.extent(axis) == x.extent(axis), "scales: extent ", axis, " is ", scales.extent(axis),
                  ", expected ", x.extent(axis), " (x's batch, seq, heads)");
  const MemoryRange x_memory = memory_range(x, "x");
  check_output_view(values, "values", {x_memory});
  check_output_view(scales, "scales", {x_memory, memory_range(values, "values")});
  const Index dim = x.extent(3);
  for (Index b = 0; b < x.extent(0); ++b)
    for (Index s = 0; s < x.extent(1); ++s)
      for (Index h = 0; h < x.extent(2); ++h) {
        const float* row = x.at(b, s, h, 0);
        float largest = 0.0f;
        bool finite = true;
        for (Index d = 0; d < dim; ++d) {
          finite = finite && std::isfinite(row[d]);
          largest = std::max(largest, std::abs(row[d]));
        }
        const float scale = !finite ? std::nanf("") : largest / 127.0f;
        scales(b, s, h) = scale;
        for (Index d = 0; d < dim; ++d) {
          const float q = finite && scale > 0.0f ? std::round(row[d] / scale) : 0.0f;
          values(b, s, h, d) = static_cast<std::int8_t>(std::clamp(q, -127.0f, 127.0f));
        }
      }
}

}  // namespace attnkit
