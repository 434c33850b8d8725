#!/usr/bin/env python3
"""HF transformers `generate` on the workloads `pie bench` runs, on the same GPU: the baseline
of issue 6's targets (docs/gpu_engine.md).

Usage (on the GPU machine), one model build for several workloads:
    python3 bench/compare_hf.py CONFIG_DIR latency:128:128 throughput:2048:128:128:512
  latency:IN:OUT                      batch 1: time to first token, inter-token latency
  throughput:N:IN:OUT:BATCH           N requests in static batches of BATCH

The model is built from CONFIG_DIR/config.json with random bf16 weights (what
`pie bench --load-format dummy` measures: speed does not depend on the values). Static batches:
requests are cut into batches of --batch-size, each one `generate` call with greedy decoding,
exactly --output-len new tokens (min_new_tokens = max_new_tokens, so EOS never ends a row early),
the default KV cache and attention implementation (sdpa). Timed with the device synchronised.
Prints one JSON line per workload (and appends it to --output-json when given).
"""
import argparse
import json
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def build(config_dir, dtype=torch.bfloat16):
    config = AutoConfig.from_pretrained(config_dir)
    torch.set_default_dtype(dtype)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config).eval()
    torch.set_default_dtype(torch.float32)
    return model, config


@torch.no_grad()
def run_batch(model, config, batch, input_len, output_len, gen):
    ids = torch.randint(0, config.vocab_size, (batch, input_len), generator=gen).cuda()
    mask = torch.ones_like(ids)
    pad = config.eos_token_id if isinstance(config.eos_token_id, int) else config.eos_token_id[0]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=output_len,
                         min_new_tokens=output_len, pad_token_id=pad)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    assert out.shape == (batch, input_len + output_len), out.shape
    return dt


@torch.no_grad()
def ttft(model, config, input_len, gen):
    """Time of a generate call that produces one token: the prefill plus the first sample."""
    return run_batch(model, config, 1, input_len, 1, gen)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config_dir")
    ap.add_argument("workloads", nargs="+", help="latency:IN:OUT or throughput:N:IN:OUT:BATCH")
    ap.add_argument("--num-iters", type=int, default=1, help="latency: best of this many")
    ap.add_argument("--output-json", help="append one JSON line per workload")
    args = ap.parse_args()
    model, config = build(args.config_dir)
    gen = torch.Generator().manual_seed(0)
    run_batch(model, config, 4, 16, 4, gen)  # warm-up: kernels, allocator
    for spec in args.workloads:
        kind, *nums = spec.split(":")
        nums = [int(x) for x in nums]
        r = dict(engine="hf-transformers", workload=spec, device=torch.cuda.get_device_name(),
                 attn_implementation=getattr(model.config, "_attn_implementation", None),
                 experts_implementation=getattr(model.config, "_experts_implementation", None),
                 torch=torch.__version__, transformers=__import__("transformers").__version__)
        if kind == "latency":
            input_len, output_len = nums
            t_first = min(ttft(model, config, input_len, gen) for _ in range(args.num_iters))
            t_all = min(run_batch(model, config, 1, input_len, output_len, gen) for _ in range(args.num_iters))
            itl = (t_all - t_first) / max(output_len - 1, 1)
            r.update(input_len=input_len, output_len=output_len, ttft_ms=1e3 * t_first, itl_ms=1e3 * itl,
                     decode_tok_per_s=1 / itl)
        elif kind == "throughput":
            n, input_len, output_len, batch = nums
            left, total = n, 0.0
            while left > 0:
                b = min(left, batch)
                total += run_batch(model, config, b, input_len, output_len, gen)
                left -= b
            r.update(num_prompts=n, input_len=input_len, output_len=output_len, batch_size=batch,
                     elapsed_s=total, output_tok_per_s=n * output_len / total,
                     total_tok_per_s=n * (input_len + output_len) / total)
        else:
            raise SystemExit(f"unknown workload {spec}")
        line = json.dumps(r)
        print(line, flush=True)
        if args.output_json:
            with open(args.output_json, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
