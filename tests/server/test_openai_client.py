"""The official openai client against `pie serve` (embedded default model, CPU)."""
import json
import urllib.request

import pytest

from conftest import ALIAS, API_KEY, MAX_MODEL_LEN, MODEL

PROMPT = "The quick brown fox jumps over the lazy dog."


def tokenize(server, text, add_special_tokens=True):
    req = urllib.request.Request(server.base + "/tokenize", method="POST",
                                 data=json.dumps({"prompt": text, "add_special_tokens": add_special_tokens}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_list_models(client):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == [MODEL, ALIAS]
    assert all(m.object == "model" and m.owned_by == "pie" for m in models.data)
    assert client.models.retrieve(ALIAS).id == ALIAS


def test_completion_shape_and_usage(server, client):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.id.startswith("cmpl-")
    assert r.object == "text_completion"
    assert r.model == MODEL
    assert isinstance(r.created, int) and r.created > 1_600_000_000
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0 and c.finish_reason == "length" and isinstance(c.text, str)
    # Usage counts equal the tokenizer's.
    assert r.usage.prompt_tokens == tokenize(server, PROMPT)["count"]
    assert r.usage.completion_tokens == 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_completion_with_alias_and_token_prompt(server, client):
    ids = tokenize(server, PROMPT)["tokens"]
    a = client.completions.create(model=ALIAS, prompt=ids, max_tokens=6, temperature=0)
    b = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0)
    assert a.model == ALIAS
    assert a.usage.prompt_tokens == len(ids)
    assert a.choices[0].text == b.choices[0].text  # same tokens in, same greedy text out


def test_completion_several_prompts_and_echo(client):
    r = client.completions.create(model=MODEL, prompt=["one two", "three"], max_tokens=4, temperature=0, n=2,
                                  echo=True)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text.startswith("one two") and r.choices[2].text.startswith("three")
    assert r.choices[0].text == r.choices[1].text  # greedy: both sequences agree
    texts = {}
    for ch in client.completions.create(model=MODEL, prompt=["one two", "three"], max_tokens=4, temperature=0, n=2,
                                        echo=True, stream=True):
        texts[ch.choices[0].index] = texts.get(ch.choices[0].index, "") + ch.choices[0].text
    assert [texts[i] for i in range(4)] == [c.text for c in r.choices]


def test_chat_completion(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "Be brief."},
                                                              {"role": "user", "content": "Hello!"}],
                                       max_completion_tokens=10, temperature=0,
                                       extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 10
    assert r.usage.prompt_tokens > 5


def test_chat_usage_matches_tokenize_of_messages(server, client):
    msgs = [{"role": "user", "content": "Count me."}]
    req = urllib.request.Request(server.base + "/tokenize", method="POST",
                                 data=json.dumps({"messages": msgs}).encode())
    with urllib.request.urlopen(req, timeout=30) as resp:
        count = json.loads(resp.read())["count"]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=3, temperature=0)
    assert r.usage.prompt_tokens == count


def test_streaming_completion_with_usage(client):
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0,
                                     extra_body={"ignore_eos": True})
    stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
                                       stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    text, finish, usage, chunks = "", None, None, 0
    for chunk in stream:
        chunks += 1
        if chunk.choices:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        else:
            usage = chunk.usage
    assert chunks >= 3
    assert text == full.choices[0].text
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 12 and usage.prompt_tokens == full.usage.prompt_tokens


def test_streaming_chat_with_usage(client):
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Stream, please."}],
                                            max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    roles, content, reasoning, finish, usage = [], "", "", None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if not chunk.choices:
            usage = chunk.usage
            continue
        d = chunk.choices[0].delta
        if d.role:
            roles.append(d.role)
        content += d.content or ""
        reasoning += getattr(d, "reasoning_content", None) or ""
        finish = chunk.choices[0].finish_reason or finish
    assert roles == ["assistant"]
    assert finish == "length"
    assert usage.completion_tokens == 10
    full = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Stream, please."}],
                                          max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
    assert content == (full.choices[0].message.content or "")
    assert reasoning == (getattr(full.choices[0].message, "reasoning_content", None) or "")


def test_n2_sampling(client):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=1.0, n=2, seed=11,
                                  extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage.completion_tokens == 32
    assert r.choices[0].text != r.choices[1].text  # two independent samples (random model, 16 tokens)


def test_max_tokens_gives_length(client):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3


def test_stop_strings(client):
    # Seeded sampling (reproducible) gives varied text; greedy on the random model repeats itself.
    common = dict(model=MODEL, prompt=PROMPT, max_tokens=40, temperature=1.0, seed=5)
    base = client.completions.create(extra_body={"ignore_eos": True}, **common).choices[0].text
    # A stop string taken from the middle of the text (its first occurrence) cuts it right there.
    stop = next((base[i:i + 3] for i in range(4, len(base) - 3)
                 if base[i:i + 3].strip() and "\ufffd" not in base[i:i + 3] and base.find(base[i:i + 3]) == i), None)
    assert stop, f"text too short to pick a stop string: {base!r}"
    cut = base.index(stop)
    for stream in (False, True):
        kw = dict(stop=[stop, "never-in-output"], extra_body={"ignore_eos": True}, **common)
        if stream:
            text, finish = "", None
            for ch in client.completions.create(stream=True, **kw):
                text += ch.choices[0].text
                finish = ch.choices[0].finish_reason or finish
        else:
            r = client.completions.create(**kw)
            text, finish = r.choices[0].text, r.choices[0].finish_reason
            assert r.choices[0].model_extra.get("stop_reason") == stop
            assert r.usage.completion_tokens < 40
        assert text == base[:cut], (stream, text, base, stop)
        assert finish == "stop"
    inc = client.completions.create(stop=stop, extra_body={"ignore_eos": True, "include_stop_str_in_output": True},
                                    **common)
    assert inc.choices[0].text == base[:cut + len(stop)]


