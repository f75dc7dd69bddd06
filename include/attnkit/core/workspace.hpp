// Caller-provided scratch memory and the bump allocator kernels carve it with.
// A kernel asks for workspace_bytes(...) up front; a call given a Workspace of at least that size
// never allocates. A call given none allocates one aligned block itself.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "attnkit/core/checked.hpp"
#include "attnkit/core/error.hpp"

namespace attnkit {

// Scratch memory owned by the caller.
struct Workspace {
  void* data = nullptr;
  std::size_t bytes = 0;
};

namespace detail {

inline constexpr std::size_t kWorkspaceAlign = 64;

// Sanitize builds (or ATTNKIT_WORKSPACE_GUARDS=1) follow every array carved from a workspace with
// guard bytes, checked when its arena ends: an overrun that stays inside the workspace, which
// AddressSanitizer cannot see, then aborts the test that made it.
#if !defined(ATTNKIT_WORKSPACE_GUARDS)
#if defined(__has_feature)
#if __has_feature(address_sanitizer)  // clang's spelling of __SANITIZE_ADDRESS__
#define ATTNKIT_WORKSPACE_GUARDS 1
#endif
#endif
#endif
#if !defined(ATTNKIT_WORKSPACE_GUARDS)
#if defined(__SANITIZE_ADDRESS__)
#define ATTNKIT_WORKSPACE_GUARDS 1
#else
#define ATTNKIT_WORKSPACE_GUARDS 0
#endif
#endif
inline constexpr std::size_t kGuardBytes = ATTNKIT_WORKSPACE_GUARDS ? kWorkspaceAlign : 0;
inline constexpr unsigned char kGuardByte = 0xA5;

constexpr std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

// Bytes an array of n T takes in a workspace, padded so the next array stays aligned (and
// followed by its guard bytes in sanitize builds). An empty array takes nothing; a size that
// does not fit in size_t is an attnkit::Error.
template <class T>
std::size_t array_bytes(std::size_t n) {
  if (n == 0) return 0;
  const std::size_t bytes = checked_mul(n, sizeof(T), "workspace: array bytes");
  return checked_add(
      checked_add(bytes, kWorkspaceAlign - 1, "workspace: array bytes") / kWorkspaceAlign * kWorkspaceAlign,
      kGuardBytes, "workspace: array bytes");
}

// Hands out aligned arrays from a fixed block; never allocates. A measuring arena (no block)
// hands out null pointers and counts the bytes: sizing a workspace by carving it the same way as
// the kernel does keeps the two in step.
class Arena {
 public:
  Arena(void* data, std::size_t bytes) : data_(static_cast<std::byte*>(data)), bytes_(bytes) {}
  static Arena measuring() { return Arena(nullptr, static_cast<std::size_t>(-1)); }
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena() { check_guards(); }

  template <class T>
  T* take(std::size_t n) {
    const std::size_t size = array_bytes<T>(n);
    if (size == 0) return nullptr;
    // Callers size the arena from workspace_bytes(), so running out is a library bug.
    const std::size_t end = checked_add(used_, size, "workspace: total bytes");
    ATTNKIT_CHECK(end <= bytes_, "workspace: ", end, " bytes needed, ", bytes_, " given (internal sizing error)");
    if (data_ == nullptr) {
      used_ += size;
      return nullptr;
    }
    T* p = reinterpret_cast<T*>(data_ + used_);
    if constexpr (kGuardBytes > 0) {
      std::byte* guard = data_ + used_ + n * sizeof(T);
      const std::size_t length = size - n * sizeof(T);
      std::memset(guard, kGuardByte, length);
      if (guard_count_ < kMaxGuards) guards_[guard_count_++] = {guard, length};
    }
    used_ += size;
    return p;
  }
  std::size_t used() const { return used_; }

 private:
  struct Guard {
    std::byte* at = nullptr;
    std::size_t length = 0;
  };
  static constexpr int kMaxGuards = 16;

  void check_guards() const {
    for (int g = 0; g < guard_count_; ++g)
      for (std::size_t i = 0; i < guards_[g].length; ++i)
        if (guards_[g].at[i] != std::byte{kGuardByte}) {
          std::fprintf(stderr, "attnkit: workspace array %d overran into its guard bytes (byte %zu after it)\n", g, i);
          std::abort();
        }
  }

  std::byte* data_;
  std::size_t bytes_;
  std::size_t used_ = 0;
  std::array<Guard, kMaxGuards> guards_{};
  int guard_count_ = 0;
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
