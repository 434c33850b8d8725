"""The official openai client on real tool-call responses: pie serve's HTTP front, protocol,
chat template, reasoning and hermes parsers over a scripted "model" (scripted_server.cpp)
that answers with the content of the last user turn. So the user turn below is what the
model "generates"; a tool-result turn is answered with "Result: ..."."""
import json
import os
import re
import subprocess
import threading

import pytest

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
                   "required": ["location"]}}}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris", "unit": "celsius"}}\n</tool_call>'
CALL2 = '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Rome"}}\n</tool_call>'
THINK = "<think>\nThe user wants the weather.\n</think>\n\n"


@pytest.fixture(scope="module")
def scripted():
    path = os.environ.get("PIE_SCRIPTED_SERVER")
    if not path or not os.path.exists(path):
        pytest.skip("PIE_SCRIPTED_SERVER (the server_scripted_server program) is not set")
    proc = subprocess.Popen([path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port = {}
    got = threading.Event()

    def read():
        for line in proc.stdout:
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m:
                port["p"] = int(m.group(1))
                got.set()
        got.set()

    threading.Thread(target=read, daemon=True).start()
    assert got.wait(30) and "p" in port, "scripted server printed no port"
    import openai
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{port['p']}/v1", api_key="x", max_retries=0, timeout=60)
    proc.terminate()
    proc.wait(10)


def ask(output, thinking):
    return {"model": "scripted", "tools": TOOLS, "messages": [{"role": "user", "content": output}],
            "extra_body": {"chat_template_kwargs": {"enable_thinking": thinking}}}


@pytest.mark.parametrize("thinking", [True, False])
def test_tool_call_non_streaming(scripted, thinking):
    r = scripted.chat.completions.create(**ask((THINK if thinking else "") + CALL, thinking))
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert c.message.content is None
    (tc,) = c.message.tool_calls
    assert tc.id.startswith("chatcmpl-tool-") and tc.type == "function"
    assert tc.function.name == "get_weather"
    assert tc.function.arguments == '{"location": "Paris", "unit": "celsius"}'
    reasoning = (c.message.model_extra or {}).get("reasoning_content")
    assert reasoning == ("The user wants the weather." if thinking else None)


@pytest.mark.parametrize("thinking", [True, False])
def test_tool_calls_streaming_assembled_by_the_client(scripted, thinking):
    out = (THINK if thinking else "") + "Checking both.\n" + CALL + "\n" + CALL2
    # The client's own stream helper assembles the deltas.
    with scripted.chat.completions.stream(**ask(out, thinking)) as s:
        done_args = [e.arguments for e in s if e.type == "tool_calls.function.arguments.done"]
        final = s.get_final_completion()
    c = final.choices[0]
    assert c.finish_reason == "tool_calls"
    assert c.message.content == "Checking both.\n"
    assert [(t.function.name, t.function.arguments) for t in c.message.tool_calls] == [
        ("get_weather", '{"location": "Paris", "unit": "celsius"}'), ("get_weather", '{"location": "Rome"}')]
    assert len({t.id for t in c.message.tool_calls}) == 2
    assert done_args == [t.function.arguments for t in c.message.tool_calls]
    # Raw chunks: the first delta of a call carries index, id, type and name; no tag text leaks.
    firsts, content = {}, ""
    for chunk in scripted.chat.completions.create(stream=True, **ask(out, thinking)):
        for ch in chunk.choices:
            content += ch.delta.content or ""
            for tc in ch.delta.tool_calls or []:
                if tc.index not in firsts:
                    firsts[tc.index] = tc
                    assert tc.id and tc.type == "function" and tc.function.name == "get_weather"
                    assert tc.function.arguments == ""
                else:
                    assert tc.id is None
    assert sorted(firsts) == [0, 1] and "<tool_call>" not in content and "tool_call" not in content


def test_parallel_tool_calls_false_keeps_the_first(scripted):
    r = scripted.chat.completions.create(parallel_tool_calls=False, **ask(CALL + "\n" + CALL2, False))
    assert [t.function.arguments for t in r.choices[0].message.tool_calls] == [
        '{"location": "Paris", "unit": "celsius"}']


@pytest.mark.parametrize("stream", [False, True])
def test_round_trip_call_tool_answer(scripted, stream):
    req = ask(CALL, False)
    first = scripted.chat.completions.create(**req)
    msg = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    call = msg.tool_calls[0]
    messages = req["messages"] + [
        msg.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21})}]
    req = dict(req, messages=messages)
    if stream:
        with scripted.chat.completions.stream(**req) as s:
            final = s.get_final_completion()
    else:
        final = scripted.chat.completions.create(**req)
    c = final.choices[0]
    assert c.finish_reason == "stop"
    assert not c.message.tool_calls
    # The answer echoes the prompt's tool turn: the template rendered the tool result.
    assert c.message.content == 'Result: <tool_response>\n{"temp_c": 21}\n</tool_response>'
