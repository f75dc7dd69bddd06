// Part of fuzz/attnkit_fuzz.cpp, included once inside its anonymous namespace (not a standalone
// header): the approximate and state-space (Linear, Performer, Combiner, EcoFormer, ProbSparse,
// Mamba, Mamba2) cases, each decoding its options from the bytes, calling the kernel on the case's
// backend and comparing with the reference twin. Shared pieces (Case, Shape, Tensors, CallViews,
// expect_twin) are defined in attnkit_fuzz.cpp before the include.
#pragma once

// ---- Linear and Performer: chunked feature kernels, padded lengths, a causal state -----------

void fuzz_linear(Case& c) {
  Reader& r = c.r;
  const Shape s = decode_shape(c, false);
  ak::Linear::Options options;
  options.causal = r.flag();
  options.eps = r.pick(std::array<float, 4>{1e-6f, 1e-6f, 0.0f, 1e-2f});
  std::vector<std::int32_t> q_lengths, kv_lengths;
  const bool lengths = r.one_in(3);
  if (lengths) {
    q_lengths = decode_lengths(r, s.batch, s.q_len);
    kv_lengths = decode_lengths(r, s.batch, s.kv_len);
  }
  const bool with_state = options.causal && !lengths && r.one_in(3);  // an empty state: the same result
  const int which = c.choose_invalid(kViewBreaks + 4);
  c.desc << "linear " << describe(s) << " causal " << options.causal << " eps " << options.eps << " state "
         << with_state;
  if (lengths) c.desc << " lengths q " << describe(q_lengths) << " kv " << describe(kv_lengths);
  Tensors t(c, s);
  CallViews views(c, t, which);
  std::optional<ak::LinearState> state;
  if (with_state || which == kViewBreaks + 3 || which == kViewBreaks + 4)
    state.emplace(s.batch, s.kv_heads, s.head_dim, s.v_dim);
  switch (which - kViewBreaks) {
    case 1:
      options.eps = r.flag() ? -1.0f : std::nanf("");
      c.mark_invalid("options.eps");
      break;
    case 2:
      if (s.batch > 0) {
        kv_lengths.assign(static_cast<std::size_t>(s.batch), 0);
        kv_lengths.back() = static_cast<std::int32_t>(s.kv_len + 1);
        c.mark_invalid("lengths.kv entry out of range");
      }
      break;
    case 3:
      if (!options.causal) c.mark_invalid("args.state without causal");
      break;
    case 4:
      options.causal = true;
      state.emplace(s.batch, s.kv_heads + 1, s.head_dim, s.v_dim);
      c.mark_invalid("args.state shape");
      break;
    default:
      break;
  }
  const bool ran = run_attention<ak::Linear>(c, options, [&](const auto& attn) {
    attn(views.q, views.k, views.v, views.out,
         {.lengths = {q_lengths, kv_lengths}, .state = state ? &*state : nullptr});
  });
  if (!ran) return;
  const ak::reference::LinearOptions ro{.causal = options.causal, .eps = options.eps};
  expect_twin(c, t.out.view, [&]<class T>(const View<T, 4>& ref) {
    ak::reference::linear<T>(t.q.view, t.k.view, t.v.view, ref, ro, {q_lengths, kv_lengths});
  });
}

