// An engine's decode step over a bfloat16 KV cache (the README's storage snippet in full): a
// batch of 2 sequences with different used lengths in a cache of fixed capacity, GQA 8/2, the new
// query and the output in float. Checks one output row against plain loops over the stored values.
#include <attnkit/attnkit.hpp>
#include <cmath>
#include <cstdio>
#include <vector>

namespace ak = attnkit;

int main() {
  const ak::Index B = 2, capacity = 256, Hq = 8, Hkv = 2, D = 64;
  std::vector<ak::bfloat16> k_cache(B * capacity * Hkv * D), v_cache(k_cache.size());
  for (std::size_t i = 0; i < k_cache.size(); ++i) {  // what a prefill would have written
    k_cache[i] = ak::bfloat16(std::sin(0.37f * static_cast<float>(i)));
    v_cache[i] = ak::bfloat16(std::cos(0.11f * static_cast<float>(i)));
  }
  std::vector<std::int32_t> used{200, 37};  // tokens in each sequence's cache
  std::vector<float> q1(B * Hq * D), o1(q1.size());
  for (std::size_t i = 0; i < q1.size(); ++i) q1[i] = std::sin(1.3f * static_cast<float>(i));

  const ak::View<const ak::bfloat16, 4> k = ak::bshd(k_cache.data(), B, capacity, Hkv, D),
                                        v = ak::bshd(v_cache.data(), B, capacity, Hkv, D);
  std::vector<std::int32_t> one(B, 1);
  ak::Attention<ak::Dense, ak::OpenMP<>> attn(ak::Dense::Options{.causal = true});
  attn(ak::bshd(q1.data(), B, 1, Hq, D), k, v, ak::bshd(o1.data(), B, 1, Hq, D), {.lengths = {.q = one, .kv = used}});

  // Sequence 1, head 5 (kv head 1), by plain loops in double.
  const ak::Index b = 1, h = 5, g = h / (Hq / Hkv);
  std::vector<double> weights(used[b]);
  double max = -INFINITY, sum = 0;
  for (ak::Index j = 0; j < used[b]; ++j) {
    double dot = 0;
    for (ak::Index d = 0; d < D; ++d) dot += double(q1[(b * Hq + h) * D + d]) * ak::to_float(k(b, j, g, d));
    weights[j] = dot / std::sqrt(double(D));
    max = std::max(max, weights[j]);
  }
  for (double& w : weights) sum += (w = std::exp(w - max));
  double worst = 0;
  for (ak::Index d = 0; d < D; ++d) {
    double expected = 0;
    for (ak::Index j = 0; j < used[b]; ++j) expected += weights[j] / sum * ak::to_float(v(b, j, g, d));
    worst = std::max(worst, std::abs(expected - o1[(b * Hq + h) * D + d]));
  }
  std::printf("%s, bf16 cache: max |error| of one row against plain loops %.2e\n", attn.name().c_str(), worst);
  return worst < 1e-4 ? 0 : 1;
}
