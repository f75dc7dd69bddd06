// Problem shape of attention-like mechanisms, read off and validated from the caller's views:
// head mapping (MHA / GQA / MQA / SQA and reverse SQA), per-batch lengths on padded inputs and
// cumulative offsets (cu_seqlens) on packed inputs. Validation throws attnkit::Error naming the
// argument; nothing here runs a kernel.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <span>

#include "attnkit/core/error.hpp"
#include "attnkit/core/view.hpp"

namespace attnkit {

// Which query head and which key/value head produce each output head.
//   q_heads >= kv_heads (MHA, GQA, MQA, SQA): out head o uses q head o and kv head
//     o / (q_heads / kv_heads); output has q_heads heads.
//   q_heads <  kv_heads (reverse SQA): query head h serves kv heads h, h + q_heads, ...; out head
//     o uses q head o % q_heads and kv head o; output has kv_heads heads.
// Out heads sharing one kv head are contiguous: [kv * group(), (kv + 1) * group()).
struct HeadMap {
  Index q_heads = 1;
  Index kv_heads = 1;

  Index out_heads() const { return std::max(q_heads, kv_heads); }
  Index group() const { return q_heads >= kv_heads ? q_heads / kv_heads : 1; }
  Index q_head(Index out_head) const { return q_heads >= kv_heads ? out_head : out_head % q_heads; }
  Index kv_head(Index out_head) const { return q_heads >= kv_heads ? out_head / group() : out_head; }
};

inline HeadMap make_head_map(Index q_heads, Index kv_heads) {
  ATTNKIT_CHECK(q_heads >= 1, "q: heads ", q_heads, ", expected >= 1");
  ATTNKIT_CHECK(kv_heads >= 1, "k: heads ", kv_heads, ", expected >= 1");
  ATTNKIT_CHECK(q_heads % kv_heads == 0 || kv_heads % q_heads == 0, "k: heads ", kv_heads,
                ", expected a divisor or a multiple of q heads ", q_heads);
  return HeadMap{q_heads, kv_heads};
}

namespace detail {
// Offset of a view's last element, sum (extent - 1) * stride; a non-empty view's elements lie in
// [data, data + last_offset]. Unchecked: check_strided_view has checked it once.
template <class T, int Rank>
Index last_offset(const View<T, Rank>& view) {
  Index offset = 0;
  for (int axis = 0; axis < Rank; ++axis) offset += (view.extent(axis) - 1) * view.stride(axis);
  return offset;
}
}  // namespace detail

// Checks what every kernel assumes of a view: non-negative extents and strides, an element count
// and a last element offset (in elements and in bytes) that fit in Index, data present when
// non-empty. Any axis may be strided (Mamba's (batch, d_inner, L) layout).
template <class T, int Rank>
void check_strided_view(const View<T, Rank>& view, const char* name) {
  for (int axis = 0; axis < Rank; ++axis) {
    ATTNKIT_CHECK(view.extent(axis) >= 0, name, ": extent ", axis, " is ", view.extent(axis), ", expected >= 0");
    ATTNKIT_CHECK(view.stride(axis) >= 0, name, ": stride ", axis, " is ", view.stride(axis),
                  ", expected >= 0 (negative strides are not supported)");
  }
  if (view.empty()) return;
  Index count = 1;
  Index offset = 0;
  constexpr Index kMax = std::numeric_limits<Index>::max();
  for (int axis = 0; axis < Rank; ++axis) {
    const Index extent = view.extent(axis);
    ATTNKIT_CHECK(count <= kMax / extent, name, ": element count overflows int64 (extent ", axis, " is ", extent, ")");
    count *= extent;
    const Index stride = view.stride(axis);
    ATTNKIT_CHECK(stride == 0 || extent - 1 <= (kMax - offset) / stride, name,
                  ": offset of the last element overflows int64 (stride ", axis, " is ", stride, ")");
    offset += (extent - 1) * stride;
  }
  ATTNKIT_CHECK(offset <= kMax / Index(sizeof(T)), name, ": byte offset of the last element overflows int64");
  ATTNKIT_CHECK(view.data() != nullptr, name, ": data is null, expected ", count, " elements");
}

// Where a view's elements lie in memory, as a byte range [begin, end) named for messages.
struct MemoryRange {
  std::uintptr_t begin = 0;
  std::uintptr_t end = 0;
  const char* name = "";
};
template <class T, int Rank>
MemoryRange memory_range(const View<T, Rank>& view, const char* name) {
  if (view.empty() || view.data() == nullptr) return {0, 0, name};
  const auto begin = reinterpret_cast<std::uintptr_t>(view.data());
  return {begin, begin + static_cast<std::uintptr_t>(detail::last_offset(view) + 1) * sizeof(T), name};
}

// Checks an output view (after check_strided_view): no two of its elements share memory, and its
// memory is disjoint from every input's. Elements are distinct when, its axes of extent > 1
// sorted by stride, each stride is at least the previous stride times its extent: any
// permutation of a row-major tensor, padded or not. Threads write disjoint outputs only, and a
// kernel reads inputs after it started writing, so aliasing is never allowed.
template <class T, int Rank>
void check_output_view(const View<T, Rank>& out, const char* name, std::span<const MemoryRange> inputs) {
  if (out.empty()) return;
  std::array<int, Rank> axes{};
  int count = 0;
  for (int axis = 0; axis < Rank; ++axis)
    if (out.extent(axis) > 1) axes[count++] = axis;
  for (int i = 1; i < count; ++i)  // insertion sort by stride (Rank <= 4)
    for (int j = i; j > 0 && out.stride(axes[j]) < out.stride(axes[j - 1]); --j) std::swap(axes[j], axes[j - 1]);
  Index span = 1;  // elements covered by the axes so far, as one block
  for (int i = 0; i < count; ++i) {
    const int axis = axes[i];
    ATTNKIT_CHECK(out.stride(axis) >= span, name, ": stride ", axis, " is ", out.stride(axis), ", expected >= ", span,
                  " (the elements of an output view must not overlap)");
    span = out.stride(axis) * out.extent(axis);
  }
  const MemoryRange range = memory_range(out, name);
  for (const MemoryRange& input : inputs)
    ATTNKIT_CHECK(input.end <= range.begin || range.end <= input.begin, name, ": memory overlaps ", input.name,
                  " (outputs must not alias inputs or other outputs)");
}
template <class T, int Rank>
void check_output_view(const View<T, Rank>& out, const char* name, std::initializer_list<MemoryRange> inputs) {
  check_output_view(out, name, std::span<const MemoryRange>(inputs.begin(), inputs.size()));
}

// Checks that the work of one call, the product of its problem sizes (say batch x heads x q_len
// x kv_len x head_dim), fits in Index: every product of distinct problem sizes a plan or a cost
// forms is then representable. Zero sizes count as one (an empty call does nothing).
inline void check_problem_size(std::initializer_list<Index> sizes, const char* what) {
  Index product = 1;
  for (Index size : sizes) {
    const Index factor = std::max<Index>(size, 1);
    ATTNKIT_CHECK(product <= std::numeric_limits<Index>::max() / factor, what, ": problem size overflows int64");
    product *= factor;
  }
}

// check_strided_view plus unit stride along the last (feature) axis, which the attention kernels
// load as vectors.
template <class T, int Rank>
void check_view(const View<T, Rank>& view, const char* name) {
  check_strided_view(view, name);
  if (view.empty()) return;
  ATTNKIT_CHECK(view.extent(Rank - 1) == 1 || view.stride(Rank - 1) == 1, name, ": stride of the last axis is ",
                view.stride(Rank - 1), ", expected 1");
}

// Shape of a (batch, seq, head, dim) attention problem.
struct AttentionShape {
  Index batch = 0;
  Index q_len = 0;
  Index kv_len = 0;
  Index head_dim = 0;  // of q and k
  Index v_dim = 0;     // of v and out
  HeadMap heads{};
};

// Validates q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv), out (B, Lq, Ho, Dv) with
// Ho = HeadMap::out_heads(), and returns the shape. Views of any element type (core/storage.hpp).
template <class Q, class K, class Val, class O>
AttentionShape attention_shape(const View<Q, 4>& q, const View<K, 4>& k, const View<Val, 4>& v, const View<O, 4>* out) {
  check_view(q, "q");
  check_view(k, "k");
  check_view(v, "v");
  AttentionShape s;
  s.batch = q.extent(0);
  s.q_len = q.extent(1);
  s.kv_len = k.extent(1);
  s.head_dim = q.extent(3);
  s.v_dim = v.extent(3);
  ATTNKIT_CHECK(k.extent(0) == s.batch, "k: batch ", k.extent(0), ", expected ", s.batch, " (q's batch)");
  ATTNKIT_CHECK(v.extent(0) == s.batch, "v: batch ", v.extent(0), ", expected ", s.batch, " (q's batch)");
  ATTNKIT_CHECK(s.head_dim >= 1, "q: head_dim ", s.head_dim, ", expected >= 1");
  ATTNKIT_CHECK(k.extent(3) == s.head_dim, "k: head_dim ", k.extent(3), ", expected ", s.head_dim, " (q's head_dim)");
  ATTNKIT_CHECK(v.extent(1) == s.kv_len, "v: seq ", v.extent(1), ", expected ", s.kv_len, " (k's seq)");
  ATTNKIT_CHECK(v.extent(2) == k.extent(2), "v: heads ", v.extent(2), ", expected ", k.extent(2), " (k's heads)");
  ATTNKIT_CHECK(s.v_dim >= 1, "v: head_dim ", s.v_dim, ", expected >= 1");
  s.heads = make_head_map(q.extent(2), k.extent(2));
  check_problem_size({s.batch, s.heads.out_heads(), s.q_len, s.kv_len, std::max(s.head_dim, s.v_dim)},
                     "q, k, v (batch x heads x q_len x kv_len x head_dim)");
  if (out != nullptr) {
    check_view(*out, "out");
    const std::array<Index, 4> expected{s.batch, s.q_len, s.heads.out_heads(), s.v_dim};
    const char* axes[4] = {"batch", "seq", "heads", "head_dim"};
    for (int axis = 0; axis < 4; ++axis)
      ATTNKIT_CHECK(out->extent(axis) == expected[axis], "out: ", axes[axis], " ", out->extent(axis), ", expected ",
                    expected[axis]);
    check_output_view(*out, "out", {memory_range(q, "q"), memory_range(k, "k"), memory_range(v, "v")});
  }
  return s;
}

template <class Q, class K, class Val>
AttentionShape attention_shape(const View<Q, 4>& q, const View<K, 4>& k, const View<Val, 4>& v, std::nullptr_t) {
  return attention_shape(q, k, v, static_cast<const View<float, 4>*>(nullptr));
}

// Real lengths of each batch entry of padded inputs (empty span: every entry is full length).
// Query rows past a sequence's length are written as zeros.
struct SeqLengths {
  std::span<const std::int32_t> q{};
  std::span<const std::int32_t> kv{};
};

// Packed variable-length inputs: sequence s owns tokens [q[s], q[s + 1]) of the query view and
// [kv[s], kv[s + 1]) of the key/value views (flash-attn's cu_seqlens_q / cu_seqlens_k).
struct CuSeqlens {
  std::span<const std::int32_t> q{};
  std::span<const std::int32_t> kv{};
};

// One sequence as kernels see it: rows [q_begin, q_begin + q_extent) of batch entry `batch`, of
// which the first q_len are real, attending keys [kv_begin, kv_begin + kv_len).
struct Sequence {
  Index batch = 0;
  Index q_begin = 0;
  Index q_len = 0;
  Index q_extent = 0;
  Index kv_begin = 0;
  Index kv_len = 0;
};

// The sequences of one call, padded or packed, enumerated without allocating.
class SequenceLayout {
 public:
  static SequenceLayout padded(const AttentionShape& shape, SeqLengths lengths) {
    check_lengths(lengths.q, shape.batch, shape.q_len, "lengths.q");
    check_lengths(lengths.kv, shape.batch, shape.kv_len, "lengths.kv");
    SequenceLayout layout;
    layout.count_ = shape.batch;
    layout.q_len_ = shape.q_len;
    layout.kv_len_ = shape.kv_len;
    layout.lengths_ = lengths;
    return layout;
  }

