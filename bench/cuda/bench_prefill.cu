// Prefill attention timings for the Hopper kernel v2 (the default call: PIE_PREFILL_SM90=2 is set
// here, v3 being the engine's default), v3 (one box per page,
// split K/V rings, 3 stages; "sm90v3p" the same on the persistent grid, "sm90v3c" on 2-CTA
// clusters with K/V multicast, "sm90v3-halves" with one box per 64-column half) and the
// mma.sync kernel (prefill_attention<8>) in one process: 32 query / 8 KV heads, bf16, shuffled block table,
// random inputs, median of 20 event-timed launches. Prints one "pie" line per shape for
// bench/prefill_peer.py, which times PyTorch SDPA on the same shapes in the same call.
//   bench_prefill [--quick] [--no-v3] [--no-v3p] [--no-v3c] | --shapes | --short
// Every Hopper kernel and grid, chosen at run time by PIE_PREFILL_SM90 (the engine compiles v3's
// default shape only: attention_prefill.cuh).
#undef PIE_PREFILL_SM90_V3
#define PIE_PREFILL_SM90_V3 1
#define PIE_PREFILL_SM90_ALL 1
#define PIE_PREFILL_SM90_EMU_SWEEP 1  // --shapes: the emulated share of the exps at 31% and 12.5% too
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>
#include <string>
#include <vector>

#include "bench_common.cuh"
#include "pie/ops/cuda/attention_prefill.cuh"
#include "pie/ops/cuda/prefill_fp8_kv.cuh"

