#!/usr/bin/env python3
"""Strata against a real distributed object store on loopback: Garage.

Starts Garage clusters on 127.0.0.1 (one node; three nodes with replication factor 3), each with
a key and a bucket, and then:

  1. checks whether the store honours conditional puts (`If-None-Match: *`): Strata's locks
     do not need them (docs/DESIGN.md, "Object storage"), the figure says what the store does;
  2. measures a full backup, an incremental and a restore of the same disk image to a local
     directory, to the one-node store and to the three-node cluster (and restic to the same
     buckets with --others), each restore compared byte for byte;
  3. on each store, three "machines" (strata processes with their own caches): two back up
     different disks at once, then `forget --prune --retry-lock` starts while the third one's
     backup is in flight; every image reported stored is restored and compared, and
     `check --read-data` reads the repository;
  4. kills one node of the three in the middle of a backup, lets the backup finish or fail,
     restores every image the repository lists and compares it, restarts the node, and backs
     up once more;
  5. mirrors the local repository of (2) into each store with `copy --to` (the bucket made
     with `init --copy-keys-from`), backs up once more locally and copies again (only the new
     chunks travel), restores the newest image from the bucket and compares it; with --others,
     `restic copy` does the same from its local repository.

Usage: python3 examples/garage.py [--garage BIN] [--strata BIN] [--mib 1024] [--others]
                                  [--several-only | --copy-only] [--dir /var/tmp/strata-garage]
                                  [--json OUT]

Garage: `--garage`, else ../shared/bin/garage, else `garage` on PATH; install it with
`cargo install garage --locked --no-default-features --features bundled-libs,lmdb,sqlite`
(11-22 minutes on 2 cores).
"""

import argparse
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def find_garage(given):
    for candidate in [given, os.path.join(ROOT, "..", "shared", "bin", "garage"), shutil.which("garage")]:
        if candidate and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    sys.exit("no garage binary: pass --garage, or install it with "
             "`cargo install garage --locked --no-default-features --features bundled-libs,lmdb,sqlite`")


