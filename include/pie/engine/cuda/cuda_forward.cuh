#pragma once
/// \file cuda_forward.cuh
/// \brief CudaForward: the GPU backend's forward context — the ops a model's forward is written
/// over (model_concept.hpp), implemented with the kernels of ops/cuda and cuBLASLt, on one
/// stream. Every address it hands out is fixed for the runner's life (activations are slots of
/// max_num_batched_tokens rows, allocated on first use during the profiling step), so a pure
/// decode forward can be captured into a CUDA graph and replayed.
///
/// What the context decides for the model, so that every model gets it:
/// - batch 1: the residual add + RMSNorm runs inside the GEMV that reads it (norm_linear);
/// - fp8 weights above batch 1: the activation quantization of the fp8 GEMM runs inside the
///   RMSNorm (norm_linear) and SwiGLU (silu_and_mul) kernels that produce its input;
/// - decode rows through the split-K decode kernel, prefill chunks through the tensor-core
///   prefill kernel; with batch invariance, decode rows as one-row prefills;
/// - with fusions.rope_kv (PIE_FUSED_ROPE_KV=1): qk_norm_rope/rope also write the layer's K/V
///   into the paged cache and attention() skips its kv_write (KvWriteFusion says when);
/// - with fusions.final_norm (PIE_FUSED_FINAL_NORM=1), at batch 1 with one sampled row: an
///   add_rms_norm is held back until the next op; when that op is logits() over the same
///   activation it runs inside lm_head's GEMV prologue, otherwise on its own first;
/// - with fusions.swiglu (PIE_FUSED_SWIGLU=1), at batch 1 without TP: silu_and_mul is held back
///   until the next op; when that op is a 16-bit linear layer reading its output through the
///   GEMV, SwiGLU runs in the GEMV's prologue (ops::cuda::swiglu_gemv, CTA 0 still writing the
///   row), otherwise on its own first;
/// - with fusions.rope_attn (PIE_FUSED_ROPE_ATTN=1, in a -DPIE_DECODE_LATENCY=ON build), at steps
///   of decode rows only whose decode plan takes it: qk_norm_rope/rope is held back until the
///   next op; when that op is attention() over the same qkv, the decode kernel does the q/k norm,
///   RoPE and the KV write itself (ops/cuda/attention_decode_rope.cuh), otherwise it runs first;
/// - with l2_prefetch (PIE_L2_PREFETCH=N, opt-in), at steps of N rows or fewer: the weights a
///   model names in prefetch() are moved into L2 while RoPE and decode attention leave DRAM idle
///   (engine/l2_prefetch.hpp);
/// - per-op event timing when the profiler is on;
/// - tensor parallelism at three hooks: embed() (vocab-parallel, ids shifted into the rank's
///   slice, then an all-reduce), all_reduce() (row-parallel projections) and logits() (the
///   rank's vocab slice, all-gathered and unpadded).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>

#include "pie/core/attention_variants.hpp"
#include "pie/core/buffer.hpp"
#include "pie/core/communicator.hpp"
#include "pie/core/error.hpp"
#include "pie/core/fp8_weight.hpp"
#include "pie/core/tensor.hpp"
#include "pie/engine/cuda/kv_cache.cuh"
#include "pie/engine/cuda/logits_gemm.cuh"
#include "pie/engine/cuda/step_buffers.cuh"
#include "pie/engine/cuda/step_profiler.cuh"
#include "pie/engine/fusion_switches.hpp"
#include "pie/engine/kv_write_fusion.hpp"
#include "pie/engine/l2_prefetch.hpp"
#include "pie/engine/moe_shapes.hpp"
#include "pie/model/config.hpp"
#include "pie/model/tp_plan.hpp"
#include "pie/ops/cuda/activation.cuh"
#include "pie/ops/cuda/add.cuh"
#include "pie/ops/cuda/attention_decode.cuh"
#include "pie/ops/cuda/attention_prefill.cuh"
#include "pie/ops/cuda/embedding.cuh"
#include "pie/ops/cuda/fp8_gemm.cuh"
#include "pie/ops/cuda/gemm.cuh"
#include "pie/ops/cuda/gemv.cuh"
#include "pie/ops/cuda/kv_scales.cuh"
#include "pie/ops/cuda/kv_write.cuh"
#include "pie/ops/cuda/l2_prefetch.cuh"
#include "pie/ops/cuda/moe.cuh"
#include "pie/ops/cuda/moe_decode_plan.hpp"
#include "pie/ops/cuda/moe_group_plan.hpp"
#if defined(PIE_MOE_CUTLASS)
#include "pie/ops/cuda/moe_cutlass_path.cuh"
#endif
#include "pie/ops/cuda/norm.cuh"
#include "pie/ops/cuda/prefill_fp8_kv.cuh"
#include "pie/ops/cuda/prompt_logprobs.cuh"
#include "pie/ops/cuda/rope.cuh"
#include "pie/ops/cuda/rope_kv.cuh"
#include "pie/sched/prompt_logprob_row.hpp"

namespace pie::engine::cuda {

namespace detail {
/// out[t] = ids[t] − begin: the rank's row of the token, or an index outside [0, slice) that
/// the embedding kernel turns into a zero row.
template <int = 0>  // a template: defined in every translation unit that launches it, once in the program
__global__ void shift_ids_kernel(const int32_t* ids, int n, int32_t begin, int32_t* out) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t < n) out[t] = ids[t] - begin;
}
/// logits[j][r·per + v] = gathered[r][j][v] for r·per + v < vocab (drops the padded rows).
template <int = 0>
__global__ void unshard_logits_kernel(const float* gathered, int rows, int per, int vocab, float* logits) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(rows) * vocab) return;
  const int j = static_cast<int>(i / vocab), g = static_cast<int>(i % vocab);
  const int r = g / per, v = g % per;
  logits[i] = gathered[(static_cast<int64_t>(r) * rows + j) * per + v];
}
}  // namespace detail

/// \brief The shape of one step as the forward sees it (fixed per graph bucket).
struct StepShape {
  int tokens = 0;        ///< Tn: rows of the forward (a graph bucket's padded batch)
  int seqs = 0;          ///< S
  int decodes = 0;       ///< D: the first D sequences decode one token each
  int samples = 0;       ///< rows that go through lm_head
  int max_query = 0;     ///< longest prefill chunk
  int prefill_row0 = 0;  ///< first prefill row
  ops::cuda::DecodePlan decode;
};

/// \brief One GPU rank's forward context (see file comment).
/// \tparam T       activation and weight type (bf16, f16)
/// \tparam KV      KV-cache type
/// \tparam Variant attention hook struct
template <class T, class KV, class Variant = attention::Causal>
class CudaForward {
 public:
  using Act = TensorView<T>;
  using Weight = TensorView<T>;

  /// \brief What the context works with; every pointer must outlive it.
  struct Parts {
    model::ModelConfig config;                 ///< the rank's local config
    int max_tokens = 0;                        ///< rows of every activation slot
    int max_samples = 0;
    StepBuffers* step = nullptr;               ///< the staged plan
    ops::cuda::Gemm* gemm = nullptr;
    ops::cuda::Fp8Gemm* fp8_gemm = nullptr;    ///< fp8 projections (null: none in this model)
    LogitsGemm* logits_gemm = nullptr;
    StepProfiler* profiler = nullptr;
    ops::cuda::RopeParams rope;
    unsigned char* decode_ws = nullptr;
    /// An fp8 cache's prefill through a 16-bit staging pool and the Hopper kernel v3
    /// (ops/cuda/prefill_fp8_kv.cuh; null: the mma.sync kernel reads the fp8 pages itself)
    ops::cuda::Fp8KvPrefillStaging<T>* fp8_kv_prefill = nullptr;
    bool batch_invariant = false;
    FusionSwitches fusions;                    ///< opt-in fusions (engine/fusion_switches.hpp)
    L2Prefetch l2_prefetch;                    ///< prefetch()'s policy (default: never)
    /// the decode MoE block's batch-1 variants (moe_decode::switches_from_env: the measured best
    /// where compiled, the base block without -DPIE_MOE_DECODE_VARIANTS)
    ops::cuda::moe_decode::Switches moe_decode;
    const parallel::TpShard* shard = nullptr;  ///< null: unsharded
    parallel::Communicator* comm = nullptr;
    Variant variant{};
    /// false: no logits buffer of its own; set_logits_target() names where logits() writes (a
    /// nano-batch's rows of the step's logits, engine/nano_split.hpp)
    bool own_logits = true;
  };

