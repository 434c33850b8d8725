// The MoE block's kernels (ops/cuda/moe.cuh) against the CPU op (ops/cpu/moe.hpp) on random
// inputs: the routing (ids and weights as moe_route computes them, the expert-grouped order and
// its offsets, counters reset between calls), the experts through the grouped GEMV and the
// grouped tensor-core path at the tiny fixtures' and Qwen3-30B-A3B's shapes and at widths that
// are not multiples of the tiles, the routing + experts replayed from a CUDA graph with new
// inputs, and the mma path's row invariance (a token's output bits do not depend on its batch);
// and Qwen3-MoE's dummy weights generated on the device equal the host's bit for bit. The fused
// decode kernels (moe_decode.cuh): router + routing and down + un-permute give the unfused
// path's bits (gemv() + moe_route; gemv down + moe_unpermute) and agree with the CPU op, eager
// and replayed from a graph. The one-CTA routing (moe_route's one_cta) against the atomic
// kernel, and the engine's PIE_MOE_ROUTE / PIE_MOE_DECODE=waves / PIE_MOE_DOWN / PIE_MOE_GEMV
// blocks against the default block bit for bit, replayed from a graph.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "pie/core/random.hpp"
#include "pie/engine/cuda/device_copy.cuh"
#include "pie/model/qwen3_moe.hpp"
#include "pie/ops/cpu/moe.hpp"
#include "pie/ops/cuda/gemv.cuh"
#include "pie/ops/cuda/moe.cuh"
#include "moe_test_data.hpp"
#include "test_util.hpp"

