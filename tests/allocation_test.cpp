// No call allocates when it is given a workspace (design.md section 2): every mechanism, on the
// Scalar, Simd (AVX-512 tile geometry) and OpenMP<> backends, runs once to warm up (OpenMP's
// thread pool, a reused BlockMask's capacity) with a caller workspace of workspace_bytes(...),
// then a second identical call must make no heap allocation. This binary replaces the global
// operator new / delete (every sized, aligned and nothrow form) with versions that count while a
// flag is armed around the call only (Catch2 allocates outside that window). Under
// AddressSanitizer the replacements still sit on malloc / free, which ASan intercepts, so the
// test runs there too.
#include <atomic>
#include <cstdlib>
#include <memory>
#include <new>

#include "test_util.hpp"

namespace {

std::atomic<bool> g_armed{false};
std::atomic<long> g_allocations{0};

// Out of line, so that the compiler does not pair a replaced operator new with the free() inside a
// replaced operator delete (-Wmismatched-new-delete).
[[gnu::noinline]] void* counted_alloc(std::size_t n, std::size_t align) {
  if (g_armed.load(std::memory_order_relaxed)) g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (n == 0) n = 1;
  void* p = nullptr;
  if (align <= alignof(std::max_align_t)) {
    p = std::malloc(n);
  } else {
    p = std::aligned_alloc(align, (n + align - 1) / align * align);
  }
  return p;
}
[[gnu::noinline]] void counted_free(void* p) noexcept { std::free(p); }
void* counted_alloc_or_throw(std::size_t n, std::size_t align) {
  void* p = counted_alloc(n, align);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

void* operator new(std::size_t n) { return counted_alloc_or_throw(n, 0); }
void* operator new[](std::size_t n) { return counted_alloc_or_throw(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) { return counted_alloc_or_throw(n, std::size_t(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted_alloc_or_throw(n, std::size_t(a)); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n, 0); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return counted_alloc(n, 0); }
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return counted_alloc(n, std::size_t(a));
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return counted_alloc(n, std::size_t(a));
}
void operator delete(void* p) noexcept { counted_free(p); }
void operator delete[](void* p) noexcept { counted_free(p); }
void operator delete(void* p, std::size_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::size_t) noexcept { counted_free(p); }
void operator delete(void* p, std::align_val_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { counted_free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { counted_free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { counted_free(p); }

namespace ak = attnkit;
using ak::Index;
using ak::test::Layout;
using ak::test::Tensor4;

namespace {

using AllocationBackends = std::tuple<ak::Scalar, ak::test::Avx512Geometry, ak::OpenMP<>>;

// A 64-byte aligned caller workspace.
class CallerWorkspace {
 public:
  explicit CallerWorkspace(std::size_t bytes)
      : bytes_(bytes), data_(bytes > 0 ? ::operator new (bytes, std::align_val_t{64}) : nullptr) {}
  ~CallerWorkspace() {
    if (data_ != nullptr) ::operator delete (data_, std::align_val_t{64});
  }
  CallerWorkspace(const CallerWorkspace&) = delete;
  CallerWorkspace& operator=(const CallerWorkspace&) = delete;
  ak::Workspace get() const { return {data_, bytes_}; }

 private:
  std::size_t bytes_;
  void* data_;
};

// Heap allocations of the second of two calls of `call`.
template <class Call>
long allocations_of_second_call(Call&& call) {
  call();
  g_allocations.store(0);
  g_armed.store(true);
  call();
  g_armed.store(false);
  return g_allocations.load();
}

// Checks that `call` makes no allocation once warm; `what` names it.
template <class Call>
void check_no_allocation(const std::string& what, Call&& call) {
  const long count = allocations_of_second_call(call);
  INFO(what << ": " << count << " heap allocations in a warm call with a caller workspace");
  CHECK(count == 0);
}

// q, k, v and out of an attention problem (BSHD, uniform values).
struct Problem {
  Tensor4 q, k, v, out;
  Problem(Index batch, Index q_len, Index kv_len, Index q_heads, Index kv_heads, Index dim)
      : q(batch, q_len, q_heads, dim, Layout::kBshd),
        k(batch, kv_len, kv_heads, dim, Layout::kBshd),
        v(batch, kv_len, kv_heads, dim, Layout::kBshd),
        out(batch, q_len, std::max(q_heads, kv_heads), dim, Layout::kBshd) {
    q.fill_uniform(1);
    k.fill_uniform(2);
    v.fill_uniform(3);
  }
};

// A mechanism whose call is attn(q, k, v, out, args) with args.workspace.
template <class Mechanism, class Backend>
void check_qkv(const std::string& what, const Problem& p, typename Mechanism::Options options = {},
               typename Mechanism::Args args = {}) {
  const ak::Attention<Mechanism, Backend> attn(options);
  std::size_t bytes = 0;
  if constexpr (requires { attn.workspace_bytes(p.q.view, p.k.view, p.v.view, args); })
    bytes = attn.workspace_bytes(p.q.view, p.k.view, p.v.view, args);
  else
    bytes = attn.workspace_bytes(p.q.view, p.k.view, p.v.view);
  const CallerWorkspace workspace(bytes);
  args.workspace = workspace.get();
  check_no_allocation(what + " " + attn.name(), [&] { attn(p.q.view, p.k.view, p.v.view, p.out.view, args); });
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("dense makes no allocation with a workspace", "[allocation][dense]", AllocationBackends) {
  const Problem mha(2, 100, 120, 4, 4, 32), gqa(1, 90, 90, 8, 2, 16), decode(1, 1, 3000, 8, 2, 64);
  check_qkv<ak::Dense, TestType>("MHA", mha);
  check_qkv<ak::Dense, TestType>("GQA causal", gqa, {.causal = true});
  check_qkv<ak::Dense, TestType>("decode", decode, {.causal = true});
  check_qkv<ak::Dense, TestType>("sliding window", gqa, {.causal = true, .window = {.left = 31}});
  const std::vector<std::int32_t> q_lengths{100, 7}, kv_lengths{50, 120};
  check_qkv<ak::Dense, TestType>("padded", mha, {}, {.lengths = {q_lengths, kv_lengths}});

  // Packed: three sequences of (q, kv) lengths (20, 30), (1, 50), (40, 40).
  const std::vector<std::int32_t> cu_q{0, 20, 21, 61}, cu_kv{0, 30, 80, 120};
  const ak::CuSeqlens cu{cu_q, cu_kv};
  const std::vector<float> q = ak::test::uniform(61 * 4 * 16, 4), k = ak::test::uniform(120 * 2 * 16, 5),
                           v = ak::test::uniform(120 * 2 * 16, 6);
  std::vector<float> out(q.size());
  const auto qv = ak::View<const float, 3>::contiguous(q.data(), {61, 4, 16});
  const auto kv = ak::View<const float, 3>::contiguous(k.data(), {120, 2, 16});
  const auto vv = ak::View<const float, 3>::contiguous(v.data(), {120, 2, 16});
  const auto ov = ak::View<float, 3>::contiguous(out.data(), {61, 4, 16});
  const ak::Attention<ak::Dense, TestType> packed({.causal = true});
  const CallerWorkspace workspace(packed.workspace_bytes(qv, kv, vv, cu));
  check_no_allocation("packed " + packed.name(), [&] { packed(qv, kv, vv, ov, cu, {.workspace = workspace.get()}); });
}

TEMPLATE_LIST_TEST_CASE("block-sparse and xattention make no allocation with a workspace", "[allocation][sparse]",
                        AllocationBackends) {
  const Problem p(2, 300, 300, 4, 2, 16);
  const Index blocks = 300 / 64 + 1;
  const ak::BlockMask mask = ak::BlockMask::from_predicate(
      2, 4, blocks, blocks, [](Index b, Index h, Index qb, Index kb) { return (b + h + qb + kb) % 3 != 1; });
  for (const bool causal : {false, true}) {
    const ak::Attention<ak::BlockSparse, TestType> sparse({.block = 64, .causal = causal});
    const CallerWorkspace workspace(sparse.workspace_bytes(p.q.view, p.k.view, p.v.view, mask));
    check_no_allocation(
        sparse.name(), [&] { sparse(p.q.view, p.k.view, p.v.view, mask, p.out.view, {.workspace = workspace.get()}); });
  }
  for (const ak::XSelection selection : {ak::XSelection::kSinkDiagonalThreshold, ak::XSelection::kReferenceChunked})
    for (const bool causal : {false, true}) {
      const ak::Attention<ak::XAttention, TestType> xattn(
          {.stride = 4, .block = 64, .tau = {0.8f}, .causal = causal, .selection = selection});
      const CallerWorkspace workspace(xattn.workspace_bytes(p.q.view, p.k.view, p.v.view));
      ak::BlockMask selected;
      check_no_allocation(xattn.name() + " (selected mask reused)", [&] {
        xattn(p.q.view, p.k.view, p.v.view, p.out.view, {.selected = &selected, .workspace = workspace.get()});
      });
      check_no_allocation(xattn.name() + " (no selected mask)",
                          [&] { xattn(p.q.view, p.k.view, p.v.view, p.out.view, {.workspace = workspace.get()}); });
      std::vector<float> scores(static_cast<std::size_t>(2 * 4 * blocks * blocks));
      const auto scores_view = ak::View<float, 4>::contiguous(scores.data(), {2, 4, blocks, blocks});
      check_no_allocation(xattn.name() + " score()",
                          [&] { xattn.score(p.q.view, p.k.view, scores_view, workspace.get()); });
    }
}

TEMPLATE_LIST_TEST_CASE("feature-map mechanisms make no allocation with a workspace", "[allocation][linear]",
                        AllocationBackends) {
  const Problem p(2, 130, 130, 4, 2, 16);
  for (const bool causal : {false, true}) {
    check_qkv<ak::Linear, TestType>("linear", p, {.causal = causal});
    const ak::RandomProjection w = ak::gaussian_orthogonal_features(32, 16, 5);
    const ak::Attention<ak::Performer, TestType> performer({.causal = causal});
    const CallerWorkspace workspace(performer.workspace_bytes(p.q.view, p.k.view, p.v.view, w.view()));
    check_no_allocation(performer.name(), [&] {
      performer(p.q.view, p.k.view, p.v.view, w.view(), p.out.view, {.workspace = workspace.get()});
    });
  }
  const std::vector<float> anchors = ak::test::uniform(12 * 16, 7), mvec(12, 0.3f),
                           a = ak::test::uniform(2 * 16 * 12, 8, -2.0f, 2.0f);
  const ak::EcoFormerHash hash{ak::View<const float, 2>::contiguous(anchors.data(), {12, 16}),
                               ak::View<const float, 1>::contiguous(mvec.data(), {12}),
                               ak::View<const float, 3>::contiguous(a.data(), {2, 16, 12})};
  for (const bool causal : {false, true}) {
    const ak::Attention<ak::EcoFormer, TestType> eco({.causal = causal});
    const CallerWorkspace workspace(eco.workspace_bytes(p.q.view, p.k.view, p.v.view, hash));
    check_no_allocation(eco.name(),
                        [&] { eco(p.q.view, p.k.view, p.v.view, hash, p.out.view, {.workspace = workspace.get()}); });
  }
}

TEMPLATE_LIST_TEST_CASE("combiner and probsparse make no allocation with a workspace", "[allocation][combiner]",
                        AllocationBackends) {
  const Problem p(2, 100, 100, 4, 2, 16);
  for (const bool causal : {false, true}) {
    check_qkv<ak::CombinerFixed, TestType>("combiner", p, {.causal = causal});
    check_qkv<ak::CombinerLogsparse, TestType>("combiner-logsparse", p, {.causal = causal});
    check_qkv<ak::ProbSparse, TestType>("probsparse (drawn samples)", p, {.causal = causal, .seed = 5});
  }
  // Given samples: (q_len, U) key indices, U = 5 * ceil(ln 100) = 25.
  std::vector<std::int32_t> samples(100 * 25);
  for (std::size_t i = 0; i < samples.size(); ++i) samples[i] = static_cast<std::int32_t>((i * 37) % 100);
  check_qkv<ak::ProbSparse, TestType>("probsparse (given samples)", p, {.seed = 5}, {.samples = samples});
}

TEMPLATE_LIST_TEST_CASE("mamba scans make no allocation with a workspace", "[allocation][mamba]", AllocationBackends) {
  using V1 = ak::View<const float, 1>;
  using V2 = ak::View<const float, 2>;
  using V3 = ak::View<const float, 3>;
  using V4 = ak::View<const float, 4>;
  {
    const Index batch = 2, len = 70, d_inner = 24, d_state = 8, groups = 2;
    const std::vector<float> u = ak::test::uniform(batch * len * d_inner, 1),
                             delta = ak::test::uniform(batch * len * d_inner, 2, 0.01f, 0.5f),
                             a = ak::test::uniform(d_inner * d_state, 3, -2.0f, -0.1f),
                             b = ak::test::uniform(batch * len * groups * d_state, 4),
                             c = ak::test::uniform(batch * len * groups * d_state, 5);
    std::vector<float> out(u.size());
    const auto uv = V3::contiguous(u.data(), {batch, len, d_inner});
    const auto dv = V3::contiguous(delta.data(), {batch, len, d_inner});
    const auto av = V2::contiguous(a.data(), {d_inner, d_state});
    const auto bv = V4::contiguous(b.data(), {batch, len, groups, d_state});
    const auto cv = V4::contiguous(c.data(), {batch, len, groups, d_state});
    const auto ov = ak::View<float, 3>::contiguous(out.data(), {batch, len, d_inner});
    const ak::Attention<ak::Mamba, TestType> scan;
    const CallerWorkspace workspace(scan.workspace_bytes(uv, dv, av, bv, cv));
    check_no_allocation(scan.name(), [&] { scan(uv, dv, av, bv, cv, ov, {.workspace = workspace.get()}); });
  }
  {
    const Index batch = 2, len = 70, heads = 4, p = 8, n = 16, groups = 2;
    const std::vector<float> x = ak::test::uniform(batch * len * heads * p, 1),
                             dt = ak::test::uniform(batch * len * heads, 2, 0.01f, 0.5f),
                             a = ak::test::uniform(heads, 3, -2.0f, -0.1f),
                             b = ak::test::uniform(batch * len * groups * n, 4),
                             c = ak::test::uniform(batch * len * groups * n, 5);
    std::vector<float> out(x.size());
    const auto xv = V4::contiguous(x.data(), {batch, len, heads, p});
    const auto dv = V3::contiguous(dt.data(), {batch, len, heads});
    const auto av = V1::contiguous(a.data(), {heads});
    const auto bv = V4::contiguous(b.data(), {batch, len, groups, n});
    const auto cv = V4::contiguous(c.data(), {batch, len, groups, n});
    const auto ov = ak::View<float, 4>::contiguous(out.data(), {batch, len, heads, p});
    for (const ak::Mamba2::Form form : {ak::Mamba2::Form::kChunked, ak::Mamba2::Form::kRecurrent}) {
      const ak::Attention<ak::Mamba2, TestType> ssd({.chunk_size = 32, .form = form});
      const CallerWorkspace workspace(ssd.workspace_bytes(xv, dv, av, bv, cv));
      check_no_allocation(ssd.name(), [&] { ssd(xv, dv, av, bv, cv, ov, {.workspace = workspace.get()}); });
    }
  }
}

TEST_CASE("the allocation counter sees allocations inside the window", "[allocation]") {
  // The harness itself: a call that allocates is counted, on this thread and on OpenMP's.
  CHECK(allocations_of_second_call([] { std::make_unique<int>(1).reset(); }) == 1);
  CHECK(allocations_of_second_call([] {
          ak::OpenMP<>{.num_threads = 2}.parallel_for(4, [](Index, int) { std::make_unique<int>(1).reset(); });
        }) == 4);
}
