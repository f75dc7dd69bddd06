// The running CPU's vector features, read once (CPUID through the compiler's
// __builtin_cpu_supports, which also checks that the OS saves the wide registers). The runtime
// dispatch picks its ISA variant from these; tests and benches print them.
#pragma once

#include <string>

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
    f.avx512fp16 = __builtin_cpu_supports("avx512fp16");
    f.amx_bf16 = __builtin_cpu_supports("amx-bf16");
#endif
    return f;
  }();
  return features;
}

}  // namespace attnkit