namespace {
using namespace pie;
using namespace pie::test;
using ops::cuda::MoeWorkspace;
using namespace pie::test::moe;

/// Checks the grouped order of a routing against its ids: offsets are the scan of the counts,
/// perm/inv are inverse permutations with each row in its expert's range, the active list and
/// the tile offsets follow the counts.
void check_grouping(const MoeWorkspace<bf16>& ws, const std::vector<int32_t>& ids, int n, int E, int k) {
  const auto& r = ws.routing();
  auto off = fetch(r.offsets, E + 1), toff = fetch(r.tile_offsets, E + 1), act = fetch(r.active, E + 1);
  auto perm = fetch(r.perm, size_t(n) * k), inv = fetch(r.inv, size_t(n) * k), counts = fetch(r.counts, E);
  std::vector<int> cnt(E, 0);
  for (int32_t e : ids) cnt[e]++;
  int o = 0, t = 0, a = 0;
  for (int e = 0; e < E; ++e) {
    ASSERT_EQ(off[e], o) << "expert " << e;
    ASSERT_EQ(toff[e], t) << "expert " << e;
    ASSERT_EQ(counts[e], 0) << "counter of expert " << e << " not reset";
    if (cnt[e] > 0) ASSERT_EQ(act[a++], e);
    o += cnt[e];
    t += (cnt[e] + ops::cuda::kMoeTileM - 1) / ops::cuda::kMoeTileM;
  }
  ASSERT_EQ(off[E], n * k);
  ASSERT_EQ(toff[E], t);
  ASSERT_EQ(act[E], a);
  std::vector<char> seen(size_t(n) * k, 0);
  for (int i = 0; i < n * k; ++i) {
    const int pos = inv[i], e = ids[i];
    ASSERT_TRUE(pos >= off[e] && pos < off[e + 1]) << "slot " << i << " row " << pos << " outside expert " << e;
    ASSERT_FALSE(seen[pos]) << "row " << pos << " taken twice";
    seen[pos] = 1;
    ASSERT_EQ(perm[pos], i / k);
  }
}

TEST(MoeRoute, MatchesCpuAndGroupsRows) {
  std::mt19937 rng(11);
  for (Shape s : {Shape{1, 0, 8, 0, 2, true}, Shape{5, 0, 8, 0, 4, false}, Shape{37, 0, 128, 0, 8, true},
                  Shape{300, 0, 128, 0, 8, false}, Shape{9, 0, 40, 0, 3, true}, Shape{64, 0, 256, 0, 8, true},
                  Shape{3, 0, 16, 0, 16, true}, Shape{512, 0, 128, 0, 8, false}}) {
    // (512 × 8: the engine's large-batch routing, 16 pairs per thread of the grouping CTA.)
    SCOPED_TRACE("n " + std::to_string(s.n) + " E " + std::to_string(s.experts) + " k " + std::to_string(s.top_k));
    MoeWorkspace<bf16> ws(512, s.experts, s.top_k, 64, 32);
    for (int call = 0; call < 2; ++call) {  // the second call checks the counters were reset
      auto logits = randn<float>(size_t(s.n) * s.experts, rng, 2.f);
      PIE_CUDA_CHECK(cudaMemcpy(ws.logits(), logits.data(), logits.size() * 4, cudaMemcpyHostToDevice));
      ops::cuda::moe_route(s.n, s.norm, ws, nullptr);
      std::vector<int32_t> want_ids;
      std::vector<float> want_w;
      cpu_route(logits, s.n, s.experts, s.top_k, s.norm, want_ids, want_w);
      auto ids = fetch(ws.routing().ids, want_ids.size());
      auto w = fetch(ws.routing().weights, want_w.size());
      ASSERT_EQ(ids, want_ids);
      for (size_t i = 0; i < w.size(); ++i) ASSERT_NEAR(w[i], want_w[i], 1e-6f * std::max(1.f, want_w[i])) << i;
      check_grouping(ws, ids, s.n, s.experts, s.top_k);
    }
  }
}

// A NaN router logit (a broken checkpoint) must not take the device down: each token still gets
// k distinct experts in range from both routing kernels, the grouping is consistent and the
// counters are reset, and the CUDA context survives the call (an out-of-range expert id used to
// index the counts). Rows with one NaN, and a row of only NaNs.
TEST(MoeRoute, NanLogitsStayInRange) {
  std::mt19937 rng(23);
  for (bool one_cta : {false, true})
    for (int E : {8, 128}) {
      const int n = 4, k = 4;
      MoeWorkspace<bf16> ws(8, E, k, 64, 32);
      auto logits = randn<float>(size_t(n) * E, rng, 2.f);
      logits[3] = std::nanf("");                                       // token 0: one NaN
      for (int e = 0; e < E; ++e) logits[size_t(2) * E + e] = std::nanf("");  // token 2: all NaN
      PIE_CUDA_CHECK(cudaMemcpy(ws.logits(), logits.data(), logits.size() * 4, cudaMemcpyHostToDevice));
      ops::cuda::moe_route(n, true, ws, nullptr, one_cta);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << "E " << E << " one_cta " << one_cta;
      auto ids = fetch(ws.routing().ids, size_t(n) * k);
      for (int t = 0; t < n; ++t) {
        std::vector<int32_t> mine(ids.begin() + t * k, ids.begin() + (t + 1) * k);
        for (int32_t e : mine) ASSERT_TRUE(e >= 0 && e < E) << "token " << t << " expert " << e;
        std::sort(mine.begin(), mine.end());
        ASSERT_TRUE(std::adjacent_find(mine.begin(), mine.end()) == mine.end()) << "token " << t << ": repeated expert";
      }
      check_grouping(ws, ids, n, E, k);
    }
}

// The one-CTA routing (moe_route's one_cta, n ≤ 8) against moe_route_kernel on the same
// logits: ids, weights, offsets, tile offsets and the active list bit for bit, perm/inv the
// grouping of those ids with each expert's rows in token order (the atomic kernel's order
// within an expert is its atomics' order, so only its grouping is checked), the counters and
// the ticket zero after each call. Every n = 1..8, E = 8/64/128/256 (the three lane layouts),
// k = 1..8; the second call of each draws logits from a few values (ties: the lower id wins in
// both) over outputs poisoned first.
TEST(MoeRoute, OneCtaEqualsAtomic) {
  std::mt19937 rng(18);
  for (int E : {8, 64, 128, 256})
    for (int k = 1; k <= 8; ++k)
      for (int n = 1; n <= ops::cuda::kMoeGemvMaxTokens; ++n) {
        const bool norm = (n + k) % 2 == 0;
        SCOPED_TRACE("n " + std::to_string(n) + " E " + std::to_string(E) + " k " + std::to_string(k));
        MoeWorkspace<bf16> a(8, E, k, 64, 32), b(8, E, k, 64, 32);
        const auto& ra = a.routing();
        const auto& rb = b.routing();
        for (int call = 0; call < 2; ++call) {
          auto logits = randn<float>(size_t(n) * E, rng, 2.f);
          if (call == 1)
            for (float& v : logits) v = std::round(v);  // ties between experts
          for (auto* ws : {&a, &b})
            PIE_CUDA_CHECK(cudaMemcpy(ws->logits(), logits.data(), logits.size() * 4, cudaMemcpyHostToDevice));
          const size_t nk = size_t(n) * k;
          for (int32_t* p : {rb.ids, rb.perm, rb.inv}) PIE_CUDA_CHECK(cudaMemset(p, 0xff, nk * 4));
          for (int32_t* p : {rb.offsets, rb.tile_offsets, rb.active}) PIE_CUDA_CHECK(cudaMemset(p, 0xff, (E + 1) * 4));
          PIE_CUDA_CHECK(cudaMemset(rb.weights, 0xff, nk * 4));
          ops::cuda::moe_route(n, norm, a, nullptr);
          ops::cuda::moe_route(n, norm, b, nullptr, true);
          auto ids = fetch(rb.ids, nk);
          ASSERT_EQ(fetch(ra.ids, nk), ids) << "call " << call;
          auto wa = fetch(ra.weights, nk), wb = fetch(rb.weights, nk);
          ASSERT_EQ(0, std::memcmp(wa.data(), wb.data(), nk * 4)) << "call " << call;
          ASSERT_EQ(fetch(ra.offsets, E + 1), fetch(rb.offsets, E + 1)) << "call " << call;
          ASSERT_EQ(fetch(ra.tile_offsets, E + 1), fetch(rb.tile_offsets, E + 1)) << "call " << call;
          auto act_a = fetch(ra.active, E + 1), act_b = fetch(rb.active, E + 1);
          ASSERT_EQ(act_a[E], act_b[E]) << "call " << call;
          for (int i = 0; i < act_a[E]; ++i) ASSERT_EQ(act_a[i], act_b[i]) << "active " << i << ", call " << call;
          check_grouping(a, fetch(ra.ids, nk), n, E, k);
          check_grouping(b, ids, n, E, k);
          // Token order within an expert: row offsets[e] + (earlier tokens that chose e).
          auto off = fetch(rb.offsets, E + 1), perm = fetch(rb.perm, nk), inv = fetch(rb.inv, nk);
          std::vector<int> next(off.begin(), off.end() - 1);
          for (size_t i = 0; i < nk; ++i) {
            ASSERT_EQ(inv[i], next[ids[i]]) << "slot " << i << ", call " << call;
            ASSERT_EQ(perm[next[ids[i]]++], int(i / k));
          }
          for (const auto* r : {&ra, &rb}) {
            ASSERT_EQ(fetch(r->counts, E), std::vector<int32_t>(E, 0));
            ASSERT_EQ(fetch(r->ticket, 1)[0], 0u);
          }
          // And the CPU op's routing of these logits.
          std::vector<int32_t> want_ids;
          std::vector<float> want_w;
          cpu_route(logits, n, E, k, norm, want_ids, want_w);
          ASSERT_EQ(ids, want_ids) << "call " << call;
        }
      }
}

std::string name(const Shape& s);

/// A launch sequence captured into a CUDA graph at its first launch() (after the eager calls, as
/// the engine captures after its warm-up step) and replayed at every launch() from then on.
class CapturedOnce {
 public:
  ~CapturedOnce() {
    if (exec_) cudaGraphExecDestroy(exec_);
    if (graph_) cudaGraphDestroy(graph_);
  }
  template <class F>
  void launch(cudaStream_t st, F&& f) {
    if (exec_ == nullptr) {
      PIE_CUDA_CHECK(cudaStreamSynchronize(st));
      PIE_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
      f();
      PIE_CUDA_CHECK(cudaStreamEndCapture(st, &graph_));
      PIE_CUDA_CHECK(cudaGraphInstantiate(&exec_, graph_, 0));
    }
    PIE_CUDA_CHECK(cudaGraphLaunch(exec_, st));
  }

