//! Used-block imaging: which bytes of a disk its filesystems use, read from their allocation
//! maps before a backup reads a byte. The backup reads and stores only those; the rest become
//! *unused* extents (restored as zeros), as Macrium's "intelligent sector copy" does.
//!
//! A disk is its partition table (`partition::read_table`) and the partitions in it; a disk
//! without one is a single filesystem. Everything outside partitions (MBR, GPT headers and entry
//! arrays at both ends, boot code, gaps) is always read. Each partition is given to the reader of
//! its filesystem (`ext`, `fat`, `ntfs`, or a swap header), which returns a map of its free
//! blocks or a *doubt*: a reason not to trust the map. A doubt, or a filesystem no reader knows,
//! makes that partition "every block", with a notice that says why. Safety is one-sided: a
//! reader may call a free block used (it is read, as today), never a used block free.

mod ext;
mod fat;
mod ntfs;

use std::ops::Range;

use serde::Serialize;

use crate::error::Result;
use crate::partition::{self, Disk, Scheme};
pub(crate) use crate::partition::{le16, le32, le64};

/// Free runs shorter than this are read anyway: a few bytes more, in exchange for chunks that are
/// not cut at every small free gap (the chunker's average size).
pub const MIN_UNUSED_RUN: u64 = 16 * 1024;

/// A reason not to trust an allocation map; the partition is then read whole.
pub(crate) type Doubt = String;

/// Why a map reader stopped: a doubt (the partition is read whole), or an error reading the
/// disk itself (the backup fails). Readers return it with `?` from either.
pub(crate) enum Failure {
    Doubt(Doubt),
    Disk(crate::error::Error),
}

impl From<Doubt> for Failure {
    fn from(doubt: Doubt) -> Failure {
        Failure::Doubt(doubt)
    }
}

impl From<crate::error::Error> for Failure {
    fn from(e: crate::error::Error) -> Failure {
        Failure::Disk(e)
    }
}

/// What a map reader returns.
pub(crate) type Read = std::result::Result<FreeMap, Failure>;

/// Free blocks of one filesystem: bit `i` set means the `unit` bytes at `start + i * unit` (on
/// the disk) are free. Bytes outside `start .. start + units * unit` are used.
#[derive(Clone, Debug)]
pub(crate) struct FreeMap {
    start: u64,
    unit: u64,
    units: u64,
    bits: Vec<u64>,
}

impl FreeMap {
    /// A map of `units` blocks of `unit` bytes from `start`, all used.
    pub(crate) fn new(start: u64, unit: u64, units: u64) -> FreeMap {
        FreeMap { start, unit, units, bits: vec![0; units.div_ceil(64) as usize] }
    }

    pub(crate) fn set_free(&mut self, i: u64) {
        if i < self.units {
            self.bits[(i / 64) as usize] |= 1 << (i % 64);
        }
    }

    pub(crate) fn set_used(&mut self, i: u64) {
        if i < self.units {
            self.bits[(i / 64) as usize] &= !(1 << (i % 64));
        }
    }

