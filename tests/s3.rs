//! Repositories in an S3 bucket: several machines (processes with their own caches) share one,
//! the cache follows the bucket, backups share it at once while other writers run alone. These need an
//! S3 server: `.ci/test` starts moto and sets STRATA_TEST_S3 for them; without it they fail
//! rather than pass unchecked.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{assert_clean_failure, bucket, strata_cmd, Disk, TestRepo};
use strata::storage::Backend;
use strata::KindRequest;

const MIB: usize = 1 << 20;

/// A repository in the test bucket (an S3 run only).
fn bucket_repo() -> TestRepo {
    assert!(
        common::s3_base().is_some(),
        "needs an S3 server: STRATA_TEST_S3=http://HOST:PORT/BUCKET (.ci/test starts one)"
    );
    TestRepo::small()
}

/// One machine: the strata binary with a cache directory of its own.
struct Machine {
    cache: PathBuf,
}

impl Machine {
    fn new(repo: &TestRepo, name: &str) -> Machine {
        Machine { cache: repo.file(&format!("cache-{name}")) }
    }

    /// The strata binary as this machine runs it on `repo`.
    fn command(&self, repo: &TestRepo, args: &[&str]) -> std::process::Command {
        let mut c = strata_cmd();
        c.env("XDG_CACHE_HOME", &self.cache).arg("-r").arg(&repo.path).args(args);
        c
    }

    fn run(&self, repo: &TestRepo, args: &[&str]) -> Output {
        self.command(repo, args).output().expect("run strata")
    }

    /// Started, its output captured.
    fn spawn(&self, mut command: std::process::Command) -> std::process::Child {
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawn strata")
    }

    fn ok(&self, repo: &TestRepo, args: &[&str]) -> String {
        let out = self.run(repo, args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn images(&self, repo: &TestRepo) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(repo, &["images", "--json"])).expect("images --json")
    }

    fn restore(&self, repo: &TestRepo, id: &str, to: &Path) -> Vec<u8> {
        self.ok(repo, &["restore", id, to.to_str().unwrap()]);
        std::fs::read(to).expect("read restored")
    }
}

/// `disk.img` beside `repo`: `len` random bytes from `seed`.
fn random_disk(repo: &TestRepo, seed: u64, len: usize) -> (Disk, PathBuf) {
    let disk = Disk::new(seed, len).random(0..len);
    let src = repo.file("disk.img");
    disk.write_to(&src);
    (disk, src)
}

fn image_ids(images: &[serde_json::Value]) -> Vec<String> {
    images.iter().map(|i| i["image"].as_str().expect("image").to_string()).collect()
}

