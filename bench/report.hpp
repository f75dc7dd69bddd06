// What every bench binary shares: the check of a case's first output against its reference twin
// (a wrong kernel gets no time), the machine line, the timed loop, and the reporter that collects
// Google Benchmark runs so a binary can print its side-by-side table after the usual console
// output. Runs are named "<implementation>/<case>". With --benchmark_repetitions the table keeps
// each run's fastest repetition: on a shared machine the minimum is the figure least disturbed by
// other load. A run whose output failed its check is listed as WRONG, with the reason.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <attnkit/attnkit.hpp>
#include <attnkit/reference/dense.hpp>
#include <attnkit/reference/linear.hpp>
#include <attnkit/reference/masked.hpp>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace attnkit::bench {

struct Measured {
  double seconds = 0;  // real time per iteration
  std::map<std::string, double> counters;
};

// Removes `flag` from argv (before benchmark::Initialize sees it); true when it was there.
inline bool take_flag(int& argc, char** argv, const char* flag) {
  bool found = false;
  int kept = 0;
  for (int i = 0; i < argc; ++i) {
    if (std::string(argv[i]) == flag)
      found = true;
    else
      argv[kept++] = argv[i];
  }
  argc = kept;
  return found;
}

// Frobenius norm of (got - exact) relative to that of exact (same sizes).
inline double relative_error(const std::vector<float>& got, const std::vector<float>& exact) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < exact.size(); ++i) {
    diff += (double(got[i]) - exact[i]) * (double(got[i]) - exact[i]);
    norm += double(exact[i]) * exact[i];
  }
  return std::sqrt(diff / norm);
}

// ---- The check of a case's first output (design.md section 5: a wrong kernel never gets a speed)
// Every benchmark runs its kernel once before the timed loop and compares that output with the
// naive reference twin of include/attnkit/reference, accumulating in double, on the same inputs
// (approximations: with the same features, hashes, samples or selected blocks). The bound is the
// tolerance rule of design.md section 4, as in the tests: max |out - ref| <= 2 x the max error of
// the plain float implementation of the same math (the same twin accumulating in float, on the
// same elements) + 1e-6 max(1, max |ref|). The float twin's error grows with the length of its
// sums as a kernel's may, so the bound follows the shape with no constant tuned to a kernel, and
// the floor covers outputs the float twin happens to get exactly. Where the twin of the whole
// output would take too long (quadratic in N), the check covers rows at the start, the middle and
// the end of every head, computed by the twin on those rows alone: every case is checked.

// Indices [begin, end).
struct Range {
  Index begin = 0, end = 0;
  Index size() const { return end - begin; }
};

// `count` indices at the start, the middle and the end of [0, n); all of [0, n) when that is not more.
inline std::vector<Range> spread(Index n, Index count) {
  if (n <= 3 * count) return {{0, n}};
  const Index middle = n / 2 - count / 2;
  return {{0, count}, {middle, middle + count}, {n - count, n}};
}

// "0-15, 2040-2055, 4080-4095"
inline std::string describe(const std::vector<Range>& ranges) {
  std::string text;
  for (const Range& r : ranges) {
    if (!text.empty()) text += ", ";
    text += std::to_string(r.begin);
    if (r.size() > 1) text.append("-").append(std::to_string(r.end - 1));
  }
  return text;
}

// Reference values at flat positions of a case's output and the bound the output must meet there.
struct Expected {
  std::vector<std::size_t> at;
  std::vector<double> value;
  std::vector<double> slack;  // added to the bound per position (infinite: not checked); empty: none
  double bound = 0;
  std::string what;  // the part of the output checked, for the message
};

