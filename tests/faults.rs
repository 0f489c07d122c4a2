//! Storage errors at every call of an operation (EIO on read and write, ENOSPC, a failed fsync),
//! injected by a storage double: the operation fails cleanly or succeeds correctly, never
//! panics, and the repository stays consistent: every image backed up before restores, and the
//! next backup succeeds. And writes that storage reported durable but lost at a power cut (they
//! were never synced) never cost an image backed up before them. No root, no timing, no
//! environment variables.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::faults::{Fault, Faulty, Lossy, LossyBackend};
use common::{assert_intact, Disk, TestRepo};
use strata::id::ImageId;
use strata::progress::Silent;
use strata::{BackupOptions, KindRequest, Repository};

const MIB: usize = 1 << 20;

const FAULTS: [Fault; 4] = [Fault::ReadEio, Fault::WriteEio, Fault::NoSpace, Fault::FsyncFails];

/// A repository with a few images, and a changed disk beside it for the next backup.
fn start(seed: u64) -> (TestRepo, HashMap<ImageId, Vec<u8>>, Vec<u8>) {
    use KindRequest::*;
    let (repo, bytes) = common::history(seed, &[Full, Incremental, Differential]);
    let src = repo.file("disk.img");
    let changed = Disk::new(seed + 100, 4 * MIB).random(0..MIB).text(MIB..2 * MIB).random(3 * MIB..4 * MIB);
    changed.write_to(&src);
    (repo, bytes, changed.bytes)
}

#[test]
fn a_storage_fault_at_any_call_of_a_backup_loses_nothing() {
    for fault in FAULTS {
        let (pristine, before, changed) = start(1);
        let mut injected = 0;
        for n in 1.. {
            let repo = pristine.copy();
            let faulty = Arc::new(Faulty::new(&repo.path, fault, n));
            let opts = BackupOptions { source_id: Some("disk".into()), force_read: true, ..Default::default() };
            let result = Repository::open_writer_on_with(&repo.path, "test", faulty.clone(), &common::credentials())
                .and_then(|w| strata::backup(&w, &repo.file("disk.img"), &opts, &Silent));
            if !faulty.fired() {
                assert!(result.is_ok(), "{fault:?}: {result:?}");
                break;
            }
            injected += 1;
            let when = format!("{fault:?} at call {n}");
            let mut expected = before.clone();
            // A backup that got past the fault (a read it could do without) published a correct
            // image; one that failed published nothing.
            if let Ok(info) = &result {
                expected.insert(info.id, changed.clone());
            }
            let listed: Vec<ImageId> = repo.images().iter().map(|i| i.id).collect();
            assert_eq!(listed.len(), expected.len(), "{when}: {result:?}");
            // With the storage healthy again, the next backup succeeds and everything restores.
            let next = repo.try_backup(&repo.file("disk.img"), KindRequest::Auto, true);
            let next = next.unwrap_or_else(|e| panic!("{when}: backup after the fault: {e}"));
            expected.insert(next.id, changed.clone());
            assert_intact(&repo, &expected, &when);
            assert!(n < 10_000);
        }
        assert!(injected >= 3, "{fault:?}: only {injected} calls");
    }
}

#[test]
fn a_storage_fault_during_a_restore_never_writes_wrong_bytes_or_touches_the_target() {
    let (repo, before, _) = start(2);
    let image = repo.images().last().unwrap().clone();
    let target = repo.file("target.img");
    for n in 1.. {
        std::fs::write(&target, b"the old contents").unwrap();
        let faulty = Arc::new(Faulty::new(&repo.path, Fault::ReadEio, n));
        let r = Repository::open_on_with(&repo.path, faulty.clone(), &common::credentials())
            .and_then(|r| strata::restore(&r, &image, &target, &Silent));
        let now = std::fs::read(&target).unwrap();
        match r {
            Ok(_) => {
                assert!(now == before[&image.id], "read fault at call {n}: a restore reported success with other bytes")
            }
            Err(e) => {
                assert!(faulty.fired(), "{e}");
                assert_eq!(now, b"the old contents", "read fault at call {n}: a failed restore changed the target");
            }
        }
        if !faulty.fired() {
            break;
        }
        assert!(n < 10_000);
    }
}

