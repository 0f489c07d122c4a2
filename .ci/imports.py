#!/usr/bin/env python3
"""The import graph of src/ between top-level modules (a folder counts as one module): fails when
two modules import each other, directly or around a circle (docs/DESIGN.md, "Data flow and
modules"). With no circle, the graph has floors and no import runs back up. Run by .ci/test."""

import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
SKIP = {"lib", "main", "cli"}


def module_of(path):
    rel = os.path.relpath(path, SRC)
    top = rel.split(os.sep)[0]
    return top[:-3] if top.endswith(".rs") else top


edges = {}
for root, _, files in os.walk(SRC):
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(root, f)
        m = module_of(path)
        if m in SKIP:
            continue
        # Code only: a comment that names a module imports nothing.
        text = "\n".join(l.split("//")[0] for l in open(path, encoding="utf-8").read().splitlines())
        # `crate::x` in paths and `use crate::{x, y}` groups.
        targets = set(re.findall(r"\bcrate::(\w+)", text))
        for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
            targets.update(re.findall(r"(?:^|,)\s*(\w+)", group))
        edges.setdefault(m, set()).update(t for t in targets if t != m and t not in SKIP)

circles = []
state = {}


def visit(node, stack):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(edges.get(node, ())):
        if state.get(nxt) == "open":
            circles.append(stack[stack.index(nxt):] + [nxt])
        elif nxt not in state:
            visit(nxt, stack)
    stack.pop()
    state[node] = "done"


for n in sorted(edges):
    if n not in state:
        visit(n, [])
if circles:
    for c in circles:
        print("import circle: " + " -> ".join(c), file=sys.stderr)
    sys.exit(1)
print(f"imports: {len(edges)} modules, {sum(len(v) for v in edges.values())} arrows, no circle")
