"""`pie serve` as a command: --help, flag errors (exit 2), graceful exit 0 on SIGINT/SIGTERM."""
import concurrent.futures
import http.client
import json
import pathlib
import shutil
import signal
import struct
import subprocess
import threading

import pytest

from conftest import Server, pie_bin

FLAGS = ["--host", "--port", "--api-key", "--served-model-name", "--max-model-len", "--tensor-parallel-size",
         "--gpu-memory-utilization", "--block-size", "--max-num-seqs", "--max-num-batched-tokens",
         "--enable-prefix-caching", "--no-enable-prefix-caching", "--enable-chunked-prefill", "--kv-cache-dtype",
         "--long-prefill-token-threshold", "--max-prefill-tokens-with-decodes",
         "--dtype", "--swap-space", "--enforce-eager", "--calculate-kv-scales", "--batch-invariant", "--seed", "--load-format", "--generation-config",
         "--chat-template", "--reasoning-parser", "--device", "--max_model_len", "--api_key"]


def run(*args, timeout=60):
    return subprocess.run([pie_bin(), "serve", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_flag():
    r = run("--help")
    assert r.returncode == 0
    for f in FLAGS:
        assert f in r.stdout, f


@pytest.mark.parametrize("args,needle", [
    (["--no-such-flag"], "no-such-flag"),
    (["--port", "http"], "port"),
    (["--port", "70000"], "port"),
    (["--block-size", "7"], "block-size"),
    (["--load-format", "pickle"], "load-format"),
    (["--generation-config", "maybe"], "generation-config"),
    (["--reasoning-parser", "deepseek"], "reasoning-parser"),
    (["--gpu-memory-utilization", "1.5"], "gpu-memory-utilization"),
    (["--max_model_len", "zero"], "max-model-len"),
    (["--device", "tpu"], "device"),
    (["--max-prefill-tokens-with-decodes", "soon"], "max-prefill-tokens-with-decodes"),
    (["--max-prefill-tokens-with-decodes", "-3"], "max-prefill-tokens-with-decodes"),
    (["--chat-template", "/nonexistent/template.jinja"], "chat-template"),
])
def test_bad_flags_exit_2_with_a_message(args, needle):
    r = run(*args)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert needle in (r.stderr + r.stdout)


def test_unusable_combination_exits_2():
    r = run("--tensor-parallel-size", "0")
    assert r.returncode == 2 and "tensor-parallel-size" in r.stderr
    r = run("/nonexistent/model/dir")
    assert r.returncode == 2 and "does not exist" in r.stderr
    # The CUDA backend is compiled for 8- and 16-token blocks (checked before any device is
    # looked for, so this holds on machines without a GPU; builds without CUDA refuse the device).
    r = run("--device", "cuda", "--block-size", "32")
    assert r.returncode == 2 and ("--block-size 32" in r.stderr or "no CUDA backend" in r.stderr), r.stderr
    # The fp8 KV cache is a CUDA policy at 16-token blocks only: the CPU refuses it, and so do
    # 8-token blocks on CUDA (both before any model or device is loaded).
    r = run("--device", "cpu", "--kv-cache-dtype", "fp8")
    assert r.returncode == 2 and "kv fp8" in r.stderr, r.stderr
    r = run("--device", "cuda", "--kv-cache-dtype", "fp8_e4m3", "--block-size", "8")
    assert r.returncode == 2 and ("kv fp8/block 8" in r.stderr or "no CUDA backend" in r.stderr), r.stderr
    # --calculate-kv-scales (vLLM's flag) calibrates an fp8 KV cache: any other cache refuses it.
    r = run("--device", "cpu", "--calculate-kv-scales")
    assert r.returncode == 2 and "--calculate-kv-scales needs --kv-cache-dtype fp8" in r.stderr, r.stderr


def _checkpoint_with_scales(tmp_path, scales):
    """The qwen3_tied fixture (2 layers, 2 kv heads) plus F32 tensors {name: (shape, values)}."""
    src = pathlib.Path(__file__).resolve().parents[1] / "reference" / "fixtures" / "qwen3_tied"
    dst = tmp_path / "ckpt"
    dst.mkdir()
    shutil.copy(src / "config.json", dst)
    raw = (src / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    for name, (shape, values) in scales.items():
        b = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    h = json.dumps(header).encode()
    (dst / "model.safetensors").write_bytes(len(h).to_bytes(8, "little") + h + data)
    return str(dst)


@pytest.mark.parametrize("tensor,value,needle", [
    ("model.layers.1.self_attn.v_scale", ([], [0.0]), "not a positive finite scale"),
    ("model.layers.0.self_attn.k_scale", ([], [float("nan")]), "not a positive finite scale"),
    ("model.layers.0.self_attn.k_scale", ([2], [1.0, -2.0]), "kv head 1 is not a positive finite scale"),
    ("model.layers.1.self_attn.k_scale", ([3], [1.0, 1.0, 1.0]), "shape [3]"),
])
def test_bad_kv_scale_tensors_are_refused_naming_file_and_tensor(tmp_path, tensor, value, needle):
    # A checkpoint's fp8 KV scales (vLLM's names) are validated at start, whatever the KV dtype.
    s = {f"model.layers.{l}.self_attn.{w}": ([], [0.5]) for l in range(2) for w in ("k_scale", "v_scale")}
    s[tensor] = value
    r = run(_checkpoint_with_scales(tmp_path, s), "--device", "cpu")
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "model.safetensors" in r.stderr and tensor in r.stderr and needle in r.stderr, r.stderr


def test_kv_scale_tensors_of_some_layers_only_are_refused(tmp_path):
    s = {"model.layers.0.self_attn.k_scale": ([], [0.5]), "model.layers.0.self_attn.v_scale": ([], [0.5])}
    r = run(_checkpoint_with_scales(tmp_path, s), "--device", "cpu")
    assert r.returncode == 1 and "model.layers.1.self_attn.k_scale" in r.stderr and "all or none" in r.stderr, r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_a_stream_exits_0(sig):
    # --shutdown-timeout 0: abort at once (the drain itself is test_shutdown.py's).
    s = Server(["--max-model-len", "2048", "--shutdown-timeout", "0"])
    got = {}

    def stream():
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
        conn.request("POST", "/v1/completions", body=json.dumps(
            {"prompt": "long", "max_tokens": 1500, "ignore_eos": True, "stream": True}))
        r = conn.getresponse()
        got["status"] = r.status
        got["body"] = r.read()  # ends when the server aborts the request and closes
        conn.close()

    t = threading.Thread(target=stream)
    t.start()
    import time
    deadline = time.monotonic() + 30
    while "status" not in got and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    rc = s.stop(sig)
    t.join(30)
    assert rc == 0, "\n".join(s.lines)
    assert got.get("status") == 200
    body = got.get("body", b"")
    assert b'"finish_reason":"abort"' in body and body.rstrip().endswith(b"data: [DONE]"), body[-300:]
    assert any("stopped" in line for line in s.lines)


def test_max_model_len_above_the_model_is_refused_unless_allowed():
    # The embedded model's max_position_embeddings is 4096; vLLM refuses more unless
    # VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 (pie used to clamp silently).
    r = run("--port", "0", "--max-model-len", "100000")
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert "max_model_len (100000)" in r.stderr and "VLLM_ALLOW_LONG_MAX_MODEL_LEN" in r.stderr, r.stderr
    s = Server(["--max-model-len", "8192"], env={"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"})
    try:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        conn.request("GET", "/v1/models")
        assert json.loads(conn.getresponse().read())["data"][0]["max_model_len"] == 8192
    finally:
        assert s.stop() == 0
    s = Server(["--max-model-len", "4096"])  # exactly the model's: fine
    assert s.stop() == 0


def _greedy_text(server, prompt):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/completions", body=json.dumps(
        {"prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True}),
        headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    body = json.loads(r.read())
    assert r.status == 200, body
    return body["choices"][0]["text"]


def test_cpu_tensor_parallel_2_serves_the_same_greedy_text_as_one_rank():
    # The one engine drives two CPU ranks (threads meeting in all-reduces) exactly as one: the
    # CPU communicator sums in a fixed order, so greedy text is identical.
    prompts = ["The paged inference engine", "x", "1 2 3 4 5 6 7 8 9"]
    texts = {}
    for tp in ("1", "2"):
        s = Server(["--tensor-parallel-size", tp, "--num-threads", "1"])
        try:
            texts[tp] = [_greedy_text(s, p) for p in prompts]
        finally:
            s.stop()
    assert texts["1"] == texts["2"]


def test_prefill_budget_flags_serve_the_same_greedy_text():
    # --max-prefill-tokens-with-decodes / --long-prefill-token-threshold only reschedule prompt
    # tokens; concurrent requests (so prompts arrive beside running decodes) keep their text.
    prompts = ["The paged inference engine " * 6, "x", "1 2 3 4 5 6 7 8 9 " * 4, "hello"]
    texts = {}
    for name, args in (("default", []), ("off", ["--max-prefill-tokens-with-decodes", "0"]),
                       ("budget", ["--max-prefill-tokens-with-decodes", "3", "--long-prefill-token-threshold", "5"])):
        s = Server(["--num-threads", "1", *args])
        try:
            with concurrent.futures.ThreadPoolExecutor(len(prompts)) as ex:
                texts[name] = list(ex.map(lambda p: _greedy_text(s, p), prompts))
        finally:
            s.stop()
    assert texts["default"] == texts["budget"] == texts["off"]
