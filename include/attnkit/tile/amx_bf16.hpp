// Q · Kᵀ and P · V on AMX-BF16 tiles (tdpbf16ps) for bfloat16 Q, K and V, packed prefill. A tile
// is 16 rows of 64 bytes; one tdpbf16ps adds to a (16, 16) float tile C the products of A, 16 rows
// of 16 bfloat16 pairs, and B, 16 pair rows of 16 columns: C[m][n] += Σ_k A[m][k] . B[k][n], each
// term the two products of a pair. Products of two bfloat16 are exact in float; sums are float.
// The products run in passes of 32 rows (two tiles of rows).
//   Layouts (words: 32-bit, a pair of bfloat16, the low half first):
//   query rows      (rows, words), a row's pairs (pack_query_pairs), zero past head_dim
//   key panels      (ceil(keys / 32) * 2, words, 16): pack_amx_keys, words = amx_pair_words
//   value strips    (ceil(v_dim / 16), ceil(keys / 32) * 16, 16): pair row j of a 32-key step s
//                   holds keys 32 s + j (low) and 32 s + 16 + j (high) of 16 columns
//   probabilities   (32, keys / 2): word j of step s holds p[32 s + j] and p[32 s + 16 + j],
//                   rounded to bfloat16 (nearest even): the pairing of the value strips, so that
//                   whole vectors convert with no shuffle.
//   AmxBf16<V>   the two products on those layouts: the instructions where `native` (kernels on
//                an AVX-512 vector type, kAmxVector, on a CPU with AMX-BF16 whose OS granted the
//                tile state: amx_tiles_usable()), else an emulation on V in the instruction
//                definition's order (for each pair, a fused multiply-add
//                of the low half, then of the high half). Intel does not define the tiles' float
//                summation to the bit: on the one AMX host measured, 38% of outputs of a tile
//                product differ from that order in the last bits, so the emulation shares the
//                instruction's rounding of products and its error bound, not its bits.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <xsimd/xsimd.hpp>

#include "attnkit/backend/cpu.hpp"
#include "attnkit/backend/vec.hpp"
#include "attnkit/core/storage.hpp"
#include "attnkit/core/view.hpp"
#include "attnkit/tile/bf16_pairs.hpp"

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define ATTNKIT_AMX_ASM 1
#include <sys/syscall.h>
#include <unistd.h>
#else
#define ATTNKIT_AMX_ASM 0
#endif

