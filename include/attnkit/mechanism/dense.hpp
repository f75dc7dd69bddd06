// Dense exact attention: Attention<Dense, Backend>.
//   out = softmax(scale · Q Kᵀ + mask) V, fused flash-style: key blocks are packed once per work
//   item and streamed through register-tiled micro-kernels with an online softmax, so extra
//   memory is O(tile) (workspace_bytes()), never O(q_len · kv_len).
// Head mapping: see HeadMap (MHA, GQA, MQA, SQA; reverse SQA when q_heads < kv_heads). The rows
// of one work item are (position, head) pairs of all out heads sharing a kv head, so a GQA group
// reads each key block once.
// Masks: none, causal (bottom-right aligned) or a sliding window around the bottom-right aligned
// position (Options::window; with causal the window has no right side); a work item visits only
// the key blocks its rows can see, so a window's cost grows linearly in the length.
// Batches: padded (optional real lengths per entry, rows past a length written as zeros) or
// packed (cu_seqlens). Decode-like shapes (few query rows per kv head, long kv) split the keys
// into fixed-size ranges merged by log-sum-exp. Every tiling decision depends on the shape only,
// so all backends and thread counts give the same bits. The key blocks an item visits come from a
// Blocks policy: all of them here, the listed ones for the block-sparse mechanism.
// Not here: the tile pieces themselves (tile/), the reference (reference/dense.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>

#include "attnkit/attention.hpp"
#include "attnkit/backend/backend.hpp"
#include "attnkit/core/cost.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/tile/mask.hpp"
#include "attnkit/tile/microkernel.hpp"
#include "attnkit/tile/online_softmax.hpp"
#include "attnkit/tile/pack.hpp"
#include "attnkit/tile/tile_shape.hpp"

