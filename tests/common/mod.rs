//! Test helpers: a temporary repository, a seeded synthetic disk builder, and a CLI runner.
#![allow(dead_code)]

pub mod disks;
pub mod faults;
pub mod mounted;

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use strata::config::ChunkerParams;
use strata::progress::Silent;
use strata::repository::{Credentials, Encryption};
use strata::{BackupOptions, ImageInfo, InitOptions, KindRequest, Repository};

/// Small chunks and segments, so that small disks exercise many chunks, segments and packs.
pub fn small_params() -> ChunkerParams {
    ChunkerParams { min_size: 1024, avg_size: 4096, max_size: 16384, segment_size: 256 * 1024, zero_run_min: 16384 }
}

/// The password of every repository the suites make when they run encrypted, and of every
/// repository a test makes with `strata init` (which encrypts by default).
pub const PASSWORD: &str = "strata test password";

/// Whether this run makes encrypted repositories: `STRATA_TEST_ENCRYPTION=repokey` (CI runs
/// the round-trip, lifecycle, crash, damage and reader suites once plain and once so; see
/// `.ci/test`). Any other value, or none, is plain.
pub fn encrypted() -> bool {
    std::env::var("STRATA_TEST_ENCRYPTION").is_ok_and(|v| v == "repokey")
}

/// The bucket this run makes its repositories in, when it runs against an S3 server:
/// `STRATA_TEST_S3=http://HOST:PORT/BUCKET` (`.ci/test` starts moto for it). Each repository
/// is a prefix of its own; credentials come from the usual AWS_* variables.
pub fn s3_base() -> Option<String> {
    std::env::var("STRATA_TEST_S3").ok().filter(|s| !s.is_empty())
}

/// The options of `TestRepo::small`: small chunks, fast compression, 1 MiB packs.
pub fn small_options() -> InitOptions {
    InitOptions { chunker: small_params(), compression_level: 1, pack_target_size: 1 << 20, ..InitOptions::default() }
}

/// `opts`, encrypted with `PASSWORD` when the run is (`encrypted`) and `opts` asks for no
/// encryption of its own.
pub fn for_this_run(mut opts: InitOptions) -> InitOptions {
    if encrypted() && matches!(opts.encryption, Encryption::None) {
        opts.encryption = Encryption::Repokey {
            password: zeroize::Zeroizing::new(PASSWORD.as_bytes().to_vec()),
            kdf: strata::crypto::keyfile::KdfParams::weak_for_tests(),
        };
    }
    opts
}

/// The password, for opening what `TestRepo` and `strata_cmd` make (a plain repository never
/// asks for it).
pub fn credentials() -> Credentials {
    Credentials::from_fn(|| Ok(zeroize::Zeroizing::new(PASSWORD.as_bytes().to_vec())))
}

/// Opens a repository of this run for reading.
pub fn open_repo(path: &Path) -> strata::Result<Repository> {
    Repository::open_with(path, &credentials())
}

/// Opens a repository of this run for writing.
pub fn open_writer(path: &Path, command: &str) -> strata::Result<Repository> {
    Repository::open_writer_with(path, command, &credentials())
}

/// A repository in a temporary directory, removed when dropped.
pub struct TestRepo {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TestRepo {
    /// A repository with the default parameters of `strata init`.
    pub fn new() -> TestRepo {
        Self::with(InitOptions::default())
    }

    /// A repository with small chunks (see `small_params`).
    pub fn small() -> TestRepo {
        Self::with(small_options())
    }

    /// A repository made with `opts`; encrypted with `PASSWORD` when the run is (`encrypted`)
    /// and `opts` asks for no encryption of its own.
    pub fn with(opts: InitOptions) -> TestRepo {
        Self::exactly(for_this_run(opts))
    }

    /// A plain repository with small chunks, in every run.
    pub fn small_plain() -> TestRepo {
        Self::exactly(small_options())
    }

    /// A repository made with `opts` as they are: `repo` in a temporary directory, or a fresh
    /// prefix of the test bucket (`s3_base`).
    pub fn exactly(opts: InitOptions) -> TestRepo {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = repo_path_in(&dir);
        Repository::init(&path, &opts).expect("init");
        TestRepo { dir, path }
    }

