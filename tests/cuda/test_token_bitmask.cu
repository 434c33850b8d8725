// The GPU token bitmask against the CPU's (sched::apply_token_bitmask) on random logits and
// masks: vocabularies that are and are not multiples of 32 (151,936 is Qwen3's), all-allowed and
// all-forbidden words, and unflagged rows left bit-identical.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "pie/ops/cuda/token_bitmask.cuh"
#include "pie/sched/logits_processor.hpp"
#include "test_util.hpp"

namespace {
using namespace pie;
using namespace pie::test;

TEST(TokenBitmaskCuda, MatchesTheCpuOnRandomInputs) {
  std::mt19937 rng(3);
  for (int vocab : {1, 33, 512, 1000, 151936}) {
    const int rows = 7, words = sched::bitmask_words(vocab);
    std::vector<float> logits(static_cast<size_t>(rows) * vocab);
    std::normal_distribution<float> nd;
    for (auto& x : logits) x = nd(rng);
    std::vector<int32_t> masks(static_cast<size_t>(rows) * words), flags(rows);
    for (int r = 0; r < rows; ++r) {
      flags[r] = r % 3 != 1;  // rows 1 and 4 unconstrained
      for (int w = 0; w < words; ++w)
        masks[static_cast<size_t>(r) * words + w] = r == 2 ? -1 : r == 5 ? 0 : static_cast<int32_t>(rng());
    }
    std::vector<float> want = logits;
    for (int r = 0; r < rows; ++r)
      if (flags[r])
        sched::apply_token_bitmask(std::span<float>(want.data() + static_cast<size_t>(r) * vocab, vocab),
                                   std::span<const int32_t>(masks.data() + static_cast<size_t>(r) * words, words));
    auto d_logits = upload(logits);
    auto d_masks = upload(masks);
    auto d_flags = upload(flags);
    ops::cuda::apply_token_bitmask(d_logits.data(), rows, vocab, d_masks.data(), d_flags.data());
    PIE_CUDA_CHECK(cudaDeviceSynchronize());
    const auto got = download(d_logits);
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(std::memcmp(&got[i], &want[i], sizeof(float)), 0) << "vocab " << vocab << " index " << i;
  }
}

}  // namespace
