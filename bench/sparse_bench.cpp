// Sparse attention against the dense kernel on the same inputs in the same run: block-sparse with
// random block masks, XAttention (scoring alone and the whole call) and a causal sliding window.
// Batch 1, 2 heads, d 128, causal, OpenMP over all threads. Inputs are "random" (uniform q, k, v:
// near-uniform attention, the worst case for selection) or "local" (q = k a random walk along the
// sequence, correlation 0.995 per token: attention concentrated near the diagonal).
// Counters: FLOPs / GFLOPS / bytes from cost(), density (listed / causally visible blocks, or visible pairs for the
// window), rel_err (Frobenius error against the exact dense output over its norm); the table adds speedup against dense
// and the scoring time as a share of XAttention's and of dense time.
//   sparse_bench          N 4096 and 16384 (about two minutes)
//   sparse_bench --full   N 2048..32768, tau 0.5 / 0.9 / 0.99, block-sparse density 0.1 / 0.3
// Other arguments go to Google Benchmark (--benchmark_repetitions=N: the table keeps the fastest).
#include <attnkit/attnkit.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>

#include "report.hpp"

namespace ak = attnkit;
using ak::Index;
namespace bm = benchmark;

namespace {

constexpr Index kHeads = 2, kDim = 128, kBlock = 128;

// Inputs of one case and the exact dense output.
struct Problem {
  Index n;
  std::vector<float> q, k, v, exact;  // (n, heads, dim) each

  Problem(Index length, bool local) : n(length), q(n * kHeads * kDim), k(q.size()), v(q.size()), exact(q.size()) {
    std::mt19937 rng(42);
    std::normal_distribution<float> normal;
    if (local) {
      const float a = 0.995f, b = std::sqrt(1.0f - a * a);
      for (Index h = 0; h < kHeads; ++h)
        for (Index d = 0; d < kDim; ++d) {
          float x = normal(rng);
          for (Index i = 0; i < n; ++i) {
            x = a * x + b * normal(rng);
            q[(i * kHeads + h) * kDim + d] = k[(i * kHeads + h) * kDim + d] = x;
          }
        }
    } else {
      std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
      for (auto* x : {&q, &k}) std::generate(x->begin(), x->end(), [&] { return uniform(rng); });
    }
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    std::generate(v.begin(), v.end(), [&] { return uniform(rng); });
    ak::Attention<ak::Dense>({.causal = true})(view(q), view(k), view(v), out(exact));
  }
  ak::View<const float, 4> view(const std::vector<float>& x) const { return ak::bshd(x.data(), 1, n, kHeads, kDim); }
  ak::View<float, 4> out(std::vector<float>& x) const { return ak::bshd(x.data(), 1, n, kHeads, kDim); }

