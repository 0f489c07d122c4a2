//! NTFS's `$Bitmap` (file record 6: one bit per cluster, set when used), read through the `ntfs`
//! crate as the file it is. Clusters beyond the volume's last (the backup boot sector in the
//! partition's last sector) are always read.
//!
//! Checked before the map is trusted: the volume fits its partition, the bitmap covers every
//! cluster, the clusters of the boot sector, `$MFT` and `$MFTMirr` are marked used, the volume is
//! not marked dirty (`$Volume`), and Windows is not hibernated on it (`hiberfil.sys` starting
//! with `hibr` or `wake`, as ntfs-3g checks): a dirty or hibernated volume's bitmap lags behind.

use std::io::{self, Seek};

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::NtfsVolumeFlags;
use ntfs::{Ntfs, NtfsReadSeek};

use super::{le64, read_full, Failure, FreeMap, Read};
use crate::partition::{Cursor, Disk};

const BITMAP_RECORD: u64 = 6;
/// More bitmap than any volume Strata images has (a bit per cluster of 512 bytes on 16 TiB).
const MAX_BITMAP: u64 = 4 << 30;

pub(super) fn free_map(d: &dyn Disk) -> Read {
    let mut boot = [0u8; 512];
    read_full(d, 0, &mut boot)?;
    let mut fs = Cursor::new(d);
    // The `ntfs` crate can panic on metadata damaged in ways it did not foresee.
    crate::error::contain_panics(|| bitmap(&mut fs, &boot, d.size()))
        .unwrap_or_else(|panic| Err(Failure::Doubt(format!("the NTFS metadata is damaged ({panic})"))))
}

/// Metadata the `ntfs` crate cannot read is a doubt, like any other.
impl From<ntfs::NtfsError> for Failure {
    fn from(e: ntfs::NtfsError) -> Failure {
        Failure::Doubt(format!("the NTFS metadata cannot be read ({e})"))
    }
}

fn bitmap<T: io::Read + Seek>(fs: &mut T, boot: &[u8], part_size: u64) -> Read {
    let doubt = |s: String| Failure::Doubt(s);
    let mut ntfs = Ntfs::new(fs)?;
    let cluster = ntfs.cluster_size() as u64;
    if ntfs.size() > part_size {
        return Err(doubt(format!(
            "the filesystem ({} bytes) is larger than its partition ({part_size} bytes)",
            ntfs.size()
        )));
    }
    if ntfs.volume_info(fs)?.flags().contains(NtfsVolumeFlags::IS_DIRTY) {
        return Err(doubt("the volume is marked dirty (check it in Windows, or with ntfsfix)".into()));
    }
    ntfs.read_upcase_table(fs)?;
    if hibernated(&ntfs, fs)? {
        return Err(doubt("Windows is hibernated on it (hiberfil.sys is live)".into()));
    }
    let clusters = ntfs.size() / cluster;
    let file = ntfs.file(fs, BITMAP_RECORD)?;
    let item = file.data(fs, "").ok_or_else(|| doubt("$Bitmap has no data".into()))??;
    let attribute = item.to_attribute()?;
    let mut value = attribute.value(fs)?;
    let len = value.len();
    if len * 8 < clusters || len > MAX_BITMAP {
        return Err(doubt(format!("$Bitmap ({len} bytes) does not cover the volume's {clusters} clusters")));
    }
    let mut bits = vec![0u8; clusters.div_ceil(8) as usize];
    let mut at = 0;
    while at < bits.len() {
        let n = value.read(fs, &mut bits[at..])?;
        if n == 0 {
            return Err(doubt("$Bitmap ends early".into()));
        }
        at += n;
    }
    let used = |c: u64| bits[(c / 8) as usize] & (1 << (c % 8)) != 0;
    let mft = le64(boot, 48);
    let mirror = le64(boot, 56);
    for (what, c) in [("the boot sector", 0), ("$MFT", mft), ("$MFTMirr", mirror)] {
        if c >= clusters || !used(c) {
            return Err(doubt(format!("$Bitmap does not mark {what} (cluster {c}) in use")));
        }
    }
    let mut map = FreeMap::new(0, cluster, clusters);
    for c in 0..clusters {
        if !used(c) {
            map.set_free(c);
        }
    }
    Ok(map)
}

/// Whether `hiberfil.sys` in the root directory holds a live hibernation image.
fn hibernated<T: io::Read + Seek>(ntfs: &Ntfs, fs: &mut T) -> std::result::Result<bool, Failure> {
    let root = ntfs.root_directory(fs)?;
    let index = root.directory_index(fs)?;
    let mut finder = index.finder();
    let Some(entry) = NtfsFileNameIndex::find(&mut finder, ntfs, fs, "hiberfil.sys") else {
        return Ok(false);
    };
    let file = entry?.to_file(ntfs, fs)?;
    let Some(item) = file.data(fs, "") else { return Ok(false) };
    let item = item?;
    let attribute = item.to_attribute()?;
    let mut value = attribute.value(fs)?;
    let mut head = [0u8; 4];
    let n = value.read(fs, &mut head)?;
    let magic = head[..n].to_ascii_lowercase();
    Ok(magic == b"hibr" || magic == b"wake")
}
