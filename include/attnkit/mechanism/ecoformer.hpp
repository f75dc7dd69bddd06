// EcoFormer binary-hashing attention (Liu et al., NeurIPS 2022, arXiv 2209.09004; reference code
// ziplab/EcoFormer pvt/performer.py, pvt/hashing/ksh.py): Attention<EcoFormer, Backend>.
//
// Hash. Anchors a_j (m, d), mvec (m) and A (kv_heads, b, m), b <= 64, are inputs (learned in the
// model; tools/ecoformer_calibration.hpp fits them). For a row x of q or k:
//   kappa_j(x) = exp(-|x - a_j|² / (2 sigma)) - mvec_j,   y_t = Σ_j A[hh, t, j] kappa_j(x),
//   h_t(x) = +1 if y_t > 0, else -1,
// hh the kv head of the out head (a query is hashed with its kv head's A, so q and k codes live in
// one Hamming space). sigma: Options::sigma when set (finite, > 0); unset (the default, as the
// reference's forward()) it is the mean of |x_n - a_j|² over every row n of the tensor's (batch
// entry, head) and every anchor j, computed separately for q and k. With causal attention the
// default sigma reads every row of the call, later ones included: set sigma for decoding.
// Codes are packed as bits (bit t set <=> h_t = +1) in one 64-bit word.
//
// Attention. w_ij = h(q_i) · h(k_j) + b + 1 = 2b + 1 - 2 popcount(code_i xor code_j), an integer in
// [1, 2b + 1], and out_i = Σ_j w_ij v_j / Σ_j w_ij over the visible keys (causal: bottom-right
// aligned, j <= i + kv_len - q_len; a row that sees no key gets zeros). This is the paper's
// positive kernel (every pair gets the bias b + 1, so the numerator bias is (b + 1) Σ_j v_j and
// the denominator bias N (b + 1)); the reference code's linear_attention_bias adds (b + 1) v_i, the
// query's own value, to the numerator instead while keeping N (b + 1) below, which is not a
// weighted mean of the values. We implement and test the former.
// Linear time: w_ij = 1 + 2 agree(i, j), agree = b - popcount(code_i xor code_j) the matching bits.
// With set_t = Σ_{j: bit t set} v_j, clear_t = Σ_{j: bit t clear} v_j, c_t = #{j: bit t set},
// V = Σ_j v_j and N keys,
//   Σ_j w_ij v_j = V + 2 Σ_t (bit t of i set ? set_t : clear_t),
//   Σ_j w_ij     = N + 2 Σ_t (bit t of i set ? c_t : N - c_t)   (exact integers),
// so a key costs b + 1 vector additions routed by its bits and a query b additions (summed as a
// tree), plus one division per output: no multiplies in the Σ h v sums. (The algebraically equal
// form (b + 1) V + Σ_t h_t (2 set_t - V) of the paper loses ~b ulps to cancellation at b = 64;
// this one adds only sums of values.) Causal calls keep the sums as prefix sums, token by token.
// Work items are (batch entry, kv head) and run start to end on one thread, so results do not
// depend on the thread count. Not supported here: padded lengths, packed sequences, decode state.
// The reference is reference/ecoformer.hpp; the shared GEMM tiles come from feature_attention.hpp.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "attnkit/attention.hpp"
#include "attnkit/backend/backend.hpp"
#include "attnkit/backend/exp.hpp"
#include "attnkit/backend/vec.hpp"
#include "attnkit/core/cost.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/mechanism/feature_attention.hpp"

