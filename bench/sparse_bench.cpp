// Sparse attention against the dense kernel on the same inputs in the same run: block-sparse with
// random block masks, XAttention (scoring alone and the whole call) and a causal sliding window.
// Batch 1, 2 heads, d 128, causal, OpenMP over all threads. Inputs are "random" (uniform q, k, v:
// near-uniform attention, the worst case for selection) or "local" (q = k a random walk along the
// sequence, correlation 0.995 per token: attention concentrated near the diagonal).
// Counters: FLOPs / GFLOPS / bytes from cost(), density (listed / causally visible blocks, or visible pairs for the
// window), rel_err (Frobenius error against the exact dense output over its norm); the table adds speedup against dense
// and the scoring time as a share of XAttention's and of dense time. Every case first checks its
// output against its reference twin on 48 rows (scoring: 3 query blocks) of every head
// (report.hpp): dense and the window against reference::dense / masked, block-sparse and
// XAttention against reference::block_sparse with the mask they ran (XAttention: the blocks it
// selected), the scores against reference::xattention_scores; a case that differs is WRONG, untimed.
// rel_err is measured against the dense kernel's output, which the dense case checks.
//   sparse_bench          N 4096 and 16384 (about two minutes)
//   sparse_bench --full   N 2048..32768, tau 0.5 / 0.9 / 0.99, block-sparse density 0.1 / 0.3
// Other arguments go to Google Benchmark (--benchmark_repetitions=N: the table keeps the fastest).
#include <attnkit/attnkit.hpp>
#include <attnkit/reference/block_sparse.hpp>
#include <attnkit/reference/xattention.hpp>
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

std::string case_name(Index n, bool local) { return "N=" + std::to_string(n) + (local ? " local" : " random"); }

// Inputs of one case and the exact dense output.
struct Problem {
  Index n;
  bool local;
  std::vector<float> q, k, v, exact;  // (n, heads, dim) each

