#!/usr/bin/env python3
"""The dependency graph between Warren's top-level modules (src/<module>.rs or src/<module>/),
read from `crate::<module>` paths in the source (use lines and inline paths; comments and doc
comments skipped). Prints each module's dependencies and every cycle (strongly connected
component with more than one module); exits 1 if there is a cycle that is not in ALLOWED.

    python3 scripts/module_graph.py            # check (CI)
    python3 scripts/module_graph.py --dot      # Graphviz

`cargo modules` does this from the compiler's view but takes minutes to install; the crate uses
only `crate::` paths between top-level modules (no glob re-exports), so reading them is exact
enough to catch a new upward dependency.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
# Cycles accepted for now, each with its reason; empty means none is.
ALLOWED = []

PATH = re.compile(r"\bcrate::([a-z_]+)")


def top_module(path):
    rel = os.path.relpath(path, ROOT)
    parts = rel.split(os.sep)
    if parts[0] in ("bin", "main.rs", "lib.rs"):
        return None
    return parts[0][:-3] if parts[0].endswith(".rs") else parts[0]


def graph():
    deps = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            m = top_module(path)
            if m is None:
                continue
            deps.setdefault(m, set())
            in_tests = False
            for line in open(path, encoding="utf-8"):
                s = line.strip()
                if s.startswith("#[cfg(test)]"):
                    in_tests = True  # test modules may reach anywhere
                if in_tests or s.startswith("//"):
                    continue
                code = s.split("//", 1)[0]
                for target in PATH.findall(code):
                    if target != m:
                        deps[m].add(target)
    return deps


def sccs(deps):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(deps.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(deps):
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def main():
    deps = graph()
    if "--dot" in sys.argv:
        print("digraph warren {")
        for m, ds in sorted(deps.items()):
            for d in sorted(ds):
                print(f'  "{m}" -> "{d}";')
        print("}")
        return 0
    for m, ds in sorted(deps.items()):
        print(f"{m:12} -> {', '.join(sorted(ds)) or '-'}")
    cycles = [c for c in sccs(deps) if c not in ALLOWED]
    for c in sccs(deps):
        print(("allowed cycle: " if c in ALLOWED else "CYCLE: ") + " <-> ".join(c))
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
