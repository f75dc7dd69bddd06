// Stopgap pre-included (-include) by the fuzz and tsan presets: clang 14's
// __builtin_cpu_supports() rejects the feature strings "avx512fp16" and "amx-bf16" that
// include/attnkit/backend/cpu.hpp asks for (a compile error, not a false). This routes the
// builtin through a function that asks clang for the features it knows and answers false for
// those two. Remove it once cpu.hpp guards them (e.g. by compiler version or its own CPUID).
#pragma once

#if defined(__clang__) && __clang_major__ < 16 && (defined(__x86_64__) || defined(__i386__))
#include <cstring>

inline bool attnkit_clang14_cpu_supports(const char* feature) {
  __builtin_cpu_init();
  if (std::strcmp(feature, "sse2") == 0) return __builtin_cpu_supports("sse2");
  if (std::strcmp(feature, "avx2") == 0) return __builtin_cpu_supports("avx2");
  if (std::strcmp(feature, "fma") == 0) return __builtin_cpu_supports("fma");
  if (std::strcmp(feature, "avx512f") == 0) return __builtin_cpu_supports("avx512f");
  if (std::strcmp(feature, "avx512bw") == 0) return __builtin_cpu_supports("avx512bw");
  if (std::strcmp(feature, "avx512dq") == 0) return __builtin_cpu_supports("avx512dq");
  if (std::strcmp(feature, "avx512vl") == 0) return __builtin_cpu_supports("avx512vl");
  if (std::strcmp(feature, "avx512bf16") == 0) return __builtin_cpu_supports("avx512bf16");
  return false;  // avx512fp16, amx-bf16: unknown to this compiler's builtin
}
#define __builtin_cpu_supports(feature) attnkit_clang14_cpu_supports(feature)
#endif