 private:
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

// The routing inside the gate_up GEMV (MoeExperts::gate_up_routed, n = 1) against moe_route
// one_cta then gate_up() on the same logits and x: ids, weights, offsets, tile offsets, the
// active list and its count, perm and inv bit for bit (over records poisoned first), and the
// act rows bit for bit, eager and replayed from a graph with new logits; then down and the
// un-permute after it agree with the CPU op. E = 8/64/128/256 (both lane layouts, a grid of
// 256 experts' offsets written over two trips of the CTA), k = 1..8, ties on the second call,
// H 64 and H 200 (a partial last CTA), chunks of U 2, 4 and by waves.
TEST(MoeRoute, InGateUpEqualsOneCta) {
  std::mt19937 rng(20);
  cudaStream_t st;
  PIE_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  for (int E : {8, 64, 128, 256})
    for (int k = 1; k <= 8; ++k)
      for (int u : {0, 2, 4}) {
        const bool norm = (k + u) % 2 == 0;
        const int H = k % 2 ? 64 : 200, I = k % 2 ? 32 : 264;
        const Shape s{1, H, E, I, k, norm};
        SCOPED_TRACE(name(s) + " u " + std::to_string(u));
        ExpertsData d = make_data(s, rng);
        MoeWorkspace<bf16> a(1, E, k, H, I), b(1, E, k, H, I);
        const auto xv = d.dx.view({1, H});
        const auto guv = d.dgu.view({E, 2 * I, H});
        const auto dnv = d.ddown.view({E, H, I});
        const auto ov = d.dout.view({1, H});
        const ops::cuda::MoeExperts<bf16> ex_a(xv, guv, dnv, a, ov, true, u);
        const ops::cuda::MoeExperts<bf16> ex_b(xv, guv, dnv, b, ov, true, u);
        ASSERT_TRUE(ops::cuda::MoeExperts<bf16>::routed_gate_up_supported(1, E, true));
        CapturedOnce graph;
        const auto& ra = a.routing();
        const auto& rb = b.routing();
        for (int call = 0; call < 3; ++call) {
          auto logits = randn<float>(size_t(E), rng, 2.f);
          if (call == 1)
            for (float& v : logits) v = std::round(v);  // ties between experts
          for (auto* ws : {&a, &b})
            PIE_CUDA_CHECK(cudaMemcpy(ws->logits(), logits.data(), logits.size() * 4, cudaMemcpyHostToDevice));
          for (int32_t* p : {rb.ids, rb.perm, rb.inv}) PIE_CUDA_CHECK(cudaMemset(p, 0xff, k * 4));
          for (int32_t* p : {rb.offsets, rb.tile_offsets, rb.active}) PIE_CUDA_CHECK(cudaMemset(p, 0xff, (E + 1) * 4));
          PIE_CUDA_CHECK(cudaMemset(rb.weights, 0xff, k * 4));
          PIE_CUDA_CHECK(cudaMemset(b.act(), 0xff, size_t(k) * I * 2));
          PIE_CUDA_CHECK(cudaDeviceSynchronize());  // the poison (legacy stream) before st's kernels
          ops::cuda::moe_route(1, norm, a, st, true);
          ex_a.gate_up(st);
          if (call < 2) ex_b.gate_up_routed(norm, st);  // eager, then replayed
          else graph.launch(st, [&] { ex_b.gate_up_routed(norm, st); });
          PIE_CUDA_CHECK(cudaStreamSynchronize(st));
          const std::string at = "call " + std::to_string(call);
          ASSERT_EQ(fetch(ra.ids, k), fetch(rb.ids, k)) << at;
          auto wa = fetch(ra.weights, k), wb = fetch(rb.weights, k);
          ASSERT_EQ(0, std::memcmp(wa.data(), wb.data(), k * 4)) << at;
          ASSERT_EQ(fetch(ra.offsets, E + 1), fetch(rb.offsets, E + 1)) << at;
          ASSERT_EQ(fetch(ra.tile_offsets, E + 1), fetch(rb.tile_offsets, E + 1)) << at;
          auto act_a = fetch(ra.active, E + 1), act_b = fetch(rb.active, E + 1);
          ASSERT_EQ(act_a[E], k) << at;
          ASSERT_EQ(act_b[E], k) << at;
          for (int i = 0; i < k; ++i) ASSERT_EQ(act_a[i], act_b[i]) << "active " << i << ", " << at;
          ASSERT_EQ(fetch(ra.perm, k), fetch(rb.perm, k)) << at;
          ASSERT_EQ(fetch(ra.inv, k), fetch(rb.inv, k)) << at;
          ASSERT_EQ(fetch(rb.counts, E), std::vector<int32_t>(E, 0)) << at;
          auto act_rows_a = fetch(a.act(), size_t(k) * I), act_rows_b = fetch(b.act(), size_t(k) * I);
          ASSERT_EQ(0, std::memcmp(act_rows_a.data(), act_rows_b.data(), act_rows_a.size() * 2)) << at;
          std::vector<int32_t> want_ids;
          std::vector<float> want_w;
          cpu_route(logits, 1, E, k, norm, want_ids, want_w);
          ASSERT_EQ(fetch(rb.ids, k), want_ids) << at;
          // down and the un-permute read the record the GEMV wrote.
          poison(d.dout);
          ex_b.down(st);
          ex_b.unpermute(st);
          PIE_CUDA_CHECK(cudaStreamSynchronize(st));
          EXPECT_LT(rel_err(download(d.dout), cpu_experts(s, d, b)), tol<bf16>()) << at;
        }
      }
  cudaStreamDestroy(st);
}

// The un-permute in the down GEMV's last CTAs (MoeExperts::down_unpermute_in_last_ctas, n = 1)
// against down() then unpermute() over the same routing and act: out bit for bit, eager and then
// replayed from a graph four times (the tickets reset by the last CTAs: all zero after each
// call), routed by the one-CTA kernel and by the gate_up GEMV, and with the early weights (the
// routing read before the wait on gate_up: after the routing kernel only); 2 and 4 columns per
// warp and by waves; H 2048 (Qwen3-30B-A3B), 200 (a partial last block of 4-column CTAs), 72.
TEST(MoeExperts, UnpermuteInDownEqualsKernel) {
  std::mt19937 rng(21);
  cudaStream_t st;
  PIE_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  for (Shape s : {Shape{1, 2048, 128, 768, 8, true}, Shape{1, 200, 16, 264, 4, false}, Shape{1, 72, 6, 40, 3, true},
                  Shape{1, 256, 64, 128, 1, true}, Shape{1, 128, 256, 64, 6, false}})
    for (int c : {0, 2, 4})
    for (bool early : {false, true}) {
      SCOPED_TRACE(name(s) + " c " + std::to_string(c) + (early ? " early" : ""));
      ExpertsData d = make_data(s, rng);
      MoeWorkspace<bf16> ws(1, s.experts, s.top_k, s.hidden, s.inter);
      const auto xv = d.dx.view({1, s.hidden});
      const auto guv = d.dgu.view({s.experts, 2 * s.inter, s.hidden});
      const auto dnv = d.ddown.view({s.experts, s.hidden, s.inter});
      DeviceBuffer<bf16> want_out(s.hidden);
      const ops::cuda::MoeExperts<bf16> ex(xv, guv, dnv, ws, d.dout.view({1, s.hidden}), true, 0, c, true);
      const ops::cuda::MoeExperts<bf16> ex_ref(xv, guv, dnv, ws, want_out.view({1, s.hidden}), true, 0, c, true);
      ASSERT_TRUE(ops::cuda::MoeExperts<bf16>::unpermute_in_down_supported(1, true));
      const int blocks = (s.hidden + 7) / 8;
      CapturedOnce graph;
      for (int call = 0; call < 6; ++call) {
        d.logits = randn<float>(d.logits.size(), rng, 2.f);
        PIE_CUDA_CHECK(cudaMemcpy(ws.logits(), d.logits.data(), d.logits.size() * 4, cudaMemcpyHostToDevice));
        if (call % 2 && !early) ex.gate_up_routed(s.norm, st);
        else {
          ops::cuda::moe_route(1, s.norm, ws, st, true);
          ex.gate_up(st);
        }
        ex_ref.down(st);
        ex_ref.unpermute(st);
        poison(d.dout);
        PIE_CUDA_CHECK(cudaDeviceSynchronize());  // the poison (legacy stream) and st's work
        if (call < 2) ex.down_unpermute_in_last_ctas(st, early);  // eager, then replayed
        else graph.launch(st, [&] { ex.down_unpermute_in_last_ctas(st, early); });
        PIE_CUDA_CHECK(cudaStreamSynchronize(st));
        const std::string at = "call " + std::to_string(call);
        auto got = download(d.dout), want = download(want_out);
        ASSERT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * 2)) << at;
        ASSERT_EQ(fetch(ws.down_tickets(), blocks), std::vector<int32_t>(blocks, 0)) << at;
        EXPECT_LT(rel_err(got, cpu_experts(s, d, ws)), tol<bf16>()) << at;
      }
    }
  cudaStreamDestroy(st);
}

