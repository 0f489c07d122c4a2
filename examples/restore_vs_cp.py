#!/usr/bin/env python3
"""Restore against the target's own write speed: interleaved runs of `strata restore` (one or
more builds) and `cp --sparse=always` of the source image followed by `sync`, medians.

  restore_vs_cp.py REPO SOURCE_IMAGE STRATA [STRATA...] [--runs N] [--image SPEC]

REPO holds a backup of SOURCE_IMAGE (the image SPEC restores, `latest` by default); the target
is written beside SOURCE_IMAGE (the same filesystem as `cp`'s copy) and removed afterwards. Each
run starts with `sync` and the repository's packs read into the page cache, as the end-to-end
script does. Every restore is compared with the source once.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time


def timed(cmd):
    """Wall, user and kernel seconds of `cmd` (its children included)."""
    before = os.times()
    start = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - start
    after = os.times()
    return wall, after.children_user - before.children_user, after.children_system - before.children_system


def warm(repo):
    for root, _, files in os.walk(os.path.join(repo, "packs")):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                while fh.read(1 << 24):
                    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo")
    ap.add_argument("source")
    ap.add_argument("builds", nargs="+")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--image", default="latest")
    a = ap.parse_args()
    out = os.path.join(os.path.dirname(os.path.abspath(a.source)), ".restore_vs_cp.out")
    copy = os.path.join(os.path.dirname(os.path.abspath(a.source)), ".restore_vs_cp.cp")
    results = {b: [] for b in a.builds}
    results["cp"] = []
    checked = set()
    try:
        for _ in range(a.runs):
            for b in a.builds:
                if os.path.exists(out):
                    os.remove(out)
                subprocess.run(["sync"], check=True)
                warm(a.repo)
                results[b].append(timed([b, "-r", a.repo, "restore", a.image, out]))
                if b not in checked:
                    if subprocess.run(["cmp", "-s", out, a.source]).returncode != 0:
                        sys.exit(f"{b}: the restored image differs from {a.source}")
                    checked.add(b)
            if os.path.exists(copy):
                os.remove(copy)
            subprocess.run(["sync"], check=True)
            results["cp"].append(timed(["sh", "-c", f"cp --sparse=always '{a.source}' '{copy}' && sync"]))
    finally:
        for f in (out, copy):
            if os.path.exists(f):
                os.remove(f)
    cp = statistics.median(r[0] for r in results["cp"])
    for name, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        print(
            f"{name}: median {wall:.2f} s ({100 * cp / wall:.0f} % of cp's time), runs "
            + " ".join(f"{r[0]:.2f}" for r in runs)
            + f", user {statistics.median(r[1] for r in runs):.2f} s, kernel {statistics.median(r[2] for r in runs):.2f} s"
        )


if __name__ == "__main__":
    main()
