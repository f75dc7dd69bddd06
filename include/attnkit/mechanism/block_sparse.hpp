// Block-sparse exact attention: Attention<BlockSparse, Backend>.
//   out = softmax(scale · Q Kᵀ + mask) V where a query of query block qb sees the keys of the key
//   blocks listed for (batch, out head, qb) in a BlockMask (blocks of Options::block positions,
//   counted from the start of q and of k), intersected with the causal mask when causal.
// The mask is CSR-like: per (batch, out head, query block) an increasing list of key blocks. It is
// per out head: under GQA each query head of a group has its own list and its own work items
// (the group's K / V blocks are read once per out head).
// Runs the dense kernel (mechanism/dense.hpp) with one work item per (batch, out head, query
// block) and a Blocks policy that visits only the listed blocks that its rows can see: blocks
// above the causal diagonal are never visited, the diagonal ones are masked inside. A row whose
// blocks are all absent is zeros. cost() counts the visible pairs of visited blocks.
// Padded inputs at full length (no per-entry lengths, no packed sequences). Storage types as for
// Dense (DenseStorage): Q and out float, bfloat16 or float16, K and V one of them; the math is float.
// Not here: how a mask is chosen (mechanism/xattention.hpp), the reference (reference/block_sparse.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "attnkit/core/cost.hpp"
#include "attnkit/core/scale.hpp"
#include "attnkit/mechanism/dense.hpp"
#include "attnkit/tile/mask.hpp"

namespace attnkit {

// Which key blocks each (batch, out head, query block) visits.
struct BlockMask {
  Index batch = 0, heads = 0, q_blocks = 0, kv_blocks = 0;
  std::vector<std::int32_t> offsets;  // (batch * heads * q_blocks + 1): row r lists columns[offsets[r], offsets[r + 1])
  std::vector<std::int32_t> columns;  // key block indices, increasing within a row

  Index row(Index b, Index h, Index qb) const { return (b * heads + h) * q_blocks + qb; }
  std::span<const std::int32_t> blocks(Index b, Index h, Index qb) const {
    const Index r = row(b, h, qb);
    return {columns.data() + offsets[r], static_cast<std::size_t>(offsets[r + 1] - offsets[r])};
  }
  // Blocks listed for one (batch, head).
  Index count(Index b, Index h) const { return offsets[row(b, h, q_blocks)] - offsets[row(b, h, 0)]; }

  // Mask with keep(b, h, qb, kb) -> bool over every block.
  template <class Keep>
  static BlockMask from_predicate(Index batch, Index heads, Index q_blocks, Index kv_blocks, Keep&& keep) {
    BlockMask m{batch, heads, q_blocks, kv_blocks, {0}, {}};
    for (Index b = 0; b < batch; ++b)
      for (Index h = 0; h < heads; ++h)
        for (Index qb = 0; qb < q_blocks; ++qb) {
          for (Index kb = 0; kb < kv_blocks; ++kb)
            if (keep(b, h, qb, kb)) m.columns.push_back(static_cast<std::int32_t>(kb));
          m.offsets.push_back(static_cast<std::int32_t>(m.columns.size()));
        }
    return m;
  }
};

// Per (batch, head), (batch * heads) values: the fraction of the blocks holding at least one
// visible (query, key) pair that the mask lists (blocks past the causal diagonal never count).
inline std::vector<double> block_density(const BlockMask& mask, Index q_len, Index kv_len, Index block, bool causal) {
  std::vector<double> density;
  // A key block holds a visible pair iff its first key is before the end of the keys the query
  // block's last row sees.
  auto visible = [&](Index qb, Index kb) {
    const Index last_row = std::min(qb * block + block - 1, q_len - 1);
    return !causal || kb * block < tile::CausalMask::visible(last_row, q_len, kv_len).end;
  };
  for (Index b = 0; b < mask.batch; ++b)
    for (Index h = 0; h < mask.heads; ++h) {
      double listed = 0, all = 0;
      for (Index qb = 0; qb < mask.q_blocks; ++qb) {
        for (Index kb = 0; kb < mask.kv_blocks; ++kb) all += visible(qb, kb);
        for (const std::int32_t kb : mask.blocks(b, h, qb)) listed += visible(qb, kb);
      }
      density.push_back(all > 0 ? listed / all : 0.0);
    }
  return density;
}

struct BlockSparse {
  struct Options {
    Index block = 128;             // query and key block size, >= 1
    bool causal = false;           // bottom-right aligned when q_len != kv_len
    std::optional<float> scale{};  // default 1 / sqrt(head_dim); must be finite and > 0
  };
  struct Args {
    Workspace workspace{};  // >= workspace_bytes(...) bytes, 64-byte aligned; none: allocated
  };
};

namespace detail {

// A BlockMask's lists without the ownership: what the kernel reads, so that a mask carved from a
// workspace (XAttention's selection) runs without a BlockMask.
struct BlockLists {
  const std::int32_t* offsets = nullptr;  // (batch * heads * q_blocks + 1)
  const std::int32_t* columns = nullptr;  // (offsets[batch * heads * q_blocks])
  Index heads = 0, q_blocks = 0;

