#!/usr/bin/env python3
"""Random-weight Qwen3 checkpoints and transformers' bf16 outputs on the GPU, for
tests/gpu/test_hf.cu (pie's CUDA engine vs HF transformers).

Usage (on the GPU machine; needs torch and transformers):
    python3 tests/gpu/make_hf_reference.py --out DIR [--config-8b PATH --layers-8b N]

Writes DIR/<name>/ with what save_pretrained writes (bf16 safetensors, config.json) plus
reference.json in the format of tests/reference/fixtures (prompts: prompt_ids, greedy_ids,
min_top2_margin, logits of the first LOGIT_STEPS greedy steps; plus top_ties: per step, the ids
whose logit equals the maximum, since bf16 logits tie; and near_ties: the ids within one bf16 step
of the maximum, which transformers' bf16 logits cannot order). transformers runs the model in
bf16 on the GPU with its KV cache, exactly as `generate` would (greedy, no EOS stop).
  * qwen3_small_hd128: a small Qwen3 with head_dim 128 and GQA group 4.
  * qwen3_moe_small (--moe): a small Qwen3MoeForCausalLM (16 experts, top-4, norm_topk_prob,
    expert width 256, one mlp_only_layers entry; transformers' own expert kernels in bf16).
  * qwen3_8b_shape: Qwen3-8B's widths (hidden 4096, 32/8 heads, head_dim 128, intermediate
    12288, vocab 151936) from --config-8b, with --layers-8b decoder layers (36 is the real model).
Parameters are redrawn so activations are O(1) and logits well spread (as make_fixtures.py
does); a prompt whose greedy path has a top-2 logit gap under --min-margin is redrawn (best of
--tries kept), so a near-tie does not decide the comparison.
"""
import argparse
import json
import math
import os
import shutil
import time

import torch
import transformers
from transformers import Qwen3Config, Qwen3ForCausalLM

NEW_TOKENS = 32
LOGIT_STEPS = 8
PROMPT_LENGTHS = (7, 33, 100, 257)

MOE_SMALL = dict(vocab_size=4096, hidden_size=512, intermediate_size=1536, moe_intermediate_size=256,
                 num_experts=16, num_experts_per_tok=4, norm_topk_prob=True, decoder_sparse_step=1,
                 mlp_only_layers=[1], num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                 head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=4096,
                 tie_word_embeddings=False)

SMALL = dict(vocab_size=4096, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
             num_attention_heads=8, num_key_value_heads=2, head_dim=128, rope_theta=1e6,
             rms_norm_eps=1e-6, max_position_embeddings=4096, tie_word_embeddings=False)


def randomize(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * r)
            elif "embed_tokens" in name:
                p.copy_(r)
            else:
                scale = 1.5 if "lm_head" in name else 1.0
                # fan-in is the last dimension (2-D linears and 3-D fused experts [E, out, in])
                p.copy_(scale * r / math.sqrt(p.shape[-1]))


@torch.no_grad()
def greedy(model, ids):
    """NEW_TOKENS greedy tokens with the KV cache, the logits of the first LOGIT_STEPS, and the
    smallest top-1/top-2 gap on the path."""
    out = model(torch.tensor([ids], device="cuda"), use_cache=True)
    tokens, rows, margin, ties, near = [], [], math.inf, [], []
    for step in range(NEW_TOKENS):
        row = out.logits[0, -1].float()
        top2 = torch.topk(row, 2).values
        margin = min(margin, float(top2[0] - top2[1]))
        # bf16 logits tie often at a 151936-token vocabulary: every id at the maximum is an
        # equally valid greedy token (transformers takes the lowest).
        ties.append(torch.nonzero(row == top2[0]).flatten().tolist()[:16])
        # Ids within one bf16 step of the maximum: transformers' own logits cannot order them
        # (its lm_head output is bf16), so any of them is as valid a greedy pick.
        top = float(top2[0])
        ulp = 2.0 ** (math.floor(math.log2(abs(top))) - 7) if top != 0 else 2.0 ** -133
        near.append(torch.nonzero(row >= top - ulp).flatten().tolist()[:16])
        if step < LOGIT_STEPS:
            rows.append(row.cpu())
        tok = int(row.argmax())
        tokens.append(tok)
        out = model(torch.tensor([[tok]], device="cuda"), past_key_values=out.past_key_values, use_cache=True)
    return tokens, rows, margin, ties, near


TORCH_TOPK = torch.topk


