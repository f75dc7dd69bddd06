// Sub-quadratic approximations (Combiner-Fixed, Combiner-Logsparse, ProbSparse) against the dense kernel on the same
// inputs and threads: time, FLOPs performed (cost()), speedup over dense measured in the same run,
// relative error ||approx - dense||_F / ||dense||_F, and the fitted growth exponent of time in N.
// Every case first checks its output against its own reference twin (report.hpp) and is WRONG,
// untimed, when it differs: dense on 48 rows, Combiner-Fixed whole, Combiner-Logsparse on 48 rows
// (its twin row by row below), ProbSparse with the kernel's samples on 3 value columns of every row
// (the columns are independent; the twin's cost is its lazy rows' means, quadratic in N). The
// relative error is measured against the dense kernel's output, which the dense case checks.
//   sparse_approx_bench          N 1024..8192, d 64, 2 heads, non-causal (under 2 minutes)
//   sparse_approx_bench --full   N 1024..32768, non-causal and causal
// Other arguments go to Google Benchmark; --benchmark_repetitions=3 keeps the fastest repetition.
#include <attnkit/attnkit.hpp>
#include <attnkit/reference/combiner.hpp>
#include <attnkit/reference/probsparse.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <numeric>
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

// reference::combiner_logsparse's definition on the rows `r` alone (its spans from
// reference::combiner_logsparse_blocks and reference::combiner_span): row i sees one span per block of the dyadic cover
// of [0, i), itself, and (non-causal) one per block of the cover of (i, N). out: (1, r.size(), heads, dim).
template <class Acc>
void logsparse_rows(const ak::View<const float, 4>& q, const ak::View<const float, 4>& k,
                    const ak::View<const float, 4>& v, bool causal, ak::bench::Range r, const ak::View<Acc, 4>& out) {
  const Index n = q.extent(1), dim = q.extent(3);
  const Acc scale = static_cast<Acc>(1.0 / std::sqrt(static_cast<double>(dim)));
  std::vector<std::pair<Index, Index>> blocks;  // [begin, end) of each span a row sees
  std::vector<Acc> key, value, logits;
  std::vector<std::vector<Acc>> values;
  for (Index h = 0; h < q.extent(2); ++h)
    for (Index i = r.begin; i < r.end; ++i) {
      ak::reference::combiner_logsparse_blocks(i, n, causal, blocks);
      logits.clear();
      values.clear();
      for (const auto& [begin, end] : blocks) {
        ak::reference::combiner_span<Acc>(q, k, v, 0, h, h, begin, end, scale, key, value);
        Acc dot = 0;
        for (Index d = 0; d < dim; ++d) dot += static_cast<Acc>(q(0, i, h, d)) * key[d];
        logits.push_back(scale * dot);
        values.push_back(value);
      }
      const Acc max = *std::max_element(logits.begin(), logits.end());
      Acc total = 0;
      for (Acc& x : logits) total += x = std::exp(x - max);
      for (Index d = 0; d < v.extent(3); ++d) {
        Acc acc = 0;
        for (std::size_t e = 0; e < logits.size(); ++e) acc += logits[e] * values[e][d];
        out(0, i - r.begin, h, d) = acc / total;
      }
    }
}