namespace attnkit {

struct EcoFormer {
  static constexpr Index kMaxBits = 64;  // codes fill at most one 64-bit word
  struct Options {
    bool causal = false;           // bottom-right aligned when q_len != kv_len
    std::optional<float> sigma{};  // kernel width; unset: per (batch, head) mean squared anchor distance
  };
  struct Args {
    Workspace workspace{};  // >= workspace_bytes(...) bytes, 64-byte aligned; none: allocated
  };
};

// Hash parameters: anchors (m, head_dim), mvec (m), a (kv_heads, bits, m).
struct EcoFormerHash {
  View<const float, 2> anchors{};
  View<const float, 1> mvec{};
  View<const float, 3> a{};
};

namespace detail {

inline constexpr Index kHashChunk = 60;  // rows hashed per GEMM block: a multiple of every tile's rows
inline constexpr Index kAhead = 8;       // rows prefetched ahead of strided row streams

// Sizes of one EcoFormer call.
struct EcoPlan {
  Index m = 0, d = 0, bits = 0, dv = 0;
  Index group = 1, kv_groups = 0, items = 0, q_len = 0, kv_len = 0;
  Index chunk_rows = 0;           // kHashChunk (a multiple of the register tile's rows)
  std::size_t shared_bytes = 0;   // anchorsᵀ, anchor norms, Aᵀ: written once, read by all threads
  std::size_t scratch_bytes = 0;  // per thread
};

template <class V>
EcoPlan make_eco_plan(const AttentionShape& shape, const EcoFormerHash& hash) {
  EcoPlan p;
  p.m = hash.anchors.extent(0);
  p.d = shape.head_dim;
  p.bits = hash.a.extent(1);
  p.dv = shape.v_dim;
  p.group = shape.heads.group();
  p.kv_groups = shape.heads.out_heads() / p.group;
  p.items = shape.batch * p.kv_groups;
  p.q_len = shape.q_len;
  p.kv_len = shape.kv_len;
  static_assert(kHashChunk % RegisterTile<V>::mr == 0, "full hash chunks are read in place");
  p.chunk_rows = kHashChunk;
  p.shared_bytes = array_bytes<float>(p.d * p.m) + array_bytes<float>(p.m) + array_bytes<float>(p.d) +
                   array_bytes<float>(shape.heads.kv_heads * p.m * p.bits);
  p.scratch_bytes = array_bytes<float>(p.chunk_rows * p.d) +         // rows being hashed
                    array_bytes<float>(p.chunk_rows * p.m) +         // dots, then kappa
                    array_bytes<float>(p.chunk_rows * p.bits) +      // projections y
                    array_bytes<std::uint64_t>(p.kv_len) +           // key codes
                    array_bytes<std::uint64_t>(p.group * p.q_len) +  // query codes per out head
                    3 * array_bytes<float>(p.bits * p.dv) +          // set, clear, terms of a query
                    array_bytes<float>(p.dv) +                       // V
                    array_bytes<std::int64_t>(p.bits);               // c
  return p;
}

// z = x + y over n floats.
template <class V>
inline void add_pair(const float* x, const float* y, float* z, Index n) {
  using Ops = VecOps<V>;
  constexpr int W = Ops::width;
  Index i = 0;
  for (; i + W <= n; i += W) Ops::store(z + i, Ops::load(x + i) + Ops::load(y + i));
  for (; i < n; ++i) z[i] = x[i] + y[i];
}

// rows (count, n), count >= 1: rows[0] becomes Σ_r rows[r], summed pairwise (a tree), so an element
// sees about log2(count) roundings instead of count .
template <class V>
inline void tree_sum(float* rows, Index count, Index n) {
  for (Index stride = 1; stride < count; stride *= 2)
    for (Index r = 0; r + stride < count; r += 2 * stride) add_to<V>(rows + (r + stride) * n, rows + r * n, n);
}

// out = (alpha x + beta y) / den over n floats (one scaling per output row, not per key).
template <class V>
inline void combine_divide(float alpha, const float* x, float beta, const float* y, float den, float* out, Index n) {
  using Ops = VecOps<V>;
  constexpr int W = Ops::width;
  const float inv = 1.0f / den;
  const V a = Ops::broadcast(alpha), b = Ops::broadcast(beta), s = Ops::broadcast(inv);
  Index i = 0;
  for (; i + W <= n; i += W) Ops::store(out + i, Ops::fma(a, Ops::load(x + i), b * Ops::load(y + i)) * s);
  for (; i < n; ++i) out[i] = (alpha * x[i] + beta * y[i]) * inv;
}

template <class V>
class EcoKernel {
 public:
  EcoKernel(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
            const View<float, 4>& out, const AttentionShape& shape, const EcoFormerHash& hash, const EcoPlan& plan,
            const EcoFormer::Options& options, std::byte* workspace)
      : q_(q), k_(k), v_(v), out_(out), shape_(shape), hash_(hash), plan_(plan), options_(options) {
    Arena arena(workspace, plan.shared_bytes);
    anchors_t_ = arena.take<float>(plan.d * plan.m);                      // (d, m)
    anchor_norms_ = arena.take<float>(plan.m);                            // (m)
    anchor_mean_ = arena.take<float>(plan.d);                             // (d)
    a_t_ = arena.take<float>(shape.heads.kv_heads * plan.m * plan.bits);  // (kv_heads, m, bits)
    for (Index j = 0; j < plan.m; ++j) {
      float norm = 0;
      for (Index f = 0; f < plan.d; ++f) {
        const float x = hash.anchors(j, f);
        anchors_t_[f * plan.m + j] = x;
        norm += x * x;
      }
      anchor_norms_[j] = norm;
    }
    mean_norm_ = 0;
    for (Index j = 0; j < plan.m; ++j) mean_norm_ += anchor_norms_[j] / static_cast<double>(plan.m);
    for (Index f = 0; f < plan.d; ++f) {
      double mean = 0;
      for (Index j = 0; j < plan.m; ++j) mean += anchors_t_[f * plan.m + j] / static_cast<double>(plan.m);
      anchor_mean_[f] = static_cast<float>(mean);
    }
    for (Index h = 0; h < shape.heads.kv_heads; ++h)
      for (Index t = 0; t < plan.bits; ++t)
        for (Index j = 0; j < plan.m; ++j) a_t_[(h * plan.m + j) * plan.bits + t] = hash.a(h, t, j);
    scratch_ = workspace + plan.shared_bytes;
  }

