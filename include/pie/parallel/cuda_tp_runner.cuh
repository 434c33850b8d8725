#pragma once
/// \file cuda_tp_runner.cuh
/// \brief CudaTpRank: one tensor-parallel rank of the Qwen3 family on one GPU, driven by
/// TpEngine (tp_engine.hpp). It composes the single-GPU runner's parts — DeviceWeights::upload
/// of the rank's shard, StepBuffers (the plan in one pinned H→D copy), KVCache (the rank's KV
/// heads only), cuBLASLt Gemm / LogitsGemm, the ops of ops/cuda, DecodeGraphs — and adds the
/// four collectives of the Megatron layout, all on the runner's ONE stream:
///
///   embedding  ids shifted into the rank's vocab slice (others → zero rows) → all-reduce (bf16)
///   o_proj     partial sum over the rank's heads → all-reduce (bf16)
///   down_proj  partial sum over the rank's intermediate slice → all-reduce (bf16)
///   lm_head    fp32 logits of the rank's slice → all-gather → [rows][vocab] (padding dropped)
///
/// CUDA graphs: NCCL collectives enqueued on a stream under capture are recorded as graph nodes
/// (NCCL ≥ 2.9), so the pure-decode forward of each batch bucket — collectives included — is
/// captured once per rank and replayed. Every rank captures the same buckets in the same order
/// (they are built in lockstep by TpEngine's workers) and replays the same bucket each step
/// (same plan), so the graphs' collectives always pair up.
///
/// Sampling: on rank 0's device, over the gathered logits, with the single-GPU runner's sampler
/// (execute_sample: only the ids come back); when a request needs the host sampler (logprobs,
/// penalties, bias, min_tokens) rank 0 copies the logits back instead (execute).
///
/// KV sizing: no activation profiling (the single-GPU memory_plan); all workspaces are
/// allocated up front for max_num_batched_tokens, the graphs are captured against a one-block
/// cache, then max_kv_blocks() = (free − (1 − gpu_memory_utilization)·total − 512 MiB) /
/// bytes per block of the rank's layout, unless num_kv_blocks or a byte budget fixes it.
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "pie/core/buffer.hpp"
#include "pie/core/error.hpp"
#include "pie/engine/cuda/cuda_graphs.cuh"
#include "pie/engine/cuda/device_weights.cuh"
#include "pie/engine/cuda/kv_cache.cuh"
#include "pie/engine/cuda/logits_gemm.cuh"
#include "pie/engine/cuda/sample_specs.hpp"
#include "pie/engine/cuda/step_buffers.cuh"
#include "pie/kv/kv_layout.hpp"
#include "pie/model/weights.hpp"
#include "pie/ops/cpu/rope.hpp"
#include "pie/ops/cuda/activation.cuh"
#include "pie/ops/cuda/attention_decode.cuh"
#include "pie/ops/cuda/attention_prefill.cuh"
#include "pie/ops/cuda/embedding.cuh"
#include "pie/ops/cuda/gemm.cuh"
#include "pie/ops/cuda/kv_write.cuh"
#include "pie/ops/cuda/norm.cuh"
#include "pie/ops/cuda/rope.cuh"
#include "pie/ops/cuda/sampling.cuh"
#include "pie/parallel/nccl_communicator.cuh"
#include "pie/parallel/tp_plan.hpp"
#include "pie/sched/step_plan.hpp"

namespace pie::parallel {

namespace detail {
/// out[t] = ids[t] − begin: the rank's row of the token, or an index outside [0, slice) that
/// the embedding kernel turns into a zero row.
__global__ inline void shift_ids_kernel(const int32_t* ids, int n, int32_t begin, int32_t* out) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t < n) out[t] = ids[t] - begin;
}
/// logits[j][r·per + v] = gathered[r][j][v] for r·per + v < vocab (drops the padded rows).
__global__ inline void unshard_logits_kernel(const float* gathered, int ranks, int rows, int per, int vocab,
                                             float* logits) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(rows) * vocab) return;
  const int j = static_cast<int>(i / vocab), g = static_cast<int>(i % vocab);
  const int r = g / per, v = g % per;
  logits[i] = gathered[(static_cast<int64_t>(r) * rows + j) * per + v];
}
}  // namespace detail

/// \brief Sizing of a CudaTpRank (the single-GPU RunnerOptions' meaning, per rank).
struct CudaTpOptions {
  int max_num_seqs = 256;
  int max_num_batched_tokens = 8192;
  int max_model_len = 4096;
  double gpu_memory_utilization = 0.9;
  size_t kv_cache_bytes = 0;  ///< > 0: this rank's KV budget in bytes, whatever memory says
  bool enforce_eager = false;
};

