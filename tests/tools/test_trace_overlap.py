"""bench/trace_overlap.py on synthetic traces whose concurrency is known."""
import gzip
import os
import subprocess
import sys

ROOT = os.environ.get("PIE_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
TOOL = os.path.join(ROOT, "bench", "trace_overlap.py")


def write(path, kernels, gz=False):
    """kernels: (start ns, duration ns, name)."""
    text = "Start (ns),Duration (ns),GrdX,Name\n" + "".join(f"{s},{d},1,{n}\n" for s, d, n in kernels)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        with open(path, "w") as f:
            f.write(text)


def run(path, *args):
    r = subprocess.run([sys.executable, TOOL, str(path), *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_serial_kernels_have_no_concurrency(tmp_path):
    p = tmp_path / "serial.csv"
    write(p, [(0, 1_000_000, "nvjet_sm90_tst_128x256"), (1_000_000, 2_000_000, "decode_mma_kernel<8>"),
              (4_000_000, 1_000_000, "rms_norm_kernel<true>")])
    out = run(p)
    assert "summed 4.0 ms, union 4.0 ms, span 5.0 ms; concurrent 0.0 ms" in out


def test_attention_under_a_gemm_is_counted_by_kind(tmp_path):
    # A GEMM of 4 ms on one stream; on the other, attention 1–2 ms, a norm 2.5–3 ms, another GEMM 3.5–5 ms.
    p = tmp_path / "two_streams.csv.gz"
    write(p, [(0, 4_000_000, "nvjet_sm90_tst_128x256"), (1_000_000, 1_000_000, "decode_mma_kernel<8>"),
              (2_500_000, 500_000, "silu_and_mul_kernel"), (3_500_000, 1_500_000, "gemv_kernel<1>")], gz=True)
    out = run(p)
    assert "summed 7.0 ms, union 5.0 ms" in out
    assert "concurrent 2.0 ms" in out
    lines = {l.split()[0] + " " + l.split()[1] + " " + l.split()[2]: float(l.split()[-2]) for l in out.splitlines()[1:]}
    assert lines["attn + gemm"] == 1.0
    assert lines["gemm + other"] == 0.5
    assert lines["gemm + gemm"] == 0.5


def test_window_keeps_only_kernels_that_start_inside_it(tmp_path):
    p = tmp_path / "w.csv"
    write(p, [(0, 1_000_000, "gemv_kernel<1>"), (5_000_000, 1_000_000, "gemv_kernel<1>")])
    assert "kernels 1: summed 1.0 ms" in run(p, "--from-ns", "2000000")
    assert "kernels 1: summed 1.0 ms" in run(p, "--to-ns", "2000000")