def test_stop_token_ids_and_min_tokens(server, client):
    tok = tokenize(server, PROMPT)["tokens"][3]
    # +100 forces `tok` at every step; as a stop id it ends the sequence at once...
    kw = dict(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0, logit_bias={str(tok): 100})
    r = client.completions.create(extra_body={"ignore_eos": True, "stop_token_ids": [tok]}, **kw)
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 1
    assert r.choices[0].model_extra.get("stop_reason") == tok
    # ...unless min_tokens holds it off for the first 3 tokens.
    r = client.completions.create(extra_body={"ignore_eos": True, "stop_token_ids": [tok], "min_tokens": 3}, **kw)
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 4


def test_logprobs_completion(client):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3,
                                  extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    for tok, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert l <= 0.0
        assert tok in top and 3 <= len(top) <= 4
        assert abs(max(top.values()) - l) < 1e-4  # greedy: the chosen token is the most likely


def test_logprobs_chat(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       temperature=0, logprobs=True, top_logprobs=2,
                                       extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 2
        assert item.bytes == list(item.token.encode())


def test_seed_reproducibility(client):
    kw = dict(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=1.0, top_p=0.9, extra_body={"ignore_eos": True})
    a = client.completions.create(seed=1234, **kw).choices[0].text
    b = client.completions.create(seed=1234, **kw).choices[0].text
    c = client.completions.create(seed=4321, **kw).choices[0].text
    assert a == b
    assert a != c


def test_sampling_parameters_are_accepted(client):
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0.7, top_p=0.8,
                                  presence_penalty=0.5, frequency_penalty=0.5, seed=3, logit_bias={"65": 5},
                                  user="tester",
                                  extra_body={"top_k": 10, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 2,
                                              "skip_special_tokens": False, "ignore_eos": True})
    assert r.usage.completion_tokens == 6


def test_logit_bias_changes_result(client):
    kw = dict(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=0, extra_body={"ignore_eos": True})
    plain = client.completions.create(**kw)
    biased = client.completions.create(logit_bias={"65": 100}, **kw)
    # +100 on one token makes it the only choice: four times the same token.
    assert len(set(biased.choices[0].logprobs.tokens)) == 1
    assert plain.choices[0].logprobs.tokens != biased.choices[0].logprobs.tokens


def test_unset_chat_max_tokens_fills_context(client):
    # No max_tokens: limited by max_model_len (vLLM); the random model rarely stops by itself.
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.usage.prompt_tokens + r.usage.completion_tokens == MAX_MODEL_LEN
    assert r.choices[0].finish_reason == "length"


def test_wrong_key_through_client(server):
    import openai
    bad = openai.OpenAI(base_url=server.base + "/v1", api_key=API_KEY + "x", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_reasoning_content_with_qwen3_parser(server, client):
    # --reasoning-parser qwen3 is on. Forcing the <think> token makes the whole output reasoning.
    think = tokenize(server, "<think>", add_special_tokens=False)["tokens"]
    assert len(think) == 1
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "think"}], max_tokens=4, temperature=0,
              logit_bias={str(think[0]): 100}, extra_body={"ignore_eos": True, "skip_special_tokens": False})
    msg = client.chat.completions.create(**kw).choices[0].message
    assert msg.model_extra.get("reasoning_content") and not msg.content
    streamed = ""
    for chunk in client.chat.completions.create(stream=True, **kw):
        if chunk.choices:
            assert not chunk.choices[0].delta.content
            streamed += chunk.choices[0].delta.model_extra.get("reasoning_content") or ""
    assert streamed == msg.model_extra["reasoning_content"]
    # Ordinary output (no <think>) stays content.
    plain = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=4,
                                           temperature=0, extra_body={"ignore_eos": True})
    assert plain.choices[0].message.model_extra.get("reasoning_content") is None


def test_generation_config_defaults(client):
    # --generation-config auto (default): unset fields come from the model's generation_config
    # (the embedded model carries Qwen3's: temperature 0.6, top_p 0.95, top_k 20).
    kw = dict(model=MODEL, prompt=PROMPT, max_tokens=16, seed=9, extra_body={"ignore_eos": True})
    implicit = client.completions.create(**kw).choices[0].text
    explicit = client.completions.create(temperature=0.6, top_p=0.95,
                                         **dict(kw, extra_body={"ignore_eos": True, "top_k": 20})).choices[0].text
    neutral = client.completions.create(temperature=1.0, top_p=1.0,
                                        **dict(kw, extra_body={"ignore_eos": True, "top_k": -1})).choices[0].text
    assert implicit == explicit
    assert implicit != neutral