#[test]
fn a_storage_fault_at_any_call_of_forget_and_prune_loses_nothing_kept() {
    for fault in FAULTS {
        let (pristine, before, _) = start(3);
        let images = pristine.images();
        let (named, kept) = (images[1].id, [images[0].id, images[2].id]);
        for n in 1.. {
            let repo = pristine.copy();
            let faulty = Arc::new(Faulty::new(&repo.path, fault, n));
            let result = Repository::open_writer_on_with(&repo.path, "test", faulty.clone(), &common::credentials())
                .and_then(|w| {
                    let req = strata::forget::ForgetRequest { ids: vec![named], ..Default::default() };
                    let plan = strata::forget::plan(&w.images()?, &req)?;
                    strata::forget::execute(&w, &plan, false)?;
                    let p = strata::prune::plan(&w, 0.0)?;
                    strata::prune::execute(&w, &p, &Silent)
                });
            let when = format!("{fault:?} at call {n}");
            if !faulty.fired() {
                assert!(result.is_ok(), "{when}: {result:?}");
                break;
            }
            let _ = result;
            // The next writer recovers; kept images are all there and intact.
            let out = repo.cli(&["prune", "--max-unused", "0"]);
            assert!(out.status.success(), "{when}: {}", String::from_utf8_lossy(&out.stderr));
            let listed: Vec<ImageId> = repo.images().iter().map(|i| i.id).collect();
            assert!(kept.iter().all(|k| listed.contains(k)), "{when}: a kept image vanished");
            let mut expected = before.clone();
            expected.retain(|id, _| listed.contains(id));
            assert_intact(&repo, &expected, &when);
            assert!(n < 10_000);
        }
    }
}

/// A disk whose write cache ignored the flushes of a whole backup loses any tail of that
/// backup's writes at a power cut: packs, the manifest, the generation file. Whatever is lost,
/// every image backed up before still restores byte for byte; `check` calls the last image
/// damaged exactly when one of its packs or its manifest was lost (a generation file that went
/// back is harmless: the index is ahead of it); and the next full backup stores again what the
/// index still points at (self-healing) and restores.
#[test]
fn writes_lost_at_a_power_cut_never_cost_an_earlier_image() {
    let (pristine, before, changed) = start(4);
    let opts = BackupOptions { source_id: Some("disk".into()), force_read: true, ..Default::default() };
    let mut cuts = 0;
    for keep in 0.. {
        let repo = pristine.copy();
        let lossy = Arc::new(Lossy::new(&repo.path));
        let backend = Arc::new(LossyBackend(lossy.clone()));
        let w = Repository::open_writer_on_with(&repo.path, "test", backend, &common::credentials()).unwrap();
        let lost_image = strata::backup(&w, &repo.file("disk.img"), &opts, &Silent).unwrap();
        drop(w);
        let writes = lossy.writes();
        if keep >= writes {
            break;
        }
        let lost = lossy.power_cut(keep);
        cuts += 1;
        let when = format!("power cut after {keep} of {writes} writes (lost {lost:?})");
        let data_lost = lost.iter().any(|p| p.starts_with("packs/") || p.starts_with("images/"));
        for (id, bytes) in &before {
            let target = repo.file("earlier.img");
            repo.try_restore(&id.to_string(), &target).unwrap_or_else(|e| panic!("{when}: {id}: {e}"));
            assert!(std::fs::read(&target).unwrap() == *bytes, "{when}: image {id} restores other bytes");
        }
        let r = common::open_repo(&repo.path).unwrap();
        let report = strata::check::check(&r, strata::check::ReadData::All, &Silent).unwrap();
        assert_eq!(report.is_clean(), !data_lost, "{when}: {:#?}", report.problems);
        let last_restores = report.images.iter().any(|s| s.id == lost_image.id && s.restorable);
        assert_eq!(last_restores, !data_lost, "{when}: what check says of the last image");
        drop(r);
        let next = repo.try_backup(&repo.file("disk.img"), KindRequest::Full, true);
        let next = next.unwrap_or_else(|e| panic!("{when}: the next full backup: {e}"));
        let target = repo.file("next.img");
        repo.try_restore(&next.id.to_string(), &target).unwrap_or_else(|e| panic!("{when}: {e}"));
        assert!(std::fs::read(&target).unwrap() == changed, "{when}: the next full restores other bytes");
        assert!(keep < 10_000);
    }
    assert!(cuts >= 3, "only {cuts} cuts");
}
