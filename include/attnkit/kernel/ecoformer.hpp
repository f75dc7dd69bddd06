// The EcoFormer kernel (mechanism/ecoformer.hpp, whose header comment gives the algorithm):
// hashing rows into binary codes by two small GEMMs per chunk of rows, then the linear-time sums
// of the kernelised attention (nibble tables non-causal, running per-bit sums causal; the causal
// alignment from tile::CausalMask).
//   EcoPlan       sizes of one call, a function of the shape, m, bits and the options only; it owns
//                 every buffer extent and padding.
//   EcoScratch    one thread's scratch, EcoWorkspace the whole workspace (shared hash parameters,
//                 then the threads' scratch): carve() is the only description of either layout.
//   EcoKernel     runs the (batch entry, kv head) work items.
// Not here: options, validation and the hash parameter struct (mechanism/ecoformer.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>

#include "attnkit/backend/arrays.hpp"
#include "attnkit/backend/exp.hpp"
#include "attnkit/backend/vec.hpp"
#include "attnkit/core/error.hpp"
#include "attnkit/core/shape.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/core/workspace.hpp"
#include "attnkit/core/workspace_layout.hpp"
#include "attnkit/kernel/feature.hpp"
#include "attnkit/tile/mask.hpp"
#include "attnkit/tile/microkernel.hpp"
#include "attnkit/tile/tile_shape.hpp"

namespace attnkit::detail {

inline constexpr Index kHashChunk = 60;  // rows hashed per GEMM block: a multiple of every tile's rows
inline constexpr Index kAhead = 8;       // rows prefetched ahead of strided row streams
inline constexpr Index kNibble = 4;      // code bits per bucket group of the non-causal sums
inline constexpr Index kNibbleCodes = Index{1} << kNibble;

// Codes fill at most one 64-bit word.
inline constexpr Index kEcoMaxBits = 64;

// Sizes of one EcoFormer call.
struct EcoPlan {
  Index m = 0, d = 0, bits = 0, dv = 0;
  Index m_pad = 0, bits_pad = 0;  // padded to the vector width (zero anchors, zero A columns)
  Index kv_heads = 0, group = 1, kv_groups = 0;
  Index items = 0;              // sequences * kv_groups; 0 without query rows (nothing to do)
  Index q_len = 0, kv_len = 0;  // the views' extents: every sequence's lengths are at most these
  bool causal = false;
  Index nibbles = 0;              // ceil(bits / kNibble): bucket groups of the non-causal sums
  Index sum_row = 0;              // floats between rows of the sums: dv padded to the vector width, plus one
                                  // vector, so rows 4 KiB apart (which the CPU confuses) are rare
  Index dot_rows = 0;             // rows of the anchor dots buffer: a chunk (sigma set) or every row of q or k
  std::size_t scratch_bytes = 0;  // per thread: EcoScratch::carve
};

// One thread's scratch.
struct EcoScratch {
  float *rows = nullptr, *dots = nullptr, *norms = nullptr, *y = nullptr;
  std::uint64_t *kcodes = nullptr, *qcodes = nullptr;
  std::uint8_t *kbad = nullptr, *qbad = nullptr;
  float *vsum = nullptr, *sums = nullptr, *marginals = nullptr;
  std::int64_t* count = nullptr;

  static EcoScratch carve(Arena& arena, const EcoPlan& p) {
    EcoScratch b;
    b.rows = arena.take<float>(kHashChunk * p.d);             // (chunk, d): a partial chunk's rows, zero-padded
    b.dots = arena.take<float>(p.dot_rows * p.m_pad);         // (dot_rows, m_pad): anchor dots, then kappa
    b.norms = arena.take<float>(p.dot_rows);                  // (dot_rows): |x|² per row
    b.y = arena.take<float>(kHashChunk * p.bits_pad);         // (chunk, bits_pad): projections y
    b.kcodes = arena.take<std::uint64_t>(p.kv_len);           // (kv_len): key codes
    b.qcodes = arena.take<std::uint64_t>(p.group * p.q_len);  // (group, q_len): query codes per out head
    b.kbad = arena.take<std::uint8_t>(p.kv_len);              // (kv_len): key projection has a NaN
    b.qbad = arena.take<std::uint8_t>(p.group * p.q_len);     // (group, q_len): the same for queries
    b.vsum = arena.take<float>(p.dv);                         // (dv): V
    if (p.causal) {
      b.sums = arena.take<float>(2 * p.bits * p.sum_row);  // (bits, set / clear, sum_row)
      b.count = arena.take<std::int64_t>(p.bits);          // (bits): c
    } else {
      b.sums = arena.take<float>(p.nibbles * kNibbleCodes * p.sum_row);  // (nibbles, 16, sum_row): buckets, then tables
      b.marginals = arena.take<float>(2 * kNibble * p.sum_row);          // (4, set / clear, sum_row)
      b.count = arena.take<std::int64_t>(p.nibbles * kNibbleCodes);      // (nibbles, 16): their key counts
    }
    return b;
  }
};

// The whole workspace: anchorsᵀ, anchor norms, mvec and Aᵀ (written once, read by all threads),
// then the threads' scratch.
struct EcoWorkspace {
  float* anchors_t = nullptr;     // (d, m_pad)
  float* anchor_norms = nullptr;  // (m_pad)
  float* mvec = nullptr;          // (m_pad)
  float* a_t = nullptr;           // (kv_heads, m_pad, bits_pad)
  std::byte* scratch = nullptr;   // (threads, scratch_bytes)