  void run_item(Index item, int slot) const {
    const Index batch = item / plan_.kv_groups, kv_group = item % plan_.kv_groups;
    const Index kv_head = shape_.heads.kv_head(kv_group * plan_.group);
    const Index bits = plan_.bits, dv = plan_.dv;
    Arena arena(scratch_ + plan_.scratch_bytes * static_cast<std::size_t>(slot), plan_.scratch_bytes);
    Buffers buf;
    buf.rows = arena.take<float>(plan_.chunk_rows * plan_.d);           // (chunk_rows, d)
    buf.kappa = arena.take<float>(plan_.chunk_rows * plan_.m);          // (chunk_rows, m)
    buf.y = arena.take<float>(plan_.chunk_rows * bits);                 // (chunk_rows, bits)
    buf.kcodes = arena.take<std::uint64_t>(plan_.kv_len);               // (kv_len)
    buf.qcodes = arena.take<std::uint64_t>(plan_.group * plan_.q_len);  // (group, q_len)
    buf.set = arena.take<float>(bits * dv);                             // (bits, dv)
    buf.clear = arena.take<float>(bits * dv);                           // (bits, dv)
    buf.terms = arena.take<float>(bits * dv);                           // (bits, dv)
    buf.vsum = arena.take<float>(dv);                                   // (dv)
    buf.count = arena.take<std::int64_t>(bits);                         // (bits)

    hash_rows(k_, batch, kv_head, kv_head, plan_.kv_len, buf.kcodes, buf);
    for (Index h = 0; h < plan_.group; ++h) {
      const Index out_head = kv_group * plan_.group + h;
      hash_rows(q_, batch, shape_.heads.q_head(out_head), kv_head, plan_.q_len, buf.qcodes + h * plan_.q_len, buf);
    }
    std::fill(buf.set, buf.set + bits * dv, 0.0f);
    std::fill(buf.clear, buf.clear + bits * dv, 0.0f);
    std::fill(buf.vsum, buf.vsum + dv, 0.0f);
    std::fill(buf.count, buf.count + bits, std::int64_t{0});

    // Non-causal: every key before the first query. Causal: keys j <= i + kv_len - q_len (prefix sums).
    const Index offset = plan_.kv_len - plan_.q_len;
    Index seen = 0;
    for (Index i = 0; i < plan_.q_len; ++i) {
      const Index visible = options_.causal ? std::clamp<Index>(i + offset + 1, 0, plan_.kv_len) : plan_.kv_len;
      for (; seen < visible; ++seen) {
        if (seen + kAhead < plan_.kv_len) prefetch_rows(v_.at(batch, seen + kAhead, kv_head, 0), 0, 1, dv);
        add_key(buf.kcodes[seen], v_.at(batch, seen, kv_head, 0), buf);
      }
      for (Index h = 0; h < plan_.group; ++h) {
        float* out_row = out_.at(batch, i, kv_group * plan_.group + h, 0);
        if (i + kAhead < plan_.q_len)
          prefetch_rows<true>(out_.at(batch, i + kAhead, kv_group * plan_.group + h, 0), 0, 1, dv);
        if (seen == 0)
          std::fill(out_row, out_row + dv, 0.0f);
        else
          read_query(buf.qcodes[h * plan_.q_len + i], seen, out_row, buf);
      }
    }
  }

