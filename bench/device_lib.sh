# bench/device_lib.sh — helpers the bench/device_*.sh scripts source (not run on its own).
#   say MSG...              a timestamped line (seconds since the script started) to stdout and $SUM
#   run NAME LIMIT_S CMD... CMD under `timeout`, output to $LOGDIR/NAME.log; its status (and, when
#                           it failed, the log's last $RUN_TAIL lines) to the summary. Within
#                           $DEADLINE (seconds since the script started): the limit is cut to
#                           what is left, and a step with under $RUN_MIN_LEFT s left is skipped
#                           (status 124).
#   use_prebuilt            BUILD=$PIE_PREBUILT (a bench/device_bundle.sh bundle) when set: status 0
#   gpu_line                the GPU's name, memory and driver (nvidia-smi), for a first line
#   gtest_summary NAME [N]  the first N (20) verdict lines of a GoogleTest log $LOGDIR/NAME.log
#                           (failures, expectations, PASSED/SKIPPED) to stdout and $SUM
#   itl TAG MODEL [VAR=VAL...]
#                           one `pie bench` batch-1 latency run of MODEL (128 in / 128 out, dummy
#                           weights, 5 iterations) with VAR=VAL set, the names in $ITL_UNSET
#                           removed and $ITL_ARGS appended (e.g. --quantization fp8); its result
#                           line, prefixed [TAG], to stdout and $SUM; $ITL_BENCH names another
#                           pie_bench (an A/B against an older build in the same call)
#   decode_timelines MODEL...
#                           for each MODEL, the decode-attention CTA timeline of the engine's last
#                           batch-1 decode launch (pie_bench_timeline, when the bundle has it), its
#                           lines prefixed [timeline NAME], to stdout and $SUM
#   device_start            use_prebuilt (exits without a bundle), then the device line; sets
#                           MODEL8B and MOE (the benchmark model directories) unless set
#   wait_ready PID PORT     polls http://127.0.0.1:PORT/health until 200 (up to $READY_TRIES
#                           half-second tries) while PID lives; status 0 once ready
#   stop_server PID         SIGTERM, up to 10 s to exit, then SIGKILL
#   trace_profile NAME LIMIT_S BATCH LABEL [PROFILE_ARGS...] -- CMD...
#                           CMD run (as `run`) with the CUPTI tracer $TRACER injected, its kernel
#                           CSV profiled at decode batch BATCH by bench/nsys_decode_profile.py
#                           (PROFILE_ARGS passed on, e.g. --copy-tbps 4.2) into
#                           $LOGDIR/profile_NAME.txt, whose first 16 lines go to the summary
#                           prefixed [LABEL]; the CSV is gzipped
#   fp8_config SRC DST      DST/config.json = SRC's with Qwen3-8B-FP8's quantization_config (128×128
#                           weight blocks, dynamic 1×128 activations), and SRC's generation_config
# Settings (set them before sourcing or before a call): SUM (default /dev/null), LOGDIR (default
# $OUT), DEADLINE (default none), RUN_TAIL (12), RUN_MIN_LEFT (5), READY_TRIES (240).

# use_prebuilt: when $PIE_PREBUILT names a bundle (bench/device_bundle.sh; the build tree's layout,
# stripped, with lib/ and BUILT_FROM.txt), BUILD becomes it, its lib/ joins LD_LIBRARY_PATH, and
# the status is 0 (the caller skips its configure and build); else status 1.
# PIE_PREBUILT may also name the packed bundle (.device/bundle.txz): it is unpacked into
# /tmp/pie_bundle (Python's tarfile: the device may lack xz), again only when the file is newer.
use_prebuilt() {
  [ -n "${PIE_PREBUILT:-}" ] || return 1
  local dir=$PIE_PREBUILT
  if [ -f "$PIE_PREBUILT" ]; then
    dir=/tmp/pie_bundle
    if [ ! -f "$dir/.unpacked" ] || [ "$PIE_PREBUILT" -nt "$dir/.unpacked" ]; then
      rm -rf "$dir"
      python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$PIE_PREBUILT" /tmp ||
        { say "PIE_PREBUILT=$PIE_PREBUILT: cannot unpack"; exit 1; }
      touch "$dir/.unpacked"
    fi
  fi
  [ -d "$dir" ] || { say "PIE_PREBUILT=$PIE_PREBUILT: no such directory"; exit 1; }
  BUILD=$(realpath "$dir")
  export LD_LIBRARY_PATH=$BUILD/lib:${LD_LIBRARY_PATH:-}
  say "prebuilt: $(head -2 "$BUILD/BUILT_FROM.txt" 2>/dev/null | tr '\n' ' ')"
  return 0
}

