// The public surface of issue 2: causal GQA attention over BSHD views with the OpenMP backend.
#include <attnkit/attnkit.hpp>
#include <cmath>
#include <vector>
int main() {
  namespace ak = attnkit;
  const int B = 2, Lq = 100, Lk = 100, Hq = 8, Hkv = 2, D = 64;
  std::vector<float> q(B * Lq * Hq * D, 0.5f), k(B * Lk * Hkv * D, 0.25f), v(B * Lk * Hkv * D, 1.0f),
      o(B * Lq * Hq * D);
  // BSHD, contiguous: [batch, len, heads, head_dim]. ak::bhsd(...) does [batch, heads, len, dim];
  // ak::View<T, 4> can also be built from a pointer, extents and element strides.
  auto qv = ak::bshd(q.data(), B, Lq, Hq, D);  // const-ness follows the pointer
  auto kv = ak::bshd(k.data(), B, Lk, Hkv, D);
  auto vv = ak::bshd(v.data(), B, Lk, Hkv, D);
  auto ov = ak::bshd(o.data(), B, Lq, Hq, D);
  ak::Attention<ak::Dense, ak::OpenMP<>> attn(ak::Dense::Options{.causal = true});
  attn(qv, kv, vv, ov);                // GQA: 8 query heads share 2 kv heads
  ak::Cost c = attn.cost(qv, kv, vv);  // c.flops, c.bytes
  return (std::abs(o[0] - 1.0f) < 1e-5f && c.flops > 0) ? 0 : 1;
}