 private:
  struct Buffers {
    float *rows, *kappa, *y;
    std::uint64_t *kcodes, *qcodes;
    float *set, *clear, *terms, *vsum;
    std::int64_t* count;
  };

  // Adds one key to the sums by the signs of its code: V += v; per bit t, v goes to set_t (bit set,
  // c_t += 1) or to clear_t (bit clear). Additions only.
  void add_key(std::uint64_t code, const float* v_row, const Buffers& buf) const {
    const Index dv = plan_.dv;
    add_to<V>(v_row, buf.vsum, dv);
    for (Index t = 0; t < plan_.bits; ++t) {
      const bool bit = (code >> t) & 1u;
      add_to<V>(v_row, (bit ? buf.set : buf.clear) + t * dv, dv);
      buf.count[t] += bit;
    }
  }

  // One output row from the sums over the `seen` keys: with agree_t the sum over keys whose bit t
  // matches the query's (set_t or clear_t), w_ij = 1 + 2 * (agreeing bits), so
  //   num = V + 2 Σ_t agree_t,  den = N + 2 Σ_t #agreeing keys_t   (integers).
  // Every term is a plain sum of values (no large terms that cancel); the b terms are added as a tree.
  void read_query(std::uint64_t code, Index seen, float* out_row, const Buffers& buf) const {
    const Index bits = plan_.bits, dv = plan_.dv;
    std::int64_t agree = 0;
    Index t = 0;
    for (; t + 1 < bits; t += 2) {  // first tree level straight from the sums
      const bool b0 = (code >> t) & 1u, b1 = (code >> (t + 1)) & 1u;
      add_pair<V>((b0 ? buf.set : buf.clear) + t * dv, (b1 ? buf.set : buf.clear) + (t + 1) * dv,
                  buf.terms + (t / 2) * dv, dv);
      agree += (b0 ? buf.count[t] : seen - buf.count[t]) + (b1 ? buf.count[t + 1] : seen - buf.count[t + 1]);
    }
    if (t < bits) {
      const bool b0 = (code >> t) & 1u;
      const float* last = (b0 ? buf.set : buf.clear) + t * dv;
      std::copy(last, last + dv, buf.terms + (t / 2) * dv);
      agree += b0 ? buf.count[t] : seen - buf.count[t];
    }
    tree_sum<V>(buf.terms, (bits + 1) / 2, dv);
    combine_divide<V>(2.0f, buf.terms, 1.0f, buf.vsum, static_cast<float>(seen + 2 * agree), out_row, dv);
  }

  // Codes of rows [0, rows) of x[batch, :, head] with A head a_head, written to codes.
  void hash_rows(const View<const float, 4>& x, Index batch, Index head, Index a_head, Index rows, std::uint64_t* codes,
                 const Buffers& buf) const {
    if (rows == 0) return;
    const Index m = plan_.m, d = plan_.d, bits = plan_.bits, cr = plan_.chunk_rows;
    const float inv_two_sigma = inverse_two_sigma(x, batch, head, rows);
    const float* a_t = a_t_ + a_head * m * bits;  // (m, bits)
    for (Index r0 = 0; r0 < rows; r0 += kHashChunk) {
      const Index n = std::min(kHashChunk, rows - r0);
      const Index next = std::min(kHashChunk, rows - r0 - n);  // the chunk after this one
      if (next > 0) prefetch_rows(x.at(batch, r0 + n, head, 0), x.stride(1), next, d);
      // A full chunk is read in place; the last, partial one is copied and padded with zero rows.
      const float* rows_in = x.at(batch, r0, head, 0);
      Index ld = x.stride(1);
      if (n < cr) {
        for (Index r = 0; r < n; ++r) {
          const float* src = x.at(batch, r0 + r, head, 0);
          std::copy(src, src + d, buf.rows + r * d);
        }
        std::fill(buf.rows + n * d, buf.rows + cr * d, 0.0f);
        rows_in = buf.rows;
        ld = d;
      }
      std::fill(buf.kappa, buf.kappa + cr * m, 0.0f);
      gemm_accumulate<V>(cr, m, d, rows_in, ld, anchors_t_, m, buf.kappa, m);  // (rows, m) = X aᵀ
      for (Index r = 0; r < n; ++r) {
        const float norm = dot<V>(rows_in + r * ld, rows_in + r * ld, d);
        kernel_row(buf.kappa + r * m, norm, inv_two_sigma);
      }
      std::fill(buf.kappa + n * m, buf.kappa + cr * m, 0.0f);
      std::fill(buf.y, buf.y + cr * bits, 0.0f);
      gemm_accumulate<V>(cr, bits, m, buf.kappa, m, a_t, bits, buf.y, bits);  // (rows, bits) = kappa Aᵀ
      for (Index r = 0; r < n; ++r) {
        std::uint64_t code = 0;
        for (Index t = 0; t < bits; ++t) code |= static_cast<std::uint64_t>(buf.y[r * bits + t] > 0.0f) << t;
        codes[r0 + r] = code;
      }
    }
  }

