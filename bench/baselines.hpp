// What attnkit is measured against in the same process: unfused attention (Q·Kᵀ GEMM, row softmax,
// P·V GEMM per head, heads split over OpenMP threads) written with Eigen and with OpenBLAS, the
// OpenBLAS sgemm rate, and STREAM triad bandwidth. Batch 1, MHA, BSHD contiguous inputs. The
// yardsticks' outputs are constants (sgemm of constant matrices, a triad of constant arrays), checked
// like every case.
#pragma once

#include <benchmark/benchmark.h>
#include <cblas.h>

#include <Eigen/Core>
#include <attnkit/attnkit.hpp>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "report.hpp"

namespace attnkit::bench {

// An output of n elements that should be `value` everywhere, checked on `count` elements at its
// start, middle and end.
inline Expected expected_constant(Index n, Index count, double value) {
  std::vector<std::size_t> at;
  for (const Range& r : spread(n, count))
    for (Index e = r.begin; e < r.end; ++e) at.push_back(static_cast<std::size_t>(e));
  const std::string what = "elements " + describe(spread(n, count)) + " of " + std::to_string(n);
  const std::size_t size = at.size();
  return expected_from_twin(std::move(at), what, [&](auto& values) { values.assign(size, value); });
}

struct UnfusedShape {
  Index heads = 8, q_len = 0, kv_len = 0, head_dim = 0;
  bool causal = false;
};

// Bottom-right aligned causal mask of a (q_len, kv_len) score matrix, in place.
inline void mask_causal(float* scores, Index q_len, Index kv_len) {
  for (Index i = 0; i < q_len; ++i)
    for (Index j = std::max<Index>(0, i + kv_len - q_len + 1); j < kv_len; ++j)
      scores[i * kv_len + j] = -std::numeric_limits<float>::infinity();
}

// Row softmax of a (rows, cols) matrix in place with attnkit's vectorized exp.
inline void softmax_rows(float* scores, Index rows, Index cols) {
  using V = xsimd::batch<float>;
  constexpr Index W = V::size;
  for (Index i = 0; i < rows; ++i) {
    float* row = scores + i * cols;
    float max = -std::numeric_limits<float>::infinity();
    for (Index j = 0; j < cols; ++j) max = std::max(max, row[j]);
    float sum = 0;
    Index j = 0;
    V sums(0.0f);
    for (; j + W <= cols; j += W) {
      const V p = exp_approx(V::load_unaligned(row + j) - V(max));
      p.store_unaligned(row + j);
      sums += p;
    }
    for (; j < cols; ++j) sum += row[j] = std::exp(row[j] - max);
    const float inv = 1.0f / (sum + xsimd::hadd(sums));
    for (j = 0; j < cols; ++j) row[j] *= inv;
  }
}

// Unfused attention with Eigen: S = scale · Q_h K_hᵀ, mask, softmax, O_h = P V_h.
class EigenUnfused {
 public:
  EigenUnfused(UnfusedShape shape, int threads) : shape_(shape), threads_(threads), scores_(threads) {
    Eigen::setNbThreads(1);
    for (auto& s : scores_) s.resize(shape.q_len, shape.kv_len);
  }
  void operator()(const float* q, const float* k, const float* v, float* out) {
    using Rows = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using Stride = Eigen::OuterStride<>;
    const UnfusedShape s = shape_;
    const Index ld = s.heads * s.head_dim;
    const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
#pragma omp parallel for num_threads(threads_) schedule(static)
    for (Index h = 0; h < s.heads; ++h) {
      Rows& scores = scores_[omp_get_thread_num()];
      Eigen::Map<const Rows, 0, Stride> qh(q + h * s.head_dim, s.q_len, s.head_dim, Stride(ld));
      Eigen::Map<const Rows, 0, Stride> kh(k + h * s.head_dim, s.kv_len, s.head_dim, Stride(ld));
      Eigen::Map<const Rows, 0, Stride> vh(v + h * s.head_dim, s.kv_len, s.head_dim, Stride(ld));
      Eigen::Map<Rows, 0, Stride> oh(out + h * s.head_dim, s.q_len, s.head_dim, Stride(ld));
      scores.noalias() = (qh * scale) * kh.transpose();
      if (s.causal) mask_causal(scores.data(), s.q_len, s.kv_len);
      const auto max = scores.rowwise().maxCoeff();
      scores = (scores.colwise() - max).array().exp().matrix();
      const auto inv = scores.rowwise().sum().cwiseInverse();
      oh.noalias() = inv.asDiagonal() * (scores * vh);
    }
  }

