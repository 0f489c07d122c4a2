//! The FAT of FAT12/16/32, read straight from the disk (`fatfs` exposes no allocation map).
//! Layout from Microsoft's FAT specification ("FAT: General Overview of On-Disk Format"):
//! reserved sectors, then the FATs, then (FAT12/16) the root directory, then the data clusters
//! numbered from 2. A cluster whose FAT entry is 0 is free; every other value (a chain, end of
//! chain, bad or reserved) is used. Everything before the first cluster and after the last is
//! always read.
//!
//! Checked before the map is trusted: a sane boot sector (sizes that are powers of two, counts
//! that fit the partition), FATs long enough for every cluster, all copies of the FAT equal, the
//! volume not marked dirty (the boot sector's state byte, which Linux sets while mounted, and
//! the clean-shutdown bit of FAT16/32), and for FAT32 no more free clusters than FSInfo counts.

use super::{le16, le32, read_full, Doubt, Failure, FreeMap, Read};
use crate::partition::Disk;

/// FATs are compared and decoded in pieces of this many bytes.
const PIECE: usize = 1 << 20;

struct Layout {
    cluster: u64,
    fats: u64,
    fat_bytes: u64,
    fat_at: u64,
    data_at: u64,
    clusters: u64,
    bits: u8,
    dirty: bool,
    fsinfo_at: Option<u64>,
}

pub(super) fn free_map(d: &dyn Disk) -> Read {
    let mut bs = [0u8; 512];
    read_full(d, 0, &mut bs)?;
    let l = layout(&bs, d.size())?;
    if l.dirty {
        return Err(Failure::Doubt("the volume is marked dirty (mounted read-write, or not cleanly unmounted)".into()));
    }
    let needed = (l.clusters + 2) * l.bits as u64;
    if l.fat_bytes * 8 < needed {
        return Err(format!("the FAT ({} bytes) is shorter than its {} clusters need", l.fat_bytes, l.clusters).into());
    }
    let mut map = FreeMap::new(l.data_at, l.cluster, l.clusters);
    let mut first = vec![0u8; PIECE];
    let mut other = vec![0u8; PIECE];
    // The FAT's bytes that hold entries 0 ..= clusters + 1 (entries beyond are padding).
    let used_len = needed.div_ceil(8);
    let mut carry: Vec<u8> = Vec::new();
    let mut entry = 0u64;
    let mut pos = 0u64;
    while pos < l.fat_bytes {
        let n = (PIECE as u64).min(l.fat_bytes - pos) as usize;
        read_full(d, l.fat_at + pos, &mut first[..n])?;
        for copy in 1..l.fats {
            read_full(d, l.fat_at + copy * l.fat_bytes + pos, &mut other[..n])?;
            if first[..n] != other[..n] {
                return Err(format!("FAT copy {} differs from the first", copy + 1).into());
            }
        }
        if pos < used_len {
            let upto = ((used_len - pos) as usize).min(n);
            carry.extend_from_slice(&first[..upto]);
            entry = decode(&l, &mut carry, entry, &mut map);
        }
        pos += n as u64;
    }
    if entry < 2 {
        return Err(Failure::Doubt("the FAT holds no entries".into()));
    }
    let free = map.free_units();
    if let Some(at) = l.fsinfo_at {
        let mut info = [0u8; 512];
        let readable = match read_full(d, at, &mut info) {
            Ok(()) => true,
            Err(Failure::Doubt(_)) => false,
            Err(e) => return Err(e),
        };
        if readable
            && le32(&info, 0) == 0x4161_5252
            && le32(&info, 484) == 0x6141_7272
            && le32(&info, 488) != u32::MAX
            && free > le32(&info, 488) as u64
        {
            return Err(format!("the FAT has {free} free clusters, FSInfo says {}", le32(&info, 488)).into());
        }
    }
    Ok(map)
}

/// Decodes the whole entries at the front of `carry` (entry numbers from `entry`), marks free
/// clusters, keeps the bytes of a split entry, and returns the next entry number.
fn decode(l: &Layout, carry: &mut Vec<u8>, mut entry: u64, map: &mut FreeMap) -> u64 {
    let mut mark = |n: u64, value: u32| {
        if n >= 2 && value == 0 {
            map.set_free(n - 2);
        }
    };
    let consumed = match l.bits {
        12 => {
            // Two entries in three bytes.
            let pairs = carry.len() / 3;
            for p in 0..pairs {
                let b = &carry[p * 3..p * 3 + 3];
                mark(entry, (b[0] as u32) | ((b[1] as u32 & 0x0F) << 8));
                mark(entry + 1, ((b[1] as u32) >> 4) | ((b[2] as u32) << 4));
                entry += 2;
            }
            pairs * 3
        }
        16 => {
            let n = carry.len() / 2;
            for i in 0..n {
                mark(entry, le16(carry, i * 2) as u32);
                entry += 1;
            }
            n * 2
        }
        _ => {
            let n = carry.len() / 4;
            for i in 0..n {
                mark(entry, le32(carry, i * 4) & 0x0FFF_FFFF);
                entry += 1;
            }
            n * 4
        }
    };
    carry.drain(..consumed);
    entry
}

