"""Tool calling through the official openai client and raw HTTP against `pie serve` started as
Qwen3's recommended vLLM command is (--enable-auto-tool-choice --tool-call-parser hermes
--reasoning-parser qwen3). The embedded model's weights are random, so what it generates is
not a tool call: these tests check that tool requests are accepted, validated and rendered
(byte-identical to transformers' apply_chat_template, via /tokenize + /detokenize), and the
response shapes. Parsing scripted tool-call outputs, streamed and not, is tested in
tool_calling_test.cpp."""
import http.client
import json
import os

import pytest

from conftest import API_KEY, MODEL, Server

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "reference", "server", "tool_chat_renders.json")
AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["location"]}}}
ROUND_TRIP = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "chatcmpl-tool-0123", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"location": "Paris", "unit": "celsius"}'}}]},
    {"role": "tool", "tool_call_id": "chatcmpl-tool-0123", "content": '{"temp_c": 21}'},
]


@pytest.fixture(scope="module")
def tool_server():
    s = Server(["--api-key", API_KEY, "--served-model-name", MODEL, "--max-model-len", "2048", "--seed", "0",
                "--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3"])
    yield s
    assert s.stop() == 0, "\n".join(s.lines)


@pytest.fixture(scope="module")
def tool_client(tool_server):
    import openai
    return openai.OpenAI(base_url=tool_server.base + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def post(server, path, raw):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", path, body=raw if isinstance(raw, bytes) else json.dumps(raw).encode(), headers=AUTH)
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, json.loads(payload)


def check_message(m):
    assert m.role == "assistant"
    assert m.tool_calls is None or isinstance(m.tool_calls, list)
    for tc in m.tool_calls or []:  # only if the random model happened to write a well-formed call
        assert tc.id.startswith("chatcmpl-tool-") and tc.type == "function"
        json.loads(tc.function.arguments)


@pytest.mark.parametrize("thinking", [True, False])
def test_tools_request_succeeds(tool_client, thinking):
    r = tool_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER], max_tokens=12,
        temperature=0, extra_body={"chat_template_kwargs": {"enable_thinking": thinking}})
    c = r.choices[0]
    assert c.finish_reason in ("stop", "length", "tool_calls")
    check_message(c.message)


@pytest.mark.parametrize("thinking", [True, False])
def test_tools_streaming_succeeds(tool_client, thinking):
    stream = tool_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER],
        tool_choice="auto", parallel_tool_calls=True, max_tokens=12, temperature=0, stream=True,
        extra_body={"chat_template_kwargs": {"enable_thinking": thinking}})
    finish, content = None, ""
    for chunk in stream:
        for ch in chunk.choices:
            content += ch.delta.content or ""
            finish = ch.finish_reason or finish
    assert finish in ("stop", "length", "tool_calls")
    assert "<tool_call>" not in content


@pytest.mark.parametrize("stream", [False, True])
def test_tool_round_trip_renders_and_runs(tool_server, tool_client, stream):
    kw = dict(model=MODEL, messages=ROUND_TRIP, tools=[WEATHER], max_tokens=6, temperature=0)
    if stream:
        chunks = list(tool_client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
        usage = chunks[-1].usage
    else:
        r = tool_client.chat.completions.create(**kw)
        check_message(r.choices[0].message)
        usage = r.usage
    # The prompt is the template's render of the whole round trip.
    status, tok = post(tool_server, "/tokenize", {"model": MODEL, "messages": ROUND_TRIP, "tools": [WEATHER]})
    assert status == 200, tok
    assert usage.prompt_tokens == tok["count"]
    status, text = post(tool_server, "/detokenize", {"tokens": tok["tokens"]})
    assert "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris\", \"unit\": \"celsius\"}}" \
        "\n</tool_call>" in text["prompt"]
    assert "<tool_response>\n{\"temp_c\": 21}\n</tool_response>" in text["prompt"]


def test_renders_are_byte_identical_to_transformers(tool_server):
    """The fixture bodies, sent as is, render (via /tokenize, /detokenize) to apply_chat_template's text."""
    with open(FIXTURES, encoding="utf-8") as f:
        cases = json.load(f)
    for c in cases:
        status, tok = post(tool_server, "/tokenize", c["body"].encode())
        assert status == 200, (c["name"], tok)
        status, text = post(tool_server, "/detokenize", {"tokens": tok["tokens"]})
        assert text["prompt"] == c["expected"], c["name"]


BAD = [
    ({"tools": {"name": "f"}}, "tools"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"name": 7}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type"),
    ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": "{bad"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
]


@pytest.mark.parametrize("extra,param", BAD, ids=[p for _, p in BAD])
def test_malformed_tools_are_400_in_openai_shape(tool_server, extra, param):
    body = dict({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, **extra)
    status, j = post(tool_server, "/v1/chat/completions", body)
    assert status == 400, j
    assert set(j["error"]) == {"message", "type", "param", "code"}
    assert j["error"]["param"] == param, j
    assert j["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("choice", ["auto", "required", {"type": "function", "function": {"name": "get_weather"}}])
def test_tool_choice_without_the_flags_is_400(server, choice):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER],
            "tool_choice": choice, "max_tokens": 2}
    status, j = post(server, "/v1/chat/completions", body)
    assert status == 400, j
    assert "--enable-auto-tool-choice" in j["error"]["message"] and j["error"]["param"] == "tool_choice"


def test_tool_choice_none_and_no_tools_work_without_the_flags(server):
    tiny = {"type": "function", "function": {"name": "f"}}  # the default server's context is short
    for extra in ({"tools": [tiny], "tool_choice": "none"}, {"tools": []}):
        body = dict({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, **extra)
        status, j = post(server, "/v1/chat/completions", body)
        assert status == 200, j
        assert j["choices"][0]["message"]["tool_calls"] == []


def test_required_and_named_are_accepted_with_the_flags(tool_client):
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        r = tool_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                tools=[WEATHER], tool_choice=choice, max_tokens=4)
        check_message(r.choices[0].message)
