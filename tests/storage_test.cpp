// Reduced-precision storage (core/storage.hpp): the bfloat16 and float16 conversions against
// their definition (round to nearest even, checked at every representable value and midpoint),
// the vector loads of every backend, and Attention<Dense> with bfloat16 / float16 Q, K, V and
// out on every backend and dispatched ISA variant, against the double and float references on
// the stored (rounded) values.
#include <catch2/catch.hpp>

#include <attnkit/reference/dense.hpp>
#include <bit>
#include <cstring>

#include "test_util.hpp"

namespace ak = attnkit;
using ak::Index;
using ak::test::Layout;
using ak::test::Tensor4;

namespace {

// Every finite value of a 16-bit format in increasing order of magnitude, as (bits, value).
template <class T>
std::vector<std::pair<std::uint16_t, float>> finite_positive_values() {
  std::vector<std::pair<std::uint16_t, float>> values;
  for (std::uint32_t bits = 0; bits < 0x8000u; ++bits) {
    const float x = static_cast<float>(T::from_bits(static_cast<std::uint16_t>(bits)));
    if (std::isfinite(x)) values.emplace_back(static_cast<std::uint16_t>(bits), x);
  }
  return values;
}

// Rounding to nearest even at every representable value and every midpoint between neighbours,
// with both signs; values one float ulp either side of a midpoint round to the nearer neighbour.
template <class T>
void check_round_to_nearest_even(float largest_finite_midpoint_up) {
  const auto values = finite_positive_values<T>();
  REQUIRE(values.size() > 1000);
  for (std::size_t i = 0; i < values.size(); ++i) {
    const auto [bits, x] = values[i];
    for (const float sign : {1.0f, -1.0f}) {
      const std::uint16_t sign_bit = sign < 0 ? 0x8000u : 0u;
      CHECK(T(sign * x).bits == (bits | sign_bit));
      if (i + 1 == values.size()) continue;
      const auto [next_bits, next] = values[i + 1];
      const float mid = x / 2 + next / 2;  // exact: a 16-bit format has far fewer mantissa bits
      REQUIRE(static_cast<double>(mid) == (static_cast<double>(x) + next) / 2);
      const std::uint16_t even = (bits & 1u) == 0 ? bits : next_bits;
      CHECK(T(sign * mid).bits == (even | sign_bit));
      CHECK(T(sign * std::nextafter(mid, 0.0f)).bits == (bits | sign_bit));
      CHECK(T(sign * std::nextafter(mid, INFINITY)).bits == (next_bits | sign_bit));
    }
  }
  // Past the largest finite value, from the midpoint to the next binade, is infinity.
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(static_cast<float>(T(largest_finite_midpoint_up)) == inf);
  CHECK(static_cast<float>(T(std::nextafter(largest_finite_midpoint_up, 0.0f))) == values.back().second);
  CHECK(static_cast<float>(T(inf)) == inf);
  CHECK(static_cast<float>(T(-inf)) == -inf);
  CHECK(static_cast<float>(T(std::numeric_limits<float>::max())) == inf);
}

// NaN stays NaN with its sign, whatever its payload (a truncated payload must not become inf).
template <class T>
void check_nan_kept() {
  for (const std::uint32_t bits : {0x7fc00000u, 0x7f800001u, 0x7fa00000u, 0xff800001u, 0xffffffffu, 0x7f801000u}) {
    const float nan = std::bit_cast<float>(bits);
    const T x(nan);
    INFO("float bits " << std::hex << bits << " -> " << x.bits);
    CHECK(std::isnan(static_cast<float>(x)));
    CHECK(std::signbit(static_cast<float>(x)) == std::signbit(nan));
  }
}

TEST_CASE("bfloat16 rounds to nearest even and keeps NaN", "[storage]") {
  // The largest finite bfloat16 is (2 - 2^-7) * 2^127; halfway to 2^128 rounds up to infinity.
  check_round_to_nearest_even<ak::bfloat16>(static_cast<float>((2.0 - 0x1p-8) * 0x1p127));
  check_nan_kept<ak::bfloat16>();
}

TEST_CASE("float16 rounds to nearest even (subnormals included) and keeps NaN", "[storage]") {
  check_round_to_nearest_even<ak::float16>(65520.0f);  // 65504 is the largest finite float16
  check_nan_kept<ak::float16>();
  // Below half the smallest subnormal (2^-25) is zero; just above it the smallest subnormal.
  CHECK(ak::float16(0x1p-25f).bits == 0);
  CHECK(ak::float16(std::nextafter(0x1p-25f, 1.0f)).bits == 1);
  CHECK(ak::float16(1e-30f).bits == 0);
  CHECK(ak::float16(-1e-30f).bits == 0x8000u);
}

TEST_CASE("float16 to float: the run-time conversion equals the definition at every value", "[storage]") {
  static_assert(static_cast<float>(ak::float16::from_bits(0x3c00)) == 1.0f);
  static_assert(static_cast<float>(ak::float16::from_bits(0x0001)) == 0x1p-24f);
  static_assert(static_cast<float>(ak::float16::from_bits(0xfbff)) == -65504.0f);
  for (std::uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const auto h = static_cast<std::uint16_t>(bits);
    const float got = static_cast<float>(ak::float16::from_bits(h));
    const float expected = ak::detail::float16_value_portable(h);
    INFO("bits " << std::hex << bits);
    CHECK(std::bit_cast<std::uint32_t>(got) == std::bit_cast<std::uint32_t>(expected));
  }
}

// A vector load of a storage type gives, lane by lane, the values to_float gives.
template <class V, class T>
void check_loads() {
  using Ops = ak::VecOps<V>;
  constexpr int W = Ops::width;
  std::vector<T> stored;
  for (std::uint32_t bits = 0; bits < 0x10000u; bits += 7)
    stored.push_back(T::from_bits(static_cast<std::uint16_t>(bits)));
  for (std::uint16_t bits : {0x0000, 0x8000, 0x0001, 0x7c00, 0xfc00, 0x7e00, 0x7f80, 0xff80, 0x7fc0, 0x03ff})
    stored.push_back(T::from_bits(bits));
  while (stored.size() % W != 0) stored.push_back(T(1.0f));
  std::vector<float> lanes(W);
  for (std::size_t i = 0; i < stored.size(); i += W) {
    Ops::store(lanes.data(), Ops::load(stored.data() + i));
    for (int l = 0; l < W; ++l) {
      const float expected = ak::to_float(stored[i + l]);
      INFO("bits " << std::hex << stored[i + l].bits);
      if (std::isnan(expected))
        CHECK(std::isnan(lanes[l]));
      else
        CHECK(std::bit_cast<std::uint32_t>(lanes[l]) == std::bit_cast<std::uint32_t>(expected));
    }
  }
}

TEMPLATE_LIST_TEST_CASE("vector loads of bfloat16 and float16 convert exactly", "[storage]", ak::test::Backends) {
  using V = ak::vector_t<TestType>;
  check_loads<V, ak::bfloat16>();
  check_loads<V, ak::float16>();
  check_loads<ak::Wide<V, 2>, ak::bfloat16>();
  check_loads<ak::Wide<V, 2>, ak::float16>();
}

// transpose_sum (the decode kernel's reduction): lane i is the sum of row i's lanes.
template <class V>
void check_transpose_sum() {
  using Ops = ak::VecOps<V>;
  constexpr int W = Ops::width;
  std::vector<float> values(W * W);
  for (int i = 0; i < W * W; ++i) values[i] = static_cast<float>((i * 37) % 101) - 50.0f;  // small integers: exact sums
  std::vector<V> rows(W);
  for (int i = 0; i < W; ++i) rows[i] = Ops::load(values.data() + i * W);
  std::vector<float> lanes(W);
  Ops::store(lanes.data(), Ops::transpose_sum(rows.data()));
  for (int i = 0; i < W; ++i) {
    float expected = 0;
    for (int l = 0; l < W; ++l) expected += values[i * W + l];
    INFO("width " << W << " lane " << i);
    CHECK(lanes[i] == expected);
  }
}

TEMPLATE_LIST_TEST_CASE("transpose_sum puts the sum of row i in lane i", "[storage][isa]", ak::test::Backends) {
  using V = ak::vector_t<TestType>;
  check_transpose_sum<V>();
  check_transpose_sum<ak::Wide<V, 2>>();
}

// ---- Attention<Dense> on stored values --------------------------------------------------------

// A copy of a test tensor in storage type T, same layout (padding stays NaN).
template <class T>
struct Stored {
  std::vector<T> data;
  ak::View<T, 4> view;
  explicit Stored(const Tensor4& from) : data(from.data.size()) {
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = T(from.data[i]);
    view = ak::View<T, 4>(data.data(), from.view.extents(), from.view.strides());
  }
  explicit Stored(Index b, Index s, Index h, Index d, Layout layout) : Stored(Tensor4(b, s, h, d, layout)) {}
};

// A float copy of a stored tensor (same layout as shape_of, which it was made from): the values
// the kernels read.
template <class T>
Tensor4 as_float(const Stored<T>& x, const Tensor4& shape_of) {
  Tensor4 out = shape_of;
  for (std::size_t i = 0; i < out.data.size(); ++i) out.data[i] = ak::to_float(x.data[i]);
  return out;
}

struct StorageCase {
  Index batch = 1, q_len = 1, kv_len = 1, q_heads = 1, kv_heads = 1, head_dim = 8, v_dim = 0;
  bool causal = false;
  Layout layout = Layout::kBshd;
  std::vector<std::int32_t> q_lengths{}, kv_lengths{};
  std::uint32_t seed = 1;
};

// The storage combinations run: K / V type, then whether Q and out are of that type or float.
enum class Also { kNothing, kQ, kOut, kQAndOut };

// Runs Dense with K, V of type T (and Q / out of type T per `also`) and both references on the
// rounded values; the error rule is design.md 4's, plus the output's own rounding when it is
// stored as T (half an ulp of T below 1: 2^-9 for bfloat16, 2^-12 for float16).
template <class T, class Backend>
void check_stored_dense(const StorageCase& c, Also also, Backend backend) {
  const Index out_heads = std::max(c.q_heads, c.kv_heads), v_dim = c.v_dim > 0 ? c.v_dim : c.head_dim;
  INFO(ak::storage_name(ak::storage_of<T>())
       << " also " << int(also) << ": batch " << c.batch << " q_len " << c.q_len << " kv_len " << c.kv_len << " heads "
       << c.q_heads << "/" << c.kv_heads << " dims " << c.head_dim << "/" << v_dim << " causal " << c.causal
       << " layout " << ak::test::layout_name(c.layout));
  Tensor4 q(c.batch, c.q_len, c.q_heads, c.head_dim, c.layout), k(c.batch, c.kv_len, c.kv_heads, c.head_dim, c.layout),
      v(c.batch, c.kv_len, c.kv_heads, v_dim, c.layout);
  q.fill_uniform(c.seed, -2.0f, 2.0f);
  k.fill_uniform(c.seed + 1, -2.0f, 2.0f);
  v.fill_uniform(c.seed + 2);
  const Stored<T> sq(q), sk(k), sv(v);
  const bool q_stored = also == Also::kQ || also == Also::kQAndOut;
  const bool out_stored = also == Also::kOut || also == Also::kQAndOut;
  // The float Q the references see: Q's values after rounding when Q is stored.
  const Tensor4 q_seen = q_stored ? as_float(sq, q) : q;

  const ak::SeqLengths lengths{c.q_lengths, c.kv_lengths};
  const ak::Attention<ak::Dense, Backend> attn(ak::Dense::Options{.causal = c.causal}, backend);
  Tensor4 out(c.batch, c.q_len, out_heads, v_dim, c.layout);
  Stored<T> out_t(c.batch, c.q_len, out_heads, v_dim, c.layout);
  const ak::View<const T, 4> kc = sk.view, vc = sv.view;
  if (q_stored) {
    const ak::View<const T, 4> qc = sq.view;
    if (out_stored)
      attn(qc, kc, vc, out_t.view, {.lengths = lengths});
    else
      attn(qc, kc, vc, out.view, {.lengths = lengths});
  } else if (out_stored) {
    attn(q.view, kc, vc, out_t.view, {.lengths = lengths});
  } else {
    attn(q.view, kc, vc, out.view, {.lengths = lengths});
  }
  if (out_stored)
    for (Index b = 0; b < c.batch; ++b)
      for (Index s = 0; s < c.q_len; ++s)
        for (Index h = 0; h < out_heads; ++h)
          for (Index d = 0; d < v_dim; ++d) out.view(b, s, h, d) = ak::to_float(out_t.view(b, s, h, d));

  const ak::test::ReferenceOutputs reference({c.batch, c.q_len, out_heads, v_dim});
  const ak::reference::DenseOptions ref{.causal = c.causal};
  ak::reference::dense<double>(q_seen.view, sk.view, sv.view, reference.exact, ak::View<double, 3>{}, ref, lengths);
  ak::reference::dense<float>(q_seen.view, sk.view, sv.view, reference.naive, ak::View<float, 3>{}, ref, lengths);
  const double float_error = ak::test::max_abs_diff(reference.naive, reference.exact);
  const double error = ak::test::max_abs_diff(out.view, reference.exact);
  // |out| <= max |v| <= 1, so the output's rounding adds at most half an ulp of [0.5, 1).
  const double rounding = !out_stored ? 0.0 : std::is_same_v<T, ak::bfloat16> ? 0x1p-9 : 0x1p-12;
  INFO("kernel error " << error << ", float reference error " << float_error);
  CHECK(error <= ak::test::exact_tolerance(float_error) + rounding);
}

std::vector<std::pair<const char*, StorageCase>> storage_cases() {
  auto cases = ak::test::attention_edge_cases<StorageCase>();
  // Prefill (K / V packed), decode over a kv cache (read in place), and decode long enough for
  // key splits (merged by log-sum-exp), with GQA.
  cases.emplace_back("prefill, causal, GQA", StorageCase{1, 150, 150, 4, 2, 64, 0, true});
  cases.emplace_back("prefill, v_dim != head_dim", StorageCase{2, 40, 90, 2, 2, 24, 40, false});
  cases.emplace_back("decode, GQA 8/2, d 128", StorageCase{2, 1, 300, 8, 2, 128, 0, true});
  cases.emplace_back("decode with key splits, GQA 4/1", StorageCase{1, 1, 4500, 4, 1, 64, 0, false});
  cases.emplace_back("chunked prefill with key splits", StorageCase{1, 3, 4200, 2, 1, 32, 0, true});
  return cases;
}

template <class Backend>
void check_every_storage(Backend backend) {
  for (const auto& [what, c] : storage_cases()) {
    INFO(what);
    for (const Also also : {Also::kNothing, Also::kQ, Also::kOut, Also::kQAndOut}) {
      check_stored_dense<ak::bfloat16>(c, also, backend);
      check_stored_dense<ak::float16>(c, also, backend);
    }
  }
}

TEMPLATE_LIST_TEST_CASE("dense with bfloat16 and float16 storage matches the reference on the stored values",
                        "[storage][dense]", ak::test::Backends) {
  check_every_storage(ak::test::compile_time_kernels<TestType>());
}

TEST_CASE("dense storage types through every compiled ISA variant this CPU runs", "[storage][dense][isa]") {
  for (ak::Isa isa : {ak::Isa::sse2, ak::Isa::avx2, ak::Isa::avx512}) {
    if (isa > ak::cpu_isa()) {
      std::printf("storage dispatch: %s variant not run (the CPU lacks it)\n", ak::isa_name(isa));
      continue;
    }
    INFO(ak::isa_name(isa));
    check_every_storage(ak::OpenMP<>{.num_threads = 2, .inner = {.isa = isa}});
  }
}

// Stored types give the same bits on every backend as float views of the same (rounded) values:
// conversion happens where values are read, the math is the float kernel's.
TEMPLATE_LIST_TEST_CASE("dense with stored K / V equals dense on the converted float values bit for bit",
                        "[storage][dense]", ak::test::Backends) {
  const auto backend = ak::test::compile_time_kernels<TestType>();
  for (const StorageCase& c :
       {StorageCase{1, 70, 70, 4, 2, 32, 0, true}, StorageCase{1, 1, 4500, 8, 2, 64, 0, false}}) {
    Tensor4 q(c.batch, c.q_len, c.q_heads, c.head_dim, c.layout),
        k(c.batch, c.kv_len, c.kv_heads, c.head_dim, c.layout), v(c.batch, c.kv_len, c.kv_heads, c.head_dim, c.layout);
    q.fill_uniform(3);
    k.fill_uniform(4);
    v.fill_uniform(5);
    const Stored<ak::bfloat16> sk(k), sv(v);
    k = as_float(sk, k);
    v = as_float(sv, v);
    const ak::Attention<ak::Dense, TestType> attn(ak::Dense::Options{.causal = c.causal}, backend);
    Tensor4 from_float(c.batch, c.q_len, c.q_heads, c.head_dim, c.layout), from_stored = from_float;
    attn(q.view, k.view, v.view, from_float.view);
    attn(q.view, ak::View<const ak::bfloat16, 4>(sk.view), ak::View<const ak::bfloat16, 4>(sv.view), from_stored.view);
    CHECK(ak::test::flatten(from_float.view) == ak::test::flatten(from_stored.view));
  }
}

// ---- bfloat16 pairs (vdpbf16ps) ----------------------------------------------------------------

// The dense kernel with the vector type of Backend on bfloat16 Q, K, V and float out, with a plan
// for the given score products: the kernel layer, since the front door takes bfloat16 pairs only
// where the CPU runs vdpbf16ps. Returns the plan's products and fills out.
template <class Backend>
ak::detail::DenseProducts run_dense_products(const StorageCase& c, const Stored<ak::bfloat16>& q,
                                             const Stored<ak::bfloat16>& k, const Stored<ak::bfloat16>& v,
                                             ak::detail::DenseProducts products, const ak::View<float, 4>& out) {
  using V = ak::vector_t<Backend>;
  const ak::View<const ak::bfloat16, 4> qc = q.view, kc = k.view, vc = v.view;
  const ak::AttentionShape shape = ak::attention_shape(qc, kc, vc, &out);
  const ak::SequenceLayout seqs = ak::SequenceLayout::padded(shape, {c.q_lengths, c.kv_lengths});
  const ak::detail::DensePlan plan =
      ak::detail::make_dense_plan(shape, seqs, ak::RegisterTile<V>::geometry, ak::Storage::bf16, products);
  const ak::detail::ScopedWorkspace workspace(ak::Workspace{}, ak::detail::dense_workspace_bytes(plan, 1));
  const ak::detail::DenseLaunch launch{.q = qc,
                                       .k = kc,
                                       .v = vc,
                                       .out = out,
                                       .k_scales = {},
                                       .v_scales = {},
                                       .lse = {},
                                       .shape = shape,
                                       .seqs = seqs,
                                       .plan = plan,
                                       .scale = ak::detail::scale_or_default({}, c.head_dim),
                                       .workspace = workspace.data()};
  ak::detail::zero_rows_past_lengths(out, seqs);
  if (c.causal)
    ak::detail::run_dense_kernel<V>(Backend{}, launch, ak::tile::CausalMask{});
  else
    ak::detail::run_dense_kernel<V>(Backend{}, launch, ak::tile::NoMask{});
  return plan.products;
}

using StaticBackends = std::tuple<ak::Scalar, ak::test::Sse2, ak::test::Avx2Geometry, ak::test::Avx512Geometry>;

// The bfloat16 products on every vector type (the instructions where the build and the CPU have
// them, the emulations elsewhere) against the references on the stored values, design.md 4's
// rule; AMX tiles also round P to bfloat16, which may add 2^-8 max |v| (README, Conventions).
template <class Backend>
void check_bf16_products(ak::detail::DenseProducts products) {
  Index planned = 0;
  for (const auto& [what, c] : storage_cases()) {
    INFO(what);
    const Index out_heads = std::max(c.q_heads, c.kv_heads), v_dim = c.v_dim > 0 ? c.v_dim : c.head_dim;
    Tensor4 q(c.batch, c.q_len, c.q_heads, c.head_dim, c.layout),
        k(c.batch, c.kv_len, c.kv_heads, c.head_dim, c.layout), v(c.batch, c.kv_len, c.kv_heads, v_dim, c.layout);
    q.fill_uniform(c.seed, -2.0f, 2.0f);
    k.fill_uniform(c.seed + 1, -2.0f, 2.0f);
    v.fill_uniform(c.seed + 2);
    const Stored<ak::bfloat16> sq(q), sk(k), sv(v);
    Tensor4 out(c.batch, c.q_len, out_heads, v_dim, c.layout);
    if (c.batch * c.q_len * c.kv_len == 0) continue;
    planned += run_dense_products<Backend>(c, sq, sk, sv, products, out.view) == products;
    const ak::test::ReferenceOutputs reference({c.batch, c.q_len, out_heads, v_dim});
    const ak::reference::DenseOptions ref{.causal = c.causal};
    const ak::SeqLengths lengths{c.q_lengths, c.kv_lengths};
    ak::reference::dense<double>(sq.view, sk.view, sv.view, reference.exact, ak::View<double, 3>{}, ref, lengths);
    ak::reference::dense<float>(sq.view, sk.view, sv.view, reference.naive, ak::View<float, 3>{}, ref, lengths);
    double max_v = 0;
    for (const ak::bfloat16 x : sv.data) max_v = std::max(max_v, std::abs(double(ak::to_float(x))));
    const double rounded_p = products == ak::detail::DenseProducts::amx_bf16 ? std::ldexp(max_v, -8) : 0.0;
    const double float_error = ak::test::max_abs_diff(reference.naive, reference.exact);
    const double error = ak::test::max_abs_diff(out.view, reference.exact);
    INFO("kernel error " << error << ", float reference error " << float_error << ", rounded-P bound " << rounded_p);
    CHECK(error <= ak::test::exact_tolerance(float_error) + rounded_p);
  }
  CHECK(planned >= 10);  // the prefill-like cases (packed keys) ran the path
}

TEMPLATE_LIST_TEST_CASE("dense bfloat16 pairs (vdpbf16ps or its emulation) match the reference on the stored values",
                        "[storage][dense][bf16pairs]", StaticBackends) {
  using V = ak::vector_t<TestType>;
  static bool printed = false;
  if (!printed)
    std::printf("bf16 pairs on %s: %s\n", TestType::name().c_str(),
                ak::tile::kNativeBf16Pairs<V> ? "vdpbf16ps" : "emulated");
  printed = true;
  check_bf16_products<TestType>(ak::detail::DenseProducts::bf16_pairs);
}

TEMPLATE_LIST_TEST_CASE("dense AMX-BF16 tiles (tdpbf16ps or its emulation) match the reference on the stored values",
                        "[storage][dense][amx]", StaticBackends) {
  using V = ak::vector_t<TestType>;
  static bool printed = false;
  if (!printed)
    std::printf("AMX-BF16 tiles on %s: %s\n", TestType::name().c_str(),
                ak::tile::kAmxVector<V> && ak::tile::amx_tiles_usable() ? "tdpbf16ps" : "emulated");
  printed = true;
  check_bf16_products<TestType>(ak::detail::DenseProducts::amx_bf16);
}

// Where the build and the CPU have AVX512-BF16: the scores of vdpbf16ps (AVX-512) and of the
// emulation on the same 12 x 32 tile (two AVX2 vectors) are the same bits, for every head_dim
// parity; and the front door takes the pairs for bfloat16 Q and K only. (Whole outputs differ
// between the two in the horizontal sums of the softmax, not in the products.)
TEST_CASE("dense bfloat16 pairs: vdpbf16ps equals its emulation bit for bit", "[storage][dense][bf16pairs][isa]") {
#if XSIMD_WITH_AVX512BW && XSIMD_WITH_FMA3_AVX2
  using Native = ak::Simd<xsimd::avx512bw>;
  using NativeV = ak::vector_t<Native>;
  using EmulatedV = ak::vector_t<ak::Simd<ak::Emulated<xsimd::fma3<xsimd::avx2>, 2>>>;
  if (!ak::tile::kNativeBf16Pairs<NativeV> || !ak::cpu_features().avx512bf16) {
    std::printf("bf16 pairs: vdpbf16ps not run (the build or the CPU lacks AVX512-BF16)\n");
    return;
  }
  using Tile = ak::RegisterTile<NativeV>;
  static_assert(Tile::geometry == ak::RegisterTile<EmulatedV>::geometry);
  CHECK(ak::detail::dense_products(Native{}, ak::Storage::bf16, ak::Storage::bf16,
                                   ak::detail::DenseProducts::bf16_pairs) == ak::detail::DenseProducts::bf16_pairs);
  CHECK(ak::detail::dense_products(Native{}, ak::Storage::f32, ak::Storage::bf16,
                                   ak::detail::DenseProducts::bf16_pairs) == ak::detail::DenseProducts::f32);
  // Through the front door, opted in: the references' rule on a prefill shape.
  {
    const StorageCase c{1, 150, 150, 4, 2, 64, 0, true};
    Tensor4 q(c.batch, c.q_len, c.q_heads, c.head_dim, c.layout),
        k(c.batch, c.kv_len, c.kv_heads, c.head_dim, c.layout), v(c.batch, c.kv_len, c.kv_heads, c.head_dim, c.layout),
        out(c.batch, c.q_len, c.q_heads, c.head_dim, c.layout);
    q.fill_uniform(1, -2.0f, 2.0f);
    k.fill_uniform(2, -2.0f, 2.0f);
    v.fill_uniform(3);
    const Stored<ak::bfloat16> sq(q), sk(k), sv(v);
    const ak::Attention<ak::Dense, Native> attn({.causal = true, .bf16_products = ak::Dense::Bf16Products::pairs});
    attn(ak::View<const ak::bfloat16, 4>(sq.view), ak::View<const ak::bfloat16, 4>(sk.view),
         ak::View<const ak::bfloat16, 4>(sv.view), out.view);
    Tensor4 kernel_level = out;
    run_dense_products<Native>(c, sq, sk, sv, ak::detail::DenseProducts::bf16_pairs, kernel_level.view);
    CHECK(ak::test::flatten(out.view) == ak::test::flatten(kernel_level.view));
  }
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> value(-4.0f, 4.0f);
  for (const Index head_dim : {1, 7, 64, 128}) {
    const Index keys = 3 * Tile::cols - 5, padded = 3 * Tile::cols;
    std::vector<ak::bfloat16> q(Tile::mr * head_dim), k(keys * head_dim);
    for (auto& x : q) x = ak::bfloat16(value(rng));
    for (auto& x : k) x = ak::bfloat16(value(rng));
    const Index pairs = ak::tile::pair_words(head_dim);
    std::vector<std::uint32_t> packed(ak::tile::packed_key_pair_words(keys, pairs, Tile::cols));
    ak::tile::pack_key_pairs<Tile::cols>(k.data(), head_dim, keys, head_dim, pairs, packed.data());
    std::vector<std::uint32_t> q_pairs(Tile::mr * pairs);
    const std::uint32_t* q_rows[Tile::mr];
    for (int r = 0; r < Tile::mr; ++r) {
      ak::tile::pack_query_pairs(q.data() + r * head_dim, head_dim, pairs, q_pairs.data() + r * pairs);
      q_rows[r] = q_pairs.data() + r * pairs;
    }
    std::vector<float> native(Tile::mr * padded), emulated(Tile::mr * padded);
    ak::tile::score_block<NativeV, ak::tile::Bf16PairDot<NativeV>>(q_rows, packed.data(), pairs, padded, native.data(),
                                                                   padded);
    ak::tile::score_block<EmulatedV, ak::tile::Bf16PairDot<EmulatedV>>(q_rows, packed.data(), pairs, padded,
                                                                       emulated.data(), padded);
    INFO("head_dim " << head_dim);
    CHECK(std::memcmp(native.data(), emulated.data(), native.size() * sizeof(float)) == 0);
    // And both are the float dot products of the stored values, to rounding.
    for (int r = 0; r < Tile::mr; ++r)
      for (Index j = 0; j < keys; ++j) {
        double dot = 0;
        for (Index d = 0; d < head_dim; ++d)
          dot += double(ak::to_float(q[r * head_dim + d])) * double(ak::to_float(k[j * head_dim + d]));
        CHECK(std::abs(native[r * padded + j] - dot) <= 1e-5 * (1.0 + std::abs(dot)) * double(head_dim));
      }
  }
#else
  std::printf("bf16 pairs: vdpbf16ps not run (the build targets no AVX-512)\n");
#endif
}

// Inf and NaN in K and V through the bfloat16 products: the float formula's non-finite outputs
// (README, Conventions), finite elsewhere within the path's bound. The MQA case puts one query
// position in each 32-row AMX pass, whose rows all stop before the block's last key: masked keys
// past the visible ones must not bring their Inf into P . V as 0 x Inf.
TEMPLATE_LIST_TEST_CASE("dense bfloat16 products with Inf and NaN in K and V give the float formula's results",
                        "[storage][dense][amx][bf16pairs][nonfinite]", StaticBackends) {
  for (const auto products : {ak::detail::DenseProducts::bf16_pairs, ak::detail::DenseProducts::amx_bf16})
    for (const StorageCase& c :
         {StorageCase{1, 70, 70, 32, 1, 16, 0, true}, StorageCase{1, 100, 100, 2, 2, 64, 0, true},
          StorageCase{1, 50, 90, 4, 1, 24, 40, false}}) {
      INFO("products " << static_cast<int>(products) << " q_heads " << c.q_heads << " causal " << c.causal);
      const Index v_dim = c.v_dim > 0 ? c.v_dim : c.head_dim;
      Tensor4 q(c.batch, c.q_len, c.q_heads, c.head_dim, c.layout),
          k(c.batch, c.kv_len, c.kv_heads, c.head_dim, c.layout), v(c.batch, c.kv_len, c.kv_heads, v_dim, c.layout);
      q.fill_uniform(c.seed, -2.0f, 2.0f);
      k.fill_uniform(c.seed + 1, -2.0f, 2.0f);
      v.fill_uniform(c.seed + 2);
      const float inf = std::numeric_limits<float>::infinity();
      v.view(0, 45, 0, 3) = inf;
      v.view(0, 47, 0, 4) = -inf;
      v.view(0, 21, 0, 1) = std::nanf("");
      k.view(0, 60, 0, 0) = std::nanf("");
      const Stored<ak::bfloat16> sq(q), sk(k), sv(v);
      Tensor4 out(c.batch, c.q_len, c.q_heads, v_dim, c.layout);
      REQUIRE(run_dense_products<TestType>(c, sq, sk, sv, products, out.view) == products);
      const ak::test::ReferenceOutputs reference({c.batch, c.q_len, c.q_heads, v_dim});
      const ak::reference::DenseOptions ref{.causal = c.causal};
      ak::reference::dense<double>(sq.view, sk.view, sv.view, reference.exact, ak::View<double, 3>{}, ref, {});
      ak::reference::dense<float>(sq.view, sk.view, sv.view, reference.naive, ak::View<float, 3>{}, ref, {});
      Index non_finite = 0, wrong = 0;
      for (Index i = 0; i < c.q_len; ++i)
        for (Index h = 0; h < c.q_heads; ++h)
          for (Index d = 0; d < v_dim; ++d) {
            const float got = out.view(0, i, h, d), naive = reference.naive(0, i, h, d);
            if (std::isfinite(naive)) {
              wrong += std::abs(double(got) - reference.exact(0, i, h, d)) > 0.02 || !std::isfinite(got);
            } else {
              ++non_finite;
              wrong += std::isnan(naive) ? !std::isnan(got) : got != naive;
            }
          }
      CHECK(non_finite > 0);
      CHECK(wrong == 0);
    }
}

// AMX tiles at the tile layer: the products of the packed layouts (tile/amx_bf16.hpp) against
// double dot products of the unpacked values, natively where the CPU has AMX and emulated on every
// host (AVX-512, AVX2, SSE2 and scalar vector types), for head_dim and v_dim that fill whole tiles
// or not and key counts that leave padding. Emulation and instruction agree to float rounding
// (Intel leaves the tiles' summation order open; tile/amx_bf16.hpp).
template <class V>
void check_amx_tile_products(bool native) {
  namespace tl = ak::tile;
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> value(-4.0f, 4.0f);
  const std::tuple<Index, Index, Index> shapes[] = {
      {128, 128, 256}, {7, 24, 45}, {64, 40, 32}, {1, 16, 1}, {33, 80, 70}};
  for (const auto& [head_dim, v_dim, keys] : shapes) {
    INFO("head_dim " << head_dim << " v_dim " << v_dim << " keys " << keys);
    const Index rows = tl::kAmxPassRows, words = tl::amx_pair_words(head_dim);
    const Index padded = (keys + tl::kAmxKeyStep - 1) / tl::kAmxKeyStep * tl::kAmxKeyStep;
    std::vector<ak::bfloat16> q(rows * head_dim), k(keys * head_dim), v(keys * v_dim);
    for (auto* x : {&q, &k, &v})
      for (auto& e : *x) e = ak::bfloat16(value(rng));
    std::vector<std::uint32_t> q_pairs(rows * words), k_panels(tl::amx_key_words(keys, words)),
        v_strips(tl::amx_value_words(keys, v_dim)), p_pairs(rows * padded / 2);
    for (Index r = 0; r < rows; ++r)
      tl::pack_query_pairs(q.data() + r * head_dim, head_dim, words, &q_pairs[r * words]);
    tl::pack_amx_keys(k.data(), head_dim, keys, head_dim, words, k_panels.data());
    tl::pack_amx_values(v.data(), v_dim, keys, v_dim, v_strips.data());
    const tl::AmxBf16<V> amx(native);
    REQUIRE(amx.native() == native);
    const auto session = amx.begin();
    std::vector<float> s(rows * padded, -1.0f);
    amx.scores(q_pairs.data(), words, k_panels.data(), words, padded / tl::kAmxWords, s.data(), padded);
    for (Index r = 0; r < rows; ++r)
      for (Index j = 0; j < padded; ++j) {
        double dot = 0, size = 0;
        for (Index d = 0; j < keys && d < head_dim; ++d) {
          const double term = double(ak::to_float(q[r * head_dim + d])) * double(ak::to_float(k[j * head_dim + d]));
          dot += term;
          size += std::abs(term);
        }
        CHECK(std::abs(s[r * padded + j] - dot) <= 0x1p-23 * double(head_dim) * size);  // 0 past the keys
      }
    // P: the scores scaled into [0, 1) (any float rounds to bfloat16), then acc = 1 + P . V.
    for (float& x : s) x = std::abs(x) / (1.0f + std::abs(x));
    tl::pack_amx_probs<V>(s.data(), padded, rows, padded, p_pairs.data());
    const Index ldo = (v_dim + 15) / 16 * 16;
    std::vector<float> acc(rows * ldo, 1.0f);
    amx.accumulate(p_pairs.data(), padded / 2, v_strips.data(), tl::amx_value_strip_words(keys),
                   padded / tl::kAmxKeyStep, (v_dim + 15) / 16, acc.data(), ldo);
    for (Index r = 0; r < rows; ++r)
      for (Index c = 0; c < v_dim; ++c) {
        double sum = 1, size = 1;
        for (Index j = 0; j < keys; ++j) {
          const double p = ak::to_float(ak::bfloat16(s[r * padded + j]));  // P as the tiles see it
          sum += p * double(ak::to_float(v[j * v_dim + c]));
          size += std::abs(p * double(ak::to_float(v[j * v_dim + c])));
        }
        CHECK(std::abs(acc[r * ldo + c] - sum) <= 0x1p-23 * double(keys + 1) * size);
      }
  }
}

TEMPLATE_LIST_TEST_CASE("AMX-BF16 tile products (emulated) equal double products of the unpacked values",
                        "[storage][amx]", StaticBackends) {
  check_amx_tile_products<ak::vector_t<TestType>>(false);
}

TEST_CASE("AMX-BF16 tile products (tdpbf16ps) equal double products of the unpacked values; the front door takes them",
          "[storage][amx][isa]") {
#if XSIMD_WITH_AVX512BW
  using Native = ak::Simd<xsimd::avx512bw>;
  using NativeV = ak::vector_t<Native>;
  if (!ak::tile::amx_tiles_usable()) {
    std::printf("AMX-BF16: tdpbf16ps not run (the CPU lacks AMX-BF16 or the OS did not grant the tiles)\n");
    CHECK(ak::detail::dense_products(Native{}, ak::Storage::bf16, ak::Storage::bf16,
                                     ak::detail::DenseProducts::amx_bf16) != ak::detail::DenseProducts::amx_bf16);
    return;
  }
  std::printf("AMX-BF16: tdpbf16ps run\n");
  check_amx_tile_products<NativeV>(true);
  CHECK(ak::detail::dense_products(Native{}, ak::Storage::bf16, ak::Storage::bf16,
                                   ak::detail::DenseProducts::amx_bf16) == ak::detail::DenseProducts::amx_bf16);
  CHECK(ak::detail::dense_products(Native{}, ak::Storage::bf16, ak::Storage::f16,
                                   ak::detail::DenseProducts::amx_bf16) == ak::detail::DenseProducts::f32);
  // The front door, opted in, runs the kernel layer's AMX plan: the same bits, on a static and on
  // the dispatched backend (its avx512 variant).
  const StorageCase c{1, 150, 150, 4, 2, 64, 0, true};
  Tensor4 q(c.batch, c.q_len, c.q_heads, c.head_dim, c.layout), k(c.batch, c.kv_len, c.kv_heads, c.head_dim, c.layout),
      v(c.batch, c.kv_len, c.kv_heads, c.head_dim, c.layout), out(c.batch, c.q_len, c.q_heads, c.head_dim, c.layout);
  q.fill_uniform(1, -2.0f, 2.0f);
  k.fill_uniform(2, -2.0f, 2.0f);
  v.fill_uniform(3);
  const Stored<ak::bfloat16> sq(q), sk(k), sv(v);
  const ak::View<const ak::bfloat16, 4> qs = sq.view, ks = sk.view, vs = sv.view;
  Tensor4 kernel_level = out, dispatched = out;
  REQUIRE(run_dense_products<Native>(c, sq, sk, sv, ak::detail::DenseProducts::amx_bf16, kernel_level.view) ==
          ak::detail::DenseProducts::amx_bf16);
  const ak::Attention<ak::Dense, Native> attn({.causal = true, .bf16_products = ak::Dense::Bf16Products::amx_tiles});
  attn(qs, ks, vs, out.view);
  CHECK(ak::test::flatten(out.view) == ak::test::flatten(kernel_level.view));
  if (ak::cpu_isa() == ak::Isa::avx512) {
    const ak::Attention<ak::Dense, ak::OpenMP<>> threaded(
        {.causal = true, .bf16_products = ak::Dense::Bf16Products::amx_tiles},
        ak::OpenMP<>{.num_threads = 2, .inner = {.isa = ak::Isa::avx512}});
    threaded(qs, ks, vs, dispatched.view);
    CHECK(ak::test::flatten(dispatched.view) == ak::test::flatten(kernel_level.view));
  }
#else
  std::printf("AMX-BF16: tdpbf16ps not run (the build targets no AVX-512)\n");
#endif
}

// ---- Block-sparse and XAttention on stored values ---------------------------------------------

template <class T, class Backend>
void check_sparse_storage(Backend backend, bool causal) {
  INFO(ak::storage_name(ak::storage_of<T>()) << " causal " << causal);
  const Index batch = 2, q_len = 100, kv_len = 90, q_heads = 4, kv_heads = 2, dim = 32, v_dim = 24, block = 16;
  const Layout bshd = Layout::kBshd;
  Tensor4 q(batch, q_len, q_heads, dim, bshd), k(batch, kv_len, kv_heads, dim, bshd),
      v(batch, kv_len, kv_heads, v_dim, bshd);
  q.fill_uniform(21, -2.0f, 2.0f);
  k.fill_uniform(22, -2.0f, 2.0f);
  v.fill_uniform(23);
  const Stored<T> sq(q), sk(k), sv(v);
  const Tensor4 qr = as_float(sq, q), kr = as_float(sk, k), vr = as_float(sv, v);
  const ak::View<const T, 4> qs = sq.view, ks = sk.view, vs = sv.view;
  const ak::View<const float, 4> qf = qr.view, kf = kr.view, vf = vr.view;
  std::mt19937 rng(4);
  const ak::BlockMask mask =
      ak::BlockMask::from_predicate(batch, q_heads, (q_len + block - 1) / block, (kv_len + block - 1) / block,
                                    [&](Index, Index, Index, Index) { return rng() % 3 != 0; });
  // Block-sparse: stored Q, K, V == float on their values; a stored out is the float out rounded.
  const ak::Attention<ak::BlockSparse, Backend> sparse({.block = block, .causal = causal}, backend);
  Tensor4 from_float(batch, q_len, q_heads, v_dim, bshd), from_stored = from_float;
  sparse(qf, kf, vf, mask, from_float.view);
  sparse(qs, ks, vs, mask, from_stored.view);
  CHECK(ak::test::flatten(from_float.view) == ak::test::flatten(from_stored.view));
  Stored<T> out_t(batch, q_len, q_heads, v_dim, bshd);
  sparse(qf, ks, vs, mask, out_t.view);
  std::size_t rounded_differently = 0;
  for (std::size_t i = 0; i < out_t.data.size(); ++i)
    rounded_differently +=
        std::bit_cast<std::uint16_t>(out_t.data[i]) != std::bit_cast<std::uint16_t>(T(from_float.data[i]));
  CHECK(rounded_differently == 0);
  CHECK(sparse.cost(qs, ks, vs, mask).bytes < sparse.cost(qf, kf, vf, mask).bytes);
  // XAttention: the same scores, selection and output.
  const ak::Attention<ak::XAttention, Backend> xattn({.stride = 4, .block = block, .tau = {0.9f}, .causal = causal},
                                                     backend);
  ak::BlockMask selected_float, selected_stored;
  xattn(qf, kf, vf, from_float.view, {.selected = &selected_float});
  xattn(qs, ks, vs, from_stored.view, {.selected = &selected_stored});
  CHECK(selected_float.offsets == selected_stored.offsets);
  CHECK(selected_float.columns == selected_stored.columns);
  CHECK(ak::test::flatten(from_float.view) == ak::test::flatten(from_stored.view));
  Tensor4 scores_float(batch, q_heads, (q_len + block - 1) / block, (kv_len + block - 1) / block, bshd),
      scores_stored = scores_float;
  xattn.score(qf, kf, scores_float.view);
  xattn.score(qs, ks, scores_stored.view);
  CHECK(ak::test::flatten(scores_float.view) == ak::test::flatten(scores_stored.view));
}

// Block-sparse and XAttention run the dense kernel (and XAttention its scoring) on stored values
// converted where they are read, so they equal their float runs on the same values bit for bit.
TEMPLATE_LIST_TEST_CASE("block-sparse and XAttention with bfloat16 / float16 storage equal their float runs",
                        "[storage][sparse]", ak::test::Backends) {
  for (bool causal : {false, true}) {
    check_sparse_storage<ak::bfloat16>(TestType{}, causal);
    check_sparse_storage<ak::float16>(TestType{}, causal);
  }
}

TEST_CASE("dense storage: bad views are errors as for float", "[storage][dense]") {
  Stored<ak::bfloat16> q(1, 4, 2, 8, Layout::kBshd), k(1, 6, 2, 8, Layout::kBshd), v(1, 6, 2, 8, Layout::kBshd);
  Stored<ak::bfloat16> out(1, 4, 2, 8, Layout::kBshd);
  const ak::Attention<ak::Dense, ak::Scalar> attn;
  const ak::View<const ak::bfloat16, 4> qc = q.view, kc = k.view, vc = v.view;
  const ak::View<const ak::bfloat16, 4> short_k(k.data.data(), {1, 6, 2, 7}, k.view.strides());
  CHECK_THROWS_WITH(attn(qc, short_k, vc, out.view), Catch::Contains("k: head_dim 7, expected 8"));
  const ak::View<ak::bfloat16, 4> aliasing_out(const_cast<ak::bfloat16*>(v.data.data()), {1, 4, 2, 8},
                                               out.view.strides());
  CHECK_THROWS_WITH(attn(qc, kc, vc, aliasing_out), Catch::Contains("out: memory overlaps v"));
  const ak::View<const ak::bfloat16, 4> strided_q(q.data.data(), {1, 2, 2, 4}, {32, 16, 8, 2});
  CHECK_THROWS_WITH(attn(strided_q, kc, vc, out.view), Catch::Contains("q: stride of the last axis is 2"));
}

}  // namespace