  static EcoWorkspace carve(Arena& arena, const EcoPlan& p, int threads) {
    EcoWorkspace w;
    w.anchors_t = arena.take<float>(p.d * p.m_pad);
    w.anchor_norms = arena.take<float>(p.m_pad);
    w.mvec = arena.take<float>(p.m_pad);
    w.a_t = arena.take<float>(p.kv_heads * p.m_pad * p.bits_pad);
    w.scratch = take_thread_slots(arena, p, threads);
    return w;
  }
};

// m anchors, `bits` code bits; sigma_set: the kernel width is fixed (else the mean distance).
template <class V>
EcoPlan make_eco_plan(const AttentionShape& shape, const SequenceLayout& seqs, Index m, Index bits, bool causal,
                      bool sigma_set) {
  constexpr Index W = VecOps<V>::width;
  static_assert(kHashChunk % RegisterTile<V>::mr == 0, "full hash chunks are read in place");
  EcoPlan p;
  p.m = m;
  p.d = shape.head_dim;
  p.bits = bits;
  p.dv = shape.v_dim;
  p.m_pad = (p.m + W - 1) / W * W;
  p.bits_pad = (p.bits + W - 1) / W * W;
  p.kv_heads = shape.heads.kv_heads;
  p.group = shape.heads.group();
  p.kv_groups = shape.heads.out_heads() / p.group;
  p.items = shape.q_len == 0 ? 0 : seqs.count() * p.kv_groups;
  p.q_len = shape.q_len;
  p.kv_len = shape.kv_len;
  p.causal = causal;
  p.nibbles = (p.bits + kNibble - 1) / kNibble;
  p.sum_row = (p.dv + W - 1) / W * W + W;
  const Index longest = std::max(p.q_len, p.kv_len);
  p.dot_rows = sigma_set ? kHashChunk : (longest + kHashChunk - 1) / kHashChunk * kHashChunk;
  p.scratch_bytes = scratch_bytes_of<EcoScratch>(p);
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
  // anchors (m, d), mvec (m), a (kv_heads, bits, m): the hash parameters; sigma: the kernel width,
  // or none (per (batch entry, head) mean squared anchor distance).
  EcoKernel(const View<const float, 4>& q, const View<const float, 4>& k, const View<const float, 4>& v,
            const View<float, 4>& out, const AttentionShape& shape, const SequenceLayout& seqs,
            const View<const float, 2>& anchors, const View<const float, 1>& mvec, const View<const float, 3>& a,
            const EcoPlan& plan, std::optional<float> sigma, void* workspace, int slots)
      : q_(q),
        k_(k),
        v_(v),
        out_(out),
        shape_(shape),
        seqs_(seqs),
        plan_(plan),
        sigma_(sigma),
        arena_(workspace, workspace_bytes_of<EcoWorkspace>(plan, slots)) {
    ATTNKIT_CHECK(plan.dot_rows == kHashChunk || !sigma, "ecoformer kernel: plan made without sigma (internal error)");
    const Index m = plan.m, mp = plan.m_pad, bp = plan.bits_pad;
    const EcoWorkspace w = EcoWorkspace::carve(arena_, plan, slots);
    anchors_t_ = w.anchors_t;
    anchor_norms_ = w.anchor_norms;
    mvec_ = w.mvec;
    a_t_ = w.a_t;
    std::fill(anchors_t_, anchors_t_ + plan.d * mp, 0.0f);
    std::fill(anchor_norms_, anchor_norms_ + mp, 0.0f);
    std::fill(mvec_, mvec_ + mp, 0.0f);
    std::fill(a_t_, a_t_ + shape.heads.kv_heads * mp * bp, 0.0f);
    for (Index j = 0; j < m; ++j) {
      float norm = 0;
      for (Index f = 0; f < plan.d; ++f) {
        const float x = anchors(j, f);
        anchors_t_[f * mp + j] = x;
        norm += x * x;
      }
      anchor_norms_[j] = norm;
      mvec_[j] = mvec(j);
    }
    mean_norm_ = 0;
    for (Index j = 0; j < m; ++j) mean_norm_ += anchor_norms_[j] / static_cast<double>(m);
    for (Index h = 0; h < shape.heads.kv_heads; ++h)
      for (Index t = 0; t < plan.bits; ++t)
        for (Index j = 0; j < m; ++j) a_t_[(h * mp + j) * bp + t] = a(h, t, j);
    scratch_ = w.scratch;
  }

  void run_item(Index item, int slot) const {
    const Sequence seq = seqs_[item / plan_.kv_groups];
    const Index kv_group = item % plan_.kv_groups;
    const Index kv_head = shape_.heads.kv_head(kv_group * plan_.group);
    Arena arena = thread_slot(scratch_, plan_, slot);
    const EcoScratch buf = EcoScratch::carve(arena, plan_);

    hash_rows(k_, seq.batch, kv_head, kv_head, seq.kv_len, buf.kcodes, buf.kbad, buf);
    for (Index h = 0; h < plan_.group; ++h) {
      const Index out_head = kv_group * plan_.group + h;
      hash_rows(q_, seq.batch, shape_.heads.q_head(out_head), kv_head, seq.q_len, buf.qcodes + h * plan_.q_len,
                buf.qbad + h * plan_.q_len, buf);
    }
    if (plan_.causal)
      run_causal(seq, kv_group, kv_head, buf);
    else
      run_non_causal(seq, kv_group, kv_head, buf);
    write_nan_rows(seq, kv_group, buf);
  }

 private:
  // Row of the sums: set_t (set) or clear_t of bit t (causal), or table entry (g, p) (non-causal).
  float* bit_sum(const EcoScratch& buf, Index t, bool set) const { return buf.sums + (2 * t + !set) * plan_.sum_row; }
  float* table_row(const EcoScratch& buf, Index g, Index p) const {
    return buf.sums + (g * kNibbleCodes + p) * plan_.sum_row;
  }

  // A NaN projection has no code: its weights are NaN, and so is every row that weighs it (a query
  // whose projection is NaN, or one that sees such a key). Rows that see no key stay zeros.
  void write_nan_rows(const Sequence& seq, Index kv_group, const EcoScratch& buf) const {
    const Index first_bad_key = static_cast<Index>(std::find(buf.kbad, buf.kbad + seq.kv_len, 1) - buf.kbad);
    for (Index h = 0; h < plan_.group; ++h)
      for (Index i = 0; i < seq.q_len; ++i) {
        const Index seen = plan_.causal ? tile::CausalMask::visible(i, seq.q_len, seq.kv_len).end : seq.kv_len;
        if (seen == 0 || (buf.qbad[h * plan_.q_len + i] == 0 && seen <= first_bad_key)) continue;
        float* out_row = out_.at(seq.batch, i, kv_group * plan_.group + h, 0);
        std::fill(out_row, out_row + plan_.dv, std::numeric_limits<float>::quiet_NaN());
      }
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
  void run_non_causal(const Sequence& seq, Index kv_group, Index kv_head, const EcoScratch& buf) const {
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

    const float* rows[kEcoMaxBits / kNibble];
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
  void nibble_table(Index g, Index n, const EcoScratch& buf) const {
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
  void run_causal(const Sequence& seq, Index kv_group, Index kv_head, const EcoScratch& buf) const {
    const Index bits = plan_.bits, dv = plan_.dv, batch = seq.batch;
    std::fill(buf.sums, buf.sums + 2 * bits * plan_.sum_row, 0.0f);
    std::fill(buf.vsum, buf.vsum + dv, 0.0f);
    std::fill(buf.count, buf.count + bits, std::int64_t{0});
    Index seen = 0;
    for (Index i = 0; i < seq.q_len; ++i) {
      const Index visible = tile::CausalMask::visible(i, seq.q_len, seq.kv_len).end;
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
  void add_key(std::uint64_t code, const float* v_row, const EcoScratch& buf) const {
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
  void read_query(std::uint64_t code, Index seen, float* out_row, const EcoScratch& buf) const {
    const Index dv = plan_.dv;
    const float* rows[kEcoMaxBits];
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
                 std::uint8_t* bad, const EcoScratch& buf) const {
    if (rows == 0) return;
    const Index mp = plan_.m_pad;
    const float* a_t = a_t_ + a_head * mp * plan_.bits_pad;  // (m_pad, bits_pad)
    if (sigma_) {
      const float inv_two_sigma = 0.5f / *sigma_;
      for (Index r0 = 0; r0 < rows; r0 += kHashChunk) {
        const Index n = std::min(kHashChunk, rows - r0);
        anchor_dots(x, batch, head, rows, r0, n, buf.dots, buf.norms, buf);
        codes_of(buf.dots, buf.norms, n, inv_two_sigma, a_t, codes + r0, bad + r0, buf);
      }
      return;
    }
    // sigma = mean_{r, j} |x_r - a_j|² = mean_r (|x_r|² - 2 mean_j x_r · a_j) + mean_j |a_j|².
    // The expansion cancels: its float rounding is about eps (|x_r|² + |a|²), so a sigma below a few
    // times that is a zero sigma (rows on the anchors), which the twin computes exactly.
    double total = 0, magnitude = 0;
    for (Index r0 = 0; r0 < rows; r0 += kHashChunk) {
      const Index n = std::min(kHashChunk, rows - r0);
      float* dots = buf.dots + r0 * mp;
      anchor_dots(x, batch, head, rows, r0, n, dots, buf.norms + r0, buf);
      for (Index r = 0; r < n; ++r) {
        const float norm = buf.norms[r0 + r];  // a non-finite row: distances inf (or NaN), as the norm
        total += std::isfinite(norm)
                     ? double(norm) - 2.0 * double(sum<V>(dots + r * mp, mp)) / static_cast<double>(plan_.m)
                     : double(norm);
        magnitude += double(norm);
      }
    }
    const double rounding =
        16.0 * std::numeric_limits<float>::epsilon() * (magnitude / static_cast<double>(rows) + mean_norm_);
    double sigma = total / static_cast<double>(rows) + mean_norm_;
    if (sigma <= rounding) sigma = 0;  // NaN stays NaN
    // 0: kappa = 1; inf (an infinite row): kappa = 1 for finite rows, NaN for infinite ones; NaN: NaN.
    // 1 / (2 sigma) past FLT_MAX is FLT_MAX, so a distance of 0 still gives kappa = 1, not 0 · inf.
    const float inv_two_sigma =
        sigma == 0 ? 0.0f : static_cast<float>(std::min(0.5 / sigma, double(std::numeric_limits<float>::max())));
    for (Index r0 = 0; r0 < rows; r0 += kHashChunk)
      codes_of(buf.dots + r0 * mp, buf.norms + r0, std::min(kHashChunk, rows - r0), inv_two_sigma, a_t, codes + r0,
               bad + r0, buf);
  }

  // dots (chunk, m_pad) = x_r · a_j and norms[r] = |x_r|² for rows r0 .. r0 + n - 1 (n <= chunk) of
  // the `rows` rows being hashed; rows past n are dots of zero rows.
  void anchor_dots(const View<const float, 4>& x, Index batch, Index head, Index rows, Index r0, Index n, float* dots,
                   float* norms, const EcoScratch& buf) const {
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
  //   bit t of the code = y_t > 0; bad[r] = 1 when a y_t is NaN. A row with an infinite (or NaN)
  //   norm is at distance inf (NaN) from every anchor, not inf - inf.
  void codes_of(float* dots, const float* norms, Index n, float inv_two_sigma, const float* a_t, std::uint64_t* codes,
                std::uint8_t* bad, const EcoScratch& buf) const {
    using Ops = VecOps<V>;
    constexpr int W = Ops::width;
    const Index mp = plan_.m_pad, bp = plan_.bits_pad, bits = plan_.bits;
    const V scale = Ops::broadcast(-inv_two_sigma), two = Ops::broadcast(2.0f);
    for (Index r = 0; r < n; ++r) {
      float* row = dots + r * mp;
      const V norm = Ops::broadcast(norms[r]);
      const bool finite = std::isfinite(norms[r]);
      for (Index j = 0; j < mp; j += W) {
        const V dist =
            finite ? Ops::max(norm + Ops::load(anchor_norms_ + j) - two * Ops::load(row + j), Ops::zero()) : norm;
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
      bad[r] = std::any_of(y, y + bits, [](float value) { return std::isnan(value); }) ? 1 : 0;
    }
  }

  View<const float, 4> q_, k_, v_;
  View<float, 4> out_;
  AttentionShape shape_;
  SequenceLayout seqs_;
  EcoPlan plan_;
  std::optional<float> sigma_;
  Arena arena_;                    // the whole workspace; its guards (sanitize builds) are checked when the kernel ends
  float* anchors_t_ = nullptr;     // (d, m_pad)
  float* anchor_norms_ = nullptr;  // (m_pad): |a_j|², zero past m
  float* mvec_ = nullptr;          // (m_pad): zero past m
  double mean_norm_ = 0;           // mean_j |a_j|²
  float* a_t_ = nullptr;           // (kv_heads, m_pad, bits_pad), zero past m and bits
  std::byte* scratch_ = nullptr;
};

}  // namespace attnkit::detail