    pub(crate) fn is_free(&self, i: u64) -> bool {
        i < self.units && self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Marks units `from .. to` used (clipped to the map).
    pub(crate) fn set_used_range(&mut self, from: u64, to: u64) {
        for i in from..to.min(self.units) {
            self.set_used(i);
        }
    }

    pub(crate) fn free_units(&self) -> u64 {
        self.bits.iter().map(|w| w.count_ones() as u64).sum()
    }

    /// The first free unit at or after `i`.
    fn next_free(&self, mut i: u64) -> Option<u64> {
        while i < self.units {
            let w = self.bits[(i / 64) as usize] >> (i % 64);
            if w != 0 {
                let at = i + w.trailing_zeros() as u64;
                return (at < self.units).then_some(at);
            }
            i = (i / 64 + 1) * 64;
        }
        None
    }

    /// The first used unit at or after `i` (`units` when none).
    fn next_used(&self, mut i: u64) -> u64 {
        while i < self.units {
            let w = !self.bits[(i / 64) as usize] >> (i % 64);
            if w != 0 {
                return (i + w.trailing_zeros() as u64).min(self.units);
            }
            i = (i / 64 + 1) * 64;
        }
        self.units
    }

    /// Free runs as disk byte ranges, in order.
    fn runs(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        let mut i = 0;
        std::iter::from_fn(move || {
            let s = self.next_free(i)?;
            let e = self.next_used(s);
            i = e;
            Some(self.start + s * self.unit..self.start + e * self.unit)
        })
    }

    /// Marks used every free run shorter than `min` bytes.
    fn drop_short_runs(&mut self, min: u64) {
        let mut i = 0;
        while let Some(s) = self.next_free(i) {
            let e = self.next_used(s);
            if (e - s) * self.unit < min {
                self.set_used_range(s, e);
            }
            i = e;
        }
    }

    /// Moves the map by `by` bytes (from partition offsets to disk offsets).
    fn shifted(mut self, by: u64) -> FreeMap {
        self.start += by;
        self
    }

    /// The unit index of a disk offset inside the map, rounded down.
    fn unit_of(&self, at: u64) -> u64 {
        (at.saturating_sub(self.start) / self.unit).min(self.units)
    }
}

/// What the scan found in one part of the disk, for `backup --json` and notices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Region {
    /// `partition N`, `disk` (a filesystem on the whole disk), or `outside partitions`.
    pub name: String,
    pub start: u64,
    pub size: u64,
    /// As blkid names it (`ext4`, `vfat`, `ntfs`, `swap`, ...); None when unknown.
    pub filesystem: Option<String>,
    /// Bytes the backup skips as unused (0 when every block is read).
    pub unused_bytes: u64,
    /// Why every block of this region is read, when it is not imaged by its allocation map.
    pub notice: Option<String>,
}

/// Where a disk's free blocks are: the result of `scan`.
#[derive(Clone, Debug)]
pub struct UsageMap {
    maps: Vec<FreeMap>,
    regions: Vec<Region>,
}

impl UsageMap {
    /// Every block is read (`backup --all-blocks`).
    pub fn every_block() -> UsageMap {
        UsageMap { maps: Vec::new(), regions: Vec::new() }
    }

    /// The regions of the disk, in order, with what was found in each.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Bytes the backup skips as unused.
    pub fn unused_bytes(&self) -> u64 {
        self.maps.iter().map(|m| m.free_units() * m.unit).sum()
    }

    /// The unused byte ranges inside `range`, clipped to it, in order.
    pub fn unused_in(&self, range: Range<u64>, out: &mut Vec<Range<u64>>) {
        out.clear();
        let first = self.maps.partition_point(|m| m.start + m.units * m.unit <= range.start);
        for m in &self.maps[first..] {
            if m.start >= range.end {
                break;
            }
            let mut i = m.unit_of(range.start);
            while let Some(s) = m.next_free(i) {
                let from = m.start + s * m.unit;
                if from >= range.end {
                    break;
                }
                let e = m.next_used(s);
                let to = m.start + e * m.unit;
                let (a, b) = (from.max(range.start), to.min(range.end));
                if a < b {
                    out.push(a..b);
                }
                i = e;
            }
        }
    }

    /// Every unused byte range of the disk, in order.
    pub fn unused_ranges(&self) -> Vec<Range<u64>> {
        self.maps.iter().flat_map(|m| m.runs()).collect()
    }
}

/// Reads the partition table and the allocation map of every filesystem on `disk`. Never fails
/// for what it finds on the disk: whatever it cannot trust is read whole, with a notice; only
/// an error reading the disk itself is returned.
pub fn scan(disk: &dyn Disk) -> Result<UsageMap> {
    scan_with(disk, MIN_UNUSED_RUN)
}

