// libFuzzer target: every mechanism on every backend against its float64 reference twin.
// The first input byte picks the mechanism, the next ones the backend (Scalar, Simd<sse2>, the
// AVX2 and AVX-512 tile geometries native and emulated as tests/test_util.hpp, OpenMP<> with a
// thread count and a dispatched ISA variant), then the shape, strides, lengths / cu_seqlens,
// options and values (fuzz/decode.hpp). A case is valid or carries one known-invalid argument:
// a valid case must run and agree with the reference within the tests' tolerance; an invalid one
// must throw attnkit::Error. Anything else (a mismatch, an Error for a valid case, a missing
// Error, another exception, a sanitizer report) prints the decoded case and aborts.
// Non-finite values only with ATTNKIT_FUZZ_NONFINITE=1 (decode.hpp). At exit the target prints
// the executions per mechanism and per backend. Run it with scripts/fuzz.
#include <atomic>
#include <attnkit/attnkit.hpp>
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
#include <attnkit/reference/xattention.hpp>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "decode.hpp"

namespace ak = attnkit;
using ak::Index;
using ak::View;
using namespace attnkit::fuzz;

namespace {

// ---- mechanisms, backends and the execution counts printed at exit --------------------------

enum Mechanism {
  kDense,
  kBlockSparse,
  kXAttention,
  kLinear,
  kPerformer,
  kCombiner,
  kLogsparse,
  kEcoFormer,
  kProbSparse,
  kMamba,
  kMamba2,
  kMechanisms
};
const char* const kMechanismNames[kMechanisms] = {
    "dense",     "block_sparse", "xattention", "linear", "performer", "combiner_fixed", "combiner_logsparse",
    "ecoformer", "probsparse",   "mamba",      "mamba2"};

// The ISA axis of tests/test_util.hpp, plus the emulated geometries where the build runs them
// natively (so both run on an AVX-512 host).
using Sse2 = ak::Simd<xsimd::sse2>;
#if XSIMD_WITH_FMA3_AVX2
using Avx2Geometry = ak::Simd<xsimd::fma3<xsimd::avx2>>;
#else
using Avx2Geometry = ak::Simd<ak::Emulated<xsimd::sse2, 2>>;
#endif
#if XSIMD_WITH_AVX512BW
using Avx512Geometry = ak::Simd<xsimd::avx512bw>;
#elif XSIMD_WITH_FMA3_AVX2
using Avx512Geometry = ak::Simd<ak::Emulated<xsimd::fma3<xsimd::avx2>, 2>>;
#else
using Avx512Geometry = ak::Simd<ak::Emulated<xsimd::sse2, 4>>;
#endif
using Avx2Emulated = ak::Simd<ak::Emulated<xsimd::sse2, 2>>;
#if XSIMD_WITH_FMA3_AVX2
using Avx512Emulated = ak::Simd<ak::Emulated<xsimd::fma3<xsimd::avx2>, 2>>;
#else
using Avx512Emulated = ak::Simd<ak::Emulated<xsimd::sse2, 4>>;
#endif
enum BackendKind { kScalar, kSse2, kAvx2, kAvx512, kAvx2Emulated, kAvx512Emulated, kOpenMP, kBackends };
const char* const kBackendNames[kBackends] = {"scalar",        "simd-sse2",       "avx2-geometry", "avx512-geometry",
                                              "avx2-emulated", "avx512-emulated", "openmp"};

struct Counts {
  std::atomic<std::uint64_t> checked{0}, rejected{0}, skipped{0}, loose{0};
};
Counts mechanism_counts[kMechanisms];
Counts backend_counts[kBackends];

// One line per name: its checked / rejected / skipped / loose counts.
void print_count_lines(const char* const names[], const Counts counts[], int n) {
  for (int i = 0; i < n; ++i)
    std::fprintf(stderr, "attnkit_fuzz:   %-20s %10llu %10llu %10llu %10llu\n", names[i],
                 static_cast<unsigned long long>(counts[i].checked.load()),
                 static_cast<unsigned long long>(counts[i].rejected.load()),
                 static_cast<unsigned long long>(counts[i].skipped.load()),
                 static_cast<unsigned long long>(counts[i].loose.load()));
}

void print_counts() {
  std::fprintf(stderr,
               "attnkit_fuzz: executions per mechanism (%s mode): checked against the reference / "
               "rejected as invalid / skipped as ill-conditioned / checked but above the tests' tolerance\n",
               nonfinite_mode() ? "non-finite" : "finite");
  print_count_lines(kMechanismNames, mechanism_counts, kMechanisms);
  std::fprintf(stderr, "attnkit_fuzz: executions per backend\n");
  print_count_lines(kBackendNames, backend_counts, kBackends);
}

// ---- one case: its description, validity and outcome -----------------------------------------

struct Case {
  Reader r;
  Mechanism mechanism{};
  int backend = kScalar;
  int threads = 0;
  std::optional<ak::Isa> isa{};
  std::ostringstream desc;
  const char* invalid = nullptr;  // the known-invalid argument of the case, if any
  int invalid_choice = 0;         // 0: valid; else which argument to break (mechanism-specific)