void fuzz_performer(Case& c) {
  Reader& r = c.r;
  const Shape s = decode_shape(c, false);
  ak::Performer::Options options;
  options.causal = r.flag();
  options.stabilizer = r.pick(std::array<float, 4>{1e-6f, 1e-6f, 1e-3f, 0.5f});
  const Index features = r.range(1, 48);
  std::vector<std::int32_t> q_lengths, kv_lengths;
  const bool lengths = r.one_in(3);
  if (lengths) {
    q_lengths = decode_lengths(r, s.batch, s.q_len);
    kv_lengths = decode_lengths(r, s.batch, s.kv_len);
  }
  const bool generated = !r.one_in(4);
  const std::uint16_t seed = static_cast<std::uint16_t>(r.u16());
  const bool chi = r.flag();
  const int which = c.choose_invalid(kViewBreaks + 3);
  c.desc << "performer " << describe(s) << " causal " << options.causal << " stabilizer " << options.stabilizer
         << " features " << features << (generated ? " W seed " : " W from bytes, seed ") << seed
         << (chi ? " chi norms" : " sqrt(d) norms");
  if (lengths) c.desc << " lengths q " << describe(q_lengths) << " kv " << describe(kv_lengths);
  Tensors t(c, s);
  CallViews views(c, t, which);
  const Index w_cols = s.head_dim + (which == kViewBreaks + 2 ? 1 : 0);
  ak::RandomProjection w;
  if (generated) {
    w = ak::gaussian_orthogonal_features(features, w_cols, seed,
                                         chi ? ak::FeatureNorms::kChi : ak::FeatureNorms::kSqrtDim);
  } else {
    w = {features, w_cols, make_values(static_cast<std::size_t>(features * w_cols), ValueSpec{.seed = seed}, r)};
  }
  switch (which - kViewBreaks) {
    case 1:
      options.stabilizer = r.pick(std::array<float, 3>{0.0f, -1e-6f, std::nanf("")});
      c.mark_invalid("options.stabilizer");
      break;
    case 2:
      c.mark_invalid("w columns != head_dim");
      break;
    case 3:
      if (s.batch > 0) {
        q_lengths.assign(static_cast<std::size_t>(s.batch), -1);
        c.mark_invalid("lengths.q negative");
      }
      break;
    default:
      break;
  }
  const bool ran = run_attention<ak::Performer>(c, options, [&](const auto& attn) {
    attn(views.q, views.k, views.v, w.view(), views.out, {.lengths = {q_lengths, kv_lengths}});
  });
  if (!ran) return;
  const ak::reference::PerformerOptions ro{.causal = options.causal, .stabilizer = options.stabilizer};
  expect_twin(c, t.out.view, [&]<class T>(const View<T, 4>& ref) {
    ak::reference::performer<T>(t.q.view, t.k.view, t.v.view, w.view(), ref, ro, {q_lengths, kv_lengths});
  });
}

// ---- Combiner-Fixed and Combiner-Logsparse: self-attention over spans ------------------------

void fuzz_combiner(Case& c, bool logsparse) {
  Reader& r = c.r;
  const Shape s = decode_shape(c, true);
  const bool causal = r.flag();
  const std::optional<float> scale = decode_scale(c);
  const Index segment = r.flag() ? 0 : r.range(1, 80);
  const int which = c.choose_invalid(kViewBreaks + 3);
  c.desc << (logsparse ? "combiner_logsparse " : "combiner_fixed ") << describe(s) << " causal " << causal << " scale "
         << scale.value_or(0);
  if (!logsparse) c.desc << " segment " << segment;
  Tensors t(c, s);
  CallViews views(c, t, which);
  ak::CombinerFixed::Options fixed{.causal = causal, .scale = scale, .segment = segment};
  ak::CombinerLogsparse::Options log{.causal = causal, .scale = scale};
  switch (which - kViewBreaks) {
    case 1:
      fixed.scale = log.scale = bad_scale(c);
      c.mark_invalid("options.scale");
      break;
    case 2:
      if (!logsparse) {
        fixed.segment = -1 - r.range(0, 3);
        c.mark_invalid("options.segment negative");
      }
      break;
    case 3:
      if (s.kv_len >= 1) {
        views.k = shrunk(views.k, 1);
        views.v = shrunk(views.v, 1);
        c.mark_invalid("kv_len != q_len");
      }
      break;
    default:
      break;
  }
  const bool workspace = r.one_in(3);
  auto call = [&](const auto& attn) {
    std::optional<AlignedBlock> block;
    typename std::decay_t<decltype(attn)>::Args args;
    if (workspace) {
      block.emplace(attn.workspace_bytes(views.q, views.k, views.v));
      args.workspace = {block->data(), block->bytes()};
    }
    attn(views.q, views.k, views.v, views.out, args);
  };
  const bool ran =
      logsparse ? run_attention<ak::CombinerLogsparse>(c, log, call) : run_attention<ak::CombinerFixed>(c, fixed, call);
  if (!ran) return;
  const ak::reference::CombinerOptions ro{.causal = causal, .scale = as_double(scale), .segment = segment};
  expect_twin(c, t.out.view, [&]<class T>(const View<T, 4>& ref) {
    if (logsparse)
      ak::reference::combiner_logsparse<T>(t.q.view, t.k.view, t.v.view, ref, ro);
    else
      ak::reference::combiner_fixed<T>(t.q.view, t.k.view, t.v.view, ref, ro);
  });
}

// ---- EcoFormer: binary hashing; checked only where every code's sign has a margin ------------