namespace attnkit::tile {

inline constexpr Index kAmxRows = 16;      // rows of a tile: query rows, key pair rows
inline constexpr Index kAmxWords = 16;     // words per tile row (64 bytes); columns of C
inline constexpr Index kAmxKeyStep = 32;   // keys per P · V step (a row of A: 16 pairs)
inline constexpr Index kAmxPassRows = 32;  // rows of one pass of the products: two tiles of rows

// Words of a query row or key panel row: pair_words(head_dim) rounded up to whole tile rows.
constexpr Index amx_pair_words(Index head_dim) {
  return (pair_words(head_dim) + kAmxWords - 1) / kAmxWords * kAmxWords;
}

// Words a packed key block of `keys` keys occupies: whole 32-key steps of panels.
constexpr Index amx_key_words(Index keys, Index words) {
  return (keys + kAmxKeyStep - 1) / kAmxKeyStep * kAmxKeyStep * words;
}

// packed (key panels, see the header) from k: rows j at k + j * row_stride, (head_dim); keys
// past the block zero up to a whole 32-key step.
inline void pack_amx_keys(const bfloat16* k, Index row_stride, Index keys, Index head_dim, Index words,
                          std::uint32_t* packed) {
  pack_key_pairs<kAmxWords>(k, row_stride, keys, head_dim, words, packed);
  const Index packed_keys = (keys + kAmxWords - 1) / kAmxWords * kAmxWords;
  std::fill(packed + packed_keys * words, packed + amx_key_words(keys, words), 0u);
}

// Words a packed value block of `keys` rows of v_dim columns occupies, and the words of one strip.
constexpr Index amx_value_strip_words(Index keys) {
  return (keys + kAmxKeyStep - 1) / kAmxKeyStep * kAmxRows * kAmxWords;
}
constexpr Index amx_value_words(Index keys, Index v_dim) {
  return (v_dim + kAmxWords - 1) / kAmxWords * amx_value_strip_words(keys);
}

// packed (value strips, see the header) from v: rows j at v + j * row_stride, (v_dim).
inline void pack_amx_values(const bfloat16* v, Index row_stride, Index keys, Index v_dim, std::uint32_t* packed) {
  const Index strip_words = amx_value_strip_words(keys);
  for (Index step = 0; step * kAmxKeyStep < keys; ++step)
    for (Index j = 0; j < kAmxRows; ++j) {
      const Index low = step * kAmxKeyStep + j, high = low + kAmxRows;
      std::uint32_t* out = packed + (step * kAmxRows + j) * kAmxWords;  // (16) words of each strip
      for (Index c0 = 0; c0 < v_dim; c0 += kAmxWords, out += strip_words) {
        const Index n = std::min(kAmxWords, v_dim - c0);
        if (high < keys) {
          const bfloat16* l = v + low * row_stride + c0;
          const bfloat16* h = v + high * row_stride + c0;
          for (Index c = 0; c < n; ++c) out[c] = std::uint32_t{l[c].bits} | std::uint32_t{h[c].bits} << 16;
        } else if (low < keys) {
          const bfloat16* l = v + low * row_stride + c0;
          for (Index c = 0; c < n; ++c) out[c] = l[c].bits;
        } else {
          std::fill(out, out + n, 0u);
        }
        std::fill(out + n, out + kAmxWords, 0u);
      }
    }
}

// p (32, keys / 2) words from s (rows, lds) probabilities, keys a multiple of 32; rows past
// `rows` are zero.
template <class V>
inline void pack_amx_probs(const float* s, Index lds, Index rows, Index keys, std::uint32_t* p) {
  using Ops = VecOps<V>;
  constexpr int W = Ops::width;
  static_assert(kAmxRows % W == 0);
  const Index words = keys / 2;
  for (Index r = 0; r < kAmxPassRows; ++r) {
    std::uint32_t* out = p + r * words;
    if (r >= rows) {
      std::fill(out, out + words, 0u);
      continue;
    }
    const float* row = s + r * lds;
    for (Index step = 0; step < keys; step += kAmxKeyStep)
      for (Index i = 0; i < kAmxRows; i += W)
        Ops::store_bf16_pairs(Ops::load(row + step + i), Ops::load(row + step + kAmxRows + i), out + step / 2 + i);
  }
}

// Vector types whose kernels run the instructions where the CPU has them: AVX-512 ones (every
// AMX CPU has AVX-512). Kernels on the others run the emulation, also on an AMX host.
template <class V>
inline constexpr bool kAmxVector = false;
template <class Arch>
inline constexpr bool kAmxVector<xsimd::batch<float, Arch>> = std::is_base_of_v<xsimd::avx512f, Arch>;

// True once the OS has granted this process the AMX tile state (Linux: arch_prctl
// ARCH_REQ_XCOMP_PERM), on a CPU with AMX-BF16; asked once.
inline bool amx_tiles_usable() {
  static const bool usable = [] {
    if (!cpu_features().amx_bf16) return false;
#if ATTNKIT_AMX_ASM
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
  }();
  return usable;
}

#if ATTNKIT_AMX_ASM
// The instructions, on tile registers named by number (the compiler does not allocate them).
#define ATTNKIT_TILE_ZERO(t) __asm__ volatile("tilezero %%tmm" #t ::)
#define ATTNKIT_TILE_LOAD(t, base, stride_bytes) \
  __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"(base), "r"(stride_bytes) : "memory")
#define ATTNKIT_TILE_STORE(t, base, stride_bytes) \
  __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"(base), "r"(stride_bytes) : "memory")
#define ATTNKIT_TILE_DP(c, a, b) __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)
#endif

template <class V>
class AmxBf16 {
 public:
  explicit AmxBf16(bool native) : native_(native && ATTNKIT_AMX_ASM) {}
  bool native() const { return native_; }

