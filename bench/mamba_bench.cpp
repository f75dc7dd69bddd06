// State-space mixing: the Mamba-1 selective scan (d_inner 2048, d_state 16) against ggml's
// ssm_scan figure (~180 µs per token on one core, anchors.md) and STREAM triad measured in the
// same run; Mamba-2 SSD (32 heads x p 64 x n 64) chunked against its recurrent form; dense causal
// attention (32 heads x d 64, the same width) on the same lengths for the crossover. Prints a
// table at the end. Every case first checks its output against its reference twin (report.hpp) on
// channels or heads at the start, middle and end (they are independent: B and C have one group),
// and is WRONG, untimed, when it differs.
//   mamba_bench            L 1024 and 4096 (dense causal up to 4096), 1 and 2 threads; < 2 min
//   mamba_bench --full     L 1024 .. 16384
// Other arguments go to Google Benchmark (e.g. --benchmark_filter=mamba1).
#include <algorithm>
#include <attnkit/attnkit.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <attnkit/reference/mamba.hpp>
#include <attnkit/reference/mamba2.hpp>

#include "baselines.hpp"
#include "openblas_core.hpp"
#include "report.hpp"

namespace ak = attnkit;
using ak::Index;
namespace bm = benchmark;

namespace {

constexpr Index kDInner = 2048, kDState = 16;                // Mamba-1 (Mamba-2.8B's d_inner 5120 / 2.5)
constexpr Index kHeads = 32, kHeadDim = 64, kStateDim = 64;  // Mamba-2 (mamba2-780m-like head layout)
constexpr double kGgmlMicrosPerToken = 180.0;                // ggml ssm_scan, 1 core, anchors.md

std::vector<float> values(std::size_t n, std::uint32_t seed, float lo, float hi) {
  std::vector<float> v(n);
  std::uint32_t state = seed;
  for (float& e : v)
    e = lo + (hi - lo) * static_cast<float>((state = state * 1664525u + 1013904223u) >> 8) / 16777216.0f;
  return v;
}

std::string shape_name(Index len, int threads) { return "L=" + std::to_string(len) + " T" + std::to_string(threads); }

// Expected output (1, len, units, inner), flat, of a scan whose units (axis 2: channels or heads)
// are independent, on `count` units at the start, the middle and the end: twin(range, out) writes
// the units `range` into out, a std::vector<Acc> (len, range.size(), inner).
template <class Twin>
ak::bench::Expected expected_units(Index len, Index units, Index inner, Index count, const char* unit, Twin&& twin) {
  const std::vector<ak::bench::Range> ranges = ak::bench::spread(units, count);
  std::vector<std::size_t> at;
  for (const ak::bench::Range& r : ranges)
    for (Index t = 0; t < len; ++t)
      for (Index e = (t * units + r.begin) * inner; e < (t * units + r.end) * inner; ++e)
        at.push_back(static_cast<std::size_t>(e));
  const std::string what = std::string(unit) + " " + ak::bench::describe(ranges) + " of " + std::to_string(units);
  return ak::bench::expected_from_twin(std::move(at), what, [&](auto& values) {
    using Acc = typename std::decay_t<decltype(values)>::value_type;
    values.clear();
    for (const ak::bench::Range& r : ranges) {
      std::vector<Acc> out(static_cast<std::size_t>(len * r.size() * inner));
      twin(r, out);
      values.insert(values.end(), out.begin(), out.end());
    }
  });
}

// reference::mamba on the channels `r` of inputs (1, len, d_inner); B and C (one group) whole.
template <class Acc>
void mamba_channels(ak::reference::MambaInputs in, ak::bench::Range r, std::vector<Acc>& out) {
  using ak::bench::slice;
  in.u = slice(in.u, 2, r.begin, r.end);
  in.delta = slice(in.delta, 2, r.begin, r.end);
  in.a = slice(in.a, 0, r.begin, r.end);
  if (in.d.data() != nullptr) in.d = slice(in.d, 0, r.begin, r.end);
  if (in.z.data() != nullptr) in.z = slice(in.z, 2, r.begin, r.end);
  if (in.delta_bias.data() != nullptr) in.delta_bias = slice(in.delta_bias, 0, r.begin, r.end);
  ak::reference::mamba<Acc>(in, ak::View<Acc, 3>::contiguous(out.data(), {1, in.u.extent(1), r.size()}), {});
}

void set_common(bm::State& state, const ak::Cost& cost, Index tokens) {
  state.counters["GFLOPS"] = bm::Counter(cost.flops * 1e-9, bm::Counter::kIsIterationInvariantRate);
  state.counters["GBps"] = bm::Counter(cost.bytes * 1e-9, bm::Counter::kIsIterationInvariantRate);
  state.counters["tokens_per_s"] = bm::Counter(double(tokens), bm::Counter::kIsIterationInvariantRate);
}

// Mamba-1 scan with every option a Mamba block uses: softplus(delta + bias), D skip, z gate.
void register_mamba1(Index len, int threads) {
  bm::RegisterBenchmark(
      ("mamba1/" + shape_name(len, threads)).c_str(),
      [len, threads](bm::State& state) {
        const std::size_t tokens = static_cast<std::size_t>(len * kDInner);
        const std::vector<float> u = values(tokens, 1, -1, 1), delta = values(tokens, 2, -4, 0),
                                 z = values(tokens, 3, -2, 2);
        const std::vector<float> b = values(len * kDState, 4, -1, 1), c = values(len * kDState, 5, -1, 1);
        const std::vector<float> d = values(kDInner, 6, -1, 1), bias = values(kDInner, 7, -1, 0);
        std::vector<float> a(kDInner * kDState), out(tokens);
        for (Index i = 0; i < kDInner; ++i)
          for (Index n = 0; n < kDState; ++n) a[i * kDState + n] = -float(n + 1);  // S4D-real init, as Mamba
        const auto tok = [&](const float* p) { return ak::View<const float, 3>::contiguous(p, {1, len, kDInner}); };
        const auto bc = [&](const float* p) { return ak::View<const float, 4>::contiguous(p, {1, len, 1, kDState}); };
        const auto a_view = ak::View<const float, 2>::contiguous(a.data(), {kDInner, kDState});
        const ak::Mamba::Args args{.d = ak::View<const float, 1>::contiguous(d.data(), {kDInner}),
                                   .z = tok(z.data()),
                                   .delta_bias = ak::View<const float, 1>::contiguous(bias.data(), {kDInner})};
        ak::Attention<ak::Mamba, ak::OpenMP<>> scan({.delta_softplus = true}, ak::OpenMP<>{threads});
        const auto out_view = ak::View<float, 3>::contiguous(out.data(), {1, len, kDInner});
        scan(tok(u.data()), tok(delta.data()), a_view, bc(b.data()), bc(c.data()), out_view, args);
        const ak::reference::MambaInputs in{.u = tok(u.data()),
                                            .delta = tok(delta.data()),
                                            .a = a_view,
                                            .b = bc(b.data()),
                                            .c = bc(c.data()),
                                            .d = args.d,
                                            .z = args.z,
                                            .delta_bias = args.delta_bias,
                                            .delta_softplus = true};
        if (!ak::bench::check_output(state, out, "mamba1 L=" + std::to_string(len), [&] {
              return expected_units(len, kDInner, 1, 16, "channels",
                                    [&](auto r, auto& o) { mamba_channels(in, r, o); });
            }))
          return;
        for (auto _ : state) scan(tok(u.data()), tok(delta.data()), a_view, bc(b.data()), bc(c.data()), out_view, args);
        set_common(state, scan.cost(tok(u.data()), tok(delta.data()), a_view, bc(b.data()), bc(c.data()), args), len);
      })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
}

// ggml ssm_scan's algorithm, rewritten here as the same-process yardstick: token by token, channel
// by channel, a scalar softplus and one scalar expf per (channel, state, token), the state
// (d_inner, d_state) updated in place; y = Σ_n state · C (no D, no gate: ggml does those apart).
class ScalarExpScan {
 public:
  explicit ScalarExpScan(Index len) : len_(len), state_(kDInner * kDState) {}
  void operator()(const float* u, const float* delta, const float* a, const float* b, const float* c, float* y) {
    std::fill(state_.begin(), state_.end(), 0.0f);
    for (Index t = 0; t < len_; ++t)
      for (Index i = 0; i < kDInner; ++i) {
        const float dt = delta[t * kDInner + i];
        const float dt_soft = dt <= 20.0f ? std::log1p(std::exp(dt)) : dt;
        const float x_dt = u[t * kDInner + i] * dt_soft;
        float* s = state_.data() + i * kDState;
        float sum = 0.0f;
        for (Index n = 0; n < kDState; ++n) {
          s[n] = s[n] * std::exp(dt_soft * a[i * kDState + n]) + b[t * kDState + n] * x_dt;
          sum += s[n] * c[t * kDState + n];
        }
        y[t * kDInner + i] = sum;
      }
  }

