#!/usr/bin/env bash
# bench/device_prompt_logprobs.sh — issue 17's prompt_logprobs on the GPU, in one call within
# PIE_DEADLINE_S: the prompt_logprobs kernel against the CPU Sampler (pie_cuda_test_sampling,
# which also times device scoring against copying rows to the host), the GPU engine against
# the CPU engine on a transformers-built checkpoint (pie_gpu_test_prompt_logprobs), then
# `pie serve --device cuda` and `--device cpu` on one small transformers-built checkpoint of
# the embedded tokenizer's vocabulary (`--tokenizer embedded`), asked for prompt_logprobs (a
# prompt over several prefill chunks) and for echo with logprobs; the two servers' answers are
# compared. Summary printed last.
#   OUT=dir PIE_DEADLINE_S=150 bash bench/device_prompt_logprobs.sh
# Needs: the binaries built with -DCMAKE_CUDA_ARCHITECTURES=90a in $PIE_BIN_DIR (default
# .device/plp: pie, pie_gpu_test_prompt_logprobs, pie_cuda_test_sampling, and the shared
# libraries the machine lacks). When a test binary does not start there, it is built here.
set -u
OUT=${OUT:-/tmp/pie_plp_out}
BIN=${PIE_BIN_DIR:-.device/plp}
DEADLINE=${PIE_DEADLINE_S:-100000}
LOGS="$OUT/logs"; mkdir -p "$LOGS"
SUM="$OUT/summary.txt" LOGDIR=$LOGS
source "$(dirname "$0")/device_lib.sh"
gt() { grep -E "^\[(gpu|prompt)|OK \]|FAILED  \]|Failure|Expected|Which is|PASSED" "$LOGS/$1.log" | head -${2:-30} | tee -a "$SUM"; }
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0
[ -d /usr/local/cuda/bin ] && export PATH=/usr/local/cuda/bin:$PATH
PIE_LD="$BIN:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"  # only pie's programs get the carried libraries
say "device: $(gpu_line)"

# Checkpoints, with transformers, while the tests start: tests/gpu/make_hf_reference.py's small
# Qwen3 (the engine test's), and one for serving with the embedded tokenizer's 512 ids.
run hf_reference 90 python3 tests/gpu/make_hf_reference.py --out /tmp/hfref --tries 1 &
HFREF=$!
run serve_ckpt 90 python3 - /tmp/serve_ckpt <<'PY' &
import math, sys, torch
from transformers import Qwen3Config, Qwen3ForCausalLM
dst = sys.argv[1]
torch.manual_seed(0)
cfg = Qwen3Config(vocab_size=512, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=128, rope_theta=1e6,
                  rms_norm_eps=1e-6, max_position_embeddings=4096, tie_word_embeddings=False)
m = Qwen3ForCausalLM(cfg)
with torch.no_grad():  # O(1) activations and well spread logits, as make_hf_reference.py draws them
    for name, p in m.named_parameters():
        r = torch.randn(p.shape)
        p.copy_(1.0 + 0.2 * r if name.endswith("norm.weight") else r if "embed_tokens" in name
                else (1.5 if "lm_head" in name else 1.0) * r / math.sqrt(p.shape[-1]))
m.to(torch.bfloat16).save_pretrained(dst)
print("saved", dst)
PY
CKPT=$!

# The test binaries: carried, else built here.
TESTS_DIR=$BIN
if ! LD_LIBRARY_PATH="$PIE_LD" "$BIN/pie_cuda_test_sampling" --gtest_list_tests > "$LOGS/probe.log" 2>&1; then
  say "carried test binaries do not start here: $(tail -2 "$LOGS/probe.log" | tr '\n' ' ')"
  run configure 60 cmake -S . -B /tmp/build-plp -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DPIE_BUILD_BENCH=OFF -DPIE_BUILD_EXAMPLES=OFF -DPIE_BUILD_TESTS=ON
  run build 200 cmake --build /tmp/build-plp -j "$(nproc)" --target pie_cuda_test_sampling pie_gpu_test_prompt_logprobs
  mkdir -p /tmp/plp-tests
  cp /tmp/build-plp/tests/cuda/pie_cuda_test_sampling /tmp/build-plp/tests/gpu/pie_gpu_test_prompt_logprobs /tmp/plp-tests/
  TESTS_DIR=/tmp/plp-tests
fi
LD_LIBRARY_PATH="$PIE_LD" run test_sampling 60 "$TESTS_DIR/pie_cuda_test_sampling" --gtest_color=no; gt test_sampling 20
wait $HFREF
LD_LIBRARY_PATH="$PIE_LD" PIE_GPU_HF_DIR=/tmp/hfref run test_prompt_logprobs 90 \
  "$TESTS_DIR/pie_gpu_test_prompt_logprobs" --gtest_color=no; gt test_prompt_logprobs

