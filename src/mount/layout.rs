//! The mount's namespace: which names exist under the mount point for one view of the
//! repository's images, what each name is, and a stable inode number for each. Pure: no
//! storage, no FUSE; what an image holds (partitions, readable filesystems) comes from the
//! caller, and so do the names inside a filesystem (`files/` is a root the caller fills).
//!
//! ```text
//! /images/<ID>.img                              every image as a raw disk file
//! /images/<ID>/p<N>.img                         partition N of an image with a partition table
//! /images/<ID>/files/                           the files of a whole-disk filesystem
//! /images/<ID>/p<N>.files/                      the files of partition N's filesystem
//! /sources/<SOURCE>/<created>-<kind>-<ID>.img   symlink to ../../images/<ID>.img
//! /sources/<SOURCE>/latest.img                  symlink to the source's newest image
//! ```

use std::collections::{BTreeMap, HashMap};

use crate::id::ImageId;
use crate::manifest::ImageInfo;
use crate::timefmt::format_ms;

/// The longest name a Linux filesystem entry may have, in bytes.
const NAME_MAX: usize = 255;

/// What a name under the mount point is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Node {
    Root,
    Images,
    Sources,
    /// `images/<ID>.img`
    Image(ImageId),
    /// `images/<ID>/`
    ImageDir(ImageId),
    /// `images/<ID>/p<N>.img`
    Partition(ImageId, u32),
    /// `sources/<SOURCE>/`, holding the source id.
    Source(String),
    /// `sources/<SOURCE>/<created>-<kind>-<ID>.img`
    Link(ImageId),
    /// `sources/<SOURCE>/latest.img`
    Latest(String),
    /// `images/<ID>/files/` (`None`) or `images/<ID>/p<N>.files/`: a filesystem's root.
    Files(ImageId, Option<u32>),
    /// A path inside a filesystem (absolute, not `/`) and what it is there.
    InFs(ImageId, Option<u32>, String, Type),
}

/// What an image holds besides its bytes: its partitions, each with whether Strata reads its
/// filesystem, and whether the whole disk is a filesystem Strata reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Holds {
    pub(super) partitions: Vec<(u32, bool)>,
    pub(super) files: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Type {
    Dir,
    File,
    Symlink,
}

impl Node {
    pub(super) fn kind(&self) -> Type {
        match self {
            Node::Root | Node::Images | Node::Sources | Node::ImageDir(_) | Node::Source(_) | Node::Files(..) => {
                Type::Dir
            }
            Node::Image(_) | Node::Partition(..) => Type::File,
            Node::Link(_) | Node::Latest(_) => Type::Symlink,
            Node::InFs(.., kind) => *kind,
        }
    }
}

/// A source id as a directory name: `%` is written `%25` and `/` `%2F` (ids are often paths),
/// and the names `.` and `..` become `%2E` and `%2E%2E`. A name longer than a filesystem allows
/// keeps its first 200 bytes and ends in `%~` and 16 hex digits of the id's BLAKE3 hash, so that
/// distinct ids keep distinct names.
pub fn source_dir_name(source_id: &str) -> String {
    if source_id == "." || source_id == ".." {
        return "%2E".repeat(source_id.len());
    }
    let mut name = String::with_capacity(source_id.len());
    for c in source_id.chars() {
        match c {
            '%' => name.push_str("%25"),
            '/' => name.push_str("%2F"),
            c => name.push(c),
        }
    }
    if name.len() <= NAME_MAX {
        return name;
    }
    let mut cut = 200;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    // Never end inside an escape: a `%` in the last two bytes starts one that the cut split.
    if let Some(p) = name[..cut].rfind('%').filter(|p| cut - p < 3) {
        cut = p;
    }
    let hash = blake3::hash(source_id.as_bytes()).to_hex();
    format!("{}%~{}", &name[..cut], &hash[..16])
}

/// The name of an image's symlink in its source's directory.
pub(super) fn link_name(info: &ImageInfo) -> String {
    format!("{}-{}-{}.img", format_ms(info.created_ms), info.kind.name(), info.id)
}

pub(super) const LATEST: &str = "latest.img";