/// \brief One rank on one GPU (see file comment). Build, use and destroy it on one thread.
template <class T, class KV = T, int BlockSize = 16, class Variant = attention::Causal>
class CudaTpRank {
 public:
  /// Loads this rank's weights (config == shard.local).
  using Loader = std::function<model::Weights<T>(const TpShard&)>;

  /// Joins the NCCL group FIRST (ncclCommInitRank blocks until every rank calls it and cannot
  /// be aborted, so nothing that may fail — loading — runs before it), registers the handle
  /// with `abort_group`, then loads and uploads the shard and allocates the workspaces.
  CudaTpRank(const TpShard& shard, const Loader& load, model::GenerationConfig gen, const ncclUniqueId& id,
             int device, CudaTpOptions opt, std::shared_ptr<NcclAbortGroup> abort_group, Variant variant = {})
      : s_(shard), gen_(std::move(gen)), opt_(opt), variant_(variant), abort_(std::move(abort_group)) {
    PIE_CUDA_CHECK(cudaSetDevice(device));
    PIE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    // The communicator enqueues on the runner's stream: collectives are ordered with the
    // kernels and captured into the same graphs.
    comm_ = std::make_unique<NcclCommunicator>(shard.tp_size, shard.rank, id, device, stream_);
    if (abort_) abort_->add(comm_->comm());
    PIE_CHECK(opt_.max_num_batched_tokens >= opt_.max_num_seqs, "max_num_batched_tokens must be >= max_num_seqs");
    w_ = engine::cuda::DeviceWeights<T>::upload(load(s_));
    const auto& c = w_.config;
    PIE_CHECK(c.num_attention_heads == s_.local.num_attention_heads && c.vocab_size == s_.vocab_per_rank,
              "CudaTpRank: weights are not rank ", s_.rank, "'s shard");
    layout_ = kv::KVLayout{c.num_hidden_layers, c.num_key_value_heads, c.head_dim, BlockSize, DTypeTraits<KV>::dtype};
    allocate_workspaces();
  }
  CudaTpRank(const CudaTpRank&) = delete;
  CudaTpRank& operator=(const CudaTpRank&) = delete;
  ~CudaTpRank() {
    graphs_.clear();
    if (comm_ && abort_ && abort_->aborted()) comm_->release();  // ncclCommAbort freed it
    comm_.reset();
    if (stream_) cudaStreamDestroy(stream_);
  }

  static constexpr int kBlockSize = BlockSize;
  const TpShard& shard() const { return s_; }
  const model::ModelConfig& global_config() const { return s_.global; }
  const model::GenerationConfig& generation_config() const { return gen_; }
  NcclCommunicator& communicator() { return *comm_; }
  /// One logits row per draw (StepBuffers repeats a row for an n > 1 prefill).
  static constexpr bool kLogitsPerDraw = true;

  int max_kv_blocks() const {
    const size_t per_block = layout_.bytes_per_block();
    if (opt_.kv_cache_bytes > 0) return static_cast<int>(opt_.kv_cache_bytes / per_block);
    size_t free = 0, total = 0;
    PIE_CUDA_CHECK(cudaMemGetInfo(&free, &total));
    const double keep = (1.0 - opt_.gpu_memory_utilization) * static_cast<double>(total) + double(size_t{512} << 20);
    return free > keep ? static_cast<int>((static_cast<double>(free) - keep) / per_block) : 0;
  }

  /// Allocates the KV pools (the group's common count) and captures the decode graphs: the
  /// warm-up and capture run collectives, so every rank must be in here at once.
  void allocate_kv(int num_blocks, int num_host_blocks) {
    kv_ = std::make_unique<engine::cuda::KVCache<KV>>(layout_, num_blocks, num_host_blocks);
    if (!opt_.enforce_eager) capture_graphs();
  }
  int num_blocks() const { return kv_ ? static_cast<int>(kv_->num_blocks()) : 0; }
  int num_graphs() const { return static_cast<int>(graphs_.size()); }

