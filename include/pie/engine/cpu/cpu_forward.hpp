#pragma once
/// \file cpu_forward.hpp
/// \brief CpuForward: the CPU backend's forward context — the ops a model's forward is written
/// over (model_concept.hpp), implemented with ops/cpu (Eigen-free fixed-order loops, float
/// activations, weights and KV cache in the policy's storage types).
///
/// With round_activations(true) the float activations are rounded to T wherever a 16-bit forward
/// (transformers, the GPU backend) stores a tensor: the residual, every op's output, and inside
/// RMSNorm, RoPE and SwiGLU at transformers' rounding points. That is the reference of the GPU's
/// forward up to summation order, which the fp8 weights need: a float activation quantized to
/// e4m3 differs from the GPU's bf16-rounded one by a whole e4m3 step wherever the two straddle a
/// rounding point.
///
/// Tensor parallelism enters through three hooks and nothing else: embed() (vocab-parallel rows,
/// zero rows for other ranks' ids, then an all-reduce), all_reduce() (after a row-parallel
/// projection) and logits() (this rank's vocab slice, all-gathered). With no communicator the
/// context is the unsharded model and the hooks cost nothing.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <deque>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "pie/core/attention_variants.hpp"
#include "pie/core/communicator.hpp"
#include "pie/core/error.hpp"
#include "pie/core/fp8_weight.hpp"
#include "pie/core/tensor.hpp"
#include "pie/engine/moe_shapes.hpp"
#include "pie/kv/kv_scales.hpp"
#include "pie/kv/paged_kv.hpp"
#include "pie/model/config.hpp"
#include "pie/model/tp_plan.hpp"
#include "pie/ops/cpu/fp8_linear.hpp"
#include "pie/ops/cpu/ops.hpp"
#include "pie/ops/cpu/round.hpp"
#include "pie/sched/step_plan.hpp"

namespace pie::engine::cpu {

/// \brief One step's forward context on the CPU (see file comment).
/// \tparam T       weight storage type (float, f16, bf16)
/// \tparam KVT     KV-cache storage type
/// \tparam Variant attention hook struct (attention/variants.hpp)
template <class T, class KVT, class Variant = attention::Causal>
class CpuForward {
 public:
  /// \brief An activation: a [rows, cols] float view with a row stride.
  using Act = TensorView<float>;
  using Weight = TensorView<T>;

  /// `shard` and `comm` are null for an unsharded model; otherwise they describe this rank and
  /// must outlive the context. `cfg` is the rank's local config (shard->local under TP).
  CpuForward(const model::ModelConfig& cfg, Variant variant, const parallel::TpShard* shard = nullptr,
             parallel::Communicator* comm = nullptr)
      : cfg_(cfg), variant_(variant), shard_(shard), comm_(comm),
        rope_(ops::cpu::rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings)) {
    PIE_CHECK((shard == nullptr) == (comm == nullptr), "CpuForward: a shard needs a communicator and back");
    PIE_CHECK(comm == nullptr || !comm->device_memory(), "CpuForward: the CPU forward needs a host-memory communicator");
  }

  /// Binds the step: its plan, one KV pool per layer, and where the logits go
  /// ([plan.logits_rows.size()][global vocab], one row per sampled sequence).
  void begin(const sched::StepPlan& plan, std::span<KVT* const> layer_pools, int block_size, float* logits) {
    PIE_CHECK(static_cast<int>(layer_pools.size()) == cfg_.num_hidden_layers, "forward: ", layer_pools.size(),
              " KV pools for ", cfg_.num_hidden_layers, " layers");
    const int n = plan.num_tokens();
    PIE_CHECK(static_cast<int>(plan.cu_query_lens.size()) == plan.num_seqs() + 1 && plan.cu_query_lens.back() == n &&
                  static_cast<int>(plan.positions.size()) == n && static_cast<int>(plan.slot_mapping.size()) == n,
              "forward: inconsistent StepPlan (", n, " tokens, ", plan.num_seqs(), " sequences)");
    plan_ = &plan;
    pools_ = layer_pools;
    block_size_ = block_size;
    logits_ = logits;
    next_slot_ = 0;
  }

  const model::ModelConfig& config() const { return cfg_; }
  int num_tokens() const { return plan_->num_tokens(); }
  /// Rounds activations to T at a 16-bit forward's storage points (see the file comment); off by
  /// default, and a no-op for T = float.
  void round_activations(bool on) { round_ = on && !std::is_same_v<T, float>; }

