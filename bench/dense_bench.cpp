// Dense attention against unfused Eigen and OpenBLAS attention on the same shapes and threads, plus
// the sgemm rate and STREAM bandwidth as yardsticks; prints a side-by-side table at the end. Every
// case, baselines included, first checks its output against reference::dense (report.hpp) and is
// WRONG, untimed, when it differs. Prints the CPU, the attnkit variant and OpenBLAS's core first
// (pinning OPENBLAS_CORETYPE where OpenBLAS 0.3.21 would fall back to Prescott: openblas_core.hpp).
//   dense_bench            default shapes (the README's main job)
//   dense_bench --full     N 512..8192, d 64 and 128, causal and not, 1 and 2 threads
// Other arguments go to Google Benchmark (e.g. --benchmark_filter=attnkit).
#include <attnkit/attnkit.hpp>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>

#include "baselines.hpp"
#include "openblas_core.hpp"
#include "report.hpp"

namespace ak = attnkit;
using ak::Index;
namespace bm = benchmark;

namespace {

struct Inputs {
  Index q_len, kv_len, q_heads, kv_heads, dim;
  std::vector<float> q, k, v, out;
  Inputs(Index q_len_, Index kv_len_, Index q_heads_, Index kv_heads_, Index dim_)
      : q_len(q_len_),
        kv_len(kv_len_),
        q_heads(q_heads_),
        kv_heads(kv_heads_),
        dim(dim_),
        q(q_len * q_heads * dim),
        k(kv_len * kv_heads * dim),
        v(kv_len * kv_heads * dim),
        out(q_len * q_heads * dim) {
    std::uint32_t state = 12345;
    auto next = [&] { return static_cast<float>((state = state * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f; };
    for (auto* x : {&q, &k, &v})
      for (float& e : *x) e = 2.0f * next();
  }
  ak::View<const float, 4> q_view() const { return ak::bshd(q.data(), 1, q_len, q_heads, dim); }
  ak::View<const float, 4> k_view() const { return ak::bshd(k.data(), 1, kv_len, kv_heads, dim); }
  ak::View<const float, 4> v_view() const { return ak::bshd(v.data(), 1, kv_len, kv_heads, dim); }
  ak::View<float, 4> out_view() { return ak::bshd(out.data(), 1, q_len, q_heads, dim); }

  // Whether `out` (the first output of the case `name`) is exact dense attention; see report.hpp.
  // The reference is made once per shape, whatever the threads.
  bool check(bm::State& state, const std::string& name, bool causal) const {
    return ak::bench::check_output(state, out, name.substr(0, name.rfind(" T")),
                                   [&] { return ak::bench::expected_dense(q_view(), k_view(), v_view(), causal); });
  }
};

struct Prefill {
  Index n, dim;
  bool causal;
  int threads;
  Index q_heads = 8, kv_heads = 8;
  std::string name() const {
    std::ostringstream name;
    name << "prefill N=" << n << " d=" << dim;
    if (q_heads != 8 || kv_heads != 8) name << " " << q_heads << "/" << kv_heads;
    name << (causal ? " causal" : "") << " T" << threads;
    return name.str();
  }
};

struct Decode {
  Index kv_len, q_heads, kv_heads, dim;
  int threads;
  std::string name() const {
    return "decode 1x" + std::to_string(kv_len) + " " + std::to_string(q_heads) + "/" + std::to_string(kv_heads) +
           " d=" + std::to_string(dim) + " T" + std::to_string(threads);
  }
};

constexpr Index kHeads = 8;

void set_counters(bm::State& state, const ak::Cost& cost) {
  state.counters["FLOPs"] = cost.flops;
  state.counters["bytes"] = cost.bytes;
  state.counters["GFLOPS"] = bm::Counter(cost.flops * 1e-9, bm::Counter::kIsIterationInvariantRate);
}

template <class Unfused>
void register_baseline(const std::string& name, const Prefill& p, const ak::bench::UnfusedShape& shape) {
  bm::RegisterBenchmark(name.c_str(),
                        [p, shape](bm::State& state) {
                          Inputs in(p.n, p.n, kHeads, kHeads, p.dim);
                          const auto q = in.q_view();  // cost counted as for attnkit
                          const double flops =
                              ak::Attention<ak::Dense>(ak::Dense::Options{.causal = p.causal}).cost(q, q, q).flops;
                          Unfused run(shape, p.threads);
                          run(in.q.data(), in.k.data(), in.v.data(), in.out.data());
                          if (!in.check(state, p.name(), p.causal)) return;
                          for (auto _ : state) run(in.q.data(), in.k.data(), in.v.data(), in.out.data());
                          state.counters["GFLOPS"] = bm::Counter(flops * 1e-9, bm::Counter::kIsIterationInvariantRate);
                        })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
}

void register_prefill(const Prefill& p, bool baselines) {
  bm::RegisterBenchmark(("attnkit/" + p.name()).c_str(),
                        [p](bm::State& state) {
                          Inputs in(p.n, p.n, p.q_heads, p.kv_heads, p.dim);
                          ak::Attention<ak::Dense, ak::OpenMP<>> attn(ak::Dense::Options{.causal = p.causal},
                                                                      ak::OpenMP<>{p.threads});
                          const auto q = in.q_view(), k = in.k_view(), v = in.v_view();
                          const auto out = in.out_view();
                          std::vector<std::byte> workspace_owner(attn.workspace_bytes(q, k, v) + 64);
                          void* aligned = workspace_owner.data();
                          std::size_t space = workspace_owner.size();
                          std::align(64, space - 64, aligned, space);
                          const ak::Workspace workspace{aligned, space};
                          attn(q, k, v, out, {.workspace = workspace});
                          if (!in.check(state, p.name(), p.causal)) return;
                          for (auto _ : state) attn(q, k, v, out, {.workspace = workspace});
                          set_counters(state, attn.cost(q, k, v));
                        })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
  if (!baselines) return;
  const ak::bench::UnfusedShape shape{kHeads, p.n, p.n, p.dim, p.causal};
  register_baseline<ak::bench::EigenUnfused>("eigen/" + p.name(), p, shape);
  register_baseline<ak::bench::BlasUnfused>("openblas/" + p.name(), p, shape);
}

void register_decode(const Decode& d) {
  bm::RegisterBenchmark(("attnkit/" + d.name()).c_str(),
                        [d](bm::State& state) {
                          Inputs in(1, d.kv_len, d.q_heads, d.kv_heads, d.dim);
                          ak::Attention<ak::Dense, ak::OpenMP<>> attn(ak::Dense::Options{.causal = true},
                                                                      ak::OpenMP<>{d.threads});
                          const auto q = in.q_view(), k = in.k_view(), v = in.v_view();
                          const auto out = in.out_view();
                          attn(q, k, v, out);
                          if (!in.check(state, d.name(), true)) return;
                          for (auto _ : state) attn(q, k, v, out);
                          const ak::Cost cost = attn.cost(q, k, v);
                          set_counters(state, cost);
                          state.counters["kv_bytes"] = 2.0 * sizeof(float) * d.kv_len * d.kv_heads * d.dim;
                        })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
}

void register_yardsticks(const std::vector<int>& threads) {
  bm::RegisterBenchmark("openblas/sgemm 2048^3 T1",
                        [](bm::State& state) {
                          ak::bench::Sgemm gemm(2048);
                          gemm();
                          if (!ak::bench::check_output(state, gemm.c(), "sgemm", [&] {
                                return ak::bench::expected_constant(2048 * 2048, 4 * 2048, gemm.expected_c());
                              }))
                            return;
                          for (auto _ : state) gemm();
                          state.counters["GFLOPS"] =
                              bm::Counter(gemm.flops() * 1e-9, bm::Counter::kIsIterationInvariantRate);
                        })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
  for (int t : threads) ak::bench::register_stream_triad(t);
}

void print_table(const ak::bench::CollectingReporter& reporter) {
  auto find = [&](const std::string& name, const std::string& impl) { return reporter.find(name, impl); };
  double sgemm = 0;
  if (auto* m = find("sgemm 2048^3 T1", "openblas")) sgemm = m->counters.at("GFLOPS");
  std::printf(
      "\nattnkit dense, batch 1, fp32 (GFLOP/s = cost().flops / time; ratios = baseline time / attnkit time; "
      "WRONG: output differs from the reference, not timed)\n");
  if (sgemm > 0) std::printf("OpenBLAS sgemm 2048^3, 1 thread: %.1f GFLOP/s\n", sgemm);
  std::printf("%-34s %10s %9s %10s %9s %10s %9s %9s\n", "case", "attnkit ms", "GFLOP/s", "eigen ms", "vs eigen",
              "blas ms", "vs blas", "vs sgemm");
  for (const std::string& shape : reporter.cases()) {
    if (shape.rfind("prefill", 0) != 0) continue;
    const auto* ours = find(shape, "attnkit");
    if (ours != nullptr)
      std::printf("%-34s %10.2f %9.1f", shape.c_str(), ours->seconds * 1e3, ours->counters.at("GFLOPS"));
    else
      std::printf("%-34s %10s %9s", shape.c_str(), reporter.absent(shape, "attnkit"), "-");
    for (const char* base : {"eigen", "openblas"}) {
      const auto* b = find(shape, base);
      if (b != nullptr && ours != nullptr)
        std::printf(" %10.2f %8.2fx", b->seconds * 1e3, b->seconds / ours->seconds);
      else if (b != nullptr)
        std::printf(" %10.2f %9s", b->seconds * 1e3, "-");
      else
        std::printf(" %10s %9s", reporter.absent(shape, base), "-");
    }
    if (ours != nullptr && sgemm > 0 && shape.find(" T1") != std::string::npos)
      std::printf(" %8.2fx", ours->counters.at("GFLOPS") / sgemm);
    std::printf("\n");
  }
  std::printf("\n%-34s %10s %9s %12s %14s\n", "decode case", "attnkit ms", "K+V GB/s", "stream GB/s", "time / stream");
  for (const std::string& shape : reporter.cases()) {
    if (shape.rfind("decode", 0) != 0) continue;
    const auto* ours = find(shape, "attnkit");
    const std::string threads = shape.substr(shape.rfind(' ') + 1);
    const auto* stream = find("triad " + threads, "stream");
    if (ours == nullptr) {
      std::printf("%-34s %10s\n", shape.c_str(), reporter.absent(shape, "attnkit"));
      continue;
    }
    const double kv_bytes = ours->counters.at("kv_bytes");
    std::printf("%-34s %10.2f %9.1f", shape.c_str(), ours->seconds * 1e3, kv_bytes / ours->seconds * 1e-9);
    if (stream != nullptr) {
      const double bandwidth = stream->counters.at("GBps");
      std::printf(" %12.1f %13.2fx", bandwidth, ours->seconds / (kv_bytes / (bandwidth * 1e9)));
    }
    std::printf("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string openblas = ak::bench::pin_openblas_coretype(argv, "dense_bench");
  return ak::bench::bench_main(
      argc, argv, ak::Attention<ak::Dense, ak::OpenMP<>>{}.name() + "\n" + openblas,
      [&](bool full) {
        register_yardsticks({1, 2});
        if (full) {
          for (int threads : {1, 2})
            for (Index dim : {64, 128})
              for (Index n : {512, 1024, 2048, 4096, 8192})
                for (bool causal : {false, true}) register_prefill({n, dim, causal, threads}, true);
        } else {
          register_prefill({4096, 128, false, 1}, true);
          register_prefill({4096, 128, true, 1}, true);
          register_prefill({4096, 64, false, 1}, true);
          register_prefill({2048, 128, false, 1}, true);
          register_prefill({4096, 128, false, 2}, true);
          register_prefill({4096, 128, true, 2}, false);
          register_prefill({2048, 128, false, 1, 32, 8}, false);  // GQA: K/V packed once per kv head
        }
        for (int threads : {1, 2}) {
          register_decode({4096, 32, 8, 128, threads});
          register_decode({32768, 32, 8, 128, threads});
        }
      },
      [&](const ak::bench::CollectingReporter& reporter) { print_table(reporter); });
}