// ProbSparse's reference (with the samples the kernel draws) on value columns 0, dim / 2 and
// dim - 1 of every row and head. Where the u-th and (u+1)-th largest sparsity of a head are within
// float rounding of each other, the kernel may pick either row: those two rows are not checked.
ak::bench::Expected expected_probsparse(const ak::View<const float, 4>& q, const ak::View<const float, 4>& k,
                                        const ak::View<const float, 4>& v, const ak::ProbSparse::Options& options) {
  const Index n = q.extent(1), heads = q.extent(2), dim = v.extent(3);
  const Index samples_per_query = ak::probsparse_samples_per_query(options.factor, n);
  const Index top = ak::probsparse_top_queries(options.factor, n);
  std::vector<std::int32_t> samples(static_cast<std::size_t>(n * samples_per_query));
  ak::probsparse_sample_indices(options.seed, n, n, samples_per_query, samples);
  const std::vector<ak::bench::Range> columns = ak::bench::spread(dim, 1);
  std::vector<std::size_t> at;
  for (const ak::bench::Range& c : columns)
    for (Index i = 0; i < n; ++i)
      for (Index h = 0; h < heads; ++h) at.push_back(static_cast<std::size_t>((i * heads + h) * dim + c.begin));
  ak::bench::Expected expected = ak::bench::expected_from_twin(
      std::move(at), "value columns " + ak::bench::describe(columns) + " of every row", [&](auto& values) {
        using Acc = typename std::decay_t<decltype(values)>::value_type;
        values.clear();
        std::vector<Acc> out(static_cast<std::size_t>(n * heads));
        for (const ak::bench::Range& c : columns) {
          ak::reference::probsparse<Acc>(q, k, ak::bench::slice(v, 3, c.begin, c.end), samples,
                                         ak::View<Acc, 4>::contiguous(out.data(), {1, n, heads, 1}),
                                         {.factor = options.factor, .causal = options.causal});
          values.insert(values.end(), out.begin(), out.end());
        }
      });
  // Sparsity M(q_i) = max_s q_i·k_s - Σ_s q_i·k_s / L_K in double, as the reference defines it.
  for (Index h = 0; h < heads && top < n; ++h) {
    std::vector<double> sparsity(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) {
      double max = -INFINITY, sum = 0;
      for (Index s = 0; s < samples_per_query; ++s) {
        double dot = 0;
        for (Index d = 0; d < q.extent(3); ++d)
          dot += double(q(0, i, h, d)) * k(0, samples[i * samples_per_query + s], h, d);
        max = std::max(max, dot);
        sum += dot;
      }
      sparsity[i] = max - sum / static_cast<double>(n);
    }
    std::vector<Index> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), Index(0));
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return sparsity[a] > sparsity[b]; });
    const double scale = 1.0 + std::abs(sparsity[order[0]]);
    if (sparsity[order[top - 1]] - sparsity[order[top]] > 1e-4 * scale) continue;
    if (expected.slack.empty()) expected.slack.assign(expected.at.size(), 0.0);
    for (std::size_t e = 0; e < expected.at.size(); ++e) {
      const Index row = static_cast<Index>(expected.at[e]) / (heads * dim),
                  head = static_cast<Index>(expected.at[e]) / dim % heads;
      if (head == h && (row == order[top - 1] || row == order[top])) expected.slack[e] = INFINITY;
    }
  }
  return expected;
}

// The Expected of Mechanism (with `options`) on inputs (1, n, heads, dim).
template <class Mechanism>
ak::bench::Expected expected_for(const ak::View<const float, 4>& q, const ak::View<const float, 4>& k,
                                 const ak::View<const float, 4>& v, const typename Mechanism::Options& options) {
  const Index n = q.extent(1);
  if constexpr (std::is_same_v<Mechanism, ak::Dense>) {
    return ak::bench::expected_dense(q, k, v, options.causal);
  } else if constexpr (std::is_same_v<Mechanism, ak::CombinerFixed>) {
    return ak::bench::expected_rows(n, kHeads, kDim, {{0, n}}, [&](ak::bench::Range, auto out) {
      using Acc = typename decltype(out)::element_type;
      ak::reference::combiner_fixed<Acc>(q, k, v, out, {.causal = options.causal});
    });
  } else if constexpr (std::is_same_v<Mechanism, ak::CombinerLogsparse>) {
    return ak::bench::expected_rows(n, kHeads, kDim, ak::bench::spread(n, 16), [&](ak::bench::Range r, auto out) {
      logsparse_rows(q, k, v, options.causal, r, out);
    });
  } else {
    return expected_probsparse(q, k, v, options);
  }
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
                          attn(q, k, v, o);
                          if (!ak::bench::check_output(state, out, impl + "/" + case_name(n, causal),
                                                       [&] { return expected_for<Mechanism>(q, k, v, options); }))
                            return;
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
  const char* impls[] = {"dense", "combiner-fixed", "combiner-logsparse", "probsparse"};
  const std::vector<std::string> cases = reporter.cases();
  for (bool causal : {false, true}) {
    bool header = false;
    std::map<std::string, std::vector<std::pair<double, double>>> growth;
    for (Index n : sizes) {
      const std::string name = case_name(n, causal);
      if (std::find(cases.begin(), cases.end(), name) == cases.end()) continue;
      const ak::bench::Measured* dense = reporter.find(name, "dense");
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
        const ak::bench::Measured* measured = reporter.find(name, impl);
        if (measured == nullptr) {
          if (reporter.wrong(name, impl)) std::printf("%-8lld %-18s %11s\n", static_cast<long long>(n), impl, "WRONG");
          continue;
        }
        const ak::bench::Measured& m = *measured;
        growth[impl].emplace_back(static_cast<double>(n), m.seconds);
        std::printf("%-8lld %-18s %11.2f %11.3f %9.1f", static_cast<long long>(n), impl, m.seconds * 1e3,
                    m.counters.at("FLOPs") * 1e-9, m.counters.at("GFLOPS"));
        if (dense != nullptr)
          std::printf(" %8.1fx", dense->seconds / m.seconds);
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
