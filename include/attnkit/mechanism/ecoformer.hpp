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
// The reference is reference/ecoformer.hpp; the shared GEMM tiles come from feature_attention.hpp.
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
#include "attnkit/mechanism/feature_attention.hpp"

namespace attnkit {

struct EcoFormer {
  static constexpr Index kMaxBits = 64;  // codes fill at most one 64-bit word
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

namespace detail {

inline constexpr Index kHashChunk = 60;  // rows hashed per GEMM block: a multiple of every tile's rows
inline constexpr Index kAhead = 8;       // rows prefetched ahead of strided row streams
inline constexpr Index kNibble = 4;      // code bits per bucket group of the non-causal sums
inline constexpr Index kNibbleCodes = Index{1} << kNibble;

// Sizes of one EcoFormer call.
struct EcoPlan {
  Index m = 0, d = 0, bits = 0, dv = 0;
  Index m_pad = 0, bits_pad = 0;  // padded to the vector width (zero anchors, zero A columns)
  Index group = 1, kv_groups = 0, items = 0;
  Index q_len = 0, kv_len = 0;    // the views' extents: every sequence's lengths are at most these
  Index nibbles = 0;              // ceil(bits / kNibble): bucket groups of the non-causal sums
  Index sum_row = 0;              // floats between rows of the sums: dv padded to the vector width, plus one
                                  // vector, so rows 4 KiB apart (which the CPU confuses) are rare
  Index dot_rows = 0;             // rows of the anchor dots buffer: a chunk (sigma set) or every row of q or k
  std::size_t shared_bytes = 0;   // anchorsᵀ, anchor norms, mvec, Aᵀ: written once, read by all threads
  std::size_t scratch_bytes = 0;  // per thread
};

template <class V>
EcoPlan make_eco_plan(const AttentionShape& shape, const SequenceLayout& seqs, const EcoFormerHash& hash,
                      const EcoFormer::Options& options) {
  constexpr Index W = VecOps<V>::width;
  static_assert(kHashChunk % RegisterTile<V>::mr == 0, "full hash chunks are read in place");
  EcoPlan p;
  p.m = hash.anchors.extent(0);
  p.d = shape.head_dim;
  p.bits = hash.a.extent(1);
  p.dv = shape.v_dim;
  p.m_pad = (p.m + W - 1) / W * W;
  p.bits_pad = (p.bits + W - 1) / W * W;
  p.group = shape.heads.group();
  p.kv_groups = shape.heads.out_heads() / p.group;
  p.items = seqs.count() * p.kv_groups;
  p.q_len = shape.q_len;
  p.kv_len = shape.kv_len;
  p.nibbles = (p.bits + kNibble - 1) / kNibble;
  p.sum_row = (p.dv + W - 1) / W * W + W;
  const Index longest = std::max(p.q_len, p.kv_len);
  p.dot_rows = options.sigma ? kHashChunk : (longest + kHashChunk - 1) / kHashChunk * kHashChunk;
  p.shared_bytes = array_bytes<float>(p.d * p.m_pad) + 2 * array_bytes<float>(p.m_pad) +
                   array_bytes<float>(shape.heads.kv_heads * p.m_pad * p.bits_pad);
  p.scratch_bytes = array_bytes<float>(kHashChunk * p.d) +           // a partial chunk's rows, zero-padded
                    array_bytes<float>(p.dot_rows * p.m_pad) +       // anchor dots, then kappa
                    array_bytes<float>(p.dot_rows) +                 // |x|² per row
                    array_bytes<float>(kHashChunk * p.bits_pad) +    // projections y
                    array_bytes<std::uint64_t>(p.kv_len) +           // key codes
                    array_bytes<std::uint64_t>(p.group * p.q_len) +  // query codes per out head
                    array_bytes<float>(p.dv);                        // V
  if (options.causal)
    p.scratch_bytes += array_bytes<float>(2 * p.bits * p.sum_row) +  // set, clear
                       array_bytes<std::int64_t>(p.bits);            // c
  else
    p.scratch_bytes += array_bytes<float>(p.nibbles * kNibbleCodes * p.sum_row) +  // buckets, then tables
                       array_bytes<float>(2 * kNibble * p.sum_row) +               // set / clear of one nibble
                       array_bytes<std::int64_t>(p.nibbles * kNibbleCodes);        // their key counts
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

// out = (base + 2 Σ_r rows[r]) / den over n floats, count >= 1 rows summed in four interleaved
// partial sums joined pairwise (at most count / 4 + 2 roundings per element). Columns go in
// blocks of NV vectors of T, so each row pointer is read once per block.
template <class T, int NV>
inline void sum_rows_divide_block(const float* const* rows, Index count, const float* base, float inv, float* out,
                                  Index c) {
  using Ops = VecOps<T>;
  constexpr int W = Ops::width;
  T acc[4][NV];
  for (int k = 0; k < NV; ++k) acc[0][k] = acc[1][k] = acc[2][k] = acc[3][k] = Ops::zero();
  Index r = 0;
  for (; r + 4 <= count; r += 4)
    for (int part = 0; part < 4; ++part)
      for (int k = 0; k < NV; ++k) acc[part][k] = acc[part][k] + Ops::load(rows[r + part] + c + k * W);
  for (int part = 0; part < 3; ++part)  // the last count % 4 rows
    if (r + part < count)
      for (int k = 0; k < NV; ++k) acc[part][k] = acc[part][k] + Ops::load(rows[r + part] + c + k * W);
  for (int k = 0; k < NV; ++k) {
    const T total = (acc[0][k] + acc[1][k]) + (acc[2][k] + acc[3][k]);
    Ops::store(out + c + k * W,
               Ops::fma(Ops::broadcast(2.0f), total, Ops::load(base + c + k * W)) * Ops::broadcast(inv));
  }
}

template <class V>
inline void sum_rows_divide(const float* const* rows, Index count, const float* base, float den, float* out, Index n) {
  constexpr int W = VecOps<V>::width;
  const float inv = 1.0f / den;
  Index c = 0;
  for (; c + 2 * W <= n; c += 2 * W) sum_rows_divide_block<V, 2>(rows, count, base, inv, out, c);
  for (; c + W <= n; c += W) sum_rows_divide_block<V, 1>(rows, count, base, inv, out, c);
  for (; c < n; ++c) sum_rows_divide_block<float, 1>(rows, count, base, inv, out, c);
}

template <class V>
class EcoKernel {
 public:
  EcoKernel(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
            const View<float, 4>& out, const AttentionShape& shape, const SequenceLayout& seqs,
            const EcoFormerHash& hash, const EcoPlan& plan, const EcoFormer::Options& options, std::byte* workspace)
      : q_(q), k_(k), v_(v), out_(out), shape_(shape), seqs_(seqs), plan_(plan), options_(options) {
    const Index m = plan.m, mp = plan.m_pad, bp = plan.bits_pad;
    Arena arena(workspace, plan.shared_bytes);
    anchors_t_ = arena.take<float>(plan.d * mp);               // (d, m_pad)
    anchor_norms_ = arena.take<float>(mp);                     // (m_pad)
    mvec_ = arena.take<float>(mp);                             // (m_pad)
    a_t_ = arena.take<float>(shape.heads.kv_heads * mp * bp);  // (kv_heads, m_pad, bits_pad)
    std::fill(anchors_t_, anchors_t_ + plan.d * mp, 0.0f);
    std::fill(anchor_norms_, anchor_norms_ + mp, 0.0f);
    std::fill(mvec_, mvec_ + mp, 0.0f);
    std::fill(a_t_, a_t_ + shape.heads.kv_heads * mp * bp, 0.0f);
    for (Index j = 0; j < m; ++j) {
      float norm = 0;
      for (Index f = 0; f < plan.d; ++f) {
        const float x = hash.anchors(j, f);
        anchors_t_[f * mp + j] = x;
        norm += x * x;
      }
      anchor_norms_[j] = norm;
      mvec_[j] = hash.mvec(j);
    }
    mean_norm_ = 0;
    for (Index j = 0; j < m; ++j) mean_norm_ += anchor_norms_[j] / static_cast<double>(m);
    for (Index h = 0; h < shape.heads.kv_heads; ++h)
      for (Index t = 0; t < plan.bits; ++t)
        for (Index j = 0; j < m; ++j) a_t_[(h * mp + j) * bp + t] = hash.a(h, t, j);
    scratch_ = workspace + plan.shared_bytes;
  }

  void run_item(Index item, int slot) const {
    const Sequence seq = seqs_[item / plan_.kv_groups];
    const Index kv_group = item % plan_.kv_groups;
    const Index kv_head = shape_.heads.kv_head(kv_group * plan_.group);
    const Index bits = plan_.bits, dv = plan_.dv;
    Arena arena(scratch_ + plan_.scratch_bytes * static_cast<std::size_t>(slot), plan_.scratch_bytes);
    Buffers buf;
    buf.rows = arena.take<float>(kHashChunk * plan_.d);                 // (chunk, d)
    buf.dots = arena.take<float>(plan_.dot_rows * plan_.m_pad);         // (dot_rows, m_pad)
    buf.norms = arena.take<float>(plan_.dot_rows);                      // (dot_rows)
    buf.y = arena.take<float>(kHashChunk * plan_.bits_pad);             // (chunk, bits_pad)
    buf.kcodes = arena.take<std::uint64_t>(plan_.kv_len);               // (kv_len)
    buf.qcodes = arena.take<std::uint64_t>(plan_.group * plan_.q_len);  // (group, q_len)
    buf.vsum = arena.take<float>(dv);                                   // (dv)
    if (options_.causal) {
      buf.sums = arena.take<float>(2 * bits * plan_.sum_row);  // (bits, set / clear, sum_row)
      buf.count = arena.take<std::int64_t>(bits);              // (bits)
    } else {
      buf.sums = arena.take<float>(plan_.nibbles * kNibbleCodes * plan_.sum_row);  // (nibbles, 16, sum_row)
      buf.marginals = arena.take<float>(2 * kNibble * plan_.sum_row);              // (4, set / clear, sum_row)
      buf.count = arena.take<std::int64_t>(plan_.nibbles * kNibbleCodes);          // (nibbles, 16)
    }

    hash_rows(k_, seq.batch, kv_head, kv_head, seq.kv_len, buf.kcodes, buf);
    for (Index h = 0; h < plan_.group; ++h) {
      const Index out_head = kv_group * plan_.group + h;
      hash_rows(q_, seq.batch, shape_.heads.q_head(out_head), kv_head, seq.q_len, buf.qcodes + h * plan_.q_len, buf);
    }
    if (options_.causal)
      run_causal(seq, kv_group, kv_head, buf);
    else
      run_non_causal(seq, kv_group, kv_head, buf);
  }

 private:
  struct Buffers {
    float *rows, *dots, *norms, *y;
    std::uint64_t *kcodes, *qcodes;
    float *vsum, *sums, *marginals = nullptr;
    std::int64_t* count;
  };

  // Row of the sums: set_t (set) or clear_t of bit t (causal), or table entry (g, p) (non-causal).
  float* bit_sum(const Buffers& buf, Index t, bool set) const { return buf.sums + (2 * t + !set) * plan_.sum_row; }
  float* table_row(const Buffers& buf, Index g, Index p) const {
    return buf.sums + (g * kNibbleCodes + p) * plan_.sum_row;
  }

  void zero_out_rows(const Sequence& seq, Index kv_group) const {
    for (Index i = 0; i < seq.q_len; ++i)
      for (Index h = 0; h < plan_.group; ++h) {
        float* out_row = out_.at(seq.batch, i, kv_group * plan_.group + h, 0);
        std::fill(out_row, out_row + plan_.dv, 0.0f);
      }
  }

  // Non-causal. Keys go into buckets by each 4-bit group (nibble) of their codes: bucket (g, p)
  // sums the values whose nibble g is p (nibbles / 4 additions per key). Each nibble's buckets then
  // become a table over the 16 query nibbles p: T(g, p) = Σ_{t in g} (bit t of p ? set_t : clear_t),
  // the sum over the nibble's bits of the values of the keys that agree there. A query adds one
  // table row per nibble: num = V + 2 Σ_g T(g, p_g), den = N + 2 Σ_g count(g, p_g).
  void run_non_causal(const Sequence& seq, Index kv_group, Index kv_head, const Buffers& buf) const {
    const Index dv = plan_.dv, n = seq.kv_len, nibbles = plan_.nibbles, batch = seq.batch;
    if (n == 0) return zero_out_rows(seq, kv_group);
    std::fill(buf.sums, buf.sums + nibbles * kNibbleCodes * plan_.sum_row, 0.0f);
    std::fill(buf.count, buf.count + nibbles * kNibbleCodes, std::int64_t{0});
    for (Index j = 0; j < n; ++j) {
      if (j + kAhead < n) prefetch_rows(v_.at(batch, j + kAhead, kv_head, 0), 0, 1, dv);
      const std::uint64_t code = buf.kcodes[j];
      const float* v_row = v_.at(batch, j, kv_head, 0);
      for (Index g = 0; g < nibbles; ++g) {
        const Index bucket = g * kNibbleCodes + static_cast<Index>((code >> (g * kNibble)) & (kNibbleCodes - 1));
        add_to<V>(v_row, buf.sums + bucket * plan_.sum_row, dv);
        ++buf.count[bucket];
      }
    }
    std::fill(buf.vsum, buf.vsum + dv, 0.0f);  // V: the sum of nibble 0's buckets
    for (Index p = 0; p < nibble_codes(0); ++p) add_to<V>(table_row(buf, 0, p), buf.vsum, dv);
    for (Index g = 0; g < nibbles; ++g) nibble_table(g, n, buf);

    const float* rows[EcoFormer::kMaxBits / kNibble];
    for (Index i = 0; i < seq.q_len; ++i)
      for (Index h = 0; h < plan_.group; ++h) {
        const Index out_head = kv_group * plan_.group + h;
        if (i + kAhead < seq.q_len) prefetch_rows<true>(out_.at(batch, i + kAhead, out_head, 0), 0, 1, dv);
        const std::uint64_t code = buf.qcodes[h * plan_.q_len + i];
        std::int64_t agree = 0;
        for (Index g = 0; g < nibbles; ++g) {
          const Index entry = g * kNibbleCodes + static_cast<Index>((code >> (g * kNibble)) & (kNibbleCodes - 1));
          rows[g] = buf.sums + entry * plan_.sum_row;
          agree += buf.count[entry];
        }
        sum_rows_divide<V>(rows, nibbles, buf.vsum, static_cast<float>(n + 2 * agree), out_.at(batch, i, out_head, 0),
                           dv);
      }
  }

  Index nibble_bits(Index g) const { return std::min(kNibble, plan_.bits - g * kNibble); }
  Index nibble_codes(Index g) const { return Index{1} << nibble_bits(g); }

  // Nibble g's buckets (values and counts, over n keys) become its tables, in place.
  void nibble_table(Index g, Index n, const Buffers& buf) const {
    const Index dv = plan_.dv, width = nibble_bits(g), codes = nibble_codes(g);
    std::int64_t* count = buf.count + g * kNibbleCodes;  // (16)
    auto marginal = [&](Index t, bool set) { return buf.marginals + (2 * t + !set) * plan_.sum_row; };
    std::int64_t set_count[kNibble] = {};
    for (Index t = 0; t < width; ++t) {  // set_t, clear_t: sums of the buckets with bit t set, clear
      std::fill(marginal(t, true), marginal(t, true) + dv, 0.0f);
      std::fill(marginal(t, false), marginal(t, false) + dv, 0.0f);
      for (Index p = 0; p < codes; ++p) {
        const bool set = (p >> t) & 1;
        add_to<V>(table_row(buf, g, p), marginal(t, set), dv);
        if (set) set_count[t] += count[p];
      }
    }
    // Level t: entries p < 2^(t + 1) hold the sums over bits 0..t.
    std::copy(marginal(0, false), marginal(0, false) + dv, table_row(buf, g, 0));
    std::copy(marginal(0, true), marginal(0, true) + dv, table_row(buf, g, 1));
    count[0] = n - set_count[0];
    count[1] = set_count[0];
    for (Index t = 1; t < width; ++t)
      for (Index p = 0; p < (Index{1} << t); ++p) {
        const Index hi = p | (Index{1} << t);
        add_pair<V>(table_row(buf, g, p), marginal(t, true), table_row(buf, g, hi), dv);
        add_to<V>(marginal(t, false), table_row(buf, g, p), dv);
        count[hi] = count[p] + set_count[t];
        count[p] += n - set_count[t];
      }
  }

  // Causal: keys enter one at a time as running sums per bit (set_t, clear_t), read by the
  // queries that see them.
  void run_causal(const Sequence& seq, Index kv_group, Index kv_head, const Buffers& buf) const {
    const Index bits = plan_.bits, dv = plan_.dv, batch = seq.batch;
    std::fill(buf.sums, buf.sums + 2 * bits * plan_.sum_row, 0.0f);
    std::fill(buf.vsum, buf.vsum + dv, 0.0f);
    std::fill(buf.count, buf.count + bits, std::int64_t{0});
    // Bottom-right aligned: query i sees keys j <= i + kv_len - q_len.
    const Index offset = seq.kv_len - seq.q_len;
    Index seen = 0;
    for (Index i = 0; i < seq.q_len; ++i) {
      const Index visible = std::clamp<Index>(i + offset + 1, 0, seq.kv_len);
      for (; seen < visible; ++seen) {
        if (seen + kAhead < seq.kv_len) prefetch_rows(v_.at(batch, seen + kAhead, kv_head, 0), 0, 1, dv);
        add_key(buf.kcodes[seen], v_.at(batch, seen, kv_head, 0), buf);
      }
      for (Index h = 0; h < plan_.group; ++h) {
        float* out_row = out_.at(batch, i, kv_group * plan_.group + h, 0);
        if (i + kAhead < seq.q_len)
          prefetch_rows<true>(out_.at(batch, i + kAhead, kv_group * plan_.group + h, 0), 0, 1, dv);
        if (seen == 0)
          std::fill(out_row, out_row + dv, 0.0f);
        else
          read_query(buf.qcodes[h * plan_.q_len + i], seen, out_row, buf);
      }
    }
  }

  // Adds one key to the sums by the signs of its code: V += v; per bit t, v goes to set_t (bit set,
  // c_t += 1) or to clear_t (bit clear). Additions only.
  void add_key(std::uint64_t code, const float* v_row, const Buffers& buf) const {
    for (Index t = 0; t < plan_.bits; ++t) {
      const bool bit = (code >> t) & 1u;
      add_to<V>(v_row, bit_sum(buf, t, bit), plan_.dv);
      buf.count[t] += bit;
    }
    add_to<V>(v_row, buf.vsum, plan_.dv);
  }

  // One output row from the sums over the `seen` keys: with agree_t the sum over keys whose bit t
  // matches the query's (set_t or clear_t), w_ij = 1 + 2 * (agreeing bits), so
  //   num = V + 2 Σ_t agree_t,  den = N + 2 Σ_t #agreeing keys_t   (integers).
  // Every term is a plain sum of values (no large terms that cancel).
  void read_query(std::uint64_t code, Index seen, float* out_row, const Buffers& buf) const {
    const Index dv = plan_.dv;
    const float* rows[EcoFormer::kMaxBits];
    std::int64_t agree = 0;
    for (Index t = 0; t < plan_.bits; ++t) {
      const bool bit = (code >> t) & 1u;
      rows[t] = bit_sum(buf, t, bit);
      agree += bit ? buf.count[t] : seen - buf.count[t];
    }
    sum_rows_divide<V>(rows, plan_.bits, buf.vsum, static_cast<float>(seen + 2 * agree), out_row, dv);
  }

  // Codes of rows [0, rows) of x[batch, :, head] with A head a_head, written to codes. With sigma
  // set every chunk is hashed at once; otherwise the anchor dots of every row are kept until the
  // mean squared anchor distance is known, so the rows are read once either way.
  void hash_rows(const View<const float, 4>& x, Index batch, Index head, Index a_head, Index rows, std::uint64_t* codes,
                 const Buffers& buf) const {
    if (rows == 0) return;
    const Index mp = plan_.m_pad;
    const float* a_t = a_t_ + a_head * mp * plan_.bits_pad;  // (m_pad, bits_pad)
    if (options_.sigma) {
      const float inv_two_sigma = 0.5f / *options_.sigma;
      for (Index r0 = 0; r0 < rows; r0 += kHashChunk) {
        const Index n = std::min(kHashChunk, rows - r0);
        anchor_dots(x, batch, head, rows, r0, n, buf.dots, buf.norms, buf);
        codes_of(buf.dots, buf.norms, n, inv_two_sigma, a_t, codes + r0, buf);
      }
      return;
    }
    // sigma = mean_{r, j} |x_r - a_j|² = mean_r (|x_r|² - 2 mean_j x_r · a_j) + mean_j |a_j|².
    double total = 0;
    for (Index r0 = 0; r0 < rows; r0 += kHashChunk) {
      const Index n = std::min(kHashChunk, rows - r0);
      float* dots = buf.dots + r0 * mp;
      anchor_dots(x, batch, head, rows, r0, n, dots, buf.norms + r0, buf);
      for (Index r = 0; r < n; ++r)
        total += double(buf.norms[r0 + r]) - 2.0 * double(sum<V>(dots + r * mp, mp)) / static_cast<double>(plan_.m);
    }
    const double sigma = total / static_cast<double>(rows) + mean_norm_;
    const float inv_two_sigma = sigma > 0 ? static_cast<float>(0.5 / sigma) : 0.0f;  // 0: kappa = 1
    for (Index r0 = 0; r0 < rows; r0 += kHashChunk)
      codes_of(buf.dots + r0 * mp, buf.norms + r0, std::min(kHashChunk, rows - r0), inv_two_sigma, a_t, codes + r0,
               buf);
  }

  // dots (chunk, m_pad) = x_r · a_j and norms[r] = |x_r|² for rows r0 .. r0 + n - 1 (n <= chunk) of
  // the `rows` rows being hashed; rows past n are dots of zero rows.
  void anchor_dots(const View<const float, 4>& x, Index batch, Index head, Index rows, Index r0, Index n, float* dots,
                   float* norms, const Buffers& buf) const {
    const Index d = plan_.d, mp = plan_.m_pad;
    const Index next = std::min(kHashChunk, rows - r0 - n);  // the chunk after this one
    if (next > 0) prefetch_rows(x.at(batch, r0 + n, head, 0), x.stride(1), next, d);
    // A full chunk is read in place; the last, partial one is copied and padded with zero rows.
    const float* rows_in = x.at(batch, r0, head, 0);
    Index ld = x.stride(1);
    if (n < kHashChunk) {
      for (Index r = 0; r < n; ++r) {
        const float* src = x.at(batch, r0 + r, head, 0);
        std::copy(src, src + d, buf.rows + r * d);
      }
      std::fill(buf.rows + n * d, buf.rows + kHashChunk * d, 0.0f);
      rows_in = buf.rows;
      ld = d;
    }
    std::fill(dots, dots + kHashChunk * mp, 0.0f);
    gemm_accumulate<V>(kHashChunk, mp, d, rows_in, ld, anchors_t_, mp, dots, mp);  // (chunk, m_pad) = X aᵀ
    for (Index r = 0; r < n; ++r) norms[r] = dot<V>(rows_in + r * ld, rows_in + r * ld, d);
  }

  // codes[r] for r < n from the chunk's anchor dots (chunk, m_pad), turned into kappa in place:
  //   kappa_j = exp(-max(|x|² - 2 x·a_j + |a_j|², 0) / (2 sigma)) - mvec_j,  y = kappa Aᵀ,
  //   bit t of the code = y_t > 0.
  void codes_of(float* dots, const float* norms, Index n, float inv_two_sigma, const float* a_t, std::uint64_t* codes,
                const Buffers& buf) const {
    using Ops = VecOps<V>;
    constexpr int W = Ops::width;
    const Index mp = plan_.m_pad, bp = plan_.bits_pad, bits = plan_.bits;
    const V scale = Ops::broadcast(-inv_two_sigma), two = Ops::broadcast(2.0f);
    for (Index r = 0; r < n; ++r) {
      float* row = dots + r * mp;
      const V norm = Ops::broadcast(norms[r]);
      for (Index j = 0; j < mp; j += W) {
        const V dist = Ops::max(norm + Ops::load(anchor_norms_ + j) - two * Ops::load(row + j), Ops::zero());
        Ops::store(row + j, exp_approx(dist * scale) - Ops::load(mvec_ + j));
      }
    }
    std::fill(dots + n * mp, dots + kHashChunk * mp, 0.0f);
    std::fill(buf.y, buf.y + kHashChunk * bp, 0.0f);
    gemm_accumulate<V>(kHashChunk, bp, mp, dots, mp, a_t, bp, buf.y, bp);  // (chunk, bits_pad) = kappa Aᵀ
    const std::uint64_t used =
        bits == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << bits) - 1;  // zero columns past bits
    for (Index r = 0; r < n; ++r) {
      const float* y = buf.y + r * bp;
      std::uint64_t code = 0;
      for (Index t = 0; t < bp; t += W) code |= std::uint64_t{Ops::positive_lanes(Ops::load(y + t))} << t;
      codes[r] = code & used;
    }
  }

  View<const float, 4> q_, k_, v_;
  View<float, 4> out_;
  AttentionShape shape_;
  SequenceLayout seqs_;
  EcoPlan plan_;
  const EcoFormer::Options& options_;
  float* anchors_t_ = nullptr;     // (d, m_pad)
  float* anchor_norms_ = nullptr;  // (m_pad): |a_j|², zero past m
  float* mvec_ = nullptr;          // (m_pad): zero past m
  double mean_norm_ = 0;           // mean_j |a_j|²
  float* a_t_ = nullptr;           // (kv_heads, m_pad, bits_pad), zero past m and bits
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
    return workspace_of(detail::make_eco_plan<V>(shape, SequenceLayout::padded(shape, args.lengths), hash, options_));
  }

  void operator()(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
                  const EcoFormerHash& hash, const View<float, 4>& out, const Args& args = {}) const {
    const AttentionShape shape = attention_shape(q, k, v, &out);
    check_hash(shape, hash);
    const SequenceLayout seqs = SequenceLayout::padded(shape, args.lengths);
    const detail::EcoPlan plan = detail::make_eco_plan<V>(shape, seqs, hash, options_);
    if (plan.items == 0 || plan.q_len == 0) return;
    detail::zero_rows_past_lengths(out, seqs);
    const detail::ScopedWorkspace workspace(args.workspace, workspace_of(plan));
    const detail::EcoKernel<V> kernel(q, k, v, out, shape, seqs, hash, plan, options_,
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