def lowest_index_topk(input, k, dim=-1, largest=True, sorted=True, *, out=None):
    """torch.topk with ties broken toward the lower index (pie's routing kernel and the CPU op;
    vLLM's topk-softmax too): a stable sort keeps equal values in index order."""
    assert out is None and largest
    v, i = torch.sort(input, dim=dim, descending=True, stable=True)
    return torch.return_types.topk((v.narrow(dim, 0, k), i.narrow(dim, 0, k)))


def rel_err(a, b):
    """The metric of tests/gpu (gpu_test::rel_err): ||a - b|| / ||b||."""
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@torch.no_grad()
def noise_floor(model, prompts, vocab):
    """How far transformers moves from its own reference (printed), and its routing (returned,
    for reference.json's "routing"; pie_gpu_test_hf's MoeRoutingDisagreesOnlyAtNearTies): the reference
    prompts teacher-forced as one full-sequence forward (other kernel shapes, the same bf16
    arithmetic) against the incremental reference logits; and that forward with the routers'
    logits in fp32 (a pre-hook upcasts each router's input and weight) against it in bf16. The
    first is the floor for the decode positions (the prompt runs as one prefill in both); the
    second, how far a change of routing at near-ties moves the logits. Also: the exact ties at
    the routers' top-k boundary, torch.topk's pick among equal values, and the forward with ties
    broken toward the lower expert id (pie's rule) against torch's order."""
    gates = [m.mlp.gate for m in model.model.layers if hasattr(m.mlp, "experts")]
    impl = getattr(model.config, "_experts_implementation", None)

    def forward_rows(p):
        seq = p["prompt_ids"] + p["greedy_ids"][:LOGIT_STEPS]
        out = model(torch.tensor([seq], device="cuda"), use_cache=False).logits[0].float()
        n = len(p["prompt_ids"])
        return [out[n - 1 + k].cpu() for k in range(LOGIT_STEPS)]

    # Each router's picks and its top-k boundary gap, per row, from its own bf16 logits; the
    # exact ties at that boundary (bf16 logits tie often).
    k = model.config.num_experts_per_tok
    ties, rows, picks = [0], [0], []

    def record(mod, args, out):
        x = args[0].reshape(-1, mod.weight.shape[1])
        logits = torch.nn.functional.linear(x, mod.weight).float()  # bf16 output, as the router
        top = torch.sort(logits, dim=-1, descending=True).values
        ties[0] += int((top[:, k - 1] == top[:, k]).sum())
        rows[0] += logits.shape[0]
        ids = out[2] if isinstance(out, tuple) and len(out) == 3 else None  # transformers 5: (probs, weights, ids)
        if ids is None or ids.dtype not in (torch.int32, torch.int64) or tuple(ids.shape) != (logits.shape[0], k):
            ids = torch.topk(logits, k, dim=-1).indices  # the softmax keeps the order
        ulp = torch.exp2(torch.floor(torch.log2(top[:, k - 1].abs().clamp_min(2.0 ** -126))) - 7)
        picks[-1].append(dict(ids=torch.sort(ids, dim=-1).values.tolist(),
                              gap_ulps=[round(float(g), 2) for g in (top[:, k - 1] - top[:, k]) / ulp]))

    def forward_routed(p):
        picks.append([])
        return forward_rows(p)

    counters = [g.register_forward_hook(record) for g in gates]
    full = [forward_routed(p) for p in prompts]
    for h in counters:
        h.remove()
    floor = max(rel_err(r, torch.tensor(want)) for p, f in zip(prompts, full) for r, want in zip(f, p["logits"]))
    probe = torch.topk(torch.zeros(2, 16, device="cuda"), 4).indices.tolist()
    torch.topk = lowest_index_topk  # the same forward with pie's tie rule
    try:
        other = [forward_rows(p) for p in prompts]
    finally:
        torch.topk = TORCH_TOPK
    tie_rule = max(rel_err(a, b) for fa, fb in zip(other, full) for a, b in zip(fa, fb))
    saved = [g.weight.data for g in gates]
    hooks = [g.register_forward_pre_hook(lambda mod, args: tuple(a.float() for a in args)) for g in gates]
    for g in gates:
        g.weight.data = g.weight.data.float()
    try:
        f32 = [forward_rows(p) for p in prompts]
        router = max(rel_err(a, b) for fa, fb in zip(f32, full) for a, b in zip(fa, fb))
    except Exception as e:  # a transformers version whose router does not take this
        router = f"n/a ({type(e).__name__}: {e})"
    finally:
        for h in hooks:
            h.remove()
        for g, w in zip(gates, saved):
            g.weight.data = w
    print(f"[hf noise floor] experts implementation {impl}: full-sequence forward vs incremental reference "
          f"worst logits rel err {floor:.4g}; fp32 router logits vs bf16 {router if isinstance(router, str) else f'{router:.4g}'}; "
          f"top-k boundary ties {ties[0]}/{rows[0]} router rows; torch.topk of 16 equal values picks {probe[0]}; "
          f"ties to the lower id vs torch's order {tie_rule:.4g}", flush=True)
    # Per prompt: the teacher-forced tokens of that forward and, per MoE layer, each row's experts
    # (ascending) and the gap between its k-th and (k+1)-th logits in bf16 steps.
    return [dict(tokens=p["prompt_ids"] + p["greedy_ids"][:LOGIT_STEPS], ids=[l["ids"] for l in layers],
                 gap_ulps=[l["gap_ulps"] for l in layers]) for p, layers in zip(prompts, picks)]


