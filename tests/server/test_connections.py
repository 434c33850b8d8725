"""Issue 17: the connection layer. A client that hangs up stops its generation at once, streaming
or not (its KV blocks are freed and generation_tokens stop growing, read from /metrics); a
request that does not arrive within --request-timeout, dribbled or idle, gets 408 in OpenAI's
shape while other clients are served as usual; idle keep-alive connections close after
--timeout-keep-alive."""
import json
import re
import socket
import time

from conftest import Server
from test_http_errors import error_of
from test_shutdown import metrics, post

LONG = {"prompt": "drop", "max_tokens": 1500, "ignore_eos": True, "temperature": 0}


def aborted(m):
    return sum(v for k, v in m.items() if k.startswith("vllm:request_success_total") and 'finished_reason="abort"' in k)


def open_request(port, body):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = json.dumps(body).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return s


def wait_for(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError("timed out waiting for " + what)


def drop_clients_and_check(port, stream):
    n = 6
    before = metrics(port)
    socks = [open_request(port, dict(LONG, stream=stream)) for _ in range(n)]
    wait_for(lambda: metrics(port)["vllm:num_requests_running"] == n, 30, "the requests to run")
    wait_for(lambda: metrics(port)["vllm:generation_tokens_total"] > before["vllm:generation_tokens_total"] + 4 * n,
             30, "tokens")
    at_close = metrics(port)
    t0 = time.monotonic()
    for s in socks:
        s.close()
    wait_for(lambda: metrics(port)["vllm:num_requests_running"] == 0, 5, "the dropped requests to stop")
    stopped_in = time.monotonic() - t0
    after = metrics(port)
    assert after["vllm:kv_cache_usage_perc"] == 0.0, after
    assert aborted(after) - aborted(before) == n
    time.sleep(0.3)
    assert metrics(port)["vllm:generation_tokens_total"] == after["vllm:generation_tokens_total"]
    # Each was stopped within a few engine steps of its hang-up, far from its 1,500 tokens.
    extra = after["vllm:generation_tokens_total"] - at_close["vllm:generation_tokens_total"]
    assert extra < 40 * n, (extra, stopped_in)
    return stopped_in, extra


def test_dropped_clients_stop_generating():
    s = Server(["--max-num-seqs", "8", "--disable-log-requests"])
    try:
        for stream in (False, True):
            stopped_in, extra = drop_clients_and_check(s.port, stream)
            print(f"stream={stream}: stopped {stopped_in:.3f} s after the hang-up, {extra:.0f} tokens meanwhile")
        # A client that stays gets its whole answer.
        status, payload = post(s.port, dict(LONG, max_tokens=8))
        assert status == 200 and json.loads(payload)["usage"]["completion_tokens"] == 8
    finally:
        assert s.stop() == 0


def read_response(sock, timeout):
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return data


def test_slow_and_idle_requests_get_408_and_others_do_not_wait():
    s = Server(["--request-timeout", "1", "--timeout-keep-alive", "0.5", "--disable-log-requests"])
    try:
        dribblers = []
        for _ in range(20):
            d = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            d.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
            dribblers.append(d)
        idle = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        t0 = time.monotonic()
        # While they dribble (a byte every 0.2 s), other clients are served as usual.
        lat = []
        while time.monotonic() - t0 < 0.8:
            for d in dribblers:
                d.sendall(b"X")
            t = time.monotonic()
            status, _ = post(s.port, {"prompt": "hi", "max_tokens": 1})
            lat.append(time.monotonic() - t)
            assert status == 200
            time.sleep(0.2)
        assert max(lat) < 0.5, lat
        for sock in dribblers + [idle]:
            data = read_response(sock, 5)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), data[:200]
            e = error_of(408, body)
            assert e["code"] == "request_timeout", e
            sock.close()
        took = time.monotonic() - t0
        assert 0.9 < took < 4, took
        # An idle keep-alive connection is closed after --timeout-keep-alive, without a 408.
        k = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        k.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        first = k.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        t1 = time.monotonic()
        rest = read_response(k, 5)
        assert rest == b"" and 0.4 < time.monotonic() - t1 < 2.5
        k.close()
    finally:
        assert s.stop() == 0
