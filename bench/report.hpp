// Collects Google Benchmark runs so a bench binary can print its side-by-side table after the
// usual console output. Runs are named "<implementation>/<case>". With --benchmark_repetitions
// the table keeps each run's fastest repetition: on a shared machine the minimum is the figure
// least disturbed by other load.
#pragma once

#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
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
      if (run.error_occurred || run.iterations == 0 || run.run_type == Run::RT_Aggregate) continue;
      std::string name = run.benchmark_name();
      if (const auto suffix = name.find("/real_time"); suffix != std::string::npos) name.erase(suffix);
      const auto slash = name.find('/');
      Measured m;
      m.seconds = run.real_accumulated_time / static_cast<double>(run.iterations);
      for (const auto& [key, counter] : run.counters) m.counters[key] = counter.value;
      auto [it, fresh] = results_[name.substr(slash + 1)].try_emplace(name.substr(0, slash), m);
      if (!fresh && m.seconds < it->second.seconds) it->second = m;
    }
  }
  // case -> implementation -> measurement
  const std::map<std::string, std::map<std::string, Measured>>& results() const { return results_; }

  // The measurement of `implementation` on `name`, or null when it did not run.
  const Measured* find(const std::string& name, const std::string& implementation) const {
    const auto row = results_.find(name);
    if (row == results_.end()) return nullptr;
    const auto it = row->second.find(implementation);
    return it == row->second.end() ? nullptr : &it->second;
  }

 private:
  std::map<std::string, std::map<std::string, Measured>> results_;
};

// The main of a bench binary: takes --full out of the arguments, initialises Google Benchmark,
// calls register_cases(full), runs with a CollectingReporter and passes it to print_table.
template <class Register, class Print>
int bench_main(int argc, char** argv, Register&& register_cases, Print&& print_table) {
  const bool full = take_flag(argc, argv, "--full");
  benchmark::Initialize(&argc, argv);
  register_cases(full);
  CollectingReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  print_table(reporter);
  benchmark::Shutdown();
  return 0;
}

}  // namespace attnkit::bench