  explicit CudaForward(Parts p) : p_(std::move(p)), kv_fusion_(p_.fusions.rope_kv, p_.config.num_hidden_layers) {
    const auto& c = p_.config;
    PIE_CHECK((p_.shard == nullptr) == (p_.comm == nullptr), "CudaForward: a shard needs a communicator and back");
    res_pong_ = DeviceBuffer<T>(static_cast<size_t>(kFusedNormRows) * c.hidden_size);
    moe_x_ = DeviceBuffer<T>(c.hidden_size);
    rows_ = DeviceBuffer<T>(static_cast<size_t>(p_.max_samples) * c.hidden_size);
    if (p_.own_logits) logits_ = DeviceBuffer<float>(static_cast<size_t>(p_.max_samples) * global_vocab());
    logits_out_ = logits_.data();
    if (p_.shard) {
      ids_ = DeviceBuffer<int32_t>(p_.max_tokens);
      const size_t per = static_cast<size_t>(p_.shard->vocab_per_rank);
      part_ = DeviceBuffer<float>(static_cast<size_t>(p_.max_samples) * per);
      gathered_ = DeviceBuffer<float>(static_cast<size_t>(p_.max_samples) * per * p_.shard->tp_size);
    }
  }

  /// Binds the step's shape, cache and stream (the forward reads only fixed addresses).
  void begin(const StepShape& shape, KVCache<KV>& cache, cudaStream_t s) {
    PIE_CHECK(shape.tokens <= p_.max_tokens && shape.samples <= p_.max_samples, "CudaForward: step of ",
              shape.tokens, " tokens / ", shape.samples, " samples exceeds the runner's ", p_.max_tokens, " / ",
              p_.max_samples);
    shape_ = shape;
    cache_ = &cache;
    s_ = s;
    next_slot_ = 0;
    kv_fusion_.begin_step();
    held_norm_ = {};
    held_swiglu_ = {};
    held_rope_ = {};
    l2_ahead_x_ = nullptr;
    logits_fused_norm_ = false;
    ops_ = 0;
  }
  /// Where the logits of the sampled rows are ([samples][global vocab], float).
  float* logits() { return logits_out_; }
  /// A context without logits of its own (Parts::own_logits) writes them here from now on.
  void set_logits_target(float* p) {
    PIE_CHECK(!p_.own_logits && p != nullptr, "CudaForward: set_logits_target is for a context without own logits");
    logits_out_ = p;
  }
  /// Records `e` on the step's stream once `after_ops` ops of this step have been enqueued (0 or
  /// a null event: never). Nano-batch overlap starts the other half there, so that the halves'
  /// phases differ (cuda_runner.cuh).
  void signal_after(int after_ops, cudaEvent_t e) {
    signal_ops_ = after_ops;
    signal_ = e;
  }
  /// Ops enqueued since begin().
  int ops() const { return ops_; }
  /// \brief A nano-batch's place in the per-layer pipeline (PIE_NANO_PIPELINE, cuda_runner.cuh).
  enum class PipeRole { kOff, kLead, kTrail };
  /// The lead records `layer_events[l]` on its stream as its attention of layer l starts; the
  /// trail, after its own attention of layer l, waits for `layer_events[l + 1]` before the ops
  /// that follow (o_proj … the next layer's qkv and K/V write). So the trail's GEMMs run beside
  /// the lead's next attention, not beside the lead's GEMMs. The lead's whole forward is
  /// enqueued before the trail's (every record precedes its wait on the host; graph-capturable).
  void set_pipeline(PipeRole role, const cudaEvent_t* layer_events) {
    pipe_role_ = layer_events ? role : PipeRole::kOff;
    pipe_events_ = layer_events;
    pipe_marked_ = -1;
  }
  /// Prefill attentions over an fp8 cache that took the staged v3 path (Parts::fp8_kv_prefill).
  int64_t fp8_prefill_staged() const { return fp8_prefill_staged_; }
  /// Device bytes the context itself holds (memory plan).
  size_t bytes() const {
    size_t b = (res_pong_.size() + moe_x_.size()) * sizeof(T) + rows_.size() * sizeof(T) + logits_.size() * sizeof(float) +
               ids_.size() * sizeof(int32_t) + (part_.size() + gathered_.size()) * sizeof(float);
    for (const auto& s : slots_) b += s.size() * sizeof(T);
    if (moe_) b += moe_->bytes();
#if defined(PIE_MOE_CUTLASS)
    if (moe_cutlass_) b += moe_cutlass_->bytes();
#endif
    return b;
  }

  const model::ModelConfig& config() const { return p_.config; }
  int num_tokens() const { return shape_.tokens; }
  /// \brief Fused launches issued so far (host side: a captured graph counts once), for tests.
  struct FusionCounts {
    int64_t rope_kv = 0;     ///< qk_norm_rope_kv kernels (kv_write skipped)
    int64_t final_norm = 0;  ///< lm_head GEMVs with the final norm in their prologue
    int64_t l2_prefetch = 0;  ///< prefetch() calls that launched the L2 prefetch kernel
    int64_t swiglu = 0;       ///< down-projection GEMVs with SwiGLU in their prologue
    int64_t rope_attn = 0;    ///< decode attentions with q/k norm + RoPE and the KV write inside
    int64_t moe_norm = 0;     ///< MoE router GEMVs with the layer's residual add + RMSNorm inside
    int64_t moe_route = 0;    ///< MoE gate_up GEMVs that routed their token themselves (no route kernel)
    int64_t moe_unpermute = 0;  ///< MoE down GEMVs that un-permuted in their last CTAs (no un-permute kernel)
    int64_t l2_ahead = 0;       ///< batch-1 linears after a decode attention whose GEMV prefetched its weights into L2
    int64_t fp8_codes_only = 0;  ///< fp8 producers (norm, SwiGLU) that wrote only the codes their linear reads
  };
  const FusionCounts& fusion_counts() const { return fusion_counts_; }

  /// A [tokens, cols] activation: slot k of the step (same address every step).
  Act act(int64_t cols) {
    const size_t need = static_cast<size_t>(p_.max_tokens) * cols;
    if (next_slot_ == slots_.size()) {
      PIE_CHECK(!frozen_, "CudaForward: the forward asks for more activations than when its graphs were captured");
      slots_.emplace_back(need);
    } else if (slots_[next_slot_].size() < need) {
      PIE_CHECK(!frozen_, "CudaForward: an activation grew after the graphs were captured");
      slots_[next_slot_] = DeviceBuffer<T>(need);
    }
    return mat(slots_[next_slot_++].data(), shape_.tokens, cols);
  }
  /// A contiguous [tokens, cols] activation over a's storage (cols ≤ a's columns): one buffer
  /// for values that are never live together (the attention output, then the SwiGLU output).
  Act reuse(const Act& a, int64_t cols) const {
    PIE_CHECK(cols <= a.shape[1] && a.stride[0] == a.shape[1], "reuse: ", cols, " columns over a ", a.shape[1],
              "-column activation");
    return mat(a.data, shape_.tokens, cols);
  }
  /// Columns [begin, begin + count) of `a` (a's row stride).
  static Act cols(const Act& a, int64_t begin, int64_t count) {
    Act v = a;
    v.data = a.data + begin;
    v.shape[1] = count;
    return v;
  }
  /// No more activation slots after this (the graphs hold their addresses).
  void freeze() { frozen_ = true; }
  /// fp8 KV (--calculate-kv-scales): the next forward sets each layer's K/V scales from its rows'
  /// amax per kv head (ops/cuda/kv_scales.cuh) before writing them; later forwards keep them.
  /// The caller runs that forward eagerly (not from a graph) and without the fused RoPE+KV write.
  void calculate_kv_scales(float margin) {
    PIE_CHECK(margin >= 1.0f && std::isfinite(margin), "calculate_kv_scales: margin ", margin, " must be >= 1");
    PIE_CHECK(!p_.fusions.rope_kv, "--calculate-kv-scales needs the separate KV write (unset PIE_FUSED_ROPE_KV)");
    calc_margin_ = margin;
  }
  /// Whether a calculate_kv_scales is still to run.
  bool kv_scales_pending() const { return calc_margin_ > 0.0f; }

