"""Structured outputs through `pie serve` (XGrammar's core), on models with random weights: what
they write is garbage wherever the grammar leaves a choice, which is exactly what makes the
enforcement visible. Every JSON output must parse and validate against its schema (the
`jsonschema` package), every regex output full-match, every choice be one of the choices,
every EBNF output parse; bad schemas, regexes and grammars are 400s naming the problem. Run on
the embedded model and on a tiny random Qwen3 (--load-format dummy) whose vocabulary has 8
padding ids past the tokenizer's, which must never be drawn. The official openai client's
`beta.chat.completions.parse` with a pydantic model, and tool round trips with
tool_choice="required" (streamed and not, thinking on and off), are at the end."""
import http.client
import json
import pathlib
import re
import time
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest

import schema_gen
from conftest import API_KEY, MODEL, Server

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
NO_THINK = {"enable_thinking": False}
THINK, THINK_END = 503, 504  # the embedded tokenizer's <think> and </think>

TINY_QWEN3 = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 520, "hidden_size": 64,
              "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 16, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
              "tie_word_embeddings": True, "eos_token_id": 502, "bos_token_id": 500, "torch_dtype": "float32"}


def start(args):
    return Server(["--api-key", API_KEY, "--served-model-name", MODEL, "--max-model-len", "2048", "--seed", "0",
                   "--max-num-seqs", "64", "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                   "--reasoning-parser", "qwen3", *args])


@pytest.fixture(scope="module")
def embedded():
    s = start([])
    yield s
    assert s.stop() == 0, "\n".join(s.lines)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_qwen3")
    (d / "config.json").write_text(json.dumps(TINY_QWEN3))
    s = start([str(d), "--load-format", "dummy", "--tokenizer", "embedded"])
    yield s
    assert s.stop() == 0, "\n".join(s.lines)


def post(server, path, body):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    conn.request("POST", path, body=json.dumps(body).encode(), headers=AUTH)
    r = conn.getresponse()
    payload = json.loads(r.read())
    conn.close()
    return r.status, payload


def chat(content, **kw):
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 600,
            "temperature": 1.0, "chat_template_kwargs": NO_THINK}
    body.update(kw)
    return body


def completion(prompt, **kw):
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 600, "temperature": 1.0}
    body.update(kw)
    return body


def text_of(payload):
    c = payload["choices"][0]
    return (c["message"]["content"] if "message" in c else c["text"]), c["finish_reason"]


def schema_request(i, s):
    """The i-th schema through one of the four JSON forms, in turn."""
    form = i % 4
    if form == 0:
        return "/v1/chat/completions", chat(f"Schema {i}", seed=i, response_format={
            "type": "json_schema", "json_schema": {"name": f"s{i}", "schema": s, "strict": True}})
    if form == 1:
        return "/v1/completions", completion(f"Schema {i}:", seed=i, structured_outputs={"json": s})
    if form == 2:
        return "/v1/chat/completions", chat(f"Schema {i}", seed=i, guided_json=s)
    return "/v1/completions", completion(f"Schema {i}:", seed=i, guided_json=json.dumps(s))


def run_schemas(server, count):
    schemas = [schema_gen.schema(i) for i in range(count)]
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda i: post(server, *schema_request(i, schemas[i])), range(count)))
    for i, (status, payload) in enumerate(results):
        assert status == 200, (i, payload)
        text, finish = text_of(payload)
        assert finish == "stop", f"schema {i}: did not complete in max_tokens: {text!r}"
        obj = json.loads(text)
        jsonschema.validate(obj, schemas[i], cls=jsonschema.Draft202012Validator)


def test_200_generated_schemas_validate_on_the_embedded_model(embedded):
    run_schemas(embedded, 200)


def test_200_generated_schemas_validate_on_a_tiny_random_qwen3(tiny):
    run_schemas(tiny, 200)


REGEXES = [r"[a-z]{3,8}", r"(yes|no|maybe)!?", r"\d{3}-\d{4}", r"[A-Z][a-z]{1,8} [A-Z][a-z]{1,8}", r"0x[0-9a-f]{2,6}",
           r"(ab)+c?", r"[^\n]{1,12}\.", r"\(\d+(, \d+)*\)"]


@pytest.mark.parametrize("which", ["embedded", "tiny"])
def test_regex_outputs_full_match(request, which):
    server = request.getfixturevalue(which)
    for i, rx in enumerate(REGEXES):
        for body, path in [(chat("r", seed=i, structured_outputs={"regex": rx}, n=3), "/v1/chat/completions"),
                           (completion("r", seed=i, guided_regex=rx, n=3), "/v1/completions")]:
            status, payload = post(server, path, body)
            assert status == 200, payload
            for c in payload["choices"]:
                text = c["message"]["content"] if "message" in c else c["text"]
                assert c["finish_reason"] == "stop"
                assert re.fullmatch(rx, text), (rx, text)


