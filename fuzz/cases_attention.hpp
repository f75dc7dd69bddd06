// Part of fuzz/attnkit_fuzz.cpp, included once inside its anonymous namespace (not a standalone
// header): the exact attention (Dense, BlockSparse, XAttention) cases, each decoding its options from the bytes,
// calling the kernel on the case's backend and comparing with the reference twin. Shared pieces (Case, Shape, Tensors,
// CallViews, expect_twin) are defined in attnkit_fuzz.cpp before the include.
#pragma once

// ---- Dense: causal, window, head maps, padded lengths, packed cu_seqlens, decode, lse ---------

// The keys query i of batch entry b sees under Dense's options, for padded lengths.
struct DenseElements {
  std::vector<std::int32_t> q_lengths, kv_lengths;
  Index q_len = 0, kv_len = 0;
  ak::Dense::Window window{};
  bool causal = false;
  bool operator()(Index b, Index, Index i, Index j) const {
    const Index ql = q_lengths.empty() ? q_len : q_lengths[b], kl = kv_lengths.empty() ? kv_len : kv_lengths[b];
    if (i >= ql || j >= kl) return false;
    return ak::reference::WindowElements{ql, kl, window.left, window.right, causal}(b, 0, i, j);
  }
};

// (token, head, dim) view of a batch-1 (batch, seq, head, dim) one.
template <class T>
View<T, 3> tokens_of(const View<T, 4>& x) {
  return View<T, 3>(x.data(), {x.extent(1), x.extent(2), x.extent(3)}, {x.stride(1), x.stride(2), x.stride(3)});
}
// A copy of a tensor in storage type T, viewed with the strides of `view` (a view into t), and t's
// values rounded to T in place: what the references then read is what the kernel reads.
template <class T>
struct StoredCopy {
  std::vector<T> data;
  View<const T, 4> view;
  StoredCopy(Tensor4& t, const View<const float, 4>& of) : data(t.data.size()) {
    for (std::size_t i = 0; i < data.size(); ++i) {
      data[i] = T(t.data[i]);
      t.data[i] = ak::to_float(data[i]);
    }
    view = View<const T, 4>(data.data() + (of.data() - t.data.data()), of.extents(), of.strides());
  }
};

// Rows [begin, begin + len) of a (batch, seq, head, dim) view.
template <class T>
View<T, 4> rows_of(const View<T, 4>& x, Index begin, Index len) {
  return View<T, 4>(x.at(0, begin, 0, 0), {x.extent(0), len, x.extent(2), x.extent(3)}, x.strides());
}

