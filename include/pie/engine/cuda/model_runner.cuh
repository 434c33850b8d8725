#pragma once
/// \file model_runner.cuh
/// \brief CudaModelRunner: the Qwen3 family (Qwen3 / Qwen2 / Llama) on one GPU over StepPlans.
///
/// Per step: the plan and sample specs go to the device in ONE pinned async copy
/// (StepBuffers); the plan's block copies run (KVCache); one forward pass covers every
/// scheduled token (one cuBLASLt GEMM per projection for the whole step, decode rows through
/// the split-K decode kernel, prefill chunks through the tensor-core prefill kernel); logits
/// are computed only for the rows that sample; the sampler runs on the device and only the
/// sampled ids come back. Pure decode steps replay a CUDA graph of their batch bucket.
///
/// Construction follows vLLM: weights resident → activation peak profiled at
/// max_num_batched_tokens → KV blocks from gpu_memory_utilization (memory_plan.cuh) → graphs.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/core/error.hpp"
#include "pie/core/policy.hpp"
#include "pie/engine/cuda/cuda_graphs.cuh"
#include "pie/engine/cuda/device_weights.cuh"
#include "pie/engine/cuda/kv_cache.cuh"
#include "pie/engine/cuda/logits_gemm.cuh"
#include "pie/engine/cuda/memory_plan.cuh"
#include "pie/engine/cuda/step_buffers.cuh"
#include "pie/engine/cuda/step_profiler.cuh"
#include "pie/kv/kv_layout.hpp"
#include "pie/ops/cpu/rope.hpp"
#include "pie/ops/cuda/activation.cuh"
#include "pie/ops/cuda/attention_decode.cuh"
#include "pie/ops/cuda/attention_prefill.cuh"
#include "pie/ops/cuda/embedding.cuh"
#include "pie/ops/cuda/gemm.cuh"
#include "pie/ops/cuda/gemv.cuh"
#include "pie/ops/cuda/kv_write.cuh"
#include "pie/ops/cuda/norm.cuh"
#include "pie/ops/cuda/rope.cuh"
#include "pie/ops/cuda/sampling.cuh"
#include "pie/sched/step_plan.hpp"

namespace pie::engine::cuda {

/// \brief Sizing and behaviour of the runner (vLLM's flags of the same names).
struct RunnerOptions {
  int max_num_seqs = 256;
  int max_num_batched_tokens = 8192;
  int max_model_len = 4096;
  double gpu_memory_utilization = 0.9;
  double swap_space_gib = 4.0;          ///< pinned host pool for swap preemption
  bool enforce_eager = false;           ///< no CUDA graphs
  int64_t num_gpu_blocks_override = 0;  ///< > 0: this many KV blocks, whatever memory says
  /// Bitwise batch invariance (vLLM's VLLM_BATCH_INVARIANT): a sequence's logits do not depend
  /// on what else is in the step, or on whether its K/V came from prefill or decode (recompute
  /// preemption). Every GEMM runs one algorithm per shape (Gemm::set_batch_invariant) and decode
  /// rows go through the prefill attention kernel, whose per-row result is independent of the
  /// rows beside it; decode attention is then slower (docs/gpu_engine.md).
  bool batch_invariant = false;
  bool log = true;                      ///< print the memory plan and graph capture to stderr
};

/// \brief Counters of what the runner did (bench and tests read them).
struct RunnerStats {
  int64_t steps = 0;
  int64_t graph_steps = 0;
  int64_t eager_steps = 0;
  double graph_capture_s = 0;
  double profile_s = 0;
};

/// \brief Runs Qwen3-family models on one GPU. Not thread-safe; one stream.
/// \tparam Policy EnginePolicy with backend::Cuda
template <class Policy>
class CudaModelRunner {
 public:
  using T = typename Policy::dtype;
  using KV = typename Policy::kv_dtype;
  using Variant = typename Policy::attention_variant;
  static_assert(Policy::backend_type::kIsCuda, "CudaModelRunner: the policy's backend must be backend::Cuda");

