// Caller-provided scratch memory and the bump allocator kernels carve it with.
// A kernel asks for workspace_bytes(...) up front; a call given a Workspace of at least that size
// never allocates. A call given none allocates one aligned block itself.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

#include "attnkit/core/error.hpp"

namespace attnkit {

// Scratch memory owned by the caller.
struct Workspace {
  void* data = nullptr;
  std::size_t bytes = 0;
};

namespace detail {

inline constexpr std::size_t kWorkspaceAlign = 64;

constexpr std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

// Bytes an array of n T takes in a workspace, padded so the next array stays aligned.
template <class T>
constexpr std::size_t array_bytes(std::size_t n) {
  return round_up(n * sizeof(T), kWorkspaceAlign);
}

// Hands out aligned arrays from a fixed block; never allocates.
class Arena {
 public:
  Arena(void* data, std::size_t bytes) : data_(static_cast<std::byte*>(data)), bytes_(bytes) {}

  template <class T>
  T* take(std::size_t n) {
    const std::size_t size = array_bytes<T>(n);
    if (size == 0) return nullptr;
    // Callers size the arena from workspace_bytes(), so running out is a library bug.
    ATTNKIT_CHECK(used_ + size <= bytes_, "workspace: ", used_ + size, " bytes needed, ", bytes_,
                  " given (internal sizing error)");
    T* p = reinterpret_cast<T*>(data_ + used_);
    used_ += size;
    return p;
  }

 private:
  std::byte* data_;
  std::size_t bytes_;
  std::size_t used_ = 0;
};

// The workspace of a call: the caller's block, or one allocated here when none was given.
class ScopedWorkspace {
 public:
  ScopedWorkspace(Workspace given, std::size_t needed) {
    if (needed == 0) return;
    if (given.data != nullptr) {
      ATTNKIT_CHECK(given.bytes >= needed, "workspace: ", given.bytes, " bytes given, expected >= ", needed,
                    " (workspace_bytes)");
      ATTNKIT_CHECK(reinterpret_cast<std::uintptr_t>(given.data) % kWorkspaceAlign == 0, "workspace: data must be ",
                    kWorkspaceAlign, "-byte aligned");
      data_ = given.data;
      bytes_ = given.bytes;
    } else {
      owned_.reset(static_cast<std::byte*>(::operator new (needed, std::align_val_t{kWorkspaceAlign})));
      data_ = owned_.get();
      bytes_ = needed;
    }
  }
  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }

 private:
  struct AlignedDelete {
    void operator()(std::byte* p) const { ::operator delete (p, std::align_val_t{kWorkspaceAlign}); }
  };
  std::unique_ptr<std::byte, AlignedDelete> owned_;
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

}  // namespace detail
}  // namespace attnkit
