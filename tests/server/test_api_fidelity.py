"""Issue 17: the vLLM API details evaluation harnesses and RL loops rely on, against `pie serve`
on the embedded model: prompt_logprobs, return_token_ids (also streamed), return_tokens_as_token_ids,
logprob tokens that never collide, and /tokenize with messages and tools. Field shapes follow vLLM's
protocol (CompletionResponseChoice.prompt_logprobs/prompt_token_ids/token_ids, the chat response's
top-level prompt_logprobs/prompt_token_ids, TokenizeChatRequest.tools/return_token_strs)."""
import json
import re

from conftest import MODEL
from test_http_errors import CHAT, call, expect_error

NEUTRAL = {"temperature": 0, "repetition_penalty": 1.0, "presence_penalty": 0, "frequency_penalty": 0}
# 40 ids below the embedded model's special tokens: more than two 16-token blocks, so a repeat
# of the prompt is a prefix-cache hit.
PROMPT_IDS = [(37 * i + 11) % 480 for i in range(40)]


def post(server, path, body):
    status, payload, _ = call(server, "POST", path, body)
    assert status == 200, payload
    return json.loads(payload)


def sse(server, path, body):
    status, payload, r = call(server, "POST", path, dict(body, stream=True))
    assert status == 200, payload
    chunks = []
    for line in payload.decode().split("\n\n"):
        if line.startswith("data: ") and line != "data: [DONE]":
            chunks.append(json.loads(line[6:]))
    assert payload.decode().rstrip().endswith("data: [DONE]")
    return chunks


def token_id(key):
    m = re.fullmatch(r"token_id:(\d+)", key)
    assert m, key
    return int(m.group(1))


def test_prompt_logprobs_score_each_prompt_token_with_the_next_token_distribution(server):
    body = dict(NEUTRAL, model=MODEL, prompt=PROMPT_IDS, max_tokens=2, prompt_logprobs=2)
    first = post(server, "/v1/completions", body)["choices"][0]["prompt_logprobs"]
    assert len(first) == len(PROMPT_IDS) and first[0] is None
    for i in range(1, len(PROMPT_IDS)):
        d = first[i]
        assert str(PROMPT_IDS[i]) in d and 2 <= len(d) <= 3, d
        assert sorted(v["rank"] for v in d.values())[:2] == [1, 2], d
        assert all(v["logprob"] <= 0 and isinstance(v["decoded_token"], str) for v in d.values())
        # Reference: the first generated token's top logprobs after the prefix PROMPT_IDS[:i] are
        # the same distribution (no penalties; the CPU backend is batch-invariant).
        ref = post(server, "/v1/completions", dict(NEUTRAL, model=MODEL, prompt=PROMPT_IDS[:i], max_tokens=1,
                                                    logprobs=5, return_tokens_as_token_ids=True))
        top = ref["choices"][0]["logprobs"]["top_logprobs"][0]
        best = max(top.items(), key=lambda kv: kv[1])
        rank1 = [(int(k), v["logprob"]) for k, v in d.items() if v["rank"] == 1]
        assert rank1 and rank1[0][0] == token_id(best[0]), (i, d, top)
        assert abs(rank1[0][1] - best[1]) < 1e-4, (i, rank1, best)
        if "token_id:%d" % PROMPT_IDS[i] in top:
            assert abs(d[str(PROMPT_IDS[i])]["logprob"] - top["token_id:%d" % PROMPT_IDS[i]]) < 1e-4
    # The same prompt again is a prefix-cache hit for a plain request, but prompt_logprobs
    # recompute the prompt: the same answer, no position missing.
    again = post(server, "/v1/completions", body)["choices"][0]["prompt_logprobs"]
    assert again == first


def test_prompt_logprobs_on_chat_and_their_rules(server):
    r = post(server, "/v1/chat/completions", dict(CHAT, prompt_logprobs=0))
    lps = r["prompt_logprobs"]
    assert len(lps) == r["usage"]["prompt_tokens"] and lps[0] is None
    assert all(len(d) == 1 for d in lps[1:])
    expect_error(server, "/v1/completions", dict(NEUTRAL, model=MODEL, prompt="hi", stream=True, prompt_logprobs=1),
                 400, "prompt_logprobs")
    expect_error(server, "/v1/completions", dict(model=MODEL, prompt="hi", prompt_logprobs=21), 400, "prompt_logprobs")


