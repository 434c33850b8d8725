"""The step profiler and the plot of docs/gpu_engine.md, on synthetic traces with known answers
and on the committed device results."""
import csv
import os
import subprocess
import sys

ROOT = os.environ.get("PIE_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
PROFILE = os.path.join(ROOT, "bench", "nsys_decode_profile.py")
PLOT = os.path.join(ROOT, "bench", "plot_gpu_engine.py")


MOE = "void pie::ops::cuda::detail::"  # the MoE block's kernels, as the CUPTI tracer writes them
MOE_MLP = [("gemv_kernel<1>", 3000), (MOE + "moe_route_kernel<4; __nv_bfloat16>(float const*; int)", 5000),
           (MOE + "moe_gemv_kernel<1; 2; 4; true; true; __nv_bfloat16>(x)", 10000),
           (MOE + "moe_gemv_kernel<1; 2; 4; false; false; __nv_bfloat16>(x)", 6000),
           (MOE + "moe_unpermute_kernel<__nv_bfloat16>(x)", 2000)]
# PIE_MOE_DECODE=fused: router + routing, gate_up, down + un-permute (ops/cuda/moe_decode.cuh)
MOE_MLP_FUSED = [(MOE + "moe_router_route_kernel<4; __nv_bfloat16>(x)", 4000),
                 (MOE + "moe_gemv_kernel<1; 2; 2; true; true; __nv_bfloat16>(x)", 10000),
                 (MOE + "moe_down_unpermute_kernel<1; 8; __nv_bfloat16>(x)", 8000)]


def write_trace(path, steps, batch=1, overlap_ns=0, gap_ns=0, prefill_first=False, fused=False, moe=False,
                decode="decode_kernel<128>", moe_mlp=MOE_MLP):
    """One layer per step: norm → qkv → rope → kv_write → decode → merge → o → norm → gate_up →
    silu → down, then final norm, row gather, lm_head, sampler. Each kernel starts `overlap_ns`
    before the previous one ends (PDL) or `gap_ns` after it."""
    rows, t = [], 1000
    layer = [("rms_norm_kernel<true>", 3000), ("gemv_kernel<1>", 20000), ("qk_norm_rope_kernel", 4000),
             ("kv_write_kernel", 1000), (decode, 6000), ("decode_merge_kernel<128>", 2000),
             ("gemv_kernel<1>", 12000), ("rms_norm_kernel<true>", 3000), ("gemv_kernel<1>", 66000),
             ("silu_and_mul_kernel", 2000), ("gemv_kernel<1>", 37000)]
    if fused:  # batch 1 with the residual add + RMSNorm inside the GEMV (demangled kNorm = true)
        # as the CUPTI tracer writes it: demangled, template commas turned into ';'
        g = "void pie::ops::cuda::detail::gemv_kernel<1; 2; 4; 4; 1; true; __nv_bfloat16; __nv_bfloat16>(x)"
        layer = [(g, 23000) if i == 1 else (g, 69000) if i == 8 else k for i, k in enumerate(layer)
                 if k[0] != "rms_norm_kernel<true>"]
    if moe:  # a Qwen3-MoE layer: router, routing, grouped gate_up and down, un-permute
        layer = layer[:8] + moe_mlp
    tail = [("rms_norm_kernel<false>", 3000), ("embedding_kernel", 1000), ("gemv_kernel<1>", 390000),
            ("sampling_kernel", 1000)]
    for s in range(steps):
        seq = [("embedding_kernel", 1000)] + layer * 2 + tail
        if prefill_first and s == 0:
            seq = [("embedding_kernel", 1000), ("prefill_attention_kernel", 50000)] + tail
        for name, dur in seq:
            start = t - overlap_ns if rows else t
            rows.append({"Start (ns)": start, "Duration (ns)": dur + (overlap_ns if rows else 0),
                         "GrdX": batch if "sampling" in name else 8, "Name": name})
            t = start + dur + (overlap_ns if rows else 0) + gap_ns
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["Start (ns)", "Duration (ns)", "GrdX", "Name"])
        w.writeheader()
        w.writerows(rows)


