#!/usr/bin/env python3
"""Structured-output throughput and compile latency of a running `pie serve` (issue 16).

Throughput: `concurrency` requests at once, each with a different 10-30-field JSON schema
(tests/server/schema_gen.wide_schema: bounded integers, numbers, enums, patterned strings) in
response_format, against the same requests without a schema. Every request runs to max_tokens
(ignore_eos: once a schema is complete its grammar allows only the stop token, which is then
drawn and ignored, so the masks are still computed and applied every step) so both runs
produce the same number of tokens; throughput = output tokens / wall time. Runs alternate
plain, constrained, plain, constrained; the ratio uses the best of each.

Compile latency: on the idle server, a request with a schema never seen before against the
same request without one (max_tokens 1, so the difference is the grammar's compilation, plus
one masked step), median and max over `fresh` schemas; then the same schema again (the cache).
Standard library only; prints one JSON line last.
"""
import argparse
import json
import os
import statistics
import sys
import time
import http.client
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "server"))
import schema_gen  # noqa: E402


def post(port, body, timeout=600):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = json.loads(r.read())
    c.close()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data}")
    return data


def body(model, i, schema, max_tokens):
    b = {"model": model, "messages": [{"role": "user", "content": f"Fill in record {i} as JSON."}],
         "max_tokens": max_tokens, "temperature": 1.0, "seed": i, "ignore_eos": True,
         "chat_template_kwargs": {"enable_thinking": False}}
    if schema is not None:
        b["response_format"] = {"type": "json_schema", "json_schema": {"name": f"r{i}", "schema": schema, "strict": True}}
    return b


def run(port, model, schemas, max_tokens, constrained, tag):
    with ThreadPoolExecutor(len(schemas)) as pool:
        t0 = time.perf_counter()
        outs = list(pool.map(lambda i: post(port, body(model, i, schemas[i] if constrained else None, max_tokens)),
                             range(len(schemas))))
        wall = time.perf_counter() - t0
    tokens = sum(o["usage"]["completion_tokens"] for o in outs)
    valid = None
    if constrained:  # the part before the first stop token must parse (ignore_eos keeps going after it)
        valid = 0
        for o in outs:
            try:
                json.loads(o["choices"][0]["message"]["content"])
                valid += 1
            except Exception:
                pass
    return {"tag": tag, "tokens": tokens, "wall_s": round(wall, 3), "tok_s": round(tokens / wall, 1), "valid_json": valid}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--fresh", type=int, default=5)
    ap.add_argument("--latency-only", action="store_true", help="only the compile latency (no throughput runs)")
    a = ap.parse_args()
    c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=30)
    c.request("GET", "/v1/models")
    model = json.loads(c.getresponse().read())["data"][0]["id"]
    # Compile latency first, on the idle server.
    post(a.port, body(model, 0, None, 1))  # warm
    extra, again = [], []
    for k in range(a.fresh):
        s = schema_gen.wide_schema(10_000 + k, 30)
        t0 = time.perf_counter(); post(a.port, body(model, k, None, 1)); plain = time.perf_counter() - t0
        t0 = time.perf_counter(); post(a.port, body(model, k, s, 1)); fresh = time.perf_counter() - t0
        t0 = time.perf_counter(); post(a.port, body(model, k, s, 1)); cached = time.perf_counter() - t0
        extra.append((fresh - plain) * 1e3)
        again.append((cached - plain) * 1e3)
        print(f"compile {k}: plain {plain*1e3:.1f} ms, fresh schema {fresh*1e3:.1f} ms, same schema again {cached*1e3:.1f} ms",
              flush=True)
    latency = {"compile_extra_ms_median": round(statistics.median(extra), 1), "compile_extra_ms_max": round(max(extra), 1),
               "cached_extra_ms_median": round(statistics.median(again), 1)}
    if a.latency_only:
        print(json.dumps(latency), flush=True)
        return
    rng_fields = [10 + (i * 7) % 21 for i in range(a.concurrency)]  # 10..30 fields
    schemas = [schema_gen.wide_schema(i, rng_fields[i]) for i in range(a.concurrency)]
    results = []
    for rep in range(2):
        for constrained in (False, True):
            r = run(a.port, model, schemas, a.max_tokens, constrained, ("schema" if constrained else "plain") + f"#{rep}")
            print(json.dumps(r), flush=True)
            results.append(r)
    best = lambda t: max(r["tok_s"] for r in results if r["tag"].startswith(t))
    summary = {"plain_tok_s": best("plain"), "schema_tok_s": best("schema"),
               "ratio": round(best("schema") / best("plain"), 3), **latency}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
