#!/usr/bin/env python3
"""End-to-end benchmark on the reference workload (docs/BENCHMARKS.md tells how to run it).

  e2e.py [--mib 2048] [--days 4] [--work DIR] [--strata PATH] [--others] [--avg-kib 16]

Builds the ext4 image of examples/workload.py, then measures Strata: the full, an unchanged
re-backup (--force-read, so it is really read), an incremental per day, a differential at the
end, restore of the latest image (compared byte for byte) — wall time, throughput, CPU time,
peak RSS, repository size after each step, and new stored bytes per day against the 4 KiB
blocks that changed that day. With --others, restic (--compression auto) and borg (zstd,3,
default chunker) back up the same image at the same steps, in the same run.

Prints a Markdown table and writes the raw figures as JSON to DIR/results.json.
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
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def timed(cmd, env=None, cwd=None):
    """Runs cmd under /usr/bin/time; returns wall seconds, CPU seconds, peak RSS bytes, stdout."""
    t = time.monotonic()
    p = subprocess.run(["/usr/bin/time", "-f", "%U %S %M"] + cmd, capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.monotonic() - t
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
    user, sys_, rss = p.stderr.strip().splitlines()[-1].split()
    return wall, float(user) + float(sys_), int(rss) * 1024, p.stdout


class Strata:
    name = "strata"

    def __init__(self, binary, repo, avg_kib=16):
        self.bin, self.repo = binary, repo
        subprocess.run([binary, "init", repo, "--avg-chunk-kib", str(avg_kib)], check=True, capture_output=True)

    def backup(self, image, kind, force=False):
        cmd = [self.bin, "-r", self.repo, "backup", "--json", "--kind", kind, "--source-id", "disk", image]
        if force:
            cmd.append("--force-read")
        wall, cpu, rss, out = timed(cmd)
        return wall, cpu, rss, json.loads(out)

    def restore(self, target):
        return timed([self.bin, "-r", self.repo, "restore", "latest", target])


class Restic:
    name = "restic"

    def __init__(self, repo):
        self.repo = repo
        self.env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=repo, RESTIC_CACHE_DIR=repo + "-cache")
        subprocess.run(["restic", "init"], check=True, capture_output=True, env=self.env)

    def backup(self, image, kind, force=False):
        d, n = os.path.split(os.path.abspath(image))
        wall, cpu, rss, _ = timed(["restic", "backup", "--compression", "auto", "--quiet", "--force", n], self.env, d)
        return wall, cpu, rss, {}

    def restore(self, target):
        d = target + ".d"
        shutil.rmtree(d, ignore_errors=True)
        r = timed(["restic", "restore", "latest", "--target", d], env=self.env)
        shutil.rmtree(d, ignore_errors=True)
        return r


class Borg:
    name = "borg"

    def __init__(self, repo):
        self.repo = repo
        self.env = dict(os.environ, BORG_PASSPHRASE="", BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                        BORG_BASE_DIR=repo + "-base")
        subprocess.run(["borg", "init", "--encryption", "none", repo], check=True, capture_output=True, env=self.env)
        self.n = 0

    def backup(self, image, kind, force=False):
        self.n += 1
        d, n = os.path.split(os.path.abspath(image))
        wall, cpu, rss, _ = timed(["borg", "create", "--compression", "zstd,3", f"{self.repo}::a{self.n}", n], self.env, d)
        return wall, cpu, rss, {}

    def restore(self, target):
        d = target + ".d"
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        r = timed(["borg", "extract", f"{self.repo}::a{self.n}"], self.env, d)
        shutil.rmtree(d, ignore_errors=True)
        return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=2048)
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--work", default="e2e-work")
    ap.add_argument("--strata", default=None)
    ap.add_argument("--others", action="store_true")
    ap.add_argument("--avg-kib", type=int, default=16, help="Strata's average chunk size (init --avg-chunk-kib)")
    a = ap.parse_args()
    binary = a.strata or os.path.join(os.environ.get("STRATA_TARGET_DIR", "target"), "release", "strata")
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    image = os.path.join(a.work, "disk.img")
    subprocess.run([sys.executable, os.path.join(HERE, "workload.py"), "build", image, str(a.mib)], check=True)
    time.sleep(1.2)  # let the image's stat age (see DESIGN.md, unchanged image files)
    data_bytes = os.stat(image).st_blocks * 512
    tools = [Strata(binary, os.path.join(a.work, "strata-repo"), a.avg_kib)]
    if a.others:
        tools += [Restic(os.path.join(a.work, "restic-repo")), Borg(os.path.join(a.work, "borg-repo"))]
    rows = []

    def step(label, kind, changed=None, force=False):
        subprocess.run(["cat", image], stdout=subprocess.DEVNULL)  # source in page cache, as the brief says
        for t in tools:
            before = du(t.repo)
            wall, cpu, rss, info = t.backup(image, kind, force)
            after = du(t.repo)
            rows.append({"tool": t.name, "step": label, "seconds": wall, "cpu_seconds": cpu, "peak_rss": rss,
                         "logical_bytes": a.mib << 20, "repo_bytes": after, "repo_growth": after - before,
                         "changed_block_bytes": changed, "new_stored_bytes": info.get("new_stored_bytes")})

    step("full", "full")
    step("unchanged (read)", "incremental", force=True)
    for d in range(1, a.days + 1):
        out = subprocess.run([sys.executable, os.path.join(HERE, "workload.py"), "day", image, str(d)],
                             check=True, capture_output=True, text=True).stdout
        changed = json.loads(out.strip().splitlines()[-1])["changed_bytes"]
        kind = "differential" if d == a.days and a.days > 1 else "incremental"
        step(f"day {d} {kind}", kind, changed)
    target = os.path.join(a.work, "restored.img")
    for t in tools:
        subprocess.run(["sync"])
        wall, cpu, rss, _ = t.restore(target)
        if t.name == "strata":
            subprocess.run(["cmp", image, target], check=True)
            os.remove(target)
        rows.append({"tool": t.name, "step": "restore latest", "seconds": wall, "cpu_seconds": cpu, "peak_rss": rss,
                     "logical_bytes": a.mib << 20, "repo_bytes": du(t.repo)})
    with open(os.path.join(a.work, "results.json"), "w") as f:
        json.dump({"mib": a.mib, "data_bytes": data_bytes, "rows": rows}, f, indent=1)
    mb = 1e6
    print(f"\nImage: {a.mib} MiB ext4, {data_bytes / mb:.0f} MB allocated; 2 cores.\n")
    print("| tool | step | wall s | logical GB/s | CPU s | peak RSS MB | repo MB | growth MB | changed 4K blocks MB | growth / changed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ch = r.get("changed_block_bytes")
        g = r.get("repo_growth")
        print(f"| {r['tool']} | {r['step']} | {r['seconds']:.2f} | {r['logical_bytes'] / r['seconds'] / 1e9:.2f} | "
              f"{r['cpu_seconds']:.2f} | {r['peak_rss'] / mb:.0f} | {r['repo_bytes'] / mb:.1f} | "
              f"{'' if g is None else f'{g / mb:.1f}'} | {'' if not ch else f'{ch / mb:.1f}'} | "
              f"{'' if not ch or g is None else f'{g / ch:.2f}'} |")


if __name__ == "__main__":
    main()
