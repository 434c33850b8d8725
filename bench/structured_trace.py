#!/usr/bin/env python3
"""Sums up `pie serve`'s structured-output traces (PIE_TRACE_STRUCTURED=1): one line per request,
from compile_async to its first mask (include/pie/structured/compile_trace.hpp). Prints, for the
fresh compiles and for the cached ones, the median of each part: the compile's wait in the queue,
the compile, when the first draw asked for the mask (what ran beside the compile: rendering,
tokenizing, queueing, the prefill), how long that draw waited for the grammar, and the matcher
plus first mask. The first request's extra latency is about waited + matcher/first mask.
With `first` N, only the first N fresh and the first N cached lines count (bench/structured_bench.py
sends its N latency probes before its throughput runs, whose requests trace too).
Standard library only.   usage: structured_trace.py server.log [label] [first]
"""
import re
import statistics
import sys

PAT = re.compile(r"pie structured trace: (?P<key>\S+(?: \S+)?#[0-9a-f]+) queue (?P<queue>[\d.]+) ms, "
                 r"compile (?P<compile>[\d.]+) ms \(done \+(?P<done>[\d.]+)\), first draw asked \+(?P<asked>[\d.]+), "
                 r"waited (?P<waited>[\d.]+) ms, matcher\+first mask (?P<mask>[\d.]+) ms \(done \+(?P<end>[\d.]+)\)"
                 r"(?P<cached> \[cached\])?")


def main():
    rows = [m for m in (PAT.search(line) for line in open(sys.argv[1], errors="replace")) if m]
    label = sys.argv[2] if len(sys.argv) > 2 else ""
    first = int(sys.argv[3]) if len(sys.argv) > 3 else None
    for cached in (False, True):
        sel = [r for r in rows if bool(r["cached"]) == cached][:first]
        if not sel:
            continue
        med = {k: statistics.median(float(r[k]) for r in sel) for k in ("queue", "compile", "asked", "waited", "mask", "end")}
        print(f"decomposition{label} ({'cached' if cached else 'fresh'} grammars, median of {len(sel)}): "
              f"queue {med['queue']:.2f} ms | compile {med['compile']:.2f} ms | first draw asked at +{med['asked']:.2f} ms "
              f"(beside the compile) | draw waited {med['waited']:.2f} ms | matcher+first mask {med['mask']:.2f} ms | "
              f"first mask at +{med['end']:.2f} ms", flush=True)
    if not rows:
        print(f"decomposition{label}: no trace lines (PIE_TRACE_STRUCTURED unset?)")


if __name__ == "__main__":
    main()
