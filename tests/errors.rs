//! Bad input gets a clear message and a non-zero exit code, never a panic.

mod common;

use common::{assert_clean_failure, strata_cmd, Disk, TestRepo};
use strata::{Error, KindRequest, Repository};

const MIB: usize = 1 << 20;

fn repo_with_image() -> (TestRepo, strata::ImageInfo) {
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    Disk::new(5, 2 * MIB).random(0..MIB).text(MIB..2 * MIB).write_to(&src);
    let info = repo.backup(&src, KindRequest::Full);
    (repo, info)
}

#[test]
fn a_missing_repository_is_not_a_repository() {
    let dir = tempfile::tempdir().unwrap();
    let out = strata_cmd().arg("-r").arg(dir.path().join("nope")).arg("images").output().unwrap();
    assert_clean_failure(&out, "is not a Strata repository");
    assert!(matches!(Repository::open(&dir.path().join("nope")), Err(Error::NotARepository { .. })));
}

#[test]
fn a_plain_directory_or_file_is_not_a_repository() {
    let dir = tempfile::tempdir().unwrap();
    let out = strata_cmd().arg("-r").arg(dir.path()).args(["backup", "/dev/null"]).output().unwrap();
    assert_clean_failure(&out, "is not a Strata repository");
    let file = dir.path().join("file");
    std::fs::write(&file, b"hello").unwrap();
    let out = strata_cmd().arg("-r").arg(&file).arg("images").output().unwrap();
    assert_clean_failure(&out, "is not a Strata repository");
}

#[test]
fn no_repository_given() {
    let out = strata_cmd().env_remove("STRATA_REPO").arg("images").output().unwrap();
    assert_clean_failure(&out, "no repository given");
}

#[test]
fn init_refuses_a_non_empty_directory() {
    let (repo, _) = repo_with_image();
    let out = strata_cmd().arg("init").arg(&repo.path).output().unwrap();
    assert_clean_failure(&out, "already exists");
}

#[test]
fn sources_that_cannot_be_backed_up() {
    let (repo, _) = repo_with_image();
    let missing = repo.file("missing.img");
    assert_clean_failure(&repo.cli(&["backup", missing.to_str().unwrap()]), "cannot open source");
    let dir = repo.file("");
    assert_clean_failure(&repo.cli(&["backup", dir.to_str().unwrap()]), "neither a regular file nor a block device");
    // Nothing was published by the failed attempts.
    assert_eq!(repo.images().len(), 1);
}

#[test]
fn a_differential_needs_a_full() {
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    Disk::new(6, MIB).random(0..MIB).write_to(&src);
    let out = repo.cli(&["backup", "--kind", "differential", src.to_str().unwrap()]);
    assert_clean_failure(&out, "has no full image yet");
}

#[test]
fn unknown_image_and_bad_targets() {
    let (repo, info) = repo_with_image();
    assert_clean_failure(&repo.cli(&["restore", "ffffffffff", "/tmp/x"]), "no image matches");
    let dir = repo.file("");
    assert_clean_failure(&repo.cli(&["restore", &info.id.short(), dir.to_str().unwrap()]), "neither a regular file");
}

fn manifest_of(repo: &TestRepo, info: &strata::ImageInfo) -> std::path::PathBuf {
    repo.path.join("images").join(info.id.to_string())
}

#[test]
fn a_damaged_manifest_is_reported_before_anything_is_written() {
    let (repo, info) = repo_with_image();
    let path = manifest_of(&repo, &info);
    let good = std::fs::read(&path).unwrap();
    let target = repo.file("out.img");
    for (what, bytes) in [
        ("flipped byte", {
            let mut b = good.clone();
            b[good.len() / 2] ^= 0x10;
            b
        }),
        ("truncated", good[..good.len() - 7].to_vec()),
        ("empty", Vec::new()),
        ("garbage", vec![0xA5; 300]),
    ] {
        std::fs::write(&path, &bytes).unwrap();
        let out = repo.cli(&["restore", &info.id.to_string(), target.to_str().unwrap()]);
        assert_clean_failure(&out, "damaged");
        assert!(!target.exists(), "{what}: the target was written");
    }
    std::fs::remove_file(&path).unwrap();
    let out = repo.cli(&["restore", &info.id.to_string(), target.to_str().unwrap()]);
    assert_clean_failure(&out, "missing");
}

fn the_pack(repo: &TestRepo) -> std::path::PathBuf {
    repo.files_in("packs").into_iter().next().expect("a pack")
}

#[test]
fn a_damaged_chunk_is_detected_never_restored() {
    let (repo, info) = repo_with_image();
    let pack = the_pack(&repo);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[100] ^= 0x01; // inside the first chunk's frame
    std::fs::write(&pack, &bytes).unwrap();
    let target = repo.file("out.img");
    let out = repo.cli(&["restore", &info.id.to_string(), target.to_str().unwrap()]);
    assert_clean_failure(&out, "is damaged");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&pack.file_name().unwrap().to_string_lossy().to_string()));
}

#[test]
fn a_truncated_or_missing_pack_is_reported_before_anything_is_written() {
    let (repo, info) = repo_with_image();
    let pack = the_pack(&repo);
    let bytes = std::fs::read(&pack).unwrap();
    std::fs::write(&pack, &bytes[..bytes.len() / 3]).unwrap();
    let target = repo.file("out.img");
    assert_clean_failure(&repo.cli(&["restore", &info.id.to_string(), target.to_str().unwrap()]), "truncated");
    assert!(!target.exists());
    std::fs::remove_file(&pack).unwrap();
    assert_clean_failure(&repo.cli(&["restore", &info.id.to_string(), target.to_str().unwrap()]), "missing");
    assert!(!target.exists());
}

#[test]
fn a_damaged_config_is_a_clear_error() {
    let (repo, _) = repo_with_image();
    let config = repo.path.join("config");
    for bytes in [b"{not json".to_vec(), b"{\"format_version\": 99}".to_vec(), vec![0xFF; 64]] {
        std::fs::write(&config, &bytes).unwrap();
        let out = repo.cli(&["images"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked") && (err.contains("config") || err.contains("version")), "{err}");
    }
}
