// Non-finite inputs (design.md section 4, README "Conventions"): for every mechanism x backend, a
// NaN, +Inf or -Inf in one element of a query row, a key row or a value row gives NaN / +-Inf
// exactly where the mechanism's double reference twin does (its values rounded to float), and
// finite elements within the tolerance rule; rows that see no key stay zeros. Where a float
// intermediate overflows (a huge finite q and k whose score is past FLT_MAX, an SSM state past
// FLT_MAX) the float twin, the same formula in float as PyTorch's float32, is the oracle. Mamba and
// Mamba2 add A > 0 overflow and a z gate of -Inf.
#include <catch2/catch.hpp>

#include <attnkit/reference/block_sparse.hpp>
#include <attnkit/reference/combiner.hpp>
#include <attnkit/reference/dense.hpp>
#include <attnkit/reference/ecoformer.hpp>
#include <attnkit/reference/linear.hpp>
#include <attnkit/reference/mamba.hpp>
#include <attnkit/reference/mamba2.hpp>
#include <attnkit/reference/masked.hpp>
#include <attnkit/reference/performer.hpp>
#include <attnkit/reference/probsparse.hpp>
#include <functional>
#include <limits>
#include <sstream>
#include <string>

#include "test_util.hpp"

namespace ak = attnkit;
using ak::Index;
using ak::test::Layout;
using ak::test::Tensor4;

