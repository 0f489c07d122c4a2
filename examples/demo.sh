#!/usr/bin/env bash
# The README's first command. Installs what is missing, builds Strata, then does the main job on
# a real ext4 disk image (made with mkfs.ext4 -d from this machine's files, changed in place with
# debugfs -w and 4 KiB page rewrites): a job file whose scheme makes a full, incrementals and a
# differential as simulated days pass (STRATA_NOW), restores checked (e2fsck, every file), and what each
# image cost.
#
# Environment: STRATA_DEMO_DIR (default ./demo-work), STRATA_DEMO_MIB (disk size, default 2048).
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/setup

cargo build --release --quiet
strata="$STRATA_TARGET_DIR/release/strata"
work="${STRATA_DEMO_DIR:-demo-work}"
size="${STRATA_DEMO_MIB:-2048}"
rm -rf "$work" && mkdir -p "$work"
disk="$work/disk.img" repo="$work/repo"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
day() { python3 examples/workload.py day "$disk" "$1"; }

step "build a ${size} MiB ext4 image from real files (mkfs.ext4 -d)"
python3 examples/workload.py build "$disk" "$size"
ls -ls "$disk"
# A file changed less than a second before a backup is always read by the next one (its times
# may not show a change made within the same clock tick); let the fresh image age past that.
sleep 1.2

step "strata init: encrypted (the default), its key sealed by a password kept in a file only you read"
(umask 077 && head -c 24 /dev/urandom | base64 > "$work/password")
"$strata" init "$repo" --password-file "$work/password"
"$strata" -r "$repo" --password-file "$work/password" key list
# The commands below take the password from STRATA_PASSWORD (also: --password-file,
# --password-command, or a prompt on a terminal); the job file names its own password_file.
STRATA_PASSWORD=$(cat "$work/password")
export STRATA_PASSWORD

step "a job file: what to back up, where, when each kind is due, what to keep"
export STRATA_CONFIG_DIR="$work/config"
mkdir -p "$STRATA_CONFIG_DIR/jobs"
cat > "$STRATA_CONFIG_DIR/jobs/system-disk.toml" <<TOML
repository = "$repo"
source = "$disk"
source_id = "system-disk"
password_file = "$work/password"
comment = "the demo's ext4 disk"

[scheme]                  # systemd calendar expressions
full = "monthly"          # a new set on the 1st of each month
differential = "weekly"   # on Mondays: everything since the full
incremental = "daily"     # other days: everything since the last image

[retention]
keep_sets = 2             # Macrium's "keep two full image sets"
prune = true

[verify]
after_backup = "image"    # read back every chunk of the new image
TOML
cat "$STRATA_CONFIG_DIR/jobs/system-disk.toml"
# STRATA_NOW plays the calendar forward (a timer would run the job each night at its time).
run() { STRATA_NOW="$1T02:00:00Z" "$strata" run system-disk; }

step "Mon 2027-03-01: strata run system-disk (no set yet: the scheme makes a full)"
run 2027-03-01
cp --sparse=always "$disk" "$work/day0.img"

step "Mon 2027-03-01, again: nothing changed, so the incremental is recorded without reading"
STRATA_NOW="2027-03-01T03:00:00Z" "$strata" run system-disk

for d in 2 3; do
  step "2027-03-0$d: change the disk in place (debugfs -w, page rewrites), then strata run"
  day "$d"
  run "2027-03-0$d"
done
cp --sparse=always "$disk" "$work/day3.img"

step "Mon 2027-03-08: change again; a Monday, so the scheme makes a differential"
day 4
run 2027-03-08

step "Tue 2027-03-09: an incremental on top of the differential"
day 5
run 2027-03-09

step "strata jobs: the last run and what is due next"
STRATA_NOW="2027-03-09T12:00:00Z" "$strata" jobs

step "strata images"
"$strata" -r "$repo" images

step "restore the latest image and two older ones: identical in every block the filesystem uses"
# Strata reads only the blocks ext4 uses (free blocks come back as zeros, as Macrium's
# intelligent sector copy; --all-blocks reads every block): so each restore is checked by
# e2fsck and every file in it compared with the disk's on that day.
same() { # same DISK RESTORED LABEL
  e2fsck -fn "$2" > /dev/null 2>&1 || { echo "$3: e2fsck found errors"; exit 1; }
  rm -rf "$work/files-a" "$work/files-b" && mkdir "$work/files-a" "$work/files-b"
  debugfs -R "rdump / $work/files-a" "$1" > /dev/null 2>&1
  debugfs -R "rdump / $work/files-b" "$2" > /dev/null 2>&1
  diff -r "$work/files-a" "$work/files-b" > /dev/null || { echo "$3: files differ"; exit 1; }
  echo "$3: e2fsck clean, all $(find "$work/files-a" -type f | wc -l) files identical"
  rm -rf "$work/files-a" "$work/files-b"
}
"$strata" -r "$repo" restore latest "$work/restored.img"
same "$disk" "$work/restored.img" "latest"
first=$("$strata" -r "$repo" images --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["image"])')
"$strata" -r "$repo" restore "$first" "$work/restored.img"
same "$work/day0.img" "$work/restored.img" "day 0 full"
day3=$("$strata" -r "$repo" images --json | python3 -c 'import json,sys; print([i for i in json.load(sys.stdin) if i["created"].startswith("2027-03-03")][0]["image"])')
"$strata" -r "$repo" restore "$day3" "$work/restored.img"
same "$work/day3.img" "$work/restored.img" "2027-03-03 incremental"
rm -f "$work/restored.img" "$work/day0.img" "$work/day3.img"

step "prove it: strata check --read-data (every chunk decoded and re-hashed)"
"$strata" -r "$repo" check --read-data | tail -3

step "what it cost: strata stats"
"$strata" -r "$repo" stats

step "what forgetting would do: keep the last 3 images (dry run; the full under them stays)"
"$strata" -r "$repo" forget --keep-last 3 --dry-run
du -sh --apparent-size "$disk" | sed 's/\t/  disk (apparent): /'
du -sh "$disk" | sed 's/\t/  disk (allocated): /'
du -sh "$repo" | sed 's/\t/  repository with all images: /'
echo "demo done; files are in $work"
