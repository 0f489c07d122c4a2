//! Encrypted repositories: keys, passwords, and what the repository directory reveals
//! (frames, pack trailers, manifests, run records and index values are sealed; see
//! docs/DESIGN.md, "Encryption"). The other suites run on encrypted repositories too when
//! `STRATA_TEST_ENCRYPTION=repokey` (see `tests/common`).

mod common;

use std::path::Path;

use common::{Disk, TestRepo};
use strata::check::ReadData;
use strata::crypto::keyfile::KdfParams;
use strata::progress::Silent;
use strata::repository::{Credentials, Encryption};
use strata::{BackupOptions, Error, InitOptions, KindRequest, Repository};
use zeroize::Zeroizing;

fn password(p: &str) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(p.as_bytes().to_vec())
}

fn with(p: &str) -> Credentials {
    let p = p.to_string();
    Credentials::from_fn(move || Ok(password(&p)))
}

fn encrypted_repo(p: &str) -> TestRepo {
    TestRepo::with(InitOptions {
        chunker: common::small_params(),
        compression_level: 1,
        pack_target_size: 1 << 20,
        encryption: Encryption::Repokey { password: password(p), kdf: KdfParams::weak_for_tests() },
        ..InitOptions::default()
    })
}

fn backup(repo: &TestRepo, p: &str, source: &Path, source_id: &str) -> strata::ImageInfo {
    let r = Repository::open_writer_with(&repo.path, "test backup", &with(p)).expect("open");
    let opts = BackupOptions { kind: KindRequest::Auto, source_id: Some(source_id.into()), ..Default::default() };
    strata::backup(&r, source, &opts, &Silent).expect("backup")
}

fn restore(repo: &TestRepo, p: &str, image: &strata::ImageInfo) -> Vec<u8> {
    let r = Repository::open_with(&repo.path, &with(p)).expect("open");
    let target = repo.file("restored");
    strata::restore(&r, image, &target, &Silent).expect("restore");
    std::fs::read(&target).expect("read restored")
}

/// Every file under `dir` of the repository, read.
fn files_under(repo: &TestRepo, dir: &str) -> Vec<(String, Vec<u8>)> {
    repo.files_in(dir).into_iter().map(|p| (p.display().to_string(), std::fs::read(&p).expect("read"))).collect()
}

#[test]
fn an_encrypted_repository_round_trips_and_checks_clean() {
    let repo = encrypted_repo("correct horse");
    let disk = repo.file("disk");
    Disk::new(1, 2 << 20).random(0..600_000).text(700_000..1_500_000).write_to(&disk);
    let full = backup(&repo, "correct horse", &disk, "disk");
    let mut bytes = std::fs::read(&disk).unwrap();
    bytes[800_000..800_100].fill(7);
    std::fs::write(&disk, &bytes).unwrap();
    let incr = backup(&repo, "correct horse", &disk, "disk");
    assert_eq!(incr.base, Some(full.id));
    assert_eq!(restore(&repo, "correct horse", &incr), bytes);
    let r = Repository::open_with(&repo.path, &with("correct horse")).unwrap();
    let report = strata::check::check(&r, ReadData::All, &Silent).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert!(report.chunks_read > 0);
}

