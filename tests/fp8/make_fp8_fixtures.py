#!/usr/bin/env python3
"""Build a tiny Qwen3 checkpoint in the published FP8 format (Qwen/Qwen3-8B-FP8's) from a random
bf16 one, and the outputs transformers computes for both, so pie's fp8 weights can be checked
against transformers (tests/fp8).

Usage (needs torch and transformers; transformers' fine-grained FP8 layer runs its block-scaled
matmul through a Triton kernel, so loading the FP8 checkpoint needs a CUDA GPU):
    python3 tests/fp8/make_fp8_fixtures.py            # writes tests/fp8/fixtures/

Writes two directories:
- qwen3_bf16: a random Qwen3ForCausalLM (tests/reference/make_fixtures.py's `randomize`), saved
  in bfloat16 by save_pretrained, with reference.json (its logits, transformers in fp32 over the
  bf16 weights, the format of tests/reference/README.md);
- qwen3_fp8: the same model in the published FP8 format: config.json gains
  quantization_config {quant_method fp8, fmt e4m3, activation_scheme dynamic,
  weight_block_size [128, 128]}; every q/k/v/o/gate/up/down weight becomes float8_e4m3fn with a
  float32 `weight_scale_inv` [ceil(N/128), ceil(K/128)] (scale = block max |w| / 448,
  w8 = saturate(w / scale) rounded to nearest even); embeddings, norms and lm_head stay bf16.
  reference.json holds transformers' logits for it when transformers can load it (the
  `transformers_fp8` field says where it ran, or why it could not).
Shapes are multiples of 128 (q 256, k/v 128, hidden 128, intermediate 384 rows), as in every
published Qwen3-FP8, so the fused q/k/v and gate/up projections keep whole blocks.
"""
import json
import math
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GenerationConfig, Qwen3Config, Qwen3ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import make_fixtures  # noqa: E402  (randomize, and the reference.json conventions)

SEED = 1800
CONFIG = dict(vocab_size=256, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=False,
              rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=512)
PROMPT_LENGTHS = (5, 17, 33)
NEW_TOKENS = 128      # the greedy path the GPU agreement test teacher-forces
LOGIT_STEPS = 8
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BLOCK = 128
FP8_MAX = 448.0


def quantize_block(w):
    """w [N, K] (any float dtype) → (float8_e4m3fn [N, K], float32 scales [ceil(N/128), ceil(K/128)])."""
    n, k = w.shape
    nb, kb = -(-n // BLOCK), -(-k // BLOCK)
    wf = torch.zeros(nb * BLOCK, kb * BLOCK, dtype=torch.float32)
    wf[:n, :k] = w.float()
    blocks = wf.view(nb, BLOCK, kb, BLOCK)
    amax = blocks.abs().amax(dim=(1, 3))
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (blocks / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.view(nb * BLOCK, kb * BLOCK)[:n, :k].contiguous(), scale.contiguous()


def greedy(model, ids, device):
    seq = list(ids)
    rows, margin = [], math.inf
    for step in range(NEW_TOKENS):
        with torch.no_grad():
            out = model(torch.tensor([seq], device=device)).logits[0, -1].float().cpu()
        top2 = torch.topk(out, 2).values
        margin = min(margin, float(top2[0] - top2[1]))
        if step < LOGIT_STEPS:
            rows.append(out)
        seq.append(int(out.argmax()))
    return seq[len(ids):], rows, margin


def write_reference(out_dir, name, model, device, prompts_ids, dtype, extra):
    prompts = []
    for ids in prompts_ids:
        tokens, rows, margin = greedy(model, ids, device)
        prompts.append(dict(prompt_ids=ids, greedy_ids=tokens, min_top2_margin=round(margin, 6),
                            logits=[[float(f"{v:.8g}") for v in r.tolist()] for r in rows]))
    ref = dict(name=name, architecture="Qwen3ForCausalLM", vocab_size=CONFIG["vocab_size"], dtype=dtype,
               seed=SEED, transformers_version=transformers.__version__, torch_version=torch.__version__,
               new_tokens=NEW_TOKENS, logit_steps=LOGIT_STEPS, prompts=prompts, **extra)
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))
        f.write("\n")


def main():
    out_root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "fixtures")
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    config = Qwen3Config(**CONFIG, bos_token_id=254, eos_token_id=255)
    torch.manual_seed(SEED)
    model = Qwen3ForCausalLM(config).float().eval()
    model.config._attn_implementation = "eager"
    gen = torch.Generator().manual_seed(SEED)
    make_fixtures.randomize(model, gen)
    model = model.to(torch.bfloat16)

    bf16_dir, fp8_dir = os.path.join(out_root, "qwen3_bf16"), os.path.join(out_root, "qwen3_fp8")
    for d in (bf16_dir, fp8_dir):
        shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(bf16_dir, safe_serialization=True)
    GenerationConfig(bos_token_id=254, eos_token_id=[255]).save_pretrained(bf16_dir)

    prompts = [torch.randint(0, CONFIG["vocab_size"], (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]
    ref32 = Qwen3ForCausalLM(config).float().eval()
    ref32.config._attn_implementation = "eager"
    ref32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    write_reference(bf16_dir, "qwen3_bf16", ref32, "cpu", prompts, "bfloat16 weights, fp32 compute", {})

    # The published format, from the bf16 checkpoint's own tensors.
    os.makedirs(fp8_dir)
    tensors = {}
    for name, t in load_file(os.path.join(bf16_dir, "model.safetensors")).items():
        if name.endswith(".weight") and name.split(".")[-2] in PROJECTIONS:
            q, s = quantize_block(t)
            tensors[name] = q
            tensors[name + "_scale_inv"] = s
        else:
            tensors[name] = t
    save_file(tensors, os.path.join(fp8_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(bf16_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg["quantization_config"] = dict(quant_method="fp8", fmt="e4m3", activation_scheme="dynamic",
                                      weight_block_size=[BLOCK, BLOCK])
    with open(os.path.join(fp8_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    shutil.copy(os.path.join(bf16_dir, "generation_config.json"), fp8_dir)

    # transformers' own fine-grained FP8 (Triton block-scaled matmul, activations quantized per
    # token and 128 columns): try the CPU first, then a GPU.
    where, err = None, []
    for device in ("cpu", "cuda"):
        if device == "cuda" and not torch.cuda.is_available():
            err.append("cuda: no GPU")
            continue
        try:
            m8 = AutoModelForCausalLM.from_pretrained(fp8_dir, device_map=device, dtype=torch.bfloat16).eval()
            m8.config._attn_implementation = "eager"
            with torch.no_grad():
                m8(torch.tensor([prompts[0]], device=device))
            where = device
            break
        except Exception as e:  # noqa: BLE001  (recorded in reference.json)
            err.append(f"{device}: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    if where:
        write_reference(fp8_dir, "qwen3_fp8", m8, where, prompts, "fp8 e4m3 weights, bf16 activations",
                        dict(transformers_fp8=f"loaded on {where}" + ("" if not err else f" ({'; '.join(err)})")))
    else:
        with open(os.path.join(fp8_dir, "reference.json"), "w") as f:
            json.dump(dict(name="qwen3_fp8", transformers_fp8="not loadable: " + "; ".join(err),
                           transformers_version=transformers.__version__, torch_version=torch.__version__), f)
            f.write("\n")
    for d in (bf16_dir, fp8_dir):
        size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
        print(f"{os.path.basename(d)}: {sorted(os.listdir(d))}, {size / 1e6:.2f} MB")
    print("transformers fp8:", where or "not loadable", err)


if __name__ == "__main__":
    main()
