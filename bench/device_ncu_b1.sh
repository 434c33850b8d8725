#!/usr/bin/env bash
# bench/device_ncu_b1.sh — each kernel of a batch-1 decode step timed alone by Nsight Compute
# (gpu__time_duration, clocks left alone), next to the decode attention kernel on its own shape.
# Why: the CUPTI trace (device_decode_trace.sh) charges each op the time it moved the step's end,
# with kernels overlapping under programmatic dependent launch; ncu serializes them, so the two
# together separate a kernel's own latency from the overlap it gets.
# Usage: PIE_PREBUILT=.device/bundle.txz OUT=$OUT bash bench/device_ncu_b1.sh
set -u
B=/tmp/pie_bundle_ncu
mkdir -p $B && xz -dc "${PIE_PREBUILT:-.device/bundle.txz}" | tar -x -C $B && B=$B/pie_bundle
export LD_LIBRARY_PATH=$B/lib:${LD_LIBRARY_PATH:-}
NCU="ncu --clock-control none --csv --page raw --metrics gpu__time_duration.sum,launch__grid_size,launch__registers_per_thread,launch__block_size"
summ() {  # CSV → "name-prefix  us" lines, then per-name median
  python3 - "$1" <<'PY'
import csv, sys, statistics, re
rows = list(csv.reader(open(sys.argv[1])))
hdr = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
if hdr is None: print("no ncu rows"); sys.exit()
h = rows[hdr]; ki, ti = h.index("Kernel Name"), h.index("gpu__time_duration.sum")
gi, ri = h.index("launch__grid_size"), h.index("launch__registers_per_thread")
seq = []
for r in rows[hdr + 2:]:
    if len(r) <= ti: continue
    name = re.sub(r"<.*", "", r[ki])[:48]
    try: t = float(r[ti].replace(",", ""))
    except ValueError: continue
    seq.append((name, t, r[gi], r[ri]))
unit = rows[hdr + 1][ti]
print("unit", unit, "kernels", len(seq))
for n, t, g, reg in seq[:60]: print(f"  {n:48s} {t:10.0f} grid {g:>6s} regs {reg}")
by = {}
for n, t, g, reg in seq: by.setdefault(n, []).append(t)
print("median per kernel name:")
for n, v in sorted(by.items(), key=lambda kv: -sum(kv[1])):
    print(f"  {n:48s} n={len(v):4d} median {statistics.median(v):9.0f} sum {sum(v):10.0f}")
PY
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# 1. The decode attention kernel alone: batch 1, 192 and 512 tokens, group 8 (4 KV heads) and
# group 4 (8): the merge kernel (kind 0), cluster + early pages + parts (5), merge kernel + parts (6).
for row in 1/192/0/0/4 1/192/0/5/4 1/192/0/6/4 1/512/0/5/4 1/192/0/0/8 1/192/0/5/8 1/192/0/6/8; do
  timeout 60 $NCU -c 6 -k regex:'decode|merge' $B/bench/cuda/pie_bench_cuda_decode \
    "--benchmark_filter=BM_DecodeMerge<bf16>/$row/" > $OUT/ncu_kernel_${row//\//_}.csv 2>$OUT/ncu_kernel_err.txt
  echo "== kernel row $row"; summ $OUT/ncu_kernel_${row//\//_}.csv | tail -n +2 | head -8
done
# 2. A batch-1 decode step of each model, every kernel timed alone (graph nodes one by one).
L="--load-format dummy --input-len 128 --output-len ${PIE_NCU_OUT:-24} --mode latency --num-iters 1 --num-iters-warmup 0 --max-num-seqs 8"
for m in Qwen3-30B-A3B Qwen3-8B; do
  timeout ${PIE_NCU_T:-200} $NCU --launch-skip ${PIE_NCU_SKIP:-3000} -c ${PIE_NCU_COUNT:-500} \
    $B/examples/pie/pie_bench bench/models/$m $L ${PIE_NCU_ENV:-} > $OUT/ncu_step_$m.csv 2>$OUT/ncu_step_err_$m.txt
  echo "== $m batch-1 step, rc=$?"; summ $OUT/ncu_step_$m.csv | sed -n '/median/,$p' | head -24
done