void run_block(const Shape& s, ExpertsData& d, MoeWorkspace<bf16>& ws, bool gemv, cudaStream_t st) {
  ops::cuda::moe_route(s.n, s.norm, ws, st);
  ops::cuda::moe_experts(d.dx.view({s.n, s.hidden}), d.dgu.view({s.experts, 2 * s.inter, s.hidden}),
                         d.ddown.view({s.experts, s.hidden, s.inter}), ws, d.dout.view({s.n, s.hidden}), gemv, st);
}

TEST(MoeExperts, GemvAndMmaMatchCpu) {
  std::mt19937 rng(12);
  // The tiny fixtures' shape, widths that are not tile multiples (I = 40, H = 72: K tails and
  // partial N tiles), and Qwen3-30B-A3B's (H 2048, I 768, 128 experts, top-8).
  for (Shape s : {Shape{1, 64, 8, 32, 2, true}, Shape{3, 64, 8, 32, 2, true}, Shape{8, 64, 8, 32, 4, false},
                  Shape{50, 64, 8, 32, 4, true}, Shape{7, 72, 6, 40, 3, true}, Shape{200, 72, 6, 40, 3, false},
                  Shape{5, 64, 32, 32, 12, true},  // k past the un-permute's 8 loads in flight
                  Shape{1, 2048, 128, 768, 8, true}, Shape{4, 2048, 128, 768, 8, true},
                  Shape{100, 2048, 128, 768, 8, true}}) {
    ExpertsData d = make_data(s, rng);  // one draw, both paths
    for (bool gemv : {true, false}) {
      if (gemv && s.n > ops::cuda::kMoeGemvMaxTokens) continue;
      SCOPED_TRACE("n " + std::to_string(s.n) + " H " + std::to_string(s.hidden) + " E " + std::to_string(s.experts) +
                   " I " + std::to_string(s.inter) + " k " + std::to_string(s.top_k) + (gemv ? " gemv" : " mma"));
      MoeWorkspace<bf16> ws(256, s.experts, s.top_k, s.hidden, s.inter);
      PIE_CUDA_CHECK(cudaMemcpy(ws.logits(), d.logits.data(), d.logits.size() * 4, cudaMemcpyHostToDevice));
      poison(d.dout);
      PIE_CUDA_CHECK(cudaMemset(ws.act(), 0xff, size_t(256) * s.top_k * s.inter * 2));
      PIE_CUDA_CHECK(cudaMemset(ws.y(), 0xff, size_t(256) * s.top_k * s.hidden * 2));
      run_block(s, d, ws, gemv, nullptr);
      PIE_CUDA_CHECK(cudaDeviceSynchronize());
      const double err = rel_err(download(d.dout), cpu_experts(s, d, ws));
      EXPECT_LT(err, tol<bf16>());
      EXPECT_GT(err, 0.0);  // bf16 rounding of act and y: an exact match would mean no GPU run
    }
  }
}

