#!/usr/bin/env python3
"""The reference workload of the brief: a real ext4 disk image, aged day by day.

  workload.py build IMAGE SIZE_MIB     make IMAGE: ext4 via `mkfs.ext4 -d` from real files of
                                       this machine (libraries, documentation, a JVM) plus a few
                                       large "database" files, filled to about 60 %
  workload.py day IMAGE N              change IMAGE in place as on day N: files removed and new
                                       files written through ext4's own allocator (`debugfs -w`),
                                       and scattered 4 KiB page rewrites inside the database
                                       files; prints a JSON line with the 4 KiB blocks that changed
  workload.py text IMAGE SIZE_MIB      make IMAGE: the text-heavy image of docs/BENCHMARKS.md, ext4
                                       via `mkfs.ext4 -d` from this machine's C headers
                                       (/usr/include), its documentation without the gzipped
                                       files (/usr/share/doc) and its Python sources (*.py of
                                       /usr/lib/python3*), up to 45 % of SIZE_MIB; compresses
                                       about 6x with zstd
  workload.py any-day IMAGE N          the same kinds of change for any disk image (one this
                                       script did not build, any filesystem): a run of new file
                                       content (0.5 % of the disk) and scattered 4 KiB rewrites
                                       (0.4 %) inside allocated areas; same JSON line
  workload.py same SOURCE RESTORED     exit 0 when RESTORED is SOURCE as a used-block image
                                       restores it: every 4 KiB block equal, or all zeros in
                                       RESTORED (a free block Strata did not read); for ext2/3/4
                                       also `e2fsck -fn` clean and every file equal (debugfs
                                       rdump); prints a JSON line

Deterministic for a given machine and N (seeded), so reruns and comparisons see the same days.
Only the Python standard library, e2fsprogs and coreutils are used.
"""

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

BLOCK = 4096
# Real content, in order of preference; whatever exists on the machine is used.
SOURCES = [
    "/usr/lib/jvm",
    "/usr/share/doc",
    "/usr/lib/gcc",
    "/usr/lib/python3.11",
    "/usr/share/locale",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/share",
    "/usr/lib",
    "/usr/bin",
]
DB_FILES = 4


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def regular_files(roots):
    """(path, size) of the regular files under each (root, wanted) of roots whose name is wanted,
    in a stable order (directories and names sorted); missing roots are skipped."""
    for root, wanted in roots:
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                p = os.path.join(dirpath, name)
                if wanted(name) and os.path.isfile(p) and not os.path.islink(p):
                    yield p, os.path.getsize(p)


def real_files(limit_bytes, rng=None, skip=()):
    """Regular files from SOURCES, in a stable order (or shuffled with rng), up to limit_bytes."""
    picked, total = [], 0
    for p, size in regular_files((root, lambda name: True) for root in SOURCES):
        if p in skip or size == 0 or size > 256 << 20:
            continue
        if total + size > limit_bytes:
            return picked
        picked.append(p)
        total += size
    return picked


