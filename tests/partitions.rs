//! Partitioned disks made by the real tools (`sfdisk`, `mkfs.ext4 -d`, `mkfs.vfat`, `mkswap`):
//! `strata partitions` lists what blkid would, and `IMAGE:N` restores and verifies one partition,
//! byte-identical to that range of the disk. Damaged tables are clear errors, never a panic.

mod common;

use std::path::Path;
use std::process::Command;

use common::{assert_clean_failure, Disk, TestRepo};
use strata::KindRequest;

const MIB: u64 = 1 << 20;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A filesystem image of `size` bytes made by `mkfs` (with files, for ext4).
fn filesystem(dir: &Path, name: &str, size: u64, kind: &str, label: &str) -> Vec<u8> {
    let path = dir.join(name);
    std::fs::write(&path, vec![0u8; size as usize]).unwrap();
    match kind {
        "ext4" => {
            let files = dir.join(format!("{name}-files"));
            std::fs::create_dir_all(&files).unwrap();
            let data = Disk::new(7, 300_000).random(0..150_000).text(150_000..300_000);
            std::fs::write(files.join("data.bin"), &data.bytes).unwrap();
            std::fs::write(files.join("hello.txt"), b"hello from inside a partition\n").unwrap();
            run(Command::new("mkfs.ext4").args(["-q", "-F", "-L", label, "-d"]).arg(&files).arg(&path));
        }
        "vfat" => run(Command::new("mkfs.vfat").args(["-n", label]).arg(&path)),
        "ext2" => run(Command::new("mkfs.ext2").args(["-q", "-F", "-L", label]).arg(&path)),
        "swap" => run(Command::new("mkswap").arg(&path)),
        _ => unreachable!(),
    }
    std::fs::read(&path).unwrap()
}

/// Writes `bytes` into `disk` at `at`.
fn place(disk: &mut [u8], at: u64, bytes: &[u8]) {
    disk[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
}

/// A 64 MiB disk partitioned by `sfdisk` with `script`, then `fill`ed.
fn partitioned(dir: &Path, script: &str) -> std::path::PathBuf {
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 * MIB as usize]).unwrap();
    common::sfdisk(&disk, script);
    disk
}

