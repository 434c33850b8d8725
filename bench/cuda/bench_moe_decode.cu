// The MoE block at decode sizes (n ≤ kMoeGemvMaxTokens), Qwen3-30B-A3B's shape (H 2048, I 768,
// 128 experts, top-8): each stage of the unfused gemv path against the fused kernels of
// ops/cuda/moe_decode.cuh and the gate_up GEMV's two unrolls, the one-CTA routing
// (PIE_MOE_ROUTE=cta), the waves block (PIE_MOE_DECODE=waves) and the down GEMV's grid
// variants, against the same run's copy ceiling. Each row times a chain of 12 calls over 4
// layers (each its own router, experts and routing, so no call finds the previous one's weights
// in L2; launched with PDL back to back as in the decode graphs) and prints the mean µs per
// call, median of 20 chains, and the bytes a call must move (the touched experts' weights once)
// as a share of the copy rate.
//   pie_bench_cuda_moe_decode [tokens...]   (default 1 2 4 8)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bench_common.cuh"
#include "pie/ops/cuda/gemv.cuh"
#include "pie/ops/cuda/moe.cuh"

namespace {
using namespace pie;
using namespace pie::bench;

constexpr int kH = 2048, kI = 768, kE = 128, kK = 8, kLayers = 4, kChain = 12;

struct Layer {
  DeviceBuffer<bf16> router, gu, dn;
  std::unique_ptr<oc::MoeWorkspace<bf16>> ws;
};

void row(const std::string& name, double chain_ms, double bytes) {
  const double us = chain_ms * 1e3 / kChain;
  const double gbs = bytes / (us * 1e-6) / 1e9;
  std::printf("%-52s %8.2f us", name.c_str(), us);
  if (bytes > 0) std::printf("  %7.0f GB/s = %5.1f%% copy", gbs, 100 * gbs / g_ceil.copy_gbs);
  std::printf("\n");
}

void bench_tokens(int n, std::vector<Layer>& layers) {
  DeviceBuffer<bf16> x(size_t(n) * kH), out(size_t(n) * kH);
  fill(x.data(), x.size(), 1);
  const auto xv = x.view({n, kH}), ov = out.view({n, kH});
  // gate_up U 4/0, down C 2/0, row chunks after/ahead
  std::vector<std::unique_ptr<oc::MoeExperts<bf16>>> ex4, ex0, exd, ex00, exa, exall;
  double touched = 0;
  for (auto& l : layers) {
    l.ws = std::make_unique<oc::MoeWorkspace<bf16>>(n, kE, kK, kH, kI);
    oc::moe_router_route(xv, l.router.view({kE, kH}), true, *l.ws, nullptr);
    std::vector<int32_t> off(kE + 1);
    PIE_CUDA_CHECK(cudaMemcpy(off.data(), l.ws->routing().offsets, off.size() * 4, cudaMemcpyDeviceToHost));
    for (int e = 0; e < kE; ++e) touched += off[e + 1] > off[e];
    const auto guv = l.gu.view({kE, 2 * kI, kH}), dnv = l.dn.view({kE, kH, kI});
    ex4.push_back(std::make_unique<oc::MoeExperts<bf16>>(xv, guv, dnv, *l.ws, ov, true, 4));
    ex0.push_back(std::make_unique<oc::MoeExperts<bf16>>(xv, guv, dnv, *l.ws, ov, true, 0));
    exd.push_back(std::make_unique<oc::MoeExperts<bf16>>(xv, guv, dnv, *l.ws, ov, true, 4, 0));
    ex00.push_back(std::make_unique<oc::MoeExperts<bf16>>(xv, guv, dnv, *l.ws, ov, true, 0, 0));
    exa.push_back(std::make_unique<oc::MoeExperts<bf16>>(xv, guv, dnv, *l.ws, ov, true, 4, 2, true));
    exall.push_back(std::make_unique<oc::MoeExperts<bf16>>(xv, guv, dnv, *l.ws, ov, true, 0, 0, true));
  }
  touched /= kLayers;
  const double gu_bytes = touched * 2 * kI * kH * 2, dn_bytes = touched * kH * kI * 2, rt_bytes = double(kE) * kH * 2;
  std::printf("\nn %d: %.1f experts touched per layer; floors at the copy rate: gate_up %.2f us, down %.2f us, router "
              "%.2f us\n",
              n, touched, gu_bytes / g_ceil.copy_gbs / 1e3, dn_bytes / g_ceil.copy_gbs / 1e3,
              rt_bytes / g_ceil.copy_gbs / 1e3);
  auto chain = [&](const std::function<void(int)>& f) {
    return median_ms([&] {
      for (int i = 0; i < kChain; ++i) f(i % kLayers);
    });
  };
  // Routing (each stage leaves the same routing in place: the same logits, the same rules).
  row("router gemv + moe_route", chain([&](int l) {
        TensorView<float> lg(layers[l].ws->logits(), {n, kE}, Device::Cuda);
        oc::gemv(lg, xv, layers[l].router.view({kE, kH}), static_cast<const bf16*>(nullptr), nullptr);
        oc::moe_route(n, true, *layers[l].ws, nullptr);
      }),
      rt_bytes);
  row("moe_route alone (atomic, default)", chain([&](int l) { oc::moe_route(n, true, *layers[l].ws, nullptr); }), 0);
  row("moe_route alone, one CTA (PIE_MOE_ROUTE=cta)",
      chain([&](int l) { oc::moe_route(n, true, *layers[l].ws, nullptr, true); }), 0);
  row("router gemv + moe_route one CTA", chain([&](int l) {
        TensorView<float> lg(layers[l].ws->logits(), {n, kE}, Device::Cuda);
        oc::gemv(lg, xv, layers[l].router.view({kE, kH}), static_cast<const bf16*>(nullptr), nullptr);
        oc::moe_route(n, true, *layers[l].ws, nullptr, true);
      }),
      rt_bytes);
  row("fused router + route", chain([&](int l) {
        oc::moe_router_route(xv, layers[l].router.view({kE, kH}), true, *layers[l].ws, nullptr);
      }),
      rt_bytes);
  // A variant of a stage, timed after its output on layer 0 was checked bit for bit against the
  // default's (ref): buf [count] is act (gate_up) or y (down).
  auto variant = [&](const std::string& label, bf16* buf, size_t count, const std::function<void(int)>& ref,
                     const std::function<void(int)>& f, double bytes) {
    ref(0);
    std::vector<bf16> want(count), got(count);
    PIE_CUDA_CHECK(cudaMemcpy(want.data(), buf, count * 2, cudaMemcpyDeviceToHost));
    PIE_CUDA_CHECK(cudaMemset(buf, 0xff, count * 2));
    f(0);
    PIE_CUDA_CHECK(cudaMemcpy(got.data(), buf, count * 2, cudaMemcpyDeviceToHost));
    const bool same = std::memcmp(want.data(), got.data(), count * 2) == 0;
    row(label + (same ? "" : " BITS DIFFER"), chain(f), bytes);
  };
  const auto gate_up_ref = [&](int l) { ex4[l]->gate_up(nullptr); };
  auto gate_up_variant = [&](const char* label, const std::function<void(int)>& f) {
    variant(label, layers[0].ws->act(), size_t(n) * kK * kI, gate_up_ref, f, gu_bytes);
  };
  row("gate_up gemv U=4 (default)", chain([&](int l) { ex4[l]->gate_up(nullptr); }), gu_bytes);
  gate_up_variant("gate_up gemv by waves (PIE_MOE_DECODE=waves)", [&](int l) { ex0[l]->gate_up(nullptr); });
  // x loaded with the weights (moe_gemv_ahead_kernel) instead of a chunk at a time after them.
  gate_up_variant("gate_up gemv by waves + ahead (PIE_MOE_GEMV=ahead)", [&](int l) { exall[l]->gate_up(nullptr); });
  gate_up_variant("gate_up gemv U2, x with the weights", [&](int l) { ex4[l]->gate_up_cfg<2, true>(nullptr); });
  gate_up_variant("gate_up gemv U4, x with the weights", [&](int l) { ex4[l]->gate_up_cfg<4, true>(nullptr); });
  row("down gemv", chain([&](int l) { ex4[l]->down(nullptr); }), dn_bytes);
  // The down GEMV's grid: C columns per warp (2048/(4·C) CTAs per expert), U chunks of K (256
  // each; K = 768 is 3) per load round, act chunks after or with the weights. Same bits as
  // down() (checked here on layer 0's y).
  const auto down_ref = [&](int l) { ex4[l]->down(nullptr); };
  auto down_variant = [&](const char* label, const std::function<void(int)>& f) {
    variant(label, layers[0].ws->y(), size_t(n) * kK * kH, down_ref, f, dn_bytes);
  };
  down_variant("down gemv by waves + ahead (PIE_MOE_GEMV=ahead)", [&](int l) { exall[l]->down(nullptr); });
  down_variant("down gemv C2 U4, act with the weights", [&](int l) { ex4[l]->down_cfg<2, 4, true>(nullptr); });
  down_variant("down gemv C4 U2, act with the weights", [&](int l) { ex4[l]->down_cfg<4, 2, true>(nullptr); });
  down_variant("down gemv C4 U3, act with the weights", [&](int l) { ex4[l]->down_cfg<4, 3, true>(nullptr); });
  down_variant("down gemv by waves (PIE_MOE_DOWN=waves)", [&](int l) { exd[l]->down(nullptr); });
  down_variant("down gemv C2 U3", [&](int l) { ex4[l]->down_cfg<2, 3>(nullptr); });
  down_variant("down gemv C1 U3", [&](int l) { ex4[l]->down_cfg<1, 3>(nullptr); });
  down_variant("down gemv C4 U3", [&](int l) { ex4[l]->down_cfg<4, 3>(nullptr); });
  down_variant("down gemv C4 U2", [&](int l) { ex4[l]->down_cfg<4, 2>(nullptr); });
  down_variant("down gemv C8 U1", [&](int l) { ex4[l]->down_cfg<8, 1>(nullptr); });
  row("un-permute", chain([&](int l) { ex4[l]->unpermute(nullptr); }), 0);
  row("down gemv + un-permute", chain([&](int l) {
        ex4[l]->down(nullptr);
        ex4[l]->unpermute(nullptr);
      }),
      dn_bytes);
  row("fused down + un-permute C1 D8 (default)", chain([&](int l) { ex4[l]->down_unpermute_cfg<1, 8>(nullptr); }),
      dn_bytes);
  row("fused down + un-permute C1 D12", chain([&](int l) { ex4[l]->down_unpermute_cfg<1, 12>(nullptr); }), dn_bytes);
  row("fused down + un-permute C2 D6", chain([&](int l) { ex4[l]->down_unpermute_cfg<2, 6>(nullptr); }), dn_bytes);
  row("fused down + un-permute C2 D4", chain([&](int l) { ex4[l]->down_unpermute_cfg<2, 4>(nullptr); }), dn_bytes);
  row("block unfused (5 launches)", chain([&](int l) {
        TensorView<float> lg(layers[l].ws->logits(), {n, kE}, Device::Cuda);
        oc::gemv(lg, xv, layers[l].router.view({kE, kH}), static_cast<const bf16*>(nullptr), nullptr);
        oc::moe_route(n, true, *layers[l].ws, nullptr);
        ex4[l]->gate_up(nullptr);
        ex4[l]->down(nullptr);
        ex4[l]->unpermute(nullptr);
      }),
      rt_bytes + gu_bytes + dn_bytes);
  row("block route cta (5 launches)", chain([&](int l) {
        TensorView<float> lg(layers[l].ws->logits(), {n, kE}, Device::Cuda);
        oc::gemv(lg, xv, layers[l].router.view({kE, kH}), static_cast<const bf16*>(nullptr), nullptr);
        oc::moe_route(n, true, *layers[l].ws, nullptr, true);
        ex4[l]->gate_up(nullptr);
        ex4[l]->down(nullptr);
        ex4[l]->unpermute(nullptr);
      }),
      rt_bytes + gu_bytes + dn_bytes);
  row("block waves (5 launches)", chain([&](int l) {
        TensorView<float> lg(layers[l].ws->logits(), {n, kE}, Device::Cuda);
        oc::gemv(lg, xv, layers[l].router.view({kE, kH}), static_cast<const bf16*>(nullptr), nullptr);
        oc::moe_route(n, true, *layers[l].ws, nullptr);
        ex0[l]->gate_up(nullptr);
        ex0[l]->down(nullptr);
        ex0[l]->unpermute(nullptr);
      }),
      rt_bytes + gu_bytes + dn_bytes);
  row("block route cta + waves (5 launches)", chain([&](int l) {
        TensorView<float> lg(layers[l].ws->logits(), {n, kE}, Device::Cuda);
        oc::gemv(lg, xv, layers[l].router.view({kE, kH}), static_cast<const bf16*>(nullptr), nullptr);
        oc::moe_route(n, true, *layers[l].ws, nullptr, true);
        ex0[l]->gate_up(nullptr);
        ex0[l]->down(nullptr);
        ex0[l]->unpermute(nullptr);
      }),
      rt_bytes + gu_bytes + dn_bytes);
  row("block down waves (5 launches)", chain([&](int l) {
        TensorView<float> lg(layers[l].ws->logits(), {n, kE}, Device::Cuda);
        oc::gemv(lg, xv, layers[l].router.view({kE, kH}), static_cast<const bf16*>(nullptr), nullptr);
        oc::moe_route(n, true, *layers[l].ws, nullptr);
        exd[l]->gate_up(nullptr);
        exd[l]->down(nullptr);
        exd[l]->unpermute(nullptr);
      }),
      rt_bytes + gu_bytes + dn_bytes);
  row("block cta + waves + down waves (5 launches)", chain([&](int l) {
        TensorView<float> lg(layers[l].ws->logits(), {n, kE}, Device::Cuda);
        oc::gemv(lg, xv, layers[l].router.view({kE, kH}), static_cast<const bf16*>(nullptr), nullptr);
        oc::moe_route(n, true, *layers[l].ws, nullptr, true);
        ex00[l]->gate_up(nullptr);
        ex00[l]->down(nullptr);
        ex00[l]->unpermute(nullptr);
      }),
      rt_bytes + gu_bytes + dn_bytes);
  row("block gemv ahead (5 launches)", chain([&](int l) {
        TensorView<float> lg(layers[l].ws->logits(), {n, kE}, Device::Cuda);
        oc::gemv(lg, xv, layers[l].router.view({kE, kH}), static_cast<const bf16*>(nullptr), nullptr);
        oc::moe_route(n, true, *layers[l].ws, nullptr);
        exa[l]->gate_up(nullptr);
        exa[l]->down(nullptr);
        exa[l]->unpermute(nullptr);
      }),
      rt_bytes + gu_bytes + dn_bytes);
  row("block all four switches (5 launches)", chain([&](int l) {
        TensorView<float> lg(layers[l].ws->logits(), {n, kE}, Device::Cuda);
        oc::gemv(lg, xv, layers[l].router.view({kE, kH}), static_cast<const bf16*>(nullptr), nullptr);
        oc::moe_route(n, true, *layers[l].ws, nullptr, true);
        exall[l]->gate_up(nullptr);
        exall[l]->down(nullptr);
        exall[l]->unpermute(nullptr);
      }),
      rt_bytes + gu_bytes + dn_bytes);
  row("block fused (3 launches)", chain([&](int l) {
        oc::moe_router_route(xv, layers[l].router.view({kE, kH}), true, *layers[l].ws, nullptr);
        ex0[l]->gate_up(nullptr);
        ex0[l]->down_unpermute(nullptr);
      }),
      rt_bytes + gu_bytes + dn_bytes);
}

}  // namespace

int main(int argc, char** argv) {
  print_device_and_copy_ceiling("ceiling");
  std::vector<Layer> layers(kLayers);
  for (int i = 0; i < kLayers; ++i) {
    Layer& l = layers[i];
    l.router = DeviceBuffer<bf16>(size_t(kE) * kH);
    l.gu = DeviceBuffer<bf16>(size_t(kE) * 2 * kI * kH);
    l.dn = DeviceBuffer<bf16>(size_t(kE) * kH * kI);
    fill(l.router.data(), l.router.size(), 10 + i, 1.f / 45.f);
    fill(l.gu.data(), l.gu.size(), 20 + i, 1.f / 45.f);
    fill(l.dn.data(), l.dn.size(), 30 + i, 1.f / 28.f);
  }
  std::vector<int> ns;
  for (int i = 1; i < argc; ++i) ns.push_back(std::atoi(argv[i]));
  if (ns.empty()) ns = {1, 2, 4, 8};
  for (int n : ns) bench_tokens(n, layers);
  return 0;
}
