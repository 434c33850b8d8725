#!/usr/bin/env python3
"""Serving benchmark for `pie serve` (or any OpenAI-compatible server): TTFT, inter-token
latency (ITL) and output throughput at fixed concurrency levels, over streaming HTTP.

Each level runs a closed loop: `concurrency` clients, each sending its next request as soon as
the previous one ended, until `max(min_requests, waves * concurrency)` requests are done.
Requests go to /v1/completions with `prompt` = `input_len` random token ids (distinct per
request, so the prefix cache never hits), `max_tokens` = `output_len`, `ignore_eos`,
temperature 0, `stream` with `stream_options.continuous_usage_stats`, so every SSE chunk says
how many tokens the request has produced so far.

  TTFT  = first chunk carrying a token - request sent
  ITL   = gap between consecutive token-carrying chunks / tokens the later one adds (a chunk
          that holds k tokens, e.g. after a token whose text was held back by the detokenizer,
          contributes k samples of gap/k; the same convention as the server's metric)
  output tokens/s = output tokens of the level / wall time of the level

Clients are spread over worker processes (asyncio, raw HTTP/1.1 + SSE, standard library only),
so parsing ~20k chunks/s does not serialise on one Python thread.

Roofline of the decode step (how the target "median ITL <= 1.3x roofline" is checked): one
decode step over B sequences must at least read every weight once and each sequence's K/V, and
compute 2 FLOPs per parameter per token, so

  bytes(B) = weight_bytes + B*hidden*2 (embedding rows) + kv_token_bytes * B * (ctx + 1)
  flops(B) = 2*(linear + lm_head params)*B + 4*q_heads*head_dim*ctx*B*layers
  roofline(B) = max(bytes / copy_bw, flops / gemm_flops)

with ctx = input_len + output_len/2 (the mean context over a request's decode steps),
kv_token_bytes = 2*layers*kv_heads*head_dim*2 (bf16), parameter counts from config.json
(--config), and the ceilings gemm_flops / copy_bw measured on the card by the server at
start-up: `pie serve --device cuda` prints `pie: roofline: gemm_flops G copy_bw C weight_bytes W`
on stdout; pass its log with --server-log (or the numbers with --copy-bw/--gemm-flops). This is
the same model as include/pie/engine/cuda/roofline.cuh, applied to a pure decode step of B =
concurrency.
"""
import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import re
import statistics
import sys
import time
from urllib.parse import urlparse


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


# ---- HTTP/1.1 + SSE over asyncio streams ----------------------------------------------------

async def read_chunked(reader):
    """Yields the body pieces of a chunked response as they arrive."""
    while True:
        line = await reader.readline()
        if not line:
            return
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await reader.readline()
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        yield data


async def one_request(host, port, path, body, api_key):
    """Sends one streaming request; returns (t_sent, [(t_chunk, completion_tokens)], error)."""
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n")
    if api_key:
        head += f"Authorization: Bearer {api_key}\r\n"
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
    t0 = time.monotonic()
    writer.write(head.encode() + b"\r\n" + payload)
    await writer.drain()
    events = []
    err = None
    try:
        status = await reader.readline()
        code = int(status.split()[1])
        chunked, length = False, None
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode().partition(":")
            if k.strip().lower() == "transfer-encoding" and "chunked" in v.lower():
                chunked = True
            if k.strip().lower() == "content-length":
                length = int(v.strip())
        if code != 200:
            data = await reader.readexactly(length) if length else await reader.read()
            return t0, events, f"HTTP {code}: {data[:300]!r}"
        buf = b""
        pieces = read_chunked(reader) if chunked else None
        last_tokens = 0
        while True:
            if pieces is not None:
                try:
                    data = await pieces.__anext__()
                except StopAsyncIteration:
                    break
            else:
                data = await reader.read(65536)
                if not data:
                    break
            now = time.monotonic()
            buf += data
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                for line in ev.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    d = line[5:].strip()
                    if d == b"[DONE]":
                        continue
                    j = json.loads(d)
                    if "error" in j:
                        err = str(j["error"])[:300]
                        continue
                    u = j.get("usage")
                    if j.get("choices") and u:
                        n = u.get("completion_tokens", 0)
                        if n > last_tokens:
                            events.append((now, n - last_tokens))
                            last_tokens = n
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except Exception:
            pass
    return t0, events, err


