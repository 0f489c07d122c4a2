#!/usr/bin/env python3
"""Backup sets over time on the reference workload, measured (docs/BENCHMARKS.md).

  lifecycle.py [--mib 1024] [--work DIR] [--strata PATH]

Three backup sets of one ext4 image changed day by day (full, incrementals, a differential),
then: do the exclusive bytes that `stats` reports for the oldest set equal what `forget` of that
set plus `prune` free? Is the repository after `forget --keep-sets 1 --prune` close to a fresh
repository holding only the last set? Does every kept image restore (identical in every used block)? And how long
does `stats` take on a repository with 100 images?
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def du(path):
    return sum(os.lstat(os.path.join(r, f)).st_size for r, _, fs in os.walk(path) for f in fs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--work", default="lifecycle-work")
    ap.add_argument("--strata", default=None)
    a = ap.parse_args()
    strata = a.strata or os.path.join(os.environ.get("STRATA_TARGET_DIR", "target"), "release", "strata")
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    img, repo = os.path.join(a.work, "disk.img"), os.path.join(a.work, "repo")

    def run(*args, js=True):
        out = subprocess.run([strata, "-r", repo, *args] + (["--json"] if js else []), check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out) if js else out

    def day(n):
        subprocess.run([sys.executable, os.path.join(HERE, "workload.py"), "day", img, str(n)], check=True,
                       capture_output=True)

    subprocess.run([sys.executable, os.path.join(HERE, "workload.py"), "build", img, str(a.mib)], check=True)
    subprocess.run([strata, "init", "--encryption", "none", repo], check=True, capture_output=True)
    copies = {}
    n = 0
    plan = [["full", "incremental", "incremental", "differential", "incremental"],
            ["full", "incremental", "incremental", "differential"],
            ["full", "incremental", "differential", "incremental"]]
    for s, kinds in enumerate(plan):
        for kind in kinds:
            n += 1
            day(n)
            info = run("backup", "--kind", kind, "--source-id", "disk", img)
            if s == len(plan) - 1:
                copies[info["image"]] = os.path.join(a.work, f"day{n}.img")
                subprocess.run(["cp", "--sparse=always", img, copies[info["image"]]], check=True)
    stats = run("stats")
    sets = stats["sets"]
    print("sets before:")
    for st in sets:
        print(f"  {st['set'][:8]}: {st['images']} images, stored {st['stored_bytes'] / 1e6:.1f} MB, "
              f"shared {st['shared_bytes'] / 1e6:.1f} MB, exclusive {st['exclusive_bytes'] / 1e6:.1f} MB")
    oldest = sets[0]
    packs = lambda: du(os.path.join(repo, "packs"))
    before = packs()
    first_ids = [i["image"] for i in stats["images"] if i["set"] == oldest["set"]]
    run("forget", first_ids[0])  # the full: takes its whole set
    after_forget = run("prune", "--max-unused", "0")
    freed = before - packs()
    print(f"forget of set {oldest['set'][:8]} + prune: exclusive {oldest['exclusive_bytes'] / 1e6:.2f} MB, "
          f"freed {freed / 1e6:.2f} MB (packs {before / 1e6:.1f} -> {packs() / 1e6:.1f} MB)")
    t = time.monotonic()
    run("forget", "--keep-sets", "1", "--prune")
    forget_s = time.monotonic() - t
    kept_size = du(repo)
    kept_packs = packs()
    print(f"forget --keep-sets 1 --prune (threshold 10 %): {forget_s:.2f} s, repository {kept_size / 1e6:.1f} MB "
          f"(packs {kept_packs / 1e6:.1f} MB)")
    for image, path in copies.items():
        out = os.path.join(a.work, "restored.img")
        run("restore", image, out, js=False)
        # Free blocks come back as zeros (used-block imaging): equal in every used block.
        workload = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workload.py")
        subprocess.run(["python3", workload, "same", path, out], check=True, capture_output=True)
    print(f"all {len(copies)} kept images restore identical in every used block")
    # A fresh repository holding only the last set.
    fresh = os.path.join(a.work, "fresh")
    subprocess.run([strata, "init", "--encryption", "none", fresh], check=True, capture_output=True)
    for image, path in copies.items():
        subprocess.run([strata, "-r", fresh, "backup", "--source-id", "disk", "--force-read", path], check=True,
                       capture_output=True)
    print(f"fresh repository with the same images: {du(fresh) / 1e6:.1f} MB (packs {du(os.path.join(fresh, 'packs')) / 1e6:.1f} MB)"
          f"; ratio {kept_size / du(fresh):.3f}")
    # stats on 100 images.
    while len(run("images")) < 100:
        run("backup", "--source-id", "disk", img)
    t = time.monotonic()
    run("stats")
    print(f"stats with {len(run('images'))} images: {time.monotonic() - t:.3f} s")


if __name__ == "__main__":
    main()
