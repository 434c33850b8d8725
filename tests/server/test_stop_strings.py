"""Issue 17: stop lists are bounded (400 past the bound) and matched in linear time off the
engine thread's hot path, so requests with huge stop lists do not slow anyone else down."""
import concurrent.futures as cf
import json
import random
import time

import pytest

from conftest import Server
from test_http_errors import call, error_of

MODEL = "stops"

MAX_STOPS, MAX_STOP_BYTES = 256, 1024


@pytest.fixture(scope="module")
def server():
    # The default 16 MiB body limit: the session server's 64 KiB would refuse these lists first.
    s = Server(["--served-model-name", MODEL, "--max-model-len", "256", "--seed", "0"])
    yield s
    assert s.stop() == 0


def test_stop_list_bounds_are_400(server):
    for stop in (["x"] * 100_000, ["x"] * (MAX_STOPS + 1), ["y" * (MAX_STOP_BYTES + 1)]):
        status, payload, _ = call(server, "POST", "/v1/completions", {"model": MODEL, "prompt": "hi", "stop": stop})
        assert status == 400, payload[:200]
        assert error_of(status, payload)["param"] == "stop"
    status, payload, _ = call(server, "POST", "/v1/completions",
                              {"model": MODEL, "prompt": "hi", "stop_token_ids": [1] * 100_000})
    assert status == 400 and error_of(status, payload)["param"] == "stop_token_ids"


def victim_latency(server):
    t0 = time.monotonic()
    status, payload, _ = call(server, "POST", "/v1/completions", {"model": MODEL, "prompt": "the victim",
                                                                  "max_tokens": 32, "ignore_eos": True,
                                                                  "temperature": 0})
    assert status == 200, payload
    return time.monotonic() - t0


def loaded_latency(server, stop):
    """The victim's best of three while four requests (with `stop`) generate alongside."""
    body = {"model": MODEL, "prompt": "noise", "max_tokens": 200, "ignore_eos": True, "n": 2}
    if stop:
        body["stop"] = stop
    best = float("inf")
    with cf.ThreadPoolExecutor(5) as ex:
        for _ in range(3):
            noise = [ex.submit(call, server, "POST", "/v1/completions", body) for _ in range(4)]
            time.sleep(0.05)
            best = min(best, victim_latency(server))
            for f in noise:
                assert f.result(timeout=120)[0] == 200
    return best


def test_huge_stop_lists_do_not_slow_other_requests(server):
    rng = random.Random(5)
    # The longest, most numerous stop strings allowed; each starts with common text so the
    # old per-string scan would hold back and rescan on every token.
    stop = ["e" + "".join(rng.choice("abcdefghij ") for _ in range(MAX_STOP_BYTES - 1)) for _ in range(MAX_STOPS)]
    base = loaded_latency(server, None)
    heavy = loaded_latency(server, stop)
    print(f"victim latency with 4x2 concurrent sequences: no stop list {base:.3f} s, "
          f"{MAX_STOPS} x {MAX_STOP_BYTES} B stop lists {heavy:.3f} s")
    assert heavy < 1.5 * base + 0.25, (base, heavy)