  /// Block operations and this rank's forward, in lockstep with the others. Rank 0 returns the
  /// full logits of every draw ([plan.num_sampled_tokens()][vocab], host); other ranks nothing.
  std::span<const float> execute(const sched::StepPlan& plan) {
    specs_.assign(plan.num_sampled_tokens(), engine::cuda::SampleSpec{});
    if (!run(plan, specs_)) return {};
    const size_t n = static_cast<size_t>(step_.num_samples()) * s_.global.vocab_size;
    if (s_.rank == 0) {
      if (host_.size() < n) host_ = PinnedBuffer<float>(n);
      PIE_CUDA_CHECK(cudaMemcpyAsync(host_.data(), logits_.data(), sizeof(float) * n, cudaMemcpyDeviceToHost, stream_));
    }
    PIE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (s_.rank != 0) return {};
    return {host_.data(), n};
  }

  /// The device sampler draws on rank 0 (TpEngine takes this path when no request needs the host
  /// sampler).
  static constexpr bool kSamplesOnDevice = true;

  /// As execute(), but rank 0 samples its gathered logits on the device with `specs` (one per
  /// draw, engine::cuda::sample_specs) and returns only the sampled ids; other ranks nothing.
  /// At batch 256 this moves 1 KB to the host instead of 155 MB of float logits.
  std::span<const int32_t> execute_sample(const sched::StepPlan& plan,
                                          const std::vector<engine::cuda::SampleSpec>& specs) {
    if (!run(plan, specs)) return {};
    const int nsamp = step_.num_samples();
    if (s_.rank == 0 && nsamp > 0) {
      ops::cuda::SamplingInputs in;
      in.rows = step_.sampling_rows();
      ops::cuda::SamplingOutputs out;
      out.tokens = sampled_.data();
      ops::cuda::sample(logits_.data(), nsamp, s_.global.vocab_size, in, out, stream_);
      PIE_CUDA_CHECK(cudaMemcpyAsync(sampled_host_.data(), sampled_.data(), sizeof(int32_t) * nsamp,
                                     cudaMemcpyDeviceToHost, stream_));
    }
    PIE_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (s_.rank != 0) return {};
    return {sampled_host_.data(), static_cast<size_t>(nsamp)};
  }

 private:
  int max_samples() const { return opt_.max_num_seqs + 128; }

  /// Stages the plan with `specs` and runs block operations and the forward (graph or eager);
  /// false for a plan of block operations only (done, synchronised).
  bool run(const sched::StepPlan& plan, const std::vector<engine::cuda::SampleSpec>& specs) {
    PIE_CHECK(kv_, "CudaTpRank: execute before allocate_kv");
    if (plan.empty()) {  // block operations only (a swap-out that made room for nothing)
      kv_->apply(plan, stream_);
      PIE_CUDA_CHECK(cudaStreamSynchronize(stream_));
      return false;
    }
    const int S = plan.num_seqs(), D = plan.num_decode_seqs;
    const bool pure_decode = D == S;
    const int bucket = pure_decode ? graphs_.bucket_for(S) : 0;
    step_.stage(plan, specs, bucket, stream_);
    kv_->apply(plan, stream_);
    const int nsamp = step_.num_samples();
    if (bucket > 0) {
      graphs_.launch(bucket, stream_);
    } else {
      int max_ctx = 1, max_q = 0;
      for (int i = 0; i < D; ++i) max_ctx = std::max(max_ctx, plan.context_lens[i]);
      for (int i = D; i < S; ++i) max_q = std::max(max_q, plan.query_lens[i]);
      forward(plan.num_tokens(), S, D, nsamp, max_q, plan.cu_query_lens[D], decode_plan(D, max_ctx), *kv_, stream_);
    }
    return true;
  }
  ops::cuda::DecodePlan decode_plan(int batch, int max_len) const {
    const auto& c = w_.config;
    return ops::cuda::plan_decode_attention(batch, c.num_attention_heads, c.num_key_value_heads, c.head_dim, max_len);
  }