def test_return_token_ids_on_completions_plain_and_streamed(server):
    body = dict(NEUTRAL, model=MODEL, prompt="The quick brown fox", max_tokens=12, ignore_eos=True,
                return_token_ids=True)
    r = post(server, "/v1/completions", body)
    c = r["choices"][0]
    prompt_ids = post(server, "/tokenize", {"prompt": "The quick brown fox"})["tokens"]
    assert c["prompt_token_ids"] == prompt_ids
    assert len(c["token_ids"]) == r["usage"]["completion_tokens"] == 12
    assert post(server, "/detokenize", {"tokens": c["token_ids"]})["prompt"] == c["text"]
    chunks = sse(server, "/v1/completions", body)
    with_prompt = [ch for ch in chunks if ch["choices"] and "prompt_token_ids" in ch["choices"][0]]
    assert len(with_prompt) == 1 and with_prompt[0] is chunks[0]
    assert with_prompt[0]["choices"][0]["prompt_token_ids"] == prompt_ids
    streamed = [t for ch in chunks for t in ch["choices"][0]["token_ids"]]
    assert streamed == c["token_ids"]
    assert "".join(ch["choices"][0]["text"] for ch in chunks) == c["text"]
    # Not asked: no such fields.
    plain = post(server, "/v1/completions", dict(body, return_token_ids=False))["choices"][0]
    assert "token_ids" not in plain and "prompt_token_ids" not in plain


def test_return_token_ids_on_chat_plain_and_streamed(server):
    body = dict(CHAT, **NEUTRAL, max_tokens=10, ignore_eos=True, return_token_ids=True)
    r = post(server, "/v1/chat/completions", body)
    rendered = post(server, "/tokenize", {"messages": CHAT["messages"]})["tokens"]
    assert r["prompt_token_ids"] == rendered
    ids = r["choices"][0]["token_ids"]
    assert len(ids) == r["usage"]["completion_tokens"] == 10
    chunks = sse(server, "/v1/chat/completions", body)
    assert chunks[0]["prompt_token_ids"] == rendered
    assert all("prompt_token_ids" not in ch for ch in chunks[1:])
    assert [t for ch in chunks[1:] for t in ch["choices"][0].get("token_ids") or []] == ids


def test_return_tokens_as_token_ids(server):
    body = dict(NEUTRAL, model=MODEL, prompt=PROMPT_IDS, max_tokens=6, ignore_eos=True, logprobs=3,
                return_tokens_as_token_ids=True, return_token_ids=True)
    c = post(server, "/v1/completions", body)["choices"][0]
    assert [token_id(t) for t in c["logprobs"]["tokens"]] == c["token_ids"]
    for top in c["logprobs"]["top_logprobs"]:
        assert all(token_id(k) >= 0 for k in top)
    r = post(server, "/v1/chat/completions", dict(CHAT, **NEUTRAL, max_tokens=5, ignore_eos=True, logprobs=True,
                                                  top_logprobs=2, return_tokens_as_token_ids=True,
                                                  return_token_ids=True))
    content = r["choices"][0]["logprobs"]["content"]
    assert [token_id(e["token"]) for e in content] == r["choices"][0]["token_ids"]
    assert all(token_id(t["token"]) >= 0 for e in content for t in e["top_logprobs"])


def test_top_logprobs_never_collide(server):
    # The embedded vocabulary is byte-level: its single-byte tokens >= 0x80 each decode to U+FFFD
    # alone. Keyed by text, they merged into one top_logprobs entry; now each is its own.
    seen_bytes = 0
    for seed in range(3):
        r = post(server, "/v1/completions", dict(model=MODEL, prompt=PROMPT_IDS, max_tokens=16, ignore_eos=True,
                                                 logprobs=20, temperature=1.0, seed=seed))
        lp = r["choices"][0]["logprobs"]
        for tok, top in zip(lp["tokens"], lp["top_logprobs"]):
            assert len(top) in (20, 21), (len(top), top)
            assert tok in top
            seen_bytes += sum(k.startswith("bytes:") for k in top)
            assert "\ufffd" not in "".join(top), top
    assert seen_bytes > 0, "no partial-character token among the alternatives: the test did not test"
    # Chat: such a token's bytes are its own bytes, not U+FFFD's.
    r = post(server, "/v1/chat/completions", dict(CHAT, max_tokens=8, ignore_eos=True, logprobs=True, top_logprobs=20,
                                                  temperature=1.0, seed=1))
    for e in r["choices"][0]["logprobs"]["content"]:
        for t in e["top_logprobs"]:
            if t["token"].startswith("bytes:"):
                assert t["token"] == "bytes:" + "".join("\\x%02x" % b for b in t["bytes"]), t
                assert any(b >= 0x80 for b in t["bytes"]), t


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now.",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


