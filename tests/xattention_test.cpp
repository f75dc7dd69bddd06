// Attention<XAttention>: antidiagonal scoring against reference::xattention_scores (double, with
// the float twin for the tolerance rule), selection by both rules (the documented default and the
// reference's find_blocks_chunked) against reference::xattention_select exactly (random scores,
// ties, tau = 1, tau -> 0, per-head tau, chunks), the smallest case where the two rules differ, the
// whole call against reference::block_sparse with the selected mask, batch > 1 and GQA; names,
// defaults and every error message.
#include <catch2/catch.hpp>

#include <attnkit/reference/xattention.hpp>

#include "masked_check.hpp"

namespace ak = attnkit;
using ak::Index;
using ak::test::Layout;
using ak::test::MaskedCase;

namespace {

Index blocks_of(Index n, Index block) { return (n + block - 1) / block; }

template <class Backend>
std::vector<float> kernel_scores(const MaskedCase& c, const ak::test::MaskedRun& run,
                                 const ak::XAttention::Options& o) {
  std::vector<float> scores(
      static_cast<std::size_t>(c.batch * c.out_heads() * blocks_of(c.q_len, o.block) * blocks_of(c.kv_len, o.block)));
  ak::Attention<ak::XAttention, Backend>(o).score(
      run.q.view, run.k.view,
      ak::View<float, 4>::contiguous(
          scores.data(), {c.batch, c.out_heads(), blocks_of(c.q_len, o.block), blocks_of(c.kv_len, o.block)}));
  return scores;
}

template <class Backend>
void check_scores(const MaskedCase& c, Index stride, Index block, bool causal) {
  INFO("stride " << stride << " block " << block << " causal " << causal << " q_len " << c.q_len << " kv_len "
                 << c.kv_len << " heads " << c.q_heads << "/" << c.kv_heads << " batch " << c.batch);
  ak::test::MaskedRun run(c);
  const std::vector<float> scores =
      kernel_scores<Backend>(c, run, {.stride = stride, .block = block, .causal = causal});
  const ak::reference::XAttentionOptions o{.stride = stride, .block = block, .causal = causal};
  const std::vector<double> exact = ak::reference::xattention_scores<double>(run.q.view, run.k.view, o);
  const std::vector<float> naive = ak::reference::xattention_scores<float>(run.q.view, run.k.view, o);
  REQUIRE(exact.size() == scores.size());
  double error = 0, float_error = 0, magnitude = 0;
  for (std::size_t i = 0; i < exact.size(); ++i) {
    error = std::max(error, std::abs(scores[i] - exact[i]));
    float_error = std::max(float_error, std::abs(naive[i] - exact[i]));
    magnitude = std::max(magnitude, std::abs(exact[i]));
  }
  INFO("kernel error " << error << ", float reference error " << float_error << ", largest score " << magnitude);
  CHECK(error <= ak::test::exact_tolerance(float_error, magnitude));
}

std::vector<double> as_double(const std::vector<float>& x) { return {x.begin(), x.end()}; }

constexpr ak::XSelection kSelections[] = {ak::XSelection::kSinkDiagonalThreshold, ak::XSelection::kReferenceChunked};

// Kernel selection of flat scores (B, H, qb, kb) against the naive one, by both rules.
template <class Backend = ak::Scalar>
void check_selection(const std::vector<float>& scores, Index batch, Index heads, Index q_len, Index kv_len,
                     const std::vector<float>& tau, Index block, bool causal, Index chunk = 0) {
  for (const ak::XSelection selection : kSelections) {
    INFO("selection " << int(selection) << " q_len " << q_len << " kv_len " << kv_len << " causal " << causal
                      << " chunk " << chunk << " tau " << tau[0]);
    const ak::Attention<ak::XAttention, Backend> attn(
        {.stride = 8, .block = block, .tau = tau, .causal = causal, .selection = selection, .chunk = chunk});
    const auto view = ak::View<const float, 4>::contiguous(
        scores.data(), {batch, heads, blocks_of(q_len, block), blocks_of(kv_len, block)});
    const ak::BlockMask got = attn.select(view, q_len, kv_len);
    const ak::BlockMask expected = ak::reference::xattention_select(
        as_double(scores), batch, heads, q_len, kv_len, std::vector<double>(tau.begin(), tau.end()),
        {.block = block, .causal = causal, .selection = selection, .chunk = chunk});
    CHECK(got.offsets == expected.offsets);
    CHECK(got.columns == expected.columns);
  }
}

// The blocks `selection` keeps for query block qb of a (1, 1, n, n) score matrix whose row qb is
// `row` (the other rows zero), block 64.
std::vector<std::int32_t> kept_blocks(const std::vector<float>& row, Index qb, float tau, bool causal,
                                      ak::XSelection selection, Index chunk = 0) {
  const Index n = static_cast<Index>(row.size());
  std::vector<float> scores(static_cast<std::size_t>(n * n), 0.0f);
  std::copy(row.begin(), row.end(), scores.begin() + qb * n);
  const auto view = ak::View<const float, 4>::contiguous(scores.data(), {1, 1, n, n});
  const ak::BlockMask mask = ak::Attention<ak::XAttention, ak::Scalar>(
                                 {.block = 64, .tau = {tau}, .causal = causal, .selection = selection, .chunk = chunk})
                                 .select(view, n * 64, n * 64);
  const auto blocks = mask.blocks(0, 0, qb);
  return {blocks.begin(), blocks.end()};
}
using Blocks = std::vector<std::int32_t>;

}  // namespace