// ---- int8 K / V with a scale per row -----------------------------------------------------------

namespace {

// A quantized copy of a test tensor (same layout) and the float tensor of its dequantized values.
struct Quantized {
  std::vector<std::int8_t> values;
  std::vector<float> scales;
  ak::View<std::int8_t, 4> values_view;
  ak::View<float, 3> scales_view;
  Tensor4 dequantized;
  explicit Quantized(const Tensor4& x)
      : values(x.data.size()),
        scales(static_cast<std::size_t>(std::max<Index>(x.view.extent(0) * x.view.extent(1) * x.view.extent(2), 1))),
        values_view(values.data(), x.view.extents(), x.view.strides()),
        scales_view(
            ak::View<float, 3>::contiguous(scales.data(), {x.view.extent(0), x.view.extent(1), x.view.extent(2)})),
        dequantized(x.view.extent(0), x.view.extent(1), x.view.extent(2), x.view.extent(3), Layout::kBshd) {
    ak::quantize_kv(x.view, values_view, scales_view);
    const auto& e = x.view.extents();
    for (Index b = 0; b < e[0]; ++b)
      for (Index s = 0; s < e[1]; ++s)
        for (Index h = 0; h < e[2]; ++h)
          for (Index d = 0; d < e[3]; ++d)
            dequantized.view(b, s, h, d) = ak::dequantize(scales_view(b, s, h), values_view(b, s, h, d));
  }
  ak::QuantizedView view() const { return {values_view, scales_view}; }
};

}  // namespace