def build(image, size_mib):
    size = size_mib << 20
    stage = tempfile.mkdtemp(prefix="strata-stage-")
    try:
        fill = int(size * 0.55)
        db_size = max(size // 40, 1 << 20) // BLOCK * BLOCK
        files = real_files(fill - DB_FILES * db_size)
        listing = []
        for p in files:
            dest = os.path.join(stage, "root", p.lstrip("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            try:
                os.link(p, dest)
            except OSError:
                shutil.copy2(p, dest)
            listing.append("/root/" + p.lstrip("/"))
        # Database files: real bytes (libraries and docs), later rewritten page by page.
        os.makedirs(os.path.join(stage, "db"))
        src = iter(real_files(1 << 40))
        for i in range(DB_FILES):
            with open(os.path.join(stage, "db", f"db{i}.bin"), "wb") as out:
                while out.tell() < db_size:
                    with open(next(src), "rb") as f:
                        out.write(f.read(db_size - out.tell()))
        if os.path.exists(image):
            os.remove(image)
        run("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", stage, image, f"{size_mib}M")
        with open(image + ".files.json", "w") as f:
            json.dump({"files": listing, "day": 0}, f)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# The text-heavy image: (directory, which files), in this order.
TEXT_SOURCES = [
    ("/usr/include", lambda name: True),
    ("/usr/share/doc", lambda name: not name.endswith(".gz")),
    ("/usr/lib/python3", lambda name: name.endswith(".py")),
    ("/usr/lib/python3.11", lambda name: name.endswith(".py")),
]


def build_text(image, size_mib):
    """Text files only (headers, documentation, Python sources), up to 45 % of the disk."""
    limit, total = int((size_mib << 20) * 0.45), 0
    stage = tempfile.mkdtemp(prefix="strata-text-")
    try:
        for p, size in regular_files(TEXT_SOURCES):
            if total + size > limit:
                continue
            dest = os.path.join(stage, p.lstrip("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(p, dest)
            total += size
        if os.path.exists(image):
            os.remove(image)
        run("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", stage, image, f"{size_mib}M")
        print(json.dumps({"image": image, "text_bytes": total}))
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def file_blocks(image, path):
    """Physical 4 KiB data blocks of a file inside the image: the leaves of its extent tree
    (`debugfs ex`), without the tree's own index blocks and without unwritten extents."""
    out = run("debugfs", "-R", f"ex {path}", image).stdout.decode()
    blocks = []
    for line in out.splitlines():
        m = re.match(r"\s*(\d+)/\s*(\d+)\s+\d+/\s*\d+\s+\d+\s*-\s*\d+\s+(\d+)\s*-\s*(\d+)\s+\d+\s*(.*)$", line)
        if m and m.group(1) == m.group(2) and "Uninit" not in m.group(5):
            blocks += range(int(m.group(3)), int(m.group(4)) + 1)
    return blocks


def changed_blocks(before, after):
    n = 0
    with open(before, "rb") as a, open(after, "rb") as b:
        while True:
            x, y = a.read(1 << 20), b.read(1 << 20)
            if not x and not y:
                return n
            if x != y:
                for i in range(0, max(len(x), len(y)), BLOCK):
                    n += x[i:i + BLOCK] != y[i:i + BLOCK]


def day(image, n):
    rng = random.Random(n * 7919)
    state_path = image + ".files.json"
    with open(state_path) as f:
        state = json.load(f)
    before = image + ".before"
    run("cp", "--sparse=always", image, before)
    try:
        cmds = []
        # Files removed: their blocks are freed, not zeroed, as on a real disk.
        victims = rng.sample(state["files"], min(40, len(state["files"]) // 10))
        for v in victims:
            cmds.append(f'rm "{v}"')
            state["files"].remove(v)
        # New files written through ext4's allocator (about 0.5 % of the disk).
        size = os.path.getsize(image)
        pool = real_files(1 << 40)
        rng.shuffle(pool)
        added, budget = 0, size // 200
        cmds.append(f"mkdir /day{n}")
        for i, p in enumerate(pool):
            if added >= budget:
                break
            s = os.path.getsize(p)
            if s > budget // 2:
                continue
            dest = f"/day{n}/f{i}_{os.path.basename(p)}"
            cmds.append(f'write "{p}" "{dest}"')
            state["files"].append(dest)
            added += s
        with tempfile.NamedTemporaryFile("w", suffix=".cmds", delete=False) as cf:
            cf.write("\n".join(cmds) + "\n")
        try:
            run("debugfs", "-w", "-f", cf.name, image)
        finally:
            os.unlink(cf.name)
        # Scattered page rewrites inside the database files (about 0.4 % of the disk): half new
        # random pages, half pages of real content, as a database would write them.
        blocks = []
        for i in range(DB_FILES):
            blocks += file_blocks(image, f"/db/db{i}.bin")
        pages = rng.sample(blocks, min(len(blocks), max(1, size // 250 // BLOCK)))
        donors = [p for p in pool[:200] if os.path.getsize(p) >= BLOCK]
        with open(image, "r+b") as img:
            for b in pages:
                if rng.random() < 0.5 or not donors:
                    data = rng.randbytes(BLOCK)
                else:
                    with open(rng.choice(donors), "rb") as d:
                        d.seek(rng.randrange(0, os.path.getsize(d.name) - BLOCK + 1))
                        data = d.read(BLOCK)
                img.seek(b * BLOCK)
                img.write(data)
        changed = changed_blocks(before, image)
    finally:
        os.remove(before)
    state["day"] = n
    with open(state_path, "w") as f:
        json.dump(state, f)
    run("e2fsck", "-fn", image)  # the image stays a valid filesystem
    print(json.dumps({"day": n, "changed_blocks": changed, "changed_bytes": changed * BLOCK,
                      "files_removed": len(victims), "bytes_added": added, "pages_rewritten": len(pages)}))


def any_day(image, n):
    """Changes for an image of unknown layout: written in place, only where data is allocated
    (so a sparse image stays sparse), 4 KiB aligned, as a filesystem would write."""
    rng = random.Random(n * 104729)
    size = os.path.getsize(image)
    before = image + ".before"
    run("cp", "--sparse=always", image, before)
    try:
        fd = os.open(image, os.O_RDWR)
        try:
            extents, off = [], 0
            while off < size:  # allocated ranges, from SEEK_DATA/SEEK_HOLE
                try:
                    start = os.lseek(fd, off, os.SEEK_DATA)
                except OSError:
                    break
                end = os.lseek(fd, start, os.SEEK_HOLE)
                first, last = -(-start // BLOCK), end // BLOCK
                if last > first:
                    extents.append((first, last))
                off = end
            blocks = sum(b - a for a, b in extents)
            if not blocks:
                sys.exit(f"{image} has no allocated 4 KiB block to change")

            def nth_block(i):
                for a, b in extents:
                    if i < b - a:
                        return a + i
                    i -= b - a
                return extents[-1][1] - 1

            # New file content: real files of this machine, written over one run of blocks.
            pool = real_files(1 << 40)
            rng.shuffle(pool)
            run_blocks = min(blocks, max(1, size // 200 // BLOCK))
            first = rng.randrange(0, blocks - run_blocks + 1)
            data = bytearray()
            for p in pool:
                if len(data) >= run_blocks * BLOCK:
                    break
                with open(p, "rb") as f:
                    data += f.read(run_blocks * BLOCK - len(data))
            data = bytes(data.ljust(run_blocks * BLOCK, b"\0"))
            for i in range(run_blocks):  # the next allocated blocks, in order
                os.pwrite(fd, data[i * BLOCK:(i + 1) * BLOCK], nth_block(first + i) * BLOCK)
            # Scattered rewrites: half new random pages, half copies of other pages of the disk.
            pages = rng.sample(range(blocks), min(blocks, max(1, size // 250 // BLOCK)))
            for i in pages:
                if rng.random() < 0.5:
                    page = rng.randbytes(BLOCK)
                else:
                    page = os.pread(fd, BLOCK, nth_block(rng.randrange(blocks)) * BLOCK)
                os.pwrite(fd, page.ljust(BLOCK, b"\0"), nth_block(i) * BLOCK)
        finally:
            os.close(fd)
        changed = changed_blocks(before, image)
    finally:
        os.remove(before)
    print(json.dumps({"day": n, "changed_blocks": changed, "changed_bytes": changed * BLOCK,
                      "run_blocks": run_blocks, "pages_rewritten": len(pages)}))


def same(source, restored):
    """Whether restored is source as a used-block restore gives it back (see the usage)."""
    zeroed = 0
    same_bytes = True
    zero = bytes(BLOCK)
    with open(source, "rb") as a, open(restored, "rb") as b:
        while True:
            x, y = a.read(1 << 20), b.read(1 << 20)
            if len(x) != len(y):
                same_bytes = False
                break
            if not x:
                break
            if x == y:
                continue
            for i in range(0, len(x), BLOCK):
                if x[i:i + BLOCK] != y[i:i + BLOCK]:
                    if y[i:i + BLOCK] == zero[:len(y[i:i + BLOCK])]:
                        zeroed += 1
                    else:
                        same_bytes = False
    ok = same_bytes
    with open(source, "rb") as f:
        f.seek(1024 + 56)
        is_ext = f.read(2) == b"\x53\xef"
    if ok and zeroed and is_ext:
        ok = subprocess.run(["e2fsck", "-fn", restored], capture_output=True).returncode == 0
        with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(restored))) as t:
            da, db = os.path.join(t, "a"), os.path.join(t, "b")
            os.mkdir(da)
            os.mkdir(db)
            run("debugfs", "-R", f"rdump / {da}", source)
            run("debugfs", "-R", f"rdump / {db}", restored)
            ok = ok and subprocess.run(["diff", "-r", da, db], capture_output=True).returncode == 0
    print(json.dumps({"identical_in_used_blocks": ok, "zeroed_free_blocks": zeroed}))
    return ok


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "same":
        sys.exit(0 if same(sys.argv[2], sys.argv[3]) else 1)
    if len(sys.argv) == 4 and sys.argv[1] == "build":
        build(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 4 and sys.argv[1] == "text":
        build_text(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 4 and sys.argv[1] == "day":
        day(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 4 and sys.argv[1] == "any-day":
        any_day(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
