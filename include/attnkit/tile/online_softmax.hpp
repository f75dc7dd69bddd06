// Online softmax over key blocks (FlashAttention): each query row keeps a running max and sum;
// a block's raw scores become probabilities in place, and the row's output accumulator is
// rescaled only when the running max grows. Also the finalisation (divide by the sum, log-sum-exp
// out) and the log-sum-exp merge of partial results over key splits.
// Non-finite scores give what softmax over the row's visible scores gives in IEEE arithmetic (the
// references, PyTorch): a NaN score makes the row NaN (the running max skips it, its exp is NaN);
// a +inf score makes it NaN (inf - inf); a -inf score among finite ones weighs 0; a row whose
// visible scores are all -inf is NaN (0 / 0). Masked entries are -inf too, so whether a row saw a
// key at all is structural: the caller says which blocks hold a visible key of the row, and only
// a row that saw none is zeros (log-sum-exp -inf).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "attnkit/backend/exp.hpp"
#include "attnkit/backend/vec.hpp"
#include "attnkit/core/view.hpp"

namespace attnkit::tile {

inline constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Running state of one query row, in the scaled-logit domain.
struct SoftmaxRow {
  float max = kNegInf;  // max of scale * score so far, NaN scores skipped (never NaN)
  float sum = 0.0f;     // Σ exp(scale * score - max) so far (NaN once a NaN score came)
  bool seen = false;    // the row has a visible key in some block so far
};

// s (cols): raw scores of one row for one key block, masked entries -inf, cols a multiple of the
// vector width; visible: the row sees a key of the block (false: every entry is masked).
// Overwrites s with exp(scale * s - max') and folds the block into `row`. Returns the factor the
// row's accumulator must be multiplied by (1 when the max did not grow).
template <class V>
inline float softmax_block_row(float* s, Index cols, float scale, SoftmaxRow& row, bool visible = true) {
  using Ops = VecOps<V>;
  constexpr int W = Ops::width;
  row.seen = row.seen || visible;
  V block_max = Ops::broadcast(kNegInf);
  for (Index j = 0; j < cols; j += W) block_max = Ops::max(block_max, Ops::load(s + j));  // skips NaN
  const float new_max = std::max(row.max, scale * Ops::reduce_max(block_max));
  if (new_max == kNegInf) {
    // Every score so far is -inf (masked or not) or NaN: -inf weighs 0, a NaN stays NaN.
    float sum = 0.0f;
    for (Index j = 0; j < cols; ++j) {
      s[j] = s[j] == kNegInf ? 0.0f : s[j];
      sum += s[j];
    }
    row.sum += sum;
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

// The log-sum-exp of a row that saw a key: NaN when its scores are NaN or all -inf (as the
// references' max + log(Σ exp(s - max))).
inline float row_lse(const SoftmaxRow& row) {
  return row.max == kNegInf ? std::numeric_limits<float>::quiet_NaN() : row.max + std::log(row.sum);
}

// out (n) = acc / row.sum, or zeros for a row that saw no key. Returns the row's log-sum-exp
// (-inf for a row that saw no key).
template <class V>
inline float finalize_row(const float* acc, Index n, const SoftmaxRow& row, float* out) {
  using Ops = VecOps<V>;
  constexpr int W = Ops::width;
  if (!row.seen) {
    for (Index i = 0; i < n; ++i) out[i] = 0.0f;
    return kNegInf;
  }
  const float inv = 1.0f / row.sum;  // sum 0 (every score -inf): acc 0 · inf = NaN
  const V inv_v = Ops::broadcast(inv);
  Index i = 0;
  for (; i + W <= n; i += W) Ops::store(out + i, Ops::load(acc + i) * inv_v);
  for (; i < n; ++i) out[i] = acc[i] * inv;
  return row_lse(row);
}

// Merges the unnormalised partial results of one row over `parts` key splits, in split order:
// part p has accumulator acc + p * acc_stride (n) and state rows[p * rows_stride]. Writes the
// normalised row to out (zeros when no split saw a key) and returns its log-sum-exp.
template <class V>
inline float merge_partial_rows(const float* acc, Index acc_stride, const SoftmaxRow* rows, Index rows_stride,
                                Index parts, Index n, float* out) {
  SoftmaxRow total;
  for (Index p = 0; p < parts; ++p) {
    total.max = std::max(total.max, rows[p * rows_stride].max);
    total.seen = total.seen || rows[p * rows_stride].seen;
  }
  for (Index i = 0; i < n; ++i) out[i] = 0.0f;
  if (!total.seen) return kNegInf;
  for (Index p = 0; p < parts; ++p) {
    const SoftmaxRow& part = rows[p * rows_stride];
    if (!part.seen) continue;
    const float weight = std::exp(part.max - total.max);  // all -inf: exp(nan), the row is NaN
    total.sum += part.sum * weight;
    const float* part_acc = acc + p * acc_stride;
    for (Index i = 0; i < n; ++i) out[i] += weight * part_acc[i];
  }
  scale_row<V>(out, n, 1.0f / total.sum);
  return row_lse(total);
}

}  // namespace attnkit::tile
