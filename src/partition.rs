//! Partition tables of an image, read through the image reader: GPT (via `gptman`) or MBR with
//! logical partitions (via `mbrman`), and the filesystem in each partition found by its
//! signature, named as blkid's `TYPE` names it. `IMAGE:N` (see `Spec`) names partition N, and
//! `ImageReader::into_window` turns a reader of the disk into one of that partition.

use std::io::{Read, Seek, SeekFrom};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::reader::ImageReader;

/// Positional reads of a whole disk: an image through the image reader, or a source that a
/// backup reads (`backup::Source`). Partition tables and allocation maps are read through it.
pub trait Disk {
    /// The disk's size in bytes.
    fn size(&self) -> u64;
    /// Reads up to `buf.len()` bytes at `at`: fewer only at the end of the disk.
    fn read_at(&self, at: u64, buf: &mut [u8]) -> Result<usize>;
    /// How messages name the disk.
    fn name(&self) -> String;
    /// Where the disk (or a partition of it, or a loop device over it) is mounted read-write,
    /// when it is: its filesystems may change while they are read. None for stored images.
    fn mounted_read_write(&self) -> Option<String> {
        None
    }
}

impl Disk for ImageReader {
    fn size(&self) -> u64 {
        self.map().size()
    }
    fn read_at(&self, at: u64, buf: &mut [u8]) -> Result<usize> {
        ImageReader::read_at(self, at, buf)
    }
    fn name(&self) -> String {
        self.map().info().id.short()
    }
}

/// The most partition entries a GPT may declare here (the usual table has 128; a header that
/// declares millions is damage or an attack, and `gptman` would allocate for all of them).
const MAX_GPT_ENTRIES: u32 = 16_384;

/// An image named with an optional partition: `IMAGE` or `IMAGE:N` (N from 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub image: String,
    pub partition: Option<u32>,
}

impl Spec {
    /// Parses `IMAGE[:N]`: N is a decimal number from 1; `:0`, `:-1`, `:x`, an N that overflows
    /// and `IMAGE:1:2` are refused.
    pub fn parse(spec: &str) -> Result<Spec> {
        let bad = |reason: &str| Error::BadImageSpec { spec: spec.into(), reason: reason.into() };
        let Some((image, n)) = spec.split_once(':') else {
            return Ok(Spec { image: spec.into(), partition: None });
        };
        if image.is_empty() {
            return Err(bad("the image is missing before the colon"));
        }
        if n.contains(':') {
            return Err(bad("only one partition number may follow the image"));
        }
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the partition number must be a decimal number from 1"));
        }
        match n.parse::<u32>() {
            Ok(0) => Err(bad("partitions are numbered from 1")),
            Ok(n) => Ok(Spec { image: image.into(), partition: Some(n) }),
            Err(_) => Err(bad("the partition number is too large")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Gpt,
    Mbr,
    None,
}

/// One partition: where it lies on the disk (bytes) and what it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// GPT: the entry's number (from 1); MBR: 1–4 primary, 5 on for logical partitions.
    pub number: u32,
    pub start: u64,
    pub size: u64,
    /// A GPT type GUID, or an MBR type as `0xNN`.
    #[serde(rename = "type")]
    pub type_id: String,
    pub type_name: String,
    /// As blkid names it (`ext4`, `vfat`, `ntfs`, ...); None when no signature matched.
    pub filesystem: Option<&'static str>,
    /// The filesystem's label (ext2/3/4, FAT), or the GPT partition name.
    pub label: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Table {
    pub scheme: Scheme,
    pub sector_size: u64,
    pub partitions: Vec<Partition>,
}

impl Table {
    /// Partition `n`, or an error that says which numbers exist.
    pub fn get(&self, image: &str, n: u32) -> Result<&Partition> {
        if self.scheme == Scheme::None {
            return Err(Error::NoPartitionTable { image: image.into() });
        }
        self.partitions.iter().find(|p| p.number == n).ok_or_else(|| Error::PartitionNotFound {
            image: image.into(),
            number: n,
            numbers: self.partitions.iter().map(|p| p.number.to_string()).collect::<Vec<_>>().join(", "),
        })
    }
}

/// `reader`, narrowed to partition `n` of its image (`IMAGE:N`): a disk of its own.
pub fn narrow(reader: ImageReader, n: u32) -> Result<ImageReader> {
    let table = read_table(&reader)?;
    let p = table.get(&Disk::name(&reader), n)?;
    let range = p.start..p.start + p.size;
    Ok(reader.into_window(range))
}

/// Reads a disk's bytes as a file (for the partition-table and filesystem crates).
pub(crate) struct Cursor<'r> {
    reader: &'r dyn Disk,
    pos: u64,
}

impl<'r> Cursor<'r> {
    pub(crate) fn new(reader: &'r dyn Disk) -> Cursor<'r> {
        Cursor { reader, pos: 0 }
    }
}

impl Read for Cursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.reader.read_at(self.pos, buf).map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Cursor<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let size = self.reader.size() as i128;
        let at = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(d) => size + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if at < 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start"));
        }
        self.pos = at as u64;
        Ok(self.pos)
    }
}