TEMPLATE_LIST_TEST_CASE("xattention scores match the naive antidiagonal scoring", "[sparse][xattention]",
                        ak::test::Backends) {
  std::mt19937 rng(13);
  for (int trial = 0; trial < 8; ++trial) {
    MaskedCase c = ak::test::random_case(rng, 400, 700 + trial);
    if (rng() % 2) c.kv_len = c.q_len;
    const Index stride = std::array<Index, 3>{2, 4, 8}[rng() % 3];
    check_scores<TestType>(c, stride, stride * (2 + rng() % 8), rng() % 4 != 0);
  }
  SECTION("defaults: stride 8, block 128, causal, lengths off the block") {
    check_scores<TestType>({.q_len = 300, .kv_len = 300, .q_heads = 2, .head_dim = 32, .seed = 9}, 8, 128, true);
    check_scores<TestType>({.q_len = 100, .kv_len = 300, .q_heads = 2, .head_dim = 16, .seed = 10}, 8, 128, true);
    check_scores<TestType>({.q_len = 300, .kv_len = 130, .head_dim = 16, .seed = 11}, 8, 64, true);
  }
}

TEST_CASE("xattention selection matches the naive selection", "[sparse][xattention]") {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  SECTION("random scores, causal and not, q_len != kv_len") {
    for (const auto& [q_len, kv_len] : {std::pair<Index, Index>{1000, 1000}, {300, 1000}, {1000, 300}, {64, 64}})
      for (const bool causal : {true, false})
        for (const float tau : {0.0f, 0.3f, 0.9f, 1.0f}) {
          std::vector<float> scores(2 * 3 * blocks_of(q_len, 64) * blocks_of(kv_len, 64));
          for (float& s : scores) s = uniform(rng);
          check_selection(scores, 2, 3, q_len, kv_len, {tau}, 64, causal);
          check_selection<ak::OpenMP<>>(scores, 2, 3, q_len, kv_len, {tau}, 64, causal, 4 * 64);
        }
  }
  SECTION("random shapes, chunks and block sizes; zero scores past the causal diagonal") {
    for (int trial = 0; trial < 40; ++trial) {
      const Index block = std::array<Index, 3>{16, 32, 64}[rng() % 3];
      const Index q_len = 1 + rng() % 900, kv_len = rng() % 2 ? q_len : 1 + rng() % 900;
      const bool causal = rng() % 3 != 0;
      const Index chunk = block * (rng() % 4);  // 0: the reference's default chunk
      const Index q_blocks = blocks_of(q_len, block), kv_blocks = blocks_of(kv_len, block);
      std::vector<float> scores(static_cast<std::size_t>(2 * q_blocks * kv_blocks));
      for (float& s : scores) s = rng() % 4 == 0 ? 0.0f : uniform(rng);
      if (causal && rng() % 2)  // as score() gives them: nothing right of the diagonal
        for (Index h = 0; h < 2; ++h)
          for (Index qb = 0; qb < q_blocks; ++qb) {
            const Index last_key = std::min(qb * block + block - 1, q_len - 1) + kv_len - q_len;
            for (Index kb = std::max<Index>(last_key / block + 1, 0); kb < kv_blocks; ++kb)
              scores[(h * q_blocks + qb) * kv_blocks + kb] = 0.0f;
          }
      check_selection(scores, 1, 2, q_len, kv_len, {uniform(rng), uniform(rng)}, block, causal, chunk);
    }
  }
  SECTION("ties: integer scores") {
    std::vector<float> scores(3 * 16 * 16);
    for (float& s : scores) s = static_cast<float>(rng() % 3);
    for (const float tau : {0.2f, 0.5f, 0.8f})
      for (const bool causal : {true, false}) check_selection(scores, 1, 3, 16 * 64, 16 * 64, {tau}, 64, causal);
  }
  SECTION("per-head tau") {
    std::vector<float> scores(4 * 10 * 10);
    for (float& s : scores) s = uniform(rng);
    check_selection(scores, 1, 4, 640, 640, {0.1f, 0.5f, 0.9f, 1.0f}, 64, true);
  }
  SECTION("tau = 1 selects every visible block, tau = 0 the sink and the diagonal only") {
    const Index n = 10;
    std::vector<float> scores(n * n);
    for (float& s : scores) s = 0.01f + uniform(rng);
    const auto view = ak::View<const float, 4>::contiguous(scores.data(), {1, 1, n, n});
    const ak::BlockMask all =
        ak::Attention<ak::XAttention>({.block = 64, .tau = {1.0f}, .causal = true}).select(view, 640, 640);
    const ak::BlockMask few =
        ak::Attention<ak::XAttention>({.block = 64, .tau = {0.0f}, .causal = true}).select(view, 640, 640);
    for (Index qb = 0; qb < n; ++qb) {
      CHECK(all.blocks(0, 0, qb).size() == std::size_t(qb + 1));
      std::vector<std::int32_t> sink_and_diagonal{0};
      if (qb > 0) sink_and_diagonal.push_back(static_cast<std::int32_t>(qb));
      const auto blocks = few.blocks(0, 0, qb);
      CHECK(std::vector<std::int32_t>(blocks.begin(), blocks.end()) == sink_and_diagonal);
    }
    CHECK(ak::block_density(all, 640, 640, 64, true) == std::vector<double>{1.0});
    CHECK(ak::block_density(few, 640, 640, 64, true)[0] == Approx(19.0 / 55.0));
  }
}