void fuzz_ecoformer(Case& c) {
  Reader& r = c.r;
  const Shape s = decode_shape(c, false);
  ak::EcoFormer::Options options;
  options.causal = r.flag();
  if (r.flag()) options.sigma = r.pick(std::array<float, 5>{0.1f, 0.5f, 1.0f, 4.0f, 20.0f});
  const Index bits = r.range(1, 64), m = r.range(1, 16);
  std::vector<std::int32_t> q_lengths, kv_lengths;
  const bool lengths = r.one_in(3);
  if (lengths) {
    q_lengths = decode_lengths(r, s.batch, s.q_len);
    kv_lengths = decode_lengths(r, s.batch, s.kv_len);
  }
  const int which = c.choose_invalid(kViewBreaks + 6);
  c.desc << "ecoformer " << describe(s) << " causal " << options.causal << " sigma " << options.sigma.value_or(0)
         << " bits " << bits << " anchors " << m;
  if (lengths) c.desc << " lengths q " << describe(q_lengths) << " kv " << describe(kv_lengths);
  Tensors t(c, s);
  CallViews views(c, t, which);
  const auto [qk_lo, qk_hi] = t.qk_range;
  // Hash parameters, with room for the wrong shapes of the invalid cases.
  const Index a_heads = s.kv_heads + 1, a_bits = 65, anchor_cols = s.head_dim + 1;
  std::vector<float> anchors =
      make_values(static_cast<std::size_t>(m * anchor_cols), ValueSpec{.lo = qk_lo, .hi = qk_hi, .seed = r.u16()}, r);
  std::vector<float> mvec =
      r.flag() ? std::vector<float>(static_cast<std::size_t>(m + 1), 0.3f)
               : make_values(static_cast<std::size_t>(m + 1), ValueSpec{.lo = 0.0f, .seed = r.u16()}, r);
  std::vector<float> a = make_values(static_cast<std::size_t>(a_heads * a_bits * m),
                                     ValueSpec{.lo = -2.0f, .hi = 2.0f, .seed = r.u16()}, r);
  ak::EcoFormerHash hash;
  hash.anchors = View<const float, 2>::contiguous(anchors.data(), {m, s.head_dim});
  hash.mvec = View<const float, 1>::contiguous(mvec.data(), {m});
  hash.a = View<const float, 3>::contiguous(a.data(), {s.kv_heads, bits, m});
  switch (which - kViewBreaks) {
    case 1:
      options.sigma = r.pick(std::array<float, 3>{0.0f, -1.0f, std::nanf("")});
      c.mark_invalid("options.sigma");
      break;
    case 2:
      hash.a = View<const float, 3>::contiguous(a.data(), {s.kv_heads, r.flag() ? 0 : 65, m});
      c.mark_invalid("hash.a bits outside [1, 64]");
      break;
    case 3:
      hash.anchors = View<const float, 2>::contiguous(anchors.data(), {m, anchor_cols});
      c.mark_invalid("hash.anchors columns != head_dim");
      break;
    case 4:
      hash.mvec = View<const float, 1>::contiguous(mvec.data(), {m + 1});
      c.mark_invalid("hash.mvec size != anchors");
      break;
    case 5:
      hash.a = View<const float, 3>::contiguous(a.data(), {a_heads, bits, m});
      c.mark_invalid("hash.a heads != kv_heads");
      break;
    case 6:
      if (s.batch > 0) {
        q_lengths.assign(static_cast<std::size_t>(s.batch), static_cast<std::int32_t>(s.q_len + 1));
        c.mark_invalid("lengths.q entry out of range");
      }
      break;
    default:
      break;
  }
  const bool ran = run_attention<ak::EcoFormer>(c, options, [&](const auto& attn) {
    attn(views.q, views.k, views.v, hash, views.out, {.lengths = {q_lengths, kv_lengths}});
  });
  if (!ran) return;
  const Twins<4> ref(t.out.view.extents());
  const ak::reference::EcoFormerOptions ro{
      .causal = options.causal, .sigma = options.sigma.value_or(0.0f), .lengths = {q_lengths, kv_lengths}};
  std::vector<double> y_exact;
  std::vector<float> y_naive;
  ak::reference::ecoformer<double>(t.q.view, t.k.view, t.v.view, hash.anchors, hash.mvec, hash.a, ref.exact, ro,
                                   &y_exact);
  ak::reference::ecoformer<float>(t.q.view, t.k.view, t.v.view, hash.anchors, hash.mvec, hash.a, ref.naive, ro,
                                  &y_naive);
  // Codes are signs of y: comparable only where every finite y is farther from 0 than twice the
  // float twin's rounding of it (as the tests require of their seeds).
  double y_error = 0, margin = INFINITY;
  for (std::size_t i = 0; i < y_exact.size(); ++i)
    if (std::isfinite(y_exact[i]) && std::isfinite(y_naive[i])) {
      y_error = std::max(y_error, std::abs(double(y_naive[i]) - y_exact[i]));
      margin = std::min(margin, std::abs(y_exact[i]));
    }
  if (!(margin > 2.0 * y_error + 1e-6)) return skipped(c);
  expect_all(c, t.out.view, ref, "out");
  checked(c);
}