    /// A repository (in the same place as `TestRepo::small`) made with `init --copy-keys-from`
    /// this one: it names chunks as this one does, so `copy` can fill it.
    pub fn receiving_copies(&self) -> TestRepo {
        Self::with(InitOptions { copy_keys: Some(self.keys_to_copy()), ..small_options() })
    }

    /// A repository with small chunks in a local directory, even in a run against a bucket;
    /// with `copying`, made with `init --copy-keys-from` that one.
    pub fn small_local(copying: Option<&TestRepo>) -> TestRepo {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("repo");
        let opts = InitOptions { copy_keys: copying.map(TestRepo::keys_to_copy), ..small_options() };
        Repository::init(&path, &for_this_run(opts)).expect("init");
        TestRepo { dir, path }
    }

    /// What `init --copy-keys-from` this repository takes from it.
    fn keys_to_copy(&self) -> strata::repository::CopiedKeys {
        Repository::keys_to_copy(&self.path, &credentials()).expect("keys to copy")
    }

    /// Copies the images `specs` name (all when empty) from this repository into `to`.
    pub fn copy_to(&self, to: &TestRepo, specs: &[&str]) -> strata::Result<strata::copy::CopyReport> {
        let src = self.open()?;
        let dst = to.open_writer("copy")?;
        let specs: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
        strata::copy::copy(&src, &dst, &specs, &Silent)
    }

    /// An independent copy of this repository (and of the scratch files beside it), for running
    /// one command against the same starting point many times.
    pub fn copy(&self) -> TestRepo {
        let dir = tempfile::tempdir().expect("temp dir");
        copy_tree(self.dir.path(), dir.path());
        let path = repo_path_in(&dir);
        if s3_base().is_some() {
            use strata::storage::Backend as _;
            let (from, to) = (bucket(&self.path), bucket(&path));
            for name in from.list("").expect("list") {
                to.put(&name, &from.get(&name).expect("get")).expect("put");
            }
        }
        TestRepo { dir, path }
    }

    /// Starts `strata <args>` held at the failpoint `point` (`stall:<point>`) until `release`:
    /// once this returns, the command holds the writer lock and cannot finish before released.
    /// Needs the `failpoints` feature.
    pub fn stalled(&self, args: &[&str], point: &str) -> Stalled {
        let gate = self.file(&format!("gate-{point}"));
        std::fs::write(&gate, b"held").expect("gate");
        let child = strata_cmd()
            .arg("-r")
            .arg(&self.path)
            .args(args)
            .env("STRATA_FAILPOINT", format!("stall:{point}"))
            .env("STRATA_STALL_WHILE", &gate)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn strata");
        let mut stalled = Stalled { child, gate };
        let started = std::time::Instant::now();
        while !Repository::writer_active(&self.path) {
            assert!(stalled.running(), "the stalled command ended before taking the lock");
            assert!(started.elapsed().as_secs() < 60, "the stalled command never took the lock");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        stalled
    }

    /// Opens it for reading (with `PASSWORD` if it is encrypted).
    pub fn open(&self) -> strata::Result<Repository> {
        open_repo(&self.path)
    }

    /// Opens it for writing (with `PASSWORD` if it is encrypted).
    pub fn open_writer(&self, command: &str) -> strata::Result<Repository> {
        open_writer(&self.path, command)
    }

    /// A scratch path beside the repository.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn backup(&self, source: &Path, kind: KindRequest) -> ImageInfo {
        self.try_backup(source, kind, false).expect("backup")
    }

    pub fn try_backup(&self, source: &Path, kind: KindRequest, force_read: bool) -> strata::Result<ImageInfo> {
        let repo = self.open_writer("test backup")?;
        let opts = BackupOptions { kind, source_id: Some("disk".into()), force_read, ..Default::default() };
        strata::backup(&repo, source, &opts, &Silent)
    }

