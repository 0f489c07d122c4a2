//! Repositories in an S3 bucket: several machines (processes with their own caches) share one,
//! the cache follows the bucket, and the lock object keeps one writer at a time. These need an
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

    fn run(&self, repo: &TestRepo, args: &[&str]) -> Output {
        strata_cmd()
            .env("XDG_CACHE_HOME", &self.cache)
            .arg("-r")
            .arg(&repo.path)
            .args(args)
            .output()
            .expect("run strata")
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

#[test]
fn one_writer_at_a_time_and_a_dead_writers_lock_is_released() {
    let repo = bucket_repo();
    let (_, src) = random_disk(&repo, 9, 4 * MIB);
    repo.backup(&src, KindRequest::Full);
    let src_arg = src.to_str().unwrap();

    let stalled = repo.stalled(&["backup", "--force-read", src_arg], "before-manifest");
    let second = repo.cli(&["backup", src_arg]);
    assert_clean_failure(&second, "locked by");
    assert_clean_failure(&second, "running `backup`");
    // Readers go on beside the writer.
    assert!(repo.cli(&["images"]).status.success());
    // The holder dies without removing its lock: on this machine the next writer takes over.
    let mut child = stalled.child;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(bucket(&repo.path).get("locks/writer").is_ok(), "the dead writer's lock is gone by itself");
    let out = repo.cli(&["backup", src_arg]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(bucket(&repo.path).get("locks/writer").is_err(), "a finished writer left its lock");
    assert_eq!(repo.images().len(), 2);
}

/// A lock object as another machine's writer leaves it, renewed `age_ms` ago.
fn foreign_lock(age_ms: u64) -> Vec<u8> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    serde_json::to_vec(&serde_json::json!({
        "holder": {"pid": 4242, "host": "elsewhere", "command": "backup", "since_ms": now - age_ms},
        "machine": "another machine", "refreshed_ms": now - age_ms, "token": "0123456789abcdef",
    }))
    .unwrap()
}

#[test]
fn another_machines_lock_holds_until_stale_and_only_unlock_removes_it() {
    let repo = bucket_repo();
    let (_, src) = random_disk(&repo, 10, 2 * MIB);
    let src_arg = src.to_str().unwrap();
    let store = bucket(&repo.path);

    store.put("locks/writer", &foreign_lock(60_000)).unwrap();
    assert_clean_failure(&repo.cli(&["backup", src_arg]), "locked by pid 4242 on elsewhere");
    // A live-looking lock is not removed without --force.
    assert_clean_failure(&repo.cli(&["unlock"]), "looks alive");
    assert!(store.get("locks/writer").is_ok());

    store.put("locks/writer", &foreign_lock(16 * 60_000)).unwrap();
    assert_clean_failure(&repo.cli(&["backup", src_arg]), "strata unlock");
    let out = repo.cli(&["unlock", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((said["stale"].as_bool(), said["removed"].as_bool()), (Some(true), Some(true)), "{said}");
    assert!(store.get("locks/writer").is_err());
    assert!(repo.cli(&["backup", src_arg]).status.success());

    store.put("locks/writer", &foreign_lock(0)).unwrap();
    assert!(repo.cli(&["unlock", "--force"]).status.success());
    assert!(repo.cli(&["backup", src_arg]).status.success());
    assert_eq!(repo.images().len(), 2);
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
