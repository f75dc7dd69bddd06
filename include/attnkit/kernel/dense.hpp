// The fused dense (flash) kernel under Dense, BlockSparse and XAttention:
//   DensePlan         tiling and work split of one call, a function of the shape and the register
//                     tile geometry only; it owns every buffer extent, stride and padding.
//   DenseKernel       runs the plan's work items: key blocks packed once per item (or read in place
//                     for a few rows per kv head) and streamed through the register-tiled
//                     micro-kernels with an online softmax; key splits merged by log-sum-exp.
//   DenseLaunch       one call's views, shape, plan and workspace (the same for every ISA variant);
//   run_dense_kernel  runs it with a vector type over a backend's threads, for the K / V storage
//                     type of the launch.
// Storage types (core/storage.hpp): K and V (one type, a template parameter) are converted to
// float where they are read (packing, or the in-place micro-kernels' loads); Q rows are converted
// when they are copied and scaled, output rows when they are written. int8 K / V (QuantizedView)
// are dequantized block by block into float scratch and then read as float rows. The math is float.
// Scores are (scale q) . k, except on the bfloat16 paths of packed prefill (bfloat16 Q and K),
// where they are q . k with exact products and the softmax applies the scale: bfloat16 pairs
// (DenseProducts::bf16_pairs, tile/bf16_pairs.hpp) and AMX tiles (DenseProducts::amx_bf16,
// tile/amx_bf16.hpp), which also form P . V from probabilities rounded to bfloat16.
// The mask policy (tile/mask.hpp) gives each row's visible keys; a Blocks policy the key blocks an
// item visits. Not here: options and validation (mechanism/dense.hpp), the tile pieces (tile/).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>

#include "attnkit/core/error.hpp"
#include "attnkit/core/quantize.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/storage.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/core/workspace_layout.hpp"
#include "attnkit/tile/amx_bf16.hpp"
#include "attnkit/tile/bf16_pairs.hpp"
#include "attnkit/tile/mask.hpp"
#include "attnkit/tile/microkernel.hpp"
#include "attnkit/tile/online_softmax.hpp"
#include "attnkit/tile/pack.hpp"
#include "attnkit/tile/tile_shape.hpp"

