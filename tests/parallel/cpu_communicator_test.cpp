// CpuCommunicator: the in-process collectives the CPU TP simulation runs on.
#include <gtest/gtest.h>

#include <atomic>
#include <vector>

#include "pie/core/error.hpp"
#include "pie/parallel/cpu_communicator.hpp"

namespace {
using namespace pie;
using parallel::CpuCommGroup;
using parallel::CpuCommunicator;

TEST(CpuCommunicator, AllReduceSumFp32FourRanksManyRounds) {
  CpuCommGroup g(4);
  std::vector<std::vector<float>> out(4);
  g.run([&](CpuCommunicator& c) {
    std::vector<float> x(1000);
    for (int round = 0; round < 50; ++round) {  // buffer reuse across rounds must be safe
      for (int i = 0; i < 1000; ++i) x[i] = float(c.rank() + 1) * i + round;
      c.all_reduce_sum(x.data(), x.size());
      for (int i = 0; i < 1000; ++i) ASSERT_EQ(x[i], 10.0f * i + 4 * round) << "round " << round;
    }
    out[c.rank()] = x;
  });
  for (int r = 1; r < 4; ++r) EXPECT_EQ(out[r], out[0]);
}

TEST(CpuCommunicator, AllReduceBf16) {
  CpuCommGroup g(2);
  g.run([&](CpuCommunicator& c) {
    std::vector<bf16> x = {from_float<bf16>(1.5f), from_float<bf16>(-2.0f)};
    c.all_reduce_sum(x.data(), x.size(), DType::BF16);
    EXPECT_EQ(to_float(x[0]), 3.0f);
    EXPECT_EQ(to_float(x[1]), -4.0f);
  });
}

TEST(CpuCommunicator, AllGatherIsRankMajor) {
  CpuCommGroup g(3);
  g.run([&](CpuCommunicator& c) {
    std::vector<float> send = {float(c.rank()), float(10 * c.rank())}, recv(6, -1);
    c.all_gather(send.data(), recv.data(), 2);
    EXPECT_EQ(recv, (std::vector<float>{0, 0, 1, 10, 2, 20}));
  });
}

TEST(CpuCommunicator, CountMismatchIsAnError) {
  CpuCommGroup g(2);
  std::vector<float> a(4), b(5);
  EXPECT_THROW(g.run([&](CpuCommunicator& c) {
    if (c.rank() == 0) c.all_reduce_sum(a.data(), a.size());
    else c.all_reduce_sum(b.data(), b.size());
  }), Error);
}

// A rank that fails must not leave the others blocked in a collective forever.
TEST(CpuCommunicator, FailingRankAbortsTheGroup) {
  CpuCommGroup g(3);
  std::atomic<int> reached{0};
  EXPECT_THROW(g.run([&](CpuCommunicator& c) {
    if (c.rank() == 1) PIE_FAIL("rank 1 fails before the collective");
    float x = 1;
    ++reached;
    c.all_reduce_sum(&x, 1);
  }), Error);
  EXPECT_LE(reached.load(), 2);
}

}  // namespace