  Case(const std::uint8_t* data, std::size_t size) : r(data, size) {}

  // Picks, once per case, whether and which of `n` invalid arguments the case carries.
  int choose_invalid(int n) {
    invalid_choice = r.one_in(8) ? 1 + r.byte() % n : 0;
    return invalid_choice;
  }
  void mark_invalid(const char* what) { invalid = what; }
};

[[noreturn]] void finding(const Case& c, const std::string& what) {
  std::fprintf(stderr, "\nattnkit_fuzz FINDING: %s\n  mechanism %s, backend %s", what.c_str(),
               kMechanismNames[c.mechanism], kBackendNames[c.backend]);
  if (c.backend == kOpenMP)
    std::fprintf(stderr, " (threads %d, isa %s)", c.threads, c.isa ? ak::isa_name(*c.isa) : "default");
  std::fprintf(stderr, "\n  case: %s\n", c.desc.str().c_str());
  std::fflush(stderr);
  std::abort();
}

// Calls f(backend) with the case's backend.
template <class F>
void with_backend(const Case& c, F&& f) {
  switch (c.backend) {
    case kScalar:
      return f(ak::Scalar{});
    case kSse2:
      return f(Sse2{});
    case kAvx2:
      return f(Avx2Geometry{});
    case kAvx512:
      return f(Avx512Geometry{});
    case kAvx2Emulated:
      return f(Avx2Emulated{});
    case kAvx512Emulated:
      return f(Avx512Emulated{});
    default: {
      ak::OpenMP<> backend;
      backend.num_threads = c.threads;
      backend.inner.isa = c.isa;
      return f(backend);
    }
  }
}

// Runs the kernel call; true when it ran (the case was valid), false when it threw the expected
// attnkit::Error. Any other outcome is a finding.
template <class Call>
bool run_kernel(Case& c, Call&& call) {
  static const bool verbose = std::getenv("ATTNKIT_FUZZ_VERBOSE") != nullptr;
  if (verbose)
    std::fprintf(stderr, "attnkit_fuzz: %s on %s%s%s\n", kMechanismNames[c.mechanism], kBackendNames[c.backend],
                 c.invalid ? ", invalid: " : "", c.invalid ? c.invalid : "");
  if (verbose) std::fprintf(stderr, "  %s\n", c.desc.str().c_str());
  try {
    call();
  } catch (const ak::Error& e) {
    if (c.invalid == nullptr) finding(c, std::string("attnkit::Error for a valid input: ") + e.what());
    mechanism_counts[c.mechanism].rejected++;
    backend_counts[c.backend].rejected++;
    return false;
  }
  if (c.invalid != nullptr) finding(c, std::string("no attnkit::Error for an invalid input: ") + c.invalid);
  return true;
}

// run_kernel around call(attn), attn the kernel of mechanism M built from `options` on the case's
// backend (built inside run_kernel: its constructor validates the options).
template <class M, class Call>
bool run_attention(Case& c, const typename M::Options& options, Call&& call) {
  auto on_backend = [&](auto backend) { call(ak::Attention<M, decltype(backend)>(options, backend)); };
  return run_kernel(c, [&] { with_backend(c, on_backend); });
}

void checked(const Case& c) {
  mechanism_counts[c.mechanism].checked++;
  backend_counts[c.backend].checked++;
}
void skipped(const Case& c) {
  mechanism_counts[c.mechanism].skipped++;
  backend_counts[c.backend].skipped++;
}

// A finding above the fuzz tolerance; above the tests' tolerance only counted, or a finding with
// ATTNKIT_FUZZ_STRICT=1.
void expect(const Case& c, const Oracle& o, const char* what, double magnitude_floor = 1.0) {
  static const bool strict = std::getenv("ATTNKIT_FUZZ_STRICT") != nullptr;
  const Verdict v = judge(o, magnitude_floor);
  if (!v.ok || (strict && !v.tight)) finding(c, std::string(what) + ": " + describe(o, v));
  if (!v.tight) {
    mechanism_counts[c.mechanism].loose++;
    backend_counts[c.backend].loose++;
  }
}

std::optional<float> decode_scale(Case& c) {
  if (!c.r.one_in(3)) return std::nullopt;
  const std::array<float, 8> scales{0.05f, 0.125f, 0.3f, 0.5f, 1.0f, 2.0f, 8.0f, 1e-3f};
  return c.r.pick(scales);
}
float bad_scale(Case& c) {
  const std::array<float, 4> bad{0.0f, -1.0f, std::nanf(""), INFINITY};
  return c.r.pick(bad);
}
std::optional<double> as_double(const std::optional<float>& x) { return x ? std::optional<double>(*x) : std::nullopt; }

// ---- attention-like shapes and views ----------------------------------------------------------

struct Shape {
  Index batch = 1, q_len = 1, kv_len = 1, q_heads = 1, kv_heads = 1, head_dim = 8, v_dim = 8;
  Layout layout = Layout::kBshd;
  Index out_heads() const { return std::max(q_heads, kv_heads); }
};

// Head maps with at most 4 heads: MHA, GQA, MQA, SQA and reverse SQA; `bad` ones are not
// divisible.
Shape decode_shape(Case& c, bool self_attention, Index max_len = 70, bool allow_broadcast = true) {
  Reader& r = c.r;
  static const std::array<std::pair<Index, Index>, 12> maps{
      {{1, 1}, {2, 1}, {4, 2}, {4, 1}, {2, 2}, {3, 1}, {1, 2}, {1, 4}, {2, 4}, {3, 3}, {4, 4}, {1, 3}}};
  Shape s;
  s.batch = r.one_in(16) ? 0 : r.range(1, 3);
  s.q_len = r.one_in(16) ? 0 : r.range(1, max_len);
  s.kv_len = self_attention ? s.q_len : r.one_in(16) ? 0 : r.flag() ? s.q_len : r.range(1, max_len);
  std::tie(s.q_heads, s.kv_heads) = r.pick(maps);
  s.head_dim = r.range(1, 40);
  s.v_dim = r.flag() ? s.head_dim : r.range(1, 40);
  s.layout = static_cast<Layout>(r.byte() % (allow_broadcast ? 4 : 3));
  return s;
}

std::string describe(const Shape& s) {
  std::ostringstream out;
  out << "batch " << s.batch << " q_len " << s.q_len << " kv_len " << s.kv_len << " heads " << s.q_heads << "/"
      << s.kv_heads << " dims " << s.head_dim << "/" << s.v_dim << " layout " << layout_name(s.layout);
  return out.str();
}

// q / k range: mostly unit, sometimes small or large logits (scores up to ~1e4).
std::pair<float, float> decode_qk_range(Case& c) {
  const std::array<float, 6> ranges{1.0f, 1.0f, 1.0f, 0.25f, 4.0f, 30.0f};
  const float r = c.r.pick(ranges);
  return {-r, r};
}
float decode_v_range(Case& c) {
  const std::array<float, 4> ranges{1.0f, 1.0f, 10.0f, 1000.0f};
  return c.r.pick(ranges);
}

// q, k, v filled from the bytes in ranges decoded first (decode_qk_range, decode_v_range), out
// (never broadcast) pre-filled with NaN.
struct Tensors {
  Tensor4 q, k, v, out;
  std::pair<float, float> qk_range;  // (lo, hi) of q and k
  Tensors(Case& c, const Shape& s)
      : q(s.batch, s.q_len, s.q_heads, s.head_dim, s.layout),
        k(s.batch, s.kv_len, s.kv_heads, s.head_dim, s.layout),
        v(s.batch, s.kv_len, s.kv_heads, s.v_dim, s.layout),
        out(s.batch, s.q_len, s.out_heads(), s.v_dim, s.layout == Layout::kBroadcastBatch ? Layout::kBshd : s.layout),
        qk_range(decode_qk_range(c)) {
    const float vr = decode_v_range(c);
    const auto [qk_lo, qk_hi] = qk_range;
    const ValueSpec qs = ValueSpec::decode(c.r, qk_lo, qk_hi), ks = ValueSpec::decode(c.r, qk_lo, qk_hi),
                    vs = ValueSpec::decode(c.r, -vr, vr);
    c.desc << "; q " << qs.describe() << ", k " << ks.describe() << ", v " << vs.describe();
    fill(q, qs, c.r);
    fill(k, ks, c.r);
    fill(v, vs, c.r);
  }
};

// `view` with axis `axis` one entry shorter (same data and strides).
template <class T, int N>
View<T, N> shrunk(const View<T, N>& view, int axis) {
  auto extents = view.extents();
  extents[axis] -= 1;
  return View<T, N>(view.data(), extents, view.strides());
}

constexpr int kViewBreaks = 8;

// The views a call sees (generic to the attention-like mechanisms), with view argument `which`
// broken when it is one of 1-kViewBreaks; a break that does not apply to the shape leaves the
// case valid.
struct CallViews {
  View<const float, 4> q, k, v;
  View<float, 4> out;
  CallViews(Case& c, const Tensors& t, int which) : q(t.q.view), k(t.k.view), v(t.v.view), out(t.out.view) {
    if (which >= 1 && which <= kViewBreaks) break_one(c, which);
  }

