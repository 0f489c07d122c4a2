//! `copy` moves images between repositories, storing only the chunks the destination lacks:
//! every copied image restores byte-identical from the destination, a second copy moves only
//! what is new, and repositories that name chunks differently are refused before anything is
//! written. (Killed at every step: tests/crash.rs; a local repository mirrored to a bucket and
//! back: tests/s3.rs.)

mod common;

use std::collections::HashMap;

use common::{assert_clean_failure, assert_intact, strata_cmd, TestRepo, PASSWORD};
use strata::crypto::keyfile::KdfParams;
use strata::id::ImageId;
use strata::repository::Encryption;
use strata::{Error, InitOptions, KindRequest, Repository};

const MIB: usize = 1 << 20;

fn kinds() -> Vec<KindRequest> {
    vec![KindRequest::Full, KindRequest::Incremental, KindRequest::Differential, KindRequest::Incremental]
}

#[test]
fn copied_images_restore_byte_identical_and_a_second_copy_moves_only_what_is_new() {
    let (src, mut expected) = common::history(31, &kinds());
    let dst = src.receiving_copies();
    let first = src.copy_to(&dst, &[]).expect("copy");
    assert_eq!(first.copied.len(), 4);
    assert!(first.present.is_empty());
    assert!(first.chunks > 100 && first.packs >= 1, "{first:?}");
    let ids = |r: &TestRepo| r.images().iter().map(|i| i.id).collect::<Vec<ImageId>>();
    assert_eq!(ids(&dst), ids(&src));
    assert_intact(&dst, &expected, "after the first copy");

    // A new full in the source: the next copy brings it, and of its chunks only those the
    // source had to store too (the destination held the same chunks until then).
    let disk_path = src.file("disk.img");
    let mut disk = std::fs::read(&disk_path).expect("disk");
    disk[MIB..MIB + 40_000].fill(0x5a);
    std::fs::write(&disk_path, &disk).expect("write disk");
    let fifth = src.try_backup(&disk_path, KindRequest::Full, true).expect("backup");
    expected.insert(fifth.id, disk.clone());
    let second = src.copy_to(&dst, &[]).expect("second copy");
    assert_eq!(second.copied.iter().map(|i| i.id).collect::<Vec<_>>(), vec![fifth.id]);
    assert_eq!(second.present.len(), 4);
    assert!(second.chunks >= 1 && second.chunks == fifth.new_chunks, "{second:?} for {fifth:?}");
    assert!(second.chunks_present > 100, "{second:?}");
    assert_intact(&dst, &expected, "after the second copy");

    let third = src.copy_to(&dst, &[]).expect("third copy");
    assert!(third.copied.is_empty() && third.chunks == 0 && third.packs == 0, "{third:?}");
    assert_eq!(third.present.len(), 5);
}

#[test]
fn copying_one_image_brings_the_images_it_depends_on_and_no_other() {
    let (src, expected) = common::history(
        32,
        &[KindRequest::Full, KindRequest::Incremental, KindRequest::Full, KindRequest::Incremental],
    );
    let images = src.images();
    let dst = src.receiving_copies();
    let report = src.copy_to(&dst, &[&images[1].id.short()]).expect("copy");
    let copied: Vec<ImageId> = report.copied.iter().map(|i| i.id).collect();
    assert_eq!(copied, vec![images[0].id, images[1].id], "the incremental and its full, in that order");
    assert_intact(&dst, &expected, "after copying one incremental");
    // A base the destination has already is not copied again.
    let report = src.copy_to(&dst, &[&images[3].id.short()]).expect("copy");
    assert_eq!(report.copied.iter().map(|i| i.id).collect::<Vec<_>>(), vec![images[2].id, images[3].id]);
    assert_intact(&dst, &expected, "after copying the second set");
}

#[test]
fn a_backup_into_the_destination_deduplicates_against_copied_images() {
    let (src, _) = common::history(33, &[KindRequest::Full]);
    let dst = src.receiving_copies();
    src.copy_to(&dst, &[]).expect("copy");
    // The same disk backed up into the destination directly: chunked with the same chunker
    // (and seed) and named with the same key, so nothing new is stored.
    let disk = src.file("disk.img");
    let again = dst.try_backup(&disk, KindRequest::Full, true).expect("backup into the destination");
    assert_eq!(again.new_chunks, 0, "{again:?}");
}

fn encrypted_with(password: &str) -> InitOptions {
    InitOptions {
        encryption: Encryption::Repokey {
            password: zeroize::Zeroizing::new(password.as_bytes().to_vec()),
            kdf: KdfParams::weak_for_tests(),
        },
        ..common::small_options()
    }
}