 private:
  UnfusedShape shape_;
  int threads_;
  std::vector<Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> scores_;
};

// Unfused attention with OpenBLAS sgemm (one BLAS thread per OpenMP thread) and a vectorized
// softmax.
class BlasUnfused {
 public:
  BlasUnfused(UnfusedShape shape, int threads)
      : shape_(shape), threads_(threads), scores_(threads, std::vector<float>(shape.q_len * shape.kv_len)) {
    openblas_set_num_threads(1);
  }
  void operator()(const float* q, const float* k, const float* v, float* out) {
    const UnfusedShape s = shape_;
    const int ld = static_cast<int>(s.heads * s.head_dim);
    const int n = static_cast<int>(s.q_len), m = static_cast<int>(s.kv_len), d = static_cast<int>(s.head_dim);
    const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
#pragma omp parallel for num_threads(threads_) schedule(static)
    for (Index h = 0; h < s.heads; ++h) {
      float* scores = scores_[omp_get_thread_num()].data();
      const Index offset = h * s.head_dim;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, m, d, scale, q + offset, ld, k + offset, ld, 0.0f, scores,
                  m);
      if (s.causal) mask_causal(scores, s.q_len, s.kv_len);
      softmax_rows(scores, s.q_len, s.kv_len);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, m, 1.0f, scores, m, v + offset, ld, 0.0f,
                  out + offset, ld);
    }
  }

 private:
  UnfusedShape shape_;
  int threads_;
  std::vector<std::vector<float>> scores_;
};

// C = A B for square n x n matrices on one OpenBLAS thread; 2 n^3 FLOPs.
class Sgemm {
 public:
  explicit Sgemm(Index n) : n_(n), a_(n * n, 0.5f), b_(n * n, 0.25f), c_(n * n) { openblas_set_num_threads(1); }
  void operator()() {
    const int n = static_cast<int>(n_);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a_.data(), n, b_.data(), n, 0.0f, c_.data(),
                n);
  }
  double flops() const { return 2.0 * n_ * n_ * n_; }
  const std::vector<float>& c() const { return c_; }
  double expected_c() const { return 0.5 * 0.25 * static_cast<double>(n_); }  // every element; exact in float

 private:
  Index n_;
  std::vector<float> a_, b_, c_;
};

// STREAM triad a = b + s c over arrays far larger than the caches; bytes counted as STREAM does
// (two reads and one write per element).
class StreamTriad {
 public:
  StreamTriad(Index elements, int threads) : threads_(threads), a_(elements), b_(elements, 1.0f), c_(elements, 2.0f) {
#pragma omp parallel for num_threads(threads_) schedule(static)
    for (Index i = 0; i < elements; ++i) a_[i] = 0.0f;
  }
  void operator()() {
    const Index n = static_cast<Index>(a_.size());
    float* a = a_.data();
    const float *b = b_.data(), *c = c_.data();
#pragma omp parallel for num_threads(threads_) schedule(static)
    for (Index i = 0; i < n; ++i) a[i] = b[i] + 3.0f * c[i];
  }
  double bytes() const { return 3.0 * sizeof(float) * a_.size(); }
  const std::vector<float>& a() const { return a_; }
  static constexpr double kExpectedA = 1.0 + 3.0 * 2.0;  // every element

 private:
  int threads_;
  std::vector<float> a_, b_, c_;
};

// Registers "stream/triad T<threads>" with a GBps rate counter.
inline void register_stream_triad(int threads) {
  benchmark::RegisterBenchmark(("stream/triad T" + std::to_string(threads)).c_str(),
                               [threads](benchmark::State& state) {
                                 const Index elements = Index(1) << 25;
                                 StreamTriad triad(elements, threads);
                                 triad();
                                 if (!check_output(state, triad.a(), "stream triad", [&] {
                                       return expected_constant(elements, 4096, StreamTriad::kExpectedA);
                                     }))
                                   return;
                                 for (auto _ : state) triad();
                                 state.counters["GBps"] = benchmark::Counter(
                                     triad.bytes() * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
                               })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

}  // namespace attnkit::bench