  CudaModelRunner(DeviceWeights<T> weights, RunnerOptions opt, Variant variant = {})
      : opt_(opt), w_(std::move(weights)), variant_(variant) {
    const auto& c = w_.config;
    PIE_CHECK(c.num_attention_heads % c.num_key_value_heads == 0, "CudaModelRunner: query heads (",
              c.num_attention_heads, ") must be a multiple of KV heads (", c.num_key_value_heads, ")");
    PIE_CHECK(opt_.max_num_batched_tokens >= opt_.max_num_seqs, "max_num_batched_tokens must be >= max_num_seqs");
    PIE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    layout_ = kv::KVLayout{c.num_hidden_layers, c.num_key_value_heads, c.head_dim, Policy::block_size,
                           DTypeTraits<KV>::dtype};
    DeviceMemory m0 = DeviceMemory::query();
    const size_t baseline = m0.used() > w_.bytes() ? m0.used() - w_.bytes() : 0;
    allocate_workspaces();
    auto t0 = std::chrono::steady_clock::now();
    size_t activation = profile();
    stats_.profile_s = seconds_since(t0);
    DeviceMemory m1 = DeviceMemory::query();
    // Graphs take a little memory of their own; keep 1% of the card (at least 256 MiB) back.
    size_t reserve = std::max<size_t>(size_t{256} << 20, m1.total / 100);
    if (opt_.enforce_eager) reserve = size_t{64} << 20;
    plan_ = plan_kv_cache(layout_, m1.total, baseline, w_.bytes(), activation, m1.used(),
                          opt_.gpu_memory_utilization, opt_.max_model_len, opt_.swap_space_gib, reserve,
                          opt_.num_gpu_blocks_override);
    kv_ = std::make_unique<KVCache<KV>>(layout_, plan_.num_blocks, plan_.num_swap_blocks);
    if (opt_.log) std::fprintf(stderr, "%s\n", plan_.log_line(Policy::block_size).c_str());
    if (opt_.log && opt_.batch_invariant)
      std::fprintf(stderr, "pie: batch-invariant kernels: one GEMM algorithm per shape, decode rows through the "
                           "prefill attention kernel\n");
    if (!opt_.enforce_eager) capture_graphs();
  }
  CudaModelRunner(const CudaModelRunner&) = delete;
  CudaModelRunner& operator=(const CudaModelRunner&) = delete;
  ~CudaModelRunner() {
    graphs_.clear();
    if (stream_) cudaStreamDestroy(stream_);
  }

  const model::ModelConfig& config() const { return w_.config; }
  const kv::KVLayout& layout() const { return layout_; }
  const MemoryPlan& memory_plan() const { return plan_; }
  const RunnerOptions& options() const { return opt_; }
  const RunnerStats& stats() const { return stats_; }
  int num_device_blocks() const { return static_cast<int>(plan_.num_blocks); }
  int num_host_blocks() const { return static_cast<int>(plan_.num_swap_blocks); }
  std::vector<int> graph_batch_sizes() const { return captured_; }
  cudaStream_t stream() const { return stream_; }
  KVCache<KV>& kv_cache() { return *kv_; }
  /// Per-op event timing of the following steps (eager while on); see step_profiler.cuh.
  StepProfiler& profiler() { return prof_; }

  /// Runs one step and returns the sampled ids (plan.num_sampled_tokens(), in sample order;
  /// valid until the next call). `specs` has one entry per sampled token.
  std::span<const int32_t> execute(const sched::StepPlan& plan, const std::vector<SampleSpec>& specs) {
    launch(plan, specs, /*want_logits=*/false);
    PIE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    prof_.collect();
    return {ids_host_.data(), static_cast<size_t>(last_samples_)};
  }

