// Tensor parallelism over NCCL on two GPUs (label cuda). Skips when fewer than two GPUs are
// visible. NCCL_NVLS_ENABLE=0 is forced by NcclCommunicator before every init.
//  - NcclCommunicator's all-reduce (fp32, bf16) and all-gather on device buffers.
//  - TP=2 vs TP=1 greedy agreement on a small random Qwen3: each rank's shard runs CpuModel
//    (the CPU forward) on its own thread, and every all-reduce / all-gather of the forward goes
//    through NCCL between GPU 0 and GPU 1 (host buffers staged to the rank's device). This
//    checks the NCCL path end to end with the same forward the CPU simulation checks; the GPU
//    runner's own TP test is test_tp_engine_cuda.cu.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "pie/model/dummy.hpp"
#include "pie/model/embedded.hpp"
#include "pie/parallel/nccl_communicator.cuh"
#include "tp_runner.hpp"

namespace {
using namespace pie;
using parallel::NcclCommunicator;

int visible_gpus() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

#define SKIP_UNLESS_TWO_GPUS()                                                       \
  if (visible_gpus() < 2) GTEST_SKIP() << "needs 2 GPUs, " << visible_gpus() << " visible"

/// Runs fn(rank) on one thread per rank (NCCL init blocks until every rank joins); rethrows
/// the first failure.
void on_ranks(int n, const std::function<void(int)>& fn) {
  std::exception_ptr first;
  std::mutex mu;
  std::vector<std::thread> ts;
  for (int r = 0; r < n; ++r)
    ts.emplace_back([&, r] {
      try { fn(r); } catch (...) { std::lock_guard<std::mutex> l(mu); if (!first) first = std::current_exception(); }
    });
  for (auto& t : ts) t.join();
  if (first) std::rethrow_exception(first);
}

/// \brief A host-memory Communicator over an NcclCommunicator: copies the host buffer to the
/// rank's device, runs the NCCL collective there, and copies the result back.
class HostStagedNccl final : public parallel::Communicator {
 public:
  explicit HostStagedNccl(NcclCommunicator& c) : c_(c) {}
  ~HostStagedNccl() override { if (buf_) cudaFree(buf_); }
  int rank() const override { return c_.rank(); }
  int size() const override { return c_.size(); }
  bool device_memory() const override { return false; }
  void all_reduce_sum(void* data, size_t count, DType dt) override {
    const size_t bytes = count * dtype_size(dt);
    reserve(bytes);
    PIE_CUDA_CHECK(cudaMemcpyAsync(buf_, data, bytes, cudaMemcpyHostToDevice, c_.stream()));
    c_.all_reduce_sum(buf_, count, dt);
    PIE_CUDA_CHECK(cudaMemcpyAsync(data, buf_, bytes, cudaMemcpyDeviceToHost, c_.stream()));
    c_.synchronize();
  }
  void all_gather(const void* send, void* recv, size_t count, DType dt) override {
    const size_t bytes = count * dtype_size(dt);
    reserve(bytes * (size() + 1));
    char* in = static_cast<char*>(buf_) + bytes * size();
    PIE_CUDA_CHECK(cudaMemcpyAsync(in, send, bytes, cudaMemcpyHostToDevice, c_.stream()));
    c_.all_gather(in, buf_, count, dt);
    PIE_CUDA_CHECK(cudaMemcpyAsync(recv, buf_, bytes * size(), cudaMemcpyDeviceToHost, c_.stream()));
    c_.synchronize();
  }