// Routing and experts captured once, replayed over new logits and x: the same result as eager.
TEST(MoeExperts, GraphReplayWithNewInputs) {
  std::mt19937 rng(13);
  for (Shape s : {Shape{4, 2048, 128, 768, 8, true}, Shape{96, 256, 16, 128, 4, true}}) {
    SCOPED_TRACE("n " + std::to_string(s.n));
    ExpertsData d = make_data(s, rng);
    MoeWorkspace<bf16> ws(s.n, s.experts, s.top_k, s.hidden, s.inter);
    cudaStream_t st;
    PIE_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    PIE_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    run_block(s, d, ws, true, st);
    PIE_CUDA_CHECK(cudaStreamEndCapture(st, &g));
    PIE_CUDA_CHECK(cudaGraphInstantiate(&ge, g, 0));
    for (int rep = 0; rep < 3; ++rep) {
      auto x = randn<bf16>(d.x.size(), rng);
      d.x = x;
      PIE_CUDA_CHECK(cudaMemcpy(d.dx.data(), x.data(), x.size() * 2, cudaMemcpyHostToDevice));
      d.logits = randn<float>(d.logits.size(), rng, 2.f);
      PIE_CUDA_CHECK(cudaMemcpy(ws.logits(), d.logits.data(), d.logits.size() * 4, cudaMemcpyHostToDevice));
      poison(d.dout);
      PIE_CUDA_CHECK(cudaDeviceSynchronize());  // the copies above ran on the legacy stream
      PIE_CUDA_CHECK(cudaGraphLaunch(ge, st));
      PIE_CUDA_CHECK(cudaStreamSynchronize(st));
      auto graph_out = download(d.dout);
      std::vector<int32_t> want_ids;
      std::vector<float> want_w;
      cpu_route(d.logits, s.n, s.experts, s.top_k, s.norm, want_ids, want_w);
      ASSERT_EQ(fetch(ws.routing().ids, want_ids.size()), want_ids) << "replay " << rep;
      EXPECT_LT(rel_err(graph_out, cpu_experts(s, d, ws)), tol<bf16>()) << "replay " << rep;
      poison(d.dout);
      PIE_CUDA_CHECK(cudaDeviceSynchronize());
      run_block(s, d, ws, true, st);
      PIE_CUDA_CHECK(cudaStreamSynchronize(st));
      auto eager = download(d.dout);
      EXPECT_EQ(0, std::memcmp(eager.data(), graph_out.data(), eager.size() * 2)) << "replay " << rep;
    }
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    cudaStreamDestroy(st);
  }
}

// The mma path: the first 5 tokens alone and inside a batch of 300 give the same bits.
TEST(MoeExperts, MmaRowsDoNotDependOnTheBatch) {
  std::mt19937 rng(14);
  const Shape big{300, 256, 16, 128, 4, true};
  ExpertsData d = make_data(big, rng);
  MoeWorkspace<bf16> ws(300, big.experts, big.top_k, big.hidden, big.inter);
  PIE_CUDA_CHECK(cudaMemcpy(ws.logits(), d.logits.data(), d.logits.size() * 4, cudaMemcpyHostToDevice));
  run_block(big, d, ws, false, nullptr);
  auto all = download(d.dout);
  const Shape small{5, 256, 16, 128, 4, true};
  run_block(small, d, ws, false, nullptr);  // logits rows 0..4 are still there
  auto few = download(d.dout);
  EXPECT_EQ(0, std::memcmp(few.data(), all.data(), size_t(5) * big.hidden * 2));
}

// The fused decode path's shapes: n = 1, 2, 5, 8; top-k 2/4/8; several expert counts (E past
// 32 and 128 takes the routing's wider lane layouts); Qwen3-30B-A3B's (H 2048, 128 experts, I 768).
std::vector<Shape> fused_shapes() {
  return {Shape{1, 64, 8, 32, 2, true},      Shape{2, 72, 6, 40, 3, false},   Shape{5, 64, 32, 32, 4, true},
          Shape{8, 256, 40, 128, 8, false},  Shape{2, 128, 256, 96, 8, true}, Shape{5, 520, 16, 264, 2, true},
          Shape{1, 2048, 128, 768, 8, true}, Shape{2, 2048, 128, 768, 8, true}, Shape{5, 2048, 128, 768, 4, false},
          Shape{8, 2048, 128, 768, 8, true}};
}
std::string name(const Shape& s) {
  return "n " + std::to_string(s.n) + " H " + std::to_string(s.hidden) + " E " + std::to_string(s.experts) + " I " +
         std::to_string(s.inter) + " k " + std::to_string(s.top_k);
}

