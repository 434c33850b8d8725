// Compiles decode attention's latency paths (-DPIE_DECODE_LATENCY: the cluster merge, the early
// pages and the RoPE inside the kernel; ops/cuda/attention_decode_rope.cuh) for the engine's
// shapes, so that CI's build, which leaves the option off, still catches a change that breaks
// them. Not a test: their tests (tests/cuda/test_attention_decode.cu, tests/gpu/test_fused_ops.cu)
// need a GPU and a build with the option on.
#include "pie/ops/cuda/attention_decode.cuh"

namespace pie::build_check {

static_assert(ops::cuda::detail::kDecodeLatencyPaths, "compiled with PIE_DECODE_LATENCY");

/// Every path the engine can take with the switches on: bf16 and fp8 caches (CUDA-core and
/// tensor-core kernels, cluster merge and early pages), and the RoPE inside the CUDA-core kernel.
void decode_latency_paths(TensorView<bf16> q, kv::PagedKV<bf16> c16, kv::PagedKV<fp8_e4m3> c8, TensorView<bf16> out,
                          const ops::cuda::DecodePlan& plan, void* ws, const ops::cuda::DecodeRopeArgs<bf16>* rope) {
  ops::cuda::decode_attention(q, c16, out, plan, ws, 0.1f, attention::Causal{}, nullptr, rope);
  ops::cuda::decode_attention(q, c8, out, plan, ws, 0.1f);
}

}  // namespace pie::build_check
