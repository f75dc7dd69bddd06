// Online softmax over key blocks (FlashAttention): each query row keeps a running max and sum;
// a block's raw scores become probabilities in place, and the row's output accumulator is
// rescaled only when the running max grows. Also the finalisation (divide by the sum, log-sum-exp
// out) and the log-sum-exp merge of partial results over key splits.
#pragma once

#include <cmath>
#include <limits>

#include "attnkit/backend/exp.hpp"
#include "attnkit/backend/vec.hpp"
#include "attnkit/core/view.hpp"

namespace attnkit::tile {

inline constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Running state of one query row, in the scaled-logit domain.
struct SoftmaxRow {
  float max = kNegInf;  // max of scale * score so far
  float sum = 0.0f;     // Σ exp(scale * score - max) so far
};

// s (cols): raw scores of one row for one key block, masked entries -inf, cols a multiple of the
// vector width. Overwrites s with exp(scale * s - max') and folds the block into `row`. Returns
// the factor the row's accumulator must be multiplied by (1 when the max did not grow).
template <class V>
inline float softmax_block_row(float* s, Index cols, float scale, SoftmaxRow& row) {
  using Ops = VecOps<V>;
  constexpr int W = Ops::width;
  V block_max = Ops::broadcast(kNegInf);
  for (Index j = 0; j < cols; j += W) block_max = Ops::max(block_max, Ops::load(s + j));
  const float new_max = std::max(row.max, scale * Ops::reduce_max(block_max));
  if (new_max == kNegInf) {  // every key so far masked: the block contributes nothing
    for (Index j = 0; j < cols; j += W) Ops::store(s + j, Ops::zero());
    return 1.0f;
  }
  float rescale = 1.0f;
  if (new_max > row.max) {
    rescale = row.sum == 0.0f ? 1.0f : std::exp(row.max - new_max);
    row.sum *= rescale;
    row.max = new_max;
  }
  const V scale_v = Ops::broadcast(scale);
  const V shift = Ops::broadcast(-new_max);
  V sum = Ops::zero();
  for (Index j = 0; j < cols; j += W) {
    const V p = exp_approx(Ops::fma(Ops::load(s + j), scale_v, shift));
    Ops::store(s + j, p);
    sum = sum + p;
  }
  row.sum += Ops::sum(sum);
  return rescale;
}

// x (n) *= factor.
template <class V>
inline void scale_row(float* x, Index n, float factor) {
  using Ops = VecOps<V>;
  constexpr int W = Ops::width;
  const V f = Ops::broadcast(factor);
  Index i = 0;
  for (; i + W <= n; i += W) Ops::store(x + i, Ops::load(x + i) * f);
  for (; i < n; ++i) x[i] *= factor;
}

// out (n) = acc / row.sum, or zeros for a row that saw no key. Returns the row's log-sum-exp
// (-inf for a row that saw no key).
template <class V>
inline float finalize_row(const float* acc, Index n, const SoftmaxRow& row, float* out) {
  using Ops = VecOps<V>;
  constexpr int W = Ops::width;
  const float inv = row.sum > 0.0f ? 1.0f / row.sum : 0.0f;
  const V inv_v = Ops::broadcast(inv);
  Index i = 0;
  for (; i + W <= n; i += W) Ops::store(out + i, Ops::load(acc + i) * inv_v);
  for (; i < n; ++i) out[i] = acc[i] * inv;
  return row.sum > 0.0f ? row.max + std::log(row.sum) : kNegInf;
}

// Merges the unnormalised partial results of one row over `parts` key splits, in split order:
// part p has accumulator acc + p * acc_stride (n) and state rows[p * rows_stride]. Writes the
// normalised row to out (zeros when no split saw a key) and returns its log-sum-exp.
template <class V>
inline float merge_partial_rows(const float* acc, Index acc_stride, const SoftmaxRow* rows, Index rows_stride,
                                Index parts, Index n, float* out) {
  SoftmaxRow total;
  for (Index p = 0; p < parts; ++p) total.max = std::max(total.max, rows[p * rows_stride].max);
  for (Index i = 0; i < n; ++i) out[i] = 0.0f;
  if (total.max == kNegInf) return kNegInf;
  for (Index p = 0; p < parts; ++p) {
    const SoftmaxRow& part = rows[p * rows_stride];
    if (part.sum == 0.0f) continue;
    const float weight = std::exp(part.max - total.max);
    total.sum += part.sum * weight;
    const float* part_acc = acc + p * acc_stride;
    for (Index i = 0; i < n; ++i) out[i] += weight * part_acc[i];
  }
  scale_row<V>(out, n, 1.0f / total.sum);
  return total.max + std::log(total.sum);
}

}  // namespace attnkit::tile
