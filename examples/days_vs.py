#!/usr/bin/env python3
"""Mostly unchanged disks, build against build: interleaved runs of a full of day 0 followed by
incrementals of the next days and a re-read of the last day unchanged, medians per step.

  days_vs.py WORKDIR STRATA [STRATA...] [--mib N] [--days D] [--runs R] [--any-day]

WORKDIR receives the reference workload (examples/workload.py: `build` for day 0, then `day N`
on a copy of the day before), kept for reruns. Every run of every build backs the days up into a
fresh, unencrypted repository under one source id, with the images in the page cache (read once
before each run), as the end-to-end script measures them. Rates are over the whole disk.
With --any-day the days are `workload.py any-day` instead (a run of new content and 4 KiB
rewrites scattered over the whole disk, so nearly every 16 MiB segment changes); use another
WORKDIR for them.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(cmd):
    """Wall, user and kernel seconds of `cmd` (its children included)."""
    before = os.times()
    start = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - start
    after = os.times()
    return wall, after.children_user - before.children_user, after.children_system - before.children_system


def images(work, mib, days, kind="day"):
    os.makedirs(work, exist_ok=True)
    out = []
    for d in range(days + 1):
        img = os.path.join(work, f"day{d}.img")
        if not os.path.exists(img):
            if d == 0:
                subprocess.run([sys.executable, os.path.join(HERE, "workload.py"), "build", img, str(mib)], check=True)
            else:
                prev = out[-1]
                shutil.copy(prev + ".files.json", img + ".files.json")
                subprocess.run(["cp", "--sparse=always", prev, img], check=True)
                subprocess.run([sys.executable, os.path.join(HERE, "workload.py"), kind, img, str(d)], check=True,
                               stdout=subprocess.DEVNULL)
        out.append(img)
    return out


def warm(paths):
    for p in paths:
        subprocess.run(["cat", p], check=True, stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work")
    ap.add_argument("builds", nargs="+")
    ap.add_argument("--mib", type=int, default=2048)
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--any-day", action="store_true", help="scattered days (workload.py any-day)")
    a = ap.parse_args()
    imgs = images(a.work, a.mib, a.days, "any-day" if a.any_day else "day")
    size = os.path.getsize(imgs[0])
    steps = ["full"] + [f"day {d}" for d in range(1, a.days + 1)] + ["unchanged"]
    times = {(b, s): [] for b in a.builds for s in steps}
    for _ in range(a.runs):
        for b in a.builds:
            repo = os.path.join(a.work, "repo")
            shutil.rmtree(repo, ignore_errors=True)
            subprocess.run([b, "init", "--encryption", "none", repo], check=True, stdout=subprocess.DEVNULL)
            warm(imgs)
            for s, img in zip(steps, imgs + [imgs[-1]]):
                cmd = [b, "-r", repo, "backup", "--source-id", "disk", img]
                if s == "unchanged":
                    cmd.append("--force-read")
                times[(b, s)].append(timed(cmd))
            shutil.rmtree(repo)
    print(f"| step | " + " | ".join(a.builds) + " |")
    print("|---|" + "---|" * len(a.builds))
    for s in steps:
        cells = []
        for b in a.builds:
            t = times[(b, s)]
            wall = statistics.median(x[0] for x in t)
            cpu = statistics.median(x[1] + x[2] for x in t)
            walls = " ".join(f"{x[0]:.2f}" for x in t)
            cells.append(f"{wall:.2f} s = {size / wall / 1e9:.2f} GB/s, {cpu:.2f} CPU-s ({walls})")
        print(f"| {s} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
