#pragma once
// Test support: StepPlans built by hand (no scheduler), so the forward pass can be driven with
// exactly the chunking and block tables a test wants.
#include <cstdint>
#include <vector>

#include "pie/sched/step_plan.hpp"

namespace pie::test {

/// One sequence's share of a step: its block table, how many of its tokens are already in the
/// cache, and the tokens computed now (the last one samples when `sample`).
struct SeqWork {
  std::vector<int32_t> blocks;
  int cached = 0;
  std::vector<int32_t> tokens;
  bool sample = true;
};

inline sched::StepPlan make_plan(const std::vector<SeqWork>& seqs, int block_size) {
  sched::StepPlan p;
  p.cu_query_lens.push_back(0);
  p.kv_indptr.push_back(0);
  for (size_t i = 0; i < seqs.size(); ++i) {
    const SeqWork& s = seqs[i];
    const int q = static_cast<int>(s.tokens.size()), ctx = s.cached + q;
    for (int j = 0; j < q; ++j) {
      const int pos = s.cached + j;
      p.token_ids.push_back(s.tokens[j]);
      p.positions.push_back(pos);
      p.slot_mapping.push_back(int64_t{s.blocks.at(pos / block_size)} * block_size + pos % block_size);
    }
    const int nb = (ctx + block_size - 1) / block_size;
    p.seq_ids.push_back(i);
    p.query_lens.push_back(q);
    p.context_lens.push_back(ctx);
    p.cu_query_lens.push_back(p.cu_query_lens.back() + q);
    for (int b = 0; b < nb; ++b) p.kv_indices.push_back(s.blocks.at(b));
    p.kv_indptr.push_back(static_cast<int32_t>(p.kv_indices.size()));
    p.kv_last_page_len.push_back(ctx - (nb - 1) * block_size);
    if (s.sample) {
      p.sample_seqs.push_back(static_cast<int32_t>(i));
      p.logits_rows.push_back(p.cu_query_lens.back() - 1);
      p.sample_counts.push_back(1);
    }
  }
  return p;
}

}  // namespace pie::test
