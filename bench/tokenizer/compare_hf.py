#!/usr/bin/env python3
"""Encode throughput, one thread, pie vs Hugging Face `tokenizers`, on the same texts and the
same tokenizer.json, in one run. Both sides are timed in CPU time of the process (the shared
build machine is contended; wall time would measure the neighbours), with warm caches.

  per-text: each corpus text is one encode call (HF pays Python call overhead per text)
  concat:   the corpus joined by blank lines, one encode call

Usage: python3 bench/tokenizer/compare_hf.py BUILD_DIR/bench/tokenizer/tokenizer_bench
"""
import json
import os
import subprocess
import sys
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
FIXTURE = os.path.join(ROOT, "tests", "reference", "tokenizer", "qwen3_encode.json")
QWEN = os.path.join(ROOT, "..", "shared", "models", "Qwen3-8B", "tokenizer.json")


def hf_rate(tok, texts, min_time=2.0):
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    for t in texts:
        tok.encode(t)
    iters, start = 0, time.process_time()
    while True:
        for t in texts:
            tok.encode(t, add_special_tokens=False)
        iters += 1
        el = time.process_time() - start
        if el >= min_time:
            return nbytes * iters / el / 1e6


def pie_rates(binary):
    out = subprocess.run([binary, "--benchmark_filter=BM_Qwen3Encode", "--benchmark_format=json"],
                         check=True, capture_output=True, text=True).stdout
    return {b["name"].split("/")[0]: b["MB/s"] for b in json.loads(out)["benchmarks"]}


def main():
    tok = Tokenizer.from_file(QWEN)
    texts = [c["text"] for c in json.load(open(FIXTURE, encoding="utf-8")) if "text" in c]
    concat = "\n\n".join(texts)
    hf_per, hf_cat = hf_rate(tok, texts), hf_rate(tok, [concat])
    pie = pie_rates(sys.argv[1])
    pie_per, pie_cat = pie["BM_Qwen3Encode"], pie["BM_Qwen3EncodeConcat"]
    print(f"corpus: {len(texts)} texts, {len(concat.encode('utf-8'))} bytes; Qwen3-8B tokenizer.json; "
          f"one thread; CPU time; tokenizers {__import__('tokenizers').__version__}")
    print(f"{'mode':10} {'HF MB/s':>10} {'pie MB/s':>10} {'pie/HF':>8}")
    print(f"{'per-text':10} {hf_per:10.2f} {pie_per:10.2f} {pie_per / hf_per:7.2f}x")
    print(f"{'concat':10} {hf_cat:10.2f} {pie_cat:10.2f} {pie_cat / hf_cat:7.2f}x")


if __name__ == "__main__":
    main()