def profile(path, *args):
    r = subprocess.run([sys.executable, PROFILE, path, "--layers", "2", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def table(out):
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[1].isdigit():
            rows[parts[0]] = (int(parts[1]), float(parts[2]))
    return rows


def test_serial_step_charges_each_kernel_its_own_time_and_names_the_projections(tmp_path):
    p = str(tmp_path / "t.csv")
    write_trace(p, steps=10)
    out = profile(p)
    rows = table(out)
    assert rows["qkv_proj"] == (2, 40.0)  # after the 1st and 3rd norms
    assert rows["gate_up_proj"] == (2, 132.0)  # after the 2nd and 4th norms
    assert rows["o_proj"] == (2, 24.0)  # after the attention merge
    assert rows["down_proj"] == (2, 74.0)  # after SwiGLU
    assert rows["lm_head"] == (1, 390.0)  # after the row gather
    assert "idle gaps 0.0 us" in out


def test_tensor_core_decode_kernel_is_attention(tmp_path):
    # The tensor-core decode kernel (attention_decode_mma.cuh) counts as decode attention, so the
    # step is kept and the merge after it is followed by o_proj.
    p = str(tmp_path / "t.csv")
    write_trace(p, steps=10, decode="void pie::ops::cuda::detail::decode_mma_kernel<128; 4; 2; 2; 0>(x)")
    rows = table(profile(p))
    assert rows["attention_decode"] == (2, 12.0)
    assert rows["o_proj"] == (2, 24.0)


def test_fused_norm_gemv_kernels_are_named_by_their_place_in_the_layer(tmp_path):
    p = str(tmp_path / "t.csv")
    write_trace(p, steps=10, fused=True)
    rows = table(profile(p))
    assert rows["norm+qkv_proj"] == (2, 46.0)
    assert rows["norm+gate_up_proj"] == (2, 138.0)
    assert rows["o_proj"] == (2, 24.0) and rows["down_proj"] == (2, 74.0) and rows["lm_head"] == (1, 390.0)
    assert "rms_norm" in rows and rows["rms_norm"][0] == 1  # only the final norm is separate


def test_fp8_quantization_kernels_are_their_own_op_and_leave_the_projection_names(tmp_path):
    # fp8 weights above batch 1: a quantization kernel between a norm (or attention, SwiGLU) and
    # its GEMM; the GEMM keeps the name of the op before the quantization; --weight-bytes 1
    # counts fp8 weight bytes (half of bf16's) in the achieved bandwidth.
    p = str(tmp_path / "t.csv")
    write_trace(p, steps=10)
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f))
    out_rows, t = [], 0
    for r in rows:
        if r["Name"].startswith("gemv_kernel") and out_rows and not out_rows[-1]["Name"].startswith("embedding"):
            out_rows.append({"Start (ns)": t, "Duration (ns)": 1000, "GrdX": 8, "Name": "fp8_quant_kernel<bf16>"})
            t += 1000
        d = int(r["Duration (ns)"])
        out_rows.append({**r, "Start (ns)": t})
        t += d
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["Start (ns)", "Duration (ns)", "GrdX", "Name"])
        w.writeheader()
        w.writerows(out_rows)
    out2 = profile(p, "--weight-bytes", "1")
    rows2 = table(out2)
    assert rows2["qkv_proj"] == (2, 40.0) and rows2["gate_up_proj"] == (2, 132.0)
    assert rows2["o_proj"] == (2, 24.0) and rows2["down_proj"] == (2, 74.0) and rows2["lm_head"] == (1, 390.0)
    assert rows2["fp8_quant"] == (8, 8.0)
    # qkv_proj: (4096 + 2·1024)·4096 weights of 1 byte, 2 layers, 40 µs → 1.26 TB/s
    line = next(l for l in out2.splitlines() if l.startswith("qkv_proj"))
    assert "1.26 TB/s" in line


def test_moe_kernels_are_named_and_batch_one_reads_the_top_k_experts(tmp_path):
    p = str(tmp_path / "t.csv")
    write_trace(p, steps=10, moe=True)
    out = profile(p, "--hidden", "1024", "--experts", "16", "--moe-intermediate", "512", "--top-k", "4")
    rows = table(out)
    assert rows["router"] == (2, 6.0)  # the projection after the 2nd norm of an MoE layer
    assert rows["moe_route"] == (2, 10.0) and rows["moe_unpermute"] == (2, 4.0)
    assert rows["moe_gate_up"] == (2, 20.0) and rows["moe_down"] == (2, 12.0)
    assert "gate_up_proj" not in rows and "down_proj" not in rows
    # 4 experts · 2·512 rows · 1024 · 2 B per layer, 2 layers, in 20 µs
    gate_up = next(line for line in out.splitlines() if line.startswith("moe_gate_up"))
    assert "0.84 TB/s" in gate_up, gate_up


def test_fused_moe_decode_kernels_are_named(tmp_path):
    p = str(tmp_path / "t.csv")
    write_trace(p, steps=10, moe=True, moe_mlp=MOE_MLP_FUSED)
    out = profile(p, "--hidden", "1024", "--experts", "16", "--moe-intermediate", "512", "--top-k", "4")
    rows = table(out)
    assert rows["moe_router_route"] == (2, 8.0) and rows["moe_down_unpermute"] == (2, 16.0)
    assert rows["moe_gate_up"] == (2, 20.0)
    assert "moe_route" not in rows and "moe_down" not in rows and "router" not in rows
    # down: 4 experts · 1024 · 512 · 2 B per layer, 2 layers, in 16 µs
    down = next(line for line in out.splitlines() if line.startswith("moe_down_unpermute"))
    assert "0.52 TB/s" in down, down