class Cluster:
    """Garage nodes on loopback ports 39N0 (S3), 39N1 (RPC), 39N3 (admin), N = first..first+n-1."""

    def __init__(self, garage, work, nodes, first):
        self.garage, self.work, self.numbers = garage, work, list(range(first, first + nodes))
        self.procs = {}
        self.secret = secrets.token_hex(32)
        self.replication = nodes

    def config(self, n):
        return os.path.join(self.work, f"n{n}.toml")

    def endpoint(self, n=None):
        return f"http://127.0.0.1:39{n or self.numbers[0]}0"

    def cli(self, *args, n=None):
        out = subprocess.run([self.garage, "-c", self.config(n or self.numbers[0]), *args],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"garage {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def start_node(self, n):
        log = open(os.path.join(self.work, f"n{n}.log"), "ab")
        self.procs[n] = subprocess.Popen([self.garage, "-c", self.config(n), "server"],
                                         stdout=log, stderr=log)

    def kill_node(self, n):
        self.procs[n].send_signal(signal.SIGKILL)
        self.procs[n].wait()

    def start(self):
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        for n in self.numbers:
            with open(self.config(n), "w") as f:
                f.write(f"""metadata_dir = "{self.work}/n{n}/meta"
data_dir = "{self.work}/n{n}/data"
db_engine = "sqlite"
replication_factor = {self.replication}
rpc_bind_addr = "127.0.0.1:39{n}1"
rpc_public_addr = "127.0.0.1:39{n}1"
rpc_secret = "{self.secret}"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:39{n}0"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:39{n}3"
""")
            self.start_node(n)
        ids = {}
        for n in self.numbers:
            for _ in range(100):
                try:
                    ids[n] = self.cli("node", "id", "-q", n=n).strip()
                    break
                except RuntimeError:
                    time.sleep(0.2)
            else:
                raise RuntimeError(f"garage node {n} did not start")
        for n in self.numbers[1:]:
            self.cli("node", "connect", ids[n])
        time.sleep(1)
        for n in self.numbers:
            self.cli("layout", "assign", "-z", "dc1", "-c", "1G", ids[n].split("@")[0])
        self.cli("layout", "apply", "--version", "1")
        key = self.cli("key", "create", "strata")
        self.key_id = re.search(r"Key ID:\s*(\S+)", key).group(1)
        self.key_secret = re.search(r"Secret key:\s*(\S+)", key).group(1)
        for bucket in ["strata", "restic", "probe"]:
            self.cli("bucket", "create", bucket)
            self.cli("bucket", "allow", "--read", "--write", "--owner", bucket, "--key", "strata")
        return self

    def env(self):
        e = dict(os.environ)
        e.update(AWS_ACCESS_KEY_ID=self.key_id, AWS_SECRET_ACCESS_KEY=self.key_secret,
                 AWS_DEFAULT_REGION="garage", STRATA_PASSWORD="garage demo", RESTIC_PASSWORD="garage demo")
        return e

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


def conditional_puts_honoured(cluster):
    """Whether a second `PUT` with `If-None-Match: *` on an existing key is refused."""
    import boto3
    s3 = boto3.client("s3", endpoint_url=cluster.endpoint(), aws_access_key_id=cluster.key_id,
                      aws_secret_access_key=cluster.key_secret, region_name="garage")
    s3.put_object(Bucket="probe", Key="lock", Body=b"first", IfNoneMatch="*")
    try:
        s3.put_object(Bucket="probe", Key="lock", Body=b"second", IfNoneMatch="*")
    except Exception:
        return True
    return False


def make_disk(path, mib, seed):
    """Half incompressible data, a quarter text-like records, a quarter zeros: `mib` MiB."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(4000)]
    with open(path, "wb") as f:
        for i in range(mib):
            if i % 4 < 2:
                f.write(rng.randbytes(1 << 20))
            elif i % 4 == 2:
                line = []
                size = 0
                while size < (1 << 20):
                    w = rng.choice(words) + b" "
                    line.append(w)
                    size += len(w)
                f.write(b"".join(line)[: 1 << 20])
            else:
                f.write(bytes(1 << 20))


def change_disk(path, mib, seed):
    """Rewrites 2 % of the disk's MiBs with new random data."""
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for _ in range(max(1, mib // 50)):
            f.seek(rng.randrange(mib) << 20)
            f.write(rng.randbytes(1 << 20))


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(8 << 20):
            h.update(b)
    return h.hexdigest()


def timed(cmd, env, check=True):
    t = time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return time.monotonic() - t, out


def strata_series(strata, repo, disk, mib, env, scratch):
    """init, full, incremental, restore (compared): seconds of each."""
    r = {}
    timed([strata, "init", repo], env)
    r["full"], _ = timed([strata, "-r", repo, "backup", "--source-id", "disk", disk], env)
    shutil.copyfile(disk, disk + ".day1")
    change_disk(disk + ".day1", mib, 1)
    r["incremental"], _ = timed([strata, "-r", repo, "backup", "--source-id", "disk", disk + ".day1"], env)
    r["restore"], r["restore_identical"] = restore_latest(strata, repo, disk + ".day1", env, scratch)
    os.remove(disk + ".day1")
    return r


def restore_latest(strata, repo, expected, env, scratch):
    """Restores the newest image of `repo`: seconds, and whether it equals the file `expected`."""
    target = os.path.join(scratch, "restored.img")
    if os.path.exists(target):
        os.remove(target)
    seconds, _ = timed([strata, "-r", repo, "restore", "latest", target], env)
    identical = sha(target) == sha(expected)
    os.remove(target)
    return seconds, identical


def restic_series(repo, disk, mib, env, scratch):
    r = {}
    timed(["restic", "-r", repo, "init"], env)
    r["full"], _ = timed(["restic", "-r", repo, "backup", "--host", "h", disk], env)
    shutil.copyfile(disk, disk + ".day1")
    change_disk(disk + ".day1", mib, 1)
    os.replace(disk, disk + ".orig")
    os.replace(disk + ".day1", disk)
    r["incremental"], _ = timed(["restic", "-r", repo, "backup", "--host", "h", disk], env)
    target = os.path.join(scratch, "restic-restore")
    shutil.rmtree(target, ignore_errors=True)
    r["restore"], _ = timed(["restic", "-r", repo, "restore", "latest", "--target", target], env)
    r["restore_identical"] = sha(os.path.join(target, disk.lstrip("/"))) == sha(disk)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(disk + ".orig", disk)
    return r


def node_failure(strata, cluster, disk, mib, scratch):
    """A backup with one of three nodes killed after `delay` seconds; then every listed image
    restores identically, the node comes back, and a backup succeeds."""
    env = cluster.env()
    repo = f"s3:{cluster.endpoint()}/strata/node-failure"
    timed([strata, "init", repo], env)
    timed([strata, "-r", repo, "backup", "--source-id", "disk", disk], env)
    changed = disk + ".changed"
    shutil.copyfile(disk, changed)
    change_disk(changed, mib, 7)
    expected = {sha(disk), sha(changed)}
    victim = cluster.numbers[-1]
    t = time.monotonic()
    backup = subprocess.Popen([strata, "-r", repo, "backup", "--force-read", "--source-id", "disk", changed],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    cluster.kill_node(victim)
    out, err = backup.communicate()
    r = {"backup_with_a_node_down_s": round(time.monotonic() - t, 2), "backup_succeeded": backup.returncode == 0,
         "backup_error": err.strip()[-300:] if backup.returncode else ""}
    _, listed = timed([strata, "-r", repo, "images", "--json"], env)
    images = json.loads(listed.stdout)
    ok = 0
    for i in images:
        target = os.path.join(scratch, "nf.img")
        if os.path.exists(target):
            os.remove(target)
        timed([strata, "-r", repo, "restore", i["image"], target], env)
        ok += sha(target) in expected
        os.remove(target)
    r["images_listed"] = len(images)
    r["images_restored_identical"] = ok
    cluster.start_node(victim)
    time.sleep(2)
    after, _ = timed([strata, "-r", repo, "backup", "--source-id", "disk", changed], env, check=False)
    r["backup_after_restart_s"] = round(after, 2)
    _, chk = timed([strata, "-r", repo, "check", "--read-data"], env, check=False)
    r["check_after_restart"] = "clean" if chk.returncode == 0 else chk.stdout.strip()[-300:]
    os.remove(changed)
    return r


def several_machines(strata, cluster, mib, scratch):
    """Two machines back up at once, then a forget --prune starts while a third machine's
    backup is in flight; every image reported stored restores identically afterwards."""
    repo = f"s3:{cluster.endpoint()}/strata/several"
    size = max(mib // 4, 16)
    disks = {}
    for name, seed in [("old", 11), ("a", 21), ("b", 22), ("c", 23)]:
        disks[name] = os.path.join(scratch, f"machine-{name}.img")
        make_disk(disks[name], size, seed)

    def env(machine):
        cache = os.path.join(scratch, f"cache-{machine}")
        shutil.rmtree(cache, ignore_errors=True)
        return dict(cluster.env(), XDG_CACHE_HOME=cache)

    envs = {m: env(m) for m in "abc"}
    timed([strata, "init", repo], envs["a"])
    timed([strata, "-r", repo, "backup", "--source-id", "old", disks["old"]], envs["a"])
    _, listed = timed([strata, "-r", repo, "images", "--json"], envs["a"])
    old_id = json.loads(listed.stdout)[0]["image"]

    def start(machine, args):
        return time.monotonic(), subprocess.Popen([strata, "-r", repo] + args, env=envs[machine],
                                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(started):
        t0, p = started
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(err.strip()[-300:])
        return t0, time.monotonic(), out

    backup = lambda m: ["backup", "--json", "--source-id", m, disks[m]]
    a, b = start("a", backup("a")), start("b", backup("b"))
    (a0, a1, a_out), (b0, b1, b_out) = finish(a), finish(b)
    r = {"disk_mib": size, "two_backups_s": round(max(a1, b1) - min(a0, b0), 2),
         "two_backups_overlap_s": round(max(0.0, min(a1, b1) - max(a0, b0)), 2)}
    stored = {"a": json.loads(a_out)["image"], "b": json.loads(b_out)["image"]}
    c = start("c", backup("c"))
    time.sleep(0.3)
    forget = start("a", ["forget", old_id, "--prune", "--retry-lock", "10m", "--json"])
    (c0, c1, c_out), (f0, f1, f_out) = finish(c), finish(forget)
    stored["c"] = json.loads(c_out)["image"]
    pruned = json.loads(f_out).get("prune") or {}
    r.update({"third_backup_s": round(c1 - c0, 2), "forget_prune_s": round(f1 - f0, 2),
              "forget_prune_waited_for_backup": f1 > c1, "bytes_freed": pruned.get("bytes_freed")})
    ok = 0
    for m, image in stored.items():
        target = os.path.join(scratch, "several.img")
        if os.path.exists(target):
            os.remove(target)
        timed([strata, "-r", repo, "restore", image, target], envs["b"])
        ok += sha(target) == sha(disks[m])
        os.remove(target)
    r["images_reported"] = len(stored)
    r["images_restored_identical"] = ok
    _, chk = timed([strata, "-r", repo, "check", "--read-data"], envs["c"], check=False)
    r["check"] = "clean" if chk.returncode == 0 else chk.stdout.strip()[-300:]
    for path in disks.values():
        os.remove(path)
    return r


def strata_copy(strata, local, mirror, disk, mib, env, scratch, seed):
    """`copy --to` a bucket made with `init --copy-keys-from` the local repository, twice (the
    second after one more local backup), then a restore from the bucket, compared."""
    r = {}
    env = dict(env, STRATA_PASSWORD2=env["STRATA_PASSWORD"])
    timed([strata, "init", mirror, "--copy-keys-from", local], env)
    r["first_copy"], out = timed([strata, "-r", local, "copy", "--to", mirror, "--json"], env)
    first = json.loads(out.stdout)
    r["first_chunks"], r["first_raw_bytes"] = first["chunks"], first["raw_bytes"]
    shutil.copyfile(disk, disk + ".day2")
    change_disk(disk + ".day2", mib, seed)
    timed([strata, "-r", local, "backup", "--source-id", "disk", disk + ".day2"], env)
    r["second_copy"], out = timed([strata, "-r", local, "copy", "--to", mirror, "--json"], env)
    second = json.loads(out.stdout)
    r["second_chunks"], r["second_raw_bytes"] = second["chunks"], second["raw_bytes"]
    r["restore"], r["restore_identical"] = restore_latest(strata, mirror, disk + ".day2", env, scratch)
    os.remove(disk + ".day2")
    return r


def restic_copy(local, mirror, env):
    """restic's equivalent: `init --from-repo --copy-chunker-params`, then `copy --from-repo`."""
    env = dict(env, RESTIC_FROM_PASSWORD=env["RESTIC_PASSWORD"])
    timed(["restic", "-r", mirror, "init", "--from-repo", local, "--copy-chunker-params"], env)
    seconds, _ = timed(["restic", "-r", mirror, "copy", "--from-repo", local], env)
    return {"copy": seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--garage")
    ap.add_argument("--strata", default=os.path.join(os.environ.get("STRATA_TARGET_DIR", os.path.join(ROOT, "target")), "release", "strata"))
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--dir", default="/var/tmp/strata-garage")
    ap.add_argument("--others", action="store_true", help="restic to the same stores")
    ap.add_argument("--several-only", action="store_true", help="only the several-machines scenario (3)")
    ap.add_argument("--copy-only", action="store_true", help="only the local series and the copies (2 local, 5)")
    ap.add_argument("--json")
    args = ap.parse_args()
    garage = find_garage(args.garage)
    strata = os.path.abspath(args.strata)
    os.makedirs(args.dir, exist_ok=True)
    disk = os.path.join(args.dir, "disk.img")
    make_disk(disk, args.mib, 42)
    results = {"mib": args.mib, "garage": subprocess.run([garage, "--version"], capture_output=True, text=True).stdout.strip()}

    env = dict(os.environ, STRATA_PASSWORD="garage demo", RESTIC_PASSWORD="garage demo")
    local = os.path.join(args.dir, "local-repo")
    shutil.rmtree(local, ignore_errors=True)
    if not args.several_only:
        results["local"] = {"strata": strata_series(strata, local, disk, args.mib, env, args.dir)}
    if args.others and not args.several_only:
        shutil.rmtree(local + "-restic", ignore_errors=True)
        results["local"]["restic"] = restic_series(local + "-restic", disk, args.mib, env, args.dir)
    if args.copy_only:
        # Local to local first: the copy's own cost, without a network store.
        for d in [local + "-mirror", local + "-restic-mirror"]:
            shutil.rmtree(d, ignore_errors=True)
        results["local"]["strata_copy"] = strata_copy(strata, local, local + "-mirror", disk, args.mib, env, args.dir, 2)
        if args.others:
            results["local"]["restic_copy"] = restic_copy(local + "-restic", local + "-restic-mirror", env)

    for name, nodes, first in [("one node", 1, 4), ("three nodes", 3, 1)]:
        cluster = Cluster(garage, os.path.join(args.dir, name.replace(" ", "-")), nodes, first).start()
        try:
            row = {"conditional_puts_honoured": conditional_puts_honoured(cluster)}
            results[name] = row
            if args.copy_only:
                # The local repository holds one more image after each store's copies: each
                # store gets a fresh bucket prefix and copies everything there is.
                row["strata_copy"] = strata_copy(strata, local, f"s3:{cluster.endpoint()}/strata/mirror", disk,
                                                 args.mib, cluster.env(), args.dir, 3 + nodes)
                if args.others:
                    row["restic_copy"] = restic_copy(local + "-restic", f"s3:{cluster.endpoint()}/restic/mirror",
                                                     dict(cluster.env(), RESTIC_PASSWORD="garage demo"))
                continue
            row["several_machines"] = several_machines(strata, cluster, args.mib, args.dir)
            if args.several_only:
                continue
            row["strata"] = strata_series(strata, f"s3:{cluster.endpoint()}/strata/repo", disk, args.mib,
                                          cluster.env(), args.dir)
            if args.others:
                row["restic"] = restic_series(f"s3:{cluster.endpoint()}/restic/repo", disk, args.mib,
                                              cluster.env(), args.dir)
            if nodes == 3:
                row["node_failure"] = node_failure(strata, cluster, disk, args.mib, args.dir)
        finally:
            cluster.stop()

    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
