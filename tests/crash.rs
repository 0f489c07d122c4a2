//! A backup killed at any moment loses nothing already backed up, leaves a working repository,
//! and the next backup succeeds.

mod common;

use std::collections::HashMap;
use std::process::{Child, Stdio};

use common::{strata_cmd, Disk, TestRepo};
use strata::id::ImageId;
use strata::KindRequest;

const MIB: usize = 1 << 20;

fn spawn_backup(repo: &TestRepo, src: &std::path::Path, failpoint: Option<&str>) -> Child {
    let src = src.to_str().expect("utf-8 path");
    spawn_cli(repo, &["backup", "--source-id", "disk", "--force-read", src], failpoint)
}

/// Every image the repository lists restores to the bytes recorded for it; images published by
/// a killed run (its manifest made it) are checked against the disk of that run.
fn check_all(repo: &TestRepo, expected: &mut HashMap<ImageId, Vec<u8>>, in_flight: &[u8]) {
    for info in repo.images() {
        let want = expected.entry(info.id).or_insert_with(|| in_flight.to_vec()).clone();
        assert!(repo.restore_bytes(&info) == want, "image {} does not restore", info.id);
    }
}

fn history_disk(seed: u64) -> Disk {
    Disk::new(seed, 12 * MIB).random(0..4 * MIB).text(4 * MIB..8 * MIB).random(10 * MIB..12 * MIB)
}

#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (.ci/test enables it)")]
fn a_kill_at_each_commit_step_loses_nothing() {
    for point in ["object-before-rename", "pack-before-index", "before-manifest", "manifest-before-catalog"] {
        let repo = TestRepo::small();
        let src = repo.file("disk.img");
        let mut disk = history_disk(1);
        disk.write_to(&src);
        let mut expected = HashMap::new();
        let full = repo.backup(&src, KindRequest::Full);
        expected.insert(full.id, disk.bytes.clone());

        disk = disk.scatter_blocks(200).text(MIB..3 * MIB);
        disk.write_to(&src);
        let status = spawn_backup(&repo, &src, Some(point)).wait().unwrap();
        assert!(!status.success(), "failpoint {point} did not fire");
        check_all(&repo, &mut expected, &disk.bytes);
        let published = repo.images().len() == 2;
        // Only a run that got past the manifest's rename has published its image.
        assert_eq!(published, point == "manifest-before-catalog", "at {point}");

        // The repository works: the next backup succeeds and everything restores.
        let next = repo.try_backup(&src, KindRequest::Auto, true).expect("backup after crash");
        expected.insert(next.id, disk.bytes.clone());
        check_all(&repo, &mut expected, &disk.bytes);
        // Leftovers are orphans only: no temporary file remains visible as an object.
        for f in repo.files_in("images") {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            assert!(name.starts_with(".tmp.") || ImageId::parse(&name).is_some(), "stray {name}");
        }
    }
}