namespace attnkit::detail {

// Key blocks of `block` keys a work item visits, from its first visible key to its last: every one.
// A kernel's Blocks policy answers for_each(sequence index, first out head of the item, query
// chunk, key_begin, key_end, block, f) by calling f(first key, keys) for each block it visits, in
// increasing key order, all within [key_begin, key_end).
struct AllKeyBlocks {
  template <class F>
  void for_each(Index /*seq*/, Index /*out_head*/, Index /*chunk*/, Index begin, Index end, Index block, F&& f) const {
    for (Index first = begin; first < end; first += block) f(first, std::min(block, end - first));
  }
};

// How Q · Kᵀ and P · V are formed: float products on float rows (K and V converted where they
// are read, the query scaled first); or, on bfloat16 Q, K and V when keys are packed, Q · Kᵀ on
// bfloat16 pairs (vdpbf16ps, or its emulation on a vector type without it), or both products on
// AMX-BF16 tiles (or their emulation) with P rounded to bfloat16.
enum class DenseProducts { f32, bf16_pairs, amx_bf16 };

// Tiling and work split of one dense call; a function of the shape and the tile geometry only.
// Every extent, stride and padding of the kernel's buffers comes from here.
struct DensePlan {
  TileGeometry tile{};                          // register tile the kernel runs (checked against its vector type)
  Index group = 1;                              // out heads per kv head (rows of one position)
  Index kv_groups = 0;                          // kv heads (out_heads / group)
  Index groups_per_item = 1;                    // kv heads one work item covers
  Index item_groups = 0;                        // kv_groups / groups_per_item
  Index kv_block = 0;                           // keys per block
  Index key_pad = 1;                            // a row's scores are computed and softmaxed in multiples of this:
                                                // a key panel (tile.cols()) when packed, one vector when in place
  Index score_stride = 0;                       // floats between score rows: kv_block rounded up to key_pad
  Index q_chunk = 0;                            // query positions per work item
  Index row_tile = 1;                           // rows one pass over a key block computes: tile.mr, or AMX's 32
  Index group_rows = 0;                         // rows of one kv head in a work item, padded to row_tile
  Index rows = 0;                               // rows per work item: groups_per_item * group_rows
  Index chunks = 0;                             // work items along the query axis of the longest sequence
  Index split_keys = 0;                         // keys per split
  Index splits = 1;                             // key splits per sequence (> 1: partial results merged)
  Index items = 0;                              // sequences * item_groups * chunks * splits
  Index acc_cols = 0;                           // v_dim padded to whole value strips: the accumulator row length
  Index pair_words = 0;                         // words of a query row / key panel row of bfloat16 pairs (0: floats)
  bool stream_keys = false;                     // a kv head's rows fit one register tile: K / V rows read in place
  bool dequantize = false;                      // int8 K / V: each block dequantized into scratch first
  DenseProducts products = DenseProducts::f32;  // bfloat16 ones only with packed keys
  std::size_t scratch_bytes = 0;                // per thread (DenseScratch)
};

// Keys per block when K / V rows are read in place (decode): small enough that the next block
// of every kv head can be prefetched while this one is used.
inline constexpr Index kStreamBlockKeys = 16;
// Key splits kick in when a sequence has at most this many rows per kv head (decode) ...
inline constexpr Index kSplitMaxRows = 64;
// ... and are this long (a multiple of every kv block).
inline constexpr Index kSplitKeys = 2048;

void set_plan_layout(DensePlan& plan, const AttentionShape& shape);

inline DensePlan make_dense_plan(const AttentionShape& shape, const SequenceLayout& seqs, const TileGeometry& tile,
                                 Storage kv_storage = Storage::f32, DenseProducts products = DenseProducts::f32) {
  DensePlan plan;
  plan.tile = tile;
  plan.dequantize = kv_storage == Storage::i8;
  plan.group = shape.heads.group();
  plan.kv_groups = shape.heads.out_heads() / plan.group;
  plan.q_chunk = std::max<Index>(1, rows_per_item(shape.v_dim) / plan.group);
  plan.q_chunk = std::min(plan.q_chunk, std::max<Index>(seqs.max_q_len(), 1));
  // Few rows per kv head: no packing, and one item walks every kv head so that it reads whole
  // (all-head) key rows, which the caches stream well.
  plan.stream_keys = plan.q_chunk * plan.group <= tile.mr;
  plan.products = plan.stream_keys ? DenseProducts::f32 : products;
  const bool amx = plan.products == DenseProducts::amx_bf16;
  // AMX's products cost a fraction of the float ones, so packing a K / V block is shared by 4x the
  // rows (their accumulators, 1 MiB at v_dim 256, sit in the 2 MiB L2 of the CPUs with AMX).
  if (amx) plan.q_chunk = std::min(4 * plan.q_chunk, std::max<Index>(seqs.max_q_len(), 1));
  plan.row_tile = amx ? tile::kAmxPassRows : tile.mr;
  plan.group_rows = (plan.q_chunk * plan.group + plan.row_tile - 1) / plan.row_tile * plan.row_tile;
  plan.groups_per_item = plan.stream_keys ? std::max<Index>(plan.kv_groups, 1) : 1;
  plan.item_groups = plan.kv_groups / plan.groups_per_item;
  plan.kv_block = plan.stream_keys ? kStreamBlockKeys
                                   : kv_block_keys(shape.head_dim, shape.v_dim, amx ? tile::kAmxKeyStep : tile.cols());
  plan.rows = plan.groups_per_item * plan.group_rows;
  plan.chunks = (seqs.max_q_len() + plan.q_chunk - 1) / plan.q_chunk;
  const Index max_kv = seqs.max_kv_len();
  const bool decode = seqs.max_q_len() * plan.group <= kSplitMaxRows && max_kv >= 2 * kSplitKeys;
  plan.split_keys = decode ? kSplitKeys : std::max<Index>(max_kv, 1);
  plan.splits = decode ? (max_kv + kSplitKeys - 1) / kSplitKeys : 1;
  plan.items = seqs.count() * plan.item_groups * plan.chunks * plan.splits;
  set_plan_layout(plan, shape);
  return plan;
}

// One thread's scratch. carve() is the only description of its layout: the plan sizes it by
// carving from a measuring arena, the kernel by carving the thread's slot.
struct DenseScratch {
  float* packed_k = nullptr;                // (ceil(kv_block / cols), head_dim, cols); float products, packed
  float* packed_v = nullptr;                // (ceil(v_dim / cols), kv_block, cols); packed, but not AMX
  float* dequant_k = nullptr;               // (kv_block, head_dim) when plan.dequantize
  float* dequant_v = nullptr;               // (kv_block, v_dim) when plan.dequantize
  float* scores = nullptr;                  // (row_tile, score_stride)
  float* q_rows = nullptr;                  // (rows, head_dim), scaled; float products only
  std::uint32_t* packed_k_pairs = nullptr;  // (ceil(kv_block / c), pair_words, c) bfloat16 pairs, c:
                                            // cols, AMX's 16
  std::uint32_t* q_pairs = nullptr;         // (rows, pair_words) bfloat16 pairs
  std::uint32_t* packed_v_pairs = nullptr;  // AMX: (ceil(v_dim / 16), ceil(kv_block / 32) * 16, 16)
  std::uint32_t* p_pairs = nullptr;         // AMX: (32, score_stride / 2) probabilities
  float* acc = nullptr;                     // (rows, acc_cols)
  tile::SoftmaxRow* states = nullptr;       // (rows)

