// Contracts at the edges of every front door: a size too large for the index types is an
// attnkit::Error naming the argument (before any allocation or loop over it), an output whose
// elements overlap, or whose memory overlaps an input or another output, is rejected, and packed
// Dense writes zeros (log-sum-exp -inf) in token rows past its last sequence.
#include <attnkit/attnkit.hpp>
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace ak = attnkit;
using ak::Index;
using Catch::Contains;
using In4 = ak::View<const float, 4>;
using Out4 = ak::View<float, 4>;

namespace {

constexpr Index kHuge = Index(1) << 21;  // kHuge^3 elements overflow int64
constexpr Index kLong = Index(1) << 32;  // one such view fits; kLong^2 work does not

// Buffers: inputs share one (they may), outputs have their own.
struct Buffers {
  std::vector<float> in = std::vector<float>(1 << 16, 0.25f);
  std::vector<float> out = std::vector<float>(1 << 16, 0.0f);
};

// An attention mechanism as q, k, v -> out, with its extra inputs (projection, hash, mask) made
// up for a small shape; the checks under test come before those inputs are read.
struct AttentionCall {
  std::string name;
  std::function<void(In4, In4, In4, Out4)> run;
  std::function<void(In4, In4, In4)> workspace_bytes;
};

std::vector<AttentionCall> attention_calls(const float* extra) {
  using B = ak::OpenMP<>;
  const ak::View<const float, 2> w(extra, {4, 1}, {1, 1});
  const ak::EcoFormerHash hash{ak::View<const float, 2>(extra, {4, 1}, {1, 1}),
                               ak::View<const float, 1>(extra, {4}, {1}),
                               ak::View<const float, 3>(extra, {1, 8, 4}, {32, 4, 1})};
  auto plain = [](auto attn, const char* name) {
    return AttentionCall{name, [attn](In4 q, In4 k, In4 v, Out4 o) { attn(q, k, v, o); },
                         [attn](In4 q, In4 k, In4 v) { (void)attn.workspace_bytes(q, k, v); }};
  };
  return {
      plain(ak::Attention<ak::Dense, B>(), "dense"),
      plain(ak::Attention<ak::Dense, B>({.causal = true}), "dense causal"),
      plain(ak::Attention<ak::Linear, B>(), "linear"),
      plain(ak::Attention<ak::CombinerFixed, B>(), "combiner-fixed"),
      plain(ak::Attention<ak::CombinerLogsparse, B>(), "combiner-logsparse"),
      plain(ak::Attention<ak::ProbSparse, B>(), "probsparse"),
      plain(ak::Attention<ak::XAttention, B>(), "xattention"),
      {"performer", [w](In4 q, In4 k, In4 v, Out4 o) { ak::Attention<ak::Performer, B>()(q, k, v, w, o); },
       [w](In4 q, In4 k, In4 v) { (void)ak::Attention<ak::Performer, B>().workspace_bytes(q, k, v, w); }},
      {"ecoformer", [hash](In4 q, In4 k, In4 v, Out4 o) { ak::Attention<ak::EcoFormer, B>()(q, k, v, hash, o); },
       [hash](In4 q, In4 k, In4 v) { (void)ak::Attention<ak::EcoFormer, B>().workspace_bytes(q, k, v, hash); }},
      {"block-sparse",
       [](In4 q, In4 k, In4 v, Out4 o) { ak::Attention<ak::BlockSparse, B>()(q, k, v, ak::BlockMask{}, o); },
       [](In4 q, In4 k, In4 v) {
         (void)ak::Attention<ak::BlockSparse, B>().workspace_bytes(q, k, v, ak::BlockMask{});
       }},
  };
}

// A view of n^3 elements that all alias one float (zero strides).
In4 huge_view(const float* p) { return In4(p, {kHuge, kHuge, kHuge, 1}, {0, 0, 0, 0}); }
In4 long_view(const float* p) { return In4(p, {1, kLong, 1, 1}, {0, 0, 0, 0}); }

}  // namespace