#[test]
fn a_missing_or_wrong_password_is_a_clear_error() {
    let repo = encrypted_repo("right");
    assert!(matches!(Repository::open(&repo.path), Err(Error::PasswordNeeded)));
    assert!(matches!(Repository::open_with(&repo.path, &with("wrong")), Err(Error::WrongPassword { tried: 1 })));
    assert!(matches!(
        Repository::open_writer_with(&repo.path, "test", &with("wrong")),
        Err(Error::WrongPassword { .. })
    ));
    assert!(Repository::open_with(&repo.path, &with("right")).is_ok());
    // An empty password is refused when the repository is made.
    let dir = tempfile::tempdir().unwrap();
    let opts = InitOptions {
        encryption: Encryption::Repokey { password: password(""), kdf: KdfParams::weak_for_tests() },
        ..InitOptions::default()
    };
    let err = Repository::init(&dir.path().join("r"), &opts).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn known_content_its_plain_ids_and_the_source_name_appear_nowhere_in_the_repository() {
    let repo = encrypted_repo("pw");
    // A known "file": text a stranger could have a copy of, at a known place on the disk.
    let known: Vec<u8> = b"Known file: the quarterly figures of an ordinary company, line by line.\n".repeat(2000);
    let mut disk = Disk::new(3, 1 << 20).random(0..300_000);
    disk.bytes[400_000..400_000 + known.len()].copy_from_slice(&known);
    disk.holes.retain(|h| h.end <= 400_000 || h.start >= 400_000 + known.len());
    let path = repo.file("disk");
    disk.write_to(&path);
    backup(&repo, "pw", &path, "/dev/secret-laptop-disk");
    // The plain BLAKE3 of the known bytes, cut as a plain repository would cut them.
    let plain = TestRepo::small_plain();
    plain.backup(&path, KindRequest::Full);
    let plain_ids: Vec<[u8; 32]> = {
        let r = Repository::open(&plain.path).unwrap();
        let image = r.images().unwrap().remove(0);
        let map = strata::reader::ImageMap::resolve(r.backend(), &image).unwrap();
        map.pieces().iter().map(|p| p.id.0).collect()
    };
    assert!(!plain_ids.is_empty());
    // Every file of the repository: packs, manifests, key files, config, and the index
    // (RocksDB's tables, write-ahead log and logs).
    let files = files_under(&repo, "");
    assert!(files.iter().any(|(n, _)| n.contains("/index/")), "the index is looked at too");
    assert!(files.len() >= 4);
    for (name, bytes) in &files {
        assert!(!bytes.windows(24).any(|w| known.windows(24).next() == Some(w)), "{name}: known bytes");
        assert!(!bytes.windows(16).any(|w| w == &known[..16]), "{name}: known bytes");
        for id in &plain_ids {
            assert!(!bytes.windows(32).any(|w| w == id), "{name}: a plain chunk id");
        }
        assert!(!bytes.windows(11).any(|w| w == b"secret-lapt"), "{name}: the source name");
    }
}

#[test]
fn passwords_are_added_changed_and_removed_and_the_last_one_stays() {
    let repo = encrypted_repo("first");
    let mut r = Repository::open_writer_with(&repo.path, "key add", &with("first")).unwrap();
    let second = r.add_key(b"second", KdfParams::weak_for_tests()).unwrap();
    let keys = r.key_files().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k.live));
    let first = keys.iter().find(|k| k.current).unwrap().id.clone();
    // The key in use cannot be removed; another can.
    assert!(r.remove_key(&first).is_err());
    drop(r);
    let mut r = Repository::open_writer_with(&repo.path, "key remove", &with("second")).unwrap();
    r.remove_key(&first).unwrap();
    drop(r);
    assert!(matches!(Repository::open_with(&repo.path, &with("first")), Err(Error::WrongPassword { .. })));
    // The last key cannot go; a password change keeps the repository open at every step.
    let mut r = Repository::open_writer_with(&repo.path, "key passwd", &with("second")).unwrap();
    assert!(r.remove_key(&second).is_err());
    let third = r.change_password(b"third", KdfParams::weak_for_tests()).unwrap();
    drop(r);
    assert!(Repository::open_with(&repo.path, &with("second")).is_err());
    let r = Repository::open_with(&repo.path, &with("third")).unwrap();
    let keys = r.key_files().unwrap();
    assert_eq!(keys.iter().map(|k| k.id.clone()).collect::<Vec<_>>(), vec![third]);
}

#[test]
fn a_removed_key_put_back_and_a_config_switched_to_none_are_refused() {
    let repo = encrypted_repo("first");
    let mut r = Repository::open_writer_with(&repo.path, "key", &with("first")).unwrap();
    let first = r.key_files().unwrap()[0].id.clone();
    let kept = std::fs::read(repo.path.join("keys").join(&first)).unwrap();
    r.change_password(b"second", KdfParams::weak_for_tests()).unwrap();
    drop(r);
    // The old key file put back: it opens with the old password but is not live.
    std::fs::write(repo.path.join("keys").join(&first), &kept).unwrap();
    let err = Repository::open_with(&repo.path, &with("first")).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("not one of the repository's live keys"), "{err}");
    // A config rewritten to "none" by someone without the key (a downgrade).
    let config_path = repo.path.join("config");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["encryption"] = "none".into();
    config.as_object_mut().unwrap().remove("key_list");
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let err = Repository::open_writer(&repo.path, "backup").map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("holds key files"), "{err}");
    assert!(Repository::open(&repo.path).is_err());
}

