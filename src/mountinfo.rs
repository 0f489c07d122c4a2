//! The mount table, from `/proc/self/mountinfo`: which devices and files are mounted where, and
//! whether read-write. Used by mount (is a directory a mount point), restore (is a target device
//! mounted) and backup (is a source mounted read-write: its allocation maps may change).

use std::path::PathBuf;

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The mounted device's numbers, `"MAJ:MIN"` (field 3).
    pub device: String,
    /// The mount point (field 5).
    pub point: PathBuf,
    /// The filesystem type (the first field after ` - `).
    pub fstype: String,
    /// What was mounted as the kernel names it: a device path, or a file for FUSE filesystems
    /// such as ntfs-3g (the second field after ` - `).
    pub source: PathBuf,
    /// Both the mount's and the superblock's options say `rw`.
    pub read_write: bool,
}

/// `"MAJ:MIN"` of a device number, as mountinfo and sysfs write it.
pub(crate) fn device_numbers(rdev: u64) -> String {
    format!("{}:{}", libc::major(rdev), libc::minor(rdev))
}

/// Every mount of this process's namespace (none when the table cannot be read).
pub(crate) fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo").map(|t| parse(&t)).unwrap_or_default()
}

fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let f: Vec<&str> = head.split(' ').collect();
            let t: Vec<&str> = tail.split(' ').collect();
            let rw = |o: Option<&&str>| o.is_some_and(|o| o.split(',').any(|x| x == "rw"));
            Some(Mount {
                device: f.get(2)?.to_string(),
                point: PathBuf::from(unescape_octal(f.get(4)?)),
                fstype: t.first()?.to_string(),
                source: PathBuf::from(unescape_octal(t.get(1).unwrap_or(&""))),
                read_write: rw(f.get(5)) && rw(t.get(2)),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for a backslash).
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b.get(i + 1..i + 4).filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match code {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_octal(r"/mnt/a\040b\134c"), r"/mnt/a b\c");
        assert_eq!(unescape_octal(r"/x\04"), r"/x\04");
    }

    #[test]
    fn lines_give_device_point_type_source_and_mode() {
        let text = "36 35 98:0 / /mnt\\040a rw,noatime master:1 - ext4 /dev/sda1 rw,errors=continue\n\
                    40 35 0:52 / /n rw,relatime - fuseblk /var/tmp/n.img ro,user_id=0\n";
        let m = parse(text);
        assert_eq!(m[0].device, "98:0");
        assert_eq!(m[0].point, PathBuf::from("/mnt a"));
        assert_eq!((m[0].fstype.as_str(), m[0].read_write), ("ext4", true));
        assert_eq!(m[1].source, PathBuf::from("/var/tmp/n.img"));
        assert!(!m[1].read_write, "the superblock is read-only");
    }
}
