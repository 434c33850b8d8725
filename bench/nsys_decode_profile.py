#!/usr/bin/env python3
"""Per-op profile of pie's decode steps as the GPU ran them (CUDA graphs replayed, PDL overlap
included), from an Nsight Systems kernel trace:

  nsys profile --cuda-graph-trace=node --trace=cuda -o run pie_bench MODEL ...
  nsys stats --report cuda_gpu_trace --format csv --output run run.nsys-rep
  python3 bench/nsys_decode_profile.py run_cuda_gpu_trace.csv [--batch B] [--hidden 4096 ...]

A step is the kernels up to and including the sampler's. Decode steps of the requested batch
(the sampler's grid is the batch) are kept, the first and last few dropped; per step the script
prints the wall time (first kernel start to sampler end), the time some kernel was running
(union of intervals) and so the idle gaps, and per op its time. Linear layers are named by the
op before them (norm → qkv or gate_up by grid size, attention → o_proj, SwiGLU → down_proj,
row gather → lm_head) and, with the model's widths, their bytes give achieved bandwidth.
"""
import argparse
import csv
import re
import statistics
import sys


def category(name):
    n = name.lower()
    if "sampling" in n:
        return "sample"
    if "rms_norm" in n:
        return "rms_norm"
    if "qk_norm_rope" in n:
        return "qk_norm_rope"
    if "kv_write" in n:
        return "kv_write"
    if "decode_merge" in n:
        return "attention_merge"
    # CUDA-core, tensor-core and persistent tensor-core decode attention
    if "decode_kernel" in n or "decode_mma_kernel" in n or "decode_mma_persistent_kernel" in n:
        return "attention_decode"
    if "prefill" in n:
        return "attention_prefill"
    if "silu" in n or "fp8flatswiglu" in n:  # fp8_group_quant.cuh's flat kernel names its producer
        return "silu_mul"
    if "embedding" in n:
        return "embedding"
    if "fp8_quant" in n or "fp8_flat_group_quant" in n:
        return "fp8_quant"  # activation quantization before an fp8 GEMM
    if "moe_" in n:  # ops/cuda/moe.cuh: kGather (the first bool) marks the gate_up product
        args = re.sub(r"\s*[;,]\s*", ",", n)
        # moe_decode.cuh's fused kernels (PIE_MOE_DECODE=fused): router GEMV + routing, down + un-permute
        if "moe_router_route" in n or "moe_down_unpermute" in n:
            return "moe_router_route" if "moe_router_route" in n else "moe_down_unpermute"
        if "moe_route" in n or "moe_unpermute" in n:
            return "moe_route" if "moe_route" in n else "moe_unpermute"
        # moe_gemv_kernel / moe_gemv_ahead_kernel<R, C, U, kGather, ...> and moe_mma_kernel<kGather, ...>
        up = re.search(r"moe_(gemv_kernel<\d+,\d+,\d+,|gemv_ahead_kernel<\d+,\d+,\d+,|mma_kernel<)(true|\(bool\)1)[,>]", args)
        return "moe_gate_up" if up else "moe_down"
    if "gemv" in n:
        # gemv_kernel<M, C, U, NW, MINB, kNorm, ...>: kNorm = true is the fused add + RMSNorm
        # (the tracer writes template commas as ';' to keep its CSV to four columns)
        args = re.sub(r"\s*[;,]\s*", ",", n)
        # fp8_gemv_rows_kernel<C, U, NW, MINB, kEarly, kSrc, ...>: kSrc = 2 (quantizing) and 4 (weight-only)
        # are the fused add + RMSNorm (ops/cuda/fp8_gemv.cuh's kFp8SrcNorm, kFp8SrcW8A16Norm)
        if re.search(r"fp8_gemv_rows_kernel<\d+,\d+,\d+,\d+,(true|false|\(bool\)[01]),[24][,>]", args):
            return "norm+linear"
        # gemv_kernel<M, C, U, NW, MINB, kPrologue, ...>: 1 (or true, in older builds) is the fused
        # add + RMSNorm, 2 the fused SwiGLU (ops/cuda/gemv.cuh's GemvPrologue)
        m = re.search(r"gemv_kernel<\d+,\d+,\d+,\d+,\d+,(true|false|\(bool\)[01]|\d)[,>]", args)
        prologue = m.group(1) if m else "0"
        if prologue in ("true", "(bool)1", "1"):
            return "norm+linear"
        return "swiglu+linear" if prologue == "2" else "linear"
    if any(k in n for k in ("gemm", "nvjet", "xmma", "cutlass", "sm90", "splitk", "reduce")):
        return "linear"
    return "other:" + name[:40]