TEST_CASE("every attention mechanism rejects sizes that overflow int64, naming the argument", "[edge][overflow]") {
  Buffers buf;
  const float* p = buf.in.data();
  float* o = buf.out.data();
  const In4 q = ak::bshd(p, 1, 8, 1, 1), k = q, v = q;
  const Out4 out = ak::bshd(o, 1, 8, 1, 1);
  const Out4 huge_out(o, {kHuge, kHuge, kHuge, 1}, {0, 0, 0, 0});
  for (const AttentionCall& call : attention_calls(p + 1024)) {
    INFO(call.name);
    CHECK_THROWS_WITH(call.run(huge_view(p), k, v, out), Contains("q: element count overflows int64"));
    CHECK_THROWS_WITH(call.run(q, huge_view(p), v, out), Contains("k: element count overflows int64"));
    CHECK_THROWS_WITH(call.run(q, k, huge_view(p), out), Contains("v: element count overflows int64"));
    CHECK_THROWS_WITH(call.run(q, k, v, huge_out), Contains("out: element count overflows int64"));
    CHECK_THROWS_WITH(call.workspace_bytes(huge_view(p), k, v), Contains("q: element count overflows int64"));
    // Each view fits, the work (q_len x kv_len) does not.
    CHECK_THROWS_WITH(call.run(long_view(p), long_view(p), long_view(p), Out4(o, {1, kLong, 1, 1}, {0, 1, 1, 1})),
                      Contains("problem size overflows int64"));
    CHECK_THROWS_WITH(call.workspace_bytes(long_view(p), long_view(p), long_view(p)),
                      Contains("problem size overflows int64"));
    // The last element's byte offset overflows.
    CHECK_THROWS_WITH(call.run(In4(p, {2, 8, 1, 1}, {Index(1) << 62, 1, 1, 1}), ak::bshd(p, 2, 8, 1, 1),
                               ak::bshd(p, 2, 8, 1, 1), ak::bshd(o, 2, 8, 1, 1)),
                      Contains("q: byte offset of the last element overflows int64"));
    CHECK_THROWS_WITH(call.run(In4(p, {3, 8, 1, 1}, {std::numeric_limits<Index>::max() / 2 + 1, 1, 1, 1}),
                               ak::bshd(p, 3, 8, 1, 1), ak::bshd(p, 3, 8, 1, 1), ak::bshd(o, 3, 8, 1, 1)),
                      Contains("q: offset of the last element overflows int64"));
  }
  CHECK_THROWS_WITH(huge_view(p).size(), Contains("element count overflows int64"));
  CHECK(huge_view(p).empty() == false);
  CHECK_THROWS_WITH(ak::LinearState(kHuge, kHuge, kHuge, 1), Contains("state: size overflows int64"));
}

