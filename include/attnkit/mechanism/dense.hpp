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
// packed (cu_seqlens; token rows past the last sequence written as zeros). Decode-like shapes
// (few query rows per kv head, long kv) split the keys into fixed-size ranges merged by
// log-sum-exp. Every tiling decision depends on the shape only,
// so all backends and thread counts give the same bits. The key blocks an item visits come from a
// Blocks policy: all of them here, the listed ones for the block-sparse mechanism.
// Storage: Q, K, V and out may each be float, bfloat16 or float16 (K and V of one type), or K and
// V int8 with a scale per row (QuantizedView, padded inputs); the math is float (products and
// softmax), stored values converted where they are read.
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
#include "attnkit/core/quantize.hpp"
#include "attnkit/core/scale.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/storage.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/kernel/dense.hpp"
#include "attnkit/kernel/dense_dispatch.hpp"
#include "attnkit/tile/mask.hpp"
#include "attnkit/tile/tile_shape.hpp"

namespace attnkit {

struct Dense {
  // Sliding window (local attention): query i sees keys j with i' - left <= j <= i' + right,
  // i' = i + kv_len - q_len (flash-attn's window_size); -1 leaves a side unbounded.
  struct Window {
    Index left = -1;
    Index right = -1;
  };
  // How the products are formed for bfloat16 Q, K and V (prefill; decode always converts):
  //   convert    to float (the query scaled first, as for every type);
  //   pairs      Q · Kᵀ as bfloat16 pairs with AVX512-BF16's vdpbf16ps (exact products, the scale
  //              applied to the score) where the CPU and the kernels that run have it, else convert;
  //   amx_tiles  Q · Kᵀ and P · V on AMX-BF16 tiles (exact products; P rounded to bfloat16, whose
  //              error the README bounds) where the CPU has AMX and the kernels that run are
  //              AVX-512 ones, else as pairs.
  // Both are opt-in: pairs were slower on the one AVX512-BF16 host measured, and amx_tiles round P
  // (README, Benchmarks).
  enum class Bf16Products { convert, pairs, amx_tiles };
  struct Options {
    bool causal = false;           // bottom-right aligned when q_len != kv_len
    std::optional<float> scale{};  // default 1 / sqrt(head_dim); must be finite and > 0
    Window window{};               // with causal, right is 0 whatever is set
    Bf16Products bf16_products = Bf16Products::convert;
  };
  // Optional extras of one call.
  struct Args {
    SeqLengths lengths{};   // padded inputs only: real q / kv length per batch entry
    View<float, 3> lse{};   // (batch, q_len, out_heads) log-sum-exp per row, -inf for a row that
                            // sees no key; packed inputs: (1, q_tokens, out_heads)
    Workspace workspace{};  // >= workspace_bytes(...) bytes, 64-byte aligned; none: allocated
  };
};

// Element types Attention<Dense> takes (views of T or const T): Q, out any storage type, K and V
// one storage type.
template <class Q, class K, class V, class O>
concept DenseStorage = is_storage_type_v<std::remove_const_t<Q>> && is_storage_type_v<std::remove_const_t<K>> &&
    std::is_same_v<std::remove_const_t<K>, std::remove_const_t<V>> && is_storage_type_v<O>;

namespace detail {
// Views of packed (token, head, dim) tensors as batch-1 (batch, seq, head, dim) views.
template <class T>
View<T, 4> as_batch_of_one(const View<T, 3>& x) {
  return View<T, 4>(x.data(), {1, x.extent(0), x.extent(1), x.extent(2)},
                    {0, x.stride(0), x.stride(1), x.stride(2)});  // one batch entry: its stride is never used
}

}  // namespace detail

template <class Backend>
class Attention<Dense, Backend> {
 public:
  using Options = Dense::Options;
  using Args = Dense::Args;

  explicit Attention(Options options = {}, Backend backend = {}) : options_(options), backend_(backend) {
    detail::check_scale_option(options_.scale);
    ATTNKIT_CHECK(options_.window.left >= -1, "options.window.left is ", options_.window.left,
                  ", expected >= 0 or -1 (unbounded)");
    ATTNKIT_CHECK(options_.window.right >= -1, "options.window.right is ", options_.window.right,
                  ", expected >= 0 or -1 (unbounded)");
  }

  // "dense", "-causal" and / or "-window" for the mask, then the backend and the ISA it runs.
  std::string name() const {
    const bool window = options_.window.left >= 0 || options_.window.right >= 0;
    return std::string("dense") + (options_.causal ? "-causal" : "") + (window ? "-window" : "") + "/" +
           detail::dense_backend_name(backend_);
  }
  const Options& options() const { return options_; }

