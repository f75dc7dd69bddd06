// Calibration of EcoFormer's hash from sample queries / keys (Eigen, double precision; offline,
// not on any kernel's hot path). It follows the paper's self-supervised kernelized supervised
// hashing (ziplab/EcoFormer pvt/hashing/ksh.py, train_hashing_weight_woeig):
//   anchors  m rows drawn (seeded) from the pooled samples of every head,
//   sigma_h  the mean of |x - a_j|² over head h's samples and the anchors (what the kernel's
//            default sigma computes per call),
//   kappa    exp(-|x - a_j|² / (2 sigma_h)) per sample and anchor; mvec its mean over all samples,
//   labels   S_ij = +1 for the top_k largest x_i · x_j of row i, -1 for the top_k smallest, else 0
//            (the attention scores' own ranking; the reference first normalizes rows, we rank raw
//            dot products, as the kernel sees them),
//   A        bit by bit (greedy): with the residual R = b S - Σ_{earlier bits} y yᵀ, fit a_r to
//            minimize -yᵀ R y / (n b), y = 2 sigmoid(K a_r) - 1 (the relaxed sign), by Nesterov
//            momentum gradient descent from a seeded normal start; keep the start or the fit,
//            whichever gives the lower loss with the true sign; then R -= y yᵀ.
// Not here: the attention kernel (mechanism/ecoformer.hpp).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "attnkit/core/error.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/mechanism/ecoformer.hpp"

namespace attnkit::tools {

struct EcoFormerCalibrationOptions {
  Index bits = 16;             // b, 1..64
  Index anchors = 32;          // m
  Index top_k = 10;            // positive and negative labels per sample row
  int iterations = 100;        // gradient steps per bit (the reference's default)
  double learning_rate = 2.0;  // of the loss scaled by 1 / (n b) (the reference's 5e-4 barely moves A)
  double momentum = 0.9;       // Nesterov, as the reference
  std::uint64_t seed = 0;      // anchors and the start of A
};

// Fitted hash parameters, owning their storage; hash() gives the kernel's views.
struct EcoFormerCalibration {
  Index heads = 0, bits = 0, m = 0, dim = 0;
  std::vector<float> anchors;  // (m, dim) row-major
  std::vector<float> mvec;     // (m)
  std::vector<float> a;        // (heads, bits, m) row-major
  std::vector<float> sigma;    // (heads): mean squared anchor distance of each head's samples

