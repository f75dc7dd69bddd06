// householder_q (mechanism/orthogonal.hpp) against Gram-Schmidt, which yields the same Q of
// a = Q R with diag(R) > 0 when a has full rank: orthonormal columns, r = qᵀa upper triangular
// with a non-negative diagonal, the degenerate inputs, the argument checks; and
// gaussian_orthogonal_features against the same Gaussian draws pushed through Gram-Schmidt.
#include <catch2/catch.hpp>

#include <attnkit/mechanism/orthogonal.hpp>
#include <attnkit/mechanism/performer_features.hpp>
#include <cmath>
#include <random>
#include <vector>

namespace ak = attnkit;
using ak::Index;

namespace {

// Classical Gram-Schmidt with one reorthogonalisation pass on the columns of a (n, n) row-major,
// full rank: column j of q is column j of a minus its projections on columns 0..j-1, normalised.
std::vector<double> gram_schmidt_q(const std::vector<double>& a, Index n) {
  std::vector<double> q(a.size());  // (n, n)
  std::vector<double> column(static_cast<std::size_t>(n));
  for (Index j = 0; j < n; ++j) {
    for (Index i = 0; i < n; ++i) column[i] = a[i * n + j];
    for (int pass = 0; pass < 2; ++pass)
      for (Index p = 0; p < j; ++p) {
        double dot = 0;
        for (Index i = 0; i < n; ++i) dot += q[i * n + p] * column[i];
        for (Index i = 0; i < n; ++i) column[i] -= dot * q[i * n + p];
      }
    double norm = 0;
    for (Index i = 0; i < n; ++i) norm += column[i] * column[i];
    norm = std::sqrt(norm);
    for (Index i = 0; i < n; ++i) q[i * n + j] = column[i] / norm;
  }
  return q;
}

std::vector<double> gaussian_matrix(Index n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> a(static_cast<std::size_t>(n * n));
  for (double& x : a) x = normal(rng);
  return a;
}

// Largest |(xᵀy)(i, j) - identity(i, j)| over the columns of two (n, n) row-major matrices.
double gram_error(const std::vector<double>& x, const std::vector<double>& y, Index n) {
  double worst = 0;
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < n; ++j) {
      double dot = 0;
      for (Index r = 0; r < n; ++r) dot += x[r * n + i] * y[r * n + j];
      worst = std::max(worst, std::abs(dot - (i == j ? 1.0 : 0.0)));
    }
  return worst;
}

}  // namespace

TEST_CASE("householder_q: orthonormal, a = q r with diag(r) >= 0, equal to Gram-Schmidt", "[orthogonal]") {
  for (Index n : {1, 2, 3, 7, 16, 33, 64, 128}) {
    for (std::uint32_t seed = 1; seed <= 3; ++seed) {
      INFO("n " << n << " seed " << seed);
      const std::vector<double> a = gaussian_matrix(n, seed);
      const std::vector<double> q = ak::householder_q(a, n);
      CHECK(gram_error(q, q, n) < 1e-13);
      // r = qᵀ a: upper triangular with a positive diagonal, relative to a's scale.
      double lower = 0, diagonal = INFINITY;
      for (Index i = 0; i < n; ++i)
        for (Index j = 0; j <= i; ++j) {
          double r = 0;
          for (Index k = 0; k < n; ++k) r += q[k * n + i] * a[k * n + j];
          if (j < i) lower = std::max(lower, std::abs(r));
          if (j == i) diagonal = std::min(diagonal, r);
        }
      CHECK(lower < 1e-12 * std::sqrt(double(n)));
      CHECK(diagonal > 0);
      const std::vector<double> reference = gram_schmidt_q(a, n);
      double diff = 0;
      for (std::size_t e = 0; e < q.size(); ++e) diff = std::max(diff, std::abs(q[e] - reference[e]));
      CHECK(diff < 1e-10);
    }
  }
}

TEST_CASE("householder_q: degenerate inputs", "[orthogonal]") {
  CHECK(ak::householder_q({}, 0).empty());
  CHECK(ak::householder_q(std::vector<double>{-2.5}, 1) == std::vector<double>{-1.0});
  CHECK(ak::householder_q(std::vector<double>{0.0}, 1) == std::vector<double>{1.0});
  // Zero matrix: no column is reflected, q = identity.
  CHECK(ak::householder_q(std::vector<double>(9, 0.0), 3) == std::vector<double>{1, 0, 0, 0, 1, 0, 0, 0, 1});
  // Upper triangular with a negative pivot: q = diag(signs).
  CHECK(ak::householder_q(std::vector<double>{2, 5, 0, -3}, 2) == std::vector<double>{1, 0, 0, -1});
  // A zero column among full ones: q stays orthogonal.
  std::vector<double> a = gaussian_matrix(5, 7);
  for (Index i = 0; i < 5; ++i) a[i * 5 + 2] = 0;
  const std::vector<double> q = ak::householder_q(a, 5);
  CHECK(gram_error(q, q, 5) < 1e-13);
}

TEST_CASE("householder_q rejects bad input with a message naming the argument", "[orthogonal][errors]") {
  using Catch::Contains;
  CHECK_THROWS_AS(ak::householder_q(std::vector<double>(4), -1), ak::Error);
  CHECK_THROWS_WITH(ak::householder_q(std::vector<double>(4), -1), Contains("n: -1, expected >= 0"));
  CHECK_THROWS_WITH(ak::householder_q(std::vector<double>(5), 2), Contains("a: size 5, expected n * n = 4"));
}

TEST_CASE("gaussian orthogonal features equal the same draws through Gram-Schmidt", "[orthogonal][performer]") {
  for (Index d : {1, 5, 16, 64})
    for (Index m : {Index(1), Index(7), 2 * d + 3})
      for (auto norms : {ak::FeatureNorms::kChi, ak::FeatureNorms::kSqrtDim}) {
        INFO("head_dim " << d << " features " << m << " norms " << int(norms));
        const std::uint64_t seed = 11;
        const ak::RandomProjection w = ak::gaussian_orthogonal_features(m, d, seed, norms);
        // The generator's math in plain steps: per block, d x d draws row by row, q's columns as
        // rows; then per row the norm of d fresh draws (or sqrt(d)).
        ak::detail::GaussianSource gaussian(seed);
        std::vector<double> expected(static_cast<std::size_t>(m * d));  // (m, d)
        for (Index first = 0; first < m; first += d) {
          std::vector<double> block(static_cast<std::size_t>(d * d));
          for (double& g : block) g = gaussian();
          const std::vector<double> q = gram_schmidt_q(block, d);
          for (Index i = 0; i < std::min(d, m - first); ++i)
            for (Index j = 0; j < d; ++j) expected[(first + i) * d + j] = q[j * d + i];
        }
        for (Index i = 0; i < m; ++i) {
          double norm = std::sqrt(double(d));
          if (norms == ak::FeatureNorms::kChi) {
            double squares = 0;
            for (Index j = 0; j < d; ++j) squares += std::pow(gaussian(), 2);
            norm = std::sqrt(squares);
          }
          for (Index j = 0; j < d; ++j) expected[i * d + j] = double(float(expected[i * d + j])) * double(float(norm));
        }
        double diff = 0;
        for (std::size_t e = 0; e < expected.size(); ++e)
          diff = std::max(diff, std::abs(double(w.data[e]) - expected[e]) / std::max(1.0, std::abs(expected[e])));
        CHECK(diff < 1e-6);
      }
}
