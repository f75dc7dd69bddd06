// The Q factor of a square QR decomposition by Householder reflections, in double precision, for
// the orthogonal random features (performer_features.hpp). The reflections follow LAPACK's and
// Eigen's choice (each one maps its column onto -sign(pivot) · norm, a stable pivot), and the sign
// of R's diagonal is then moved into Q: the result is the Q of a = Q R with diag(R) >= 0, which is
// unique when a has full rank. Not here: random draws, row scaling.
#pragma once

#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include "attnkit/core/error.hpp"
#include "attnkit/core/view.hpp"

namespace attnkit {

// a: (n, n) row-major. Returns q: (n, n) row-major with orthonormal columns and a = q r for an
// upper triangular r with r(j, j) >= 0. A column with nothing left below its pivot (zero tail) is
// not reflected, as in Eigen; for a rank-deficient a, q is still orthogonal but not unique.
inline std::vector<double> householder_q(std::span<const double> a, Index n) {
  ATTNKIT_CHECK(n >= 0, "n: ", n, ", expected >= 0");
  ATTNKIT_CHECK(static_cast<Index>(a.size()) == n * n, "a: size ", a.size(), ", expected n * n = ", n * n);
  const auto at = [n](Index row, Index col) { return static_cast<std::size_t>(row * n + col); };
  // Factor aᵀ in place, so that the columns of a are contiguous rows: after step k, row k of
  // factors holds r(k, k) at k and the reflector's essential part v(k + 1 .. n - 1) past it.
  std::vector<double> factors(a.size());  // (n, n): column k of a at row k
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < n; ++j) factors[at(j, i)] = a[at(i, j)];
  std::vector<double> tau(static_cast<std::size_t>(n), 0.0);  // (n): H_k = I - tau_k v_k v_kᵀ, v_k(k) = 1
  for (Index k = 0; k < n; ++k) {
    double* column = &factors[at(k, 0)];
    double tail = 0;
    for (Index i = k + 1; i < n; ++i) tail += column[i] * column[i];
    const double pivot = column[k];
    if (tail <= std::numeric_limits<double>::min()) {
      for (Index i = k + 1; i < n; ++i) column[i] = 0;  // H_k = I, r(k, k) = pivot
      continue;
    }
    const double beta = pivot >= 0 ? -std::sqrt(pivot * pivot + tail) : std::sqrt(pivot * pivot + tail);
    for (Index i = k + 1; i < n; ++i) column[i] /= pivot - beta;
    tau[k] = (beta - pivot) / beta;
    column[k] = beta;
    for (Index j = k + 1; j < n; ++j) {  // the later columns: c -= tau_k v_k (v_kᵀ c)
      double* other = &factors[at(j, 0)];
      double dot = other[k];
      for (Index i = k + 1; i < n; ++i) dot += column[i] * other[i];
      dot *= tau[k];
      other[k] -= dot;
      for (Index i = k + 1; i < n; ++i) other[i] -= dot * column[i];
    }
  }
  // q = H_0 H_1 ... H_{n-1}, accumulated from the right end: H_k touches rows and columns k.. only.
  std::vector<double> q(a.size(), 0.0);  // (n, n)
  for (Index i = 0; i < n; ++i) q[at(i, i)] = 1;
  std::vector<double> vq(static_cast<std::size_t>(n));  // (n): v_kᵀ q, columns k..
  for (Index k = n - 1; k >= 0; --k) {
    if (tau[k] == 0) continue;
    const double* v = &factors[at(k, 0)];
    for (Index j = k; j < n; ++j) vq[j] = q[at(k, j)];
    for (Index i = k + 1; i < n; ++i)
      for (Index j = k; j < n; ++j) vq[j] += v[i] * q[at(i, j)];
    for (Index j = k; j < n; ++j) q[at(k, j)] -= tau[k] * vq[j];
    for (Index i = k + 1; i < n; ++i)
      for (Index j = k; j < n; ++j) q[at(i, j)] -= tau[k] * v[i] * vq[j];
  }
  for (Index j = 0; j < n; ++j)  // diag(r) >= 0: column j of q times sign(r(j, j))
    if (factors[at(j, j)] < 0)
      for (Index i = 0; i < n; ++i) q[at(i, j)] = -q[at(i, j)];
  return q;
}

}  // namespace attnkit