TEST_CASE("xattention selection: the smallest case where the reference rule keeps one block more",
          "[sparse][xattention]") {
  // L 512, block 64 (8 key blocks), query block 4, causal, q_len == kv_len, tau 0.9; the row's
  // scores sum to 8 (8 strided rows of probabilities), so the threshold is 7.2.
  const std::vector<float> row{0, 0, 0, 2.603f, 5.397f, 0, 0, 0};
  // Default: the sink (0) and the diagonal (5.397) are kept; 5.397 < 7.2 adds the largest other,
  // block 3 (sum 8.0); 8.0 >= 7.2 stops: {0, 3, 4}.
  CHECK(kept_blocks(row, 4, 0.9f, true, ak::XSelection::kSinkDiagonalThreshold) == Blocks{0, 3, 4});
  // Reference: the diagonal write covers column 0 (first chunk), so only the diagonal is
  // pre-selected. Ranking: 4 (pre-selected), then 3, 2, 1, 0 (zeros tie, the higher index first).
  // Sums before each position: 0, 0, 5.397, 8.0, ...: positions 0, 1, 2 (blocks 4, 3, 2) pass and
  // the rest fall back to index 0: {0, 2, 3, 4}.
  CHECK(kept_blocks(row, 4, 0.9f, true, ak::XSelection::kReferenceChunked) == Blocks{0, 2, 3, 4});
  // In a later chunk (2 query blocks per chunk: block 4 starts chunk 2) the sink is pre-selected
  // with the diagonal and the rule is the default one.
  CHECK(kept_blocks(row, 4, 0.9f, true, ak::XSelection::kReferenceChunked, 2 * 64) == Blocks{0, 3, 4});
  // tau 0: the diagonal and, by the fallback, block 0.
  CHECK(kept_blocks(row, 4, 0.0f, true, ak::XSelection::kReferenceChunked) == Blocks{0, 4});
  // The kernel's scores end in the same selection: the whole call keeps what select() keeps
  // (checked on random inputs by "xattention equals block-sparse attention ...").
}