// ---- ProbSparse: sampled sparsity, top-u exact rows, lazy rows -------------------------------

void fuzz_probsparse(Case& c) {
  Reader& r = c.r;
  const Shape s = decode_shape(c, false);
  ak::ProbSparse::Options options;
  options.factor = static_cast<int>(r.range(1, 5));
  options.causal = r.flag();
  options.lazy = r.flag() ? ak::ProbSparse::Lazy::kCumulativeSum : ak::ProbSparse::Lazy::kCumulativeMean;
  options.scale = decode_scale(c);
  options.seed = r.u16();
  const bool given = r.flag();
  const Index n_samples = ak::probsparse_samples_per_query(options.factor, s.kv_len);
  std::vector<std::int32_t> samples(static_cast<std::size_t>(s.q_len * n_samples));
  if (given) {
    std::mt19937 rng(r.u16());
    for (auto& e : samples) e = static_cast<std::int32_t>(rng() % static_cast<std::uint32_t>(s.kv_len));
  } else if (s.kv_len > 0) {
    ak::probsparse_sample_indices(options.seed, s.q_len, s.kv_len, n_samples, samples);
  }
  const int which = c.choose_invalid(kViewBreaks + 4);
  c.desc << "probsparse " << describe(s) << " factor " << options.factor << " causal " << options.causal << " lazy_sum "
         << (options.lazy == ak::ProbSparse::Lazy::kCumulativeSum) << " scale " << options.scale.value_or(0)
         << (given ? " given samples" : " drawn samples, seed ") << options.seed;
  Tensors t(c, s);
  CallViews views(c, t, which);
  std::vector<std::int32_t> passed = given ? samples : std::vector<std::int32_t>{};
  switch (which - kViewBreaks) {
    case 1:
      options.factor = 0;
      c.mark_invalid("options.factor 0");
      break;
    case 2:
      if (!samples.empty()) {
        passed = samples;
        passed[r.range(0, static_cast<Index>(passed.size()) - 1)] = r.flag() ? -1 : static_cast<std::int32_t>(s.kv_len);
        c.mark_invalid("args.samples entry out of range");
      }
      break;
    case 3:
      if (samples.size() >= 2) {  // one entry less; none at all is valid (drawn samples)
        passed = samples;
        passed.pop_back();
        c.mark_invalid("args.samples count");
      }
      break;
    case 4:
      options.scale = bad_scale(c);
      c.mark_invalid("options.scale");
      break;
    default:
      break;
  }
  const bool ran = run_attention<ak::ProbSparse>(
      c, options, [&](const auto& attn) { attn(views.q, views.k, views.v, views.out, {.samples = passed}); });
  if (!ran) return;
  // The top-u rows are chosen by a float sparsity: comparable only where the boundary between
  // chosen and lazy rows is wider than the float rounding of the sparsity.
  const Index n_top = ak::probsparse_top_queries(options.factor, s.q_len);
  if (s.kv_len > 0 && n_top < s.q_len) {
    const ak::HeadMap heads{s.q_heads, s.kv_heads};
    for (Index b = 0; b < s.batch; ++b)
      for (Index o = 0; o < s.out_heads(); ++o) {
        std::vector<std::pair<double, double>> rows;  // (sparsity, rounding bound)
        for (Index i = 0; i < s.q_len; ++i) {
          double max = -INFINITY, sum = 0, size = 0;
          for (Index e = 0; e < n_samples; ++e) {
            double dot = 0, abs_dot = 0;
            for (Index d = 0; d < s.head_dim; ++d) {
              const double x = double(t.q.view(b, i, heads.q_head(o), d)) *
                               double(t.k.view(b, samples[i * n_samples + e], heads.kv_head(o), d));
              dot += x;
              abs_dot += std::abs(x);
            }
            max = std::max(max, dot);
            sum += dot;
            size = std::max(size, abs_dot);
          }
          rows.emplace_back(max - sum / double(s.kv_len), 4.0 * double(s.head_dim + n_samples + 2) * 0x1p-24 * size);
        }
        std::stable_sort(rows.begin(), rows.end(), [](const auto& x, const auto& y) { return x.first > y.first; });
        const auto& chosen = rows[n_top - 1];
        const auto& lazy = rows[n_top];
        if (!(chosen.first - lazy.first > chosen.second + lazy.second)) return skipped(c);
      }
  }
  const ak::reference::ProbSparseOptions ro{.factor = options.factor,
                                            .causal = options.causal,
                                            .scale = as_double(options.scale),
                                            .lazy_sum = options.lazy == ak::ProbSparse::Lazy::kCumulativeSum};
  expect_twin(c, t.out.view, [&]<class T>(const View<T, 4>& ref) {
    ak::reference::probsparse<T>(t.q.view, t.k.view, t.v.view, samples, ref, ro);
  });
}

