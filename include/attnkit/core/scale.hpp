// The softmax scale of the exact mechanisms (Dense, BlockSparse, XAttention, Combiner,
// ProbSparse): Options::scale is absent (1 / sqrt(head_dim)) or finite and > 0.
// Not here: how a kernel applies it (kernel/, tile/).
#pragma once

#include <cmath>
#include <optional>

#include "attnkit/core/error.hpp"
#include "attnkit/core/view.hpp"

namespace attnkit::detail {

// Options::scale of an exact mechanism: absent, or finite and > 0.
inline void check_scale_option(const std::optional<float>& scale) {
  if (scale)
    ATTNKIT_CHECK(std::isfinite(*scale) && *scale > 0.0f, "options.scale is ", *scale, ", expected a finite value > 0");
}

// The scale a call runs with: the option, or 1 / sqrt(head_dim).
inline float scale_or_default(const std::optional<float>& scale, Index head_dim) {
  return scale.value_or(1.0f / std::sqrt(static_cast<float>(head_dim)));
}

}  // namespace attnkit::detail
