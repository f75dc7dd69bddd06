// Attention<Dense, Backend> against reference::dense on every backend: random shapes, the edge
// cases of design.md section 4, padded and packed batches, log-sum-exp, key splits, determinism
// across backends and thread counts, workspace bounds and every error message.
#include <catch2/catch.hpp>

#include <attnkit/reference/dense.hpp>
#include <cstring>

#include "test_util.hpp"

namespace ak = attnkit;
using ak::Index;
using ak::test::Layout;
using ak::test::Tensor4;

namespace {

struct DenseCase {
  Index batch = 1, q_len = 1, kv_len = 1, q_heads = 1, kv_heads = 1, head_dim = 8, v_dim = 0;
  bool causal = false;
  Layout layout = Layout::kBshd;
  std::vector<std::int32_t> q_lengths{}, kv_lengths{};
  float lo = -1.0f, hi = 1.0f;  // range of q and k entries
  std::uint32_t seed = 1;
};

struct DenseRun {
  Tensor4 q, k, v;
  explicit DenseRun(const DenseCase& c)
      : q(c.batch, c.q_len, c.q_heads, c.head_dim, c.layout),
        k(c.batch, c.kv_len, c.kv_heads, c.head_dim, c.layout),
        v(c.batch, c.kv_len, c.kv_heads, c.v_dim > 0 ? c.v_dim : c.head_dim, c.layout) {
    q.fill_uniform(c.seed, c.lo, c.hi);
    k.fill_uniform(c.seed + 1, c.lo, c.hi);
    v.fill_uniform(c.seed + 2);
  }
};

Index out_heads(const DenseCase& c) { return std::max(c.q_heads, c.kv_heads); }
Index v_dim(const DenseCase& c) { return c.v_dim > 0 ? c.v_dim : c.head_dim; }

// Runs the kernel and both references; checks the output and the log-sum-exp.
template <class Backend>
std::vector<float> check_dense(const DenseCase& c, Backend backend = {}) {
  INFO("batch " << c.batch << " q_len " << c.q_len << " kv_len " << c.kv_len << " heads " << c.q_heads << "/"
                << c.kv_heads << " dims " << c.head_dim << "/" << v_dim(c) << " causal " << c.causal << " layout "
                << int(c.layout));
  DenseRun in(c);
  Tensor4 out(c.batch, c.q_len, out_heads(c), v_dim(c), c.layout);
  std::vector<float> lse_data(static_cast<std::size_t>(c.batch * c.q_len * out_heads(c)) + 1);
  auto lse = ak::View<float, 3>::contiguous(lse_data.data(), {c.batch, c.q_len, out_heads(c)});
  const ak::SeqLengths lengths{c.q_lengths, c.kv_lengths};

  ak::Attention<ak::Dense, Backend> attn(ak::Dense::Options{.causal = c.causal}, backend);
  attn(in.q.view, in.k.view, in.v.view, out.view, {.lengths = lengths, .lse = lse});

  std::vector<double> exact_lse(lse_data.size());
  std::vector<float> naive_lse(lse_data.size());
  const std::array<Index, 3> lse_shape{c.batch, c.q_len, out_heads(c)};
  const ak::test::ReferenceOutputs reference({c.batch, c.q_len, out_heads(c), v_dim(c)});
  const ak::reference::DenseOptions options{.causal = c.causal};
  ak::reference::dense<double>(in.q.view, in.k.view, in.v.view, reference.exact,
                               ak::View<double, 3>::contiguous(exact_lse.data(), lse_shape), options, lengths);
  ak::reference::dense<float>(in.q.view, in.k.view, in.v.view, reference.naive,
                              ak::View<float, 3>::contiguous(naive_lse.data(), lse_shape), options, lengths);
  ak::test::check_exact(out.view, reference);

  double lse_float_error = 0, lse_error = 0;
  for (std::size_t i = 0; i + 1 < lse_data.size(); ++i) {
    if (std::isinf(exact_lse[i])) {
      CHECK(std::isinf(lse_data[i]));
      CHECK(lse_data[i] < 0);
      continue;
    }
    lse_float_error = std::max(lse_float_error, std::abs(naive_lse[i] - exact_lse[i]));
    lse_error = std::max(lse_error, std::abs(lse_data[i] - exact_lse[i]));
  }
  const double lse_magnitude = c.hi * c.hi * static_cast<double>(c.head_dim);
  CHECK(lse_error <= ak::test::exact_tolerance(lse_float_error, lse_magnitude));

  return ak::test::flatten(out.view);
}

template <class Backend>
void check_random_shapes(const Backend& backend = {}) {
  std::mt19937 rng(2024);
  const std::array<std::pair<Index, Index>, 7> head_maps{{{1, 1}, {2, 1}, {4, 2}, {3, 3}, {2, 4}, {8, 2}, {1, 3}}};
  const std::array<Index, 6> dims{1, 5, 16, 33, 64, 72};
  for (int trial = 0; trial < 12; ++trial) {
    DenseCase c;
    c.batch = 1 + rng() % 3;
    c.q_len = 1 + rng() % 90;
    c.kv_len = 1 + rng() % 300;
    std::tie(c.q_heads, c.kv_heads) = head_maps[rng() % head_maps.size()];
    c.head_dim = dims[rng() % dims.size()];
    c.v_dim = rng() % 2 ? 0 : dims[rng() % dims.size()];
    c.causal = rng() % 2;
    c.layout = static_cast<Layout>(rng() % 3);
    c.seed = 100 + trial;
    check_dense<Backend>(c, backend);
  }
}

template <class Backend>
void check_edge_cases(const Backend& backend = {}) {
  INFO("length one");
  check_dense<Backend>({.q_len = 1, .kv_len = 1, .head_dim = 7}, backend);
  INFO("lengths and dims off every block and vector width");
  check_dense<Backend>({.q_len = 37, .kv_len = 515, .q_heads = 2, .head_dim = 13, .v_dim = 19}, backend);
  check_dense<Backend>({.q_len = 301, .kv_len = 301, .head_dim = 24, .causal = true}, backend);
  for (const auto& [what, c] : ak::test::attention_edge_cases<DenseCase>()) {
    INFO(what);
    check_dense<Backend>(c, backend);
  }
  INFO("large logits (scores around 1e4)");
  check_dense<Backend>({.q_len = 40, .kv_len = 90, .head_dim = 16, .lo = -30.0f, .hi = 30.0f}, backend);
  check_dense<Backend>({.q_len = 40, .kv_len = 90, .head_dim = 16, .causal = true, .lo = -30.0f, .hi = 30.0f}, backend);
  INFO("key splits for decode, with GQA and a causal tail");
  check_dense<Backend>({.q_len = 1, .kv_len = 5000, .q_heads = 8, .kv_heads = 2, .head_dim = 32}, backend);
  check_dense<Backend>(
      {.batch = 2, .q_len = 3, .kv_len = 4200, .q_heads = 4, .kv_heads = 2, .head_dim = 16, .causal = true}, backend);
}

// Rows per kv head 1 to 13 (q_len x group): up to one register tile of rows (12 on AVX-512, 6 on
// AVX2 / SSE2, 4 scalar) reads K / V in place, more packs them; long keys split.
template <class Backend>
void check_rows_per_kv_head(const Backend& backend = {}) {
  for (Index group = 1; group <= 9; ++group) {
    check_dense<Backend>({.q_len = 1,
                          .kv_len = 300,
                          .q_heads = 2 * group,
                          .kv_heads = 2,
                          .head_dim = 20,
                          .causal = true,
                          .seed = std::uint32_t(group)},
                         backend);
    check_dense<Backend>({.batch = 2,
                          .q_len = 1,
                          .kv_len = 4500,
                          .q_heads = 3 * group,
                          .kv_heads = 3,
                          .head_dim = 12,
                          .layout = Layout::kBhsd,
                          .seed = std::uint32_t(50 + group)},
                         backend);
  }
  // MHA and GQA prefill-like shapes with 2..13 rows per kv head: q_len rows of one head, or
  // q_len x 4 rows of a 4:1 group.
  for (Index q_len = 2; q_len <= 13; ++q_len) {
    INFO("q_len " << q_len);
    check_dense<Backend>({.q_len = q_len, .kv_len = q_len, .head_dim = 8, .seed = std::uint32_t(200 + q_len)}, backend);
    check_dense<Backend>({.q_len = (q_len + 3) / 4,
                          .kv_len = 70 + q_len,
                          .q_heads = 8,
                          .kv_heads = 2,
                          .head_dim = 40,
                          .causal = q_len % 2 == 0,
                          .seed = std::uint32_t(300 + q_len)},
                         backend);
  }
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("dense matches the reference on random shapes", "[dense]", ak::test::Backends) {
  check_random_shapes<TestType>();
}

TEMPLATE_LIST_TEST_CASE("dense edge cases", "[dense]", ak::test::Backends) { check_edge_cases<TestType>(); }

TEMPLATE_LIST_TEST_CASE("dense for 1 to 13 rows per kv head (decode, GQA groups, short prefill)", "[dense]",
                        ak::test::Backends) {
  check_rows_per_kv_head<TestType>();
}

TEST_CASE("dense through every compiled ISA variant this CPU runs (runtime dispatch)", "[dense][isa]") {
  if (!ak::is_dispatched<ak::OpenMP<>>) {
    WARN("built without ATTNKIT_DISPATCH: OpenMP<> runs the compile-time ISA, already covered");
    return;
  }
  for (ak::Isa isa : {ak::Isa::sse2, ak::Isa::avx2, ak::Isa::avx512}) {
    const ak::OpenMP<> backend{.inner = {.isa = isa}};
    if (isa > ak::cpu_isa()) {
      std::printf("dense dispatch: %s variant not run (the CPU lacks it)\n", ak::isa_name(isa));
      CHECK_THROWS_WITH(ak::Attention<ak::Dense>({}, backend).name(), Catch::Contains("this CPU runs at most"));
      continue;
    }
    const std::string name = ak::Attention<ak::Dense>({}, backend).name();
    std::printf("dense dispatch: running %s\n", name.c_str());
    CHECK(name == std::string("dense/openmp-simd-") + ak::isa_name(isa));
    INFO(name);
    check_random_shapes(backend);
    check_edge_cases(backend);
    check_rows_per_kv_head(backend);
  }
  CHECK(ak::Attention<ak::Dense>().name() == std::string("dense/openmp-simd-") + ak::isa_name(ak::default_isa()));
}

TEMPLATE_LIST_TEST_CASE("dense on packed variable-length sequences", "[dense]", ak::test::Backends) {
  const std::vector<std::int32_t> cu_q{0, 5, 5, 45, 46}, cu_kv{0, 30, 31, 71, 171};
  const Index q_heads = 4, kv_heads = 2, dim = 24, tokens_q = 46, tokens_kv = 171;
  for (bool causal : {false, true}) {
    INFO("causal " << causal);
    std::vector<float> q = ak::test::uniform(tokens_q * q_heads * dim, 7),
                       k = ak::test::uniform(tokens_kv * kv_heads * dim, 8),
                       v = ak::test::uniform(tokens_kv * kv_heads * dim, 9), out(tokens_q * q_heads * dim);
    std::vector<float> lse(tokens_q * q_heads);
    ak::Attention<ak::Dense, TestType> attn(ak::Dense::Options{.causal = causal});
    const ak::CuSeqlens cu{cu_q, cu_kv};
    attn(ak::thd(q.data(), tokens_q, q_heads, dim), ak::thd(k.data(), tokens_kv, kv_heads, dim),
         ak::thd(v.data(), tokens_kv, kv_heads, dim), ak::thd(out.data(), tokens_q, q_heads, dim), cu,
         {.lse = ak::View<float, 3>::contiguous(lse.data(), {1, tokens_q, q_heads})});

    const auto q4 = ak::bshd(static_cast<const float*>(q.data()), 1, tokens_q, q_heads, dim);
    const auto k4 = ak::bshd(static_cast<const float*>(k.data()), 1, tokens_kv, kv_heads, dim);
    const auto v4 = ak::bshd(static_cast<const float*>(v.data()), 1, tokens_kv, kv_heads, dim);
    const ak::SequenceLayout seqs = ak::SequenceLayout::packed(cu, tokens_q, tokens_kv);
    std::vector<double> exact(out.size()), exact_lse(lse.size());
    std::vector<float> naive(out.size()), naive_lse(lse.size());
    ak::reference::dense<double>(q4, k4, v4, ak::bshd(exact.data(), 1, tokens_q, q_heads, dim),
                                 ak::View<double, 3>::contiguous(exact_lse.data(), {1, tokens_q, q_heads}), seqs,
                                 {.causal = causal});
    ak::reference::dense<float>(q4, k4, v4, ak::bshd(naive.data(), 1, tokens_q, q_heads, dim),
                                ak::View<float, 3>::contiguous(naive_lse.data(), {1, tokens_q, q_heads}), seqs,
                                {.causal = causal});
    const double float_error = ak::test::max_abs_diff(ak::bshd(naive.data(), 1, tokens_q, q_heads, dim),
                                                      ak::bshd(exact.data(), 1, tokens_q, q_heads, dim));
    CHECK(ak::test::max_abs_diff(ak::bshd(out.data(), 1, tokens_q, q_heads, dim),
                                 ak::bshd(exact.data(), 1, tokens_q, q_heads, dim)) <=
          ak::test::exact_tolerance(float_error));
    for (std::size_t i = 0; i < lse.size(); ++i) CHECK(lse[i] == Approx(exact_lse[i]).epsilon(1e-5));
  }
}

TEST_CASE("dense results are bitwise equal across backends and thread counts", "[dense]") {
  for (const DenseCase& c :
       {DenseCase{.batch = 2, .q_len = 300, .kv_len = 333, .q_heads = 4, .kv_heads = 2, .head_dim = 40, .causal = true},
        DenseCase{.q_len = 2, .kv_len = 9000, .q_heads = 8, .kv_heads = 2, .head_dim = 32}}) {
    const std::vector<float> one = check_dense<ak::Simd<>>(c);
    const std::vector<float> single =
        check_dense<ak::OpenMP<>>(c, ak::test::compile_time_kernels(ak::OpenMP<>{.num_threads = 1}));
    const std::vector<float> pair =
        check_dense<ak::OpenMP<>>(c, ak::test::compile_time_kernels(ak::OpenMP<>{.num_threads = 2}));
    CHECK(std::memcmp(one.data(), single.data(), one.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(one.data(), pair.data(), one.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("dense workspace is O(tile) and sufficient at kv_len 32768", "[dense]") {
  const Index kv_len = 32768, heads = 8, dim = 128;
  ak::Attention<ak::Dense, ak::OpenMP<>> attn(ak::Dense::Options{.causal = true});
  // Prefill at 32768 x 32768: the workspace does not grow with q_len * kv_len (4 GiB per head).
  const float* none = reinterpret_cast<const float*>(16);
  const std::size_t prefill =
      attn.workspace_bytes(ak::bshd(none, 1, kv_len, heads, dim), ak::bshd(none, 1, kv_len, heads, dim),
                           ak::bshd(none, 1, kv_len, heads, dim));
  INFO("prefill workspace " << prefill << " bytes");
  CHECK(prefill <= std::size_t(ak::OpenMP<>{}.threads()) * (std::size_t(1) << 20));  // <= 1 MiB per thread
  CHECK(prefill * 1000 < std::size_t(kv_len) * kv_len * sizeof(float));

  // Decode against 32768 keys with exactly workspace_bytes of caller memory.
  const DenseCase c{.q_len = 1, .kv_len = kv_len, .q_heads = 4, .kv_heads = 1, .head_dim = 64, .causal = true};
  DenseRun in(c);
  std::vector<float> out(4 * 64), exact_out(4 * 64);
  const auto out_view = ak::bshd(out.data(), 1, 1, 4, 64);
  const std::size_t bytes = attn.workspace_bytes(in.q.view, in.k.view, in.v.view);
  INFO("decode workspace " << bytes << " bytes");
  CHECK(bytes < std::size_t(kv_len) * 64 * sizeof(float));
  struct Free {
    void operator()(void* p) const { ::operator delete (p, std::align_val_t{64}); }
  };
  std::unique_ptr<void, Free> block(::operator new (bytes, std::align_val_t{64}));
  attn(in.q.view, in.k.view, in.v.view, out_view, {.workspace = {block.get(), bytes}});
  std::vector<double> exact(out.size());
  ak::reference::dense<double>(in.q.view, in.k.view, in.v.view, ak::bshd(exact.data(), 1, 1, 4, 64),
                               ak::View<double, 3>{}, {.causal = true});
  for (std::size_t i = 0; i < out.size(); ++i) CHECK(out[i] == Approx(exact[i]).margin(1e-5));
  CHECK_THROWS_WITH(attn(in.q.view, in.k.view, in.v.view, out_view, {.workspace = {block.get(), bytes - 64}}),
                    Catch::Contains("workspace: ") && Catch::Contains("expected >= "));
}

TEST_CASE("dense rejects bad input with a message naming the argument", "[dense][errors]") {
  std::vector<float> buf(4096, 0.0f), out_buf(4096, 0.0f);
  float* p = buf.data();      // inputs (they may share memory)
  float* o = out_buf.data();  // outputs, which must not
  const auto q = ak::bshd(p, 2, 4, 4, 8), k = ak::bshd(p, 2, 6, 2, 8), v = ak::bshd(p, 2, 6, 2, 8),
             out = ak::bshd(o, 2, 4, 4, 8);
  ak::Attention<ak::Dense, ak::Simd<>> attn;
  using Catch::Contains;
  CHECK_NOTHROW(attn(q, k, v, out));
  CHECK_THROWS_AS(attn(q, ak::bshd(p, 2, 6, 2, 16), v, out), ak::Error);
  CHECK_THROWS_WITH(attn(q, ak::bshd(p, 2, 6, 2, 16), v, out), Contains("k: head_dim 16, expected 8"));
  CHECK_THROWS_WITH(attn(q, ak::bshd(p, 1, 6, 2, 8), v, out), Contains("k: batch 1, expected 2"));
  CHECK_THROWS_WITH(attn(q, k, ak::bshd(p, 1, 6, 2, 8), out), Contains("v: batch 1, expected 2"));
  CHECK_THROWS_WITH(attn(q, k, ak::bshd(p, 2, 5, 2, 8), out), Contains("v: seq 5, expected 6"));
  CHECK_THROWS_WITH(attn(q, k, ak::bshd(p, 2, 6, 1, 8), out), Contains("v: heads 1, expected 2"));
  CHECK_THROWS_WITH(attn(q, ak::bshd(p, 2, 6, 3, 8), ak::bshd(p, 2, 6, 3, 8), out),
                    Contains("k: heads 3, expected a divisor or a multiple of q heads 4"));
  CHECK_THROWS_WITH(attn(q, k, v, ak::bshd(o, 2, 4, 2, 8)), Contains("out: heads 2, expected 4"));
  CHECK_THROWS_WITH(attn(q, k, v, ak::bshd(o, 2, 3, 4, 8)), Contains("out: seq 3, expected 4"));
  CHECK_THROWS_WITH(attn(q, k, v, ak::bshd(o, 2, 4, 4, 4)), Contains("out: head_dim 4, expected 8"));
  CHECK_THROWS_WITH(attn(ak::bshd(static_cast<float*>(nullptr), 2, 4, 4, 8), k, v, out), Contains("q: data is null"));
  CHECK_THROWS_WITH(attn(q, k, v, ak::View<float, 4>(o, {2, 4, 4, 8}, {128, 32, 8, 2})),
                    Contains("out: stride of the last axis is 2, expected 1"));
  CHECK_THROWS_WITH(attn(q, ak::View<float, 4>(p, {2, 6, 2, 8}, {96, -16, 8, 1}), v, out),
                    Contains("k: stride 1 is -16, expected >= 0"));
  CHECK_THROWS_WITH(ak::Attention<ak::Dense>(ak::Dense::Options{.scale = -1.0f}),
                    Contains("options.scale is -1, expected a finite value > 0"));
  CHECK_THROWS_WITH(ak::Attention<ak::Dense>(ak::Dense::Options{.scale = std::nanf("")}),
                    Contains("options.scale is nan"));
  const std::vector<std::int32_t> one_length{4}, too_long{4, 9};
  CHECK_THROWS_WITH(attn(q, k, v, out, {.lengths = {.q = one_length}}), Contains("lengths.q: 1 entries, expected 2"));
  CHECK_THROWS_WITH(attn(q, k, v, out, {.lengths = {.kv = too_long}}),
                    Contains("lengths.kv[1] is 9, expected in [0, 6]"));
  std::vector<float> lse(32);
  CHECK_THROWS_WITH(attn(q, k, v, out, {.lse = ak::View<float, 3>::contiguous(lse.data(), {2, 4, 2})}),
                    Contains("args.lse: extent 2 is 2, expected 4"));

  const std::vector<std::int32_t> cu_q{0, 2, 4}, cu_kv{0, 3, 6}, cu_bad{0, 5, 3}, cu_short{0, 6};
  const auto q3 = ak::thd(p, 4, 4, 8), k3 = ak::thd(p, 6, 2, 8), v3 = ak::thd(p, 6, 2, 8), out3 = ak::thd(o, 4, 4, 8);
  CHECK_NOTHROW(attn(q3, k3, v3, out3, ak::CuSeqlens{cu_q, cu_kv}));
  CHECK_THROWS_WITH(attn(q3, k3, v3, out3, ak::CuSeqlens{cu_q, cu_bad}),
                    Contains("cu_seqlens.kv[2] is 3, expected >= 5"));
  CHECK_THROWS_WITH(attn(q3, k3, v3, out3, ak::CuSeqlens{cu_q, cu_short}),
                    Contains("cu_seqlens.kv: 2 offsets, expected 3"));
  CHECK_THROWS_WITH(attn(q3, k3, v3, out3, ak::CuSeqlens{cu_kv, cu_kv}),
                    Contains("cu_seqlens.q ends at 6, expected <= 4"));
  CHECK_THROWS_WITH(attn(q3, k3, v3, out3, ak::CuSeqlens{cu_q, cu_kv}, {.lengths = {.q = one_length}}),
                    Contains("args.lengths: expected empty with packed inputs"));
}
