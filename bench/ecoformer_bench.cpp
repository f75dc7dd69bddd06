// EcoFormer binary-hashing attention against the dense kernel and linear attention on the same
// shapes, measured in the same run; prints the speed table and EcoFormer's error against exact
// softmax attention with a calibrated and a random A.
//   ecoformer_bench           N 1024..32768, non-causal and causal, for EcoFormer (b 16 and 32) and
//                             linear, dense up to 4096; d 64, m 32 anchors, 8 heads, 1 thread
//                             (a few minutes)
//   ecoformer_bench --full    dense up to 32768 too
// Inputs: q and k drawn around 16 cluster centres (centres N(0, 1), spread 0.5), so exact attention
// is peaked and hashing has structure to keep; v uniform. Counters: FLOPs (cost()), GFLOPS,
// vs_dense and vs_linear (their time / this time, from the runs of the same case registered just
// before), mul_avoided (multiplies a float h_qᵀ (Σ h_k vᵀ) would spend: b Dv per key and per query,
// every head), mul_done (multiplies EcoFormer performs: hashing m (D + b) per hashed row, 2 Dv per
// output for the final scale and division). Every case first checks its output against its
// reference twin on 48 rows of every head (report.hpp; EcoFormer with the same hash, below) and is
// WRONG, untimed, when it differs. Other arguments go to Google Benchmark (e.g.
// --benchmark_repetitions=3; the table keeps the fastest repetition).
#include <array>
#include <attnkit/attnkit.hpp>
#include <attnkit/reference/ecoformer.hpp>
#include <attnkit/tools/ecoformer_calibration.hpp>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>

#include "report.hpp"

namespace ak = attnkit;
using ak::Index;
namespace bm = benchmark;