  /// fp8 KV: the cache's per-(layer, kv head) scales from now on (validated). 16-bit caches
  /// ignore scales.
  void set_kv_scales(kv::KvScales s) {
    s.check("CpuForward::set_kv_scales");
    PIE_CHECK(s.num_layers == cfg_.num_hidden_layers && s.num_kv_heads == cfg_.num_key_value_heads,
              "CpuForward::set_kv_scales: scales for ", s.num_layers, " layers × ", s.num_kv_heads,
              " kv heads, the model has ", cfg_.num_hidden_layers, " × ", cfg_.num_key_value_heads);
    scales_ = std::move(s);
  }
  /// fp8 KV (--calculate-kv-scales): the next forward sets each layer's scales from its K/V amax
  /// per head (kv::kv_scale_from_amax with `margin`) before writing them; frozen afterwards.
  void calculate_kv_scales(float margin = kv::kKvScaleMargin) {
    PIE_CHECK(margin >= 1.0f && std::isfinite(margin), "calculate_kv_scales: margin ", margin, " must be >= 1");
    scales_ = kv::KvScales::ones(cfg_.num_hidden_layers, cfg_.num_key_value_heads);
    calc_margin_ = margin;
  }
  /// The scales in use (empty before set_kv_scales / calculate_kv_scales: all 1).
  const kv::KvScales& kv_scales() const { return scales_; }

  /// A fresh [tokens, cols] activation (valid for the step).
  Act act(int64_t cols) {
    if (next_slot_ == slots_.size()) slots_.emplace_back();
    std::vector<float>& s = slots_[next_slot_++];
    const int64_t n = num_tokens();
    s.resize(static_cast<size_t>(n * cols));
    return Act(s.data(), {n, cols});
  }
  /// Columns [begin, begin + count) of `a` (same rows, a's row stride).
  static Act cols(const Act& a, int64_t begin, int64_t count) {
    Act v = a;
    v.data = a.data + begin;
    v.shape[1] = count;
    return v;
  }

  /// out = the embeddings of the step's tokens (vocab-parallel under TP).
  void embed(const Weight& table, Act out) {
    const int n = num_tokens(), H = cfg_.hidden_size;
    if (!comm_) {
      ops::cpu::embedding(table.data, cfg_.vocab_size, H, plan_->token_ids.data(), n, out.data);
      return;
    }
    for (int t = 0; t < n; ++t) {
      const int32_t id = plan_->token_ids[t];
      PIE_CHECK(id >= 0 && id < shard_->global.vocab_size, "embedding: token id ", id, " out of [0, ",
                shard_->global.vocab_size, ")");
      float* o = out.row(t);
      if (!shard_->vocab.contains(id)) { std::fill(o, o + H, 0.0f); continue; }
      const T* row = table.data + (id - shard_->vocab.begin) * H;
      for (int i = 0; i < H; ++i) o[i] = to_float(row[i]);
    }
    // One non-zero row per token across the ranks: the sum is exact.
    comm_->all_reduce_sum(out.data, static_cast<size_t>(n) * H);
  }

