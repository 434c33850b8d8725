"""64 concurrent streaming clients, 16 of which hang up midway: the others finish correctly and
the KV cache is empty afterwards (read from /metrics)."""
import http.client
import json
import re
import threading
import time

from conftest import API_KEY, MODEL

MAX_TOKENS = 48


def metrics(server):
    """name → value of the first sample; name{finished_reason} → value for the request counters."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        m = re.match(r'^((?:vllm|pie):[a-z0-9_]+)\{([^}]*)\} ([0-9.e+-]+)$', line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2), float(m.group(3))
        out.setdefault(name, value)
        r = re.search(r'finished_reason="([a-z]+)"', labels)
        if r:
            out[f"{name}{{{r.group(1)}}}"] = value
    return out


def stream_one(server, i, disconnect, results):
    body = {"model": MODEL, "prompt": f"Client number {i} says hello.", "max_tokens": MAX_TOKENS,
            "temperature": 0.8, "seed": i, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body),
                     headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200, r.read()
        text, finish, usage, done, events = "", None, None, False, 0
        buf = b""
        while not done:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                done = True
                break
            ev = json.loads(data)
            events += 1
            if ev["choices"]:
                text += ev["choices"][0]["text"]
                finish = ev["choices"][0]["finish_reason"] or finish
            else:
                usage = ev["usage"]
            if disconnect and events >= 4:
                conn.sock.shutdown(2)  # hang up mid-stream
                conn.close()
                results[i] = ("disconnected", events)
                return
        results[i] = ("done", done, finish, usage, text)
    except Exception as e:  # recorded, asserted by the test
        results[i] = ("error", repr(e))
    finally:
        conn.close()


def test_64_streams_16_disconnect_kv_returns_to_zero(server):
    n, results = 64, {}
    aborted_before = metrics(server)["vllm:request_success_total{abort}"]
    threads = [threading.Thread(target=stream_one, args=(server, i, i % 4 == 0, results)) for i in range(n)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads), "clients still running after 180 s"
    disconnected = [i for i in range(n) if i % 4 == 0]
    assert len(disconnected) == 16
    for i in range(n):
        r = results.get(i)
        assert r is not None, i
        if i % 4 == 0:
            assert r[0] == "disconnected", r
            continue
        assert r[0] == "done", r
        _, done, finish, usage, text = r
        assert done and finish == "length", r
        assert usage["completion_tokens"] == MAX_TOKENS, usage
        assert usage["total_tokens"] == usage["prompt_tokens"] + MAX_TOKENS
    # Aborted requests free their blocks: usage, running and waiting all drop to zero.
    deadline = time.monotonic() + 30
    m = metrics(server)
    while time.monotonic() < deadline and (m["vllm:kv_cache_usage_perc"] > 0 or m["vllm:num_requests_running"] > 0
                                           or m["vllm:num_requests_waiting"] > 0):
        time.sleep(0.1)
        m = metrics(server)
    assert m["vllm:kv_cache_usage_perc"] == 0.0, m
    assert m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0, m
    # The 16 hang-ups were aborted in the engine, not run to their end.
    assert m["vllm:request_success_total{abort}"] - aborted_before == 16, m
    print(f"64 streams in {time.monotonic() - t0:.1f} s")


def test_metrics_after_traffic(server):
    m = metrics(server)
    for name in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:prefix_cache_queries_total",
                 "vllm:time_to_first_token_seconds_count", "vllm:inter_token_latency_seconds_count",
                 "vllm:e2e_request_latency_seconds_count", "vllm:request_queue_time_seconds_count",
                 "vllm:time_per_output_token_seconds_count", "vllm:request_prompt_tokens_count",
                 "vllm:request_generation_tokens_count", "vllm:iteration_tokens_total_count",
                 "vllm:request_prefill_time_seconds_count", "vllm:request_decode_time_seconds_count",
                 "vllm:request_inference_time_seconds_count", "vllm:request_params_n_count",
                 "vllm:request_params_max_tokens_count", "pie:kv_cache_blocks_total", "pie:http_requests_total"):
        assert m.get(name, 0) > 0, (name, m)
    assert m["vllm:prefix_cache_hits_total"] <= m["vllm:prefix_cache_queries_total"]
    assert "vllm:num_preemptions_total" in m and "pie:kv_cache_blocks_free" in m
    assert m["pie:kv_cache_blocks_free"] <= m["pie:kv_cache_blocks_total"]
