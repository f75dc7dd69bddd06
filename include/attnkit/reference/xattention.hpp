// Naive twin of XAttention's scoring and selection (definitions in mechanism/xattention.hpp),
// written from the definitions with obvious loops: the antidiagonal dot products are summed
// element by element from q and k, the softmax and block sums accumulate in Acc, and selection
// picks the largest remaining block one at a time; the reference rule (kReferenceChunked) is
// written the way find_blocks_chunked builds its arrays (pre-selected mask, ranked index, shifted
// cumulative sums, index-0 fallback, clearing past the diagonal). The attention itself is then
// reference::block_sparse with the selected mask.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "attnkit/mechanism/block_sparse.hpp"
#include "attnkit/mechanism/xattention.hpp"
#include "attnkit/reference/block_sparse.hpp"

namespace attnkit::reference {

struct XAttentionOptions {
  Index stride = 8, block = 128;
  bool causal = false;
  std::optional<double> scale{};  // default 1 / sqrt(head_dim)
  XSelection selection = XSelection::kSinkDiagonalThreshold;
  Index chunk = 0;  // kReferenceChunked: query positions per chunk; 0: xattention_reference_chunk(kv_len)
};

// q (B, Lq, Hq, D), k (B, Lk, Hkv, D) -> scores (B, Ho, ceil(Lq / block), ceil(Lk / block)), flat.
template <class Acc>
std::vector<Acc> xattention_scores(const View<const float, 4>& q, const View<const float, 4>& k, XAttentionOptions o) {
  const HeadMap heads{q.extent(2), k.extent(2)};
  const Index batch = q.extent(0), q_len = q.extent(1), kv_len = k.extent(1), dim = q.extent(3), s = o.stride;
  const Index q_blocks = (q_len + o.block - 1) / o.block, kv_blocks = (kv_len + o.block - 1) / o.block;
  const Index q_strided = (q_len + s - 1) / s, kv_strided = (kv_len + s - 1) / s, rows = o.block / s;
  const Acc scale = static_cast<Acc>(o.scale.value_or(1.0 / std::sqrt(static_cast<double>(dim))) / s);
  std::vector<Acc> scores(static_cast<std::size_t>(batch * heads.out_heads() * q_blocks * kv_blocks), Acc(0));
  std::vector<Acc> logits(static_cast<std::size_t>(kv_strided));
  for (Index b = 0; b < batch; ++b)
    for (Index h = 0; h < heads.out_heads(); ++h)
      for (Index r = 0; r < q_strided; ++r) {
        Index visible = 0;
        for (Index c = 0; c < kv_strided; ++c)
          if (!o.causal || c * s <= r * s + s - 1 + kv_len - q_len) visible = c + 1;
        if (visible == 0) continue;
        Acc max = -std::numeric_limits<Acc>::infinity();
        for (Index c = 0; c < visible; ++c) {
          Acc dot = 0;
          for (Index t = 0; t < s; ++t) {
            const Index i = r * s + s - 1 - t, j = c * s + t;
            if (i >= q_len || j >= kv_len) continue;
            for (Index d = 0; d < dim; ++d)
              dot += scale * static_cast<Acc>(q(b, i, heads.q_head(h), d)) *
                     static_cast<Acc>(k(b, j, heads.kv_head(h), d));
          }
          logits[c] = dot;
          max = std::max(max, logits[c]);
        }
        Acc sum = 0;
        for (Index c = 0; c < visible; ++c) sum += logits[c] = std::exp(logits[c] - max);
        for (Index c = 0; c < visible; ++c)
          scores[((b * heads.out_heads() + h) * q_blocks + r / rows) * kv_blocks + c / rows] += logits[c] / sum;
      }
  return scores;
}

namespace detail {

// The kReferenceChunked rule on one row (kv_blocks scores): `pre` the pre-selected blocks
// (causal), `visible` the last block that may rank (causal: the diagonal).
inline std::vector<bool> reference_chunked_row(const double* row, Index kv_blocks, const std::vector<bool>& pre,
                                               Index visible, bool causal, double required) {
  std::vector<bool> mask = pre, placed = pre;
  std::vector<Index> index;    // the ranking: pre-selected blocks, then the others
  std::vector<double> ranked;  // scores of the others in ranking order
  for (Index j = 0; j < kv_blocks; ++j)
    if (pre[j]) index.push_back(j);
  while (true) {  // the largest remaining visible block, the higher index on ties
    Index best = -1;
    for (Index j = 0; j <= visible; ++j)
      if (!placed[j] && (best < 0 || row[j] >= row[best])) best = j;
    if (best < 0) break;
    placed[best] = true;
    index.push_back(best);
    ranked.push_back(row[best]);
  }
  for (Index j = 0; j < kv_blocks; ++j)  // blocks past the diagonal, cleared below
    if (!placed[j]) {
      index.push_back(j);
      ranked.push_back(row[j]);
    }
  // The values whose sums gate the positions: causal [0, pre-selected sum, ranked...], else ranked.
  std::vector<double> values;
  if (causal) {
    double pre_sum = 0;
    for (Index j = 0; j < kv_blocks; ++j)
      if (pre[j]) pre_sum += row[j];
    values = {0.0, pre_sum};
  }
  values.insert(values.end(), ranked.begin(), ranked.end());
  double before = 0;  // sum of values[0, p)
  for (std::size_t p = 0; p < index.size(); ++p) {
    mask[before < required ? index[p] : 0] = true;
    before += p < values.size() ? values[p] : 0.0;
  }
  if (causal)
    for (Index j = visible + 1; j < kv_blocks; ++j) mask[j] = false;
  return mask;
}

}  // namespace detail

// Selection from flat scores (B, H, q_blocks, kv_blocks); tau one value or one per head.
inline BlockMask xattention_select(const std::vector<double>& scores, Index batch, Index heads, Index q_len,
                                   Index kv_len, const std::vector<double>& tau, XAttentionOptions o) {
  const Index q_blocks = (q_len + o.block - 1) / o.block, kv_blocks = (kv_len + o.block - 1) / o.block;
  // The block of the last key query block qb's last row sees (bottom-right aligned), or -1.
  auto last_key = [&](Index qb) { return std::min(qb * o.block + o.block - 1, q_len - 1) + kv_len - q_len; };
  auto diagonal_of = [&](Index qb) { return std::clamp<Index>(last_key(qb) / o.block, 0, kv_blocks - 1); };
  const Index chunk_blocks = std::max<Index>((o.chunk > 0 ? o.chunk : xattention_reference_chunk(kv_len)) / o.block, 1);
  return BlockMask::from_predicate(batch, heads, q_blocks, kv_blocks, [&](Index b, Index h, Index qb, Index kb) {
    if (o.causal && last_key(qb) < 0) return false;
    const Index diagonal = diagonal_of(qb);
    const Index last = o.causal ? diagonal : kv_blocks - 1;
    if (kb > last) return false;
    const double* row = scores.data() + ((b * heads + h) * q_blocks + qb) * kv_blocks;
    double total = 0;
    for (Index j = 0; j < kv_blocks; ++j) total += row[j];
    const double required = (tau.size() == 1 ? tau[0] : tau[h]) * total;
    if (o.selection == XSelection::kReferenceChunked) {
      std::vector<bool> pre(static_cast<std::size_t>(kv_blocks), false);
      if (o.causal) {
        // The chunk's diagonal write: one 1 per row at its diagonal; it covers (and clears) the
        // sink column when the chunk's first query block has diagonal 0.
        const Index first = qb / chunk_blocks * chunk_blocks;
        pre[0] = !(last_key(first) >= 0 && diagonal_of(first) == 0);
        pre[diagonal] = true;
      }
      return static_cast<bool>(detail::reference_chunked_row(row, kv_blocks, pre, last, o.causal, required)[kb]);
    }
    std::vector<bool> kept(static_cast<std::size_t>(kv_blocks), false);
    kept[0] = kept[diagonal] = true;
    double sum = row[0] + (diagonal != 0 ? row[diagonal] : 0.0);
    while (sum < required) {  // add the largest remaining block, the lowest index on ties
      Index best = -1;
      for (Index j = 1; j <= last; ++j)
        if (!kept[j] && (best < 0 || row[j] > row[best])) best = j;
      if (best < 0) break;
      kept[best] = true;
      sum += row[best];
    }
    return static_cast<bool>(kept[kb]);
  });
}

}  // namespace attnkit::reference
