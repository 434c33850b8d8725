#!/usr/bin/env python3
"""Build the tiny random-weight OLMo-2 checkpoint (transformers `Olmo2ForCausalLM`) and the
outputs transformers computes for it, so a user-written OLMo-2 model in this directory can be
checked against transformers itself.

Usage (needs torch and transformers: `python3 -m pip install torch transformers safetensors`):
    python3 examples/custom_model/make_olmo2_fixture.py     # writes fixture/olmo2_tiny/

It is tests/reference/make_fixtures.py applied to one more architecture: the same weight
re-draw (projections ~ N(0, 1/fan_in), norm weights 1 + N(0, 0.2^2)), eager attention, prompts
of 5, 17 and 33 random ids re-drawn until the greedy path's top-1/top-2 logit gap is >= 0.02,
32 greedy tokens (ignoring EOS, recomputed without a KV cache), fp32 logits of the first 8
steps, and the transformers/torch versions, in the reference.json format documented in
tests/reference/README.md. Seeded: the same versions reproduce the files byte for byte.

What OLMo-2 changes against Qwen3: the norms come after each sublayer (post_attention_layernorm
on the attention output, post_feedforward_layernorm on the MLP output, each added to the
un-normalized residual; no input norm), and q_norm / k_norm are RMSNorms over the whole
projected q (heads x head_dim = 64) and k (kv heads x head_dim = 32), not per head.
"""
import os
import sys

from transformers import Olmo2Config, Olmo2ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "reference"))
import make_fixtures  # noqa: E402  (the conventions and the reference.json writer)

NAME = "olmo2_tiny"
SEED = 2001
CONFIG = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
              rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=512,
              pad_token_id=None)


def main():
    make_fixtures.FIXTURES[NAME] = (Olmo2ForCausalLM, Olmo2Config, CONFIG, None)
    make_fixtures.torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    make_fixtures.make(NAME, os.path.join(HERE, "fixture"), seed=SEED)


if __name__ == "__main__":
    main()