pub(crate) fn read_exact(reader: &dyn Disk, at: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let n = reader.read_at(at, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// The partition table of the disk `reader` reads (scheme `None` when it has none).
pub fn read_table(reader: &dyn Disk) -> Result<Table> {
    let image = reader.name();
    let bad = |reason: String| Error::BadPartitionTable { image: image.clone(), reason };
    let mbr = read_exact(reader, 0, 512)?;
    if mbr.len() < 512 || mbr[510..512] != [0x55, 0xAA] {
        return Ok(Table { scheme: Scheme::None, sector_size: 512, partitions: Vec::new() });
    }
    let protective = (0..4).any(|i| mbr[446 + i * 16 + 4] == 0xEE);
    if !protective && looks_like_filesystem(&mbr) {
        // A FAT or NTFS boot sector also ends in 55 AA, and its boot code where an MBR has its
        // entries: a filesystem on the whole disk, not partitions.
        return Ok(Table { scheme: Scheme::None, sector_size: 512, partitions: Vec::new() });
    }
    let mut table = if protective { read_gpt(reader).map_err(bad)? } else { read_mbr(reader).map_err(bad)? };
    check_bounds(&table, reader.size()).map_err(bad)?;
    for p in &mut table.partitions {
        let (fs, label) = detect(reader, p.start, p.size)?;
        p.filesystem = fs;
        if label.is_some() {
            p.label = label;
        }
    }
    Ok(table)
}

/// A boot sector that names a filesystem (FAT, NTFS, exFAT) rather than partitions.
fn looks_like_filesystem(sector: &[u8]) -> bool {
    signature(sector, 0x36, b"FAT1")
        || signature(sector, 0x52, b"FAT32")
        || signature(sector, 3, b"NTFS    ")
        || signature(sector, 3, b"EXFAT   ")
}

/// Every partition inside the disk, none overlapping another.
fn check_bounds(table: &Table, size: u64) -> std::result::Result<(), String> {
    let mut spans: Vec<(u64, u64, u32)> = Vec::new();
    for p in &table.partitions {
        let end = p.start.checked_add(p.size).ok_or_else(|| format!("partition {} overflows", p.number))?;
        if end > size {
            return Err(format!(
                "partition {} ({} bytes at {}) runs past the end of the disk ({size} bytes)",
                p.number, p.size, p.start
            ));
        }
        spans.push((p.start, end, p.number));
    }
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!("partitions {} and {} overlap", w[0].2, w[1].2));
        }
    }
    Ok(())
}

/// The GPT header at `sector_size` declares a sane entry array (checked before `gptman`, which
/// allocates for every declared entry).
fn gpt_header_sane(reader: &dyn Disk, at: u64) -> std::result::Result<bool, String> {
    let h = read_exact(reader, at, 92).map_err(|e| e.to_string())?;
    if h.len() < 92 || &h[0..8] != b"EFI PART" {
        return Ok(false);
    }
    let (count, entry) = (le32(&h, 80), le32(&h, 84));
    if count > MAX_GPT_ENTRIES || !(128..=4096).contains(&entry) || entry % 8 != 0 {
        return Err(format!("the GPT header declares {count} entries of {entry} bytes"));
    }
    Ok(true)
}

