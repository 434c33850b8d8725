#!/usr/bin/env python3
"""Build tiny random-weight Qwen3-MoE checkpoints (transformers `Qwen3MoeForCausalLM`) and the
outputs transformers computes for them, so pie::Qwen3Moe (include/pie/model/qwen3_moe.hpp) can
be checked against transformers itself.

Usage (needs torch and transformers: `python3 -m pip install torch transformers safetensors`):
    python3 tests/moe/make_moe_fixtures.py            # writes tests/moe/fixtures/

It is tests/reference/make_fixtures.py applied to one more architecture (the same conventions
and reference.json format, tests/reference/README.md), with three changes:
- the fused 3-D expert parameters ([E, 2·I, H] gate_up, [E, H, I] down) are re-drawn with
  their real fan-in (the last dimension), which the 2-D rule of make_fixtures would miss;
- attention and the experts both run transformers' eager code (the per-expert loop);
- a prompt is also re-drawn when some token's routing is a near-tie: the gap between the k-th
  and (k+1)-th router probability (every layer, every position of the greedy path) must be at
  least 1e-4, so fp32 rounding cannot pick another expert.
save_pretrained writes the experts one tensor each (model.layers.L.mlp.experts.E.{gate,up,
down}_proj.weight), the layout of the checkpoints on the Hub, which pie fuses at load.
"""
import os
import sys

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import make_fixtures  # noqa: E402  (the conventions and the reference.json writer)

MIN_ROUTER_GAP = 1e-4

BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000.0,
            rms_norm_eps=1e-6, max_position_embeddings=512, pad_token_id=None)

# name → config kwargs (and save_pretrained's max_shard_size). Together: top-k 2 and 4,
# norm_topk_prob true and false, an mlp_only_layers entry, decoder_sparse_step 2, tied
# embeddings and a sharded checkpoint.
FIXTURES = {
    "qwen3_moe_top2_norm": (dict(BASE, num_hidden_layers=3, num_experts=8, num_experts_per_tok=2,
                                 norm_topk_prob=True, mlp_only_layers=[1], decoder_sparse_step=1,
                                 tie_word_embeddings=False), None),
    "qwen3_moe_top4_nonorm": (dict(BASE, num_hidden_layers=2, num_experts=8, num_experts_per_tok=4,
                                   norm_topk_prob=False, mlp_only_layers=[], decoder_sparse_step=1,
                                   tie_word_embeddings=False), "300KB"),
    "qwen3_moe_top4_norm_sparse2": (dict(BASE, num_hidden_layers=4, num_experts=6, num_experts_per_tok=4,
                                         norm_topk_prob=True, mlp_only_layers=[], decoder_sparse_step=2,
                                         tie_word_embeddings=True), None),
}

_randomize = make_fixtures.randomize
_greedy = make_fixtures.greedy


def randomize(model, gen):
    _randomize(model, gen)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 3:  # fused experts [E, out, in]
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)


def router_gap(model, seq):
    """Smallest k-th/(k+1)-th router probability gap over every MoE layer and position."""
    gaps = []

    def hook(module, args, _out):
        x = args[0].reshape(-1, module.hidden_dim)
        probs = torch.softmax(torch.nn.functional.linear(x, module.weight), dim=-1, dtype=torch.float)
        top = torch.topk(probs, module.top_k + 1, dim=-1).values
        gaps.append(float((top[:, -2] - top[:, -1]).min()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m).__name__ == "Qwen3MoeTopKRouter"]
    with torch.no_grad():
        model(torch.tensor([seq]))
    for h in handles:
        h.remove()
    return min(gaps) if gaps else float("inf")


def greedy(model, ids):
    model.config._experts_implementation = "eager"
    tokens, rows, margin = _greedy(model, ids)
    if router_gap(model, list(ids) + tokens) < MIN_ROUTER_GAP:
        margin = 0.0  # make() re-draws the prompt
    return tokens, rows, margin


def main():
    make_fixtures.randomize = randomize
    make_fixtures.greedy = greedy
    make_fixtures.torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    for i, (name, (cfg, shard)) in enumerate(sorted(FIXTURES.items())):
        make_fixtures.FIXTURES[name] = (Qwen3MoeForCausalLM, Qwen3MoeConfig, cfg, shard)
        make_fixtures.make(name, os.path.join(HERE, "fixtures"), seed=2000 + i)


if __name__ == "__main__":
    main()
