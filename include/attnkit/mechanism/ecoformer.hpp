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
// Codes are packed as bits (bit t set <=> h_t = +1) in one 64-bit word. A row with a NaN y has
// no code: its weights are NaN, so is every output row that weighs it (non-finite inputs, README
// "Conventions"); an infinite row is at distance inf from every anchor (kappa = -mvec).
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
// and every term is a plain sum of values: no multiplies in the Σ h v sums. (The algebraically
// equal form (b + 1) V + Σ_t h_t (2 set_t - V) of the paper loses ~b ulps to cancellation at
// b = 64; this one never subtracts.)
//   Non-causal: the codes are cut into nibbles of 4 bits. A key adds its value to one bucket per
//   nibble (the bucket of its 4 bits there: b / 4 additions per key). Each nibble's 16 buckets then
//   give its 16-entry table T(g, p) = Σ_{t in nibble g} (bit t of p ? set_t : clear_t), so a query
//   adds b / 4 table rows: num = V + 2 Σ_g T(g, p_g(i)).
//   Causal: keys enter one at a time into set_t / clear_t (b + 1 additions per key) and a query
//   adds its b terms, token by token.
// Hashing is two small GEMMs per block of rows (rows x anchorsᵀ, then kappa x Aᵀ), exps and a sign
// mask; without a fixed sigma the anchor dots of every row are kept until the mean distance is
// known, so q and k are read once either way (the workspace then holds max(q_len, kv_len) x m
// floats per thread; with sigma set, one block of rows).
// Padded batches: args.lengths gives each batch entry's real q / kv lengths (sigma and the causal
// alignment use the real rows; rows past a length are zeros). Work items are (batch entry, kv
// head) and run start to end on one thread, so results do not depend on the thread count. Not
// supported here: packed sequences (cu_seqlens), decode state.
// The reference is reference/ecoformer.hpp; the shared GEMM tiles come from kernel/feature.hpp.
#pragma once

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
#include "attnkit/core/workspace_layout.hpp"
#include "attnkit/kernel/ecoformer.hpp"