/// The images of one view of the repository, as the namespace needs them.
pub(super) struct Catalog {
    images: Vec<ImageInfo>,
    by_id: HashMap<ImageId, usize>,
    /// Directory name → source id.
    sources: BTreeMap<String, String>,
    /// Source id → its images, oldest first.
    of_source: HashMap<String, Vec<usize>>,
}

impl Catalog {
    /// `images` oldest first, as `Repository::images` lists them.
    pub(super) fn new(images: Vec<ImageInfo>) -> Catalog {
        let mut by_id = HashMap::new();
        let mut sources = BTreeMap::new();
        let mut of_source: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, info) in images.iter().enumerate() {
            by_id.insert(info.id, i);
            sources.insert(source_dir_name(&info.source_id), info.source_id.clone());
            of_source.entry(info.source_id.clone()).or_default().push(i);
        }
        Catalog { images, by_id, sources, of_source }
    }

    pub(super) fn len(&self) -> usize {
        self.images.len()
    }

    pub(super) fn info(&self, id: &ImageId) -> Option<&ImageInfo> {
        self.by_id.get(id).map(|&i| &self.images[i])
    }

    fn latest(&self, source_id: &str) -> Option<&ImageInfo> {
        self.of_source.get(source_id).and_then(|v| v.last()).map(|&i| &self.images[i])
    }

    /// The newest image's creation time (ms), for the directories' times.
    pub(super) fn newest_ms(&self) -> Option<u64> {
        self.images.iter().map(|i| i.created_ms).max()
    }

    /// When `node` was made, as far as the images say (ms since the epoch).
    pub(super) fn created_ms(&self, node: &Node) -> Option<u64> {
        match node {
            Node::Image(id)
            | Node::ImageDir(id)
            | Node::Partition(id, _)
            | Node::Link(id)
            | Node::Files(id, _)
            | Node::InFs(id, ..) => self.info(id).map(|i| i.created_ms),
            Node::Source(s) | Node::Latest(s) => self.latest(s).map(|i| i.created_ms),
            Node::Root | Node::Images | Node::Sources => self.newest_ms(),
        }
    }

    /// Whether `node` exists in this view (a partition or a file: whether its image does; the
    /// caller knows the partition table and the filesystem).
    pub(super) fn exists(&self, node: &Node) -> bool {
        match node {
            Node::Root | Node::Images | Node::Sources => true,
            Node::Image(id)
            | Node::ImageDir(id)
            | Node::Partition(id, _)
            | Node::Link(id)
            | Node::Files(id, _)
            | Node::InFs(id, ..) => self.by_id.contains_key(id),
            Node::Source(s) | Node::Latest(s) => self.of_source.contains_key(s),
        }
    }

    /// The child of directory `parent` called `name`, outside filesystems (`Files` and `InFs`
    /// have none here). What an image holds is `holds(id)`, asked only in its directory.
    pub(super) fn child(&self, parent: &Node, name: &str, holds: impl FnOnce(ImageId) -> Holds) -> Option<Node> {
        match parent {
            Node::Root => match name {
                "images" => Some(Node::Images),
                "sources" => Some(Node::Sources),
                _ => None,
            },
            Node::Images => {
                let (stem, file) = match name.strip_suffix(".img") {
                    Some(stem) => (stem, true),
                    None => (name, false),
                };
                // Only the full id, as `backup --json` prints it, names an image here.
                let id = ImageId::parse(stem).filter(|id| id.to_string() == stem && self.by_id.contains_key(id))?;
                Some(if file { Node::Image(id) } else { Node::ImageDir(id) })
            }
            Node::ImageDir(id) => {
                let holds = holds(*id);
                if name == "files" {
                    return holds.files.then_some(Node::Files(*id, None));
                }
                let (n, files) = match name.strip_suffix(".img") {
                    Some(stem) => (stem.strip_prefix('p')?, false),
                    None => (name.strip_prefix('p')?.strip_suffix(".files")?, true),
                };
                let n: u32 = n.parse().ok()?;
                // `p01.img` and `p+1.img` parse too; only the names the listing gives count.
                let &(_, readable) = holds.partitions.iter().find(|(p, _)| *p == n)?;
                match files {
                    false => (format!("p{n}.img") == name).then_some(Node::Partition(*id, n)),
                    true => (format!("p{n}.files") == name && readable).then_some(Node::Files(*id, Some(n))),
                }
            }
            Node::Sources => self.sources.get(name).map(|s| Node::Source(s.clone())),
            Node::Source(s) => {
                if name == LATEST {
                    return Some(Node::Latest(s.clone()));
                }
                let stem = name.strip_suffix(".img")?;
                let id = ImageId::parse(stem.get(stem.len().checked_sub(32)?..)?)?;
                let info = self.info(&id)?;
                (info.source_id == *s && link_name(info) == name).then_some(Node::Link(id))
            }
            Node::Image(_)
            | Node::Partition(..)
            | Node::Link(_)
            | Node::Latest(_)
            | Node::Files(..)
            | Node::InFs(..) => None,
        }
    }

    /// The entries of directory `dir` (without `.` and `..`), in a stable order.
    pub(super) fn children(&self, dir: &Node, holds: impl FnOnce(ImageId) -> Holds) -> Vec<(Node, String)> {
        match dir {
            Node::Root => vec![(Node::Images, "images".into()), (Node::Sources, "sources".into())],
            Node::Images => self
                .images
                .iter()
                .flat_map(|i| [(Node::Image(i.id), format!("{}.img", i.id)), (Node::ImageDir(i.id), i.id.to_string())])
                .collect(),
            Node::ImageDir(id) => {
                let holds = holds(*id);
                let mut out = Vec::new();
                if holds.files {
                    out.push((Node::Files(*id, None), "files".into()));
                }
                for (n, readable) in holds.partitions {
                    out.push((Node::Partition(*id, n), format!("p{n}.img")));
                    if readable {
                        out.push((Node::Files(*id, Some(n)), format!("p{n}.files")));
                    }
                }
                out
            }
            Node::Sources => self.sources.iter().map(|(name, s)| (Node::Source(s.clone()), name.clone())).collect(),
            Node::Source(s) => {
                let Some(list) = self.of_source.get(s) else { return Vec::new() };
                let mut out: Vec<(Node, String)> =
                    list.iter().map(|&i| (Node::Link(self.images[i].id), link_name(&self.images[i]))).collect();
                out.push((Node::Latest(s.clone()), LATEST.into()));
                out
            }
            Node::Image(_)
            | Node::Partition(..)
            | Node::Link(_)
            | Node::Latest(_)
            | Node::Files(..)
            | Node::InFs(..) => Vec::new(),
        }
    }

    /// Where symlink `node` points (relative, so the mount can be moved).
    pub(super) fn link_target(&self, node: &Node) -> Option<String> {
        match node {
            Node::Link(id) => self.info(id).map(|i| format!("../../images/{}.img", i.id)),
            Node::Latest(s) => self.latest(s).map(link_name),
            _ => None,
        }
    }
}