namespace {
using namespace pie;
using namespace pie::bench;

/// One sequence: `prefix` cached tokens, then a chunk of `n` query rows (causal).
template <int Warps>
void run(const char* tag, int n, int prefix, int hd, int bs, int emu = 0) {
  const int nq = 32, nkv = 8, ctx = prefix + n;
  BenchCache<bf16> c(1, ctx, nkv, hd, bs);
  DeviceBuffer<bf16> q(size_t(n) * nq * hd), o(q.size());
  fill(q.data(), q.size(), 6);
  std::vector<int32_t> cu = {0, n};
  DeviceBuffer<int32_t> dcu(2);
  PIE_CUDA_CHECK(cudaMemcpy(dcu.data(), cu.data(), 8, cudaMemcpyHostToDevice));
  double pairs = double(n) * prefix + double(n) * (n + 1) / 2;  // (query, key) pairs kept by the mask
  double flops = 4.0 * nq * hd * pairs;
  auto call = [&] {
    if constexpr (Warps < 0) {  // -1: v2 without ping-pong; -3: v3; -4: v3, one box per half; -5: v3
                                // persistent; -6: v3 on 2-CTA clusters with K/V multicast; -7: v3
                                // with 3 consumer warpgroups (hd 64); -8: v3 with exp2 emulation; -9: both
      using D = __nv_bfloat16;
      ops::cuda::sm90::Params<D, attention::Causal> sp{};
      sp.q = reinterpret_cast<const D*>(q.data()); sp.q_stride = int64_t(nq) * hd;
      sp.out = reinterpret_cast<D*>(o.data()); sp.out_stride = int64_t(nq) * hd;
      sp.indptr = c.view.indptr; sp.indices = c.view.indices; sp.last_page_len = c.view.last_page_len;
      sp.cu_q = dcu.data(); sp.num_kv_heads = nkv; sp.block_size = bs;
      sp.bs_shift = __builtin_ctz(unsigned(bs)); sp.group = nq / nkv; sp.sm_scale = 1.f / std::sqrt(float(hd));
      const D* pool = reinterpret_cast<const D*>(c.view.data);
      namespace v3 = ops::cuda::sm90::v3;
      namespace plan = ops::cuda::sm90::plan;
      const auto box = Warps == -4 ? plan::Box::kHalves : plan::Box::kPage;
      const auto grid = Warps == -5 ? plan::Grid::kPersistent : Warps == -6 ? plan::Grid::kCluster : plan::Grid::kTile;
      const v3::Shape shape{Warps == -7 || Warps == -9 ? 3 : 2, Warps <= -8 ? (emu > 0 ? emu : v3::kEmuPeriod) : 0};
      if constexpr (Warps == -1) {
        if (hd == 128) ops::cuda::sm90::launch<128, D, attention::Causal, false>(sp, pool, 1, n, nullptr);
        else ops::cuda::sm90::launch<64, D, attention::Causal, false>(sp, pool, 1, n, nullptr);
      } else if (hd == 128) {
        v3::launch<128, D, attention::Causal>(sp, pool, 1, n, nullptr, box, grid, shape);
      } else {
        v3::launch<64, D, attention::Causal>(sp, pool, 1, n, nullptr, box, grid, shape);
      }
    } else {
      ops::cuda::prefill_attention<Warps>(q.view({n, nq, hd}), c.view, dcu.data(), n, o.view({n, nq, hd}),
                                          1.f / std::sqrt(float(hd)));
    }
  };
  double ms = median_ms(call);
  std::printf("pie %s n=%d prefix=%d hd=%d bs=%d %.1f us %.1f TFLOP/s\n", tag, n, prefix, hd, bs, ms * 1e3,
              flops / (ms * 1e-3) / 1e12);
  std::fflush(stdout);
}
/// Many fresh prompts of `n` tokens in one launch, as a throughput run's prefill step (64 prompts of
/// 128 = 8,192 rows): where v3's one-tile CTAs pay their setup once per 128 rows (docs/kernels.md,
/// the staged fp8 prefill's outcome). Mode 0: the mma.sync kernel (prefill_attention<8>); −3: v3 on
/// its tile grid; −5: v3 on its persistent grid; 10: an fp8 cache through the mma.sync kernel; 11:
/// an fp8 cache through prefill_fp8_kv.cuh (widening + v3, the engine's default).
template <int Mode>
void run_short(const char* tag, int seqs, int n, int hd, int bs) {
  const int nq = 32, nkv = 8, rows = seqs * n;
  constexpr bool kFp8 = Mode >= 10;
  using KV = std::conditional_t<kFp8, fp8_e4m3, bf16>;
  BenchCache<KV> c(seqs, n, nkv, hd, bs);
  DeviceBuffer<bf16> q(size_t(rows) * nq * hd), o(q.size());
  fill(q.data(), q.size(), 6);
  std::vector<int32_t> cu(seqs + 1);
  for (int b = 0; b <= seqs; ++b) cu[b] = b * n;
  DeviceBuffer<int32_t> dcu(cu.size());
  PIE_CUDA_CHECK(cudaMemcpy(dcu.data(), cu.data(), cu.size() * 4, cudaMemcpyHostToDevice));
  const double flops = 4.0 * nq * hd * double(seqs) * (double(n) * (n + 1) / 2);
  const float sm = 1.f / std::sqrt(float(hd));
  const int64_t pages = int64_t(seqs) * ((n + bs - 1) / bs);
  std::unique_ptr<ops::cuda::Fp8KvPrefillStaging<bf16>> staging;
  if constexpr (Mode == 11) staging = std::make_unique<ops::cuda::Fp8KvPrefillStaging<bf16>>(pages, nkv, bs, hd, seqs);
  auto call = [&] {
    if constexpr (Mode == 11) {
      const bool ran = ops::cuda::prefill_attention_fp8_staged(q.view({rows, nq, hd}), c.view, dcu.data(), n,
                                                               o.view({rows, nq, hd}), sm, attention::Causal{},
                                                               nullptr, *staging, pages);
      PIE_CHECK(ran, "bench_prefill --short: the staged path refused");
    } else if constexpr (Mode == 0 || Mode == 10) {
      ops::cuda::prefill_attention<Mode == 0 ? 8 : 0>(q.view({rows, nq, hd}), c.view, dcu.data(), n,
                                                      o.view({rows, nq, hd}), sm);
    } else {
      using D = __nv_bfloat16;
      namespace v3 = ops::cuda::sm90::v3;
      ops::cuda::sm90::Params<D, attention::Causal> sp{};
      sp.q = reinterpret_cast<const D*>(q.data()); sp.q_stride = int64_t(nq) * hd;
      sp.out = reinterpret_cast<D*>(o.data()); sp.out_stride = int64_t(nq) * hd;
      sp.indptr = c.view.indptr; sp.indices = c.view.indices; sp.last_page_len = c.view.last_page_len;
      sp.cu_q = dcu.data(); sp.num_kv_heads = nkv; sp.block_size = bs;
      sp.bs_shift = __builtin_ctz(unsigned(bs)); sp.group = nq / nkv; sp.sm_scale = sm;
      const auto grid = Mode == -5 ? ops::cuda::sm90::plan::Grid::kPersistent : ops::cuda::sm90::plan::Grid::kTile;
      const D* pool = reinterpret_cast<const D*>(c.view.data);
      if (hd == 128) v3::launch<128, D, attention::Causal>(sp, pool, seqs, n, nullptr, ops::cuda::sm90::plan::Box::kPage, grid);
      else v3::launch<64, D, attention::Causal>(sp, pool, seqs, n, nullptr, ops::cuda::sm90::plan::Box::kHalves, grid);
    }
  };
  const double ms = median_ms(call);
  std::printf("pie %s seqs=%d n=%d hd=%d bs=%d %.1f us %.1f TFLOP/s\n", tag, seqs, n, hd, bs, ms * 1e3,
              flops / (ms * 1e-3) / 1e12);
  std::fflush(stdout);
}
}  // namespace

