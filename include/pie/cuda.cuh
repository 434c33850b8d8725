#pragma once
/// \file cuda.cuh
/// \brief Umbrella header of pie's CUDA backend: every kernel's host launcher.
///   norm          rms_norm, add_rms_norm (residual-fused)
///   rope          qk_norm_rope (Qwen3 q/k RMSNorm fused with NeoX RoPE; plain RoPE without norms)
///   kv_write      kv_write (bf16/f16 or fp8 e4m3 with per-tensor scale)
///   activation    silu_and_mul
///   embedding     embedding
///   attention     plan_decode_attention + decode_attention (split-K), prefill_attention
///   sampling      sample (+ SamplingBatchHost to assemble its inputs)
///   gemm          Gemm (cuBLASLt, per-shape plan cache)
#include "pie/ops/cuda/activation.cuh"
#include "pie/ops/cuda/attention_decode.cuh"
#include "pie/ops/cuda/attention_prefill.cuh"
#include "pie/ops/cuda/embedding.cuh"
#include "pie/ops/cuda/gemm.cuh"
#include "pie/ops/cuda/kv_write.cuh"
#include "pie/ops/cuda/norm.cuh"
#include "pie/ops/cuda/rope.cuh"
#include "pie/ops/cuda/sampling.cuh"