TEST_CASE("quantize_kv: max-abs scale per row, values within half a step, zeros and non-finite rows",
          "[storage][int8]") {
  Tensor4 x(2, 5, 3, 40, Layout::kPaddedStrides);
  x.fill_uniform(7, -3.0f, 3.0f);
  for (Index d = 0; d < 40; ++d) x.view(0, 1, 2, d) = 0.0f;  // a row of zeros
  x.view(1, 2, 0, 7) = std::nanf("");                        // a row with a NaN
  x.view(1, 3, 1, 0) = INFINITY;                             // and one with an infinity
  const Quantized q(x);
  for (Index b = 0; b < 2; ++b)
    for (Index s = 0; s < 5; ++s)
      for (Index h = 0; h < 3; ++h) {
        INFO("row " << b << " " << s << " " << h);
        const float scale = q.scales_view(b, s, h);
        if ((b == 1 && s == 2 && h == 0) || (b == 1 && s == 3 && h == 1)) {
          CHECK(std::isnan(scale));
          continue;
        }
        float largest = 0.0f;
        int largest_value = 0;
        for (Index d = 0; d < 40; ++d) {
          largest = std::max(largest, std::abs(x.view(b, s, h, d)));
          largest_value = std::max(largest_value, std::abs(int(q.values_view(b, s, h, d))));
          CHECK(std::abs(ak::dequantize(scale, q.values_view(b, s, h, d)) - x.view(b, s, h, d)) <=
                scale * 0.5f * (1.0f + 1e-5f));
        }
        CHECK(scale == largest / 127.0f);
        CHECK(largest_value == (largest > 0 ? 127 : 0));
      }
  std::vector<std::int8_t> small(10);
  std::vector<float> scales(10);
  CHECK_THROWS_WITH(ak::quantize_kv(x.view, ak::bshd(small.data(), 1, 5, 2, 1), ak::thd(scales.data(), 1, 5, 2)),
                    Catch::Contains("values: extent 0 is 1, expected 2"));
  CHECK_THROWS_WITH(ak::quantize_kv(x.view, q.values_view, ak::View<float, 3>(scales.data(), {2, 5, 2}, {10, 2, 1})),
                    Catch::Contains("scales: extent 2 is 2, expected 3"));
}