int main(int argc, char** argv) {
  // --no-v3: time v2 and mma.sync only; --no-v3p / --no-v3c: leave out the persistent or the
  // cluster grid (one that hung or crashed in its tests)
  // --shapes: only v3 against its shapes ("3w", "3e", "3we": attention_prefill_sm90_v3.cuh,
  // Shape) at head dim 64 and 128, causal 2K and 8K, bs 16 (head dim 128 has no 3-warpgroup shape)
  bool quick = false, v3 = true, v3p = true, v3c = true, shapes = false;
  for (int i = 1; i < argc; ++i) {
    quick = quick || std::strcmp(argv[i], "--quick") == 0;
    shapes = shapes || std::strcmp(argv[i], "--shapes") == 0;
    v3 = v3 && std::strcmp(argv[i], "--no-v3") != 0;
    v3p = v3p && std::strcmp(argv[i], "--no-v3p") != 0;
    v3c = v3c && std::strcmp(argv[i], "--no-v3c") != 0;
  }
  v3p = v3p && v3;
  v3c = v3c && v3;
  // --short: many short prompts a launch (run_short), v3's tile and persistent grids against the
  // mma.sync kernel, and an fp8 cache through the mma.sync kernel and the staged path (which runs
  // v3 as the engine does: PIE_PREFILL_SM90 is 3 here).
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--short") == 0) {
      setenv("PIE_PREFILL_SM90", "3", 1);
      for (auto [seqs, n] : {std::pair{64, 128}, std::pair{16, 512}, std::pair{32, 256}}) {
        run_short<-3>("short-v3", seqs, n, 128, 16);
        run_short<-5>("short-v3p", seqs, n, 128, 16);
        run_short<0>("short-mma", seqs, n, 128, 16);
        run_short<10>("short-fp8-mma", seqs, n, 128, 16);
        run_short<11>("short-fp8-staged", seqs, n, 128, 16);
      }
      return 0;
    }
  setenv("PIE_PREFILL_SM90", "2", 0);  // "sm90" rows: v2 through the dispatch (v3 rows call v3 directly)
  cudaDeviceProp prop{};
  PIE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  if (shapes) {
    for (int rep = 0; rep < 2; ++rep) {  // twice: the second pass shows the spread between runs
      for (int n : {8192, 2048}) {
        run<-3>("sm90v3", n, 0, 64, 16);
        run<-7>("sm90v3w", n, 0, 64, 16);
        run<-8>("sm90v3e", n, 0, 64, 16);
        run<-9>("sm90v3we", n, 0, 64, 16);
        run<-3>("sm90v3", n, 0, 128, 16);
        run<-8>("sm90v3e", n, 0, 128, 16);
      }
      run<-3>("sm90v3", 8192, 0, 64, 8);
      run<-7>("sm90v3w", 8192, 0, 64, 8);
      run<-9>("sm90v3we", 8192, 0, 64, 8);
      // The emulated share: period 3 (5 of 16 groups, 31%) and 8 (2 of 16, 12.5%) beside 5 (19%;
      // only period 5 is checked against the CPU by test_prefill).
      run<-8>("sm90v3e3", 8192, 0, 64, 16, 3);
      run<-8>("sm90v3e8", 8192, 0, 64, 16, 8);
      run<-9>("sm90v3we3", 8192, 0, 64, 16, 3);
      run<-9>("sm90v3we8", 8192, 0, 64, 16, 8);
    }
    return 0;
  }
  run<0>("sm90", 8192, 0, 128, 16);
  run<0>("sm90", 2048, 0, 128, 16);
  run<0>("sm90", 8192, 0, 64, 16);
  run<0>("sm90", 8192, 0, 128, 8);
  run<0>("sm90", 2048, 6144, 128, 16);
  if (v3) {
    run<-3>("sm90v3", 8192, 0, 128, 16);
    run<-3>("sm90v3", 2048, 0, 128, 16);
    run<-3>("sm90v3", 8192, 0, 64, 16);
    run<-3>("sm90v3", 8192, 0, 128, 8);
    run<-3>("sm90v3", 2048, 6144, 128, 16);
    if (v3p) {
      run<-5>("sm90v3p", 8192, 0, 128, 16);
      run<-5>("sm90v3p", 2048, 0, 128, 16);
      run<-5>("sm90v3p", 8192, 0, 64, 16);
      run<-5>("sm90v3p", 8192, 0, 128, 8);
      run<-5>("sm90v3p", 2048, 6144, 128, 16);
    }
    if (v3c) {
      run<-6>("sm90v3c", 8192, 0, 128, 16);
      run<-6>("sm90v3c", 2048, 0, 128, 16);
      run<-6>("sm90v3c", 8192, 0, 64, 16);
      run<-6>("sm90v3c", 8192, 0, 128, 8);
      run<-6>("sm90v3c", 2048, 6144, 128, 16);
    }
    run<-4>("sm90v3-halves", 8192, 0, 128, 16);
    run<-4>("sm90v3-halves", 8192, 0, 128, 8);
  }
  run<-1>("sm90-nopp", 8192, 0, 128, 16);
  run<-1>("sm90-nopp", 8192, 0, 64, 16);
  if (!quick) {
    run<8>("mma", 8192, 0, 128, 16);
    run<8>("mma", 2048, 0, 128, 16);
    run<8>("mma", 8192, 0, 64, 16);
    run<8>("mma", 2048, 6144, 128, 16);
  }
  return 0;
}