  // Padded inputs: q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv) -> out (B, Lq, Ho, Dv).
  template <class Q, class K, class V>
  requires DenseStorage<Q, K, V, float> Cost cost(const View<Q, 4>& q, const View<K, 4>& k, const View<V, 4>& v,
                                                  const Args& args = {})
  const {
    const AttentionShape shape = attention_shape(q, k, v, nullptr);
    return cost_of(shape, SequenceLayout::padded(shape, args.lengths), storage_of<K>());
  }
  template <class Q, class K, class V>
  requires DenseStorage<Q, K, V, float> std::size_t workspace_bytes(const View<Q, 4>& q, const View<K, 4>& k,
                                                                    const View<V, 4>& v, const Args& args = {})
  const {
    const AttentionShape shape = attention_shape(q, k, v, nullptr);
    return workspace_of(detail::make_dense_plan(shape, SequenceLayout::padded(shape, args.lengths),
                                                detail::dense_geometry(backend_), storage_of<K>(),
                                                products_of(storage_of<Q>(), storage_of<K>())));
  }
  template <class Q, class K, class V, class O>
  requires DenseStorage<Q, K, V, O>
  void operator()(const View<Q, 4>& q, const View<K, 4>& k, const View<V, 4>& v, const View<O, 4>& out,
                  const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, &out);
    const SequenceLayout seqs = SequenceLayout::padded(shape, args.lengths);
    check_lse(args.lse, shape.batch, shape.q_len, shape, {q, k, v, out});
    detail::zero_rows_past_lengths(out, seqs, args.lse);
    run(View<const std::remove_const_t<Q>, 4>(q), View<const std::remove_const_t<K>, 4>(k),
        View<const std::remove_const_t<V>, 4>(v), out, args, shape, seqs);
  }

  // Padded inputs with int8 K and V (values (B, Lk, Hkv, D), scales (B, Lk, Hkv); see
  // core/quantize.hpp): as above on the dequantized values.
  template <class Q>
  requires DenseStorage<Q, float, float, float> Cost cost(const View<Q, 4>& q, const QuantizedView& k,
                                                          const QuantizedView& v, const Args& args = {})
  const {
    const AttentionShape shape = attention_shape(q, k.values, v.values, nullptr);
    Cost cost = cost_of(shape, SequenceLayout::padded(shape, args.lengths), Storage::i8);
    cost.bytes += 2.0 * sizeof(float) * static_cast<double>(k.scales.size());
    return cost;
  }
  template <class Q>
  requires DenseStorage<Q, float, float, float> std::size_t workspace_bytes(const View<Q, 4>& q, const QuantizedView& k,
                                                                            const QuantizedView& v,
                                                                            const Args& args = {})
  const {
    const AttentionShape shape = attention_shape(q, k.values, v.values, nullptr);
    return workspace_of(detail::make_dense_plan(shape, SequenceLayout::padded(shape, args.lengths),
                                                detail::dense_geometry(backend_), Storage::i8));
  }
  template <class Q, class O>
  requires DenseStorage<Q, float, float, O>
  void operator()(const View<Q, 4>& q, const QuantizedView& k, const QuantizedView& v, const View<O, 4>& out,
                  const Args& args = {}) const {
    detail::check_quantized(k, "k", "k.scales");
    detail::check_quantized(v, "v", "v.scales");
    const AttentionShape shape = attention_shape(q, k.values, v.values, &out);
    check_output_view(out, "out", {memory_range(k.scales, "k.scales"), memory_range(v.scales, "v.scales")});
    const SequenceLayout seqs = SequenceLayout::padded(shape, args.lengths);
    check_lse(args.lse, shape.batch, shape.q_len, shape, {q, k.values, v.values, out});
    detail::zero_rows_past_lengths(out, seqs, args.lse);
    run(View<const std::remove_const_t<Q>, 4>(q), k.values, v.values, out, args, shape, seqs, k.scales, v.scales);
  }

  // Packed inputs: q (Tq, Hq, D), k (Tk, Hkv, D), v (Tk, Hkv, Dv) -> out (Tq, Ho, Dv), sequences
  // given by cu_seqlens; args.lengths must be empty.
  template <class Q, class K, class V>
  requires DenseStorage<Q, K, V, float> Cost cost(const View<Q, 3>& q, const View<K, 3>& k, const View<V, 3>& v,
                                                  const CuSeqlens& cu)
  const {
    const auto [shape, seqs] = packed_shape(q, k, v, cu, static_cast<const View<float, 4>*>(nullptr));
    return cost_of(shape, seqs, storage_of<K>());
  }
  template <class Q, class K, class V>
  requires DenseStorage<Q, K, V, float> std::size_t workspace_bytes(const View<Q, 3>& q, const View<K, 3>& k,
                                                                    const View<V, 3>& v, const CuSeqlens& cu)
  const {
    const auto [shape, seqs] = packed_shape(q, k, v, cu, static_cast<const View<float, 4>*>(nullptr));
    return workspace_of(detail::make_dense_plan(shape, seqs, detail::dense_geometry(backend_), storage_of<K>(),
                                                products_of(storage_of<Q>(), storage_of<K>())));
  }
  template <class Q, class K, class V, class O>
  requires DenseStorage<Q, K, V, O>
  void operator()(const View<Q, 3>& q, const View<K, 3>& k, const View<V, 3>& v, const View<O, 3>& out,
                  const CuSeqlens& cu, const Args& args = {}) const {
    ATTNKIT_CHECK(args.lengths.q.empty() && args.lengths.kv.empty(),
                  "args.lengths: expected empty with packed inputs (cu_seqlens gives the lengths)");
    const View<O, 4> out4 = detail::as_batch_of_one(out);
    const auto [shape, seqs] = packed_shape(q, k, v, cu, &out4);
    check_lse(args.lse, 1, shape.q_len, shape, {q, k, v, out});
    zero_rows_past_tokens(out4, args.lse, cu.q.back());
    run(View<const std::remove_const_t<Q>, 4>(detail::as_batch_of_one(q)),
        View<const std::remove_const_t<K>, 4>(detail::as_batch_of_one(k)),
        View<const std::remove_const_t<V>, 4>(detail::as_batch_of_one(v)), out4, args, shape, seqs);
  }

