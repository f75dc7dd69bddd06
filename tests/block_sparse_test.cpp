// Attention<BlockSparse> against reference::block_sparse (the block mask as explicit element
// mask) on every backend: random masks and shapes, block sizes on and off the vector width,
// causal with q_len != kv_len, empty rows, GQA; equality with dense when every block is listed;
// cost() of visited blocks; every error message.
#include <catch2/catch.hpp>

#include <attnkit/reference/block_sparse.hpp>
#include <cstring>

#include "masked_check.hpp"

namespace ak = attnkit;
using ak::Index;
using ak::test::Layout;
using ak::test::MaskedCase;

namespace {

ak::BlockMask random_mask(const MaskedCase& c, Index block, double density, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::bernoulli_distribution keep(density);
  return ak::BlockMask::from_predicate(c.batch, c.out_heads(), (c.q_len + block - 1) / block,
                                       (c.kv_len + block - 1) / block,
                                       [&](Index, Index, Index, Index) { return keep(rng); });
}

ak::BlockMask full_mask(const MaskedCase& c, Index block) { return random_mask(c, block, 1.0, 0); }

template <class Backend>
void check_block_sparse(const MaskedCase& c, const ak::BlockMask& mask, Index block, bool causal) {
  INFO("block " << block << " causal " << causal << " listed " << mask.columns.size());
  ak::test::MaskedRun run(c);
  const ak::Attention<ak::BlockSparse, Backend> attn({.block = block, .causal = causal});
  attn(run.q.view, run.k.view, run.v.view, mask, run.out.view);
  ak::test::check_masked(c, run, ak::reference::BlockElements(mask, block, c.q_len, c.kv_len, causal));
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("block-sparse matches its reference on random masks", "[sparse][block_sparse]",
                        ak::test::Backends) {
  std::mt19937 rng(91);
  const std::array<Index, 5> blocks{16, 40, 64, 128, 7};
  for (int trial = 0; trial < 10; ++trial) {
    const MaskedCase c = ak::test::random_case(rng, 300, 500 + trial);
    const Index block = blocks[rng() % blocks.size()];
    const double density = (rng() % 10) / 10.0;
    check_block_sparse<TestType>(c, random_mask(c, block, density, c.seed), block, rng() % 2);
  }
}

TEMPLATE_LIST_TEST_CASE("block-sparse edge cases", "[sparse][block_sparse]", ak::test::Backends) {
  SECTION("lengths off the block, causal with q_len < kv_len and q_len > kv_len") {
    const MaskedCase shorter{.q_len = 100, .kv_len = 300, .q_heads = 2, .head_dim = 16, .v_dim = 16, .seed = 3};
    check_block_sparse<TestType>(shorter, random_mask(shorter, 64, 0.5, 1), 64, true);
    const MaskedCase longer{.q_len = 300, .kv_len = 100, .q_heads = 2, .head_dim = 16, .v_dim = 16, .seed = 4};
    check_block_sparse<TestType>(longer, random_mask(longer, 64, 0.7, 2), 64, true);
  }
  SECTION("rows whose blocks are all absent are zeros") {
    const MaskedCase c{.q_len = 130, .kv_len = 130, .head_dim = 8, .v_dim = 8, .seed = 5};
    const ak::BlockMask mask = ak::BlockMask::from_predicate(1, 1, 3, 3, [](Index, Index, Index qb, Index kb) {
      return qb != 1 && kb <= qb;  // query block 1 lists nothing
    });
    ak::test::MaskedRun run(c);
    ak::Attention<ak::BlockSparse, TestType>({.block = 64})(run.q.view, run.k.view, run.v.view, mask, run.out.view);
    for (Index i = 64; i < 128; ++i)
      for (Index d = 0; d < 8; ++d) CHECK(run.out.view(0, i, 0, d) == 0.0f);
    check_block_sparse<TestType>(c, mask, 64, false);
    const ak::BlockMask none = random_mask(c, 64, 0.0, 1);
    check_block_sparse<TestType>(c, none, 64, true);
  }
  SECTION("causal: blocks above the diagonal listed but never visited") {
    const MaskedCase c{.q_len = 256, .kv_len = 256, .q_heads = 4, .kv_heads = 2, .head_dim = 32, .v_dim = 32};
    check_block_sparse<TestType>(c, full_mask(c, 64), 64, true);
  }
  SECTION("empty batch and no queries") {
    check_block_sparse<TestType>({.batch = 0, .q_len = 5, .kv_len = 5}, full_mask({.batch = 0}, 64), 64, false);
    const MaskedCase c{.q_len = 0, .kv_len = 5};
    check_block_sparse<TestType>(c, full_mask(c, 64), 64, true);
  }
}

TEMPLATE_LIST_TEST_CASE("block-sparse with every block listed equals dense", "[sparse][block_sparse]",
                        ak::test::Backends) {
  // d = 256 makes the dense key block 128 keys: the same blocks, so the same bits.
  for (const bool causal : {false, true}) {
    const MaskedCase c{.q_len = 300, .kv_len = 300, .q_heads = 2, .kv_heads = 1, .head_dim = 256, .v_dim = 256};
    ak::test::MaskedRun run(c), dense_run(c);
    ak::Attention<ak::BlockSparse, TestType>({.block = 128, .causal = causal})(run.q.view, run.k.view, run.v.view,
                                                                               full_mask(c, 128), run.out.view);
    ak::Attention<ak::Dense, TestType>({.causal = causal}, ak::test::compile_time_kernels<TestType>())(
        dense_run.q.view, dense_run.k.view, dense_run.v.view, dense_run.out.view);
    CHECK(std::memcmp(run.out.data.data(), dense_run.out.data.data(), run.out.data.size() * sizeof(float)) == 0);
  }
  // Other block sizes: the same math in another key order, within the exact tolerance.
  const MaskedCase c{.q_len = 200, .kv_len = 333, .q_heads = 4, .kv_heads = 2, .head_dim = 24, .v_dim = 24};
  check_block_sparse<TestType>(c, full_mask(c, 64), 64, true);
}

TEST_CASE("block-sparse cost counts visited blocks only", "[sparse][block_sparse]") {
  const float* none = reinterpret_cast<const float*>(16);
  const Index n = 1000, heads = 2, dim = 16;
  const auto x = ak::bshd(none, 1, n, heads, dim);
  const MaskedCase c{.q_len = n, .kv_len = n, .q_heads = heads, .kv_heads = heads};
  for (const bool causal : {false, true}) {
    const ak::Attention<ak::BlockSparse, ak::Simd<>> sparse({.block = 128, .causal = causal});
    const ak::Attention<ak::Dense, ak::Simd<>> dense({.causal = causal});
    CHECK(sparse.cost(x, x, x, full_mask(c, 128)).flops == Approx(dense.cost(x, x, x).flops));
    CHECK(sparse.cost(x, x, x, random_mask(c, 128, 0.0, 1)).flops == 0.0);
  }
  // Only the diagonal blocks, causal: each block of b rows sees b (b + 1) / 2 pairs.
  const ak::BlockMask diagonal =
      ak::BlockMask::from_predicate(1, heads, 8, 8, [](Index, Index, Index qb, Index kb) { return qb == kb; });
  const ak::Attention<ak::BlockSparse, ak::Simd<>> sparse({.block = 128, .causal = true});
  const double pairs = 7 * (128.0 * 129 / 2) + (104.0 * 105 / 2);
  CHECK(sparse.cost(x, x, x, diagonal).flops == Approx(2.0 * pairs * heads * 2 * dim));
}

TEST_CASE("block-sparse rejects bad input with a message naming the argument", "[sparse][block_sparse][errors]") {
  std::vector<float> buf(4096, 0.0f), out_buf(4096, 0.0f);
  float* p = buf.data();      // inputs (they may share memory)
  float* o = out_buf.data();  // outputs, which must not
  const auto q = ak::bshd(p, 1, 100, 4, 8), k = ak::bshd(p, 1, 70, 2, 8), out = ak::bshd(o, 1, 100, 4, 8);
  const ak::Attention<ak::BlockSparse, ak::Simd<>> attn({.block = 32});
  auto mask = [](Index batch, Index heads, Index q_blocks, Index kv_blocks) {
    return ak::BlockMask::from_predicate(batch, heads, q_blocks, kv_blocks,
                                         [](Index, Index, Index, Index) { return true; });
  };
  using Catch::Contains;
  CHECK_NOTHROW(attn(q, k, k, mask(1, 4, 4, 3), out));
  CHECK_THROWS_AS(attn(q, k, k, mask(2, 4, 4, 3), out), ak::Error);
  CHECK_THROWS_WITH(attn(q, k, k, mask(2, 4, 4, 3), out), Contains("mask: batch 2, expected 1"));
  CHECK_THROWS_WITH(attn(q, k, k, mask(1, 2, 4, 3), out), Contains("mask: heads 2, expected 4 (out heads)"));
  CHECK_THROWS_WITH(attn(q, k, k, mask(1, 4, 3, 3), out), Contains("mask: q_blocks 3, expected 4"));
  CHECK_THROWS_WITH(attn(q, k, k, mask(1, 4, 4, 2), out), Contains("mask: kv_blocks 2, expected 3"));
  ak::BlockMask bad = mask(1, 4, 4, 3);
  bad.offsets.pop_back();
  CHECK_THROWS_WITH(attn(q, k, k, bad, out), Contains("mask.offsets: 16 entries, expected 17"));
  bad = mask(1, 4, 4, 3);
  bad.offsets[0] = 1;
  CHECK_THROWS_WITH(attn(q, k, k, bad, out), Contains("mask.offsets[0] is 1, expected 0"));
  bad = mask(1, 4, 4, 3);
  bad.offsets[2] = 1;
  CHECK_THROWS_WITH(attn(q, k, k, bad, out), Contains("mask.offsets[2] is 1, expected >= 3"));
  bad = mask(1, 4, 4, 3);
  bad.columns.pop_back();
  CHECK_THROWS_WITH(attn(q, k, k, bad, out), Contains("mask.offsets[16] is 48, expected 47 (columns)"));
  bad = mask(1, 4, 4, 3);
  bad.columns[4] = 0;
  CHECK_THROWS_WITH(attn(q, k, k, bad, out), Contains("mask.columns[4] is 0, expected in [1, 3)"));
  bad.columns[4] = 3;
  CHECK_THROWS_WITH(attn(q, k, k, bad, out), Contains("mask.columns[4] is 3, expected in [1, 3)"));
  CHECK_THROWS_WITH(attn(q, k, k, mask(1, 4, 4, 3), ak::bshd(p, 1, 100, 2, 8)), Contains("out: heads 2, expected 4"));
  CHECK_THROWS_WITH(ak::Attention<ak::BlockSparse>({.block = 0}), Contains("options.block is 0, expected >= 1"));
  CHECK_THROWS_WITH(ak::Attention<ak::BlockSparse>({.scale = 0.0f}),
                    Contains("options.scale is 0, expected a finite value > 0"));
}