async def client_loop(cfg, jobs, results):
    host, port = cfg["host"], cfg["port"]
    while jobs:
        seed = jobs.pop()
        rng = random.Random(seed)
        prompt = [rng.randrange(cfg["id_lo"], cfg["id_hi"]) for _ in range(cfg["input_len"])]
        body = {"model": cfg["model"], "prompt": prompt, "max_tokens": cfg["output_len"], "temperature": 0.0,
                "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        try:
            t0, evs, err = await one_request(host, port, "/v1/completions", body, cfg["api_key"])
        except Exception as e:  # connection-level failure: recorded, the level goes on
            t0, evs, err = time.monotonic(), [], repr(e)
        results.append({"t0": t0, "events": evs, "error": err})


def worker(cfg, seeds, n_clients, start_at, q):
    async def main():
        jobs = list(seeds)
        results = []
        delay = start_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await asyncio.gather(*[client_loop(cfg, jobs, results) for _ in range(n_clients)])
        return results
    q.put(asyncio.run(main()))


def run_level(cfg, concurrency, num_requests, seed_base, procs):
    procs = max(1, min(procs, concurrency))
    seeds = [seed_base + i for i in range(num_requests)]
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    start_at = time.monotonic() + 0.5
    ps = []
    for p in range(procs):
        n_clients = concurrency // procs + (1 if p < concurrency % procs else 0)
        my = seeds[p::procs]
        ps.append(ctx.Process(target=worker, args=(cfg, my, n_clients, start_at, q)))
    for p in ps:
        p.start()
    recs = []
    for _ in ps:
        recs.extend(q.get())
    for p in ps:
        p.join()
    return recs, start_at


def summarize(recs, start_at, concurrency, output_len):
    ttft, itl, e2e = [], [], []
    tokens, errors, short = 0, [], 0
    t_end = start_at
    for r in recs:
        if r["error"]:
            errors.append(r["error"])
        evs = r["events"]
        if not evs:
            continue
        got = sum(n for _, n in evs)
        tokens += got
        if got != output_len:
            short += 1
        ttft.append(evs[0][0] - r["t0"])
        for (ta, _), (tb, n) in zip(evs, evs[1:]):
            itl.extend([(tb - ta) / n] * n)
        e2e.append(evs[-1][0] - r["t0"])
        t_end = max(t_end, evs[-1][0])
    wall = t_end - start_at
    ms = lambda x: 1e3 * x
    return {
        "concurrency": concurrency, "requests": len(recs), "errors": len(errors), "first_errors": errors[:3],
        "requests_with_wrong_token_count": short, "output_tokens": tokens, "wall_s": wall,
        "output_tok_per_s": tokens / wall if wall > 0 else float("nan"),
        "ttft_ms_p50": ms(pct(ttft, 50)), "ttft_ms_p99": ms(pct(ttft, 99)),
        "itl_ms_p50": ms(pct(itl, 50)), "itl_ms_p99": ms(pct(itl, 99)),
        "itl_ms_mean": ms(statistics.fmean(itl)) if itl else float("nan"),
        "e2e_s_p50": pct(e2e, 50),
    }


# ---- roofline -------------------------------------------------------------------------------

def read_ceilings(args):
    g, c, w = args.gemm_flops, args.copy_bw, None
    if args.server_log and os.path.exists(args.server_log):
        for line in open(args.server_log, errors="replace"):
            m = re.search(r"pie: roofline: gemm_flops (\S+) copy_bw (\S+) weight_bytes (\S+)", line)
            if m:
                g, c, w = float(m.group(1)), float(m.group(2)), float(m.group(3))
    return g, c, w


def decode_roofline(config_path, batch, ctx, gemm_flops, copy_bw, elem=2):
    c = json.load(open(config_path))
    H, I, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    nq, nkv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    hd = c.get("head_dim") or H // nq
    V = c["vocab_size"]
    qkv = (nq + 2 * nkv) * hd
    linear = (H * qkv + nq * hd * H + 3 * I * H) * L
    norms = (2 * H + (2 * hd if c.get("model_type") == "qwen3" else 0)) * L + H
    lm_head = V * H
    weight_bytes = (linear + norms + lm_head) * elem
    kv_tok = 2 * L * nkv * hd * elem
    bytes_ = weight_bytes + batch * H * elem + kv_tok * batch * (ctx + 1)
    flops = 2 * (linear + lm_head) * batch + 4 * nq * hd * ctx * batch * L
    t = max(bytes_ / copy_bw, flops / gemm_flops)
    return {"batch": batch, "ctx": ctx, "bytes": bytes_, "flops": flops, "weight_bytes_config": weight_bytes,
            "roofline_ms": 1e3 * t, "bound": "memory" if bytes_ / copy_bw >= flops / gemm_flops else "compute"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default=None, help="default: the first of GET /v1/models")
    ap.add_argument("--api-key", default=os.environ.get("PIE_API_KEY", ""))
    ap.add_argument("--concurrency", default="1,16,64,256")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--waves", type=float, default=2.0, help="requests per level = max(min, waves*concurrency)")
    ap.add_argument("--min-requests", type=int, default=6)
    ap.add_argument("--warmup-requests", type=int, default=16)
    ap.add_argument("--procs", type=int, default=min(8, os.cpu_count() or 1), help="client processes")
    ap.add_argument("--vocab-range", default="1000,100000", help="prompt token ids are drawn from [lo, hi)")
    ap.add_argument("--config", default=None, help="the model's config.json (roofline)")
    ap.add_argument("--server-log", default=None, help="pie serve's stdout, holding its 'pie: roofline:' line")
    ap.add_argument("--gemm-flops", type=float, default=None)
    ap.add_argument("--copy-bw", type=float, default=None)
    ap.add_argument("--target-concurrency", type=int, default=64)
    ap.add_argument("--target-ratio", type=float, default=1.3)
    ap.add_argument("--output-json", default=None)
    args = ap.parse_args()

    u = urlparse(args.base_url)
    host, port = u.hostname, u.port or 80
    model = args.model
    if model is None:
        import urllib.request
        req = urllib.request.Request(f"{args.base_url}/v1/models")
        if args.api_key:
            req.add_header("Authorization", f"Bearer {args.api_key}")
        model = json.load(urllib.request.urlopen(req, timeout=30))["data"][0]["id"]
    lo, hi = (int(x) for x in args.vocab_range.split(","))
    cfg = {"host": host, "port": port, "model": model, "api_key": args.api_key, "input_len": args.input_len,
           "output_len": args.output_len, "id_lo": lo, "id_hi": hi}

    result = {"model": model, "input_len": args.input_len, "output_len": args.output_len, "levels": []}
    if args.warmup_requests > 0:
        recs, t = run_level(cfg, min(16, args.warmup_requests), args.warmup_requests, 10_000_000, args.procs)
        w = summarize(recs, t, min(16, args.warmup_requests), args.output_len)
        print(f"warm-up: {w['requests']} requests, {w['errors']} errors", flush=True)
    gemm, copy_bw, wbytes = read_ceilings(args)
    result["ceilings"] = {"gemm_flops": gemm, "copy_bw": copy_bw, "weight_bytes_server": wbytes}
    for i, c in enumerate(int(x) for x in args.concurrency.split(",")):
        n = max(args.min_requests, int(args.waves * c))
        recs, t = run_level(cfg, c, n, 1000 * (i + 1) * 1000, args.procs)
        s = summarize(recs, t, c, args.output_len)
        if args.config and gemm and copy_bw:
            s["roofline"] = decode_roofline(args.config, c, args.input_len + args.output_len / 2, gemm, copy_bw)
            s["itl_p50_over_roofline"] = s["itl_ms_p50"] / s["roofline"]["roofline_ms"]
        result["levels"].append(s)
        line = (f"concurrency {c:4d}: {s['requests']} req ({s['errors']} errors), {s['output_tok_per_s']:.0f} out tok/s, "
                f"TTFT p50 {s['ttft_ms_p50']:.1f} p99 {s['ttft_ms_p99']:.1f} ms, "
                f"ITL p50 {s['itl_ms_p50']:.2f} p99 {s['itl_ms_p99']:.2f} ms")
        if "roofline" in s:
            line += f", decode roofline {s['roofline']['roofline_ms']:.2f} ms -> ITL p50 = {s['itl_p50_over_roofline']:.2f}x"
        print(line, flush=True)
        if s["first_errors"]:
            print("  errors:", s["first_errors"], flush=True)
    tgt = [s for s in result["levels"] if s["concurrency"] == args.target_concurrency and "roofline" in s]
    if tgt:
        r = tgt[0]["itl_p50_over_roofline"]
        result["target"] = {"concurrency": args.target_concurrency, "ratio": r, "limit": args.target_ratio,
                            "met": r <= args.target_ratio}
        print(f"target: concurrency {args.target_concurrency} median ITL = {r:.2f}x decode roofline "
              f"(limit {args.target_ratio}x): {'met' if r <= args.target_ratio else 'MISSED'}", flush=True)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
