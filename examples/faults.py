#!/usr/bin/env python3
"""Fault injection into a copy of a real repository, and whether `check` tells the truth.

  faults.py REPO [--work DIR] [--strata PATH] [--seed N]

Copies REPO (with `cp -a`, so write times stay), injects faults in its newest packs (bytes
flipped in three, one truncated, one deleted) and deletes the manifest of an image in the middle
of a chain, runs `check --read-data`, then restores
every image (restore verifies every chunk: the oracle) and compares: every fault detected? the
images check calls damaged exactly those that do not restore? Then deletes the index, runs
`rebuild-index`, and checks that every image that restored before still restores.
"""

import argparse
import datetime
import json
import os
import random
import shutil
import subprocess
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("repo")
    ap.add_argument("--work", default="faults-work")
    ap.add_argument("--strata", default=None)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    strata = a.strata or os.path.join(os.environ.get("STRATA_TARGET_DIR", "target"), "release", "strata")
    rng = random.Random(a.seed)
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    repo = os.path.join(a.work, "repo")
    subprocess.run(["cp", "-a", a.repo, repo], check=True)

    def cli(*args):
        return subprocess.run([strata, "-r", repo, *args], capture_output=True, text=True)

    images = json.loads(cli("images", "--json").stdout)
    # Packs written after the first full's backup hold data only later images need, so damage
    # there breaks some images and leaves others whole: the case where attribution matters.
    after_full = min(datetime.datetime.fromisoformat(i["created"].replace("Z", "+00:00")).timestamp()
                     for i in images if i["kind"] != "full")
    packs = sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(repo, "packs")) for f in fs
                   if os.path.getmtime(os.path.join(r, f)) > after_full)
    faults = []
    for p in rng.sample(packs, 3):
        b = bytearray(open(p, "rb").read())
        i = rng.randrange(12, len(b) // 2)
        b[i] ^= 1 << rng.randrange(8)
        open(p, "wb").write(b)
        faults.append(("flip", os.path.basename(p), i))
    rest = [p for p in packs if os.path.basename(p) not in {f[1] for f in faults}]
    p = rng.choice(rest)
    os.truncate(p, os.path.getsize(p) // 2)
    faults.append(("truncate", os.path.basename(p)))
    rest.remove(p)
    p = rng.choice(rest)
    os.remove(p)
    faults.append(("delete pack", os.path.basename(p)))
    middle = [i for i in images if i["kind"] != "full" and any(j["base"] == i["image"] for j in images)]
    if middle:
        m = rng.choice(middle)["image"]
        os.remove(os.path.join(repo, "images", m))
        faults.append(("delete manifest", m))

    t = time.monotonic()
    out = cli("check", "--read-data", "--json")
    seconds = time.monotonic() - t
    report = json.loads(out.stdout)
    text = json.dumps(report["problems"])
    detected = [f for f in faults if f[1] in text]
    said_ok = {i["image"] for i in report["images"] if i["restorable"]}

    target = os.path.join(a.work, "oracle.img")
    really_ok = set()
    for i in images:
        if cli("restore", i["image"], target).returncode == 0:
            really_ok.add(i["image"])
    if os.path.exists(target):
        os.remove(target)
    print(f"faults injected: {len(faults)}: " + ", ".join(f"{f[0]} {f[1][:8]}" for f in faults))
    print(f"faults detected by check --read-data: {len(detected)} of {len(faults)}; exit code {out.returncode}")
    for f in faults:
        if f not in detected:
            print(f"  NOT detected: {f}")
    print(f"check --read-data: {report['bytes_read'] / 1e6:.0f} MB in {report['chunks_read']} chunks, "
          f"{seconds:.2f} s ({report['bytes_read'] / seconds / 1e6:.0f} MB/s stored data)")
    print(f"images: {len(images)}; check says restorable {len(said_ok)}; really restorable {len(really_ok)}")
    wrong = said_ok ^ really_ok
    print(f"images check judged wrongly: {len(wrong)}")

    shutil.rmtree(os.path.join(repo, "index"))
    rb = cli("rebuild-index")
    after = {i["image"] for i in json.loads(cli("images", "--json").stdout)}
    still = {i for i in really_ok if i in after and cli("restore", i, target).returncode == 0}
    print(f"after deleting the index and rebuild-index (exit {rb.returncode}): "
          f"{len(still)} of {len(really_ok)} restorable images still restore")
    if os.path.exists(target):
        os.remove(target)


if __name__ == "__main__":
    main()