@pytest.mark.parametrize("which", ["embedded", "tiny"])
def test_choice_outputs_are_one_of_the_choices(request, which):
    server = request.getfixturevalue(which)
    choices = ["positive", "negative", "neutral", "mixed \"quoted\"", "naïve"]
    seen = set()
    for i in range(4):
        for body, path in [(chat("c", seed=i, structured_outputs={"choice": choices}, n=4), "/v1/chat/completions"),
                           (completion("c", seed=i, guided_choice=choices, n=4), "/v1/completions")]:
            status, payload = post(server, path, body)
            assert status == 200, payload
            for c in payload["choices"]:
                text = c["message"]["content"] if "message" in c else c["text"]
                assert text in choices, text
                seen.add(text)
    assert len(seen) >= 2, "random sampling should reach more than one choice"


ARITH = r'''root ::= expr
expr ::= term (("+" | "-") term)*
term ::= num | "(" expr ")"
num ::= [1-9] [0-9]{0,2}'''


def parse_arith(s):
    """Recursive descent over ARITH's language; True when all of `s` parses."""
    pos = 0

    def expr():
        nonlocal pos
        if not term():
            return False
        while pos < len(s) and s[pos] in "+-":
            pos += 1
            if not term():
                return False
        return True

    def term():
        nonlocal pos
        if pos < len(s) and s[pos] == "(":
            pos += 1
            if not expr() or pos >= len(s) or s[pos] != ")":
                return False
            pos += 1
            return True
        m = re.match(r"[1-9][0-9]{0,2}", s[pos:])
        if not m:
            return False
        pos += m.end()
        return True

    return expr() and pos == len(s)


@pytest.mark.parametrize("which", ["embedded", "tiny"])
def test_ebnf_grammar_outputs_parse(request, which):
    server = request.getfixturevalue(which)
    done = 0
    for i in range(4):
        for body, path in [(chat("g", seed=i, structured_outputs={"grammar": ARITH}, n=3, max_tokens=200),
                            "/v1/chat/completions"),
                           (completion("g", seed=i, guided_grammar=ARITH, n=3, max_tokens=200), "/v1/completions")]:
            status, payload = post(server, path, body)
            assert status == 200, payload
            for c in payload["choices"]:
                text = c["message"]["content"] if "message" in c else c["text"]
                if c["finish_reason"] == "length":  # deep nesting can run out of tokens
                    continue
                done += 1
                assert parse_arith(text), text
    assert done >= 12


def test_json_object_is_an_object(embedded):
    status, payload = post(embedded, "/v1/chat/completions",
                           chat("j", seed=3, n=4, max_tokens=1500, response_format={"type": "json_object"}))
    assert status == 200, payload
    finished = [c for c in payload["choices"] if c["finish_reason"] == "stop"]
    for c in finished:
        assert isinstance(json.loads(c["message"]["content"]), dict)
    assert finished, "no json_object output completed in 1500 tokens"


def test_thinking_on_constrains_after_think(embedded):
    # Thinking on, and the random model pushed to open <think> first and to close it soon (the
    # grammar masks both once it starts): the content after </think> must still validate.
    s = schema_gen.schema(7)
    for seed in range(3):
        body = chat("t", seed=seed, chat_template_kwargs={"enable_thinking": True},
                    logit_bias={str(THINK): 100, str(THINK_END): 99},
                    response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": s}})
        status, payload = post(embedded, "/v1/chat/completions", body)
        assert status == 200, payload
        m = payload["choices"][0]["message"]
        assert m["reasoning_content"] is not None, "the output should have opened a reasoning block"
        jsonschema.validate(json.loads(m["content"]), s)


BAD = [
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
        "a": {"$ref": "#/$defs/missing"}}}}}, "JSON schema"),
    ("structured_outputs", {"regex": "(unclosed"}, "regex"),
    ("guided_regex", "[z-a]", "regex"),
    ("guided_grammar", "root ::= missing_rule", "grammar"),
    ("structured_outputs", {"grammar": "root ::= \"a"}, "grammar"),
    ("guided_json", "{\"type\": ", "guided_json"),
    ("guided_choice", [], "guided_choice"),
]


@pytest.mark.parametrize("field,value,what", BAD, ids=[f"{f}:{w}" for f, _, w in BAD])
def test_bad_schema_regex_or_grammar_is_a_400_naming_it(embedded, field, value, what):
    status, payload = post(embedded, "/v1/chat/completions", chat("x", **{field: value}))
    assert status == 400, payload
    err = payload["error"]
    assert err["param"].startswith(field), err
    assert what in err["message"], err
    assert err["type"] == "invalid_request_error"