  /// Runs one step and copies the logits of every sampled row to the host as float
  /// ([plan.num_sampled_tokens()][vocab]; tests, and engines that sample on the host). The
  /// device sampler still runs; its greedy ids are in last_ids().
  std::span<const float> execute_logits(const sched::StepPlan& plan, const std::vector<SampleSpec>& specs) {
    launch(plan, specs, /*want_logits=*/true);
    PIE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    prof_.collect();
    const size_t V = static_cast<size_t>(w_.config.vocab_size);
    return {logits_host_.data(), static_cast<size_t>(last_samples_) * V};
  }
  std::span<const int32_t> last_ids() { return {ids_host_.data(), static_cast<size_t>(last_samples_)}; }

 private:
  static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  int max_samples() const { return opt_.max_num_seqs + 128; }  // n > 1 prefills draw several per row

  // ---- setup ------------------------------------------------------------------------------------
  void allocate_workspaces() {
    const auto& c = w_.config;
    const size_t Tn = static_cast<size_t>(opt_.max_num_batched_tokens);
    const size_t H = c.hidden_size, I = c.intermediate_size;
    x_ = DeviceBuffer<T>(Tn * H);
    res_ = DeviceBuffer<T>(Tn * H);
    res_pong_ = DeviceBuffer<T>(H);  // batch-1 fused norms alternate the residual between res_ and this
    qkv_ = DeviceBuffer<T>(Tn * c.qkv_size());
    attn_ = DeviceBuffer<T>(Tn * std::max<size_t>(c.q_size(), I));  // attention out, then SwiGLU out
    mlp_ = DeviceBuffer<T>(Tn * 2 * I);
    rows_ = DeviceBuffer<T>(static_cast<size_t>(max_samples()) * H);
    logits_ = DeviceBuffer<float>(static_cast<size_t>(max_samples()) * c.vocab_size);
    ids_ = DeviceBuffer<int32_t>(max_samples());
    ids_host_ = PinnedBuffer<int32_t>(max_samples());
    StepCapacity cap;
    cap.max_tokens = opt_.max_num_batched_tokens;
    cap.max_seqs = opt_.max_num_seqs;
    cap.max_blocks = opt_.max_num_seqs * ((opt_.max_model_len + Policy::block_size - 1) / Policy::block_size + 1);
    cap.max_samples = max_samples();
    step_ = StepBuffers(cap);
    // Decode split-K scratch: the largest plan over every batch size at max_model_len.
    size_t dws = 0;
    for (int b = 1; b <= opt_.max_num_seqs; ++b)
      dws = std::max(dws, decode_plan(b, opt_.max_model_len).workspace_bytes);
    decode_ws_ = DeviceBuffer<unsigned char>(std::max<size_t>(dws, 256));
    // RoPE inverse frequencies as transformers computes them (scaled variants included).
    auto table = ops::cpu::rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling, c.max_position_embeddings);
    inv_freq_ = DeviceBuffer<float>(table.inv_freq.size());
    PIE_CUDA_CHECK(cudaMemcpy(inv_freq_.data(), table.inv_freq.data(), sizeof(float) * table.inv_freq.size(),
                              cudaMemcpyHostToDevice));
    rope_.theta = static_cast<float>(c.rope_theta);
    rope_.inv_freq = inv_freq_.data();
    rope_.mscale = table.attention_factor;
    gemm_ = std::make_unique<ops::cuda::Gemm>();
    logits_gemm_ = std::make_unique<LogitsGemm>();
    if (opt_.batch_invariant) {
      gemm_->set_batch_invariant(true);
      logits_gemm_->set_batch_invariant(true);
    }
  }

  ops::cuda::DecodePlan decode_plan(int batch, int max_len) const {
    const auto& c = w_.config;
    return ops::cuda::plan_decode_attention(batch, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                                            max_len);
  }