  double relative_error(const std::vector<float>& o) const { return ak::bench::relative_error(o, exact); }
};

const Problem& problem(Index n, bool local) {
  static std::map<std::pair<Index, bool>, std::unique_ptr<Problem>> cache;
  auto& slot = cache[{n, local}];
  if (!slot) slot = std::make_unique<Problem>(n, local);
  return *slot;
}

std::string case_name(Index n, bool local) { return "N=" + std::to_string(n) + (local ? " local" : " random"); }

// Causal random block mask: the sink and the diagonal, other visible blocks kept with the
// probability that makes the overall density `target`.
ak::BlockMask random_mask(Index n, double target) {
  const Index blocks = (n + kBlock - 1) / kBlock;
  double visible = 0, forced = 0;
  for (Index qb = 0; qb < blocks; ++qb) {
    visible += static_cast<double>(qb + 1);
    forced += static_cast<double>(std::min<Index>(qb + 1, 2));
  }
  std::bernoulli_distribution keep(std::clamp((target * visible - forced) / (visible - forced), 0.0, 1.0));
  std::mt19937 rng(7);
  return ak::BlockMask::from_predicate(1, kHeads, blocks, blocks, [&](Index, Index, Index qb, Index kb) {
    return kb == 0 || kb == qb || (kb < qb && keep(rng));
  });
}

// FLOPs (cost()), GFLOP/s and bytes, as every attnkit bench reports them.
void set_cost(bm::State& state, const ak::Cost& cost) {
  state.counters["FLOPs"] = cost.flops;
  state.counters["bytes"] = cost.bytes;
  state.counters["GFLOPS"] = bm::Counter(cost.flops * 1e-9, bm::Counter::kIsIterationInvariantRate);
}

double mean(const std::vector<double>& x) {
  double s = 0;
  for (double e : x) s += e;
  return x.empty() ? 0.0 : s / static_cast<double>(x.size());
}

template <class F>
void add(const std::string& impl, Index n, bool local, F body) {
  bm::RegisterBenchmark((impl + "/" + case_name(n, local)).c_str(),
                        [=](bm::State& state) {
                          const Problem& p = problem(n, local);
                          std::vector<float> out(p.q.size());
                          body(state, p, out);
                        })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
}

void register_case(Index n, bool local, bool full) {
  add("dense", n, local, [](bm::State& state, const Problem& p, std::vector<float>& out) {
    const ak::Attention<ak::Dense> attn({.causal = true});
    for (auto _ : state) attn(p.view(p.q), p.view(p.k), p.view(p.v), p.out(out));
    set_cost(state, attn.cost(p.view(p.q), p.view(p.k), p.view(p.v)));
    state.counters["density"] = 1.0;
    state.counters["rel_err"] = p.relative_error(out);
  });
  for (const double target : full ? std::vector<double>{0.1, 0.3} : std::vector<double>{0.1}) {
    add("block-sparse " + std::to_string(int(target * 100)) + "%", n, local,
        [target](bm::State& state, const Problem& p, std::vector<float>& out) {
          const ak::BlockMask mask = random_mask(p.n, target);
          const ak::Attention<ak::BlockSparse> attn({.block = kBlock, .causal = true});
          for (auto _ : state) attn(p.view(p.q), p.view(p.k), p.view(p.v), mask, p.out(out));
          set_cost(state, attn.cost(p.view(p.q), p.view(p.k), p.view(p.v), mask));
          state.counters["density"] = mean(ak::block_density(mask, p.n, p.n, kBlock, true));
          state.counters["rel_err"] = p.relative_error(out);
        });
  }
  add("xattn scoring", n, local, [](bm::State& state, const Problem& p, std::vector<float>& out) {
    const ak::Attention<ak::XAttention> attn({.block = kBlock});
    const Index blocks = (p.n + kBlock - 1) / kBlock;
    out.resize(static_cast<std::size_t>(kHeads * blocks * blocks));
    for (auto _ : state)
      attn.score(p.view(p.q), p.view(p.k), ak::View<float, 4>::contiguous(out.data(), {1, kHeads, blocks, blocks}));
    // The cost of a call that selected nothing is the scoring alone.
    const ak::BlockMask none =
        ak::BlockMask::from_predicate(1, kHeads, blocks, blocks, [](Index, Index, Index, Index) { return false; });
    set_cost(state, attn.cost(p.view(p.q), p.view(p.k), p.view(p.v), none));
  });
  for (const float tau : full ? std::vector<float>{0.5f, 0.9f, 0.99f} : std::vector<float>{0.9f}) {
    char name[32];
    std::snprintf(name, sizeof name, "xattention tau=%.2f", tau);
    add(name, n, local, [tau](bm::State& state, const Problem& p, std::vector<float>& out) {
      const ak::Attention<ak::XAttention> attn({.block = kBlock, .tau = {tau}});
      ak::BlockMask selected;
      for (auto _ : state) attn(p.view(p.q), p.view(p.k), p.view(p.v), p.out(out), {.selected = &selected});
      set_cost(state, attn.cost(p.view(p.q), p.view(p.k), p.view(p.v), selected));
      state.counters["density"] = mean(ak::block_density(selected, p.n, p.n, kBlock, true));
      state.counters["rel_err"] = p.relative_error(out);
    });
  }
  add("window 1024", n, local, [](bm::State& state, const Problem& p, std::vector<float>& out) {
    const ak::Attention<ak::Dense> attn({.causal = true, .window = {.left = 1023}});
    const ak::Attention<ak::Dense> causal({.causal = true});
    for (auto _ : state) attn(p.view(p.q), p.view(p.k), p.view(p.v), p.out(out));
    set_cost(state, attn.cost(p.view(p.q), p.view(p.k), p.view(p.v)));
    state.counters["density"] = attn.cost(p.view(p.q), p.view(p.k), p.view(p.v)).flops /
                                causal.cost(p.view(p.q), p.view(p.k), p.view(p.v)).flops;
    state.counters["rel_err"] = p.relative_error(out);
  });
}

void print_table(const ak::bench::CollectingReporter& reporter) {
  std::printf("\nsparse attention vs dense, batch 1, %d heads, d %d, causal, block %d, fp32, fastest repetition\n",
              int(kHeads), int(kDim), int(kBlock));
  std::printf("%-14s %-22s %10s %9s %8s %10s %12s %12s\n", "case", "implementation", "ms", "speedup", "density",
              "rel_err", "scoring/xa", "scoring/dense");
  for (const auto& [shape, impls] : reporter.results()) {
    const auto dense = impls.find("dense");
    const auto scoring = impls.find("xattn scoring");
    const double dense_seconds = dense == impls.end() ? NAN : dense->second.seconds;  // filtered out: no ratios
    for (const auto& [impl, m] : impls) {
      std::printf("%-14s %-22s %10.1f %8.2fx", shape.c_str(), impl.c_str(), m.seconds * 1e3, dense_seconds / m.seconds);
      auto counter = [&](const char* key) { return m.counters.count(key) ? m.counters.at(key) : NAN; };
      std::printf(" %8.3f %10.2e", counter("density"), counter("rel_err"));
      if (scoring != impls.end() && impl.rfind("xattention", 0) == 0)
        std::printf(" %11.1f%% %11.1f%%", 100 * scoring->second.seconds / m.seconds,
                    100 * scoring->second.seconds / dense_seconds);
      std::printf("\n");
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  return ak::bench::bench_main(
      argc, argv, ak::OpenMP<>::name(),
      [](bool full) {
        for (const Index n :
             full ? std::vector<Index>{2048, 4096, 8192, 16384, 32768} : std::vector<Index>{4096, 16384})
          for (const bool local : {false, true}) register_case(n, local, full);
      },
      [](const ak::bench::CollectingReporter& reporter) { print_table(reporter); });
}
