// The seeded generator of Performer's projection W (features x head_dim): Gaussian orthogonal
// random features (Choromanski et al. 2021, google-research performer create_projection_matrix).
// Rows come in blocks of head_dim orthonormal rows, each block the Q factor of the QR
// decomposition (householder_q, orthogonal.hpp) of a head_dim x head_dim Gaussian matrix,
// transposed; a last partial block keeps its first rows. Rows are then scaled to chi-distributed
// norms (the norms of fresh Gaussian head_dim-vectors: each row is marginally Gaussian) or all to
// sqrt(head_dim). One difference to the JAX code: Q is the one with diag(R) >= 0 (a raw Householder
// Q times the signs of R's diagonal), which makes Q Haar-distributed (a raw Householder Q is not).
// Gaussians come from Box-Muller over std::mt19937_64, so a seed gives the same W on every
// platform. Not here: the attention kernel (performer.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "attnkit/core/error.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/mechanism/orthogonal.hpp"

namespace attnkit {

// How the rows of W are scaled.
enum class FeatureNorms {
  kChi,      // norms of independent Gaussian head_dim-vectors (the Performer default, scaling = 0)
  kSqrtDim,  // every row sqrt(head_dim) (scaling = 1)
};

// W of one Performer: features x head_dim floats, row-major, owned.
struct RandomProjection {
  Index features = 0;
  Index head_dim = 0;
  std::vector<float> data;  // (features, head_dim)

  View<const float, 2> view() const { return View<const float, 2>::contiguous(data.data(), {features, head_dim}); }
};

namespace detail {

// Standard normal draws, Box-Muller over 53-bit uniforms.
class GaussianSource {
 public:
  explicit GaussianSource(std::uint64_t seed) : engine_(seed) {}
  double operator()() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = (static_cast<double>(engine_() >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    const double u2 = static_cast<double>(engine_() >> 11) * 0x1.0p-53;          // [0, 1)
    const double radius = std::sqrt(-2.0 * std::log(u1));
    const double angle = 6.283185307179586476925 * u2;
    spare_ = radius * std::sin(angle);
    has_spare_ = true;
    return radius * std::cos(angle);
  }

 private:
  std::mt19937_64 engine_;
  double spare_ = 0;
  bool has_spare_ = false;
};

}  // namespace detail

// W (features, head_dim) for a seed; features defaults to 256 in Performer's options.
inline RandomProjection gaussian_orthogonal_features(Index features, Index head_dim, std::uint64_t seed,
                                                     FeatureNorms norms = FeatureNorms::kChi) {
  ATTNKIT_CHECK(features >= 1, "features: ", features, ", expected >= 1");
  ATTNKIT_CHECK(head_dim >= 1, "head_dim: ", head_dim, ", expected >= 1");
  detail::GaussianSource gaussian(seed);
  RandomProjection w{features, head_dim, std::vector<float>(static_cast<std::size_t>(features * head_dim))};
  std::vector<double> block(static_cast<std::size_t>(head_dim * head_dim));  // (head_dim, head_dim)
  for (Index first = 0; first < features; first += head_dim) {
    for (double& g : block) g = gaussian();
    const std::vector<double> q = householder_q(block, head_dim);  // (head_dim, head_dim), orthonormal columns
    const Index rows = std::min(head_dim, features - first);
    for (Index i = 0; i < rows; ++i)
      for (Index j = 0; j < head_dim; ++j) w.data[(first + i) * head_dim + j] = static_cast<float>(q[j * head_dim + i]);
  }
  for (Index i = 0; i < features; ++i) {
    double norm = std::sqrt(static_cast<double>(head_dim));
    if (norms == FeatureNorms::kChi) {
      double squares = 0;
      for (Index j = 0; j < head_dim; ++j) {
        const double g = gaussian();
        squares += g * g;
      }
      norm = std::sqrt(squares);
    }
    for (Index j = 0; j < head_dim; ++j) w.data[i * head_dim + j] *= static_cast<float>(norm);
  }
  return w;
}

}  // namespace attnkit
