//! The block bitmaps of ext2/3/4, read straight from the disk (`ext4-view` exposes no allocation
//! maps). Layout from the kernel's `Documentation/filesystems/ext4/` and e2fsprogs:
//!
//! - superblock at byte 1024; block groups of `s_blocks_per_group` blocks from
//!   `s_first_data_block`; the group descriptor table in the block after the superblock's;
//! - each descriptor (32 bytes, or `s_desc_size` with `64bit`) locates its group's block bitmap,
//!   inode bitmap and inode table, and counts its free blocks;
//! - a group flagged `BLOCK_UNINIT` (only meaningful with `gdt_csum` or `metadata_csum`) has no
//!   bitmap on disk: its used blocks are the superblock backup, the descriptor table and its
//!   reserved blocks, and whatever bitmaps or inode tables lie inside it.
//!
//! Every metadata block any group names (bitmaps, inode tables, superblock and descriptor copies
//! with their reserved blocks) is marked used whatever a bitmap says. Checked before the map is
//! trusted: the superblock's checksum (`metadata_csum`), each descriptor's checksum (`gdt_csum`
//! or `metadata_csum`), each bitmap's checksum (`metadata_csum`), that no group and not the
//! whole filesystem counts more free blocks than its descriptor and the superblock say, and that
//! the journal was replayed (`needs_recovery` clear) and the filesystem is marked clean.
//! Refused (every block): `meta_bg`, bigalloc, snapshots, and any incompatible or read-only
//! feature not listed here.

use crc::{Crc, CRC_16_MODBUS, CRC_32_ISCSI};

use super::{le16, le32, read_full, Doubt, FreeMap, Read};
use crate::partition::Disk;

const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
/// filetype, recover, extents, 64bit, mmp, flex_bg, ea_inode, dirdata, csum_seed, largedir,
/// inline_data, encrypt, casefold: none changes what the block bitmaps mean.
const INCOMPAT_KNOWN: u32 =
    0x2 | 0x4 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000;
const RO_SPARSE_SUPER: u32 = 0x1;
const RO_GDT_CSUM: u32 = 0x10;
const RO_BIGALLOC: u32 = 0x200;
const RO_METADATA_CSUM: u32 = 0x400;
/// sparse_super, large_file, btree_dir, huge_file, gdt_csum, dir_nlink, extra_isize, quota,
/// metadata_csum, readonly, project, verity, orphan_present.
const RO_KNOWN: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x100 | 0x400 | 0x1000 | 0x2000 | 0x8000 | 0x10000;
const COMPAT_RESIZE_INODE: u32 = 0x10;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const BG_BLOCK_UNINIT: u16 = 0x2;
const STATE_VALID: u16 = 0x1;
const STATE_ERROR: u16 = 0x2;

/// The kernel's `crc32c(seed, data)`: the raw register, without the final inversion that the
/// catalogued CRC-32C applies (`crc` reflects the initial value it is given).
fn crc32c(seed: u32, parts: &[&[u8]]) -> u32 {
    const C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);
    let mut d = C.digest_with_initial(seed.reverse_bits());
    for p in parts {
        d.update(p);
    }
    !d.finalize()
}

/// e2fsprogs' `ext2fs_crc16(~0, ...)` for `gdt_csum`: CRC-16/MODBUS.
fn crc16(parts: &[&[u8]]) -> u16 {
    const C: Crc<u16> = Crc::<u16>::new(&CRC_16_MODBUS);
    let mut d = C.digest();
    for p in parts {
        d.update(p);
    }
    d.finalize()
}

/// The superblock fields the map needs.
struct Geometry {
    block: u64,
    blocks: u64,
    first_data_block: u64,
    per_group: u64,
    groups: u64,
    desc_size: usize,
    inode_table_blocks: u64,
    gdt_blocks: u64,
    reserved_gdt: u64,
    free_blocks: u64,
    sparse_super: bool,
    backup_groups: Option<[u32; 2]>,
    csum_seed: Option<u32>,
    gdt_csum: bool,
    uuid: [u8; 16],
}

