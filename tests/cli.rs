//! The command-line shape that scripts and our own checks rely on.

mod common;

use common::{assert_clean_failure, strata_cmd, Disk, TestRepo};
use serde_json::Value;

const MIB: usize = 1 << 20;

fn json(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn init_backup_images_restore_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let out = strata_cmd().arg("init").arg(&repo).output().unwrap();
    assert!(out.status.success());
    let src = dir.path().join("disk.img");
    let mut disk = Disk::new(20, 4 * MIB).random(0..2 * MIB).text(2 * MIB..3 * MIB);
    disk.write_to(&src);

    // STRATA_REPO stands in for -r.
    let backup = |kind: &str| {
        json(
            &strata_cmd()
                .env("STRATA_REPO", &repo)
                .args(["backup", "--json", "--kind", kind])
                .arg(&src)
                .output()
                .unwrap(),
        )
    };
    let full = backup("auto");
    for field in ["image", "kind", "base", "logical_bytes", "changed_bytes", "new_stored_bytes", "seconds"] {
        assert!(full.get(field).is_some(), "backup --json lacks {field}: {full}");
    }
    assert_eq!(full["kind"], "full");
    assert_eq!(full["base"], Value::Null);
    assert_eq!(full["logical_bytes"], 4 * MIB as u64);

    disk = disk.scatter_blocks(10);
    disk.write_in_place(&src);
    let inc = backup("auto");
    assert_eq!(inc["kind"], "incremental");
    assert_eq!(inc["base"], full["image"]);
    disk = disk.scatter_blocks(10);
    disk.write_in_place(&src);
    let diff = backup("differential");
    assert_eq!(diff["kind"], "differential");
    assert_eq!(diff["base"], full["image"]);

    let list = json(&strata_cmd().arg("-r").arg(&repo).args(["images", "--json"]).output().unwrap());
    let list = list.as_array().expect("an array");
    assert_eq!(list.len(), 3);
    for img in list {
        for field in ["image", "kind", "base", "set", "created", "logical_bytes", "changed_bytes", "new_stored_bytes"] {
            assert!(img.get(field).is_some(), "images --json lacks {field}");
        }
        assert_eq!(img["set"], full["image"]);
    }
    assert_eq!(list[1]["image"], inc["image"]);

    // Restore by `latest` and by a unique prefix.
    let target = dir.path().join("out.img");
    let out = strata_cmd().arg("-r").arg(&repo).args(["restore", "latest"]).arg(&target).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&target).unwrap() == disk.bytes);
    let prefix = &inc["image"].as_str().unwrap()[..10];
    let out = strata_cmd().arg("-r").arg(&repo).args(["restore", prefix]).arg(&target).output().unwrap();
    assert!(out.status.success());

    // The human table names every image.
    let table = strata_cmd().arg("-r").arg(&repo).arg("images").output().unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("differential") && text.contains("incremental") && text.contains("full"), "{text}");
}

#[test]
fn a_second_writer_is_told_who_holds_the_lock_while_readers_carry_on() {
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let disk = Disk::new(21, MIB).random(0..MIB);
    disk.write_to(&src);
    let info = repo.backup(&src, strata::KindRequest::Full);

    let holder = common::open_writer(&repo.path, "backup from the test").unwrap();
    let out = repo.cli(&["backup", src.to_str().unwrap()]);
    assert_clean_failure(&out, "locked by");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("pid {}", std::process::id())) && err.contains("backup from the test"), "{err}");

    // Reading commands work beside the writer.
    let list = repo.cli(&["images", "--json"]);
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let target = repo.file("out.img");
    let out = repo.cli(&["restore", &info.id.to_string(), target.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&target).unwrap() == disk.bytes);

    drop(holder);
    assert!(repo.cli(&["backup", src.to_str().unwrap()]).status.success(), "lock released when the holder ends");
}