# pie serve on both backends, one checkpoint; prefill chunks of 64 tokens.
wait $CKPT
serve() {  # serve PORT DEVICE DTYPE
  LD_LIBRARY_PATH="$PIE_LD" "$BIN/pie" serve /tmp/serve_ckpt --tokenizer embedded --device "$2" --dtype "$3" --host 127.0.0.1 \
    --port "$1" --max-model-len 2048 --max-num-seqs 8 --max-num-batched-tokens 64 --gpu-memory-utilization 0.5 \
    --swap-space 1 --disable-log-requests > "$LOGS/serve_$2.log" 2>&1 &
}
if [ -x "$BIN/pie" ] && [ -d /tmp/serve_ckpt ]; then
  serve 8131 cuda bfloat16; GPU_PID=$!
  serve 8132 cpu float32; CPU_PID=$!
  run serve_check 60 python3 - <<'PY'
import json, sys, time, urllib.request
def call(port, path, body=None, timeout=60):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode() if body else None,
                                 {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=timeout))
for port in (8131, 8132):
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2); break
        except Exception:
            time.sleep(0.25)
    else:
        sys.exit(f"server on {port} not ready")
model = call(8131, "/v1/models")["data"][0]["id"]
prompt = ("The H200 pairs the Hopper processor with 141 GB of faster memory, so decoding, which reads every "
          "weight and the whole KV cache for each token, runs about forty percent faster than on the H100, while "
          "prefill, which is bound by arithmetic, runs at the same speed. ") * 2
base = {"model": model, "prompt": prompt, "max_tokens": 4, "temperature": 0, "ignore_eos": True}
call(8131, "/v1/completions", base)  # warm-up
t0 = time.time(); g = call(8131, "/v1/completions", dict(base, prompt_logprobs=5)); t_plp = time.time() - t0
t0 = time.time(); call(8131, "/v1/completions", base); t_plain = time.time() - t0
c = call(8132, "/v1/completions", dict(base, prompt_logprobs=5))
gp, cp = g["choices"][0]["prompt_logprobs"], c["choices"][0]["prompt_logprobs"]
n = g["usage"]["prompt_tokens"]
assert len(gp) == len(cp) == n and gp[0] is None and cp[0] is None, (len(gp), len(cp), n)
first = lambda d: next(iter(d.items()))  # the scored prompt token is each entry's first key
worst, swaps = 0.0, 0
for a, b in zip(gp[1:], cp[1:]):
    (ka, va), (kb, vb) = first(a), first(b)
    assert ka == kb, (ka, kb)
    worst = max(worst, abs(va["logprob"] - vb["logprob"]))
    top_a = {k for k, v in a.items() if v["rank"] <= 5}
    top_b = {k for k, v in b.items() if v["rank"] <= 5}
    swaps += len(top_a - top_b)
print(f"serve: {n} prompt tokens in chunks of 64; cuda vs cpu prompt_logprobs=5: worst |dlogprob| of the prompt "
      f"token {worst:.4f}; top-5 ids not in the cpu's top-5: {swaps} of {5 * (n - 1)}")
print(f"serve: cuda request with prompt_logprobs=5 {1e3 * t_plp:.1f} ms, without {1e3 * t_plain:.1f} ms")
e = call(8131, "/v1/completions", dict(base, echo=True, logprobs=2))["choices"][0]
lp = e["logprobs"]
assert len(lp["tokens"]) == n + 4 and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
echo_vs = max(abs(lp["token_logprobs"][i] - first(gp[i])[1]["logprob"]) for i in range(1, n))
print(f"serve: echo+logprobs=2 on cuda: {len(lp['tokens'])} tokens (prompt {n} + 4), first entry null; "
      f"|echo logprob - prompt_logprobs| worst {echo_vs:.2e}; text starts with the prompt: {e['text'].startswith(prompt)}")
ch = call(8131, "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "Hello there"}],
                                         "max_tokens": 3, "prompt_logprobs": 1})
print(f"serve: chat prompt_logprobs on cuda: {len(ch['prompt_logprobs'])} entries for {ch['usage']['prompt_tokens']} "
      "prompt tokens")
PY
  grep -E "^serve:" "$LOGS/serve_check.log" | tee -a "$SUM"
  kill -TERM $GPU_PID $CPU_PID 2>/dev/null; sleep 1; kill -KILL $GPU_PID $CPU_PID 2>/dev/null
  grep -E "error|Error" "$LOGS/serve_cuda.log" | head -5 | tee -a "$SUM"
fi
say "done"
tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOGS"