/// `scan`, keeping free runs from `min_run` bytes on (0: every free block, as the filesystem's
/// own tools list them).
pub fn scan_with(disk: &dyn Disk, min_run: u64) -> Result<UsageMap> {
    let size = disk.size();
    let mut map = UsageMap::every_block();
    let table = match partition::read_table(disk) {
        Ok(t) => t,
        Err(crate::error::Error::BadPartitionTable { reason, .. }) => {
            map.regions.push(Region {
                name: "disk".into(),
                start: 0,
                size,
                filesystem: None,
                unused_bytes: 0,
                notice: Some(format!("every block: the partition table is not trusted ({reason})")),
            });
            return Ok(map);
        }
        Err(e) => return Err(e),
    };
    let mounted = disk.mounted_read_write();
    let mut parts: Vec<(String, u64, u64)> = if table.scheme == Scheme::None {
        vec![("disk".into(), 0, size)]
    } else {
        table.partitions.iter().map(|p| (format!("partition {}", p.number), p.start, p.size)).collect()
    };
    parts.sort_by_key(|p| p.1);
    let mut at = 0;
    for (name, start, len) in parts {
        if start > at {
            map.regions.push(outside(at, start - at));
        }
        let window = Window { disk, start, len };
        let (filesystem, mut result) = free_map(&window)?;
        // ext2/3/4 say on disk whether they are live (`needs_recovery`, or not clean), and a
        // frozen one says it is not; FAT and NTFS mounted by ntfs-3g may not.
        let says_if_live = matches!(filesystem, Some("ext2" | "ext3" | "ext4"));
        if let (Some(mount), Ok(_), false) = (&mounted, &result, says_if_live) {
            result = Err(format!("the disk is mounted read-write ({mount}): its map may change while it is read"));
        }
        let (unused_bytes, notice) = match result {
            Ok(mut m) => {
                m.drop_short_runs(min_run);
                let free = m.free_units() * m.unit;
                map.maps.push(m.shifted(start));
                (free, None)
            }
            Err(doubt) => (0, Some(format!("every block: {doubt}"))),
        };
        map.regions.push(Region {
            name,
            start,
            size: len,
            filesystem: filesystem.map(Into::into),
            unused_bytes,
            notice,
        });
        at = start + len;
    }
    if at < size {
        map.regions.push(outside(at, size - at));
    }
    Ok(map)
}

fn outside(start: u64, size: u64) -> Region {
    Region { name: "outside partitions".into(), start, size, filesystem: None, unused_bytes: 0, notice: None }
}

/// The filesystem of one partition and its free map, or why every block is read.
fn free_map(part: &Window) -> Result<(Option<&'static str>, std::result::Result<FreeMap, Doubt>)> {
    let (fs, _) = partition::detect(part, 0, part.len)?;
    let read = match fs {
        Some("ext2" | "ext3" | "ext4") => ext::free_map(part),
        Some("vfat") => fat::free_map(part),
        Some("ntfs") => ntfs::free_map(part),
        Some("swap") => swap_map(part),
        Some("LVM2_member") => Err("an LVM physical volume (its volumes are not looked into)".to_string().into()),
        Some("crypto_LUKS") => Err("a LUKS container (encrypted: its use cannot be seen)".to_string().into()),
        Some(other) => Err(format!("{other} has no allocation map reader").into()),
        None => Err("no known filesystem".to_string().into()),
    };
    let result = match read {
        Ok(map) => Ok(map),
        Err(Failure::Doubt(doubt)) => Err(doubt),
        Err(Failure::Disk(e)) => return Err(e),
    };
    Ok((fs, result))
}