namespace attnkit {

struct Dense {
  // Sliding window (local attention): query i sees keys j with i' - left <= j <= i' + right,
  // i' = i + kv_len - q_len (flash-attn's window_size); -1 leaves a side unbounded.
  struct Window {
    Index left = -1;
    Index right = -1;
  };
  struct Options {
    bool causal = false;           // bottom-right aligned when q_len != kv_len
    std::optional<float> scale{};  // default 1 / sqrt(head_dim); must be finite and > 0
    Window window{};               // with causal, right is 0 whatever is set
  };
  // Optional extras of one call.
  struct Args {
    SeqLengths lengths{};   // padded inputs only: real q / kv length per batch entry
    View<float, 3> lse{};   // (batch, q_len, out_heads) log-sum-exp per row, -inf for a row that
                            // sees no key; packed inputs: (1, q_tokens, out_heads)
    Workspace workspace{};  // >= workspace_bytes(...) bytes, 64-byte aligned; none: allocated
  };
};

namespace detail {

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

// Tiling and work split of one dense call; a function of the shape only.
struct DensePlan {
  Index group = 1;                // out heads per kv head (rows of one position)
  Index kv_groups = 0;            // kv heads (out_heads / group)
  Index groups_per_item = 1;      // kv heads one work item covers
  Index item_groups = 0;          // kv_groups / groups_per_item
  Index kv_block = 0;             // keys per block
  Index q_chunk = 0;              // query positions per work item
  Index group_rows = 0;           // rows of one kv head in a work item, padded to the register tile
  Index rows = 0;                 // rows per work item: groups_per_item * group_rows
  Index chunks = 0;               // work items along the query axis of the longest sequence
  Index split_keys = 0;           // keys per split
  Index splits = 1;               // key splits per sequence (> 1: partial results merged)
  Index items = 0;                // sequences * item_groups * chunks * splits
  Index acc_cols = 0;             // v_dim padded to whole value strips: the accumulator row length
  bool stream_keys = false;       // a kv head's rows fit one register tile: K / V rows read in place
  std::size_t scratch_bytes = 0;  // per thread
  std::size_t partial_bytes = 0;  // all split partials
};

// Keys per block when K / V rows are read in place (decode): small enough that the next block
// of every kv head can be prefetched while this one is used.
inline constexpr Index kStreamBlockKeys = 16;
// Key splits kick in when a sequence has at most this many rows per kv head (decode) ...
inline constexpr Index kSplitMaxRows = 64;
// ... and are this long (a multiple of every kv block).
inline constexpr Index kSplitKeys = 2048;

template <class V>
void set_plan_bytes(DensePlan& plan, const AttentionShape& shape);

template <class V>
DensePlan make_dense_plan(const AttentionShape& shape, const SequenceLayout& seqs) {
  using Tile = RegisterTile<V>;
  DensePlan plan;
  plan.group = shape.heads.group();
  plan.kv_groups = shape.heads.out_heads() / plan.group;
  plan.q_chunk = std::max<Index>(1, rows_per_item(shape.v_dim) / plan.group);
  plan.q_chunk = std::min(plan.q_chunk, std::max<Index>(seqs.max_q_len(), 1));
  plan.group_rows = Tile::pad_rows(plan.q_chunk * plan.group);
  // Few rows per kv head: no packing, and one item walks every kv head so that it reads whole
  // (all-head) key rows, which the caches stream well.
  plan.stream_keys = plan.q_chunk * plan.group <= Tile::mr;
  plan.groups_per_item = plan.stream_keys ? std::max<Index>(plan.kv_groups, 1) : 1;
  plan.item_groups = plan.kv_groups / plan.groups_per_item;
  plan.kv_block = plan.stream_keys ? kStreamBlockKeys : kv_block_keys(shape.head_dim, shape.v_dim, Tile::cols);
  plan.rows = plan.groups_per_item * plan.group_rows;
  plan.chunks = (seqs.max_q_len() + plan.q_chunk - 1) / plan.q_chunk;
  const Index max_kv = seqs.max_kv_len();
  const bool decode = seqs.max_q_len() * plan.group <= kSplitMaxRows && max_kv >= 2 * kSplitKeys;
  plan.split_keys = decode ? kSplitKeys : std::max<Index>(max_kv, 1);
  plan.splits = decode ? (max_kv + kSplitKeys - 1) / kSplitKeys : 1;
  plan.items = seqs.count() * plan.item_groups * plan.chunks * plan.splits;
  set_plan_bytes<V>(plan, shape);
  return plan;
}

// Fills acc_cols, scratch_bytes and partial_bytes of a plan whose other fields are set.
template <class V>
void set_plan_bytes(DensePlan& plan, const AttentionShape& shape) {
  using Tile = RegisterTile<V>;
  plan.acc_cols = Tile::pad_cols(shape.v_dim);
  const Index packed_keys = plan.stream_keys ? 0 : plan.kv_block;
  plan.scratch_bytes = array_bytes<float>(tile::packed_key_floats(packed_keys, shape.head_dim, Tile::cols)) +
                       array_bytes<float>(tile::packed_value_floats(packed_keys, shape.v_dim, Tile::cols)) +
                       array_bytes<float>(Tile::mr * plan.kv_block) +    // scores
                       array_bytes<float>(plan.rows * shape.head_dim) +  // scaled query rows
                       array_bytes<float>(plan.rows * plan.acc_cols) +   // accumulators
                       array_bytes<tile::SoftmaxRow>(plan.rows);
  if (plan.splits > 1)
    plan.partial_bytes = array_bytes<float>(plan.items * plan.rows * plan.acc_cols) +
                         array_bytes<tile::SoftmaxRow>(plan.items * plan.rows);
}

// The fused kernel for one call. Work items are (sequence, kv heads, query chunk, key split);
// an item's rows are (kv head, position, head of the group), each kv head's rows padded to the
// register tile. Mask gives each row's visible keys, Blocks the key blocks an item visits.
template <class V, class Mask, class Blocks = AllKeyBlocks>
class DenseKernel {
  using Tile = RegisterTile<V>;