  // row (m): dots x · a_j in, kappa_j = exp(-max(|x|² - 2 x·a_j + |a_j|², 0) / (2 sigma)) - mvec_j out.
  void kernel_row(float* row, float norm, float inv_two_sigma) const {
    using Ops = VecOps<V>;
    constexpr int W = Ops::width;
    const Index m = plan_.m;
    Index j = 0;
    if constexpr (W > 1) {
      if (hash_.mvec.stride(0) == 1)
        for (; j + W <= m; j += W) {
          const V dist =
              Ops::max(Ops::broadcast(norm) + Ops::load(anchor_norms_ + j) - V(2.0f) * Ops::load(row + j), Ops::zero());
          Ops::store(row + j, exp_approx(-dist * Ops::broadcast(inv_two_sigma)) - Ops::load(hash_.mvec.data() + j));
        }
    }
    for (; j < m; ++j) {
      const float dist = std::max(norm + anchor_norms_[j] - 2.0f * row[j], 0.0f);
      row[j] = std::exp(-dist * inv_two_sigma) - hash_.mvec(j);
    }
  }

  // 1 / (2 sigma): from the options, or from the mean squared anchor distance of the rows
  // (|x|² - 2 x · ā + mean_j |a_j|² per row, summed in double); a zero mean gives 0 (kappa = 1).
  float inverse_two_sigma(const View<const float, 4>& x, Index batch, Index head, Index rows) const {
    if (options_.sigma) return 0.5f / *options_.sigma;
    double total = 0;  // rows' mean distances, each |x|² - 2 x · ā + mean_j |a_j|² in float
    for (Index r = 0; r < rows; ++r) {
      const float* row = x.at(batch, r, head, 0);
      if (r + kAhead < rows) prefetch_rows(x.at(batch, r + kAhead, head, 0), 0, 1, plan_.d);
      total += double(dot<V>(row, row, plan_.d)) - 2.0 * double(dot<V>(row, anchor_mean_, plan_.d)) + mean_norm_;
    }
    const double sigma = total / static_cast<double>(rows);
    return sigma > 0 ? static_cast<float>(0.5 / sigma) : 0.0f;
  }

  View<const float, 4> q_, k_, v_;
  View<float, 4> out_;
  AttentionShape shape_;
  EcoFormerHash hash_;
  EcoPlan plan_;
  const EcoFormer::Options& options_;
  float* anchors_t_ = nullptr;
  float* anchor_norms_ = nullptr;
  float* anchor_mean_ = nullptr;  // (d): mean anchor
  double mean_norm_ = 0;          // mean_j |a_j|²
  float* a_t_ = nullptr;
  std::byte* scratch_ = nullptr;
};

}  // namespace detail

template <class Backend>
class Attention<EcoFormer, Backend> {
  using V = vector_t<Backend>;

 public:
  using Options = EcoFormer::Options;
  using Args = EcoFormer::Args;

  explicit Attention(Options options = {}, Backend backend = {}) : options_(options), backend_(backend) {
    if (options_.sigma)
      ATTNKIT_CHECK(std::isfinite(*options_.sigma) && *options_.sigma > 0.0f, "options.sigma is ", *options_.sigma,
                    ", expected a finite value > 0 (or unset: the mean squared anchor distance)");
  }