def load(path):
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            name = r.get("Name") or r.get("name")
            start = r.get("Start (ns)") or r.get("Start")
            dur = r.get("Duration (ns)") or r.get("Duration")
            if name is None or start is None or dur is None:
                continue
            if "memcpy" in name.lower() or "memset" in name.lower():
                continue
            grid = r.get("GrdX") or "0"
            rows.append((int(float(start)), int(float(dur)), name, int(float(grid or 0))))
    rows.sort()
    return rows


def steps(rows):
    cur = []
    for r in rows:
        cur.append(r)
        if category(r[2]) == "sample":
            yield cur
            cur = []


def name_linears(step, moe=False):
    """Labels linear kernels by the op before them (see the module comment). A layer has two
    norms: the 1st, 3rd, ... norm of the step precede qkv_proj, the 2nd, 4th, ... gate_up_proj
    (cuBLASLt's persistent kernels share one grid size, so the order decides, not the grid)."""
    out, prev, norms = [], None, 0
    for (s, d, n, g) in step:
        c = category(n)
        if c == "fp8_quant":  # transparent for naming: the GEMM after it is named by the op before
            out.append((s, d, c))
            continue
        if c in ("rms_norm", "norm+linear"):
            norms += 1
        mlp = "router" if moe else "gate_up_proj"  # an MoE layer's projection after its 2nd norm
        if c == "norm+linear":  # batch-1 fused residual add + RMSNorm + projection
            c = "norm+qkv_proj" if norms % 2 == 1 else "norm+" + mlp
        elif c == "swiglu+linear":  # batch-1 SwiGLU in the down projection's prologue
            c = "swiglu+down_proj"
        elif c == "linear":
            if prev == "rms_norm":
                c = "qkv_proj" if norms % 2 == 1 else mlp
            elif prev in ("attention_decode", "attention_merge", "attention_prefill"):
                c = "o_proj"
            elif prev == "silu_mul":
                c = "down_proj"
            elif prev == "embedding":
                c = "lm_head"
            elif prev in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"):
                c = prev  # a second kernel of the same GEMM (split-K reduction)
            else:
                c = "linear"
        out.append((s, d, c))
        prev = c
    return out


def frontier(named):
    """Attribution of a chain of kernels that may overlap (PDL): each kernel is charged the time
    by which it moved the step's finish line, end_i − max(end_{i−1}, start_i); a start after the
    previous end is an idle gap. The charges and the gaps sum to the step's wall time."""
    charged, gaps, last = [], 0, None
    for (s, d, c) in sorted(named, key=lambda k: k[0] + k[1]):
        e = s + d
        if last is None:
            charged.append((c, d))
        else:
            if s > last:
                gaps += s - last
            charged.append((c, max(0, e - max(last, s))))
        last = e if last is None else max(last, e)
    return charged, gaps