    /// Restores `image` to a fresh file and returns its bytes.
    pub fn restore_bytes(&self, image: &ImageInfo) -> Vec<u8> {
        let target = self.file(&format!("restore-{}", image.id));
        self.try_restore(&image.id.to_string(), &target).expect("restore");
        let bytes = std::fs::read(&target).expect("read restored");
        std::fs::remove_file(&target).ok();
        bytes
    }

    pub fn try_restore(&self, spec: &str, target: &Path) -> strata::Result<strata::RestoreReport> {
        let repo = self.open()?;
        let info = repo.find_image(spec)?;
        strata::restore(&repo, &info, target, &Silent)
    }

    pub fn images(&self) -> Vec<ImageInfo> {
        self.open().expect("open").images().expect("images")
    }

    /// Runs the strata binary with `-r <repo>` and the given arguments.
    pub fn cli(&self, args: &[&str]) -> Output {
        strata_cmd().arg("-r").arg(&self.path).args(args).output().expect("run strata")
    }

    /// Starts the strata binary with `-r <repo>` and the given arguments, output captured.
    pub fn cli_spawn(&self, args: &[&str]) -> std::process::Child {
        strata_cmd()
            .arg("-r")
            .arg(&self.path)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn strata")
    }

    /// Its objects as stored (sealed ones still sealed): its directory, or its prefix of the
    /// test bucket. For tests that damage, remove or measure objects in either place.
    pub fn stored(&self) -> Box<dyn strata::storage::Backend> {
        raw_backend(&self.path)
    }

    /// The bytes of every object under `dir` ("packs", "images").
    pub fn stored_bytes(&self, dir: &str) -> u64 {
        let stored = self.stored();
        stored.list(dir).expect("list").iter().map(|p| stored.size(p).expect("size")).sum()
    }

    /// Replaces the object `name` with what `change` makes of its bytes.
    pub fn alter(&self, name: &str, change: impl FnOnce(&mut Vec<u8>)) {
        let stored = self.stored();
        let mut bytes = stored.get(name).expect("read object");
        change(&mut bytes);
        stored.put(name, &bytes).expect("write object");
    }

    /// Paths of all files below the repository matching `dir` (e.g. "packs", "images").
    pub fn files_in(&self, dir: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.path.join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                } else {
                    out.push(e.path());
                }
            }
        }
        out.sort();
        out
    }
}

/// Removes this machine's index cache of a repository in the test bucket (nothing for a local
/// repository, whose index is its own): the next command builds it again from the bucket.
pub fn drop_cache(repo: &TestRepo) {
    if s3_base().is_none() {
        return;
    }
    let id = strata::config::read(&repo.path).expect("config").repository_id;
    let base = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).expect("XDG_CACHE_HOME in an S3 run");
    let dir = base.join("strata").join(id);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("remove the cache");
    }
}

/// Where the repository of a test that owns `dir` lives: `dir/repo`, or a prefix of the test
/// bucket named after `dir` (unique while `dir` exists).
fn repo_path_in(dir: &tempfile::TempDir) -> PathBuf {
    match s3_base() {
        Some(base) => {
            let name = dir.path().file_name().and_then(|n| n.to_str()).expect("temp dir name");
            PathBuf::from(format!("s3:{base}/{}-{}", name.trim_start_matches('.'), std::process::id()))
        }
        None => dir.path().join("repo"),
    }
}

/// The objects of the repository at `path` as stored: its directory, or its prefix of the test
/// bucket.
pub fn raw_backend(path: &Path) -> Box<dyn strata::storage::Backend> {
    if path.to_str().is_some_and(|p| p.starts_with("s3:")) {
        Box::new(bucket(path))
    } else {
        Box::new(strata::storage::LocalDir::new(path))
    }
}

