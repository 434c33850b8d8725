#!/usr/bin/env python3
"""Connection-layer load for `pie serve` (issue 17), standard library only.

1. `--streams N` concurrent streaming /v1/completions (each its own connection, all opened at
   once, `--max-tokens` tokens each): errors, wall time, per-request latency.
2. `--slow N` sockets that send half a request line and then dribble one byte every
   `--dribble-s` seconds, while a probe client sends `--probes` one-token requests one after
   the other: probe latency without and with the slow sockets, and how the slow sockets end
   (408 expected after the server's --request-timeout).

Starts the server itself (`--pie PATH`: `pie serve` on the embedded model, port 0) or uses
`--base http://host:port`. Prints one table at the end.
"""
import argparse
import asyncio
import json
import re
import resource
import statistics
import subprocess
import sys
import time


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


async def one_stream(host, port, body, out):
    t0 = time.monotonic()
    try:
        r, w = await asyncio.open_connection(host, port)
        data = json.dumps(body).encode()
        w.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
        await w.drain()
        payload = await asyncio.wait_for(r.read(), 600)
        w.close()
        ok = payload.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in payload and b'"error"' not in payload
        out.append((ok, time.monotonic() - t0, payload[:120] if not ok else b""))
    except Exception as e:  # noqa: BLE001 - every failure is counted as an error
        out.append((False, time.monotonic() - t0, repr(e).encode()))


async def streams(host, port, n, max_tokens):
    body = {"prompt": "load", "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0, "stream": True}
    out = []
    t0 = time.monotonic()
    await asyncio.gather(*(one_stream(host, port, body, out) for _ in range(n)))
    wall = time.monotonic() - t0
    errors = [o for o in out if not o[0]]
    return {"n": n, "errors": len(errors), "wall_s": wall, "lat": [o[1] for o in out],
            "first_errors": [e[2] for e in errors[:3]]}


async def probe(host, port, count):
    lat = []
    body = json.dumps({"prompt": "probe", "max_tokens": 1, "temperature": 0}).encode()
    for _ in range(count):
        t0 = time.monotonic()
        r, w = await asyncio.open_connection(host, port)
        w.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await w.drain()
        payload = await r.read()
        w.close()
        assert payload.startswith(b"HTTP/1.1 200"), payload[:200]
        lat.append(time.monotonic() - t0)
        await asyncio.sleep(0.05)
    return lat


async def dribbler(host, port, every, stop, ends):
    r, w = await asyncio.open_connection(host, port)
    w.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
    await w.drain()
    read = asyncio.ensure_future(r.read())
    while not stop.is_set() and not read.done():
        try:
            w.write(b"X")
            await w.drain()
        except (ConnectionError, OSError):
            break
        await asyncio.wait([read], timeout=every)
    try:
        data = await asyncio.wait_for(read, 30)
    except Exception:  # noqa: BLE001
        data = b""
    ends.append(data.split(b"\r\n", 1)[0].decode(errors="replace") or "closed")
    w.close()


async def slow(host, port, n, every, probes):
    base = await probe(host, port, probes)
    stop = asyncio.Event()
    ends = []
    tasks = [asyncio.ensure_future(dribbler(host, port, every, stop, ends)) for _ in range(n)]
    await asyncio.sleep(1.0)  # all connected and dribbling
    during = await probe(host, port, probes)
    await asyncio.gather(*tasks)
    return {"n": n, "base": base, "during": during, "ends": {e: ends.count(e) for e in set(ends)}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pie", help="the pie program (starts `pie serve` on the embedded model)")
    ap.add_argument("--base", help="an already running server, http://host:port")
    ap.add_argument("--streams", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--slow", type=int, default=500)
    ap.add_argument("--dribble-s", type=float, default=2.0)
    ap.add_argument("--probes", type=int, default=40)
    ap.add_argument("--server-args", default="--max-num-seqs 256 --disable-log-requests")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    proc = None
    if a.pie:
        proc = subprocess.Popen([a.pie, "serve", "--host", "127.0.0.1", "--port", "0", *a.server_args.split()],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m:
                port = int(m.group(1))
            if "ready" in line:
                break
        host = "127.0.0.1"
    else:
        host, port = re.match(r"https?://([^:/]+):(\d+)", a.base).groups()
        port = int(port)
    try:
        s = asyncio.run(streams(host, port, a.streams, a.max_tokens)) if a.streams else None
        w = asyncio.run(slow(host, port, a.slow, a.dribble_s, a.probes)) if a.slow else None
    finally:
        if proc:
            proc.terminate()
            proc.wait(60)
    print("| test | result |")
    print("| --- | --- |")
    if s:
        print(f"| {s['n']} concurrent streams, {a.max_tokens} tokens each | {s['errors']} errors, wall "
              f"{s['wall_s']:.1f} s, latency p50 {pct(s['lat'], .5):.2f} s / p99 {pct(s['lat'], .99):.2f} s |")
        if s["first_errors"]:
            print("first errors:", s["first_errors"], file=sys.stderr)
    if w:
        b, d = w["base"], w["during"]
        print(f"| probe latency alone ({len(b)} requests) | p50 {statistics.median(b) * 1e3:.1f} ms / "
              f"p99 {pct(b, .99) * 1e3:.1f} ms / max {max(b) * 1e3:.1f} ms |")
        print(f"| probe latency with {w['n']} dribbling sockets | p50 {statistics.median(d) * 1e3:.1f} ms / "
              f"p99 {pct(d, .99) * 1e3:.1f} ms / max {max(d) * 1e3:.1f} ms (added p50 "
              f"{(statistics.median(d) - statistics.median(b)) * 1e3:+.1f} ms) |")
        print(f"| how the dribbling sockets ended | {w['ends']} |")


if __name__ == "__main__":
    main()
