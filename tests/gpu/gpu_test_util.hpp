#pragma once
// Test support for the GPU engine tests: a small Qwen3 config the CUDA kernels support
// (head_dim 64), hand-built StepPlans over a linear block allocator, and error measures.
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "pie/model/config.hpp"
#include "pie/sched/step_plan.hpp"

namespace pie::gpu_test {

/// Qwen3-shaped, small enough for the CPU reference: GQA group 2, q/k norm, untied lm_head.
inline model::ModelConfig small_qwen3(int layers = 2) {
  model::ModelConfig c;
  c.architecture = model::Architecture::Qwen3;
  c.vocab_size = 1024;
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.num_hidden_layers = layers;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 64;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1e6;
  c.max_position_embeddings = 4096;
  c.qk_norm = true;
  c.eos_token_ids = {1};
  return c;
}

/// A sequence whose blocks come from a shared bump allocator; builds its share of a plan.
struct HandSeq {
  std::vector<int32_t> tokens;   ///< every token so far (prompt + fed)
  std::vector<int32_t> blocks;
  int cached = 0;                ///< tokens whose KV is in the cache
};

/// One step over `seqs`: each computes tokens [cached, cached + n[i]) and samples its last row.
/// Decodes (n == 1) must come first, as the scheduler orders them.
inline sched::StepPlan hand_plan(std::vector<HandSeq*> seqs, const std::vector<int>& n, int block_size,
                                 int32_t& next_block) {
  sched::StepPlan p;
  p.cu_query_lens.push_back(0);
  p.kv_indptr.push_back(0);
  for (size_t i = 0; i < seqs.size(); ++i) {
    HandSeq& s = *seqs[i];
    const int q = n[i], ctx = s.cached + q;
    while (static_cast<int>(s.blocks.size()) * block_size < ctx) s.blocks.push_back(next_block++);
    for (int j = 0; j < q; ++j) {
      const int pos = s.cached + j;
      p.token_ids.push_back(s.tokens.at(pos));
      p.positions.push_back(pos);
      p.slot_mapping.push_back(int64_t{s.blocks[pos / block_size]} * block_size + pos % block_size);
    }
    const int nb = (ctx + block_size - 1) / block_size;
    p.seq_ids.push_back(i);
    p.query_lens.push_back(q);
    p.context_lens.push_back(ctx);
    p.cu_query_lens.push_back(p.cu_query_lens.back() + q);
    for (int b = 0; b < nb; ++b) p.kv_indices.push_back(s.blocks[b]);
    p.kv_indptr.push_back(static_cast<int32_t>(p.kv_indices.size()));
    p.kv_last_page_len.push_back(ctx - (nb - 1) * block_size);
    p.sample_seqs.push_back(static_cast<int32_t>(i));
    p.logits_rows.push_back(p.cu_query_lens.back() - 1);
    p.sample_counts.push_back(1);
    if (q == 1 && p.num_decode_seqs == static_cast<int32_t>(i)) ++p.num_decode_seqs;
    s.cached = ctx;
  }
  return p;
}

/// ‖a − b‖ / ‖b‖ (NaN anywhere → +inf).
inline double rel_err(std::span<const float> a, std::span<const float> b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
    double d = double(a[i]) - double(b[i]);
    num += d * d;
    den += double(b[i]) * double(b[i]);
  }
  return std::sqrt(num / (den > 0 ? den : 1));
}

inline int argmax(std::span<const float> x) {
  int best = 0;
  for (size_t i = 1; i < x.size(); ++i) if (x[i] > x[best]) best = static_cast<int>(i);
  return best;
}

}  // namespace pie::gpu_test