TEST_CASE("xattention selection: the reference rule does not force the diagonal when not causal",
          "[sparse][xattention]") {
  // Non-causal, query block 4 of 8, tau 0.5 (threshold 4 of 8): block 0 (6.0) alone reaches it.
  const std::vector<float> row{6.0f, 0, 0, 0, 0.01f, 1.99f, 0, 0};
  // Default: the sink and the diagonal (6.01 >= 4): {0, 4}.
  CHECK(kept_blocks(row, 4, 0.5f, false, ak::XSelection::kSinkDiagonalThreshold) == Blocks{0, 4});
  // Reference: ranking 0, 5, 4, ...; sums before: 0, 6, ...: only block 0: {0}.
  CHECK(kept_blocks(row, 4, 0.5f, false, ak::XSelection::kReferenceChunked) == Blocks{0});
  // tau 0.9 (threshold 7.2): ranking 0, 5, 4, ...; sums before 0, 6.0, 7.99: {0, 5}, still without
  // the diagonal; the default adds block 5 to the sink and the diagonal (6.01, then 8.0): {0, 4, 5}.
  CHECK(kept_blocks(row, 4, 0.9f, false, ak::XSelection::kReferenceChunked) == Blocks{0, 5});
  CHECK(kept_blocks(row, 4, 0.9f, false, ak::XSelection::kSinkDiagonalThreshold) == Blocks{0, 4, 5});
}

TEST_CASE("xattention: not causal by default; names say causal; the reference's default chunk",
          "[sparse][xattention]") {
  CHECK_FALSE(ak::XAttention::Options{}.causal);
  CHECK_FALSE(ak::BlockSparse::Options{}.causal);
  CHECK_FALSE(ak::reference::XAttentionOptions{}.causal);
  CHECK(ak::XAttention::Options{}.selection == ak::XSelection::kSinkDiagonalThreshold);
  CHECK(ak::Attention<ak::XAttention, ak::Scalar>().name() == "xattention/scalar");
  CHECK(ak::Attention<ak::XAttention, ak::Scalar>({.causal = true}).name() == "xattention-causal/scalar");
  CHECK(ak::Attention<ak::BlockSparse, ak::Scalar>().name() == "block-sparse/scalar");
  CHECK(ak::Attention<ak::BlockSparse, ak::Scalar>({.causal = true}).name() == "block-sparse-causal/scalar");
  // Xattention_prefill: max(min(max(2048, p), 2^28 / p), 2048), p = bit_ceil(kv_len).
  CHECK(ak::xattention_reference_chunk(1) == 2048);
  CHECK(ak::xattention_reference_chunk(512) == 2048);
  CHECK(ak::xattention_reference_chunk(3000) == 4096);
  CHECK(ak::xattention_reference_chunk(16384) == 16384);
  CHECK(ak::xattention_reference_chunk(16385) == 8192);
  CHECK(ak::xattention_reference_chunk(131072) == 2048);
  CHECK(ak::xattention_reference_chunk(1 << 20) == 2048);
}