def test_overlapping_kernels_are_charged_only_the_time_they_moved_the_end(tmp_path):
    # Every kernel starts 500 ns before its predecessor ends and runs 500 ns longer (it waited):
    # the step's wall time is the serial one, and the charges still add up to it.
    p = str(tmp_path / "t.csv")
    write_trace(p, steps=10, overlap_ns=500)
    rows = table(profile(p))
    assert rows["qkv_proj"] == (2, 40.0)
    assert rows["gate_up_proj"] == (2, 132.0)


def test_gaps_between_kernels_are_idle_time(tmp_path):
    p = str(tmp_path / "t.csv")
    write_trace(p, steps=10, gap_ns=1000)
    out = profile(p)
    kernels = 1 + 22 + 4
    assert f"idle gaps {kernels - 1:.1f} us" in out  # 1 µs between consecutive kernels


def test_only_decode_steps_of_the_requested_batch_are_kept(tmp_path):
    p = str(tmp_path / "t.csv")
    write_trace(p, steps=10, batch=4, prefill_first=True)
    assert "decode steps at batch 4: 5 kept" in profile(p, "--batch", "4")  # 9 decode steps, 2 dropped each end
    r = subprocess.run([sys.executable, PROFILE, p, "--batch", "1"], capture_output=True, text=True)
    assert r.returncode != 0 and "no decode steps of batch 1" in (r.stderr + r.stdout)


def test_plot_of_the_committed_results_has_the_sweep_and_the_latency_bars(tmp_path):
    out = str(tmp_path / "plot.svg")
    r = subprocess.run([sys.executable, PLOT, os.path.join(ROOT, "docs", "data", "gpu_engine"), out],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    svg = open(out).read()
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "<polyline" in svg  # the batch-size sweep, measured and roofline
    assert "sweep: 2B×(128,128) at max_num_seqs B" in svg
    assert "batch-1 ITL" in svg


def test_gemv_prologue_numbers_and_ahead_moe_kernels_are_named():
    # The GEMV's prologue is an enum since the fused SwiGLU (0 plain, 1 add + RMSNorm, 2 SwiGLU):
    # a trace of 2026-12-05 named every fused-norm GEMV after the op before it (o_proj 72 times).
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import nsys_decode_profile as p
    g = "void pie::ops::cuda::detail::gemv_kernel<1; 2; 2; 4; 8; {}; __nv_bfloat16; __nv_bfloat16>(x)"
    assert p.category(g.format(1)) == "norm+linear"
    assert p.category(g.format("true")) == "norm+linear"  # builds before the enum
    assert p.category(g.format(2)) == "swiglu+linear"
    assert p.category(g.format(0)) == "linear"
    ahead = "void pie::ops::cuda::detail::moe_gemv_ahead_kernel<1; {}; 2; {}; {}; __nv_bfloat16>(x)"
    assert p.category(ahead.format(2, "true", "true")) == "moe_gate_up"
    assert p.category(ahead.format(4, "false", "false")) == "moe_down"
    layer = [(0, 1, g.format(1), 8), (1, 1, "decode_kernel<128>", 8), (2, 1, g.format(0), 8),
             (3, 1, g.format(1), 8), (4, 1, g.format(2), 8)]
    named = [c for (_, _, c) in p.name_linears(layer + layer)]
    assert named == ["norm+qkv_proj", "attention_decode", "o_proj", "norm+gate_up_proj", "swiglu+down_proj"] * 2


def test_fp8_gemv_variants_are_linears_and_the_norm_one_a_fused_norm():
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import nsys_decode_profile as p
    k = "void pie::ops::cuda::detail::fp8_gemv_rows_kernel<2; 4; 16; 1; true; {}; __nv_bfloat16>(x)"
    assert p.category(k.format(2)) == "norm+linear"  # kSrc = kFp8SrcNorm
    assert p.category(k.format(4)) == "norm+linear"  # kSrc = kFp8SrcW8A16Norm (the batch-1 default)
    assert p.category(k.format(3)) == "linear"  # kSrc = kFp8SrcW8A16
    assert p.category(k.format(1)) == "linear"       # prequantized x
    assert p.category(k.format(0)) == "linear"
    assert p.category("void pie::ops::cuda::detail::fp8_gemv_kernel<__nv_bfloat16>(x)") == "linear"