  // This thread's tiles, configured (every tile 16 rows of 64 bytes) from begin() until the
  // session ends; nothing when emulated.
  class Session {
   public:
    explicit Session(bool native) : native_(native) { configure(); }
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;
    ~Session() {
#if ATTNKIT_AMX_ASM
      if (native_) __asm__ volatile("tilerelease" ::: "memory");
#endif
    }

   private:
    void configure() const {
#if ATTNKIT_AMX_ASM
      if (!native_) return;
      struct alignas(64) Config {
        std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
        std::uint16_t bytes_per_row[16] = {};
        std::uint8_t rows[16] = {};
      } config;
      for (int t = 0; t < 8; ++t) {
        config.bytes_per_row[t] = kAmxWords * 4;
        config.rows[t] = kAmxRows;
      }
      __asm__ volatile("ldtilecfg %0" ::"m"(config));
#endif
    }
    bool native_;
  };
  [[nodiscard]] Session begin() const { return Session(native_); }

  // s (32, panels * 16), rows lds apart, = q (32, words), rows q_words apart, times the key
  // panels (panels, words, 16).
  void scores(const std::uint32_t* q, Index q_words, const std::uint32_t* k, Index words, Index panels, float* s,
              Index lds) const {
    product(q, q_words, k, words * kAmxWords, words / kAmxWords, panels, s, lds, Start::zero);
  }

  // acc (32, strips * 16), rows ldo apart, += p (32, steps * 16), rows p_words apart, times the
  // value strips (strips, strip_words), over `steps` 32-key steps.
  void accumulate(const std::uint32_t* p, Index p_words, const std::uint32_t* v, Index strip_words, Index steps,
                  Index strips, float* acc, Index ldo) const {
    product(p, p_words, v, strip_words, steps, strips, acc, ldo, Start::from_c);
  }

 private:
  enum class Start { zero, from_c };