// ---- Mamba (selective scan) and Mamba2 (SSD): token- and channel-major layouts, states -------

// Values of a small parameter vector (A, D, biases: finite by contract, so no specials).
std::vector<float> parameters(Reader& r, std::size_t n, float lo, float hi) {
  std::vector<float> x(std::max<std::size_t>(n, 1));
  std::mt19937 rng(r.u16());
  std::uniform_real_distribution<float> dist(lo, hi);
  for (float& e : x) e = dist(rng);
  return x;
}

Index pick_divisor(Reader& r, Index n) {
  std::vector<Index> divisors;
  for (Index d = 1; d <= n; ++d)
    if (n % d == 0) divisors.push_back(d);
  return divisors[r.byte() % divisors.size()];
}

void fuzz_mamba(Case& c) {
  Reader& r = c.r;
  Index batch = r.one_in(16) ? 0 : r.range(1, 3), len = r.one_in(16) ? 0 : r.range(1, 70);
  const Index d_inner = r.range(1, 40), d_state = r.one_in(8) ? 64 : r.range(1, 16);
  Index groups = pick_divisor(r, d_inner);
  const bool channel_major = r.flag(), skip = r.flag(), gate = r.flag(), bias = r.flag(), softplus = r.flag(),
             initial = r.flag(), workspace = r.one_in(3);
  std::vector<std::int32_t> cu;
  if (r.one_in(3)) {
    batch = 1;
    const Index sequences = r.range(1, 4);
    std::vector<std::int32_t> cuts;
    for (Index i = 0; i + 1 < sequences; ++i) cuts.push_back(static_cast<std::int32_t>(r.range(0, len)));
    std::sort(cuts.begin(), cuts.end());
    cu.push_back(0);
    cu.insert(cu.end(), cuts.begin(), cuts.end());
    cu.push_back(static_cast<std::int32_t>(len));
  }
  const Index sequences = cu.empty() ? batch : static_cast<Index>(cu.size()) - 1;
  const int which = c.choose_invalid(10);
  c.desc << "mamba batch " << batch << " L " << len << " d_inner " << d_inner << " d_state " << d_state << " groups "
         << groups << " channel_major " << channel_major << " D " << skip << " z " << gate << " delta_bias " << bias
         << " softplus " << softplus << " initial " << initial << " workspace " << workspace;
  if (!cu.empty()) c.desc << " cu_seqlens " << describe(cu);
  // (batch, L, channels) tensors in token- or channel-major memory; B, C (batch, L, groups, n).
  auto tokens = [&](std::vector<float>& data, Index channels, float lo, float hi, const char* name) {
    const ValueSpec spec = ValueSpec::decode(r, lo, hi);
    c.desc << "; " << name << " " << spec.describe();
    data = make_values(static_cast<std::size_t>(std::max<Index>(batch * len * channels, 1)), spec, r);
    return channel_major ? View<float, 3>(data.data(), {batch, len, channels}, {channels * len, 1, len})
                         : View<float, 3>::contiguous(data.data(), {batch, len, channels});
  };
  auto projection = [&](std::vector<float>& data, const char* name) {
    const ValueSpec spec = ValueSpec::decode(r, -1.0f, 1.0f);
    c.desc << "; " << name << " " << spec.describe();
    data = make_values(static_cast<std::size_t>(std::max<Index>(batch * len * groups * d_state, 1)), spec, r);
    const Index g = groups, n = d_state;
    return channel_major ? View<float, 4>(data.data(), {batch, len, g, n}, {g * n * len, 1, n * len, len})
                         : View<float, 4>::contiguous(data.data(), {batch, len, g, n});
  };
  std::vector<float> u_data, delta_data, z_data, b_data, c_data, init_data;
  const View<float, 3> u = tokens(u_data, d_inner, -1.0f, 1.0f, "u");
  const View<float, 3> delta = tokens(delta_data, d_inner, softplus ? -3.0f : 0.0f, softplus ? 1.0f : 0.6f, "delta");
  const View<float, 3> z = tokens(z_data, d_inner, -3.0f, 3.0f, "z");
  const View<float, 4> bv = projection(b_data, "B"), cv = projection(c_data, "C");
  const bool growth = r.one_in(4);  // A up to 0.3: states that grow
  std::vector<float> a = parameters(r, static_cast<std::size_t>(d_inner * d_state), -2.0f, growth ? 0.3f : -0.1f);
  std::vector<float> d = parameters(r, static_cast<std::size_t>(d_inner), -1.0f, 1.0f);
  std::vector<float> delta_bias = parameters(r, static_cast<std::size_t>(d_inner), -1.0f, 0.5f);
  const ValueSpec init_spec = ValueSpec::decode(r, -1.0f, 1.0f);
  init_data =
      make_values(static_cast<std::size_t>(std::max<Index>(sequences * d_inner * d_state, 1)) + d_state, init_spec, r);
  const std::array<Index, 3> state_shape{sequences, d_inner, d_state};
  std::vector<float> state(static_cast<std::size_t>(sequences * d_inner * d_state) + 1, std::nanf(""));
  ak::Mamba::Args args;
  View<const float, 3> u_in = u, delta_in = delta;
  View<const float, 2> a_in = View<const float, 2>::contiguous(a.data(), {d_inner, d_state});
  View<const float, 4> b_in = bv;
  if (skip) args.d = View<const float, 1>::contiguous(d.data(), {d_inner});
  if (gate) args.z = z;
  if (bias) args.delta_bias = View<const float, 1>::contiguous(delta_bias.data(), {d_inner});
  if (initial) args.initial_state = View<const float, 3>::contiguous(init_data.data(), state_shape);
  args.final_state = View<float, 3>::contiguous(state.data(), state_shape);
  args.cu_seqlens = cu;
  std::vector<std::int32_t> bad_cu;
  switch (which) {
    case 1:
      b_in = View<const float, 4>(bv.data(), {batch, len, d_inner + 1, d_state}, {0, 0, 0, 0});
      c.mark_invalid("B groups not a divisor of d_inner");
      break;
    case 2:
      a[r.range(0, d_inner * d_state - 1)] = r.flag() ? std::nanf("") : INFINITY;
      c.mark_invalid("A non-finite");
      break;
    case 3:
      if (batch >= 1 && len >= 1) {
        bad_cu = {0, static_cast<std::int32_t>(len)};
        u_in = View<const float, 3>(u.data(), {batch + 1, len, d_inner}, {0, u.stride(1), u.stride(2)});
        args.cu_seqlens = bad_cu;
        c.mark_invalid("cu_seqlens with batch 2");
      }
      break;
    case 4:
      if (!cu.empty()) {
        bad_cu = cu;
        bad_cu.back() = static_cast<std::int32_t>(len + 1);
        args.cu_seqlens = bad_cu;
        c.mark_invalid("cu_seqlens past L");
      }
      break;
    case 5:
      if (len >= 1) {
        delta_in = shrunk(delta_in, 1);
        c.mark_invalid("delta L != u L");
      }
      break;
    case 6:
      if (skip) {
        d[0] = std::nanf("");
        c.mark_invalid("D non-finite");
      }
      break;
    case 7:
      a_in = View<const float, 2>::contiguous(a.data(), {d_inner - 1, d_state});
      c.mark_invalid("A d_inner");
      break;
    case 8:
      if (len >= 2) {
        u_in = View<const float, 3>(u.at(0, len - 1, 0), u.extents(), {u.stride(0), -u.stride(1), u.stride(2)});
        c.mark_invalid("u negative stride");
      }
      break;
    case 9:
      if (!u.empty()) {
        u_in = View<const float, 3>(nullptr, u.extents(), u.strides());
        c.mark_invalid("u data null");
      }
      break;
    case 10:
      args.initial_state = View<const float, 3>::contiguous(init_data.data(), {sequences, d_inner, d_state + 1});
      c.mark_invalid("initial_state d_state");
      break;
    default:
      break;
  }
  std::vector<float> out_data(static_cast<std::size_t>(std::max<Index>(batch * len * d_inner, 1)), std::nanf(""));
  const View<float, 3> out = channel_major
                                 ? View<float, 3>(out_data.data(), {batch, len, d_inner}, {d_inner * len, 1, len})
                                 : View<float, 3>::contiguous(out_data.data(), {batch, len, d_inner});
  const bool ran = run_attention<ak::Mamba>(c, {.delta_softplus = softplus}, [&](const auto& scan) {
    ak::Mamba::Args call = args;
    std::optional<AlignedBlock> block;
    if (workspace) {
      block.emplace(scan.workspace_bytes(u_in, delta_in, a_in, b_in, cv, call));
      call.workspace = {block->data(), block->bytes()};
    }
    scan(u_in, delta_in, a_in, b_in, cv, out, call);
  });
  if (!ran) return;
  const ak::reference::MambaInputs in{u,  delta,   a_in, bv, cv, args.d, args.z, args.delta_bias, args.initial_state,
                                      cu, softplus};
  const Twins<3> ref(out.extents()), ref_state(state_shape);
  ak::reference::mamba<double>(in, ref.exact, ref_state.exact);
  ak::reference::mamba<float>(in, ref.naive, ref_state.naive);
  expect_all(c, out, ref, "out");
  expect_all(c, args.final_state, ref_state, "final_state");
  checked(c);
}