 private:
  Index len_;
  std::vector<float> state_;
};

void register_scalar_exp_scan(Index len) {
  bm::RegisterBenchmark(
      ("scalar-expf/" + shape_name(len, 1)).c_str(),
      [len](bm::State& state) {
        const std::size_t tokens = static_cast<std::size_t>(len * kDInner);
        const std::vector<float> u = values(tokens, 1, -1, 1), delta = values(tokens, 2, -4, 0);
        const std::vector<float> b = values(len * kDState, 4, -1, 1), c = values(len * kDState, 5, -1, 1);
        std::vector<float> a(kDInner * kDState), out(tokens);
        for (Index i = 0; i < kDInner; ++i)
          for (Index n = 0; n < kDState; ++n) a[i * kDState + n] = -float(n + 1);
        ScalarExpScan scan(len);
        scan(u.data(), delta.data(), a.data(), b.data(), c.data(), out.data());
        const auto tok = [&](const float* p) { return ak::View<const float, 3>::contiguous(p, {1, len, kDInner}); };
        const auto bc = [&](const float* p) { return ak::View<const float, 4>::contiguous(p, {1, len, 1, kDState}); };
        const ak::reference::MambaInputs in{.u = tok(u.data()),
                                            .delta = tok(delta.data()),
                                            .a = ak::View<const float, 2>::contiguous(a.data(), {kDInner, kDState}),
                                            .b = bc(b.data()),
                                            .c = bc(c.data()),
                                            .delta_softplus = true};
        if (!ak::bench::check_output(state, out, "scalar-expf L=" + std::to_string(len), [&] {
              return expected_units(len, kDInner, 1, 16, "channels",
                                    [&](auto r, auto& o) { mamba_channels(in, r, o); });
            }))
          return;
        for (auto _ : state) scan(u.data(), delta.data(), a.data(), b.data(), c.data(), out.data());
        state.counters["tokens_per_s"] = bm::Counter(double(len), bm::Counter::kIsIterationInvariantRate);
      })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
}

// Mamba-2 with softplus(dt + bias) and the D skip, in the given form.
void register_mamba2(Index len, int threads, ak::Mamba2::Form form) {
  const std::string impl = form == ak::Mamba2::Form::kChunked ? "mamba2-chunked/" : "mamba2-recurrent/";
  bm::RegisterBenchmark(
      (impl + shape_name(len, threads)).c_str(),
      [len, threads, form](bm::State& state) {
        const std::size_t elems = static_cast<std::size_t>(len * kHeads * kHeadDim);
        const std::vector<float> x = values(elems, 1, -1, 1), dt = values(len * kHeads, 2, -4, 0);
        const std::vector<float> b = values(len * kStateDim, 3, -1, 1), c = values(len * kStateDim, 4, -1, 1);
        const std::vector<float> a = values(kHeads, 5, -8, -1), d = values(kHeads, 6, -1, 1),
                                 bias = values(kHeads, 7, -1, 0);
        std::vector<float> out(elems);
        const auto x_view = ak::View<const float, 4>::contiguous(x.data(), {1, len, kHeads, kHeadDim});
        const auto dt_view = ak::View<const float, 3>::contiguous(dt.data(), {1, len, kHeads});
        const auto a_view = ak::View<const float, 1>::contiguous(a.data(), {kHeads});
        const auto b_view = ak::View<const float, 4>::contiguous(b.data(), {1, len, 1, kStateDim});
        const auto c_view = ak::View<const float, 4>::contiguous(c.data(), {1, len, 1, kStateDim});
        const auto out_view = ak::View<float, 4>::contiguous(out.data(), {1, len, kHeads, kHeadDim});
        const ak::Mamba2::Args args{.d = ak::View<const float, 1>::contiguous(d.data(), {kHeads}),
                                    .dt_bias = ak::View<const float, 1>::contiguous(bias.data(), {kHeads})};
        ak::Attention<ak::Mamba2, ak::OpenMP<>> ssd({.chunk_size = 64, .dt_softplus = true, .form = form},
                                                    ak::OpenMP<>{threads});
        ssd(x_view, dt_view, a_view, b_view, c_view, out_view, args);
        if (!ak::bench::check_output(state, out, "mamba2 L=" + std::to_string(len), [&] {
              return expected_units(len, kHeads, kHeadDim, 2, "heads", [&](auto r, auto& o) {
                using Acc = typename std::decay_t<decltype(o)>::value_type;
                using ak::bench::slice;
                const ak::reference::Mamba2Inputs in{.x = slice(x_view, 2, r.begin, r.end),
                                                     .dt = slice(dt_view, 2, r.begin, r.end),
                                                     .a = slice(a_view, 0, r.begin, r.end),
                                                     .b = b_view,
                                                     .c = c_view,
                                                     .d = slice(args.d, 0, r.begin, r.end),
                                                     .dt_bias = slice(args.dt_bias, 0, r.begin, r.end),
                                                     .dt_softplus = true};
                ak::reference::mamba2<Acc>(in, ak::View<Acc, 4>::contiguous(o.data(), {1, len, r.size(), kHeadDim}),
                                           {});
              });
            }))
          return;
        for (auto _ : state) ssd(x_view, dt_view, a_view, b_view, c_view, out_view, args);
        set_common(state, ssd.cost(x_view, dt_view, a_view, b_view, c_view, args), len);
      })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
}

// Dense causal attention, 32 heads x d 64: the transformer layer Mamba-2's heads stand in for.
void register_dense(Index len, int threads) {
  bm::RegisterBenchmark(
      ("dense-causal/" + shape_name(len, threads)).c_str(),
      [len, threads](bm::State& state) {
        const std::size_t elems = static_cast<std::size_t>(len * kHeads * kHeadDim);
        const std::vector<float> q = values(elems, 1, -1, 1), k = values(elems, 2, -1, 1), v = values(elems, 3, -1, 1);
        std::vector<float> out(elems);
        ak::Attention<ak::Dense, ak::OpenMP<>> attn(ak::Dense::Options{.causal = true}, ak::OpenMP<>{threads});
        const auto qv = ak::bshd(q.data(), 1, len, kHeads, kHeadDim), kv = ak::bshd(k.data(), 1, len, kHeads, kHeadDim),
                   vv = ak::bshd(v.data(), 1, len, kHeads, kHeadDim);
        attn(qv, kv, vv, ak::bshd(out.data(), 1, len, kHeads, kHeadDim));
        if (!ak::bench::check_output(state, out, "dense-causal L=" + std::to_string(len),
                                     [&] { return ak::bench::expected_dense(qv, kv, vv, true); }))
          return;
        for (auto _ : state) attn(qv, kv, vv, ak::bshd(out.data(), 1, len, kHeads, kHeadDim));
        set_common(state, attn.cost(qv, kv, vv), len);
      })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
}

void print_table(const ak::bench::CollectingReporter& reporter) {
  auto find = [&](const std::string& name, const std::string& impl) { return reporter.find(name, impl); };
  // Cases "L=<len> T<threads>" ordered by length, then threads.
  std::vector<std::string> shapes;
  for (const std::string& shape : reporter.cases())
    if (shape.rfind("L=", 0) == 0) shapes.push_back(shape);
  auto key = [](const std::string& shape) {
    return std::pair<long, long>(std::stol(shape.substr(2)), std::stol(shape.substr(shape.rfind('T') + 1)));
  };
  std::sort(shapes.begin(), shapes.end(), [&](const std::string& a, const std::string& b) { return key(a) < key(b); });
  std::printf("\nMamba-1 selective scan, batch 1, d_inner %ld, d_state %ld, softplus + D + z gate, fp32\n",
              long(kDInner), long(kDState));
  std::printf("%-14s %9s %10s %12s %16s %9s %9s %11s\n", "case", "ms", "us/token", "vs ggml 180", "vs scalar expf",
              "GB/s", "STREAM", "of STREAM");
  for (const std::string& shape : shapes) {
    const auto* m = find(shape, "mamba1");
    if (m == nullptr) {
      if (reporter.wrong(shape, "mamba1")) std::printf("%-14s %9s\n", shape.c_str(), "WRONG");
      continue;
    }
    const auto* stream = find("triad " + shape.substr(shape.rfind(' ') + 1), "stream");
    const double us = 1e6 / m->counters.at("tokens_per_s");
    std::printf("%-14s %9.2f %10.2f %11.1fx", shape.c_str(), m->seconds * 1e3, us, kGgmlMicrosPerToken / us);
    if (const auto* scalar = find(shape, "scalar-expf"))
      std::printf(" %6.1fx (%5.1f us)", scalar->seconds / m->seconds, 1e6 / scalar->counters.at("tokens_per_s"));
    else
      std::printf(" %16s", reporter.absent(shape, "scalar-expf"));
    std::printf(" %9.2f", m->counters.at("GBps"));
    if (stream != nullptr)
      std::printf(" %9.2f %10.1f%%", stream->counters.at("GBps"),
                  100.0 * m->counters.at("GBps") / stream->counters.at("GBps"));
    std::printf("\n");
  }
  std::printf("\nMamba-2 SSD (%ld heads x p %ld x n %ld, chunk 64) vs dense causal attention (%ld heads x d %ld)\n",
              long(kHeads), long(kHeadDim), long(kStateDim), long(kHeads), long(kHeadDim));
  std::printf("%-14s %11s %8s %13s %8s %13s %14s\n", "case", "chunked ms", "GFLOP/s", "recurrent ms", "GFLOP/s",
              "chunked gain", "dense causal ms");
  for (const std::string& shape : shapes) {
    const auto* chunked = find(shape, "mamba2-chunked");
    const auto* recurrent = find(shape, "mamba2-recurrent");
    const auto* dense = find(shape, "dense-causal");
    const bool wrong = reporter.wrong(shape, "mamba2-chunked") || reporter.wrong(shape, "mamba2-recurrent");
    if (chunked == nullptr && recurrent == nullptr && !wrong) continue;
    auto cell = [&](const ak::bench::Measured* m, const char* impl) {
      if (m == nullptr)
        std::printf(" %11s %8s", reporter.absent(shape, impl), "-");
      else
        std::printf(" %11.2f %8.1f", m->seconds * 1e3, m->counters.at("GFLOPS"));
    };
    std::printf("%-14s", shape.c_str());
    cell(chunked, "mamba2-chunked");
    cell(recurrent, "mamba2-recurrent");
    if (chunked != nullptr && recurrent != nullptr)
      std::printf(" %12.2fx", recurrent->seconds / chunked->seconds);
    else
      std::printf(" %13s", "-");
    if (dense != nullptr && (chunked != nullptr || recurrent != nullptr))
      std::printf(" %10.2f (%.1fx SSD)", dense->seconds * 1e3,
                  dense->seconds / (chunked != nullptr ? chunked->seconds : recurrent->seconds));
    else if (dense != nullptr)
      std::printf(" %10.2f", dense->seconds * 1e3);
    else
      std::printf(" %10s", reporter.absent(shape, "dense-causal"));
    std::printf("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string openblas = ak::bench::pin_openblas_coretype(argv, "mamba_bench");
  return ak::bench::bench_main(
      argc, argv, ak::OpenMP<>::name() + "\n" + openblas,
      [&](bool full) {
        ak::bench::register_stream_triad(1);
        ak::bench::register_stream_triad(2);
        const std::vector<Index> lengths =
            full ? std::vector<Index>{1024, 2048, 4096, 8192, 16384} : std::vector<Index>{1024, 4096};
        for (int threads : {1, 2})
          for (Index len : lengths) {
            register_mamba1(len, threads);
            if (threads == 1 && len <= 4096) register_scalar_exp_scan(len);
            register_mamba2(len, threads, ak::Mamba2::Form::kChunked);
            register_mamba2(len, threads, ak::Mamba2::Form::kRecurrent);
            if (full || len <= 4096) register_dense(len, threads);
          }
      },
      [&](const ak::bench::CollectingReporter& reporter) { print_table(reporter); });
}
