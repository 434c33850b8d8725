#pragma once
/// \file policy.hpp
/// \brief EnginePolicy: the compile-time choices of one engine instantiation (block size,
/// activation dtype, KV dtype, attention variant, backend). A struct of constants and aliases,
/// nothing else; illegal combinations fail with a static_assert that says why.
#include <type_traits>

// The variants live in core (not attention/, not the policy in a higher layer): the policy
// checks and names them, and core/policy.hpp is read by every engine, so the edge must point
// down. See core/attention_variants.hpp.
#include "pie/core/attention_variants.hpp"
#include "pie/core/dtype.hpp"

namespace pie {

/// \brief Backends: where the forward pass runs.
namespace backend {
/// \brief Eigen on the host; the reference implementation of every op.
struct Cpu { static constexpr bool kIsCuda = false; };
/// \brief CUDA kernels + cuBLASLt on one or more GPUs.
struct Cuda { static constexpr bool kIsCuda = true; };
}  // namespace backend

/// \brief Compile-time engine configuration.
/// \tparam BlockSize tokens per KV block (8, 16 or 32)
/// \tparam DType     activation/weight dtype (float, f16, bf16)
/// \tparam KVDType   KV-cache dtype (float, f16, bf16; fp8_e4m3 only on the CUDA backend)
/// \tparam Attention attention variant hook struct (pie::attention::Causal, ...)
/// \tparam Backend   pie::backend::Cpu or pie::backend::Cuda
/// \tparam WeightDType projection weights: DType, or fp8_e4m3 (fp8 weights with float scales,
///                     activations quantized per token at each projection: model/fp8_weights.hpp)
template <int BlockSize, class DType, class KVDType, class Attention, class Backend, class WeightDType = DType>
struct EnginePolicy {
  static_assert(BlockSize == 8 || BlockSize == 16 || BlockSize == 32,
                "EnginePolicy: BlockSize must be 8, 16 or 32 (the kernels are instantiated for these)");
  static_assert(std::is_same_v<DType, float> || std::is_same_v<DType, f16> || std::is_same_v<DType, bf16>,
                "EnginePolicy: DType must be float, f16 or bf16");
  static_assert(std::is_same_v<KVDType, float> || std::is_same_v<KVDType, f16> ||
                    std::is_same_v<KVDType, bf16> || std::is_same_v<KVDType, fp8_e4m3>,
                "EnginePolicy: KVDType must be float, f16, bf16 or fp8_e4m3");
  static_assert(!(std::is_same_v<KVDType, fp8_e4m3> && !Backend::kIsCuda),
                "EnginePolicy: an fp8_e4m3 KV cache needs the CUDA backend");
  static_assert(!(std::is_same_v<DType, float> && Backend::kIsCuda),
                "EnginePolicy: the CUDA backend runs f16 or bf16 (tensor cores), not float");
  static_assert(sizeof(KVDType) <= sizeof(DType),
                "EnginePolicy: a KV dtype wider than the activation dtype stores nothing extra");
  static_assert(std::is_same_v<WeightDType, DType> || std::is_same_v<WeightDType, fp8_e4m3>,
                "EnginePolicy: WeightDType must be the activation dtype or fp8_e4m3");
  static_assert(attention::is_variant_v<Attention>,
                "EnginePolicy: Attention must be a variant hook struct (see core/attention_variants.hpp)");

  static constexpr int block_size = BlockSize;
  using dtype = DType;
  using kv_dtype = KVDType;
  using weight_dtype = WeightDType;
  /// fp8 projection weights (model::Fp8Weights instead of model::Weights).
  static constexpr bool fp8_weights = std::is_same_v<WeightDType, fp8_e4m3>;
  using attention_variant = Attention;
  using backend_type = Backend;
};

/// The CPU reference configuration: exact fp32 everywhere.
using CpuF32 = EnginePolicy<16, float, float, attention::Causal, backend::Cpu>;
/// The CPU backend in bf16 storage.
using CpuBf16 = EnginePolicy<16, bf16, bf16, attention::Causal, backend::Cpu>;
/// The production GPU configuration.
using CudaBf16 = EnginePolicy<16, bf16, bf16, attention::Causal, backend::Cuda>;
/// The CPU reference of fp8 weights (fp32 arithmetic over dequantized weights and quantized activations).
using CpuF32Fp8 = EnginePolicy<16, float, float, attention::Causal, backend::Cpu, fp8_e4m3>;
/// The GPU configuration with fp8 weights (FP8 tensor-core GEMMs).
using CudaBf16Fp8 = EnginePolicy<16, bf16, bf16, attention::Causal, backend::Cuda, fp8_e4m3>;
/// The GPU configuration with an fp8 KV cache (per-tensor scale).
using CudaBf16Fp8KV = EnginePolicy<16, bf16, fp8_e4m3, attention::Causal, backend::Cuda>;
/// fp8 weights and an fp8 KV cache (`--quantization fp8 --kv-cache-dtype fp8`): the large-batch
/// step's GEMMs and its attention each read half the bytes.
using CudaBf16Fp8Fp8KV = EnginePolicy<16, bf16, fp8_e4m3, attention::Causal, backend::Cuda, fp8_e4m3>;

}  // namespace pie