// Router GEMV + routing in one kernel: the logits, ids, weights and grouping of gemv() +
// moe_route, bit for bit, and the CPU op's routing of those logits; a second call checks that
// the ticket and counters were reset.
TEST(MoeDecodeFused, RouterRouteEqualsGemvAndRoute) {
  std::mt19937 rng(15);
  for (const Shape& s : fused_shapes()) {
    SCOPED_TRACE(name(s));
    const auto router = randn<bf16>(size_t(s.experts) * s.hidden, rng, 1.f / std::sqrt(float(s.hidden)));
    auto drouter = upload(router);
    MoeWorkspace<bf16> a(8, s.experts, s.top_k, s.hidden, s.inter), b(8, s.experts, s.top_k, s.hidden, s.inter);
    for (int call = 0; call < 2; ++call) {
      const auto x = randn<bf16>(size_t(s.n) * s.hidden, rng);
      auto dx = upload(x);
      TensorView<float> la(a.logits(), {s.n, s.experts}, Device::Cuda);
      ops::cuda::gemv(la, dx.view({s.n, s.hidden}), drouter.view({s.experts, s.hidden}), static_cast<const bf16*>(nullptr),
                      nullptr);
      ops::cuda::moe_route(s.n, s.norm, a, nullptr);
      PIE_CUDA_CHECK(cudaMemset(b.logits(), 0xff, size_t(s.n) * s.experts * 4));
      ops::cuda::moe_router_route(dx.view({s.n, s.hidden}), drouter.view({s.experts, s.hidden}), s.norm, b, nullptr);
      const size_t nk = size_t(s.n) * s.top_k;
      auto lo_a = fetch(a.logits(), size_t(s.n) * s.experts), lo_b = fetch(b.logits(), size_t(s.n) * s.experts);
      ASSERT_EQ(0, std::memcmp(lo_a.data(), lo_b.data(), lo_a.size() * 4)) << "call " << call;
      auto ids = fetch(b.routing().ids, nk);
      ASSERT_EQ(fetch(a.routing().ids, nk), ids);
      auto wa = fetch(a.routing().weights, nk), wb = fetch(b.routing().weights, nk);
      ASSERT_EQ(0, std::memcmp(wa.data(), wb.data(), nk * 4));
      ASSERT_EQ(fetch(a.routing().offsets, s.experts + 1), fetch(b.routing().offsets, s.experts + 1));
      ASSERT_EQ(fetch(a.routing().active, s.experts + 1), fetch(b.routing().active, s.experts + 1));
      check_grouping(b, ids, s.n, s.experts, s.top_k);
      // The CPU op: its routing of these logits, and its logits within fp32 summation noise.
      std::vector<int32_t> want_ids;
      std::vector<float> want_w;
      cpu_route(lo_b, s.n, s.experts, s.top_k, s.norm, want_ids, want_w);
      ASSERT_EQ(ids, want_ids);
      for (size_t i = 0; i < nk; ++i) ASSERT_NEAR(wb[i], want_w[i], 1e-6f * std::max(1.f, want_w[i])) << i;
      std::vector<float> ref(size_t(s.n) * s.experts);
      for (int t = 0; t < s.n; ++t)
        for (int e = 0; e < s.experts; ++e) {
          double acc = 0;
          for (int h = 0; h < s.hidden; ++h)
            acc += double(to_float(x[size_t(t) * s.hidden + h])) * to_float(router[size_t(e) * s.hidden + h]);
          ref[size_t(t) * s.experts + e] = float(acc);
        }
      EXPECT_LT(rel_err(lo_b, ref), 1e-5);
    }
  }
}

void run_fused(const Shape& s, ExpertsData& d, DeviceBuffer<bf16>& drouter, MoeWorkspace<bf16>& ws,
               cudaStream_t st) {
  ops::cuda::moe_router_route(d.dx.view({s.n, s.hidden}), drouter.view({s.experts, s.hidden}), s.norm, ws, st);
  const ops::cuda::MoeExperts<bf16> ex(d.dx.view({s.n, s.hidden}), d.dgu.view({s.experts, 2 * s.inter, s.hidden}),
                                       d.ddown.view({s.experts, s.hidden, s.inter}), ws, d.dout.view({s.n, s.hidden}),
                                       true, 0);
  ex.gate_up(st);
  ex.down_unpermute(st);
}

// Down + un-permute fused: the gemv path's down + moe_unpermute bits over the same routing and
// act, and the CPU op's result.
TEST(MoeDecodeFused, DownUnpermuteEqualsUnfused) {
  std::mt19937 rng(16);
  for (const Shape& s : fused_shapes()) {
    SCOPED_TRACE(name(s));
    ExpertsData d = make_data(s, rng);
    MoeWorkspace<bf16> ws(8, s.experts, s.top_k, s.hidden, s.inter);
    PIE_CUDA_CHECK(cudaMemcpy(ws.logits(), d.logits.data(), d.logits.size() * 4, cudaMemcpyHostToDevice));
    poison(d.dout);
    run_block(s, d, ws, true, nullptr);
    auto unfused = download(d.dout);
    poison(d.dout);
    PIE_CUDA_CHECK(cudaDeviceSynchronize());
    const ops::cuda::MoeExperts<bf16> ex(d.dx.view({s.n, s.hidden}), d.dgu.view({s.experts, 2 * s.inter, s.hidden}),
                                         d.ddown.view({s.experts, s.hidden, s.inter}), ws, d.dout.view({s.n, s.hidden}),
                                         true);
    ex.down_unpermute(nullptr);  // act and the routing are still the unfused run's
    PIE_CUDA_CHECK(cudaDeviceSynchronize());
    auto fused = download(d.dout);
    EXPECT_EQ(0, std::memcmp(fused.data(), unfused.data(), fused.size() * 2));
    // gate_up with 2 chunks in flight (the lean launch) writes the same act as with 4.
    const size_t act_n = size_t(s.n) * s.top_k * s.inter;
    auto act4 = fetch(ws.act(), act_n);
    PIE_CUDA_CHECK(cudaMemset(ws.act(), 0xff, act_n * 2));
    const ops::cuda::MoeExperts<bf16> lean(d.dx.view({s.n, s.hidden}), d.dgu.view({s.experts, 2 * s.inter, s.hidden}),
                                           d.ddown.view({s.experts, s.hidden, s.inter}), ws,
                                           d.dout.view({s.n, s.hidden}), true, 2);
    lean.gate_up(nullptr);
    auto act2 = fetch(ws.act(), act_n);
    EXPECT_EQ(0, std::memcmp(act2.data(), act4.data(), act_n * 2));
    // The GEMVs with the row chunks loaded with the weights (moe_gemv_ahead_kernel): the same
    // act, and the same y as down() (y of the unfused run above, still in the workspace).
    PIE_CUDA_CHECK(cudaMemset(ws.act(), 0xff, act_n * 2));
    lean.gate_up_cfg<2, true>(nullptr);
    auto act_ahead = fetch(ws.act(), act_n);
    EXPECT_EQ(0, std::memcmp(act_ahead.data(), act4.data(), act_n * 2));
    const size_t y_n = size_t(s.n) * s.top_k * s.hidden;
    auto y_ref = fetch(ws.y(), y_n);
    PIE_CUDA_CHECK(cudaMemset(ws.y(), 0xff, y_n * 2));
    lean.down_cfg<4, 2, true>(nullptr);
    auto y_ahead = fetch(ws.y(), y_n);
    EXPECT_EQ(0, std::memcmp(y_ahead.data(), y_ref.data(), y_n * 2));
    const double err = rel_err(fused, cpu_experts(s, d, ws));
    EXPECT_LT(err, tol<bf16>());
    EXPECT_GT(err, 0.0);
  }
}

