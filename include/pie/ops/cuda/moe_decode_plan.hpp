#pragma once
/// \file moe_decode_plan.hpp
/// \brief The host-side choices of the decode MoE block (moe_decode.cuh, moe_routing.cuh), in
/// plain C++ so that a CPU test (tests/ops/test_moe_group_plan.cpp) checks them: the run-time
/// switches PIE_MOE_DECODE, PIE_MOE_ROUTE, PIE_MOE_DOWN, PIE_MOE_GEMV, PIE_MOE_UNPERMUTE,
/// PIE_MOE_DOWN_EARLY and PIE_MOE_DOWN_DEPENDENTS (compiled into the engine only with
/// -DPIE_MOE_DECODE_VARIANTS=ON: kVariantsCompiled), the gate_up GEMV's chunks in flight
/// and the down GEMV's columns by wave count, and the work split of the fused down + un-permute
/// kernel.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "pie/core/error.hpp"

namespace pie::ops::cuda::moe_decode {

/// \brief PIE_MOE_DECODE: unset, empty or "unfused" keeps the five-launch decode block (router
/// GEMV, moe_route, gate_up, down, un-permute); "fused" takes moe_decode.cuh's kernels for
/// n ≤ kMoeGemvMaxTokens; "waves" keeps the five launches but gives the gate_up GEMV its chunks
/// in flight by wave count (gate_up_unroll), as the fused path does: on the H100 of 2026-12-05
/// that gate_up took 19.86 µs at batch 1 against 23.64 with 4 chunks, while the fused router +
/// routing (8.82 vs 8.89 µs) and down + un-permute (18.83 vs 14.19) gained nothing. Anything
/// else is an error naming the variable.
enum class Choice { kUnfused, kFused, kWaves };
inline Choice parse_choice(const char* v) {
  const std::string_view s = v ? v : "";
  if (s.empty() || s == "unfused") return Choice::kUnfused;
  if (s == "waves") return Choice::kWaves;
  PIE_CHECK(s == "fused", "PIE_MOE_DECODE=", s, ": expected fused, waves or unfused");
  return Choice::kFused;
}

/// \brief A two-valued switch `name`: unset, empty or `off` (or `off_alias`, when given) → false,
/// `on` → true; anything else is an error naming the variable ("NAME=value: expected ON or OFF").
/// `expected`, when given, replaces "ON or OFF" in the message (a switch with more values).
inline bool parse_on_off(const char* name, const char* v, std::string_view on, std::string_view off,
                         std::string_view off_alias = {}, std::string_view expected = {}) {
  const std::string_view s = v ? v : "";
  if (s.empty() || s == off || (!off_alias.empty() && s == off_alias)) return false;
  if (expected.empty()) PIE_CHECK(s == on, name, "=", s, ": expected ", on, " or ", off);
  else PIE_CHECK(s == on, name, "=", s, ": expected ", expected);
  return true;
}

/// \brief PIE_MOE_ROUTE's choice: moe_route_kernel (global counts, a ticket, the last CTA
/// groups: "atomic"), one CTA for n ≤ kMoeGemvMaxTokens ("cta": moe_route's one_cta), or, for a
/// one-token call, inside the gate_up GEMV's CTAs (MoeExperts::gate_up_routed; "gate_up", which
/// routes larger decode calls in one CTA). The same routing every way.
struct RouteChoice {
  bool one_cta = false;     ///< "cta" or "gate_up"
  bool in_gate_up = false;  ///< "gate_up"
};
/// \brief Parses PIE_MOE_ROUTE: unset or empty parses as "atomic" here (parse_switches then gives
/// it the build's default); anything but atomic, cta or gate_up is an error naming the variable.
inline RouteChoice parse_route(const char* v) {
  const std::string_view s = v ? v : "";
  if (s == "gate_up") return {true, true};
  return {parse_on_off("PIE_MOE_ROUTE", v, "cta", "atomic", {}, "cta, gate_up or atomic"), false};
}
/// \brief Whether PIE_MOE_ROUTE routes small calls in one CTA ("cta" or "gate_up").
inline bool parse_route_one_cta(const char* v) { return parse_route(v).one_cta; }

/// \brief PIE_MOE_UNPERMUTE: "kernel" keeps the un-permute's own kernel; "down" has a one-token
/// call's down GEMV un-permute in its last CTAs (MoeExperts::down_unpermute_in_last_ctas; the same
/// bits). Unset or empty parses as "kernel" here; parse_switches then gives it the build's
/// default. Anything else is an error naming the variable.
inline bool parse_unpermute_in_down(const char* v) {
  return parse_on_off("PIE_MOE_UNPERMUTE", v, "down", "kernel");
}

/// \brief PIE_MOE_DOWN_EARLY: "1" lets the down GEMV with the un-permute in its last CTAs read a
/// routing kernel's record and load its first weights before its grid dependency on gate_up
/// (moe_gemv_body's kEarly; the same bits); "0" waits first. Unset or empty parses as "0" here;
/// parse_switches then gives it the build's default. Anything else is an error naming the variable.
inline bool parse_down_early(const char* v) { return parse_on_off("PIE_MOE_DOWN_EARLY", v, "1", "0"); }

/// \brief PIE_MOE_DOWN_DEPENDENTS: "start" lets the kernel after the down GEMV with the
/// un-permute in its last CTAs (the next layer's qkv GEMV) launch at its start; "end" after its
/// products. Unset or empty parses as "end"; anything else is an error naming the variable.
inline bool parse_down_dependents_at_start(const char* v) {
  return parse_on_off("PIE_MOE_DOWN_DEPENDENTS", v, "start", "end");
}

/// \brief Waves a grid of `ctas` CTAs takes at `per_sm` resident CTAs on `sms` SMs.
constexpr int64_t waves(int64_t ctas, int per_sm, int sms) {
  const int64_t slots = int64_t(per_sm < 1 ? 1 : per_sm) * (sms < 1 ? 1 : sms);
  return (ctas + slots - 1) / slots;
}

/// \brief The gate_up GEMV's chunks in flight per lane, 4 or 2: 2 only when it needs fewer
/// waves (fewer registers, more CTAs per SM; see launch_moe_gemv). At Qwen3-30B-A3B's batch 1
/// the grid is 96 × 8 = 768 CTAs: 5 per SM with 4 chunks (92 registers) is 2 waves on 132 SMs,
/// 9 per SM with 2 chunks (56 registers) is 1.
constexpr int gate_up_unroll(int64_t ctas, int per_sm_u4, int per_sm_u2, int sms) {
  return waves(ctas, per_sm_u2, sms) < waves(ctas, per_sm_u4, sms) ? 2 : 4;
}

/// \brief PIE_MOE_DOWN: "base" (or "default", its name before the variants became the default)
/// keeps the down GEMV's 2 columns per warp; "waves" lets n ≤ 2 take 4 columns (2 chunks in
/// flight) when that needs fewer waves (down_columns). Unset or empty parses as "base" here;
/// parse_switches then gives it the build's default. Anything else is an error naming the variable.
inline bool parse_down_by_waves(const char* v) {
  return parse_on_off("PIE_MOE_DOWN", v, "waves", "base", "default");
}

/// \brief PIE_MOE_GEMV: "base" (or "default", as PIE_MOE_DOWN) keeps the grouped GEMVs loading a
/// row chunk after the weights; "ahead" has them load each step's row chunks with its weights at
/// n ≤ 2 (moe_gemv_ahead_kernel). Unset or empty parses as "base" here; parse_switches then gives
/// it the build's default. Anything else is an error naming the variable.
inline bool parse_gemv_ahead(const char* v) {
  return parse_on_off("PIE_MOE_GEMV", v, "ahead", "base", "default");
}

/// \brief Whether this build compiles the four switches' variants: CMake
/// -DPIE_MOE_DECODE_VARIANTS=ON (the default), which defines PIE_MOE_DECODE_VARIANTS (the MoE
/// kernel test and bench always do). Off (CI's test build, for its compile budget: the variants
/// add about 20 kernels per element type, the ahead, U = 2 and 4-column GEMVs, the one-CTA
/// routing, the fused router + routing and down + un-permute, to every engine translation unit),
/// the engine compiles the base five-launch block only. The variants give the base block's bits
/// (MoeDecodeSwitches.GraphReplayEqualsDefault), so the option changes speed, never output.
inline constexpr bool kVariantsCompiled =
#if defined(PIE_MOE_DECODE_VARIANTS)
    true;
#else
    false;
#endif

/// \brief The four run-time switches of the decode MoE block, read together (all off: the
/// base five-launch block).
struct Switches {
  Choice decode = Choice::kUnfused;  ///< PIE_MOE_DECODE
  bool route_one_cta = false;        ///< PIE_MOE_ROUTE=cta (or gate_up)
  bool route_in_gate_up = false;     ///< PIE_MOE_ROUTE=gate_up: one token routed inside gate_up
  bool down_by_waves = false;        ///< PIE_MOE_DOWN=waves
  bool gemv_ahead = false;           ///< PIE_MOE_GEMV=ahead
  bool unpermute_in_down = false;    ///< PIE_MOE_UNPERMUTE=down
  bool down_early = false;           ///< PIE_MOE_DOWN_EARLY=1 (with unpermute_in_down)
  bool down_dependents_at_start = false;  ///< PIE_MOE_DOWN_DEPENDENTS=start (with unpermute_in_down)
};

/// \brief What an unset switch takes in a build with the variants: the measured best. The
/// fifteenth session's three (H100, 2026-12-06, Qwen3-30B-A3B batch-1 ITL, same binary, alternating)
/// stay opt-in: the routing inside gate_up lost (3.662 → 3.679 ms), the un-permute in down gained
/// 0.25% in one binary (3.662 → 3.653) and lost 0.5–0.7% in the next (3.659 → 3.686, with its
/// early weights 3.678), which differed only in how the kernel's first weights are loaded.
/// Qwen3-30B-A3B
/// batch 1, 128/128, one H100, 2026-12-05 (docs/benchmarks.md): ITL 4.495/4.501 ms base, 4.426
/// route=cta, 4.362 decode=waves, 4.417 down=waves, 4.243 gemv=ahead, 4.213 all four (−6.4%). The
/// fused block lost (docs/kernels.md), so decode=waves, not fused.
inline constexpr Switches kCompiledDefaults{Choice::kWaves, true, false, true, true, false, false, false};

/// \brief Parses the four switches' values (nullptr or empty: unset). With `compiled` (a build
/// with the variants, kVariantsCompiled) an unset switch takes kCompiledDefaults; without, the
/// base block, and a value that asks for a variant is an error naming the variable and the CMake
/// option, rather than a switch silently ignored. `unpermute`, `down_early`, `down_dependents`:
/// PIE_MOE_UNPERMUTE, PIE_MOE_DOWN_EARLY, PIE_MOE_DOWN_DEPENDENTS.
inline Switches parse_switches(const char* decode, const char* route, const char* down, const char* gemv,
                               bool compiled, const char* unpermute = nullptr, const char* down_early = nullptr,
                               const char* down_dependents = nullptr) {
  const RouteChoice rc = parse_route(route);
  Switches s{parse_choice(decode), rc.one_cta, rc.in_gate_up, parse_down_by_waves(down), parse_gemv_ahead(gemv),
             parse_unpermute_in_down(unpermute), parse_down_early(down_early),
             parse_down_dependents_at_start(down_dependents)};
  if (compiled) {
    const auto unset = [](const char* v) { return v == nullptr || *v == '\0'; };
    if (unset(decode)) s.decode = kCompiledDefaults.decode;
    if (unset(route)) {
      s.route_one_cta = kCompiledDefaults.route_one_cta;
      s.route_in_gate_up = kCompiledDefaults.route_in_gate_up;
    }
    if (unset(down)) s.down_by_waves = kCompiledDefaults.down_by_waves;
    if (unset(gemv)) s.gemv_ahead = kCompiledDefaults.gemv_ahead;
    if (unset(unpermute)) s.unpermute_in_down = kCompiledDefaults.unpermute_in_down;
    if (unset(down_early)) s.down_early = kCompiledDefaults.down_early;
    if (unset(down_dependents)) s.down_dependents_at_start = kCompiledDefaults.down_dependents_at_start;
  } else {
    const auto refuse = [](bool on, const char* name, const char* v) {
      PIE_CHECK(!on, name, "=", v, ": this build has no MoE decode variants (configure with "
                "-DPIE_MOE_DECODE_VARIANTS=ON)");
    };
    refuse(s.decode != Choice::kUnfused, "PIE_MOE_DECODE", decode);
    refuse(s.route_one_cta, "PIE_MOE_ROUTE", route);
    refuse(s.down_by_waves, "PIE_MOE_DOWN", down);
    refuse(s.gemv_ahead, "PIE_MOE_GEMV", gemv);
    refuse(s.unpermute_in_down, "PIE_MOE_UNPERMUTE", unpermute);
    refuse(s.down_early, "PIE_MOE_DOWN_EARLY", down_early);
    refuse(s.down_dependents_at_start, "PIE_MOE_DOWN_DEPENDENTS", down_dependents);
  }
  return s;
}

/// \brief The switches from the environment (parse_switches), for this build.
inline Switches switches_from_env() {
  return parse_switches(std::getenv("PIE_MOE_DECODE"), std::getenv("PIE_MOE_ROUTE"), std::getenv("PIE_MOE_DOWN"),
                        std::getenv("PIE_MOE_GEMV"), kVariantsCompiled, std::getenv("PIE_MOE_UNPERMUTE"),
                        std::getenv("PIE_MOE_DOWN_EARLY"), std::getenv("PIE_MOE_DOWN_DEPENDENTS"));
}

/// \brief The down GEMV's output columns per warp, 4 or 2: 4 only when its grid of `ctas_c4`
/// CTAs needs fewer waves than the `ctas_c2` of 2 columns. At Qwen3-30B-A3B's batch 1 the grid
/// is 256 × 8 = 2048 CTAs with 2 columns, 9 per SM (56 registers): 2 waves on 132 SMs; with 4
/// columns and 2 chunks in flight it is 128 × 8 = 1024 CTAs, 9 per SM (56): 1.
constexpr int down_columns(int64_t ctas_c2, int per_sm_c2, int64_t ctas_c4, int per_sm_c4, int sms) {
  return waves(ctas_c4, per_sm_c4, sms) < waves(ctas_c2, per_sm_c2, sms) ? 4 : 2;
}

/// \brief The fused down + un-permute kernel's work: CTA (x, t) of a grid (ctas_x, n) owns
/// columns [x·4·C, (x+1)·4·C) of token t (4 warps of C columns); each warp streams k·chunks
/// (expert, 256-element chunk) items of its columns' weights.
struct DownSplit {
  int ctas_x;  ///< CTAs per token
  int chunks;  ///< 256-element chunks of one expert row (K = I)
  int items;   ///< (expert, chunk) items per warp
};
constexpr DownSplit down_split(int H, int I, int k, int C) {
  return DownSplit{(H + 4 * C - 1) / (4 * C), (I + 255) / 256, k * ((I + 255) / 256)};
}

}  // namespace pie::ops::cuda::moe_decode