namespace attnkit {

struct EcoFormer {
  static constexpr Index kMaxBits = detail::kEcoMaxBits;  // codes fill at most one 64-bit word
  struct Options {
    bool causal = false;           // bottom-right aligned when q_len != kv_len
    std::optional<float> sigma{};  // kernel width; unset: per (batch, head) mean squared anchor distance
  };
  struct Args {
    SeqLengths lengths{};   // real q / kv length per batch entry (rows past them: zeros)
    Workspace workspace{};  // >= workspace_bytes(...) bytes, 64-byte aligned; none: allocated
  };
};

// Hash parameters: anchors (m, head_dim), mvec (m), a (kv_heads, bits, m).
struct EcoFormerHash {
  View<const float, 2> anchors{};
  View<const float, 1> mvec{};
  View<const float, 3> a{};
};

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
  // a (Hkv, bits, m)}; args.lengths: real lengths per batch entry. FLOPs over the real rows:
  // hashing 2 m (D + bits) per hashed row (q rows once per out head, k rows once per kv head; exp
  // not counted), plus the additions of the sums, Dv wide:
  //   non-causal  n = ceil(bits / 4) per key, n + 2 per query (n - 1 additions, the scaling and
  //               the division), and per (batch entry with keys, kv head) the tables: for each
  //               nibble of w bits w 2^w + 2^(w+1) - 4, plus 2^w0 for V;
  //   causal      bits + 1 per key, bits + 2 per query.
  Cost cost(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
            const EcoFormerHash& hash, const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, nullptr);
    check_hash(shape, hash);
    const SequenceLayout seqs = SequenceLayout::padded(shape, args.lengths);
    const Index bits = hash.a.extent(1);
    const double m = static_cast<double>(hash.anchors.extent(0));
    const double dv = static_cast<double>(shape.v_dim), d = static_cast<double>(shape.head_dim);
    double q_rows = 0, k_rows = 0, items = 0;  // items: (sequence with keys, kv head) pairs
    for (Index s = 0; s < seqs.count(); ++s) {
      q_rows += static_cast<double>(seqs[s].q_len * shape.heads.out_heads());
      k_rows += static_cast<double>(seqs[s].kv_len * shape.heads.kv_heads);
      items += seqs[s].kv_len > 0 ? static_cast<double>(shape.heads.kv_heads) : 0.0;
    }
    Cost cost;
    cost.flops = 2.0 * m * (d + static_cast<double>(bits)) * (q_rows + k_rows);
    if (options_.causal) {
      cost.flops += (static_cast<double>(bits) + 1) * dv * k_rows + (static_cast<double>(bits) + 2) * dv * q_rows;
    } else {
      const Index nibbles = (bits + detail::kNibble - 1) / detail::kNibble;
      double tables = static_cast<double>(Index{1} << std::min(detail::kNibble, bits));  // V
      for (Index g = 0; g < nibbles; ++g) {
        const Index w = std::min(detail::kNibble, bits - g * detail::kNibble);
        tables += static_cast<double>(w * (Index{1} << w) + (Index{1} << (w + 1)) - 4);
      }
      cost.flops += static_cast<double>(nibbles) * dv * k_rows + static_cast<double>(nibbles + 2) * dv * q_rows +
                    tables * dv * items;
    }
    const double q_heads = static_cast<double>(shape.heads.q_heads);
    cost.bytes = sizeof(float) * (q_rows / static_cast<double>(shape.heads.out_heads()) * q_heads * d +
                                  k_rows * (d + dv) + q_rows * dv);
    return cost;
  }

  std::size_t workspace_bytes(const View<const float, 4>& q, const View<const float, 4>& k,
                              const View<const float, 4>& v, const EcoFormerHash& hash, const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, nullptr);
    check_hash(shape, hash);
    return workspace_of(make_plan(shape, SequenceLayout::padded(shape, args.lengths), hash));
  }

  void operator()(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                  const EcoFormerHash& hash, const View<float, 4>& out, const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, &out);
    check_hash(shape, hash);
    check_output_view(out, "out",
                      {memory_range(hash.anchors, "hash.anchors"), memory_range(hash.mvec, "hash.mvec"),
                       memory_range(hash.a, "hash.a")});
    const SequenceLayout seqs = SequenceLayout::padded(shape, args.lengths);
    const detail::EcoPlan plan = make_plan(shape, seqs, hash);
    if (plan.items == 0) return;
    detail::zero_rows_past_lengths(out, seqs);
    const detail::ScopedWorkspace workspace(args.workspace, workspace_of(plan));
    const detail::EcoKernel<V> kernel(q, k, v, out, shape, seqs, hash.anchors, hash.mvec, hash.a, plan, options_.sigma,
                                      workspace.data(), backend_.threads());
    backend_.parallel_for(plan.items, [&](Index item, int slot) { kernel.run_item(item, slot); });
  }

 private:
  static void check_hash(const AttentionShape& shape, const EcoFormerHash& hash) {
    check_view(hash.anchors, "hash.anchors");
    check_view(hash.mvec, "hash.mvec");
    check_view(hash.a, "hash.a");
    const Index m = hash.anchors.extent(0), bits = hash.a.extent(1);
    ATTNKIT_CHECK(m >= 1, "hash.anchors: rows ", m, ", expected >= 1 (m anchors)");
    check_problem_size({shape.batch, shape.heads.out_heads(), std::max(shape.q_len, shape.kv_len), m,
                        std::max(shape.head_dim, shape.v_dim)},
                       "q, k, hash.anchors (batch x heads x length x anchors x head_dim)");
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

  detail::EcoPlan make_plan(const AttentionShape& shape, const SequenceLayout& seqs, const EcoFormerHash& hash) const {
    return detail::make_eco_plan<V>(shape, seqs, hash.anchors.extent(0), hash.a.extent(1), options_.causal,
                                    options_.sigma.has_value());
  }
  std::size_t workspace_of(const detail::EcoPlan& plan) const {
    return detail::workspace_bytes_of<detail::EcoWorkspace>(plan, backend_.threads());
  }

  Options options_;
  Backend backend_;
};

}  // namespace attnkit