  static DenseScratch carve(Arena& arena, const DensePlan& plan, const AttentionShape& shape) {
    const Index packed_keys = plan.stream_keys ? 0 : plan.kv_block;
    const Index cols = plan.tile.cols();
    const bool pairs = plan.pair_words > 0, amx = plan.products == DenseProducts::amx_bf16;
    DenseScratch s;
    s.packed_k = arena.take<float>(tile::packed_key_floats(pairs ? 0 : packed_keys, shape.head_dim, cols));
    s.packed_k_pairs =
        arena.take<std::uint32_t>(amx ? tile::amx_key_words(packed_keys, plan.pair_words)
                                      : tile::packed_key_pair_words(pairs ? packed_keys : 0, plan.pair_words, cols));
    s.packed_v = arena.take<float>(tile::packed_value_floats(amx ? 0 : packed_keys, shape.v_dim, cols));
    s.packed_v_pairs = arena.take<std::uint32_t>(amx ? tile::amx_value_words(packed_keys, shape.v_dim) : 0);
    s.p_pairs = arena.take<std::uint32_t>(amx ? tile::kAmxPassRows * plan.score_stride / 2 : 0);
    const Index dequant_keys = plan.dequantize ? plan.kv_block : 0;
    s.dequant_k = arena.take<float>(dequant_keys * shape.head_dim);
    s.dequant_v = arena.take<float>(dequant_keys * shape.v_dim);
    s.scores = arena.take<float>(plan.row_tile * plan.score_stride);
    s.q_rows = arena.take<float>(pairs ? 0 : plan.rows * shape.head_dim);
    s.q_pairs = arena.take<std::uint32_t>(plan.rows * plan.pair_words);
    s.acc = arena.take<float>(plan.rows * plan.acc_cols);
    s.states = arena.take<tile::SoftmaxRow>(plan.rows);
    return s;
  }
};

// Fills the score and accumulator layout (key_pad, score_stride, acc_cols) and scratch_bytes of a
// plan whose tile, stream_keys, kv_block, rows and item split are set.
inline void set_plan_layout(DensePlan& plan, const AttentionShape& shape) {
  const TileGeometry& tile = plan.tile;
  const bool amx = plan.products == DenseProducts::amx_bf16;
  plan.key_pad = plan.stream_keys ? tile.width : amx ? tile::kAmxKeyStep : tile.cols();
  plan.score_stride = (plan.kv_block + plan.key_pad - 1) / plan.key_pad * plan.key_pad;
  const Index value_strip = amx ? std::lcm<Index>(tile.cols(), tile::kAmxWords) : tile.cols();
  plan.acc_cols = (shape.v_dim + value_strip - 1) / value_strip * value_strip;
  plan.pair_words = amx                                          ? tile::amx_pair_words(shape.head_dim)
                    : plan.products == DenseProducts::bf16_pairs ? tile::pair_words(shape.head_dim)
                                                                 : 0;
  plan.scratch_bytes = scratch_bytes_of<DenseScratch>(plan, shape);
}

// The whole workspace of a call: every thread's scratch, then (with key splits) every item's
// unnormalised partial result. carve() is its only layout, as for DenseScratch.
struct DenseWorkspace {
  std::byte* scratch = nullptr;              // (slots, scratch_bytes)
  float* partial_acc = nullptr;              // (items, rows, acc_cols)
  tile::SoftmaxRow* partial_rows = nullptr;  // (items, rows)