  EcoFormerHash hash() const {
    return EcoFormerHash{View<const float, 2>::contiguous(anchors.data(), {m, dim}),
                         View<const float, 1>::contiguous(mvec.data(), {m}),
                         View<const float, 3>::contiguous(a.data(), {heads, bits, m})};
  }
};

namespace detail {

using RowsD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// (n, m) squared distances between the rows of x (n, d) and anchors (m, d).
inline RowsD squared_distances(const RowsD& x, const RowsD& anchors) {
  RowsD dist = (-2.0 * x * anchors.transpose()).eval();
  dist.colwise() += x.rowwise().squaredNorm();
  dist.rowwise() += anchors.rowwise().squaredNorm().transpose();
  return dist.cwiseMax(0.0);
}

// -yᵀ R y / (n b).
inline double ksh_loss(const Eigen::VectorXd& y, const RowsD& r, Index bits) {
  return -(y.dot(r * y)) / static_cast<double>(y.size() * bits);
}

inline Eigen::VectorXd sign_of(const Eigen::VectorXd& u) {
  return u.unaryExpr([](double x) { return x > 0 ? 1.0 : -1.0; });
}

}  // namespace detail

// Kernel features kappa(x) - mvec (n, m) of rows x (n, d) with the calibration's anchors, for sigma.
inline detail::RowsD ecoformer_features(const detail::RowsD& x, const EcoFormerCalibration& c, double sigma) {
  const Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> anchors(
      c.anchors.data(), c.m, c.dim);
  detail::RowsD k = detail::squared_distances(x, anchors.cast<double>());
  k = (-k / (2.0 * sigma)).array().exp().matrix();
  for (Index j = 0; j < c.m; ++j) k.col(j).array() -= static_cast<double>(c.mvec[j]);
  return k;
}

// Packed codes (bit t set <=> y_t > 0) of rows x (n, d) with head `head` of the calibration,
// computed in double (for evaluation; the kernel hashes in float).
inline std::vector<std::uint64_t> ecoformer_codes(const detail::RowsD& x, const EcoFormerCalibration& c, Index head,
                                                  double sigma) {
  const detail::RowsD k = ecoformer_features(x, c, sigma);
  const Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> a(
      c.a.data() + head * c.bits * c.m, c.bits, c.m);
  const detail::RowsD y = k * a.cast<double>().transpose();  // (n, bits)
  std::vector<std::uint64_t> codes(static_cast<std::size_t>(x.rows()), 0);
  for (Index i = 0; i < x.rows(); ++i)
    for (Index t = 0; t < c.bits; ++t) codes[i] |= static_cast<std::uint64_t>(y(i, t) > 0) << t;
  return codes;
}

// samples[h] (n_h, d): sample rows (queries and keys) of kv head h.
inline EcoFormerCalibration calibrate_ecoformer(const std::vector<detail::RowsD>& samples,
                                                const EcoFormerCalibrationOptions& o = {}) {
  ATTNKIT_CHECK(!samples.empty(), "samples: no heads, expected >= 1");
  ATTNKIT_CHECK(o.bits >= 1 && o.bits <= EcoFormer::kMaxBits, "options.bits is ", o.bits,
                ", expected 1 <= bits <= ", EcoFormer::kMaxBits);
  ATTNKIT_CHECK(o.anchors >= 1, "options.anchors is ", o.anchors, ", expected >= 1");
  ATTNKIT_CHECK(o.iterations >= 0, "options.iterations is ", o.iterations, ", expected >= 0");
  ATTNKIT_CHECK(std::isfinite(o.learning_rate) && o.learning_rate > 0, "options.learning_rate is ", o.learning_rate,
                ", expected a finite value > 0");
  const Index d = samples[0].cols();
  Index pooled = 0;
  for (std::size_t h = 0; h < samples.size(); ++h) {
    ATTNKIT_CHECK(samples[h].cols() == d && d >= 1, "samples[", h, "]: columns ", samples[h].cols(), ", expected ", d,
                  " (samples[0]'s, >= 1)");
    ATTNKIT_CHECK(samples[h].rows() > 2 * o.top_k && o.top_k >= 1, "samples[", h, "]: rows ", samples[h].rows(),
                  ", expected > 2 * top_k = ", 2 * o.top_k, " (top_k >= 1)");
    pooled += samples[h].rows();
  }
  ATTNKIT_CHECK(o.anchors <= pooled, "options.anchors is ", o.anchors, ", expected <= ", pooled, " (sample rows)");

  EcoFormerCalibration c;
  c.heads = static_cast<Index>(samples.size());
  c.bits = o.bits;
  c.m = o.anchors;
  c.dim = d;
  std::mt19937_64 rng(o.seed);

  // Anchors: m distinct pooled rows.
  std::vector<Index> rows(static_cast<std::size_t>(pooled));
  std::iota(rows.begin(), rows.end(), Index{0});
  std::shuffle(rows.begin(), rows.end(), rng);
  c.anchors.resize(static_cast<std::size_t>(c.m * d));
  for (Index j = 0; j < c.m; ++j) {
    Index row = rows[j], h = 0;
    while (row >= samples[h].rows()) row -= samples[h++].rows();
    for (Index f = 0; f < d; ++f) c.anchors[j * d + f] = static_cast<float>(samples[h](row, f));
  }

  // sigma per head, then mvec over every sample.
  c.mvec.assign(static_cast<std::size_t>(c.m), 0.0f);
  c.sigma.resize(samples.size());
  std::vector<detail::RowsD> features(samples.size());
  Eigen::VectorXd mean = Eigen::VectorXd::Zero(c.m);
  for (std::size_t h = 0; h < samples.size(); ++h) {
    const Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> anchors(
        c.anchors.data(), c.m, d);
    const double sigma = detail::squared_distances(samples[h], anchors.cast<double>()).mean();
    c.sigma[h] = static_cast<float>(sigma);
    features[h] = ecoformer_features(samples[h], c, sigma);  // mvec still 0: plain kappa
    mean += features[h].colwise().sum().transpose();
  }
  mean /= static_cast<double>(pooled);
  for (Index j = 0; j < c.m; ++j) c.mvec[j] = static_cast<float>(mean(j));

  c.a.resize(static_cast<std::size_t>(c.heads * c.bits * c.m));
  std::normal_distribution<double> normal(0.0, 1.0);
  for (Index h = 0; h < c.heads; ++h) {
    const detail::RowsD k = features[h].rowwise() - mean.transpose();  // (n, m): kappa - mvec
    const Index n = k.rows();
    // Labels from the scores' ranking, row by row.
    const detail::RowsD scores = samples[h] * samples[h].transpose();  // (n, n)
    detail::RowsD r = detail::RowsD::Zero(n, n);
    std::vector<Index> order(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) {
      std::iota(order.begin(), order.end(), Index{0});
      std::sort(order.begin(), order.end(), [&](Index x, Index y) { return scores(i, x) > scores(i, y); });
      for (Index t = 0; t < o.top_k; ++t) {
        r(i, order[t]) = static_cast<double>(c.bits);
        r(i, order[n - 1 - t]) = -static_cast<double>(c.bits);
      }
    }
    for (Index bit = 0; bit < c.bits; ++bit) {
      Eigen::VectorXd start(c.m);
      for (Index j = 0; j < c.m; ++j) start(j) = normal(rng);
      Eigen::VectorXd a = start, velocity = Eigen::VectorXd::Zero(c.m);
      const detail::RowsD r_sym = r + r.transpose();
      for (int it = 0; it < o.iterations; ++it) {
        const Eigen::VectorXd y = (k * a).unaryExpr([](double u) { return std::tanh(u / 2); });  // 2 sigmoid(u) - 1
        const Eigen::VectorXd dy = -(r_sym * y) / static_cast<double>(n * c.bits);
        const Eigen::VectorXd grad = k.transpose() * (dy.array() * (1 - y.array().square()) / 2).matrix();
        velocity = o.momentum * velocity + grad;
        a -= o.learning_rate * (grad + o.momentum * velocity);
      }
      const Eigen::VectorXd y_start = detail::sign_of(k * start), y_fit = detail::sign_of(k * a);
      const bool fitted = a.allFinite() && detail::ksh_loss(y_fit, r, c.bits) < detail::ksh_loss(y_start, r, c.bits);
      const Eigen::VectorXd& keep = fitted ? a : start;
      for (Index j = 0; j < c.m; ++j) c.a[(h * c.bits + bit) * c.m + j] = static_cast<float>(keep(j));
      const Eigen::VectorXd& y = fitted ? y_fit : y_start;
      r -= y * y.transpose();
    }
  }
  return c;
}

}  // namespace attnkit::tools
