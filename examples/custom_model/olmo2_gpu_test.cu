// OLMo-2 (olmo2.hpp) on the GPU (label cuda): the engine's CUDA runner against the same model's
// CPU forward on the same bf16 weights (float KV), over a prefill and graph-replayed decodes —
// the bf16 tolerances of the Qwen3 GPU tests — and its greedy continuation against transformers.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <memory>
#include <vector>

#include "gpu_test_util.hpp"
#include "olmo2.hpp"
#include "pie/engine/cpu/cpu_model.hpp"
#include "pie/engine/cuda/cuda_runner.cuh"
#include "pie/engine/engine.hpp"

namespace {
using namespace pie;
using example::Olmo2;

const std::string kDir = std::string(PIE_SOURCE_DIR) + "/examples/custom_model/fixture/olmo2_tiny";

TEST(Olmo2Gpu, MatchesCpuForwardBf16OverPrefillAndGraphDecodes) {
  const auto cfg = Olmo2::load_config(kDir);
  auto hw = std::make_shared<const Olmo2::Weights<bf16>>(Olmo2::load<bf16>(kDir, cfg, {}));
  EngineOptions o;
  o.sched.max_num_seqs = 8;
  o.sched.max_num_batched_tokens = 256;
  o.sched.max_model_len = 512;
  o.num_kv_blocks = 64;
  o.swap_space_gib = 0.01;
  o.log = false;
  o.set_weights(hw);
  Engine<Olmo2, CudaBf16> gpu(o);
  auto& runner = gpu.runner();
  constexpr int bs = CudaBf16::block_size;
  engine::cpu::CpuModel<Olmo2, bf16, float> cpu(*hw);
  std::vector<std::vector<float>> pools(cfg.num_hidden_layers, std::vector<float>(size_t(64) * 2 * cfg.kv_size() * bs));
  std::vector<float*> ptrs;
  for (auto& p : pools) ptrs.push_back(p.data());
  gpu_test::HandSeq a{{3, 17, 99, 4, 250, 7, 7, 31, 64, 128, 5}}, b{{200, 201, 202, 9}};
  int32_t next = 0;
  double worst = 0;
  int agree = 0, rows = 0;
  const size_t V = cfg.vocab_size;
  for (int step = 0; step < 12; ++step) {
    auto plan = gpu_test::hand_plan({&a, &b}, {step == 0 ? 11 : 1, step == 0 ? 4 : 1}, bs, next);
    auto g = runner.execute_logits(plan, std::vector<engine::SampleSpec>(2));
    std::vector<float> gl(g.begin(), g.end()), cl(plan.logits_rows.size() * V);
    cpu.forward(plan, ptrs, bs, cl.data());
    worst = std::max(worst, gpu_test::rel_err(gl, cl));
    auto ids = runner.last_ids();
    for (int r = 0; r < 2; ++r, ++rows) {
      std::span<const float> cr(cl.data() + r * V, V), gr(gl.data() + r * V, V);
      agree += gpu_test::argmax(cr) == gpu_test::argmax(gr);
    }
    a.tokens.push_back(ids[0]);
    b.tokens.push_back(ids[1]);
  }
  std::printf("[olmo2 gpu vs cpu] worst logits rel err %.3g, greedy agreement %d/%d\n", worst, agree, rows);
  EXPECT_LE(worst, 2e-2);
  EXPECT_GE(double(agree) / rows, 0.9);
  EXPECT_GT(runner.stats().graph_steps, 0);
}

}  // namespace
