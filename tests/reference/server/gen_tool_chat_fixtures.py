#!/usr/bin/env python3
"""Generates tool_chat_renders.json: /v1/chat/completions request bodies with tools, tool calls
and tool results, each with the prompt transformers' apply_chat_template renders for it with the
genuine Qwen3-8B tokenizer_config.json template (torch not needed).

A request reaches the template the way vLLM hands it over: messages as sent, except that text
parts are joined, a null content is "", and each assistant tool call's `function.arguments` JSON string is parsed
(an empty one becomes {}); `tools` as sent; chat_template_kwargs as variables. Keys are in
deliberately non-alphabetical orders, so a server that sorts JSON keys fails the test
(`sorted_differs` records that the render with sorted keys differs).

Usage: python3 tests/reference/server/gen_tool_chat_fixtures.py
"""
import copy
import json
import os
import sys

sys.modules.setdefault("torch", None)  # transformers imports fine without torch
from transformers import AutoTokenizer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
QWEN_DIR = os.path.join(HERE, "..", "..", "..", "..", "shared", "models", "Qwen3-8B")

WEATHER = {"type": "function", "function": {
    "name": "get_weather",
    "parameters": {"type": "object", "required": ["location"], "properties": {
        "unit": {"enum": ["celsius", "fahrenheit"], "type": "string"},
        "location": {"type": "string", "description": "City and country, e.g. Zürich, CH"}}},
    "description": "Get the current weather."}}
# `function` before `type`, `strict`, a nested array schema, numbers.
BOOK = {"function": {
    "name": "book_flight", "strict": True, "description": "Book a flight.",
    "parameters": {"type": "object", "properties": {
        "to": {"type": "string"}, "from": {"type": "string"},
        "passengers": {"type": "array", "maxItems": 9, "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}}},
        "budget": {"type": "number", "default": 1500.5}},
        "required": ["to", "from"], "additionalProperties": False}},
    "type": "function"}
NOPARAMS = {"type": "function", "function": {"name": "get_time"}}

U = lambda c: {"role": "user", "content": c}  # noqa: E731
S = lambda c: {"role": "system", "content": c}  # noqa: E731


def call(cid, name, args):
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


def A(content, calls=None, **kw):
    m = {"role": "assistant", "content": content}
    if calls is not None:
        m["tool_calls"] = calls
    m.update(kw)
    return m


def T(cid, content):
    return {"role": "tool", "tool_call_id": cid, "content": content}


def cases():
    paris = call("chatcmpl-tool-1", "get_weather", '{"unit": "celsius", "location": "Paris, FR"}')
    flow = [S("You are a travel agent."), U("Weather in Paris?"), A(None, [paris]),
            T("chatcmpl-tool-1", '{"temp_c": 21, "sky": "clear"}')]
    yield "tools_only", {"messages": [U("What's the weather in Zürich?")], "tools": [WEATHER]}
    yield "tools_system_thinking_off", {
        "messages": [S("Be brief."), U("Book Oslo to Rome for 2")], "tools": [WEATHER, BOOK, NOPARAMS],
        "chat_template_kwargs": {"enable_thinking": False}}
    yield "tool_choice_and_parallel", {
        "messages": [U("time?")], "tools": [NOPARAMS, WEATHER], "tool_choice": "auto", "parallel_tool_calls": False}
    yield "round_trip", {"messages": flow, "tools": [WEATHER]}
    yield "round_trip_thinking_off", {"messages": flow, "tools": [WEATHER],
                                      "chat_template_kwargs": {"enable_thinking": False}}
    yield "round_trip_answered_then_user", {
        "messages": flow + [A("It is 21 °C and clear in Paris."), U("And tomorrow?")], "tools": [WEATHER]}
    yield "parallel_calls_and_results", {
        "messages": [U("Compare Oslo and Rome, then book"),
                     A("Checking both.", [call("c1", "get_weather", '{"location": "Oslo"}'),
                                          call("c2", "get_weather", '{"unit": "fahrenheit", "location": "Rome"}')]),
                     T("c1", "5"), T("c2", '{"f": 77}'),
                     A("<think>\nRome is warmer.\n</think>\n\nBooking Rome.",
                       [call("c3", "book_flight", json.dumps(
                           {"to": "FCO", "from": "OSL", "passengers": [{"name": "Åsa", "age": 31}], "budget": 900}))]),
                     T("c3", "booked: PNR X1Y2")],
        "tools": [WEATHER, BOOK]}
    yield "reasoning_content_with_calls", {
        "messages": [U("time in Tokyo?"),
                     A("", [call("t1", "get_time", "")], reasoning_content="Need the clock."),
                     T("t1", "09:30")],
        "tools": [NOPARAMS], "chat_template_kwargs": {"enable_thinking": True}}
    yield "content_parts_and_compact_arguments", {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Lima?"}]},
                     A(None, [call("w", "get_weather", '{"location":"Lima","unit":"celsius"}')]),
                     {"role": "tool", "content": [{"type": "text", "text": "cloudy"}], "tool_call_id": "w"}],
        "tools": [WEATHER]}
    yield "tool_choice_none_still_renders_tools", {
        "messages": [U("hi")], "tools": [BOOK], "tool_choice": "none"}


def template_view(req):
    """What the template gets for a request (see the module docstring)."""
    msgs = []
    for m in copy.deepcopy(req["messages"]):
        if isinstance(m.get("content"), list):
            m["content"] = "".join(p["text"] for p in m["content"])
        if m.get("content") is None:  # vLLM: no content is empty text
            m["content"] = ""
        for c in m.get("tool_calls") or []:
            a = c["function"].get("arguments")
            c["function"]["arguments"] = json.loads(a) if a else {}
        msgs.append(m)
    kw = dict(req.get("chat_template_kwargs", {}))
    return msgs, copy.deepcopy(req.get("tools")), kw


def sort_keys(x):
    return json.loads(json.dumps(x, sort_keys=True))


def main():
    tok = AutoTokenizer.from_pretrained(QWEN_DIR)
    out = []
    for name, req in cases():
        msgs, tools, kw = template_view(req)
        text = tok.apply_chat_template(msgs, tools=tools, add_generation_prompt=True, tokenize=False, **kw)
        sorted_text = tok.apply_chat_template(sort_keys(msgs), tools=sort_keys(tools), add_generation_prompt=True,
                                              tokenize=False, **kw)
        out.append({"name": name, "body": json.dumps(req, ensure_ascii=False), "expected": text,
                    "sorted_differs": sorted_text != text})
    path = os.path.join(HERE, "tool_chat_renders.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(out)} cases to {path}")


if __name__ == "__main__":
    main()