void fuzz_dense(Case& c) {
  Reader& r = c.r;
  const bool decode = r.one_in(6);
  const bool packed = !decode && r.one_in(3);
  Shape s = decode_shape(c, false, 70, !packed);
  if (decode) {  // few rows per kv head against enough keys for key splits (>= 4096)
    s.batch = r.range(1, 2);
    s.q_len = r.range(1, 3);
    s.kv_len = r.range(4096, 6200);
    s.head_dim = r.range(1, 16);
    s.v_dim = r.flag() ? s.head_dim : r.range(1, 16);
  }
  ak::Dense::Options options;
  options.causal = r.flag();
  options.scale = decode_scale(c);
  const bool window = r.one_in(3);
  if (window) {
    options.window.left = r.range(-1, 80);
    options.window.right = r.range(-1, 80);
  }
  const bool want_lse = r.flag(), workspace = r.one_in(3);
  std::vector<std::int32_t> q_lengths, kv_lengths, cu_q{0}, cu_kv{0};
  if (packed) {
    s.batch = 1;
    const Index sequences = r.range(1, 4);
    for (Index i = 0; i < sequences; ++i) {
      cu_q.push_back(static_cast<std::int32_t>(cu_q.back() + r.range(0, 30)));
      cu_kv.push_back(static_cast<std::int32_t>(cu_kv.back() + r.range(0, 40)));
    }
    s.q_len = cu_q.back() + (r.one_in(4) ? r.range(1, 3) : 0);  // tokens past the last sequence
    s.kv_len = cu_kv.back() + (r.one_in(4) ? r.range(1, 3) : 0);
  } else if (r.one_in(3)) {
    q_lengths = decode_lengths(r, s.batch, s.q_len);
    kv_lengths = decode_lengths(r, s.batch, s.kv_len);
    if (r.one_in(3))
      q_lengths.clear();
    else if (r.one_in(3))
      kv_lengths.clear();
  }
  const int which = c.choose_invalid(kViewBreaks + 8);
  // Storage of K and V on valid calls: float, bfloat16 or float16; with Q of that type too.
  enum class Stored { none, bf16_kv, f16_kv, bf16_qkv, f16_qkv };
  const Stored stored = which != 0 ? Stored::none : static_cast<Stored>(std::max<Index>(r.range(-3, 4), 0));
  c.desc << "dense stored " << static_cast<int>(stored) << " " << describe(s) << " causal " << options.causal
         << " scale " << options.scale.value_or(0) << " window " << options.window.left << "/" << options.window.right
         << " lse " << want_lse << " workspace " << workspace << (decode ? " decode" : "");
  if (packed) c.desc << " packed cu_q " << describe(cu_q) << " cu_kv " << describe(cu_kv);
  if (!q_lengths.empty() || !kv_lengths.empty())
    c.desc << " lengths q " << describe(q_lengths) << " kv " << describe(kv_lengths);
  Tensors t(c, s);
  // Packed: one batch entry, no batch to break.
  CallViews views(c, t, packed && which == 8 ? 0 : which);
  const Index lse_heads = s.out_heads() + 1;  // room for a wrong lse shape
  std::vector<float> lse_data(static_cast<std::size_t>(s.batch * s.q_len * lse_heads) + 1, std::nanf(""));
  const std::array<Index, 3> lse_shape{s.batch, s.q_len, s.out_heads()};
  View<float, 3> lse = want_lse ? View<float, 3>::contiguous(lse_data.data(), lse_shape) : View<float, 3>{};
  switch (which - kViewBreaks) {
    case 1:
      options.scale = bad_scale(c);
      c.mark_invalid("options.scale");
      break;
    case 2:
      options.window.left = -2 - r.range(0, 3);
      c.mark_invalid("options.window.left < -1");
      break;
    case 3:
      if (!packed && s.batch > 0) {
        q_lengths.assign(static_cast<std::size_t>(s.batch), static_cast<std::int32_t>(s.q_len));
        q_lengths[r.range(0, s.batch - 1)] = r.flag() ? -1 : static_cast<std::int32_t>(s.q_len + 1);
        c.mark_invalid("lengths.q entry out of range");
      }
      break;
    case 4:
      if (!packed) {
        kv_lengths.assign(static_cast<std::size_t>(s.batch + 1), 0);
        c.mark_invalid("lengths.kv count != batch");
      }
      break;
    case 5:
      if (packed && cu_q.size() > 2) {
        cu_q[1] = cu_q[2] + 1;
        c.mark_invalid("cu_seqlens.q decreasing");
      }
      break;
    case 6:
      if (packed) {
        cu_kv.back() = static_cast<std::int32_t>(s.kv_len + 1);
        c.mark_invalid("cu_seqlens.kv past the tokens");
      }
      break;
    case 7:
      if (packed) {
        cu_kv.push_back(cu_kv.back());
        c.mark_invalid("cu_seqlens sizes differ");
      }
      break;
    case 8:
      if (want_lse) {
        lse = View<float, 3>::contiguous(lse_data.data(), {s.batch, s.q_len, lse_heads});
        c.mark_invalid("args.lse heads");
      }
      break;
    default:
      break;
  }
  auto call = [&](const auto& attn, const auto& q4, const auto& k4, const auto& v4) {
    ak::Dense::Args args{.lengths = {q_lengths, kv_lengths}, .lse = lse};
    std::optional<AlignedBlock> block;
    if (packed) {
      const ak::CuSeqlens cu{cu_q, cu_kv};
      args.lengths = {};
      const auto q3 = tokens_of(q4);
      const auto k3 = tokens_of(k4), v3 = tokens_of(v4);
      if (workspace) {
        block.emplace(attn.workspace_bytes(q3, k3, v3, cu));
        args.workspace = {block->data(), block->bytes()};
      }
      attn(q3, k3, v3, tokens_of(views.out), cu, args);
    } else {
      if (workspace) {
        block.emplace(attn.workspace_bytes(q4, k4, v4, args));
        args.workspace = {block->data(), block->bytes()};
      }
      attn(q4, k4, v4, views.out, args);
    }
  };
  std::optional<StoredCopy<ak::bfloat16>> q_bf16, k_bf16, v_bf16;
  std::optional<StoredCopy<ak::float16>> q_f16, k_f16, v_f16;
  if (stored == Stored::bf16_kv || stored == Stored::bf16_qkv) {
    k_bf16.emplace(t.k, views.k);
    v_bf16.emplace(t.v, views.v);
    if (stored == Stored::bf16_qkv) q_bf16.emplace(t.q, views.q);
  } else if (stored == Stored::f16_kv || stored == Stored::f16_qkv) {
    k_f16.emplace(t.k, views.k);
    v_f16.emplace(t.v, views.v);
    if (stored == Stored::f16_qkv) q_f16.emplace(t.q, views.q);
  }
  const bool ran = run_attention<ak::Dense>(c, options, [&](const auto& attn) {
    switch (stored) {
      case Stored::none:
        return call(attn, views.q, views.k, views.v);
      case Stored::bf16_kv:
        return call(attn, views.q, k_bf16->view, v_bf16->view);
      case Stored::f16_kv:
        return call(attn, views.q, k_f16->view, v_f16->view);
      case Stored::bf16_qkv:
        return call(attn, q_bf16->view, k_bf16->view, v_bf16->view);
      case Stored::f16_qkv:
        return call(attn, q_f16->view, k_f16->view, v_f16->view);
    }
  });
  if (!ran) return;

  const Twins<4> ref(t.out.view.extents());
  const Twins<3> ref_lse(lse_shape);
  const ak::reference::DenseOptions ro{.causal = options.causal, .scale = as_double(options.scale)};
  const View<const float, 4> q = t.q.view, k = t.k.view, v = t.v.view;
  const ak::CuSeqlens cu{cu_q, cu_kv};
  if (!window) {
    if (packed) {
      const ak::SequenceLayout seqs = ak::SequenceLayout::packed(cu, s.q_len, s.kv_len);
      ak::reference::dense<double>(q, k, v, ref.exact, ref_lse.exact, seqs, ro);
      ak::reference::dense<float>(q, k, v, ref.naive, ref_lse.naive, seqs, ro);
    } else {
      ak::reference::dense<double>(q, k, v, ref.exact, ref_lse.exact, ro, {q_lengths, kv_lengths});
      ak::reference::dense<float>(q, k, v, ref.naive, ref_lse.naive, ro, {q_lengths, kv_lengths});
    }
  } else if (packed) {
    for (std::size_t i = 0; i + 1 < cu_q.size(); ++i) {
      const Index ql = cu_q[i + 1] - cu_q[i], kl = cu_kv[i + 1] - cu_kv[i];
      const ak::reference::WindowElements band{ql, kl, options.window.left, options.window.right, options.causal};
      const auto qs = rows_of(q, cu_q[i], ql), ks = rows_of(k, cu_kv[i], kl), vs = rows_of(v, cu_kv[i], kl);
      ak::reference::masked<double>(qs, ks, vs, rows_of(ref.exact, cu_q[i], ql), band, ro.scale);
      ak::reference::masked<float>(qs, ks, vs, rows_of(ref.naive, cu_q[i], ql), band, ro.scale);
    }
  } else {
    const DenseElements allowed{q_lengths, kv_lengths, s.q_len, s.kv_len, options.window, options.causal};
    ak::reference::masked<double>(q, k, v, ref.exact, allowed, ro.scale);
    ak::reference::masked<float>(q, k, v, ref.naive, allowed, ro.scale);
  }
  const Index covered = packed ? cu_q.back() : s.q_len;  // packed: tokens past the last sequence are not outputs
  Oracle o;
  add_rows(o, t.out.view, ref.exact, ref.naive, [&](Index, Index row) { return row < covered; });
  expect(c, o, "out");
  if (want_lse && !window) {
    Oracle lo;
    for (Index b = 0; b < s.batch; ++b)
      for (Index i = 0; i < covered; ++i)
        for (Index h = 0; h < s.out_heads(); ++h) lo.add(lse(b, i, h), ref_lse.exact(b, i, h), ref_lse.naive(b, i, h));
    expect(c, lo, "lse");
  }
  checked(c);
}