/// Kills at random moments, chosen without timing: each run's durable writes are counted on a
/// copy of the repository (the same command on the same state makes the same writes), and the
/// real run is killed before a seeded-random one of them.
#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (.ci/test enables it)")]
fn kill_9_at_random_moments_during_backups() {
    let iterations: usize = std::env::var("STRATA_CRASH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let mut disk = history_disk(2);
    disk.write_to(&src);
    let mut expected = HashMap::new();
    let full = repo.backup(&src, KindRequest::Full);
    expected.insert(full.id, disk.bytes.clone());
    let src_arg = src.to_str().expect("utf-8 path").to_string();
    let args = ["backup", "--source-id", "disk", "--force-read", &src_arg];

    for i in 0..iterations {
        let (blocks, at_mib) = (50 + disk.below(300), disk.below(6) * MIB);
        disk = disk.scatter_blocks(blocks).text(at_mib..at_mib + 200_000);
        disk.write_to(&src);
        let steps = steps_of(&repo, &args);
        assert!(steps >= 3, "a backup of {steps} steps");
        let n = 1 + disk.below(steps);
        // The copy that counted the steps built its index cache afresh from the bucket; so does
        // the repository, or the two would deduplicate differently and write different counts.
        common::drop_cache(&repo);
        let status = spawn_cli(&repo, &args, Some(&format!("step:{n}"))).wait().unwrap();
        assert!(!status.success(), "iteration {i}: the run was not killed at step {n} of {steps}");
        check_all(&repo, &mut expected, &disk.bytes);
        if i % 4 == 3 {
            let next = repo.try_backup(&src, KindRequest::Auto, true).expect("backup after kill");
            expected.insert(next.id, disk.bytes.clone());
        }
    }
    let last = repo.try_backup(&src, KindRequest::Auto, true).expect("final backup");
    assert!(repo.restore_bytes(&last) == disk.bytes);
}

fn spawn_cli(repo: &TestRepo, args: &[&str], failpoint: Option<&str>) -> Child {
    let mut cmd = strata_cmd();
    cmd.arg("-r").arg(&repo.path).args(args).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(fp) = failpoint {
        cmd.env("STRATA_FAILPOINT", fp);
    }
    cmd.spawn().expect("spawn strata")
}

/// How many durable writes `args` makes on a copy of `repo` (`STRATA_FAILPOINT=count:<file>`).
fn steps_of(repo: &TestRepo, args: &[&str]) -> usize {
    let copy = repo.copy();
    let file = copy.file("steps");
    let mut cmd = strata_cmd();
    cmd.arg("-r").arg(&copy.path).args(args).stdout(Stdio::null()).stderr(Stdio::null());
    cmd.env("STRATA_FAILPOINT", format!("count:{}", file.display()));
    assert!(cmd.status().unwrap().success(), "{args:?} failed on a copy");
    std::fs::read(&file).map(|b| b.len()).unwrap_or(0)
}

/// A repository with two sets and chains worth consolidating; returns the bytes of each image.
fn lifecycle_repo(seed: u64) -> (TestRepo, HashMap<ImageId, Vec<u8>>, Disk) {
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let mut disk = history_disk(seed);
    let mut expected = HashMap::new();
    for (n, kind) in [
        KindRequest::Full,
        KindRequest::Incremental,
        KindRequest::Incremental,
        KindRequest::Differential,
        KindRequest::Incremental,
        KindRequest::Full,
        KindRequest::Incremental,
        KindRequest::Incremental,
    ]
    .into_iter()
    .enumerate()
    {
        let at = (n % 6) * MIB;
        disk = disk.scatter_blocks(40).text(at..at + 300_000);
        disk.write_to(&src);
        let info = repo.try_backup(&src, kind, true).unwrap();
        expected.insert(info.id, disk.bytes.clone());
    }
    (repo, expected, disk)
}

/// Images still listed restore to their bytes and the counters add up.
fn check_listed(repo: &TestRepo, expected: &HashMap<ImageId, Vec<u8>>, when: &str) {
    for info in repo.images() {
        let target = repo.file("check.img");
        if let Err(e) = repo.try_restore(&info.id.to_string(), &target) {
            panic!("{when}: image {} ({:?}) does not restore: {e}", info.id, info.kind);
        }
        assert!(
            std::fs::read(&target).unwrap() == expected[&info.id],
            "{when}: image {} restores other bytes",
            info.id
        );
    }
}

#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (.ci/test enables it)")]
fn a_kill_at_each_step_of_forget_and_prune_loses_nothing_kept() {
    for point in [
        "object-before-rename",
        "forget-after-rewrite",
        "forget-after-delete",
        "prune-before-switch",
        "prune-after-switch",
    ] {
        let (repo, expected, _) = lifecycle_repo(7);
        let images = repo.images();
        // Forget the first incremental (consolidation) and the second set's full (rebase).
        let (i1, f2) = (images[1].id.to_string(), images[5].id.to_string());
        let kept: Vec<ImageId> =
            images.iter().map(|i| i.id).filter(|id| id.to_string() != i1 && id.to_string() != f2).collect();
        let status = spawn_cli(&repo, &["forget", "--rebase", "--prune", "--max-unused", "0", &i1, &f2], Some(point))
            .wait()
            .unwrap();
        assert!(!status.success(), "failpoint {point} did not fire");
        check_listed(&repo, &expected, point);
        let listed: Vec<ImageId> = repo.images().iter().map(|i| i.id).collect();
        assert!(kept.iter().all(|k| listed.contains(k)), "{point}: a kept image vanished");
        // The next writer rolls an interrupted forget forward.
        assert!(repo.cli(&["prune", "--dry-run"]).status.success(), "{point}: recovery failed");
        check_listed(&repo, &expected, point);
        let listed: Vec<ImageId> = repo.images().iter().map(|i| i.id).collect();

        // Rerunning completes the job (the named images may already be gone).
        let still: Vec<String> =
            [&i1, &f2].iter().filter(|s| listed.iter().any(|l| l.to_string() == ***s)).map(|s| s.to_string()).collect();
        if !still.is_empty() {
            let mut args = vec!["forget", "--rebase"];
            args.extend(still.iter().map(|s| s.as_str()));
            assert!(repo.cli(&args).status.success(), "{point}: rerun of forget failed");
        }
        assert!(repo.cli(&["prune", "--max-unused", "0"]).status.success(), "{point}: prune after crash failed");
        assert_eq!(repo.images().len(), kept.len(), "{point}");
        check_listed(&repo, &expected, point);
        common::assert_stats_add_up(&repo.path);
        let referenced = common::independent(&repo.path).referenced;
        assert!(common::indexed_chunks(&repo.path).iter().all(|c| referenced.contains(c)), "{point}: garbage left");
    }
}

#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (.ci/test enables it)")]
fn kill_9_at_random_moments_during_forget_and_prune() {
    let iterations: usize = std::env::var("STRATA_CRASH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let (repo, mut expected, mut disk) = lifecycle_repo(8);
    let src = repo.file("disk.img");
    for i in 0..iterations {
        // New images to forget, then a forget or a prune killed at a random step of its run.
        for _ in 0..2 {
            let at = disk.below(6) * MIB;
            disk = disk.scatter_blocks(30).text(at..at + 200_000);
            disk.write_to(&src);
            let info =
                repo.try_backup(&src, KindRequest::Auto, true).unwrap_or_else(|e| panic!("backup after a kill: {e}"));
            expected.insert(info.id, disk.bytes.clone());
        }
        let before: Vec<ImageId> = repo.images().iter().map(|i| i.id).collect();
        let args: &[&str] = match i % 3 {
            0 => &["forget", "--keep-last", "4"],
            1 => &["forget", "--keep-last", "3", "--rebase", "--prune", "--max-unused", "0"],
            _ => &["prune", "--max-unused", "0"],
        };
        let steps = steps_of(&repo, args);
        if steps > 0 {
            let n = 1 + disk.below(steps);
            common::drop_cache(&repo); // as the counting copy did (see the backup test above)
            let status = spawn_cli(&repo, args, Some(&format!("step:{n}"))).wait().unwrap();
            assert!(!status.success(), "iteration {i}: not killed at step {n} of {steps}");
        }
        check_listed(&repo, &expected, &format!("iteration {i} ({})", args.join(" ")));
        // Images the policy keeps (the newest three) are never lost.
        let listed: Vec<ImageId> = repo.images().iter().map(|i| i.id).collect();
        assert!(before.iter().rev().take(3).all(|k| listed.contains(k)), "a kept image vanished");
    }
    assert!(repo.cli(&["forget", "--keep-last", "3", "--prune", "--max-unused", "0"]).status.success());
    check_listed(&repo, &expected, "final forget");
    common::assert_stats_add_up(&repo.path);
}

/// Runs `args` on fresh copies of `pristine`, killed just before its 1st, 2nd, 3rd … durable
/// write (index batch, object, removal, rename: `STRATA_FAILPOINT=step:N`) until a run gets
/// through; after each killed run, `after` proves what must hold. Returns the number of steps.
/// No timing is involved: every step of the command's run is a kill point once.
fn kill_at_every_step(pristine: &TestRepo, args: &[&str], after: impl Fn(&TestRepo, &str)) -> usize {
    for n in 1.. {
        let repo = pristine.copy();
        let point = format!("step:{n}");
        let status = spawn_cli(&repo, args, Some(&point)).wait().unwrap();
        if status.success() {
            assert!(n > 1, "{args:?} made no durable write");
            return n - 1;
        }
        after(&repo, &format!("{} killed before write {n}", args.join(" ")));
        assert!(n < 10_000, "{args:?} never finished");
    }
    unreachable!()
}

/// Brings a repository whose index a killed rebuild may have left missing back into use.
fn recover_index(repo: &TestRepo, when: &str) {
    // A bucket's index is this machine's cache: the next command rebuilds it.
    if common::s3_base().is_none() && !repo.path.join("index").exists() {
        // Killed between moving the old index aside and moving the new one in: every command
        // says so and points at rebuild-index.
        common::assert_clean_failure(&repo.cli(&["images"]), "rebuild-index");
        common::assert_clean_failure(&repo.cli(&["prune"]), "rebuild-index");
        let out = repo.cli(&["rebuild-index"]);
        assert!(out.status.success(), "{when}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (.ci/test enables it)")]
fn a_rebuild_killed_at_every_step_leaves_no_index_that_prune_trusts_wrongly() {
    let (pristine, expected, _) = lifecycle_repo(11);
    let all: Vec<ImageId> = pristine.images().iter().map(|i| i.id).collect();
    let steps = kill_at_every_step(&pristine, &["rebuild-index"], |repo, when| {
        recover_index(repo, when);
        let out = repo.cli(&["prune", "--max-unused", "0"]);
        assert!(out.status.success(), "{when}: prune: {}", String::from_utf8_lossy(&out.stderr));
        let listed: Vec<ImageId> = repo.images().iter().map(|i| i.id).collect();
        assert_eq!(listed, all, "{when}: images changed");
        common::assert_intact(repo, &expected, when);
    });
    assert!(steps >= 4, "only {steps} steps");
}

#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (.ci/test enables it)")]
fn a_forget_with_rebase_killed_at_every_step_loses_nothing_kept() {
    let (pristine, expected, _) = lifecycle_repo(12);
    let images = pristine.images();
    // The first incremental (a consolidation) and the second set's full (a rebase).
    let named = [images[1].id, images[5].id];
    let kept: Vec<ImageId> = images.iter().map(|i| i.id).filter(|id| !named.contains(id)).collect();
    let args = ["forget", "--rebase", &named[0].to_string(), &named[1].to_string()].map(String::from);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    kill_at_every_step(&pristine, &args, |repo, when| {
        let listed: Vec<ImageId> = repo.images().iter().map(|i| i.id).collect();
        assert!(kept.iter().all(|k| listed.contains(k)), "{when}: a kept image vanished");
        // The next writer finishes or undoes the forget; prune then proves what it deletes.
        let out = repo.cli(&["prune", "--max-unused", "0"]);
        assert!(out.status.success(), "{when}: prune: {}", String::from_utf8_lossy(&out.stderr));
        let listed: Vec<ImageId> = repo.images().iter().map(|i| i.id).collect();
        assert!(kept.iter().all(|k| listed.contains(k)), "{when}: a kept image vanished after recovery");
        common::assert_intact(repo, &expected, when);
    });
}

#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (.ci/test enables it)")]
fn a_prune_killed_at_every_step_loses_nothing() {
    let (pristine, expected, _) = lifecycle_repo(13);
    let images = pristine.images();
    let out = pristine.cli(&["forget", "--keep-last", "3", "--rebase"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let kept: Vec<ImageId> = pristine.images().iter().map(|i| i.id).collect();
    assert!(kept.len() < images.len());
    let steps = kill_at_every_step(&pristine, &["prune", "--max-unused", "0"], |repo, when| {
        let listed: Vec<ImageId> = repo.images().iter().map(|i| i.id).collect();
        assert_eq!(listed, kept, "{when}");
        for info in repo.images() {
            assert!(repo.restore_bytes(&info) == expected[&info.id], "{when}: image {} restores other bytes", info.id);
        }
        let out = repo.cli(&["prune", "--max-unused", "0"]);
        assert!(out.status.success(), "{when}: prune after the kill: {}", String::from_utf8_lossy(&out.stderr));
        common::assert_intact(repo, &expected, when);
    });
    assert!(steps >= 3, "only {steps} steps");
}

#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (.ci/test enables it)")]
fn a_copy_killed_at_every_step_loses_nothing_and_the_next_copy_finishes() {
    let (src, expected, _) = lifecycle_repo(16);
    let pristine = src.receiving_copies();
    // One image there already: the copy adds to a destination that has something to lose.
    let first = src.images()[0].id;
    src.copy_to(&pristine, &[&first.short()]).expect("copy the first image");
    let all: Vec<ImageId> = src.images().iter().map(|i| i.id).collect();
    for n in 1.. {
        let dst = pristine.copy();
        let when = format!("copy killed before write {n}");
        let status = strata_cmd()
            .env("STRATA_PASSWORD2", common::PASSWORD)
            .env("STRATA_FAILPOINT", format!("step:{n}"))
            .arg("-r")
            .arg(&src.path)
            .args(["copy", "--to"])
            .arg(&dst.path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        if status.success() {
            assert!(n > 10, "only {} steps", n - 1);
            break;
        }
        // What the destination lists restores: the first image and whatever the killed copy
        // published; then the next copy brings the rest.
        let listed: Vec<ImageId> = dst.images().iter().map(|i| i.id).collect();
        assert!(listed.contains(&first), "{when}: the image that was there vanished");
        check_listed(&dst, &expected, &when);
        let report = src.copy_to(&dst, &[]).unwrap_or_else(|e| panic!("{when}: the next copy: {e}"));
        assert_eq!(report.present.len() + report.copied.len(), all.len(), "{when}");
        let listed: Vec<ImageId> = dst.images().iter().map(|i| i.id).collect();
        assert!(all.iter().all(|i| listed.contains(i)), "{when}: an image is missing after the next copy");
        let out = dst.cli(&["prune", "--max-unused", "0"]);
        assert!(out.status.success(), "{when}: prune: {}", String::from_utf8_lossy(&out.stderr));
        common::assert_intact(&dst, &expected, &when);
        assert!(n < 10_000, "the copy never finished");
    }
}

/// Killed backups left a 33 MB `.tmp.` pack and empty `.tmp.` manifests; killed restores left
/// full-size hidden files beside the target. stats counts them, the next writer removes them.
#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (.ci/test enables it)")]
fn temporary_files_of_killed_runs_are_counted_and_removed() {
    let (repo, expected, disk) = lifecycle_repo(14);
    let src = repo.file("disk.img");
    disk.clone().scatter_blocks(50).write_to(&src);
    assert!(!spawn_backup(&repo, &src, Some("object-before-rename")).wait().unwrap().success());
    let temps = |repo: &TestRepo| {
        repo.files_in("").into_iter().filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".tmp.")).count()
    };
    assert!(temps(&repo) >= 1, "the killed backup left no temporary file");
    let stats: serde_json::Value = serde_json::from_slice(&repo.cli(&["stats", "--json"]).stdout).unwrap();
    assert!(stats["repository"]["temporary_files"].as_u64().unwrap() >= 1, "{stats}");
    let out = repo.cli(&["prune", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["result"]["temporaries_removed"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(temps(&repo), 0);
    common::assert_intact(&repo, &expected, "after removing temporaries");

    // A restore killed before its rename leaves a hidden full-size file; the next restore to
    // the same target removes it (its process is gone).
    let target = repo.file("target.img");
    let image = repo.images()[0].id.to_string();
    let mut cmd = strata_cmd();
    cmd.arg("-r")
        .arg(&repo.path)
        .args(["restore", &image])
        .arg(&target)
        .env("STRATA_FAILPOINT", "restore-before-rename");
    assert!(!cmd.output().unwrap().status.success());
    let hidden = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".strata-restore."))
            .count()
    };
    assert_eq!(hidden(repo.dir.path()), 1);
    let out = repo.cli(&["restore", &image, target.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(hidden(repo.dir.path()), 0, "the killed restore's file is still there");
}

#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (.ci/test enables it)")]
fn a_backup_killed_at_every_step_loses_nothing() {
    let (pristine, mut expected, disk) = lifecycle_repo(15);
    let src = pristine.file("disk.img");
    let changed = disk.scatter_blocks(80).text(2 * MIB..3 * MIB);
    changed.write_to(&src);
    let before: Vec<ImageId> = pristine.images().iter().map(|i| i.id).collect();
    let src_arg = src.to_str().unwrap().to_string();
    kill_at_every_step(&pristine, &["backup", "--source-id", "disk", "--force-read", &src_arg], |repo, when| {
        // A run killed after its manifest's rename published its image: the disk it read.
        let mut expected = expected.clone();
        for info in repo.images() {
            expected.entry(info.id).or_insert_with(|| changed.bytes.clone());
        }
        let listed: Vec<ImageId> = repo.images().iter().map(|i| i.id).collect();
        assert!(before.iter().all(|b| listed.contains(b)), "{when}: an image vanished");
        // The next backup succeeds (it reads the copy's own disk.img, the same bytes).
        let copy_src = repo.file("disk.img");
        let next = repo.try_backup(&copy_src, KindRequest::Auto, true).unwrap_or_else(|e| panic!("{when}: {e}"));
        expected.insert(next.id, changed.bytes.clone());
        let out = repo.cli(&["prune", "--max-unused", "0"]);
        assert!(out.status.success(), "{when}: prune: {}", String::from_utf8_lossy(&out.stderr));
        common::assert_intact(repo, &expected, when);
    });
    expected.clear();
}

#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (.ci/test enables it)")]
fn a_job_run_killed_at_every_step_loses_nothing_it_keeps() {
    let (pristine, expected, disk) = lifecycle_repo(14);
    let images = pristine.images();
    // A full makes a third set; `keep_sets = 2` then forgets the first, and prune reclaims it.
    let kept: Vec<ImageId> = images[5..].iter().map(|i| i.id).collect();
    let job = pristine.file("job.toml");
    let toml = format!(
        "source = {:?}\nsource_id = \"disk\"\n[retention]\nkeep_sets = 2\nprune = true\n[verify]\nafter_backup = \"image\"\n",
        pristine.file("disk.img").to_str().unwrap()
    );
    std::fs::write(&job, toml).unwrap();
    let job = job.to_str().unwrap();
    let steps = kill_at_every_step(&pristine, &["run", job, "--kind", "full"], |repo, when| {
        let listed: Vec<ImageId> = repo.images().iter().map(|i| i.id).collect();
        assert!(kept.iter().all(|k| listed.contains(k)), "{when}: a kept image vanished");
        // A new image, when its manifest made it, holds the disk as it is.
        let mut expected = expected.clone();
        let new: Vec<ImageId> = listed.iter().filter(|id| !expected.contains_key(id)).copied().collect();
        for id in new {
            expected.insert(id, disk.bytes.clone());
        }
        check_listed(repo, &expected, when);
        // The next run recovers whatever was interrupted and completes.
        let out = repo.cli(&["run", job]);
        assert!(out.status.success(), "{when}: the next run: {}", String::from_utf8_lossy(&out.stderr));
        let listed: Vec<ImageId> = repo.images().iter().map(|i| i.id).collect();
        assert!(kept.iter().all(|k| listed.contains(k)), "{when}: a kept image vanished after the next run");
        let new: Vec<ImageId> = listed.iter().filter(|id| !expected.contains_key(id)).copied().collect();
        for id in new {
            expected.insert(id, disk.bytes.clone());
        }
        check_listed(repo, &expected, when);
        common::assert_stats_add_up(&repo.path);
    });
    assert!(steps > 5, "a run with backup, forget and prune made only {steps} durable writes");
}