#[test]
fn damage_in_an_encrypted_repository_is_found_and_attributed() {
    let repo = encrypted_repo("pw");
    let disk = repo.file("disk");
    Disk::new(5, 1 << 20).random(0..900_000).write_to(&disk);
    let image = backup(&repo, "pw", &disk, "disk");
    let check = || {
        let r = Repository::open_with(&repo.path, &with("pw")).unwrap();
        strata::check::check(&r, ReadData::All, &Silent).unwrap()
    };
    assert!(check().is_clean());
    // One flipped byte inside a frame: its chunks are damaged and the image does not restore.
    let pack = repo.files_in("packs").into_iter().next().expect("a pack");
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[200] ^= 1;
    std::fs::write(&pack, &bytes).unwrap();
    let report = check();
    assert!(
        report.problems.iter().any(|p| p.kind == "chunk" && p.detail.contains("sealed frame")),
        "{:?}",
        report.problems
    );
    let status = report.images.iter().find(|s| s.id == image.id).unwrap();
    assert!(!status.restorable);
    bytes[200] ^= 1;
    std::fs::write(&pack, &bytes).unwrap();
    assert!(check().is_clean());
    // A flipped byte in the manifest.
    let manifest = repo.path.join("images").join(image.id.to_string());
    let mut m = std::fs::read(&manifest).unwrap();
    m[100] ^= 1;
    std::fs::write(&manifest, &m).unwrap();
    let report = check();
    assert!(
        report.problems.iter().any(|p| p.kind == "manifest" && p.detail.contains("decrypt")),
        "{:?}",
        report.problems
    );
}

#[test]
fn rebuild_index_reads_an_encrypted_repository_with_its_key() {
    let repo = encrypted_repo("pw");
    let disk = repo.file("disk");
    Disk::new(7, 1 << 20).random(0..500_000).text(600_000..900_000).write_to(&disk);
    let image = backup(&repo, "pw", &disk, "disk");
    std::fs::remove_dir_all(repo.path.join("index")).unwrap();
    assert!(matches!(Repository::rebuild_index(&repo.path), Err(Error::PasswordNeeded)));
    let report = Repository::rebuild_index_with(&repo.path, &with("pw")).unwrap();
    assert!(report.packs > 0 && report.chunks > 0, "{report:?}");
    assert_eq!(restore(&repo, "pw", &image), std::fs::read(&disk).unwrap());
}

/// The command line: `init --encryption repokey`, the password sources, `key`, and every
/// everyday command on an encrypted repository.
#[test]
fn the_cli_makes_and_uses_an_encrypted_repository() {
    use common::strata_cmd;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let disk = dir.path().join("disk");
    Disk::new(9, 1 << 20).random(0..400_000).text(500_000..900_000).write_to(&disk);
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = strata_cmd();
        c.arg("-r").arg(&repo).args(args).env("STRATA_TESTONLY_WEAK_KDF", "1").env_remove("STRATA_PASSWORD");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let pw = [("STRATA_PASSWORD", "s3cret")];
    assert!(ok(run(&["init", "--encryption", "repokey"], &pw)).contains("encryption repokey"));
    let d = disk.to_str().unwrap();
    ok(run(&["backup", d, "--source-id", "laptop"], &pw));
    assert!(ok(run(&["images", "--json"], &pw)).contains("laptop"));
    ok(run(&["check", "--read-data"], &pw));
    let target = dir.path().join("restored");
    ok(run(&["restore", "latest", target.to_str().unwrap()], &pw));
    assert_eq!(std::fs::read(&target).unwrap(), std::fs::read(&disk).unwrap());

    // No password (no terminal), a wrong one, an empty one: clear errors, no panic.
    common::assert_clean_failure(&run(&["images"], &[]), "no password was given");
    common::assert_clean_failure(&run(&["images"], &[("STRATA_PASSWORD", "nope")]), "no key file");
    common::assert_clean_failure(&run(&["images"], &[("STRATA_PASSWORD", "")]), "empty");
    // A file, a command; a flag wins over the environment; two flags are refused.
    let file = dir.path().join("pw");
    std::fs::write(&file, "s3cret\n").unwrap();
    ok(run(&["images", "--password-file", file.to_str().unwrap()], &[("STRATA_PASSWORD", "nope")]));
    ok(run(&["images", "--password-command", "echo s3cret"], &[]));
    common::assert_clean_failure(&run(&["images", "--password-command", "exit 3"], &[]), "failed");
    let both = run(&["images", "--password-command", "echo s3cret", "--password-file", file.to_str().unwrap()], &[]);
    assert!(!both.status.success());

    // key add / list / passwd / remove.
    ok(run(&["key", "add"], &[("STRATA_PASSWORD", "s3cret"), ("STRATA_NEW_PASSWORD", "other")]));
    let list: serde_json::Value = serde_json::from_str(&ok(run(&["key", "list", "--json"], &pw))).unwrap();
    let keys = list.as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let other = keys.iter().find(|k| k["current"] == false).unwrap()["id"].as_str().unwrap().to_string();
    ok(run(&["images"], &[("STRATA_PASSWORD", "other")]));
    ok(run(&["key", "passwd"], &[("STRATA_PASSWORD", "s3cret"), ("STRATA_NEW_PASSWORD", "third")]));
    common::assert_clean_failure(&run(&["images"], &pw), "no key file");
    ok(run(&["key", "remove", &other], &[("STRATA_PASSWORD", "third")]));
    common::assert_clean_failure(&run(&["images"], &[("STRATA_PASSWORD", "other")]), "no key file");
    let last = run(&["key", "list", "--json"], &[("STRATA_PASSWORD", "third")]);
    let list: serde_json::Value = serde_json::from_str(&ok(last)).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_string();
    common::assert_clean_failure(
        &run(&["key", "remove", &id], &[("STRATA_PASSWORD", "third")]),
        "opened the repository with",
    );
    // Encryption is the default: without a password (and no terminal to ask on) `init` says
    // how to give one, or how to choose a plain repository, and makes nothing.
    let fresh = dir.path().join("fresh");
    let out = strata_cmd().arg("init").arg(&fresh).env_remove("STRATA_PASSWORD").output().unwrap();
    common::assert_clean_failure(&out, "--encryption none");
    assert!(!fresh.join("config").exists());
    let out = strata_cmd().arg("init").arg(&fresh).output().unwrap();
    assert!(ok(out).contains("encryption repokey"));
    // A plain repository ignores a password, and `key` says it has none.
    let plain = dir.path().join("plain");
    ok(strata_cmd().args(["init", "--encryption", "none"]).arg(&plain).output().unwrap());
    let out = strata_cmd().arg("-r").arg(&plain).args(["key", "list"]).output().unwrap();
    common::assert_clean_failure(&out, "not encrypted");
}