  void embed(const Weight& table, Act out) {
    if (!p_.comm) {
      op("embedding", [&] { ops::cuda::embedding(table, p_.step->token_ids(), out, nullptr, s_); });
      return;
    }
    const int n = shape_.tokens;
    op("embedding", [&] {
      detail::shift_ids_kernel<><<<(n + 255) / 256, 256, 0, s_>>>(p_.step->token_ids(), n,
                                                                 static_cast<int32_t>(p_.shard->vocab.begin), ids_.data());
      PIE_CUDA_CHECK(cudaGetLastError());
      ops::cuda::embedding(table, ids_.data(), out, nullptr, s_);
    });
    all_reduce(out);  // one non-zero row per token across the ranks: exact
  }

  void add_rms_norm(Act x, Act& res, const Weight& w, bool first) {
    if (final_norm_fusable(x, res)) {  // maybe into lm_head's prologue (file comment)
      before_op();                     // holding it back is an op for the ones already held
      held_norm_ = {x, res, w, first, true};
      return;
    }
    op("rms_norm", [&] { ops::cuda::add_rms_norm(x, res, w, eps(), first, s_); });
  }
  void rms_norm(Act x, const Weight& w) {
    op("rms_norm", [&] { ops::cuda::rms_norm(x, w, eps(), s_); });
  }
  void linear(const Act& x, const Weight& w, const Weight& bias, Act out) {
    const T* b = bias.numel() > 0 ? bias.data : nullptr;
    if (held_swiglu_.on && !held_swiglu_.fp8 && held_swiglu_.out.data == x.data && x.shape[0] == 1 && x.shape[1] == w.shape[1] &&
        ops::cuda::gemv_supported(1, x.shape[1], held_swiglu_.gate_up.data, held_swiglu_.gate_up.stride[0], w.data,
                                  w.stride[0])) {  // the held SwiGLU in this GEMV's prologue
      const HeldSwiGlu h = held_swiglu_;
      held_swiglu_ = {};
      op("swiglu+gemv", [&] { ops::cuda::swiglu_gemv(out, h.gate_up, w, b, s_, x.data); });
      ++fusion_counts_.swiglu;
      return;
    }
    // The batch-1 GEMV after a decode attention may fill L2 with its weights first (l2_ahead_x_).
    const bool l2_ahead = l2_ahead_x_ != nullptr && l2_ahead_x_ == x.data;
    l2_ahead_x_ = nullptr;
    op(gemm_name(w.shape[0], w.shape[1]), [&] { (*p_.gemm)(out, x, w, b, s_, l2_ahead); });
    if (l2_ahead) ++fusion_counts_.l2_ahead;
  }
  /// out = q(x)·dq(W)ᵀ (+ bias) with an fp8 weight: the fused quantize+GEMV at batch 1, else
  /// activation quantization and cuBLASLt's FP8 GEMM (ops/cuda/fp8_gemm.cuh).
  void linear(const Act& x, const Fp8Weight& w, const Weight& bias, Act out) {
    l2_ahead_x_ = nullptr;  // the bf16 GEMV's switch only
    PIE_CHECK(p_.fp8_gemm != nullptr, "CudaForward: an fp8 weight, but the runner made no fp8 GEMM");
    fp8_per_token_ = w.per_channel() ? 1 : 0;
    if (held_swiglu_.on && held_swiglu_.fp8 && held_swiglu_.out.data == x.data &&
        held_swiglu_.out.shape[0] == x.shape[0] && held_swiglu_.out.shape[1] == x.shape[1] &&
        held_swiglu_.per_token == w.per_channel()) {  // the held SwiGLU writes the codes alone
      const HeldSwiGlu h = held_swiglu_;
      held_swiglu_ = {};
      silu_and_mul_fp8(h.gate_up, h.out, h.per_token, /*store_out=*/false);
      ++fusion_counts_.fp8_codes_only;
    }
    // x quantized by the kernel that produced it (and nothing ran since: op() forgets it).
    const bool pre = fp8_in_.src == x.data && fp8_in_.rows == x.shape[0] && fp8_in_.cols == x.shape[1] &&
                     fp8_in_.per_token == w.per_channel();
    const T* b = bias.numel() > 0 ? bias.data : nullptr;
    op(gemm_name(w.rows(), w.cols()), [&] {
      if (pre) p_.fp8_gemm->prequantized(out, w, b, s_);
      else (*p_.fp8_gemm)(out, x, w, b, s_);
    });
  }
  /// add_rms_norm, then the fp8 linear. At batch 1, where Fp8Gemm::fuses_norm says so (the
  /// default with the weight-only GEMV; PIE_FP8_GEMV_NORM), the norm runs in the fp8 GEMV's
  /// prologue, the residual moving between two buffers as in the bf16 path below (H100,
  /// 2026-12-07: Qwen3-8B per-channel batch-1 ITL 3.82 → 3.79 ms; with the quantizing GEMV a norm
  /// prologue gained nothing, and on 2026-12-04 lost: docs/kernels.md).
  /// At 2–4 rows the weight-only rows GEMV takes the norm the same way (Fp8Gemm::fuses_norm(M, K),
  /// PIE_FP8_ROWS_NORM), the rows' residuals moving between the same two buffers.
  /// Above that the norm kernel also writes x's fp8 codes and scales for the GEMM
  /// (fp8_producers.cuh; bit-identical to the separate quantization).
  void norm_linear(Act x, Act& res, const Weight& norm, bool first, const Fp8Weight& w, const Weight& bias, Act out) {
    const int64_t M = x.shape[0], K = x.shape[1];
    if (shape_.tokens == M && M <= kFusedNormRows && res.shape[1] == K && (M == 1 || res.stride[0] == K) &&
        p_.fp8_gemm != nullptr && p_.fp8_gemm->fuses_norm(M, K)) {
      PIE_CHECK(w.cols() == K, "CudaForward: the norm's width differs from the fp8 linear's K");
      T* r_out = residual_out(res);
      fp8_per_token_ = w.per_channel() ? 1 : 0;
      op("norm+gemv", [&] {
        p_.fp8_gemm->norm_gemv(out, x, res.data, r_out, norm.data, eps(), first, w,
                               bias.numel() > 0 ? bias.data : nullptr, s_);
      });
      res.data = r_out;
      return;
    }
    if (!fp8_producer(M, K) || res.shape[1] != K) {
      add_rms_norm(x, res, norm, first);
    } else {
      // FusionSwitches::fp8_codes_only: x keeps its input (the linear below reads the codes alone),
      // as the batch-1 norm inside a GEMV leaves it.
      op("rms_norm", [&] {
        ops::cuda::add_rms_norm_fp8(x, res, norm, eps(), first, p_.fp8_gemm->act_buffer(w.per_channel()), s_, -1, -1,
                                    !p_.fusions.fp8_codes_only);
        fp8_in_ = {x.data, M, K, w.per_channel()};
      });
      if (p_.fusions.fp8_codes_only) ++fusion_counts_.fp8_codes_only;
    }
    linear(x, w, bias, out);
  }
  /// add_rms_norm then linear; at batch 1 fused into the GEMV's prologue (bit-identical to the
  /// separate kernels), the residual then moving between two buffers (res is updated).
  void norm_linear(Act x, Act& res, const Weight& norm, bool first, const Weight& w, const Weight& bias, Act out) {
    const bool fused = shape_.tokens == 1 && p_.gemm->gemv_max_rows() >= 1 &&
                       ops::cuda::add_rms_norm_gemv_supported(p_.config.hidden_size) && x.shape[1] == res.shape[1];
    if (!fused) {
      add_rms_norm(x, res, norm, first);
      linear(x, w, bias, out);
      return;
    }
    T* r_out = residual_out(res);
    op("norm+gemv", [&] {
      ops::cuda::add_rms_norm_gemv(out, x, res.data, r_out, norm.data, eps(), first, w,
                                   bias.numel() > 0 ? bias.data : nullptr, s_);
    });
    res.data = r_out;
  }
  /// A hint (model_concept.hpp): `ws` are read next, after ops that leave DRAM idle. At steps of
  /// p_.l2_prefetch.max_rows rows or fewer, their first bytes up to the policy's budget are
  /// prefetched into L2 now (one small kernel); otherwise nothing runs. Never changes a result.
  template <class... Ws>
  void prefetch(const Ws&... ws) {
    static_assert(sizeof...(Ws) <= ops::cuda::L2PrefetchArgs::kMaxRanges, "prefetch: at most 4 weights");
    if (!p_.l2_prefetch.wants(shape_.tokens)) return;
    const auto ranges = p_.l2_prefetch.plan({byte_range(ws)...});
    if (ranges.empty()) return;
    op("l2_prefetch", [&] { ops::cuda::l2_prefetch(ranges, s_); });
    ++fusion_counts_.l2_prefetch;
  }
  static PrefetchRange byte_range(const Weight& w) { return {w.data, static_cast<size_t>(w.numel()) * sizeof(T)}; }
  static PrefetchRange byte_range(const Fp8Weight& w) { return {w.q.data, static_cast<size_t>(w.q.numel())}; }
  /// With fusions.rope_kv, also this step's K/V rows into the next layer's cache (file comment).
  /// With fusions.rope_attn at a step of decode rows only, held back for the attention that reads
  /// qkv, which then runs it inside the decode kernel (rope_attn_step); any other op runs it first.
  void qk_norm_rope(Act qkv, const Weight& q_norm, const Weight& k_norm) {
    const T* qn = q_norm.numel() > 0 ? q_norm.data : nullptr;
    const T* kn = k_norm.numel() > 0 ? k_norm.data : nullptr;
    if (rope_attn_step()) {
      before_op();
      held_rope_ = {qkv, qn, kn, true};
      return;
    }
    qk_norm_rope_now(qkv, qn, kn);
  }
  /// The q/k norm + RoPE kernel (with the K/V write under fusions.rope_kv).
  void qk_norm_rope_now(Act qkv, const T* qn, const T* kn) {
    const auto& c = p_.config;
    if (!kv_fusion_.enabled()) {
      op("qk_norm_rope", [&] {
        ops::cuda::qk_norm_rope(qkv, p_.step->positions(), c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                                qn, kn, eps(), p_.rope, s_);
      });
      return;
    }
    op("qk_norm_rope_kv", [&] {
      const int l = kv_fusion_.on_rope(qkv.data);
      if (l < 0) {
        ops::cuda::qk_norm_rope(qkv, p_.step->positions(), c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                                qn, kn, eps(), p_.rope, s_);
        return;
      }
      ops::cuda::qk_norm_rope_kv(qkv, p_.step->positions(), c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                                 qn, kn, eps(), p_.rope, cache_->layer(l, 0, nullptr, nullptr, nullptr),
                                 p_.step->slot_mapping(), s_);
      ++fusion_counts_.rope_kv;
    });
  }
  void rope(Act qkv) { qk_norm_rope(qkv, Weight{}, Weight{}); }
  void add(Act res, const Act& x) {
    op("add", [&] { ops::cuda::add(res, x, s_); });
  }
  void attention(int l, const Act& qkv, Act out) {
    const auto& c = p_.config;
    const int64_t Q = c.q_size(), KVS = c.kv_size(), QKV = qkv.stride[0], O = out.stride[0];
    const int Tn = shape_.tokens, S = shape_.seqs, D = shape_.decodes;
    const float sm_scale = 1.f / std::sqrt(static_cast<float>(c.head_dim));
    StepBuffers& st = *p_.step;
    KVCache<KV>& cache = *cache_;
    // The held RoPE (fusions.rope_attn) runs inside this attention when it reads the same qkv;
    // otherwise it runs now, as its own kernel (the first op() below would run it anyway).
    const HeldRope rope = held_rope_.on && held_rope_.qkv.data == qkv.data ? held_rope_ : HeldRope{};
    if (rope.on) held_rope_ = {};
    ops::cuda::DecodeRopeArgs<T> rope_args;
    if (rope.on) {
      rope_args.positions = st.positions();
      rope_args.q_norm = rope.qn;
      rope_args.k_norm = rope.kn;
      rope_args.eps = eps();
      rope_args.rope = p_.rope;
      rope_args.k_new = qkv.data + Q;
      rope_args.v_new = qkv.data + Q + KVS;
      rope_args.row_stride = QKV;
    }
    if (calc_margin_ > 0.0f && cache.k_scales(l) != nullptr) {  // --calculate-kv-scales, first forward
      op("kv_scales", [&] {
        ops::cuda::kv_calculate_scales(mat(qkv.data + Q, Tn, KVS, QKV), mat(qkv.data + Q + KVS, Tn, KVS, QKV),
                                       st.slot_mapping(), c.num_key_value_heads, c.head_dim, calc_margin_,
                                       cache.k_scales(l), cache.v_scales(l), s_);
      });
      if (l == c.num_hidden_layers - 1) calc_margin_ = 0.0f;  // frozen from here on
    }
    // (The held RoPE's kernel writes K/V itself; otherwise qk_norm_rope's kernel may have.)
    if (!kv_fusion_.on_attention(l, qkv.data) && !rope.on) {
      op("kv_write", [&] {
        ops::cuda::kv_write(cache.layer(l, 0, nullptr, nullptr, nullptr), mat(qkv.data + Q, Tn, KVS, QKV),
                            mat(qkv.data + Q + KVS, Tn, KVS, QKV), st.slot_mapping(), s_);
      });
    }
    if (D > 0 && p_.batch_invariant) {
      // Decode rows as one-row prefills, the GQA group's heads packed into one one-warp CTA
      // (one K/V read per KV head): the prefill kernel's arithmetic for a row depends only on
      // that row's query and context — not on the rows beside it, the CTA's warp count or the
      // packing — so a token's attention output is the same decoded in any batch or
      // recomputed inside a prompt chunk.
      auto kvd = cache.layer(l, D, st.kv_indptr(), st.kv_indices(), st.kv_last_page_len());
      op("attention_prefill", [&] {
        pipe_lead_mark(l);
        ops::cuda::prefill_attention<1, true>(heads(qkv.data, D, QKV), kvd, st.cu_query_lens(), 1,
                                              heads(out.data, D, O), sm_scale, p_.variant, s_);
      });
    } else if (D > 0) {
      auto kvd = cache.layer(l, D, st.kv_indptr(), st.kv_indices(), st.kv_last_page_len());
      op(rope.on ? "rope+attention_decode" : "attention_decode", [&] {
        pipe_lead_mark(l);
        ops::cuda::decode_attention(heads(qkv.data, D, QKV), kvd, heads(out.data, D, O), shape_.decode, p_.decode_ws,
                                    sm_scale, p_.variant, s_, rope.on ? &rope_args : nullptr);
      });
      if (rope.on) ++fusion_counts_.rope_attn;
      // A batch-1 attention that lets its dependent launch after its K/V stages leaves DRAM idle
      // until it ends: the GEMV that reads its output (o_proj) may fill L2 with its weights then.
      if (p_.fusions.gemv_l2_ahead && Tn == 1 && sizeof(KV) == 2 && shape_.decode.late_dependents) l2_ahead_x_ = out.data;
    }
    if (S > D) {
      const int64_t r0 = shape_.prefill_row0;
      auto kvp = cache.layer(l, S - D, st.kv_indptr() + D, st.kv_indices(), st.kv_last_page_len() + D);
      op("attention_prefill", [&] {
        pipe_lead_mark(l);
        const auto q_rows = heads(qkv.data + r0 * QKV, Tn - r0, QKV);
        const auto out_rows = heads(out.data + r0 * O, Tn - r0, O);
        if constexpr (ops::cuda::is_fp8_v<ops::cuda::device_t<KV>>) {
          if (p_.fp8_kv_prefill != nullptr && shape_.max_query >= ops::cuda::kFp8KvPrefillStagedRows) {
            const int32_t* h = st.host_kv_indptr();  // the staged step's table, on the host too
            if (ops::cuda::prefill_attention_fp8_staged(q_rows, kvp, st.cu_prefill(), shape_.max_query, out_rows,
                                                        sm_scale, p_.variant, s_, *p_.fp8_kv_prefill, h[S] - h[D])) {
              ++fp8_prefill_staged_;
              return;
            }
          }
        }
        ops::cuda::prefill_attention(q_rows, kvp, st.cu_prefill(), shape_.max_query, out_rows, sm_scale, p_.variant,
                                     s_);
      });
    }
    if (pipe_role_ == PipeRole::kTrail && l + 1 < c.num_hidden_layers)
      PIE_CUDA_CHECK(cudaStreamWaitEvent(s_, pipe_events_[l + 1], 0));
  }
  /// With fp8 weights above batch 1, also out's fp8 codes for the down projection, in the scheme
  /// of the step's fp8 linears so far (a model's projections share one).
  void silu_and_mul(const Act& gate_up, Act out) {
    const int64_t M = out.shape[0], I = out.shape[1];
    if (swiglu_fusable(gate_up, out)) {  // maybe into the next linear layer's GEMV (file comment)
      before_op();                       // holding it back is an op for the ones already held
      held_swiglu_ = {gate_up, out, true};
      return;
    }
    if (fp8_per_token_ < 0 || !fp8_producer(M, I)) {
      op("silu_mul", [&] { ops::cuda::silu_and_mul(gate_up, out, s_); });
      return;
    }
    const bool per_token = fp8_per_token_ == 1;
    if (p_.fusions.fp8_codes_only) {  // the next fp8 linear may take the codes alone
      before_op();
      held_swiglu_ = {gate_up, out, true, true, per_token};
      return;
    }
    silu_and_mul_fp8(gate_up, out, per_token, /*store_out=*/true);
  }
  /// The sparse MoE block (Qwen3-MoE; the CPU context's moe() is the reference): router logits
  /// in fp32 through the linear layer's GEMM/GEMV, then ops/cuda/moe.cuh — fused routing and
  /// grouping, the grouped gate_up(+SwiGLU) and down products, the weighted un-permute — all at
  /// fixed addresses with no host sync, so decode steps capture it into their graphs. Decode
  /// batches of up to kMoeGemvMaxTokens take the grouped GEMV unless batch invariance is on.
  /// router [E, H], gate_up [E, 2·I, H] (gate rows first), down [E, H, I]; out must not alias x.
  /// Under TP (experts sharded by I, Qwen3Moe::shard) out is this rank's partial sum: the
  /// forward all-reduces it.
  void moe(const Act& x, const Weight& router, const Weight& gate_up, const Weight& down, int top_k,
           bool norm_topk_prob, Act out) {
    moe_block(x, router, gate_up, down, top_k, norm_topk_prob, out, nullptr);
  }
  /// add_rms_norm(x, res, norm, first), then moe(x, ...). At batch 1 with fusions.moe_norm
  /// (moe_norm_in_router) the norm runs in the router GEMV's prologue, bit-identical to the
  /// separate kernels: every CTA normalises the row, CTA 0 writes it to moe_x_ for the experts and
  /// the new residual to the other buffer of the pair (res is updated), and x keeps the block
  /// output (scratch afterwards, as after norm_linear). One kernel and its launch fewer per layer.
  void norm_moe(Act x, Act& res, const Weight& norm, bool first, const Weight& router, const Weight& gate_up,
                const Weight& down, int top_k, bool norm_topk_prob, Act out) {
    if (!moe_norm_fusable(x, res, router)) {
      add_rms_norm(x, res, norm, first);
      moe(x, router, gate_up, down, top_k, norm_topk_prob, out);
      return;
    }
    T* r_out = residual_out(res);
    const NormIntoRouter into{x, res.data, r_out, norm.data, first};
    Act xn = x;
    xn.data = moe_x_.data();
    moe_block(xn, router, gate_up, down, top_k, norm_topk_prob, out, &into);
    res.data = r_out;
  }