say() { echo "== $(date -u +%H:%M:%S) +${SECONDS}s $*" | tee -a "${SUM:-/dev/null}"; }

run() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  if [ -n "${DEADLINE:-}" ]; then
    local left=$((DEADLINE - SECONDS - 3))
    if [ "$left" -lt "${RUN_MIN_LEFT:-5}" ]; then say "$name: skipped (deadline)"; return 124; fi
    [ "$limit" -gt "$left" ] && limit=$left
  fi
  local log="${LOGDIR:-$OUT}/$name.log"
  timeout "$limit" "$@" > "$log" 2>&1
  local rc=$?
  say "$name: rc=$rc in $((SECONDS - t0)) s"
  [ "$rc" -ne 0 ] && tail -n "${RUN_TAIL:-12}" "$log" | sed 's/^/   | /' | tee -a "${SUM:-/dev/null}"
  return $rc
}

trace_profile() {
  local name=$1 limit=$2 batch=$3 label=$4 dir=${LOGDIR:-$OUT}; shift 4
  local pargs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do pargs+=("$1"); shift; done
  shift  # the --
  run "$name" "$limit" env CUDA_INJECTION64_PATH="$(realpath "$TRACER")" PIE_KERNEL_TRACE="$dir/$name.csv" "$@"
  python3 bench/nsys_decode_profile.py "$dir/$name.csv" --batch "$batch" "${pargs[@]}" > "$dir/profile_$name.txt" 2>&1
  sed "s/^/[$label] /" "$dir/profile_$name.txt" | head -16 | tee -a "${SUM:-/dev/null}"
  gzip -f "$dir/$name.csv"
}

gpu_line() { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1; }

wait_ready() {
  local pid=$1 port=$2 i
  for ((i = 0; i < ${READY_TRIES:-240}; ++i)); do
    kill -0 "$pid" 2>/dev/null || return 1
    python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=2).status == 200 else 1)" \
      2>/dev/null && return 0
    sleep 0.5
  done
  return 1
}

stop_server() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 20; ++i)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}

fp8_config() {
  mkdir -p "$2"
  python3 - "$1" "$2" <<'PY'
import json, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
c = json.load(open(f"{src}/config.json"))
c["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                            "weight_block_size": [128, 128]}
json.dump(c, open(f"{dst}/config.json", "w"), indent=2)
shutil.copy(f"{src}/generation_config.json", dst)
PY
}

gtest_summary() {
  grep -E "FAILED  \]|Failure|Expected|Which is|PASSED|SKIPPED|tests ran" "${LOGDIR:-$OUT}/$1.log" | head -${2:-20} |
    tee -a "${SUM:-/dev/null}"
}

device_start() {
  use_prebuilt || exit 1
  say "device: $(gpu_line)"
  MODEL8B=${MODEL8B:-bench/models/Qwen3-8B} MOE=${MOE:-bench/models/Qwen3-30B-A3B}
}

itl() {
  local tag=$1 m=$2 v unset=()
  shift 2
  for v in ${ITL_UNSET:-}; do unset+=(-u "$v"); done
  # shellcheck disable=SC2086  # ITL_ARGS: more pie_bench arguments, split on spaces
  env "${unset[@]}" "$@" timeout 100 "${ITL_BENCH:-$BUILD/examples/pie/pie_bench}" "$m" --load-format dummy --input-len 128 \
    --output-len 128 --mode latency --num-iters 5 --num-iters-warmup 1 --max-num-seqs 8 ${ITL_ARGS:-} 2>&1 |
    grep -E "^latency \(" | sed "s/^/[$tag] /" | tee -a "${SUM:-/dev/null}"
}

decode_timelines() {
  [ -x "$BUILD/examples/pie/pie_bench_timeline" ] || return 0
  local m
  for m in "$@"; do
    timeout 150 "$BUILD/examples/pie/pie_bench_timeline" "$m" --load-format dummy --input-len 128 --output-len 128 \
      --mode latency --num-iters 2 --num-iters-warmup 1 --max-num-seqs 8 2>&1 |
      grep -E "^latency" | sed "s|^|[timeline $(basename "$m")] |" | tee -a "${SUM:-/dev/null}"
  done
}