  static BlockLists of(const BlockMask& m) { return {m.offsets.data(), m.columns.data(), m.heads, m.q_blocks}; }
  std::span<const std::int32_t> blocks(Index b, Index h, Index qb) const {
    const Index r = (b * heads + h) * q_blocks + qb;
    return {columns + offsets[r], static_cast<std::size_t>(offsets[r + 1] - offsets[r])};
  }
};

// Blocks policy of the dense kernel: the listed key blocks of the item's (batch, out head, query
// block), clipped to the keys its rows can see.
struct ListedKeyBlocks {
  BlockLists lists{};
  Index block = 0;
  template <class F>
  void for_each(Index seq, Index out_head, Index chunk, Index begin, Index end, Index /*step*/, F&& f) const {
    for (const std::int32_t kb : lists.blocks(seq, out_head, chunk)) {
      const Index first = std::max<Index>(kb * block, begin), last = std::min<Index>((kb + 1) * block, end);
      if (first < last) f(first, last - first);
    }
  }
};

// One work item per (batch, out head, query block); key blocks of the same size, padded to whole
// key panels for the score buffer.
inline DensePlan make_block_sparse_plan(const AttentionShape& shape, const SequenceLayout& seqs, Index block,
                                        const TileGeometry& tile) {
  DensePlan plan;
  plan.tile = tile;
  plan.group = 1;
  plan.kv_groups = shape.heads.out_heads();
  plan.groups_per_item = 1;
  plan.item_groups = plan.kv_groups;
  plan.kv_block = tile.pad_cols(block);
  plan.q_chunk = block;
  plan.row_tile = tile.mr;
  plan.group_rows = tile.pad_rows(std::min(block, std::max<Index>(seqs.max_q_len(), 1)));
  plan.rows = plan.group_rows;
  plan.chunks = (seqs.max_q_len() + block - 1) / block;
  plan.split_keys = std::max<Index>(seqs.max_kv_len(), 1);
  plan.splits = 1;
  plan.items = seqs.count() * plan.item_groups * plan.chunks;
  set_plan_layout(plan, shape);
  return plan;
}

inline Index block_count(Index length, Index block) { return (length + block - 1) / block; }

// Checks a mask against the shape: sizes, offsets and columns.
inline void check_block_mask(const BlockMask& m, const AttentionShape& shape, Index block) {
  const Index q_blocks = block_count(shape.q_len, block), kv_blocks = block_count(shape.kv_len, block);
  ATTNKIT_CHECK(m.batch == shape.batch, "mask: batch ", m.batch, ", expected ", shape.batch);
  ATTNKIT_CHECK(m.heads == shape.heads.out_heads(), "mask: heads ", m.heads, ", expected ", shape.heads.out_heads(),
                " (out heads)");
  ATTNKIT_CHECK(m.q_blocks == q_blocks, "mask: q_blocks ", m.q_blocks, ", expected ", q_blocks,
                " (ceil(q_len / block))");
  ATTNKIT_CHECK(m.kv_blocks == kv_blocks, "mask: kv_blocks ", m.kv_blocks, ", expected ", kv_blocks,
                " (ceil(kv_len / block))");
  const Index rows = m.batch * m.heads * m.q_blocks;
  ATTNKIT_CHECK(static_cast<Index>(m.offsets.size()) == rows + 1, "mask.offsets: ", m.offsets.size(),
                " entries, expected ", rows + 1, " (batch * heads * q_blocks + 1)");
  ATTNKIT_CHECK(m.offsets[0] == 0, "mask.offsets[0] is ", m.offsets[0], ", expected 0");
  for (Index r = 0; r < rows; ++r)
    ATTNKIT_CHECK(m.offsets[r + 1] >= m.offsets[r], "mask.offsets[", r + 1, "] is ", m.offsets[r + 1],
                  ", expected >= ", m.offsets[r]);
  ATTNKIT_CHECK(m.offsets[rows] == static_cast<Index>(m.columns.size()), "mask.offsets[", rows, "] is ",
                m.offsets[rows], ", expected ", m.columns.size(), " (columns)");
  for (Index r = 0; r < rows; ++r)
    for (Index i = m.offsets[r]; i < m.offsets[r + 1]; ++i) {
      const Index lo = i > m.offsets[r] ? m.columns[i - 1] + 1 : 0;
      ATTNKIT_CHECK(m.columns[i] >= lo && m.columns[i] < kv_blocks, "mask.columns[", i, "] is ", m.columns[i],
                    ", expected in [", lo, ", ", kv_blocks, ") (increasing key blocks within a row)");
    }
}

// Runs the block-sparse kernel on validated inputs (K and V of one storage type, not int8);
// shared by BlockSparse and XAttention.
template <class V, class Backend>
void run_block_sparse(const Backend& backend, const ErasedView<const void, 4>& q, const ErasedView<const void, 4>& k,
                      const ErasedView<const void, 4>& v, const BlockLists& lists, const ErasedView<void, 4>& out,
                      const AttentionShape& shape, Index block, bool causal, float scale, void* workspace) {
  const SequenceLayout seqs = SequenceLayout::padded(shape, {});
  const DensePlan plan = make_block_sparse_plan(shape, seqs, block, RegisterTile<V>::geometry);
  if (plan.items == 0) return;
  // Every row writes its output (zeros when it sees no listed key), so out needs no clearing.
  with_storage_type(k.storage, [&](auto zero) {
    using KV = decltype(zero);
    tile::with_causal_mask(causal, [&](auto mask_policy) {
      const DenseKernel<V, decltype(mask_policy), ListedKeyBlocks, KV> kernel(
          q, k.as<KV>(), v.as<KV>(), out, View<float, 3>{}, shape, seqs, plan, scale, workspace, backend.threads(),
          mask_policy, ListedKeyBlocks{lists, block});
      backend.parallel_for(plan.items, [&](Index item, int slot) { kernel.run_item(item, slot); });
    });
  });
}

template <class V>
std::size_t block_sparse_workspace(const AttentionShape& shape, Index block, int threads) {
  const DensePlan plan =
      make_block_sparse_plan(shape, SequenceLayout::padded(shape, {}), block, RegisterTile<V>::geometry);
  return dense_workspace_bytes(plan, threads);
}

// FLOPs and bytes of a block-sparse call: the visible (query, key) pairs of the listed blocks.
inline Cost block_sparse_cost(const AttentionShape& shape, const BlockMask& mask, Index block, bool causal,
                              std::size_t kv_bytes = sizeof(float)) {
  double pairs = 0;
  tile::with_causal_mask(causal, [&](auto policy) {
    for (Index b = 0; b < shape.batch; ++b)
      for (Index h = 0; h < mask.heads; ++h)
        for (Index qb = 0; qb < mask.q_blocks; ++qb)
          for (const std::int32_t kb : mask.blocks(b, h, qb))
            for (Index i = qb * block; i < std::min((qb + 1) * block, shape.q_len); ++i) {
              const tile::KeyRange seen = policy.visible(i, shape.q_len, shape.kv_len);
              const Index first = std::max<Index>(seen.begin, kb * block);
              const Index last = std::min<Index>(seen.end, (kb + 1) * block);
              pairs += static_cast<double>(std::max<Index>(last - first, 0));
            }
  });
  Cost cost;
  cost.flops = 2.0 * pairs * static_cast<double>(shape.head_dim + shape.v_dim);
  cost.bytes = attention_bytes(shape, kv_bytes);
  return cost;
}

}  // namespace detail

template <class Backend>
class Attention<BlockSparse, Backend> {
  using V = vector_t<Backend>;