// ---- BlockSparse: random block masks, block sizes on and off the vector width ----------------

void fuzz_block_sparse(Case& c) {
  Reader& r = c.r;
  const Shape s = decode_shape(c, false);
  ak::BlockSparse::Options options;
  options.block = r.pick(std::array<Index, 10>{1, 2, 3, 7, 8, 16, 17, 32, 64, 128});
  options.causal = r.flag();
  options.scale = decode_scale(c);
  const double density = (r.byte() % 11) / 10.0;
  std::mt19937 rng(r.u16());
  std::bernoulli_distribution keep(density);
  const Index q_blocks = (s.q_len + options.block - 1) / options.block;
  const Index kv_blocks = (s.kv_len + options.block - 1) / options.block;
  ak::BlockMask mask = ak::BlockMask::from_predicate(s.batch, s.out_heads(), q_blocks, kv_blocks,
                                                     [&](Index, Index, Index, Index) { return keep(rng); });
  const int which = c.choose_invalid(kViewBreaks + 6);
  c.desc << "block_sparse " << describe(s) << " block " << options.block << " causal " << options.causal << " scale "
         << options.scale.value_or(0) << " density " << density << " listed " << mask.columns.size();
  Tensors t(c, s);
  CallViews views(c, t, which);
  switch (which - kViewBreaks) {
    case 1:
      options.block = 0;
      c.mark_invalid("options.block 0");
      break;
    case 2:
      options.scale = bad_scale(c);
      c.mark_invalid("options.scale");
      break;
    case 3:
      mask.batch += 1;
      c.mark_invalid("mask batch");
      break;
    case 4:
      mask.offsets[0] = 1;
      c.mark_invalid("mask.offsets[0] != 0");
      break;
    case 5:
      if (!mask.columns.empty()) {
        mask.columns.back() = static_cast<std::int32_t>(kv_blocks);
        c.mark_invalid("mask column out of range");
      }
      break;
    case 6:
      for (std::size_t row = 0; row + 1 < mask.offsets.size(); ++row)
        if (mask.offsets[row + 1] - mask.offsets[row] >= 2) {
          mask.columns[mask.offsets[row] + 1] = mask.columns[mask.offsets[row]];
          c.mark_invalid("mask columns not increasing");
          break;
        }
      break;
    default:
      break;
  }
  const bool workspace = r.one_in(3);
  const bool ran = run_attention<ak::BlockSparse>(c, options, [&](const auto& attn) {
    ak::BlockSparse::Args args;
    std::optional<AlignedBlock> block;
    if (workspace) {
      block.emplace(attn.workspace_bytes(views.q, views.k, views.v, mask));
      args.workspace = {block->data(), block->bytes()};
    }
    attn(views.q, views.k, views.v, mask, views.out, args);
  });
  if (!ran) return;
  const ak::reference::BlockElements allowed(mask, options.block, s.q_len, s.kv_len, options.causal);
  expect_twin(c, t.out.view, [&]<class T>(const View<T, 4>& ref) {
    ak::reference::masked<T>(t.q.view, t.k.view, t.v.view, ref, allowed, as_double(options.scale));
  });
}