def run_split(rows):
    """The whole run (every step, every batch): where a throughput run's time goes between steps
    that carry prompt tokens (prefill chunks, alone or with decodes) and decode-only steps. Per
    class: steps, summed wall time and idle gaps, and per op the charged time (frontier())."""
    cls = {}
    for i, st in enumerate(steps(rows)):
        cats = {category(r[2]) for r in st}
        if i == 0:
            k = "other"  # up to the first sampler: the ceilings, the memory profile's forward, warm-up
        elif "attention_prefill" in cats:
            k = "with prefill"
        elif "attention_decode" in cats:
            k = "decode only"
        else:
            k = "other"  # a lone sampler launch
        named = name_linears(st)
        charged, gaps = frontier(named)
        t0, t1 = st[0][0], max(r[0] + r[1] for r in st)
        c = cls.setdefault(k, {"steps": 0, "wall": 0, "gaps": 0, "ops": {}})
        c["steps"] += 1
        c["wall"] += t1 - t0
        c["gaps"] += gaps
        for op, d in charged:
            c["ops"][op] = c["ops"].get(op, 0) + d
    total = sum(c["wall"] for k, c in cls.items() if k != "other")
    for k, c in sorted(cls.items(), key=lambda kv: -kv[1]["wall"]):
        if k == "other":
            print(f"other: {c['steps']} kernel groups, {c['wall'] / 1e6:.1f} ms (not counted)")
            continue
        print(f"{k}: {c['steps']} steps, {c['wall'] / 1e6:.1f} ms of GPU step time "
              f"({100 * c['wall'] / total:.1f}%), idle gaps {c['gaps'] / 1e6:.1f} ms")
        for op, d in sorted(c["ops"].items(), key=lambda kv: -kv[1])[:14]:
            print(f"  {op:<22} {d / 1e6:>9.1f} ms {100 * d / c['wall']:>6.1f}%")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--batch", type=int, default=1, help="decode batch size to keep (the sampler's grid)")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--q-size", type=int, default=4096)
    ap.add_argument("--kv-size", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=12288)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--copy-tbps", type=float, default=2.99)
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--weight-bytes", type=float, default=2, help="bytes per projection weight (1: fp8)")
    ap.add_argument("--experts", type=int, default=0, help="MoE: experts per layer (0: a dense model)")
    ap.add_argument("--moe-intermediate", type=int, default=768)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--run-split", action="store_true",
                    help="instead: the whole run's GPU time split into steps with and without prefill, per op")
    a = ap.parse_args()
    H, I, wb = a.hidden, a.intermediate, a.weight_bytes
    wbytes = {"qkv_proj": (a.q_size + 2 * a.kv_size) * H * wb, "o_proj": a.q_size * H * wb,
              "gate_up_proj": 2 * I * H * wb, "down_proj": I * H * wb, "lm_head": a.vocab * H * 2}
    wbytes["norm+qkv_proj"] = wbytes["qkv_proj"]
    wbytes["norm+gate_up_proj"] = wbytes["gate_up_proj"]
    wbytes["swiglu+down_proj"] = wbytes["down_proj"]
    if a.experts:  # batch 1 reads the top-k experts' weights; larger batches an unknown set
        Im = a.moe_intermediate
        wbytes["router"] = wbytes["norm+router"] = a.experts * H * 2
        if a.batch == 1:
            wbytes["moe_gate_up"] = a.top_k * 2 * Im * H * 2
            wbytes["moe_down"] = wbytes["moe_down_unpermute"] = a.top_k * Im * H * 2
        wbytes["moe_router_route"] = wbytes["router"]
    rows = load(a.csv)
    if not rows:
        sys.exit("no kernels in " + a.csv)
    if a.run_split:
        run_split(rows)
        return
    keep = []
    for st in steps(rows):
        sampler = [r for r in st if category(r[2]) == "sample"][-1]
        cats = {category(r[2]) for r in st}
        if sampler[3] == a.batch and "attention_decode" in cats and "attention_prefill" not in cats:
            keep.append(st)
    if len(keep) > 6:
        keep = keep[2:-2]
    if not keep:
        sys.exit(f"no decode steps of batch {a.batch}")
    walls, idles, per = [], [], {}
    for st in keep:
        named = name_linears(st, moe=a.experts > 0)
        t0, t1 = st[0][0], max(r[0] + r[1] for r in st)
        walls.append(t1 - t0)
        charged, gaps = frontier(named)
        idles.append(gaps)
        acc = {}
        for (c, d), (_, dur, _) in zip(charged, sorted(named, key=lambda k: k[0] + k[1])):
            n, t, raw = acc.get(c, (0, 0, 0))
            acc[c] = (n + 1, t + d, raw + dur)
        for c, v in acc.items():
            per.setdefault(c, []).append(v)
    wall = statistics.median(walls) / 1e3
    idle = statistics.median(idles) / 1e3
    print(f"decode steps at batch {a.batch}: {len(keep)} kept; per step (median): wall {wall:.1f} us, "
          f"idle gaps {idle:.1f} us ({100 * idle / wall:.1f}%)")
    print(f"{'op':<18} {'kernels':>7} {'charged us':>10} {'% wall':>7} {'us each':>8} {'kernel us':>9}  achieved (weights / charged time)")
    for c, v in sorted(per.items(), key=lambda kv: -statistics.median(x[1] for x in kv[1])):
        n = statistics.median(x[0] for x in v)
        t = statistics.median(x[1] for x in v) / 1e3
        raw = statistics.median(x[2] for x in v) / 1e3
        extra = ""
        if c in wbytes and t > 0:
            layers = 1 if c == "lm_head" else a.layers
            tbps = wbytes[c] * layers / (t * 1e-6) / 1e12
            extra = f"{tbps:.2f} TB/s = {100 * tbps / a.copy_tbps:.0f}% of copy"
        print(f"{c:<18} {n:>7.0f} {t:>10.1f} {100 * t / wall:>6.1f}% {t / max(n, 1):>8.2f} {raw:>9.1f}  {extra}")
    print("charged: the time a kernel moved the step's end (kernels overlap under programmatic dependent launch;")
    print("'kernel us' is their own start-to-end, waiting included)")


if __name__ == "__main__":
    main()