  static DenseWorkspace carve(Arena& arena, const DensePlan& plan, int slots) {
    DenseWorkspace w;
    w.scratch = take_thread_slots(arena, plan, slots);
    if (plan.splits > 1) {
      w.partial_acc = arena.take<float>(plan.items * plan.rows * plan.acc_cols);
      w.partial_rows = arena.take<tile::SoftmaxRow>(plan.items * plan.rows);
    }
    return w;
  }
};

// Bytes of the workspace for `slots` threads (0 when there is no work).
inline std::size_t dense_workspace_bytes(const DensePlan& plan, int slots) {
  return workspace_bytes_of<DenseWorkspace>(plan, slots);
}

// The fused kernel for one call. Work items are (sequence, kv heads, query chunk, key split);
// an item's rows are (kv head, position, head of the group), each kv head's rows padded to the
// register tile. Mask gives each row's visible keys, Blocks the key blocks an item visits; KV is
// the element type of K and V; Q and out may hold any storage type.
template <class V, class Mask, class Blocks = AllKeyBlocks, class KV = float>
class DenseKernel {
  using Tile = RegisterTile<V>;
  static constexpr bool kQuantized = std::is_same_v<KV, std::int8_t>;
  using Rows = std::conditional_t<kQuantized, float, KV>;  // what the tile code reads K / V rows as
  static constexpr Index kMaxTileRows = std::max<Index>(Tile::mr, tile::kAmxPassRows);

 public:
  DenseKernel(const ErasedView<const void, 4>& q, const View<const KV, 4>& k, const View<const KV, 4>& v,
              const ErasedView<void, 4>& out, const View<float, 3>& lse, const AttentionShape& shape,
              const SequenceLayout& seqs, const DensePlan& plan, float scale, void* workspace, int slots,
              Mask mask = {}, Blocks blocks = {}, const View<const float, 3>& k_scales = {},
              const View<const float, 3>& v_scales = {})
      : q_(q),
        k_(k),
        v_(v),
        out_(out),
        lse_(lse),
        shape_(shape),
        seqs_(seqs),
        plan_(plan),
        scale_(scale),
        mask_(mask),
        blocks_(blocks),
        k_scales_(k_scales),
        v_scales_(v_scales),
        amx_(plan.products == DenseProducts::amx_bf16 && tile::kAmxVector<V> && tile::amx_tiles_usable()),
        arena_(workspace, dense_workspace_bytes(plan, slots)) {
    ATTNKIT_CHECK(plan.dequantize == kQuantized,
                  "dense kernel: plan and kernel disagree on int8 K / V (internal error)");
    ATTNKIT_CHECK(plan.products == DenseProducts::f32 || (std::is_same_v<KV, bfloat16> && q.storage == Storage::bf16),
                  "dense kernel: bfloat16 products need bfloat16 Q, K and V (internal error)");
    ATTNKIT_CHECK(plan.row_tile <= kMaxTileRows, "dense kernel: ", plan.row_tile, "-row tiles (internal error)");
    ATTNKIT_CHECK(plan.tile == Tile::geometry, "dense kernel: plan made for a ", plan.tile.mr, " x ", plan.tile.cols(),
                  " tile, kernel runs ", Tile::mr, " x ", Tile::cols, " (internal error)");
    workspace_ = DenseWorkspace::carve(arena_, plan, slots);
  }

