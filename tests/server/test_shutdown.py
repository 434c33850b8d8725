"""Issue 17: SIGTERM drains. /health turns 503 and new requests get a 503 in OpenAI's shape,
while the requests in flight run to their end, for up to --shutdown-timeout seconds; then the
rest end with finish_reason "abort". The server exits 0 either way."""
import concurrent.futures as cf
import http.client
import json
import re
import signal
import socket
import time

from conftest import Server
from test_http_errors import error_of

BODY = {"prompt": "drain", "max_tokens": 1000, "ignore_eos": True, "temperature": 0}


def post(port, body, timeout=120):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, payload


def metrics(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    out = {}
    for line in data.decode().split("\n"):
        m = re.match(r"^(vllm:[a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:  # by full name (with labels), and by family name
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3)) if m.group(2) else float(m.group(3))
    return out


def stream_finish(payload):
    events = [line[6:] for line in payload.decode().split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    return [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1], text


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, payload


def start_load(s, ex, n_plain=5, n_stream=2):
    futs = [ex.submit(post, s.port, BODY) for _ in range(n_plain)]
    futs += [ex.submit(post, s.port, dict(BODY, stream=True)) for _ in range(n_stream)]
    # Every request is in the engine (running or queued) before the signal: a loaded machine
    # can take longer than a fixed sleep to get them there.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = metrics(s.port)
        submitted = sum(m.get(k, 0) for k in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                                                "vllm:request_success_total"))
        if submitted >= n_plain + n_stream:
            break
        time.sleep(0.02)
    return futs


def finishes(futs):
    out = []
    for i, f in enumerate(futs):
        status, payload = f.result(timeout=120)
        assert status == 200, payload[:300]
        if payload.startswith(b"data: "):
            out.append(stream_finish(payload)[0])
        else:
            out.append(json.loads(payload)["choices"][0]["finish_reason"])
    return out


def test_sigterm_drains_in_flight_requests():
    # One sequence at a time: the seven requests queue, so the drain takes a while.
    s = Server(["--max-num-seqs", "1", "--shutdown-timeout", "60"])
    with cf.ThreadPoolExecutor(8) as ex:
        futs = start_load(s, ex)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        status, payload = get(s.port, "/health")
        assert status == 503 and error_of(status, payload)["code"] == "service_unavailable"
        status, payload = post(s.port, BODY)
        assert status == 503 and error_of(status, payload)["code"] == "service_unavailable"
        assert finishes(futs) == ["length"] * 7
        drained = time.monotonic() - t0
    s.proc.wait(30)
    s._reader.join(5)
    assert s.proc.returncode == 0, "\n".join(s.lines)
    drain_lines = [line for line in s.lines if "draining" in line]
    assert drain_lines, s.lines
    print(drain_lines[0])
    print(f"drained 7 requests of 1000 tokens in {drained:.2f} s after SIGTERM")


def test_shutdown_timeout_aborts_the_rest():
    s = Server(["--max-num-seqs", "1", "--shutdown-timeout", "0.3"])
    with cf.ThreadPoolExecutor(8) as ex:
        futs = start_load(s, ex, n_plain=6, n_stream=1)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        got = finishes(futs)
        took = time.monotonic() - t0
    assert "abort" in got, got
    assert took < 10, took
    s.proc.wait(30)
    assert s.proc.returncode == 0


def test_second_signal_aborts_at_once():
    s = Server(["--max-num-seqs", "1", "--shutdown-timeout", "600"])
    with cf.ThreadPoolExecutor(8) as ex:
        futs = start_load(s, ex, n_plain=6, n_stream=1)
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        s.proc.send_signal(signal.SIGINT)
        got = finishes(futs)
    assert "abort" in got, got
    s.proc.wait(30)
    assert s.proc.returncode == 0