/// The objects of a repository in the test bucket, as stored.
pub fn bucket(path: &Path) -> strata::storage::s3::S3Backend {
    use strata::storage::s3::{S3Backend, S3Store, S3Url};
    let text = path.to_str().and_then(|t| t.strip_prefix("s3:")).expect("an s3: repository");
    let url = S3Url::parse(text).expect("test bucket URL");
    S3Backend(std::sync::Arc::new(S3Store::new(&url).expect("S3 client")))
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    copy_tree(from, to)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for e in std::fs::read_dir(from).expect("list").flatten() {
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// Every listed image restores to the bytes recorded for it, `check --read-data` finds no
/// problem and calls every image restorable, and the counters behind `stats` add up.
pub fn assert_intact(repo: &TestRepo, expected: &std::collections::HashMap<strata::id::ImageId, Vec<u8>>, when: &str) {
    let images = repo.images();
    for info in &images {
        let target = repo.file("intact.img");
        if let Err(e) = repo.try_restore(&info.id.to_string(), &target) {
            panic!("{when}: image {} does not restore: {e}", info.id);
        }
        let want = expected.get(&info.id).unwrap_or_else(|| panic!("{when}: unknown image {} listed", info.id));
        assert!(std::fs::read(&target).expect("read") == *want, "{when}: image {} restores other bytes", info.id);
    }
    let r = open_repo(&repo.path).expect("open");
    let report = strata::check::check(&r, strata::check::ReadData::All, &Silent).expect("check");
    assert!(report.is_clean(), "{when}: check found {:#?}", report.problems);
    assert!(report.images.iter().all(|i| i.restorable), "{when}: check calls an image damaged");
    assert_eq!(report.images.len(), images.len(), "{when}");
    drop(r);
    assert_stats_add_up(&repo.path);
}

/// A command held at a failpoint (see `TestRepo::stalled`).
pub struct Stalled {
    pub child: std::process::Child,
    gate: PathBuf,
}

impl Stalled {
    /// Whether it is still running (it cannot finish before `release`).
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets it go on and waits for it.
    pub fn release(self) -> Output {
        std::fs::remove_file(&self.gate).ok();
        self.child.wait_with_output().expect("wait")
    }
}

/// The strata binary, given `PASSWORD` (a plain repository ignores it) and cheap key
/// derivation for the repositories it makes.
pub fn strata_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_strata"));
    c.env("STRATA_PASSWORD", PASSWORD).env("STRATA_TESTONLY_WEAK_KDF", "1");
    c
}

/// Asserts that a CLI run failed cleanly: non-zero exit, an error message, no panic.
pub fn assert_clean_failure(out: &Output, expect_in_message: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(
        stderr.to_lowercase().contains(&expect_in_message.to_lowercase()),
        "stderr lacks {expect_in_message:?}: {stderr}"
    );
}

/// A seeded synthetic disk: its bytes in memory plus the ranges that are holes in its file.
#[derive(Clone)]
pub struct Disk {
    pub bytes: Vec<u8>,
    pub holes: Vec<Range<usize>>,
    rng: u64,
}

impl Disk {
    /// `size` bytes of zeros, all a hole.
    pub fn new(seed: u64, size: usize) -> Disk {
        Disk { bytes: vec![0; size], holes: vec![0..size], rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*: fast, seeded, good enough for test data.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn unhole(&mut self, r: Range<usize>) {
        let mut out = Vec::new();
        for h in self.holes.drain(..) {
            if h.end <= r.start || h.start >= r.end {
                out.push(h);
            } else {
                if h.start < r.start {
                    out.push(h.start..r.start);
                }
                if h.end > r.end {
                    out.push(r.end..h.end);
                }
            }
        }
        self.holes = out;
    }

    /// Incompressible bytes.
    pub fn random(mut self, r: Range<usize>) -> Disk {
        self.unhole(r.clone());
        for i in r.clone().step_by(8) {
            let v = self.next().to_le_bytes();
            let n = (r.end - i).min(8);
            self.bytes[i..i + n].copy_from_slice(&v[..n]);
        }
        self
    }

    /// Compressible, text-like bytes.
    pub fn text(mut self, r: Range<usize>) -> Disk {
        const WORDS: [&str; 8] = ["disk ", "image ", "chunk ", "backup ", "strata ", "restore\n", "the ", "of "];
        self.unhole(r.clone());
        let mut i = r.start;
        while i < r.end {
            let w = WORDS[self.below(WORDS.len())].as_bytes();
            let n = w.len().min(r.end - i);
            self.bytes[i..i + n].copy_from_slice(&w[..n]);
            i += n;
        }
        self
    }

    /// Written zeros (data, not a hole).
    pub fn zeros(mut self, r: Range<usize>) -> Disk {
        self.unhole(r.clone());
        self.bytes[r].fill(0);
        self
    }

    /// A hole: reads as zeros and is not allocated in the file.
    pub fn hole(mut self, r: Range<usize>) -> Disk {
        self.unhole(r.clone());
        self.bytes[r.clone()].fill(0);
        self.holes.push(r);
        self.holes.sort_by_key(|h| h.start);
        self
    }

    /// Copies `len` bytes from `from` to `to` (repeated blocks).
    pub fn repeat(mut self, from: usize, to: usize, len: usize) -> Disk {
        self.unhole(to..to + len);
        self.bytes.copy_within(from..from + len, to);
        self
    }

    /// Overwrites `count` random 4 KiB blocks with new random bytes, like database pages.
    pub fn scatter_blocks(mut self, count: usize) -> Disk {
        let blocks = self.bytes.len() / 4096;
        for _ in 0..count {
            if blocks == 0 {
                break;
            }
            let b = self.below(blocks) * 4096;
            self = self.random(b..b + 4096);
        }
        self
    }

    /// Grows (with a hole) or shrinks the disk.
    pub fn resize(mut self, size: usize) -> Disk {
        let old = self.bytes.len();
        self.bytes.resize(size, 0);
        self.holes.retain_mut(|h| {
            h.end = h.end.min(size);
            h.start < h.end
        });
        if size > old {
            self.holes.push(old..size);
        }
        self
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Writes the disk to `path` as a sparse file: holes are left unallocated.
    pub fn write_to(&self, path: &Path) {
        let f = OpenOptions::new().write(true).create(true).truncate(true).open(path).expect("create disk");
        f.set_len(self.bytes.len() as u64).expect("size disk");
        let mut pos = 0;
        let mut holes = self.holes.clone();
        holes.sort_by_key(|h| h.start);
        holes.push(self.bytes.len()..self.bytes.len());
        for h in holes {
            if h.start > pos {
                f.write_all_at(&self.bytes[pos..h.start], pos as u64).expect("write disk");
            }
            pos = pos.max(h.end);
        }
        f.sync_all().ok();
    }

    /// Overwrites the disk file in place (same inode), as a disk that changes between backups.
    pub fn write_in_place(&self, path: &Path) {
        let f = OpenOptions::new().write(true).open(path).expect("open disk");
        f.set_len(self.bytes.len() as u64).expect("size disk");
        f.write_all_at(&self.bytes, 0).expect("write disk");
    }
}

/// A 4 MiB disk backed up as the given kinds in turn, changed before each (scattered blocks and
/// a new 100 KB run): the repository and each image's bytes. Two fulls make two sets.
pub fn history(
    seed: u64,
    kinds: &[KindRequest],
) -> (TestRepo, std::collections::HashMap<strata::id::ImageId, Vec<u8>>) {
    const MIB: usize = 1 << 20;
    let repo = TestRepo::small();
    let src = repo.file("disk.img");
    let mut disk = Disk::new(seed, 4 * MIB).random(0..2 * MIB).text(2 * MIB..3 * MIB).random(3 * MIB..4 * MIB);
    let mut bytes = std::collections::HashMap::new();
    for (n, kind) in kinds.iter().enumerate() {
        let at = (n % 3) * MIB;
        disk = disk.scatter_blocks(30).random(at..at + 100_000);
        disk.write_to(&src);
        let info = repo.try_backup(&src, *kind, true).expect("backup");
        bytes.insert(info.id, disk.bytes.clone());
    }
    (repo, bytes)
}

/// Allocated bytes of a file (to check that holes stay holes).
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

pub fn open(path: &Path) -> File {
    File::open(path).expect("open")
}

/// Costs computed independently of the counters: straight from every manifest and the chunk
/// locations. Per set: (stored bytes of its distinct chunks, bytes of chunks only it references).
pub struct Independent {
    pub sets: std::collections::HashMap<strata::id::ImageId, (u64, u64)>,
    pub live_stored: u64,
    pub live_chunks: usize,
    pub referenced: std::collections::HashSet<strata::id::ChunkId>,
}

pub fn independent(repo_path: &Path) -> Independent {
    use std::collections::{BTreeSet, HashMap, HashSet};
    use strata::index::ChunkLookup;
    use strata::manifest::Content;
    let repo = open_repo(repo_path).expect("open");
    let mut member: HashMap<strata::id::ChunkId, BTreeSet<strata::id::ImageId>> = HashMap::new();
    for info in repo.images().expect("images") {
        let (_, extents) = strata::manifest::open_manifest(repo.backend(), &info.id).expect("manifest");
        for e in extents {
            if let Content::Chunk { id, .. } = e.expect("extent").content {
                member.entry(id).or_default().insert(info.set);
            }
        }
    }
    let ids: Vec<_> = member.keys().copied().collect();
    let locs = repo.index().locate(&ids).expect("locate");
    let mut sets: HashMap<strata::id::ImageId, (u64, u64)> = HashMap::new();
    let mut live_stored = 0;
    for (id, loc) in ids.iter().zip(locs) {
        let len = loc.expect("every referenced chunk is indexed").charged();
        live_stored += len;
        let owners = &member[id];
        for s in owners {
            let e = sets.entry(*s).or_default();
            e.0 += len;
            if owners.len() == 1 {
                e.1 += len;
            }
        }
    }
    Independent { sets, live_stored, live_chunks: ids.len(), referenced: ids.into_iter().collect::<HashSet<_>>() }
}

/// Every chunk id the index holds.
pub fn indexed_chunks(repo_path: &Path) -> Vec<strata::id::ChunkId> {
    let repo = open_repo(repo_path).expect("open");
    repo.index().chunk_entries().expect("scan").into_iter().map(|(id, _)| id).collect()
}

/// Asserts that the counters behind `stats` equal the independent computation.
pub fn assert_stats_add_up(repo_path: &Path) {
    let repo = open_repo(repo_path).expect("open");
    let stats = strata::stats::stats(&repo).expect("stats");
    let ind = independent(repo_path);
    assert!(!stats.repository.counters_stale, "counters are stale");
    for s in &stats.sets {
        let (stored, exclusive) = ind.sets.get(&s.set).copied().unwrap_or_default();
        assert_eq!((s.stored_bytes, s.exclusive_bytes), (stored, exclusive), "set {} stored/exclusive", s.set);
    }
    assert_eq!(stats.repository.stored_referenced, ind.live_stored, "repository stored bytes");
    assert_eq!(stats.repository.chunks as usize, ind.live_chunks, "live chunks");
}

/// Writes the partition table `script` (sfdisk's input format) onto the disk image `disk`.
/// A GPT disk of `size` bytes at `disk` whose partitions are `(start sector, size in sectors,
/// filesystem image or None)`, each image copied to its partition's start.
pub fn gpt_disk(disk: &Path, size: usize, parts: &[(usize, usize, Option<&Path>)]) {
    std::fs::write(disk, vec![0u8; size]).unwrap();
    let lines: String = parts.iter().map(|(start, len, _)| format!("start={start}, size={len}\n")).collect();
    sfdisk(disk, &format!("label: gpt\n{lines}"));
    let mut bytes = std::fs::read(disk).unwrap();
    for &(start, _, image) in parts {
        if let Some(image) = image {
            let fs = std::fs::read(image).unwrap();
            bytes[start * 512..start * 512 + fs.len()].copy_from_slice(&fs);
        }
    }
    std::fs::write(disk, &bytes).unwrap();
}

pub fn sfdisk(disk: &Path, script: &str) {
    let mut child = Command::new("sfdisk")
        .arg("--quiet")
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sfdisk");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), script.as_bytes()).expect("write to sfdisk");
    assert!(child.wait().expect("sfdisk").success(), "sfdisk failed on {script}");
}