 private:
  /// The residual add + RMSNorm that norm_moe() puts in the router GEMV's prologue.
  struct NormIntoRouter {
    Act x;         ///< the block output (the norm's input)
    const T* r_in; ///< the residual before the add
    T* r_out;      ///< the residual after it (the other buffer of the pair)
    const T* w;    ///< the norm's weight
    bool first;
  };
  /// Whether norm_moe() may run its norm in the router GEMV (moe_norm_in_router, and a contiguous,
  /// aligned row that the GEMV takes).
  bool moe_norm_fusable(const Act& x, const Act& res, const Weight& router) const {
    engine::MoeNormStep st;
    st.tokens = shape_.tokens;
    st.gemv_rows = p_.gemm->gemv_max_rows();
    st.hidden_fits = ops::cuda::add_rms_norm_gemv_supported(x.shape[1]);
    if constexpr (ops::cuda::moe_decode::kVariantsCompiled)
      st.router_fused = p_.moe_decode.decode == ops::cuda::moe_decode::Choice::kFused && !p_.batch_invariant;
    return engine::moe_norm_in_router(p_.fusions.moe_norm, st) && x.shape[0] == 1 && x.shape[1] == res.shape[1] &&
           x.stride[1] == 1 && router.shape[1] == x.shape[1] && ops::cuda::vec8_aligned(res.data) &&
           ops::cuda::gemv_supported(1, x.shape[1], x.data, x.stride[0], router.data, router.stride[0]);
  }
  /// moe(); with `into`, x is moe_x_ and the router GEMV first computes it (norm_moe).
  void moe_block(const Act& x, const Weight& router, const Weight& gate_up, const Weight& down, int top_k,
                 bool norm_topk_prob, Act out, const NormIntoRouter* into) {
    const engine::MoeDims d = engine::check_moe_shapes(x, router, gate_up, down, out);
    const int64_t E = d.E, H = d.H, I = d.I;
    if (!moe_ || !moe_->fits(p_.max_tokens, static_cast<int>(E), top_k, static_cast<int>(H), static_cast<int>(I))) {
      PIE_CHECK(!frozen_, "CudaForward: the MoE workspace changed after the graphs were captured");
      moe_ = std::make_unique<ops::cuda::MoeWorkspace<T>>(p_.max_tokens, static_cast<int>(E), top_k,
                                                          static_cast<int>(H), static_cast<int>(I));
    }
    auto& ws = *moe_;
    const int n = shape_.tokens;
    TensorView<float> logits(ws.logits(), {n, E}, Device::Cuda);
    // PIE_MOE_DECODE=fused (opt-in: it lost on the device): at decode sizes the router
    // GEMV + routing is one kernel and down + un-permute another (ops/cuda/moe_decode.cuh), and
    // the gate_up GEMV picks its chunks in flight by wave count; the bits of the unfused gemv path
    // (at n ≥ 2 the router logits are then the GEMV's, not cuBLASLt's).
    // PIE_MOE_DECODE=waves: the five launches, with the gate_up GEMV's chunks by wave count.
    // PIE_MOE_ROUTE=cta: moe_route in one CTA at n ≤ kMoeGemvMaxTokens (no global atomics).
    // PIE_MOE_DOWN=waves: the down GEMV's columns per warp by wave count at n ≤ 2.
    // PIE_MOE_GEMV=ahead: at n ≤ 2 the GEMVs load their row chunks with the weights.
    // PIE_MOE_ROUTE=gate_up / PIE_MOE_UNPERMUTE=down: at n = 1 the routing inside the gate_up GEMV,
    // the un-permute in the down GEMV's last CTAs (no kernel of their own).
    // Each gives the base path's bits; where compiled (-DPIE_MOE_DECODE_VARIANTS=ON, the default;
    // kVariants) an unset switch takes the measured best (waves, cta, waves, ahead:
    // moe_decode::kCompiledDefaults). Without the option the switches are refused when the
    // runner is built, and none of their kernels is in this translation unit.
    constexpr bool kVariants = ops::cuda::moe_decode::kVariantsCompiled;
    const auto& sw = p_.moe_decode;
    [[maybe_unused]] bool fused = false, waves = false;
    if constexpr (kVariants) {
      fused = sw.decode == ops::cuda::moe_decode::Choice::kFused && !p_.batch_invariant && n >= 1 &&
              ops::cuda::moe_router_route_supported(x, router) && ops::cuda::MoeExperts<T>::fused_down_supported(n);
      waves = sw.decode == ops::cuda::moe_decode::Choice::kWaves && !p_.batch_invariant;
    }
    if constexpr (kVariants) {
      if (fused) op("moe_router_route", [&] { ops::cuda::moe_router_route(x, router, norm_topk_prob, ws, s_); });
    }
    PIE_CHECK(into == nullptr || (!fused && n == 1), "CudaForward: the norm in the router is for one row's GEMV");
    if (into != nullptr) {
      op("norm+moe_router", [&] {
        ops::cuda::add_rms_norm_gemv(logits, into->x, into->first ? nullptr : into->r_in, into->r_out, into->w, eps(),
                                     into->first, router, static_cast<const T*>(nullptr), s_, 0, x.data);
      });
      ++fusion_counts_.moe_norm;
    } else if (!fused) {
      op("moe_router", [&] { (*p_.gemm)(logits, x, router, static_cast<const T*>(nullptr), s_); });
    }
    // PIE_MOE_ROUTE=gate_up: one token routed inside the gate_up GEMV's CTAs (no route kernel).
    const bool route_in_gate_up = kVariants && sw.route_in_gate_up && !fused && !p_.batch_invariant &&
                                  ops::cuda::MoeExperts<T>::routed_gate_up_supported(n, static_cast<int>(E), true);
    if (!fused && !route_in_gate_up)
      op("moe_route", [&] { ops::cuda::moe_route(n, norm_topk_prob, ws, s_, kVariants && sw.route_one_cta); });
    if (n == 0) return;
    const ops::cuda::MoeExperts<T> ex(x, gate_up, down, ws, out, !p_.batch_invariant, fused || waves ? 0 : 4,
                                      kVariants && sw.down_by_waves ? 0 : 2, kVariants && sw.gemv_ahead);
    if (route_in_gate_up) {
      op("moe_route+gate_up", [&] { ex.gate_up_routed(norm_topk_prob, s_); });
      ++fusion_counts_.moe_route;
    }
    if (moe_observer_) {  // a test's look at the routing; never inside a graph capture
      cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
      PIE_CUDA_CHECK(cudaStreamIsCapturing(s_, &cs));
      if (cs == cudaStreamCaptureStatusNone) moe_observer_(ws.routing().ids, n, top_k, s_);
    }
    // In a build with the CUTLASS path (unless PIE_MOE_GEMM=mma): the CUTLASS grouped GEMMs above
    // the GEMV batch sizes (not under batch invariance, which the mma path is tested for). The
    // path's state is set up on the first call (eager, like the workspace) and re-made with it.
    [[maybe_unused]] const bool use_cutlass =
        moe_cutlass_wanted() && !p_.batch_invariant && n > ops::cuda::kMoeGemvMaxTokens;
#if defined(PIE_MOE_CUTLASS)
    if constexpr (std::is_same_v<ops::cuda::device_t<T>, __nv_bfloat16>) {
      if (use_cutlass) {
        if (!moe_cutlass_ || moe_cutlass_ws_ != moe_.get()) {
          PIE_CHECK(!frozen_, "CudaForward: the MoE workspace changed after the graphs were captured");
          moe_cutlass_ = ops::cuda::make_moe_cutlass_path(ws, p_.max_tokens);
          moe_cutlass_ws_ = moe_.get();
        }
        op("moe_gate_up", [&] { moe_cutlass_->gate_up(x, gate_up, down, ws, s_); });
        op("moe_down", [&] { moe_cutlass_->down(n, s_); });
        op("moe_unpermute", [&] { ex.unpermute(s_); });
        return;
      }
    }
#endif
    if constexpr (kVariants) {
      if (fused) {
        op("moe_gate_up", [&] { ex.gate_up(s_); });
        op("moe_down_unpermute", [&] { ex.down_unpermute(s_); });
        return;
      }
    }
    if (!route_in_gate_up) op("moe_gate_up", [&] { ex.gate_up(s_); });  // three ops: the profiler splits them
    // PIE_MOE_UNPERMUTE=down: one token's un-permute in the down GEMV's last CTAs.
    if (kVariants && sw.unpermute_in_down && !p_.batch_invariant &&
        ops::cuda::MoeExperts<T>::unpermute_in_down_supported(n, true)) {
      // After a routing kernel (not the routing inside gate_up) down reads it and loads its
      // first weights before its wait on gate_up (PIE_MOE_DOWN_EARLY=0: after the wait).
      const bool early = !route_in_gate_up && sw.down_early;
      op("moe_down+unpermute", [&] { ex.down_unpermute_in_last_ctas(s_, early, sw.down_dependents_at_start); });
      ++fusion_counts_.moe_unpermute;
      return;
    }
    op("moe_down", [&] { ex.down(s_); });
    op("moe_unpermute", [&] { ex.unpermute(s_); });
  }

