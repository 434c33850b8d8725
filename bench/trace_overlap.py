#!/usr/bin/env python3
"""How much of a kernel trace ran concurrently, and which kinds of kernels overlapped.

Reads the CUPTI tracer's CSV (bench/cuda/kernel_trace: start ns, duration ns, grid x, name; gzip
or plain) and prints the summed kernel time, the union of the kernels' intervals (time with at
least one kernel running), and the time during which two or more kernels ran, by the kinds that
ran together. Kinds: `gemm` (cuBLASLt/CUTLASS GEMMs and pie's GEMVs), `attn` (decode and prefill
attention, their merges), `other` (norms, RoPE, SwiGLU, KV writes, sampling...).

Made for the nano-batch overlap (docs/gpu_engine.md): two streams help only if one stream's
attention runs under the other's GEMMs; GEMM beside GEMM is contention, not overlap.

    python3 bench/trace_overlap.py trace.csv.gz [--from-ns T] [--to-ns T]
"""
import argparse
import collections
import csv
import gzip


def kind(name):
    n = name.lower()
    if "nvjet" in n or "gemm" in n or "gemv" in n or "cutlass" in n or "sm90_xmma" in n:
        return "gemm"
    if "attention" in n or "decode" in n or "prefill" in n or "attn" in n:
        return "attn"
    return "other"


def load(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        rows = list(csv.reader(f))
    out = []
    for r in rows[1:]:
        if len(r) < 4:
            continue
        out.append((int(r[0]), int(r[1]), r[3]))
    return sorted(out)


def analyse(kernels):
    """Returns (summed ns, union ns, Counter of sorted kind tuples → ns with ≥ 2 kernels)."""
    total = sum(d for _, d, _ in kernels)
    union, cur_s, cur_e = 0, None, None
    for s, d, _ in kernels:
        e = s + d
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                union += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        union += cur_e - cur_s
    events = []
    for s, d, n in kernels:
        k = kind(n)
        events.append((s, 1, k))
        events.append((s + d, -1, k))
    events.sort(key=lambda x: (x[0], x[1]))  # ends before starts at the same instant
    active = collections.Counter()
    together = collections.Counter()
    last = events[0][0] if events else 0
    for t, delta, k in events:
        if t > last and sum(active.values()) >= 2:
            together[tuple(sorted(active.elements()))] += t - last
        active[k] += delta
        last = t
    return total, union, together


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--from-ns", type=int, default=None, help="only kernels that start at or after this time")
    ap.add_argument("--to-ns", type=int, default=None, help="only kernels that start before this time")
    ap.add_argument("--top", type=int, default=8)
    a = ap.parse_args()
    ks = load(a.trace)
    if a.from_ns is not None:
        ks = [k for k in ks if k[0] >= a.from_ns]
    if a.to_ns is not None:
        ks = [k for k in ks if k[0] < a.to_ns]
    total, union, together = analyse(ks)
    span = (ks[-1][0] + ks[-1][1] - ks[0][0]) if ks else 0
    print(f"kernels {len(ks)}: summed {total / 1e6:.1f} ms, union {union / 1e6:.1f} ms, span {span / 1e6:.1f} ms; "
          f"concurrent {sum(together.values()) / 1e6:.1f} ms")
    for key, ns in together.most_common(a.top):
        print(f"  {' + '.join(key):32s} {ns / 1e6:9.1f} ms")


if __name__ == "__main__":
    main()