namespace {

constexpr Index kHeads = 8, kDim = 64, kAnchors = 32, kCalibrationRows = 256;
constexpr std::array<Index, 2> kBits{16, 32};  // the target: faster than linear for b <= 32
using Backend = ak::OpenMP<>;

// Clustered q, k (B=1, N, H, D) and uniform v, seeded; the same for every case of one N.
struct Inputs {
  std::vector<float> q, k, v, out;
  explicit Inputs(Index n) : q(n * kHeads * kDim), k(q.size()), v(q.size()), out(q.size()) {
    std::mt19937 rng(2022);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    std::vector<float> centres(16 * kDim);
    for (float& e : centres) e = normal(rng);
    for (std::vector<float>* x : {&q, &k})
      for (Index row = 0; row < n * kHeads; ++row) {
        const float* centre = centres.data() + (rng() % 16) * kDim;
        for (Index f = 0; f < kDim; ++f) (*x)[row * kDim + f] = centre[f] + 0.5f * normal(rng);
      }
    for (float& e : v) e = uniform(rng);
  }
  Index n() const { return static_cast<Index>(q.size() / (kHeads * kDim)); }
  ak::View<const float, 4> view(const std::vector<float>& x) const { return ak::bshd(x.data(), 1, n(), kHeads, kDim); }
  ak::View<float, 4> out_view() { return ak::bshd(out.data(), 1, n(), kHeads, kDim); }
};

// Hash parameters: calibrated on the first kCalibrationRows queries and keys of each head, or the
// same anchors and mvec with A drawn standard normal (the calibration's start).
ak::tools::EcoFormerCalibration hash_for(const Inputs& in, Index bits, bool calibrated) {
  std::vector<ak::tools::detail::RowsD> samples(kHeads, ak::tools::detail::RowsD(2 * kCalibrationRows, kDim));
  for (Index h = 0; h < kHeads; ++h)
    for (Index r = 0; r < kCalibrationRows; ++r)
      for (Index f = 0; f < kDim; ++f) {
        samples[h](2 * r, f) = in.q[(r * kHeads + h) * kDim + f];
        samples[h](2 * r + 1, f) = in.k[(r * kHeads + h) * kDim + f];
      }
  ak::tools::EcoFormerCalibrationOptions options{.bits = bits, .anchors = kAnchors, .top_k = 30, .seed = 9};
  if (!calibrated) options.iterations = 0;  // keeps the seeded normal start
  ak::tools::EcoFormerCalibration c = ak::tools::calibrate_ecoformer(samples, options);
  if (!calibrated) {
    std::mt19937_64 rng(31);
    std::normal_distribution<double> normal(0.0, 1.0);
    for (float& e : c.a) e = static_cast<float>(normal(rng));
  }
  return c;
}

// Codes of rows [0, rows) of head h of x (bit t set <=> y_t > 0) from reference::ecoformer_projection
// in double, and which bits are unsure: |y_t| within 1e-5 of the scale of its sum, Σ_j |A_tj| (1 +
// |mvec_j|) (about 100 float roundings of its terms), so that float hashing may set them either way.
struct Codes {
  std::vector<std::uint64_t> code, unsure;
  Codes(const ak::View<const float, 4>& x, Index h, Index rows, const ak::EcoFormerHash& hash) {
    const Index bits = hash.a.extent(1), m = hash.anchors.extent(0);
    const double sigma = ak::reference::ecoformer_sigma<double>(x, 0, h, x.extent(1), hash.anchors);
    std::vector<double> margin(static_cast<std::size_t>(bits), 0.0);
    for (Index t = 0; t < bits; ++t)
      for (Index j = 0; j < m; ++j) margin[t] += 1e-5 * std::abs(hash.a(h, t, j)) * (1.0 + std::abs(hash.mvec(j)));
    for (Index n = 0; n < rows; ++n) {
      const std::vector<double> y =
          ak::reference::ecoformer_projection<double>(x, 0, n, h, hash.anchors, hash.mvec, hash.a, h, sigma);
      std::uint64_t c = 0, u = 0;
      for (Index t = 0; t < bits; ++t) {
        c |= std::uint64_t{y[t] > 0} << t;
        u |= std::uint64_t{std::abs(y[t]) < margin[t]} << t;
      }
      code.push_back(c);
      unsure.push_back(u);
    }
  }
};

// EcoFormer (reference::ecoformer's definition: w_ij = 2 b + 1 - 2 popcount(code_i xor code_j), out_i
// = Σ_j w_ij v_j / Σ_j w_ij over the visible keys) on 16 rows at the start, the middle and the end of
// every head, with the codes above. A row with an unsure bit is not checked; an unsure key bit a
// row sees widens its bound by what flipping it can change, 2 |v_j - out_i| / (den_i - 2 n_unsure).
ak::bench::Expected expected_ecoformer(const Inputs& in, const ak::EcoFormerHash& hash, bool causal) {
  const Index n = in.n(), bits = hash.a.extent(1);
  const auto q = in.view(in.q), k = in.view(in.k), v = in.view(in.v);
  std::vector<Codes> q_codes, k_codes;
  for (Index h = 0; h < kHeads; ++h) {
    q_codes.emplace_back(q, h, n, hash);
    k_codes.emplace_back(k, h, n, hash);
  }
  auto weight = [&](Index h, Index i, Index j) {
    return 2 * bits + 1 - 2 * std::popcount(q_codes[h].code[i] ^ k_codes[h].code[j]);
  };
  ak::bench::Expected expected =
      ak::bench::expected_rows(n, kHeads, kDim, ak::bench::spread(n, 16), [&](ak::bench::Range r, auto out) {
        using Acc = typename decltype(out)::element_type;
        std::vector<Acc> num(kDim);
        for (Index h = 0; h < kHeads; ++h)
          for (Index i = r.begin; i < r.end; ++i) {
            std::fill(num.begin(), num.end(), Acc(0));
            Acc den = 0;
            for (Index j = 0; j < (causal ? i + 1 : n); ++j) {
              const Acc w = static_cast<Acc>(weight(h, i, j));
              den += w;
              for (Index c = 0; c < kDim; ++c) num[c] += w * static_cast<Acc>(v(0, j, h, c));
            }
            for (Index c = 0; c < kDim; ++c) out(0, i - r.begin, h, c) = num[c] / den;
          }
      });
  expected.slack.assign(expected.at.size(), 0.0);
  for (std::size_t e = 0; e < expected.at.size(); e += kDim) {  // one row of one head per kDim positions
    const Index i = static_cast<Index>(expected.at[e]) / (kHeads * kDim),
                h = static_cast<Index>(expected.at[e]) / kDim % kHeads;
    if (q_codes[h].unsure[i] != 0) {
      std::fill_n(expected.slack.begin() + e, kDim, INFINITY);
      continue;
    }
    double den = 0, unsure = 0;
    for (Index j = 0; j < (causal ? i + 1 : n); ++j) {
      den += static_cast<double>(weight(h, i, j));
      unsure += std::popcount(k_codes[h].unsure[j]);
    }
    for (Index j = 0; j < (causal ? i + 1 : n) && unsure > 0; ++j)
      if (const int flips = std::popcount(k_codes[h].unsure[j]); flips > 0)
        for (Index c = 0; c < kDim; ++c)
          expected.slack[e + c] += 2.0 * flips * std::abs(v(0, j, h, c) - expected.value[e + c]) / (den - 2 * unsure);
  }
  return expected;
}

struct Case {
  Index n;
  bool causal;
  std::string name() const { return "N=" + std::to_string(n) + (causal ? " causal" : ""); }
};

std::map<std::string, double>& seconds_of(const std::string& impl) {
  static std::map<std::string, std::map<std::string, double>> seconds;
  return seconds[impl];
}

void set_counters(bm::State& state, const ak::Cost& cost, const std::string& case_name, double seconds,
                  const std::string& self) {
  state.counters["FLOPs"] = cost.flops;
  state.counters["GFLOPS"] = bm::Counter(cost.flops * 1e-9, bm::Counter::kIsIterationInvariantRate);
  for (const char* base : {"dense", "linear"})
    if (self != base)
      if (auto it = seconds_of(base).find(case_name); it != seconds_of(base).end() && seconds > 0)
        state.counters[std::string("vs_") + base] = it->second / seconds;
}

void register_case(const Case& c, bool with_dense) {
  const Backend one_thread{.num_threads = 1};
  if (with_dense)
    bm::RegisterBenchmark(("dense/" + c.name()).c_str(),
                          [c, one_thread](bm::State& state) {
                            Inputs in(c.n);
                            ak::Attention<ak::Dense, Backend> attn(ak::Dense::Options{.causal = c.causal}, one_thread);
                            const auto q = in.view(in.q), k = in.view(in.k), v = in.view(in.v);
                            attn(q, k, v, in.out_view());
                            if (!ak::bench::check_output(state, in.out, "dense/" + c.name(),
                                                         [&] { return ak::bench::expected_dense(q, k, v, c.causal); }))
                              return;
                            const double s = ak::bench::timed_loop(state, [&] { attn(q, k, v, in.out_view()); });
                            seconds_of("dense")[c.name()] =
                                std::min(s, seconds_of("dense").contains(c.name()) ? seconds_of("dense")[c.name()] : s);
                            set_counters(state, attn.cost(q, k, v), c.name(), 0, "dense");
                          })
        ->UseRealTime()
        ->Unit(bm::kMillisecond);
  bm::RegisterBenchmark(("linear/" + c.name()).c_str(),
                        [c, one_thread](bm::State& state) {
                          Inputs in(c.n);
                          ak::Attention<ak::Linear, Backend> attn(ak::Linear::Options{.causal = c.causal}, one_thread);
                          const auto q = in.view(in.q), k = in.view(in.k), v = in.view(in.v);
                          attn(q, k, v, in.out_view());
                          if (!ak::bench::check_output(state, in.out, "linear/" + c.name(),
                                                       [&] { return ak::bench::expected_linear(q, k, v, c.causal); }))
                            return;
                          const double s = ak::bench::timed_loop(state, [&] { attn(q, k, v, in.out_view()); });
                          set_counters(state, attn.cost(q, k, v), c.name(), s, "linear");
                          seconds_of("linear")[c.name()] =
                              std::min(s, seconds_of("linear").contains(c.name()) ? seconds_of("linear")[c.name()] : s);
                        })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
  for (const Index bits : kBits)
    bm::RegisterBenchmark(
        ("ecoformer-b" + std::to_string(bits) + "/" + c.name()).c_str(),
        [c, bits, one_thread](bm::State& state) {
          Inputs in(c.n);
          const ak::tools::EcoFormerCalibration hash = hash_for(in, bits, false);
          ak::Attention<ak::EcoFormer, Backend> attn({.causal = c.causal}, one_thread);
          const auto q = in.view(in.q), k = in.view(in.k), v = in.view(in.v);
          attn(q, k, v, hash.hash(), in.out_view());
          if (!ak::bench::check_output(state, in.out, "ecoformer-b" + std::to_string(bits) + "/" + c.name(),
                                       [&] { return expected_ecoformer(in, hash.hash(), c.causal); }))
            return;
          const double s = ak::bench::timed_loop(state, [&] { attn(q, k, v, hash.hash(), in.out_view()); });
          set_counters(state, attn.cost(q, k, v, hash.hash()), c.name(), s, "ecoformer");
          const double rows = double(c.n * kHeads);
          state.counters["mul_avoided"] = 2.0 * rows * double(bits) * kDim;
          state.counters["mul_done"] = 2.0 * rows * kAnchors * double(kDim + bits) + 2.0 * rows * kDim;
        })
        ->UseRealTime()
        ->Unit(bm::kMillisecond);
}

void print_table(const ak::bench::CollectingReporter& reporter, const std::vector<Case>& cases) {
  auto find = [&](const std::string& name, const std::string& impl) { return reporter.find(name, impl); };
  std::printf(
      "\nbatch 1, %ld heads, d %ld, m %ld anchors, fp32, 1 thread; speedup = other's time / EcoFormer's (same "
      "run); mul avoided: b16 / b32\n",
      long(kHeads), long(kDim), long(kAnchors));
  std::printf("%-14s %9s %9s %9s %9s %9s %9s %9s %12s\n", "case", "dense ms", "linear ms", "b16 ms", "vs linear",
              "b32 ms", "vs linear", "vs dense", "mul avoided");
  for (const Case& c : cases) {
    const auto *dense = find(c.name(), "dense"), *linear = find(c.name(), "linear");
    const auto *b16 = find(c.name(), "ecoformer-b16"), *b32 = find(c.name(), "ecoformer-b32");
    if (linear == nullptr || b16 == nullptr || b32 == nullptr) {  // times where there are, no ratios
      const std::string name = c.name();
      if (reporter.wrong_runs().contains(name))
        std::printf("%-14s %9s %9s %9s %9s %9s\n", name.c_str(), reporter.milliseconds(name, "dense").c_str(),
                    reporter.milliseconds(name, "linear").c_str(), reporter.milliseconds(name, "ecoformer-b16").c_str(),
                    "", reporter.milliseconds(name, "ecoformer-b32").c_str());
      continue;
    }
    auto avoided = [](const ak::bench::Measured* eco) {
      const double avoided = eco->counters.at("mul_avoided"), done = eco->counters.at("mul_done");
      return 100.0 * avoided / (avoided + done);
    };
    char vs_dense[16] = "-";
    if (dense != nullptr) std::snprintf(vs_dense, sizeof vs_dense, "%.1fx", dense->seconds / b16->seconds);
    std::printf("%-14s %9s %9.2f %9.2f %8.2fx %9.2f %8.2fx %9s %6.0f / %.0f%%\n", c.name().c_str(),
                reporter.milliseconds(c.name(), "dense").c_str(), linear->seconds * 1e3, b16->seconds * 1e3,
                linear->seconds / b16->seconds, b32->seconds * 1e3, linear->seconds / b32->seconds, vs_dense,
                avoided(b16), avoided(b32));
  }
}

// Relative error against exact softmax attention (the dense kernel) at N, calibrated vs random A.
void print_error(Index n) {
  Inputs in(n);
  const auto q = in.view(in.q), k = in.view(in.k), v = in.view(in.v);
  std::printf(
      "\nrelative error (Frobenius) vs exact softmax attention, N=%ld, same inputs; A calibrated on %ld "
      "queries + keys per head (top_k 30) or drawn N(0, 1); b 16\n",
      long(n), long(kCalibrationRows));
  std::printf("%-10s %12s %12s %12s\n", "", "calibrated", "random A", "linear");
  for (bool causal : {false, true}) {
    std::vector<float> exact(in.out.size());
    ak::Attention<ak::Dense>(ak::Dense::Options{.causal = causal})(q, k, v, ak::bshd(exact.data(), 1, n, kHeads, kDim));
    double errors[3];
    for (int which = 0; which < 2; ++which) {
      const ak::tools::EcoFormerCalibration hash = hash_for(in, kBits[0], which == 0);
      ak::Attention<ak::EcoFormer>({.causal = causal})(q, k, v, hash.hash(), in.out_view());
      errors[which] = ak::bench::relative_error(in.out, exact);
    }
    ak::Attention<ak::Linear>(ak::Linear::Options{.causal = causal})(q, k, v, in.out_view());
    errors[2] = ak::bench::relative_error(in.out, exact);
    std::printf("%-10s %12.3f %12.3f %12.3f\n", causal ? "causal" : "non-causal", errors[0], errors[1], errors[2]);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Eigen::setNbThreads(1);  // the calibration runs once per case, outside the timed loops
  std::vector<Case> cases;
  return ak::bench::bench_main(
      argc, argv, ak::OpenMP<>::name(),
      [&](bool full) {
        for (bool causal : {false, true}) {
          for (Index n = 1024; n <= 32768; n *= 2) cases.push_back({n, causal});
        }
        for (const Case& c : cases) register_case(c, full || c.n <= 4096);
      },
      [&](const ak::bench::CollectingReporter& reporter) {
        print_table(reporter, cases);
        print_error(1024);
      });
}
