#pragma once
/// \file tp_plan.hpp
/// \brief The tensor-parallel sharding plan (Megatron-LM / vLLM layout): which rows and columns
/// of every weight rank r of N owns, and the rank-local ModelConfig its forward pass runs with.
///
/// - Q/K/V and gate/up are column-parallel: a rank owns whole attention heads (and the
///   matching slice of the intermediate features), so attention and SwiGLU need no
///   communication.
/// - o_proj and down_proj are row-parallel: a rank owns the input columns that match its heads /
///   intermediate slice and produces a partial [tokens, hidden] sum; one all-reduce per
///   projection completes it.
/// - KV heads are split when num_kv_heads ≥ N, and replicated when num_kv_heads < N: each rank
///   then holds the one KV head its query heads read (vLLM's rule; N must be a multiple of
///   num_kv_heads so that no rank's query heads straddle two KV heads).
/// - The embedding and lm_head are vocab-parallel with slices of ceil(vocab / N) rows (the last
///   slice is padded with zero rows), so every rank's slice has one shape: ids outside a rank's
///   slice embed to zero rows before an all-reduce, and the logit slices are all-gathered.
#include <algorithm>
#include <cstdint>

#include "pie/core/error.hpp"
#include "pie/model/config.hpp"

namespace pie::parallel {

/// \brief A half-open index range [begin, end).
struct Range {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  bool contains(int64_t i) const { return i >= begin && i < end; }
  friend bool operator==(const Range&, const Range&) = default;
};

/// \brief What rank `rank` of a `tp_size`-way tensor-parallel group owns.
struct TpShard {
  int tp_size = 1;
  int rank = 0;
  model::ModelConfig global;   ///< the checkpoint's config
  model::ModelConfig local;    ///< what this rank's forward runs with (heads, intermediate and
                               ///< vocab of its slice; vocab_size = the padded slice size)
  Range q_heads;               ///< global query heads of this rank
  Range kv_heads;              ///< global KV heads of this rank (shared with other ranks when
                               ///< kv_replicated)
  bool kv_replicated = false;  ///< num_key_value_heads < tp_size
  Range intermediate;          ///< global intermediate features of gate/up rows, down columns
  Range vocab;                 ///< real vocab ids of this rank (may be shorter than the slice)
  int64_t vocab_per_rank = 0;  ///< slice rows incl. padding: ceil(vocab / tp_size)

  /// Rows of q_proj / k_proj (= v_proj) owned, and columns of o_proj.
  Range q_rows() const { return {q_heads.begin * global.head_dim, q_heads.end * global.head_dim}; }
  Range kv_rows() const { return {kv_heads.begin * global.head_dim, kv_heads.end * global.head_dim}; }
};

/// Validates that `cfg` can be split `tp_size` ways; throws pie::Error saying which dimension
/// does not divide and what would.
inline void check_tp_size(const model::ModelConfig& cfg, int tp_size) {
  PIE_CHECK(tp_size >= 1, "tensor parallel size must be >= 1, got ", tp_size);
  PIE_CHECK(cfg.num_attention_heads > 0 && cfg.num_key_value_heads > 0 && cfg.head_dim > 0 &&
                cfg.hidden_size > 0 && cfg.intermediate_size > 0 && cfg.vocab_size > 0,
            "tensor parallel: config has a zero dimension (heads ", cfg.num_attention_heads,
            ", kv heads ", cfg.num_key_value_heads, ", head_dim ", cfg.head_dim, ", hidden ",
            cfg.hidden_size, ", intermediate ", cfg.intermediate_size, ", vocab ", cfg.vocab_size, ")");
  PIE_CHECK(cfg.num_attention_heads % cfg.num_key_value_heads == 0, "tensor parallel: ",
            cfg.num_attention_heads, " attention heads are not a multiple of ",
            cfg.num_key_value_heads, " KV heads");
  PIE_CHECK(cfg.num_attention_heads % tp_size == 0, "tensor parallel size ", tp_size,
            " does not divide num_attention_heads ", cfg.num_attention_heads,
            " (each rank must own whole attention heads)");
  if (cfg.num_key_value_heads >= tp_size)
    PIE_CHECK(cfg.num_key_value_heads % tp_size == 0, "tensor parallel size ", tp_size,
              " does not divide num_key_value_heads ", cfg.num_key_value_heads);
  else
    PIE_CHECK(tp_size % cfg.num_key_value_heads == 0, "tensor parallel size ", tp_size,
              " is not a multiple of num_key_value_heads ", cfg.num_key_value_heads,
              " (with fewer KV heads than ranks, each KV head is replicated on tp_size / "
              "num_key_value_heads ranks)");
  PIE_CHECK(cfg.intermediate_size % tp_size == 0, "tensor parallel size ", tp_size,
            " does not divide intermediate_size ", cfg.intermediate_size);
}

/// The shard of rank `rank` in a `tp_size`-way group for `cfg` (validated by check_tp_size).
inline TpShard make_tp_shard(const model::ModelConfig& cfg, int tp_size, int rank) {
  check_tp_size(cfg, tp_size);
  PIE_CHECK(rank >= 0 && rank < tp_size, "tensor parallel rank ", rank, " out of [0, ", tp_size, ")");
  TpShard s;
  s.tp_size = tp_size;
  s.rank = rank;
  s.global = cfg;
  const int64_t nq = cfg.num_attention_heads / tp_size;
  s.q_heads = {rank * nq, (rank + 1) * nq};
  s.kv_replicated = cfg.num_key_value_heads < tp_size;
  if (s.kv_replicated) {
    // Ranks r·nkv/N .. share KV head r·nkv/N; their query heads all map to it because N is a
    // multiple of nkv (query heads per rank nq/N divide the GQA group nq/nkv).
    const int64_t h = int64_t{rank} * cfg.num_key_value_heads / tp_size;
    s.kv_heads = {h, h + 1};
  } else {
    const int64_t nkv = cfg.num_key_value_heads / tp_size;
    s.kv_heads = {rank * nkv, (rank + 1) * nkv};
  }
  const int64_t inter = cfg.intermediate_size / tp_size;
  s.intermediate = {rank * inter, (rank + 1) * inter};
  s.vocab_per_rank = (int64_t{cfg.vocab_size} + tp_size - 1) / tp_size;
  const int64_t vb = std::min<int64_t>(rank * s.vocab_per_rank, cfg.vocab_size);
  s.vocab = {vb, std::min<int64_t>(vb + s.vocab_per_rank, cfg.vocab_size)};

  s.local = cfg;
  s.local.num_attention_heads = static_cast<int>(nq);
  s.local.num_key_value_heads = static_cast<int>(s.kv_heads.size());
  s.local.intermediate_size = static_cast<int>(inter);
  s.local.vocab_size = static_cast<int>(s.vocab_per_rank);
  // Every query head of the rank must read one of the rank's KV heads with the same GQA map
  // the unsharded model uses: local head i ↔ global head q_heads.begin + i.
  PIE_CHECK(s.q_heads.begin / cfg.gqa_group() == s.kv_heads.begin &&
                (s.q_heads.end - 1) / cfg.gqa_group() == s.kv_heads.end - 1,
            "tensor parallel: rank ", rank, " query heads [", s.q_heads.begin, ", ", s.q_heads.end,
            ") do not map onto its KV heads [", s.kv_heads.begin, ", ", s.kv_heads.end, ")");
  return s;
}

}  // namespace pie::parallel