 public:
  using Options = BlockSparse::Options;
  using Args = BlockSparse::Args;

  explicit Attention(Options options = {}, Backend backend = {}) : options_(options), backend_(backend) {
    ATTNKIT_CHECK(options_.block >= 1, "options.block is ", options_.block, ", expected >= 1");
    detail::check_scale_option(options_.scale);
  }

  std::string name() const {
    return std::string(options_.causal ? "block-sparse-causal/" : "block-sparse/") + Backend::name();
  }
  const Options& options() const { return options_; }

  // q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv), mask over (B, Ho, ceil(Lq / block),
  // ceil(Lk / block)) -> out (B, Lq, Ho, Dv); element types as for Dense (DenseStorage).
  template <class Q, class K, class Val>
  requires DenseStorage<Q, K, Val, float> Cost cost(const View<Q, 4>& q, const View<K, 4>& k, const View<Val, 4>& v,
                                                    const BlockMask& mask)
  const {
    const AttentionShape shape = attention_shape(q, k, v, nullptr);
    detail::check_block_mask(mask, shape, options_.block);
    return detail::block_sparse_cost(shape, mask, options_.block, options_.causal, sizeof(std::remove_const_t<K>));
  }
  template <class Q, class K, class Val>
  requires DenseStorage<Q, K, Val, float> std::size_t workspace_bytes(const View<Q, 4>& q, const View<K, 4>& k,
                                                                      const View<Val, 4>& v, const BlockMask& /*mask*/)
  const {
    return detail::block_sparse_workspace<V>(attention_shape(q, k, v, nullptr), options_.block, backend_.threads());
  }
  template <class Q, class K, class Val, class O>
  requires DenseStorage<Q, K, Val, O>
  void operator()(const View<Q, 4>& q, const View<K, 4>& k, const View<Val, 4>& v, const BlockMask& mask,
                  const View<O, 4>& out, const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, &out);
    detail::check_block_mask(mask, shape, options_.block);
    const detail::ScopedWorkspace workspace(
        args.workspace, detail::block_sparse_workspace<V>(shape, options_.block, backend_.threads()));
    const float scale = detail::scale_or_default(options_.scale, shape.head_dim);
    detail::run_block_sparse<V>(backend_, q, k, v, detail::BlockLists::of(mask), out, shape, options_.block,
                                options_.causal, scale, workspace.data());
  }

 private:
  Options options_;
  Backend backend_;
};

}  // namespace attnkit