  /// Runs the largest step the scheduler can produce (max_num_batched_tokens of prefill, and
  /// as many sampled rows as sequences) against a scratch KV cache; returns the activation
  /// bytes: everything the runner allocated beyond the weights, plus library scratch.
  size_t profile() {
    DeviceMemory before = DeviceMemory::query();
    const int bs = Policy::block_size;
    const int Tn = opt_.max_num_batched_tokens;
    // Sequences of max_model_len (the last one shorter) filling the token budget; a step never
    // holds more than max_num_seqs·max_model_len tokens, whatever the budget.
    sched::StepPlan p;
    p.cu_query_lens.push_back(0);
    p.kv_indptr.push_back(0);
    int32_t next_block = 0;
    for (int done = 0; done < Tn && p.num_seqs() < opt_.max_num_seqs;) {
      const int len = std::min(opt_.max_model_len, Tn - done);
      const int i = p.num_seqs();
      for (int t = 0; t < len; ++t) {
        p.token_ids.push_back((t * 7919 + i) % w_.config.vocab_size);
        p.positions.push_back(t);
        p.slot_mapping.push_back(int64_t(next_block + t / bs) * bs + t % bs);
      }
      const int nb = (len + bs - 1) / bs;
      for (int b = 0; b < nb; ++b) p.kv_indices.push_back(next_block + b);
      next_block += nb;
      p.seq_ids.push_back(i);
      p.query_lens.push_back(len);
      p.context_lens.push_back(len);
      p.cu_query_lens.push_back(p.cu_query_lens.back() + len);
      p.kv_indptr.push_back(static_cast<int32_t>(p.kv_indices.size()));
      p.kv_last_page_len.push_back(len - (nb - 1) * bs);
      p.sample_seqs.push_back(i);
      p.logits_rows.push_back(p.cu_query_lens.back() - 1);
      p.sample_counts.push_back(1);
      done += len;
    }
    std::vector<SampleSpec> specs(p.sample_seqs.size());
    for (auto& s : specs) { s.temperature = 1.f; s.top_p = 0.9f; s.top_k = 50; }
    KVCache<KV> scratch(layout_, next_block, 0);
    DeviceMemory with_scratch = DeviceMemory::query();
    run_step(p, specs, scratch, /*allow_graph=*/false, /*want_logits=*/false);
    PIE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    DeviceMemory after = DeviceMemory::query();
    // Workspaces were allocated before `before`; count them in explicitly.
    size_t ws = (x_.size() + res_.size() + res_pong_.size() + qkv_.size() + attn_.size() + mlp_.size() + rows_.size()) * sizeof(T) +
                logits_.size() * sizeof(float) + step_.bytes() + decode_ws_.size() + (size_t{64} << 20) /* GEMM scratch */;
    size_t lib = with_scratch.free > after.free ? with_scratch.free - after.free : 0;  // handles, plans
    (void)before;
    return ws + lib;
  }

