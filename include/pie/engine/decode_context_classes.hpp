#pragma once
/// \file decode_context_classes.hpp
/// \brief Context classes of the decode CUDA graphs (issues 14, 15): the host side. A graph bakes
/// in its decode-attention plan (ops/cuda/attention_decode_plan.hpp), and a plan made for
/// max_model_len (40,960 for Qwen3-8B) is slow on the few hundred tokens of real contexts: each
/// (sequence, KV head) gets many splits of many tokens, the first CTA streams the whole context
/// alone while the others are empty, and the merge reads them all. So the CUDA runner captures,
/// per batch bucket, one graph per context class (a bound, planned for that bound) and a
/// pure-decode step replays the graph of the smallest bound ≥ its longest context.
///
/// The ladder comes from the decode cost model: candidate bounds are kMinDecodeContextClass·4^k
/// below max_model_len, and max_model_len; walking down from max_model_len, a candidate is kept
/// only where the plan of the next kept bound above, priced at the candidate's bound
/// (decode_plan_cost_us), costs more than kDecodeClassGain times the candidate's own plan.
/// Classes whose plans launch the same work (wide batches: one split per pair at every bound)
/// thus share one graph, and the graph count stays near the bucket count there.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/engine/fusion_switches.hpp"  // env_switch

namespace pie::engine {

/// Smallest context class: below it a plan's splits are a few 64-token pieces, and a graph more
/// would buy less than its capture.
inline constexpr int kMinDecodeContextClass = 512;
/// A class is worth its graph when the next larger class's plan costs this much more at its bound.
inline constexpr double kDecodeClassGain = 1.10;
/// Ratio of consecutive candidate bounds.
inline constexpr int kDecodeContextClassStep = 4;

/// \brief The context bounds of one batch bucket's decode graphs, ascending; the last is
/// max_model_len. `plan(bound)`: the decode plan of the bucket for contexts ≤ bound (the CUDA
/// runner's ops::cuda::DecodePlan; any copyable type here, so this header stays host-only);
/// `cost(plan, context)`: its modelled time at that context (ops::cuda::decode_plan_cost_us).
template <class PlanFn, class CostFn>
std::vector<int> decode_context_ladder(int max_model_len, const PlanFn& plan, const CostFn& cost) {
  PIE_CHECK(max_model_len >= 1, "decode_context_ladder: max_model_len must be positive (got ", max_model_len, ")");
  std::vector<int> cand;
  for (int64_t c = kMinDecodeContextClass; c < max_model_len; c *= kDecodeContextClassStep)
    cand.push_back(static_cast<int>(c));
  std::vector<int> kept{max_model_len};
  auto above = plan(max_model_len);
  for (auto it = cand.rbegin(); it != cand.rend(); ++it) {
    auto own = plan(*it);
    if (cost(above, *it) > kDecodeClassGain * cost(own, *it)) {
      kept.push_back(*it);
      above = std::move(own);
    }
  }
  std::reverse(kept.begin(), kept.end());
  return kept;
}

/// \brief The context classes of every batch bucket (see the file comment). Empty: one class
/// (max_model_len) per bucket, the graphs of old.
class DecodeContextClasses {
 public:
  DecodeContextClasses() = default;
  /// The ladder of each bucket in `buckets`; `plan(bucket, bound)` and `cost` as in
  /// decode_context_ladder.
  template <class PlanFn, class CostFn>
  DecodeContextClasses(const std::vector<int>& buckets, int max_model_len, const PlanFn& plan, const CostFn& cost)
      : max_model_len_(max_model_len) {
    for (int b : buckets)
      bounds_[b] = decode_context_ladder(max_model_len, [&](int bound) { return plan(b, bound); }, cost);
  }

  bool empty() const { return bounds_.empty(); }
  /// The bounds of `bucket`'s graphs, ascending (just max_model_len when it has no classes;
  /// none for a default-constructed ladder, the runner's when the classes are off).
  std::vector<int> bounds(int bucket) const {
    if (max_model_len_ == 0) return {};
    auto it = bounds_.find(bucket);
    return it == bounds_.end() ? std::vector<int>{max_model_len_} : it->second;
  }
  /// The bound of the graph a decode step of `bucket` replays when its longest context is
  /// `max_context`: the smallest bound ≥ it (max_model_len for a bucket without classes).
  int bound_for(int bucket, int max_context) const {
    auto it = bounds_.find(bucket);
    if (it == bounds_.end()) return max_model_len_;
    auto b = std::lower_bound(it->second.begin(), it->second.end(), max_context);
    PIE_CHECK(b != it->second.end(), "DecodeContextClasses: context ", max_context, " exceeds max_model_len ",
              max_model_len_);
    return *b;
  }
  /// Graphs over every bucket and class (one per bucket without classes).
  size_t graphs() const {
    size_t n = 0;
    for (const auto& [b, v] : bounds_) n += v.size();
    return n;
  }
  /// The distinct bounds below max_model_len over every bucket, ascending.
  std::vector<int> lower_bounds() const {
    std::vector<int> all;
    for (const auto& [b, v] : bounds_)
      for (int x : v)
        if (x < max_model_len_) all.push_back(x);
    std::sort(all.begin(), all.end());
    all.erase(std::unique(all.begin(), all.end()), all.end());
    return all;
  }

 private:
  int max_model_len_ = 0;
  std::map<int, std::vector<int>> bounds_;
};

/// \brief `PIE_DECODE_GRAPH_CONTEXTS`: unset, empty or `1` keeps decode graphs per context class
/// (the default since 2026-12-05: −7.2% batch-1 ITL at max_model_len 40960 on an H100, tests
/// passed on the GPU); `0` keeps one class (max_model_len) per bucket; anything else is an error.
inline bool decode_graph_contexts_from_env(const char* v) {
  return env_switch("PIE_DECODE_GRAPH_CONTEXTS", v, /*unset=*/true);
}

}  // namespace pie::engine
