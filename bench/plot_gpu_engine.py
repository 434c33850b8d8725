#!/usr/bin/env python3
"""Plots of docs/gpu_engine.md from `pie bench --output-json` results, as dependency-free SVG:
decode throughput vs batch size (measured steps and their roofline), and batch-1 inter-token
latency vs its roofline (and HF transformers when given).

Usage: python3 bench/plot_gpu_engine.py DATA_DIR OUT.svg
DATA_DIR holds pie_latency.json, pie_tput_*.json, optionally pie_sweep_*.json (2B requests of
(128, 128) at max_num_seqs B: the decode steps at batch B) and hf_compare.jsonl.
"""
import glob
import json
import os
import sys


def load(data):
    pts = []
    for f in sorted(glob.glob(os.path.join(data, "pie_tput_*.json"))):
        r = json.load(open(f))
        if r.get("block_size", 16) != 16:
            continue
        name = f"{r['num_prompts']}×({r['input_len']},{r['output_len']})"
        for b in r["decode_by_batch"]:
            pts.append((name, b["batch"], b["tok_per_s"], b["batch"] / (b["roofline_ms"] / 1e3), b["steps"]))
    for f in glob.glob(os.path.join(data, "pie_sweep_*.json")):
        r = json.load(open(f))
        for b in r["decode_by_batch"]:
            if b["batch"] == r["max_num_seqs"]:
                pts.append(("sweep: 2B×(128,128) at max_num_seqs B", b["batch"], b["tok_per_s"],
                            b["batch"] / (b["roofline_ms"] / 1e3), b["steps"]))
    lat = json.load(open(os.path.join(data, "pie_latency.json")))
    hf = {}
    p = os.path.join(data, "hf_compare.jsonl")
    if os.path.exists(p):
        for line in open(p):
            r = json.loads(line)
            hf[r["workload"]] = r
    return pts, lat, hf


def svg(pts, lat, hf):
    W, H, L, B = 900, 380, 70, 50
    pw, ph = 520, H - B - 30
    xmax = max(p[1] for p in pts) * 1.05
    ymax = max(max(p[2], p[3]) for p in pts) * 1.1
    X = lambda b: L + b / xmax * pw
    Y = lambda t: 20 + ph - t / ymax * ph
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<line x1="{L}" y1="{20 + ph}" x2="{L + pw}" y2="{20 + ph}" stroke="black"/>',
         f'<line x1="{L}" y1="20" x2="{L}" y2="{20 + ph}" stroke="black"/>',
         f'<text x="{L + pw / 2}" y="{H - 10}" text-anchor="middle">decode batch size (sequences)</text>',
         f'<text x="15" y="{20 + ph / 2}" transform="rotate(-90 15 {20 + ph / 2})" text-anchor="middle">output tokens/s of a decode step</text>']
    for i in range(6):
        t = ymax * i / 5
        o.append(f'<text x="{L - 5}" y="{Y(t) + 4}" text-anchor="end">{t / 1000:.0f}k</text>')
        b = xmax * i / 5
        o.append(f'<text x="{X(b)}" y="{20 + ph + 15}" text-anchor="middle">{b:.0f}</text>')
    colors = ["#1f77b4", "#d62728", "#2ca02c"]
    for k, name in enumerate(sorted({p[0] for p in pts})):
        c = colors[k % 3]
        series = sorted((p for p in pts if p[0] == name), key=lambda p: p[1])
        if name.startswith("sweep"):  # one run per batch size: join the points
            for key, dash in ((2, ""), (3, ' stroke-dasharray="4 3"')):
                path = " ".join(f"{X(p[1]):.1f},{Y(p[key]):.1f}" for p in series)
                o.append(f'<polyline points="{path}" fill="none" stroke="{c}"{dash}/>')
        for (_, b, meas, roof, n) in series:
            r = 5 if n > 1 else 3
            o.append(f'<circle cx="{X(b):.1f}" cy="{Y(meas):.1f}" r="{r}" fill="{c}"/>')
            o.append(f'<circle cx="{X(b):.1f}" cy="{Y(roof):.1f}" r="{r}" fill="none" stroke="{c}"/>')
        o.append(f'<circle cx="{L + 15}" cy="{30 + 16 * k}" r="4" fill="{c}"/>'
                 f'<text x="{L + 25}" y="{34 + 16 * k}">{name}: measured (filled), roofline (open)</text>')
    # batch-1 ITL bars
    bx, bw = L + pw + 90, 50
    bars = [("pie", lat["itl_ms"]), ("roofline", lat["roofline_itl_ms"])]
    if "latency:128:128" in hf:
        bars.append(("HF", hf["latency:128:128"]["itl_ms"]))
    top = max(v for _, v in bars) * 1.1
    o.append(f'<text x="{bx + 60}" y="14" text-anchor="middle">batch-1 ITL (ms), in 128 / out 128</text>')
    for i, (n, v) in enumerate(bars):
        h = v / top * ph
        x = bx + i * (bw + 15)
        o.append(f'<rect x="{x}" y="{20 + ph - h:.1f}" width="{bw}" height="{h:.1f}" fill="#888"/>')
        o.append(f'<text x="{x + bw / 2}" y="{20 + ph - h - 4:.1f}" text-anchor="middle">{v:.2f}</text>')
        o.append(f'<text x="{x + bw / 2}" y="{20 + ph + 15}" text-anchor="middle">{n}</text>')
    o.append("</svg>")
    return "\n".join(o)


if __name__ == "__main__":
    pts, lat, hf = load(sys.argv[1])
    open(sys.argv[2], "w").write(svg(pts, lat, hf))