TEST_CASE("every attention mechanism rejects outputs that overlap themselves or an input", "[edge][aliasing]") {
  Buffers buf;
  float* in = buf.in.data();
  float* o = buf.out.data();
  const In4 q = ak::bshd(static_cast<const float*>(in), 1, 8, 2, 4),
            k = ak::bshd(static_cast<const float*>(in) + 64, 1, 8, 2, 4),
            v = ak::bshd(static_cast<const float*>(in) + 128, 1, 8, 2, 4);
  for (const AttentionCall& call : attention_calls(in + 1024)) {
    INFO(call.name);
    // Rows of out sharing memory: seq stride 0, or a head stride shorter than a row.
    CHECK_THROWS_WITH(call.run(q, k, v, Out4(o, {1, 8, 2, 4}, {64, 0, 4, 1})),
                      Contains("out: stride 1 is 0, expected >= 1 (the elements of an output view must not overlap)"));
    CHECK_THROWS_WITH(call.run(q, k, v, Out4(o, {1, 8, 2, 4}, {64, 8, 2, 1})),
                      Contains("out: stride 2 is 2, expected >= 4"));
    // Out aliasing an input, wholly or in part.
    CHECK_THROWS_WITH(call.run(q, k, v, ak::bshd(in, 1, 8, 2, 4)), Contains("out: memory overlaps q"));
    CHECK_THROWS_WITH(call.run(q, k, v, ak::bshd(in + 60, 1, 8, 2, 4)), Contains("out: memory overlaps q"));
    CHECK_THROWS_WITH(call.run(q, k, v, ak::bshd(in + 190, 1, 8, 2, 4)), Contains("out: memory overlaps v"));
  }
  // What is allowed: inputs sharing memory, a padded output, an output interleaving no input.
  ak::Attention<ak::Dense, ak::Scalar> dense;
  CHECK_NOTHROW(dense(q, q, q, ak::bshd(o, 1, 8, 2, 4)));
  CHECK_NOTHROW(dense(q, k, v, Out4(o, {1, 8, 2, 4}, {256, 32, 8, 1})));
  CHECK_NOTHROW(dense(q, k, v, Out4(o, {1, 8, 2, 4}, {64, 4, 32, 1})));  // heads outermost
  CHECK_NOTHROW(dense(q, k, v, ak::bshd(in + 192, 1, 8, 2, 4)));         // right after v
  // Dense's log-sum-exp is an output too.
  const Out4 out = ak::bshd(o, 1, 8, 2, 4);
  CHECK_THROWS_WITH(dense(q, k, v, out, {.lse = ak::View<float, 3>::contiguous(o + 8, {1, 8, 2})}),
                    Contains("args.lse: memory overlaps out"));
  CHECK_THROWS_WITH(dense(q, k, v, out, {.lse = ak::View<float, 3>::contiguous(in + 100, {1, 8, 2})}),
                    Contains("args.lse: memory overlaps k"));
  CHECK_THROWS_WITH(dense(q, k, v, out, {.lse = ak::View<float, 3>(o + 1024, {1, 8, 2}, {16, 1, 1})}),
                    Contains("args.lse: stride 2 is 1, expected >= 8"));
  // XAttention's block scores are an output of score().
  const ak::Attention<ak::XAttention, ak::Scalar> xattention({.stride = 2, .block = 4});
  CHECK_THROWS_WITH(xattention.score(q, k, ak::View<float, 4>::contiguous(in + 70, {1, 2, 2, 2})),
                    Contains("scores: memory overlaps k"));
}

