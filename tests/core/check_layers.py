#!/usr/bin/env python3
"""Layering test: pie's headers include one way.

Reads every header under include/pie, collects its `#include "pie/..."` edges and fails on
  - an edge that runs up the layer order (a layer may include its own layer and earlier ones),
  - a tokenizer edge outside its lane (tokenizer uses core only; only structured, llm, the server and the
    top-level umbrellas include it),
  - a host header (.hpp outside every cuda/ folder) that includes CUDA-side code (a cuda/
    folder or a .cuh): the pie::pie build must not need the CUDA side,
  - an include of a pie header that does not exist,
  - any include cycle (the cycle's path is printed),
naming the file, the line and the edge. Layers are the first folder under pie/; subfolders
belong to their parent (ops/cpu and ops/cuda are ops). Top-level headers (pie/pie.hpp,
pie/cuda.cuh, ...) are umbrellas: they may include anything, and nothing may include them.

  check_layers.py [INCLUDE_DIR]   check a tree (default: this repository's include/)
  check_layers.py --self-test     show on synthetic trees that each rule fires
Python 3 standard library only.
"""
import os
import re
import sys
import tempfile

# The order, lowest first. The attention variants live in core (core/attention_variants.hpp:
# core/policy.hpp names them).
# structured/ compiles grammars (XGrammar) over the tokenizer's vocabulary for llm/ and server/.
# registry/ maps flags to engine types over every backend and group (make_engine); llm/ is the
# text-level API above it.
LAYERS = ["core", "kv", "sched", "ops", "model", "engine", "parallel", "registry", "structured", "llm", "server"]
RANK = {name: i for i, name in enumerate(LAYERS)}
TOP = "<top-level>"

# tokenizer stands beside the order: what it may include, and who may include it.
SIDE = {"tokenizer": {"uses": {"core", "tokenizer"}, "used_by": {"tokenizer", "structured", "llm", "server", TOP}}}

# Edges known to break a rule, each in a file its owner is rewriting right now. Delete an entry
# when its edge is gone: the check fails on an entry that no longer matches an edge, so the
# list only shrinks.
ALLOW: set = set()

INCLUDE_RE = re.compile(r'^\s*#\s*include\s*[<"](pie/[^">]+)[">]')
HEADER_EXT = (".hpp", ".cuh", ".h", ".inc")


def layer_of(path):
    """'pie/ops/cuda/gemm.cuh' -> 'ops'; 'pie/pie.hpp' -> TOP."""
    parts = path.split("/")
    return TOP if len(parts) == 2 else parts[1]


def is_cuda_side(path):
    return path.endswith(".cuh") or "/cuda/" in path