 public:
  /// \brief Called by every eager moe() after its routing: the device ids [n·k] (expert of token
  /// t's j-th slot) and the step's stream. For tests comparing routing with transformers.
  using MoeObserver = std::function<void(const int32_t* ids, int n, int k, cudaStream_t stream)>;
  void set_moe_observer(MoeObserver f) { moe_observer_ = std::move(f); }
  void all_reduce(Act x) {
    if (!p_.comm) return;
    PIE_CHECK(x.stride[0] == x.shape[1], "all_reduce: the activation must be contiguous");
    op("all_reduce", [&] {
      p_.comm->all_reduce_sum(x.data, static_cast<size_t>(x.shape[0]) * x.shape[1], DTypeTraits<T>::dtype);
    });
  }
  /// Gathers the sampled rows of x and runs lm_head on them into logits() (fp32).
  void logits(const Act& x, const Weight& lm_head) {
    last_x_ = x;
    lm_head_ = lm_head;
    const HeldNorm h = held_norm_;
    // The new residual goes to the other buffer of the pair (no later op of the step reads it).
    T* r_out = h.res.data == res_pong_.data() ? res_home_ : res_pong_.data();
    if (h.on && h.x.data == x.data && r_out != nullptr && lm_head.shape[1] == x.shape[1] &&
        ops::cuda::gemv_supported(1, x.shape[1], x.data, x.stride[0], lm_head.data, lm_head.stride[0])) {
      // One row, one sample: logits = lm_head(T(rmsnorm(x + res))·w) in the GEMV, bit-identical
      // to the norm kernel, the (identity) gather and the float GEMV that LogitsGemm runs at M = 1.
      held_norm_ = {};
      op("norm+lm_head", [&] {
        TensorView<float> y(logits_out_, {1, lm_head.shape[0]}, Device::Cuda);
        ops::cuda::add_rms_norm_gemv(y, x, h.first ? nullptr : h.res.data, r_out, h.w.data, eps(), h.first, lm_head,
                                     static_cast<const T*>(nullptr), s_);
      });
      logits_fused_norm_ = true;
      ++fusion_counts_.final_norm;
      return;
    }
    logits_fused_norm_ = false;
    lm_head_rows(p_.step->logits_rows(), shape_.samples);  // its first op runs a held norm
  }
  /// Scores the staged prompt_logprobs rows (StepBuffers::stage_prompt_rows) of the last
  /// forward into out[0, rows) (sched::PromptLogprobRow, device): lm_head over chunks of up to
  /// max_samples rows into logits(), each followed by the prompt_logprobs kernel. It overwrites
  /// logits(), so it runs once the step's draws are sampled and their logits copied (stream
  /// order keeps the copies ahead of it). Under TP every rank calls it (each chunk's logits are
  /// all-gathered); ranks with out == null only take part in the collectives. Eager only: a step
  /// with prompt rows is never a graph replay.
  void score_prompt_rows(sched::PromptLogprobRow* out) {
    const int n = p_.step->num_prompt_rows();
    PIE_CHECK(n == 0 || !logits_fused_norm_, "score_prompt_rows: the last forward normalised its hidden states "
              "only inside lm_head (a step with prompt rows never does)");
    for (int r0 = 0; r0 < n; r0 += p_.max_samples) {
      const int g = std::min(p_.max_samples, n - r0);
      lm_head_rows(p_.step->prompt_rows() + r0, g);
      if (out)
        op("prompt_logprobs", [&] {
          ops::cuda::prompt_logprobs(logits_out_, g, global_vocab(), p_.step->prompt_tokens() + r0, out + r0, s_);
        });
    }
  }

