#!/usr/bin/env bash
# bench/device_interference.sh — issue 15 item 4 on one GPU: prefill/decode interference when
# serving. Runs bench/device_serve.sh once per decode-first budget (0, then each in $PIE_BUDGETS:
# a token count or auto) at concurrency $PIE_LEVELS, 128 prompt / 128 output tokens, and prints
# one line per setting and level: median and p99 ITL, p99/median, throughput.
#   OUT=dir PIE_BUDGETS="auto 512" bash bench/device_interference.sh
# Budget 0 is vLLM's behaviour (no cap); `pie serve`'s default is auto.
# Needs what device_serve.sh needs (the CUDA `pie` in .device/gsrv, Qwen3-8B's json files in
# .device/Qwen3-8B).
set -u
OUT=${OUT:-/tmp/pie_interference_out}
BUDGETS=${PIE_BUDGETS:-auto 512}
export PIE_LEVELS=${PIE_LEVELS:-64,256}
mkdir -p "$OUT"
for b in 0 $BUDGETS; do
  extra="--max-prefill-tokens-with-decodes $b"
  PIE_SERVE_EXTRA="$extra" OUT="$OUT/budget_$b" bash "$(dirname "$0")/device_serve.sh" > "$OUT/budget_$b.log" 2>&1
  echo "== budget $b: $(grep -E '^== (server ready|client rc)' "$OUT/budget_$b.log" | tr '\n' ' ')"
done
python3 - "$OUT" $BUDGETS <<'PY'
import json, os, sys
out = sys.argv[1]
print(f"{'budget':>8} {'conc':>5} {'median ITL ms':>14} {'p99 ITL ms':>11} {'p99/med':>8} {'tok/s':>9}")
for b in ["0"] + sys.argv[2:]:
    path = os.path.join(out, f"budget_{b}", "serving.json")
    if not os.path.exists(path):
        print(f"{b:>8} no result"); continue
    for lv in json.load(open(path))["levels"]:
        med, p99 = lv.get("itl_ms_p50"), lv.get("itl_ms_p99")
        ratio = p99 / med if med and p99 else float("nan")
        print(f"{b:>8} {lv['concurrency']:>5} {med:>14.2f} {p99:>11.2f} {ratio:>8.2f} {lv.get('output_tok_per_s', 0):>9.0f}")
PY