  // Item order puts the last query chunks (the longest under a causal mask) first.
  void run_item(Index item, int slot) const {
    const Index split = item % plan_.splits;
    Index rest = item / plan_.splits;
    const Index chunk = plan_.chunks - 1 - rest % plan_.chunks;
    rest /= plan_.chunks;
    const Index first_group = rest % plan_.item_groups * plan_.groups_per_item;
    const Index seq_index = rest / plan_.item_groups;
    const Sequence seq = seqs_[seq_index];
    const Index first_pos = chunk * plan_.q_chunk;
    const Index end_pos = std::min(first_pos + plan_.q_chunk, seq.q_len);
    if (first_pos >= end_pos) return;
    const Index group_rows = (end_pos - first_pos) * plan_.group;  // real rows per kv head

    Arena arena = thread_slot(workspace_.scratch, plan_, slot);
    const DenseScratch scratch = DenseScratch::carve(arena, plan_, shape_);
    float* scores = scratch.scores;  // (mr, score_stride)
    const Index ldo = plan_.acc_cols;
    float* acc = scratch.acc;  // (rows, acc_cols)
    tile::SoftmaxRow* states = scratch.states;
    if (plan_.splits > 1) {
      acc = workspace_.partial_acc + item * plan_.rows * ldo;
      states = workspace_.partial_rows + item * plan_.rows;
    }
    // Query rows copied contiguous and pre-scaled (bfloat16 pairs: as they are); padding rows are
    // zero, so their scores are 0 and serve as probabilities 0.
    const Index pair_words = plan_.pair_words;
    for (Index row = 0; row < plan_.rows; ++row) {
      float* dst = pairs() ? nullptr : scratch.q_rows + row * shape_.head_dim;
      std::uint32_t* dst_pairs = pairs() ? scratch.q_pairs + row * pair_words : nullptr;
      const Index r = row % plan_.group_rows;
      if (r >= group_rows) {
        if (pairs())
          std::fill(dst_pairs, dst_pairs + pair_words, 0u);
        else
          std::fill(dst, dst + shape_.head_dim, 0.0f);
        continue;
      }
      const Index out_head = (first_group + row / plan_.group_rows) * plan_.group + r % plan_.group;
      const void* src =
          element(q_, seq.batch, seq.q_begin + first_pos + r / plan_.group, shape_.heads.q_head(out_head));
      if (pairs())
        tile::pack_query_pairs(static_cast<const bfloat16*>(src), shape_.head_dim, pair_words, dst_pairs);
      else
        detail::load_row_scaled(src, q_.storage, shape_.head_dim, scale_, dst);
    }
    const float score_scale = pairs() ? scale_ : 1.0f;  // what the softmax multiplies scores by
    const auto amx_session = amx_.begin();              // this thread's tiles, if native
    std::fill(acc, acc + plan_.rows * ldo, 0.0f);
    std::fill(states, states + plan_.rows, tile::SoftmaxRow{});

    // Keys this item may visit: its split, narrowed by what its first and last rows see.
    const tile::KeyRange seen = tile::visible_rows(mask_, first_pos, end_pos - 1, seq.q_len, seq.kv_len);
    const Index split_begin = split * plan_.split_keys;
    const Index key_begin = std::max(split_begin, seen.begin);
    const Index key_end = std::min({seq.kv_len, split_begin + plan_.split_keys, seen.end});

    const Index lds = plan_.score_stride;
    blocks_.for_each(
        seq_index, first_group * plan_.group, chunk, key_begin, key_end, plan_.kv_block, [&](Index block, Index keys) {
          for (Index g = 0; g < plan_.groups_per_item; ++g) {
            const Index kv_head = shape_.heads.kv_head((first_group + g) * plan_.group);
            const Index first_key = seq.kv_begin + block;
            // In place (decode): request this kv head's next block of K / V rows while this one
            // is used; its rows sit in pages of their own (one row per position), where the
            // hardware prefetchers do not follow.
            if (plan_.stream_keys && block + keys < key_end) {
              const Index ahead = std::min(plan_.kv_block, key_end - block - keys);
              tile::prefetch_rows(k_.at(seq.batch, first_key + keys, kv_head, 0), k_.stride(1), ahead, shape_.head_dim);
              tile::prefetch_rows(v_.at(seq.batch, first_key + keys, kv_head, 0), v_.stride(1), ahead, shape_.v_dim);
            }
            const Rows* k_block = nullptr;  // (keys, head_dim), rows ldk apart
            const Rows* v_block = nullptr;  // (keys, v_dim), rows ldv apart
            Index ldk = 0, ldv = 0;
            if constexpr (kQuantized) {
              dequantize_rows(k_, k_scales_, seq.batch, first_key, kv_head, keys, scratch.dequant_k);
              dequantize_rows(v_, v_scales_, seq.batch, first_key, kv_head, keys, scratch.dequant_v);
              k_block = scratch.dequant_k;
              v_block = scratch.dequant_v;
              ldk = shape_.head_dim;
              ldv = shape_.v_dim;
            } else {
              k_block = k_.at(seq.batch, first_key, kv_head, 0);
              v_block = v_.at(seq.batch, first_key, kv_head, 0);
              ldk = k_.stride(1);
              ldv = v_.stride(1);
            }
            int values_finite = -1;  // the block's values are all finite (1), not (0), not looked at (-1)
            if (!plan_.stream_keys) pack_block(k_block, ldk, v_block, ldv, keys, scratch);
            for (Index t = 0; t < group_rows; t += plan_.row_tile) {
              const Index row0 = g * plan_.group_rows + t;  // first row of the tile in the item
              const Index tile_rows = std::min<Index>(plan_.row_tile, group_rows - t);
              const float* q_tile[kMaxTileRows];
              const std::uint32_t* q_pair_tile[kMaxTileRows];
              tile::KeyRange ranges[kMaxTileRows];
              Index tile_end = block;  // the tile's rows see keys before tile_end only
              for (Index r = 0; r < plan_.row_tile; ++r) {
                q_tile[r] = pairs() ? nullptr : scratch.q_rows + (row0 + r) * shape_.head_dim;
                q_pair_tile[r] = pairs() ? scratch.q_pairs + (row0 + r) * pair_words : nullptr;
                if (r >= tile_rows) continue;
                const Index pos = first_pos + (t + r) / plan_.group;
                const tile::KeyRange seen = mask_.visible(pos, seq.q_len, seq.kv_len);
                ranges[r] = {std::max(seen.begin, block), std::min(seen.end, block + keys)};
                if (ranges[r].begin < ranges[r].end) tile_end = std::max(tile_end, ranges[r].end);
              }
              if (tile_end == block) continue;  // nothing visible
              // Only the panels up to the tile's last visible key (skips the causal diagonal's upper half).
              const Index tile_keys = tile_end - block;
              const Index padded_keys = (tile_keys + plan_.key_pad - 1) / plan_.key_pad * plan_.key_pad;
              bool needs_mask = false, ragged = false;  // ragged: rows see different keys of [block, tile_end)
              for (Index r = 0; r < tile_rows; ++r) {
                needs_mask |= ranges[r].begin > block || ranges[r].end < block + padded_keys;
                ragged |= ranges[r].begin > block || ranges[r].end < tile_end;
              }
              if (plan_.stream_keys)
                tile::with_tile_rows<Tile::mr>(tile_rows, [&](auto rows) {
                  tile::score_rows_in_place<V, rows()>(q_tile, k_block, ldk, tile_keys, shape_.head_dim, scores, lds);
                });
              else if (amx())
                amx_.scores(q_pair_tile[0], pair_words, scratch.packed_k_pairs, pair_words,
                            padded_keys / tile::kAmxWords, scores, lds);
              else if (pairs())
                tile::score_block<V, tile::Bf16PairDot<V>>(q_pair_tile, scratch.packed_k_pairs, pair_words, padded_keys,
                                                           scores, lds);
              else
                tile::score_block<V>(q_tile, scratch.packed_k, shape_.head_dim, padded_keys, scores, lds);
              for (Index r = 0; r < tile_rows; ++r) {
                float* s = scores + r * lds;
                if (needs_mask) tile::mask_block_row(s, padded_keys, block, ranges[r], tile::kNegInf);
                const float rescale = tile::softmax_block_row<V>(s, padded_keys, score_scale, states[row0 + r],
                                                                 ranges[r].begin < ranges[r].end);
                if (rescale != 1.0f) tile::scale_row<V>(acc + (row0 + r) * ldo, ldo, rescale);
              }
              // A row must not see the values of keys it does not see: with an inf or NaN among
              // them, each row takes only its own keys where the products would read others' (a
              // ragged tile; on AMX also the keys past tile_end of the last 32-key step).
              const bool reads_unseen = ragged || (amx() && tile_end < block + std::min(padded_keys, keys));
              if (reads_unseen && values_finite < 0)
                values_finite = tile::finite_rows<V>(v_block, ldv, keys, shape_.v_dim);
              if (reads_unseen && values_finite == 0)
                for (Index r = 0; r < tile_rows; ++r)
                  tile::accumulate_pv_range<V>(scores + r * lds, v_block, ldv, ranges[r].begin - block,
                                               ranges[r].end - block, shape_.v_dim, acc + (row0 + r) * ldo);
              else if (plan_.stream_keys)
                tile::with_tile_rows<Tile::mr>(tile_rows, [&](auto rows) {
                  tile::accumulate_pv<V, rows()>(scores, lds, v_block, ldv, tile_keys, shape_.v_dim, acc + row0 * ldo,
                                                 ldo);
                });
              else if (amx()) {
                tile::pack_amx_probs<V>(scores, lds, tile_rows, padded_keys, scratch.p_pairs);
                amx_.accumulate(scratch.p_pairs, padded_keys / 2, scratch.packed_v_pairs,
                                tile::amx_value_strip_words(keys), padded_keys / tile::kAmxKeyStep,
                                (shape_.v_dim + tile::kAmxWords - 1) / tile::kAmxWords, acc + row0 * ldo, ldo);
              } else
                tile::accumulate_pv_packed<V>(scores, lds, scratch.packed_v, keys * Tile::cols, tile_keys,
                                              ldo / Tile::cols, acc + row0 * ldo, ldo);
            }
          }
        });
    if (plan_.splits > 1) return;
    for_each_row(seq, first_group, first_pos, end_pos, [&](Index row, void* out_row, float* lse) {
      // A float output row is written directly; another type is finalised in place in acc first.
      float* acc_row = acc + row * ldo;
      float* result = out_.storage == Storage::f32 ? static_cast<float*>(out_row) : acc_row;
      const float row_lse = tile::finalize_row<V>(acc_row, shape_.v_dim, states[row], result);
      if (result != out_row) detail::store_row(result, shape_.v_dim, out_row, out_.storage);
      if (lse != nullptr) *lse = row_lse;
    });
  }

