#!/usr/bin/env python3
"""A big disk over days: throughput, peak memory and index size at scale (docs/BENCHMARKS.md).

  bigdisk.py WORKDIR STRATA_BIN [--gib 64] [--data-gb 24] [--days 8] [--source-dir DIR] [--keep]

Writes a sparse raw disk of GIB GiB holding DATA_GB GB of real, non-zero data: the files of this
machine (workload.py's sources: shared libraries, documentation, a JVM...) laid end to end in
256 MiB runs spread evenly over the disk, with an 8-byte counter stamped into every 4 KiB block
so that no block repeats (otherwise the repeated corpus would deduplicate away). The disk is
written to --source-dir (default WORKDIR; a tmpfs such as /dev/shm keeps it in memory as the
page-cached sources of the other benchmarks are, and spares the local disk).

Then, each command under /usr/bin/time (wall, user and kernel CPU, peak RSS):
  day 0: a full; days 1..DAYS: 0.5 % of the data rewritten in 1 MiB runs with new content and
  155 scattered 4 KiB blocks per GB of data, then an incremental (a differential on day
  DAYS - 1); a restore of the last image, compared with the disk in every byte; check
  --read-data. The disk and the repository are removed at the end unless --keep.
Throughput is data bytes (not the disk size) over wall time, so that a run with --gib 2 and the
same data density compares with this one. Index bytes per chunk: the index directory's size over
the chunks in the repository. Prints a Markdown table and writes WORKDIR/bigdisk.json.
"""

import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import workload  # noqa: E402  (real_files: the same corpus as the reference workload)
from e2e import timed  # noqa: E402  (under /usr/bin/time: wall, user and kernel CPU, peak RSS)

MiB = 1 << 20
RUN = 256 * MiB
STAMP_EVERY = 4096


def corpus(limit):
    """About `limit` bytes of this machine's files, concatenated (the seed of every data run)."""
    out = bytearray()
    for p in workload.real_files(limit):
        try:
            with open(p, "rb") as f:
                out += f.read()
        except OSError:
            pass
    if len(out) < 64 * MiB:
        sys.exit("too few readable files for a corpus")
    return bytes(out)


class Stamper:
    """Blocks of corpus bytes, each 4 KiB block carrying a counter no other block carries."""

    def __init__(self, seed):
        self.seed, self.counter, self.at = seed, 0, 0

    def block(self, n):
        if self.at + n > len(self.seed):
            self.at = (self.at + 4099) % (len(self.seed) - n)  # a new alignment each lap
        b = bytearray(self.seed[self.at:self.at + n])
        self.at += n
        for off in range(0, n, STAMP_EVERY):
            self.counter += 1
            struct.pack_into("<Q", b, off, self.counter | 0x5354_5241_0000_0000)
        return b


