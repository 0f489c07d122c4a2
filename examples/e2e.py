#!/usr/bin/env python3
"""End-to-end benchmark on the reference workload (docs/BENCHMARKS.md tells how to run it).

  e2e.py [--mib 2048] [--days 4] [--work DIR] [--strata PATH] [--others] [--avg-kib 16]
         [--image PATH] [--repeat 3] [--plot PNG] [--markdown MD]

Builds the ext4 image of examples/workload.py (or copies --image, any raw disk image, and ages
it with `workload.py any-day`), then measures, step by step on the same image:

  full · unchanged re-backup (really read: Strata --force-read, restic --force, borg with its
  files cache disabled) · one incremental per day, a differential on the last day · restore of
  the latest image (compared with the source in every used block: workload.py same) · check --read-data

for each tool: wall time, logical throughput, user and kernel CPU time, CPUs kept busy (CPU time
over wall time), peak RSS, repository size after the step,
and for each day the repository's growth against the 4 KiB blocks that changed that day. With
--others, restic (--compression auto) and borg (zstd,3, with its default chunker and with
`fixed,4194304`) run the same steps in the same run; restic and borg are installed from
Debian's packages when missing (as root), and so is python3-matplotlib for the plot. The target's
own write speed is measured beside the restores: `cp --sparse=always` of the source image to the
same directory followed by `sync` (the same data bytes and holes; Strata's restore ends with its
own fsync), as the "cp" row.

Before each step every tool gets the same start: dirty pages written back (`sync`) and the source
image in the page cache (for restore and check: the tool's repository). Restore and check,
which change nothing, run --repeat times (default 3) and the median run is reported. Prints
Markdown tables (all figures, the ratios Strata/other, the speed targets), writes them to
--markdown (default DIR/results.md), the raw figures to DIR/results.json, and a PNG plot to
--plot (default DIR/e2e.png).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MB = 1e6


def ensure_packages(packages):
    """Installs the Debian packages that are missing (dpkg -s, then apt-get install -y)."""
    missing = [p for p in packages
               if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return True
    if os.geteuid() != 0:
        print(f"missing Debian packages {' '.join(missing)} (run as root to install them)", file=sys.stderr)
        return False
    print(f"installing {' '.join(missing)} …", file=sys.stderr)
    ok = subprocess.run(["apt-get", "install", "-y", "-q"] + missing, capture_output=True).returncode == 0
    if not ok:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        ok = subprocess.run(["apt-get", "install", "-y", "-q"] + missing, capture_output=True).returncode == 0
    if not ok:
        print(f"could not install {' '.join(missing)}", file=sys.stderr)
    return ok


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
    """Runs cmd under /usr/bin/time; returns wall seconds, (user, kernel) CPU seconds, peak RSS
    bytes, stdout."""
    t = time.monotonic()
    p = subprocess.run(["/usr/bin/time", "-f", "%U %S %M"] + cmd, capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.monotonic() - t
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
    user, sys_, rss = p.stderr.strip().splitlines()[-1].split()
    return wall, (float(user), float(sys_)), int(rss) * 1024, p.stdout


def restored_equal(path, image):
    """Strata restores free blocks as zeros (used-block imaging): equal in every used block."""
    workload = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workload.py")
    same = subprocess.run(["python3", workload, "same", image, path], capture_output=True).returncode == 0
    if not same:
        sys.exit(f"restored {path} differs from {image} in a used block")
    return same


class Strata:
    name = "strata"

    def __init__(self, binary, repo, avg_kib=16, encryption="none"):
        self.bin, self.repo = binary, repo
        if encryption != "none":
            os.environ.setdefault("STRATA_PASSWORD", "e2e benchmark password")
        subprocess.run([binary, "init", repo, "--avg-chunk-kib", str(avg_kib), "--encryption", encryption],
                       check=True, capture_output=True)

    def backup(self, image, kind, read_unchanged=False):
        cmd = [self.bin, "-r", self.repo, "backup", "--json", "--kind", kind, "--source-id", "disk", image]
        if read_unchanged:
            cmd.append("--force-read")
        wall, cpu, rss, out = timed(cmd)
        return wall, cpu, rss, json.loads(out)

    def restore(self, image, work):
        target = os.path.join(work, "restored-strata.img")
        r = timed([self.bin, "-r", self.repo, "restore", "latest", target])
        restored_equal(target, image)
        os.remove(target)
        return r

    def check(self):
        return timed([self.bin, "-r", self.repo, "check", "--read-data"])


class Copy:
    """Not a backup tool: the target's own write speed, for the restore row only."""
    name = "cp"
    repo = None

    def restore(self, image, work):
        target = os.path.join(work, "restored-cp.img")
        r = timed(["sh", "-c", 'cp --sparse=always "$1" "$2" && sync', "cp", image, target])
        os.remove(target)
        return r