  // Items of the merge pass: (sequence, kv heads, query chunk); only when splits > 1.
  Index merge_items() const { return plan_.items / plan_.splits; }

  void merge_item(Index item, int slot) const {
    const Index chunk = item % plan_.chunks;
    const Index first_group = item / plan_.chunks % plan_.item_groups * plan_.groups_per_item;
    const Sequence seq = seqs_[item / plan_.chunks / plan_.item_groups];
    const Index first_pos = chunk * plan_.q_chunk;
    const Index end_pos = std::min(first_pos + plan_.q_chunk, seq.q_len);
    // Split items of this chunk are consecutive; run_item numbers chunks from the end.
    const Index first_split_item = ((item / plan_.chunks) * plan_.chunks + (plan_.chunks - 1 - chunk)) * plan_.splits;
    const Index acc_stride = plan_.rows * plan_.acc_cols;
    // A non-float output row is merged into the thread's accumulator scratch, then converted.
    float* merged = nullptr;
    if (out_.storage != Storage::f32) {
      Arena arena = thread_slot(workspace_.scratch, plan_, slot);
      merged = DenseScratch::carve(arena, plan_, shape_).acc;
    }
    for_each_row(seq, first_group, first_pos, end_pos, [&](Index row, void* out_row, float* lse) {
      float* result = merged != nullptr ? merged : static_cast<float*>(out_row);
      const float row_lse =
          tile::merge_partial_rows<V>(workspace_.partial_acc + first_split_item * acc_stride + row * plan_.acc_cols,
                                      acc_stride, workspace_.partial_rows + first_split_item * plan_.rows + row,
                                      plan_.rows, plan_.splits, shape_.v_dim, result);
      if (merged != nullptr) detail::store_row(result, shape_.v_dim, out_row, out_.storage);
      if (lse != nullptr) *lse = row_lse;
    });
  }

