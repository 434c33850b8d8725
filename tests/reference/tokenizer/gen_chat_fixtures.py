#!/usr/bin/env python3
"""Generates chat-template fixtures with transformers (torch not needed):

  qwen3_chat_template.json  conversations rendered by apply_chat_template with the genuine
                            Qwen3-8B tokenizer (tokenizer_config.json's template)
  jinja_cases.json          small templates exercising the Jinja subset, rendered with
                            transformers' own Jinja environment (trim_blocks, lstrip_blocks,
                            tojson, loopcontrols)

Usage: python3 tests/reference/tokenizer/gen_chat_fixtures.py
"""
import json
import os
import sys

sys.modules.setdefault("torch", None)  # transformers imports fine without torch
from transformers import AutoTokenizer  # noqa: E402
from transformers.utils.chat_template_utils import _compile_jinja_template  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
QWEN_DIR = os.path.join(HERE, "..", "..", "..", "..", "shared", "models", "Qwen3-8B")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.\nReturns \"temp\" in °C.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. 東京"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": None}},
        "required": ["city"]}}}
SEARCH = {"type": "function", "function": {
    "name": "search", "description": "Search the web\tfor a query \\ path",
    "parameters": {"type": "object", "properties": {
        "query": {"type": "string"}, "top_k": {"type": "integer", "minimum": 1, "maximum": 100},
        "threshold": {"type": "number", "default": 0.5}, "tiny": {"type": "number", "default": 1e-05},
        "big": {"type": "number", "default": 1e16}, "strict": {"type": "boolean", "default": True}},
        "required": ["query"]}}}

U = lambda c: {"role": "user", "content": c}  # noqa: E731
A = lambda c, **kw: dict({"role": "assistant", "content": c}, **kw)  # noqa: E731
S = lambda c: {"role": "system", "content": c}  # noqa: E731
T = lambda c: {"role": "tool", "content": c}  # noqa: E731


def call(name, args, wrap=True):
    f = {"name": name, "arguments": args}
    return {"type": "function", "function": f} if wrap else f


def conversations():
    hist = [U("What is 2+2?"), A("<think>\nSimple arithmetic.\n</think>\n\n2+2 = 4."), U("And 3+3?")]
    tool_flow = [S("You are a weather bot."), U("Weather in Paris?"),
                 A("", tool_calls=[call("get_weather", {"city": "Paris"})]),
                 T('{"temp": 21, "sky": "clear"}')]
    yield "user_only", [U("Hello!")], {"add_generation_prompt": True}
    yield "user_no_generation_prompt", [U("Hello!")], {}
    yield "system_user", [S("You are concise."), U("Hi")], {"add_generation_prompt": True}
    yield "thinking_disabled", [U("Hi")], {"add_generation_prompt": True, "enable_thinking": False}
    yield "thinking_enabled", [U("Hi")], {"add_generation_prompt": True, "enable_thinking": True}
    yield "multi_turn_plain", [U("a"), A("b"), U("c"), A("d"), U("e")], {"add_generation_prompt": True}
    yield "history_reasoning_stripped", hist, {"add_generation_prompt": True}
    yield "history_reasoning_thinking_off", hist, {"add_generation_prompt": True, "enable_thinking": False}
    yield "last_assistant_keeps_reasoning", hist + [A("<think>\nAdd.\n</think>\n\n6")], {}
    yield "reasoning_content_field", [U("q"), A("answer", reasoning_content="because")], {}
    yield "reasoning_content_in_history", [U("q"), A("answer", reasoning_content="because"), U("q2")], {"add_generation_prompt": True}
    yield "reasoning_without_newlines", [U("q"), A("<think>r</think>a")], {}
    yield "tools_with_system", [S("Be helpful."), U("Weather?")], {"tools": [WEATHER, SEARCH], "add_generation_prompt": True}
    yield "tools_without_system", [U("Find cats")], {"tools": [SEARCH], "add_generation_prompt": True}
    yield "tools_thinking_off", [U("Find cats")], {"tools": [WEATHER], "add_generation_prompt": True, "enable_thinking": False}
    yield "tool_call_flow", tool_flow, {"tools": [WEATHER], "add_generation_prompt": True}
    yield "tool_call_flow_answered", tool_flow + [A("It is 21 °C and clear.")], {"tools": [WEATHER]}
    yield "tool_call_string_arguments", [U("x"), A("", tool_calls=[call("search", '{"query": "cats"}')]), T("[]")], {"add_generation_prompt": True}
    yield "tool_call_unwrapped", [U("x"), A("Let me look.", tool_calls=[call("search", {"query": "dogs", "top_k": 3}, wrap=False)])], {}
    yield "tool_calls_multiple", [U("Compare"), A("Checking both.", tool_calls=[call("get_weather", {"city": "Oslo"}), call("get_weather", {"city": "Rome", "unit": "celsius"})]), T("5"), T("25")], {"add_generation_prompt": True}
    yield "multi_step_tools_with_reasoning", [U("Plan a trip"), A("<think>\nNeed weather.\n</think>\n\n", tool_calls=[call("get_weather", {"city": "Kyoto"})]), T("rain"), A("<think>\nRain, search indoor.\n</think>\n\nSearching.", tool_calls=[call("search", {"query": "Kyoto museums"})]), T("Kyoto National Museum")], {"add_generation_prompt": True, "tools": [WEATHER, SEARCH]}
    yield "user_tool_response_text", [U("hi"), A("<think>\nx\n</think>\n\ny"), U("<tool_response>\nraw\n</tool_response>")], {"add_generation_prompt": True}
    yield "system_not_first", [U("a"), S("mid-conversation system"), U("b")], {"add_generation_prompt": True}
    yield "unicode_content", [S("系统提示：请用中文回答。"), U("你好 👋🏽 ¿Qué tal? مرحبا"), A("<think>\n用户在打招呼。\n</think>\n\n你好！")], {}
    yield "quotes_backslashes", [U('He said "hi" \\ \'there\'\n\ttab'), A("ok {\"a\": 1}")], {"add_generation_prompt": True}
    yield "empty_contents", [S(""), U(""), A("")], {"add_generation_prompt": True}
    yield "long_history", [m for i in range(6) for m in (U(f"question {i}"), A(f"<think>\nthought {i}\n</think>\n\nanswer {i}"))] + [U("final")], {"add_generation_prompt": True}
    yield "assistant_prefill_no_prompt", [U("Write a poem"), A("Roses are")], {}
    yield "tool_response_then_user", tool_flow + [A("21 degrees."), U("Thanks! And tomorrow?")], {"tools": [WEATHER], "add_generation_prompt": True}
    yield "thinking_off_multi_turn", [S("sys"), U("a"), A("b"), U("c")], {"add_generation_prompt": True, "enable_thinking": False}
    yield "extra_kwargs_ignored", [U("hi")], {"add_generation_prompt": True, "custom_flag": 3}
    yield "think_tags_in_user", [U("<think>not mine</think> what?")], {"add_generation_prompt": True}
    yield "continue_final_message", [U("Write a poem"), A("Roses are red,\n")], {"continue_final_message": True}
    yield "continue_final_message_reasoning", [U("q"), A("<think>\nhmm\n</think>\n\nThe answer is")], {"continue_final_message": True}
    yield "reasoning_multiple_think_blocks", [U("q"), A("<think>a</think>\n<think>b</think>\n\nfinal")], {}