/// Inode numbers: each node gets one the first time it is named and keeps it for the life of
/// the mount (the kernel caches them); the root is 1.
pub(super) struct Inodes {
    nodes: Vec<Node>,
    numbers: HashMap<Node, u64>,
}

impl Inodes {
    pub(super) fn new() -> Inodes {
        Inodes { nodes: vec![Node::Root], numbers: HashMap::from([(Node::Root, 1)]) }
    }

    pub(super) fn number(&mut self, node: &Node) -> u64 {
        if let Some(&n) = self.numbers.get(node) {
            return n;
        }
        self.nodes.push(node.clone());
        let n = self.nodes.len() as u64;
        self.numbers.insert(node.clone(), n);
        n
    }

    pub(super) fn node(&self, ino: u64) -> Option<&Node> {
        ino.checked_sub(1).and_then(|i| self.nodes.get(i as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Kind;

    #[test]
    fn source_ids_become_single_names() {
        assert_eq!(source_dir_name("/dev/sda"), "%2Fdev%2Fsda");
        assert_eq!(source_dir_name("100%/x"), "100%25%2Fx");
        assert_eq!(source_dir_name("disk"), "disk");
        assert_eq!(source_dir_name("."), "%2E");
        assert_eq!(source_dir_name(".."), "%2E%2E");
        // Long ids: cut below NAME_MAX, never inside an escape or a character, and distinct.
        for filler in ["/", "é", "a"] {
            let a = filler.repeat(300) + "a";
            let b = filler.repeat(300) + "b";
            let (na, nb) = (source_dir_name(&a), source_dir_name(&b));
            assert!(na.len() <= NAME_MAX && nb.len() <= NAME_MAX, "{}", na.len());
            assert_ne!(na, nb);
            let kept = na.split("%~").next().unwrap();
            assert!(kept.matches('%').count() == kept.matches("%2F").count(), "{kept}");
        }
    }

    fn image(n: u8, source: &str, created_ms: u64) -> ImageInfo {
        let mut i = ImageInfo::fixture(n, Kind::Full, None, n, created_ms);
        i.source_id = source.into();
        i
    }

    #[test]
    fn names_list_and_look_up_alike() {
        let cat = Catalog::new(vec![image(1, "/dev/sda", 1000), image(2, "/dev/sda", 2000), image(0xab, "vm", 3000)]);
        let parts = |id: ImageId| {
            if id == ImageId([1; 16]) {
                Holds { partitions: vec![(1, true), (5, false)], files: false }
            } else {
                Holds { partitions: vec![], files: id == ImageId([2; 16]) }
            }
        };
        let mut dirs = vec![Node::Root];
        let mut seen = 0;
        while let Some(dir) = dirs.pop() {
            for (node, name) in cat.children(&dir, parts) {
                assert_eq!(cat.child(&dir, &name, parts), Some(node.clone()), "{name}");
                assert!(cat.exists(&node));
                seen += 1;
                if node.kind() == Type::Dir {
                    dirs.push(node);
                }
            }
        }
        // root 2, images 6, p1 + p1.files + p5, files, sources 2, links 3 + 2 latest
        assert_eq!(seen, 2 + 6 + 3 + 1 + 2 + 5);
        let sda = Node::Source("/dev/sda".into());
        assert_eq!(cat.child(&Node::Sources, "%2Fdev%2Fsda", parts), Some(sda.clone()));
        assert_eq!(
            cat.link_target(&Node::Latest("/dev/sda".into())),
            Some(link_name(cat.info(&ImageId([2; 16])).unwrap()))
        );
        let vm = ImageId([0xab; 16]);
        assert_eq!(cat.link_target(&Node::Link(vm)), Some(format!("../../images/{vm}.img")));
        // Names that are not there.
        let id1 = ImageId([1; 16]).to_string();
        for (dir, name) in [
            (Node::Images, id1[..8].to_string() + ".img"),
            (Node::Images, vm.to_string().to_uppercase() + ".img"),
            (Node::ImageDir(ImageId([1; 16])), "p2.img".into()),
            (Node::ImageDir(ImageId([1; 16])), "p01.img".into()),
            (Node::ImageDir(ImageId([1; 16])), "p0.img".into()),
            (Node::ImageDir(ImageId([1; 16])), "p5.files".into()),
            (Node::ImageDir(ImageId([1; 16])), "files".into()),
            (Node::ImageDir(ImageId([1; 16])), "p01.files".into()),
            (Node::Source("vm".into()), link_name(cat.info(&ImageId([1; 16])).unwrap())),
            (Node::Sources, "/dev/sda".into()),
        ] {
            assert_eq!(cat.child(&dir, &name, parts), None, "{name}");
        }
    }

    #[test]
    fn inode_numbers_are_stable() {
        let mut inodes = Inodes::new();
        assert_eq!(inodes.number(&Node::Root), 1);
        let a = inodes.number(&Node::Images);
        let b = inodes.number(&Node::Image(ImageId([1; 16])));
        assert_eq!(inodes.number(&Node::Images), a);
        assert_ne!(a, b);
        assert_eq!(inodes.node(b), Some(&Node::Image(ImageId([1; 16]))));
        assert_eq!(inodes.node(0), None);
        assert_eq!(inodes.node(99), None);
    }
}