def data_runs(disk_bytes, data_bytes):
    """Offsets of the 256 MiB data runs, spread evenly over the disk."""
    n = max(1, data_bytes // RUN)
    stride = disk_bytes // n // MiB * MiB
    return [i * stride for i in range(n)]


def build(path, disk_bytes, runs, stamper):
    with open(path, "wb") as f:
        f.truncate(disk_bytes)
        for start in runs:
            f.seek(start)
            for _ in range(RUN // (8 * MiB)):
                f.write(stamper.block(8 * MiB))


def age(path, runs, stamper, rng, data_bytes):
    """One day: 0.5 % of the data rewritten in 1 MiB runs, and 155 scattered 4 KiB blocks per GB
    of data (2,000 on a 12.9 GB disk), so that disks of any size change in the same proportion."""
    with open(path, "r+b") as f:
        for _ in range(max(1, data_bytes // 200 // MiB)):
            f.seek(rng.choice(runs) + rng.randrange(RUN // MiB) * MiB)
            f.write(stamper.block(MiB))
        for _ in range(max(1, data_bytes * 155 // 10**9)):
            f.seek(rng.choice(runs) + rng.randrange(RUN // 4096) * 4096)
            f.write(stamper.block(4096))


def data_ranges(path):
    """The file's data ranges (SEEK_DATA / SEEK_HOLE)."""
    out, fd = [], os.open(path, os.O_RDONLY)
    try:
        end, at = os.fstat(fd).st_size, 0
        while at < end:
            try:
                start = os.lseek(fd, at, os.SEEK_DATA)
            except OSError:
                break
            stop = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, stop))
            at = stop
    finally:
        os.close(fd)
    return out


def same(a, b):
    """Equal in every byte: the data ranges of either file compared, the rest is holes in both."""
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    ranges = sorted(data_ranges(a) + data_ranges(b))
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for start, stop in ranges:
            fa.seek(start)
            fb.seek(start)
            at = start
            while at < stop:
                n = min(8 * MiB, stop - at)
                if fa.read(n) != fb.read(n):
                    return False
                at += n
    return True


def du(path):
    return int(subprocess.run(["du", "-sb", path], capture_output=True, text=True).stdout.split()[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("work")
    ap.add_argument("strata")
    ap.add_argument("--gib", type=int, default=64)
    ap.add_argument("--data-gb", type=float, default=24)
    ap.add_argument("--days", type=int, default=8)
    ap.add_argument("--source-dir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the disk and the repository")
    ap.add_argument("--encryption", choices=["none", "repokey"], default="none",
                    help="Strata's init --encryption (repokey: the password is STRATA_PASSWORD, or a fixed one)")
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    disk = os.path.join(a.source_dir or a.work, "bigdisk.img")
    restored = os.path.join(a.work, "restored.img")
    repo = os.path.join(a.work, "repo")
    disk_bytes, data_bytes = a.gib << 30, int(a.data_gb * 1e9)
    runs = data_runs(disk_bytes, data_bytes)
    data_bytes = len(runs) * RUN
    stamper, rng = Stamper(corpus(512 * MiB)), random.Random(64)
    t = time.monotonic()
    build(disk, disk_bytes, runs, stamper)
    print(f"disk: {a.gib} GiB, {data_bytes / 1e9:.1f} GB of data in {len(runs)} runs, "
          f"written in {time.monotonic() - t:.0f} s", file=sys.stderr)
    if a.encryption != "none":
        os.environ.setdefault("STRATA_PASSWORD", "bigdisk benchmark password")
    subprocess.run([a.strata, "init", "--encryption", a.encryption, repo], check=True, capture_output=True)
    rows, chunks = [], 0

    def step(name, cmd, data):
        nonlocal chunks
        subprocess.run(["sync"])
        wall, (user, kernel), rss, out = timed(cmd)
        if "backup" in cmd:
            chunks += json.loads(out)["new_chunks"]
        r = {"step": name, "seconds": wall, "user": user, "kernel": kernel, "peak_rss": rss, "data_bytes": data,
             "repo_bytes": du(repo), "index_bytes": du(os.path.join(repo, "index"))}
        rows.append(r)
        print(f"{name:<24} {r['seconds']:7.2f} s  {data / r['seconds'] / 1e9:5.2f} GB/s  "
              f"{r['peak_rss'] / MiB:4.0f} MiB", file=sys.stderr)

    backup = [a.strata, "-r", repo, "backup", "--json", "--source-id", "big"]
    step("full", backup + ["--kind", "full", disk], data_bytes)
    for d in range(1, a.days + 1):
        age(disk, runs, stamper, rng, data_bytes)
        time.sleep(1.1)  # the disk's mtime must move past the last backup's (unchanged-file check)
        kind = "differential" if d == a.days - 1 else "incremental"
        step(f"day {d} {kind}", backup + ["--kind", kind, disk], data_bytes)
    step("restore latest", [a.strata, "-r", repo, "restore", "latest", restored], data_bytes)
    if not same(disk, restored):
        sys.exit(f"{restored} differs from {disk}")
    os.remove(restored)
    step("check --read-data", [a.strata, "-r", repo, "check", "--read-data"], data_bytes)
    index = rows[-1]["index_bytes"]
    result = {"disk_bytes": disk_bytes, "data_bytes": data_bytes, "days": a.days, "chunks": chunks,
              "index_bytes": index, "index_bytes_per_chunk": index / max(chunks, 1), "rows": rows}
    with open(os.path.join(a.work, "bigdisk.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"\n{a.gib} GiB disk, {data_bytes / 1e9:.1f} GB of data, {os.cpu_count()} cores; "
          f"{chunks} chunks, index {index / 1e6:.1f} MB = {index / max(chunks, 1):.0f} bytes per chunk\n")
    print("| step | wall s | data GB/s | user s | kernel s | peak RSS MiB | repository MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['seconds']:.2f} | {r['data_bytes'] / r['seconds'] / 1e9:.2f} | {r['user']:.2f} | "
              f"{r['kernel']:.2f} | {r['peak_rss'] / MiB:.0f} | {r['repo_bytes'] / 1e6:.0f} |")
    if not a.keep:
        os.remove(disk)
        shutil.rmtree(repo)


if __name__ == "__main__":
    main()
