// Which kernels a program gets: Attention<Dense, OpenMP<>> reports the ISA variant it runs, which
// must be the running CPU's best (or ATTNKIT_ISA's cap) however this file was compiled; prints the
// speed of a causal prefill. Usage: dispatch_report [N [repetitions]] (default 512 1).
#include <attnkit/attnkit.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  namespace ak = attnkit;
  const ak::Index n = argc > 1 ? std::atoll(argv[1]) : 512, heads = 8, dim = 128;
  const int repetitions = argc > 2 ? std::atoi(argv[2]) : 1;
  std::vector<float> q(n * heads * dim), k(q.size()), v(q.size()), o(q.size());
  for (std::size_t i = 0; i < q.size(); ++i) {
    q[i] = static_cast<float>(i % 7) * 0.1f;
    k[i] = static_cast<float>(i % 5) * 0.1f;
    v[i] = static_cast<float>(i % 3);
  }
  const auto qv = ak::bshd(q.data(), 1, n, heads, dim), kv = ak::bshd(k.data(), 1, n, heads, dim),
             vv = ak::bshd(v.data(), 1, n, heads, dim);
  const auto ov = ak::bshd(o.data(), 1, n, heads, dim);
  ak::Attention<ak::Dense, ak::OpenMP<>> attn(ak::Dense::Options{.causal = true});
  attn(qv, kv, vv, ov);  // warm-up
  double best = 1e30;
  for (int r = 0; r < repetitions; ++r) {
    const auto start = std::chrono::steady_clock::now();
    attn(qv, kv, vv, ov);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  const std::string expected = std::string("dense-causal/openmp-simd-") + ak::isa_name(ak::default_isa());
  std::printf("%s on a CPU with %s: N=%lld causal prefill %.2f ms, %.1f GFLOP/s\n", attn.name().c_str(),
              ak::cpu_features().describe().c_str(), static_cast<long long>(n), best * 1e3,
              attn.cost(qv, kv, vv).flops / best * 1e-9);
  // Row 0 sees key 0 only: its output is v[0] = 0, 1, 2, 0, ...
  const bool row0_ok = o[0] == 0.0f && o[1] == 1.0f && o[2] == 2.0f;
  return ak::is_dispatched<ak::OpenMP<>> && attn.name() != expected ? 2 : row0_ok ? 0 : 1;
}