 public:
  DenseKernel(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
              const View<float, 4>& out, const View<float, 3>& lse, const AttentionShape& shape,
              const SequenceLayout& seqs, const DensePlan& plan, float scale, void* workspace, int slots,
              Mask mask = {}, Blocks blocks = {})
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
        blocks_(blocks) {
    Arena arena(workspace, plan.scratch_bytes * slots + plan.partial_bytes);
    scratch_ = arena.take<std::byte>(plan.scratch_bytes * slots);
    if (plan.splits > 1) {
      partial_acc_ = arena.take<float>(plan.items * plan.rows * plan.acc_cols);
      partial_rows_ = arena.take<tile::SoftmaxRow>(plan.items * plan.rows);
    }
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

    Arena arena(scratch_ + plan_.scratch_bytes * slot, plan_.scratch_bytes);
    const Index packed_keys = plan_.stream_keys ? 0 : plan_.kv_block;
    float* packed_k = arena.take<float>(tile::packed_key_floats(packed_keys, shape_.head_dim, Tile::cols));
    float* packed_v = arena.take<float>(tile::packed_value_floats(packed_keys, shape_.v_dim, Tile::cols));
    float* scores = arena.take<float>(Tile::mr * plan_.kv_block);     // (mr, kv_block)
    float* q_rows = arena.take<float>(plan_.rows * shape_.head_dim);  // (rows, head_dim), scaled
    const Index ldo = plan_.acc_cols;
    float* acc = arena.take<float>(plan_.rows * ldo);  // (rows, acc_cols)
    tile::SoftmaxRow* states = arena.take<tile::SoftmaxRow>(plan_.rows);
    if (plan_.splits > 1) {
      acc = partial_acc_ + item * plan_.rows * ldo;
      states = partial_rows_ + item * plan_.rows;
    }
    // Query rows copied contiguous and pre-scaled; padding rows are zero, so their scores are 0
    // and serve as probabilities 0.
    for (Index row = 0; row < plan_.rows; ++row) {
      float* dst = q_rows + row * shape_.head_dim;
      const Index r = row % plan_.group_rows;
      if (r >= group_rows) {
        std::fill(dst, dst + shape_.head_dim, 0.0f);
        continue;
      }
      const Index out_head = (first_group + row / plan_.group_rows) * plan_.group + r % plan_.group;
      const float* src = q_.at(seq.batch, seq.q_begin + first_pos + r / plan_.group, shape_.heads.q_head(out_head), 0);
      for (Index d = 0; d < shape_.head_dim; ++d) dst[d] = src[d] * scale_;
    }
    std::fill(acc, acc + plan_.rows * ldo, 0.0f);
    std::fill(states, states + plan_.rows, tile::SoftmaxRow{});

    // Keys this item may visit: its split, narrowed by what its first and last rows see.
    const tile::KeyRange first = mask_.visible(first_pos, seq.q_len, seq.kv_len);
    const tile::KeyRange last = mask_.visible(end_pos - 1, seq.q_len, seq.kv_len);
    const Index split_begin = split * plan_.split_keys;
    const Index key_begin = std::max(split_begin, std::min(first.begin, last.begin));
    const Index key_end = std::min({seq.kv_len, split_begin + plan_.split_keys, std::max(first.end, last.end)});

    const Index lds = plan_.kv_block;
    const Index ldk = k_.stride(1), ldv = v_.stride(1);
    blocks_.for_each(
        seq_index, first_group * plan_.group, chunk, key_begin, key_end, plan_.kv_block, [&](Index block, Index keys) {
          for (Index g = 0; g < plan_.groups_per_item; ++g) {
            const Index kv_head = shape_.heads.kv_head((first_group + g) * plan_.group);
            const float* k_block = k_.at(seq.batch, seq.kv_begin + block, kv_head, 0);  // (keys, head_dim), ldk
            const float* v_block = v_.at(seq.batch, seq.kv_begin + block, kv_head, 0);  // (keys, v_dim), ldv
            if (!plan_.stream_keys) {
              tile::pack_key_panels<Tile::cols>(k_block, ldk, keys, shape_.head_dim, packed_k);
              tile::pack_value_strips<Tile::cols>(v_block, ldv, keys, shape_.v_dim, packed_v);
            }
            for (Index t = 0; t < group_rows; t += Tile::mr) {
              const Index row0 = g * plan_.group_rows + t;  // first row of the tile in the item
              const Index tile_rows = std::min<Index>(Tile::mr, group_rows - t);
              const float* q_tile[Tile::mr];
              tile::KeyRange ranges[Tile::mr];
              Index tile_end = block;  // the tile's rows see keys before tile_end only
              for (int r = 0; r < Tile::mr; ++r) {
                q_tile[r] = q_rows + (row0 + r) * shape_.head_dim;
                if (r >= tile_rows) continue;
                const Index pos = first_pos + (t + r) / plan_.group;
                const tile::KeyRange seen = mask_.visible(pos, seq.q_len, seq.kv_len);
                ranges[r] = {std::max(seen.begin, block), std::min(seen.end, block + keys)};
                if (ranges[r].begin < ranges[r].end) tile_end = std::max(tile_end, ranges[r].end);
              }
              if (tile_end == block) continue;  // nothing visible
              // Only the panels up to the tile's last visible key (skips the causal diagonal's upper half).
              const Index tile_keys = tile_end - block;
              const Index padded_keys = Tile::pad_cols(tile_keys);
              bool needs_mask = false;
              for (Index r = 0; r < tile_rows; ++r)
                needs_mask |= ranges[r].begin > block || ranges[r].end < block + padded_keys;
              if (plan_.stream_keys)
                tile::with_tile_rows<Tile::mr>(tile_rows, [&](auto rows) {
                  tile::score_rows_in_place<V, rows()>(q_tile, k_block, ldk, tile_keys, shape_.head_dim, scores, lds);
                });
              else
                tile::score_block<V>(q_tile, packed_k, shape_.head_dim, padded_keys, scores, lds);
              for (Index r = 0; r < tile_rows; ++r) {
                float* s = scores + r * lds;
                if (needs_mask) tile::mask_block_row(s, padded_keys, block, ranges[r], tile::kNegInf);
                const float rescale = tile::softmax_block_row<V>(s, padded_keys, 1.0f, states[row0 + r]);
                if (rescale != 1.0f) tile::scale_row<V>(acc + (row0 + r) * ldo, ldo, rescale);
              }
              if (plan_.stream_keys)
                tile::with_tile_rows<Tile::mr>(tile_rows, [&](auto rows) {
                  tile::accumulate_pv<V, rows()>(scores, lds, v_block, ldv, tile_keys, shape_.v_dim, acc + row0 * ldo,
                                                 ldo);
                });
              else
                tile::accumulate_pv_packed<V>(scores, lds, packed_v, keys * Tile::cols, tile_keys, ldo / Tile::cols,
                                              acc + row0 * ldo, ldo);
            }
          }
        });
    if (plan_.splits > 1) return;
    for_each_row(seq, first_group, first_pos, end_pos, [&](Index row, float* out_row, float* lse) {
      const float row_lse = tile::finalize_row<V>(acc + row * ldo, shape_.v_dim, states[row], out_row);
      if (lse != nullptr) *lse = row_lse;
    });
  }

