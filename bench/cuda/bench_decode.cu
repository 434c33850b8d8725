// Decode attention benchmarks (Qwen3-8B shape: 32 query / 8 KV heads, head dim 128). Each row
// prints the bytes (K + V of every context token, q and out), the median time, GB/s and the
// share of the device-to-device copy bandwidth measured at the start of this same run. Inputs
// are random; shapes whose cache is under 512 MB rotate over several caches, so no launch
// finds its K/V in the 50–60 MB L2.
//
// A baseline kernel can be compiled in for a same-call before/after: build with
// -DPIE_DECODE_BASELINE='"file.cuh"', a copy of an older attention_decode.cuh whose namespace
// was renamed pie::ops::cuda::v0 (bench/device_decode.sh makes one from a git revision).
#include "bench_common.cuh"
#include "pie/ops/cuda/attention_decode.cuh"
#ifdef PIE_DECODE_BASELINE
#include PIE_DECODE_BASELINE
#endif

namespace {
using namespace pie;
using namespace pie::bench;

constexpr int kNq = 32, kNkv = 8, kHd = 128;

/// Enough caches of one shape to exceed 512 MB together; `next()` rotates over them.
template <class KV> struct CacheSet {
  std::vector<BenchCache<KV>> caches;
  size_t i = 0;
  CacheSet(int batch, int ctx, int bs, int nkv = kNkv, int spread = 1) {
    const double bytes = double(batch) * ctx * nkv * kHd * 2 * sizeof(KV);
    const int n = std::max(1, int(std::ceil(512e6 / bytes)));
    caches.reserve(n);
    for (int k = 0; k < n; ++k) caches.emplace_back(batch, ctx, nkv, kHd, bs, spread);
  }
  const kv::PagedKV<KV>& next() { return caches[i++ % caches.size()].view; }
};

double decode_bytes(int batch, int ctx, size_t kv_size, int nkv = kNkv) {
  return double(batch) * ctx * nkv * kHd * 2 * kv_size + 2.0 * batch * kNq * kHd * sizeof(bf16);
}

std::string shape_name(const char* what, int batch, int ctx, int bs, int splits) {
  return std::string(what) + " b" + std::to_string(batch) + " ctx" + std::to_string(ctx) + " bs" +
         std::to_string(bs) + " splits" + std::to_string(splits);
}

// -DPIE_DECODE_BENCH_FIXED_ONLY compiles BM_DecodeFixedSplit alone (a binary of the kernels it
// runs, small enough to carry to the GPU machine beside the tests); -DPIE_DECODE_BENCH_FP8_ONLY the
// fp8 cache's rows alone (pie_bench_cuda_decode_fp8).
#ifndef PIE_DECODE_BENCH_FIXED_ONLY
/// The engine's path: plan_decode_attention's split and CTA shape.
template <class KV>
void BM_DecodeAttention(benchmark::State& st) {
  const int batch = st.range(0), ctx = st.range(1), bs = st.range(2);
  CacheSet<KV> c(batch, ctx, bs);
  DeviceBuffer<bf16> q(size_t(batch) * kNq * kHd), o(q.size());
  fill(q.data(), q.size(), 4);
  auto plan = oc::plan_decode_attention(batch, kNq, kNkv, kHd, ctx, 0, {});
  DeviceBuffer<unsigned char> ws(std::max<size_t>(plan.workspace_bytes, 256));
  report(st, shape_name(sizeof(KV) == 1 ? "decode fp8kv" : "decode", batch, ctx, bs, plan.num_splits),
         decode_bytes(batch, ctx, sizeof(KV)), 0, [&] {
           oc::decode_attention(q.view({batch, kNq, kHd}), c.next(), o.view({batch, kNq, kHd}), plan, ws.data(),
                                1.f / std::sqrt(128.f));
         });
}
#define PIE_DECODE_TARGETS                                                                                    \
  ->Args({64, 4096, 16})->Args({256, 660, 16})->Args({512, 140, 16})->Args({8, 8192, 16})->Args({1, 32768, 16}) \
      ->Args({64, 4096, 8})->Args({1, 256, 16})->UseManualTime()->Iterations(1)
#ifndef PIE_DECODE_BENCH_FP8_ONLY
BENCHMARK(BM_DecodeAttention<bf16>) PIE_DECODE_TARGETS;
#endif
BENCHMARK(BM_DecodeAttention<fp8_e4m3>) PIE_DECODE_TARGETS;

/// The persistent grid (DecodePlanOptions::persistent; the fp8 cache's tensor-core kernel) against
/// the one-item grid on the same shape, A/B in one process: batch, context, persistent?. The
/// name says whether the plan took it ("persistent") — short contexts at wide batches only.
template <class KV>
void BM_DecodePersistent(benchmark::State& st) {
  const int batch = st.range(0), ctx = st.range(1), bs = 16;
  CacheSet<KV> c(batch, ctx, bs);
  DeviceBuffer<bf16> q(size_t(batch) * kNq * kHd), o(q.size());
  fill(q.data(), q.size(), 4);
  oc::DecodePlanOptions opt;
  opt.persistent = st.range(2) != 0;
  auto plan = oc::plan_decode_attention(batch, kNq, kNkv, kHd, ctx, 0, opt);
  DeviceBuffer<unsigned char> ws(std::max<size_t>(plan.workspace_bytes, 256));
  const std::string what = std::string(sizeof(KV) == 1 ? "decode fp8kv" : "decode") +
                           (plan.persistent ? " persistent" : " one-item");
  report(st, shape_name(what.c_str(), batch, ctx, bs, plan.num_splits), decode_bytes(batch, ctx, sizeof(KV)), 0, [&] {
    oc::decode_attention(q.view({batch, kNq, kHd}), c.next(), o.view({batch, kNq, kHd}), plan, ws.data(),
                         1.f / std::sqrt(128.f));
  });
}
BENCHMARK(BM_DecodePersistent<fp8_e4m3>)
    ->Args({512, 140, 0})->Args({512, 140, 1})->Args({512, 192, 0})->Args({512, 192, 1})
    ->Args({1024, 192, 0})->Args({1024, 192, 1})->Args({256, 140, 0})->Args({256, 140, 1})
    ->Args({256, 660, 0})->Args({256, 660, 1})->Args({2048, 64, 0})->Args({2048, 64, 1})
    ->UseManualTime()->Iterations(1);

/// A CTA shape other than the plan's (warps × ring stages), with the plan's split; splits > 0
/// forces that many splits instead (to check the plan's cost model). Mode 1 moves the pages
/// through the ring without the attention arithmetic: the data-movement ceiling of the shape.
template <int Warps, int Stages, int Mode = 0, class KV = bf16>
void BM_DecodeShape(benchmark::State& st) {
  const int batch = st.range(0), ctx = st.range(1), bs = 16, force = st.range(2);
  CacheSet<KV> c(batch, ctx, bs);
  DeviceBuffer<bf16> q(size_t(batch) * kNq * kHd), o(q.size());
  fill(q.data(), q.size(), 4);
  auto plan = oc::plan_decode_attention(batch, kNq, kNkv, kHd, ctx, 0, {});
  if (force > 0) oc::set_decode_split(plan, (ctx + force - 1) / force, ctx);
  DeviceBuffer<unsigned char> ws(std::max<size_t>(plan.workspace_bytes, 256));
  std::string what = std::string(sizeof(KV) == 1 ? "decode fp8kv" : "decode") + " w" + std::to_string(Warps) + " s" +
                     std::to_string(Stages) +
                     (Mode == 1 ? " loadonly" : Mode == 2 ? " allreduce" : Mode == 3 ? " cudacore" : Mode == 4 ? " tensorcore" : "");
  report(st, shape_name(what.c_str(), batch, ctx, bs, plan.num_splits), decode_bytes(batch, ctx, sizeof(KV)), 0, [&] {
    oc::decode_attention<Warps, Stages, Mode>(q.view({batch, kNq, kHd}), c.next(), o.view({batch, kNq, kHd}), plan,
                                        ws.data(), 1.f / std::sqrt(128.f));
  });
}
#define PIE_DECODE_SHAPES \
  ->Args({64, 4096, 0})->Args({256, 660, 0})->Args({512, 140, 0})->Args({8, 8192, 0})->Args({1, 32768, 0}) \
      ->UseManualTime()->Iterations(1)
#ifndef PIE_DECODE_BENCH_FP8_ONLY
// The tensor-core kernel on 16-bit K/V (Mode 4; not the default, see kDecodeMmaDefault): 2 warps
// of 16 tokens, 2 stages of 16 KB. (H200, 2026-12-04: 3 stages and 4 warps with 32 KB stages
// measured worse, except b256 at 3.)
BENCHMARK(BM_DecodeShape<2, 2, 4>) PIE_DECODE_SHAPES;
BENCHMARK(BM_DecodeShape<2, 3, 4>) PIE_DECODE_SHAPES;
// The CUDA-core kernel (the 16-bit default; Mode 3 names it where fp8 would take tensor cores), the
// same moving pages only, and its all-reduce softmax (Mode 2). (H200, 2026-12-02/04: 3 and 4
// stages, 2 warps, all worse than 4 warps × 2.)
BENCHMARK(BM_DecodeShape<4, 2, 3>) PIE_DECODE_SHAPES;
BENCHMARK(BM_DecodeShape<4, 2, 1>) PIE_DECODE_SHAPES;
BENCHMARK(BM_DecodeShape<4, 3, 2>) PIE_DECODE_SHAPES;
#endif
// The fp8 cache on the tensor-core kernel (4 warps, 64-token stages of 16 KB): 3 stages, the page
// movement alone, and the CUDA-core kernel (Mode 3) in the same call. (H200, 2026-12-04: 4 and 6
// stages 70–74% at b64 ctx4096 against 94.5% with 2.)
// Short contexts at wide batches (b512 ctx140, b1024 ctx192: the engine's 2048 × (128, 128) step,
// where the fp8 cache's attention ran at ~49% of its bytes' copy time on the H200, 2026-12-06)
// also take 2-warp CTAs (32-token stages) and deeper rings.
#define PIE_DECODE_FP8_SHAPES \
  ->Args({64, 4096, 0})->Args({256, 660, 0})->Args({8, 8192, 0})->Args({512, 140, 0})->Args({1024, 192, 0}) \
      ->UseManualTime()->Iterations(1)
BENCHMARK(BM_DecodeShape<4, 2, 3, fp8_e4m3>) PIE_DECODE_FP8_SHAPES;
BENCHMARK(BM_DecodeShape<4, 2, 0, fp8_e4m3>) PIE_DECODE_FP8_SHAPES;
BENCHMARK(BM_DecodeShape<4, 3, 0, fp8_e4m3>) PIE_DECODE_FP8_SHAPES;
BENCHMARK(BM_DecodeShape<4, 4, 0, fp8_e4m3>) PIE_DECODE_FP8_SHAPES;
BENCHMARK(BM_DecodeShape<2, 2, 0, fp8_e4m3>) PIE_DECODE_FP8_SHAPES;
BENCHMARK(BM_DecodeShape<2, 4, 0, fp8_e4m3>) PIE_DECODE_FP8_SHAPES;
BENCHMARK(BM_DecodeShape<4, 2, 1, fp8_e4m3>) PIE_DECODE_FP8_SHAPES;
#undef PIE_DECODE_FP8_SHAPES
#ifndef PIE_DECODE_BENCH_FP8_ONLY
// The tensor-core shape with other split counts than the plan's.
BENCHMARK(BM_DecodeShape<2, 2, 4>)
    ->Args({64, 4096, 1})->Args({64, 4096, 2})->Args({64, 4096, 3})->Args({64, 4096, 4})
    ->Args({256, 660, 2})->Args({512, 140, 2})->Args({8, 8192, 4})->Args({8, 8192, 8})->Args({8, 8192, 16})
    ->Args({1, 32768, 32})->Args({1, 32768, 64})->Args({1, 32768, 128})
    ->UseManualTime()->Iterations(1);
#endif
#undef PIE_DECODE_SHAPES

#ifndef PIE_DECODE_BENCH_FP8_ONLY
/// The split merge, A/B in one process: the merge kernel ("2-kernel") against the merge fused into
/// the decode kernel ("fused", DecodePlan::fused_merge) on the same shape. Arguments: batch,
/// context, tokens per split (0: each merge's own plan), fused?, KV heads (8: Qwen3-8B, group 4;
/// 4: Qwen3-30B-A3B, group 8). The sweep over tokens_per_split is what decides the fused merge's
/// split choice (plan_decode_split's fused constants are guesses until it has run).
/// Merge kinds (argument 3): 0 the merge kernel, 1 fused (atomics), 2 the cluster merge, 3 the
/// cluster merge with the early pages, 4 the merge kernel with the early pages, 5 the cluster merge
/// with the early pages and two CTAs per KV head (DecodePlan::group_parts, GQA groups 8 and 4), 6 the
/// merge kernel with two CTAs per KV head. (Back-to-back
/// launches of the same kernel have no data dependence, so the early pages show here only as the
/// cost of issuing before the wait; their gain is measured in the engine.)
template <class KV, int Mode = 0>
void BM_DecodeMerge(benchmark::State& st) {
  const int batch = st.range(0), ctx = st.range(1), tps = st.range(2), nkv = st.range(4);
  const int kind = st.range(3);
  const bool fused = kind == 1;
  CacheSet<KV> c(batch, ctx, 16, nkv);
  DeviceBuffer<bf16> q(size_t(batch) * kNq * kHd), o(q.size());
  fill(q.data(), q.size(), 4);
  oc::DecodePlanOptions opt;
  opt.fused_merge = fused;
  opt.cluster_merge = kind == 2 || kind == 3 || kind == 5;
  opt.early_pages = kind == 3 || kind == 4 || kind == 5;
  auto plan = oc::plan_decode_attention(batch, kNq, nkv, kHd, ctx, 0, opt);
  if (tps > 0) {
    oc::set_decode_split(plan, tps, ctx);
    if (opt.cluster_merge) oc::use_decode_cluster_merge(plan);
  }
  const bool parts = (kind == 5 || kind == 6) && oc::use_decode_group_parts(plan, 2);
  DeviceBuffer<unsigned char> ws(std::max<size_t>(plan.workspace_bytes, 256));
  PIE_CUDA_CHECK(cudaMemset(ws.data(), 0, ws.size()));  // the fused merge's counters start at zero
  static const char* kKind[] = {"2-kernel", "fused", "cluster", "cluster+early", "2-kernel+early",
                                "cluster+early+parts", "2-kernel+parts"};
  std::string what = std::string(sizeof(KV) == 1 ? "dec fp8kv " : "dec ") + kKind[kind] +
                     ((plan.cluster_merge || kind < 2 || kind == 4 || kind == 6) && (parts || kind < 5) ? "" : "(n/a)") +
                     (nkv == kNkv ? "" : " g" + std::to_string(kNq / nkv)) + (Mode == 4 ? " tc" : "");
  report(st, shape_name(what.c_str(), batch, ctx, 16, plan.num_splits) + " tps" + std::to_string(plan.tokens_per_split),
         decode_bytes(batch, ctx, sizeof(KV), nkv), 0, [&] {
           oc::decode_attention<0, 0, Mode>(q.view({batch, kNq, kHd}), c.next(), o.view({batch, kNq, kHd}),
                                            plan, ws.data(), 1.f / std::sqrt(128.f));
         });
}
// Each merge's own plan on the split shapes (bf16 and fp8 defaults, the 16-bit tensor-core kernel),
// then the tokens_per_split sweep at b1 ctx{192, 2048, 32768}, b8 ctx8192 and the MoE shape.
#define PIE_MERGE_PAIR(b, ctx, tps, nkv) ->Args({b, ctx, tps, 0, nkv})->Args({b, ctx, tps, 1, nkv})
#define PIE_MERGE_PLANS \
  PIE_MERGE_PAIR(1, 192, 0, 8) PIE_MERGE_PAIR(1, 2048, 0, 8) PIE_MERGE_PAIR(1, 32768, 0, 8) \
  PIE_MERGE_PAIR(8, 8192, 0, 8) PIE_MERGE_PAIR(1, 192, 0, 4) ->UseManualTime()->Iterations(1)
BENCHMARK(BM_DecodeMerge<bf16>) PIE_MERGE_PLANS;
BENCHMARK(BM_DecodeMerge<fp8_e4m3>) PIE_MERGE_PLANS;
BENCHMARK(BM_DecodeMerge<bf16, 4>) PIE_MERGE_PLANS;
BENCHMARK(BM_DecodeMerge<bf16>)
    PIE_MERGE_PAIR(1, 192, 128, 8)
    PIE_MERGE_PAIR(1, 2048, 128, 8) PIE_MERGE_PAIR(1, 2048, 256, 8) PIE_MERGE_PAIR(1, 2048, 512, 8)
    PIE_MERGE_PAIR(1, 32768, 128, 8) PIE_MERGE_PAIR(1, 32768, 256, 8) PIE_MERGE_PAIR(1, 32768, 1024, 8)
    PIE_MERGE_PAIR(8, 8192, 256, 8) PIE_MERGE_PAIR(8, 8192, 512, 8) PIE_MERGE_PAIR(8, 8192, 2048, 8)
    PIE_MERGE_PAIR(1, 192, 128, 4) PIE_MERGE_PAIR(1, 192, 192, 4)
    ->UseManualTime()->Iterations(1);
#if defined(PIE_DECODE_LATENCY)  // (-DPIE_DECODE_LATENCY=ON compiles the paths)
// The cluster merge and the early pages against the merge kernel at the batch-1 shapes of the
// engine (Qwen3-8B group 4 and Qwen3-30B-A3B group 8 at 192 and 512 tokens, 2048 forced to 8
// splits), bf16 and fp8 K/V.
#define PIE_CLUSTER_ROWS(b, ctx, tps, nkv) \
  ->Args({b, ctx, tps, 0, nkv})->Args({b, ctx, tps, 2, nkv})->Args({b, ctx, tps, 3, nkv})->Args({b, ctx, tps, 4, nkv})
#define PIE_CLUSTER_PLANS                                                                                  \
  PIE_CLUSTER_ROWS(1, 192, 0, 8) PIE_CLUSTER_ROWS(1, 512, 0, 8) PIE_CLUSTER_ROWS(1, 2048, 256, 8)             \
  PIE_CLUSTER_ROWS(1, 192, 0, 4) PIE_CLUSTER_ROWS(1, 512, 0, 4) PIE_CLUSTER_ROWS(4, 512, 0, 8)               \
  PIE_CLUSTER_ROWS(8, 1024, 0, 8) ->UseManualTime()->Iterations(1)
BENCHMARK(BM_DecodeMerge<bf16>) PIE_CLUSTER_PLANS;
BENCHMARK(BM_DecodeMerge<fp8_e4m3>) PIE_CLUSTER_PLANS;
// Two CTAs per KV head at group 8 (Qwen3-30B-A3B's batch 1 and 4) and group 4 (Qwen3-8B's batch 1)
// against one, bf16 K/V.
#define PIE_PARTS_ROWS(b, ctx, nkv) \
  ->Args({b, ctx, 0, 0, nkv})->Args({b, ctx, 0, 3, nkv})->Args({b, ctx, 0, 5, nkv})->Args({b, ctx, 0, 6, nkv})
BENCHMARK(BM_DecodeMerge<bf16>) PIE_PARTS_ROWS(1, 192, 4) PIE_PARTS_ROWS(1, 512, 4) PIE_PARTS_ROWS(1, 2048, 4)
    PIE_PARTS_ROWS(4, 512, 4) PIE_PARTS_ROWS(1, 192, 8) PIE_PARTS_ROWS(1, 512, 8) ->UseManualTime()->Iterations(1);
#undef PIE_PARTS_ROWS
#undef PIE_CLUSTER_PLANS
#undef PIE_CLUSTER_ROWS
#endif  // PIE_DECODE_LATENCY
#undef PIE_MERGE_PLANS
#undef PIE_MERGE_PAIR

#endif  // PIE_DECODE_BENCH_FP8_ONLY
#endif  // PIE_DECODE_BENCH_FIXED_ONLY

#ifndef PIE_DECODE_BENCH_FP8_ONLY

/// One bf16 decode launch planned with `opt` (the cost model's plan, or the batch-invariant split
/// when opt.fixed_split_tokens > 0) over a cache whose pages are drawn from a pool `spread` times
/// their size; `label` names the row (the plan's CTA shape is appended when `shape_in_name`).
void run_planned_decode(benchmark::State& st, int batch, int ctx, int nkv, int spread, const oc::DecodePlanOptions& opt,
                        std::string label, bool shape_in_name) {
  CacheSet<bf16> c(batch, ctx, 16, nkv, spread);
  DeviceBuffer<bf16> q(size_t(batch) * kNq * kHd), o(q.size());
  fill(q.data(), q.size(), 4);
  auto plan = oc::plan_decode_attention(batch, kNq, nkv, kHd, ctx, 0, opt);
  DeviceBuffer<unsigned char> ws(std::max<size_t>(plan.workspace_bytes, 256));
  PIE_CUDA_CHECK(cudaMemset(ws.data(), 0, ws.size()));  // the fused merge's counters start at zero
  if (shape_in_name) label += " w" + std::to_string(plan.warps) + " s" + std::to_string(plan.stages);
  report(st, shape_name(label.c_str(), batch, ctx, 16, plan.num_splits) + " tps" + std::to_string(plan.tokens_per_split),
         decode_bytes(batch, ctx, 2, nkv), 0, [&] {
           oc::decode_attention(q.view({batch, kNq, kHd}), c.next(), o.view({batch, kNq, kHd}), plan, ws.data(),
                                1.f / std::sqrt(128.f));
         });
}

/// The batch-invariant split (DecodePlanOptions::fixed_split_tokens; at 16-bit K/V and groups 4
/// and 8 the tensor-core kernel) against the cost model's plan on the CUDA-core kernel (the
/// default before it, `PIE_DECODE_MMA_WIDE=0`), same binary. Arguments: batch, context, tokens
/// per split (0: the cost model's plan), fused merge?, KV heads (8: Qwen3-8B, group 4; 4:
/// Qwen3-30B-A3B, group 8).
void BM_DecodeFixedSplit(benchmark::State& st) {
  const int tps = st.range(2), nkv = st.range(4);
  oc::DecodePlanOptions opt;
  opt.fused_merge = st.range(3) != 0;
  opt.fixed_split_tokens = tps;
  run_planned_decode(st, st.range(0), st.range(1), nkv, 1, opt,
                     std::string(tps > 0 ? "fixed tc" : "costmodel cc") + (opt.fused_merge ? " fused" : "") + " g" +
                         std::to_string(kNq / nkv),
                     false);
}
#define PIE_FIXED_ROWS(b, ctx, nkv) ->Args({b, ctx, 0, 0, nkv})->Args({b, ctx, 512, 0, nkv})
#define PIE_FIXED_FUSED(b, ctx, nkv) ->Args({b, ctx, 512, 1, nkv})
#define PIE_FIXED_SHAPES(nkv)                                                                                   \
  PIE_FIXED_ROWS(1, 32768, nkv) PIE_FIXED_ROWS(8, 8192, nkv) PIE_FIXED_ROWS(64, 4096, nkv)                      \
  PIE_FIXED_ROWS(256, 660, nkv) PIE_FIXED_ROWS(512, 140, nkv) PIE_FIXED_ROWS(1, 256, nkv) PIE_FIXED_ROWS(1, 2048, nkv) \
  PIE_FIXED_FUSED(1, 32768, nkv) PIE_FIXED_FUSED(8, 8192, nkv) PIE_FIXED_FUSED(64, 4096, nkv) PIE_FIXED_FUSED(1, 2048, nkv) \
  ->Args({1, 32768, 1024, 0, nkv})->Args({8, 8192, 1024, 0, nkv})->Args({64, 4096, 1024, 0, nkv})                 \
  ->Args({8, 8192, 256, 0, nkv})->Args({256, 660, 1024, 0, nkv})->Args({1, 2048, 1024, 0, nkv})
BENCHMARK(BM_DecodeFixedSplit) PIE_FIXED_SHAPES(8) PIE_FIXED_SHAPES(4) ->UseManualTime()->Iterations(1);
#undef PIE_FIXED_SHAPES
#undef PIE_FIXED_FUSED
#undef PIE_FIXED_ROWS

/// The engine's wide decode grids (issue 20's 1024 × (128, 128): 266 µs a layer at ~28–36% of copy
/// in the engine's step, 2026-12-06) against what the kernel does alone: the cost model's plan on
/// the CUDA-core kernel and the batch-invariant split on the tensor-core kernel (tps 512), each
/// over pages packed into a pool of exactly their size (spread 1) or drawn from one 8× larger
/// (spread 8: a layer's blocks scattered over its share of the engine's pool, as many distinct
/// memory pages per launch as there). Arguments: batch, context, tokens per split (0 or 512),
/// KV heads (4: group 8; 8: group 4), spread.
void BM_DecodeGrid(benchmark::State& st) {
  const int tps = st.range(2), nkv = st.range(3), spread = st.range(4);
  oc::DecodePlanOptions opt;
  opt.fixed_split_tokens = tps;
  run_planned_decode(st, st.range(0), st.range(1), nkv, spread, opt,
                     std::string(tps > 0 ? "grid tc" : "grid cc") + " g" + std::to_string(kNq / nkv) + " spread" +
                         std::to_string(spread),
                     true);
}
#define PIE_GRID_ROWS(b, ctx, nkv)                                                                      \
  ->Args({b, ctx, 0, nkv, 1})->Args({b, ctx, 512, nkv, 1})->Args({b, ctx, 0, nkv, 8})->Args({b, ctx, 512, nkv, 8})
BENCHMARK(BM_DecodeGrid) PIE_GRID_ROWS(1024, 192, 4) PIE_GRID_ROWS(1024, 140, 4) PIE_GRID_ROWS(512, 140, 4)
    PIE_GRID_ROWS(512, 192, 8) ->UseManualTime()->Iterations(1);
#undef PIE_GRID_ROWS

/// The tensor-core kernel's CTA shape on the wide group-8 grid (Mode 4: warps × ring stages, one
/// split per (sequence, KV head)), and the CUDA-core kernel moving the same pages without the
/// arithmetic (Mode 1: the data-movement ceiling of a 4-warp, 2-stage ring). Arguments: batch,
/// context, KV heads.
template <int Warps, int Stages, int Mode>
void BM_DecodeGridShape(benchmark::State& st) {
  const int batch = st.range(0), ctx = st.range(1), nkv = st.range(2);
  CacheSet<bf16> c(batch, ctx, 16, nkv);
  DeviceBuffer<bf16> q(size_t(batch) * kNq * kHd), o(q.size());
  fill(q.data(), q.size(), 4);
  auto plan = oc::plan_decode_attention(batch, kNq, nkv, kHd, ctx, 0, {});
  DeviceBuffer<unsigned char> ws(std::max<size_t>(plan.workspace_bytes, 256));
  std::string what = std::string(Mode == 1 ? "shape loadonly" : "shape tc") + " g" + std::to_string(kNq / nkv) + " w" +
                     std::to_string(Warps) + " s" + std::to_string(Stages);
  report(st, shape_name(what.c_str(), batch, ctx, 16, plan.num_splits), decode_bytes(batch, ctx, 2, nkv), 0, [&] {
    oc::decode_attention<Warps, Stages, Mode>(q.view({batch, kNq, kHd}), c.next(), o.view({batch, kNq, kHd}), plan,
                                              ws.data(), 1.f / std::sqrt(128.f));
  });
}
#define PIE_GRID_SHAPE_ROWS ->Args({1024, 192, 4})->Args({1024, 140, 4})->Args({512, 192, 8})->UseManualTime()->Iterations(1)
BENCHMARK(BM_DecodeGridShape<2, 3, 4>) PIE_GRID_SHAPE_ROWS;
BENCHMARK(BM_DecodeGridShape<2, 4, 4>) PIE_GRID_SHAPE_ROWS;
BENCHMARK(BM_DecodeGridShape<4, 2, 4>) PIE_GRID_SHAPE_ROWS;
BENCHMARK(BM_DecodeGridShape<4, 2, 1>) PIE_GRID_SHAPE_ROWS;
#undef PIE_GRID_SHAPE_ROWS

#endif  // PIE_DECODE_BENCH_FP8_ONLY

#ifdef PIE_DECODE_BASELINE
/// The baseline kernel (an older attention_decode.cuh) on the same shapes, with its own plan.
void BM_DecodeBaseline(benchmark::State& st) {
  const int batch = st.range(0), ctx = st.range(1), bs = st.range(2);
  CacheSet<bf16> c(batch, ctx, bs);
  DeviceBuffer<bf16> q(size_t(batch) * kNq * kHd), o(q.size());
  fill(q.data(), q.size(), 4);
  auto plan = oc::v0::plan_decode_attention(batch, kNq, kNkv, kHd, ctx);
  DeviceBuffer<unsigned char> ws(std::max<size_t>(plan.workspace_bytes, 256));
  report(st, shape_name("baseline", batch, ctx, bs, plan.num_splits), decode_bytes(batch, ctx, 2), 0, [&] {
    oc::v0::decode_attention(q.view({batch, kNq, kHd}), c.next(), o.view({batch, kNq, kHd}), plan, ws.data(),
                             1.f / std::sqrt(128.f));
  });
}
BENCHMARK(BM_DecodeBaseline) PIE_DECODE_TARGETS;
#endif
#undef PIE_DECODE_TARGETS

#ifndef PIE_DECODE_BENCH_FIXED_ONLY
/// Occupancy of the kernels' CTA shapes (plan_decode_attention assumes DecodePlan::ctas_per_sm CTAs
/// of 4 warps).
void print_occupancy() {
  auto show = [](const char* name, auto kern, size_t smem, int threads = 128) {
    PIE_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    int n = 0;
    PIE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kern, threads, smem));
    cudaFuncAttributes a{};
    PIE_CUDA_CHECK(cudaFuncGetAttributes(&a, kern));
    std::printf("occupancy %s: %d CTAs/SM, %d registers, %zu B dynamic + %zu B static shared, %zu B local\n", name, n,
                a.numRegs, smem, a.sharedSizeBytes, a.localSizeBytes);
  };
  namespace d = oc::detail;
  using DB = oc::device_t<bf16>;
  using D8 = oc::device_t<fp8_e4m3>;
  constexpr int S = d::decode_stages(4);
  show("bf16 hd128 group4 (CUDA cores)", d::decode_kernel<128, 4, 4, S, 0, DB, DB, attention::Causal>,
       d::DecodeShape<128, 4, 4, S, DB>::SMEM);
  show("fp8 hd128 group4 (CUDA cores)", d::decode_kernel<128, 4, 4, S, 0, DB, D8, attention::Causal>,
       d::DecodeShape<128, 4, 4, S, D8>::SMEM);
  constexpr int SM = d::kDecodeMmaStages;
  show("fp8 hd128 group4 (tensor cores)", d::decode_mma_kernel<128, 4, 4, SM, 0, DB, D8, attention::Causal>,
       d::DecodeMmaShape<128, 4, 4, SM, D8>::SMEM);
  show("fp8 hd128 group8 (tensor cores)", d::decode_mma_kernel<128, 8, 4, SM, 0, DB, D8, attention::Causal>,
       d::DecodeMmaShape<128, 8, 4, SM, D8>::SMEM);
  show("bf16 hd128 group4 (tensor cores, 2 warps)", d::decode_mma_kernel<128, 4, 2, SM, 0, DB, DB, attention::Causal>,
       d::DecodeMmaShape<128, 4, 2, SM, DB>::SMEM, 64);
}

#endif
}  // namespace

int main(int argc, char** argv) {
  print_device_and_copy_ceiling();
#ifndef PIE_DECODE_BENCH_FIXED_ONLY
  print_occupancy();
#endif
  run_benchmarks_and_print_rows(argc, argv);
  return 0;
}