class Restic:
    name = "restic"

    def __init__(self, repo):
        self.repo = repo
        self.env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=repo, RESTIC_CACHE_DIR=repo + "-cache")
        subprocess.run(["restic", "init"], check=True, capture_output=True, env=self.env)

    def backup(self, image, kind, read_unchanged=False):
        d, n = os.path.split(os.path.abspath(image))
        # --force: restic otherwise skips a file whose metadata did not change.
        cmd = ["restic", "backup", "--compression", "auto", "--quiet", n] + (["--force"] if read_unchanged else [])
        wall, cpu, rss, _ = timed(cmd, self.env, d)
        return wall, cpu, rss, {}

    def restore(self, image, work):
        d = os.path.join(work, "restored-restic")
        shutil.rmtree(d, ignore_errors=True)
        r = timed(["restic", "restore", "latest", "--target", d], env=self.env)
        restored_equal(os.path.join(d, os.path.basename(image)), image)
        shutil.rmtree(d, ignore_errors=True)
        return r

    def check(self):
        return timed(["restic", "check", "--read-data"], env=self.env)


class Borg:
    def __init__(self, repo, chunker=None):
        self.repo, self.chunker = repo, chunker
        self.name = "borg" if chunker is None else f"borg {chunker}"
        self.env = dict(os.environ, BORG_PASSPHRASE="", BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                        BORG_BASE_DIR=repo + "-base")
        subprocess.run(["borg", "init", "--encryption", "none", repo], check=True, capture_output=True, env=self.env)
        self.n = 0

    def backup(self, image, kind, read_unchanged=False):
        self.n += 1
        d, n = os.path.split(os.path.abspath(image))
        cmd = ["borg", "create", "--compression", "zstd,3"]
        if self.chunker:
            cmd += ["--chunker-params", self.chunker]
        if read_unchanged:
            cmd += ["--files-cache", "disabled"]  # borg otherwise skips a file whose metadata did not change
        wall, cpu, rss, _ = timed(cmd + [f"{self.repo}::a{self.n}", n], self.env, d)
        return wall, cpu, rss, {}

    def restore(self, image, work):
        d = os.path.join(work, "restored-borg")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        r = timed(["borg", "extract", f"{self.repo}::a{self.n}"], self.env, d)
        restored_equal(os.path.join(d, os.path.basename(image)), image)
        shutil.rmtree(d, ignore_errors=True)
        return r

    def check(self):
        return timed(["borg", "check", "--verify-data", self.repo], self.env)


def fresh_start(image=None):
    """The same start for every tool and step: dirty pages written back, the source cached."""
    subprocess.run(["sync"])
    if image:
        subprocess.run(["cat", image], stdout=subprocess.DEVNULL)


def cached(path):
    """Reads every file under path into the page cache: restore and check start from a cached
    repository for every tool (Strata drops the pages of the packs it writes; the others keep
    them, so their repositories would otherwise be read from memory and Strata's from disk)."""
    for root, _, files in os.walk(path):
        for f in files:
            try:
                with open(os.path.join(root, f), "rb") as fh:
                    while fh.read(1 << 20):
                        pass
            except OSError:
                pass


