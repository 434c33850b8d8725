#pragma once
/// \file attention_decode_plan.hpp
/// \brief The host side of decode attention (attention_decode.cuh): the work partition of one
/// launch (DecodePlan), the split choice, and the layout of the launch's device workspace. Plain
/// C++ (no CUDA), so the CPU tests in CI check it.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "pie/core/env_switch.hpp"
#include "pie/core/error.hpp"
#include "pie/ops/decode_latency_build.hpp"  // kDecodeLatencyCompiled: the switches' defaults

namespace pie::ops::cuda {

namespace detail {
/// Tokens in flight per lane group and stage: 4, or 2 at GQA groups ≥ 8 (registers).
constexpr int decode_unroll(int group) { return group >= 8 ? 2 : 4; }
/// Ring depth of the default CTA shape (4 warps): 2 stages of 16 KB (16-bit K/V) at groups ≤ 4.
/// Measured on the H200 (BM_DecodeShape, 2026-12-02 and 2026-12-04): 4 stages (64 KB rings, 3
/// CTAs per SM) lost to 3 (b64 ctx4096 88% vs 96% of copy bandwidth), and 2 stages beat 3 in two
/// calls, then against the 3-stage kernel in the same binary (b1 ctx32768 +2.9 points, b8
/// ctx8192 +1.8, b64 +0.6; b256, b512 and fp8 within ±0.8): the CTA is bound by its arithmetic,
/// and 4 CTAs per SM keep enough in flight.
/// 8 stages of 8 KB at group 8.
constexpr int decode_stages(int group) { return group >= 8 ? 8 : 2; }
/// Resident CTAs per SM the plan counts on for the default shape: 4 (32 KB rings, ≤ 128
/// registers); at group 8 the registers (q and accumulators of 8 heads) allow 2.
constexpr int decode_ctas_per_sm(int group) { return group >= 8 ? 2 : 4; }
}  // namespace detail

/// Whether `warps` is a wide CUDA-core CTA (DecodePlanOptions::wide_warps): 8 warps make a stage of
/// 64 tokens at 4 per lane group (head dim 128), 16 warps at 2; either way a 64-token split is one
/// stage instead of two.
constexpr bool decode_wide_warps(int warps) { return warps == 8 || warps == 16; }

/// Most splits of one (sequence, KV head) that a cluster merge serves: the portable cluster size,
/// so every CTA of a pair is resident on one GPC and the launch needs no attribute.
inline constexpr int kDecodeMaxClusterSplits = 8;
/// Most CTAs of one cluster with group parts (DecodePlan::group_parts · num_splits): 16, a
/// non-portable size that Hopper allows (the launch sets cudaFuncAttributeNonPortableClusterSizeAllowed),
/// so that the batch-1 plans of the smallest graph context class (512 tokens: 8 splits of 64)
/// keep their splits when each is served by two parts.
inline constexpr int kDecodeMaxClusterCtas = 16;

/// \brief How the split partials of a decode launch are merged, and what the plan may assume.
struct DecodePlanOptions {
  /// The last CTA of each (sequence, KV head) to finish merges that pair's split partials itself
  /// (a per-pair arrival counter in the workspace), instead of a second, merge kernel. Opt-in:
  /// not yet measured on a GPU (issue 14). The split choice then uses the fused merge's costs.
  bool fused_merge = false;
  /// Sequences the workspace's arrival counters serve: at least the plan's batch. A caller that
  /// reuses one workspace for plans of several batch sizes (the CUDA runner: every batch size up
  /// to max_num_seqs) passes the largest, so that every plan finds its counters at the same
  /// place, never on bytes an earlier plan used for partials. 0: the plan's batch.
  int counter_batch = 0;
  /// > 0: the batch-invariant split. Every split covers exactly this many tokens from position 0
  /// (a multiple of 64), whatever the batch and the longest context, so a sequence is cut at the
  /// same positions in every launch, and its partials are merged in split order; its output
  /// bits then depend only on its own query and context. decode_attention takes the tensor-core
  /// kernel for 16-bit K/V at GQA groups 4 and 8 with such a plan (DecodePlan::fixed_split).
  /// 0: the cost model chooses the split from the grid (fast, but the split follows the batch).
  int fixed_split_tokens = 0;
  /// With fixed_split_tokens: only wide grids take it — plans whose cost-model grid (sequences ·
  /// KV heads · splits) is more than one CTA per SM; the small grids of the latency regime
  /// (DecodePlan::small_grid) keep the cost model's plan, the CUDA-core kernel and its latency
  /// paths. At GQA group 8 the CUDA-core kernel is bound by its FMAs (8 heads per K/V element)
  /// on wide grids, while the tensor-core kernel loses at batch 1 (H100, 2026-12-06: b1024 ctx192
  /// 301 µs against 156 with the 4-warp CTA; Qwen3-30B-A3B 1024 × (128, 128) 0.555 → 0.601 of
  /// the roofline). A sequence's bits then follow its batch across that boundary, as the cost
  /// model's split count already makes them within each kernel.
  bool fixed_split_wide_grids_only = false;
  /// A plan of 2 to kDecodeMaxClusterSplits splits (and no fused_merge or fixed split) launches
  /// each (sequence, KV head)'s splits as one thread-block cluster: the CTAs keep their partials in
  /// shared memory and merge them through distributed shared memory after a cluster barrier, so
  /// there is no merge kernel and no partial goes through L2. The split choice is unchanged. Opt-in
  /// until measured on a GPU (issue 14/15: batch-1 attention is latency, and the merge kernel is a
  /// launch on the chain).
  bool cluster_merge = false;
  /// The kernel issues the bulk copies of its first ring stages whose tokens are all older than the
  /// query (written by earlier steps) before `griddepcontrol.wait`, so at small batches the pages
  /// stream in while the previous kernel (RoPE, the KV write) finishes. Only the page table, the
  /// lengths (uploaded before the step) and K/V rows of earlier steps are read before the wait;
  /// the query's own row, written in this step, is copied after it.
  bool early_pages = false;
  /// The cluster merge and the early pages apply only to plans whose grid fits one wave of one
  /// CTA per SM (batch · KV heads · splits ≤ the SM count; DecodePlan::small_grid): there decode
  /// attention is a link of latency in a chain of small kernels, while on a full grid the paths
  /// cost throughput (H100, 2026-12-05: with RoPE inside, batch-1 ITL −1.2% on Qwen3-8B and −2.3%
  /// on Qwen3-30B-A3B, but 2048 × (128, 128) −2.9%). The default of a build with the paths.
  bool small_grids_only = false;
  /// At GQA groups of 8, each (sequence, KV head) is served by two CTAs of four query heads each
  /// (DecodePlan::group_parts) instead of one CTA of eight: both read the KV head's pages (the
  /// second mostly from L2), each does half the arithmetic, and the four-head kernel holds 128
  /// registers instead of 209, so that under programmatic dependent launch it fits beside the qkv
  /// projection's CTAs and starts early (H100 trace, 2026-12-06: Qwen3-30B-A3B's batch-1 attention
  /// took 18.6 µs a layer against Qwen3-8B's 13.0 at group 4). 16-bit K/V on the CUDA-core kernel
  /// only (decode_plan_options clears it for the others). Measured on an H100 (2026-12-06):
  /// Qwen3-30B-A3B batch-1 ITL −4.1%, its kernel tests passing (pie_cuda_test_attention_decode_merge).
  /// The default of a build with the latency paths, on small grids.
  bool split_groups = false;
  /// split_groups only where the doubled grid still fits one wave of one CTA per SM (the latency
  /// regime; DecodePlan::small_grid).
  bool split_groups_small_grids_only = false;
  /// The same at GQA group 4 (two CTAs of two query heads; Qwen3-8B's batch 1), on the same grid
  /// rule (`PIE_DECODE_SPLIT_GROUP4`). A two-head CTA converts and reads every K/V element for half
  /// the FMAs of a four-head one, so it was measured on its own: Qwen3-8B batch-1 ITL −1.4% (H100,
  /// 2026-12-06, three pairs). The default of a build with the latency paths, on small grids.
  bool split_group4 = false;
  /// Small grids only: the decode kernel lets its dependent (o_proj's GEMV, or the merge kernel)
  /// launch after its stages instead of at its start, so that the dependent's CTAs and their
  /// first weight loads do not share the SMs and DRAM with the attention's own loads (the
  /// engine's timeline of 2026-12-06 had each phase of the kernel about twice as long in the step
  /// as alone). Measured on an H100 (2026-12-06, two pairs): batch-1 ITL −1.6% on Qwen3-30B-A3B,
  /// −0.2% on Qwen3-8B. `PIE_DECODE_LATE_DEPENDENTS`: unset, on in a build with the latency
  /// paths; `0` off; `1` on (small grids either way).
  bool late_dependents = false;
  /// Plans of one split per (sequence, KV head) whose grid is more than one wave of resident CTAs
  /// take the persistent form of the kernel where it has one (the tensor-core kernel over an fp8
  /// cache: detail::decode_mma_persistent_kernel), a CTA per resident slot running its share of
  /// the pairs with its ring running on from one pair to the next. The same bits. Opt-in
  /// (`PIE_DECODE_PERSISTENT=1`) until measured on a GPU.
  bool persistent = false;
  /// Small grids only, head dim 128, at most 4 query heads per CTA (group parts at groups 8 and 4,
  /// or groups ≤ 4), 16-bit K/V on the CUDA-core kernel: CTAs of 8 or 16 warps (0: the default
  /// 4), so that a split of 64 tokens is one stage instead of two (the engine's timeline of
  /// 2026-12-06: 1.75 µs a stage at batch 1, one warp per SM sub-partition, so nothing hides a
  /// dependent instruction's latency). 16 warps hold the SM's whole register file at ~128 a thread,
  /// so under programmatic dependent launch they may not fit beside the qkv GEMV; 8 do.
  /// `PIE_DECODE_WIDE_CTAS=8`, `16` or `0` (off); unset: 16 in a build with the latency paths (H100,
  /// 2026-12-06, same call, two rounds: batch-1 ITL −2.3 to −2.6% on Qwen3-30B-A3B, −1.0% on
  /// Qwen3-8B), off without them. The tokens a lane sums change, so the bits do (within the
  /// kernels' tolerance).
  int wide_warps = 0;
  /// The cluster merge pushes: each CTA writes its partial rows into split 0's shared memory and
  /// split 0 alone merges them from its own memory, so one cluster barrier phase (after the pushes)
  /// replaces the two around the distributed reads, and the other CTAs exit at once
  /// (DecodePlan::cluster_push; the same bits). `PIE_DECODE_CLUSTER_PUSH`: `1` on, `0` off; unset:
  /// on in a build with the latency paths (H100, 2026-12-06, same binary, three rounds each:
  /// batch-1 ITL −0.57% on Qwen3-30B-A3B, −0.31% on Qwen3-8B, every round), off without them.
  bool cluster_push = false;
  /// Fewest tokens a split covers where the unsplit grid has fewer CTAs than SMs (batch 1 and
  /// small batches; 256 elsewhere). 64 lets the cost model cut batch 1's 512-token graph class
  /// into 8 splits merged in a cluster; a larger value trades the merge (~3 µs from the warps'
  /// merge to the output in the H100 timeline of 2026-12-06) for more stages in one CTA.
  /// `PIE_DECODE_SMALL_SPLIT_TOKENS` (a positive multiple of 64; opt-in until measured).
  int small_split_tokens = 64;

