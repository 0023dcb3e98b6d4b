//! A snapshot of a directory tree, for comparing an unpack with ground truth.
//!
//! Compared per path: type, permission bits (incl. setuid/setgid/sticky), uid, gid, size,
//! sha256 of file content, symlink target, device number, xattrs, mtime (not of directories:
//! those made without a tar entry get the time of the unpack), and which paths share an inode
//! (hardlinks). Not compared: atimes, ctimes and inode numbers.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub sha256: Option<String>,
    pub link: Option<Vec<u8>>,
    pub rdev: u64,
    /// Modification time (seconds).
    pub mtime: i64,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Other paths with the same inode, sorted (empty when not hardlinked).
    pub hardlinks: Vec<Vec<u8>>,
}

/// Path (relative, raw bytes) → node. The root itself is not included.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree(pub BTreeMap<Vec<u8>, Node>);

impl Tree {
    pub fn snapshot(root: &Path) -> std::io::Result<Tree> {
        let mut nodes = BTreeMap::new();
        let mut inodes: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
        walk(root, root, &mut nodes, &mut inodes)?;
        for paths in inodes.values().filter(|p| p.len() > 1) {
            for p in paths {
                let mut others: Vec<Vec<u8>> = paths.iter().filter(|o| *o != p).cloned().collect();
                others.sort();
                nodes.get_mut(p).expect("walked").hardlinks = others;
            }
        }
        Ok(Tree(nodes))
    }

    /// The tree as the node sees it through a user namespace that maps ids `0..size` onto
    /// `base..base + size` (an instance's idmapped rootfs): owners shifted, ids outside the
    /// range the kernel's overflow id (65534).
    pub fn shifted(mut self, base: u32, size: u32) -> Tree {
        let shift = |id: u32| if id < size { base + id } else { 65534 };
        for node in self.0.values_mut() {
            node.uid = shift(node.uid);
            node.gid = shift(node.gid);
        }
        self
    }

    /// Human-readable differences, empty when equal.
    pub fn diff(&self, other: &Tree) -> Vec<String> {
        let mut out = Vec::new();
        for (p, a) in &self.0 {
            let name = String::from_utf8_lossy(p);
            match other.0.get(p) {
                None => out.push(format!("only in left: {name}")),
                Some(b) if a != b => {
                    out.push(format!("differs: {name}\n  left:  {a}\n  right: {b}"))
                }
                _ => {}
            }
        }
        for p in other.0.keys().filter(|p| !self.0.contains_key(*p)) {
            out.push(format!("only in right: {}", String::from_utf8_lossy(p)));
        }
        out
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.0.get(path.as_bytes())
    }

    /// Total bytes of regular-file content.
    pub fn file_bytes(&self) -> u64 {
        self.0
            .values()
            .filter(|n| n.kind == "file")
            .map(|n| n.size)
            .sum()
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} mode={:o} owner={}:{} size={} mtime={}",
            self.kind, self.mode, self.uid, self.gid, self.size, self.mtime
        )?;
        if let Some(h) = &self.sha256 {
            write!(f, " sha256={}", &h[..12])?;
        }
        if let Some(l) = &self.link {
            write!(f, " -> {:?}", String::from_utf8_lossy(l))?;
        }
        if self.rdev != 0 {
            write!(f, " rdev={:#x}", self.rdev)?;
        }
        if !self.xattrs.is_empty() {
            let x: Vec<String> = self
                .xattrs
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}={:?}",
                        String::from_utf8_lossy(k),
                        String::from_utf8_lossy(v)
                    )
                })
                .collect();
            write!(f, " xattrs[{}]", x.join(","))?;
        }
        if !self.hardlinks.is_empty() {
            let l: Vec<_> = self
                .hardlinks
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            write!(f, " linked-with[{}]", l.join(","))?;
        }
        Ok(())
    }
}

fn walk(
    root: &Path,
    dir: &Path,
    nodes: &mut BTreeMap<Vec<u8>, Node>,
    inodes: &mut HashMap<(u64, u64), Vec<Vec<u8>>>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let rel = path
            .strip_prefix(root)
            .expect("below root")
            .as_os_str()
            .as_bytes()
            .to_vec();
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        let sha256 = if ft.is_file() {
            let mut h = Sha256::new();
            let mut f = std::fs::File::open(&path)?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Some(hex::encode(h.finalize()))
        } else {
            None
        };
        let link = if ft.is_symlink() {
            Some(std::fs::read_link(&path)?.as_os_str().as_bytes().to_vec())
        } else {
            None
        };
        let mut xattrs = BTreeMap::new();
        for (k, v) in list_xattrs(&path)? {
            xattrs.insert(k, v);
        }
        if ft.is_file() && meta.nlink() > 1 {
            inodes
                .entry((meta.dev(), meta.ino()))
                .or_default()
                .push(rel.clone());
        }
        nodes.insert(
            rel,
            Node {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                size: if ft.is_file() || ft.is_symlink() {
                    meta.size()
                } else {
                    0
                },
                sha256,
                link,
                // Directories made implicitly (no tar entry) get "now": not comparable.
                mtime: if ft.is_dir() { 0 } else { meta.mtime() },
                rdev: if ft.is_char_device() || ft.is_block_device() {
                    meta.rdev()
                } else {
                    0
                },
                xattrs,
                hardlinks: Vec::new(),
            },
        );
        if ft.is_dir() {
            walk(root, &path, nodes, inodes)?;
        }
    }
    Ok(())
}

fn list_xattrs(path: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in xattr::list(path)? {
        if let Some(value) = xattr::get(path, &name)? {
            out.push((name.as_bytes().to_vec(), value));
        }
    }
    Ok(out)
}
