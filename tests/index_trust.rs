//! The index is a cache that can be wrong; nothing that deletes data trusts it. Regression tests
//! for the data loss found by attacking main: a rebuild killed part-way, or a damaged RocksDB
//! log, left a partial index that every command accepted, `check` called the live packs
//! orphans, and `prune` deleted them.

mod common;

use std::collections::HashMap;

use common::{assert_clean_failure, assert_intact, strata_cmd, TestRepo};
use strata::id::ImageId;
use strata::index::Txn;
use strata::progress::Silent;
use strata::{Error, KindRequest};

/// Two sets, incrementals and a differential, with packs on both sides of every forget.
fn history(seed: u64) -> (TestRepo, HashMap<ImageId, Vec<u8>>) {
    use KindRequest::*;
    common::history(seed, &[Full, Incremental, Differential, Full, Incremental])
}

fn pack_files(repo: &TestRepo) -> Vec<std::path::PathBuf> {
    repo.files_in("packs").into_iter().filter(|p| !p.to_string_lossy().contains(".tmp.")).collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The reproduction from the issue: a RocksDB log damaged mid-file. RocksDB replays up to the
/// damaged record and drops the rest; the index that is left must be refused, not trusted.
#[test]
fn a_damaged_index_log_makes_prune_refuse_instead_of_deleting_live_packs() {
    let (repo, mut bytes) = history(1);
    // A writer killed before its index was flushed leaves its records in the write-ahead log:
    // here a full (published; then killed as it closed the index).
    let src = repo.file("disk.img");
    let out = strata_cmd()
        .arg("-r")
        .arg(&repo.path)
        .args(["backup", "--kind", "full"])
        .arg(&src)
        .env("STRATA_FAILPOINT", "index-before-flush")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the backup was not killed");
    let killed = repo.images().last().unwrap().id;
    assert!(!bytes.contains_key(&killed));
    bytes.insert(killed, std::fs::read(&src).unwrap());
    let log = repo
        .files_in("index")
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a write-ahead log");
    let mut data = std::fs::read(&log).unwrap();
    assert!(data.len() > 10_000, "log of {} bytes", data.len());
    let at = data.len() / 3;
    for b in &mut data[at..at + 30] {
        *b ^= 0x5a;
    }
    std::fs::write(&log, &data).unwrap();
    let packs_before = pack_files(&repo);

    assert_clean_failure(&repo.cli(&["prune", "--dry-run"]), "rebuild-index");
    assert_clean_failure(&repo.cli(&["prune"]), "rebuild-index");
    let check = repo.cli(&["check"]);
    assert!(!check.status.success(), "check accepts a partial index");
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(said.contains("rebuild-index"), "check does not point at rebuild-index: {said}");
    assert!(!said.contains("prune deletes them"), "check advises deleting live packs: {said}");
    assert_clean_failure(&repo.cli(&["backup", repo.file("disk.img").to_str().unwrap()]), "rebuild-index");
    assert_eq!(pack_files(&repo), packs_before, "a pack file went");

    let out = repo.cli(&["rebuild-index"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(repo.cli(&["prune", "--max-unused", "0"]).status.success());
    assert_eq!(repo.images().len(), bytes.len());
    assert_intact(&repo, &bytes, "after the rebuild");
}

/// An older copy of the index put back (a restored backup of the repository's disk, a manual
/// copy): it lacks packs and images, and knows packs that prune has since deleted.
#[test]
fn an_older_index_put_back_is_recognised_as_stale() {
    let (repo, mut bytes) = history(2);
    let old = repo.file("index.copy");
    common::copy_dir(&repo.path.join("index"), &old);
    let src = repo.file("disk.img");
    let next = repo.backup(&src, KindRequest::Full);
    bytes.insert(next.id, std::fs::read(&src).unwrap());
    let first = repo.images()[0].id.to_string();
    let out = repo.cli(&["forget", &first, "--prune", "--max-unused", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    bytes.retain(|id, _| repo.images().iter().any(|i| i.id == *id));

    std::fs::remove_dir_all(repo.path.join("index")).unwrap();
    common::copy_dir(&old, &repo.path.join("index"));
    let open = common::open_writer(&repo.path, "test");
    assert!(matches!(open, Err(Error::IndexStale { .. })), "a writer accepted a stale index");
    assert_clean_failure(&repo.cli(&["prune", "--dry-run"]), "older than the repository");
    assert_clean_failure(&repo.cli(&["backup", src.to_str().unwrap()]), "rebuild-index");
    let check = repo.cli(&["check"]);
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stdout).contains("older than the repository"));

    assert!(repo.cli(&["rebuild-index"]).status.success());
    assert_intact(&repo, &bytes, "after the rebuild");
}

/// Even an index that claims to be complete and current is not trusted with a deletion: a
/// manifest naming a chunk the index does not know stops prune.
#[test]
fn prune_refuses_when_a_manifest_names_a_chunk_the_index_does_not_know() {
    let (repo, bytes) = history(3);
    let victim = common::independent(&repo.path).referenced.into_iter().next().unwrap();
    {
        let r = common::open_writer(&repo.path, "test").unwrap();
        let mut b = Txn::new();
        b.damage_forget_chunk(&victim);
        r.index().commit(b).unwrap();
    }
    let r = common::open_writer(&repo.path, "test").unwrap();
    let plan = strata::prune::plan(&r, 0.0);
    assert!(matches!(plan, Err(Error::IndexMissesChunk { .. })), "{plan:?}");
    drop(r);
    assert_clean_failure(&repo.cli(&["prune"]), "rebuild-index");
    assert!(repo.cli(&["rebuild-index"]).status.success());
    assert_intact(&repo, &bytes, "after the rebuild");
}

/// A chunk that the index marks unused while a manifest names it (counters gone wrong) is never
/// dropped: prune refuses.
#[test]
fn prune_refuses_to_drop_a_chunk_marked_dead_that_an_image_needs() {
    let (repo, bytes) = history(4);
    let victim = common::independent(&repo.path).referenced.into_iter().next().unwrap();
    {
        let r = common::open_writer(&repo.path, "test").unwrap();
        let mut b = Txn::new();
        b.damage_mark_dead(&victim);
        r.index().commit(b).unwrap();
    }
    let r = common::open_writer(&repo.path, "test").unwrap();
    let plan = strata::prune::plan(&r, 0.0);
    assert!(matches!(plan, Err(Error::IndexDisagrees { .. })), "{plan:?}");
    drop(r);
    let packs = pack_files(&repo);
    assert_clean_failure(&repo.cli(&["prune", "--max-unused", "0"]), "rebuild-index");
    assert_eq!(pack_files(&repo), packs);
    assert!(repo.cli(&["rebuild-index"]).status.success());
    assert_intact(&repo, &bytes, "after the rebuild");
}

/// A pack duplicated under another name is an orphan whose every chunk has its indexed copy:
/// prune deletes it. But once the indexed original is gone, the orphan holds the only copy of
/// chunks that images need, and prune keeps it (and check says to rebuild the index).
#[test]
fn an_orphan_goes_only_when_another_copy_of_what_images_need_stays() {
    let (repo, bytes) = history(5);
    let original = pack_files(&repo).into_iter().next().unwrap();
    let dup_name = format!("ab{}", "0".repeat(62));
    let dup = repo.path.join("packs").join("ab").join(&dup_name);
    std::fs::create_dir_all(dup.parent().unwrap()).unwrap();
    std::fs::copy(&original, &dup).unwrap();
    let r = common::open_writer(&repo.path, "test").unwrap();
    let plan = strata::prune::plan(&r, 10.0).unwrap();
    if common::encrypted() {
        // An encrypted pack's trailer is sealed under its name: the renamed copy does not open,
        // so what it holds is unknown and prune leaves it alone.
        assert!(plan.orphans.is_empty(), "{:?}", plan.orphans);
        let kept = plan.kept_orphans.iter().find(|(p, _)| p.ends_with(&dup_name)).expect("the copy is kept");
        assert!(kept.1.contains("trailer cannot be read"), "{kept:?}");
        drop(r);
        assert!(repo.cli(&["prune", "--max-unused", "0"]).status.success());
        assert!(dup.exists(), "prune deleted a pack it could not read");
        std::fs::remove_file(&dup).unwrap();
        assert_intact(&repo, &bytes, "after prune, the copy removed");
        return;
    }
    assert_eq!(plan.orphans.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(), vec![format!("packs/ab/{dup_name}")]);
    assert!(plan.kept_orphans.is_empty());
    drop(r);

    // The original goes (the index still names it): the duplicate is now the only copy.
    std::fs::remove_file(&original).unwrap();
    let r = common::open_writer(&repo.path, "test").unwrap();
    let plan = strata::prune::plan(&r, 10.0).unwrap();
    assert!(plan.orphans.is_empty(), "prune would delete the only copy: {plan:?}");
    assert_eq!(plan.kept_orphans.len(), 1);
    strata::prune::execute(&r, &plan, &Silent).unwrap();
    drop(r);
    assert!(dup.exists());
    let check = repo.cli(&["check"]);
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(said.contains("never delete this pack"), "{said}");
    // Every image still restores (the copy is found); back under its true name, all is well.
    for info in repo.images() {
        assert!(repo.restore_bytes(&info) == bytes[&info.id]);
    }
    std::fs::rename(&dup, &original).unwrap();
    assert!(repo.cli(&["rebuild-index"]).status.success());
    assert_intact(&repo, &bytes, "after the rebuild");
}

/// A damaged table file of the index must likewise never lead to a deletion: RocksDB finds the
/// damage when it reads the block (or at open), and prune stops instead of guessing.
#[test]
fn a_damaged_index_table_file_never_leads_to_a_deletion() {
    let (repo, bytes) = history(6);
    let out = repo.cli(&["forget", &repo.images()[1].id.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tables: Vec<_> =
        repo.files_in("index").into_iter().filter(|p| p.extension().is_some_and(|e| e == "sst")).collect();
    assert!(!tables.is_empty());
    for t in &tables {
        let mut data = std::fs::read(t).unwrap();
        let (at, len) = (data.len() / 2, data.len());
        for b in &mut data[at..(at + 64).min(len)] {
            *b ^= 0xa5;
        }
        std::fs::write(t, &data).unwrap();
    }
    let packs = pack_files(&repo);
    let out = repo.cli(&["prune", "--max-unused", "0"]);
    assert!(!out.status.success(), "prune ran on a damaged index");
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    assert_eq!(pack_files(&repo), packs, "a pack file went");
    assert!(repo.cli(&["rebuild-index"]).status.success());
    let mut kept = bytes.clone();
    kept.retain(|id, _| repo.images().iter().any(|i| i.id == *id));
    assert_intact(&repo, &kept, "after the rebuild");
}

/// A journal that does not decode once decoded as an empty one, silently dropping the list of
/// images an interrupted forget was removing. It is an error that says so.
#[test]
fn a_journal_that_does_not_decode_is_an_error_not_an_empty_journal() {
    let (repo, _) = history(7);
    {
        let r = common::open_writer(&repo.path, "test").unwrap();
        let mut b = Txn::new();
        b.damage_journal(b"{not json");
        r.index().commit(b).unwrap();
    }
    let err = common::open_writer(&repo.path, "test").err().expect("a damaged journal was accepted");
    assert!(err.to_string().contains("journal"), "{err}");
    assert_clean_failure(&repo.cli(&["prune"]), "forget them again");
}
