#!/usr/bin/env python3
"""What encryption costs: the same commands on a plain and on an encrypted repository, interleaved.

  python3 examples/encryption_cost.py [--mib 2048] [--runs 5] [--work DIR] [--strata BIN]
                                      [--markdown MD]

Builds the reference workload's ext4 image (workload.py build) and its day 1 (workload.py day),
then, --runs times and in alternating order so that drifts of the machine fall on both: a fresh
repository (`init --encryption none`, then `repokey`), the full of day 0, the incremental of
day 1, `restore latest` to the work directory's filesystem (with its fsync), `check
--read-data`, and `images` (nothing but opening the repository: for `repokey`, the Argon2id key
derivation every command pays once). Each row is the median wall time of the runs; the cost is
the encrypted median over the plain one. The source image and the repository are in the page
cache at the start of every command, as in e2e.py. The password is STRATA_PASSWORD, or a fixed
one. Results are also written to DIR/encryption.json.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from e2e import cached, fresh_start, restored_equal, timed  # noqa: E402

STEPS = ["full", "incremental", "restore latest", "check --read-data", "open (images)"]


def run_once(strata, work, encryption, day0, day1):
    repo = os.path.join(work, f"repo-{encryption}")
    shutil.rmtree(repo, ignore_errors=True)
    subprocess.run([strata, "init", repo, "--encryption", encryption], check=True, capture_output=True)
    out = {}

    def step(name, cmd, source=None):
        fresh_start(source)
        if source is None:
            cached(repo)
        wall, cpu, rss, _ = timed(cmd)
        out[name] = {"wall": wall, "user": cpu[0], "kernel": cpu[1], "rss": rss}

    step("full", [strata, "-r", repo, "backup", "--kind", "full", "--source-id", "disk", day0], day0)
    step("incremental", [strata, "-r", repo, "backup", "--kind", "incremental", "--source-id", "disk", day1], day1)
    target = os.path.join(work, "restored.img")
    step("restore latest", [strata, "-r", repo, "restore", "latest", target])
    restored_equal(target, day1)
    os.remove(target)
    step("check --read-data", [strata, "-r", repo, "check", "--read-data"])
    step("open (images)", [strata, "-r", repo, "images"])
    shutil.rmtree(repo)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", default="/var/tmp/strata-encryption-cost")
    ap.add_argument("--strata", default=os.path.join(HERE, "..", "target", "release", "strata"))
    ap.add_argument("--markdown")
    a = ap.parse_args()
    os.environ.setdefault("STRATA_PASSWORD", "encryption cost benchmark password")
    os.makedirs(a.work, exist_ok=True)
    day0 = os.path.join(a.work, "day0.img")
    day1 = os.path.join(a.work, "day1.img")
    if not os.path.exists(day1):
        subprocess.run([sys.executable, os.path.join(HERE, "workload.py"), "build", day0, str(a.mib)], check=True)
        subprocess.run(["cp", "--sparse=always", day0, day1], check=True)
        shutil.copy(day0 + ".files.json", day1 + ".files.json")  # the day's starting state
        subprocess.run([sys.executable, os.path.join(HERE, "workload.py"), "day", day1, "1"], check=True,
                       capture_output=True)

    runs = {"none": [], "repokey": []}
    for i in range(a.runs):
        order = ["none", "repokey"] if i % 2 == 0 else ["repokey", "none"]
        for enc in order:
            runs[enc].append(run_once(a.strata, a.work, enc, day0, day1))
            print(f"run {i + 1} {enc}: " + ", ".join(f"{s} {runs[enc][-1][s]['wall']:.2f} s" for s in STEPS),
                  file=sys.stderr)

    lines = [f"{a.mib} MiB image, {a.runs} runs each, medians of wall time (min–max)", "",
             "| step | none | repokey | cost |", "|---|---|---|---|"]
    summary = {}
    for s in STEPS:
        walls = {e: [r[s]["wall"] for r in runs[e]] for e in runs}
        med = {e: statistics.median(w) for e, w in walls.items()}
        summary[s] = {"none": med["none"], "repokey": med["repokey"], "runs": walls}
        if s == "open (images)":
            cost = f"+{med['repokey'] - med['none']:.2f} s per command"
        else:
            cost = f"{(med['repokey'] / med['none'] - 1) * 100:+.1f} %"
        lines.append(f"| {s} | {med['none']:.2f} s ({min(walls['none']):.2f}–{max(walls['none']):.2f}) | "
                     f"{med['repokey']:.2f} s ({min(walls['repokey']):.2f}–{max(walls['repokey']):.2f}) | {cost} |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(a.work, "encryption.json"), "w") as f:
        json.dump({"mib": a.mib, "runs": runs, "summary": summary}, f, indent=1)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
