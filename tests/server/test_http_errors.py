"""Raw HTTP: every error the API returns, in OpenAI's shape, and the API key on every /v1 route."""
import http.client
import json

import pytest

from conftest import API_KEY, MAX_BODY, MAX_MODEL_LEN, MODEL, Server

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


def call(server, method, path, body=None, headers=None, raw=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers=AUTH if headers is None else headers)
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, payload, r


def error_of(status, payload):
    j = json.loads(payload)
    assert set(j) == {"error"}, j
    e = j["error"]
    assert set(e) == {"message", "type", "param", "code"}, e
    assert isinstance(e["message"], str) and e["message"]
    return e


def expect_error(server, path, body, status, param):
    got, payload, _ = call(server, "POST", path, body)
    assert got == status, payload
    e = error_of(got, payload)
    if param is not None:
        assert e["param"] == param, e
        assert param.split(".")[-1] in e["message"], e
    return e


COMPLETION = {"model": MODEL, "prompt": "hello", "max_tokens": 4}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

INVALID = [
    ("temperature", -0.5), ("temperature", "warm"), ("top_p", 0), ("top_p", 1.5), ("top_k", -3), ("min_p", 2),
    ("n", 0), ("n", 1000), ("max_tokens", 0), ("max_tokens", "many"), ("presence_penalty", 2.5),
    ("frequency_penalty", -3), ("repetition_penalty", 0), ("logit_bias", {"3": 101}), ("logit_bias", {"x": 1}),
    ("logit_bias", {"99999": 1}), ("stop", 7), ("stop", [""]), ("stop_token_ids", [-1]), ("stop_token_ids", [99999]),
    ("seed", "abc"), ("min_tokens", -1), ("ignore_eos", "yes"), ("skip_special_tokens", 1), ("stream", "no"),
    ("include_stop_str_in_output", 3), ("logprobs", 99), ("echo", "x"), ("user", 5), ("prompt", 5), ("prompt", []),
    ("prompt", [99999]), ("stream_options", {"include_usage": True}),
]


@pytest.mark.parametrize("field,value", INVALID, ids=[f"{f}={v!r}" for f, v in INVALID])
def test_completions_invalid_value_is_400_naming_it(server, field, value):
    body = dict(COMPLETION, **{field: value})
    expect_error(server, "/v1/completions", body, 400, field)


CHAT_INVALID = [
    ("messages", []), ("messages", "hi"), ("messages", [{"role": "robot", "content": "x"}]),
    ("messages", [{"role": "user"}]), ("max_completion_tokens", 0), ("top_logprobs", 3), ("logprobs", "yes"),
    ("chat_template_kwargs", "x"), ("temperature", 200),
]


@pytest.mark.parametrize("field,value", CHAT_INVALID, ids=[f"{f}={v!r}" for f, v in CHAT_INVALID])
def test_chat_invalid_value_is_400_naming_it(server, field, value):
    expect_error(server, "/v1/chat/completions", dict(CHAT, **{field: value}), 400, field)


