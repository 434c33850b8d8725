#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/seed-*), among them
the inputs of issue 17 that crashed `pie serve` or got a 500: 100,000-deep JSON, invalid UTF-8,
wrong types inside content parts. The fuzzers add what they find next to them (minimized with
libFuzzer's -merge=1 before committing)."""
import json
import os
import struct

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    with open(os.path.join(HERE, target, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


BAD_UTF8 = b"\xff\xfe\xc3("
deep = "[" * 100_000 + "]" * 100_000

# request bodies
put("request", "completion", json.dumps({"model": "m", "prompt": "hello", "max_tokens": 4, "temperature": 0.5,
                                         "logit_bias": {"3": 1}, "stop": ["a", "b"], "logprobs": 2,
                                         "prompt_logprobs": 1, "return_token_ids": True}))
put("request", "chat-tools", json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]},
                                                      {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                       "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
                                                      {"role": "tool", "tool_call_id": "c", "content": "1"}],
                                         "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
                                         "tool_choice": {"type": "function", "function": {"name": "f"}},
                                         "stream": True, "stream_options": {"include_usage": True}}))
put("request", "deep-100000", deep)
put("request", "deep-logit-bias", '{"prompt": "hi", "logit_bias": ' + '{"1":' * 2000 + "1" + "}" * 2000 + "}")
put("request", "bad-utf8-content", b'{"messages": [{"role": "user", "content": "a' + BAD_UTF8 + b'"}]}')
put("request", "bad-utf8-model", b'{"model": "' + BAD_UTF8 + b'", "prompt": "a"}')
put("request", "lone-surrogate", b'{"model": "\\udc80", "prompt": "a"}')
put("request", "text-part-int", json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}))
put("request", "response-format-int", json.dumps({"prompt": "x", "response_format": {"type": 5}}))
put("request", "token-prompts", json.dumps({"prompt": [[1, 2, 3], [4, 5]], "n": 2, "echo": True}))
put("request", "big-numbers", '{"prompt": "x", "max_tokens": 1e400, "seed": -9223372036854775809, "top_k": 1.5}')

# tokenizer input
put("tokenizer", "ascii", "The quick brown fox jumps over the lazy dog. 12345")
put("tokenizer", "specials", "<|im_start|>user\nhi<|im_end|>\n<think>x</think><tool_call>{}</tool_call>")
put("tokenizer", "unicode", "Café naïve — 日本語 😀 e\u0301 \u212b")
put("tokenizer", "bad-utf8", b"a" + BAD_UTF8 + b"\x80\x80\xe2\x82")

# chat template: byte 0 odd → messages JSON through the embedded template; even → template source
put("chat_template", "messages", b"\x01" + json.dumps({"messages": [{"role": "system", "content": "s"},
                                                                    {"role": "user", "content": "hi"}],
                                                       "options": {"add_generation_prompt": True,
                                                                   "enable_thinking": False}}).encode())
put("chat_template", "messages-deep", b"\x01" + ("[" * 1000 + "]" * 1000).encode())
put("chat_template", "template", b"\x00{% for m in messages %}{{ m.role }}: {{ m.content | trim }}\n"
                                 b"{% endfor %}{% if add_generation_prompt %}{{ bos_token }}{% endif %}")
put("chat_template", "template-ns", b"\x00{%- set ns = namespace(x=0) -%}{% for m in messages[::-1] %}"
                                    b"{% set ns.x = ns.x + 1 %}{{ m['content'].split('o')|length }}{% endfor %}"
                                    b"{{ ns.x }}{{ (1 + 2) * 3 ~ 'a' }}{{ messages | tojson }}")
put("chat_template", "template-deep", b"\x00{{" + b"(" * 5000 + b"1" + b")" * 5000 + b"}}")


def safetensors(header, data=b""):
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


put("safetensors", "valid", safetensors({"__metadata__": {"format": "pt"},
                                         "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                                         "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}}, bytes(22)))
put("safetensors", "overlap", safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)))
put("safetensors", "past-end", safetensors({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)))
put("safetensors", "huge-header-len", struct.pack("<Q", 1 << 62) + b"{}")
put("safetensors", "deep-header", struct.pack("<Q", 4000) + b"[" * 2000 + b"]" * 2000)
put("safetensors", "truncated", b"\x10\x00\x00")