 private:
  void break_one(Case& c, int which) {
    // Axis `axis` of `view` one entry shorter, when it has at least `min` entries.
    auto shrink = [&](auto& view, int axis, Index min, const char* what) {
      if (view.extent(axis) < min) return;
      view = shrunk(view, axis);
      c.mark_invalid(what);
    };
    switch (which) {
      case 1:
        return shrink(k, 3, 2, "k head_dim != q head_dim");
      case 2:
        return shrink(v, 1, 1, "v seq != k seq");
      case 3:
        return shrink(out, 2, 2, "out heads != out_heads");
      case 4:
        return shrink(out, 3, 2, "out head_dim != v head_dim");
      case 5:
        if (q.empty()) return;
        q = View<const float, 4>(nullptr, q.extents(), q.strides());
        return c.mark_invalid("q data null");
      case 6: {
        const Index kv_len = k.extent(1);
        if (kv_len < 2) return;
        auto strides = k.strides();
        strides[1] = -strides[1];
        k = View<const float, 4>(k.at(0, kv_len - 1, 0, 0), k.extents(), strides);
        return c.mark_invalid("k negative seq stride");
      }
      case 7: {
        if (q.empty() || q.extent(3) < 2) return;
        auto strides = q.strides();
        strides[3] = 2;
        q = View<const float, 4>(q.data(), q.extents(), strides);
        return c.mark_invalid("q last-axis stride 2");
      }
      case 8:
        return shrink(k, 0, 1, "k batch != q batch");
      default:
        return;
    }
  }
};

// Real lengths per batch entry of a padded batch (empty: full length); `bad` makes one entry
// out of range.
std::vector<std::int32_t> decode_lengths(Reader& r, Index batch, Index extent) {
  std::vector<std::int32_t> lengths;
  for (Index b = 0; b < batch; ++b)
    lengths.push_back(static_cast<std::int32_t>(r.one_in(4) ? extent : r.range(0, extent)));
  return lengths;
}
std::string describe(const std::vector<std::int32_t>& x) {
  std::ostringstream out;
  out << "{";
  for (std::size_t i = 0; i < x.size(); ++i) out << (i ? ", " : "") << x[i];
  out << "}";
  return out.str();
}

// A row-by-row oracle of (batch, seq, head, dim) outputs; rows with keep(b, s) false are left out.
template <class A, class B, class Keep>
void add_rows(Oracle& o, const View<float, 4>& g, const View<A, 4>& e, const View<B, 4>& n, Keep&& keep) {
  for (Index i = 0; i < g.extent(0); ++i)
    for (Index j = 0; j < g.extent(1); ++j) {
      if (!keep(i, j)) continue;
      for (Index k = 0; k < g.extent(2); ++k)
        for (Index l = 0; l < g.extent(3); ++l) o.add(g(i, j, k, l), e(i, j, k, l), n(i, j, k, l));
    }
}

// Float64 and float32 buffers of one output's shape, for its two reference twins (one spare
// element keeps an empty output's data non-null).
template <int N>
struct Twins {
  std::vector<double> exact_data;
  std::vector<float> naive_data;
  View<double, N> exact;
  View<float, N> naive;
  explicit Twins(const std::array<Index, N>& shape)
      : exact_data(elements(shape) + 1),
        naive_data(exact_data.size()),
        exact(View<double, N>::contiguous(exact_data.data(), shape)),
        naive(View<float, N>::contiguous(naive_data.data(), shape)) {}
  static std::size_t elements(const std::array<Index, N>& shape) {
    Index n = 1;
    for (Index e : shape) n *= e;
    return static_cast<std::size_t>(n);
  }
};

// A finding when all of `got` is not within tolerance of its twins (expect).
template <int N>
void expect_all(const Case& c, const View<float, N>& got, const Twins<N>& twins, const char* what) {
  Oracle o;
  o.add_all(got, twins.exact, twins.naive);
  expect(c, o, what);
}

// The tail of a case that ran: twin(view) writes the reference of `out` into the float64 and then
// the float32 view; all of `out` is compared with them, and the case counts as checked.
template <int N, class Twin>
void expect_twin(const Case& c, const View<float, N>& out, Twin&& twin) {
  const Twins<N> ref(out.extents());
  twin(ref.exact);
  twin(ref.naive);
  expect_all(c, out, ref, "out");
  checked(c);
}

#include "cases_attention.hpp"
#include "cases_other.hpp"

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::atexit(print_counts);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Case c(data, size);
  c.mechanism = static_cast<Mechanism>(c.r.byte() % kMechanisms);
  c.backend = c.r.byte() % kBackends;
  if (c.backend == kOpenMP) {
    c.threads = static_cast<int>(c.r.range(0, 3));
    const int isa = c.r.byte() % 4;
    if (isa < 3 && static_cast<ak::Isa>(isa) <= ak::cpu_isa()) c.isa = static_cast<ak::Isa>(isa);
  }
  switch (c.mechanism) {
    case kDense:
      fuzz_dense(c);
      break;
    case kBlockSparse:
      fuzz_block_sparse(c);
      break;
    case kXAttention:
      fuzz_xattention(c);
      break;
    case kLinear:
      fuzz_linear(c);
      break;
    case kPerformer:
      fuzz_performer(c);
      break;
    case kCombiner:
      fuzz_combiner(c, false);
      break;
    case kLogsparse:
      fuzz_combiner(c, true);
      break;
    case kEcoFormer:
      fuzz_ecoformer(c);
      break;
    case kProbSparse:
      fuzz_probsparse(c);
      break;
    case kMamba:
      fuzz_mamba(c);
      break;
    default:
      fuzz_mamba2(c);
      break;
  }
  return 0;
}