  // Items of the merge pass: (sequence, kv heads, query chunk); only when splits > 1.
  Index merge_items() const { return plan_.items / plan_.splits; }

  void merge_item(Index item) const {
    const Index chunk = item % plan_.chunks;
    const Index first_group = item / plan_.chunks % plan_.item_groups * plan_.groups_per_item;
    const Sequence seq = seqs_[item / plan_.chunks / plan_.item_groups];
    const Index first_pos = chunk * plan_.q_chunk;
    const Index end_pos = std::min(first_pos + plan_.q_chunk, seq.q_len);
    // Split items of this chunk are consecutive; run_item numbers chunks from the end.
    const Index first_split_item = ((item / plan_.chunks) * plan_.chunks + (plan_.chunks - 1 - chunk)) * plan_.splits;
    const Index acc_stride = plan_.rows * plan_.acc_cols;
    for_each_row(seq, first_group, first_pos, end_pos, [&](Index row, float* out_row, float* lse) {
      const float row_lse = tile::merge_partial_rows<V>(
          partial_acc_ + first_split_item * acc_stride + row * plan_.acc_cols, acc_stride,
          partial_rows_ + first_split_item * plan_.rows + row, plan_.rows, plan_.splits, shape_.v_dim, out_row);
      if (lse != nullptr) *lse = row_lse;
    });
  }

 private:
  // Calls f(item row, output row, log-sum-exp slot or null) for every real row of an item.
  template <class F>
  void for_each_row(const Sequence& seq, Index first_group, Index first_pos, Index end_pos, F&& f) const {
    const Index group_rows = (end_pos - first_pos) * plan_.group;
    for (Index g = 0; g < plan_.groups_per_item; ++g)
      for (Index r = 0; r < group_rows; ++r) {
        const Index pos = seq.q_begin + first_pos + r / plan_.group;
        const Index out_head = (first_group + g) * plan_.group + r % plan_.group;
        f(g * plan_.group_rows + r, out_.at(seq.batch, pos, out_head, 0),
          lse_.data() != nullptr ? lse_.at(seq.batch, pos, out_head) : nullptr);
      }
  }

