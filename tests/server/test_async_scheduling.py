"""`pie serve --async-scheduling` (the embedded model, CPU) returns what the synchronous server
returns: the same completions, finish reasons and logprobs for greedy, seeded, n = 2, stop
strings (finish_sequence between steps), stop ids, max_tokens and logprobs (which run
synchronous steps), sent concurrently so they share steps."""
import json
import threading
import urllib.request

from conftest import Server

REQUESTS = [
    {"prompt": "The capital of France", "max_tokens": 24, "temperature": 0, "ignore_eos": True},
    {"prompt": "Once upon a time", "max_tokens": 20, "temperature": 1.0, "seed": 7, "ignore_eos": True},
    {"prompt": "abc", "max_tokens": 12, "temperature": 0.9, "seed": 3, "n": 2, "ignore_eos": True},
    {"prompt": "hello world", "max_tokens": 9, "temperature": 0, "logprobs": 2},
    {"prompt": "tokens", "max_tokens": 16, "temperature": 0, "stop_token_ids": [100, 200, 300]},
    {"prompt": "x y z", "max_tokens": 5, "temperature": 0.7, "seed": 11},
]


def post(base, body):
    req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def results(extra, requests):
    s = Server(["--max-model-len", "256", "--seed", "0", "--num-threads", "1", *extra])
    try:
        out = [None] * len(requests)

        def one(i):
            out[i] = post(s.base, requests[i])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        return [[(c["index"], c["text"], c["finish_reason"], c.get("logprobs")) for c in r["choices"]] for r in out]
    finally:
        assert s.stop() == 0, "\n".join(s.lines)


def test_async_scheduling_server_answers_like_the_synchronous_one():
    # A stop string the model does produce: a piece of the greedy completion of request 0.
    text = results([], REQUESTS[:1])[0][0][1]
    assert len(text) > 12, text
    requests = REQUESTS + [{"prompt": REQUESTS[0]["prompt"], "max_tokens": 24, "temperature": 0,
                            "ignore_eos": True, "stop": [text[8:11]]}]
    sync = results([], requests)
    async_ = results(["--async-scheduling"], requests)
    for i, (a, b) in enumerate(zip(sync, async_)):
        assert a == b, f"request {i}: {requests[i]}"
    assert sync[-1][0][2] == "stop" and len(sync[-1][0][1]) <= 8, sync[-1]
