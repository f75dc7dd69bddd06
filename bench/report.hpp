// Collects Google Benchmark runs so a bench binary can print its side-by-side table after the
// usual console output. Runs are named "<implementation>/<case>". With --benchmark_repetitions
// the table keeps each run's fastest repetition: on a shared machine the minimum is the figure
// least disturbed by other load.
#pragma once

#include <benchmark/benchmark.h>

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

 private:
  std::map<std::string, std::map<std::string, Measured>> results_;
};

}  // namespace attnkit::bench
