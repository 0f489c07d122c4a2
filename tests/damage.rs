//! Damage is detected and attributed exactly: `check` names the images a fault breaks and no
//! other; restore (which verifies every chunk) is the independent oracle. A lost index is rebuilt
//! from packs and manifests alone. The damage is done to the stored objects (`TestRepo::stored`),
//! so the same tests run on a bucket (.ci/test); the two about the local index do not.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::{assert_stats_add_up, Disk, TestRepo};
use strata::check::{CheckReport, ReadData};
use strata::id::{ChunkId, ImageId};
use strata::index::ChunkLookup;
use strata::manifest::Content;
use strata::progress::Silent;
use strata::KindRequest;

const MIB: usize = 1 << 20;

/// Two sets with incrementals and a differential; returns the repo and each image's bytes.
fn history(seed: u64) -> (TestRepo, HashMap<ImageId, Vec<u8>>) {
    use KindRequest::*;
    common::history(seed, &[Full, Incremental, Incremental, Differential, Incremental, Full, Incremental])
}

fn check(repo: &TestRepo, read: ReadData) -> CheckReport {
    let r = common::open_repo(&repo.path).unwrap();
    strata::check::check(&r, read, &Silent).unwrap()
}

/// The images that really restore (restore verifies every chunk it writes).
fn restorable(repo: &TestRepo, bytes: &HashMap<ImageId, Vec<u8>>) -> BTreeSet<ImageId> {
    let target = repo.file("oracle.img");
    bytes
        .iter()
        .filter(|(id, want)| {
            repo.try_restore(&id.to_string(), &target).is_ok() && std::fs::read(&target).unwrap() == **want
        })
        .map(|(id, _)| *id)
        .collect()
}

/// `check` says exactly which images restore: the oracle's answer, no more, no less.
fn assert_attribution(repo: &TestRepo, bytes: &HashMap<ImageId, Vec<u8>>, report: &CheckReport) {
    let said: BTreeSet<ImageId> = report.images.iter().filter(|i| i.restorable).map(|i| i.id).collect();
    let real = restorable(repo, bytes);
    assert_eq!(said, real, "check's restorable images differ from what really restores: {:#?}", report.problems);
    assert!(real.len() < bytes.len(), "the fault should break at least one image");
    assert!(!real.is_empty(), "the fault should leave some images intact");
    for p in &report.problems {
        assert!(p.images.iter().all(|i| !real.contains(i)), "problem {p:?} names an image that restores");
    }
}