  /// The fused merge is `PIE_DECODE_FUSED_MERGE=1` (opt-in: never measured faster). The cluster
  /// merge (`PIE_DECODE_CLUSTER_MERGE`) and the early pages (`PIE_DECODE_EARLY_PAGES`) are `1`: on
  /// for every plan that can take them, `0`: off, unset: off in a build without the latency paths
  /// and on for small grids (small_grids_only) in a build with them (`latency_compiled`). Any other
  /// value is an error naming the variable. `PIE_DECODE_SPLIT_GROUP` (split_groups) and
  /// `PIE_DECODE_SPLIT_GROUP4` (split_group4): `1` on small grids (split_groups_small_grids_only),
  /// `0` off, unset: on small grids in a build with the latency paths, off without them.
  static DecodePlanOptions from_env(bool latency_compiled = kDecodeLatencyCompiled) {
    const char* cluster = std::getenv("PIE_DECODE_CLUSTER_MERGE");
    const char* early = std::getenv("PIE_DECODE_EARLY_PAGES");
    const char* split_group = std::getenv("PIE_DECODE_SPLIT_GROUP");
    DecodePlanOptions o;
    o.fused_merge = env_switch("PIE_DECODE_FUSED_MERGE", std::getenv("PIE_DECODE_FUSED_MERGE"));
    o.cluster_merge = env_switch("PIE_DECODE_CLUSTER_MERGE", cluster, latency_compiled);
    o.early_pages = env_switch("PIE_DECODE_EARLY_PAGES", early, latency_compiled);
    // A switch set to 1 asks for every plan (as when the paths were opt-in); only defaults limit.
    o.small_grids_only = latency_compiled && (env_unset(cluster) || !o.cluster_merge) &&
                         (env_unset(early) || !o.early_pages);
    o.split_groups = env_switch("PIE_DECODE_SPLIT_GROUP", split_group, latency_compiled);
    o.split_groups_small_grids_only = true;
    o.split_group4 = env_switch("PIE_DECODE_SPLIT_GROUP4", std::getenv("PIE_DECODE_SPLIT_GROUP4"), latency_compiled);
    o.late_dependents =
        env_switch("PIE_DECODE_LATE_DEPENDENTS", std::getenv("PIE_DECODE_LATE_DEPENDENTS"), latency_compiled);
    o.persistent = env_switch("PIE_DECODE_PERSISTENT", std::getenv("PIE_DECODE_PERSISTENT"));
    o.wide_warps = latency_compiled ? 16 : 0;
    o.cluster_push =
        latency_compiled && env_switch("PIE_DECODE_CLUSTER_PUSH", std::getenv("PIE_DECODE_CLUSTER_PUSH"), true);
    if (const char* w = std::getenv("PIE_DECODE_WIDE_CTAS"); w != nullptr && *w != '\0') {
      const std::string v = w;
      PIE_CHECK(v == "0" || v == "8" || v == "16", "PIE_DECODE_WIDE_CTAS must be 0, 8 or 16 (warps), got '", v, "'");
      o.wide_warps = latency_compiled ? std::stoi(v) : 0;
    }
    o.small_split_tokens =
        env_count("PIE_DECODE_SMALL_SPLIT_TOKENS", std::getenv("PIE_DECODE_SMALL_SPLIT_TOKENS"), o.small_split_tokens);
    PIE_CHECK(o.small_split_tokens > 0 && o.small_split_tokens % 64 == 0,
              "PIE_DECODE_SMALL_SPLIT_TOKENS must be a positive multiple of 64, got ", o.small_split_tokens);
    return o;
  }
};

/// Tokens per split of the batch-invariant plan (DecodePlanOptions::fixed_split_tokens). A
/// compromise fixed once, since it may not follow the batch: long enough that the wide batches
/// of serving (contexts ≤ 512) are one split, with no merge, and that b64 × 4096 is 8 splits, not
/// a grid of many waves; short enough that one sequence of 32K tokens is 64 splits, the split
/// count the cost model picks there (H200, 2026-12-04: 32 / 64 / 128 splits of the tensor-core
/// kernel at b1 ctx32768: 62.7 / 68.1 / 49.8% of the copy bandwidth). Short contexts at batch 1
/// are then one split per KV head, which DecodePlan::deep_ring keeps fast.
inline constexpr int kDecodeFixedSplitTokens = 512;

/// Bit of decode_mma16_groups' mask: the groups named take the batch-invariant split on wide grids
/// only (DecodePlanOptions::fixed_split_wide_grids_only).
inline constexpr int kDecodeMmaWideGridsOnly = 1;

/// The mask of an unset `PIE_DECODE_MMA_WIDE`: in a build with the batch-invariant split's kernels
/// (PIE_DECODE_FIXED_SPLIT), GQA group 8 on wide grids (Qwen3-30B-A3B's large batches, where the
/// CUDA-core kernel is bound by its FMAs); none without them. Group 4 keeps the CUDA-core kernel:
/// there the two kernels measured within noise of each other on wide grids (H100, 2026-12-06,
/// b512 ctx192: 167 / 150 µs CUDA-core, 151 / 170 µs tensor-core, packed / scattered pages).
inline constexpr int kDecodeMma16DefaultGroups =
#if defined(PIE_DECODE_FIXED_SPLIT)
    8 | kDecodeMmaWideGridsOnly;
#else
    0;
#endif

/// \brief The GQA groups whose 16-bit decode launches take the tensor-core kernel with the
/// batch-invariant split, as a mask of group bits (4, 8) plus kDecodeMmaWideGridsOnly, from
/// `PIE_DECODE_MMA_WIDE`'s value: `all` or `4,8`: both, every grid; `4` or `8`: that group, every
/// grid; `8w`: group 8 on wide grids only; `0`, `off` or `none`: neither (the CUDA-core kernel
/// and the cost model's split); unset: kDecodeMma16DefaultGroups. Anything else is an error.
inline int decode_mma16_groups(const char* v) {
  if (v == nullptr) return kDecodeMma16DefaultGroups;
  const std::string s = v;
  if (s == "0" || s == "off" || s == "none") return 0;
  if (s == "all" || s == "4,8" || s == "8,4") return 4 | 8;
  if (s == "4") return 4;
  if (s == "8w") return 8 | kDecodeMmaWideGridsOnly;
  PIE_CHECK(s == "8", "PIE_DECODE_MMA_WIDE must be all, 4,8, 4, 8, 8w or 0 (got '", s, "')");
  return 8;
}

/// \brief decode_mma16_groups of the process's `PIE_DECODE_MMA_WIDE`, read once (the one place the
/// variable is read: the plan options and decode_attention's queries agree for the process's life).
inline int decode_mma16_env_groups() {
  static const int mask = decode_mma16_groups(std::getenv("PIE_DECODE_MMA_WIDE"));
  return mask;
}

/// \brief Whether a decode launch over a KV cache of `kv_bytes`-byte elements at this GQA group and
/// head dim takes the tensor-core kernel with the batch-invariant split, given the groups mask
/// of decode_mma16_groups: 16-bit K/V at groups 4 and 8, head dims 64 and 128 (fp8 takes the
/// tensor-core kernel with the cost model's split; head dim 256 and other groups the CUDA-core
/// kernel).
inline bool decode_fixed_split_wanted(int kv_bytes, int group, int head_dim, int groups_mask) {
  return kv_bytes == 2 && (group == 4 || group == 8) && (groups_mask & group) != 0 &&
         (head_dim == 64 || head_dim == 128);
}

/// \brief The engine's plan options for a KV cache of `kv_bytes`-byte elements: the environment's
/// merge (from_env) and, where decode_fixed_split_wanted (`PIE_DECODE_MMA_WIDE`, read once), the
/// batch-invariant split of kDecodeFixedSplitTokens — an error in a build without its kernels
/// (PIE_DECODE_FIXED_SPLIT, attention_decode_mma.cuh's kDecodeMmaWide).
inline DecodePlanOptions decode_plan_options(int kv_bytes, int group, int head_dim) {
  const int mask = decode_mma16_env_groups();
  DecodePlanOptions o = DecodePlanOptions::from_env();
  if (decode_fixed_split_wanted(kv_bytes, group, head_dim, mask)) {
#if !defined(PIE_DECODE_FIXED_SPLIT)
    PIE_CHECK(false, "PIE_DECODE_MMA_WIDE: this build has no batch-invariant decode split (configure with "
                     "-DPIE_DECODE_FIXED_SPLIT=ON)");
#endif
    o.fixed_split_tokens = kDecodeFixedSplitTokens;
    o.fixed_split_wide_grids_only = (mask & kDecodeMmaWideGridsOnly) != 0;
  }
  // Two CTAs per KV head: the CUDA-core kernel's path only (16-bit K/V, the cost model's split).
  // So are the wide CTAs. (With the fixed split on wide grids only, the small grids that these
  // paths serve keep the cost model's plan.)
  if (kv_bytes != 2 || (o.fixed_split_tokens > 0 && !o.fixed_split_wide_grids_only)) {
    o.split_groups = o.split_group4 = false;
    o.wide_warps = 0;
  }
  // The persistent grid is the fp8 cache's tensor-core kernel's (16-bit K/V take the CUDA-core
  // kernel, or the tensor-core one with the fixed split, which plans no persistent grid).
  if (kv_bytes != 1) o.persistent = false;
  return o;
}

/// \brief Host-side work partition of one decode launch (FlashInfer-style plan/run split).
struct DecodePlan {
  int batch = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int num_splits = 1;         ///< CTAs per (sequence, KV head) along the context
  int tokens_per_split = 0;   ///< context tokens each split covers (a multiple of 64)
  /// Device scratch the launch needs (0 when num_splits == 1): the arrival counters
  /// (counter_bytes, fused merge only), then the partial outputs [splits][batch][nq][head_dim]
  /// and log-sum-exps [splits][batch][nq] in float.
  size_t workspace_bytes = 0;
  /// CTA shape of the CUDA-core kernel: warps per CTA and shared-memory ring depth (stages of 16 KB
  /// at 16-bit KV). The tensor-core kernel (head dims 64/128) has a fixed shape of its own.
  int warps = 4;
  int stages = 3;
  int ctas_per_sm = 4;        ///< resident CTAs per SM the split choice assumed
  /// The split partials are merged by the last CTA of each (sequence, KV head) (only when
  /// num_splits > 1; see DecodePlanOptions::fused_merge).
  bool fused_merge = false;
  /// Bytes of arrival counters at the start of the workspace (fused merge with splits; else 0):
  /// one uint32 per (sequence, KV head) for counter_batch sequences, rounded up to 256 bytes.
  /// They must be zero before the first launch (zero the workspace once when it is allocated);
  /// every launch leaves them zero again, so CUDA-graph replays need no memset.
  size_t counter_bytes = 0;
  /// The split is the batch-invariant one (DecodePlanOptions::fixed_split_tokens): at 16-bit K/V,
  /// GQA groups 4 and 8 and head dims 64/128, decode_attention's default mode then takes the
  /// tensor-core kernel (its P is rounded per split, so only a split fixed by the context keeps
  /// a sequence's bits independent of its batch).
  bool fixed_split = false;
  /// With fixed_split: the grid is narrow (at most 2 CTAs per SM: batch 1 and small batches), so
  /// the tensor-core kernel takes its deep ring (kDecodeMmaDeepStages stages instead of 2: a lone
  /// CTA streams its split about as fast as the bytes it keeps in flight allow). The ring only
  /// moves pages; warps, tiles and arithmetic are the same, so the bits are too.
  bool deep_ring = false;
  /// With fixed_split: CTAs per (sequence, KV head), 1..num_splits; CTA z runs the sequence's
  /// splits z, z + grid_splits, … one after another (the tensor-core kernel's split_loop). The
  /// cost model's split count for the same shape, so that the work partition still follows the
  /// grid (one CTA per pair for wide batches, a wave's worth for few long sequences) while the
  /// numerical one does not; and a graph planned for max_model_len launches no empty CTAs.
  int grid_splits = 1;
  /// With fixed_split on a wide grid (DecodePlanOptions::fixed_split_wide_grids_only) whose
  /// sequences are one split each (num_splits == 1: contexts ≤ kDecodeFixedSplitTokens), at GQA
  /// group 8: the tensor-core kernel's CTA of 4 warps (64-token stages, kDecodeMmaWideGridWarps)
  /// instead of 2. Short contexts make a CTA's fixed costs (q, first pages, the cross-warp merge
  /// of 8 heads) a large share of its life; 4 warps halve them per thread (H100, 2026-12-06,
  /// b1024 ctx192: 155.7 µs against 207.8, 89% of copy; pages moved alone: 148.9). The bits
  /// differ from the 2-warp CTA's (the warps' token partition), which a plan limited to wide
  /// grids does not promise to keep.
  bool mma_wide_ctas = false;
  /// Each (sequence, KV head)'s num_splits CTAs are one cluster that merges its partials in
  /// distributed shared memory (DecodePlanOptions::cluster_merge); no workspace.
  bool cluster_merge = false;
  /// The first ring stages of pages older than the query are issued before the kernel waits for
  /// its predecessor (DecodePlanOptions::early_pages).
  bool early_pages = false;
  /// The kernel lets its dependent launch after its stages, not at its start (small grids only;
  /// DecodePlanOptions::late_dependents).
  bool late_dependents = false;
  /// A cluster merge pushes its partials into split 0 (DecodePlanOptions::cluster_push; the
  /// CUDA-core kernel's launches only).
  bool cluster_push = false;
  /// One split per pair, no clusters, group parts or early pages, and more pairs than resident CTAs
  /// (ctas_per_sm per SM): the kernel may run as a persistent grid (DecodePlanOptions::persistent).
  bool persistent = false;
  /// The grid fits one wave of one CTA per SM (batch · KV heads · CTAs per pair ≤ the SM count):
  /// decode attention is latency here, the regime the latency paths are for
  /// (DecodePlanOptions::small_grids_only; the RoPE inside attention asks it too).
  bool small_grid = false;
  /// CTAs that share one (sequence, KV head), each serving num_q_heads / num_kv_heads / group_parts
  /// of its query heads (DecodePlanOptions::split_groups): 1, or 2 at GQA group 8 (4: opt-in). With 2, the
  /// pair's CTAs (both parts, and every split under a cluster merge) are one thread-block cluster,
  /// so group_parts · (cluster_merge ? num_splits : 1) ≤ kDecodeMaxClusterCtas; warps, stages and
  /// ctas_per_sm are those of the part's group.
  int group_parts = 1;
};

/// \brief Byte offsets of a decode launch's workspace regions (see DecodePlan::workspace_bytes).
struct DecodeWorkspaceLayout {
  size_t counters = 0;  ///< uint32 arrival counters, (sequence · num_kv_heads + KV head)
  size_t part_o = 0;    ///< float [splits][batch][nq][head_dim]
  size_t part_lse = 0;  ///< float [splits][batch][nq], log2 domain
  size_t end = 0;       ///< == workspace_bytes
};
inline DecodeWorkspaceLayout decode_workspace_layout(const DecodePlan& p) {
  DecodeWorkspaceLayout l;
  if (p.num_splits <= 1) return l;
  l.part_o = p.counter_bytes;
  l.part_lse = l.part_o + size_t(p.num_splits) * p.batch * p.num_q_heads * p.head_dim * sizeof(float);
  l.end = l.part_lse + size_t(p.num_splits) * p.batch * p.num_q_heads * sizeof(float);
  return l;
}

/// \brief Sets a plan's split to `tokens_per_split` (rounded up to a multiple of 64) and sizes its
/// workspace; the plan's shape and fused_merge must be set. For benchmarks and tests that force a
/// split; `counter_batch` as in DecodePlanOptions. A cluster merge stays on only while the new
/// split count allows it.
inline void set_decode_split(DecodePlan& p, int tokens_per_split, int max_seq_len, int counter_batch = 0) {
  max_seq_len = std::max(max_seq_len, 1);
  p.tokens_per_split = (std::max(tokens_per_split, 1) + 63) / 64 * 64;
  p.num_splits = (max_seq_len + p.tokens_per_split - 1) / p.tokens_per_split;
  p.grid_splits = std::clamp(p.grid_splits, 1, p.num_splits);
  p.counter_bytes = 0;
  p.workspace_bytes = 0;
  if (p.num_splits < 2 || p.num_splits > kDecodeMaxClusterSplits || p.num_splits * p.group_parts > kDecodeMaxClusterCtas)
    p.cluster_merge = false;
  if (p.num_splits <= 1 || p.cluster_merge) return;
  if (p.fused_merge) {
    const int64_t seqs = std::max(counter_batch, p.batch);
    p.counter_bytes = (size_t(seqs) * p.num_kv_heads * sizeof(uint32_t) + 255) / 256 * 256;
  }
  p.workspace_bytes = decode_workspace_layout(p).end;
}

/// \brief Turns a plan's merge into the cluster merge (DecodePlanOptions::cluster_merge) where it
/// applies: 2 to kDecodeMaxClusterSplits splits, neither the fused merge nor a fixed split. Returns
/// whether it did. For tests and benchmarks that force a split after planning.
inline bool use_decode_cluster_merge(DecodePlan& p) {
  p.cluster_merge = p.num_splits >= 2 && p.num_splits <= kDecodeMaxClusterSplits &&
                    p.num_splits * p.group_parts <= kDecodeMaxClusterCtas && !p.fused_merge && !p.fixed_split;
  if (p.cluster_merge) {
    p.counter_bytes = 0;
    p.workspace_bytes = 0;
  }
  return p.cluster_merge;
}

/// \brief Makes a plan serve each (sequence, KV head) with `parts` CTAs of group / parts query heads
/// (DecodePlan::group_parts) where that applies: parts 2 at GQA groups 8 and 4 (`group`, the plan's
/// num_q_heads / num_kv_heads), neither the fused merge nor a fixed split, and both parts of every
/// cluster-merged split in one cluster. Returns whether it did (parts 1 always does: one CTA per
/// pair). The caller's KV cache must be 16-bit (decode_attention refuses the others). For tests
/// and benchmarks; plan_decode_split applies it under DecodePlanOptions::split_groups.
inline bool use_decode_group_parts(DecodePlan& p, int parts) {
  const int group = p.num_q_heads / std::max(p.num_kv_heads, 1);
  if (parts == 1) {
    p.group_parts = 1;
  } else {
    if (parts != 2 || (group != 8 && group != 4) || p.fused_merge || p.fixed_split ||
        (p.cluster_merge && parts * p.num_splits > kDecodeMaxClusterCtas))
      return false;
    p.group_parts = parts;
  }
  p.stages = detail::decode_stages(group / p.group_parts);
  p.ctas_per_sm = detail::decode_ctas_per_sm(group / p.group_parts);
  return true;
}

/// \brief Makes `p` take the wide CTA of `warps` warps (8 or 16; DecodePlanOptions::wide_warps)
/// where it applies: a small grid, head dim 128, at most 4 query heads per CTA, the cost model's
/// split and no fused merge (the caller keeps it to 16-bit K/V: decode_plan_options). Returns
/// whether it did.
inline bool use_decode_wide_ctas(DecodePlan& p, int warps) {
  const int heads = p.num_q_heads / std::max(p.num_kv_heads, 1) / std::max(p.group_parts, 1);
  if (!decode_wide_warps(warps) || !p.small_grid || p.head_dim != 128 || heads > 4 || p.fixed_split ||
      p.fused_merge)
    return false;
  p.warps = warps;
  p.stages = 2;
  p.ctas_per_sm = 1;
  return true;
}

/// \brief Whether decode_attention (attention_decode.cuh) can take `rope` (q/k norm + RoPE and the KV write in the
/// kernel) with this plan over a cache of `kv_bytes`-byte elements: the CUDA-core kernel (16-bit
/// K/V, not the fixed split's tensor-core kernel) with one split per (sequence, KV head) or a
/// cluster merge, so that the pair's CTAs have all read q raw before it is written back rotated.
inline bool decode_rope_supported(const DecodePlan& plan, int kv_bytes) {
  return kv_bytes == 2 && !plan.fixed_split && !plan.fused_merge && (plan.num_splits == 1 || plan.cluster_merge);
}

namespace detail {
/// Sets p.small_grid for a launch of `grid_ctas` CTAs on `sm_count` SMs, and keeps the early pages
/// off grids past one wave when the options limit them to small ones (small_grids_only).
inline void set_small_grid(DecodePlan& p, int64_t grid_ctas, int sm_count, const DecodePlanOptions& opt) {
  p.small_grid = grid_ctas <= sm_count;
  if (opt.small_grids_only && !p.small_grid) p.early_pages = false;
  p.late_dependents = opt.late_dependents && p.small_grid;
}

/// The cost model of plan_decode_split (µs; see there): `ctas` (sequence, KV head) pairs over
/// `slots` resident CTAs, each pair launched as `grid` CTAs that run its `splits` splits of `tps`
/// tokens (CTA z: splits z, z + grid, …), every sequence `context` tokens long; then the merge of
/// the `splits` partials. With grid == splits and context == the planned length it is the cost
/// the split choice minimises; a shorter context prices a plan made for a longer one (the CUDA
/// runner's graph context classes): its splits past the context are empty CTAs, and the work
/// of those before sits in the first CTAs of each pair.
inline double decode_split_cost_us(int64_t ctas, int64_t slots, int splits, int grid, int tps, int context, int batch,
                                   int num_q_heads, int head_dim, int group, bool fused_merge) {
  const double bw = 4.0e6, cta_bw = 8.0e3, lat = 2.0, merge_fixed = 2.0;  // bytes/µs, bytes/µs, µs, µs
  const double fused_fixed = 1.0, cta_l2_bw = 1.0e5;                      // µs, bytes/µs (fused merge)
  const double tok_bytes = 4.0 * head_dim;                                   // K + V, 16-bit
  context = std::max(context, 1);
  grid = std::max(grid, 1);
  const int busy = std::min(splits, (context + tps - 1) / tps);  // splits with tokens
  const int64_t per_cta = (busy + grid - 1) / grid;                // of them, CTA 0 runs the most
  const int64_t n = ctas * grid;
  const int64_t full = n / slots, rest = n % slots;
  const double avg = double(context) / grid * tok_bytes;
  const double longest = double(std::min<int64_t>(per_cta * tps, context)) * tok_bytes;
  double t = full * std::max(slots * avg / bw, longest / cta_bw + lat);
  if (rest) t += std::max(rest * avg / bw, longest / cta_bw + lat);
  if (splits > 1) {
    if (fused_merge)  // the last CTA of the pair reads `splits` partials of `group` rows
      t += fused_fixed + double(splits) * group * (head_dim + 1) * 4.0 / cta_l2_bw;
    else
      t += merge_fixed + 2.0 * splits * batch * num_q_heads * (head_dim + 1) * 4.0 / bw;
  }
  return t;
}
}  // namespace detail

/// \brief Chooses the split count from the grid width and the longest context with a small
/// cost model (µs): CTAs run in waves of sm_count·ctas_per_sm; a full wave streams at the copy
/// bandwidth (~4 TB/s), a partial one is bound by what one CTA streams (≈ 8 GB/s: its 4 warps'
/// arithmetic, measured on the H200 at batches 1 and 8, plus ~2 µs before its first page), and
/// a split adds the merge: the merge kernel (~2 µs plus its partials written and read at the
/// copy rate), or with the fused merge, the last CTA of a (sequence, KV head) reading its pair's
/// partials (~1 µs: the counter's round trip and L2 latency, plus its partials at ≈ 100 GB/s, one
/// SM's share of L2; guessed, not measured — the benchmark's tokens_per_split sweep is there to
/// measure them). Splits are ≥ 256 tokens, ≥ 64 (DecodePlanOptions::small_split_tokens) when the
/// unsplit grid has fewer CTAs than SMs.
/// The plan is valid for every context ≤ max_seq_len (CTAs past a sequence's end write empty
/// partials), so a graph captured with it replays on any step.
inline DecodePlan plan_decode_split(int batch, int num_q_heads, int num_kv_heads, int head_dim, int max_seq_len,
                                    int sm_count, const DecodePlanOptions& opt = {}) {
  PIE_CHECK(batch >= 0 && num_kv_heads > 0 && num_q_heads % num_kv_heads == 0,
            "plan_decode_attention: query heads must be a multiple of KV heads");
  PIE_CHECK(sm_count > 0, "plan_decode_attention: sm_count must be positive");
  DecodePlan p;
  p.batch = batch;
  p.num_q_heads = num_q_heads;
  p.num_kv_heads = num_kv_heads;
  p.head_dim = head_dim;
  p.fused_merge = opt.fused_merge;
  p.early_pages = opt.early_pages;
  const int group = num_q_heads / num_kv_heads;
  p.stages = detail::decode_stages(group);
  p.ctas_per_sm = detail::decode_ctas_per_sm(group);
  max_seq_len = std::max(max_seq_len, 1);
  if (opt.fixed_split_tokens > 0) {  // the batch-invariant split: no cost model
    PIE_CHECK(opt.fixed_split_tokens % 64 == 0, "plan_decode_attention: a fixed split must be a multiple of 64 tokens (got ",
              opt.fixed_split_tokens, ")");
    DecodePlanOptions cm = opt;
    cm.fixed_split_tokens = 0;
    DecodePlan cm_plan = plan_decode_split(batch, num_q_heads, num_kv_heads, head_dim, max_seq_len, sm_count, cm);
    const int cm_splits = cm_plan.num_splits;
    if (opt.fixed_split_wide_grids_only && int64_t{batch} * num_kv_heads * cm_splits <= sm_count)
      return cm_plan;  // a narrow grid: the cost model's plan (DecodePlanOptions::fixed_split_wide_grids_only)
    set_decode_split(p, opt.fixed_split_tokens, max_seq_len, opt.counter_batch);
    p.fixed_split = true;
    p.grid_splits = std::clamp(cm_splits, 1, p.num_splits);
    const int64_t grid_ctas = int64_t{batch} * num_kv_heads * p.grid_splits;
    detail::set_small_grid(p, grid_ctas, sm_count, opt);
    p.deep_ring = grid_ctas <= 2 * int64_t{sm_count};
    p.mma_wide_ctas = opt.fixed_split_wide_grids_only && p.num_splits == 1 && group == 8;
    return p;
  }
  const int64_t ctas = int64_t{batch} * num_kv_heads;
  const int64_t slots = int64_t{sm_count} * p.ctas_per_sm;
  const int min_split = ctas < sm_count ? std::max(opt.small_split_tokens, 64) : 256;
  const int max_splits = ctas == 0 ? 1 : static_cast<int>(std::min<int64_t>(std::max(1, max_seq_len / min_split),
                                                                             4 * slots / ctas + 1));
  double best = 0;
  int best_tps = max_seq_len;
  for (int s = 1; s <= max_splits; ++s) {
    int tps = s == 1 ? max_seq_len : ((max_seq_len + s - 1) / s + 63) / 64 * 64;
    int se = (max_seq_len + tps - 1) / tps;
    if (s > 1 && se != s) continue;  // the same split as a smaller s
    const double t = detail::decode_split_cost_us(ctas, slots, se, se, tps, max_seq_len, batch, num_q_heads, head_dim,
                                                  group, opt.fused_merge);
    if (s == 1 || t < best) { best = t; best_tps = tps; }
  }
  set_decode_split(p, best_tps, max_seq_len, opt.counter_batch);
  detail::set_small_grid(p, ctas * p.num_splits, sm_count, opt);
  if (opt.cluster_merge && (p.small_grid || !opt.small_grids_only)) use_decode_cluster_merge(p);
  // Two CTAs per pair only where the doubled grid is still one wave (unless asked for everywhere).
  const int64_t split_grid = 2 * ctas * p.num_splits;
  const bool split = group == 8 ? opt.split_groups : group == 4 && opt.split_group4;
  if (split && (split_grid <= sm_count || !opt.split_groups_small_grids_only) && use_decode_group_parts(p, 2))
    p.small_grid = split_grid <= sm_count;
  if (opt.wide_warps > 0) use_decode_wide_ctas(p, opt.wide_warps);
  p.cluster_push = opt.cluster_push && p.cluster_merge;
  p.persistent = opt.persistent && p.num_splits == 1 && !p.cluster_merge && !p.early_pages && p.group_parts == 1 &&
                 ctas > slots;
  return p;
}

/// \brief The cost model's time (µs) of launching `p` over sequences of `context` tokens (≤ the
/// length it was planned for) on `sm_count` SMs: what a CUDA graph captured with a plan made for a
/// longer context pays at a shorter one (detail::decode_split_cost_us).
inline double decode_plan_cost_us(const DecodePlan& p, int context, int sm_count) {
  const int64_t ctas = int64_t{p.batch} * p.num_kv_heads;
  const int64_t slots = int64_t{std::max(sm_count, 1)} * p.ctas_per_sm;
  const int grid = p.fixed_split ? p.grid_splits : p.num_splits;
  return detail::decode_split_cost_us(ctas, slots, p.num_splits, grid, std::max(p.tokens_per_split, 1), context,
                                      p.batch, p.num_q_heads, p.head_dim, p.num_q_heads / std::max(p.num_kv_heads, 1),
                                      p.fused_merge);
}

}  // namespace pie::ops::cuda
