#pragma once
/// \file ops.hpp
/// \brief The CPU backend: every op of the decoder forward pass on the host (Eigen-free hot
/// loops with fixed summation orders; see linear.hpp for why). These are also the reference
/// the CUDA kernels are tested against. Activations are float; weights and KV may be
/// float/f16/bf16 (converted on load).
///
/// | op                | header         | function |
/// |-------------------|----------------|----------|
/// | embedding gather  | embedding.hpp  | embedding(table, vocab, hidden, ids, n, out) |
/// | RMSNorm (+resid.) | rms_norm.hpp   | rms_norm, add_rms_norm, head_rms_norm (q/k norm) |
/// | x·Wᵀ + b          | linear.hpp     | linear(x, n, in, w, out, bias, y) |
/// | RoPE (neox)       | rope.hpp       | rope_inv_freq(dim, theta, scaling), rope_neox |
/// | K/V → slots       | kv_write.hpp   | kv_write(paged_kv, k, v, stride, n, slots) |
/// | paged attention   | attention.hpp  | paged_attention<Variant>(q, ..., paged_kv, cu_q, heads, scale) |
/// | SwiGLU            | activation.hpp | silu_and_mul(gate_up, n, inter, out) |
#include "pie/ops/cpu/activation.hpp"
#include "pie/ops/cpu/attention.hpp"
#include "pie/ops/cpu/embedding.hpp"
#include "pie/ops/cpu/kv_write.hpp"
#include "pie/ops/cpu/linear.hpp"
#include "pie/ops/cpu/moe.hpp"
#include "pie/ops/cpu/parallel.hpp"
#include "pie/ops/cpu/rms_norm.hpp"
#include "pie/ops/cpu/rope.hpp"