  // c (32, panels * 16), rows ldc apart, = (start) + a (32, steps * 16) words, rows a_words
  // apart, times b: `panels` panels b_panel_words apart, each `steps` (16, 16)-word tiles. Native:
  // 2 x 2 tiles of c at a time (two row halves, two panels), the most the 8 tile registers hold
  // with their a and b tiles, so that four independent tdpbf16ps hide each other's latency.
  void product(const std::uint32_t* a, Index a_words, const std::uint32_t* b, Index b_panel_words, Index steps,
               Index panels, float* c, Index ldc, Start start) const {
    constexpr Index kTileWords = kAmxRows * kAmxWords;
#if ATTNKIT_AMX_ASM
    if (native_) {
      const Index a_stride = a_words * 4, c_stride = ldc * 4, b_stride = kAmxWords * 4;
      const std::uint32_t* a1 = a + kAmxRows * a_words;  // the second row half
      float* c1 = c + kAmxRows * ldc;
      Index panel = 0;
      for (; panel + 2 <= panels; panel += 2) {
        const std::uint32_t* b0 = b + panel * b_panel_words;
        const std::uint32_t* b1 = b0 + b_panel_words;
        float* c00 = c + panel * kAmxWords;
        float* c10 = c1 + panel * kAmxWords;
        if (start == Start::zero) {
          ATTNKIT_TILE_ZERO(0);
          ATTNKIT_TILE_ZERO(1);
          ATTNKIT_TILE_ZERO(2);
          ATTNKIT_TILE_ZERO(3);
        } else {
          ATTNKIT_TILE_LOAD(0, c00, c_stride);
          ATTNKIT_TILE_LOAD(1, c00 + kAmxWords, c_stride);
          ATTNKIT_TILE_LOAD(2, c10, c_stride);
          ATTNKIT_TILE_LOAD(3, c10 + kAmxWords, c_stride);
        }
        for (Index step = 0; step < steps; ++step) {
          ATTNKIT_TILE_LOAD(4, a + step * kAmxWords, a_stride);
          ATTNKIT_TILE_LOAD(5, a1 + step * kAmxWords, a_stride);
          ATTNKIT_TILE_LOAD(6, b0 + step * kTileWords, b_stride);
          ATTNKIT_TILE_LOAD(7, b1 + step * kTileWords, b_stride);
          ATTNKIT_TILE_DP(0, 4, 6);
          ATTNKIT_TILE_DP(1, 4, 7);
          ATTNKIT_TILE_DP(2, 5, 6);
          ATTNKIT_TILE_DP(3, 5, 7);
        }
        ATTNKIT_TILE_STORE(0, c00, c_stride);
        ATTNKIT_TILE_STORE(1, c00 + kAmxWords, c_stride);
        ATTNKIT_TILE_STORE(2, c10, c_stride);
        ATTNKIT_TILE_STORE(3, c10 + kAmxWords, c_stride);
      }
      if (panel < panels) {
        const std::uint32_t* b0 = b + panel * b_panel_words;
        float* c00 = c + panel * kAmxWords;
        float* c10 = c1 + panel * kAmxWords;
        if (start == Start::zero) {
          ATTNKIT_TILE_ZERO(0);
          ATTNKIT_TILE_ZERO(2);
        } else {
          ATTNKIT_TILE_LOAD(0, c00, c_stride);
          ATTNKIT_TILE_LOAD(2, c10, c_stride);
        }
        for (Index step = 0; step < steps; ++step) {
          ATTNKIT_TILE_LOAD(4, a + step * kAmxWords, a_stride);
          ATTNKIT_TILE_LOAD(5, a1 + step * kAmxWords, a_stride);
          ATTNKIT_TILE_LOAD(6, b0 + step * kTileWords, b_stride);
          ATTNKIT_TILE_DP(0, 4, 6);
          ATTNKIT_TILE_DP(2, 5, 6);
        }
        ATTNKIT_TILE_STORE(0, c00, c_stride);
        ATTNKIT_TILE_STORE(2, c10, c_stride);
      }
      return;
    }
#endif
    for (Index half = 0; half < kAmxPassRows; half += kAmxRows)
      for (Index panel = 0; panel < panels; ++panel) {
        float* tile = c + half * ldc + panel * kAmxWords;
        if (start == Start::zero)
          for (Index m = 0; m < kAmxRows; ++m) std::fill(tile + m * ldc, tile + m * ldc + kAmxWords, 0.0f);
        for (Index step = 0; step < steps; ++step)
          emulate_dp(tile, ldc, a + half * a_words + step * kAmxWords, a_words,
                     b + panel * b_panel_words + step * kTileWords);
      }
  }

  // c (16, 16), rows ldc apart, += a (16, 16) words, rows lda apart, times b (16, 16) words.
  static void emulate_dp(float* c, Index ldc, const std::uint32_t* a, Index lda, const std::uint32_t* b) {
    using Ops = VecOps<V>;
    constexpr int W = Ops::width;
    constexpr int kParts = kAmxWords / W;
    for (Index m = 0; m < kAmxRows; ++m) {
      V sum[kParts];
      for (int i = 0; i < kParts; ++i) sum[i] = Ops::load(c + m * ldc + i * W);
      for (Index k = 0; k < kAmxWords; ++k) {
        float a_low = 0.0f, a_high = 0.0f;
        VecOps<float>::load_pair_halves(a + m * lda + k, a_low, a_high);
        const V low = Ops::broadcast(a_low), high = Ops::broadcast(a_high);
        for (int i = 0; i < kParts; ++i) {
          V b_low, b_high;
          Ops::load_pair_halves(b + k * kAmxWords + i * W, b_low, b_high);
          sum[i] = Ops::fma(high, b_high, Ops::fma(low, b_low, sum[i]));
        }
      }
      for (int i = 0; i < kParts; ++i) Ops::store(c + m * ldc + i * W, sum[i]);
    }
  }

  bool native_;
};

#if ATTNKIT_AMX_ASM
#undef ATTNKIT_TILE_ZERO
#undef ATTNKIT_TILE_LOAD
#undef ATTNKIT_TILE_STORE
#undef ATTNKIT_TILE_DP
#endif

}  // namespace attnkit::tile