  Problem(Index length, bool local_)
      : n(length), local(local_), q(n * kHeads * kDim), k(q.size()), v(q.size()), exact(q.size()) {
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
  std::string name() const { return case_name(n, local); }
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

// Attention under the block mask `mask` (causal) on 48 rows of every head.
ak::bench::Expected expected_blocks(const Problem& p, const ak::BlockMask& mask) {
  return ak::bench::expected_masked(p.view(p.q), p.view(p.k), p.view(p.v),
                                    ak::reference::BlockElements(mask, kBlock, p.n, p.n, true));
}

// XAttention's block scores (1, heads, blocks, blocks) on the query blocks at the start, the middle
// and the end: causal, a query block needs the keys up to its own block only.
ak::bench::Expected expected_scores(const Problem& p) {
  const Index blocks = (p.n + kBlock - 1) / kBlock;
  const std::vector<ak::bench::Range> rows = ak::bench::spread(blocks, 1);
  std::vector<std::size_t> at;
  for (const ak::bench::Range& r : rows)
    for (Index h = 0; h < kHeads; ++h)
      for (Index qb = r.begin; qb < r.end; ++qb)
        for (Index kb = 0; kb < std::min(blocks, r.end); ++kb)
          at.push_back(static_cast<std::size_t>((h * blocks + qb) * blocks + kb));
  const std::string what = "query blocks " + ak::bench::describe(rows) + " of " + std::to_string(blocks);
  return ak::bench::expected_from_twin(std::move(at), what, [&](auto& values) {
    using Acc = typename std::decay_t<decltype(values)>::value_type;
    values.clear();
    for (const ak::bench::Range& r : rows) {
      const Index end = std::min(p.n, r.end * kBlock);
      const std::vector<Acc> scores = ak::reference::xattention_scores<Acc>(
          ak::bench::seq_rows(p.view(p.q), r.begin * kBlock, end), ak::bench::seq_rows(p.view(p.k), 0, end),
          {.block = kBlock, .causal = true});
      values.insert(values.end(), scores.begin(), scores.end());  // (heads, r.size(), min(blocks, r.end))
    }
  });
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
    attn(p.view(p.q), p.view(p.k), p.view(p.v), p.out(out));
    if (!ak::bench::check_output(state, out, "dense/" + p.name(), [&] {
          return ak::bench::expected_dense(p.view(p.q), p.view(p.k), p.view(p.v), true);
        }))
      return;
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
          attn(p.view(p.q), p.view(p.k), p.view(p.v), mask, p.out(out));
          if (!ak::bench::check_output(state, out, "block-sparse " + std::to_string(target) + "/" + p.name(),
                                       [&] { return expected_blocks(p, mask); }))
            return;
          for (auto _ : state) attn(p.view(p.q), p.view(p.k), p.view(p.v), mask, p.out(out));
          set_cost(state, attn.cost(p.view(p.q), p.view(p.k), p.view(p.v), mask));
          state.counters["density"] = mean(ak::block_density(mask, p.n, p.n, kBlock, true));
          state.counters["rel_err"] = p.relative_error(out);
        });
  }
  add("xattn scoring", n, local, [](bm::State& state, const Problem& p, std::vector<float>& out) {
    const ak::Attention<ak::XAttention> attn({.block = kBlock, .causal = true});
    const Index blocks = (p.n + kBlock - 1) / kBlock;
    out.resize(static_cast<std::size_t>(kHeads * blocks * blocks));
    const auto scores = ak::View<float, 4>::contiguous(out.data(), {1, kHeads, blocks, blocks});
    attn.score(p.view(p.q), p.view(p.k), scores);
    if (!ak::bench::check_output(state, out, "xattn scoring/" + p.name(), [&] { return expected_scores(p); })) return;
    for (auto _ : state) attn.score(p.view(p.q), p.view(p.k), scores);
    // The cost of a call that selected nothing is the scoring alone.
    const ak::BlockMask none =
        ak::BlockMask::from_predicate(1, kHeads, blocks, blocks, [](Index, Index, Index, Index) { return false; });
    set_cost(state, attn.cost(p.view(p.q), p.view(p.k), p.view(p.v), none));
  });
  for (const float tau : full ? std::vector<float>{0.5f, 0.9f, 0.99f} : std::vector<float>{0.9f}) {
    char name[32];
    std::snprintf(name, sizeof name, "xattention tau=%.2f", tau);
    add(name, n, local, [tau](bm::State& state, const Problem& p, std::vector<float>& out) {
      const ak::Attention<ak::XAttention> attn({.block = kBlock, .tau = {tau}, .causal = true});
      ak::BlockMask selected;
      attn(p.view(p.q), p.view(p.k), p.view(p.v), p.out(out), {.selected = &selected});
      if (!ak::bench::check_output(state, out, "xattention " + std::to_string(tau) + "/" + p.name(),
                                   [&] { return expected_blocks(p, selected); }))
        return;
      for (auto _ : state) attn(p.view(p.q), p.view(p.k), p.view(p.v), p.out(out), {.selected = &selected});
      set_cost(state, attn.cost(p.view(p.q), p.view(p.k), p.view(p.v), selected));
      state.counters["density"] = mean(ak::block_density(selected, p.n, p.n, kBlock, true));
      state.counters["rel_err"] = p.relative_error(out);
    });
  }
  add("window 1024", n, local, [](bm::State& state, const Problem& p, std::vector<float>& out) {
    const ak::Attention<ak::Dense> attn({.causal = true, .window = {.left = 1023}});
    const ak::Attention<ak::Dense> causal({.causal = true});
    attn(p.view(p.q), p.view(p.k), p.view(p.v), p.out(out));
    if (!ak::bench::check_output(state, out, "window 1024/" + p.name(), [&] {
          return ak::bench::expected_masked(
              p.view(p.q), p.view(p.k), p.view(p.v),
              ak::reference::WindowElements{.q_len = p.n, .kv_len = p.n, .left = 1023, .causal = true});
        }))
      return;
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
  for (const std::string& shape : reporter.cases()) {
    static const std::map<std::string, ak::bench::Measured> kNone;
    const auto row = reporter.results().find(shape);
    const auto& impls = row != reporter.results().end() ? row->second : kNone;
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
    if (const auto wrong = reporter.wrong_runs().find(shape); wrong != reporter.wrong_runs().end())
      for (const auto& entry : wrong->second)
        std::printf("%-14s %-22s %10s\n", shape.c_str(), entry.first.c_str(), "WRONG");
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
