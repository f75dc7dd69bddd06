// Sub-quadratic approximations (Combiner-Fixed, Combiner-Logsparse, ProbSparse) against the dense kernel on the same
// inputs and threads: time, FLOPs performed (cost()), speedup over dense measured in the same run,
// relative error ||approx - dense||_F / ||dense||_F, and the fitted growth exponent of time in N.
//   sparse_approx_bench          N 1024..8192, d 64, 2 heads, non-causal (under 2 minutes)
//   sparse_approx_bench --full   N 1024..32768, non-causal and causal
// Other arguments go to Google Benchmark; --benchmark_repetitions=3 keeps the fastest repetition.
#include <attnkit/attnkit.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "report.hpp"

namespace ak = attnkit;
using ak::Index;
namespace bm = benchmark;

namespace {

constexpr Index kHeads = 2;
constexpr Index kDim = 64;
constexpr int kThreads = 1;

struct Inputs {
  std::vector<float> q, k, v;
  explicit Inputs(Index n) : q(n * kHeads * kDim), k(q.size()), v(q.size()) {
    std::uint32_t state = 12345;
    auto next = [&] { return static_cast<float>((state = state * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f; };
    for (auto* x : {&q, &k, &v})
      for (float& e : *x) e = 2.0f * next();
  }
  ak::View<const float, 4> view(const std::vector<float>& x, Index n) const {
    return ak::bshd(x.data(), 1, n, kHeads, kDim);
  }
};

std::string case_name(Index n, bool causal) {
  return "N=" + std::to_string(n) + " d=" + std::to_string(kDim) + (causal ? " causal" : "");
}

// Exact dense outputs per case, computed once (by the dense benchmark or on first use).
std::map<std::string, std::vector<float>>& exact_outputs() {
  static std::map<std::string, std::vector<float>> outputs;
  return outputs;
}

const std::vector<float>& exact_output(Index n, bool causal) {
  auto& outputs = exact_outputs();
  auto it = outputs.find(case_name(n, causal));
  if (it != outputs.end()) return it->second;
  const Inputs in(n);
  std::vector<float> out(in.q.size());
  ak::Attention<ak::Dense, ak::OpenMP<>> dense({.causal = causal}, ak::OpenMP<>{kThreads});
  dense(in.view(in.q, n), in.view(in.k, n), in.view(in.v, n), ak::bshd(out.data(), 1, n, kHeads, kDim));
  return outputs[case_name(n, causal)] = std::move(out);
}

template <class Mechanism>
void register_case(const std::string& impl, Index n, bool causal, typename Mechanism::Options options) {
  bm::RegisterBenchmark((impl + "/" + case_name(n, causal)).c_str(),
                        [=](bm::State& state) {
                          const Inputs in(n);
                          std::vector<float> out(in.q.size());
                          ak::Attention<Mechanism, ak::OpenMP<>> attn(options, ak::OpenMP<>{kThreads});
                          const auto q = in.view(in.q, n), k = in.view(in.k, n), v = in.view(in.v, n);
                          const auto o = ak::bshd(out.data(), 1, n, kHeads, kDim);
                          for (auto _ : state) attn(q, k, v, o);
                          const ak::Cost cost = attn.cost(q, k, v);
                          state.counters["FLOPs"] = cost.flops;
                          state.counters["GFLOPS"] =
                              bm::Counter(cost.flops * 1e-9, bm::Counter::kIsIterationInvariantRate);
                          if constexpr (std::is_same_v<Mechanism, ak::Dense>) {
                            exact_outputs()[case_name(n, causal)] = out;
                          } else {
                            state.counters["rel_err"] = ak::bench::relative_error(out, exact_output(n, causal));
                          }
                        })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
}

// Least-squares slope of log(time) against log(N).
double growth_exponent(const std::vector<std::pair<double, double>>& points) {
  if (points.size() < 2) return NAN;
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const auto& [n, t] : points) {
    const double x = std::log(n), y = std::log(t);
    sx += x;
    sy += y;
    sxx += x * x;
    sxy += x * y;
  }
  const double m = static_cast<double>(points.size());
  return (m * sxy - sx * sy) / (m * sxx - sx * sx);
}

void print_table(const ak::bench::CollectingReporter& reporter, const std::vector<Index>& sizes) {
  const auto& results = reporter.results();
  const char* impls[] = {"dense", "combiner-fixed", "combiner-logsparse", "probsparse"};
  for (bool causal : {false, true}) {
    bool header = false;
    std::map<std::string, std::vector<std::pair<double, double>>> growth;
    for (Index n : sizes) {
      auto row = results.find(case_name(n, causal));
      if (row == results.end()) continue;
      const auto dense = row->second.find("dense");
      if (!header) {
        std::printf(
            "\nbatch 1, %lld heads, d %lld, %d thread, fp32%s (speedup = dense time / time; rel err = "
            "||out - dense||_F / ||dense||_F)\n",
            static_cast<long long>(kHeads), static_cast<long long>(kDim), kThreads, causal ? ", causal" : "");
        std::printf("%-8s %-18s %11s %11s %9s %9s %10s\n", "N", "mechanism", "ms", "GFLOP", "GFLOP/s", "speedup",
                    "rel err");
        header = true;
      }
      for (const char* impl : impls) {
        const auto it = row->second.find(impl);
        if (it == row->second.end()) continue;
        const ak::bench::Measured& m = it->second;
        growth[impl].emplace_back(static_cast<double>(n), m.seconds);
        std::printf("%-8lld %-18s %11.2f %11.3f %9.1f", static_cast<long long>(n), impl, m.seconds * 1e3,
                    m.counters.at("FLOPs") * 1e-9, m.counters.at("GFLOPS"));
        if (dense != row->second.end())
          std::printf(" %8.1fx", dense->second.seconds / m.seconds);
        else
          std::printf(" %9s", "-");
        if (m.counters.count("rel_err"))
          std::printf(" %10.2e\n", m.counters.at("rel_err"));
        else
          std::printf(" %10s\n", "exact");
      }
    }
    for (const auto& [impl, points] : growth)
      std::printf("growth exponent (time ~ N^p, least squares over %zu sizes): %-18s p = %.2f\n", points.size(),
                  impl.c_str(), growth_exponent(points));
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Index> sizes;
  return ak::bench::bench_main(
      argc, argv, ak::OpenMP<>::name(),
      [&](bool full) {
        sizes = {1024, 2048, 4096, 8192};
        if (full) sizes = {1024, 2048, 4096, 8192, 16384, 32768};
        std::vector<bool> masks{false};
        if (full) masks.push_back(true);
        for (bool causal : masks)
          for (Index n : sizes) {
            register_case<ak::Dense>("dense", n, causal, {.causal = causal});
            register_case<ak::CombinerFixed>("combiner-fixed", n, causal, {.causal = causal});
            register_case<ak::CombinerLogsparse>("combiner-logsparse", n, causal, {.causal = causal});
            register_case<ak::ProbSparse>("probsparse", n, causal, {.causal = causal});
          }
      },
      [&](const ak::bench::CollectingReporter& reporter) { print_table(reporter, sizes); });
}