  View<const float, 4> q_, k_, v_;
  View<float, 4> out_;
  View<float, 3> lse_;
  AttentionShape shape_;
  SequenceLayout seqs_;
  DensePlan plan_;
  float scale_;
  Mask mask_;
  Blocks blocks_;
  std::byte* scratch_ = nullptr;
  float* partial_acc_ = nullptr;
  tile::SoftmaxRow* partial_rows_ = nullptr;
};

// Options::scale of every exact mechanism: absent, or finite and > 0.
inline void check_scale(const std::optional<float>& scale) {
  if (scale)
    ATTNKIT_CHECK(std::isfinite(*scale) && *scale > 0.0f, "options.scale is ", *scale, ", expected a finite value > 0");
}

// Views of packed (token, head, dim) tensors as batch-1 (batch, seq, head, dim) views.
template <class T>
View<T, 4> as_batch_of_one(const View<T, 3>& x) {
  return View<T, 4>(x.data(), {1, x.extent(0), x.extent(1), x.extent(2)},
                    {x.extent(0) * x.stride(0), x.stride(0), x.stride(1), x.stride(2)});
}

}  // namespace detail

template <class Backend>
class Attention<Dense, Backend> {
  using V = vector_t<Backend>;

 public:
  using Options = Dense::Options;
  using Args = Dense::Args;

  explicit Attention(Options options = {}, Backend backend = {}) : options_(options), backend_(backend) {
    detail::check_scale(options_.scale);
    ATTNKIT_CHECK(options_.window.left >= -1, "options.window.left is ", options_.window.left,
                  ", expected >= 0 or -1 (unbounded)");
    ATTNKIT_CHECK(options_.window.right >= -1, "options.window.right is ", options_.window.right,
                  ", expected >= 0 or -1 (unbounded)");
  }

  std::string name() const { return "dense/" + Backend::name(); }
  const Options& options() const { return options_; }