  void allocate_workspaces() {
    const auto& c = w_.config;
    const size_t Tn = static_cast<size_t>(opt_.max_num_batched_tokens), H = c.hidden_size, I = c.intermediate_size;
    const size_t ms = static_cast<size_t>(max_samples()), per = static_cast<size_t>(s_.vocab_per_rank);
    x_ = DeviceBuffer<T>(Tn * H);
    res_ = DeviceBuffer<T>(Tn * H);
    qkv_ = DeviceBuffer<T>(Tn * c.qkv_size());
    attn_ = DeviceBuffer<T>(Tn * std::max<size_t>(c.q_size(), I));
    mlp_ = DeviceBuffer<T>(Tn * 2 * I);
    rows_ = DeviceBuffer<T>(ms * H);
    ids_ = DeviceBuffer<int32_t>(Tn);
    part_ = DeviceBuffer<float>(ms * per);
    gathered_ = DeviceBuffer<float>(ms * per * s_.tp_size);
    logits_ = DeviceBuffer<float>(ms * s_.global.vocab_size);
    sampled_ = DeviceBuffer<int32_t>(ms);
    sampled_host_ = PinnedBuffer<int32_t>(ms);
    engine::cuda::StepCapacity cap;
    cap.max_tokens = opt_.max_num_batched_tokens;
    cap.max_seqs = opt_.max_num_seqs;
    cap.max_blocks = opt_.max_num_seqs * ((opt_.max_model_len + BlockSize - 1) / BlockSize + 1);
    cap.max_samples = max_samples();
    step_ = engine::cuda::StepBuffers(cap);
    size_t dws = 0;
    for (int b = 1; b <= opt_.max_num_seqs; ++b)
      dws = std::max(dws, decode_plan(b, opt_.max_model_len).workspace_bytes);
    decode_ws_ = DeviceBuffer<unsigned char>(std::max<size_t>(dws, 256));
    auto table = ops::cpu::rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling, c.max_position_embeddings);
    inv_freq_ = DeviceBuffer<float>(table.inv_freq.size());
    PIE_CUDA_CHECK(cudaMemcpy(inv_freq_.data(), table.inv_freq.data(), sizeof(float) * table.inv_freq.size(),
                              cudaMemcpyHostToDevice));
    rope_.theta = static_cast<float>(c.rope_theta);
    rope_.inv_freq = inv_freq_.data();
    rope_.mscale = table.attention_factor;
    gemm_ = std::make_unique<ops::cuda::Gemm>();
    logits_gemm_ = std::make_unique<engine::cuda::LogitsGemm>();
  }

  /// Decode graphs per batch bucket, each sequence one token at position 0 writing nothing
  /// (slot −1), as the single-GPU runner does. Warm-up runs eagerly first (cuBLASLt plans, NCCL
  /// channel setup), then the capture records kernels and collectives.
  void capture_graphs() {
    std::vector<int> buckets = engine::cuda::graph_buckets(opt_.max_num_seqs);
    for (auto it = buckets.rbegin(); it != buckets.rend(); ++it) {
      const int B = *it;
      sched::StepPlan p;
      p.cu_query_lens.push_back(0);
      p.kv_indptr.push_back(0);
      for (int i = 0; i < B; ++i) {
        p.token_ids.push_back(i % s_.global.vocab_size);
        p.positions.push_back(0);
        p.slot_mapping.push_back(-1);
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
      std::vector<engine::cuda::SampleSpec> specs(B);
      step_.stage(p, specs, B, stream_);
      forward(B, B, B, B, 0, 0, decode_plan(B, opt_.max_model_len), *kv_, stream_);
      PIE_CUDA_CHECK(cudaStreamSynchronize(stream_));
      graphs_.capture(B, stream_, [&](cudaStream_t s) {
        forward(B, B, B, B, 0, 0, decode_plan(B, opt_.max_model_len), *kv_, s);
      });
    }
    PIE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  /// The forward over Tn rows (S sequences, the first D decodes) to the gathered logits of
  /// nsamp rows. Reads only fixed device addresses (graph-capturable); collectives on `s`.
  void forward(int Tn, int S, int D, int nsamp, int max_q, int prefill_row0, const ops::cuda::DecodePlan& dplan,
               engine::cuda::KVCache<KV>& cache, cudaStream_t s) {
    PIE_CHECK(s == stream_, "CudaTpRank: the forward must run on the communicator's stream");
    const auto& c = w_.config;
    const int64_t H = c.hidden_size, I = c.intermediate_size, QKV = c.qkv_size(), Q = c.q_size(), KVS = c.kv_size();
    const int nq = c.num_attention_heads, nkv = c.num_key_value_heads, hd = c.head_dim;
    const float eps = static_cast<float>(c.rms_norm_eps);
    const float sm_scale = 1.f / std::sqrt(static_cast<float>(hd));
    constexpr DType dt = DTypeTraits<T>::dtype;
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
    const size_t nH = static_cast<size_t>(Tn) * H;

    detail::shift_ids_kernel<<<(Tn + 255) / 256, 256, 0, s>>>(step_.token_ids(), Tn,
                                                              static_cast<int32_t>(s_.vocab.begin), ids_.data());
    PIE_CUDA_CHECK(cudaGetLastError());
    ops::cuda::embedding(w_.embed_tokens, ids_.data(), x, nullptr, s);
    comm_->all_reduce_sum(x_.data(), nH, dt);  // one non-zero row per token: exact
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      const auto& L = w_.layers[l];
      ops::cuda::add_rms_norm(x, res, L.input_layernorm, eps, l == 0, s);
      gemm(qkv, x, L.qkv_proj, L.qkv_bias.data, s);
      ops::cuda::qk_norm_rope(qkv, step_.positions(), nq, nkv, hd, L.q_norm.data, L.k_norm.data, eps, rope_, s);
      ops::cuda::kv_write(cache.layer(l, 0, nullptr, nullptr, nullptr), mat(qkv_.data() + Q, Tn, KVS, QKV),
                          mat(qkv_.data() + Q + KVS, Tn, KVS, QKV), step_.slot_mapping(), s);
      if (D > 0) {
        auto kvd = cache.layer(l, D, step_.kv_indptr(), step_.kv_indices(), step_.kv_last_page_len());
        ops::cuda::decode_attention(heads(qkv_.data(), D, QKV), kvd, heads(attn_.data(), D, Q), dplan,
                                    decode_ws_.data(), sm_scale, variant_, s);
      }
      if (S > D) {
        auto kvp = cache.layer(l, S - D, step_.kv_indptr() + D, step_.kv_indices(), step_.kv_last_page_len() + D);
        const int64_t np = Tn - prefill_row0;
        ops::cuda::prefill_attention(heads(qkv_.data() + prefill_row0 * QKV, np, QKV), kvp, step_.cu_prefill(), max_q,
                                     heads(attn_.data() + prefill_row0 * Q, np, Q), sm_scale, variant_, s);
      }
      gemm(x, attn, L.o_proj, static_cast<const T*>(nullptr), s);
      comm_->all_reduce_sum(x_.data(), nH, dt);  // row-parallel o_proj
      ops::cuda::add_rms_norm(x, res, L.post_attention_layernorm, eps, false, s);
      gemm(gate_up, x, L.gate_up_proj, static_cast<const T*>(nullptr), s);
      ops::cuda::silu_and_mul(gate_up, act, s);
      gemm(x, act, L.down_proj, static_cast<const T*>(nullptr), s);
      comm_->all_reduce_sum(x_.data(), nH, dt);  // row-parallel down_proj
    }
    ops::cuda::add_rms_norm(x, res, w_.norm, eps, false, s);
    TensorView<T> rows = mat(rows_.data(), nsamp, H);
    ops::cuda::embedding(x, step_.logits_rows(), rows, nullptr, s);
    const int per = static_cast<int>(s_.vocab_per_rank), V = s_.global.vocab_size;
    (*logits_gemm_)(part_.data(), rows, w_.lm_head, s);
    comm_->all_gather(part_.data(), gathered_.data(), static_cast<size_t>(nsamp) * per, DType::F32);
    const int64_t total = int64_t{nsamp} * V;
    if (total > 0) {
      detail::unshard_logits_kernel<<<static_cast<unsigned>((total + 255) / 256), 256, 0, s>>>(
          gathered_.data(), s_.tp_size, nsamp, per, V, logits_.data());
      PIE_CUDA_CHECK(cudaGetLastError());
    }
  }

  TpShard s_;
  model::GenerationConfig gen_;
  CudaTpOptions opt_;
  Variant variant_;
  std::shared_ptr<NcclAbortGroup> abort_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<NcclCommunicator> comm_;
  engine::cuda::DeviceWeights<T> w_;
  kv::KVLayout layout_{};
  std::unique_ptr<ops::cuda::Gemm> gemm_;
  std::unique_ptr<engine::cuda::LogitsGemm> logits_gemm_;
  std::unique_ptr<engine::cuda::KVCache<KV>> kv_;
  engine::cuda::StepBuffers step_;
  engine::cuda::DecodeGraphs graphs_;
  ops::cuda::RopeParams rope_;
  std::vector<engine::cuda::SampleSpec> specs_;
  DeviceBuffer<T> x_, res_, qkv_, attn_, mlp_, rows_;
  DeviceBuffer<int32_t> ids_;
  DeviceBuffer<int32_t> sampled_;     ///< rank 0's device-sampled ids
  PinnedBuffer<int32_t> sampled_host_;
  DeviceBuffer<float> part_, gathered_, logits_, inv_freq_;
  DeviceBuffer<unsigned char> decode_ws_;
  PinnedBuffer<float> host_;
};

}  // namespace pie::parallel