TEST_CASE("Mamba and Mamba2 reject overflowing sizes and aliased outputs", "[edge][ssm]") {
  Buffers buf;
  float* in = buf.in.data();
  float* o = buf.out.data();
  const float* p = in;
  using In3 = ak::View<const float, 3>;
  const Index L = 8, d = 4, n = 2;
  const In3 u = In3::contiguous(p, {1, L, d}), delta = In3::contiguous(p + 32, {1, L, d});
  const ak::View<const float, 2> a = ak::View<const float, 2>::contiguous(p + 64, {d, n});
  const In4 b = In4::contiguous(p + 128, {1, L, 1, n}), c = In4::contiguous(p + 160, {1, L, 1, n});
  const ak::Attention<ak::Mamba, ak::Scalar> mamba;
  const ak::View<float, 3> out = ak::View<float, 3>::contiguous(o, {1, L, d});
  CHECK_NOTHROW(mamba(u, delta, a, b, c, out));
  const In3 huge(p, {kHuge, kHuge, kHuge}, {0, 0, 0});
  CHECK_THROWS_WITH(mamba(huge, delta, a, b, c, out), Contains("u: element count overflows int64"));
  CHECK_THROWS_WITH(mamba.workspace_bytes(huge, delta, a, b, c), Contains("u: element count overflows int64"));
  const In3 long_u(p, {1, kLong, Index(1) << 20}, {0, 0, 0});
  const ak::View<const float, 2> long_a(p, {Index(1) << 20, Index(1) << 12}, {0, 0});
  const In4 long_b(p, {1, kLong, 1, Index(1) << 12}, {0, 0, 0, 0});
  CHECK_THROWS_WITH(mamba.workspace_bytes(long_u, long_u, long_a, long_b, long_b), Contains("problem size overflows"));
  CHECK_THROWS_WITH(mamba(u, delta, a, b, c, ak::View<float, 3>::contiguous(in + 16, {1, L, d})),
                    Contains("out: memory overlaps u"));
  CHECK_THROWS_WITH(mamba(u, delta, a, b, c, ak::View<float, 3>(o, {1, L, d}, {32, 0, 1})),
                    Contains("out: stride 1 is 0"));
  ak::Mamba::Args args;
  args.final_state = ak::View<float, 3>::contiguous(o + 16, {1, d, n});
  CHECK_THROWS_WITH(mamba(u, delta, a, b, c, out, args), Contains("out: memory overlaps args.final_state"));
  args.final_state = ak::View<float, 3>::contiguous(in + 170, {1, d, n});
  CHECK_THROWS_WITH(mamba(u, delta, a, b, c, out, args), Contains("args.final_state: memory overlaps C"));
  // A decode step updates its state in place: final_state is initial_state.
  std::vector<float> state(d * n, 0.0f);
  const ak::View<float, 3> state_view = ak::View<float, 3>::contiguous(state.data(), {1, d, n});
  CHECK_NOTHROW(mamba.step(ak::View<const float, 2>::contiguous(p, {1, d}),
                           ak::View<const float, 2>::contiguous(p + 32, {1, d}), a, In3::contiguous(p + 128, {1, 1, n}),
                           In3::contiguous(p + 160, {1, 1, n}), state_view, ak::View<float, 2>::contiguous(o, {1, d})));

  const ak::Attention<ak::Mamba2, ak::Scalar> mamba2;
  const In4 x = In4::contiguous(p, {1, L, 2, 2});
  const In3 dt = In3::contiguous(p + 32, {1, L, 2});
  const ak::View<const float, 1> a2 = ak::View<const float, 1>::contiguous(p + 64, {2});
  const Out4 out2 = Out4::contiguous(o, {1, L, 2, 2});
  CHECK_NOTHROW(mamba2(x, dt, a2, b, c, out2));
  CHECK_THROWS_WITH(mamba2(In4(p, {kHuge, kHuge, kHuge, 1}, {0, 0, 0, 0}), dt, a2, b, c, out2),
                    Contains("x: element count overflows int64"));
  CHECK_THROWS_WITH(mamba2(x, dt, a2, b, c, Out4::contiguous(in + 130, {1, L, 2, 2})),
                    Contains("out: memory overlaps B"));
}

TEMPLATE_LIST_TEST_CASE("packed dense writes zeros past the last sequence", "[edge][packed]", ak::test::Backends) {
  const Index tokens = 11, used = 7, heads = 2, dim = 5;
  const std::vector<float> q = ak::test::uniform(tokens * heads * dim, 1),
                           k = ak::test::uniform(tokens * heads * dim, 2),
                           v = ak::test::uniform(tokens * heads * dim, 3);
  std::vector<float> out(tokens * heads * dim, std::nanf("")), lse(tokens * heads, std::nanf(""));
  const std::vector<std::int32_t> cu_q{0, 3, used}, cu_kv{0, 4, 9};
  const ak::Attention<ak::Dense, TestType> attn({.causal = true});
  attn(ak::thd(q.data(), tokens, heads, dim), ak::thd(k.data(), tokens, heads, dim),
       ak::thd(v.data(), tokens, heads, dim), ak::thd(out.data(), tokens, heads, dim), ak::CuSeqlens{cu_q, cu_kv},
       {.lse = ak::View<float, 3>::contiguous(lse.data(), {1, tokens, heads})});
  for (Index t = 0; t < tokens; ++t)
    for (Index h = 0; h < heads; ++h) {
      INFO("token " << t << " head " << h);
      if (t < used) {
        CHECK(std::isfinite(lse[t * heads + h]));
      } else {
        CHECK(lse[t * heads + h] == -std::numeric_limits<float>::infinity());
      }
      for (Index e = 0; e < dim; ++e) {
        const float value = out[(t * heads + h) * dim + e];
        if (t < used)
          CHECK(std::isfinite(value));
        else
          CHECK(value == 0.0f);
      }
    }
}
