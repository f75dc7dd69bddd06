// attnkit::Error and the ATTNKIT_CHECK macro used by every front door to reject bad input.
// Messages name the argument and the expected value; nothing here throws from inside a kernel.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace attnkit {

// Thrown for any invalid argument: shapes, strides, null data, options.
class Error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {
template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream message;
  message << "attnkit: ";
  (message << ... << parts);
  throw Error(message.str());
}
}  // namespace detail

}  // namespace attnkit

// Throws attnkit::Error with the streamed message parts when cond is false.
#define ATTNKIT_CHECK(cond, ...)                       \
  do {                                                 \
    if (!(cond)) ::attnkit::detail::fail(__VA_ARGS__); \
  } while (0)