def markdown(result):
    rows, tools = result["rows"], result["tools"]
    out = [f"Image: {result['image']}, {result['logical_bytes'] / 2**20:.0f} MiB, "
           f"{result['data_bytes'] / MB:.0f} MB allocated; {os.cpu_count()} cores.", ""]
    out.append("| tool | step | wall s | logical GB/s | user s | kernel s | CPUs | peak RSS MB | repo MB "
               "| growth MB | changed 4K blocks MB | growth / changed |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ch, g = r.get("changed_block_bytes"), r.get("repo_growth")
        repo = "" if r["repo_bytes"] is None else f"{r['repo_bytes'] / MB:.1f}"
        out.append(f"| {r['tool']} | {r['step']} | {r['seconds']:.2f} | {r['logical_bytes'] / r['seconds'] / 1e9:.2f} | "
                   f"{r['user_seconds']:.2f} | {r['sys_seconds']:.2f} | {r['cpu_seconds'] / r['seconds']:.2f} | "
                   f"{r['peak_rss'] / MB:.0f} | {repo} | "
                   f"{'' if g is None else f'{g / MB:.1f}'} | {'' if not ch else f'{ch / MB:.1f}'} | "
                   f"{'' if not ch or g is None else f'{g / ch:.2f}'} |")
    others = [t for t in tools if t not in ("strata", "cp")]
    if others:
        by = {(r["tool"], r["step"]): r for r in rows}
        steps = [r["step"] for r in rows if r["tool"] == "strata"]
        out += ["", "Ratios Strata / other tool (below 1: Strata is faster, or its repository grew less):", ""]
        out.append("| step | " + " | ".join(f"time vs {t}" for t in others) + " | "
                   + " | ".join(f"growth vs {t}" for t in others) + " |")
        out.append("|---|" + "---|" * (2 * len(others)))
        for s in steps:
            a = by[("strata", s)]
            times = [f"{a['seconds'] / by[(t, s)]['seconds']:.2f}" for t in others]
            growth = []
            for t in others:
                g, h = a.get("repo_growth"), by[(t, s)].get("repo_growth")
                # Only where data changed: an unchanged re-backup grows by metadata noise only.
                changed = s == "full" or a.get("changed_block_bytes")
                growth.append(f"{g / h:.2f}" if changed and g is not None and h and h > 0 else "")
            out.append(f"| {s} | " + " | ".join(times) + " | " + " | ".join(growth) + " |")
        finals = " · ".join(f"{t} {by[(t, steps[-1])]['repo_bytes'] / MB:.1f} MB" for t in tools)
        out += ["", f"Repository size at the end: {finals}."]
    out += targets(rows)
    return "\n".join(out) + "\n"


def targets(rows):
    """The speed targets of docs/BENCHMARKS.md, computed from the rows that were measured."""
    by = {(r["tool"], r["step"]): r for r in rows}
    out = ["", "| target | measured |", "|---|---|"]
    gbps = lambda r: r["logical_bytes"] / r["seconds"] / 1e9
    if ("strata", "unchanged (read)") in by:
        out.append(f"| unchanged disk re-read ≥ 4 GB/s | {gbps(by[('strata', 'unchanged (read)')]):.2f} GB/s |")
    days = [r for r in rows if r["tool"] == "strata" and r["step"].startswith("day ")]
    if days:
        out.append(f"| mostly unchanged disks (each day) | "
                   + ", ".join(f"{gbps(r):.2f}" for r in days) + " GB/s |")
    full = by.get(("strata", "full"))
    if full:
        out.append(f"| a full keeps ≥ 1.8 CPUs busy | {full['cpu_seconds'] / full['seconds']:.2f} CPUs |")
        for t in ("restic", "borg"):
            if (t, "full") in by:
                o = by[(t, "full")]
                out.append(f"| full vs {t}: time ≤ 0.5×, size ≤ 1× | {full['seconds'] / o['seconds']:.2f}× the time, "
                           f"{full['repo_bytes'] / o['repo_bytes']:.3f}× the size |")
    if ("strata", "restore latest") in by and ("cp", "restore latest") in by:
        a, c = by[("strata", "restore latest")], by[("cp", "restore latest")]
        out.append(f"| restore ≥ 90 % of the target's write speed (cp --sparse=always + sync) | "
                   f"{c['seconds'] / a['seconds'] * 100:.0f} % ({a['seconds']:.2f} s against {c['seconds']:.2f} s) |")
    return out if len(out) > 3 else []


def plot(result, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        # Debian's python3-matplotlib belongs to /usr/bin/python3, which may not be this Python.
        if sys.executable != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
            data = path + ".json"
            with open(data, "w") as f:
                json.dump(result, f)
            done = subprocess.run(["/usr/bin/python3", __file__, "--plot-from", data, "--plot", path]).returncode == 0
            os.remove(data)
            return done
        print("no matplotlib: plot skipped (apt-get install python3-matplotlib)", file=sys.stderr)
        return False
    rows, tools = result["rows"], result["tools"]
    backups = [r["step"] for r in rows if r["tool"] == "strata" and r.get("repo_growth") is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for t in tools:
        sizes = [next(r["repo_bytes"] for r in rows if r["tool"] == t and r["step"] == s) / MB for s in backups]
        left.plot(range(len(backups)), sizes, marker="o", label=t)
    left.set_xticks(range(len(backups)))
    left.set_xticklabels([s.replace(" (read)", "") for s in backups], rotation=30, ha="right")
    left.set_ylabel("repository size, MB")
    left.set_title("Repository size after each backup")
    left.legend()
    left.grid(alpha=0.3)
    ops = ["full", "unchanged (read)", "incremental (mean)", "restore latest", "check --read-data"]

    def throughput(t, op):
        if op == "incremental (mean)":
            rs = [r for r in rows if r["tool"] == t and r["step"].startswith("day ")]
        else:
            rs = [r for r in rows if r["tool"] == t and r["step"] == op]
        return sum(r["logical_bytes"] / r["seconds"] / 1e9 for r in rs) / len(rs) if rs else 0

    width = 0.8 / len(tools)
    for i, t in enumerate(tools):
        right.bar([k + i * width for k in range(len(ops))], [throughput(t, op) for op in ops], width, label=t)
    right.set_xticks([k + 0.4 - width / 2 for k in range(len(ops))])
    right.set_xticklabels(ops, rotation=20, ha="right")
    right.set_ylabel("logical GB/s (disk size / wall time)")
    right.set_title("Throughput per operation (higher is better)")
    right.legend(fontsize=8, loc="upper left")
    right.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{result['image']}: {result['logical_bytes'] / 2**20:.0f} MiB, "
                 f"{result['data_bytes'] / MB:.0f} MB allocated, {os.cpu_count()} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=2048, help="size of the generated ext4 image")
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--work", default="e2e-work")
    ap.add_argument("--strata", default=None)
    ap.add_argument("--others", action="store_true", help="restic and borg side by side")
    ap.add_argument("--avg-kib", type=int, default=16, help="Strata's average chunk size (init --avg-chunk-kib)")
    ap.add_argument("--encryption", choices=["none", "repokey"], default="none",
                    help="Strata's init --encryption (repokey: the password is STRATA_PASSWORD, or a fixed one)")
    ap.add_argument("--image", default=None, help="any raw disk image instead of the generated one (copied)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of restore and check; the median is reported")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--plot-from", default=None, help=argparse.SUPPRESS)  # results JSON: only plot
    a = ap.parse_args()
    if a.plot_from:
        with open(a.plot_from) as f:
            sys.exit(0 if plot(json.load(f), a.plot) else 1)
    binary = a.strata or os.path.join(os.environ.get("STRATA_TARGET_DIR", "target"), "release", "strata")
    if not os.access(binary, os.X_OK):
        sys.exit(f"no Strata binary at {binary}: cargo build --release (or --strata PATH)")
    if a.others and not ensure_packages(["restic", "borgbackup"]):
        sys.exit("restic and borg are needed for --others")
    ensure_packages(["python3-matplotlib"])
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    image = os.path.join(a.work, "disk.img")
    if a.image:
        subprocess.run(["cp", "--sparse=always", a.image, image], check=True)
        day_cmd = "any-day"
    else:
        subprocess.run([sys.executable, os.path.join(HERE, "workload.py"), "build", image, str(a.mib)], check=True)
        day_cmd = "day"
    time.sleep(1.2)  # let the image's stat age (see DESIGN.md, unchanged image files)
    logical = os.path.getsize(image)
    tools = [Strata(binary, os.path.join(a.work, "strata-repo"), a.avg_kib, a.encryption)]
    if a.others:
        tools += [Restic(os.path.join(a.work, "restic-repo")), Borg(os.path.join(a.work, "borg-repo")),
                  Borg(os.path.join(a.work, "borg-fixed-repo"), "fixed,4194304")]
    rows = []

    def record(t, step, wall, cpu, rss, **extra):
        rows.append(dict({"tool": t.name, "step": step, "seconds": wall, "cpu_seconds": cpu[0] + cpu[1],
                          "user_seconds": cpu[0], "sys_seconds": cpu[1], "peak_rss": rss,
                          "logical_bytes": logical, "repo_bytes": t.repo and du(t.repo)}, **extra))
        print(f"{t.name:>20} {step:<24} {wall:7.2f} s", file=sys.stderr)

    def backup_step(label, kind, changed=None, read_unchanged=False):
        for t in tools:
            fresh_start(image)
            before = du(t.repo)
            wall, cpu, rss, info = t.backup(image, kind, read_unchanged)
            after = du(t.repo)
            record(t, label, wall, cpu, rss, repo_growth=after - before, changed_block_bytes=changed,
                   new_stored_bytes=info.get("new_stored_bytes"))

    backup_step("full", "full")
    backup_step("unchanged (read)", "incremental", read_unchanged=True)
    for d in range(1, a.days + 1):
        out = subprocess.run([sys.executable, os.path.join(HERE, "workload.py"), day_cmd, image, str(d)],
                             check=True, capture_output=True, text=True).stdout
        changed = json.loads(out.strip().splitlines()[-1])["changed_bytes"]
        time.sleep(1.2)
        kind = "differential" if d == a.days and a.days > 1 else "incremental"
        backup_step(f"day {d} {kind}", kind, changed)
    def median_of(t, run):
        """The run with the median wall time of --repeat runs (restore and check change nothing)."""
        runs = []
        for _ in range(a.repeat):
            fresh_start(image if t.repo is None else None)
            if t.repo:
                cached(t.repo)
            runs.append(run()[:3])
        return sorted(runs, key=lambda r: r[0])[len(runs) // 2]

    for t in tools + [Copy()]:
        record(t, "restore latest", *median_of(t, lambda: t.restore(image, a.work)))
    for t in tools:
        record(t, "check --read-data", *median_of(t, t.check))

    result = {"image": a.image or f"workload.py ext4", "logical_bytes": logical,
              "data_bytes": os.stat(image).st_blocks * 512, "tools": [t.name for t in tools], "rows": rows}
    with open(os.path.join(a.work, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    md = markdown(result)
    with open(a.markdown or os.path.join(a.work, "results.md"), "w") as f:
        f.write(md)
    print("\n" + md)
    png = a.plot or os.path.join(a.work, "e2e.png")
    if plot(result, png):
        print(f"plot: {png}")


if __name__ == "__main__":
    main()