/// A job names where its repository's password comes from; a flag on the command line wins.
#[test]
fn a_job_runs_on_an_encrypted_repository_with_its_password_file() {
    use common::strata_cmd;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let disk = dir.path().join("disk");
    Disk::new(11, 1 << 20).random(0..300_000).write_to(&disk);
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "job-secret\n").unwrap();
    let init = strata_cmd()
        .args(["init", "--encryption", "repokey"])
        .arg(&repo)
        .env("STRATA_PASSWORD", "job-secret")
        .env("STRATA_TESTONLY_WEAK_KDF", "1")
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let config = dir.path().join("config");
    std::fs::create_dir_all(config.join("jobs")).unwrap();
    let write_job = |extra: &str| {
        let toml = format!(
            "repository = {:?}\nsource = {:?}\nsource_id = \"disk\"\n{extra}\n[scheme]\nfull = \"daily\"\n",
            repo.to_str().unwrap(),
            disk.to_str().unwrap()
        );
        std::fs::write(config.join("jobs").join("enc.toml"), toml).unwrap();
    };
    let run = |args: &[&str]| {
        strata_cmd()
            .env("STRATA_CONFIG_DIR", &config)
            .env("STRATA_NOW", "2026-12-01T03:00:00Z")
            .env_remove("STRATA_PASSWORD")
            .env_remove("STRATA_REPO")
            .args(args)
            .output()
            .unwrap()
    };
    write_job(&format!("password_file = {:?}", pass.to_str().unwrap()));
    let out = run(&["run", "enc"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A wrong flag on the command line wins over the job's file, and fails.
    common::assert_clean_failure(&run(&["run", "enc", "--password-command", "echo wrong"]), "no key file");
    // Both sources in one job file: refused with the file named.
    write_job(&format!("password_file = {:?}\npassword_command = \"echo x\"", pass.to_str().unwrap()));
    common::assert_clean_failure(&run(&["run", "enc"]), "not both");
}

#[test]
fn init_options_never_show_the_password() {
    let opts = InitOptions {
        encryption: Encryption::Repokey { password: password("hunter2"), kdf: KdfParams::default() },
        ..InitOptions::default()
    };
    let shown = format!("{opts:?}");
    assert!(!shown.contains("hunter2") && !shown.contains("104, 117"), "{shown}");
}
