#pragma once
// Test support: runs one driver (a function of a Forward) on every simulated rank of a CPU
// tensor-parallel group, each rank with its own shard, KV pools and thread, and checks that all
// ranks saw the same results (they must: the CPU all-reduce hands every rank the same bits).
#include <gtest/gtest.h>

#include <functional>
#include <vector>

#include "pie/model/qwen3.hpp"
#include "pie/parallel/cpu_communicator.hpp"
#include "pie/model/shard_loader.hpp"
#include "pie/engine/cpu/cpu_model.hpp"
#include "pie/model/tp_plan.hpp"
#include "tp_harness.hpp"

namespace pie::test {

/// \brief The shards of a tp_size-way split of one model.
template <class T>
struct TpModel {
  std::vector<parallel::TpShard> plans;
  std::vector<model::Weights<T>> shards;
};

/// Rank shards read straight from the checkpoint in `dir`.
template <class T>
TpModel<T> load_tp_model(const std::string& dir, const model::ModelConfig& cfg, int tp_size) {
  TpModel<T> m;
  for (int r = 0; r < tp_size; ++r) {
    m.plans.push_back(parallel::make_tp_shard(cfg, tp_size, r));
    m.shards.push_back(parallel::load_shard_weights<T>(dir, m.plans.back(), {.progress = false}));
  }
  return m;
}

/// Rank shards cut from in-memory weights.
template <class T, class S>
TpModel<T> split_tp_model(const model::Weights<S>& full, int tp_size) {
  TpModel<T> m;
  for (int r = 0; r < tp_size; ++r) {
    m.plans.push_back(parallel::make_tp_shard(full.config, tp_size, r));
    m.shards.push_back(parallel::shard_weights<T>(full, m.plans.back()));
  }
  return m;
}

/// Runs drive(forward) on every rank of `m` at once; returns rank 0's result.
template <class KVT, class T, class Result>
Result run_tp(const TpModel<T>& m, int blocks, const std::function<Result(const Forward&)>& drive) {
  const int n = static_cast<int>(m.plans.size());
  parallel::CpuCommGroup group(n);
  std::vector<Result> results(n);
  group.run([&](parallel::CpuCommunicator& comm) {
    const int r = comm.rank();
    KvPools<KVT> kv(m.plans[r].local, blocks, kBlockSize);
    engine::cpu::CpuModel<model::AnyDecoder, T, KVT> model(m.shards[r], &m.plans[r], &comm);
    Forward f = [&](const sched::StepPlan& p, float* logits) {
      model.forward(p, kv.ptrs, kBlockSize, logits);
    };
    results[r] = drive(f);
  });
  for (int r = 1; r < n; ++r) EXPECT_TRUE(results[r] == results[0]) << "rank " << r << " diverged from rank 0";
  return results[0];
}

/// Runs drive(forward) on the unsharded model.
template <class KVT, class T, class Result>
Result run_full(const model::Weights<T>& w, int blocks, const std::function<Result(const Forward&)>& drive) {
  KvPools<KVT> kv(w.config, blocks, kBlockSize);
  engine::cpu::CpuModel<model::AnyDecoder, T, KVT> model(w);
  Forward f = [&](const sched::StepPlan& p, float* logits) { model.forward(p, kv.ptrs, kBlockSize, logits); };
  return drive(f);
}

}  // namespace pie::test