// ---- XAttention: antidiagonal scores, threshold selection, the block-sparse call -------------

void fuzz_xattention(Case& c) {
  Reader& r = c.r;
  const Shape s = decode_shape(c, false);
  ak::XAttention::Options options;
  options.stride = r.pick(std::array<Index, 5>{1, 2, 3, 4, 8});
  options.block = options.stride * r.range(1, 8);
  options.causal = !r.one_in(4);
  options.scale = decode_scale(c);
  const std::array<float, 8> taus{0.0f, 0.1f, 0.5f, 0.8f, 0.9f, 0.95f, 1.0f, 0.3f};
  options.tau.assign(1, r.pick(taus));
  if (r.one_in(3)) {
    options.tau.clear();
    for (Index h = 0; h < s.out_heads(); ++h) options.tau.push_back(r.pick(taus));
  }
  const int which = c.choose_invalid(kViewBreaks + 6);
  c.desc << "xattention " << describe(s) << " stride " << options.stride << " block " << options.block << " causal "
         << options.causal << " scale " << options.scale.value_or(0) << " tau";
  for (float tau : options.tau) c.desc << " " << tau;
  Tensors t(c, s);
  CallViews views(c, t, which);
  switch (which - kViewBreaks) {
    case 1:
      options.stride = 0;
      c.mark_invalid("options.stride 0");
      break;
    case 2:
      if (options.stride > 1) {
        options.block += 1;
        c.mark_invalid("options.block not a multiple of stride");
      }
      break;
    case 3:
      options.tau.clear();
      c.mark_invalid("options.tau empty");
      break;
    case 4:
      options.tau[0] = r.pick(std::array<float, 3>{1.5f, -0.1f, std::nanf("")});
      c.mark_invalid("options.tau out of [0, 1]");
      break;
    case 5:
      options.tau.assign(static_cast<std::size_t>(s.out_heads() + 1), 0.5f);
      c.mark_invalid("options.tau count");
      break;
    case 6:
      options.scale = bad_scale(c);
      c.mark_invalid("options.scale");
      break;
    default:
      break;
  }
  const Index q_blocks = options.block > 0 ? (s.q_len + options.block - 1) / options.block : 0;
  const Index kv_blocks = options.block > 0 ? (s.kv_len + options.block - 1) / options.block : 0;
  std::vector<float> scores(static_cast<std::size_t>(s.batch * s.out_heads() * q_blocks * kv_blocks) + 1);
  ak::BlockMask selected;
  const bool ran = run_attention<ak::XAttention>(c, options, [&](const auto& attn) {
    attn(views.q, views.k, views.v, views.out, {.selected = &selected});
    attn.score(views.q, views.k,
               View<float, 4>::contiguous(scores.data(), {s.batch, s.out_heads(), q_blocks, kv_blocks}));
  });
  if (!ran) return;
  scores.pop_back();
  const ak::reference::XAttentionOptions ro{
      .stride = options.stride, .block = options.block, .causal = options.causal, .scale = as_double(options.scale)};
  const std::vector<double> exact = ak::reference::xattention_scores<double>(t.q.view, t.k.view, ro);
  const std::vector<float> naive = ak::reference::xattention_scores<float>(t.q.view, t.k.view, ro);
  if (exact.size() != scores.size()) finding(c, "scores: size differs from the reference's");
  Oracle so;
  for (std::size_t i = 0; i < scores.size(); ++i) so.add(scores[i], exact[i], naive[i]);
  expect(c, so, "scores");
  if (s.q_len > 0 && s.kv_len > 0) {
    const ak::BlockMask expected = ak::reference::xattention_select(
        std::vector<double>(scores.begin(), scores.end()), s.batch, s.out_heads(), s.q_len, s.kv_len,
        std::vector<double>(options.tau.begin(), options.tau.end()), ro);
    if (expected.offsets != selected.offsets || expected.columns != selected.columns)
      finding(c, "selected blocks differ from the reference selection of the kernel's scores");
  }
  const ak::reference::BlockElements allowed(selected, options.block, s.q_len, s.kv_len, options.causal);
  expect_twin(c, t.out.view, [&]<class T>(const View<T, 4>& ref) {
    ak::reference::masked<T>(t.q.view, t.k.view, t.v.view, ref, allowed, ro.scale);
  });
}