#[test]
fn two_machines_back_up_into_one_bucket_and_each_restores_the_others_images() {
    let repo = bucket_repo();
    let (a, b) = (Machine::new(&repo, "a"), Machine::new(&repo, "b"));
    // 4 MiB of which A changes the first half MiB and B the last: 3 MiB in common.
    let shared = Disk::new(7, 4 * MIB).random(0..4 * MIB);
    let disk_a = shared.clone().text(0..MIB / 2);
    let disk_b = shared.clone().random(4 * MIB - MIB / 2..4 * MIB);
    let (src_a, src_b) = (repo.file("a.img"), repo.file("b.img"));
    disk_a.write_to(&src_a);
    disk_b.write_to(&src_b);

    a.ok(&repo, &["backup", "--source-id", "a", src_a.to_str().unwrap()]);
    // B's cache does not exist yet: it is built from the bucket, and A's data is deduplicated.
    let said = b.ok(&repo, &["backup", "--json", "--source-id", "b", src_b.to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_str(&said).expect("backup --json");
    let new_bytes = report["new_raw_bytes"].as_u64().expect("new_raw_bytes");
    assert!(new_bytes < (MIB + MIB / 2) as u64, "B stored {new_bytes} new bytes of a disk that shares 3 MiB with A's");

    // A's cache is behind the bucket now: A sees B's image and restores it, and the reverse.
    let seen_by_a = image_ids(&a.images(&repo));
    let seen_by_b = image_ids(&b.images(&repo));
    assert_eq!(seen_by_a.len(), 2);
    assert_eq!(seen_by_a, seen_by_b);
    let by_source: HashMap<String, String> = a
        .images(&repo)
        .iter()
        .map(|i| (i["source"].as_str().unwrap().to_string(), i["image"].as_str().unwrap().to_string()))
        .collect();
    assert!(
        a.restore(&repo, &by_source["b"], &repo.file("b-by-a.img")) == disk_b.bytes,
        "A restores B's image wrongly"
    );
    assert!(
        b.restore(&repo, &by_source["a"], &repo.file("a-by-b.img")) == disk_a.bytes,
        "B restores A's image wrongly"
    );

    // An incremental on each side builds on the other's state, and check agrees on both.
    disk_b.clone().text(0..200_000).write_to(&src_b);
    a.ok(&repo, &["backup", "--source-id", "b", src_b.to_str().unwrap()]);
    b.ok(&repo, &["check", "--read-data"]);
    a.ok(&repo, &["check", "--read-data"]);
    assert_eq!(image_ids(&b.images(&repo)).len(), 3);
}

#[test]
fn a_lost_or_outdated_cache_is_rebuilt_from_the_bucket() {
    let repo = bucket_repo();
    let (a, b) = (Machine::new(&repo, "a"), Machine::new(&repo, "b"));
    let (disk, src) = random_disk(&repo, 8, 2 * MIB);
    a.ok(&repo, &["backup", src.to_str().unwrap()]);
    std::fs::remove_dir_all(&a.cache).unwrap();
    assert_eq!(a.images(&repo).len(), 1, "a lost cache is rebuilt");
    // A cache that records a version of the bucket that is gone is thrown away, not merged:
    // B writes and forgets, and A sees exactly what the bucket holds.
    b.ok(&repo, &["backup", "--kind", "full", src.to_str().unwrap()]);
    let ids = image_ids(&b.images(&repo));
    b.ok(&repo, &["forget", &ids[0]]);
    assert_eq!(image_ids(&a.images(&repo)), vec![ids[1].clone()]);
    assert!(a.restore(&repo, &ids[1], &repo.file("out.img")) == disk.bytes);
}

/// The lock objects in the bucket.
fn lock_objects(repo: &TestRepo) -> Vec<String> {
    bucket(&repo.path).list("locks").expect("list locks/")
}

#[test]
fn backups_share_the_bucket_other_writers_wait_and_a_dead_holders_lock_is_released() {
    let repo = bucket_repo();
    let (_, src) = random_disk(&repo, 9, 4 * MIB);
    repo.backup(&src, KindRequest::Full);
    let src_arg = src.to_str().unwrap();

    let stalled = repo.stalled(&["backup", "--force-read", src_arg], "before-manifest");
    // Another machine's backup shares the bucket (one machine's backups take turns on its
    // cache); a forget must run alone and says who is in its way.
    let elsewhere = Machine::new(&repo, "elsewhere");
    let other = repo.file("other.img");
    Disk::new(19, MIB).random(0..MIB).write_to(&other);
    elsewhere.ok(&repo, &["backup", "--source-id", "other", other.to_str().unwrap()]);
    let forget = elsewhere.run(&repo, &["forget", "--keep-last", "5"]);
    assert_clean_failure(&forget, "locked by");
    assert_clean_failure(&forget, "running `backup`");
    // Readers go on beside the writer.
    assert!(repo.cli(&["images"]).status.success());
    // The holder dies without removing its lock: on this machine the next writer removes it.
    let mut child = stalled.child;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(lock_objects(&repo).len(), 1, "the dead writer's lock is gone by itself");
    let out = repo.cli(&["forget", "--keep-last", "5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(lock_objects(&repo).is_empty(), "a finished writer left its lock");
    assert_eq!(repo.images().len(), 2);
}

/// A lock object as another machine's writer leaves it, renewed `age_ms` ago (`mode` absent:
/// the one lock object of strata before shared locks, which counts as exclusive).
fn foreign_lock(age_ms: u64, mode: Option<&str>) -> Vec<u8> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut lock = serde_json::json!({
        "holder": {"pid": 4242, "host": "elsewhere", "command": "backup", "since_ms": now - age_ms},
        "machine": "another machine", "refreshed_ms": now - age_ms, "token": "0123456789abcdef",
    });
    if let Some(m) = mode {
        lock["mode"] = serde_json::json!(m);
    }
    serde_json::to_vec(&lock).unwrap()
}

#[test]
fn another_machines_lock_holds_until_stale_and_only_unlock_removes_it() {
    let repo = bucket_repo();
    let (_, src) = random_disk(&repo, 10, 2 * MIB);
    let src_arg = src.to_str().unwrap();
    let store = bucket(&repo.path);

    store.put("locks/writer", &foreign_lock(60_000, None)).unwrap();
    assert_clean_failure(&repo.cli(&["backup", src_arg]), "locked by pid 4242 on elsewhere");
    // A live-looking lock is not removed without --force.
    assert_clean_failure(&repo.cli(&["unlock"]), "looks alive");
    assert!(store.get("locks/writer").is_ok());

    store.put("locks/writer", &foreign_lock(16 * 60_000, None)).unwrap();
    assert_clean_failure(&repo.cli(&["backup", src_arg]), "strata unlock");
    let out = repo.cli(&["unlock", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lock = &said["locks"][0];
    assert_eq!((lock["stale"].as_bool(), lock["removed"].as_bool()), (Some(true), Some(true)), "{said}");
    assert!(store.get("locks/writer").is_err());
    assert!(repo.cli(&["backup", src_arg]).status.success());

    // Another machine's backup, alive: a backup here shares the bucket with it, a prune waits.
    store.put("locks/0123456789abcdef", &foreign_lock(0, Some("shared"))).unwrap();
    assert!(repo.cli(&["backup", src_arg]).status.success());
    assert_clean_failure(&repo.cli(&["prune"]), "locked by pid 4242 on elsewhere");
    assert!(repo.cli(&["unlock", "--force"]).status.success());
    assert!(repo.cli(&["prune"]).status.success());
    assert_eq!(repo.images().len(), 2);
}

/// `args` run by `machine` against `repo`, held at `point` until the returned gate file is
/// removed.
fn spawn_held(
    machine: &Machine,
    repo: &TestRepo,
    args: &[&str],
    point: &str,
    name: &str,
) -> (std::process::Child, PathBuf) {
    let gate = repo.file(&format!("gate-{name}"));
    std::fs::write(&gate, b"held").unwrap();
    let mut command = machine.command(repo, args);
    command.env("STRATA_FAILPOINT", format!("stall:{point}")).env("STRATA_STALL_WHILE", &gate);
    (machine.spawn(command), gate)
}

/// Waits until `n` lock objects are in the bucket (the held commands took their locks).
fn wait_for_locks(repo: &TestRepo, n: usize) {
    let started = std::time::Instant::now();
    while lock_objects(repo).len() < n {
        assert!(started.elapsed().as_secs() < 120, "{n} locks never appeared: {:?}", lock_objects(repo));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The image id a `backup --json` printed.
fn reported(out: Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).expect("backup --json");
    said["image"].as_str().expect("image").to_string()
}

#[test]
fn two_machines_back_up_at_once_and_a_forget_prune_waits_for_a_third_backup() {
    let repo = bucket_repo();
    let (a, b, c) = (Machine::new(&repo, "a"), Machine::new(&repo, "b"), Machine::new(&repo, "c"));
    // Three disks that share a quarter of their data, and an old one to forget and prune.
    let common = Disk::new(30, 6 * MIB).random(0..6 * MIB);
    let disks: Vec<Disk> = (0..3).map(|i| common.clone().random(2 * MIB + i * MIB..3 * MIB + i * MIB)).collect();
    let paths: Vec<PathBuf> = (0..3).map(|i| repo.file(&format!("disk-{i}.img"))).collect();
    for (d, p) in disks.iter().zip(&paths) {
        d.write_to(p);
    }
    let old = repo.file("old.img");
    Disk::new(31, 4 * MIB).random(0..4 * MIB).write_to(&old);
    a.ok(&repo, &["backup", "--source-id", "old", old.to_str().unwrap()]);
    let old_id = image_ids(&a.images(&repo))[0].clone();

    // A and B back up at once: both are held before publishing until both hold their locks.
    let args = |i: usize| {
        vec![
            "backup".to_string(),
            "--json".into(),
            "--source-id".into(),
            format!("disk-{i}"),
            paths[i].display().to_string(),
        ]
    };
    let (args_a, args_b, args_c) = (args(0), args(1), args(2));
    let (child_a, gate_a) = spawn_held(&a, &repo, &strs(&args_a), "before-manifest", "a");
    let (child_b, gate_b) = spawn_held(&b, &repo, &strs(&args_b), "before-manifest", "b");
    wait_for_locks(&repo, 2);
    std::fs::remove_file(&gate_a).unwrap();
    std::fs::remove_file(&gate_b).unwrap();
    let mut stored =
        vec![(0, reported(child_a.wait_with_output().unwrap())), (1, reported(child_b.wait_with_output().unwrap()))];

    // A third backup is in flight when a forget --prune starts: it waits for the backup's
    // lock, then forgets and prunes, and the backup's image survives both.
    let (child_c, gate_c) = spawn_held(&c, &repo, &strs(&args_c), "before-manifest", "c");
    wait_for_locks(&repo, 1);
    let mut forget = a.spawn(a.command(&repo, &["forget", &old_id, "--prune", "--retry-lock", "5m", "--json"]));
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(forget.try_wait().unwrap().is_none(), "the forget did not wait for the backup in flight");
    std::fs::remove_file(&gate_c).unwrap();
    stored.push((2, reported(child_c.wait_with_output().unwrap())));
    let forgot = forget.wait_with_output().unwrap();
    assert!(forgot.status.success(), "forget --prune: {}", String::from_utf8_lossy(&forgot.stderr));
    let said: serde_json::Value = serde_json::from_slice(&forgot.stdout).expect("forget --json");
    let freed = said["prune"]["bytes_freed"].as_u64().expect("prune report");
    assert!(freed >= 3 * MIB as u64, "the old disk's own data was not pruned: {said}");

    // Every image reported stored restores byte-identical through every machine; the forgotten
    // one is gone, and check reads every byte clean.
    for m in [&a, &b, &c] {
        let listed = image_ids(&m.images(&repo));
        assert!(!listed.contains(&old_id), "the forgotten image is still listed");
        for (i, id) in &stored {
            assert!(
                listed.iter().any(|l| id.starts_with(l.as_str()) || l.starts_with(id.as_str())),
                "{id} is not listed"
            );
            let out = repo.file(&format!("restored-{i}.img"));
            assert!(m.restore(&repo, id, &out) == disks[*i].bytes, "image {id} of disk {i} restores wrongly");
        }
        m.ok(&repo, &["check", "--read-data"]);
    }
    assert!(lock_objects(&repo).is_empty(), "a lock was left: {:?}", lock_objects(&repo));
}

/// Strata as `machine`, killed before its `step`th durable write (`step:N`) or counting them
/// into a file (`count:FILE`).
fn run_armed(machine: &Machine, repo: &TestRepo, args: &[&str], armed: &str) -> Output {
    machine.command(repo, args).env("STRATA_FAILPOINT", armed).output().expect("run strata")
}

#[test]
fn a_cache_update_killed_at_every_step_leaves_a_cache_that_agrees_with_the_bucket() {
    let repo = bucket_repo();
    let (a, b) = (Machine::new(&repo, "a"), Machine::new(&repo, "b"));
    let (disk, src) = random_disk(&repo, 40, 4 * MIB);
    a.ok(&repo, &["backup", src.to_str().unwrap()]);
    assert_eq!(b.images(&repo).len(), 1);
    // A adds two images (an incremental and another source's full) and B's cache falls behind;
    // then a forget elsewhere makes the next update a rebuild.
    disk.clone().text(0..MIB).write_to(&src);
    a.ok(&repo, &["backup", src.to_str().unwrap()]);
    let other = repo.file("other.img");
    Disk::new(41, 2 * MIB).random(0..2 * MIB).write_to(&other);
    a.ok(&repo, &["backup", "--source-id", "other", other.to_str().unwrap()]);
    let behind = repo.file("cache-b-behind");
    common::copy_dir(&b.cache, &behind);
    for (what, forget) in [("adding", false), ("rebuilding", true)] {
        if forget {
            // The full that B's cache knows goes, its incremental rewritten as a full.
            let listed = image_ids(&a.images(&repo));
            a.ok(&repo, &["forget", "--rebase", &listed[0]]);
        }
        let expected = image_ids(&a.images(&repo));
        let counted = repo.file(&format!("steps-{what}"));
        let probe = Machine { cache: repo.file(&format!("cache-probe-{what}")) };
        common::copy_dir(&behind, &probe.cache);
        assert!(run_armed(&probe, &repo, &["images"], &format!("count:{}", counted.display())).status.success());
        let steps = std::fs::read(&counted).map(|b| b.len()).unwrap_or(0);
        assert!(steps >= 2, "{what}: the update made {steps} durable writes");
        for step in 1..=steps {
            let killed = Machine { cache: repo.file(&format!("cache-{what}-{step}")) };
            common::copy_dir(&behind, &killed.cache);
            let out = run_armed(&killed, &repo, &["images"], &format!("step:{step}"));
            assert!(!out.status.success(), "{what}: not killed at step {step} of {steps}");
            assert_eq!(image_ids(&killed.images(&repo)), expected, "{what}, killed at step {step}");
            let check = killed.run(&repo, &["check"]);
            assert!(
                check.status.success(),
                "{what}, killed at step {step}: {}",
                String::from_utf8_lossy(&check.stdout)
            );
        }
    }
}

#[test]
fn a_bucket_that_holds_something_else_is_not_a_repository_and_init_leaves_it_alone() {
    let repo = bucket_repo();
    let other = PathBuf::from(format!("{}-other", repo.path.display()));
    let store = bucket(&other);
    store.put("notes/readme.txt", b"not strata's").unwrap();
    let out = strata_cmd().arg("-r").arg(&other).arg("images").output().unwrap();
    assert_clean_failure(&out, "is not a Strata repository");
    let out = strata_cmd().arg("init").arg(&other).output().unwrap();
    assert_clean_failure(&out, "not empty");
    assert_eq!(store.list("").unwrap(), vec!["notes/readme.txt".to_string()]);
    // Packs without a config: a repository whose config is lost.
    store.put("packs/00/whatever", b"x").unwrap();
    let out = strata_cmd().arg("-r").arg(&other).arg("images").output().unwrap();
    assert_clean_failure(&out, "config file is lost");
}

/// `copy` mirrors a local repository into a bucket (through the CLI, as a user would) and
/// brings images back from the bucket into another local repository; each copy stores only what
/// its destination lacks, and every image restores byte-identical from all three.
#[test]
fn a_local_repository_mirrored_to_a_bucket_and_back_restores_byte_identical() {
    let bucket = bucket_repo();
    let local = TestRepo::small_local(None);
    let src = local.file("disk.img");
    let mut disk = Disk::new(41, 4 * MIB).random(0..2 * MIB).text(2 * MIB..3 * MIB);
    let mut expected = HashMap::new();
    for (n, kind) in [KindRequest::Full, KindRequest::Incremental, KindRequest::Incremental].into_iter().enumerate() {
        disk = disk.scatter_blocks(20).random(n * MIB..n * MIB + 100_000);
        disk.write_to(&src);
        let info = local.try_backup(&src, kind, true).expect("backup");
        expected.insert(info.id, disk.bytes.clone());
    }
    // The bucket was made with `init` of its own: copying into it is refused until it names
    // chunks as the local one does (two plain repositories always do).
    let mirror = if common::encrypted() {
        let out = strata_cmd()
            .env("STRATA_PASSWORD2", common::PASSWORD)
            .arg("-r")
            .arg(&local.path)
            .args(["copy", "--to"])
            .arg(&bucket.path)
            .output()
            .expect("run strata");
        assert_clean_failure(&out, "--copy-keys-from");
        local.receiving_copies()
    } else {
        bucket
    };
    let machine = Machine::new(&local, "a");
    let mut copy = machine.command(&local, &["copy", "--json", "--to"]);
    copy.arg(&mirror.path).env("STRATA_PASSWORD2", common::PASSWORD);
    let out = copy.output().expect("run strata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("copy --json");
    assert_eq!(report["copied"].as_array().map(Vec::len), Some(3), "{report}");
    common::assert_intact(&mirror, &expected, "the bucket after copying into it");

    // A new image locally: the next copy sends its new chunks only.
    disk = disk.scatter_blocks(5);
    disk.write_to(&src);
    let fourth = local.try_backup(&src, KindRequest::Incremental, true).expect("backup");
    expected.insert(fourth.id, disk.bytes.clone());
    let report = local.copy_to(&mirror, &[]).expect("second copy");
    assert_eq!((report.copied.len(), report.present.len(), report.chunks), (1, 3, fourth.new_chunks), "{report:?}");

    // Back from the bucket into a new local repository.
    let back = TestRepo::small_local(Some(&mirror));
    let report = mirror.copy_to(&back, &[]).expect("copy back");
    assert_eq!(report.copied.len(), 4);
    common::assert_intact(&back, &expected, "the local repository copied back from the bucket");
    common::assert_intact(&local, &expected, "the source");
}
