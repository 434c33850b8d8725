#!/usr/bin/env python3
"""K/V magnitudes of the GPU tests' transformers checkpoints, and what an fp8 (e4m3) KV scale
would change (issue 14: fp8 KV agreement with the bf16 cache).

Builds the same random Qwen3 models as tests/gpu/make_hf_reference.py (same seeds and
`randomize`), runs one prompt of 257 random tokens through transformers in bf16 on the GPU, and
hooks every layer's K (after k_norm, before RoPE: RoPE rotates pairs, so it moves the per-element
amax by at most sqrt 2) and V. Per layer it prints the amax, the share of values in e4m3's
subnormal range at scale 1 (|x| < 2^-6), and the relative RMS rounding error of e4m3 with the
scale pie uses (1.0) and with a calibrated per-tensor scale (amax / 448, vLLM's
calculate_kv_scales with its constant at 448).

Usage (GPU machine, torch and transformers): python3 bench/kv_fp8_scale.py [--config-8b PATH]
"""
import argparse
import json
import os
import sys

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "gpu"))
import make_hf_reference as ref  # noqa: E402

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0


def rounding_error(x, scale):
    """Relative RMS error of x → e4m3(x / scale) · scale (saturating, as pie's cache write)."""
    q = (x / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3).float() * scale
    return float((q - x).norm() / x.norm().clamp_min(1e-30))


@torch.no_grad()
def report(name, kwargs, seed, length=257):
    config = Qwen3Config(**kwargs)
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(config).eval()
    torch.set_default_dtype(torch.float32)
    ref.randomize(model, torch.Generator(device="cuda").manual_seed(seed))
    seen = {}

    def hook(key):
        def f(_module, _inputs, out):
            seen[key] = out.detach().float().flatten()
        return f

    handles = []
    for i, layer in enumerate(model.model.layers):
        handles.append(layer.self_attn.k_norm.register_forward_hook(hook(("k", i))))
        handles.append(layer.self_attn.v_proj.register_forward_hook(hook(("v", i))))
    ids = torch.randint(0, config.vocab_size - 2, (1, length), generator=torch.Generator().manual_seed(seed))
    model(ids.cuda())
    for h in handles:
        h.remove()
    print(f"{name}: {config.num_hidden_layers} layers, {length} tokens")
    print("  layer  kv  amax     subnormal@1  err@scale1  err@amax/448")
    worst = {"k": [0, 0], "v": [0, 0]}
    for i in range(config.num_hidden_layers):
        for kind in ("k", "v"):
            x = seen[(kind, i)]
            amax = float(x.abs().max())
            sub = float((x.abs() < 2.0 ** -6).float().mean())
            e1, e2 = rounding_error(x, 1.0), rounding_error(x, amax / E4M3_MAX)
            worst[kind] = [max(worst[kind][0], e1), max(worst[kind][1], e2)]
            print(f"  {i:5d}  {kind}   {amax:7.3f}  {sub:10.4%}  {e1:10.4%}  {e2:12.4%}")
    print(f"  worst: K {worst['k'][0]:.4%} -> {worst['k'][1]:.4%}, V {worst['v'][0]:.4%} -> {worst['v'][1]:.4%}")
    del model
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config-8b", help="Qwen3-8B config.json (shape only)")
    ap.add_argument("--layers-8b", type=int, default=8)
    args = ap.parse_args()
    report("qwen3_small_hd128", ref.SMALL, 2001)
    if args.config_8b:
        with open(args.config_8b) as f:
            c = json.load(f)
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "head_dim", "rope_theta", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings")
        kw = {k: c[k] for k in keys if k in c}
        kw["num_hidden_layers"] = args.layers_8b
        report("qwen3_8b_shape", kw, 2002)


if __name__ == "__main__":
    main()