/// A Linux swap area: only its header page matters (what is swapped out is gone after a
/// reboot). A hibernation image (`S1SUSPEND` and kin) replaces the signature and is read whole.
fn swap_map(part: &Window) -> Read {
    const PAGE: u64 = 4096;
    let head = partition::read_exact(part, 0, PAGE as usize)?;
    if head.get(4086..4096) != Some(b"SWAPSPACE2".as_slice()) {
        return Err(Failure::Doubt("a swap area of an old or unknown version".into()));
    }
    let units = part.len / PAGE;
    let mut m = FreeMap::new(0, PAGE, units);
    for i in 1..units {
        m.set_free(i);
    }
    Ok(m)
}

/// A part of a disk as a disk of its own (a partition).
pub(crate) struct Window<'d> {
    disk: &'d dyn Disk,
    start: u64,
    len: u64,
}

impl Disk for Window<'_> {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_at(&self, at: u64, buf: &mut [u8]) -> Result<usize> {
        if at >= self.len {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.len - at) as usize;
        self.disk.read_at(self.start + at, &mut buf[..n])
    }
    fn name(&self) -> String {
        self.disk.name()
    }
    fn mounted_read_write(&self) -> Option<String> {
        self.disk.mounted_read_write()
    }
}

/// Reads exactly `buf.len()` bytes at `at`, or doubts a filesystem that runs past its disk.
pub(crate) fn read_full(d: &dyn Disk, at: u64, buf: &mut [u8]) -> std::result::Result<(), Failure> {
    if d.read_at(at, buf)? == buf.len() {
        Ok(())
    } else {
        Err(Failure::Doubt(format!("the filesystem's metadata at byte {at} lies past the end of its partition")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A disk in memory.
    pub(crate) struct Mem(pub Vec<u8>);

    impl Disk for Mem {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, at: u64, buf: &mut [u8]) -> Result<usize> {
            let at = (at as usize).min(self.0.len());
            let n = buf.len().min(self.0.len() - at);
            buf[..n].copy_from_slice(&self.0[at..at + n]);
            Ok(n)
        }
        fn name(&self) -> String {
            "memory".into()
        }
    }

    #[test]
    fn free_runs_are_found_clipped_and_short_ones_dropped() {
        let mut m = FreeMap::new(1000, 4096, 200);
        for i in (10..20).chain(21..22).chain(64..190) {
            m.set_free(i);
        }
        m.drop_short_runs(8192);
        let runs: Vec<_> = m.runs().collect();
        assert_eq!(runs, vec![1000 + 10 * 4096..1000 + 20 * 4096, 1000 + 64 * 4096..1000 + 190 * 4096]);
        let map = UsageMap { maps: vec![m], regions: Vec::new() };
        let mut out = Vec::new();
        map.unused_in(1000 + 15 * 4096..1000 + 100 * 4096, &mut out);
        assert_eq!(out, vec![1000 + 15 * 4096..1000 + 20 * 4096, 1000 + 64 * 4096..1000 + 100 * 4096]);
        map.unused_in(0..1000, &mut out);
        assert!(out.is_empty());
        assert_eq!(map.unused_bytes(), 136 * 4096);
    }

    #[test]
    fn a_disk_of_nothing_known_is_read_whole() {
        let disk = Mem(vec![7u8; 1 << 20]);
        let map = scan(&disk).unwrap();
        assert_eq!(map.unused_bytes(), 0);
        assert_eq!(map.regions().len(), 1);
        assert!(map.regions()[0].notice.as_deref().unwrap().contains("no known filesystem"));
    }

    #[test]
    fn swap_keeps_its_header_only() {
        let mut bytes = vec![0u8; 1 << 20];
        bytes[4086..4096].copy_from_slice(b"SWAPSPACE2");
        let map = scan(&Mem(bytes.clone())).unwrap();
        assert_eq!(map.unused_ranges(), vec![4096..1 << 20]);
        bytes[4086..4096].copy_from_slice(b"S1SUSPEND\0");
        assert_eq!(scan(&Mem(bytes)).unwrap().unused_bytes(), 0, "a hibernation image is read whole");
    }
}
