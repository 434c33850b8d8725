#pragma once
/// \file fusion_switches.hpp
/// \brief The GPU forward's kernel fusions at op boundaries, read from the environment when a
/// runner is built (its CUDA graphs capture the path chosen then). Off by default until measured
/// on the GPU (docs/gpu_engine.md, "Fusions at the op boundaries of the decode step"), except the
/// RoPE inside decode attention, on for small decode grids in a build that compiles it (measured on
/// an H100, 2026-12-05), and the MoE norm inside the router (2026-12-06); each fused path is
/// bit-identical to the separate kernels it replaces.
#include <cstdlib>

#include "pie/core/env_switch.hpp"
#include "pie/ops/decode_latency_build.hpp"

namespace pie::engine {

using pie::env_switch;  // the engine's switches (decode_context_classes.hpp too) parse through it

/// \brief Which fusions the GPU forward context takes.
struct FusionSwitches {
  /// PIE_FUSED_ROPE_KV: the q/k-norm + RoPE kernel writes the layer's K/V into the paged cache
  /// and attention() launches no kv_write (ops/cuda/rope_kv.cuh, engine/kv_write_fusion.hpp).
  bool rope_kv = false;
  /// PIE_FUSED_FINAL_NORM: at batch 1 with one sampled row, the final residual add + RMSNorm
  /// runs in the lm_head GEMV's prologue (ops::cuda::add_rms_norm_gemv, float logits).
  bool final_norm = false;
  /// PIE_FUSED_SWIGLU: at batch 1, SwiGLU runs in the prologue of the linear layer that reads
  /// it (the down projection's GEMV, ops::cuda::swiglu_gemv) instead of its own kernel.
  bool swiglu = false;
  /// PIE_FUSED_ROPE_ATTN: at steps of decode rows only, the q/k-norm + RoPE kernel waits for the
  /// attention that reads it and runs inside the decode kernel, with the KV write
  /// (ops/cuda/attention_decode_rope.cuh); needs a build with -DPIE_DECODE_LATENCY=ON. Unset in
  /// such a build: on, for the steps whose decode grid is small (rope_attn_small_grids_only).
  bool rope_attn = false;
  /// rope_attn only where the step's decode plan is a small grid (ops::cuda::DecodePlan::small_grid:
  /// one wave of one CTA per SM), where it pays (batch-1 ITL −1.2% Qwen3-8B, −2.3% Qwen3-30B-A3B on
  /// an H100); at batch 512 the three latency paths together cost 2.9% of throughput.
  bool rope_attn_small_grids_only = false;
  /// PIE_FUSED_MOE_NORM: at batch 1, a sparse layer's residual add + RMSNorm (norm_moe) runs in
  /// the MoE router GEMV's prologue (ops::cuda::add_rms_norm_gemv, float logits), whose CTA 0 also
  /// writes the normalised row for the experts, instead of its own kernel before the router. On
  /// unless `0`: bit-identical, and Qwen3-30B-A3B's batch-1 ITL −1.5% (H100, 2026-12-06).
  bool moe_norm = false;
  /// PIE_GEMV_L2_AHEAD: at batch 1, the GEMV that reads a decode attention's output (o_proj)
  /// moves the rest of its weights into L2 before its wait, while the attention (which lets it
  /// launch after its K/V stages: DecodePlan::late_dependents, 16-bit K/V) leaves DRAM idle
  /// (ops::cuda::GemvParams::l2_ahead; the same bits). Opt-in until measured.
  bool gemv_l2_ahead = false;
  /// PIE_FP8_CODES_ONLY: with fp8 weights above batch 1, the producers of a linear's input (the
  /// residual add + RMSNorm of norm_linear, and a SwiGLU held until the fp8 linear that reads it)
  /// write only the fp8 codes and scales that the linear reads, not the 16-bit row (12.6 of 44 MB
  /// a layer for SwiGLU at batch 512, Qwen3-8B); the same codes, so the same logits. Opt-in
  /// until measured.
  bool fp8_codes_only = false;