def test_two_constraints_are_a_400(embedded):
    status, payload = post(embedded, "/v1/chat/completions", chat("x", guided_regex="a", response_format={
        "type": "json_object"}))
    assert status == 400 and "only one structured output" in payload["error"]["message"], payload


# ---- the trace, the prewarm, a grammar that compiles slowly, and outputs cut by max_tokens --------
def test_the_trace_decomposes_a_first_request(tmp_path):
    """PIE_TRACE_STRUCTURED=1: one line per structured request at its first mask, which
    bench/structured_trace.py (the device benchmark's decomposition) parses. With every compile
    300 ms slower (PIE_TEST_GRAMMAR_DELAY_MS), the fresh compile is traced at >= 300 ms and its
    first draw as having waited for it; the same schema again is a cached one that waits not."""
    import subprocess
    import sys
    s = Server(["--api-key", API_KEY, "--served-model-name", MODEL, "--max-model-len", "2048", "--seed", "0",
                "--structured-prewarm-max-length", "0"],
               env={"PIE_TRACE_STRUCTURED": "1", "PIE_TEST_GRAMMAR_DELAY_MS": "300"})
    try:
        schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
                  "required": ["n"], "additionalProperties": False}
        body = {"model": MODEL, "messages": [{"role": "user", "content": "JSON"}], "max_tokens": 20, "seed": 1,
                "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}}
        for _ in range(2):
            status, out = post(s, "/v1/chat/completions", body)
            assert status == 200, out
    finally:
        assert s.stop() == 0, "\n".join(s.lines)
    traces = [l for l in s.lines if l.startswith("pie structured trace:")]
    assert len(traces) == 2, "\n".join(s.lines)
    log = tmp_path / "server.log"
    log.write_text("\n".join(s.lines) + "\n")
    script = str(pathlib.Path(__file__).resolve().parents[2] / "bench" / "structured_trace.py")
    summary = subprocess.run([sys.executable, script, str(log)], capture_output=True, text=True, check=True).stdout
    fresh = re.search(r"fresh grammars, median of 1\): queue [\d.]+ ms \| compile ([\d.]+) ms .* draw waited "
                      r"([\d.]+) ms", summary)
    cached = re.search(r"cached grammars, median of 1\): .* draw waited ([\d.]+) ms", summary)
    assert fresh and cached, summary
    assert float(fresh.group(1)) >= 300 and float(fresh.group(2)) > 0, summary
    assert float(cached.group(1)) == 0, summary



def test_bounded_strings_are_prewarmed_in_the_background(embedded):
    """pie serve compiles the strings of maxLength 1..16 ahead (--structured-prewarm-max-length,
    on by default) and says so; a schema with such strings then validates as before."""
    deadline = time.monotonic() + 60
    while not any("structured outputs prewarmed (strings of maxLength 1..16" in l for l in embedded.lines):
        assert time.monotonic() < deadline, "\n".join(embedded.lines)
        time.sleep(0.1)
    schema = {"type": "object", "properties": {"a": {"type": "string", "minLength": 1, "maxLength": 16},
                                               "b": {"type": "string", "maxLength": 3}},
              "required": ["a", "b"], "additionalProperties": False}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "JSON"}], "max_tokens": 80, "seed": 3,
            "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}}
    status, out = post(embedded, "/v1/chat/completions", body)
    assert status == 200, out
    jsonschema.validate(json.loads(out["choices"][0]["message"]["content"]), schema)



def test_a_slow_grammar_compile_is_waited_for_and_holds_nothing_else_up(embedded):
    """The grammar compiles while the request waits (PIE_TEST_GRAMMAR_DELAY_MS, test only, makes
    every compile take 2.5 s more): a request already running is not held up by it; the output is
    the one the server without the delay gives for the same seeded request; a bad regex is still a
    400 naming it (the compile's error, raised after the request was queued)."""
    rx = r"[a-c]{2,6}-\d{3}"
    body = completion("slow", seed=11, guided_regex=rx, n=2)
    status, want = post(embedded, "/v1/completions", body)
    assert status == 200, want
    s = Server(["--api-key", API_KEY, "--served-model-name", MODEL, "--max-model-len", "2048", "--seed", "0"],
               env={"PIE_TEST_GRAMMAR_DELAY_MS": "2500"})
    try:
        plain = completion("plain", seed=1, max_tokens=300, ignore_eos=True)
        with ThreadPoolExecutor(2) as ex:
            t0 = time.monotonic()
            running = ex.submit(post, s, "/v1/completions", plain)
            time.sleep(0.05)
            slow = ex.submit(post, s, "/v1/completions", body)
            status, out = running.result(timeout=120)
            plain_s = time.monotonic() - t0
            assert status == 200 and out["usage"]["completion_tokens"] == 300, out
            status, got = slow.result(timeout=120)
            slow_s = time.monotonic() - t0
        assert status == 200, got
        assert plain_s < 2.5 <= slow_s, (plain_s, slow_s)
        assert [c["text"] for c in got["choices"]] == [c["text"] for c in want["choices"]]
        for c in got["choices"]:
            assert re.fullmatch(rx, c["text"]), c["text"]
        status, payload = post(s, "/v1/completions", completion("bad", guided_regex="(ab"))
        assert status == 400 and "invalid regex" in payload["error"]["message"], payload
    finally:
        assert s.stop() == 0, "\n".join(s.lines)