fn read_gpt(reader: &dyn Disk) -> std::result::Result<Table, String> {
    let size = reader.size();
    let mut sane = false;
    for sector in [512u64, 4096] {
        sane |= gpt_header_sane(reader, sector)?;
        if size >= sector {
            sane |= gpt_header_sane(reader, (size / sector - 1) * sector)?;
        }
    }
    if !sane {
        return Err("a protective MBR but no GPT header".into());
    }
    let mut cursor = Cursor { reader, pos: 0 };
    let gpt = gptman::GPT::find_from(&mut cursor).map_err(|e| format!("the GPT cannot be read: {e}"))?;
    let ss = gpt.sector_size;
    let mut partitions = Vec::new();
    for (n, e) in gpt.iter().filter(|(_, e)| e.is_used()) {
        if e.ending_lba < e.starting_lba {
            return Err(format!("partition {n} ends before it starts"));
        }
        let start = e.starting_lba.checked_mul(ss).ok_or("a partition start overflows")?;
        let size = (e.ending_lba - e.starting_lba + 1).checked_mul(ss).ok_or("a partition size overflows")?;
        let guid = guid(&e.partition_type_guid);
        let name = e.partition_name.as_str().trim_end_matches('\0').to_string();
        partitions.push(Partition {
            number: n,
            start,
            size,
            type_name: gpt_type_name(&guid).to_string(),
            type_id: guid,
            filesystem: None,
            label: (!name.is_empty()).then_some(name),
        });
    }
    Ok(Table { scheme: Scheme::Gpt, sector_size: ss, partitions })
}

fn read_mbr(reader: &dyn Disk) -> std::result::Result<Table, String> {
    let mut cursor = Cursor { reader, pos: 0 };
    let mbr = mbrman::MBR::read_from(&mut cursor, 512).map_err(|e| format!("the MBR cannot be read: {e}"))?;
    let mut partitions = Vec::new();
    // Primary entries 1-4 and the logical partitions from 5; not the extended container.
    let entries = mbr.iter().filter(|(_, p)| p.is_used() && !p.is_extended() && p.sectors > 0);
    for (n, p) in entries {
        partitions.push(Partition {
            number: n as u32,
            start: p.starting_lba as u64 * 512,
            size: p.sectors as u64 * 512,
            type_id: format!("0x{:02x}", p.sys),
            type_name: mbr_type_name(p.sys).to_string(),
            filesystem: None,
            label: None,
        });
    }
    Ok(Table { scheme: Scheme::Mbr, sector_size: 512, partitions })
}

/// A GPT GUID as text (the first three fields are stored little-endian).
fn guid(b: &[u8; 16]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10..16].iter().map(|x| format!("{x:02X}")).collect::<String>()
    )
}

fn gpt_type_name(guid: &str) -> &'static str {
    match guid {
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI System",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "933AC7E1-2EB4-4F13-B844-0E14E2AEF915" => "Linux home",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "CA7D7CCB-63ED-4C53-861C-1742536059CC" => "Linux LUKS",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => "Linux RAID",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        "E3C9E316-0B5C-4DB8-817D-F92DF00215AE" => "Microsoft reserved",
        "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC" => "Windows recovery environment",
        _ => "unknown",
    }
}

fn mbr_type_name(sys: u8) -> &'static str {
    match sys {
        0x01 => "FAT12",
        0x04 | 0x06 => "FAT16",
        0x07 => "HPFS/NTFS/exFAT",
        0x0b => "W95 FAT32",
        0x0c => "W95 FAT32 (LBA)",
        0x0e => "W95 FAT16 (LBA)",
        0x82 => "Linux swap / Solaris",
        0x83 => "Linux",
        0x8e => "Linux LVM",
        0xef => "EFI (FAT-12/16/32)",
        0xfd => "Linux raid autodetect",
        _ => "unknown",
    }
}