def make(name, kwargs, out_root, seed, min_margin, tries, moe=False):
    t0 = time.time()
    if moe:
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
        config, cls = Qwen3MoeConfig(**kwargs), Qwen3MoeForCausalLM
        for key in ("num_experts", "num_local_experts"):  # the name differs across transformers versions
            setattr(config, key, kwargs["num_experts"])
    else:
        config, cls = Qwen3Config(**kwargs), Qwen3ForCausalLM
    config.eos_token_id = kwargs["vocab_size"] - 1
    config.bos_token_id = kwargs["vocab_size"] - 2
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.bfloat16)  # build in bf16 on the device: no fp32 copy
    with torch.device("cuda"):
        model = cls(config).eval()
    torch.set_default_dtype(torch.float32)
    gen = torch.Generator(device="cuda").manual_seed(seed)
    randomize(model, gen)
    out_dir = os.path.join(out_root, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    cpu_gen = torch.Generator().manual_seed(seed)
    prompts = []
    for length in PROMPT_LENGTHS:
        best = None
        for _ in range(tries):
            ids = torch.randint(0, config.vocab_size - 2, (length,), generator=cpu_gen).tolist()
            tokens, rows, margin, ties, near = greedy(model, ids)
            if best is None or margin > best[3]:
                best = (ids, tokens, rows, margin, ties, near)
            if margin >= min_margin:
                break
        ids, tokens, rows, margin, ties, near = best
        prompts.append(dict(prompt_ids=ids, greedy_ids=tokens, min_top2_margin=round(margin, 6), top_ties=ties,
                            near_ties=near,
                            logits=[[float(f"{v:.6g}") for v in r.tolist()] for r in rows]))
    routing = noise_floor(model, prompts, config.vocab_size) if moe else None
    ref = dict(name=name, architecture=cls.__name__, vocab_size=config.vocab_size,
               dtype="bfloat16", seed=seed, device=torch.cuda.get_device_name(),
               transformers_version=transformers.__version__, torch_version=torch.__version__,
               new_tokens=NEW_TOKENS, logit_steps=LOGIT_STEPS, prompts=prompts)
    if routing is not None:
        ref["routing"] = routing
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))
    del model
    torch.cuda.empty_cache()
    print(f"{name}: {config.num_hidden_layers} layers, margins "
          f"{[p['min_top2_margin'] for p in prompts]}, {time.time() - t0:.1f} s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--config-8b", help="Qwen3-8B config.json (shape only)")
    ap.add_argument("--layers-8b", type=int, default=8)
    ap.add_argument("--min-margin", type=float, default=0.1)
    ap.add_argument("--tries", type=int, default=4)
    ap.add_argument("--moe", action="store_true", help="also qwen3_moe_small")
    ap.add_argument("--only-moe", action="store_true", help="only qwen3_moe_small")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.moe or args.only_moe:
        make("qwen3_moe_small", MOE_SMALL, args.out, 2003, args.min_margin, args.tries, moe=True)
    if args.only_moe:
        return
    make("qwen3_small_hd128", SMALL, args.out, 2001, args.min_margin, args.tries)
    if args.config_8b:
        with open(args.config_8b) as f:
            c = json.load(f)
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rope_theta", "rms_norm_eps", "max_position_embeddings",
                "tie_word_embeddings")
        kw = {k: c[k] for k in keys}
        kw["num_hidden_layers"] = args.layers_8b
        make("qwen3_8b_shape", kw, args.out, 2002, args.min_margin, args.tries)


if __name__ == "__main__":
    main()
