// The running CPU's vector features, read once (CPUID through the compiler's
// __builtin_cpu_supports, which also checks that the OS saves the wide registers; AVX512-FP16 and
// AMX-BF16, which older compilers' builtin does not know, by CPUID and XGETBV here). The runtime
// dispatch picks its ISA variant from these; tests and benches print them.
#pragma once

#include <string>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace attnkit {

struct CpuFeatures {
  bool sse2 = false, avx2 = false, fma = false;
  bool avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;
  bool avx512bf16 = false, avx512fp16 = false, amx_bf16 = false;

  // "sse2 avx2 fma avx512f ...": the features present, in this order.
  std::string describe() const {
    std::string out;
    const std::pair<bool, const char*> named[] = {{sse2, "sse2"},
                                                  {avx2, "avx2"},
                                                  {fma, "fma"},
                                                  {avx512f, "avx512f"},
                                                  {avx512bw, "avx512bw"},
                                                  {avx512dq, "avx512dq"},
                                                  {avx512vl, "avx512vl"},
                                                  {avx512bf16, "avx512_bf16"},
                                                  {avx512fp16, "avx512_fp16"},
                                                  {amx_bf16, "amx_bf16"}};
    for (const auto& [present, name] : named)
      if (present) {
        if (!out.empty()) out.push_back(' ');
        out.append(name);
      }
    return out;
  }
};

inline const CpuFeatures& cpu_features() {
  static const CpuFeatures features = [] {
    CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    f.sse2 = __builtin_cpu_supports("sse2");
    f.avx2 = __builtin_cpu_supports("avx2");
    f.fma = __builtin_cpu_supports("fma");
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512bw = __builtin_cpu_supports("avx512bw");
    f.avx512dq = __builtin_cpu_supports("avx512dq");
    f.avx512vl = __builtin_cpu_supports("avx512vl");
    f.avx512bf16 = __builtin_cpu_supports("avx512bf16");
    // CPUID leaf 7, sub-leaf 0, EDX: bit 23 AVX512-FP16, bit 22 AMX-BF16. AMX also needs the OS
    // to save the tile state: XCR0 bits 17 (tile config) and 18 (tile data).
    unsigned eax = 0, ebx = 0, ecx = 0, leaf7_edx = 0, edx = 0;
    if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &leaf7_edx) != 0) {
      f.avx512fp16 = f.avx512f && (leaf7_edx >> 23 & 1u) != 0;
      unsigned xcr0_low = 0, xcr0_high = 0;
      if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx >> 27 & 1u) != 0)  // OSXSAVE
        __asm__("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
      f.amx_bf16 = (leaf7_edx >> 22 & 1u) != 0 && (xcr0_low >> 17 & 3u) == 3u;
    }
#endif
    return f;
  }();
  return features;
}

}  // namespace attnkit