/// Little-endian fields of on-disk structures (partition tables, superblocks, boot sectors);
/// the caller has checked that `b` is long enough.
pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    le32(b, at) as u64 | (le32(b, at + 4) as u64) << 32
}

fn signature(b: &[u8], at: usize, magic: &[u8]) -> bool {
    b.get(at..at + magic.len()) == Some(magic)
}

fn text(b: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(b).trim_end_matches(['\0', ' ']).to_string();
    (!s.is_empty() && s != "NO NAME").then_some(s)
}

/// The filesystem (blkid's `TYPE`) of the disk `reader` reads (a whole disk, or a partition
/// narrowed to), by its signature; None when no signature matched.
pub fn filesystem(reader: &dyn Disk) -> Result<Option<&'static str>> {
    Ok(detect(reader, 0, reader.size())?.0)
}

/// The filesystem (blkid's `TYPE`) and its label, by the signatures at the start of a partition.
pub(crate) fn detect(reader: &dyn Disk, start: u64, size: u64) -> Result<(Option<&'static str>, Option<String>)> {
    let head = read_exact(reader, start, (68 * 1024).min(size) as usize)?;
    if head.len() >= 1024 + 0x88 && signature(&head, 1024 + 56, &[0x53, 0xEF]) {
        let le = |at: usize| le32(&head, at);
        let (compat, incompat, ro) = (le(1024 + 0x5C), le(1024 + 0x60), le(1024 + 0x64));
        // What ext3 does not know makes it ext4 (blkid's rule): incompat beyond filetype,
        // recover and meta_bg; ro_compat beyond sparse_super, large_file and btree_dir.
        let fs = if incompat & !0x16 != 0 || ro & !0x7 != 0 {
            "ext4"
        } else if compat & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        };
        return Ok((Some(fs), text(&head[1024 + 0x78..1024 + 0x88])));
    }
    let fs = if signature(&head, 0, b"XFSB") {
        "xfs"
    } else if signature(&head, 0, b"LUKS\xba\xbe") {
        "crypto_LUKS"
    } else if signature(&head, 3, b"NTFS    ") {
        "ntfs"
    } else if signature(&head, 3, b"EXFAT   ") {
        "exfat"
    } else if signature(&head, 0x36, b"FAT1") && signature(&head, 510, &[0x55, 0xAA]) {
        return Ok((Some("vfat"), head.get(0x2B..0x36).and_then(text)));
    } else if signature(&head, 0x52, b"FAT32") && signature(&head, 510, &[0x55, 0xAA]) {
        return Ok((Some("vfat"), head.get(0x47..0x52).and_then(text)));
    } else if signature(&head, 0x10040, b"_BHRfS_M") {
        "btrfs"
    } else if signature(&head, 4086, b"SWAPSPACE2") || signature(&head, 4086, b"SWAP-SPACE") {
        "swap"
    } else if (signature(&head, 0, b"LABELONE") && signature(&head, 0x18, b"LVM2 001"))
        || (signature(&head, 512, b"LABELONE") && signature(&head, 512 + 0x18, b"LVM2 001"))
    {
        "LVM2_member"
    } else {
        return Ok((None, None));
    };
    Ok((Some(fs), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_specs_name_one_partition_from_1_or_none() {
        assert_eq!(Spec::parse("ab12").unwrap(), Spec { image: "ab12".into(), partition: None });
        assert_eq!(Spec::parse("latest:5").unwrap(), Spec { image: "latest".into(), partition: Some(5) });
        for bad in ["ab:0", "ab:-1", "ab:", "ab:x", "ab:1:2", ":1", "ab:99999999999", "ab:+1"] {
            assert!(matches!(Spec::parse(bad), Err(Error::BadImageSpec { .. })), "{bad}");
        }
    }

    #[test]
    fn gpt_guids_print_as_tools_print_them() {
        // EFI System, as stored on disk.
        let raw = [0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B];
        assert_eq!(guid(&raw), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    }
}