  /// The switches of the environment; `latency_compiled`: the build has decode attention's latency
  /// paths (the RoPE inside attention's default).
  static FusionSwitches from_env(bool latency_compiled = ops::kDecodeLatencyCompiled) {
    FusionSwitches f;
    const char* rope_attn = std::getenv("PIE_FUSED_ROPE_ATTN");
    f.rope_attn = env_switch("PIE_FUSED_ROPE_ATTN", rope_attn, latency_compiled);
    f.rope_attn_small_grids_only = f.rope_attn && env_unset(rope_attn);
    f.rope_kv = env_switch("PIE_FUSED_ROPE_KV", std::getenv("PIE_FUSED_ROPE_KV"));
    f.final_norm = env_switch("PIE_FUSED_FINAL_NORM", std::getenv("PIE_FUSED_FINAL_NORM"));
    f.swiglu = env_switch("PIE_FUSED_SWIGLU", std::getenv("PIE_FUSED_SWIGLU"));
    f.moe_norm = env_switch("PIE_FUSED_MOE_NORM", std::getenv("PIE_FUSED_MOE_NORM"), true);
    f.gemv_l2_ahead = env_switch("PIE_GEMV_L2_AHEAD", std::getenv("PIE_GEMV_L2_AHEAD"));
    f.fp8_codes_only = env_switch("PIE_FP8_CODES_ONLY", std::getenv("PIE_FP8_CODES_ONLY"));
    return f;
  }
};

/// \brief What decides whether a step's final norm may run inside lm_head's GEMV.
struct FinalNormStep {
  int tokens = 0;             ///< rows of the forward
  int samples = 0;            ///< rows through lm_head (a row drawn n times counts n)
  int prompt_rows = 0;        ///< prompt_logprobs rows (they read the normalised hidden states)
  bool tensor_parallel = false;
  int lm_head_gemv_rows = 0;  ///< rows up to which lm_head runs the GEMV (0 under batch invariance)
  bool hidden_fits = false;   ///< the fused norm takes this hidden size (add_rms_norm_gemv_supported)
};

/// True when fusions.final_norm is on and the step is one row sampled once, with lm_head through
/// the GEMV (whose arithmetic the fused kernel repeats bit for bit), no prompt_logprobs rows and
/// no tensor parallelism (its lm_head is a vocab slice and an all-gather).
inline bool final_norm_in_lm_head(bool on, const FinalNormStep& s) {
  return on && s.tokens == 1 && s.samples == 1 && s.prompt_rows == 0 && !s.tensor_parallel &&
         s.lm_head_gemv_rows >= 1 && s.hidden_fits;
}

/// \brief What decides whether a step's SwiGLU may wait for the linear layer that reads it.
struct SwiGluStep {
  int tokens = 0;             ///< rows of the forward
  bool tensor_parallel = false;
  int gemv_rows = 0;          ///< rows up to which the 16-bit linear layers run the GEMV (0 under batch invariance)
  bool fp8_producer = false;  ///< the SwiGLU kernel would also quantize its output for an fp8 GEMM
  bool width_fits = false;    ///< swiglu_gemv takes this expert width (swiglu_gemv_supported)
};

/// True when fusions.swiglu is on and the step is one row whose next 16-bit linear layer runs the
/// GEMV (whose arithmetic swiglu_gemv repeats bit for bit), with no fp8 quantization to produce
/// and no tensor parallelism.
inline bool swiglu_in_gemv(bool on, const SwiGluStep& s) {
  return on && s.tokens == 1 && !s.tensor_parallel && s.gemv_rows >= 1 && !s.fp8_producer && s.width_fits;
}

/// \brief What decides whether a sparse layer's norm may run inside its MoE router's GEMV.
struct MoeNormStep {
  int tokens = 0;               ///< rows of the forward
  int gemv_rows = 0;            ///< rows up to which the 16-bit linear layers run the GEMV (0 under batch invariance)
  bool hidden_fits = false;     ///< the fused norm takes this hidden size (add_rms_norm_gemv_supported)
  bool router_fused = false;    ///< the router runs in the fused router + routing kernel (PIE_MOE_DECODE=fused)
};

/// True when fusions.moe_norm is on and the step is one row whose router logits come from the
/// GEMV (whose arithmetic add_rms_norm_gemv repeats bit for bit, the norm's too), not from the
/// fused router + routing kernel. Tensor parallelism keeps it: the norm reads the all-reduced row
/// and the router is replicated.
inline bool moe_norm_in_router(bool on, const MoeNormStep& s) {
  return on && s.tokens == 1 && s.gemv_rows >= 1 && s.hidden_fits && !s.router_fused;
}

/// \brief What decides whether a step's RoPE may run inside its decode attention.
struct RopeAttnStep {
  int tokens = 0;              ///< rows of the forward
  int decodes = 0;             ///< decode rows (one query token each)
  bool batch_invariant = false;  ///< decode rows take the prefill kernel then
  bool calculating_kv_scales = false;  ///< the first forward of --calculate-kv-scales reads raw K/V
  bool plan_takes_it = false;  ///< the step's decode plan and cache take it (ops::cuda::decode_rope_supported)
  bool small_grid = false;     ///< the step's decode plan is a small grid (ops::cuda::DecodePlan::small_grid)
};

/// True when fusions.rope_attn is on and every row of the step is a decode row whose attention
/// runs the CUDA-core decode kernel with a plan that can fold the RoPE in (and, by default, is a
/// small grid: `small_grids_only`).
inline bool rope_in_attention(bool on, const RopeAttnStep& s, bool small_grids_only = false) {
  return on && s.tokens > 0 && s.decodes == s.tokens && !s.batch_invariant && !s.calculating_kv_scales &&
         s.plan_takes_it && (s.small_grid || !small_grids_only);
}

}  // namespace pie::engine
