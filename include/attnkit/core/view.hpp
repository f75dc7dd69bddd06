// Non-owning strided views over caller memory: a pointer, extents and element strides.
// Attention tensors are rank-4 views indexed logically as (batch, seq, head, dim) whatever the
// memory layout: bshd() and bhsd() build the two common layouts; packed variable-length inputs
// are rank-3 views (token, head, dim) built by thd(). No allocation, no ownership.
#pragma once

#include <array>
#include <cstdint>
#include <type_traits>

#include "attnkit/core/checked.hpp"

namespace attnkit {

using Index = std::int64_t;

template <class T, int Rank>
class View {
  static_assert(Rank >= 1, "a view has at least one axis");

 public:
  using element_type = T;
  using Extents = std::array<Index, Rank>;

  View() = default;
  View(T* data, Extents extents, Extents strides) : data_(data), extents_(extents), strides_(strides) {}

  // Row-major contiguous view.
  static View contiguous(T* data, Extents extents) {
    Extents strides{};
    Index step = 1;
    for (int axis = Rank - 1; axis >= 0; --axis) {
      strides[axis] = step;
      step *= extents[axis];
    }
    return View(data, extents, strides);
  }

  // A view of T converts to a view of const T.
  template <class U>
  requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
      View(const View<U, Rank>& other)  // NOLINT(google-explicit-constructor)
      : data_(other.data()), extents_(other.extents()), strides_(other.strides()) {}

  T* data() const { return data_; }
  const Extents& extents() const { return extents_; }
  const Extents& strides() const { return strides_; }
  Index extent(int axis) const { return extents_[axis]; }
  Index stride(int axis) const { return strides_[axis]; }

  // Element count; throws attnkit::Error when it does not fit in Index (check_strided_view names
  // the argument first on every front door).
  Index size() const {
    if (empty()) return 0;
    Index total = 1;
    for (Index e : extents_) total = detail::checked_mul(total, e, "view: element count");
    return total;
  }
  bool empty() const {
    for (Index e : extents_)
      if (e == 0) return true;
    return false;
  }

  // Pointer to an element; may point one past the data (a row of an empty axis).
  template <class... I>
  requires(sizeof...(I) == Rank) T* at(I... index) const {
    const std::array<Index, Rank> position{static_cast<Index>(index)...};
    Index offset = 0;
    for (int axis = 0; axis < Rank; ++axis) offset += position[axis] * strides_[axis];
    return data_ + offset;
  }

  template <class... I>
  requires(sizeof...(I) == Rank) T& operator()(I... index) const { return *at(index...); }

 private:
  T* data_ = nullptr;
  Extents extents_{};
  Extents strides_{};
};

// [batch, seq, heads, dim] contiguous (flash-attn, ggml layout).
template <class T>
View<T, 4> bshd(T* data, Index batch, Index seq, Index heads, Index dim) {
  return View<T, 4>(data, {batch, seq, heads, dim}, {seq * heads * dim, heads * dim, dim, 1});
}

// [batch, heads, seq, dim] contiguous (PyTorch SDPA layout), viewed as (batch, seq, head, dim).
template <class T>
View<T, 4> bhsd(T* data, Index batch, Index heads, Index seq, Index dim) {
  return View<T, 4>(data, {batch, seq, heads, dim}, {heads * seq * dim, dim, seq * dim, 1});
}

// [tokens, heads, dim] contiguous: packed variable-length sequences (flash-attn varlen layout).
template <class T>
View<T, 3> thd(T* data, Index tokens, Index heads, Index dim) {
  return View<T, 3>(data, {tokens, heads, dim}, {heads * dim, dim, 1});
}

}  // namespace attnkit
