#!/usr/bin/env python3
"""Images opened without a restore, measured side by side (docs/BENCHMARKS.md tells how to run it).

  access.py --repo REPO [--strata PATH] [--work DIR] [--repeat 3] [--seconds 5]

For every image of REPO (for example the repository e2e.py leaves in DIR/strata-repo), in one run:

  restore      `strata restore IMAGE WORK/r.img`
  mount cat    `cat MNT/images/IMAGE.img > /dev/null` through a fresh `strata mount`
  nbd convert  `qemu-img convert -O raw nbd+unix:///?socket=S WORK/q.img` from `strata serve-nbd`

each --repeat times with the page cache dropped and the repository read back into it first (the
median is reported), and proves that the
mounted file and the NBD copy are byte-identical to the restored image. Then random reads through
the mount of the newest image (4 KiB and 64 KiB, aligned, 4 threads, --seconds each, page cache
emptied the same way) give IOPS. Peak memory is each process's peak RSS (wait4, or VmHWM for the mount
and the server). Needs root (mount, drop_caches) and qemu-img. WORK should be tmpfs (default
/dev/shm/strata-access) so that writing the copies does not dominate.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time

MB = 1e6


def drop_caches(repo):
    """Empties the page cache (so no image byte is served from it), then reads the repository's
    files back into it: every tool starts with the repository cached, as the e2e restore does."""
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    for root, _, files in os.walk(repo):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                while f.read(1 << 20):
                    pass


def timed(cmd, **kw):
    """Runs cmd; returns (seconds, peak RSS bytes)."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, **kw)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss * 1024


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def same(a, b):
    return subprocess.run(["cmp", "-s", a, b]).returncode == 0


class Mount:
    def __init__(self, strata, repo, at):
        os.makedirs(at, exist_ok=True)
        self.at = at
        self.p = subprocess.Popen([strata, "-r", repo, "mount", at], stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 30
        while not os.path.isdir(os.path.join(at, "images")):
            if self.p.poll() is not None or time.time() > deadline:
                sys.exit(f"mount failed: {self.p.stderr.read()}")
            time.sleep(0.02)

    def stop(self):
        rss = peak_rss(self.p.pid)
        self.p.send_signal(2)
        self.p.wait(timeout=30)
        return rss


class Server:
    def __init__(self, strata, repo, image, socket):
        if os.path.exists(socket):
            os.unlink(socket)
        self.p = subprocess.Popen([strata, "-r", repo, "serve-nbd", image, "--unix", socket],
                                  stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while not os.path.exists(socket):
            if self.p.poll() is not None or time.time() > deadline:
                sys.exit("serve-nbd failed")
            time.sleep(0.02)
        self.url = f"nbd+unix:///?socket={socket}"

    def stop(self):
        rss = peak_rss(self.p.pid)
        self.p.send_signal(2)
        self.p.wait(timeout=30)
        return rss


def random_reads(path, size, block, seconds, threads=4):
    """Aligned random preads of `block` bytes for `seconds` on `threads` threads: IOPS."""
    blocks = size // block
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def run(i):
        rng = random.Random(i)
        fd = os.open(path, os.O_RDONLY)
        n = 0
        while time.perf_counter() < stop:
            os.pread(fd, block, rng.randrange(blocks) * block)
            n += 1
        os.close(fd)
        counts[i] = n

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    ap.add_argument("--strata", default=None)
    ap.add_argument("--work", default="/dev/shm/strata-access")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    a = ap.parse_args()
    strata = a.strata or os.path.join(os.environ.get("STRATA_TARGET_DIR", "target"), "release", "strata")
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    images = json.loads(subprocess.run([strata, "-r", a.repo, "images", "--json"], check=True,
                                       capture_output=True, text=True).stdout)
    restored, mounted, copied = (os.path.join(a.work, n) for n in ("r.img", "mnt", "q.img"))
    rows = []
    peaks = {"restore": 0, "mount": 0, "serve-nbd": 0}
    for info in images:
        image, size = info["image"], info["logical_bytes"]
        runs = {"restore": [], "mount cat": [], "nbd convert": []}
        identical = True
        for _ in range(a.repeat):
            drop_caches(a.repo)
            wall, rss = timed([strata, "-r", a.repo, "restore", image, restored], stdout=subprocess.DEVNULL)
            runs["restore"].append(wall)
            peaks["restore"] = max(peaks["restore"], rss)

            m = Mount(strata, a.repo, mounted)
            drop_caches(a.repo)
            with open(os.devnull, "w") as null:
                wall, _ = timed(["cat", os.path.join(mounted, "images", image + ".img")], stdout=null)
            runs["mount cat"].append(wall)
            identical &= same(os.path.join(mounted, "images", image + ".img"), restored)
            peaks["mount"] = max(peaks["mount"], m.stop())

            s = Server(strata, a.repo, image, os.path.join(a.work, "nbd.sock"))
            drop_caches(a.repo)
            wall, _ = timed(["qemu-img", "convert", "-O", "raw", s.url, copied])
            runs["nbd convert"].append(wall)
            peaks["serve-nbd"] = max(peaks["serve-nbd"], s.stop())
            identical &= same(copied, restored)
            os.unlink(copied)
        med = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
        rows.append({"image": image, "kind": info["kind"], "bytes": size, "identical": identical,
                     **{k: v for k, v in med.items()}, "runs": runs})
        print(f"{image[:8]} {info['kind']:<12} " + "  ".join(f"{k} {v:.2f} s" for k, v in med.items())
              + f"  identical: {identical}", file=sys.stderr)
    newest = images[-1]
    m = Mount(strata, a.repo, mounted)
    iops = {}
    for block in (4096, 65536):
        drop_caches(a.repo)
        iops[block] = random_reads(os.path.join(mounted, "images", newest["image"] + ".img"),
                                   newest["logical_bytes"], block, a.seconds)
    peaks["mount (random reads)"] = m.stop()

    print("| image | kind | restore | mount `cat` | NBD `qemu-img convert` | identical |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        gbs = lambda s: f"{s:.2f} s ({r['bytes'] / s / 1e9:.2f} GB/s)"
        print(f"| {r['image'][:8]} | {r['kind']} | {gbs(r['restore'])} | {gbs(r['mount cat'])}, "
              f"{100 * r['restore'] / r['mount cat']:.0f} % | {gbs(r['nbd convert'])}, "
              f"{100 * r['restore'] / r['nbd convert']:.0f} % | {'yes' if r['identical'] else 'NO'} |")
    print()
    print(f"Random reads through the mount ({newest['image'][:8]}, 4 threads, {a.seconds:g} s each): "
          f"4 KiB {iops[4096]:.0f} IOPS ({iops[4096] * 4096 / MB:.0f} MB/s), "
          f"64 KiB {iops[65536]:.0f} IOPS ({iops[65536] * 65536 / MB:.0f} MB/s)")
    print("Peak RSS: " + ", ".join(f"{k} {v / MB:.0f} MB" for k, v in peaks.items()))
    with open(os.path.join(a.work, "access.json"), "w") as f:
        json.dump({"rows": rows, "iops": iops, "peak_rss": peaks}, f, indent=1)
    sys.exit(0 if all(r["identical"] for r in rows) else 1)


if __name__ == "__main__":
    main()