/// Through `strata mount`, `images/<ID>/` holds exactly `p<N>.img` for the partitions
/// `(n, start, size)`, each reading as that range of the disk (beside the file views, which
/// `tests/filesystems.rs` covers). Skipped where FUSE is not usable.
fn assert_partitions_mounted(repo: &TestRepo, id: &str, disk: &[u8], parts: &[(u64, u64, u64)]) {
    let Some(m) = common::mounted::MountedRepo::start(repo, "mnt", &[]) else { return };
    let dir = m.path(&format!("images/{id}"));
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.retain(|n| n.ends_with(".img"));
    names.sort();
    let mut want: Vec<String> = parts.iter().map(|(n, _, _)| format!("p{n}.img")).collect();
    want.sort();
    assert_eq!(names, want);
    for &(n, start, size) in parts {
        let got = std::fs::read(dir.join(format!("p{n}.img"))).unwrap();
        assert!(got == disk[start as usize..(start + size) as usize], "p{n}.img reads other bytes");
    }
    m.stop();
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `IMAGE:N` restores to exactly the bytes of partition N, and verifies.
fn assert_partition_restores(repo: &TestRepo, image: &str, n: u64, disk: &[u8], start: u64, size: u64) {
    let target = repo.file(&format!("p{n}.img"));
    let spec = format!("{image}:{n}");
    let out = repo.cli(&["restore", &spec, target.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = std::fs::read(&target).unwrap();
    assert!(got == disk[start as usize..(start + size) as usize], "partition {n} restores other bytes");
    let out = repo.cli(&["verify", &spec]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `serve-nbd IMAGE:N` serves partition N alone: `qemu-img compare` finds it identical to the
/// partition's bytes.
fn assert_partition_served_over_nbd(repo: &TestRepo, spec: &str, partition: &Path) {
    let socket = repo.file("p.sock");
    let mut server = common::strata_cmd()
        .arg("-r")
        .arg(&repo.path)
        .args(["serve-nbd", spec, "--unix"])
        .arg(&socket)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("serve-nbd");
    for _ in 0..400 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let url = format!("nbd+unix:///?socket={}", socket.display());
    let out = Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(partition).arg(&url).output();
    let _ = server.kill();
    let _ = server.wait();
    let out = out.expect("qemu-img");
    assert!(out.status.success(), "{spec}: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_gpt_disk_with_two_filesystems_lists_and_restores_each_partition() {
    let repo = TestRepo::new();
    let dir = repo.dir.path();
    let path = partitioned(
        dir,
        "label: gpt\nstart=2048, size=40960, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"root\"\n\
         start=43008, size=40960, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name=\"data\"\n",
    );
    let mut disk = std::fs::read(&path).unwrap();
    place(&mut disk, 2048 * 512, &filesystem(dir, "p1", 20 * MIB, "ext4", "strata-root"));
    place(&mut disk, 43008 * 512, &filesystem(dir, "p2", 20 * MIB, "vfat", "DATA"));
    std::fs::write(&path, &disk).unwrap();
    let info = repo.backup(&path, KindRequest::Full);
    let id = info.id.to_string();

    let v = json(&repo.cli(&["partitions", &id, "--json"]));
    assert_eq!(v["scheme"], "gpt");
    assert_eq!(v["sector_size"], 512);
    let parts = v["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{v}");
    assert_eq!((parts[0]["number"].as_u64(), parts[0]["start"].as_u64()), (Some(1), Some(2048 * 512)));
    assert_eq!(parts[0]["size"].as_u64(), Some(20 * MIB));
    assert_eq!(parts[0]["type"], "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    assert_eq!(parts[0]["type_name"], "Linux filesystem");
    assert_eq!((parts[0]["filesystem"].as_str(), parts[0]["label"].as_str()), (Some("ext4"), Some("strata-root")));
    assert_eq!((parts[1]["number"].as_u64(), parts[1]["start"].as_u64()), (Some(2), Some(43008 * 512)));
    assert_eq!((parts[1]["filesystem"].as_str(), parts[1]["label"].as_str()), (Some("vfat"), Some("DATA")));
    assert_eq!(parts[1]["type_name"], "Microsoft basic data");

    assert_partition_restores(&repo, &id[..8], 1, &disk, 2048 * 512, 20 * MIB);
    assert_partition_restores(&repo, "latest", 2, &disk, 43008 * 512, 20 * MIB);
    // The restored ext4 partition is a filesystem e2fsck accepts.
    let out = Command::new("e2fsck").args(["-f", "-n"]).arg(repo.file("p1.img")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    assert_partition_served_over_nbd(&repo, &format!("{id}:2"), &repo.file("p2.img"));
    assert_partitions_mounted(&repo, &id, &disk, &[(1, 2048 * 512, 20 * MIB), (2, 43008 * 512, 20 * MIB)]);
    assert_clean_failure(&repo.cli(&["restore", &format!("{id}:3"), "/tmp/never"]), "no partition 3");
    for bad in [":0", ":-1", ":1:2", ":x", ":4294967296"] {
        assert_clean_failure(&repo.cli(&["restore", &format!("{id}{bad}"), "/tmp/never"]), "IMAGE:N");
    }
}

#[test]
fn an_mbr_disk_lists_logical_partitions_from_5_and_not_the_extended_container() {
    let repo = TestRepo::new();
    let dir = repo.dir.path();
    let path = partitioned(
        dir,
        "label: dos\nstart=2048, size=20480, type=83\nstart=22528, size=100000, type=5\n\
         start=24576, size=20480, type=83\nstart=47104, size=8192, type=82\n",
    );
    let mut disk = std::fs::read(&path).unwrap();
    place(&mut disk, 2048 * 512, &filesystem(dir, "p1", 10 * MIB, "ext2", "first"));
    place(&mut disk, 24576 * 512, &filesystem(dir, "p5", 10 * MIB, "ext4", "logical"));
    place(&mut disk, 47104 * 512, &filesystem(dir, "p6", 4 * MIB, "swap", ""));
    std::fs::write(&path, &disk).unwrap();
    let info = repo.backup(&path, KindRequest::Full);
    let id = info.id.to_string();
    let v = json(&repo.cli(&["partitions", &id, "--json"]));
    assert_eq!(v["scheme"], "mbr");
    let got: Vec<(u64, u64, &str, Option<&str>)> = v["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let n = p["number"].as_u64().unwrap();
            (n, p["start"].as_u64().unwrap() / 512, p["type"].as_str().unwrap(), p["filesystem"].as_str())
        })
        .collect();
    assert_eq!(
        got,
        vec![(1, 2048, "0x83", Some("ext2")), (5, 24576, "0x83", Some("ext4")), (6, 47104, "0x82", Some("swap"))]
    );
    assert_partition_restores(&repo, &id, 5, &disk, 24576 * 512, 20480 * 512);
    let parts = [(1, 2048 * 512, 20480 * 512), (5, 24576 * 512, 20480 * 512), (6, 47104 * 512, 8192 * 512)];
    assert_partitions_mounted(&repo, &id, &disk, &parts);
}

#[test]
fn a_disk_without_a_table_has_no_partitions_and_refuses_n() {
    let repo = TestRepo::new();
    let path = repo.file("fs.img");
    std::fs::write(&path, filesystem(repo.dir.path(), "whole", 8 * MIB, "vfat", "WHOLE")).unwrap();
    let id = repo.backup(&path, KindRequest::Full).id.to_string();
    let v = json(&repo.cli(&["partitions", &id, "--json"]));
    assert_eq!((v["scheme"].as_str(), v["partitions"].as_array().map(Vec::len)), (Some("none"), Some(0)));
    assert_clean_failure(&repo.cli(&["restore", &format!("{id}:1"), "/tmp/never"]), "no partition table");
    assert_partitions_mounted(&repo, &id, &std::fs::read(&path).unwrap(), &[]);
}

/// Tables that lie: an absurd GPT entry count, overlapping partitions, a partition past the end
/// of the disk. Each is a clear error; nothing panics or allocates without bound.
#[test]
fn damaged_partition_tables_are_clear_errors() {
    let repo = TestRepo::new();
    let dir = repo.dir.path();
    let gpt = partitioned(dir, "label: gpt\nstart=2048, size=20480\n");
    let mut bytes = std::fs::read(&gpt).unwrap();
    for header in [512usize, bytes.len() - 512] {
        bytes[header + 80..header + 84].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    }
    std::fs::write(&gpt, &bytes).unwrap();
    let id = repo.backup(&gpt, KindRequest::Full).id.to_string();
    assert_clean_failure(&repo.cli(&["partitions", &id]), "declares 2147483647 entries");

    let mbr = |entries: &[(u32, u32)]| {
        let mut d = vec![0u8; 16 * MIB as usize];
        for (i, (start, sectors)) in entries.iter().enumerate() {
            let e = 446 + i * 16;
            d[e + 4] = 0x83;
            d[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
            d[e + 12..e + 16].copy_from_slice(&sectors.to_le_bytes());
        }
        d[510] = 0x55;
        d[511] = 0xAA;
        d
    };
    let overlap = repo.file("overlap.img");
    std::fs::write(&overlap, mbr(&[(2048, 8192), (4096, 8192)])).unwrap();
    let id = repo.backup(&overlap, KindRequest::Full).id.to_string();
    assert_clean_failure(&repo.cli(&["partitions", &id]), "overlap");
    let past = repo.file("past.img");
    std::fs::write(&past, mbr(&[(2048, 1 << 30)])).unwrap();
    let id = repo.backup(&past, KindRequest::Full).id.to_string();
    assert_clean_failure(&repo.cli(&["partitions", &id]), "past the end");
}
