//! A deterministic walk of an unpacked tree into index entries: parents before children,
//! siblings sorted by raw name bytes, the first path of a hardlinked inode carries the node.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use pronto_format::{NodeKind, NodeMeta};

/// One path of the tree.
pub struct Entry {
    /// Relative, `/`-separated; empty for the root.
    pub path: Vec<u8>,
    pub meta: NodeMeta,
    /// For a regular file's first path: where to read its content.
    pub content: Option<PathBuf>,
    /// For a later path of a hardlinked file: the first path.
    pub hardlink_of: Option<Vec<u8>>,
    /// Inode number (to find which layer entry wrote a file).
    pub ino: u64,
}

type WalkError = (PathBuf, std::io::Error);

pub fn walk(root: &Path) -> Result<Vec<Entry>, WalkError> {
    let mut out = Vec::new();
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let meta = std::fs::symlink_metadata(root).map_err(|e| (root.to_owned(), e))?;
    out.push(Entry {
        path: Vec::new(),
        meta: node_meta(root, &meta)?,
        content: None,
        hardlink_of: None,
        ino: meta.ino(),
    });
    walk_dir(root, &[], &mut out, &mut links)?;
    Ok(out)
}

fn walk_dir(
    dir: &Path,
    rel: &[u8],
    out: &mut Vec<Entry>,
    links: &mut HashMap<(u64, u64), Vec<u8>>,
) -> Result<(), WalkError> {
    let mut names: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .map_err(|e| (dir.to_owned(), e))?
        .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| (dir.to_owned(), e))?;
    names.sort();
    for name in names {
        let path = dir.join(std::ffi::OsStr::from_bytes(&name));
        let rel_path = if rel.is_empty() {
            name.clone()
        } else {
            [rel, b"/", &name].concat()
        };
        let meta = std::fs::symlink_metadata(&path).map_err(|e| (path.clone(), e))?;
        let ft = meta.file_type();
        if ft.is_file() && meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                out.push(Entry {
                    path: rel_path,
                    meta: node_meta(&path, &meta)?,
                    content: None,
                    hardlink_of: Some(first.clone()),
                    ino: meta.ino(),
                });
                continue;
            }
            links.insert((meta.dev(), meta.ino()), rel_path.clone());
        }
        out.push(Entry {
            path: rel_path.clone(),
            meta: node_meta(&path, &meta)?,
            content: ft.is_file().then(|| path.clone()),
            hardlink_of: None,
            ino: meta.ino(),
        });
        if ft.is_dir() {
            walk_dir(&path, &rel_path, out, links)?;
        }
    }
    Ok(())
}

fn node_meta(path: &Path, m: &std::fs::Metadata) -> Result<NodeMeta, WalkError> {
    let ft = m.file_type();
    let kind = kind_of(ft);
    let symlink_target = if ft.is_symlink() {
        std::fs::read_link(path)
            .map_err(|e| (path.to_owned(), e))?
            .as_os_str()
            .as_bytes()
            .to_vec()
    } else {
        Vec::new()
    };
    Ok(NodeMeta {
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec() as u32,
        size: if ft.is_file() { m.size() } else { 0 },
        rdev: if ft.is_char_device() || ft.is_block_device() {
            m.rdev()
        } else {
            0
        },
        symlink_target,
        xattrs: xattrs(path).map_err(|e| (path.to_owned(), e))?,
    })
}

/// Every extended attribute of `path` (not following a symlink), sorted by name.
pub fn xattrs(path: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in xattr::list(path)? {
        // Gone between list and get: a racing writer; the walk reads a stable tree.
        if let Some(value) = xattr::get(path, &name)? {
            out.push((name.as_bytes().to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// The node kind of a file type.
pub fn kind_of(ft: std::fs::FileType) -> NodeKind {
    if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_file() {
        NodeKind::File
    } else if ft.is_symlink() {
        NodeKind::Symlink
    } else if ft.is_char_device() {
        NodeKind::CharDevice
    } else if ft.is_block_device() {
        NodeKind::BlockDevice
    } else if ft.is_fifo() {
        NodeKind::Fifo
    } else {
        NodeKind::Socket
    }
}
