// OpenBLAS's kernel choice in a bench that measures against it: said, and pinned where Debian's
// OpenBLAS 0.3.21 falls back to its Prescott (SSE3) kernels on a CPU newer than it knows (on
// Sapphire Rapids its sgemm then runs at 18 GFLOP/s instead of ~129). The DYNAMIC_ARCH library
// picks its core when it is loaded, before main, reading OPENBLAS_CORETYPE at that moment; so
// setting the variable later changes nothing, and the binary re-executes itself with it set.
// Not here: the baselines themselves (baselines.hpp).
#pragma once

#include <cblas.h>
#include <unistd.h>

#include <strings.h>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

namespace attnkit::bench {

// Set in the re-executed process: the core OpenBLAS had picked before OPENBLAS_CORETYPE was pinned.
inline constexpr const char* kOpenblasFallbackVariable = "ATTNKIT_BENCH_OPENBLAS_FALLBACK";

// OpenBLAS cores older than Haswell (no AVX2 kernels): picked on an AVX2 CPU, the library did not
// know the CPU.
inline bool pre_avx2_core(const char* name) {
  for (const char* old : {"Prescott", "Katmai", "Coppermine", "Northwood", "Banias", "Core2", "Penryn", "Dunnington",
                          "Nehalem", "Atom", "Sandybridge"})
    if (strcasecmp(name, old) == 0) return true;
  return false;
}

// Call first in main, with main's argv untouched. When the user did not set OPENBLAS_CORETYPE and
// OpenBLAS picked a pre-AVX2 core on a CPU with AVX2, sets OPENBLAS_CORETYPE (SkylakeX with
// AVX-512F, else Haswell) and re-executes the binary with the same arguments (execv of
// /proc/self/exe). Returns the lines to print: the core that runs, and who chose it and why.
inline std::string pin_openblas_coretype(char** argv, const char* binary) {
  const std::string config = openblas_get_config();  // "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ..."
  const std::string version = config.substr(0, config.find(' ', config.find(' ') + 1));
  const char* const user_setting = std::getenv("OPENBLAS_CORETYPE");
  if (user_setting == nullptr && pre_avx2_core(openblas_get_corename())) {
    const char* const target =
        __builtin_cpu_supports("avx512f") ? "SkylakeX" : (__builtin_cpu_supports("avx2") ? "Haswell" : nullptr);
    if (target != nullptr) {
      setenv(kOpenblasFallbackVariable, openblas_get_corename(), 1);
      setenv("OPENBLAS_CORETYPE", target, 1);
      execv("/proc/self/exe", argv);  // returns only when it failed
      return "OpenBLAS core: " + std::string(openblas_get_corename()) + " (" + version + " fallback; re-executing " +
             binary + " with OPENBLAS_CORETYPE=" + target + " failed: " + std::strerror(errno) + ")";
    }
  }
  std::string lines = "OpenBLAS core: " + std::string(openblas_get_corename()) + " (" + version + ")";
  if (const char* fallback = std::getenv(kOpenblasFallbackVariable); fallback != nullptr && user_setting != nullptr)
    lines += "\nOPENBLAS_CORETYPE=" + std::string(user_setting) + " set by " + binary + ": " + version + " would use " +
             fallback + " on this CPU";
  else if (user_setting != nullptr)
    lines += ", OPENBLAS_CORETYPE=" + std::string(user_setting) + " set by the user";
  return lines;
}

}  // namespace attnkit::bench