UNSUPPORTED = [
    ("/v1/completions", "tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("/v1/completions", "suffix", "tail"), ("/v1/completions", "prompt_logprobs", -1),
    ("/v1/completions", "guided_decoding_backend", "outlines"),
    ("/v1/chat/completions", "functions", [{"name": "f"}]), ("/v1/completions", "best_of", 3),
    ("/v1/chat/completions", "use_beam_search", True),
]


@pytest.mark.parametrize("path,field,value", UNSUPPORTED, ids=[f"{p.split('/')[-1]}:{f}" for p, f, _ in UNSUPPORTED])
def test_unsupported_field_is_400_naming_it(server, path, field, value):
    base = CHAT if "chat" in path else COMPLETION
    e = expect_error(server, path, dict(base, **{field: value}), 400, field)
    assert "not supported" in e["message"]


def test_invalid_json_is_400(server):
    status, payload, _ = call(server, "POST", "/v1/completions", raw=b"{not json")
    assert status == 400
    assert "JSON" in error_of(status, payload)["message"]


def test_context_length_exceeded_is_400_vllm_style(server):
    prompt = "word " * 40
    status, payload, _ = call(server, "POST", "/tokenize", {"prompt": prompt})
    n = json.loads(payload)["count"]
    e = expect_error(server, "/v1/completions", dict(COMPLETION, prompt=prompt, max_tokens=MAX_MODEL_LEN), 400,
                     None)
    assert e["param"] == "max_tokens" and e["code"] == "context_length_exceeded"
    assert f"maximum context length is {MAX_MODEL_LEN} tokens" in e["message"]
    assert f"you requested {n + MAX_MODEL_LEN} tokens ({n} in the messages, {MAX_MODEL_LEN} in the completion)" \
        in e["message"]
    e = expect_error(server, "/v1/completions", dict(COMPLETION, prompt="word " * (MAX_MODEL_LEN + 10)), 400,
                     None)
    assert e["param"] == "prompt"
    assert f"maximum context length is {MAX_MODEL_LEN} tokens" in e["message"]


def test_unknown_model_is_404(server):
    for path, base in (("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)):
        e = expect_error(server, path, dict(base, model="no-such-model"), 404, "model")
        assert e["code"] == "model_not_found"
    status, payload, _ = call(server, "GET", "/v1/models/no-such-model")
    assert status == 404
    error_of(status, payload)


def test_unknown_route_is_404_json(server):
    status, payload, _ = call(server, "GET", "/v1/nothing-here")
    assert status == 404
    error_of(status, payload)


def test_body_over_limit_is_413(server):
    big = json.dumps(dict(COMPLETION, user="u" * (MAX_BODY * 4))).encode()
    status, payload, _ = call(server, "POST", "/v1/completions", raw=big)
    assert status == 413, payload
    assert error_of(status, payload)["code"] == "request_too_large"
    # A body just under the limit is fine (and still rejected only for its content).
    status, payload, _ = call(server, "POST", "/v1/completions", dict(COMPLETION, user="u" * (MAX_BODY - 200)))
    assert status == 200, payload


V1_ROUTES = [("GET", "/v1/models", None), ("GET", f"/v1/models/{MODEL}", None),
             ("POST", "/v1/completions", COMPLETION), ("POST", "/v1/chat/completions", CHAT)]


@pytest.mark.parametrize("method,path,body", V1_ROUTES, ids=[p for _, p, _ in V1_ROUTES])
def test_v1_routes_need_the_key(server, method, path, body):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {API_KEY}x"},
                    {"Authorization": API_KEY}, {"Authorization": f"Basic {API_KEY}"}):
        status, payload, _ = call(server, method, path, body, headers=headers)
        assert status == 401, (headers, payload)
        e = error_of(status, payload)
        assert e["code"] == "invalid_api_key"
    status, _, _ = call(server, method, path, body, headers={"Authorization": f"bearer {API_KEY}"})
    assert status == 200


def test_open_routes_need_no_key(server):
    for path in ("/health", "/version", "/metrics"):
        status, payload, r = call(server, "GET", path, headers={})
        assert status == 200, path
    status, payload, _ = call(server, "GET", "/version", headers={})
    assert json.loads(payload)["version"]
    status, payload, _ = call(server, "POST", "/tokenize", {"prompt": "hi there"}, headers={})
    assert status == 200 and json.loads(payload)["count"] == len(json.loads(payload)["tokens"])
    ids = json.loads(payload)["tokens"]
    status, payload, _ = call(server, "POST", "/detokenize", {"tokens": ids}, headers={})
    assert status == 200 and json.loads(payload)["prompt"] == "hi there"
    status, payload, _ = call(server, "POST", "/detokenize", {"tokens": [10 ** 6]}, headers={})
    assert status == 400 and error_of(status, payload)["param"] == "tokens"


def test_bad_request_does_not_disturb_others(server):
    import concurrent.futures as cf

    def good():
        return call(server, "POST", "/v1/completions", dict(COMPLETION, max_tokens=8, temperature=0, ignore_eos=True))

    def bad():
        return call(server, "POST", "/v1/completions", dict(COMPLETION, temperature=-1))

    with cf.ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(good if i % 2 else bad) for i in range(16)]
        results = [f.result(timeout=120) for f in futs]
    for i, (status, payload, _) in enumerate(results):
        if i % 2:
            assert status == 200 and json.loads(payload)["usage"]["completion_tokens"] == 8
        else:
            assert status == 400


def test_api_key_from_environment_and_503_while_loading(tmp_path):
    # A bigger model with random weights (--load-format dummy) takes the engine a while to build;
    # the server listens meanwhile and answers 503. Vocabulary 512 fits the embedded tokenizer.
    config = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 512, "hidden_size": 1024,
              "intermediate_size": 4096, "num_hidden_layers": 8, "num_attention_heads": 8,
              "num_key_value_heads": 4, "head_dim": 128, "max_position_embeddings": 1024, "rms_norm_eps": 1e-6,
              "rope_theta": 1000000.0, "tie_word_embeddings": True, "eos_token_id": 502, "bos_token_id": 500,
              "torch_dtype": "float32"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    s = Server([str(tmp_path), "--load-format", "dummy", "--tokenizer", "embedded"], env={"PIE_API_KEY": "env-key"},
               wait_ready=False)
    try:
        seen_503 = False
        for _ in range(2000):
            status, payload, _ = call(s, "GET", "/health", headers={})
            if status == 200:
                break
            assert status == 503
            error_of(status, payload)
            seen_503 = True
            status, payload, _ = call(s, "POST", "/v1/completions", {"prompt": "hello", "max_tokens": 2},
                                      headers={"Authorization": "Bearer env-key"})
            assert status in (503, 200)
            if status == 503:
                assert error_of(status, payload)["code"] == "service_unavailable"
        assert seen_503, "the model loaded before any request got in"
        s.wait_ready()
        status, payload, _ = call(s, "GET", "/v1/models", headers={"Authorization": "Bearer env-key"})
        assert status == 200 and json.loads(payload)["data"][0]["id"] == str(tmp_path)
        status, _, _ = call(s, "GET", "/v1/models", headers={})
        assert status == 401
        status, payload, _ = call(s, "POST", "/v1/completions", {"prompt": "hello", "max_tokens": 2},
                                  headers={"Authorization": "Bearer env-key"})
        assert status == 200, payload
    finally:
        assert s.stop() == 0
