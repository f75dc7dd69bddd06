// Linear attention and Performer FAVOR+ against the dense kernel on the same shapes, measured in
// the same run; prints the crossover table and FAVOR+'s error against exact attention.
//   linear_bench            N 512..4096, d 64, 8 heads, causal and not, 1 thread (about a minute)
//   linear_bench --full     N 512..16384
// Counters: FLOPs (cost() of the algorithm run), GFLOPS, vs_dense (dense time / this time, from
// the dense run of the same case registered just before) and, for Performer, rel_error (Frobenius
// norm of the difference to the dense kernel's output, relative to it). Every case first checks its
// output against its reference twin (dense, linear; FAVOR+ with the same features) on 48 rows of
// every head (report.hpp) and is WRONG, untimed, when it differs.
// Other arguments go to Google Benchmark (e.g. --benchmark_filter=linear).
#include <attnkit/attnkit.hpp>
#include <attnkit/reference/performer.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>

#include "report.hpp"

namespace ak = attnkit;
using ak::Index;
namespace bm = benchmark;

namespace {

constexpr Index kHeads = 8;
constexpr Index kDim = 64;
constexpr std::uint64_t kProjectionSeed = 2020;

struct Inputs {
  std::vector<float> q, k, v, out;
  Inputs(Index n, float qk_range)
      : q(n * kHeads * kDim), k(n * kHeads * kDim), v(n * kHeads * kDim), out(n * kHeads * kDim) {
    std::uint32_t state = 12345;
    auto next = [&] { return static_cast<float>((state = state * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f; };
    for (float& e : q) e = 2.0f * qk_range * next();
    for (float& e : k) e = 2.0f * qk_range * next();
    for (float& e : v) e = 2.0f * next();
  }
  ak::View<const float, 4> view(const std::vector<float>& x) const {
    return ak::bshd(x.data(), 1, static_cast<Index>(x.size() / (kHeads * kDim)), kHeads, kDim);
  }
  ak::View<float, 4> out_view() {
    return ak::bshd(out.data(), 1, static_cast<Index>(out.size() / (kHeads * kDim)), kHeads, kDim);
  }
};

struct Case {
  Index n;
  bool causal;
  std::string name() const { return "N=" + std::to_string(n) + (causal ? " causal" : ""); }
};

// Dense seconds per case, filled by the dense run registered before the others of its case.
std::map<std::string, double>& dense_seconds() {
  static std::map<std::string, double> seconds;
  return seconds;
}

void set_counters(bm::State& state, const ak::Cost& cost, const std::string& case_name, double seconds) {
  state.counters["FLOPs"] = cost.flops;
  state.counters["GFLOPS"] = bm::Counter(cost.flops * 1e-9, bm::Counter::kIsIterationInvariantRate);
  if (auto it = dense_seconds().find(case_name); it != dense_seconds().end() && seconds > 0)
    state.counters["vs_dense"] = it->second / seconds;
}

void register_case(const Case& c) {
  using Backend = ak::OpenMP<>;
  const Backend one_thread{.num_threads = 1};
  bm::RegisterBenchmark(("dense/" + c.name()).c_str(),
                        [c, one_thread](bm::State& state) {
                          Inputs in(c.n, 1.0f);
                          ak::Attention<ak::Dense, Backend> attn(ak::Dense::Options{.causal = c.causal}, one_thread);
                          const auto q = in.view(in.q), k = in.view(in.k), v = in.view(in.v);
                          attn(q, k, v, in.out_view());
                          if (!ak::bench::check_output(state, in.out, "dense/" + c.name(),
                                                       [&] { return ak::bench::expected_dense(q, k, v, c.causal); }))
                            return;
                          const double seconds = ak::bench::timed_loop(state, [&] { attn(q, k, v, in.out_view()); });
                          dense_seconds()[c.name()] = seconds;
                          set_counters(state, attn.cost(q, k, v), c.name(), 0);
                        })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
  bm::RegisterBenchmark(("linear/" + c.name()).c_str(),
                        [c, one_thread](bm::State& state) {
                          Inputs in(c.n, 1.0f);
                          ak::Attention<ak::Linear, Backend> attn(ak::Linear::Options{.causal = c.causal}, one_thread);
                          const auto q = in.view(in.q), k = in.view(in.k), v = in.view(in.v);
                          attn(q, k, v, in.out_view());
                          if (!ak::bench::check_output(state, in.out, "linear/" + c.name(),
                                                       [&] { return ak::bench::expected_linear(q, k, v, c.causal); }))
                            return;
                          const double seconds = ak::bench::timed_loop(state, [&] { attn(q, k, v, in.out_view()); });
                          set_counters(state, attn.cost(q, k, v), c.name(), seconds);
                        })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
  bm::RegisterBenchmark(
      ("performer/" + c.name()).c_str(),
      [c, one_thread](bm::State& state) {
        Inputs in(c.n, 1.0f);
        const ak::RandomProjection w =
            ak::gaussian_orthogonal_features(ak::Performer::kDefaultFeatures, kDim, kProjectionSeed);
        ak::Attention<ak::Performer, Backend> attn(ak::Performer::Options{.causal = c.causal}, one_thread);
        const auto q = in.view(in.q), k = in.view(in.k), v = in.view(in.v);
        attn(q, k, v, w.view(), in.out_view());
        // The key features share one max over every key, so a row block is computed with all the keys:
        // causal, that is right for the last rows only.
        const std::vector<ak::bench::Range> rows =
            c.causal ? std::vector<ak::bench::Range>{{c.n - 48, c.n}} : ak::bench::spread(c.n, 16);
        if (!ak::bench::check_output(state, in.out, "performer/" + c.name(), [&] {
              return ak::bench::expected_rows(c.n, kHeads, kDim, rows, [&](ak::bench::Range r, auto out) {
                using Acc = typename decltype(out)::element_type;
                ak::reference::performer<Acc>(ak::bench::seq_rows(q, r.begin, r.end), k, v, w.view(), out,
                                              {.causal = c.causal});
              });
            }))
          return;
        const double seconds = ak::bench::timed_loop(state, [&] { attn(q, k, v, w.view(), in.out_view()); });
        set_counters(state, attn.cost(q, k, v, w.view()), c.name(), seconds);
        std::vector<float> exact(in.out.size());
        ak::Attention<ak::Dense, Backend>(ak::Dense::Options{.causal = c.causal})(
            q, k, v, ak::bshd(exact.data(), 1, c.n, kHeads, kDim));
        state.counters["rel_error"] = ak::bench::relative_error(in.out, exact);
      })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
}

void print_table(const ak::bench::CollectingReporter& reporter, const std::vector<Case>& cases) {
  auto find = [&](const std::string& name, const std::string& impl) { return reporter.find(name, impl); };
  std::printf(
      "\nbatch 1, %ld heads, d %ld, fp32, 1 thread; speedup = dense time / time (same run); "
      "GFLOP/s = cost().flops / time\n",
      long(kHeads), long(kDim));
  std::printf("%-14s %9s %8s | %9s %8s %8s | %9s %8s %8s %9s\n", "case", "dense ms", "GFLOP/s", "linear ms", "GFLOP/s",
              "speedup", "perf. ms", "GFLOP/s", "speedup", "rel.err");
  for (bool causal : {false, true}) {
    Index linear_cross = 0, performer_cross = 0;
    for (const Case& c : cases) {
      if (c.causal != causal) continue;
      const auto *dense = find(c.name(), "dense"), *linear = find(c.name(), "linear"),
                 *performer = find(c.name(), "performer");
      if (dense == nullptr || linear == nullptr || performer == nullptr) {  // times where there are, no ratios
        if (reporter.wrong_runs().contains(c.name()))
          std::printf("%-14s %9s %8s | %9s %8s %8s | %9s\n", c.name().c_str(),
                      reporter.milliseconds(c.name(), "dense").c_str(), "",
                      reporter.milliseconds(c.name(), "linear").c_str(), "", "",
                      reporter.milliseconds(c.name(), "performer").c_str());
        continue;
      }
      const double linear_speedup = dense->seconds / linear->seconds,
                   performer_speedup = dense->seconds / performer->seconds;
      std::printf("%-14s %9.2f %8.1f | %9.2f %8.1f %7.2fx | %9.2f %8.1f %7.2fx %9.3f\n", c.name().c_str(),
                  dense->seconds * 1e3, dense->counters.at("GFLOPS"), linear->seconds * 1e3,
                  linear->counters.at("GFLOPS"), linear_speedup, performer->seconds * 1e3,
                  performer->counters.at("GFLOPS"), performer_speedup, performer->counters.at("rel_error"));
      if (linear_speedup > 1 && linear_cross == 0) linear_cross = c.n;
      if (linear_speedup <= 1) linear_cross = 0;
      if (performer_speedup > 1 && performer_cross == 0) performer_cross = c.n;
      if (performer_speedup <= 1) performer_cross = 0;
    }
    std::printf("  %s crossover (faster than dense from this N on): linear N=%ld, performer N=%ld (0: none measured)\n",
                causal ? "causal" : "non-causal", long(linear_cross), long(performer_cross));
  }
}

// FAVOR+ relative error against exact attention as m grows, same inputs and seed.
void print_error_curve(Index n) {
  std::printf("\nFAVOR+ relative error vs exact dense attention, N=%ld, %ld heads, d %ld, W seed %lu\n", long(n),
              long(kHeads), long(kDim), static_cast<unsigned long>(kProjectionSeed));
  std::printf("%-26s", "q, k entries / m");
  const std::vector<Index> features{16, 64, 256, 1024, 4096};
  for (Index m : features) std::printf(" %8ld", long(m));
  std::printf("\n");
  for (float range : {1.0f, 0.5f})
    for (bool causal : {false, true}) {
      Inputs in(n, range);
      const auto q = in.view(in.q), k = in.view(in.k), v = in.view(in.v);
      std::vector<float> exact(in.out.size());
      ak::Attention<ak::Dense>(ak::Dense::Options{.causal = causal})(q, k, v,
                                                                     ak::bshd(exact.data(), 1, n, kHeads, kDim));
      std::printf("[-%.1f, %.1f]%-14s", range, range, causal ? " causal" : "");
      for (Index m : features) {
        const ak::RandomProjection w = ak::gaussian_orthogonal_features(m, kDim, kProjectionSeed);
        ak::Attention<ak::Performer>(ak::Performer::Options{.causal = causal})(q, k, v, w.view(), in.out_view());
        std::printf(" %8.3f", ak::bench::relative_error(in.out, exact));
      }
      std::printf("\n");
    }
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Case> cases;
  return ak::bench::bench_main(
      argc, argv, ak::OpenMP<>::name(),
      [&](bool full) {
        const Index largest = full ? 16384 : 4096;
        for (bool causal : {false, true})
          for (Index n = 512; n <= largest; n *= 2) cases.push_back({n, causal});
        for (const Case& c : cases) register_case(c);
      },
      [&](const ak::bench::CollectingReporter& reporter) {
        print_table(reporter, cases);
        print_error_curve(1024);
      });
}