def collect(include_dir):
    """{header: [(line number, included header), ...]} for every header under include_dir/pie."""
    graph = {}
    base = os.path.join(include_dir, "pie")
    for dirpath, _, files in os.walk(base):
        for f in files:
            if not f.endswith(HEADER_EXT):
                continue
            full = os.path.join(dirpath, f)
            rel = os.path.relpath(full, include_dir).replace(os.sep, "/")
            edges = []
            with open(full, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    m = INCLUDE_RE.match(line)
                    if m:
                        edges.append((n, m.group(1)))
            graph[rel] = edges
    return graph


def rule_violation(src, dst):
    """Why the edge src -> dst breaks the layering, or None."""
    a, b = layer_of(src), layer_of(dst)
    if a == TOP:
        return None
    if b == TOP:
        return f"{a} includes a top-level umbrella header"
    for lane in (a, b):
        if lane not in RANK and lane not in SIDE:
            return f"unknown layer '{lane}' (add it to LAYERS or SIDE in check_layers.py)"
    if a in SIDE and b not in SIDE[a]["uses"]:
        return f"{a} may include only {sorted(SIDE[a]['uses'])}, not {b}"
    if b in SIDE and a not in SIDE[b]["used_by"]:
        return f"{b} may be included only by {sorted(SIDE[b]['used_by'])}, not by {a}"
    if a in RANK and b in RANK and RANK[b] > RANK[a]:
        return f"upward edge {a} -> {b}"
    if src.endswith(".hpp") and not is_cuda_side(src) and is_cuda_side(dst):
        return "host header includes CUDA-side code (a cuda/ folder or a .cuh)"
    return None


def find_cycles(graph):
    """Per strongly connected component: one shortest cycle through its first header (a path
    that returns to its start) and the component's other headers, which lie on further cycles."""
    index, low, on_stack, stack, sccs = {}, {}, set(), [], []
    counter = [0]

    def strongconnect(v):  # Tarjan, iterative so deep include chains cannot hit the recursion limit
        work = [(v, 0)]
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on_stack.add(v)
        while work:
            node, i = work[-1]
            succ = [d for _, d in graph.get(node, []) if d in graph]
            if i < len(succ):
                work[-1] = (node, i + 1)
                w = succ[i]
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1
                    stack.append(w); on_stack.add(w)
                    work.append((w, 0))
                elif w in on_stack:
                    low[node] = min(low[node], index[w])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    w = stack.pop(); on_stack.discard(w); comp.add(w)
                    if w == node:
                        break
                self_loop = any(d == node for _, d in graph.get(node, []))
                if len(comp) > 1 or self_loop:
                    sccs.append(comp)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in sccs:
        start = min(comp)
        # Shortest path inside the component from start back to start (BFS).
        prev, frontier, seen = {}, [start], {start}
        found = None
        while frontier and found is None:
            nxt = []
            for u in frontier:
                for _, d in sorted(graph[u], key=lambda e: e[1]):
                    if d not in comp:
                        continue
                    if d == start:
                        found = u
                        break
                    if d not in seen:
                        seen.add(d); prev[d] = u; nxt.append(d)
                if found is not None:
                    break
            frontier = nxt
        path = [found]
        while path[-1] != start:
            path.append(prev[path[-1]])
        path.reverse()
        cycles.append((path + [start], sorted(comp - set(path))))
    return sorted(cycles)


def check(include_dir, allow=frozenset()):
    """All problems of the tree at include_dir, as printable lines (empty: the tree is clean)."""
    graph = collect(include_dir)
    errors, used_allow = [], set()
    for src in sorted(graph):
        for line, dst in graph[src]:
            if dst not in graph:
                errors.append(f"{src}:{line}: includes {dst}, which does not exist")
                continue
            why = rule_violation(src, dst)
            if why is None:
                continue
            if (src, dst) in allow:
                used_allow.add((src, dst))
                continue
            errors.append(f"{src}:{line}: {src} -> {dst}: {why}")
    for src, dst in sorted(set(allow) - used_allow):
        errors.append(f"allow-list entry ({src} -> {dst}) matches no violating edge: delete it")
    for cycle, others in find_cycles(graph):
        more = f" (its cycles also pass through {', '.join(others)})" if others else ""
        errors.append("include cycle: " + " -> ".join(cycle) + more)
    return errors


# ---- self-test -----------------------------------------------------------------------------

def _tree(files):
    """A temporary include dir holding {relative path: text}."""
    d = tempfile.TemporaryDirectory()
    for rel, text in files.items():
        full = os.path.join(d.name, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w", encoding="utf-8") as fh:
            fh.write(text)
    return d


def _inc(*paths):
    return "#pragma once\n" + "".join(f'#include "{p}"\n' for p in paths)


def self_test():
    clean = {
        "pie/core/a.hpp": _inc(),
        "pie/kv/b.hpp": _inc("pie/core/a.hpp"),
        "pie/ops/cuda/k.cuh": _inc("pie/kv/b.hpp", "pie/ops/cpu/c.hpp"),
        "pie/ops/cpu/c.hpp": _inc("pie/core/a.hpp"),
        "pie/engine/e.hpp": _inc("pie/ops/cpu/c.hpp", "pie/sched/s.hpp"),
        "pie/sched/s.hpp": _inc("pie/kv/b.hpp"),
        "pie/tokenizer/t.hpp": _inc("pie/core/a.hpp"),
        "pie/server/h.hpp": _inc("pie/tokenizer/t.hpp", "pie/engine/e.hpp"),
        "pie/pie.hpp": _inc("pie/server/h.hpp", "pie/ops/cuda/k.cuh"),
    }
    cases = [  # (name, changes to the clean tree, allow-list, expected substrings)
        ("clean tree passes", {}, set(), []),
        ("upward edge core -> engine",
         {"pie/core/a.hpp": _inc("pie/engine/e.hpp")}, set(),
         ["pie/core/a.hpp:2: pie/core/a.hpp -> pie/engine/e.hpp: upward edge core -> engine"]),
        ("subfolder ranks as its parent: ops/cpu -> model is upward",
         {"pie/model/m.hpp": _inc(), "pie/ops/cpu/c.hpp": _inc("pie/model/m.hpp")}, set(),
         ["pie/ops/cpu/c.hpp:2: pie/ops/cpu/c.hpp -> pie/model/m.hpp: upward edge ops -> model"]),
        ("include cycle inside one layer",
         {"pie/kv/b.hpp": _inc("pie/core/a.hpp", "pie/kv/d.hpp"), "pie/kv/d.hpp": _inc("pie/kv/b.hpp")},
         set(), ["include cycle: pie/kv/b.hpp -> pie/kv/d.hpp -> pie/kv/b.hpp"]),
        ("three-header cycle is reported with its path",
         {"pie/tokenizer/t.hpp": _inc("pie/tokenizer/u.hpp"), "pie/tokenizer/u.hpp": _inc("pie/tokenizer/v.hpp"),
          "pie/tokenizer/v.hpp": _inc("pie/tokenizer/t.hpp")}, set(),
         ["include cycle: pie/tokenizer/t.hpp -> pie/tokenizer/u.hpp -> pie/tokenizer/v.hpp -> pie/tokenizer/t.hpp"]),
        ("tokenizer uses core only",
         {"pie/tokenizer/t.hpp": _inc("pie/kv/b.hpp")}, set(), ["tokenizer may include only"]),
        ("engine may not include the tokenizer",
         {"pie/engine/e.hpp": _inc("pie/tokenizer/t.hpp")}, set(),
         ["pie/engine/e.hpp:2: pie/engine/e.hpp -> pie/tokenizer/t.hpp: tokenizer may be included only by"]),
        ("host header may not include a cuda/ folder",
         {"pie/engine/e.hpp": _inc("pie/ops/cuda/k.cuh")}, set(), ["host header includes CUDA-side code"]),
        ("layer header may not include an umbrella",
         {"pie/engine/e.hpp": _inc("pie/pie.hpp")}, set(), ["includes a top-level umbrella header"]),
        ("missing header is reported",
         {"pie/kv/b.hpp": _inc("pie/kv/gone.hpp")}, set(), ["includes pie/kv/gone.hpp, which does not exist"]),
        ("unknown layer is reported",
         {"pie/extra/x.hpp": _inc("pie/core/a.hpp")}, set(), ["unknown layer 'extra'"]),
        ("an allow-listed edge passes",
         {"pie/core/a.hpp": _inc("pie/engine/e.hpp"), "pie/engine/e.hpp": _inc()},
         {("pie/core/a.hpp", "pie/engine/e.hpp")}, []),
        ("a stale allow-list entry fails",
         {}, {("pie/core/a.hpp", "pie/engine/e.hpp")}, ["matches no violating edge: delete it"]),
    ]
    failed = 0
    for name, changes, allow, expected in cases:
        with _tree({**clean, **changes}) as d:
            errors = check(d, frozenset(allow))
        ok = (not errors) if not expected else all(any(e in x for x in errors) for e in expected)
        print(("ok   " if ok else "FAIL ") + name)
        if not ok:
            failed += 1
            print("     expected: " + (repr(expected) if expected else "no errors"))
            print("     got:      " + repr(errors))
    print(f"self-test: {len(cases) - failed}/{len(cases)} cases behave")
    return 1 if failed else 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    if len(argv) > 2 or (len(argv) == 2 and argv[1].startswith("-")):
        print(__doc__)
        return 2
    here = os.path.dirname(os.path.abspath(__file__))
    include_dir = argv[1] if len(argv) == 2 else os.path.join(here, "..", "..", "include")
    errors = check(include_dir, frozenset(ALLOW))
    n = len(collect(include_dir))
    for e in errors:
        print(e)
    if errors:
        print(f"layering: {len(errors)} problem(s) in {n} headers; order: {' -> '.join(LAYERS)}, "
              f"tokenizer beside (uses core, used by server and the umbrellas)")
        return 1
    print(f"layering: {n} headers, every include points down the order "
          f"({' -> '.join(LAYERS)}; tokenizer beside), no cycles, {len(ALLOW)} allow-listed edge(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
