// The MoE experts through the CUTLASS grouped GEMM path (ops/cuda/moe_cutlass.cuh, built with
// -DPIE_MOE_CUTLASS=ON) against the CPU op (ops/cpu/moe.hpp) over the GPU's routing, and against
// the default mma path where the CPU reference would take too long: at the tiny fixtures' shape,
// widths that are not tile multiples, and Qwen3-30B-A3B's; ragged groups (empty experts, one
// expert with every token, groups past one 64-row tile with a tail); the other tile shapes the
// kernel bench times (64×256 pingpong, 128×128 cooperative); and the routing + experts
// captured in a CUDA graph, replayed over new routing and inputs (equal to eager, bit for bit).
#include <gtest/gtest.h>

#include <cstring>

#include "moe_test_data.hpp"
#include "pie/ops/cuda/moe.cuh"
#include "pie/ops/cuda/moe_cutlass.cuh"
#include "test_util.hpp"

namespace {
using namespace pie;
using namespace pie::test;
using namespace pie::test::moe;
using ops::cuda::MoeCutlass;
using ops::cuda::MoeWorkspace;

struct Views {
  TensorView<bf16> x, gu, dn, out;
};
Views views(const Shape& s, ExpertsData& d) {
  return {d.dx.view({s.n, s.hidden}), d.dgu.view({s.experts, 2 * s.inter, s.hidden}),
          d.ddown.view({s.experts, s.hidden, s.inter}), d.dout.view({s.n, s.hidden})};
}

template <int TileN, int TileM>
void run_cutlass(const Shape& s, ExpertsData& d, MoeWorkspace<bf16>& ws, MoeCutlass<bf16, TileN, TileM>& path,
                 cudaStream_t st) {
  ops::cuda::moe_route(s.n, s.norm, ws, st);
  const Views v = views(s, d);
  ops::cuda::moe_experts_cutlass(v.x, v.gu, v.dn, ws, path, v.out, st);
}

void run_mma(const Shape& s, ExpertsData& d, MoeWorkspace<bf16>& ws, cudaStream_t st) {
  ops::cuda::moe_route(s.n, s.norm, ws, st);
  const Views v = views(s, d);
  ops::cuda::moe_experts(v.x, v.gu, v.dn, ws, v.out, false, st);
}

std::string name(const Shape& s) {
  return "n " + std::to_string(s.n) + " H " + std::to_string(s.hidden) + " E " + std::to_string(s.experts) + " I " +
         std::to_string(s.inter) + " k " + std::to_string(s.top_k);
}

void upload_logits(MoeWorkspace<bf16>& ws, const std::vector<float>& logits) {
  PIE_CUDA_CHECK(cudaMemcpy(ws.logits(), logits.data(), logits.size() * 4, cudaMemcpyHostToDevice));
}

/// One case: the CUTLASS path against the CPU op (cpu = true) and against the mma path, over the
/// same routing; outputs and the workspace's act/y poisoned first. TileN: the tile width.
template <int TileN = ops::cuda::kMoeCutlassTileN, int TileM = ops::cuda::kMoeCutlassTileM>
void check_case(const Shape& s, ExpertsData& d, bool cpu) {
  MoeWorkspace<bf16> ws(s.n, s.experts, s.top_k, s.hidden, s.inter);
  MoeCutlass<bf16, TileN, TileM> path(ws, s.n);
  upload_logits(ws, d.logits);
  poison(d.dout);
  PIE_CUDA_CHECK(cudaMemset(ws.act(), 0xff, size_t(s.n) * s.top_k * s.inter * 2));
  PIE_CUDA_CHECK(cudaMemset(ws.y(), 0xff, size_t(s.n) * s.top_k * s.hidden * 2));
  run_cutlass(s, d, ws, path, nullptr);
  PIE_CUDA_CHECK(cudaDeviceSynchronize());
  const auto got = download(d.dout);
  if (cpu) {
    const double err = rel_err(got, cpu_experts(s, d, ws));
    EXPECT_LT(err, tol<bf16>()) << "against the CPU op";
    EXPECT_GT(err, 0.0);  // bf16 rounding of h, act and y: an exact match would mean no GPU run
  }
  poison(d.dout);
  run_mma(s, d, ws, nullptr);
  PIE_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_LT(rel_err(got, to_f32(download(d.dout))), tol<bf16>()) << "against the mma path";
}

TEST(MoeCutlass, MatchesCpuAndMma) {
  std::mt19937 rng(21);
  // The tiny fixtures' shape (K = 32 < one 64-wide K stage), widths that are not tile multiples
  // (I = 40, H = 72), Qwen3-30B-A3B's at 100 and 256 tokens (CPU reference) and at 1024 tokens,
  // 8192 grouped rows, ~64 per expert (the benchmark's batch; against the mma path only).
  for (Shape s : {Shape{50, 64, 8, 32, 4, true}, Shape{200, 72, 6, 40, 3, false}, Shape{9, 64, 32, 32, 12, true},
                  Shape{100, 2048, 128, 768, 8, true}, Shape{256, 2048, 128, 768, 8, true}}) {
    SCOPED_TRACE(name(s));
    ExpertsData d = make_data(s, rng);
    check_case(s, d, true);
  }
  const Shape big{1024, 2048, 128, 768, 8, true};
  SCOPED_TRACE(name(big));
  ExpertsData d = make_data(big, rng);
  check_case(big, d, false);
}

/// Routing logits that send every token to experts [first, first + k) in a random order among
/// them: those experts get all n rows, every other expert none.
std::vector<float> concentrated_logits(int n, int E, int k, int first, std::mt19937& rng) {
  std::vector<float> l(size_t(n) * E, -8.f);
  std::uniform_real_distribution<float> u(0.f, 4.f);
  for (int t = 0; t < n; ++t)
    for (int j = 0; j < k; ++j) l[size_t(t) * E + first + j] = 4.f + u(rng);
  return l;
}

TEST(MoeCutlass, RaggedGroups) {
  std::mt19937 rng(22);
  {  // one expert with every token (top-1), all others empty; 150 rows: two full 64-row tiles and a tail
    const Shape s{150, 256, 16, 128, 1, true};
    SCOPED_TRACE("all rows to expert 5");
    ExpertsData d = make_data(s, rng);
    d.logits = concentrated_logits(s.n, s.experts, 1, 5, rng);
    check_case(s, d, true);
  }
  {  // top-4 into the last 4 of 16 experts: 12 empty groups before them, 4 groups of 130 rows
    const Shape s{130, 256, 16, 128, 4, false};
    SCOPED_TRACE("4 of 16 experts");
    ExpertsData d = make_data(s, rng);
    d.logits = concentrated_logits(s.n, s.experts, 4, 12, rng);
    check_case(s, d, true);
  }
  {  // random routing with half the experts masked off: empty groups between ragged ones
    const Shape s{97, 2048, 128, 768, 8, true};
    SCOPED_TRACE("64 of 128 experts, 30B widths");
    ExpertsData d = make_data(s, rng);
    for (int t = 0; t < s.n; ++t)
      for (int e = 1; e < s.experts; e += 2) d.logits[size_t(t) * s.experts + e] = -30.f;
    check_case(s, d, true);
  }
  {  // one token: the smallest call (below the switch's threshold, but the path must hold)
    const Shape s{1, 2048, 128, 768, 8, true};
    SCOPED_TRACE("one token");
    ExpertsData d = make_data(s, rng);
    check_case(s, d, true);
  }
}

// The tiles the kernel bench also times (so that the engine can switch to them once measured),
// 64×256 pingpong and 128×128 cooperative: ragged groups and the 30B shape.
TEST(MoeCutlass, OtherTilesMatchCpu) {
  std::mt19937 rng(24);
  {
    const Shape s{150, 256, 16, 128, 1, true};
    SCOPED_TRACE("all rows to expert 5");
    ExpertsData d = make_data(s, rng);
    d.logits = concentrated_logits(s.n, s.experts, 1, 5, rng);
    check_case<256>(s, d, true);
    check_case<128, 128>(s, d, true);
  }
  for (Shape s : {Shape{200, 72, 6, 40, 3, false}, Shape{256, 2048, 128, 768, 8, true}}) {
    SCOPED_TRACE(name(s));
    ExpertsData d = make_data(s, rng);
    check_case<256>(s, d, true);
    check_case<128, 128>(s, d, true);
  }
}

// Routing and experts captured once, replayed over new logits and x (new group sizes each time):
// the CPU op's result, and eager's bits.
TEST(MoeCutlass, GraphReplayWithNewRouting) {
  std::mt19937 rng(23);
  for (Shape s : {Shape{96, 256, 16, 128, 4, true}, Shape{100, 2048, 128, 768, 8, true}}) {
    SCOPED_TRACE(name(s));
    ExpertsData d = make_data(s, rng);
    MoeWorkspace<bf16> ws(s.n, s.experts, s.top_k, s.hidden, s.inter);
    MoeCutlass<bf16> path(ws, s.n);  // set up before the capture, as CudaForward does
    cudaStream_t st;
    PIE_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    PIE_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    run_cutlass(s, d, ws, path, st);
    PIE_CUDA_CHECK(cudaStreamEndCapture(st, &g));
    PIE_CUDA_CHECK(cudaGraphInstantiate(&ge, g, 0));
    for (int rep = 0; rep < 3; ++rep) {
      d.x = randn<bf16>(d.x.size(), rng);
      PIE_CUDA_CHECK(cudaMemcpy(d.dx.data(), d.x.data(), d.x.size() * 2, cudaMemcpyHostToDevice));
      d.logits = rep == 1 ? concentrated_logits(s.n, s.experts, s.top_k, 3, rng)
                          : randn<float>(d.logits.size(), rng, 2.f);
      upload_logits(ws, d.logits);
      poison(d.dout);
      PIE_CUDA_CHECK(cudaDeviceSynchronize());  // the copies above ran on the legacy stream
      PIE_CUDA_CHECK(cudaGraphLaunch(ge, st));
      PIE_CUDA_CHECK(cudaStreamSynchronize(st));
      auto graph_out = download(d.dout);
      EXPECT_LT(rel_err(graph_out, cpu_experts(s, d, ws)), tol<bf16>()) << "replay " << rep;
      poison(d.dout);
      PIE_CUDA_CHECK(cudaDeviceSynchronize());
      run_cutlass(s, d, ws, path, st);
      PIE_CUDA_CHECK(cudaStreamSynchronize(st));
      auto eager = download(d.dout);
      EXPECT_EQ(0, std::memcmp(eager.data(), graph_out.data(), eager.size() * 2)) << "replay " << rep;
    }
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    cudaStreamDestroy(st);
  }
}

}  // namespace