def test_tokenize_messages_with_tools_renders_the_chat_prompt(server):
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    plain = post(server, "/tokenize", {"messages": msgs, "return_token_strs": True})
    with_tools = post(server, "/tokenize", {"messages": msgs, "tools": TOOLS, "return_token_strs": True})
    assert "get_weather" in with_tools["prompt"] and "get_weather" not in plain["prompt"]
    assert with_tools["count"] == len(with_tools["tokens"]) == len(with_tools["token_strs"])
    assert with_tools["count"] > plain["count"]
    # The ids are the rendered text's, and the chat endpoint prompts with the same ids.
    assert post(server, "/tokenize", {"prompt": with_tools["prompt"], "add_special_tokens": False})["tokens"] == \
        with_tools["tokens"]
    # The chat endpoint prompts with as many tokens (the suite's 256-token context is too short for
    # Qwen3's tool preamble in the embedded vocabulary: its 400 names the prompt's length).
    status, payload, _ = call(server, "POST", "/v1/chat/completions",
                              dict(CHAT, messages=msgs, tools=TOOLS, tool_choice="none", max_tokens=1))
    assert status == 400 and f"your request has {with_tools['count']} input tokens" in payload.decode(), payload
    # Without the flag, vLLM's shape: token_strs null, no text.
    bare = post(server, "/tokenize", {"messages": msgs, "tools": TOOLS})
    assert bare["token_strs"] is None and "prompt" not in bare and bare["tokens"] == with_tools["tokens"]
    expect_error(server, "/tokenize", {"messages": msgs, "tools": [{"type": "function"}]}, 400,
                 "tools[0].function")
    expect_error(server, "/tokenize", {"prompt": "x", "return_token_strs": 1}, 400, "return_token_strs")