  // q_tokens / kv_tokens: extents of the packed views' token axes.
  static SequenceLayout packed(CuSeqlens cu, Index q_tokens, Index kv_tokens) {
    ATTNKIT_CHECK(!cu.q.empty(), "cu_seqlens.q: empty, expected sequences + 1 offsets");
    ATTNKIT_CHECK(cu.kv.size() == cu.q.size(), "cu_seqlens.kv: ", cu.kv.size(), " offsets, expected ", cu.q.size(),
                  " (as cu_seqlens.q)");
    check_offsets(cu.q, q_tokens, "cu_seqlens.q");
    check_offsets(cu.kv, kv_tokens, "cu_seqlens.kv");
    SequenceLayout layout;
    layout.count_ = static_cast<Index>(cu.q.size()) - 1;
    layout.cu_ = cu;
    layout.packed_ = true;
    for (Index s = 0; s < layout.count_; ++s) {
      layout.q_len_ = std::max<Index>(layout.q_len_, cu.q[s + 1] - cu.q[s]);
      layout.kv_len_ = std::max<Index>(layout.kv_len_, cu.kv[s + 1] - cu.kv[s]);
    }
    return layout;
  }

  Index count() const { return count_; }
  Index max_q_len() const { return q_len_; }    // longest q_extent
  Index max_kv_len() const { return kv_len_; }  // longest kv_len
  bool is_packed() const { return packed_; }