 private:
  bool pairs() const { return plan_.pair_words > 0; }  // Q and K as bfloat16 pairs (either path)
  bool amx() const { return plan_.products == DenseProducts::amx_bf16; }

  // A K and V block in the layouts the plan's products read: float panels and strips, bfloat16
  // pair panels and float strips, or AMX's pair panels and pair strips.
  void pack_block(const Rows* k, Index ldk, const Rows* v, Index ldv, Index keys, const DenseScratch& scratch) const {
    if constexpr (std::is_same_v<KV, bfloat16>) {
      if (amx()) {
        tile::pack_amx_keys(k, ldk, keys, shape_.head_dim, plan_.pair_words, scratch.packed_k_pairs);
        return tile::pack_amx_values(v, ldv, keys, shape_.v_dim, scratch.packed_v_pairs);
      }
      if (pairs())
        tile::pack_key_pairs<Tile::cols>(k, ldk, keys, shape_.head_dim, plan_.pair_words, scratch.packed_k_pairs);
    }
    if (!pairs()) tile::pack_key_panels<Tile::cols>(k, ldk, keys, shape_.head_dim, scratch.packed_k);
    tile::pack_value_strips<Tile::cols>(v, ldv, keys, shape_.v_dim, scratch.packed_v);
  }

  // Calls f(item row, output row, log-sum-exp slot or null) for every real row of an item.
  template <class F>
  void for_each_row(const Sequence& seq, Index first_group, Index first_pos, Index end_pos, F&& f) const {
    const Index group_rows = (end_pos - first_pos) * plan_.group;
    for (Index g = 0; g < plan_.groups_per_item; ++g)
      for (Index r = 0; r < group_rows; ++r) {
        const Index pos = seq.q_begin + first_pos + r / plan_.group;
        const Index out_head = (first_group + g) * plan_.group + r % plan_.group;
        f(g * plan_.group_rows + r, element(out_, seq.batch, pos, out_head),
          lse_.data() != nullptr ? lse_.at(seq.batch, pos, out_head) : nullptr);
      }
  }