/// The packs (object names) that hold the chunks `image`'s own manifest names.
fn packs_of(repo: &TestRepo, image: &strata::ImageInfo) -> BTreeSet<String> {
    let r = common::open_repo(&repo.path).unwrap();
    let (_, extents) = strata::manifest::open_manifest(r.backend(), &image.id).unwrap();
    let ids: Vec<ChunkId> = extents
        .filter_map(|e| match e.unwrap().content {
            Content::Chunk { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    r.index().locate(&ids).unwrap().into_iter().flatten().map(|l| l.pack.path()).collect()
}

/// A pack that only the last backup wrote, so it holds data only recent images use.
fn a_pack(repo: &TestRepo) -> String {
    let images = repo.images();
    let (last, older) = images.split_last().expect("images");
    let before: BTreeSet<String> = older.iter().flat_map(|i| packs_of(repo, i)).collect();
    packs_of(repo, last).difference(&before).next().cloned().expect("a pack only the last image uses")
}

/// The last part of an object's name (a pack's id).
fn base_name(object: &str) -> String {
    object.rsplit('/').next().unwrap_or(object).to_string()
}

fn pack_count(repo: &TestRepo) -> usize {
    repo.stored().list("packs").unwrap().len()
}

#[test]
fn a_clean_repository_checks_clean() {
    let (repo, bytes) = history(1);
    let r = check(&repo, ReadData::All);
    assert!(r.is_clean(), "{:#?}", r.problems);
    assert_eq!(r.images.len(), bytes.len());
    assert!(r.images.iter().all(|i| i.restorable));
    assert!(r.chunks_read > 0 && r.packs_read == pack_count(&repo));
    let out = repo.cli(&["check", "--read-data"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_flipped_byte_in_a_pack_is_found_by_read_data_and_attributed() {
    let (repo, bytes) = history(2);
    let pack = a_pack(&repo);
    repo.alter(&pack, |b| b[200] ^= 0x20); // inside the first frame
    let r = check(&repo, ReadData::All);
    assert!(!r.is_clean());
    let name = base_name(&pack);
    assert!(r.problems.iter().any(|p| p.kind == "chunk" && p.detail.contains(&name)), "{:#?}", r.problems);
    assert_attribution(&repo, &bytes, &r);
    let out = repo.cli(&["check", "--read-data"]);
    common::assert_clean_failure(&out, "problem");
}

#[test]
fn a_truncated_or_deleted_pack_is_found_by_the_structure_check() {
    for cut in [true, false] {
        let (repo, bytes) = history(3);
        let pack = a_pack(&repo);
        if cut {
            repo.alter(&pack, |b| b.truncate(b.len() / 2));
        } else {
            repo.stored().remove(&pack).unwrap();
        }
        let r = check(&repo, ReadData::None);
        assert!(r.problems.iter().any(|p| p.kind == "pack"), "{:#?}", r.problems);
        assert_attribution(&repo, &bytes, &r);
    }
}

#[test]
fn a_manifest_deleted_in_the_middle_of_a_chain_breaks_only_that_chain() {
    let (repo, bytes) = history(4);
    let images = repo.images();
    let middle = &images[1]; // an incremental with dependents
    repo.stored().remove(&manifest_name(&middle.id)).unwrap();
    let r = check(&repo, ReadData::None);
    let p = r.problems.iter().find(|p| p.kind == "manifest").expect("a manifest problem");
    assert_eq!(p.object, middle.id.to_string());
    assert!(p.images.len() >= 2, "it breaks itself and its dependents: {p:?}");
    let mut without = bytes.clone();
    without.remove(&middle.id);
    let said: BTreeSet<ImageId> = r.images.iter().filter(|i| i.restorable).map(|i| i.id).collect();
    assert_eq!(said, restorable(&repo, &without));
    assert!(said.contains(&images[3].id), "the differential rests on the full, not on the lost incremental");
}

#[test]
fn a_lost_index_is_rebuilt_from_packs_and_manifests() {
    let (repo, bytes) = history(5);
    let stats_before = strata::stats::stats(&common::open_repo(&repo.path).unwrap()).unwrap();
    std::fs::remove_dir_all(repo.path.join("index")).unwrap();
    common::assert_clean_failure(&repo.cli(&["images"]), "index");
    let out = repo.cli(&["rebuild-index"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = check(&repo, ReadData::All);
    assert!(r.is_clean(), "{:#?}", r.problems);
    assert_eq!(restorable(&repo, &bytes).len(), bytes.len());
    assert_stats_add_up(&repo.path);
    let stats_after = strata::stats::stats(&common::open_repo(&repo.path).unwrap()).unwrap();
    assert_eq!(stats_after.sets, stats_before.sets);
    // And the repository keeps working.
    let src = repo.file("disk.img");
    let next = repo.try_backup(&src, KindRequest::Auto, true).unwrap();
    assert!(repo.restore_bytes(&next) == std::fs::read(&src).unwrap());
}

#[test]
fn a_damaged_index_is_moved_aside_and_rebuilt() {
    let (repo, bytes) = history(6);
    for f in std::fs::read_dir(repo.path.join("index")).unwrap().flatten() {
        if f.file_name().to_string_lossy().ends_with(".sst") {
            std::fs::write(f.path(), b"garbage").unwrap();
        }
    }
    let out = repo.cli(&["rebuild-index", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["old_index"].as_str().unwrap().contains("index.old-"));
    assert!(check(&repo, ReadData::All).is_clean());
    assert_eq!(restorable(&repo, &bytes).len(), bytes.len());
}

#[test]
fn verify_checks_one_image() {
    let (repo, _) = history(7);
    let images = repo.images();
    let out = repo.cli(&["verify", &images[2].id.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for p in repo.stored().list("packs").unwrap() {
        repo.alter(&p, |b| b[100] ^= 1);
    }
    common::assert_clean_failure(&repo.cli(&["verify", &images[2].id.to_string()]), "damaged");
}

#[test]
fn a_restore_that_meets_damage_leaves_the_target_untouched_unless_partial() {
    let (repo, bytes) = history(8);
    let pack = a_pack(&repo);
    repo.alter(&pack, |b| b[300] ^= 0x01);
    let latest = repo.images().last().unwrap().clone();
    let target = repo.file("target.img");
    std::fs::write(&target, b"the old contents").unwrap();
    let out = repo.cli(&["restore", &latest.id.to_string(), target.to_str().unwrap()]);
    common::assert_clean_failure(&out, "damaged");
    assert_eq!(std::fs::read(&target).unwrap(), b"the old contents", "a failed restore must not touch the target");
    let leftovers: Vec<_> = std::fs::read_dir(repo.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("strata-restore"))
        .collect();
    assert!(leftovers.is_empty(), "temporary file left behind");

    // --partial restores everything else and lists what it could not.
    let out = repo.cli(&["restore", "--partial", "--json", &latest.id.to_string(), target.to_str().unwrap()]);
    assert!(!out.status.success(), "an incomplete restore must say so in its exit code");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let damaged = v["damaged"].as_array().unwrap();
    assert!(!damaged.is_empty());
    let restored = std::fs::read(&target).unwrap();
    let want = &bytes[&latest.id];
    assert_eq!(restored.len(), want.len());
    let mut lost = vec![false; want.len()];
    for d in damaged {
        let (o, n) = (d["offset"].as_u64().unwrap() as usize, d["len"].as_u64().unwrap() as usize);
        lost[o..o + n].iter_mut().for_each(|x| *x = true);
        assert!(restored[o..o + n].iter().all(|&x| x == 0), "damaged ranges are zeros");
    }
    assert!(restored.iter().zip(want).zip(&lost).all(|((r, w), l)| *l || r == w), "everything else is exact");
}

/// Whichever of the image's packs is gone, a restore to a file fails with the preflight's error
/// (naming the pack) before it writes anything, and the target keeps its old bytes.
#[test]
fn a_lost_pack_fails_a_restore_to_a_file_with_the_preflights_error_and_no_write() {
    let (repo, bytes) = history(9);
    let latest = repo.images().last().unwrap().clone();
    let target = repo.file("target.img");
    let stored = repo.stored();
    for pack in packs_of(&repo, &latest) {
        let kept = stored.get(&pack).unwrap();
        stored.remove(&pack).unwrap();
        std::fs::write(&target, b"the old contents").unwrap();
        let out = repo.cli(&["restore", &latest.id.to_string(), target.to_str().unwrap()]);
        common::assert_clean_failure(&out, &format!("pack {} is damaged: missing", base_name(&pack)));
        assert_eq!(std::fs::read(&target).unwrap(), b"the old contents", "{pack}: the target was touched");
        let leftovers = std::fs::read_dir(repo.dir.path()).unwrap().flatten();
        assert_eq!(leftovers.filter(|e| e.file_name().to_string_lossy().contains("strata-restore")).count(), 0);
        stored.put(&pack, &kept).unwrap();
    }
    repo.try_restore(&latest.id.to_string(), &target).unwrap();
    assert!(std::fs::read(&target).unwrap() == bytes[&latest.id]);
}

#[test]
fn an_intact_copy_in_another_pack_is_used() {
    let (repo, bytes) = history(9);
    let pack = a_pack(&repo);
    // A second copy of the pack under another name (as an interrupted run can leave).
    let copy = format!("packs/ff/{}", "ff".repeat(32));
    repo.stored().put(&copy, &repo.stored().get(&pack).unwrap()).unwrap();
    repo.alter(&pack, |b| b[200] ^= 0x04);
    let r = check(&repo, ReadData::All);
    if common::encrypted() {
        // An encrypted pack's frames and trailer name the pack they were written into: the copy
        // under another name is a pack whose contents do not open, never a copy to use.
        let name = base_name(&copy);
        assert!(r.problems.iter().any(|p| p.object.contains(&name)), "the renamed copy: {:#?}", r.problems);
        assert_attribution(&repo, &bytes, &r);
        return;
    }
    let p = r.problems.iter().find(|p| p.kind == "chunk").expect("the damage is still reported");
    assert!(p.detail.contains("intact copy"), "{p:?}");
    assert!(p.images.is_empty());
    assert!(r.images.iter().all(|i| i.restorable), "{:#?}", r.images);
    assert_eq!(restorable(&repo, &bytes).len(), bytes.len(), "restores use the intact copy");
}

#[test]
fn altered_bytes_that_change_no_chunk_are_still_reported() {
    // The pack header's flags field is read by no decoder of frames: the pack's name (the hash
    // of its bytes) tells, and so does the flag no version knows. No image is affected, but the
    // repository is not as written.
    let (repo, bytes) = history(10);
    let pack = a_pack(&repo);
    repo.alter(&pack, |b| b[10] ^= 0x80);
    let r = check(&repo, ReadData::All);
    let name = base_name(&pack);
    let p = r.problems.iter().find(|p| p.kind == "pack").expect("reported");
    assert_eq!(p.object, name);
    assert!(p.images.is_empty());
    assert!(r.images.iter().all(|i| i.restorable));
    assert_eq!(restorable(&repo, &bytes).len(), bytes.len());
}

#[test]
fn a_backup_after_a_pack_was_lost_stores_its_chunks_again() {
    let (repo, _) = history(11);
    let first = packs_of(&repo, &repo.images()[0]).into_iter().next().expect("a pack of the first full");
    repo.stored().remove(&first).unwrap(); // a pack of the first full: most images break
    let src = repo.file("disk.img");
    // New data too, so that chunks stored again share frames with new chunks.
    let mut now = std::fs::read(&src).unwrap();
    for (i, at) in [3usize, 11, 29].iter().enumerate() {
        let at = (at * now.len() / 37) & !4095;
        for (j, b) in now[at..at + 8192].iter_mut().enumerate() {
            *b = (i * 31 + j * 7) as u8 ^ 0x5a;
        }
    }
    std::fs::write(&src, &now).unwrap();
    let healed = repo.try_backup(&src, KindRequest::Full, true).unwrap();
    assert!(healed.new_stored_bytes > 0, "the lost chunks are stored again");
    assert!(repo.restore_bytes(&healed) == now, "the new image does not depend on the lost pack");
    let r = check(&repo, ReadData::All);
    let status = r.images.iter().find(|i| i.id == healed.id).unwrap();
    assert!(status.restorable, "{status:?}");
    assert!(r.problems.iter().any(|p| p.kind == "pack" && p.detail.contains("missing")), "the loss is still reported");
    // The chunks stored again sit in new frames, with new shares of stored bytes: the counters
    // follow them (check would otherwise report them as wrong).
    let wrong: Vec<_> = r.problems.iter().filter(|p| p.kind == "counters").collect();
    assert!(wrong.is_empty(), "{wrong:?}");
    assert_stats_add_up(&repo.path);
}

fn manifest_name(id: &ImageId) -> String {
    format!("images/{id}")
}

/// After a rebuild with an unreadable manifest there was no way out: check said "no problems",
/// prune refused "until it is restored or forgotten", and forget said "no image matches".
#[test]
fn a_damaged_image_stays_visible_and_can_be_forgotten_with_what_rests_on_it() {
    let (repo, mut bytes) = history(21);
    let images = repo.images();
    // images[1] is the first incremental; images[2] rests on it, images[3] (a differential) does not.
    let victim = images[1].id;
    repo.stored().put(&manifest_name(&victim), b"not a manifest at all").unwrap();
    let out = repo.cli(&["rebuild-index"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let listed = repo.cli(&["images"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains(&victim.short()) && text.contains("DAMAGED"), "{text}");
    let json: serde_json::Value = serde_json::from_slice(&repo.cli(&["images", "--json"]).stdout).unwrap();
    assert!(json.as_array().unwrap().iter().any(|i| i["image"] == victim.to_string() && i["damaged"] == true));

    let r = check(&repo, ReadData::None);
    assert!(!r.is_clean());
    assert!(r.problems.iter().any(|p| p.kind == "manifest" && p.object == victim.to_string()), "{:#?}", r.problems);
    let status = |id: ImageId| r.images.iter().find(|s| s.id == id).map(|s| s.restorable);
    assert_eq!(status(victim), Some(false));
    assert_eq!(status(images[2].id), Some(false), "it rests on the damaged image");
    assert_eq!(status(images[3].id), Some(true));
    common::assert_clean_failure(&repo.cli(&["prune"]), "forget");

    let out = repo.cli(&["forget", &victim.short()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let left: Vec<ImageId> = repo.images().iter().map(|i| i.id).collect();
    assert!(!left.contains(&victim) && !left.contains(&images[2].id), "{left:?}");
    assert_eq!(left.len(), images.len() - 2);
    assert!(repo.cli(&["prune", "--max-unused", "0"]).status.success());
    bytes.retain(|id, _| left.contains(id));
    common::assert_intact(&repo, &bytes, "after forgetting the damaged image");
}

/// A catalogued image whose manifest got damaged is forgotten the same way, counters rebuilt.
#[test]
fn a_catalogued_image_with_a_damaged_manifest_can_be_forgotten() {
    let (repo, mut bytes) = history(22);
    let images = repo.images();
    let victim = images[4].id; // the last incremental of the first set: nothing rests on it
    repo.alter(&manifest_name(&victim), |data| data[20] ^= 0xff);
    let out = repo.cli(&["forget", &victim.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    bytes.remove(&victim);
    assert!(repo.cli(&["prune", "--max-unused", "0"]).status.success());
    common::assert_intact(&repo, &bytes, "after forgetting");
}

/// A failed `forget FULL --rebase` (the full's manifest damaged) was rolled forward by the next,
/// unrelated backup without the rebase: the full vanished and its dependent kept a base that was
/// no longer there. Now it fails before writing anything, and stays failed.
#[test]
fn a_forget_that_cannot_be_carried_out_fails_before_anything_changes() {
    let (repo, _) = history(23);
    let images = repo.images();
    let full2 = images.iter().filter(|i| i.kind == strata::Kind::Full).nth(1).unwrap().id;
    repo.alter(&manifest_name(&full2), |data| data[15] ^= 0xff);
    let before: Vec<strata::ImageInfo> = repo.images();
    common::assert_clean_failure(&repo.cli(&["forget", "--rebase", &full2.to_string()]), "rebase");
    assert_eq!(repo.images(), before, "a failed forget changed the catalog");
    // The next, unrelated writer finds nothing to roll forward.
    let src = repo.file("disk.img");
    let next = repo.backup(&src, KindRequest::Full);
    let after: Vec<ImageId> = repo.images().iter().map(|i| i.id).collect();
    assert!(before.iter().all(|b| after.contains(&b.id)), "an image vanished");
    assert!(after.contains(&next.id));
    for i in repo.images().iter().filter(|i| i.base.is_some()) {
        assert!(after.contains(&i.base.unwrap()), "image {} lost its base", i.id);
    }
}

/// Recovery does exactly what the journal says: a forget killed while rewriting is undone, one
/// killed while deleting is finished.
#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (.ci/test enables it)")]
fn recovery_undoes_a_forget_that_was_rewriting_and_finishes_one_that_was_deleting() {
    for (point, finished) in [("forget-after-rewrite", false), ("forget-after-delete", true)] {
        let (repo, bytes) = history(24);
        let images = repo.images();
        let named = images[1].id; // an incremental with a dependent: one rewrite
        let status = common::strata_cmd()
            .arg("-r")
            .arg(&repo.path)
            .args(["forget", &named.to_string()])
            .env("STRATA_FAILPOINT", point)
            .output()
            .unwrap();
        assert!(!status.status.success(), "{point} did not fire");
        assert!(repo.cli(&["prune", "--dry-run"]).status.success(), "{point}: recovery failed");
        let listed: Vec<ImageId> = repo.images().iter().map(|i| i.id).collect();
        assert_eq!(!listed.contains(&named), finished, "{point}");
        assert_eq!(listed.len(), images.len() - usize::from(finished), "{point}");
        let mut kept = bytes.clone();
        kept.retain(|id, _| listed.contains(id));
        common::assert_intact(&repo, &kept, point);
    }
}

/// `verify` of a 1.1 MiB image once read all 9 packs (143.5 MiB). It reads only what its chain
/// needs.
#[test]
fn verify_reads_only_the_packs_its_chain_needs() {
    let (repo, _) = history(25);
    let small = repo.file("small.img");
    Disk::new(99, MIB + MIB / 8).random(0..MIB + MIB / 8).write_to(&small);
    let r = common::open_writer(&repo.path, "test").unwrap();
    let opts = strata::BackupOptions { source_id: Some("small".into()), ..Default::default() };
    let info = strata::backup(&r, &small, &opts, &Silent).unwrap();
    drop(r);
    let packs = pack_count(&repo);
    let r = common::open_repo(&repo.path).unwrap();
    let report = strata::check::verify(&r, &info, &Silent).unwrap();
    assert!(report.is_clean(), "{:#?}", report.problems);
    assert!(packs >= 5, "{packs} packs");
    assert!(report.packs_read <= 2, "verify read {} of {packs} packs", report.packs_read);
    assert!(report.bytes_read < 3 * MIB as u64, "verify read {} bytes", report.bytes_read);
}

/// Found by reading the code: check indexed its per-pack table with every indexed pack, so a
/// missing pack that nothing references any more, plus any damaged image, made it panic.
#[test]
fn a_missing_dead_pack_beside_a_damaged_image_is_reported_not_a_panic() {
    let (repo, _) = history(26);
    // Another source with data of its own, forgotten: its pack becomes entirely dead (not pruned).
    let other = repo.file("other.img");
    Disk::new(77, MIB).random(0..MIB).write_to(&other);
    let w = common::open_writer(&repo.path, "test").unwrap();
    let opts = strata::BackupOptions { source_id: Some("other".into()), ..Default::default() };
    let info = strata::backup(&w, &other, &opts, &Silent).unwrap();
    drop(w);
    let out = repo.cli(&["forget", &info.id.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = common::open_repo(&repo.path).unwrap();
    let dead = r.index().packs().unwrap().into_iter().find(|(_, rec)| rec.dead_chunks == rec.chunks);
    drop(r);
    let (dead, _) = dead.expect("a pack only the forgotten image used");
    repo.stored().remove(&dead.path()).unwrap();
    // And damage in a pack that a kept image needs.
    let live = repo.stored().list("packs").unwrap().into_iter().find(|p| !p.ends_with(&dead.to_string())).unwrap();
    repo.alter(&live, |data| data[40] ^= 0xff);
    let report = check(&repo, ReadData::All);
    assert!(report.problems.iter().any(|p| p.kind == "pack" && p.object == dead.to_string()), "{:#?}", report.problems);
    assert!(report.images.iter().any(|i| !i.restorable));
}

/// An older copy of a manifest put back in its place (replayed from an old copy of the
/// repository, where an encrypted one still opens: it was sealed with the same key under the
/// same name) is refused by every read and reported by check, by the generation each manifest
/// carries: older than the catalog's entry, older than its dependent knew, or a forgotten image
/// that the catalog no longer lists.
#[test]
fn an_older_copy_of_a_manifest_put_back_is_refused_and_reported() {
    use KindRequest::*;
    let (repo, bytes) = common::history(12, &[Full, Incremental, Incremental]);
    let images = repo.images();
    let (b, c) = (images[1].id, images[2].id);
    let stored = repo.stored();
    let manifest = |id: ImageId| manifest_name(&id);
    let (old_b, old_c) = (stored.get(&manifest(b)).unwrap(), stored.get(&manifest(c)).unwrap());
    // Forgetting B rewrites C onto the full; D is then written on the rewritten C.
    let out = repo.cli(&["forget", &b.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let src = repo.file("disk.img");
    let d = repo.try_backup(&src, Incremental, true).unwrap();
    assert_eq!(d.base, Some(c));
    let want_d = std::fs::read(&src).unwrap();
    let new_c = stored.get(&manifest(c)).unwrap();
    let restore = |id: ImageId| repo.try_restore(&id.to_string(), &repo.file("r.img")).map(|_| ());

    // Both old manifests back: the old chain D → C → B → A is whole, yet refused.
    stored.put(&manifest(c), &old_c).unwrap();
    stored.put(&manifest(b), &old_b).unwrap();
    for id in [c, d.id] {
        let err = restore(id).expect_err("an image over a replayed manifest restored");
        assert!(err.to_string().contains("older copy"), "{err}");
    }
    assert!(!repo.images().iter().any(|i| i.id == b), "a forgotten image came back");
    let report = strata::check::check(&common::open_repo(&repo.path).unwrap(), ReadData::None, &Silent).unwrap();
    let said = format!("{:?}", report.problems);
    assert!(said.contains("older copy") && said.contains("forgotten image"), "{said}");
    let restorable: Vec<ImageId> = report.images.iter().filter(|i| i.restorable).map(|i| i.id).collect();
    assert_eq!(restorable, vec![images[0].id], "{:#?}", report.problems);
    // A writer takes neither in: an incremental on D says to take a full, and B stays out.
    let err = repo.try_backup(&src, Incremental, true).expect_err("a backup on a replayed chain");
    assert!(err.to_string().contains("--kind full"), "{err}");
    assert!(!repo.images().iter().any(|i| i.id == b));

    // The real manifest back, the forgotten one gone: everything restores as it was.
    stored.put(&manifest(c), &new_c).unwrap();
    stored.remove(&manifest(b)).unwrap();
    let target = repo.file("r.img");
    repo.try_restore(&d.id.to_string(), &target).unwrap();
    assert!(std::fs::read(&target).unwrap() == want_d);
    repo.try_restore(&c.to_string(), &target).unwrap();
    assert!(std::fs::read(&target).unwrap() == bytes[&c]);
    assert!(check(&repo, ReadData::All).is_clean());
}