// int8 Dense gives the bits of float Dense on the dequantized values (each block is dequantized
// into scratch and read as float rows), and meets the tolerance rule against the references.
template <class Backend>
void check_int8_dense(const StorageCase& c, Backend backend) {
  const Index out_heads = std::max(c.q_heads, c.kv_heads), v_dim = c.v_dim > 0 ? c.v_dim : c.head_dim;
  Tensor4 q(c.batch, c.q_len, c.q_heads, c.head_dim, c.layout), k(c.batch, c.kv_len, c.kv_heads, c.head_dim, c.layout),
      v(c.batch, c.kv_len, c.kv_heads, v_dim, c.layout);
  q.fill_uniform(c.seed, -2.0f, 2.0f);
  k.fill_uniform(c.seed + 1, -2.0f, 2.0f);
  v.fill_uniform(c.seed + 2);
  const Quantized qk(k), qv(v);
  const ak::SeqLengths lengths{c.q_lengths, c.kv_lengths};
  const ak::Attention<ak::Dense, Backend> attn(ak::Dense::Options{.causal = c.causal}, backend);
  Tensor4 from_int8(c.batch, c.q_len, out_heads, v_dim, c.layout), from_float = from_int8;
  attn(q.view, qk.view(), qv.view(), from_int8.view, {.lengths = lengths});
  attn(q.view, qk.dequantized.view, qv.dequantized.view, from_float.view, {.lengths = lengths});
  CHECK(ak::test::flatten(from_int8.view) == ak::test::flatten(from_float.view));

  const ak::test::ReferenceOutputs reference({c.batch, c.q_len, out_heads, v_dim});
  const ak::reference::DenseOptions ref{.causal = c.causal};
  ak::reference::dense<double>(q.view, qk.dequantized.view, qv.dequantized.view, reference.exact, ak::View<double, 3>{},
                               ref, lengths);
  ak::reference::dense<float>(q.view, qk.dequantized.view, qv.dequantized.view, reference.naive, ak::View<float, 3>{},
                              ref, lengths);
  ak::test::check_exact(from_int8.view, reference);
}