namespace {

constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Which twin's non-finite elements the kernel reproduces, and how strictly.
enum class Oracle { kDouble, kFloat };
enum class Match { kClass, kFiniteness };  // NaN / +Inf / -Inf / finite, or only finite vs not

int value_class(double x) { return std::isnan(x) ? 1 : std::isinf(x) ? (x > 0 ? 2 : 3) : 0; }
const char* class_name(int c) { return c == 0 ? "finite" : c == 1 ? "NaN" : c == 2 ? "+Inf" : "-Inf"; }

// Outputs of one run: the kernel's, the double twin's and the float twin's, element by element.
struct Outputs {
  std::vector<float> got;
  std::vector<double> exact;
  std::vector<float> naive;
};

// A scan's outputs followed by its final state, checked as one.
Outputs with_state(Outputs o, const std::vector<float>& state, const std::vector<double>& exact_state,
                   const std::vector<float>& naive_state) {
  o.got.insert(o.got.end(), state.begin(), state.end());
  o.exact.insert(o.exact.end(), exact_state.begin(), exact_state.end());
  o.naive.insert(o.naive.end(), naive_state.begin(), naive_state.end());
  return o;
}

template <class T, int R>
void append(std::vector<T>& flat, const ak::View<T, R>& x) {
  static_assert(R == 3 || R == 4);
  const Index last = R == 4 ? x.extent(3) : 1;
  for (Index a = 0; a < x.extent(0); ++a)
    for (Index b = 0; b < x.extent(1); ++b)
      for (Index c = 0; c < x.extent(2); ++c)
        for (Index d = 0; d < last; ++d) {
          if constexpr (R == 4)
            flat.push_back(x(a, b, c, d));
          else
            flat.push_back(x(a, b, c));
        }
}

// The generic checker: element classes against the oracle twin, finite elements against the
// double twin with the tolerance rule (magnitude: the largest finite reference value).
void check_nonfinite(const Outputs& o, Oracle oracle = Oracle::kDouble, Match match = Match::kClass) {
  REQUIRE(o.got.size() == o.exact.size());
  REQUIRE(o.got.size() == o.naive.size());
  std::size_t mismatches = 0, nonfinite = 0;
  std::ostringstream first;
  double error = 0, float_error = 0, magnitude = 0;
  for (std::size_t i = 0; i < o.got.size(); ++i) {
    const float rounded = static_cast<float>(o.exact[i]);
    const int expected = value_class(oracle == Oracle::kDouble ? rounded : o.naive[i]), got = value_class(o.got[i]);
    nonfinite += expected != 0;
    const bool same = match == Match::kClass ? got == expected : (got == 0) == (expected == 0);
    if (!same && mismatches++ == 0)
      first << "element " << i << ": kernel " << o.got[i] << " (" << class_name(got) << "), double twin " << o.exact[i]
            << ", float twin " << o.naive[i] << ", expected " << class_name(expected);
    if (got == 0 && expected == 0 && std::isfinite(rounded) && std::isfinite(o.naive[i])) {
      error = std::max(error, std::abs(o.got[i] - o.exact[i]));
      float_error = std::max(float_error, std::abs(o.naive[i] - o.exact[i]));
      magnitude = std::max(magnitude, std::abs(o.exact[i]));
    }
  }
  INFO(mismatches << " of " << o.got.size() << " elements differ in class (" << nonfinite
                  << " expected non-finite); first: " << first.str());
  CHECK(mismatches == 0);
  INFO("finite elements: kernel error " << error << ", float twin error " << float_error << ", magnitude "
                                        << magnitude);
  CHECK(error <= ak::test::exact_tolerance(float_error, magnitude));
}

// ---- q, k, v mechanisms ----

struct Shape {
  Index batch = 2, q_len = 40, kv_len = 40, q_heads = 2, kv_heads = 1, head_dim = 16, v_dim = 12;
  Layout layout = Layout::kBshd;
  Index out_heads() const { return std::max(q_heads, kv_heads); }
};

struct Qkv {
  Tensor4 q, k, v;
  explicit Qkv(const Shape& s)
      : q(s.batch, s.q_len, s.q_heads, s.head_dim, s.layout),
        k(s.batch, s.kv_len, s.kv_heads, s.head_dim, s.layout),
        v(s.batch, s.kv_len, s.kv_heads, s.v_dim, s.layout) {
    q.fill_uniform(11);
    k.fill_uniform(12);
    v.fill_uniform(13);
  }
};

enum class Target { kQ, kK, kV, kHuge, kHugeQuery };
struct Injection {
  const char* what;
  Target target;
  float value;
};
constexpr Injection kInjections[] = {
    {"NaN in a query", Target::kQ, kNan}, {"+Inf in a query", Target::kQ, kInf}, {"-Inf in a query", Target::kQ, -kInf},
    {"NaN in a key", Target::kK, kNan},   {"+Inf in a key", Target::kK, kInf},   {"-Inf in a key", Target::kK, -kInf},
    {"NaN in a value", Target::kV, kNan}, {"+Inf in a value", Target::kV, kInf}, {"-Inf in a value", Target::kV, -kInf},
};
// A query row and a key row of 3e19 (head 0): their score overflows float, no other one does.
constexpr Injection kHuge{"huge finite query and key rows (score past FLT_MAX)", Target::kHuge, 3e19f};
// Four query elements of 1e38 against a key with ones there (default scale 1 / sqrt(head_dim)):
// q . k = 4e38 overflows, (scale q) . k does not. A score is (scale q) . k (README, Conventions).
constexpr Injection kHugeQuery{"a huge query whose unscaled product with a key overflows", Target::kHugeQuery, 1e38f};

// Rows the values go in: batch entry b, query row q_row, key row k_row, value row v_row (each
// clamped to its length), element 3 of the row (or the last), head 0.
struct Place {
  Index b = 1, q_row = 17, k_row = 11, v_row = 23;
};

void inject(Qkv& in, const Injection& injection, const Place& at = {}) {
  auto row = [](Tensor4& t, Index r) { return std::min(r, t.view.extent(1) - 1); };
  auto element = [](Tensor4& t) { return std::min<Index>(3, t.view.extent(3) - 1); };
  const Index b = std::min(at.b, in.q.view.extent(0) - 1);
  switch (injection.target) {
    case Target::kQ:
      in.q.view(b, row(in.q, at.q_row), 0, element(in.q)) = injection.value;
      break;
    case Target::kK:
      in.k.view(b, row(in.k, at.k_row), 0, element(in.k)) = injection.value;
      break;
    case Target::kV:
      in.v.view(b, row(in.v, at.v_row), 0, element(in.v)) = injection.value;
      break;
    case Target::kHuge:
      for (Index d = 0; d < in.q.view.extent(3); ++d) {
        in.q.view(b, row(in.q, at.q_row), 0, d) = injection.value;
        in.k.view(b, row(in.k, at.k_row), 0, d) = injection.value;
      }
      break;
    case Target::kHugeQuery:
      for (Index d = 0; d < std::min<Index>(4, in.q.view.extent(3)); ++d) {
        in.q.view(b, row(in.q, at.q_row), 0, d) = injection.value;
        in.k.view(b, row(in.k, at.k_row), 0, d) = 1.0f;
      }
      break;
  }
}

// Outputs of a (B, Lq, Ho, Dv) mechanism: run(in, out) runs the kernel; twin(in, exact, naive)
// both references.
using KernelRun = std::function<void(const Qkv&, const ak::View<float, 4>&)>;
using TwinRun = std::function<void(const Qkv&, const ak::View<double, 4>&, const ak::View<float, 4>&)>;

Outputs run_qkv(const Shape& s, const Qkv& in, const KernelRun& kernel, const TwinRun& twin) {
  Tensor4 out(s.batch, s.q_len, s.out_heads(), s.v_dim, s.layout);
  kernel(in, out.view);
  const ak::test::ReferenceOutputs reference({s.batch, s.q_len, s.out_heads(), s.v_dim});
  twin(in, reference.exact, reference.naive);
  Outputs o;
  append(o.got, ak::View<float, 4>(out.view));
  append(o.exact, reference.exact);
  append(o.naive, reference.naive);
  return o;
}

// Every injection (and, for mechanisms with q·k scores, the huge ones) on one shape.
void check_injections(const Shape& s, const KernelRun& kernel, const TwinRun& twin, bool scores = true,
                      const Place& at = {}) {
  for (const Injection& injection : kInjections) {
    INFO(injection.what);
    Qkv in(s);
    inject(in, injection, at);
    check_nonfinite(run_qkv(s, in, kernel, twin));
  }
  if (scores)
    for (const Injection& injection : {kHuge, kHugeQuery}) {
      INFO(injection.what);
      Qkv in(s);
      inject(in, injection, at);
      check_nonfinite(run_qkv(s, in, kernel, twin), Oracle::kFloat);
    }
}

ak::View<const float, 4> c4(const Tensor4& t) { return t.view; }

// Every element that is +-Inf in the double reference rounded to float is that Inf in the kernel.
void check_reference_infinities(const Outputs& o) {
  std::size_t infinities = 0, missed = 0;
  for (std::size_t i = 0; i < o.got.size(); ++i) {
    const float rounded = static_cast<float>(o.exact[i]);
    if (!std::isinf(rounded)) continue;
    ++infinities;
    missed += o.got[i] != rounded;
  }
  INFO(missed << " of the reference's " << infinities << " infinities are not the kernel's");
  CHECK(infinities > 0);
  CHECK(missed == 0);
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("non-finite inputs: dense", "[nonfinite][dense]", ak::test::Backends) {
  struct Config {
    const char* what;
    Shape shape;
    ak::Dense::Options options;
    std::vector<std::int32_t> q_lengths{}, kv_lengths{};
  };
  const Config configs[] = {
      {"non-causal", {.q_len = 150, .kv_len = 300}, {}},
      {"causal", {.q_len = 150, .kv_len = 150, .layout = Layout::kBhsd}, {.causal = true}},
      {"causal, q_len > kv_len (rows that see no key)", {.q_len = 60, .kv_len = 30}, {.causal = true}},
      {"window", {.q_len = 90, .kv_len = 90}, {.window = {.left = 20, .right = 5}}},
      {"padded lengths", {.q_len = 40, .kv_len = 40, .layout = Layout::kPaddedStrides}, {}, {40, 12}, {40, 9}},
      {"few rows per kv head (keys read in place)", {.q_len = 3, .kv_len = 200, .q_heads = 2}, {.causal = true}},
      {"decode: key splits", {.q_len = 1, .kv_len = 4300, .q_heads = 4, .kv_heads = 2}, {}},
  };
  for (const Config& c : configs) {
    INFO(c.what);
    const ak::SeqLengths lengths{c.q_lengths, c.kv_lengths};
    const ak::Attention<ak::Dense, TestType> attn(c.options);
    const ak::reference::DenseOptions ref{.causal = c.options.causal};
    const bool window = c.options.window.left >= 0 || c.options.window.right >= 0;
    const ak::reference::WindowElements band{c.shape.q_len, c.shape.kv_len, c.options.window.left,
                                             c.options.window.right, c.options.causal};
    const Place at{.k_row = std::min<Index>(11, c.shape.kv_len / 2), .v_row = std::min<Index>(23, c.shape.kv_len - 2)};
    check_injections(
        c.shape,
        [&](const Qkv& in, const ak::View<float, 4>& out) {
          attn(c4(in.q), c4(in.k), c4(in.v), out, {.lengths = lengths});
        },
        [&](const Qkv& in, const ak::View<double, 4>& exact, const ak::View<float, 4>& naive) {
          if (window) {
            ak::reference::masked<double>(c4(in.q), c4(in.k), c4(in.v), exact, band);
            ak::reference::masked<float>(c4(in.q), c4(in.k), c4(in.v), naive, band);
          } else {
            ak::reference::dense<double>(c4(in.q), c4(in.k), c4(in.v), exact, {}, ref, lengths);
            ak::reference::dense<float>(c4(in.q), c4(in.k), c4(in.v), naive, {}, ref, lengths);
          }
        },
        true, at);
  }
  {
    INFO("packed sequences (cu_seqlens)");
    const std::vector<std::int32_t> cu_q{0, 5, 45, 46}, cu_kv{0, 30, 70, 170};
    const Shape s{.batch = 1, .q_len = 46, .kv_len = 170, .q_heads = 4, .kv_heads = 2, .head_dim = 24, .v_dim = 24};
    const ak::SequenceLayout seqs = ak::SequenceLayout::packed({cu_q, cu_kv}, s.q_len, s.kv_len);
    for (bool causal : {false, true}) {
      INFO("causal " << causal);
      const ak::Attention<ak::Dense, TestType> attn(ak::Dense::Options{.causal = causal});
      auto packed = [](const Tensor4& t) {
        return ak::thd(static_cast<const float*>(t.data.data()), t.view.extent(1), t.view.extent(2), t.view.extent(3));
      };
      check_injections(
          s,
          [&](const Qkv& in, const ak::View<float, 4>& out) {
            attn(packed(in.q), packed(in.k), packed(in.v),
                 ak::thd(out.data(), out.extent(1), out.extent(2), out.extent(3)), ak::CuSeqlens{cu_q, cu_kv});
          },
          [&](const Qkv& in, const ak::View<double, 4>& exact, const ak::View<float, 4>& naive) {
            ak::reference::dense<double>(c4(in.q), c4(in.k), c4(in.v), exact, {}, seqs, {.causal = causal});
            ak::reference::dense<float>(c4(in.q), c4(in.k), c4(in.v), naive, {}, seqs, {.causal = causal});
          },
          true, Place{.b = 0, .q_row = 20, .k_row = 50, .v_row = 60});
    }
  }
}

TEMPLATE_LIST_TEST_CASE("non-finite inputs: block-sparse and XAttention's attention step", "[nonfinite][sparse]",
                        ak::test::Backends) {
  const Shape s{.q_len = 100, .kv_len = 90};
  for (bool causal : {false, true}) {
    INFO("causal " << causal);
    std::mt19937 rng(7);
    const Index block = 16;
    const ak::BlockMask mask = ak::BlockMask::from_predicate(s.batch, s.out_heads(), (s.q_len + block - 1) / block,
                                                             (s.kv_len + block - 1) / block,
                                                             [&](Index, Index, Index, Index) { return rng() % 5 < 3; });
    const ak::Attention<ak::BlockSparse, TestType> sparse({.block = block, .causal = causal});
    check_injections(
        s, [&](const Qkv& in, const ak::View<float, 4>& out) { sparse(c4(in.q), c4(in.k), c4(in.v), mask, out); },
        [&](const Qkv& in, const ak::View<double, 4>& exact, const ak::View<float, 4>& naive) {
          ak::reference::block_sparse<double>(c4(in.q), c4(in.k), c4(in.v), mask, exact, block, causal);
          ak::reference::block_sparse<float>(c4(in.q), c4(in.k), c4(in.v), mask, naive, block, causal);
        });
    // XAttention: the attention step over whatever blocks its selection kept.
    const ak::Attention<ak::XAttention, TestType> xattn({.stride = 4, .block = block, .tau = {0.9f}, .causal = causal});
    ak::BlockMask selected;
    check_injections(
        s,
        [&](const Qkv& in, const ak::View<float, 4>& out) {
          xattn(c4(in.q), c4(in.k), c4(in.v), out, {.selected = &selected});
        },
        [&](const Qkv& in, const ak::View<double, 4>& exact, const ak::View<float, 4>& naive) {
          ak::reference::block_sparse<double>(c4(in.q), c4(in.k), c4(in.v), selected, exact, block, causal);
          ak::reference::block_sparse<float>(c4(in.q), c4(in.k), c4(in.v), selected, naive, block, causal);
        });
  }
}

TEMPLATE_LIST_TEST_CASE("non-finite inputs: probsparse", "[nonfinite][probsparse]", ak::test::Backends) {
  const Shape s{.q_len = 40, .kv_len = 40};
  for (bool causal : {false, true}) {
    INFO("causal " << causal);
    const int factor = 2;
    const std::uint64_t seed = 5;
    const Index n = ak::probsparse_samples_per_query(factor, s.kv_len);
    std::vector<std::int32_t> samples(static_cast<std::size_t>(s.q_len * n));
    ak::probsparse_sample_indices(seed, s.q_len, s.kv_len, n, samples);
    const ak::Attention<ak::ProbSparse, TestType> attn({.factor = factor, .causal = causal, .seed = seed});
    const ak::reference::ProbSparseOptions ref{.factor = factor, .causal = causal};
    check_injections(
        s, [&](const Qkv& in, const ak::View<float, 4>& out) { attn(c4(in.q), c4(in.k), c4(in.v), out); },
        [&](const Qkv& in, const ak::View<double, 4>& exact, const ak::View<float, 4>& naive) {
          ak::reference::probsparse<double>(c4(in.q), c4(in.k), c4(in.v), samples, exact, ref);
          ak::reference::probsparse<float>(c4(in.q), c4(in.k), c4(in.v), samples, naive, ref);
        });
  }
}

TEMPLATE_LIST_TEST_CASE("non-finite inputs: combiner fixed and logsparse", "[nonfinite][combiner]",
                        ak::test::Backends) {
  const Shape s{.q_len = 50, .kv_len = 50};
  for (bool causal : {false, true}) {
    INFO("causal " << causal);
    const ak::Attention<ak::CombinerFixed, TestType> fixed({.causal = causal});
    check_injections(
        s, [&](const Qkv& in, const ak::View<float, 4>& out) { fixed(c4(in.q), c4(in.k), c4(in.v), out); },
        [&](const Qkv& in, const ak::View<double, 4>& exact, const ak::View<float, 4>& naive) {
          ak::reference::combiner_fixed<double>(c4(in.q), c4(in.k), c4(in.v), exact, {.causal = causal});
          ak::reference::combiner_fixed<float>(c4(in.q), c4(in.k), c4(in.v), naive, {.causal = causal});
        });
    INFO("logsparse");
    const ak::Attention<ak::CombinerLogsparse, TestType> logsparse({.causal = causal});
    check_injections(
        s, [&](const Qkv& in, const ak::View<float, 4>& out) { logsparse(c4(in.q), c4(in.k), c4(in.v), out); },
        [&](const Qkv& in, const ak::View<double, 4>& exact, const ak::View<float, 4>& naive) {
          ak::reference::combiner_logsparse<double>(c4(in.q), c4(in.k), c4(in.v), exact, {.causal = causal});
          ak::reference::combiner_logsparse<float>(c4(in.q), c4(in.k), c4(in.v), naive, {.causal = causal});
        });
  }
}

TEMPLATE_LIST_TEST_CASE("non-finite inputs: linear and performer", "[nonfinite][linear][performer]",
                        ak::test::Backends) {
  const Shape s{.q_len = 100, .kv_len = 100};
  const ak::RandomProjection w = ak::gaussian_orthogonal_features(32, s.head_dim, 3);
  const Place at{.q_row = 70, .k_row = 66, .v_row = 75};  // inside the second chunk of 64
  for (bool causal : {false, true}) {
    INFO("causal " << causal);
    const ak::Attention<ak::Linear, TestType> linear({.causal = causal});
    check_injections(
        s, [&](const Qkv& in, const ak::View<float, 4>& out) { linear(c4(in.q), c4(in.k), c4(in.v), out); },
        [&](const Qkv& in, const ak::View<double, 4>& exact, const ak::View<float, 4>& naive) {
          ak::reference::linear<double>(c4(in.q), c4(in.k), c4(in.v), exact, {.causal = causal});
          ak::reference::linear<float>(c4(in.q), c4(in.k), c4(in.v), naive, {.causal = causal});
        },
        false, at);
    INFO("performer");
    const ak::Attention<ak::Performer, TestType> performer({.causal = causal});
    check_injections(
        s,
        [&](const Qkv& in, const ak::View<float, 4>& out) { performer(c4(in.q), c4(in.k), c4(in.v), w.view(), out); },
        [&](const Qkv& in, const ak::View<double, 4>& exact, const ak::View<float, 4>& naive) {
          ak::reference::performer<double>(c4(in.q), c4(in.k), c4(in.v), w.view(), exact, {.causal = causal});
          ak::reference::performer<float>(c4(in.q), c4(in.k), c4(in.v), w.view(), naive, {.causal = causal});
        },
        false, at);
  }
}

TEMPLATE_LIST_TEST_CASE("non-finite inputs: ecoformer", "[nonfinite][ecoformer]", ak::test::Backends) {
  const Shape s{.q_len = 70, .kv_len = 70};
  const Index bits = 16, m = 12;
  const std::vector<float> anchors = ak::test::uniform(static_cast<std::size_t>(m * s.head_dim), 4);
  const std::vector<float> mvec(static_cast<std::size_t>(m), 0.3f);
  const std::vector<float> a = ak::test::uniform(static_cast<std::size_t>(s.kv_heads * bits * m), 5, -2.0f, 2.0f);
  ak::EcoFormerHash hash;
  hash.anchors = ak::View<const float, 2>::contiguous(anchors.data(), {m, s.head_dim});
  hash.mvec = ak::View<const float, 1>::contiguous(mvec.data(), {m});
  hash.a = ak::View<const float, 3>::contiguous(a.data(), {s.kv_heads, bits, m});
  for (bool causal : {false, true})
    for (const std::optional<float> sigma : {std::optional<float>{}, std::optional<float>{2.0f}}) {
      INFO("causal " << causal << " sigma " << sigma.value_or(0.0f));
      const ak::Attention<ak::EcoFormer, TestType> attn({.causal = causal, .sigma = sigma});
      const ak::reference::EcoFormerOptions ref{.causal = causal, .sigma = sigma.value_or(0.0f)};
      check_injections(
          s, [&](const Qkv& in, const ak::View<float, 4>& out) { attn(c4(in.q), c4(in.k), c4(in.v), hash, out); },
          [&](const Qkv& in, const ak::View<double, 4>& exact, const ak::View<float, 4>& naive) {
            ak::reference::ecoformer<double>(c4(in.q), c4(in.k), c4(in.v), hash.anchors, hash.mvec, hash.a, exact, ref);
            ak::reference::ecoformer<float>(c4(in.q), c4(in.k), c4(in.v), hash.anchors, hash.mvec, hash.a, naive, ref);
          },
          false);
    }
}

// ---- Mamba (selective scan) ----

namespace {

struct MambaInputs {
  Index batch = 2, len = 80, d_inner = 16, d_state = 4;
  std::vector<float> u, delta, a, b, c, d, z;
  explicit MambaInputs(float a_lo = -2.0f, float a_hi = -0.1f, float lo = -1.0f)
      : u(ak::test::uniform(batch * len * d_inner, 1, lo, 1.0f)),
        delta(ak::test::uniform(batch * len * d_inner, 2, 0.0f, 0.6f)),
        a(ak::test::uniform(d_inner * d_state, 3, a_lo, a_hi)),
        b(ak::test::uniform(batch * len * d_state, 4, lo, 1.0f)),
        c(ak::test::uniform(batch * len * d_state, 5, lo, 1.0f)),
        d(ak::test::uniform(d_inner, 6, lo, 1.0f)),
        z(ak::test::uniform(batch * len * d_inner, 7, lo < 0 ? -3.0f : 0.1f, 3.0f)) {}
  ak::View<const float, 3> tokens(const std::vector<float>& x) const {
    return ak::View<const float, 3>::contiguous(x.data(), {batch, len, d_inner});
  }
  ak::View<const float, 4> projection(const std::vector<float>& x) const {
    return ak::View<const float, 4>::contiguous(x.data(), {batch, len, 1, d_state});
  }
};

template <class Backend>
Outputs run_mamba(const MambaInputs& in) {
  const std::array<Index, 3> out_shape{in.batch, in.len, in.d_inner}, state_shape{in.batch, in.d_inner, in.d_state};
  std::vector<float> out(in.u.size()), state(static_cast<std::size_t>(in.batch * in.d_inner * in.d_state));
  const auto a = ak::View<const float, 2>::contiguous(in.a.data(), {in.d_inner, in.d_state});
  const auto d = ak::View<const float, 1>::contiguous(in.d.data(), {in.d_inner});
  ak::Attention<ak::Mamba, Backend>()(
      in.tokens(in.u), in.tokens(in.delta), a, in.projection(in.b), in.projection(in.c),
      ak::View<float, 3>::contiguous(out.data(), out_shape),
      {.d = d, .z = in.tokens(in.z), .final_state = ak::View<float, 3>::contiguous(state.data(), state_shape)});
  std::vector<double> exact(out.size()), exact_state(state.size());
  std::vector<float> naive(out.size()), naive_state(state.size());
  const ak::reference::MambaInputs ref{
      in.tokens(in.u), in.tokens(in.delta), a, in.projection(in.b), in.projection(in.c), d, in.tokens(in.z)};
  ak::reference::mamba<double>(ref, ak::View<double, 3>::contiguous(exact.data(), out_shape),
                               ak::View<double, 3>::contiguous(exact_state.data(), state_shape));
  ak::reference::mamba<float>(ref, ak::View<float, 3>::contiguous(naive.data(), out_shape),
                              ak::View<float, 3>::contiguous(naive_state.data(), state_shape));
  return with_state({out, exact, naive}, state, exact_state, naive_state);
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("non-finite inputs: mamba", "[nonfinite][mamba]", ak::test::Backends) {
  // One element of batch entry 1, token 30, channel 5 (state 2 for B and C).
  const Index t = 30, channel = 5, n = 2;
  for (const float value : {kNan, kInf, -kInf}) {
    INFO("value " << value);
    for (const char* target : {"u", "B", "C", "z"}) {
      INFO("in " << target);
      MambaInputs in;
      const Index token = (1 * in.len + t);
      if (target[0] == 'u') in.u[token * in.d_inner + channel] = value;
      if (target[0] == 'B') in.b[token * in.d_state + n] = value;
      if (target[0] == 'C') in.c[token * in.d_state + n] = value;
      if (target[0] == 'z') in.z[token * in.d_inner + channel] = value;
      check_nonfinite(run_mamba<TestType>(in));
    }
  }
  {
    INFO("a z gate of -Inf gives NaN (-Inf / (1 + e^Inf) in silu), as the reference");
    MambaInputs in;
    in.z[(1 * in.len + t) * in.d_inner + channel] = -kInf;
    const Outputs o = run_mamba<TestType>(in);
    CHECK(std::isnan(o.got[(1 * in.len + t) * in.d_inner + channel]));
    check_nonfinite(o);
  }
  {
    INFO("A > 0: a state growing past FLT_MAX is +Inf, as the reference rounded to float");
    // Positive inputs, growth e^(0.3 · 5) per token on average: every sum is of positive terms.
    // Near FLT_MAX a float sum can overflow where the double one stays below: the float twin is
    // the oracle of the classes, and every Inf of the rounded reference is the kernel's.
    MambaInputs in(4.0f, 6.0f, 0.1f);
    const Outputs o = run_mamba<TestType>(in);
    check_reference_infinities(o);
    check_nonfinite(o, Oracle::kFloat);
  }
  {
    INFO("A > 0 with mixed signs: overflowed states cancel as Inf - Inf = NaN, like the float twin");
    // The double reference is still finite there (beyond FLT_MAX: +-Inf once rounded); a float
    // implementation of the recurrence (the float twin, PyTorch's float32) gives NaN.
    MambaInputs in(4.0f, 6.0f);
    check_nonfinite(run_mamba<TestType>(in), Oracle::kFloat);
  }
  {
    INFO("exp(delta A) itself past FLT_MAX: Inf · 0 = NaN on a zero state, like the float twin");
    MambaInputs in(150.0f, 200.0f, 0.1f);
    check_nonfinite(run_mamba<TestType>(in), Oracle::kFloat);
  }
}

// ---- Mamba2 (SSD) ----

namespace {

struct Mamba2Inputs {
  Index batch = 2, len = 80, heads = 2, head_dim = 8, d_state = 4;
  std::vector<float> x, dt, a, b, c, d, z;
  explicit Mamba2Inputs(float a_lo = -2.0f, float a_hi = -0.1f, float lo = -1.0f)
      : x(ak::test::uniform(batch * len * heads * head_dim, 1, lo, 1.0f)),
        dt(ak::test::uniform(batch * len * heads, 2, 0.0f, 0.5f)),
        a(ak::test::uniform(heads, 3, a_lo, a_hi)),
        b(ak::test::uniform(batch * len * d_state, 4, lo, 1.0f)),
        c(ak::test::uniform(batch * len * d_state, 5, lo, 1.0f)),
        d(ak::test::uniform(heads, 6, lo, 1.0f)),
        z(ak::test::uniform(batch * len * heads * head_dim, 7, lo < 0 ? -3.0f : 0.1f, 3.0f)) {}
  ak::View<const float, 4> heads_view(const std::vector<float>& v) const {
    return ak::View<const float, 4>::contiguous(v.data(), {batch, len, heads, head_dim});
  }
  ak::View<const float, 4> projection(const std::vector<float>& v) const {
    return ak::View<const float, 4>::contiguous(v.data(), {batch, len, 1, d_state});
  }
};

template <class Backend>
Outputs run_mamba2(const Mamba2Inputs& in, ak::Mamba2::Form form) {
  const std::array<Index, 4> out_shape{in.batch, in.len, in.heads, in.head_dim},
      state_shape{in.batch, in.heads, in.head_dim, in.d_state};
  std::vector<float> out(in.x.size()), state(static_cast<std::size_t>(in.batch * in.heads * in.head_dim * in.d_state));
  const auto dt = ak::View<const float, 3>::contiguous(in.dt.data(), {in.batch, in.len, in.heads});
  const auto a = ak::View<const float, 1>::contiguous(in.a.data(), {in.heads});
  const auto d = ak::View<const float, 1>::contiguous(in.d.data(), {in.heads});
  ak::Attention<ak::Mamba2, Backend>({.chunk_size = 32, .form = form})(
      in.heads_view(in.x), dt, a, in.projection(in.b), in.projection(in.c),
      ak::View<float, 4>::contiguous(out.data(), out_shape),
      {.d = d, .z = in.heads_view(in.z), .final_state = ak::View<float, 4>::contiguous(state.data(), state_shape)});
  std::vector<double> exact(out.size()), exact_state(state.size());
  std::vector<float> naive(out.size()), naive_state(state.size());
  const ak::reference::Mamba2Inputs ref{in.heads_view(in.x), dt, a, in.projection(in.b), in.projection(in.c), d,
                                        in.heads_view(in.z)};
  ak::reference::mamba2<double>(ref, ak::View<double, 4>::contiguous(exact.data(), out_shape),
                                ak::View<double, 4>::contiguous(exact_state.data(), state_shape));
  ak::reference::mamba2<float>(ref, ak::View<float, 4>::contiguous(naive.data(), out_shape),
                               ak::View<float, 4>::contiguous(naive_state.data(), state_shape));
  return with_state({out, exact, naive}, state, exact_state, naive_state);
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("non-finite inputs: mamba2", "[nonfinite][mamba2]", ak::test::Backends) {
  using Form = ak::Mamba2::Form;
  // Batch entry 1, token 41: inside the second chunk, and not first in its 4-row block of the
  // chunked form, whose row 40 must not take it.
  const Index t = 41, head = 1, i = 5, n = 2;
  for (const Form form : {Form::kRecurrent, Form::kChunked}) {
    INFO("form " << int(form));
    for (const float value : {kNan, kInf, -kInf}) {
      INFO("value " << value);
      for (const char* target : {"x", "B", "C", "z"}) {
        INFO("in " << target);
        Mamba2Inputs in;
        const Index token = 1 * in.len + t;
        if (target[0] == 'x') in.x[(token * in.heads + head) * in.head_dim + i] = value;
        if (target[0] == 'B') in.b[token * in.d_state + n] = value;
        if (target[0] == 'C') in.c[token * in.d_state + n] = value;
        if (target[0] == 'z') in.z[(token * in.heads + head) * in.head_dim + i] = value;
        // The chunked form sums C·Bᵀ over the state before it sums over tokens, the recurrence the
        // other way round: an infinite x, B or C is +-Inf in one order and Inf - Inf = NaN in the
        // other. NaN, and z (applied last), match exactly.
        const bool reassociated = form == Form::kChunked && std::isinf(value) && target[0] != 'z';
        check_nonfinite(run_mamba2<TestType>(in, form), Oracle::kDouble,
                        reassociated ? Match::kFiniteness : Match::kClass);
      }
    }
    {
      INFO("a z gate of -Inf gives NaN, as the reference");
      Mamba2Inputs in;
      const Index at = ((1 * in.len + t) * in.heads + head) * in.head_dim + i;
      in.z[at] = -kInf;
      const Outputs o = run_mamba2<TestType>(in, form);
      CHECK(std::isnan(o.got[at]));
      check_nonfinite(o);
    }
    {
      INFO("A > 0: a state growing past FLT_MAX is +Inf, as the reference rounded to float");
      Mamba2Inputs in(6.0f, 8.0f, 0.1f);
      const Outputs o = run_mamba2<TestType>(in, form);
      check_reference_infinities(o);
      check_nonfinite(o, Oracle::kFloat);
    }
  }
}