#[test]
fn repositories_that_name_chunks_differently_are_refused_before_anything_is_written() {
    let (src, _) = common::history(34, &[KindRequest::Full]);
    // Another encrypted repository (its own keys), and a plain one, for a source of either kind.
    let own_keys = TestRepo::exactly(encrypted_with(PASSWORD));
    let plain = TestRepo::small_plain();
    let other = if common::encrypted() { &plain } else { &own_keys };
    let before = other.stored_bytes("packs");
    match src.copy_to(other, &[]) {
        Err(Error::CopyKeysDiffer { .. }) => {}
        r => panic!("expected CopyKeysDiffer, got {r:?}"),
    }
    assert_eq!(other.stored_bytes("packs"), before);
    assert!(other.images().is_empty());
    // Nor into itself.
    match src.copy_to(&src, &[]) {
        Err(Error::BadLocation { reason, .. }) => assert!(reason.contains("itself"), "{reason}"),
        r => panic!("expected a refusal, got {r:?}"),
    }
    // `init --copy-keys-from` keeps the source's kind: a plain copy of an encrypted source (or
    // the reverse) is refused, and nothing is created.
    let keys = Repository::keys_to_copy(&src.path, &common::credentials()).expect("keys");
    let dir = tempfile::tempdir().unwrap();
    let wrong = if common::encrypted() { InitOptions::default() } else { encrypted_with("x") };
    match Repository::init(&dir.path().join("r"), &InitOptions { copy_keys: Some(keys), ..wrong }) {
        Err(Error::KeysNotCopyable { .. }) => {}
        r => panic!("expected KeysNotCopyable, got {r:?}"),
    }
    assert!(!dir.path().join("r").join("config").exists());
}

#[test]
fn the_cli_copies_between_encrypted_repositories_each_opened_by_its_own_password() {
    let root = tempfile::tempdir().unwrap();
    let (src, dst) = (root.path().join("src"), root.path().join("dst"));
    let disk = common::Disk::new(35, 3 * MIB).random(0..MIB).text(MIB..2 * MIB);
    let disk_path = root.path().join("disk.img");
    disk.write_to(&disk_path);
    let run = |pw: &str, pw2: Option<&str>, args: &[&str]| {
        let mut c = strata_cmd();
        c.env("STRATA_PASSWORD", pw).env_remove("STRATA_PASSWORD2").args(args);
        if let Some(p) = pw2 {
            c.env("STRATA_PASSWORD2", p);
        }
        c.output().expect("run strata")
    };
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    ok(run("source pw", None, &["init", s]));
    ok(run("source pw", None, &["-r", s, "backup", disk_path.to_str().unwrap(), "--source-id", "disk"]));
    // The new repository's password is STRATA_PASSWORD; the other one's, STRATA_PASSWORD2.
    assert_clean_failure(
        &run("dest pw", Some("wrong"), &["init", d, "--copy-keys-from", s]),
        "no key file of this repository opens",
    );
    assert!(!dst.join("config").exists());
    ok(run("dest pw", Some("source pw"), &["init", d, "--copy-keys-from", s]));
    let key_files: Vec<_> = std::fs::read_dir(dst.join("keys")).unwrap().flatten().collect();
    let key: serde_json::Value = serde_json::from_slice(&std::fs::read(key_files[0].path()).unwrap()).unwrap();
    assert_eq!(key["version"], 2, "a key file that also seals the copied identity");
    let out = ok(run("source pw", Some("dest pw"), &["-r", s, "copy", "--to", d, "--json"]));
    let report: serde_json::Value = serde_json::from_str(&out).expect("copy --json");
    assert_eq!(report["copied"].as_array().map(Vec::len), Some(1), "{report}");
    assert!(report["chunks"].as_u64() > Some(0), "{report}");
    // The source's password does not open the destination, its own does.
    assert_clean_failure(&run("source pw", None, &["-r", d, "images"]), "password");
    let restored = root.path().join("restored.img");
    ok(run("dest pw", None, &["-r", d, "restore", "latest", restored.to_str().unwrap()]));
    assert!(std::fs::read(&restored).unwrap() == disk.bytes, "the copy restores other bytes");
    ok(run("dest pw", None, &["-r", d, "check", "--read-data"]));
    // The destination's password, wrong: refused before anything is read or written.
    assert_clean_failure(&run("source pw", Some("source pw"), &["-r", s, "copy", "--to", d]), "destination");
}

#[test]
fn a_damaged_chunk_in_the_source_stops_the_copy_and_leaves_the_destination_whole() {
    let (src, expected) = common::history(36, &[KindRequest::Full, KindRequest::Incremental]);
    let dst = src.receiving_copies();
    // Copy the full, then damage every pack of the source (the incremental's new chunks among
    // them): its copy must stop at the first chunk that does not verify.
    let images = src.images();
    src.copy_to(&dst, &[&images[0].id.short()]).expect("copy the full");
    for p in src.stored().list("packs").expect("list") {
        src.alter(&p, |b| {
            let n = b.len();
            b[n / 8..n * 3 / 4].iter_mut().for_each(|x| *x ^= 0xff);
        });
    }
    match src.copy_to(&dst, &[]) {
        Err(e) => assert!(
            matches!(e, Error::CorruptChunk { .. } | Error::CorruptPack { .. } | Error::Decrypt { .. }),
            "{e:?}"
        ),
        Ok(r) => panic!("a damaged source was copied: {r:?}"),
    }
    let expected: HashMap<ImageId, Vec<u8>> = dst.images().iter().map(|i| (i.id, expected[&i.id].clone())).collect();
    assert_eq!(expected.len(), 1, "the incremental was copied from damaged packs");
    assert_intact(&dst, &expected, "after a copy stopped by damage");
}