TEMPLATE_LIST_TEST_CASE("xattention equals block-sparse attention with its selected mask", "[sparse][xattention]",
                        ak::test::Backends) {
  for (const MaskedCase& c : {MaskedCase{.batch = 2,
                             .q_len = 500,
                             .kv_len = 500,
                             .q_heads = 4,
                             .kv_heads = 2,
                             .head_dim = 16,
                             .v_dim = 12,
                             .seed = 21},
                              MaskedCase{.q_len = 200,
                              .kv_len = 450,
                              .q_heads = 2,
                              .head_dim = 24,
                              .v_dim = 24,
                              .layout = Layout::kBhsd,
                              .seed = 22}})
    for (const bool causal : {true, false})
      for (const ak::XSelection selection : kSelections) {
        const ak::XAttention::Options o{
            .stride = 4, .block = 64, .tau = {0.8f}, .causal = causal, .selection = selection, .chunk = 128};
        ak::test::MaskedRun run(c);
        ak::BlockMask selected;
        const ak::Attention<ak::XAttention, TestType> attn(o);
        attn(run.q.view, run.k.view, run.v.view, run.out.view, {.selected = &selected});
        // The mask is the selection of the scores.
        const std::vector<float> scores = kernel_scores<TestType>(c, run, o);
        const ak::BlockMask expected =
            attn.select(ak::View<const float, 4>::contiguous(
                            scores.data(), {c.batch, c.out_heads(), blocks_of(c.q_len, 64), blocks_of(c.kv_len, 64)}),
                        c.q_len, c.kv_len);
        CHECK(selected.offsets == expected.offsets);
        CHECK(selected.columns == expected.columns);
        // ... and the twin's selection of the kernel's scores.
        const ak::BlockMask twin = ak::reference::xattention_select(
            as_double(scores), c.batch, c.out_heads(), c.q_len, c.kv_len, {double(0.8f)},
            {.block = 64, .causal = causal, .selection = selection, .chunk = 128});
        CHECK(selected.offsets == twin.offsets);
        CHECK(selected.columns == twin.columns);
        const std::vector<double> density = ak::block_density(selected, c.q_len, c.kv_len, 64, causal);
        CHECK(density.size() == std::size_t(c.batch * c.out_heads()));
        for (const double d : density) CHECK((d > 0.0 && d <= 1.0));
        ak::test::check_masked(c, run, ak::reference::BlockElements(selected, 64, c.q_len, c.kv_len, causal));
        CHECK(attn.cost(run.q.view, run.k.view, run.v.view, selected).flops > 0);
      }
}

TEST_CASE("xattention with tau = 1 equals dense attention", "[sparse][xattention]") {
  const MaskedCase c{.q_len = 333, .kv_len = 333, .q_heads = 2, .head_dim = 16, .v_dim = 16, .seed = 31};
  ak::test::MaskedRun run(c);
  ak::BlockMask selected;
  ak::Attention<ak::XAttention, ak::Simd<>>({.block = 64, .tau = {1.0f}, .causal = true})(
      run.q.view, run.k.view, run.v.view, run.out.view, {.selected = &selected});
  CHECK(ak::block_density(selected, c.q_len, c.kv_len, 64, true) == std::vector<double>{1.0, 1.0});
  ak::test::check_masked(c, run, ak::reference::WindowElements{c.q_len, c.kv_len, -1, -1, true});
}