  void capture_graphs() {
    auto t0 = std::chrono::steady_clock::now();
    const int bs = Policy::block_size;
    // Largest first: the cuBLASLt plan cache and the graph pool settle on the big shapes.
    std::vector<int> buckets = graph_buckets(opt_.max_num_seqs);
    for (auto it = buckets.rbegin(); it != buckets.rend(); ++it) {
      const int B = *it;
      // A representative decode plan: each sequence one token at position 0 of its own block 0.
      sched::StepPlan p;
      p.cu_query_lens.push_back(0);
      p.kv_indptr.push_back(0);
      for (int i = 0; i < B; ++i) {
        p.token_ids.push_back(i % w_.config.vocab_size);
        p.positions.push_back(0);
        p.slot_mapping.push_back(-1);  // write nothing into the live cache
        p.seq_ids.push_back(i);
        p.query_lens.push_back(1);
        p.context_lens.push_back(1);
        p.cu_query_lens.push_back(i + 1);
        p.kv_indices.push_back(0);
        p.kv_indptr.push_back(i + 1);
        p.kv_last_page_len.push_back(1);
        p.sample_seqs.push_back(i);
        p.logits_rows.push_back(i);
        p.sample_counts.push_back(1);
      }
      p.num_decode_seqs = B;
      std::vector<SampleSpec> specs(B);
      (void)bs;
      step_.stage(p, specs, B, stream_);
      // Warm up eagerly (plans, cuBLASLt heuristics) before capturing.
      forward(B, B, B, B, 0, 0, decode_plan(B, opt_.max_model_len), *kv_, stream_);
      PIE_CUDA_CHECK(cudaStreamSynchronize(stream_));
      graphs_.capture(B, stream_, [&](cudaStream_t s) {
        forward(B, B, B, B, 0, 0, decode_plan(B, opt_.max_model_len), *kv_, s);
      });
      captured_.push_back(B);
    }
    std::reverse(captured_.begin(), captured_.end());
    PIE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    stats_.graph_capture_s = seconds_since(t0);
    if (opt_.log)
      std::fprintf(stderr, "pie: captured %zu decode CUDA graphs (batch 1..%d) in %.1f s\n", graphs_.size(),
                   opt_.max_num_seqs, stats_.graph_capture_s);
  }

  // ---- one step -----------------------------------------------------------------------------------
  void launch(const sched::StepPlan& plan, const std::vector<SampleSpec>& specs, bool want_logits) {
    if (plan.empty()) {
      // A plan with no tokens may still carry block operations (a swap-out that freed room for
      // nothing else this step): they must run before the scheduler reuses those blocks.
      kv_->apply(plan, stream_);
      last_samples_ = 0;
      return;
    }
    run_step(plan, specs, *kv_, /*allow_graph=*/true, want_logits);
  }

  void run_step(const sched::StepPlan& plan, const std::vector<SampleSpec>& specs, KVCache<KV>& cache,
                bool allow_graph, bool want_logits) {
    const int S = plan.num_seqs(), D = plan.num_decode_seqs;
    const bool pure_decode = D == S;
    const int bucket = allow_graph && pure_decode && !prof_.enabled() ? graphs_.bucket_for(S) : 0;
    if (prof_.enabled()) prof_.set_tag(pure_decode ? "decode@" + std::to_string(S) : std::string("mixed"));
    step_.stage(plan, specs, bucket, stream_);
    cache.apply(plan, stream_);
    const int nsamp = step_.num_samples();
    if (bucket > 0) {
      graphs_.launch(bucket, stream_);
      ++stats_.graph_steps;
    } else {
      int max_ctx = 1, max_q = 0;
      for (int i = 0; i < D; ++i) max_ctx = std::max(max_ctx, plan.context_lens[i]);
      for (int i = D; i < S; ++i) max_q = std::max(max_q, plan.query_lens[i]);
      const int prefill_row0 = plan.cu_query_lens[D];
      forward(plan.num_tokens(), S, D, nsamp, max_q, prefill_row0, decode_plan(D, max_ctx), cache, stream_);
      ++stats_.eager_steps;
    }
    ++stats_.steps;
    last_samples_ = nsamp;
    PIE_CUDA_CHECK(cudaMemcpyAsync(ids_host_.data(), ids_.data(), sizeof(int32_t) * nsamp, cudaMemcpyDeviceToHost,
                                   stream_));
    if (want_logits) {
      const size_t n = static_cast<size_t>(nsamp) * w_.config.vocab_size;
      if (logits_host_.size() < n) logits_host_ = PinnedBuffer<float>(n);
      PIE_CUDA_CHECK(cudaMemcpyAsync(logits_host_.data(), logits_.data(), sizeof(float) * n, cudaMemcpyDeviceToHost,
                                     stream_));
    }
  }