  // Padded inputs: q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv) -> out (B, Lq, Ho, Dv).
  Cost cost(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
            const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, nullptr);
    return cost_of(shape, SequenceLayout::padded(shape, args.lengths));
  }
  std::size_t workspace_bytes(const View<const float, 4>& q, const View<const float, 4>& k,
                              const View<const float, 4>& v, const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, nullptr);
    return workspace_of(detail::make_dense_plan<V>(shape, SequenceLayout::padded(shape, args.lengths)));
  }
  void operator()(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                  const View<float, 4>& out, const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, &out);
    const SequenceLayout seqs = SequenceLayout::padded(shape, args.lengths);
    check_lse(args.lse, shape.batch, shape.q_len, shape);
    detail::zero_rows_past_lengths(out, seqs, args.lse);
    run(q, k, v, out, args, shape, seqs);
  }

  // Packed inputs: q (Tq, Hq, D), k (Tk, Hkv, D), v (Tk, Hkv, Dv) -> out (Tq, Ho, Dv), sequences
  // given by cu_seqlens; args.lengths must be empty.
  Cost cost(const View<const float, 3>& q, const View<const float, 3>& k, const View<const float, 3>& v,
            const CuSeqlens& cu) const {
    const auto [shape, seqs] = packed_shape(q, k, v, cu, nullptr);
    return cost_of(shape, seqs);
  }
  std::size_t workspace_bytes(const View<const float, 3>& q, const View<const float, 3>& k,
                              const View<const float, 3>& v, const CuSeqlens& cu) const {
    const auto [shape, seqs] = packed_shape(q, k, v, cu, nullptr);
    return workspace_of(detail::make_dense_plan<V>(shape, seqs));
  }
  void operator()(const View<const float, 3>& q, const View<const float, 3>& k, const View<const float, 3>& v,
                  const View<float, 3>& out, const CuSeqlens& cu, const Args& args = {}) const {
    ATTNKIT_CHECK(args.lengths.q.empty() && args.lengths.kv.empty(),
                  "args.lengths: expected empty with packed inputs (cu_seqlens gives the lengths)");
    const View<float, 4> out4 = detail::as_batch_of_one(out);
    const auto [shape, seqs] = packed_shape(q, k, v, cu, &out4);
    check_lse(args.lse, 1, shape.q_len, shape);
    run(detail::as_batch_of_one(q), detail::as_batch_of_one(k), detail::as_batch_of_one(v), out4, args, shape, seqs);
  }

 private:
  struct PackedShape {
    AttentionShape shape;
    SequenceLayout seqs;
  };
  static PackedShape packed_shape(const View<const float, 3>& q, const View<const float, 3>& k,
                                  const View<const float, 3>& v, const CuSeqlens& cu, const View<float, 4>* out) {
    const AttentionShape shape =
        attention_shape(detail::as_batch_of_one(q), detail::as_batch_of_one(k), detail::as_batch_of_one(v), out);
    return {shape, SequenceLayout::packed(cu, shape.q_len, shape.kv_len)};
  }

  static void check_lse(const View<float, 3>& lse, Index batch, Index q_len, const AttentionShape& shape) {
    if (lse.data() == nullptr && lse.empty()) return;
    check_view(lse, "args.lse");
    const std::array<Index, 3> expected{batch, q_len, shape.heads.out_heads()};
    for (int axis = 0; axis < 3; ++axis)
      ATTNKIT_CHECK(lse.extent(axis) == expected[axis], "args.lse: extent ", axis, " is ", lse.extent(axis),
                    ", expected ", expected[axis], " (batch, q_len, out_heads)");
  }

  float scale_for(const AttentionShape& shape) const {
    return options_.scale.value_or(1.0f / std::sqrt(static_cast<float>(shape.head_dim)));
  }

  // Calls f with the mask policy of the options: window (causal folded in), causal or none.
  template <class F>
  void with_mask(F&& f) const {
    const Dense::Window& w = options_.window;
    if (w.left >= 0 || w.right >= 0)
      f(tile::WindowMask{w.left, options_.causal ? 0 : w.right});
    else if (options_.causal)
      f(tile::CausalMask{});
    else
      f(tile::NoMask{});
  }

  Cost cost_of(const AttentionShape& shape, const SequenceLayout& seqs) const {
    double pairs = 0;
    with_mask([&](auto mask) {
      for (Index s = 0; s < seqs.count(); ++s) {
        const Sequence seq = seqs[s];
        for (Index pos = 0; pos < seq.q_len; ++pos) {
          const tile::KeyRange seen = mask.visible(pos, seq.q_len, seq.kv_len);
          pairs += static_cast<double>(seen.end - seen.begin);
        }
      }
    });
    const double out_heads = static_cast<double>(shape.heads.out_heads());
    Cost cost;
    cost.flops = 2.0 * pairs * out_heads * static_cast<double>(shape.head_dim + shape.v_dim);
    const double batch = static_cast<double>(shape.batch);
    cost.bytes = sizeof(float) * batch *
                 (static_cast<double>(shape.q_len) * (shape.heads.q_heads * shape.head_dim + out_heads * shape.v_dim) +
                  static_cast<double>(shape.kv_len) * shape.heads.kv_heads * (shape.head_dim + shape.v_dim));
    return cost;
  }

  std::size_t workspace_of(const detail::DensePlan& plan) const {
    if (plan.items == 0) return 0;
    return plan.scratch_bytes * static_cast<std::size_t>(backend_.threads()) + plan.partial_bytes;
  }

  void run(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
           const View<float, 4>& out, const Args& args, const AttentionShape& shape, const SequenceLayout& seqs) const {
    const detail::DensePlan plan = detail::make_dense_plan<V>(shape, seqs);
    if (plan.items == 0) return;
    const detail::ScopedWorkspace workspace(args.workspace, workspace_of(plan));
    const float scale = scale_for(shape);
    auto launch = [&](auto mask) {
      using Mask = decltype(mask);
      const detail::DenseKernel<V, Mask> kernel(q, k, v, out, args.lse, shape, seqs, plan, scale, workspace.data(),
                                                backend_.threads(), mask);
      backend_.parallel_for(plan.items, [&](Index item, int slot) { kernel.run_item(item, slot); });
      if (plan.splits > 1)
        backend_.parallel_for(kernel.merge_items(), [&](Index item, int) { kernel.merge_item(item); });
    };
    with_mask(launch);
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