TEST_CASE("xattention on empty inputs: no batch, no queries, no keys", "[sparse][xattention]") {
  for (const MaskedCase& c : {MaskedCase{.batch = 0, .q_len = 50, .kv_len = 50}, MaskedCase{.q_len = 0, .kv_len = 50},
                              MaskedCase{.q_len = 50, .kv_len = 0}, MaskedCase{.q_len = 3, .kv_len = 50}}) {
    ak::test::MaskedRun run(c);
    ak::BlockMask selected;
    ak::Attention<ak::XAttention, ak::OpenMP<>>({.stride = 4, .block = 16, .causal = true})(
        run.q.view, run.k.view, run.v.view, run.out.view, {.selected = &selected});
    CHECK(selected.offsets.size() == std::size_t(c.batch * blocks_of(c.q_len, 16) + 1));
    ak::test::check_masked(c, run, ak::reference::BlockElements(selected, 16, c.q_len, c.kv_len, true));
  }
}

TEST_CASE("xattention rejects bad input with a message naming the argument", "[sparse][xattention][errors]") {
  using Catch::Contains;
  CHECK_THROWS_AS(ak::Attention<ak::XAttention>({.stride = 0}), ak::Error);
  CHECK_THROWS_WITH(ak::Attention<ak::XAttention>({.stride = 0}), Contains("options.stride is 0, expected >= 1"));
  CHECK_THROWS_WITH(ak::Attention<ak::XAttention>({.stride = 8, .block = 100}),
                    Contains("options.block is 100, expected a positive multiple of options.stride 8"));
  CHECK_THROWS_WITH(ak::Attention<ak::XAttention>({.tau = {}}), Contains("options.tau: empty"));
  CHECK_THROWS_WITH(ak::Attention<ak::XAttention>({.tau = {0.5f, 1.5f}}),
                    Contains("options.tau[1] is 1.5, expected in [0, 1]"));
  CHECK_THROWS_WITH(ak::Attention<ak::XAttention>({.tau = {std::nanf("")}}), Contains("options.tau[0] is nan"));
  CHECK_THROWS_WITH(ak::Attention<ak::XAttention>({.scale = -2.0f}),
                    Contains("options.scale is -2, expected a finite value > 0"));
  CHECK_THROWS_WITH(ak::Attention<ak::XAttention>({.block = 64, .chunk = 100}),
                    Contains("options.chunk is 100, expected 0 or a positive multiple of options.block 64"));
  CHECK_THROWS_WITH(ak::Attention<ak::XAttention>({.block = 64, .chunk = -64}), Contains("options.chunk is -64"));
  std::vector<float> buf(4096, 0.0f), out_buf(4096, 0.0f);
  float* p = buf.data();      // inputs (they may share memory)
  float* o = out_buf.data();  // outputs, which must not
  const auto q = ak::bshd(p, 1, 100, 4, 8), k = ak::bshd(p, 1, 100, 2, 8), out = ak::bshd(o, 1, 100, 4, 8);
  const ak::Attention<ak::XAttention, ak::Simd<>> three({.block = 32, .tau = {0.5f, 0.6f, 0.7f}});
  CHECK_THROWS_WITH(three(q, k, k, out), Contains("options.tau: 3 values, expected 1 or 4 (out heads)"));
  const ak::Attention<ak::XAttention, ak::Simd<>> attn({.block = 32});
  CHECK_NOTHROW(attn(q, k, k, out));
  CHECK_THROWS_WITH(attn(q, ak::bshd(p, 1, 100, 3, 8), ak::bshd(p, 1, 100, 3, 8), out),
                    Contains("k: heads 3, expected a divisor or a multiple of q heads 4"));
  CHECK_THROWS_WITH(attn.score(q, k, ak::View<float, 4>::contiguous(p, {1, 4, 4, 3})),
                    Contains("scores: extent 3 is 3, expected 4 (batch, out_heads, q_blocks, kv_blocks)"));
  CHECK_THROWS_WITH(attn.select(ak::View<const float, 4>::contiguous(p, {1, 4, 4, 3}), 100, 100),
                    Contains("scores: blocks 4 x 3, expected 4 x 4"));
}
