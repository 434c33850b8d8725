// Where a batch-1 decode attention CTA spends its time, without hardware counters: built with
// -DPIE_DECODE_TIMELINE, thread 0 of every decode CTA stamps %globaltimer at eight points
// (attention_decode.cuh, PIE_DECODE_MARK): 0 entry, 1 early pages issued, 2 wait returned,
// 3 ring started (page table read, q loaded), 4 first stage landed, 5 stages done, 6 the CTA's
// warps merged, 7 partials stored (or, with the cluster merge, merged and written).
// For each shape it prints, over 30 launches (median), the time of each mark from the grid's
// first entry: the earliest and the latest CTA. Shapes: Qwen3-30B-A3B (4 KV heads, group 8) and
// Qwen3-8B (8 KV heads, group 4) at batch 1, 192 and 512 tokens, one CTA per KV head with the
// merge kernel, and two (group parts) with the cluster merge or the merge kernel. Caches rotate
// over > 100 MB so that the pages come from DRAM, as in a decode step.
#include "bench_common.cuh"
#include "pie/ops/cuda/attention_decode.cuh"

namespace {
using namespace pie;
using namespace pie::bench;
namespace oc = pie::ops::cuda;
constexpr int kNq = 32, kHd = 128, kMarks = oc::detail::kDecodeMarks;

struct Shape {
  int batch, ctx, nkv, kind;  // kind: 0 merge kernel, 5 parts + cluster merge + early pages, 6 parts + merge kernel
};

void run(const Shape& sh) {
  const double bytes = double(sh.batch) * sh.ctx * sh.nkv * kHd * 2 * sizeof(bf16);
  const int n = std::max(1, int(std::ceil(100e6 / bytes)));
  std::vector<BenchCache<bf16>> caches;
  caches.reserve(n);
  for (int k = 0; k < n; ++k) caches.emplace_back(sh.batch, sh.ctx, sh.nkv, kHd, 16);
  DeviceBuffer<bf16> q(size_t(sh.batch) * kNq * kHd), o(q.size());
  fill(q.data(), q.size(), 4);
  oc::DecodePlanOptions opt;
  opt.cluster_merge = sh.kind == 5;
  opt.early_pages = sh.kind == 5;
  auto plan = oc::plan_decode_attention(sh.batch, kNq, sh.nkv, kHd, sh.ctx, 0, opt);
  const bool parts = sh.kind != 0 && oc::use_decode_group_parts(plan, 2);
  DeviceBuffer<unsigned char> ws(std::max<size_t>(plan.workspace_bytes, 256));
  PIE_CUDA_CHECK(cudaMemset(ws.data(), 0, ws.size()));
  const int ctas = sh.batch * sh.nkv * plan.group_parts * plan.num_splits;
  std::vector<unsigned long long> t(size_t(oc::detail::kDecodeTimelineCtas) * kMarks);
  DeviceBuffer<unsigned long long> dt(t.size());
  oc::detail::g_decode_timeline = dt.data();
  std::vector<std::vector<double>> first(kMarks), last(kMarks);
  for (int it = 0; it < 40; ++it) {
    std::fill(t.begin(), t.end(), 0ull);
    PIE_CUDA_CHECK(cudaMemset(dt.data(), 0, t.size() * sizeof(t[0])));
    oc::decode_attention(q.view({sh.batch, kNq, kHd}), caches[it % n].view, o.view({sh.batch, kNq, kHd}), plan,
                         ws.data(), 1.f / std::sqrt(128.f));
    PIE_CUDA_CHECK(cudaDeviceSynchronize());
    PIE_CUDA_CHECK(cudaMemcpy(t.data(), dt.data(), t.size() * sizeof(t[0]), cudaMemcpyDeviceToHost));
    if (it < 10) continue;
    unsigned long long t0 = ~0ull;
    for (int c = 0; c < ctas; ++c)
      if (t[size_t(c) * kMarks] != 0) t0 = std::min(t0, t[size_t(c) * kMarks]);
    for (int m = 0; m < kMarks; ++m) {
      double lo = 1e30, hi = -1;
      for (int c = 0; c < ctas; ++c) {
        const unsigned long long v = t[size_t(c) * kMarks + m];
        if (v == 0) continue;  // not reached (an empty split has no stage)
        lo = std::min(lo, double(v - t0) * 1e-3);
        hi = std::max(hi, double(v - t0) * 1e-3);
      }
      if (hi >= 0) { first[m].push_back(lo); last[m].push_back(hi); }
    }
  }
  auto median = [](std::vector<double> v) {
    if (v.empty()) return -1.0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  oc::detail::g_decode_timeline = nullptr;
  static const char* kName[] = {"0 entry", "1 early", "2 waited", "3 ring", "4 stage0", "5 stages", "6 cta", "7 out"};
  std::printf("b%d ctx%d kv%d (group %d) kind %d: %d CTAs (%d splits x %d parts), tps %d, parts %d\n", sh.batch, sh.ctx,
              sh.nkv, kNq / sh.nkv, sh.kind, ctas, plan.num_splits, plan.group_parts, plan.tokens_per_split,
              int(parts));
  for (int m = 0; m < kMarks; ++m)
    std::printf("  %-9s first %6.2f us  last %6.2f us\n", kName[m], median(first[m]), median(last[m]));
}
}  // namespace

int main() {
  print_device();
  for (Shape s : {Shape{1, 192, 4, 0}, Shape{1, 192, 4, 5}, Shape{1, 192, 4, 6}, Shape{1, 512, 4, 5},
                  Shape{1, 192, 8, 0}, Shape{1, 192, 8, 5}, Shape{1, 512, 8, 5}, Shape{1, 2048, 8, 0}})
    run(s);
  return 0;
}
