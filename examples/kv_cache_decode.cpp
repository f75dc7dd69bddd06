// An engine's decode step over a bfloat16 KV cache, then over the same cache quantized to int8
// (the README's storage snippets in full): a batch of 2 sequences with different used lengths in
// a cache of fixed capacity, GQA 8/2, the new query and the output in float. Checks one output
// row of each against plain loops over the stored values.
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

  // The same cache as int8 with a scale per (batch, token, kv head) row.
  std::vector<float> k_float(k_cache.size()), v_float(v_cache.size());
  for (std::size_t i = 0; i < k_cache.size(); ++i) {
    k_float[i] = ak::to_float(k_cache[i]);
    v_float[i] = ak::to_float(v_cache[i]);
  }
  std::vector<std::int8_t> k8(k_cache.size()), v8(v_cache.size());
  std::vector<float> k_scale(B * capacity * Hkv), v_scale(k_scale.size());
  auto k8v = ak::bshd(k8.data(), B, capacity, Hkv, D), v8v = ak::bshd(v8.data(), B, capacity, Hkv, D);
  auto ksv = ak::View<float, 3>::contiguous(k_scale.data(), {B, capacity, Hkv});
  auto vsv = ak::View<float, 3>::contiguous(v_scale.data(), {B, capacity, Hkv});
  ak::quantize_kv(ak::bshd(k_float.data(), B, capacity, Hkv, D), k8v, ksv);
  ak::quantize_kv(ak::bshd(v_float.data(), B, capacity, Hkv, D), v8v, vsv);
  std::vector<float> o8(o1.size());
  attn(ak::bshd(q1.data(), B, 1, Hq, D), ak::QuantizedView{k8v, ksv}, ak::QuantizedView{v8v, vsv},
       ak::bshd(o8.data(), B, 1, Hq, D), {.lengths = {.q = one, .kv = used}});
  double int8_vs_bf16 = 0;
  for (std::size_t i = 0; i < o8.size(); ++i) int8_vs_bf16 = std::max(int8_vs_bf16, double(std::abs(o8[i] - o1[i])));
  std::printf("int8 cache: max |out - bf16 cache's out| %.2e\n", int8_vs_bf16);
  return worst < 1e-4 && int8_vs_bf16 < 0.05 ? 0 : 1;
}