 private:
  struct PackedShape {
    AttentionShape shape;
    SequenceLayout seqs;
  };
  template <class Q, class K, class V, class O>
  static PackedShape packed_shape(const View<Q, 3>& q, const View<K, 3>& k, const View<V, 3>& v, const CuSeqlens& cu,
                                  const View<O, 4>* out) {
    const AttentionShape shape =
        attention_shape(detail::as_batch_of_one(q), detail::as_batch_of_one(k), detail::as_batch_of_one(v), out);
    return {shape, SequenceLayout::packed(cu, shape.q_len, shape.kv_len)};
  }

  // Where the views of a call lie, for checking that args.lse aliases none of them.
  struct CallMemory {
    MemoryRange q, k, v, out;
    template <class Q, class K, class V, class Out>
    CallMemory(const Q& q_view, const K& k_view, const V& v_view, const Out& out_view)
        : q(memory_range(q_view, "q")),
          k(memory_range(k_view, "k")),
          v(memory_range(v_view, "v")),
          out(memory_range(out_view, "out")) {}
  };

  static void check_lse(const View<float, 3>& lse, Index batch, Index q_len, const AttentionShape& shape,
                        const CallMemory& call) {
    if (lse.data() == nullptr && lse.empty()) return;
    check_view(lse, "args.lse");
    const std::array<Index, 3> expected{batch, q_len, shape.heads.out_heads()};
    for (int axis = 0; axis < 3; ++axis)
      ATTNKIT_CHECK(lse.extent(axis) == expected[axis], "args.lse: extent ", axis, " is ", lse.extent(axis),
                    ", expected ", expected[axis], " (batch, q_len, out_heads)");
    check_output_view(lse, "args.lse", {call.q, call.k, call.v, call.out});
  }

  // Packed outputs: token rows past the last sequence (cu_seqlens.q.back() and on) belong to no
  // sequence; they are written as zeros (log-sum-exp -inf), as rows past a padded length are.
  template <class O>
  static void zero_rows_past_tokens(const View<O, 4>& out, const View<float, 3>& lse, Index tokens) {
    for (Index t = tokens; t < out.extent(1); ++t)
      for (Index h = 0; h < out.extent(2); ++h) {
        for (Index d = 0; d < out.extent(3); ++d) out(0, t, h, d) = O(0.0f);
        if (lse.data() != nullptr) lse(0, t, h) = -std::numeric_limits<float>::infinity();
      }
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

  Cost cost_of(const AttentionShape& shape, const SequenceLayout& seqs, Storage kv_storage) const {
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
    cost.bytes = detail::attention_bytes(shape, storage_bytes(kv_storage));
    return cost;
  }

  detail::DenseProducts products_of(Storage q, Storage kv) const {
    switch (options_.bf16_products) {
      case Dense::Bf16Products::convert:
        break;
      case Dense::Bf16Products::pairs:
        return detail::dense_products(backend_, q, kv, detail::DenseProducts::bf16_pairs);
      case Dense::Bf16Products::amx_tiles:
        return detail::dense_products(backend_, q, kv, detail::DenseProducts::amx_bf16);
    }
    return detail::DenseProducts::f32;
  }

  std::size_t workspace_of(const detail::DensePlan& plan) const {
    return detail::dense_workspace_bytes(plan, backend_.threads());
  }

  void run(const ErasedView<const void, 4>& q, const ErasedView<const void, 4>& k, const ErasedView<const void, 4>& v,
           const ErasedView<void, 4>& out, const Args& args, const AttentionShape& shape, const SequenceLayout& seqs,
           const View<const float, 3>& k_scales = {}, const View<const float, 3>& v_scales = {}) const {
    const detail::DensePlan plan = detail::make_dense_plan(shape, seqs, detail::dense_geometry(backend_), k.storage,
                                                           products_of(q.storage, k.storage));
    if (plan.items == 0) return;
    const detail::ScopedWorkspace workspace(args.workspace, workspace_of(plan));
    const detail::DenseLaunch launch{.q = q,
                                     .k = k,
                                     .v = v,
                                     .out = out,
                                     .k_scales = k_scales,
                                     .v_scales = v_scales,
                                     .lse = args.lse,
                                     .shape = shape,
                                     .seqs = seqs,
                                     .plan = plan,
                                     .scale = detail::scale_or_default(options_.scale, shape.head_dim),
                                     .workspace = workspace.data()};
    with_mask([&](auto mask) { detail::run_dense(backend_, launch, mask); });
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