  std::string name() const {
    return std::string(options_.causal ? "ecoformer-causal/" : "ecoformer/") + Backend::name();
  }
  const Options& options() const { return options_; }

  // q (B, Lq, Hq, D), k (B, Lk, Hkv, D), v (B, Lk, Hkv, Dv), hash {anchors (m, D), mvec (m),
  // a (Hkv, bits, m)}. FLOPs: hashing 2 m (D + bits) per hashed row (q rows once per out head, k
  // rows once per kv head; exp not counted), plus at most (bits + 1) Dv additions per key and
  // (bits + 2) Dv per query (every bit set; about half that in practice), plus Dv per query for
  // the division.
  Cost cost(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
            const EcoFormerHash& hash, const Args& = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, nullptr);
    check_hash(shape, hash);
    const double m = static_cast<double>(hash.anchors.extent(0)), bits = static_cast<double>(hash.a.extent(1));
    const double dv = static_cast<double>(shape.v_dim), d = static_cast<double>(shape.head_dim);
    const double q_rows = static_cast<double>(shape.batch * shape.q_len * shape.heads.out_heads());
    const double k_rows = static_cast<double>(shape.batch * shape.kv_len * shape.heads.kv_heads);
    Cost cost;
    cost.flops = 2.0 * m * (d + bits) * (q_rows + k_rows) + (bits + 1) * dv * k_rows + (bits + 3) * dv * q_rows;
    cost.bytes = sizeof(float) * static_cast<double>(q.size() + k.size() + v.size()) + sizeof(float) * q_rows * dv;
    return cost;
  }

  std::size_t workspace_bytes(const View<const float, 4>& q, const View<const float, 4>& k,
                              const View<const float, 4>& v, const EcoFormerHash& hash, const Args& = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, nullptr);
    check_hash(shape, hash);
    return workspace_of(detail::make_eco_plan<V>(shape, hash));
  }

  void operator()(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                  const EcoFormerHash& hash, const View<float, 4>& out, const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, &out);
    check_hash(shape, hash);
    const detail::EcoPlan plan = detail::make_eco_plan<V>(shape, hash);
    if (plan.items == 0 || plan.q_len == 0) return;
    const detail::ScopedWorkspace workspace(args.workspace, workspace_of(plan));
    const detail::EcoKernel<V> kernel(q, k, v, out, shape, hash, plan, options_,
                                      static_cast<std::byte*>(workspace.data()));
    backend_.parallel_for(plan.items, [&](Index item, int slot) { kernel.run_item(item, slot); });
  }

 private:
  static void check_hash(const AttentionShape& shape, const EcoFormerHash& hash) {
    check_view(hash.anchors, "hash.anchors");
    check_view(hash.mvec, "hash.mvec");
    check_view(hash.a, "hash.a");
    const Index m = hash.anchors.extent(0), bits = hash.a.extent(1);
    ATTNKIT_CHECK(m >= 1, "hash.anchors: rows ", m, ", expected >= 1 (m anchors)");
    ATTNKIT_CHECK(hash.anchors.extent(1) == shape.head_dim, "hash.anchors: shape (", m, ", ", hash.anchors.extent(1),
                  "), expected (", m, ", ", shape.head_dim, ") (m, q's head_dim)");
    ATTNKIT_CHECK(hash.mvec.extent(0) == m, "hash.mvec: size ", hash.mvec.extent(0), ", expected ", m,
                  " (anchors' rows)");
    ATTNKIT_CHECK(bits >= 1 && bits <= EcoFormer::kMaxBits, "hash.a: bits ", bits,
                  ", expected 1 <= bits <= ", EcoFormer::kMaxBits, " (one 64-bit word)");
    ATTNKIT_CHECK(hash.a.extent(0) == shape.heads.kv_heads && hash.a.extent(2) == m, "hash.a: shape (",
                  hash.a.extent(0), ", ", bits, ", ", hash.a.extent(2), "), expected (", shape.heads.kv_heads, ", ",
                  bits, ", ", m, ") (kv_heads, bits, m)");
  }

  std::size_t workspace_of(const detail::EcoPlan& plan) const {
    if (plan.items == 0 || plan.q_len == 0) return 0;
    return plan.shared_bytes + plan.scratch_bytes * static_cast<std::size_t>(backend_.threads());
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
