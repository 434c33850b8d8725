"""Issue 17: an engine step that throws (a CUDA error, out of memory) fails the requests in flight
with an OpenAI-shaped error, streaming or not, turns /health to 503, and the server exits non-zero
instead of hanging. The fault is injected on the CPU backend through the test-only
PIE_TEST_FAIL_STEP environment variable (the N-th engine step throws)."""
import concurrent.futures as cf
import json
import time

from conftest import Server
from test_http_errors import error_of
from test_shutdown import get, post

BODY = {"prompt": "fault", "max_tokens": 1000, "ignore_eos": True, "temperature": 0}


def test_a_failed_step_errors_every_request_and_the_server_exits():
    # Step 200: long after all six are submitted (1 ms-ish steps), long before 1,000 tokens.
    s = Server(["--max-num-seqs", "8", "--disable-log-requests"], env={"PIE_TEST_FAIL_STEP": "200"})
    try:
        with cf.ThreadPoolExecutor(6) as ex:
            plain = [ex.submit(post, s.port, BODY) for _ in range(3)]
            streams = [ex.submit(post, s.port, dict(BODY, stream=True)) for _ in range(3)]
            t0 = time.monotonic()
            for f in plain:
                status, payload = f.result(timeout=60)
                assert status == 500, payload[:300]
                e = error_of(status, payload)
                assert e["type"] == "server_error" and "injected fault at step 200" in e["message"], e
            health, body = get(s.port, "/health")
            assert health == 503 and "The engine failed" in error_of(health, body)["message"]
            status, payload = post(s.port, dict(BODY, max_tokens=2))
            assert status == 503, payload
            error_of(status, payload)
            for f in streams:
                status, payload = f.result(timeout=60)
                assert status == 200  # the stream had started: its error is an event
                events = [line[6:] for line in payload.decode().split("\n") if line.startswith("data: ")]
                assert events[-1] == "[DONE]", events[-3:]
                err = json.loads(events[-2])
                assert set(err) == {"error"} and "injected fault" in err["error"]["message"], err
                tokens = [json.loads(e) for e in events[:-2]]
                assert tokens and all(c["choices"][0]["finish_reason"] is None for c in tokens if c["choices"])
        s.proc.wait(timeout=30)
        assert s.proc.returncode == 1, "\n".join(s.lines)
        assert time.monotonic() - t0 < 30
        assert any("injected fault at step 200" in line for line in s.lines), "\n".join(s.lines)
    finally:
        s.kill()
