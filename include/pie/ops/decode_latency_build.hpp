#pragma once
/// \file decode_latency_build.hpp
/// \brief kDecodeLatencyCompiled: whether this build compiled decode attention's latency paths
/// (CMake -DPIE_DECODE_LATENCY=ON, the default: the cluster merge, the early pages and RoPE inside
/// the decode kernel; ops/cuda/attention_decode_plan.hpp). Host code reads it for the switches'
/// defaults (DecodePlanOptions::from_env, engine::FusionSwitches::from_env), so it lives outside
/// the cuda/ folder.

namespace pie::ops {

#if defined(PIE_DECODE_LATENCY)
inline constexpr bool kDecodeLatencyCompiled = true;
#else
inline constexpr bool kDecodeLatencyCompiled = false;
#endif

}  // namespace pie::ops