// The tolerance rule: twin(values) fills `values` (a std::vector<double>, then a std::vector<float>)
// with the reference twin's output at the positions `at`, in that order.
template <class Twin>
Expected expected_from_twin(std::vector<std::size_t> at, std::string what, Twin&& twin) {
  Expected expected;
  expected.at = std::move(at);
  expected.what = std::move(what);
  std::vector<float> naive;
  twin(expected.value);
  twin(naive);
  double float_error = 0, magnitude = 0;
  for (std::size_t e = 0; e < expected.value.size(); ++e) {
    float_error = std::max(float_error, std::abs(double(naive[e]) - expected.value[e]));
    magnitude = std::max(magnitude, std::abs(expected.value[e]));
  }
  expected.bound = 2.0 * float_error + 1e-6 * std::max(1.0, magnitude);
  return expected;
}

// True when got (the case's whole output, flat) is within the bound of `expected` everywhere it
// is checked; the counter err/bound then says how close it came. Otherwise the benchmark is skipped
// with the max error and the bound in its message, and gets no time: return before the timed loop.
inline bool check_output(benchmark::State& state, std::span<const float> got, const Expected& expected) {
  double worst = 0, worst_error = 0, worst_bound = expected.bound;  // worst: the largest error / bound
  std::size_t worst_at = 0;
  for (std::size_t e = 0; e < expected.at.size(); ++e) {
    const double diff = std::abs(double(got[expected.at[e]]) - expected.value[e]);
    const double error = std::isnan(diff) ? INFINITY : diff;
    const double bound = expected.bound + (expected.slack.empty() ? 0.0 : expected.slack[e]);
    if (std::isinf(bound)) continue;  // a position the check leaves out (Expected::slack)
    if (error / bound > worst) {
      worst = error / bound;
      worst_error = error;
      worst_bound = bound;
      worst_at = expected.at[e];
    }
  }
  if (worst <= 1) {
    state.counters["err/bound"] = worst;
    return true;
  }
  char message[512];
  std::snprintf(message, sizeof message,
                "WRONG: max |out - reference| %.3g > bound %.3g (at flat index %zu; checked %s; bound: 2 x float "
                "twin error + 1e-6 max(1, max |ref|))",
                worst_error, worst_bound, worst_at, expected.what.c_str());
  state.SkipWithError(message);
  return false;
}

// The Expected of `key` (a case's name), made on first use and kept for the run: every benchmark of
// the case (attnkit and the baselines) and every call Google Benchmark makes of it compare against it.
template <class Make>
const Expected& expected_once(const std::string& key, Make&& make) {
  static std::map<std::string, Expected> cache;
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, make()).first;
  return it->second;
}

// check_output against the Expected of `key` (a case's name), made by make() on first use.
template <class Make>
bool check_output(benchmark::State& state, std::span<const float> got, const std::string& key, Make&& make) {
  return check_output(state, got, expected_once(key, std::forward<Make>(make)));
}

// Indices [begin, end) of axis `axis` of a view.
template <class T, int Rank>
View<T, Rank> slice(const View<T, Rank>& x, int axis, Index begin, Index end) {
  std::array<Index, Rank> extents = x.extents();
  extents[axis] = end - begin;
  return View<T, Rank>(x.data() + begin * x.stride(axis), extents, x.strides());
}

// Rows [begin, end) of a (batch, seq, head, dim) view.
template <class T>
View<T, 4> seq_rows(const View<T, 4>& x, Index begin, Index end) {
  return slice(x, 1, begin, end);
}

// Expected output (batch 1, q_len, heads, dim), contiguous, of an attention-like case on the row
// ranges `rows` of every head: twin(range, out) writes the reference of the rows `range` into out,
// a View<Acc, 4> (1, range.size(), heads, dim).
template <class RowsTwin>
Expected expected_rows(Index q_len, Index heads, Index dim, const std::vector<Range>& rows, RowsTwin&& twin) {
  std::vector<std::size_t> at;
  for (const Range& r : rows)
    for (Index e = r.begin * heads * dim; e < r.end * heads * dim; ++e) at.push_back(static_cast<std::size_t>(e));
  const std::string what = "rows " + describe(rows) + " of " + std::to_string(q_len) + ", every head";
  return expected_from_twin(std::move(at), what, [&](auto& values) {
    using Acc = typename std::decay_t<decltype(values)>::value_type;
    values.clear();
    for (const Range& r : rows) {
      std::vector<Acc> out(static_cast<std::size_t>(r.size() * heads * dim));
      twin(r, View<Acc, 4>::contiguous(out.data(), {1, r.size(), heads, dim}));
      values.insert(values.end(), out.begin(), out.end());
    }
  });
}