  Sequence operator[](Index s) const {
    if (packed_) {
      const Index q_len = cu_.q[s + 1] - cu_.q[s];
      return Sequence{0, cu_.q[s], q_len, q_len, cu_.kv[s], Index(cu_.kv[s + 1] - cu_.kv[s])};
    }
    const Index q_len = lengths_.q.empty() ? q_len_ : lengths_.q[s];
    const Index kv_len = lengths_.kv.empty() ? kv_len_ : lengths_.kv[s];
    return Sequence{s, 0, q_len, q_len_, 0, kv_len};
  }

 private:
  static void check_lengths(std::span<const std::int32_t> lengths, Index batch, Index extent, const char* name) {
    if (lengths.empty()) return;
    ATTNKIT_CHECK(static_cast<Index>(lengths.size()) == batch, name, ": ", lengths.size(), " entries, expected ", batch,
                  " (batch)");
    for (std::size_t b = 0; b < lengths.size(); ++b)
      ATTNKIT_CHECK(lengths[b] >= 0 && lengths[b] <= extent, name, "[", b, "] is ", lengths[b], ", expected in [0, ",
                    extent, "]");
  }
  static void check_offsets(std::span<const std::int32_t> cu, Index tokens, const char* name) {
    ATTNKIT_CHECK(cu[0] == 0, name, "[0] is ", cu[0], ", expected 0");
    for (std::size_t s = 1; s < cu.size(); ++s)
      ATTNKIT_CHECK(cu[s] >= cu[s - 1], name, "[", s, "] is ", cu[s], ", expected >= ", cu[s - 1],
                    " (offsets are non-decreasing)");
    ATTNKIT_CHECK(cu.back() <= tokens, name, " ends at ", cu.back(), ", expected <= ", tokens,
                  " (tokens in the packed view)");
  }

  Index count_ = 0;
  Index q_len_ = 0;
  Index kv_len_ = 0;
  SeqLengths lengths_{};
  CuSeqlens cu_{};
  bool packed_ = false;
};

namespace detail {

// Rows past a padded sequence's real length: zeros in out (batch, q, heads, dv) and, when lse
// (batch, q, heads) is given, a log-sum-exp of -inf.
template <class T>
void zero_rows_past_lengths(const View<T, 4>& out, const SequenceLayout& seqs, const View<float, 3>& lse = {}) {
  for (Index s = 0; s < seqs.count(); ++s) {
    const Sequence seq = seqs[s];
    for (Index pos = seq.q_len; pos < seq.q_extent; ++pos)
      for (Index h = 0; h < out.extent(2); ++h) {
        for (Index d = 0; d < out.extent(3); ++d) out(seq.batch, pos, h, d) = T(0.0f);
        if (lse.data() != nullptr) lse(seq.batch, pos, h) = -std::numeric_limits<float>::infinity();
      }
  }
}

}  // namespace detail
}  // namespace attnkit