/// The free blocks of the ext2/3/4 filesystem on `d`, or a doubt.
pub(super) fn free_map(d: &dyn Disk) -> Read {
    let mut sb = [0u8; 1024];
    read_full(d, 1024, &mut sb)?;
    let g = geometry(&sb, d.size())?;
    let mut gdt = vec![0u8; (g.groups as usize) * g.desc_size];
    read_full(d, (g.first_data_block + 1) * g.block, &mut gdt)?;
    let mut map = FreeMap::new(0, g.block, g.blocks);
    let mut bitmap = vec![0u8; g.block as usize];
    for group in 0..g.groups {
        let desc = &gdt[group as usize * g.desc_size..(group as usize + 1) * g.desc_size];
        check_descriptor(&g, group, desc)?;
        let first = g.first_data_block + group * g.per_group;
        let count = g.per_group.min(g.blocks - first);
        let uninit = (g.csum_seed.is_some() || g.gdt_csum) && le16(desc, 18) & BG_BLOCK_UNINIT != 0;
        if uninit {
            for b in first..first + count {
                map.set_free(b);
            }
        } else {
            let at = block_no(&g, desc, 0);
            if at >= g.blocks {
                return Err(format!("the block bitmap of group {group} lies outside the filesystem").into());
            }
            read_full(d, at * g.block, &mut bitmap)?;
            if let Some(seed) = g.csum_seed {
                let sum = crc32c(seed, &[&bitmap[..(g.per_group / 8) as usize]]);
                let stored = le16(desc, 24) as u32 | if g.desc_size >= 64 { (le16(desc, 56) as u32) << 16 } else { 0 };
                let mask = if g.desc_size >= 64 { u32::MAX } else { 0xFFFF };
                if sum & mask != stored {
                    return Err(format!("the block bitmap of group {group} fails its checksum").into());
                }
            }
            for i in 0..count {
                if bitmap[(i / 8) as usize] & (1 << (i % 8)) == 0 {
                    map.set_free(first + i);
                }
            }
            let free = (first..first + count).filter(|&b| map.is_free(b)).count() as u64;
            let said = le16(desc, 12) as u64 | if g.desc_size >= 64 { (le16(desc, 44) as u64) << 16 } else { 0 };
            if free > said {
                return Err(
                    format!("the bitmap of group {group} has {free} free blocks, its descriptor says {said}").into()
                );
            }
        }
    }
    // Block 0 of a 1 KiB-block filesystem lies before group 0: never set free, so always read.
    mark_metadata(&g, &gdt, &mut map);
    let free = map.free_units();
    if free > g.free_blocks {
        return Err(format!("the bitmaps have {free} free blocks, the superblock says {}", g.free_blocks).into());
    }
    Ok(map)
}

fn geometry(sb: &[u8], disk_size: u64) -> std::result::Result<Geometry, Doubt> {
    let (compat, incompat, ro) = (le32(sb, 0x5C), le32(sb, 0x60), le32(sb, 0x64));
    let state = le16(sb, 0x3A);
    if incompat & INCOMPAT_RECOVER != 0 {
        return Err(
            "its journal needs recovery (mounted read-write, or not cleanly unmounted): the bitmaps may lag behind"
                .into(),
        );
    }
    if state & STATE_VALID == 0 || state & STATE_ERROR != 0 {
        return Err("it is not marked clean (mounted read-write, not cleanly unmounted, or with errors)".into());
    }
    if incompat & INCOMPAT_META_BG != 0 {
        return Err("meta_bg descriptor layout is not supported".into());
    }
    if ro & RO_BIGALLOC != 0 {
        return Err("bigalloc (cluster bitmaps) is not supported".into());
    }
    if incompat & !INCOMPAT_KNOWN != 0 || ro & !RO_KNOWN != 0 {
        return Err(format!("unknown features (incompat {incompat:#x}, ro_compat {ro:#x})"));
    }
    let metadata_csum = ro & RO_METADATA_CSUM != 0;
    if metadata_csum && crc32c(!0, &[&sb[..0x3FC]]) != le32(sb, 0x3FC) {
        return Err("the superblock fails its checksum".into());
    }
    let log = le32(sb, 0x18);
    if log > 6 {
        return Err(format!("block size 2^{} is out of range", 10 + log));
    }
    let block = 1024u64 << log;
    let is64 = incompat & INCOMPAT_64BIT != 0;
    let hi = |at: usize| if is64 { (le32(sb, at) as u64) << 32 } else { 0 };
    let blocks = le32(sb, 0x4) as u64 | hi(0x150);
    let free_blocks = le32(sb, 0xC) as u64 | hi(0x158);
    let first_data_block = le32(sb, 0x14) as u64;
    let per_group = le32(sb, 0x20) as u64;
    let inodes_per_group = le32(sb, 0x28) as u64;
    let inode_size = if le32(sb, 0x4C) == 0 { 128 } else { le16(sb, 0x58) as u64 };
    let desc_size = if is64 { le16(sb, 0xFE) as usize } else { 32 };
    if per_group == 0 || per_group > block * 8 || per_group % 8 != 0 {
        return Err(format!("{per_group} blocks per group do not fit a bitmap block"));
    }
    if !(32..=1024).contains(&desc_size) || !desc_size.is_power_of_two() {
        return Err(format!("group descriptors of {desc_size} bytes"));
    }
    if blocks <= first_data_block || first_data_block > 1 || free_blocks > blocks {
        return Err(format!("{blocks} blocks, {free_blocks} free, data from block {first_data_block}"));
    }
    if blocks.checked_mul(block).is_none_or(|b| b > disk_size) {
        return Err(format!(
            "the filesystem ({blocks} blocks of {block} bytes) is larger than its partition ({disk_size} bytes)"
        ));
    }
    if inode_size < 128 || inode_size > block || inodes_per_group == 0 {
        return Err(format!("inodes of {inode_size} bytes, {inodes_per_group} per group"));
    }
    let groups = (blocks - first_data_block).div_ceil(per_group);
    let csum_seed = metadata_csum.then(|| {
        if incompat & INCOMPAT_CSUM_SEED != 0 {
            le32(sb, 0x270)
        } else {
            crc32c(!0, &[&sb[0x68..0x78]])
        }
    });
    Ok(Geometry {
        block,
        blocks,
        first_data_block,
        per_group,
        groups,
        desc_size,
        inode_table_blocks: (inodes_per_group * inode_size).div_ceil(block),
        gdt_blocks: (groups * desc_size as u64).div_ceil(block),
        reserved_gdt: if compat & COMPAT_RESIZE_INODE != 0 { le16(sb, 0xCE) as u64 } else { 0 },
        free_blocks,
        sparse_super: ro & RO_SPARSE_SUPER != 0,
        backup_groups: (compat & COMPAT_SPARSE_SUPER2 != 0).then(|| [le32(sb, 0x24C), le32(sb, 0x250)]),
        csum_seed,
        gdt_csum: ro & RO_GDT_CSUM != 0 && !metadata_csum,
        uuid: sb[0x68..0x78].try_into().unwrap_or([0; 16]),
    })
}

