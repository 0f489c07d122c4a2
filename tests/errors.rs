//! Bad input gets a clear message and a non-zero exit code, never a panic.

mod common;

use common::{assert_clean_failure, strata_cmd, Disk, TestRepo};
use strata::{Error, KindRequest};

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
    assert!(matches!(common::open_repo(&dir.path().join("nope")), Err(Error::NotARepository { .. })));
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
fn a_remote_repository_is_refused_not_taken_for_a_local_directory() {
    // `s3:http://HOST/BUCKET` used to become a directory `s3:http:` under the working directory;
    // schemes Strata does not know are refused, and an S3 URL goes to the bucket or fails.
    let dir = tempfile::tempdir().unwrap();
    for (args, says) in [
        (&["-r", "sftp:host:/srv/repo", "check"][..], "not supported by this version"),
        (&["init", "rest:http://127.0.0.1:9/"], "not supported by this version"),
        (&["-r", "ftp://host/dir", "images"], "not supported by this version"),
        (&["-r", "s3:bucket", "images"], "expected s3:http://HOST"),
        (&["-r", "s3:http://user:secret@127.0.0.1:9/bucket", "images"], "credentials do not belong in the URL"),
        (&["init", "s3:http://127.0.0.1:9/bucket"], "did not answer"),
    ] {
        let out = strata_cmd()
            .current_dir(dir.path())
            .env("AWS_ACCESS_KEY_ID", "k")
            .env("AWS_SECRET_ACCESS_KEY", "s")
            .env("STRATA_S3_RETRY_SECONDS", "0")
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .args(args)
            .output()
            .unwrap();
        assert_clean_failure(&out, says);
        assert!(!String::from_utf8_lossy(&out.stderr).contains("secret"), "a secret in the URL was repeated");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a directory was created");
    // A local directory with a colon in its name is still one, written as ./NAME.
    let out =
        strata_cmd().current_dir(dir.path()).args(["init", "./s3:http:", "--encryption", "none"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
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

#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (.ci/test enables it)")]
fn a_source_read_error_fails_the_backup_and_publishes_nothing() {
    // The kernel here has no device-mapper "error" target, so the EIO is injected at the
    // source's read call (STRATA_FAILPOINT=source-eio fails reads past the middle).
    let (repo, info) = repo_with_image();
    let src = repo.file("disk.img");
    let out = strata_cmd()
        .env("STRATA_FAILPOINT", "source-eio")
        .arg("-r")
        .arg(&repo.path)
        .args(["backup", "--force-read", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert_clean_failure(&out, "input/output error");
    assert_eq!(repo.images().len(), 1);
    assert!(repo.try_restore(&info.id.to_string(), &repo.file("out.img")).is_ok());
    assert!(repo.cli(&["backup", "--force-read", src.to_str().unwrap()]).status.success());
}

#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (.ci/test enables it)")]
fn a_frame_that_does_not_decode_to_its_input_is_never_stored() {
    // STRATA_FAILPOINT=corrupt-frame flips a byte of every compressed frame before the
    // verification that precedes storing it.
    let (repo, info) = repo_with_image();
    let src = repo.file("disk2.img");
    Disk::new(6, 2 * MIB).text(0..2 * MIB).write_to(&src);
    let out = strata_cmd()
        .env("STRATA_FAILPOINT", "corrupt-frame")
        .arg("-r")
        .arg(&repo.path)
        .args(["backup", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert_clean_failure(&out, "failed verification");
    assert_eq!(repo.images().len(), 1);
    assert!(repo.try_restore(&info.id.to_string(), &repo.file("out.img")).is_ok());
    assert!(repo.cli(&["check", "--read-data"]).status.success());
}

#[test]
fn a_source_that_shrinks_while_read_is_refused() {
    let repo = TestRepo::small();
    let src = repo.file("big.img");
    Disk::new(40, 96 * MIB).random(0..96 * MIB).write_to(&src);
    // Held for 3 s after the source is opened and before its first byte is read.
    let child = strata_cmd()
        .arg("-r")
        .arg(&repo.path)
        .args(["backup", "--force-read", src.to_str().unwrap()])
        .env("STRATA_FAILPOINT", "stall:backup-read-start")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    std::fs::OpenOptions::new().write(true).open(&src).unwrap().set_len(MIB as u64).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_clean_failure(&out, "shrank");
    assert_eq!(repo.images().len(), 0, "a backup of a shrinking source was published");
}

#[test]
#[cfg_attr(not(feature = "failpoints"), ignore = "needs --features failpoints (.ci/test enables it)")]
fn a_second_backup_is_refused_while_one_runs_and_succeeds_after() {
    let (repo, _) = repo_with_image();
    let src = repo.file("disk.img");
    let first = repo.stalled(&["backup", "--force-read", src.to_str().unwrap()], "before-manifest");
    let out = repo.cli(&["backup", "--force-read", src.to_str().unwrap()]);
    assert_clean_failure(&out, "locked by");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("pid {}", first.pid())), "the holder is named");
    let out = first.release();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = repo.cli(&["backup", "--force-read", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(repo.images().len(), 3);
    for info in repo.images() {
        assert!(repo.try_restore(&info.id.to_string(), &repo.file("out.img")).is_ok());
    }
}

/// A 70,000-character source id was once accepted, and then every command failed to decode the
/// catalog. Ids are checked before anything is written.
#[test]
fn an_overlong_or_garbled_source_id_is_refused_before_anything_is_written() {
    let (repo, _) = repo_with_image();
    let src = repo.file("disk.img");
    let long = "x".repeat(70_000);
    for bad in [long.as_str(), "", "two\nlines"] {
        let out = repo.cli(&["backup", "--source-id", bad, src.to_str().unwrap()]);
        assert_clean_failure(&out, "source id");
    }
    let limit = "y".repeat(strata::backup::MAX_SOURCE_ID_LEN);
    let out = repo.cli(&["backup", "--source-id", &limit, src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(repo.cli(&["images"]).status.success());
    assert!(repo.cli(&["stats"]).status.success());
    assert_eq!(repo.images().len(), 2);
}

/// `--keep-last 0` alone once forgot every image of every source.
#[test]
fn a_policy_that_keeps_nothing_is_refused() {
    let (repo, _) = repo_with_image();
    for args in [&["forget", "--keep-last", "0"][..], &["forget", "--keep-sets", "0", "--keep-daily", "0"]] {
        assert_clean_failure(&repo.cli(args), "keeps nothing");
    }
    assert_eq!(repo.images().len(), 1);
    // A policy with one rule that keeps something is fine.
    assert!(repo.cli(&["forget", "--keep-last", "0", "--keep-daily", "1"]).status.success());
    assert_eq!(repo.images().len(), 1);
}

/// A FIFO as the source once hung forever in open() while holding the writer lock.
#[test]
fn a_fifo_source_is_refused_at_once() {
    let (repo, _) = repo_with_image();
    let fifo = repo.file("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut child = repo.cli_spawn(&["backup", fifo.to_str().unwrap()]);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("backup of a FIFO hangs");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    assert!(!status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a regular file nor a block device"));
}

/// A lock file that is a symlink once made a backup overwrite the link's target.
#[test]
fn a_symlinked_lock_file_is_refused_and_its_target_untouched() {
    let (repo, _) = repo_with_image();
    let victim = repo.file("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let lock = repo.path.join("lock");
    std::fs::remove_file(&lock).ok();
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    let src = repo.file("disk.img");
    assert_clean_failure(&repo.cli(&["backup", src.to_str().unwrap()]), "not a regular file");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    std::fs::remove_file(&lock).unwrap();
    std::fs::create_dir(&lock).unwrap();
    assert_clean_failure(&repo.cli(&["backup", src.to_str().unwrap()]), "not a regular file");
}
