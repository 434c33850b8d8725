"""PyTorch SDPA (cuDNN and flash backends) on the prefill shapes of bench/cuda/bench_prefill.cu,
in the same device call, with the bf16 GEMM ceiling (8192^3 matmul). Reads pie's lines from the
file given as argv[1] and prints pie / peer.
    python3 bench/prefill_peer.py pie_bench.log
"""
import re
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_ms(f, warm=3, reps=20):
    for _ in range(warm):
        f()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        f()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[reps // 2]


def gemm_peak():
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = median_ms(lambda: a @ w)
    return 2 * 8192**3 / (ms * 1e-3) / 1e12


def sdpa(backend, n, prefix, hd, nq=32, nkv=8):
    ctx = prefix + n
    q = torch.randn(1, nq, n, hd, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, nkv, ctx, hd, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, nkv, ctx, hd, device="cuda", dtype=torch.bfloat16)
    if prefix:  # query rows at the end: bottom-right causal mask
        from torch.nn.attention.bias import causal_lower_right
        kw = dict(attn_mask=causal_lower_right(n, ctx))
    else:
        kw = dict(is_causal=True)
    pairs = n * prefix + n * (n + 1) / 2
    flops = 4.0 * nq * hd * pairs
    try:
        with sdpa_kernel(backend):
            f = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
            f()
            ms = median_ms(f)
    except Exception as e:  # noqa: BLE001
        try:  # the backend may not take GQA: expand K/V (same FLOPs, more bytes)
            ke, ve = k.repeat_interleave(nq // nkv, 1), v.repeat_interleave(nq // nkv, 1)
            with sdpa_kernel(backend):
                f = lambda: F.scaled_dot_product_attention(q, ke, ve, **kw)
                f()
                ms = median_ms(f)
        except Exception as e2:  # noqa: BLE001
            print(f"  {backend} n={n} prefix={prefix} hd={hd}: {type(e2).__name__}: {str(e2)[:120]}")
            return None
    return flops / (ms * 1e-3) / 1e12


def main():
    pie, runs = {}, {}  # the last figure of a tag and shape; every figure of it (bench_prefill --shapes: 2)
    for line in open(sys.argv[1]):
        m = re.match(r"pie (\S+) n=(\d+) prefix=(\d+) hd=(\d+) bs=(\d+) ([\d.]+) us ([\d.]+) TFLOP/s", line)
        if m:
            key = (m[1], int(m[2]), int(m[3]), int(m[4]), int(m[5]))
            pie[key] = float(m[7])
            runs.setdefault(key, []).append(float(m[7]))
    peak = gemm_peak()
    if not any(k[0] == "sm90" for k in pie):
        return shapes_table(pie, runs, peak)
    print(f"bf16 GEMM 8192^3: {peak:.0f} TFLOP/s")
    f = lambda x: f"{x:.0f}" if x else "-"
    r = lambda a, b: f"{a / b:.2f}" if a and b else "-"
    pct = lambda x: f"{100 * x / peak:.1f}" if x else "-"
    rows = []
    for (tag, n, prefix, hd, bs), v2 in sorted(pie.items()):
        if tag != "sm90":
            continue
        v3 = pie.get(("sm90v3", n, prefix, hd, bs))
        v3h = pie.get(("sm90v3-halves", n, prefix, hd, bs))
        v3p = pie.get(("sm90v3p", n, prefix, hd, bs))
        v3c = pie.get(("sm90v3c", n, prefix, hd, bs))
        old = pie.get(("mma", n, prefix, hd, bs))
        cd = sdpa(SDPBackend.CUDNN_ATTENTION, n, prefix, hd)
        fl = sdpa(SDPBackend.FLASH_ATTENTION, n, prefix, hd)
        shape = f"{'causal' if not prefix else 'chunk'} n={n} prefix={prefix} hd={hd} bs={bs}"
        rows.append((shape, v2, v3, v3p, v3c, v3h, old, cd, fl))
    # The table last: TFLOP/s, the ratios against the same call's peers, and % of its GEMM peak.
    # v3p: persistent grid; v3c: 2-CTA clusters with K/V multicast; v3 halves: one box per half.
    print(f"{'shape':34s} {'v2':>5s} {'v3':>5s} {'v3p':>5s} {'v3c':>5s} {'v3 halves':>9s} {'mma':>5s} {'cuDNN':>6s} "
          f"{'flash':>6s} {'v3/v2':>6s} {'v2/cuDNN':>8s} {'v3/cuDNN':>8s} {'v3p/cuDNN':>9s} {'v3c/cuDNN':>9s} "
          f"{'v3/flash':>8s} {'v2 %gemm':>8s} {'v3 %gemm':>8s} {'v3p %gemm':>9s} {'v3c %gemm':>9s}")
    for shape, v2, v3, v3p, v3c, v3h, old, cd, fl in rows:
        print(f"{shape:34s} {f(v2):>5s} {f(v3):>5s} {f(v3p):>5s} {f(v3c):>5s} {f(v3h):>9s} {f(old):>5s} {f(cd):>6s} "
              f"{f(fl):>6s} {r(v3, v2):>6s} {r(v2, cd):>8s} {r(v3, cd):>8s} {r(v3p, cd):>9s} {r(v3c, cd):>9s} "
              f"{r(v3, fl):>8s} {pct(v2):>8s} {pct(v3):>8s} {pct(v3p):>9s} {pct(v3c):>9s}")

def shapes_table(pie, runs, peak):
    """bench_prefill --shapes: v3 and its shapes (3w: 3 consumer warpgroups, 3e: exp2 partly on
    the FMA pipe, 3we: both; 3e3/3e8/3we3/3we8: other emulated shares), every run of each, the
    best, against cuDNN / flash and the GEMM peak."""
    first = ["sm90v3", "sm90v3w", "sm90v3e", "sm90v3we"]
    tags = first + sorted({k[0] for k in pie if k[0].startswith("sm90v3") and k[0] not in first})
    shapes = sorted({k[1:] for k in pie if k[0] == "sm90v3"}, key=lambda s: (s[2], s[3], -s[0]))
    print(f"{'shape':30s} " + " ".join(f"{t[4:]:>11s}" for t in tags) +
          f" {'cuDNN':>6s} {'flash':>6s} {'best':>5s} {'best/v3':>7s} {'best/cuDNN':>10s} {'v3 %gemm':>8s} {'best %gemm':>10s}")
    for n, prefix, hd, bs in shapes:
        cd = sdpa(SDPBackend.CUDNN_ATTENTION, n, prefix, hd)
        fl = sdpa(SDPBackend.FLASH_ATTENTION, n, prefix, hd)
        cells, best, best_tag = [], 0.0, "-"
        for t in tags:
            v = runs.get((t, n, prefix, hd, bs), [])
            cells.append("/".join(f"{x:.0f}" for x in v) if v else "-")
            if v and max(v) > best:
                best, best_tag = max(v), t[4:]
        v3 = max(runs.get(("sm90v3", n, prefix, hd, bs), [0]))
        shape = f"causal n={n} hd={hd} bs={bs}"
        print(f"{shape:30s} " + " ".join(f"{c:>11s}" for c in cells) +
              f" {cd or 0:6.0f} {fl or 0:6.0f} {best_tag:>5s} {best / v3 if v3 else 0:7.2f} "
              f"{best / cd if cd else 0:10.2f} {100 * v3 / peak:8.1f} {100 * best / peak:10.1f}")


if __name__ == "__main__":
    main()