  /// res += x (res = x when `first`); x = rmsnorm(res)·w.
  void add_rms_norm(Act x, Act& res, const Weight& w, bool first) {
    rounded([&](auto r) {
      ops::cpu::add_rms_norm(x.data, res.data, w.data, num_tokens(), static_cast<int>(x.shape[1]), eps(), first, r);
    });
  }
  /// x = rmsnorm(x)·w over each row of x's columns.
  void rms_norm(Act x, const Weight& w) {
    rounded([&](auto r) {
      ops::cpu::rms_norm(x.data, w.data, num_tokens(), static_cast<int>(x.shape[1]), eps(), x.stride[0], r);
    });
  }
  /// res += x, elementwise.
  void add(Act res, const Act& x) {
    const int64_t n = num_tokens(), c = x.shape[1];
    for (int64_t t = 0; t < n; ++t)
      for (int64_t i = 0; i < c; ++i) res.row(t)[i] += x.row(t)[i];
    round_rows(res);
  }
  /// out = x·Wᵀ (+ bias; an empty bias is none).
  void linear(const Act& x, const Weight& w, const Weight& bias, Act out) {
    ops::cpu::linear(x.data, num_tokens(), static_cast<int>(x.shape[1]), w.data, static_cast<int>(out.shape[1]),
                     bias.numel() > 0 ? bias.data : nullptr, out.data, x.stride[0], out.stride[0]);
    round_rows(out);
  }
  /// out = x·Wᵀ (+ bias) with an fp8 weight: the reference of the GPU's fp8 linear (x quantized
  /// per token and group as the GPU quantizes it, or left as it is for the rows the GPU runs
  /// weight-only, core/fp8_weight.hpp's fp8_weight_only_rows; W dequantized, fp32 GEMM;
  /// ops/cpu/fp8_linear.hpp).
  /// With 16-bit storage T, x is first rounded to T, as the GPU quantizes the bf16 activation it
  /// stored. Without round_activations, the GPU's activations still differ from these float ones
  /// by the bf16 roundings of every earlier op, and each e4m3 rounding point a difference crosses
  /// costs a whole e4m3 step (2⁻⁴ relative): engine logits then differ from the GPU's by
  /// 0.054–0.073 on 3-layer models, against 2e-3 per kernel.
  void linear(const Act& x, const Fp8Weight& w, const Weight& bias, Act out) {
    const int n = num_tokens(), K = static_cast<int>(x.shape[1]);
    const float* in = x.data;
    int64_t ld = x.stride[0];
    if constexpr (!std::is_same_v<T, float>) {
      fp8_in_.resize(static_cast<size_t>(n) * K);
      for (int t = 0; t < n; ++t)
        for (int k = 0; k < K; ++k) fp8_in_[static_cast<size_t>(t) * K + k] = to_float(from_float<T>(x.row(t)[k]));
      in = fp8_in_.data();
      ld = K;
    }
    const auto* b = bias.numel() > 0 ? bias.data : nullptr;
    if (fp8_weight_only_rows(n, K))  // the GPU's weight-only GEMV takes these rows (core/fp8_weight.hpp)
      ops::cpu::fp8_linear_w8a16(in, n, K, w, b, out.data, ld, out.stride[0], fp8_w_);
    else
      ops::cpu::fp8_linear(in, n, K, w, b, out.data, ld, out.stride[0], fp8_x_, fp8_w_);
    round_rows(out);
  }
  /// add_rms_norm(x, res, norm, first), then out = x·Wᵀ (+ bias). One op so that a backend may
  /// fuse the norm into the projection's prologue (the GPU does at batch 1). W is a T matrix or an
  /// Fp8Weight.
  template <class W>
  void norm_linear(Act x, Act& res, const Weight& norm, bool first, const W& w, const Weight& bias, Act out) {
    add_rms_norm(x, res, norm, first);
    linear(x, w, bias, out);
  }
  /// A hint that `ws` are read next (model_concept.hpp): the GPU context may move them into its
  /// L2 cache meanwhile; the CPU has nothing to do.
  template <class... Ws>
  void prefetch(const Ws&...) {}
  /// Per-head RMSNorm of the q and k parts of the fused qkv (when the weights are not empty),
  /// then NeoX RoPE on both at the plan's positions.
  void qk_norm_rope(Act qkv, const Weight& q_norm, const Weight& k_norm) {
    const int n = num_tokens(), nq = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads, hd = cfg_.head_dim;
    float* q = qkv.data;
    float* k = q + cfg_.q_size();
    rounded([&](auto r) {
      if (q_norm.data && q_norm.numel() > 0) ops::cpu::head_rms_norm(q, qkv.stride[0], n, nq, hd, q_norm.data, eps(), r);
      if (k_norm.data && k_norm.numel() > 0) ops::cpu::head_rms_norm(k, qkv.stride[0], n, nkv, hd, k_norm.data, eps(), r);
      ops::cpu::rope_neox(q, qkv.stride[0], n, nq, hd, plan_->positions.data(), rope_, r);
      ops::cpu::rope_neox(k, qkv.stride[0], n, nkv, hd, plan_->positions.data(), rope_, r);
    });
  }
  /// NeoX RoPE on the q and k parts of the fused qkv (models that normalise elsewhere).
  void rope(Act qkv) { qk_norm_rope(qkv, Weight{}, Weight{}); }
  /// A contiguous [tokens, cols] activation over a's storage (cols ≤ a's columns): one buffer
  /// for values that are never live together (the attention output, then the SwiGLU output).
  Act reuse(const Act& a, int64_t cols) const {
    PIE_CHECK(cols <= a.shape[1] && a.stride[0] == a.shape[1], "reuse: ", cols, " columns over a ", a.shape[1],
              "-column activation");
    return Act(a.data, {a.shape[0], cols});
  }
  /// Writes layer `l`'s K/V of every token into the paged cache at the plan's slots, then
  /// out = attention of q over each sequence's cached context (prefix + this chunk).
  void attention(int l, const Act& qkv, Act out) {
    const int n = num_tokens(), nq = cfg_.num_attention_heads, nkv = cfg_.num_key_value_heads, hd = cfg_.head_dim;
    const sched::StepPlan& p = *plan_;
    const float* q = qkv.data;
    const float* k = q + cfg_.q_size();
    if (calc_margin_ > 0.0f) {  // --calculate-kv-scales: this first forward's amax per head
      std::vector<float> amax(nkv);
      float* ks = scales_.k.data() + static_cast<size_t>(l) * nkv;
      float* vs = scales_.v.data() + static_cast<size_t>(l) * nkv;
      kv::head_amax(k, qkv.stride[0], n, p.slot_mapping.data(), nkv, hd, amax.data());
      for (int h = 0; h < nkv; ++h) ks[h] = kv::kv_scale_from_amax(amax[h], calc_margin_);
      kv::head_amax(k + cfg_.kv_size(), qkv.stride[0], n, p.slot_mapping.data(), nkv, hd, amax.data());
      for (int h = 0; h < nkv; ++h) vs[h] = kv::kv_scale_from_amax(amax[h], calc_margin_);
      if (l == cfg_.num_hidden_layers - 1) calc_margin_ = 0.0f;  // frozen from here on
    }
    const bool scaled = !scales_.k.empty();
    kv::PagedKV<KVT> kv{pools_[l], nkv, hd, block_size_, p.num_seqs(), p.kv_indptr.data(), p.kv_indices.data(),
                        p.kv_last_page_len.data(), scaled ? scales_.k_of(l) : nullptr,
                        scaled ? scales_.v_of(l) : nullptr};
    ops::cpu::kv_write(kv, k, k + cfg_.kv_size(), qkv.stride[0], n, p.slot_mapping.data());
    // Under TP, local head i reads local KV head i / local group: the same KV head as
    // unsharded because a rank's heads never straddle a GQA group.
    ops::cpu::paged_attention(q, qkv.stride[0], out.data, out.stride[0], kv, p.cu_query_lens.data(), nq,
                              1.0f / std::sqrt(static_cast<float>(hd)), variant_);
    round_rows(out);
  }
  /// out = silu(gate)·up with gate_up = [gate | up].
  void silu_and_mul(const Act& gate_up, Act out) {
    const int64_t n = num_tokens(), I = out.shape[1];
    rounded([&](auto r) {
      if (out.stride[0] == I && gate_up.stride[0] == 2 * I) {
        ops::cpu::silu_and_mul(gate_up.data, static_cast<int>(n), static_cast<int>(I), out.data, r);
        return;
      }
      for (int64_t t = 0; t < n; ++t)
        ops::cpu::silu_and_mul(gate_up.row(t), 1, static_cast<int>(I), out.row(t), r);
    });
  }
  /// The sparse MoE block (Qwen3-MoE): router logits x·routerᵀ → softmax (fp32) → top_k experts
  /// (renormalised to sum 1 when `norm_topk_prob`) → out = Σ weight·down_e(silu(gate_e·x)·up_e·x)
  /// per token, added in ascending expert id (ops/cpu/moe.hpp; a token's result depends on its
  /// row only). router [E, H], gate_up [E, 2·I, H] (gate rows first), down [E, H, I]; out must
  /// not alias x. Under TP (experts sharded by I) out is this rank's partial sum: all_reduce it.
  void moe(const Act& x, const Weight& router, const Weight& gate_up, const Weight& down, int top_k,
           bool norm_topk_prob, Act out) {
    const engine::MoeDims d = engine::check_moe_shapes(x, router, gate_up, down, out);
    const int64_t E = d.E, H = d.H, I = d.I;
    ops::cpu::moe(x.data, x.stride[0], num_tokens(), static_cast<int>(H), router.data, gate_up.data, down.data,
                  static_cast<int>(E), static_cast<int>(I), top_k, norm_topk_prob, out.data, out.stride[0]);
    round_rows(out);  // only the output: the experts' own intermediates stay float
  }
  /// add_rms_norm(x, res, norm, first), then moe(x, ...) into out. One op so that a backend may
  /// fuse the norm into the router's prologue (the GPU does at batch 1); x is scratch afterwards,
  /// as after norm_linear.
  void norm_moe(Act x, Act& res, const Weight& norm, bool first, const Weight& router, const Weight& gate_up,
                const Weight& down, int top_k, bool norm_topk_prob, Act out) {
    add_rms_norm(x, res, norm, first);
    moe(x, router, gate_up, down, top_k, norm_topk_prob, out);
  }
  /// Completes a row-parallel projection (sum of the ranks' partial outputs).
  void all_reduce(Act x) {
    if (!comm_) return;
    PIE_CHECK(x.stride[0] == x.shape[1], "all_reduce: the activation must be contiguous");
    comm_->all_reduce_sum(x.data, static_cast<size_t>(num_tokens()) * x.shape[1]);
  }
  /// The logits of the plan's sampled rows of x: x·lm_headᵀ (this rank's slice, all-gathered
  /// into [rows][global vocab] under TP).
  void logits(const Act& x, const Weight& lm_head) {
    const int m = static_cast<int>(plan_->logits_rows.size()), n = num_tokens(), H = cfg_.hidden_size;
    if (m == 0) return;
    sel_.resize(static_cast<size_t>(m) * H);
    for (int j = 0; j < m; ++j) {
      const int r = plan_->logits_rows[j];
      PIE_CHECK(r >= 0 && r < n, "forward: logits row ", r, " out of [0, ", n, ")");
      std::copy_n(x.row(r), H, sel_.data() + static_cast<size_t>(j) * H);
    }
    if (!comm_) {
      ops::cpu::linear(sel_.data(), m, H, lm_head.data, cfg_.vocab_size, static_cast<const T*>(nullptr), logits_);
      return;
    }
    const int per = static_cast<int>(shard_->vocab_per_rank), N = shard_->tp_size, V = shard_->global.vocab_size;
    part_.resize(static_cast<size_t>(m) * per);
    gathered_.resize(static_cast<size_t>(N) * m * per);
    ops::cpu::linear(sel_.data(), m, H, lm_head.data, per, static_cast<const T*>(nullptr), part_.data());
    comm_->all_gather(part_.data(), gathered_.data(), part_.size());
    for (int j = 0; j < m; ++j)
      for (int r = 0; r < N; ++r) {
        const int v0 = r * per, cnt = std::max(0, std::min(per, V - v0));
        std::copy_n(gathered_.data() + (static_cast<size_t>(r) * m + j) * per, cnt,
                    logits_ + static_cast<size_t>(j) * V + v0);
      }
  }

