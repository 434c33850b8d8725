#pragma once
/// \file persist_decoder_check.cuh
/// \brief The persistent decoder layer without attention (persist_decoder.cuh) checked against the
/// kernel chains the engine runs for the same ops, byte for byte, and the chain against a CPU
/// reference with the kernels' bf16 rounding points. Shared by pie_bench_cuda_persist (its
/// --check-only and the start of every bench run) and pie_cuda_test_gemm's PersistLayer tests
/// (built with -DPIE_BUILD_CUDA_BENCH=ON).
#include <cstdint>

#include "persist_check.cuh"
#include "persist_decoder.cuh"
#include "pie/ops/cuda/kv_write.cuh"
#include "pie/ops/cuda/rope_kv.cuh"

namespace pie::bench::persist::check {

inline constexpr int kHD = 128;  ///< head dim of both shapes (the kernel's template argument)
inline constexpr float kTheta = 1e6f;  ///< Qwen3's rope_theta

/// One decoder layer (without attention) at batch 1.
struct LayerShape {
  const char* name;
  int hidden, inter, nq, nkv;
  int q_dim() const { return nq * kHD; }
  int nqkv() const { return (nq + 2 * nkv) * kHD; }
  int64_t wo() const { return int64_t(hidden) * q_dim(); }
  int64_t wgu() const { return int64_t(2) * inter * hidden; }
  int64_t wd() const { return int64_t(hidden) * inter; }
  int64_t wqkv() const { return int64_t(nqkv()) * hidden; }
  int64_t weights() const { return wo() + wgu() + wd() + wqkv(); }
};
inline constexpr LayerShape kLayer8B{"qwen3-8b", 4096, 12288, 32, 8};
/// K tails in phases B and D (2056 = 2048 + 8) and C (1000), 2 CTAs of RoPE (18 heads), 96 norm threads.
inline constexpr LayerShape kLayerSmall{"small", 2056, 1000, 14, 4};

/// Cache geometry: 4 blocks of 16 tokens; the step's token goes to slot 37 (block 2, offset 5).
inline constexpr int kBlocks = 4, kBlockSize = 16;
inline constexpr int64_t kSlot = 37;
inline constexpr int32_t kPos = 1234;

/// A layer's weights (one copy per layer of the bench's graph).
struct LayerWeights {
  DeviceBuffer<bf16> wo, wgu, wd, wqkv;
  LayerWeights(const LayerShape& s, int copies)
      : wo(s.wo() * copies), wgu(s.wgu() * copies), wd(s.wd() * copies), wqkv(s.wqkv() * copies) {
    fill(wo.data(), wo.size(), 7, 0.03f);
    fill(wgu.data(), wgu.size(), 9, 0.03f);
    fill(wd.data(), wd.size(), 11, 0.02f);
    fill(wqkv.data(), wqkv.size(), 13, 0.03f);
  }
  const bf16* o(const LayerShape& s, int l) const { return wo.data() + l * s.wo(); }
  const bf16* gu(const LayerShape& s, int l) const { return wgu.data() + l * s.wgu(); }
  const bf16* d(const LayerShape& s, int l) const { return wd.data() + l * s.wd(); }
  const bf16* qkv(const LayerShape& s, int l) const { return wqkv.data() + l * s.wqkv(); }
};

/// The activations of one layer (shared by every weight copy).
struct LayerActs {
  DeviceBuffer<bf16> x, o, r0, r1, r2, post_nw, in_nw, gu, act, dn, qkv, qn, kn, cache;
  DeviceBuffer<int32_t> pos;
  DeviceBuffer<int64_t> slot;
  explicit LayerActs(const LayerShape& s)
      : x(s.q_dim()), o(s.hidden), r0(s.hidden), r1(s.hidden), r2(s.hidden), post_nw(s.hidden), in_nw(s.hidden),
        gu(2 * size_t(s.inter)), act(s.inter), dn(s.hidden), qkv(s.nqkv()), qn(kHD), kn(kHD),
        cache(size_t(kBlocks) * 2 * s.nkv * kBlockSize * kHD), pos(1), slot(1) {
    fill(x.data(), x.size(), 3);
    fill(r0.data(), r0.size(), 4);
    fill(post_nw.data(), post_nw.size(), 5, 0.5f, 1.f);
    fill(in_nw.data(), in_nw.size(), 6, 0.5f, 1.f);
    fill(qn.data(), qn.size(), 14, 0.5f, 1.f);
    fill(kn.data(), kn.size(), 15, 0.5f, 1.f);
    PIE_CUDA_CHECK(cudaMemcpy(pos.data(), &kPos, sizeof(kPos), cudaMemcpyHostToDevice));
    PIE_CUDA_CHECK(cudaMemcpy(slot.data(), &kSlot, sizeof(kSlot), cudaMemcpyHostToDevice));
  }
  void poison() {  // unwritten outputs then differ from the chain's
    for (auto* b : {&o, &r1, &r2, &gu, &act, &dn, &qkv, &cache})
      PIE_CUDA_CHECK(cudaMemset(b->data(), 0xff, b->size() * sizeof(bf16)));
  }
  template <class T>
  kv::PagedKV<T> paged(const LayerShape& s) {
    kv::PagedKV<T> c{};
    c.data = reinterpret_cast<T*>(cache.data());
    c.num_kv_heads = s.nkv;
    c.head_dim = kHD;
    c.block_size = kBlockSize;
    return c;
  }
};

inline oc::RopeParams rope_params() {
  oc::RopeParams r;
  r.theta = kTheta;
  return r;
}

/// The chains as the engine launches them (each kernel with PDL). `fused`: the fusion switches
/// (PIE_FUSED_SWIGLU: swiglu_gemv; PIE_FUSED_ROPE_KV: qk_norm_rope_kv), 5 kernels; else the
/// default, 7 kernels. `part`: 1 = up to the qkv GEMV, 2 = the rest, 3 = both.
inline void layer_chain(const LayerShape& s, LayerActs& a, const LayerWeights& w, int l, bool fused, cudaStream_t st,
                        int part = 3) {
  const auto rp = rope_params();
  if (part & 1) {
    oc::gemv(row(a.o.data(), s.hidden), row(a.x.data(), s.q_dim()), mat(w.o(s, l), s.hidden, s.q_dim()),
             static_cast<const bf16*>(nullptr), st);
    oc::add_rms_norm_gemv(row(a.gu.data(), 2 * s.inter), row(a.o.data(), s.hidden), a.r0.data(), a.r1.data(),
                          a.post_nw.data(), kEps, false, mat(w.gu(s, l), 2 * s.inter, s.hidden),
                          static_cast<const bf16*>(nullptr), st, 4);
    if (fused) {
      oc::swiglu_gemv(row(a.dn.data(), s.hidden), row(a.gu.data(), 2 * s.inter), mat(w.d(s, l), s.hidden, s.inter),
                      static_cast<const bf16*>(nullptr), st, a.act.data());
    } else {
      oc::silu_and_mul(row(a.gu.data(), 2 * s.inter), row(a.act.data(), s.inter), st);
      oc::gemv(row(a.dn.data(), s.hidden), row(a.act.data(), s.inter), mat(w.d(s, l), s.hidden, s.inter),
               static_cast<const bf16*>(nullptr), st);
    }
    oc::add_rms_norm_gemv(row(a.qkv.data(), s.nqkv()), row(a.dn.data(), s.hidden), a.r1.data(), a.r2.data(),
                          a.in_nw.data(), kEps, false, mat(w.qkv(s, l), s.nqkv(), s.hidden),
                          static_cast<const bf16*>(nullptr), st, 4);
  }
  if (part & 2) {
    if (fused) {
      oc::qk_norm_rope_kv(row(a.qkv.data(), s.nqkv()), a.pos.data(), s.nq, s.nkv, kHD, a.qn.data(), a.kn.data(), kEps,
                          rp, a.paged<bf16>(s), a.slot.data(), st);
    } else {
      oc::qk_norm_rope(row(a.qkv.data(), s.nqkv()), a.pos.data(), s.nq, s.nkv, kHD, a.qn.data(), a.kn.data(), kEps, rp,
                       st);
      const int64_t kv = int64_t(s.nkv) * kHD;
      oc::kv_write(a.paged<bf16>(s), row(a.qkv.data() + int64_t(s.nq) * kHD, kv),
                   row(a.qkv.data() + int64_t(s.nq) * kHD + kv, kv), a.slot.data(), st);
    }
  }
}

/// The persistent kernel's variants: phase k+1's first weight step issued before the wait (1) or
/// after (0); u chunks in flight per column (4: gemv's default, 128 registers with a 180-byte
/// spill in the two norm prologues; 2: 123 registers, no spill, half the bytes in flight per warp).
struct LayerVariant {
  const char* name;
  int early;
  int u;
};
inline constexpr LayerVariant kLayerEarly{"layer persistent early", 1, 4};
inline constexpr LayerVariant kLayerBarrierOnly{"layer persistent barrier only", 0, 4};
inline constexpr LayerVariant kLayerEarlyU2{"layer persistent early, U=2", 1, 2};
inline constexpr LayerVariant kLayerVariants[] = {kLayerEarly, kLayerBarrierOnly, kLayerEarlyU2};

inline pp::DecoderParams<D> layer_params(const LayerShape& s, LayerActs& a, const LayerWeights& w, int l,
                                         unsigned long long* bar) {
  auto d = [](auto* p) { return reinterpret_cast<D*>(const_cast<bf16*>(p)); };
  pp::DecoderParams<D> p{};
  p.x = d(a.x.data()); p.wo = d(w.o(s, l)); p.o = d(a.o.data()); p.hidden = s.hidden; p.q_dim = s.q_dim();
  p.r0 = d(a.r0.data()); p.r1 = d(a.r1.data()); p.post_norm_w = d(a.post_nw.data());
  p.wgu = d(w.gu(s, l)); p.gu = d(a.gu.data()); p.act = d(a.act.data()); p.inter = s.inter;
  p.wd = d(w.d(s, l)); p.dn = d(a.dn.data());
  p.r2 = d(a.r2.data()); p.in_norm_w = d(a.in_nw.data()); p.wqkv = d(w.qkv(s, l)); p.qkv = d(a.qkv.data());
  p.eps = kEps; p.norm_threads = oc::detail::norm_threads(s.hidden);
  p.q_norm = d(a.qn.data()); p.k_norm = d(a.kn.data()); p.position = a.pos.data(); p.slot = a.slot.data();
  p.rope = rope_params(); p.cache = a.paged<D>(s); p.nq = s.nq; p.nkv = s.nkv;
  p.bar = bar;
  return p;
}

inline int layer_resident(const LayerVariant& v, const LayerShape& s) {
  const size_t smem = pp::decoder_smem_bytes(s.hidden, s.inter, sizeof(D));
  if (v.u == 2) return pp::decoder_resident_ctas<2, 1, kHD, D>(smem);
  return v.early ? pp::decoder_resident_ctas<kU, 1, kHD, D>(smem) : pp::decoder_resident_ctas<kU, 0, kHD, D>(smem);
}

inline cudaError_t layer_persist(const LayerVariant& v, const LayerShape& s, LayerActs& a, const LayerWeights& w, int l,
                                 int grid, int mode, unsigned long long* bar, cudaStream_t st) {
  const auto p = layer_params(s, a, w, l, bar);
  if (v.u == 2) return pp::launch_decoder<2, 1, kHD>(p, grid, mode, st);
  return v.early ? pp::launch_decoder<kU, 1, kHD>(p, grid, mode, st) : pp::launch_decoder<kU, 0, kHD>(p, grid, mode, st);
}

/// The layer's outputs, as bytes on the host.
struct LayerOut {
  std::vector<bf16> o, r1, gu, act, dn, r2, qkv, cache;
  explicit LayerOut(LayerActs& a)
      : o(host(a.o)), r1(host(a.r1)), gu(host(a.gu)), act(host(a.act)), dn(host(a.dn)), r2(host(a.r2)),
        qkv(host(a.qkv)), cache(host(a.cache)) {}
  /// Elements that differ, per output; prints the outputs that do.
  int diff(const LayerOut& ref, const char* tag) const {
    int all = 0;
    auto one = [&](const char* n, const std::vector<bf16>& x, const std::vector<bf16>& y) {
      const int d = count_diff(x, y);
      if (d) std::printf("    %s: %s differs in %d of %zu elements\n", tag, n, d, x.size());
      all += d;
    };
    one("o", o, ref.o); one("r1", r1, ref.r1); one("gate_up", gu, ref.gu); one("swiglu", act, ref.act);
    one("down", dn, ref.dn); one("r2", r2, ref.r2); one("qkv (roped q, k; v)", qkv, ref.qkv);
    one("kv cache", cache, ref.cache);
    return all;
  }
};

/// Host emulation of the normed row the fused norm GEMVs read (norm.cuh's rounding points).
inline std::vector<float> host_norm(const std::vector<bf16>& r, const std::vector<bf16>& w) {
  double ms = 0;
  for (bf16 v : r) ms += double(f(v)) * f(v);
  const double inv = 1.0 / std::sqrt(ms / r.size() + kEps);
  std::vector<float> xn(r.size());
  for (size_t n = 0; n < r.size(); ++n) xn[n] = f(r16(f(w[n]) * f(r16(float(f(r[n]) * inv)))));
  return xn;
}
inline std::vector<double> host_gemv(const std::vector<float>& x, const std::vector<bf16>& w, int n_out) {
  const size_t k = x.size();
  std::vector<double> y(n_out);
  for (int n = 0; n < n_out; ++n) {
    double acc = 0;
    for (size_t i = 0; i < k; ++i) acc += double(x[i]) * f(w[size_t(n) * k + i]);
    y[n] = acc;
  }
  return y;
}
inline std::vector<float> widen(const std::vector<bf16>& v) {
  std::vector<float> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = f(v[i]);
  return r;
}
template <class T>
inline std::vector<T> host_of(const bf16* p, size_t n) {
  std::vector<T> h(n);
  PIE_CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}
inline int exact_check(const char* what, const std::vector<bf16>& got, const std::vector<bf16>& want) {
  const int d = count_diff(got, want);
  std::printf("  cpu ref %-8s %d of %zu differ (exact)\n", what, d, want.size());
  return d;
}

/// The default chain's outputs against the CPU (each stage from the GPU's previous stage; the
/// residuals, the cache copies exact; the GEMVs and RoPE within bf16 tolerances).
inline int layer_cpu_reference(const LayerShape& s, LayerActs& a, const LayerWeights& w, cudaStream_t st) {
  a.poison();
  layer_chain(s, a, w, 0, false, st, 1);
  PIE_CUDA_CHECK(cudaStreamSynchronize(st));
  const auto qkv_pre = host(a.qkv);
  layer_chain(s, a, w, 0, false, st, 2);
  PIE_CUDA_CHECK(cudaStreamSynchronize(st));
  const LayerOut out(a);
  const auto wo = host_of<bf16>(w.o(s, 0), s.wo()), wgu = host_of<bf16>(w.gu(s, 0), s.wgu());
  const auto wd = host_of<bf16>(w.d(s, 0), s.wd()), wqkv = host_of<bf16>(w.qkv(s, 0), s.wqkv());
  const auto x = host(a.x), r0 = host(a.r0), pnw = host(a.post_nw), inw = host(a.in_nw), qn = host(a.qn),
             kn = host(a.kn);
  int bad = tol_check("o_proj", out.o, host_gemv(widen(x), wo, s.hidden), 1.0 / 128, 1e-3);
  std::vector<bf16> want(s.hidden);
  for (int n = 0; n < s.hidden; ++n) want[n] = r16(f(out.o[n]) + f(r0[n]));
  bad += exact_check("r1", out.r1, want);
  bad += tol_check("gate_up", out.gu, host_gemv(host_norm(out.r1, pnw), wgu, 2 * s.inter), 1.0 / 64, 2e-3);
  std::vector<double> ref(s.inter);
  for (int i = 0; i < s.inter; ++i) {
    const double g = f(out.gu[i]), u = f(out.gu[s.inter + i]);
    ref[i] = double(f(r16(float(g / (1 + std::exp(-g)))))) * u;
  }
  bad += tol_check("swiglu", out.act, ref, 1.0 / 64, 1e-3);
  bad += tol_check("down", out.dn, host_gemv(widen(out.act), wd, s.hidden), 1.0 / 128, 1e-3);
  for (int n = 0; n < s.hidden; ++n) want[n] = r16(f(out.dn[n]) + f(out.r1[n]));
  bad += exact_check("r2", out.r2, want);
  bad += tol_check("qkv", qkv_pre, host_gemv(host_norm(out.r2, inw), wqkv, s.nqkv()), 1.0 / 64, 2e-3);
  // q/k norm + RoPE from the GPU's qkv before it (rope.cuh's rounding points; the host's sin/cos
  // may differ from the device's by an ulp, hence a tolerance), V untouched.
  ref.assign(s.nqkv(), 0);
  for (int h = 0; h < s.nq + s.nkv; ++h) {
    const bf16* hv = qkv_pre.data() + size_t(h) * kHD;
    const auto& nw = h < s.nq ? qn : kn;
    double ss = 0;
    for (int j = 0; j < kHD; ++j) ss += double(f(hv[j])) * f(hv[j]);
    const float inv = float(1.0 / std::sqrt(ss / kHD + kEps));
    std::vector<float> y(kHD);
    for (int j = 0; j < kHD; ++j) y[j] = f(r16(f(nw[j]) * f(r16(f(hv[j]) * inv))));
    for (int i = 0; i < kHD / 2; ++i) {
      const float fr = std::pow(kTheta, -2.f * i / kHD), ang = float(kPos) * fr;
      const float c = f(r16(std::cos(ang))), sn = f(r16(std::sin(ang)));
      ref[size_t(h) * kHD + i] = f(r16(y[i] * c)) - f(r16(y[i + kHD / 2] * sn));
      ref[size_t(h) * kHD + kHD / 2 + i] = f(r16(y[i + kHD / 2] * c)) + f(r16(y[i] * sn));
    }
  }
  std::vector<bf16> qk(out.qkv.begin(), out.qkv.begin() + size_t(s.nq + s.nkv) * kHD);
  ref.resize(qk.size());
  // One normalised value rounded the other way (rsqrtf, the float sum's order) moves an output by
  // up to an ulp of |y| ≈ 4·2⁻⁸ where its two products cancel: 1e-2·rms; a wrong pair, frequency or
  // position is off by O(rms).
  bad += tol_check("q/k rope", qk, ref, 1.0 / 64, 1e-2);
  std::vector<bf16> v_got(out.qkv.begin() + size_t(s.nq + s.nkv) * kHD, out.qkv.end()),
      v_pre(qkv_pre.begin() + size_t(s.nq + s.nkv) * kHD, qkv_pre.end());
  bad += exact_check("v", v_got, v_pre);
  // The cache slot: K heads = the roped k of qkv, V = v, bytes.
  std::vector<bf16> kc, vc, kq, vq;
  const size_t blk = size_t(kSlot / kBlockSize), off = size_t(kSlot % kBlockSize);
  for (int h = 0; h < s.nkv; ++h)
    for (int j = 0; j < kHD; ++j) {
      const size_t k_at = ((blk * 2 * s.nkv + h) * kBlockSize + off) * kHD + j;
      kc.push_back(out.cache[k_at]);
      vc.push_back(out.cache[k_at + size_t(s.nkv) * kBlockSize * kHD]);
      kq.push_back(out.qkv[size_t(s.nq + h) * kHD + j]);
      vq.push_back(out.qkv[size_t(s.nq + s.nkv + h) * kHD + j]);
    }
  bad += exact_check("cache K", kc, kq);
  bad += exact_check("cache V", vc, vq);
  return bad;
}

/// Both chains and every persistent variant, bit for bit, on `grids` (0: the resident grid).
inline int check_layer(const LayerShape& s, const std::vector<int>& grids, cudaStream_t st) {
  std::printf("check layer %s: hidden %d, inter %d, heads %d/%d x %d\n", s.name, s.hidden, s.inter, s.nq, s.nkv, kHD);
  LayerActs a(s);
  const LayerWeights w(s, 1);
  int bad = layer_cpu_reference(s, a, w, st);
  a.poison();
  layer_chain(s, a, w, 0, false, st);
  PIE_CUDA_CHECK(cudaStreamSynchronize(st));
  const LayerOut ref(a);
  a.poison();
  layer_chain(s, a, w, 0, true, st);
  PIE_CUDA_CHECK(cudaStreamSynchronize(st));
  const int dc = LayerOut(a).diff(ref, "fused chain");
  std::printf("  %-34s: %s (%d elements differ from the default chain)\n", "chain with the fusion switches",
              dc == 0 ? "bit-identical" : "MISMATCH", dc);
  bad += dc;
  DeviceBuffer<unsigned long long> bar(2);
  for (const LayerVariant& v : kLayerVariants) {
    bool pass = true;
    for (int grid0 : grids) {
      const int grid = grid0 > 0 ? std::min(grid0, layer_resident(v, s)) : layer_resident(v, s);
      PIE_CUDA_CHECK(cudaMemset(bar.data(), 0, 16));
      int d = 0;
      for (int launch = 0; launch < 2; ++launch) {  // the second reuses the counter
        a.poison();
        PIE_CUDA_CHECK(layer_persist(v, s, a, w, 0, grid, g_mode, bar.data(), st));
        PIE_CUDA_CHECK(cudaStreamSynchronize(st));
        d += LayerOut(a).diff(ref, v.name);
      }
      unsigned long long count[2] = {0, 0};
      PIE_CUDA_CHECK(cudaMemcpy(count, bar.data(), 16, cudaMemcpyDeviceToHost));
      if (count[0] != 2ull * 4 * grid || count[1] != 0) ++d;  // 4 barriers a launch
      std::printf("  %-34s grid %4d: %s (%d elements differ from the chain over 2 launches; counter %llu of %llu, "
                  "barrier timeouts %llu)\n",
                  v.name, grid, d == 0 ? "bit-identical" : "MISMATCH", d, count[0], 2ull * 4 * grid, count[1]);
      bad += d;
      pass = pass && d == 0;
    }
    g_pass.emplace_back(std::string(s.name) + "/" + v.name, pass);
  }
  return bad;
}

}  // namespace pie::bench::persist::check
