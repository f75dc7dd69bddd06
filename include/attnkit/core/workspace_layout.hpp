// Sizing a call's workspace from the function that lays it out. A kernel's Layout type has
//   static Layout carve(Arena& arena, const Plan& plan, int threads)
// which takes every array of the whole workspace (shared arrays, then the threads' scratch slots)
// from `arena`; workspace_bytes_of() runs it on a measuring arena, the kernel on the caller's
// block, so sizing and carving cannot disagree. Not here: the arena itself (workspace.hpp).
#pragma once

#include <cstddef>

#include "attnkit/core/checked.hpp"
#include "attnkit/core/workspace.hpp"

namespace attnkit::detail {

// Bytes of the workspace Layout::carve lays out for `plan` and `threads` threads; 0 when the plan
// has no work items (the call does nothing).
template <class Layout, class Plan>
std::size_t workspace_bytes_of(const Plan& plan, int threads) {
  if (plan.items == 0) return 0;
  Arena arena = Arena::measuring();
  Layout::carve(arena, plan, threads);
  return arena.used();
}

// The per-thread scratch of a plan: bytes Scratch::carve(arena, args...) takes.
template <class Scratch, class... Args>
std::size_t scratch_bytes_of(const Args&... args) {
  Arena arena = Arena::measuring();
  Scratch::carve(arena, args...);
  return arena.used();
}

// The threads' scratch slots of a plan (plan.scratch_bytes each), as one array of a workspace.
template <class Plan>
std::byte* take_thread_slots(Arena& arena, const Plan& plan, int threads) {
  return arena.take<std::byte>(checked_mul(static_cast<std::size_t>(plan.scratch_bytes),
                                           static_cast<std::size_t>(threads), "workspace: thread slots"));
}

// The arena of one thread's slot among those take_thread_slots laid out; its guards are checked
// when it ends.
template <class Plan>
Arena thread_slot(std::byte* slots, const Plan& plan, int slot) {
  return Arena(slots + plan.scratch_bytes * static_cast<std::size_t>(slot), plan.scratch_bytes);
}

// The Layout of a workspace that is only the threads' scratch slots.
struct ThreadSlots {
  std::byte* scratch = nullptr;

  template <class Plan>
  static ThreadSlots carve(Arena& arena, const Plan& plan, int threads) {
    return {take_thread_slots(arena, plan, threads)};
  }
};

}  // namespace attnkit::detail
