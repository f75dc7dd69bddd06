// Naive twin of Attention<BlockSparse>: the block mask expanded to an explicit element mask and
// handed to reference::masked. Query i and key j are allowed iff block (i / block, j / block) is
// listed for the (batch, out head), and, when causal, j <= i + kv_len - q_len.
#pragma once

#include <vector>

#include "attnkit/mechanism/block_sparse.hpp"
#include "attnkit/reference/masked.hpp"

namespace attnkit::reference {

// The element mask of a block mask: a dense table of its blocks.
class BlockElements {
 public:
  BlockElements(const BlockMask& mask, Index block, Index q_len, Index kv_len, bool causal)
      : mask_(mask), block_(block), q_len_(q_len), kv_len_(kv_len), causal_(causal) {
    listed_.assign(static_cast<std::size_t>(mask.batch * mask.heads * mask.q_blocks * mask.kv_blocks), false);
    for (Index b = 0; b < mask.batch; ++b)
      for (Index h = 0; h < mask.heads; ++h)
        for (Index qb = 0; qb < mask.q_blocks; ++qb)
          for (const std::int32_t kb : mask.blocks(b, h, qb)) listed_[mask.row(b, h, qb) * mask.kv_blocks + kb] = true;
  }
  bool operator()(Index b, Index o, Index i, Index j) const {
    if (causal_ && j > i + kv_len_ - q_len_) return false;
    return listed_[mask_.row(b, o, i / block_) * mask_.kv_blocks + j / block_];
  }

 private:
  const BlockMask& mask_;
  Index block_, q_len_, kv_len_;
  bool causal_;
  std::vector<bool> listed_;
};

// q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv), mask -> out (B, Lq, Ho, Dv).
template <class Acc>
void block_sparse(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                  const BlockMask& mask, const View<Acc, 4>& out, Index block, bool causal) {
  masked<Acc>(q, k, v, out, BlockElements(mask, block, q.extent(1), k.extent(1), causal));
}

}  // namespace attnkit::reference