 private:
  /// Gathers rows idx[0, n) of the last forward's final hidden states and runs lm_head on them
  /// into logits()[0, n) (fp32; under TP the rank's vocab slice, all-gathered and unpadded).
  void lm_head_rows(const int32_t* idx, int n) {
    const int64_t H = p_.config.hidden_size;
    Act rows = mat(rows_.data(), n, H);
    op("gather_rows", [&] { ops::cuda::embedding(last_x_, idx, rows, nullptr, s_); });
    if (!p_.comm) {
      op("lm_head", [&] { (*p_.logits_gemm)(logits_out_, rows, lm_head_, s_); });
      return;
    }
    const int per = static_cast<int>(p_.shard->vocab_per_rank), V = global_vocab();
    op("lm_head", [&] { (*p_.logits_gemm)(part_.data(), rows, lm_head_, s_); });
    op("all_gather", [&] {
      p_.comm->all_gather(part_.data(), gathered_.data(), static_cast<size_t>(n) * per, DType::F32);
      const int64_t total = int64_t{n} * V;
      if (total > 0) {
        detail::unshard_logits_kernel<><<<static_cast<unsigned>((total + 255) / 256), 256, 0, s_>>>(
            gathered_.data(), n, per, V, logits_out_);
        PIE_CUDA_CHECK(cudaGetLastError());
      }
    });
  }
  float eps() const { return static_cast<float>(p_.config.rms_norm_eps); }
  int global_vocab() const { return p_.shard ? p_.shard->global.vocab_size : p_.config.vocab_size; }
  static Act mat(T* p, int64_t rows, int64_t cols, int64_t stride = 0) {
    Act v(p, {rows, cols}, Device::Cuda);
    if (stride) v.stride[0] = stride;
    return v;
  }
  Act heads(T* p, int64_t rows, int64_t stride) const {
    Act v(p, {rows, p_.config.num_attention_heads, p_.config.head_dim}, Device::Cuda);
    v.stride[0] = stride;
    return v;
  }
  /// The profiler's name of a projection (by its weight's shape: the trace tells them apart).
  const char* gemm_name(int64_t rows, int64_t cols) const {
    const auto& c = p_.config;
    if (rows == c.hidden_size && cols == c.q_size()) return "gemm_o";
    if (rows == c.hidden_size) return "gemm_down";
    if (rows == 2 * int64_t{c.intermediate_size}) return "gemm_gate_up";
    if (rows == c.qkv_size()) return "gemm_qkv";
    return "gemm";
  }
  /// SwiGLU with its fp8 codes (and the 16-bit row unless !store_out) as one op, the codes then
  /// known to the next fp8 linear (fp8_in_).
  void silu_and_mul_fp8(const Act& gate_up, Act out, bool per_token, bool store_out) {
    op("silu_mul", [&] {
      ops::cuda::silu_and_mul_fp8(gate_up, out, p_.fp8_gemm->act_buffer(per_token), s_, -1, -1, store_out);
      fp8_in_ = {out.data, out.shape[0], out.shape[1], per_token};
    });
  }
  /// A held SwiGLU that no GEMV took: its own kernel, before the op that reads it. Not a
  /// template, as run_held_norm.
  void run_held_swiglu() {
    if (!held_swiglu_.on) return;
    const HeldSwiGlu h = held_swiglu_;
    held_swiglu_ = {};
    if (h.fp8) {  // another op came first: out and its codes, as unheld
      silu_and_mul_fp8(h.gate_up, h.out, h.per_token, /*store_out=*/true);
      return;
    }
    op("silu_mul", [&] { ops::cuda::silu_and_mul(h.gate_up, h.out, s_); });
  }
  /// Whether silu_and_mul(gate_up, out) may wait for the next linear layer to run it in its GEMV
  /// (swiglu_in_gemv, fusion_switches.hpp, and contiguous aligned rows); linear() checks that it
  /// reads `out` with a 16-bit weight of width I, else the held SwiGLU runs as its own kernel.
  bool swiglu_fusable(const Act& gate_up, const Act& out) const {
    engine::SwiGluStep st;
    st.tokens = shape_.tokens;
    st.tensor_parallel = p_.comm != nullptr;
    st.gemv_rows = p_.gemm->gemv_max_rows();
    st.fp8_producer = fp8_per_token_ >= 0 && fp8_producer(out.shape[0], out.shape[1]);
    st.width_fits = ops::cuda::swiglu_gemv_supported<T>(out.shape[1]);
    return engine::swiglu_in_gemv(p_.fusions.swiglu, st) && out.shape[0] == 1 && gate_up.shape[0] == 1 &&
           gate_up.shape[1] == 2 * out.shape[1] && gate_up.stride[1] == 1 && out.stride[1] == 1 &&
           ops::cuda::vec8_aligned(gate_up.data) && ops::cuda::vec8_aligned(out.data);
  }
  /// Runs a held RoPE as its own kernel (qk_norm_rope).
  void run_held_rope() {
    if (!held_rope_.on) return;
    const HeldRope h = held_rope_;
    held_rope_ = {};
    qk_norm_rope_now(h.qkv, h.qn, h.kn);
  }
  /// Whether this step's RoPE may wait for its attention (fusions.rope_attn; fusion_switches.hpp).
  bool rope_attn_step() const {
    RopeAttnStep st;
    st.tokens = shape_.tokens;
    st.decodes = shape_.decodes;
    st.batch_invariant = p_.batch_invariant;
    st.calculating_kv_scales = calc_margin_ > 0.0f;
    st.plan_takes_it = shape_.decodes > 0 && ops::cuda::decode_rope_supported(shape_.decode, int(sizeof(KV)));
    st.small_grid = shape_.decode.small_grid;
    return rope_in_attention(p_.fusions.rope_attn, st, p_.fusions.rope_attn_small_grids_only);
  }
  /// Launches the add_rms_norm held back for logits() (fusions.final_norm), if any.
  /// Not a template: op() calls it, and it calls op() once more with the norm.
  void run_held_norm() {
    if (!held_norm_.on) return;
    const HeldNorm h = held_norm_;
    held_norm_ = {};
    Act res = h.res;
    op("rms_norm", [&] { ops::cuda::add_rms_norm(h.x, res, h.w, eps(), h.first, s_); });
  }
  /// Whether add_rms_norm(x, res) may wait for logits() to run it in lm_head's GEMV
  /// (final_norm_in_lm_head, fusion_switches.hpp, and a contiguous aligned row). logits() checks
  /// the rest (the same activation, lm_head's shape and alignment).
  bool final_norm_fusable(const Act& x, const Act& res) const {
    FinalNormStep st;
    st.tokens = shape_.tokens;
    st.samples = shape_.samples;
    st.prompt_rows = p_.step->num_prompt_rows();
    st.tensor_parallel = p_.comm != nullptr;
    st.lm_head_gemv_rows = p_.logits_gemm->gemv_max_rows();
    st.hidden_fits = ops::cuda::add_rms_norm_gemv_supported(x.shape[1]);
    return final_norm_in_lm_head(p_.fusions.final_norm, st) && x.shape[0] == 1 && x.shape[1] == res.shape[1] &&
           x.stride[1] == 1 && ops::cuda::vec8_aligned(res.data);
  }
  /// Whether an [M, K] activation headed for an fp8 GEMM is quantized by its producer.
  bool fp8_producer(int64_t M, int64_t K) const {
    return p_.fp8_gemm != nullptr && p_.fp8_gemm->wants_producer(M, K);
  }
  /// What every op, and every op held back, does first: the held ops run (this op may read
  /// their outputs), the quantized activation and the pending K/V write fusion are forgotten.
  void before_op() {
    run_held_rope();
    run_held_norm();
    run_held_swiglu();
    fp8_in_.src = nullptr;
    kv_fusion_.on_other_op();
  }
  /// Times `f` with events while profiling (eager steps only); just runs it otherwise. Every op
  /// forgets the quantized activation (a producer sets it again inside f).
  template <class F>
  void op(const char* name, F&& f) {
    before_op();
    if (p_.profiler && p_.profiler->enabled()) {
      p_.profiler->begin(name, s_);
      f();
      p_.profiler->end(s_);
    } else {
      f();
    }
    if (++ops_ == signal_ops_ && signal_) PIE_CUDA_CHECK(cudaEventRecord(signal_, s_));
  }

