// vLLM's batch defaults by card and entry point (sched/batch_defaults.hpp), at the card sizes and
// names the CUDA runtime reports for the cards pie is measured on and the ones vLLM singles out.
#include <gtest/gtest.h>

#include "pie/sched/batch_defaults.hpp"

namespace pie::sched {
namespace {

constexpr size_t MiB = size_t{1} << 20;

TEST(BatchDefaults, H100And200TakeTheLargeDefaults) {
  const size_t h100 = 81559 * MiB, h200 = 143771 * MiB;  // totalGlobalMem of an H100 80GB HBM3, an H200
  for (auto [mem, name] : {std::pair{h100, "NVIDIA H100 80GB HBM3"}, std::pair{h200, "NVIDIA H200"}}) {
    const BatchDefaults off = batch_defaults(EntryPoint::kOffline, mem, name);
    EXPECT_EQ(off.max_num_seqs, 1024) << name;
    EXPECT_EQ(off.max_num_batched_tokens, 16384) << name;
    const BatchDefaults srv = batch_defaults(EntryPoint::kServer, mem, name);
    EXPECT_EQ(srv.max_num_seqs, 1024) << name;
    EXPECT_EQ(srv.max_num_batched_tokens, 8192) << name;
  }
}

TEST(BatchDefaults, A100KeepsTheSmallDefaultsWhateverItsMemory) {
  for (const char* name : {"NVIDIA A100-SXM4-80GB", "nvidia a100 80gb pcie"}) {
    const BatchDefaults off = batch_defaults(EntryPoint::kOffline, 81920 * MiB, name);
    EXPECT_EQ(off.max_num_seqs, 256) << name;
    EXPECT_EQ(off.max_num_batched_tokens, 8192) << name;
    const BatchDefaults srv = batch_defaults(EntryPoint::kServer, 81920 * MiB, name);
    EXPECT_EQ(srv.max_num_seqs, 256) << name;
    EXPECT_EQ(srv.max_num_batched_tokens, 2048) << name;
  }
}

TEST(BatchDefaults, CardsBelow70GiBTakeTheSmallDefaults) {
  const size_t just_below = (size_t{70} << 30) - 1;
  EXPECT_EQ(batch_defaults(EntryPoint::kOffline, just_below, "NVIDIA L40S").max_num_seqs, 256);
  EXPECT_EQ(batch_defaults(EntryPoint::kServer, 24 * 1024 * MiB, "NVIDIA L4").max_num_batched_tokens, 2048);
  // The boundary itself counts as large (vLLM's `>=`).
  EXPECT_EQ(batch_defaults(EntryPoint::kOffline, size_t{70} << 30, "NVIDIA H100 NVL").max_num_seqs, 1024);
}

TEST(BatchDefaults, NoGpuKeepsPiesCpuDefaults) {
  for (EntryPoint e : {EntryPoint::kOffline, EntryPoint::kServer}) {
    const BatchDefaults d = batch_defaults(e, 0, "");
    EXPECT_EQ(d.max_num_seqs, 256);
    EXPECT_EQ(d.max_num_batched_tokens, 8192);
  }
}

}  // namespace
}  // namespace pie::sched