/// A descriptor's checksum, when the filesystem has one.
fn check_descriptor(g: &Geometry, group: u64, desc: &[u8]) -> std::result::Result<(), Doubt> {
    let le_group = (group as u32).to_le_bytes();
    let stored = le16(desc, 0x1E);
    let tail = if g.desc_size > 0x20 { &desc[0x20..] } else { &[][..] };
    let sum = if let Some(seed) = g.csum_seed {
        crc32c(seed, &[&le_group, &desc[..0x1E], &[0, 0], tail]) as u16
    } else if g.gdt_csum {
        crc16(&[&g.uuid, &le_group, &desc[..0x1E], tail])
    } else {
        return Ok(());
    };
    if sum != stored {
        return Err(format!("the descriptor of group {group} fails its checksum"));
    }
    Ok(())
}

/// A block number from a descriptor: the low half at `at`, the high half 32 bytes on (64bit).
fn block_no(g: &Geometry, desc: &[u8], at: usize) -> u64 {
    le32(desc, at) as u64 | if g.desc_size >= 64 { (le32(desc, at + 0x20) as u64) << 32 } else { 0 }
}

/// Whether group `n` holds a copy of the superblock and descriptors.
fn has_backup(g: &Geometry, n: u64) -> bool {
    if n <= 1 {
        return true;
    }
    if let Some(bgs) = g.backup_groups {
        return bgs.contains(&(n as u32));
    }
    if !g.sparse_super {
        return true;
    }
    [3u64, 5, 7].iter().any(|&p| {
        let mut x = n;
        while x % p == 0 {
            x /= p;
        }
        x == 1
    })
}

/// Marks used every metadata block that any group names, whatever the bitmaps say.
fn mark_metadata(g: &Geometry, gdt: &[u8], map: &mut FreeMap) {
    for group in 0..g.groups {
        let desc = &gdt[group as usize * g.desc_size..(group as usize + 1) * g.desc_size];
        let first = g.first_data_block + group * g.per_group;
        if has_backup(g, group) {
            map.set_used_range(first, first + 1 + g.gdt_blocks + g.reserved_gdt);
        }
        let (bb, ib, it) = (block_no(g, desc, 0), block_no(g, desc, 4), block_no(g, desc, 8));
        map.set_used_range(bb, bb + 1);
        map.set_used_range(ib, ib + 1);
        map.set_used_range(it, it.saturating_add(g.inode_table_blocks));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_the_kernels_raw_register() {
        // The kernel's crc32c(~0, "123456789") without the final inversion: !0xE3069283.
        assert_eq!(crc32c(!0, &[b"123456789"]), !0xE306_9283);
        assert_eq!(crc32c(!0, &[b"1234", b"56789"]), crc32c(!0, &[b"123456789"]));
        assert_eq!(crc32c(crc32c(7, &[b"12"]), &[b"3"]), crc32c(7, &[b"123"]));
    }

    #[test]
    fn backup_groups_follow_sparse_super() {
        let mut g = geometry_stub();
        let with: Vec<u64> = (0..30).filter(|&n| has_backup(&g, n)).collect();
        assert_eq!(with, vec![0, 1, 3, 5, 7, 9, 25, 27]);
        g.backup_groups = Some([1, 17]);
        assert!(has_backup(&g, 17) && !has_backup(&g, 3));
    }

    fn geometry_stub() -> Geometry {
        Geometry {
            block: 4096,
            blocks: 1 << 20,
            first_data_block: 0,
            per_group: 32768,
            groups: 32,
            desc_size: 64,
            inode_table_blocks: 512,
            gdt_blocks: 1,
            reserved_gdt: 0,
            free_blocks: 0,
            sparse_super: true,
            backup_groups: None,
            csum_seed: None,
            gdt_csum: false,
            uuid: [0; 16],
        }
    }
}