// A batch-1 attention-like case on 16 rows at the start, the middle and the end, where a row sees
// only the keys it attends to: reference(q_rows, k_rows, v_rows, out) runs the twin on a row block
// with the keys [0, n) it sees (causal: up to its last row's bottom-right aligned diagonal), which
// gives the same rows as the whole problem.
template <class Reference>
Expected expected_seen_keys(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                            bool causal, Reference&& reference) {
  const Index q_len = q.extent(1), kv_len = k.extent(1);
  return expected_rows(q_len, std::max(q.extent(2), k.extent(2)), v.extent(3), spread(q_len, 16),
                       [&](Range r, auto out) {
                         const Index keys = causal ? std::clamp<Index>(r.end + kv_len - q_len, 0, kv_len) : kv_len;
                         reference(seq_rows(q, r.begin, r.end), seq_rows(k, 0, keys), seq_rows(v, 0, keys), out);
                       });
}

// Exact dense attention (reference::dense).
inline Expected expected_dense(const View<const float, 4>& q, const View<const float, 4>& k,
                               const View<const float, 4>& v, bool causal) {
  return expected_seen_keys(q, k, v, causal, [&](const auto& q_rows, const auto& k_rows, const auto& v_rows, auto out) {
    using Acc = typename decltype(out)::element_type;
    reference::dense<Acc>(q_rows, k_rows, v_rows, out, View<Acc, 3>{}, reference::DenseOptions{.causal = causal});
  });
}

// Linear attention (reference::linear, elu + 1 features).
inline Expected expected_linear(const View<const float, 4>& q, const View<const float, 4>& k,
                                const View<const float, 4>& v, bool causal) {
  return expected_seen_keys(q, k, v, causal, [&](const auto& q_rows, const auto& k_rows, const auto& v_rows, auto out) {
    using Acc = typename decltype(out)::element_type;
    reference::linear<Acc>(q_rows, k_rows, v_rows, out, reference::LinearOptions{.causal = causal});
  });
}

// Attention under an element mask (reference::masked; allowed(batch, out_head, i, j)) of a batch-1
// case on 16 rows at the start, the middle and the end.
template <class Allowed>
Expected expected_masked(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                         Allowed&& allowed) {
  return expected_rows(
      q.extent(1), std::max(q.extent(2), k.extent(2)), v.extent(3), spread(q.extent(1), 16), [&](Range r, auto out) {
        using Acc = typename decltype(out)::element_type;
        reference::masked<Acc>(seq_rows(q, r.begin, r.end), k, v, out,
                               [&](Index b, Index o, Index i, Index j) { return allowed(b, o, i + r.begin, j); });
      });
}

// The CPU model (/proc/cpuinfo "model name") and the attnkit variant a bench runs, printed first.
inline void print_machine(const std::string& variant) {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line, model = "unknown";
  while (std::getline(cpuinfo, line))
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  std::printf("CPU: %s\nattnkit: %s\n", model.c_str(), variant.c_str());
  std::fflush(stdout);
}

// Runs call() in the benchmark loop and returns its real time per call, so a later benchmark of
// the same case can compare against it.
template <class Call>
double timed_loop(benchmark::State& state, Call&& call) {
  const auto start = std::chrono::steady_clock::now();
  std::int64_t runs = 0;
  for (auto _ : state) {
    call();
    ++runs;
  }
  const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
  return runs > 0 ? elapsed.count() / static_cast<double>(runs) : 0.0;
}

class CollectingReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    benchmark::ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      if (run.run_type == Run::RT_Aggregate) continue;
      std::string name = run.benchmark_name();
      if (const auto suffix = name.find("/real_time"); suffix != std::string::npos) name.erase(suffix);
      const auto slash = name.find('/');
      const std::string shape = name.substr(slash + 1), implementation = name.substr(0, slash);
      if (run.error_occurred) {
        wrong_[shape][implementation] = run.error_message;
        continue;
      }
      if (run.iterations == 0) continue;
      Measured m;
      m.seconds = run.real_accumulated_time / static_cast<double>(run.iterations);
      for (const auto& [key, counter] : run.counters) m.counters[key] = counter.value;
      auto [it, fresh] = results_[shape].try_emplace(implementation, m);
      if (!fresh && m.seconds < it->second.seconds) it->second = m;
    }
  }
  // case -> implementation -> measurement
  const std::map<std::string, std::map<std::string, Measured>>& results() const { return results_; }

  // The measurement of `implementation` on `name`, or null when it did not run or was WRONG.
  const Measured* find(const std::string& name, const std::string& implementation) const {
    const auto row = results_.find(name);
    if (row == results_.end()) return nullptr;
    const auto it = row->second.find(implementation);
    return it == row->second.end() ? nullptr : &it->second;
  }

  // Every case that ran, timed or WRONG, in name order.
  std::vector<std::string> cases() const {
    std::vector<std::string> names;
    for (const auto& entry : results_) names.push_back(entry.first);
    for (const auto& entry : wrong_)
      if (!results_.contains(entry.first)) names.push_back(entry.first);
    std::sort(names.begin(), names.end());
    return names;
  }

  // Whether `implementation` on `name` failed its output check (and so has no time).
  bool wrong(const std::string& name, const std::string& implementation) const {
    const auto row = wrong_.find(name);
    return row != wrong_.end() && row->second.contains(implementation);
  }
  // What a table shows in place of a figure of `implementation` on `name` that has none.
  const char* absent(const std::string& name, const std::string& implementation) const {
    return wrong(name, implementation) ? "WRONG" : "-";
  }
  // The time of `implementation` on `name` in ms, or what stands in its place.
  std::string milliseconds(const std::string& name, const std::string& implementation) const {
    const Measured* m = find(name, implementation);
    if (m == nullptr) return absent(name, implementation);
    char text[32];
    std::snprintf(text, sizeof text, "%.2f", m->seconds * 1e3);
    return text;
  }
  // The cases that failed their check, case -> implementation -> message.
  const std::map<std::string, std::map<std::string, std::string>>& wrong_runs() const { return wrong_; }

  // The list of WRONG runs with their messages, after a table.
  void print_wrong() const {
    if (wrong_.empty()) return;
    std::printf("\nWRONG, not timed (first output differs from the reference):\n");
    for (const auto& [shape, impls] : wrong_)
      for (const auto& [impl, message] : impls)
        std::printf("  %s/%s: %s\n", impl.c_str(), shape.c_str(), message.c_str());
  }

 private:
  std::map<std::string, std::map<std::string, Measured>> results_;
  std::map<std::string, std::map<std::string, std::string>> wrong_;
};

// The main of a bench binary: takes --full out of the arguments, initialises Google Benchmark,
// prints the machine and `variant` (with any further lines it holds), calls register_cases(full), runs with a
// CollectingReporter, passes it to print_table and lists the WRONG runs.
template <class Register, class Print>
int bench_main(int argc, char** argv, const std::string& variant, Register&& register_cases, Print&& print_table) {
  const bool full = take_flag(argc, argv, "--full");
  benchmark::Initialize(&argc, argv);
  print_machine(variant);
  register_cases(full);
  CollectingReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  print_table(reporter);
  reporter.print_wrong();
  benchmark::Shutdown();
  return 0;
}

}  // namespace attnkit::bench
