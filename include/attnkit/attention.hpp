// The front door: Attention<Mechanism, Backend>. Each mechanism header specialises it; the
// primary template fails to compile for a pair that has no kernel.
//
// Every specialisation offers, with the same input views as its call:
//   explicit Attention(Mechanism::Options = {}, Backend = {})   validates the options
//   std::string name() const
//   Cost cost(inputs...) const                                   FLOPs and bytes of one call
//   std::size_t workspace_bytes(inputs...) const                 scratch one call needs
//   void operator()(inputs..., out[, args]) const                validates, then runs the kernel
#pragma once

#include "attnkit/backend/backend.hpp"

namespace attnkit {

template <class>
inline constexpr bool kNoKernel = false;

template <class Mechanism, class Backend = DefaultBackend>
class Attention {
  static_assert(kNoKernel<Mechanism>, "attnkit: no kernel for this mechanism/backend");
};

}  // namespace attnkit
