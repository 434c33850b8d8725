#!/usr/bin/env python3
"""Build tiny random-weight Hugging Face checkpoints and the outputs HF transformers computes
for them, so pie's CPU engine can be checked against transformers itself.

Usage (needs torch and transformers; see README.md beside this file):
    python3 tests/reference/make_fixtures.py            # writes tests/reference/fixtures/
    python3 tests/reference/make_fixtures.py --out DIR

Every fixture directory holds what `save_pretrained` writes (config.json,
generation_config.json, *.safetensors in fp32, and model.safetensors.index.json when sharded)
plus reference.json, whose format README.md documents. Everything is seeded: rerunning with the
same torch/transformers versions reproduces the files.
"""
import argparse
import json
import math
import os
import shutil

import torch
import transformers
from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

HERE = os.path.dirname(os.path.abspath(__file__))

PROMPT_LENGTHS = (5, 17, 33)
NEW_TOKENS = 32
LOGIT_STEPS = 8      # logits are stored for the prompt's last position and 7 greedy steps after
MIN_MARGIN = 2e-2    # greedy steps whose top-1/top-2 logit gap is smaller are re-drawn

# name → (model class, config class, config kwargs, save_pretrained max_shard_size or None).
# Together they cover: sharding, tied embeddings, head_dim != hidden/heads, GQA group 4,
# attention bias (Qwen2), no q/k norm (Qwen2, Llama) and llama3 rope scaling.
FIXTURES = {
    "qwen3_tied": (Qwen3ForCausalLM, Qwen3Config, dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
        rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=512), None),
    "qwen3_gqa4_sharded": (Qwen3ForCausalLM, Qwen3Config, dict(
        vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=2, head_dim=24, tie_word_embeddings=False,
        rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=512), "120KB"),
    "qwen2_bias": (Qwen2ForCausalLM, Qwen2Config, dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
        rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=512), "150KB"),
    "llama_rope_llama3": (LlamaForCausalLM, LlamaConfig, dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
        rms_norm_eps=1e-5, max_position_embeddings=512,
        # head_dim 16, theta 1e4, original 64: the 8 rope frequencies fall in all three
        # llama3 bands (kept, interpolated, divided by factor).
        rope_scaling=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                          low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=64)), None),
}


def randomize(model, gen):
    """Re-draws every parameter so activations are O(1) and logits well spread.

    transformers' own init (normal(0, 0.02), norms = 1) makes near-uniform logits whose greedy
    argmax is decided by rounding noise; unit-ish activations and non-trivial norm weights make
    the comparison sensitive to every op (a skipped q/k norm or bias changes the tokens).
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                # Tied: a small embedding keeps h·Eᵀ from just echoing the input token.
                scale = 0.15 if model.config.tie_word_embeddings else 1.0
                p.copy_(scale * torch.randn(p.shape, generator=gen))
            else:  # [out, in] projections and lm_head
                scale = 1.5 if "lm_head" in name else 1.0
                p.copy_(scale * torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))


def greedy(model, ids):
    """32 greedy tokens by re-running the whole sequence each step (no KV cache, no EOS stop)."""
    seq = list(ids)
    logits_rows, margin = [], math.inf
    for step in range(NEW_TOKENS):
        with torch.no_grad():
            out = model(torch.tensor([seq])).logits[0, -1].float()
        top2 = torch.topk(out, 2).values
        margin = min(margin, float(top2[0] - top2[1]))
        if step < LOGIT_STEPS:
            logits_rows.append(out)
        seq.append(int(out.argmax()))
    return seq[len(ids):], logits_rows, margin


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def make(name, out_root, seed):
    model_cls, config_cls, kwargs, shard = FIXTURES[name]
    config = config_cls(**kwargs, bos_token_id=kwargs["vocab_size"] - 2,
                        eos_token_id=kwargs["vocab_size"] - 1)
    torch.manual_seed(seed)
    model = model_cls(config).float().eval()
    # eager attention: the plain softmax(QKᵀ)V that pie's CPU backend also computes.
    model.config._attn_implementation = "eager"
    gen = torch.Generator().manual_seed(seed)
    randomize(model, gen)

    out_dir = os.path.join(out_root, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir, max_shard_size=shard or "1GB", safe_serialization=True)
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=[config.eos_token_id],
                     do_sample=True, temperature=0.7, top_p=0.9, top_k=20).save_pretrained(out_dir)

    model64 = model_cls(config).double().eval()
    model64.config._attn_implementation = "eager"
    model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})

    prompts, worst64 = [], 0.0
    for length in PROMPT_LENGTHS:
        for _ in range(100):  # re-draw prompts whose greedy path has a near-tie
            ids = torch.randint(0, config.vocab_size, (length,), generator=gen).tolist()
            tokens, rows, margin = greedy(model, ids)
            if margin >= MIN_MARGIN:
                break
        else:
            raise RuntimeError(f"{name}: no prompt of length {length} with margin {MIN_MARGIN}")
        seq = ids + tokens
        for j, row in enumerate(rows):  # how far transformers' own fp32 is from fp64
            with torch.no_grad():
                ref = model64(torch.tensor([seq[:length + j]])).logits[0, -1]
            worst64 = max(worst64, rel_err(row.double(), ref))
        prompts.append(dict(prompt_ids=ids, greedy_ids=tokens, min_top2_margin=round(margin, 6),
                            logits=[[float(f"{v:.8g}") for v in r.tolist()] for r in rows]))

    ref = dict(name=name, architecture=config.architectures[0] if config.architectures
               else model_cls.__name__, vocab_size=config.vocab_size, dtype="float32",
               seed=seed, transformers_version=transformers.__version__,
               torch_version=torch.__version__, new_tokens=NEW_TOKENS, logit_steps=LOGIT_STEPS,
               fp32_vs_fp64_max_rel_err=float(f"{worst64:.3g}"), prompts=prompts)
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(out_dir, x)) for x in os.listdir(out_dir))
    print(f"{name}: {len(os.listdir(out_dir))} files, {size / 1e6:.2f} MB, "
          f"fp32 vs fp64 rel err {worst64:.2e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "fixtures"))
    ap.add_argument("--only", nargs="*", choices=sorted(FIXTURES))
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    for i, name in enumerate(sorted(FIXTURES)):
        if not args.only or name in args.only:
            make(name, args.out, seed=1000 + i)


if __name__ == "__main__":
    main()