TEMPLATE_LIST_TEST_CASE("dense with int8 K / V equals dense on the dequantized values and matches the reference",
                        "[storage][int8][dense]", ak::test::Backends) {
  for (const auto& [what, c] : storage_cases()) {
    INFO(what);
    check_int8_dense(c, ak::test::compile_time_kernels<TestType>());
  }
}

TEST_CASE("dense int8 through every compiled ISA variant this CPU runs", "[storage][int8][dense][isa]") {
  for (ak::Isa isa : {ak::Isa::sse2, ak::Isa::avx2, ak::Isa::avx512}) {
    if (isa > ak::cpu_isa()) continue;
    INFO(ak::isa_name(isa));
    for (const auto& [what, c] : storage_cases()) {
      INFO(what);
      check_int8_dense(c, ak::OpenMP<>{.num_threads = 2, .inner = {.isa = isa}});
    }
  }
}

TEST_CASE("dense int8: bad scales are errors naming them", "[storage][int8][dense]") {
  Tensor4 q(1, 4, 2, 8, Layout::kBshd), k(1, 6, 2, 8, Layout::kBshd), v(1, 6, 2, 8, Layout::kBshd),
      out(1, 4, 2, 8, Layout::kBshd);
  q.fill_uniform(1);
  k.fill_uniform(2);
  v.fill_uniform(3);
  const Quantized qk(k), qv(v);
  const ak::Attention<ak::Dense, ak::Scalar> attn;
  ak::QuantizedView short_scales = qk.view();
  short_scales.scales = ak::View<const float, 3>(qk.scales.data(), {1, 5, 2}, qk.scales_view.strides());
  CHECK_THROWS_WITH(attn(q.view, short_scales, qv.view(), out.view),
                    Catch::Contains("k.scales: extent 1 is 5, expected 6"));
  ak::QuantizedView null_scales = qv.view();
  null_scales.scales = ak::View<const float, 3>(nullptr, {1, 6, 2}, {12, 2, 1});
  CHECK_THROWS_WITH(attn(q.view, qk.view(), null_scales, out.view), Catch::Contains("v.scales: data is null"));
  std::vector<float> shared(12 + 64);  // k's scales, then an out that starts inside them
  std::copy(qk.scales.begin(), qk.scales.begin() + 12, shared.begin());
  ak::QuantizedView shared_scales = qk.view();
  shared_scales.scales = ak::View<const float, 3>(shared.data(), {1, 6, 2}, {12, 2, 1});
  const ak::View<float, 4> over_scales(shared.data() + 8, {1, 4, 2, 8}, {64, 16, 8, 1});
  CHECK_THROWS_WITH(attn(q.view, shared_scales, qv.view(), over_scales),
                    Catch::Contains("out: memory overlaps k.scales"));
}