JINJA_CASES = [
    ("loop_vars", "{% for x in xs %}{{ loop.index }}/{{ loop.length }}{{ ',' if not loop.last }}{% endfor %}", {"xs": [1, 2, 3]}),
    ("loop_else_filter", "{% for x in xs if x > 1 %}{{ x }}{{ loop.index0 }} {% else %}none{% endfor %}|{% for x in [] %}a{% else %}empty{% endfor %}", {"xs": [1, 2, 3]}),
    ("trim_lstrip_blocks", "<ul>\n  {% for x in xs %}\n    <li>{{ x }}</li>\n  {% endfor %}\n</ul>\n", {"xs": ["a", "b"]}),
    ("whitespace_modifiers", "a   {%- if true -%}   b   {%- endif %}   c\n  {%+ if true %}d{% endif +%}\ne {# comment #}\nf", {}),
    ("namespace_set", "{% set ns = namespace(n=0, s='') %}{% for x in xs %}{% set ns.n = ns.n + x %}{% set ns.s = ns.s ~ x %}{% endfor %}{{ ns.n }} {{ ns.s }}", {"xs": [1, 2, 3]}),
    ("set_scoping", "{% set a = 1 %}{% for x in [1] %}{% set a = 2 %}{{ a }}{% endfor %}{{ a }}{% if true %}{% set a = 3 %}{% endif %}{{ a }}", {}),
    ("string_methods", "{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip('x ') }}|{{ s.split() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a b c'.split(' ', 1) }}|{{ s.upper() }}|{{ 'Hello'.startswith('He') }}|{{ 'Hello'.endswith(('x', 'lo')) }}|{{ 'a-b'.replace('-', '+') }}", {"s": "  hi there x "}),
    ("slicing", "{{ xs[::-1] }} {{ xs[1:] }} {{ xs[:-1] }} {{ xs[-1] }} {{ s[::-1] }} {{ s[1:3] }} {{ xs[::2] }}", {"xs": [1, 2, 3, 4], "s": "héllo"}),
    ("python_str", "{{ none }} {{ true }} {{ 1.0 }} {{ 2.5e-7 }} {{ 10 / 4 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ d }} {{ l }} {{ 3 * 'ab' }}", {"d": {"k": "v", "n": None, "b": False, "q": "it's"}, "l": [1, "two", 3.5]}),
    ("tojson", "{{ d | tojson }}\n{{ d | tojson(indent=2) }}\n{{ 'a\"b\\\\c\\n' | tojson }} {{ [] | tojson }} {{ {} | tojson(indent=2) }}", {"d": {"b": [1, 2.5, None, True], "a": "ü\u0001", "z": {"y": []}}}),
    ("tests", "{{ x is defined }} {{ y is defined }} {{ x is string }} {{ n is number }} {{ n is integer }} {{ f is float }} {{ none is none }} {{ false is false }} {{ d is mapping }} {{ l is iterable }} {{ 4 is even }} {{ 3 is odd }} {{ 9 is divisibleby 3 }} {{ x is not none }}", {"x": "s", "n": 3, "f": 1.5, "d": {}, "l": []}),
    ("filters", "{{ l | length }} {{ s | length }} {{ l | join(', ') }} {{ l | first }} {{ l | last }} {{ l | reverse | list }} {{ y | default('dflt') }} {{ '' | default('e', true) }} {{ '  t  ' | trim }} {{ 'ab' | upper }} {{ 'hello world' | capitalize }} {{ l | unique | list }} {{ '3' | int + 1 }}", {"l": [3, 1, 3], "s": "日本語"}),
    ("selectattr_map", "{{ ms | selectattr('role', 'equalto', 'user') | map(attribute='content') | join('+') }} {{ ms | rejectattr('role', 'equalto', 'user') | list | length }} {{ ms | selectattr('x') | list | length }} {{ ms | map(attribute='role') | list }}", {"ms": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "x": 1}, {"role": "user", "content": "c"}]}),
    ("dict_methods", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %} {{ d.keys() | list }} {{ d.get('a') }} {{ d.get('zz', 'none') }} {{ d['b'] }} {{ d.a }}", {"d": {"a": 1, "b": [2]}}),
    ("operators", "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 ** 10 }} {{ 'a' ~ 1 ~ none }} {{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }} {{ 1 < 2 and 2 <= 2 }} {{ not 1 == 1 or 2 != 3 }} {{ 'x' if false else 'y' }} {{ -(3) }} {{ 1 == 1.0 }}", {}),
    ("loopcontrols", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x > 4 %}{% break %}{% endif %}{{ x }}{% endfor %} {{ range(3) | list }} {{ range(1, 7, 2) | list }}", {}),
    ("nested_loops", "{% for a in xs %}{% for b in a %}{{ loop.index }}{{ b }}{% endfor %}{{ loop.index }};{% endfor %}", {"xs": [["x", "y"], ["z"]]}),
    ("elif_chain", "{% for n in [1, 2, 3, 4] %}{% if n == 1 %}one{% elif n == 2 %}two{% elif n == 3 %}three{% else %}many{% endif %} {% endfor %}", {}),
    ("undefined_attrs", "[{{ m.missing }}][{{ m.missing is defined }}][{{ m['role'] }}][{{ xs[10] is defined }}]{% if m.missing %}bad{% endif %}", {"m": {"role": "r"}, "xs": []}),
    ("iterate_dict_and_string", "{% for k in d %}{{ k }}{% endfor %}|{% for c in 'añb' %}{{ c }}.{% endfor %}", {"d": {"z": 1, "a": 2}}),
    ("crlf_template", "line1\r\n{% if true %}\r\nline2\r\n{% endif %}\r\nend", {}),
    ("generation_block", "{% for m in ms %}{% generation %}{{ m }}{% endgeneration %}{% endfor %}", {"ms": ["a", "b"]}),
    ("raise_not_taken", "{% if false %}{{ raise_exception('no') }}{% endif %}ok", {}),
    ("string_escapes", "{{ 'tab\\there' }}|{{ \"dq 'single'\" }}|{{ 'new\\nline' }}", {}),
    ("trailing_newline_dropped", "text\n", {}),
    ("indent_filter", "{{ s | indent(2) }}|{{ s | indent(4, true) }}", {"s": "a\nb\n\nc"}),
]


def main():
    tok = AutoTokenizer.from_pretrained(QWEN_DIR)
    cases = []
    for name, messages, opts in conversations():
        opts = dict(opts)
        tools = opts.pop("tools", None)
        agp = opts.pop("add_generation_prompt", False)
        text = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=agp, tokenize=False, **opts)
        options = {"add_generation_prompt": agp}
        if tools is not None:
            options["tools"] = tools
        options.update(opts)
        cases.append({"name": name, "messages": messages, "options": options, "expected": text})
    path = os.path.join(HERE, "qwen3_chat_template.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {path}: {len(cases)} conversations")

    jcases = []
    for name, src, variables in JINJA_CASES:
        out = _compile_jinja_template(src).render(**variables)
        jcases.append({"name": name, "template": src, "vars": variables, "expected": out})
    path = os.path.join(HERE, "jinja_cases.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(jcases, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {path}: {len(jcases)} templates")


if __name__ == "__main__":
    main()