 private:
  void reserve(size_t bytes) {
    if (bytes <= cap_) return;
    if (buf_) PIE_CUDA_CHECK(cudaFree(buf_));
    PIE_CUDA_CHECK(cudaMalloc(&buf_, bytes));
    cap_ = bytes;
  }
  NcclCommunicator& c_;
  void* buf_ = nullptr;
  size_t cap_ = 0;
};

TEST(NcclCommunicator, AllReduceFp32Bf16AndAllGatherTwoGpus) {
  SKIP_UNLESS_TWO_GPUS();
  const ncclUniqueId id = parallel::nccl_unique_id();
  on_ranks(2, [&](int r) {
    NcclCommunicator c(2, r, id, r);
    const int n = 4096;
    std::vector<float> h(n);
    for (int i = 0; i < n; ++i) h[i] = float(r + 1) * (i % 97);
    float* d = nullptr;
    PIE_CUDA_CHECK(cudaMalloc(&d, 3 * n * sizeof(float)));
    PIE_CUDA_CHECK(cudaMemcpy(d, h.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    c.all_reduce_sum(d, n);
    c.synchronize();
    PIE_CUDA_CHECK(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i) ASSERT_EQ(h[i], 3.0f * (i % 97)) << "rank " << r << " i " << i;

    std::vector<bf16> hb(n);
    for (int i = 0; i < n; ++i) hb[i] = from_float<bf16>(r ? 0.5f : -2.0f);
    PIE_CUDA_CHECK(cudaMemcpy(d, hb.data(), n * sizeof(bf16), cudaMemcpyHostToDevice));
    c.all_reduce_sum(d, n, DType::BF16);
    c.synchronize();
    PIE_CUDA_CHECK(cudaMemcpy(hb.data(), d, n * sizeof(bf16), cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; ++i) ASSERT_EQ(to_float(hb[i]), -1.5f);

    std::vector<float> send(n, float(r + 1)), got(2 * n);
    PIE_CUDA_CHECK(cudaMemcpy(d + 2 * n, send.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    c.all_gather(d + 2 * n, d, n);  // send and recv disjoint
    c.synchronize();
    PIE_CUDA_CHECK(cudaMemcpy(got.data(), d, 2 * n * sizeof(float), cudaMemcpyDeviceToHost));
    for (int i = 0; i < 2 * n; ++i) ASSERT_EQ(got[i], i < n ? 1.0f : 2.0f) << i;
    cudaFree(d);
  });
}

// TP=2 over NCCL vs TP=1, greedy, 32 steps, 4 prompts batched, small random Qwen3 (fp32).
TEST(TensorParallelNccl, Tp2GreedyAgreesWithTp1RandomModel) {
  SKIP_UNLESS_TWO_GPUS();
  model::ModelConfig c = model::embedded_config();
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  c.intermediate_size = 256;
  auto full = model::dummy_weights<float>(c, 11);
  auto sharded = test::split_tp_model<float>(full, 2);
  std::vector<std::vector<int32_t>> prompts = {{1, 2, 3}, {100, 7, 300, 42, 9, 11, 500, 17, 23},
                                               {5}, {250, 251, 252, 253, 254, 255, 256, 257, 258, 259, 260,
                                                     261, 262, 263, 264, 265, 266, 267, 268}};
  const int steps = 32, blocks = test::blocks_needed(4, 19 + steps);
  auto drive = [&](const test::Forward& f) { return test::greedy(f, prompts, steps, c.vocab_size); };
  auto tp1 = test::run_full<float>(full, blocks, std::function<std::vector<std::vector<int32_t>>(const test::Forward&)>(drive));
  std::vector<std::vector<std::vector<int32_t>>> tp2(2);
  const ncclUniqueId id = parallel::nccl_unique_id();
  on_ranks(2, [&](int r) {
    NcclCommunicator nccl(2, r, id, r);
    HostStagedNccl comm(nccl);
    test::KvPools<float> kv(sharded.plans[r].local, blocks, test::kBlockSize);
    engine::cpu::CpuModel<model::AnyDecoder, float, float> m(sharded.shards[r], &sharded.plans[r], &comm);
    tp2[r] = drive([&](const sched::StepPlan& p, float* logits) { m.forward(p, kv.ptrs, test::kBlockSize, logits); });
  });
  EXPECT_EQ(tp2[0], tp2[1]) << "ranks diverged";
  int same = 0, total = 0;
  for (size_t i = 0; i < prompts.size(); ++i)
    for (int t = 0; t < steps; ++t) { same += tp2[0][i][t] == tp1[i][t]; ++total; }
  std::printf("TP=2 (NCCL) vs TP=1 greedy agreement: %d / %d\n", same, total);
  EXPECT_GE(same * 100, total * 99);
}

}  // namespace
