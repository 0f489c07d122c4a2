#!/usr/bin/env python3
"""Used-block imaging, measured: aged disks backed up by Strata (used blocks), Strata
--all-blocks, restic and borg; then more files deleted and each tool's next backup.

  usedblocks.py WORKDIR [STRATA_BIN]      (root: loop and ntfs-3g mounts)

The disks, each aged the same way (filled to about 60 % with real files of this machine, then
half of the files deleted, so free space holds their old data):
  ext4   the reference workload (examples/workload.py build, 2 GiB)
  fat32  mkfs.vfat -F 32, 1 GiB, filled through mtools (this kernel has no vfat driver)
  ntfs   mkntfs, 1 GiB, filled through an ntfs-3g mount
For each: a full by each tool, then another third of the files deleted, then an incremental (a
second snapshot or archive for restic and borg). Reported per step: bytes read (Strata's own
count; restic and borg: the most /proc/PID/io `rchar` showed while they ran, a lower bound),
wall time, and the repository's growth (du). Strata: 16 KiB chunks, zstd 3; restic `--compression
auto`; borg `--compression zstd,3` with its default chunker; restic and borg back up the image
as one file. Every backup reads the image from the page cache
(it was just written), so times are CPU, not disk. Prints a Markdown table and writes
WORKDIR/usedblocks.json.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ["/usr/share/doc", "/usr/lib/python3.11", "/usr/share/locale", "/usr/lib/x86_64-linux-gnu",
           "/usr/share", "/usr/lib"]


def sh(*args, **kw):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    if p.returncode != 0:
        sys.exit(f"{' '.join(args[:4])} ... failed: {p.stderr.decode(errors='replace')[-2000:]}")
    return p.stdout


def du(path):
    return int(sh("du", "-sb", path).split()[0])


def measured(args, env=None):
    """Runs args; returns (stdout, seconds, most rchar seen in /proc/PID/io)."""
    start = time.monotonic()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    rchar = 0
    out = []
    import threading
    t = threading.Thread(target=lambda: out.append(p.stdout.read()))
    t.start()
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/io") as f:
                for line in f:
                    if line.startswith("rchar:"):
                        rchar = max(rchar, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.01)
    t.join()
    secs = time.monotonic() - start
    if p.returncode != 0:
        sys.exit(f"{args[0]} failed: {p.stderr.read().decode()}")
    return out[0], secs, rchar


def stage_files(dir, budget):
    """Copies real files into dir until about budget bytes (names FAT can hold: no characters it
    forbids, no two that differ only in case)."""
    total = 0
    seen = set()
    for src in SOURCES:
        for root, dirs, files in os.walk(src):
            dirs.sort()
            for name in sorted(files):
                p = os.path.join(root, name)
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                size = os.path.getsize(p)
                if size == 0 or total + size > budget:
                    continue
                rel = os.path.relpath(p, "/").lower()
                for c in '":*<>?\\|+,;=[]':
                    rel = rel.replace(c, "_")
                if rel.lower() in seen or any(len(part) > 200 for part in rel.split("/")):
                    continue
                seen.add(rel.lower())
                dst = os.path.join(dir, rel)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                try:
                    shutil.copyfile(p, dst)
                except OSError:
                    continue
                total += size
                if total > budget * 0.98:
                    return total
    return total


class Mounted:
    def __init__(self, kind, image):
        self.kind, self.image = kind, image
        self.dir = image + ".mnt"

    def __enter__(self):
        os.makedirs(self.dir, exist_ok=True)
        if self.kind == "ntfs":
            sh("ntfs-3g", self.image, self.dir)
        else:
            sh("mount", "-o", "loop", self.image, self.dir)
        return self.dir

    def __exit__(self, *exc):
        sh("sync")
        for _ in range(50):
            if subprocess.run(["umount", self.dir]).returncode == 0:
                break
            time.sleep(0.1)
        os.rmdir(self.dir)


def files_of(kind, image):
    if kind == "fat32":
        out = sh("mdir", "-/", "-b", "-i", image, "::/").decode()
        return sorted(l for l in out.splitlines() if not l.endswith("/"))
    with Mounted(kind, image) as d:
        found = []
        for root, dirs, files in os.walk(d):
            dirs[:] = [x for x in dirs if x != "lost+found"]
            found += [os.path.join(root, f) for f in files]
        return sorted(found)


def delete_every(kind, image, nth, skip):
    if kind == "fat32":
        doomed = files_of(kind, image)[skip::nth]
        for i in range(0, len(doomed), 200):
            sh("mdel", "-i", image, *doomed[i:i + 200])
        return len(doomed)
    with Mounted(kind, image) as d:
        found = []
        for root, dirs, files in os.walk(d):
            dirs[:] = [x for x in dirs if x != "lost+found"]
            found += [os.path.join(root, f) for f in files]
        doomed = sorted(found)[skip::nth]
        for f in doomed:
            os.remove(f)
        return len(doomed)


def build(kind, image, mib):
    if kind == "ext4":
        sh("python3", os.path.join(HERE, "workload.py"), "build", image, str(mib))
    else:
        with open(image, "wb") as f:
            f.truncate(mib << 20)
        with tempfile.TemporaryDirectory(dir=os.path.dirname(image)) as stage:
            stage_files(stage, (mib << 20) * 6 // 10)
            if kind == "fat32":
                sh("mkfs.vfat", "-F", "32", image)
                sh("mcopy", "-s", "-i", image, *[os.path.join(stage, e) for e in os.listdir(stage)], "::/")
            else:
                sh("mkntfs", "-q", "-F", "-f", image)
                with Mounted(kind, image) as d:
                    for e in os.listdir(stage):
                        sh("cp", "-r", os.path.join(stage, e), d)
    delete_every(kind, image, 2, 0)


def main():
    work = os.path.abspath(sys.argv[1])
    strata = sys.argv[2] if len(sys.argv) > 2 else "strata"
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, RESTIC_PASSWORD="bench", BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
               BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
    results = []
    for kind, mib in [("ext4", 2048), ("fat32", 1024), ("ntfs", 1024)]:
        image = os.path.join(work, f"{kind}.img")
        print(f"building the aged {kind} disk ({mib} MiB)", file=sys.stderr)
        build(kind, image, mib)
        repos = {t: os.path.join(work, f"{kind}-{t}") for t in ["strata", "strata-all", "restic", "borg"]}
        for r in repos.values():
            shutil.rmtree(r, ignore_errors=True)
        sh(strata, "init", "--encryption", "none", repos["strata"])
        sh(strata, "init", "--encryption", "none", repos["strata-all"])
        sh("restic", "init", "-r", repos["restic"], env=env)
        sh("borg", "init", "-e", "none", repos["borg"], env=env)

        def run_all(step):
            for tool in ["strata", "strata-all", "restic", "borg"]:
                before = du(repos[tool])
                if tool.startswith("strata"):
                    args = [strata, "-r", repos[tool], "backup", "--json", "--force-read", "--source-id", kind]
                    if tool == "strata-all":
                        args.append("--all-blocks")
                    out, secs, rchar = measured(args + [image], env)
                    j = json.loads(out)
                    read, unused = j["bytes_read"], j["unused_bytes"]
                elif tool == "restic":
                    _, secs, rchar = measured(["restic", "-r", repos[tool], "backup", "-q", "--compression", "auto", image], env)
                    read, unused = rchar, 0
                else:
                    _, secs, rchar = measured(["borg", "create", "--compression", "zstd,3", f"{repos[tool]}::{step}", image],
                                             env)
                    read, unused = rchar, 0
                grown = du(repos[tool]) - before
                results.append({"disk": kind, "size": mib << 20, "step": step, "tool": tool, "bytes_read": read,
                                "used": (mib << 20) - unused if tool == "strata" else None,
                                "rchar": rchar, "seconds": round(secs, 2), "repo_growth": grown,
                                "unused_bytes": unused})
                print(f"{kind} {step} {tool}: read {read / 2**20:.0f} MiB, {secs:.2f} s, +{grown / 2**20:.1f} MiB",
                      file=sys.stderr)

        run_all("full")
        n = delete_every(kind, image, 3, 1)
        print(f"{kind}: deleted {n} more files", file=sys.stderr)
        run_all("after-deletions")
        for r in repos.values():
            shutil.rmtree(r, ignore_errors=True)
        os.remove(image)
    with open(os.path.join(work, "usedblocks.json"), "w") as f:
        json.dump(results, f, indent=1)
    names = {"strata": "Strata (used blocks)", "strata-all": "Strata --all-blocks", "restic": "restic", "borg": "borg"}
    print("| disk | step | tool | read | time | repository growth |")
    print("|---|---|---|---|---|---|")
    for r in results:
        disk = f"{r['disk']} ({r['size'] >> 20} MiB"
        if r["used"] is not None:
            disk += f", {100 * r['used'] / r['size']:.0f} % used"
        print(f"| {disk}) | {r['step']} | {names[r['tool']]} | "
              f"{r['bytes_read'] / 2**20:.0f} MiB | {r['seconds']:.2f} s | {r['repo_growth'] / 2**20:.1f} MiB |")


if __name__ == "__main__":
    main()