  /// The forward pass over Tn rows (S sequences, the first D decodes) and the sampler over
  /// nsamp rows. Everything it reads lives at fixed device addresses (graph-capturable).
  void forward(int Tn, int S, int D, int nsamp, int max_q, int prefill_row0, const ops::cuda::DecodePlan& dplan,
               KVCache<KV>& cache, cudaStream_t s) {
    const auto& c = w_.config;
    const int64_t H = c.hidden_size, I = c.intermediate_size, QKV = c.qkv_size(), Q = c.q_size(),
                  KVS = c.kv_size();
    const int nq = c.num_attention_heads, nkv = c.num_key_value_heads, hd = c.head_dim;
    const float eps = static_cast<float>(c.rms_norm_eps);
    const float sm_scale = 1.f / std::sqrt(static_cast<float>(hd));
    auto mat = [](T* p, int64_t rows, int64_t cols, int64_t stride = 0) {
      TensorView<T> v(p, {rows, cols}, Device::Cuda);
      if (stride) v.stride[0] = stride;
      return v;
    };
    auto heads = [&](T* p, int64_t rows, int64_t stride) {
      TensorView<T> v(p, {rows, nq, hd}, Device::Cuda);
      v.stride[0] = stride;
      return v;
    };
    TensorView<T> x = mat(x_.data(), Tn, H), res = mat(res_.data(), Tn, H);
    TensorView<T> qkv = mat(qkv_.data(), Tn, QKV);
    TensorView<T> attn = mat(attn_.data(), Tn, Q), act = mat(attn_.data(), Tn, I);
    TensorView<T> gate_up = mat(mlp_.data(), Tn, 2 * I);
    ops::cuda::Gemm& gemm = *gemm_;
    // Times each op with events while profiling (eager steps only); a no-op otherwise.
#define P(name, ...) do { prof_.begin(name, s); __VA_ARGS__; prof_.end(s); } while (0)

    // One row (batch-1 decode): each residual add + RMSNorm runs inside the GEMV that reads it
    // (ops/cuda/gemv.cuh, bit-identical to the separate kernels); the residual alternates
    // res_ → res_pong_ (input norm) → res_ (post-attention norm), so it ends each layer in res_.
    const bool fused_norm = Tn == 1 && gemm.gemv_max_rows() >= 1 && ops::cuda::add_rms_norm_gemv_supported(H);
    P("embedding", ops::cuda::embedding(w_.embed_tokens, step_.token_ids(), x, nullptr, s));
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      const auto& L = w_.layers[l];
      if (fused_norm) {
        P("norm+gemm_qkv", ops::cuda::add_rms_norm_gemv(qkv, x, res_.data(), res_pong_.data(), L.input_layernorm.data,
                                                         eps, l == 0, L.qkv_proj, L.qkv_bias.data, s));
      } else {
        P("rms_norm", ops::cuda::add_rms_norm(x, res, L.input_layernorm, eps, l == 0, s));
        P("gemm_qkv", gemm(qkv, x, L.qkv_proj, L.qkv_bias.data, s));
      }
      P("qk_norm_rope", ops::cuda::qk_norm_rope(qkv, step_.positions(), nq, nkv, hd, L.q_norm.data, L.k_norm.data,
                                                eps, rope_, s));
      P("kv_write", ops::cuda::kv_write(cache.layer(l, 0, nullptr, nullptr, nullptr), mat(qkv_.data() + Q, Tn, KVS, QKV),
                                        mat(qkv_.data() + Q + KVS, Tn, KVS, QKV), step_.slot_mapping(), s));
      if (D > 0 && opt_.batch_invariant) {
        // Decode rows as one-row prefills, the GQA group's heads packed into one one-warp CTA
        // (one K/V read per KV head): the prefill kernel's arithmetic for a row depends only on
        // that row's query and context — not on the rows beside it, the CTA's warp count or the
        // packing — so a token's attention output is the same decoded in any batch or
        // recomputed inside a prompt chunk.
        auto kvd = cache.layer(l, D, step_.kv_indptr(), step_.kv_indices(), step_.kv_last_page_len());
        P("attention_prefill",
          ops::cuda::prefill_attention<1, true>(heads(qkv_.data(), D, QKV), kvd, step_.cu_query_lens(), 1,
                                                heads(attn_.data(), D, Q), sm_scale, variant_, s));
      } else if (D > 0) {
        auto kvd = cache.layer(l, D, step_.kv_indptr(), step_.kv_indices(), step_.kv_last_page_len());
        P("attention_decode", ops::cuda::decode_attention(heads(qkv_.data(), D, QKV), kvd, heads(attn_.data(), D, Q),
                                                          dplan, decode_ws_.data(), sm_scale, variant_, s));
      }
      if (S > D) {
        auto kvp = cache.layer(l, S - D, step_.kv_indptr() + D, step_.kv_indices(), step_.kv_last_page_len() + D);
        P("attention_prefill",
          ops::cuda::prefill_attention(heads(qkv_.data() + prefill_row0 * QKV, Tn - prefill_row0, QKV), kvp,
                                       step_.cu_prefill(), max_q,
                                       heads(attn_.data() + prefill_row0 * Q, Tn - prefill_row0, Q), sm_scale,
                                       variant_, s));
      }
      P("gemm_o", gemm(x, attn, L.o_proj, static_cast<const T*>(nullptr), s));
      if (fused_norm) {
        P("norm+gemm_gate_up",
          ops::cuda::add_rms_norm_gemv(gate_up, x, res_pong_.data(), res_.data(), L.post_attention_layernorm.data, eps,
                                       false, L.gate_up_proj, static_cast<const T*>(nullptr), s));
      } else {
        P("rms_norm", ops::cuda::add_rms_norm(x, res, L.post_attention_layernorm, eps, false, s));
        P("gemm_gate_up", gemm(gate_up, x, L.gate_up_proj, static_cast<const T*>(nullptr), s));
      }
      P("silu_mul", ops::cuda::silu_and_mul(gate_up, act, s));
      P("gemm_down", gemm(x, act, L.down_proj, static_cast<const T*>(nullptr), s));
    }
    P("rms_norm", ops::cuda::add_rms_norm(x, res, w_.norm, eps, false, s));
    // Only the sampled rows go through lm_head: gather them (the embedding gather over x).
    TensorView<T> rows = mat(rows_.data(), nsamp, H);
    P("gather_rows", ops::cuda::embedding(x, step_.logits_rows(), rows, nullptr, s));
    P("lm_head", (*logits_gemm_)(logits_.data(), rows, w_.lm_head, s));
    ops::cuda::SamplingInputs in;
    in.rows = step_.sampling_rows();
    ops::cuda::SamplingOutputs out;
    out.tokens = ids_.data();
    P("sample", ops::cuda::sample(logits_.data(), nsamp, c.vocab_size, in, out, s));
#undef P
  }

  RunnerOptions opt_;
  DeviceWeights<T> w_;
  Variant variant_;
  kv::KVLayout layout_{};
  MemoryPlan plan_;
  RunnerStats stats_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<ops::cuda::Gemm> gemm_;
  std::unique_ptr<KVCache<KV>> kv_;
  StepBuffers step_;
  DecodeGraphs graphs_;
  StepProfiler prof_;
  std::vector<int> captured_;
  ops::cuda::RopeParams rope_;
  std::unique_ptr<LogitsGemm> logits_gemm_;
  DeviceBuffer<T> x_, res_, res_pong_, qkv_, attn_, mlp_, rows_;
  DeviceBuffer<float> logits_;
  DeviceBuffer<unsigned char> decode_ws_;
  DeviceBuffer<float> inv_freq_;
  DeviceBuffer<int32_t> ids_;
  PinnedBuffer<int32_t> ids_host_;
  PinnedBuffer<float> logits_host_;
  int last_samples_ = 0;
};

}  // namespace pie::engine::cuda