// The whole fused decode block (router + routing, gate_up, down + un-permute) captured once and
// replayed with new x: the eager unfused path's bits (gemv router + moe_route + the three expert
// stages) and the CPU op's result, every replay.
TEST(MoeDecodeFused, GraphReplayEqualsUnfused) {
  std::mt19937 rng(17);
  for (Shape s : {Shape{1, 2048, 128, 768, 8, true}, Shape{5, 256, 40, 128, 4, false}, Shape{8, 2048, 128, 768, 8, true}}) {
    SCOPED_TRACE(name(s));
    ExpertsData d = make_data(s, rng);
    auto drouter = upload(randn<bf16>(size_t(s.experts) * s.hidden, rng, 1.f / std::sqrt(float(s.hidden))));
    MoeWorkspace<bf16> ws(s.n, s.experts, s.top_k, s.hidden, s.inter), ref(s.n, s.experts, s.top_k, s.hidden, s.inter);
    cudaStream_t st;
    PIE_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    run_fused(s, d, drouter, ws, st);  // eager first, as the engine's warm-up step (occupancy queries cached)
    PIE_CUDA_CHECK(cudaStreamSynchronize(st));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    PIE_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    run_fused(s, d, drouter, ws, st);
    PIE_CUDA_CHECK(cudaStreamEndCapture(st, &g));
    PIE_CUDA_CHECK(cudaGraphInstantiate(&ge, g, 0));
    for (int rep = 0; rep < 3; ++rep) {
      d.x = randn<bf16>(d.x.size(), rng);
      PIE_CUDA_CHECK(cudaMemcpy(d.dx.data(), d.x.data(), d.x.size() * 2, cudaMemcpyHostToDevice));
      poison(d.dout);
      PIE_CUDA_CHECK(cudaDeviceSynchronize());
      PIE_CUDA_CHECK(cudaGraphLaunch(ge, st));
      PIE_CUDA_CHECK(cudaStreamSynchronize(st));
      auto graph_out = download(d.dout);
      auto ids = fetch(ws.routing().ids, size_t(s.n) * s.top_k);
      EXPECT_LT(rel_err(graph_out, cpu_experts(s, d, ws)), tol<bf16>()) << "replay " << rep;
      // The unfused path on a second workspace: router gemv, moe_route, gate_up, down, un-permute.
      poison(d.dout);
      PIE_CUDA_CHECK(cudaDeviceSynchronize());
      TensorView<float> lr(ref.logits(), {s.n, s.experts}, Device::Cuda);
      ops::cuda::gemv(lr, d.dx.view({s.n, s.hidden}), drouter.view({s.experts, s.hidden}),
                      static_cast<const bf16*>(nullptr), st);
      run_block(s, d, ref, true, st);
      PIE_CUDA_CHECK(cudaStreamSynchronize(st));
      auto unfused = download(d.dout);
      ASSERT_EQ(fetch(ref.routing().ids, ids.size()), ids) << "replay " << rep;
      EXPECT_EQ(0, std::memcmp(unfused.data(), graph_out.data(), unfused.size() * 2)) << "replay " << rep;
    }
    cudaGraphExecDestroy(ge);
    cudaGraphDestroy(g);
    cudaStreamDestroy(st);
  }
}