#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (.ci/test enables it)")]
fn images_and_restore_work_during_a_running_backup() {
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let disk = Disk::new(22, 16 * MIB).random(0..16 * MIB);
    disk.write_to(&src);
    let first = repo.backup(&src, strata::KindRequest::Full);
    let big = repo.file("big.img");
    let other = Disk::new(23, 8 * MIB).random(0..8 * MIB);
    other.write_to(&big);
    // A backup held just before it publishes its manifest: every reader below overlaps it.
    let mut backup = repo.stalled(&["backup", "--source-id", "other", big.to_str().unwrap()], "before-manifest");
    let target = repo.file("out.img");
    for _ in 0..3 {
        let out = repo.cli(&["restore", &first.id.to_string(), target.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(std::fs::read(&target).unwrap() == disk.bytes);
        let list = repo.cli(&["images", "--json"]);
        assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
        assert_eq!(json(&list).as_array().unwrap().len(), 1, "an unpublished image is listed");
        let check = repo.cli(&["check"]);
        assert!(check.status.success(), "check beside a running backup: {}", String::from_utf8_lossy(&check.stdout));
        assert!(backup.running(), "the backup finished while held");
    }
    let out = backup.release();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(repo.images().len(), 2);
    let latest = repo.images().into_iter().find(|i| i.source_id == "other").unwrap();
    assert!(repo.restore_bytes(&latest) == other.bytes);
}

#[test]
fn stats_forget_and_prune_through_the_cli() {
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let mut disk = Disk::new(24, 3 * MIB).random(0..2 * MIB).text(2 * MIB..3 * MIB);
    let backup = |kind: &str, disk: &Disk| {
        disk.write_to(&src);
        json(&repo.cli(&[
            "backup",
            "--json",
            "--force-read",
            "--source-id",
            "d",
            "--kind",
            kind,
            src.to_str().unwrap(),
        ]))
    };
    let f1 = backup("full", &disk);
    disk = disk.scatter_blocks(20);
    backup("incremental", &disk);
    disk = disk.random(0..MIB);
    let f2 = backup("full", &disk);
    disk = disk.scatter_blocks(20);
    backup("differential", &disk);

    let stats = json(&repo.cli(&["stats", "--json"]));
    let sets = stats["sets"].as_array().unwrap();
    assert_eq!(sets.len(), 2);
    for field in ["set", "source", "images", "logical_bytes", "stored_bytes", "shared_bytes", "exclusive_bytes"] {
        assert!(sets[0].get(field).is_some(), "stats --json set lacks {field}");
    }
    let r = &stats["repository"];
    for field in ["raw_referenced_bytes", "pack_bytes", "packs", "dead_fraction", "dedup_ratio", "compression_ratio"] {
        assert!(r.get(field).is_some(), "stats --json repository lacks {field}");
    }
    assert_eq!(stats["images"].as_array().unwrap().len(), 4);
    let first = sets.iter().find(|s| s["set"] == f1["image"]).unwrap();
    let exclusive = first["exclusive_bytes"].as_u64().unwrap();

    let table = String::from_utf8_lossy(&repo.cli(&["stats"]).stdout).to_string();
    assert!(table.contains("source d") && table.contains("dedup ratio"), "{table}");
    let one = json(&repo.cli(&["stats", "--json", "--set", &f2["image"].as_str().unwrap()[..8]]));
    assert_eq!(one["sets"].as_array().unwrap().len(), 1);

    // A dry run reports and changes nothing.
    let packs_before = repo.files_in("packs");
    let plan = json(&repo.cli(&["forget", "--keep-sets", "1", "--dry-run", "--json"]));
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["forget"].as_array().unwrap().len(), 2);
    assert_eq!(plan["keep"].as_array().unwrap().len(), 2);
    assert_eq!(plan["unreferenced_bytes"].as_u64().unwrap(), exclusive);
    assert_eq!(repo.images().len(), 4);
    assert_eq!(repo.files_in("packs"), packs_before);
    let text = String::from_utf8_lossy(&repo.cli(&["forget", "--keep-sets", "1", "--dry-run"]).stdout).to_string();
    assert!(text.contains("would forget 2 images"), "{text}");

    let done = json(&repo.cli(&["forget", "--keep-sets", "1", "--json"]));
    assert_eq!(done["dry_run"], false);
    assert_eq!(repo.images().len(), 2);
    let dry = json(&repo.cli(&["prune", "--dry-run", "--json", "--max-unused", "0"]));
    assert!(dry["dead_chunks"].as_u64().unwrap() > 0);
    assert_eq!(dry["result"], Value::Null);
    let pruned = json(&repo.cli(&["prune", "--json", "--max-unused", "0"]));
    assert!(pruned["result"]["bytes_freed"].as_u64().unwrap() >= exclusive);
    let after = json(&repo.cli(&["stats", "--json"]));
    assert_eq!(after["repository"]["dead_fraction"].as_f64().unwrap(), 0.0);
    assert_eq!(after["sets"][0]["shared_bytes"], 0);

    // Errors are clear.
    assert_clean_failure(&repo.cli(&["forget"]), "nothing to forget");
    assert_clean_failure(&repo.cli(&["forget", "--keep-within", "7x"]), "unknown unit");
    assert_clean_failure(&repo.cli(&["forget", "deadbeef"]), "no image matches");
}

/// The smaller things a user noticed, each as it was reported.
#[test]
fn small_things_a_user_noticed() {
    let repo = TestRepo::small();
    let src = repo.file("sparse.img");
    // A sparse disk: 64 MiB with 1 MiB of data. Rates are over bytes read, not over holes.
    Disk::new(3, 64 << 20).random(0..1 << 20).write_to(&src);
    let out = repo.cli(&["backup", "--json", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = json(&out);
    assert!(v["bytes_read"].as_u64().unwrap() < 4 << 20, "{v}");
    let text = repo.cli(&["backup", "--force-read", src.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&text.stdout);
    assert!(said.contains("MiB/s read") && !said.contains("MB/s"), "{said}");
    let target = repo.file("out.img");
    let said = String::from_utf8_lossy(&repo.cli(&["restore", "latest", target.to_str().unwrap()]).stdout).into_owned();
    assert!(said.contains("of data written") && said.contains("MiB/s written"), "{said}");

    // `check` without --read-data says it read no data, not "0 packs read and verified".
    let said = String::from_utf8_lossy(&repo.cli(&["check"]).stdout).into_owned();
    assert!(said.contains("structure of 2 images checked") && said.contains("no chunk data read"), "{said}");
    assert!(!said.contains("read and verified"), "{said}");
    let said = String::from_utf8_lossy(&repo.cli(&["check", "--read-data"]).stdout).into_owned();
    assert!(
        said.contains("no problems found: ") && !said.contains(": 0 packs") && said.contains("read and verified"),
        "{said}"
    );

    // The lock record names the command, never its arguments (no paths in the lock file). A
    // bucket's lock object is gone once its holder is done.
    if common::s3_base().is_none() {
        let lock: Value = serde_json::from_slice(&std::fs::read(repo.path.join("lock")).unwrap()).unwrap();
        assert_eq!(lock["command"], "backup");
    }

    // `backup --help` says what --json does once.
    let help = String::from_utf8_lossy(&strata_cmd().args(["backup", "--help"]).output().unwrap().stdout).into_owned();
    assert_eq!(help.matches("JSON").count(), 1, "{help}");

    // Out-of-range numbers are refused.
    common::assert_clean_failure(&repo.cli(&["prune", "--max-unused", "200"]), "percentage");
    common::assert_clean_failure(
        &repo.cli(&["forget", "--keep-last", "1", "--prune", "--max-unused=-1"]),
        "percentage",
    );
    let fresh = repo.file("fresh");
    common::assert_clean_failure(
        &strata_cmd().args(["init", "--avg-chunk-kib", "3"]).arg(&fresh).output().unwrap(),
        "4..=2048",
    );

    // `strata stats | head`: a closed pipe ends the process quietly, no panic.
    let mut child = strata_cmd()
        .arg("-r")
        .arg(&repo.path)
        .arg("stats")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"), "{}", String::from_utf8_lossy(&out.stderr));

    // A missing index points at rebuild-index (a bucket's index is a cache: it is rebuilt); a
    // lost config does not suggest `strata init`.
    if common::s3_base().is_none() {
        let index = repo.path.join("index");
        std::fs::rename(&index, repo.file("index.away")).unwrap();
        common::assert_clean_failure(&repo.cli(&["images"]), "rebuild-index");
        std::fs::rename(repo.file("index.away"), &index).unwrap();
    }
    let stored = repo.stored();
    let config = stored.get("config").unwrap();
    stored.remove("config").unwrap();
    let out = repo.cli(&["images"]);
    common::assert_clean_failure(&out, "restore `config`");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("create one with"));
    stored.put("config", &config).unwrap();

    // An incremental whose base's manifest is damaged says to take a full.
    let base = repo.images().last().unwrap().id;
    repo.alter(&format!("images/{base}"), |m| m[14] ^= 0xff);
    common::assert_clean_failure(&repo.cli(&["backup", "--force-read", src.to_str().unwrap()]), "--kind full");
    let out = repo.cli(&["backup", "--kind", "full", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
