#!/usr/bin/env python3
"""A repository with many images: how long listing, stats and forget take.

  scale.py WORKDIR STRATA_BIN [--sources 4] [--images 1000] [--mib 16] [--measure-only]

Builds (unless --measure-only) a repository in WORKDIR/repo holding IMAGES images of SOURCES
disks of MIB MiB each, backed up in turn; between two backups of a disk 64 KiB of it change at
a seeded place, and every 30th image of a disk is a full, every 7th a differential. Then times
(median of 3): `images`, `images --json`, `stats`, `forget --keep-last 100 --dry-run`; then one
`forget --keep-last 100 --prune` on a copy, with what it freed. Prints a JSON object.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time


def timed(cmd, n=3):
    times = []
    for _ in range(n):
        t = time.monotonic()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.monotonic() - t)
    return statistics.median(times)


def du(path):
    return int(subprocess.run(["du", "-sb", path], capture_output=True, text=True).stdout.split()[0])


def main():
    a = argparse.ArgumentParser()
    a.add_argument("work")
    a.add_argument("strata")
    a.add_argument("--sources", type=int, default=4)
    a.add_argument("--images", type=int, default=1000)
    a.add_argument("--mib", type=int, default=16)
    a.add_argument("--measure-only", action="store_true")
    args = a.parse_args()
    repo = os.path.join(args.work, "repo")
    s = args.strata
    if not args.measure_only:
        shutil.rmtree(args.work, ignore_errors=True)
        os.makedirs(args.work)
        subprocess.run([s, "init", "--encryption", "none", repo], check=True, capture_output=True)
        rng = random.Random(1)
        disks = []
        for d in range(args.sources):
            path = os.path.join(args.work, f"disk{d}.img")
            with open(path, "wb") as f:
                f.write(rng.randbytes(args.mib << 20))
            disks.append(path)
        started = time.monotonic()
        for i in range(args.images):
            d = i % args.sources
            n = i // args.sources
            with open(disks[d], "r+b") as f:
                f.seek(rng.randrange(0, (args.mib << 20) - 65536))
                f.write(rng.randbytes(65536))
            kind = "full" if n % 30 == 0 else ("differential" if n % 7 == 0 else "incremental")
            subprocess.run([s, "-r", repo, "backup", "--kind", kind, "--source-id", f"disk{d}", disks[d]],
                           check=True, capture_output=True)
            if i % 100 == 99:
                print(f"{i + 1} images, {time.monotonic() - started:.0f} s", file=sys.stderr)
    out = {"images": args.images, "sources": args.sources, "repository_bytes": du(repo)}
    out["images_s"] = timed([s, "-r", repo, "images"])
    out["images_json_s"] = timed([s, "-r", repo, "images", "--json"])
    out["stats_s"] = timed([s, "-r", repo, "stats"])
    out["forget_dry_run_s"] = timed([s, "-r", repo, "forget", "--keep-last", "100", "--dry-run"])
    copy = os.path.join(args.work, "copy")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(repo, copy)
    before = du(copy)
    t = time.monotonic()
    p = subprocess.run([s, "-r", copy, "forget", "--keep-last", "100", "--prune", "--json"], capture_output=True,
                       text=True)
    out["forget_prune_s"] = time.monotonic() - t
    if p.returncode != 0:
        sys.exit(p.stderr)
    out["forget_prune_freed_bytes"] = before - du(copy)
    listed = json.loads(subprocess.run([s, "-r", copy, "images", "--json"], capture_output=True, text=True).stdout)
    out["images_after_forget"] = len(listed)
    shutil.rmtree(copy, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