fn layout(bs: &[u8], part_size: u64) -> std::result::Result<Layout, Doubt> {
    let sector = le16(bs, 11) as u64;
    let per_cluster = bs[13] as u64;
    let reserved = le16(bs, 14) as u64;
    let fats = bs[16] as u64;
    let root_entries = le16(bs, 17) as u64;
    let total = if le16(bs, 19) != 0 { le16(bs, 19) as u64 } else { le32(bs, 32) as u64 };
    let fat_sectors = if le16(bs, 22) != 0 { le16(bs, 22) as u64 } else { le32(bs, 36) as u64 };
    if !(512..=4096).contains(&sector) || !sector.is_power_of_two() {
        return Err(format!("sectors of {sector} bytes"));
    }
    if per_cluster == 0 || !per_cluster.is_power_of_two() || reserved == 0 || fats == 0 || fats > 4 {
        return Err(format!("{per_cluster} sectors per cluster, {reserved} reserved, {fats} FATs"));
    }
    if total * sector > part_size {
        return Err(format!(
            "the filesystem ({total} sectors of {sector} bytes) is larger than its partition ({part_size} bytes)"
        ));
    }
    let root_sectors = (root_entries * 32).div_ceil(sector);
    let data_sector = reserved + fats * fat_sectors + root_sectors;
    if fat_sectors == 0 || data_sector >= total {
        return Err(format!("the data area starts at sector {data_sector} of {total}"));
    }
    let clusters = (total - data_sector) / per_cluster;
    let bits = if clusters < 4085 {
        12
    } else if clusters < 65525 {
        16
    } else {
        32
    };
    // Linux sets bit 0 of the state byte while mounted read-write (offset 37 in FAT12/16's
    // extended boot record, 65 in FAT32's); Windows clears a clean-shutdown bit in FAT[1].
    let state = if bits == 32 { bs[65] } else { bs[37] };
    let fsinfo = le16(bs, 48) as u64;
    Ok(Layout {
        cluster: per_cluster * sector,
        fats,
        fat_bytes: fat_sectors * sector,
        fat_at: reserved * sector,
        data_at: data_sector * sector,
        clusters,
        bits,
        dirty: state & 1 != 0,
        fsinfo_at: (bits == 32 && fsinfo != 0 && fsinfo != 0xFFFF && fsinfo < reserved).then_some(fsinfo * sector),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocation::tests::Mem;

    /// A FAT16 volume by hand: 2 FATs of 1 sector... large enough to be FAT16 needs 4085+
    /// clusters, so this builds a FAT12 one: 512-byte sectors, 1 sector per cluster.
    fn fat12(entries: &[u16]) -> Vec<u8> {
        let total = 2048u64;
        let mut v = vec![0u8; total as usize * 512];
        v[11..13].copy_from_slice(&512u16.to_le_bytes());
        v[13] = 1;
        v[14..16].copy_from_slice(&1u16.to_le_bytes());
        v[16] = 2;
        v[17..19].copy_from_slice(&16u16.to_le_bytes());
        v[19..21].copy_from_slice(&(total as u16).to_le_bytes());
        v[22..24].copy_from_slice(&6u16.to_le_bytes());
        v[510] = 0x55;
        v[511] = 0xAA;
        for copy in 0..2 {
            let fat = 512 + copy * 6 * 512;
            for (n, &e) in entries.iter().enumerate() {
                let at = fat + n * 3 / 2;
                if n % 2 == 0 {
                    v[at] = e as u8;
                    v[at + 1] = (v[at + 1] & 0xF0) | ((e >> 8) as u8 & 0x0F);
                } else {
                    v[at] = (v[at] & 0x0F) | ((e as u8 & 0x0F) << 4);
                    v[at + 1] = (e >> 4) as u8;
                }
            }
        }
        v
    }

    #[test]
    fn free_clusters_are_those_whose_entry_is_zero() {
        let mut entries = vec![0xFF8, 0xFFF, 3, 0xFFF, 0, 0, 0xFF7];
        entries.resize(2000, 0);
        entries[1500] = 0xFFF;
        let disk = Mem(fat12(&entries));
        let Ok(map) = free_map(&disk) else { panic!("the FAT is not trusted") };
        let data_at = (1 + 12 + 1) * 512;
        assert_eq!(map.start, data_at);
        assert!(!map.is_free(0) && !map.is_free(1), "clusters 2 and 3: a chain");
        assert!(map.is_free(2) && map.is_free(3));
        assert!(!map.is_free(4), "a bad cluster is kept");
        assert!(!map.is_free(1498));
        assert!(map.is_free(1497) && map.is_free(1499));
    }

    /// Why the map of `disk` is not trusted (a panic when it is, or when the disk fails).
    fn doubt(disk: &Mem) -> String {
        match free_map(disk) {
            Err(Failure::Doubt(d)) => d,
            _ => panic!("expected a doubt"),
        }
    }

    #[test]
    fn differing_copies_a_dirty_volume_and_a_short_fat_are_doubted() {
        let entries = vec![0xFF8, 0xFFF, 0xFFF];
        let mut v = fat12(&entries);
        v[512 + 6 * 512 + 4] ^= 1;
        assert!(doubt(&Mem(v)).contains("differs"));
        let mut v = fat12(&entries);
        v[37] = 1;
        assert!(doubt(&Mem(v)).contains("dirty"));
        let mut v = fat12(&entries);
        v[22..24].copy_from_slice(&1u16.to_le_bytes()); // one sector: 341 entries for 2030 clusters
        assert!(doubt(&Mem(v)).contains("shorter"));
        let v = fat12(&entries);
        assert!(doubt(&Mem(v[..4096].to_vec())).contains("larger than its partition"));
    }
}