# ---- the official openai client -------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(embedded):
    import openai
    return openai.OpenAI(base_url=embedded.base + "/v1", api_key=API_KEY, max_retries=0, timeout=300)


def test_openai_beta_parse_with_a_pydantic_model(client):
    from enum import Enum
    from typing import List, Optional

    from pydantic import BaseModel, Field

    class Color(str, Enum):
        red = "red"
        green = "green"

    class Item(BaseModel):
        sku: int = Field(ge=0, le=999)
        color: Color

    class Order(BaseModel):
        id: int = Field(ge=1, le=9999)
        rush: bool
        code: str = Field(max_length=6)
        note: Optional[str] = Field(max_length=4)
        items: List[Item] = Field(min_length=1, max_length=3)

    for seed in range(3):
        r = client.beta.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "order"}],
                                               response_format=Order, max_tokens=800, seed=seed,
                                               extra_body={"chat_template_kwargs": NO_THINK})
        order = r.choices[0].message.parsed
        assert isinstance(order, Order), r.choices[0].message.content
        assert 1 <= len(order.items) <= 3


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"enum": ["utc", "cet"]}},
                                       "required": ["tz"], "additionalProperties": False}}}
TOOL_SCHEMAS = {"get_weather": WEATHER["function"]["parameters"], "get_time": TIME["function"]["parameters"]}


def assemble_stream(stream):
    """Tool calls and content of a streamed chat completion, assembled as the client's users do."""
    calls, content, finish = {}, "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        ch = chunk.choices[0]
        content += ch.delta.content or ""
        for tc in ch.delta.tool_calls or []:
            c = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            if tc.id:
                c["id"] = tc.id
            if tc.function and tc.function.name:
                c["name"] += tc.function.name
            if tc.function and tc.function.arguments:
                c["arguments"] += tc.function.arguments
        finish = ch.finish_reason or finish
    return [calls[k] for k in sorted(calls)], content, finish


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("thinking", [False, True], ids=["no_think", "think"])
def test_tool_round_trip_with_tool_choice_required(client, stream, thinking):
    messages = [{"role": "user", "content": "Weather in Paris, and the time?"}]
    extra = {"chat_template_kwargs": {"enable_thinking": thinking}}
    if thinking:  # open and soon close a reasoning block before the enforced call
        extra["logit_bias"] = {str(THINK): 100, str(THINK_END): 99}
    # One call per turn (parallel_tool_calls false): a random model rarely stops adding calls.
    kw = dict(model=MODEL, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False, max_tokens=800,
              seed=5, extra_body=extra)
    if stream:
        calls, _, finish = assemble_stream(client.chat.completions.create(messages=messages, stream=True, **kw))
    else:
        r = client.chat.completions.create(messages=messages, **kw)
        finish = r.choices[0].finish_reason
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                 for c in r.choices[0].message.tool_calls or []]
    assert finish == "tool_calls", (finish, calls)
    assert calls, "tool_choice=required must produce a call"
    for c in calls:
        assert c["id"] and c["name"] in TOOL_SCHEMAS
        jsonschema.validate(json.loads(c["arguments"]), TOOL_SCHEMAS[c["name"]])
    # The round trip: the call and its result go back; the answer is free text (tool_choice none).
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in calls]})
    for c in calls:
        messages.append({"role": "tool", "tool_call_id": c["id"], "content": '{"ok": true}'})
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, TIME], tool_choice="none",
                                       max_tokens=16, extra_body={"chat_template_kwargs": {"enable_thinking": thinking}})
    assert r.choices[0].message.tool_calls in (None, [])
    assert r.choices[0].finish_reason in ("stop", "length")


def test_named_tool_choice_calls_exactly_that_function(client):
    for seed in range(3):
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "time?"}], tools=[WEATHER, TIME], max_tokens=400,
            tool_choice={"type": "function", "function": {"name": "get_time"}}, seed=seed,
            extra_body={"chat_template_kwargs": NO_THINK})
        calls = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "tool_calls"
        assert len(calls) == 1 and calls[0].function.name == "get_time"
        jsonschema.validate(json.loads(calls[0].function.arguments), TOOL_SCHEMAS["get_time"])