# ---- echo ---------------------------------------------------------------------------------------
def joined_logprobs(chunks):
    """The completions logprobs of a stream, its chunks' arrays concatenated."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for ch in chunks:
        for c in ch["choices"]:
            for k in out:
                out[k] += c["logprobs"][k]
    return out


def test_echo_with_logprobs_prepends_the_prompt_tokens(server):
    # vLLM (serving_completion.py): echo with logprobs = k asks prompt_logprobs = k; the choice's
    # logprobs arrays start with the prompt's tokens, the first with null logprob and top_logprobs,
    # the others with the prompt token and its top k; text_offset counts from the prompt's start.
    n, gen = len(PROMPT_IDS), 6
    base = dict(NEUTRAL, model=MODEL, prompt=PROMPT_IDS, max_tokens=gen, ignore_eos=True, logprobs=2,
                return_tokens_as_token_ids=True)
    plain = post(server, "/v1/completions", base)["choices"][0]
    ref = post(server, "/v1/completions", dict(base, prompt_logprobs=2))["choices"][0]["prompt_logprobs"]
    c = post(server, "/v1/completions", dict(base, echo=True))["choices"][0]
    lp = c["logprobs"]
    assert [token_id(t) for t in lp["tokens"][:n]] == PROMPT_IDS
    assert lp["tokens"][n:] == plain["logprobs"]["tokens"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    for i in range(1, n):
        want = ref[i]
        assert lp["token_logprobs"][i] == want[str(PROMPT_IDS[i])]["logprob"], i
        top = {token_id(k): v for k, v in lp["top_logprobs"][i].items()}
        assert PROMPT_IDS[i] in top and len(top) in (2, 3), top  # the token and the top 2
        assert top == {int(k): v["logprob"] for k, v in want.items()}, (i, top, want)
    # The generated part as without echo (that request read the prefix cache: equal to rounding).
    for got, want in zip(lp["token_logprobs"][n:], plain["logprobs"]["token_logprobs"]):
        assert abs(got - want) < 1e-4
    for got, want in zip(lp["top_logprobs"][n:], plain["logprobs"]["top_logprobs"]):
        assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-4 for k in got)
    offs = lp["text_offset"]
    assert offs[0] == 0 and all(b >= a for a, b in zip(offs, offs[1:]))
    assert [o - offs[n] for o in offs[n:]] == plain["logprobs"]["text_offset"]
    assert c["text"].endswith(plain["text"]) and len(c["text"]) > len(plain["text"])
    # vLLM also reports the prompt_logprobs it computed in the choice.
    assert c["prompt_logprobs"] == ref
    # A larger prompt_logprobs of the request's own: the echoed entries keep logprobs + 1.
    wide = post(server, "/v1/completions", dict(base, echo=True, prompt_logprobs=5, logprobs=1))["choices"][0]
    assert all(len(t) <= 2 for t in wide["logprobs"]["top_logprobs"][1:n])
    assert len(wide["prompt_logprobs"][1]) >= 5
    # Streamed: the first chunk carries the prompt and the first token; the arrays concatenate to
    # the body's; no prompt_logprobs in a stream. (Later chunks' offsets count the text sent,
    # which differs from the tokens' bytes where a byte token is not a whole character.)
    chunks = sse(server, "/v1/completions", dict(base, echo=True))
    first = chunks[0]["choices"][0]["logprobs"]
    assert len(first["tokens"]) > n and first["text_offset"] == offs[:len(first["tokens"])]
    joined = joined_logprobs(chunks)
    assert {k: joined[k] for k in ("tokens", "token_logprobs", "top_logprobs")} == \
        {k: lp[k] for k in ("tokens", "token_logprobs", "top_logprobs")}
    assert "".join(ch["choices"][0]["text"] for ch in chunks) == c["text"]
    assert all("prompt_logprobs" not in ch["choices"][0] for ch in chunks)


def test_echo_with_max_tokens_0_returns_the_prompt_alone(server):
    # vLLM's echo without generation (the form evaluation harnesses score prompts with): one token
    # is generated (usage counts it) and not shown; the choice is the prompt and its logprobs.
    n = len(PROMPT_IDS)
    base = dict(NEUTRAL, model=MODEL, prompt=PROMPT_IDS, echo=True, logprobs=1, return_tokens_as_token_ids=True)
    r = post(server, "/v1/completions", dict(base, max_tokens=0))
    c = r["choices"][0]
    full = post(server, "/v1/completions", dict(base, max_tokens=1))["choices"][0]
    assert [token_id(t) for t in c["logprobs"]["tokens"]] == PROMPT_IDS
    assert c["logprobs"]["token_logprobs"] == full["logprobs"]["token_logprobs"][:n]
    assert c["text"] == post(server, "/detokenize", {"tokens": PROMPT_IDS})["prompt"]
    assert r["usage"]["completion_tokens"] == 1 and c["finish_reason"] == "length"
    chunks = sse(server, "/v1/completions", dict(base, max_tokens=0))
    assert "".join(ch["choices"][0]["text"] for ch in chunks) == c["text"]
    assert [t for ch in chunks for t in ch["choices"][0]["logprobs"]["tokens"]] == c["logprobs"]["tokens"]
    # Without echo, 0 stays a 400 naming the field.
    expect_error(server, "/v1/completions", dict(NEUTRAL, model=MODEL, prompt="hi", max_tokens=0), 400, "max_tokens")


def test_echo_with_logprobs_through_the_openai_client(client):
    r = client.completions.create(model=MODEL, prompt="one two three", max_tokens=3, temperature=0, echo=True,
                                  logprobs=1)
    lp = r.choices[0].logprobs
    prompt_len = r.usage.prompt_tokens
    assert len(lp.tokens) == prompt_len + 3 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(isinstance(x, float) for x in lp.token_logprobs[1:])
    assert r.choices[0].text.startswith("one two three")
    assert "".join(lp.tokens[:prompt_len]) == "one two three"


CONTINUE = [{"role": "user", "content": "Count to five."}, {"role": "assistant", "content": "One, two,"}]


def chat_text(r):
    return r["choices"][0]["message"]["content"]


def test_chat_echo_prepends_the_last_message_when_its_role_is_the_responses(server):
    # vLLM (serving_chat.py): the response role is "assistant" with add_generation_prompt, else the
    # last message's role; echo puts the last message's content before the generated content when
    # that message has the response's role, streamed as its own chunk after the role chunk.
    base = dict(CHAT, **NEUTRAL, max_tokens=6, ignore_eos=True)
    # The last message is the user's, the response the assistant's: nothing to echo.
    assert chat_text(post(server, "/v1/chat/completions", dict(base, echo=True))) == \
        chat_text(post(server, "/v1/chat/completions", base))
    cont = dict(base, messages=CONTINUE, add_generation_prompt=False)
    plain = post(server, "/v1/chat/completions", cont)
    echoed = post(server, "/v1/chat/completions", dict(cont, echo=True))
    assert echoed["choices"][0]["message"]["role"] == "assistant"
    assert chat_text(echoed) == "One, two," + (chat_text(plain) or "")
    assert echoed["usage"] == plain["usage"]
    # Without a generation prompt after a user message, the response continues the user's turn.
    user = post(server, "/v1/chat/completions", dict(base, add_generation_prompt=False, echo=True))
    assert user["choices"][0]["message"]["role"] == "user"
    assert chat_text(user).startswith("hi")
    # Streamed, n = 2: every choice's role chunk, then every choice's echo chunk, then the deltas.
    chunks = sse(server, "/v1/chat/completions", dict(cont, echo=True, n=2, seed=3, temperature=1.0))
    deltas = [(ch["choices"][0]["index"], ch["choices"][0]["delta"]) for ch in chunks if ch["choices"]]
    assert deltas[:4] == [(0, {"role": "assistant", "content": ""}), (1, {"role": "assistant", "content": ""}),
                          (0, {"content": "One, two,"}), (1, {"content": "One, two,"})]
    streamed = "".join(d.get("content", "") for i, d in deltas if i == 0)
    whole = post(server, "/v1/chat/completions", dict(cont, echo=True, n=2, seed=3, temperature=1.0))
    assert streamed == whole["choices"][0]["message"]["content"]