 private:
  float eps() const { return static_cast<float>(cfg_.rms_norm_eps); }
  /// f(RoundTo<T>) with round_activations on, else f(Exact).
  template <class F>
  void rounded(F&& f) {
    if constexpr (!std::is_same_v<T, float>) {
      if (round_) return f(ops::cpu::RoundTo<T>{});
    }
    f(ops::cpu::Exact{});
  }
  /// Rounds a's rows to T (round_activations on).
  void round_rows(Act a) const {
    if constexpr (!std::is_same_v<T, float>) {
      if (!round_) return;
      const ops::cpu::RoundTo<T> r;
      for (int64_t t = 0; t < num_tokens(); ++t)
        for (int64_t i = 0; i < a.shape[1]; ++i) a.row(t)[i] = r(a.row(t)[i]);
    }
  }

  model::ModelConfig cfg_;
  Variant variant_;
  const parallel::TpShard* shard_;
  parallel::Communicator* comm_;
  ops::cpu::RopeTable rope_;
  const sched::StepPlan* plan_ = nullptr;
  std::span<KVT* const> pools_;
  int block_size_ = 0;
  float* logits_ = nullptr;
  std::deque<std::vector<float>> slots_;  // deque: earlier slots keep their addresses
  size_t next_slot_ = 0;
  std::vector<float> sel_, part_, gathered_;
  std::vector<float> fp8_in_, fp8_x_, fp8_w_;  // fp8 linear scratch
  bool round_ = false;  // round_activations
  kv::KvScales scales_;      // fp8 KV scales; empty: all 1
  float calc_margin_ = 0.0f;  // > 0: the next forward computes scales_ (calculate_kv_scales)
};

}  // namespace pie::engine::cpu
