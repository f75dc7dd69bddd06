// Attention<XAttention>: antidiagonal scoring against reference::xattention_scores (double, with
// the float twin for the tolerance rule), selection against reference::xattention_select exactly
// (random scores, ties, tau = 1, tau -> 0, per-head tau), the whole call against
// reference::block_sparse with the selected mask, batch > 1 and GQA; every error message.
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

// Kernel selection of flat scores (B, H, qb, kb) against the naive one.
void check_selection(const std::vector<float>& scores, Index batch, Index heads, Index q_len, Index kv_len,
                     const std::vector<float>& tau, Index block, bool causal) {
  const ak::Attention<ak::XAttention, ak::Scalar> attn({.stride = 8, .block = block, .tau = tau, .causal = causal});
  const auto view = ak::View<const float, 4>::contiguous(
      scores.data(), {batch, heads, blocks_of(q_len, block), blocks_of(kv_len, block)});
  const ak::BlockMask got = attn.select(view, q_len, kv_len);
  const ak::BlockMask expected =
      ak::reference::xattention_select(as_double(scores), batch, heads, q_len, kv_len,
                                       std::vector<double>(tau.begin(), tau.end()), {.block = block, .causal = causal});
  CHECK(got.offsets == expected.offsets);
  CHECK(got.columns == expected.columns);
}

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
        }
  }
  SECTION("ties: integer scores") {
    std::vector<float> scores(3 * 16 * 16);
    for (float& s : scores) s = static_cast<float>(rng() % 3);
    for (const float tau : {0.2f, 0.5f, 0.8f}) check_selection(scores, 1, 3, 16 * 64, 16 * 64, {tau}, 64, true);
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
    const ak::BlockMask all = ak::Attention<ak::XAttention>({.block = 64, .tau = {1.0f}}).select(view, 640, 640);
    const ak::BlockMask few = ak::Attention<ak::XAttention>({.block = 64, .tau = {0.0f}}).select(view, 640, 640);
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
    for (const bool causal : {true, false}) {
      const ak::XAttention::Options o{.stride = 4, .block = 64, .tau = {0.8f}, .causal = causal};
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
  ak::Attention<ak::XAttention, ak::Simd<>>({.block = 64, .tau = {1.0f}})(run.q.view, run.k.view, run.v.view,
                                                                          run.out.view, {.selected = &selected});
  CHECK(ak::block_density(selected, c.q_len, c.kv_len, 64, true) == std::vector<double>{1.0, 1.0});
  ak::test::check_masked(c, run, ak::reference::WindowElements{c.q_len, c.kv_len, -1, -1, true});
}

TEST_CASE("xattention on empty inputs: no batch, no queries, no keys", "[sparse][xattention]") {
  for (const MaskedCase& c : {MaskedCase{.batch = 0, .q_len = 50, .kv_len = 50}, MaskedCase{.q_len = 0, .kv_len = 50},
                              MaskedCase{.q_len = 50, .kv_len = 0}, MaskedCase{.q_len = 3, .kv_len = 50}}) {
    ak::test::MaskedRun run(c);
    ak::BlockMask selected;
    ak::Attention<ak::XAttention, ak::OpenMP<>>({.stride = 4, .block = 16})(run.q.view, run.k.view, run.v.view,
                                                                            run.out.view, {.selected = &selected});
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
