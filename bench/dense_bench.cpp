// Dense attention against unfused Eigen and OpenBLAS attention on the same shapes and threads, plus
// the sgemm rate and STREAM bandwidth as yardsticks; prints a side-by-side table at the end. Every
// case, baselines included, first checks its output against reference::dense (report.hpp) and is
// WRONG, untimed, when it differs. Prints the CPU, the attnkit variant and OpenBLAS's core first
// (pinning OPENBLAS_CORETYPE where OpenBLAS 0.3.21 would fall back to Prescott: openblas_core.hpp).
//   dense_bench            default shapes (the README's main job)
//   dense_bench --full     N 512..8192, d 64 and 128, causal and not, 1 and 2 threads
// Both run the storage rows: decode and prefill with K / V (and Q) in bfloat16 and float16, timed
// against the fp32 rows of the same run, with the error against fp32-exact attention.
// Other arguments go to Google Benchmark (e.g. --benchmark_filter=attnkit).
#include <attnkit/attnkit.hpp>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>

#include "baselines.hpp"
#include "openblas_core.hpp"
#include "report.hpp"

namespace ak = attnkit;
using ak::Index;
namespace bm = benchmark;

namespace {

struct Inputs {
  Index q_len, kv_len, q_heads, kv_heads, dim;
  std::vector<float> q, k, v, out;
  Inputs(Index q_len_, Index kv_len_, Index q_heads_, Index kv_heads_, Index dim_)
      : q_len(q_len_),
        kv_len(kv_len_),
        q_heads(q_heads_),
        kv_heads(kv_heads_),
        dim(dim_),
        q(q_len * q_heads * dim),
        k(kv_len * kv_heads * dim),
        v(kv_len * kv_heads * dim),
        out(q_len * q_heads * dim) {
    std::uint32_t state = 12345;
    auto next = [&] { return static_cast<float>((state = state * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f; };
    for (auto* x : {&q, &k, &v})
      for (float& e : *x) e = 2.0f * next();
  }
  ak::View<const float, 4> q_view() const { return ak::bshd(q.data(), 1, q_len, q_heads, dim); }
  ak::View<const float, 4> k_view() const { return ak::bshd(k.data(), 1, kv_len, kv_heads, dim); }
  ak::View<const float, 4> v_view() const { return ak::bshd(v.data(), 1, kv_len, kv_heads, dim); }
  ak::View<float, 4> out_view() { return ak::bshd(out.data(), 1, q_len, q_heads, dim); }

  // Whether `out` (the first output of the case `name`) is exact dense attention; see report.hpp.
  // The reference is made once per shape, whatever the threads. extra_bound widens the bound (a
  // path's documented extra error, e.g. AMX's bfloat16 P).
  bool check(bm::State& state, const std::string& name, bool causal, double extra_bound = 0) const {
    ak::bench::Expected expected = ak::bench::expected_once(name.substr(0, name.rfind(" T")), [&] {
      return ak::bench::expected_dense(q_view(), k_view(), v_view(), causal);
    });
    expected.bound += extra_bound;
    return ak::bench::check_output(state, out, expected);
  }
};

struct Prefill {
  Index n, dim;
  bool causal;
  int threads;
  Index q_heads = 8, kv_heads = 8;
  std::string name() const {
    std::ostringstream name;
    name << "prefill N=" << n << " d=" << dim;
    if (q_heads != 8 || kv_heads != 8) name << " " << q_heads << "/" << kv_heads;
    name << (causal ? " causal" : "") << " T" << threads;
    return name.str();
  }
};

struct Decode {
  Index kv_len, q_heads, kv_heads, dim;
  int threads;
  ak::Storage storage = ak::Storage::f32;  // of K and V (and Q)
  std::string name() const {
    return "decode 1x" + std::to_string(kv_len) + " " + std::to_string(q_heads) + "/" + std::to_string(kv_heads) +
           " d=" + std::to_string(dim) + storage_suffix(storage) + " T" + std::to_string(threads);
  }
  static std::string storage_suffix(ak::Storage s) {
    switch (s) {
      case ak::Storage::bf16:
        return " bf16";
      case ak::Storage::f16:
        return " fp16";
      case ak::Storage::i8:
        return " int8";
      case ak::Storage::f32:
        break;
    }
    return "";
  }
};

// Inputs whose K and V (and Q, for a storage type T) are kept as T, or as int8 with a scale per
// row (T = int8_t; Q stays float): the float copies the check reads hold the rounded
// (dequantized) values, and exact_out is fp32 attention on the values before rounding.
template <class T>
struct StoredInputs : Inputs {
  static constexpr bool kInt8 = std::is_same_v<T, std::int8_t>;
  std::vector<T> q_stored, k_stored, v_stored;
  std::vector<float> k_scales, v_scales;  // int8 only
  std::vector<float> exact_out;
  StoredInputs(Index q_len_, Index kv_len_, Index q_heads_, Index kv_heads_, Index dim_, bool causal)
      : Inputs(q_len_, kv_len_, q_heads_, kv_heads_, dim_) {
    ak::Attention<ak::Dense, ak::OpenMP<>>(ak::Dense::Options{.causal = causal})(q_view(), k_view(), v_view(),
                                                                                 out_view());
    exact_out = out;
    if constexpr (kInt8) {
      for (auto [from, to, scales] : {std::tuple{&k, &k_stored, &k_scales}, std::tuple{&v, &v_stored, &v_scales}}) {
        to->resize(from->size());
        scales->resize(static_cast<std::size_t>(kv_len * kv_heads));
        const auto values = ak::bshd(to->data(), 1, kv_len, kv_heads, dim);
        const auto row_scales = ak::thd(scales->data(), 1, kv_len, kv_heads);
        ak::quantize_kv(ak::bshd(from->data(), 1, kv_len, kv_heads, dim), values, row_scales);
        for (Index j = 0; j < kv_len; ++j)
          for (Index h = 0; h < kv_heads; ++h)
            for (Index d = 0; d < dim; ++d)
              (*from)[(j * kv_heads + h) * dim + d] = ak::dequantize(row_scales(0, j, h), values(0, j, h, d));
      }
    } else {
      for (auto [from, to] : {std::pair{&q, &q_stored}, std::pair{&k, &k_stored}, std::pair{&v, &v_stored}}) {
        to->resize(from->size());
        for (std::size_t i = 0; i < from->size(); ++i) {
          (*to)[i] = T((*from)[i]);
          (*from)[i] = ak::to_float((*to)[i]);
        }
      }
    }
  }
  ak::View<const T, 4> q_t() const { return ak::bshd(q_stored.data(), 1, q_len, q_heads, dim); }
  // K and V as the kernel takes them: views of T, or QuantizedView.
  auto k_t() const { return stored(k_stored, k_scales); }
  auto v_t() const { return stored(v_stored, v_scales); }
  auto stored(const std::vector<T>& values, const std::vector<float>& scales) const {
    const ak::View<const T, 4> view = ak::bshd(values.data(), 1, kv_len, kv_heads, dim);
    if constexpr (kInt8)
      return ak::QuantizedView{view, ak::thd(scales.data(), 1, kv_len, kv_heads)};
    else
      return view;
  }
  double error_vs_fp32() const {
    double worst = 0;
    for (std::size_t i = 0; i < out.size(); ++i) worst = std::max(worst, std::abs(double(out[i]) - exact_out[i]));
    return worst;
  }
};

constexpr Index kHeads = 8;

void set_counters(bm::State& state, const ak::Cost& cost) {
  state.counters["FLOPs"] = cost.flops;
  state.counters["bytes"] = cost.bytes;
  state.counters["GFLOPS"] = bm::Counter(cost.flops * 1e-9, bm::Counter::kIsIterationInvariantRate);
}

template <class Unfused>
void register_baseline(const std::string& name, const Prefill& p, const ak::bench::UnfusedShape& shape) {
  bm::RegisterBenchmark(name.c_str(),
                        [p, shape](bm::State& state) {
                          Inputs in(p.n, p.n, kHeads, kHeads, p.dim);
                          const auto q = in.q_view();  // cost counted as for attnkit
                          const double flops =
                              ak::Attention<ak::Dense>(ak::Dense::Options{.causal = p.causal}).cost(q, q, q).flops;
                          Unfused run(shape, p.threads);
                          run(in.q.data(), in.k.data(), in.v.data(), in.out.data());
                          if (!in.check(state, p.name(), p.causal)) return;
                          for (auto _ : state) run(in.q.data(), in.k.data(), in.v.data(), in.out.data());
                          state.counters["GFLOPS"] = bm::Counter(flops * 1e-9, bm::Counter::kIsIterationInvariantRate);
                        })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
}

void register_prefill(const Prefill& p, bool baselines) {
  bm::RegisterBenchmark(("attnkit/" + p.name()).c_str(),
                        [p](bm::State& state) {
                          Inputs in(p.n, p.n, p.q_heads, p.kv_heads, p.dim);
                          ak::Attention<ak::Dense, ak::OpenMP<>> attn(ak::Dense::Options{.causal = p.causal},
                                                                      ak::OpenMP<>{p.threads});
                          const auto q = in.q_view(), k = in.k_view(), v = in.v_view();
                          const auto out = in.out_view();
                          std::vector<std::byte> workspace_owner(attn.workspace_bytes(q, k, v) + 64);
                          void* aligned = workspace_owner.data();
                          std::size_t space = workspace_owner.size();
                          std::align(64, space - 64, aligned, space);
                          const ak::Workspace workspace{aligned, space};
                          attn(q, k, v, out, {.workspace = workspace});
                          if (!in.check(state, p.name(), p.causal)) return;
                          for (auto _ : state) attn(q, k, v, out, {.workspace = workspace});
                          set_counters(state, attn.cost(q, k, v));
                        })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
  if (!baselines) return;
  const ak::bench::UnfusedShape shape{kHeads, p.n, p.n, p.dim, p.causal};
  register_baseline<ak::bench::EigenUnfused>("eigen/" + p.name(), p, shape);
  register_baseline<ak::bench::BlasUnfused>("openblas/" + p.name(), p, shape);
}

void register_decode(const Decode& d) {
  bm::RegisterBenchmark(("attnkit/" + d.name()).c_str(),
                        [d](bm::State& state) {
                          Inputs in(1, d.kv_len, d.q_heads, d.kv_heads, d.dim);
                          ak::Attention<ak::Dense, ak::OpenMP<>> attn(ak::Dense::Options{.causal = true},
                                                                      ak::OpenMP<>{d.threads});
                          const auto q = in.q_view(), k = in.k_view(), v = in.v_view();
                          const auto out = in.out_view();
                          attn(q, k, v, out);
                          if (!in.check(state, d.name(), true)) return;
                          for (auto _ : state) attn(q, k, v, out);
                          const ak::Cost cost = attn.cost(q, k, v);
                          set_counters(state, cost);
                          state.counters["kv_bytes"] = 2.0 * sizeof(float) * d.kv_len * d.kv_heads * d.dim;
                        })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
}

// Decode or prefill with K and V of storage type T, and Q of T (prefill) or float (decode: an
// engine's new query comes from a float projection).
template <class T>
void register_stored(const std::string& name, Index q_len, Index kv_len, Index q_heads, Index kv_heads, Index dim,
                     bool causal, int threads, ak::Dense::Bf16Products products = ak::Dense::Bf16Products::convert) {
  bm::RegisterBenchmark(("attnkit/" + name).c_str(),
                        [=](bm::State& state) {
                          StoredInputs<T> in(q_len, kv_len, q_heads, kv_heads, dim, causal);
                          const ak::Attention<ak::Dense, ak::OpenMP<>> attn(
                              ak::Dense::Options{.causal = causal, .bf16_products = products}, ak::OpenMP<>{threads});
                          const auto k = in.k_t(), v = in.v_t();
                          const auto out = in.out_view();
                          auto call = [&] {
                            if constexpr (!StoredInputs<T>::kInt8) {
                              if (q_len > 1) return attn(in.q_t(), k, v, out);
                            }
                            attn(in.q_view(), k, v, out);
                          };
                          call();
                          // AMX tiles round P to bfloat16: up to 2^-8 max |v| more (README, Conventions).
                          double max_v = 0;
                          for (const float x : in.v) max_v = std::max(max_v, std::abs(double(x)));
                          const bool rounded_p = products == ak::Dense::Bf16Products::amx_tiles;
                          if (!in.check(state, name, causal, rounded_p ? std::ldexp(max_v, -8) : 0.0)) return;
                          for (auto _ : state) call();
                          const ak::Cost cost = attn.cost(in.q_view(), k, v);
                          set_counters(state, cost);
                          const double row_bytes =  // a K or V row, with its scale for int8
                              double(sizeof(T) * dim) + (StoredInputs<T>::kInt8 ? sizeof(float) : 0);
                          state.counters["kv_bytes"] = 2.0 * row_bytes * kv_len * kv_heads;
                          state.counters["error"] = in.error_vs_fp32();
                        })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
}

void register_storage_rows() {
  const ak::Storage types[] = {ak::Storage::bf16, ak::Storage::f16, ak::Storage::i8};
  for (int threads : {1, 2})
    for (ak::Storage s : types) {
      const Decode d{32768, 32, 8, 128, threads, s};
      ak::with_kv_type(s, [&](auto zero) {
        register_stored<decltype(zero)>(d.name(), 1, d.kv_len, d.q_heads, d.kv_heads, d.dim, true, threads);
      });
    }
  for (ak::Storage s : types) {
    const std::string name = "prefill N=4096 d=128" + Decode::storage_suffix(s) + " T1";
    ak::with_kv_type(s, [&](auto zero) { register_stored<decltype(zero)>(name, 4096, 4096, 8, 8, 128, false, 1); });
  }
  // bfloat16 Q and K as pairs (vdpbf16ps) where the CPU has AVX512-BF16; converted elsewhere.
  if (ak::cpu_features().avx512bf16)
    register_stored<ak::bfloat16>("prefill N=4096 d=128 bf16 pairs T1", 4096, 4096, 8, 8, 128, false, 1,
                                  ak::Dense::Bf16Products::pairs);
  // Q . K^T and P . V on AMX-BF16 tiles where the CPU has them.
  if (ak::cpu_features().amx_bf16)
    register_stored<ak::bfloat16>("prefill N=4096 d=128 bf16 amx T1", 4096, 4096, 8, 8, 128, false, 1,
                                  ak::Dense::Bf16Products::amx_tiles);
}

void print_storage_table(const ak::bench::CollectingReporter& reporter) {
  std::printf(
      "\nstorage types (time ratio = this row / the fp32 row of the same shape; stream: the triad bandwidth; error: "
      "max |out - fp32 attention on the unrounded values|)\n");
  std::printf("%-38s %10s %10s %9s %12s %12s\n", "case", "attnkit ms", "vs fp32", "K+V GB/s", "vs stream", "error");
  for (const std::string& shape : reporter.cases()) {
    std::size_t suffix = std::string::npos;
    for (const char* type : {" bf16", " fp16", " int8"}) suffix = std::min(suffix, shape.find(type));
    if (suffix == std::string::npos) continue;
    const auto* ours = reporter.find(shape, "attnkit");
    if (ours == nullptr) {
      std::printf("%-38s %10s\n", shape.c_str(), reporter.absent(shape, "attnkit"));
      continue;
    }
    const std::string fp32_shape = shape.substr(0, suffix) + shape.substr(shape.rfind(' '));  // " T<threads>" kept
    const auto* fp32 = reporter.find(fp32_shape, "attnkit");
    std::printf("%-38s %10.2f", shape.c_str(), ours->seconds * 1e3);
    if (fp32 != nullptr)
      std::printf(" %9.2fx", ours->seconds / fp32->seconds);
    else
      std::printf(" %10s", "-");
    const double kv_bytes = ours->counters.at("kv_bytes");
    std::printf(" %9.1f", kv_bytes / ours->seconds * 1e-9);
    const auto* stream = reporter.find("triad " + shape.substr(shape.rfind(' ') + 1), "stream");
    if (stream != nullptr && shape.rfind("decode", 0) == 0)
      std::printf(" %11.2fx", kv_bytes / ours->seconds * 1e-9 / stream->counters.at("GBps"));
    else
      std::printf(" %12s", "-");
    std::printf(" %12.2e\n", ours->counters.at("error"));
  }
}

void register_yardsticks(const std::vector<int>& threads) {
  bm::RegisterBenchmark("openblas/sgemm 2048^3 T1",
                        [](bm::State& state) {
                          ak::bench::Sgemm gemm(2048);
                          gemm();
                          if (!ak::bench::check_output(state, gemm.c(), "sgemm", [&] {
                                return ak::bench::expected_constant(2048 * 2048, 4 * 2048, gemm.expected_c());
                              }))
                            return;
                          for (auto _ : state) gemm();
                          state.counters["GFLOPS"] =
                              bm::Counter(gemm.flops() * 1e-9, bm::Counter::kIsIterationInvariantRate);
                        })
      ->UseRealTime()
      ->Unit(bm::kMillisecond);
  for (int t : threads) ak::bench::register_stream_triad(t);
}

void print_table(const ak::bench::CollectingReporter& reporter) {
  auto find = [&](const std::string& name, const std::string& impl) { return reporter.find(name, impl); };
  double sgemm = 0;
  if (auto* m = find("sgemm 2048^3 T1", "openblas")) sgemm = m->counters.at("GFLOPS");
  std::printf(
      "\nattnkit dense, batch 1, fp32 (GFLOP/s = cost().flops / time; ratios = baseline time / attnkit time; "
      "WRONG: output differs from the reference, not timed)\n");
  if (sgemm > 0) std::printf("OpenBLAS sgemm 2048^3, 1 thread: %.1f GFLOP/s\n", sgemm);
  std::printf("%-34s %10s %9s %10s %9s %10s %9s %9s\n", "case", "attnkit ms", "GFLOP/s", "eigen ms", "vs eigen",
              "blas ms", "vs blas", "vs sgemm");
  for (const std::string& shape : reporter.cases()) {
    if (shape.rfind("prefill", 0) != 0) continue;
    const auto* ours = find(shape, "attnkit");
    if (ours != nullptr)
      std::printf("%-34s %10.2f %9.1f", shape.c_str(), ours->seconds * 1e3, ours->counters.at("GFLOPS"));
    else
      std::printf("%-34s %10s %9s", shape.c_str(), reporter.absent(shape, "attnkit"), "-");
    for (const char* base : {"eigen", "openblas"}) {
      const auto* b = find(shape, base);
      if (b != nullptr && ours != nullptr)
        std::printf(" %10.2f %8.2fx", b->seconds * 1e3, b->seconds / ours->seconds);
      else if (b != nullptr)
        std::printf(" %10.2f %9s", b->seconds * 1e3, "-");
      else
        std::printf(" %10s %9s", reporter.absent(shape, base), "-");
    }
    if (ours != nullptr && sgemm > 0 && shape.find(" T1") != std::string::npos)
      std::printf(" %8.2fx", ours->counters.at("GFLOPS") / sgemm);
    std::printf("\n");
  }
  std::printf("\n%-34s %10s %9s %12s %14s\n", "decode case", "attnkit ms", "K+V GB/s", "stream GB/s", "time / stream");
  for (const std::string& shape : reporter.cases()) {
    if (shape.rfind("decode", 0) != 0) continue;
    const auto* ours = find(shape, "attnkit");
    const std::string threads = shape.substr(shape.rfind(' ') + 1);
    const auto* stream = find("triad " + threads, "stream");
    if (ours == nullptr) {
      std::printf("%-34s %10s\n", shape.c_str(), reporter.absent(shape, "attnkit"));
      continue;
    }
    const double kv_bytes = ours->counters.at("kv_bytes");
    std::printf("%-34s %10.2f %9.1f", shape.c_str(), ours->seconds * 1e3, kv_bytes / ours->seconds * 1e-9);
    if (stream != nullptr) {
      const double bandwidth = stream->counters.at("GBps");
      std::printf(" %12.1f %13.2fx", bandwidth, ours->seconds / (kv_bytes / (bandwidth * 1e9)));
    }
    std::printf("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string openblas = ak::bench::pin_openblas_coretype(argv, "dense_bench");
  return ak::bench::bench_main(
      argc, argv, ak::Attention<ak::Dense, ak::OpenMP<>>{}.name() + "\n" + openblas,
      [&](bool full) {
        register_yardsticks({1, 2});
        if (full) {
          for (int threads : {1, 2})
            for (Index dim : {64, 128})
              for (Index n : {512, 1024, 2048, 4096, 8192})
                for (bool causal : {false, true}) register_prefill({n, dim, causal, threads}, true);
        } else {
          register_prefill({4096, 128, false, 1}, true);
          register_prefill({4096, 128, true, 1}, true);
          register_prefill({4096, 64, false, 1}, true);
          register_prefill({2048, 128, false, 1}, true);
          register_prefill({4096, 128, false, 2}, true);
          register_prefill({4096, 128, true, 2}, false);
          register_prefill({2048, 128, false, 1, 32, 8}, false);  // GQA: K/V packed once per kv head
        }
        for (int threads : {1, 2}) {
          register_decode({4096, 32, 8, 128, threads});
          register_decode({32768, 32, 8, 128, threads});
        }
        register_storage_rows();
      },
      [&](const ak::bench::CollectingReporter& reporter) {
        print_table(reporter);
        print_storage_table(reporter);
      });
}