void fuzz_mamba2(Case& c) {
  Reader& r = c.r;
  const Index batch = r.one_in(16) ? 0 : r.range(1, 3), len = r.one_in(16) ? 0 : r.range(1, 70);
  const Index heads = r.range(1, 4), head_dim = r.range(1, 40), d_state = r.one_in(8) ? 64 : r.range(1, 16);
  const Index groups = pick_divisor(r, heads);
  ak::Mamba2::Options options;
  options.chunk_size = r.one_in(2) ? r.pick(std::array<Index, 8>{1, 2, 7, 16, 32, 64, 100, 256}) : r.range(1, 256);
  options.dt_softplus = r.flag();
  options.form = r.flag() ? ak::Mamba2::Form::kRecurrent : ak::Mamba2::Form::kChunked;
  const Layout layout = static_cast<Layout>(r.byte() % 4);
  const bool skip = r.flag(), gate = r.flag(), bias = r.flag(), initial = r.flag(), workspace = r.one_in(3);
  const int which = c.choose_invalid(8);
  c.desc << "mamba2 batch " << batch << " L " << len << " heads " << heads << " p " << head_dim << " n " << d_state
         << " groups " << groups << " chunk " << options.chunk_size << " form "
         << (options.form == ak::Mamba2::Form::kChunked ? "chunked" : "recurrent") << " softplus "
         << options.dt_softplus << " layout " << layout_name(layout) << " D " << skip << " z " << gate << " dt_bias "
         << bias << " initial " << initial << " workspace " << workspace;
  auto tensor = [&](Tensor4& t, float lo, float hi, const char* name) {
    const ValueSpec spec = ValueSpec::decode(r, lo, hi);
    c.desc << "; " << name << " " << spec.describe();
    fill(t, spec, r);
  };
  Tensor4 x(batch, len, heads, head_dim, layout), z(batch, len, heads, head_dim, layout);
  Tensor4 b(batch, len, groups, d_state, layout), cc(batch, len, groups, d_state, layout);
  Tensor4 out(batch, len, heads, head_dim, layout == Layout::kBroadcastBatch ? Layout::kBshd : layout);
  tensor(x, -1.0f, 1.0f, "x");
  tensor(z, -3.0f, 3.0f, "z");
  tensor(b, -1.0f, 1.0f, "B");
  tensor(cc, -1.0f, 1.0f, "C");
  const ValueSpec dt_spec = ValueSpec::decode(r, options.dt_softplus ? -3.0f : 0.0f, options.dt_softplus ? 1.0f : 0.5f);
  c.desc << "; dt " << dt_spec.describe();
  std::vector<float> dt = make_values(static_cast<std::size_t>(std::max<Index>(batch * len * heads, 1)), dt_spec, r);
  std::vector<float> a = parameters(r, static_cast<std::size_t>(heads), -2.0f, r.one_in(4) ? 0.0f : -0.1f);
  std::vector<float> d = parameters(r, static_cast<std::size_t>(heads), -1.0f, 1.0f);
  std::vector<float> dt_bias = parameters(r, static_cast<std::size_t>(heads), -1.0f, 0.5f);
  const std::array<Index, 4> state_shape{batch, heads, head_dim, d_state};
  const std::size_t state_size = static_cast<std::size_t>(batch * heads * head_dim * d_state) + 1;
  std::vector<float> init = make_values(state_size + static_cast<std::size_t>(batch * heads * head_dim),
                                        ValueSpec::decode(r, -1.0f, 1.0f), r);
  std::vector<float> state(state_size, std::nanf(""));
  ak::Mamba2::Args args;
  if (skip) args.d = View<const float, 1>::contiguous(d.data(), {heads});
  if (gate) args.z = z.view;
  if (bias) args.dt_bias = View<const float, 1>::contiguous(dt_bias.data(), {heads});
  if (initial) args.initial_state = View<const float, 4>::contiguous(init.data(), state_shape);
  args.final_state = View<float, 4>::contiguous(state.data(), state_shape);
  View<const float, 4> x_in = x.view, b_in = b.view;
  View<const float, 3> dt_in = View<const float, 3>::contiguous(dt.data(), {batch, len, heads});
  switch (which) {
    case 1:
      options.chunk_size = r.flag() ? 0 : 257;
      c.mark_invalid("options.chunk_size outside [1, 256]");
      break;
    case 2:
      b_in = View<const float, 4>(b.view.data(), {batch, len, heads + 1, d_state}, {0, 0, 0, 0});
      c.mark_invalid("B groups not a divisor of heads");
      break;
    case 3:
      a[0] = std::nanf("");
      c.mark_invalid("A non-finite");
      break;
    case 4:
      if (len >= 1) {
        dt_in = View<const float, 3>::contiguous(dt.data(), {batch, len - 1, heads});
        c.mark_invalid("dt L != x L");
      }
      break;
    case 5:
      args.initial_state = View<const float, 4>::contiguous(init.data(), {batch, heads, head_dim + 1, d_state});
      c.mark_invalid("initial_state head_dim");
      break;
    case 6:
      if (skip) {
        d[0] = INFINITY;
        c.mark_invalid("D non-finite");
      }
      break;
    case 7:
      if (!x.view.empty()) {
        x_in = View<const float, 4>(nullptr, x.view.extents(), x.view.strides());
        c.mark_invalid("x data null");
      }
      break;
    case 8:
      if (len >= 2) {
        auto strides = x.view.strides();
        strides[1] = -strides[1];
        x_in = View<const float, 4>(x.view.at(0, len - 1, 0, 0), x.view.extents(), strides);
        c.mark_invalid("x negative stride");
      }
      break;
    default:
      break;
  }
  const bool ran = run_attention<ak::Mamba2>(c, options, [&](const auto& ssd) {
    const View<const float, 1> a_view = View<const float, 1>::contiguous(a.data(), {heads});
    ak::Mamba2::Args call = args;
    std::optional<AlignedBlock> block;
    if (workspace) {
      block.emplace(ssd.workspace_bytes(x_in, dt_in, a_view, b_in, cc.view, call));
      call.workspace = {block->data(), block->bytes()};
    }
    ssd(x_in, dt_in, a_view, b_in, cc.view, out.view, call);
  });
  if (!ran) return;
  const ak::reference::Mamba2Inputs in{x.view,
                                       dt_in,
                                       View<const float, 1>::contiguous(a.data(), {heads}),
                                       b.view,
                                       cc.view,
                                       args.d,
                                       args.z,
                                       args.dt_bias,
                                       args.initial_state,
                                       options.dt_softplus};
  const Twins<4> ref(out.view.extents()), ref_state(state_shape);
  ak::reference::mamba2<double>(in, ref.exact, ref_state.exact);
  ak::reference::mamba2<float>(in, ref.naive, ref_state.naive);
  expect_all(c, out.view, ref, "out");
  expect_all(c, args.final_state, ref_state, "final_state");
  checked(c);
}