// The engine's decode switches, alone and together: PIE_MOE_ROUTE=cta (one-CTA routing),
// PIE_MOE_DECODE=waves (the five launches with the gate_up GEMV's chunks by wave count),
// PIE_MOE_DOWN=waves (the down GEMV's columns by wave count; 4 columns forced too, which n ≤ 2
// takes whatever the GPU's SM count) and PIE_MOE_GEMV=ahead (row chunks loaded with the
// weights, with every GEMV shape n ≤ 2 can take). Each captured once and replayed with new x
// and logits gives the default path's bits (atomic routing, gate_up with 4 chunks, down with 2
// columns, un-permute; eager, on a second workspace) every replay, and the CPU op's result.
TEST(MoeDecodeSwitches, GraphReplayEqualsDefault) {
  std::mt19937 rng(19);
  struct Switches {
    bool one_cta;
    int gate_up_u, down_c;
    bool ahead;
    const char* name;
    bool in_gate_up = false;  // PIE_MOE_ROUTE=gate_up: n = 1 routes inside gate_up, else one CTA
    bool in_down = false;     // PIE_MOE_UNPERMUTE=down: n = 1 un-permutes in down's last CTAs
  };
  // H 200 / I 264 and H 72 / I 40 at n ≤ 2: the 4-column down GEMV's partial last CTA and K tail.
  for (Shape s : {Shape{1, 2048, 128, 768, 8, true}, Shape{2, 2048, 128, 768, 8, true},
                  Shape{8, 2048, 128, 768, 8, true}, Shape{5, 256, 40, 128, 4, false}, Shape{3, 72, 256, 40, 8, true},
                  Shape{1, 200, 16, 264, 4, false}, Shape{2, 72, 6, 40, 3, true}}) {
    ExpertsData d = make_data(s, rng);  // the weights, once per shape (x and logits: new every replay)
    for (Switches sw : {Switches{true, 4, 2, false, "route cta"}, Switches{false, 0, 2, false, "waves"},
                        Switches{true, 0, 2, false, "cta + waves"}, Switches{false, 4, 4, false, "down 4 columns"},
                        Switches{false, 4, 0, false, "down by waves"}, Switches{false, 4, 2, true, "gemv ahead"},
                        Switches{false, 2, 4, true, "U 2 + down 4 columns + ahead"},
                        Switches{true, 0, 0, true, "all four"},
                        Switches{true, 0, 0, true, "all four, routed inside gate_up", true},
                        Switches{true, 0, 0, true, "all four, un-permuted in down", false, true},
                        Switches{true, 0, 0, true, "all four, both", true, true}}) {
      SCOPED_TRACE(name(s) + " " + sw.name);
      MoeWorkspace<bf16> ws(s.n, s.experts, s.top_k, s.hidden, s.inter);
      MoeWorkspace<bf16> ref(s.n, s.experts, s.top_k, s.hidden, s.inter);
      const auto xv = d.dx.view({s.n, s.hidden});
      const auto guv = d.dgu.view({s.experts, 2 * s.inter, s.hidden});
      const auto dnv = d.ddown.view({s.experts, s.hidden, s.inter});
      const auto ov = d.dout.view({s.n, s.hidden});
      const ops::cuda::MoeExperts<bf16> ex(xv, guv, dnv, ws, ov, true, sw.gate_up_u, sw.down_c, sw.ahead);
      const ops::cuda::MoeExperts<bf16> ex_ref(xv, guv, dnv, ref, ov, true);
      cudaStream_t st;
      PIE_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
      auto run = [&] {
        if (sw.in_gate_up && ops::cuda::MoeExperts<bf16>::routed_gate_up_supported(s.n, s.experts, true)) {
          ex.gate_up_routed(s.norm, st);
        } else {
          ops::cuda::moe_route(s.n, s.norm, ws, st, sw.one_cta);
          ex.gate_up(st);
        }
        if (sw.in_down && ops::cuda::MoeExperts<bf16>::unpermute_in_down_supported(s.n, true)) {
          const bool routed_in_gate_up =
              sw.in_gate_up && ops::cuda::MoeExperts<bf16>::routed_gate_up_supported(s.n, s.experts, true);
          ex.down_unpermute_in_last_ctas(st, !routed_in_gate_up);  // early weights after a routing kernel
        } else {
          ex.down(st);
          ex.unpermute(st);
        }
      };
      run();  // eager first, as the engine's warm-up step (occupancy queries cached)
      PIE_CUDA_CHECK(cudaStreamSynchronize(st));
      cudaGraph_t g;
      cudaGraphExec_t ge;
      PIE_CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
      run();
      PIE_CUDA_CHECK(cudaStreamEndCapture(st, &g));
      PIE_CUDA_CHECK(cudaGraphInstantiate(&ge, g, 0));
      for (int rep = 0; rep < 3; ++rep) {
        d.x = randn<bf16>(d.x.size(), rng);
        PIE_CUDA_CHECK(cudaMemcpy(d.dx.data(), d.x.data(), d.x.size() * 2, cudaMemcpyHostToDevice));
        d.logits = randn<float>(d.logits.size(), rng, 2.f);
        for (auto* w : {&ws, &ref})
          PIE_CUDA_CHECK(cudaMemcpy(w->logits(), d.logits.data(), d.logits.size() * 4, cudaMemcpyHostToDevice));
        poison(d.dout);
        PIE_CUDA_CHECK(cudaDeviceSynchronize());
        PIE_CUDA_CHECK(cudaGraphLaunch(ge, st));
        PIE_CUDA_CHECK(cudaStreamSynchronize(st));
        auto graph_out = download(d.dout);
        const double err = rel_err(graph_out, cpu_experts(s, d, ws));
        EXPECT_LT(err, tol<bf16>()) << "replay " << rep;
        EXPECT_GT(err, 0.0) << "replay " << rep;
        poison(d.dout);
        PIE_CUDA_CHECK(cudaDeviceSynchronize());
        ops::cuda::moe_route(s.n, s.norm, ref, st);
        ex_ref.gate_up(st);
        ex_ref.down(st);
        ex_ref.unpermute(st);
        PIE_CUDA_CHECK(cudaStreamSynchronize(st));
        auto want = download(d.dout);
        const size_t nk = size_t(s.n) * s.top_k;
        ASSERT_EQ(fetch(ref.routing().ids, nk), fetch(ws.routing().ids, nk)) << "replay " << rep;
        EXPECT_EQ(0, std::memcmp(want.data(), graph_out.data(), want.size() * 2)) << "replay " << rep;
      }
      cudaGraphExecDestroy(ge);
      cudaGraphDestroy(g);
      cudaStreamDestroy(st);
    }
  }
}

// --load-format dummy on the GPU: the deferred fill run on the device gives DummyReader's bits.
TEST(MoeDummyWeights, DeviceFillEqualsHost) {
  const std::string dir = std::string(PIE_SOURCE_DIR) + "/tests/moe/fixtures/qwen3_moe_top2_norm";
  const auto cfg = Qwen3Moe::load_config(dir);
  model::LoadOptions lo;
  lo.progress = false;
  const auto host = Qwen3Moe::dummy<bf16>(dir, cfg, 7, lo);
  lo.defer_dummy_fill = true;
  const auto deferred = Qwen3Moe::dummy<bf16>(dir, cfg, 7, lo);
  ASSERT_TRUE(deferred.store.deferred && !deferred.store.deferred->empty());
  auto a = engine::cuda::DeviceCopy<Qwen3Moe::Weights<bf16>, bf16>::upload(host);
  auto b = engine::cuda::DeviceCopy<Qwen3Moe::Weights<bf16>, bf16>::upload(deferred);
  std::vector<TensorView<bf16>> ta, tb;  // tensor by tensor (the padding between them is not written)
  a.views.for_each([&](TensorView<bf16>& v) { ta.push_back(v); });
  b.views.for_each([&](TensorView<bf16>& v) { tb.push_back(v); });
  ASSERT_EQ(ta.size(), tb.size());
  size_t nonzero = 0, total = 0;
  for (size_t i = 0; i < ta.size(); ++i) {
    ASSERT_EQ(ta[i].numel(), tb[i].numel());
    if (ta[i].numel() == 0 || ta[i].data == nullptr) continue;
    auto ha = fetch(ta[i].data, ta[i].numel()), hb = fetch(tb[i].data, tb[i].numel());
    EXPECT_EQ(0, std::memcmp(ha.data(), hb.data(), ha.size() * sizeof(bf16))) << "tensor " << i;
    for (auto v : hb) nonzero += to_float(v) != 0.f;
    total += hb.size();
  }
  EXPECT_GT(nonzero, total / 2);  // really filled
}

}  // namespace