  Parts p_;
  StepShape shape_;
  KVCache<KV>* cache_ = nullptr;
  cudaStream_t s_ = nullptr;
  std::deque<DeviceBuffer<T>> slots_;
  size_t next_slot_ = 0;
  bool frozen_ = false;
  float calc_margin_ = 0.0f;  // > 0: the next forward calculates the fp8 KV scales
  /// Where a fused norm writes the new residual: the other buffer of the pair (res_pong_ and the
  /// model's own residual, remembered as res_home_), since every CTA of the fused kernel still
  /// reads `res`.
  T* residual_out(const Act& res) {
    T* r_out = res.data == res_pong_.data() ? res_home_ : res_pong_.data();
    if (res.data != res_pong_.data()) res_home_ = res.data;
    return r_out;
  }
  /// Most rows a fused norm + GEMV takes (the fp8 weight-only rows GEMV's 4): res_pong_'s rows.
  static constexpr int64_t kFusedNormRows = 4;
  DeviceBuffer<T> res_pong_, rows_;
  DeviceBuffer<T> moe_x_;  ///< the normalised row that norm_moe's router GEMV writes for the experts
  T* res_home_ = nullptr;
  Act last_x_;       // the last forward's final hidden states (logits() input), for score_prompt_rows
  Weight lm_head_;
  DeviceBuffer<float> logits_, part_, gathered_;
  float* logits_out_ = nullptr;  // logits_, or a nano-batch's rows of the step's (set_logits_target)
  int ops_ = 0, signal_ops_ = 0;  // ops enqueued this step; signal_after's count
  PipeRole pipe_role_ = PipeRole::kOff;  // set_pipeline
  const cudaEvent_t* pipe_events_ = nullptr;
  int pipe_marked_ = -1;  // the last layer whose event the lead recorded
  /// The lead's record of layer l's event, once, on its first attention kernel of the layer.
  void pipe_lead_mark(int l) {
    if (pipe_role_ != PipeRole::kLead || pipe_marked_ == l) return;
    PIE_CUDA_CHECK(cudaEventRecord(pipe_events_[l], s_));
    pipe_marked_ = l;
  }
  int64_t fp8_prefill_staged_ = 0;  // fp8_prefill_staged()
  cudaEvent_t signal_ = nullptr;
  DeviceBuffer<int32_t> ids_;
  std::unique_ptr<ops::cuda::MoeWorkspace<T>> moe_;  ///< the MoE block's scratch (first moe() call)
#if defined(PIE_MOE_CUTLASS)
  std::unique_ptr<ops::cuda::MoeCutlassPath<T>> moe_cutlass_;  ///< the CUTLASS path's state (first use)
  const void* moe_cutlass_ws_ = nullptr;                        ///< the workspace it was made for
#endif
  /// PIE_MOE_GEMM (moe_group::parse_gemm_choice), read once: unset, the CUTLASS path when the
  /// build has it (H200: Qwen3-30B-A3B 1024 × (128, 128) 0.348 → 0.456 of the roofline,
  /// docs/benchmarks.md), else mma; "cutlass" in a build without -DPIE_MOE_CUTLASS is an error
  /// rather than a silent fallback.
  static bool moe_cutlass_wanted() {
    static const bool on = [] {
#if defined(PIE_MOE_CUTLASS)
      constexpr auto kDefault = ops::cuda::moe_group::GemmChoice::kCutlass;
#else
      constexpr auto kDefault = ops::cuda::moe_group::GemmChoice::kMma;
#endif
      const bool want = ops::cuda::moe_group::parse_gemm_choice(std::getenv("PIE_MOE_GEMM"), kDefault) ==
                        ops::cuda::moe_group::GemmChoice::kCutlass;
#if !defined(PIE_MOE_CUTLASS)
      PIE_CHECK(!want, "PIE_MOE_GEMM=cutlass: this build has no CUTLASS path (configure with -DPIE_MOE_CUTLASS=ON)");
#endif
      return want;
    }();
    return on;
  }
  /// The activation a producer quantized into the fp8 GEMM's buffer (src null: none).
  struct Fp8In {
    const T* src = nullptr;
    int64_t rows = 0, cols = 0;
    bool per_token = false;
  } fp8_in_;
  int fp8_per_token_ = -1;  ///< the fp8 linears' scheme (-1 before the first)
  struct HeldRope {  ///< a q/k norm + RoPE waiting for its attention (fusions.rope_attn)
    Act qkv;
    const T* qn = nullptr;
    const T* kn = nullptr;
    bool on = false;
  } held_rope_;
  KvWriteFusion kv_fusion_;  ///< whether the rope kernel wrote a layer's K/V (fusions.rope_kv)
  /// An add_rms_norm not run yet (fusions.final_norm): logits() or the next op runs it.
  struct HeldNorm {
    Act x, res;
    Weight w;
    bool first = false;
    bool on = false;
  } held_norm_;
  /// silu_and_mul held for the next linear layer's GEMV (PIE_FUSED_SWIGLU; swiglu_fusable).
  struct HeldSwiGlu {
    Act gate_up, out;
    bool on = false;
    /// Held for the next fp8 linear (FusionSwitches::fp8_codes_only): its producer then writes
    /// the codes alone; per_token: the scheme they are quantized in.
    bool fp8 = false;
    bool per_token = false;
  } held_swiglu_;
  bool logits_fused_norm_ = false;  ///< the last logits() normalised inside lm_head (x is not normalised)
  /// The output of a batch-1 decode attention whose reading GEMV takes GemvParams::l2_ahead
  /// (FusionSwitches::gemv_l2_ahead); null: none.
  const T* l2_ahead_x_ = nullptr;
  FusionCounts fusion_counts_;
  MoeObserver moe_observer_;  ///< see set_moe_observer (empty: none)
};

}  // namespace pie::engine::cuda
