#!/usr/bin/env python3
"""Re-reading an unchanged disk: how fast an incremental of a disk that did not change is.

  reread.py DISK STRATA_BIN [--runs 3] [--all-blocks] [--work DIR]

Makes a full of DISK, then RUNS incrementals with --force-read (the disk really is read, not
skipped by its stat), each after reading DISK into the page cache; prints, per run and as the
median: wall seconds, CPU seconds (user + system, from /usr/bin/time), bytes read, bytes whose
segment fingerprint matched the base (not chunked), and the rate over the disk's size. Use a
non-sparse disk (`cp --sparse=never`) so that every byte is there to be read.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def timed(cmd):
    t = time.monotonic()
    p = subprocess.run(["/usr/bin/time", "-f", "%U %S %M"] + cmd, capture_output=True, text=True)
    wall = time.monotonic() - t
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
    user, system, rss = p.stderr.strip().splitlines()[-1].split()
    return wall, float(user) + float(system), int(rss) * 1024, p.stdout


def main():
    a = argparse.ArgumentParser()
    a.add_argument("disk")
    a.add_argument("strata")
    a.add_argument("--runs", type=int, default=3)
    a.add_argument("--all-blocks", action="store_true")
    a.add_argument("--work", default=None)
    args = a.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="reread-")
    repo = os.path.join(work, "repo")
    shutil.rmtree(repo, ignore_errors=True)
    subprocess.run([args.strata, "init", "--encryption", "none", repo], check=True, capture_output=True)
    size = os.path.getsize(args.disk)
    extra = ["--all-blocks"] if args.all_blocks else []
    base = [args.strata, "-r", repo, "backup", "--json", "--source-id", "disk", "--force-read"] + extra
    subprocess.run(["cat", args.disk], stdout=subprocess.DEVNULL, check=True)
    wall, cpu, rss, out = timed(base + [args.disk])
    print(f"full: {wall:.2f} s, {cpu:.2f} CPU-s", file=sys.stderr)
    rows = []
    for n in range(args.runs):
        subprocess.run(["cat", args.disk], stdout=subprocess.DEVNULL, check=True)
        wall, cpu, rss, out = timed(base + [args.disk])
        j = json.loads(out)
        rows.append({"seconds": wall, "cpu": cpu, "peak_rss": rss, "bytes_read": j["bytes_read"],
                     "bytes_reused": j.get("bytes_reused", 0), "new_stored_bytes": j["new_stored_bytes"],
                     "gb_per_s": size / wall / 1e9})
        r = rows[-1]
        print(f"run {n + 1}: {wall:.2f} s, {cpu:.2f} CPU-s, read {r['bytes_read'] / 1e9:.2f} GB, reused "
              f"{r['bytes_reused'] / 1e9:.2f} GB, {r['gb_per_s']:.2f} GB/s of disk", file=sys.stderr)
    med = sorted(rows, key=lambda r: r["seconds"])[len(rows) // 2]
    print(json.dumps({"disk_bytes": size, "median": med, "runs": rows}))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