  // dst (keys, dim) = the rows [first, first + keys) of head h of int8 x, times their scales.
  static void dequantize_rows(const View<const KV, 4>& x, const View<const float, 3>& scales, Index b, Index first,
                              Index h, Index keys, float* dst) {
    const Index dim = x.extent(3);
    for (Index j = 0; j < keys; ++j) {
      const KV* row = x.at(b, first + j, h, 0);
      const float scale = scales(b, first + j, h);
      float* out = dst + j * dim;
      for (Index d = 0; d < dim; ++d) out[d] = dequantize(scale, row[d]);
    }
  }

  // Address of row (b, s, h) of an erased view: its element 0 along the last axis.
  template <class E>
  static E* element(const ErasedView<E, 4>& x, Index b, Index s, Index h) {
    const Index offset = b * x.strides[0] + s * x.strides[1] + h * x.strides[2];
    using Byte = std::conditional_t<std::is_const_v<E>, const std::byte, std::byte>;
    return static_cast<Byte*>(x.data) + offset * static_cast<Index>(storage_bytes(x.storage));
  }

  ErasedView<const void, 4> q_;
  View<const KV, 4> k_, v_;
  ErasedView<void, 4> out_;
  View<float, 3> lse_;
  AttentionShape shape_;
  SequenceLayout seqs_;
  DensePlan plan_;
  float scale_;
  Mask mask_;
  Blocks blocks_;
  View<const float, 3> k_scales_, v_scales_;  // int8 K / V only
  tile::AmxBf16<V> amx_;                      // the AMX products, native or emulated
  Arena arena_;  // the whole workspace; its guards (sanitize builds) are checked when the kernel ends
  DenseWorkspace workspace_;
};

// Everything one launch of the kernel takes besides its vector type and policies: plain views and
// values, the same for every ISA variant (it crosses into the compiled variants unchanged).
struct DenseLaunch {
  ErasedView<const void, 4> q, k, v;  // k and v of one storage type
  ErasedView<void, 4> out;
  View<const float, 3> k_scales, v_scales;  // int8 k and v only
  View<float, 3> lse;                       // empty: none
  AttentionShape shape;
  SequenceLayout seqs;
  DensePlan plan;
  float scale = 1.0f;
  void* workspace = nullptr;  // the plan's workspace for `threads` threads
};

// Runs a launch with vector type V over the backend's threads: the items, then (with key splits)
// the merge.
template <class V, class Backend, class Mask, class Blocks = AllKeyBlocks>
void run_dense_kernel(const Backend& backend, const DenseLaunch& call, Mask mask, Blocks blocks = {}) {
  if (call.plan.items == 0) return;
  with_kv_type(call.k.storage, [&](auto zero) {
    using KV = decltype(zero);
    const DenseKernel<V, Mask, Blocks, KV> kernel(call.q, call.k.as<KV>(), call.v.as<KV>(), call.out, call.lse,
                                                  call.shape, call.seqs, call.plan, call.scale, call.workspace,
                                                  backend.threads(), mask, blocks, call.k_scales, call.v_scales);
    backend.parallel_for(call.plan.items, [&](Index item, int slot) { kernel.run_item(item, slot); });
    if (call.plan.splits > 1)
      backend.parallel_for(kernel.merge_items(), [&](Index item, int slot) { kernel.merge_item(item, slot); });
  });
}

}  // namespace attnkit::detail
