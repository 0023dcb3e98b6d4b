//! [`IndexBuilder`]: a filesystem tree in, a canonical index blob out.
//!
//! The output depends only on the tree, the chunk refs, the packs (in the order they were
//! added, since chunk refs name them by index), the chunk size and the source: entries are
//! sorted by raw name bytes, inodes numbered breadth-first from the root with a hardlinked
//! inode numbered at its first entry in that order, tables laid out in inode order and heap
//! strings deduplicated in that same order. Two builds of one tree are byte-identical whatever
//! the order of `add` calls.

use std::collections::{BTreeMap, HashMap};

use crate::chunk::{check_chunk_shape, expected_chunk_count, expected_chunk_len, ChunkRef};
use crate::error::{Esc, FormatError};
use crate::index::{check_name, check_symlink_target, check_xattr_name, cut};
use crate::layout::{
    compute_checksum, ChunkV1, DirentV1, IndexHeaderV1, InodeV1, NodeKind, PackV1, Section,
    SectionDescV1, XattrV1, CHECKSUM_OFFSET, HEADER_SIZE, MAGIC, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
    MODE_MASK, PATH_MAX, SECTION_ALIGN, VERSION, XATTR_VALUE_MAX,
};

type Result<T> = std::result::Result<T, FormatError>;

/// The metadata of a node given to the builder.
///
/// Fields a kind does not use are ignored: `size` counts only for regular files (symlinks get
/// their target length, others 0), `rdev` only for devices, `symlink_target` only for symlinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMeta {
    /// Kind.
    pub kind: NodeKind,
    /// Permission bits, `0o7777` at most (setuid, setgid, sticky, rwx).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Modification time, nanoseconds (< 10⁹).
    pub mtime_nsec: u32,
    /// Regular files: content length (must match the chunks).
    pub size: u64,
    /// Devices: Linux `dev_t` encoding.
    pub rdev: u64,
    /// Symlinks: the target, 1..=4095 bytes, no NUL.
    pub symlink_target: Vec<u8>,
    /// Extended attributes, any order, names unique (1..=255 bytes, no NUL), values ≤ 64 KiB.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl NodeMeta {
    /// A node of `kind` with permission bits `mode`, owned by 0:0, mtime 0, everything else
    /// empty.
    pub fn new(kind: NodeKind, mode: u32) -> Self {
        NodeMeta {
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            rdev: 0,
            symlink_target: Vec::new(),
            xattrs: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct Node {
    /// The path it was first added under (for messages).
    path: Vec<u8>,
    /// Parent node (directories only; the root is its own parent).
    parent: usize,
    meta: NodeMeta,
    chunks: Vec<ChunkRef>,
    /// Directories: entries by raw name bytes (the on-disk order).
    children: BTreeMap<Vec<u8>, usize>,
}

/// Builds an index blob from a tree. See the module docs for what makes the output canonical.
///
/// ```
/// use pronto_format::{chunk_digest, compress_chunk, ChunkRef, Compression, Index, IndexBuilder,
///                     NodeKind, NodeMeta};
/// let data = b"hello\n";
/// let (stored, compression) = compress_chunk(data, Compression::Zstd);
/// let mut b = IndexBuilder::new(pronto_format::DEFAULT_CHUNK_SIZE);
/// let pack = b.add_pack([7; 32], stored.len() as u64);
/// b.add(b"etc", NodeMeta::new(NodeKind::Dir, 0o755), vec![])?;
/// let mut meta = NodeMeta::new(NodeKind::File, 0o644);
/// meta.size = data.len() as u64;
/// let chunk = ChunkRef { digest: chunk_digest(data), pack, compression, offset: 0,
///                        compressed_size: stored.len() as u32, uncompressed_size: 6 };
/// b.add(b"etc/hostname", meta, vec![chunk])?;
/// let index = Index::open(b.finish()?)?;
/// let ino = index.resolve(b"etc/hostname")?.unwrap();
/// assert_eq!(index.chunks(ino)?, vec![chunk]);
/// # Ok::<(), pronto_format::FormatError>(())
/// ```
#[derive(Debug)]
pub struct IndexBuilder {
    chunk_size: u32,
    source_manifest: [u8; 32],
    config_json: Vec<u8>,
    packs: Vec<([u8; 32], u64)>,
    /// Node 0 is the root.
    nodes: Vec<Node>,
}

fn invalid_path(path: &[u8], reason: impl Into<String>) -> FormatError {
    FormatError::InvalidPath {
        path: path.to_vec(),
        reason: reason.into(),
    }
}

fn invalid_node(path: &[u8], reason: impl Into<String>) -> FormatError {
    FormatError::InvalidNode {
        path: path.to_vec(),
        reason: reason.into(),
    }
}

/// Splits a relative, `/`-separated path into its components, refusing anything unclean.
fn components(path: &[u8]) -> Result<Vec<&[u8]>> {
    if path.is_empty() {
        return Err(invalid_path(path, "empty (the root is set with set_root)"));
    }
    if path.len() > PATH_MAX {
        return Err(invalid_path(
            &cut(path),
            format!("{} bytes, longer than 4095", path.len()),
        ));
    }
    if path[0] == b'/' {
        return Err(invalid_path(path, "absolute"));
    }
    path.split(|&b| b == b'/')
        .map(|c| {
            check_name(c)
                .map(|()| c)
                .map_err(|reason| invalid_path(path, format!("component \"{}\": {reason}", Esc(c))))
        })
        .collect()
}

impl IndexBuilder {
    /// An empty tree (a root directory 0755 owned by 0:0) with files cut at `chunk_size` (a
    /// power of two in 4 KiB..=64 MiB, checked by [`IndexBuilder::finish`]).
    pub fn new(chunk_size: u32) -> Self {
        IndexBuilder {
            chunk_size,
            source_manifest: [0; 32],
            config_json: Vec::new(),
            packs: Vec::new(),
            nodes: vec![Node {
                path: Vec::new(),
                parent: 0,
                meta: NodeMeta::new(NodeKind::Dir, 0o755),
                chunks: Vec::new(),
                children: BTreeMap::new(),
            }],
        }
    }

    /// The image this index was converted from: the sha256 of its manifest and its config
    /// blob (the raw bytes, kept as they are).
    pub fn set_source(&mut self, manifest_digest: [u8; 32], config_json: Vec<u8>) {
        self.source_manifest = manifest_digest;
        self.config_json = config_json;
    }

    /// Adds a pack blob; returns its index, for [`ChunkRef::pack`]. Packs keep the order they
    /// were added in.
    pub fn add_pack(&mut self, sha256: [u8; 32], size: u64) -> u32 {
        self.packs.push((sha256, size));
        // More than u32::MAX packs is refused by finish; saturate until then.
        u32::try_from(self.packs.len() - 1).unwrap_or(u32::MAX)
    }

    /// Sets the root directory's metadata (its kind must be [`NodeKind::Dir`]).
    pub fn set_root(&mut self, meta: NodeMeta) -> Result<()> {
        if meta.kind != NodeKind::Dir {
            return Err(FormatError::RootNotDirectory { kind: meta.kind });
        }
        let meta = self.checked_meta(b"", meta, &[])?;
        self.nodes[0].meta = meta;
        Ok(())
    }

    /// Adds a node at `path` (relative, `/`-separated, no empty, `.` or `..` components; its
    /// parent directory added before). `chunks` is a regular file's content in order (empty for
    /// other kinds and for empty files); their packs are checked by [`IndexBuilder::finish`].
    pub fn add(&mut self, path: &[u8], meta: NodeMeta, chunks: Vec<ChunkRef>) -> Result<()> {
        let comps = components(path)?;
        let (last, parents) = comps
            .split_last()
            .ok_or_else(|| invalid_path(path, "empty"))?;
        let parent = self.parent_dir(path, parents)?;
        if self.nodes[parent].children.contains_key(*last) {
            return Err(FormatError::AlreadyExists {
                path: path.to_vec(),
            });
        }
        let meta = self.checked_meta(path, meta, &chunks)?;
        let id = self.nodes.len();
        self.nodes.push(Node {
            path: path.to_vec(),
            parent,
            meta,
            chunks,
            children: BTreeMap::new(),
        });
        self.nodes[parent].children.insert(last.to_vec(), id);
        Ok(())
    }

    /// Adds `path` as another name of the non-directory at `target_path` (which may itself be
    /// a hardlink). The inode's `nlink` is the number of entries naming it.
    pub fn add_hardlink(&mut self, path: &[u8], target_path: &[u8]) -> Result<()> {
        let target_comps = components(target_path)?;
        let missing = || FormatError::HardlinkTargetMissing {
            path: target_path.to_vec(),
        };
        let mut target = 0usize;
        for c in &target_comps {
            target = *self.nodes[target].children.get(*c).ok_or_else(missing)?;
        }
        if self.nodes[target].meta.kind == NodeKind::Dir {
            return Err(FormatError::HardlinkToDirectory {
                path: target_path.to_vec(),
            });
        }
        let comps = components(path)?;
        let (last, parents) = comps
            .split_last()
            .ok_or_else(|| invalid_path(path, "empty"))?;
        let parent = self.parent_dir(path, parents)?;
        if self.nodes[parent].children.contains_key(*last) {
            return Err(FormatError::AlreadyExists {
                path: path.to_vec(),
            });
        }
        self.nodes[parent].children.insert(last.to_vec(), target);
        Ok(())
    }

    /// Encodes the index: checks the chunk size and every chunk's pack, numbers the inodes,
    /// lays out the sections and seals the checksum.
    pub fn finish(self) -> Result<Vec<u8>> {
        let cs = self.chunk_size;
        if !cs.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
            return Err(FormatError::InvalidChunkSize { size: cs });
        }
        let too_large = |what: &str| FormatError::TooLarge { what: what.into() };
        if u32::try_from(self.packs.len()).is_err() {
            return Err(too_large("more than 4294967295 packs"));
        }
        for node in &self.nodes {
            for (i, c) in node.chunks.iter().enumerate() {
                let Some(&(_, pack_size)) = self.packs.get(c.pack as usize) else {
                    return Err(invalid_node(
                        &node.path,
                        format!(
                            "chunk {i}: pack index {} out of range ({} packs)",
                            c.pack,
                            self.packs.len()
                        ),
                    ));
                };
                let end = c.offset.checked_add(u64::from(c.compressed_size));
                if end.is_none_or(|end| end > pack_size) {
                    return Err(invalid_node(
                        &node.path,
                        format!(
                            "chunk {i}: bytes {}+{} are past the end of pack {} ({pack_size} bytes)",
                            c.offset, c.compressed_size, c.pack
                        ),
                    ));
                }
            }
        }

        // Canonical numbering: breadth-first from the root, entries in name order, an inode
        // numbered at its first entry. `order[ino]` is the node; `ino_of[node]` its number.
        let mut ino_of = vec![u32::MAX; self.nodes.len()];
        let mut links = vec![0u32; self.nodes.len()];
        let mut order: Vec<usize> = vec![0];
        ino_of[0] = 0;
        let mut i = 0;
        while i < order.len() {
            for &child in self.nodes[order[i]].children.values() {
                links[child] = links[child].saturating_add(1);
                if ino_of[child] == u32::MAX {
                    ino_of[child] = u32::try_from(order.len())
                        .ok()
                        .filter(|&n| n < u32::MAX)
                        .ok_or_else(|| too_large("more than 4294967294 inodes"))?;
                    order.push(child);
                }
            }
            i += 1;
        }

        let mut heap = Heap::default();
        let mut inodes: Vec<u8> = Vec::with_capacity(order.len() * InodeV1::SIZE);
        let mut dirents: Vec<u8> = Vec::new();
        let mut chunks: Vec<u8> = Vec::new();
        let mut xattrs: Vec<u8> = Vec::new();
        let (mut n_dirents, mut n_chunks, mut n_xattrs) = (0u32, 0u32, 0u32);
        let count = |n: usize, what: &str| u32::try_from(n).map_err(|_| too_large(what));
        for &id in &order {
            let node = &self.nodes[id];
            let m = &node.meta;
            let (mut data_first, mut data_count, mut parent, mut size) = (0u32, 0u32, 0u32, 0u64);
            let mut nlink = links[id];
            match m.kind {
                NodeKind::Dir => {
                    parent = ino_of[node.parent];
                    data_count = count(node.children.len(), "a directory with 2^32 entries")?;
                    if data_count > 0 {
                        data_first = n_dirents;
                    }
                    let mut subdirs = 0u32;
                    for (name, &child) in &node.children {
                        if self.nodes[child].meta.kind == NodeKind::Dir {
                            subdirs += 1;
                        }
                        DirentV1 {
                            name_offset: heap.put(name)?,
                            name_len: name.len() as u32,
                            ino: ino_of[child],
                        }
                        .encode(&mut dirents);
                    }
                    n_dirents = n_dirents
                        .checked_add(data_count)
                        .ok_or_else(|| too_large("more than 2^32 directory entries"))?;
                    nlink = subdirs.saturating_add(2);
                }
                NodeKind::File => {
                    size = m.size;
                    data_count = count(node.chunks.len(), "a file with 2^32 chunks")?;
                    if data_count > 0 {
                        data_first = n_chunks;
                    }
                    for c in &node.chunks {
                        ChunkV1 {
                            digest: c.digest,
                            offset: c.offset,
                            pack: c.pack,
                            compressed_size: c.compressed_size,
                            uncompressed_size: c.uncompressed_size,
                            compression: c.compression as u8,
                            reserved: [0; 3],
                        }
                        .encode(&mut chunks);
                    }
                    n_chunks = n_chunks
                        .checked_add(data_count)
                        .ok_or_else(|| too_large("more than 2^32 chunks"))?;
                }
                NodeKind::Symlink => {
                    data_first = heap.put(&m.symlink_target)?;
                    data_count = m.symlink_target.len() as u32;
                    size = u64::from(data_count);
                }
                _ => {}
            }
            let xattr_count = count(m.xattrs.len(), "2^32 xattrs on one inode")?;
            let xattr_first = if xattr_count > 0 { n_xattrs } else { 0 };
            for (name, value) in &m.xattrs {
                XattrV1 {
                    name_offset: heap.put(name)?,
                    name_len: name.len() as u32,
                    value_offset: heap.put(value)?,
                    value_len: value.len() as u32,
                }
                .encode(&mut xattrs);
            }
            n_xattrs = n_xattrs
                .checked_add(xattr_count)
                .ok_or_else(|| too_large("more than 2^32 xattrs"))?;
            InodeV1 {
                kind: m.kind as u8,
                reserved: 0,
                mode: m.mode as u16,
                uid: m.uid,
                gid: m.gid,
                nlink,
                mtime: m.mtime,
                mtime_nsec: m.mtime_nsec,
                parent,
                size,
                rdev: if m.kind.is_device() { m.rdev } else { 0 },
                data_first,
                data_count,
                xattr_first,
                xattr_count,
            }
            .encode(&mut inodes);
        }
        let mut packs = Vec::with_capacity(self.packs.len() * PackV1::SIZE);
        for &(sha256, size) in &self.packs {
            PackV1 { sha256, size }.encode(&mut packs);
        }
        let config_len = count(self.config_json.len(), "an image config over 4 GiB")?;

        let mut out = vec![0u8; HEADER_SIZE];
        let mut sections = [SectionDescV1::default(); Section::COUNT];
        for (s, body, n) in [
            (Section::Packs, &packs, self.packs.len() as u32),
            (Section::Inodes, &inodes, order.len() as u32),
            (Section::Dirents, &dirents, n_dirents),
            (Section::Chunks, &chunks, n_chunks),
            (Section::Xattrs, &xattrs, n_xattrs),
            (Section::Heap, &heap.bytes, heap.bytes.len() as u32),
            (Section::Config, &self.config_json, config_len),
        ] {
            while !(out.len() as u64).is_multiple_of(SECTION_ALIGN) {
                out.push(0);
            }
            sections[s as usize] = SectionDescV1 {
                offset: out.len() as u64,
                count: n,
                entry_size: s.entry_size(),
            };
            out.extend_from_slice(body);
        }
        let mut header = Vec::with_capacity(HEADER_SIZE);
        IndexHeaderV1 {
            magic: MAGIC,
            version: VERSION,
            flags: 0,
            header_size: HEADER_SIZE as u32,
            chunk_size: cs,
            blob_size: out.len() as u64,
            source_manifest: self.source_manifest,
            sections,
            checksum: [0; 32],
        }
        .encode(&mut header);
        out[..HEADER_SIZE].copy_from_slice(&header);
        let sum = compute_checksum(&out).unwrap_or_default();
        out[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 32].copy_from_slice(&sum);
        Ok(out)
    }

    // --- internals ---

    /// The directory node reached by `parents` from the root.
    fn parent_dir(&self, path: &[u8], parents: &[&[u8]]) -> Result<usize> {
        let mut dir = 0usize;
        for c in parents {
            dir = *self.nodes[dir]
                .children
                .get(*c)
                .ok_or_else(|| FormatError::ParentMissing {
                    path: path.to_vec(),
                })?;
            if self.nodes[dir].meta.kind != NodeKind::Dir {
                return Err(FormatError::ParentNotDirectory {
                    path: path.to_vec(),
                });
            }
        }
        Ok(dir)
    }

    /// Checks a node's metadata and chunks; returns the metadata with unused fields cleared and
    /// xattrs sorted.
    fn checked_meta(&self, path: &[u8], mut m: NodeMeta, chunks: &[ChunkRef]) -> Result<NodeMeta> {
        if m.mode & !MODE_MASK != 0 {
            return Err(invalid_node(
                path,
                format!("mode 0o{:o} has bits outside 0o7777", m.mode),
            ));
        }
        if m.mtime_nsec >= 1_000_000_000 {
            return Err(invalid_node(
                path,
                format!(
                    "mtime nanoseconds {} out of range (max 999999999)",
                    m.mtime_nsec
                ),
            ));
        }
        for (name, value) in &m.xattrs {
            check_xattr_name(name).map_err(|reason| {
                invalid_node(
                    path,
                    format!("xattr name \"{}\": {reason}", Esc(&cut(name))),
                )
            })?;
            if value.len() > XATTR_VALUE_MAX {
                return Err(invalid_node(
                    path,
                    format!(
                        "xattr \"{}\": value of {} bytes exceeds 65536",
                        Esc(name),
                        value.len()
                    ),
                ));
            }
        }
        m.xattrs.sort();
        if let Some(w) = m.xattrs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(invalid_node(
                path,
                format!("duplicate xattr \"{}\"", Esc(&w[0].0)),
            ));
        }
        if m.kind != NodeKind::File && !chunks.is_empty() {
            return Err(invalid_node(
                path,
                format!("a {} has no chunks, got {}", m.kind, chunks.len()),
            ));
        }
        if !m.kind.is_device() {
            m.rdev = 0;
        }
        match m.kind {
            NodeKind::File => {
                let expected = expected_chunk_count(m.size, self.chunk_size);
                if chunks.len() as u64 != expected {
                    return Err(invalid_node(
                        path,
                        format!(
                            "{} chunks for {} bytes, expected {expected} at chunk size {}",
                            chunks.len(),
                            m.size,
                            self.chunk_size
                        ),
                    ));
                }
                for (i, c) in chunks.iter().enumerate() {
                    // i < expected <= ceil(u64::MAX / 4096) fits u32 only if the count did;
                    // a count over u32::MAX is refused by finish.
                    let index = u32::try_from(i).unwrap_or(u32::MAX);
                    check_chunk_shape(c, expected_chunk_len(m.size, self.chunk_size, index))
                        .map_err(|problem| invalid_node(path, format!("chunk {i}: {problem}")))?;
                }
                m.symlink_target.clear();
            }
            NodeKind::Symlink => {
                check_symlink_target(&m.symlink_target).map_err(|reason| {
                    invalid_node(
                        path,
                        format!(
                            "symlink target \"{}\": {reason}",
                            Esc(&cut(&m.symlink_target))
                        ),
                    )
                })?;
                m.size = m.symlink_target.len() as u64;
            }
            _ => {
                m.size = 0;
                m.symlink_target.clear();
            }
        }
        Ok(m)
    }
}

/// The byte heap: strings appended once each, in the order first put.
#[derive(Default)]
struct Heap<'a> {
    bytes: Vec<u8>,
    seen: HashMap<&'a [u8], u32>,
}

impl<'a> Heap<'a> {
    fn put(&mut self, s: &'a [u8]) -> Result<u32> {
        if s.is_empty() {
            return Ok(0);
        }
        if let Some(&off) = self.seen.get(s) {
            return Ok(off);
        }
        let off = u32::try_from(self.bytes.len())
            .ok()
            .filter(|off| u64::from(*off) + s.len() as u64 <= u64::from(u32::MAX))
            .ok_or_else(|| FormatError::TooLarge {
                what: "a heap over 4 GiB".into(),
            })?;
        self.bytes.extend_from_slice(s);
        self.seen.insert(s, off);
        Ok(off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::Compression;
    use crate::index::Index;
    use crate::testutil::*;

    /// Every kind, every field at its limits.
    /// What a test added: path, metadata, chunks.
    type Added = Vec<(Vec<u8>, NodeMeta, Vec<ChunkRef>)>;

    fn limits_tree() -> (IndexBuilder, Added) {
        let mut b = builder();
        b.set_source([0x11; 32], br#"{"architecture":"amd64"}"#.to_vec());
        let mut root = dir();
        root.mode = 0o1777;
        root.mtime = -1;
        root.mtime_nsec = 999_999_999;
        b.set_root(root).unwrap();
        let mut off = 0u64;
        let mut nodes = Vec::new();
        let mut add = |b: &mut IndexBuilder, path: &[u8], meta: NodeMeta, chunks: Vec<ChunkRef>| {
            b.add(path, meta.clone(), chunks.clone()).unwrap();
            nodes.push((path.to_vec(), meta, chunks));
        };
        let mut d = dir();
        d.uid = u32::MAX;
        d.gid = u32::MAX;
        d.mtime = i64::MIN;
        add(&mut b, b"bin", d, vec![]);
        let mut f = file(CS as u64 + 10);
        f.mode = 0o7755; // setuid, setgid, sticky
        f.mtime = i64::MAX;
        f.mtime_nsec = 1;
        let ch = raw_chunks(f.size, 1, &mut off);
        add(&mut b, b"bin/sh", f, ch);
        add(&mut b, b"empty", dir(), vec![]);
        add(&mut b, b"etc", dir(), vec![]);
        add(&mut b, b"etc/zero", file(0), vec![]);
        let ch = raw_chunks(3 * CS as u64, 2, &mut off);
        let mut exact = file(3 * CS as u64);
        exact.xattrs = (0..100u32)
            .rev()
            .map(|i| {
                (
                    format!("user.x{i:03}").into_bytes(),
                    vec![i as u8; i as usize],
                )
            })
            .collect();
        exact
            .xattrs
            .push((b"security.capability".to_vec(), vec![0xff; XATTR_VALUE_MAX]));
        add(&mut b, b"etc/exact", exact, ch);
        let mut l = NodeMeta::new(NodeKind::Symlink, 0o777);
        l.symlink_target = b"../bin/sh".to_vec();
        add(&mut b, b"etc/sh", l, vec![]);
        let mut long = NodeMeta::new(NodeKind::Symlink, 0o777);
        long.symlink_target = vec![b'x'; 4095];
        add(&mut b, b"etc/long-target", long, vec![]);
        add(&mut b, b"dev", dir(), vec![]);
        let mut null = NodeMeta::new(NodeKind::CharDevice, 0o666);
        null.rdev = (1 << 8) | 3;
        add(&mut b, b"dev/null", null, vec![]);
        let mut sda = NodeMeta::new(NodeKind::BlockDevice, 0o660);
        sda.rdev = u64::MAX;
        sda.gid = 6;
        add(&mut b, b"dev/sda", sda, vec![]);
        add(
            &mut b,
            b"dev/fifo",
            NodeMeta::new(NodeKind::Fifo, 0o600),
            vec![],
        );
        add(
            &mut b,
            b"dev/sock",
            NodeMeta::new(NodeKind::Socket, 0o755),
            vec![],
        );
        let long_name = vec![b'n'; 255];
        let mut p = b"etc/".to_vec();
        p.extend_from_slice(&long_name);
        add(&mut b, &p, file(1), raw_chunks(1, 3, &mut off));
        add(
            &mut b,
            b"\xff\xfe latin1 \xe9",
            file(5),
            raw_chunks(5, 4, &mut off),
        );
        b.add_hardlink(b"etc/sh-hard", b"bin/sh").unwrap();
        b.add_hardlink(b"sh-again", b"etc/sh-hard").unwrap();
        b.add_hardlink(b"dev/null2", b"dev/null").unwrap();
        (b, nodes)
    }

    #[test]
    fn round_trip_every_field_at_its_limits() {
        let (b, nodes) = limits_tree();
        let index = Index::open(b.finish().unwrap()).unwrap();
        index.validate().unwrap();
        assert_eq!(index.chunk_size(), CS);
        assert_eq!(index.source_manifest(), [0x11; 32]);
        assert_eq!(index.config_json(), br#"{"architecture":"amd64"}"#);
        assert_eq!(index.packs(), vec![([0xaa; 32], PACK_SIZE)]);
        let root = index.inode(0).unwrap();
        assert_eq!(
            (root.mode, root.mtime, root.mtime_nsec),
            (0o1777, -1, 999_999_999)
        );
        for (path, meta, chunks) in &nodes {
            let ino = index.resolve(path).unwrap().unwrap();
            let i = index.inode(ino).unwrap();
            let shown = String::from_utf8_lossy(path);
            assert_eq!(i.kind, meta.kind, "{shown}");
            assert_eq!(
                (i.mode, i.uid, i.gid, i.mtime, i.mtime_nsec),
                (meta.mode, meta.uid, meta.gid, meta.mtime, meta.mtime_nsec),
                "{shown}"
            );
            match meta.kind {
                NodeKind::File => {
                    assert_eq!(i.size, meta.size);
                    assert_eq!(&index.chunks(ino).unwrap(), chunks);
                    assert_eq!(index.chunk_count(ino).unwrap() as usize, chunks.len());
                }
                NodeKind::Symlink => {
                    assert_eq!(index.symlink_target(ino).unwrap(), meta.symlink_target);
                    assert_eq!(i.size, meta.symlink_target.len() as u64);
                }
                NodeKind::Dir => assert_eq!(i.size, 0),
                _ => {}
            }
            assert_eq!(i.rdev, if meta.kind.is_device() { meta.rdev } else { 0 });
            let mut want = meta.xattrs.clone();
            want.sort();
            let got: Vec<(Vec<u8>, Vec<u8>)> = index
                .xattrs(ino)
                .unwrap()
                .into_iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect();
            assert_eq!(got, want, "{shown}");
        }
        // Hardlinks: one inode, nlink = number of names.
        let sh = index.resolve(b"bin/sh").unwrap().unwrap();
        assert_eq!(index.resolve(b"etc/sh-hard").unwrap(), Some(sh));
        assert_eq!(index.resolve(b"sh-again").unwrap(), Some(sh));
        assert_eq!(index.inode(sh).unwrap().nlink, 3);
        let null = index.resolve(b"dev/null").unwrap().unwrap();
        assert_eq!(index.resolve(b"dev/null2").unwrap(), Some(null));
        assert_eq!(index.inode(null).unwrap().nlink, 2);
        // Directories: nlink = 2 + subdirectories; empty dirs list nothing.
        assert_eq!(root.nlink, 2 + 4);
        let empty = index.resolve(b"empty").unwrap().unwrap();
        assert!(index.read_dir(empty).unwrap().is_empty());
        assert_eq!(index.inode(empty).unwrap().nlink, 2);
        assert_eq!(index.parent(empty).unwrap(), 0);
        assert_eq!(index.parent(0).unwrap(), 0);
        // Empty file: no chunks.
        let zero = index.resolve(b"etc/zero").unwrap().unwrap();
        assert!(index.chunks(zero).unwrap().is_empty());
        // Chunk access by position.
        let exact = index.resolve(b"etc/exact").unwrap().unwrap();
        assert_eq!(index.chunk(exact, 2).unwrap().uncompressed_size, CS);
        assert_eq!(
            index.chunk(exact, 3).unwrap_err().to_string(),
            format!("inode {exact}: chunk 3 out of range (file has 3 chunks)")
        );
        // Resolve: leading slash, `.`, missing, through a file.
        assert_eq!(index.resolve(b"/etc/./exact").unwrap(), Some(exact));
        assert_eq!(index.resolve(b"").unwrap(), Some(0));
        assert_eq!(index.resolve(b"etc/nope").unwrap(), None);
        assert_eq!(index.resolve(b"etc/exact/x").unwrap(), None);
        assert_eq!(
            index.resolve(b"etc/../bin").unwrap_err().to_string(),
            "invalid name \"..\": is . or .."
        );
        // Lookups of names no entry can have.
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert_eq!(index.lookup(0, bad).unwrap(), None);
        }
    }

    #[test]
    fn walk_is_depth_first_in_name_order() {
        let (b, _) = limits_tree();
        let index = Index::open(b.finish().unwrap()).unwrap();
        let paths: Vec<Vec<u8>> = index.walk().unwrap().into_iter().map(|(p, _)| p).collect();
        let mut long = b"etc/".to_vec();
        long.extend_from_slice(&[b'n'; 255]);
        let want: Vec<&[u8]> = vec![
            b"",
            b"bin",
            b"bin/sh",
            b"dev",
            b"dev/fifo",
            b"dev/null",
            b"dev/null2",
            b"dev/sda",
            b"dev/sock",
            b"empty",
            b"etc",
            b"etc/exact",
            b"etc/long-target",
            &long,
            b"etc/sh",
            b"etc/sh-hard",
            b"etc/zero",
            b"sh-again",
            b"\xff\xfe latin1 \xe9",
        ];
        assert_eq!(paths, want);
        // Every path resolves to the inode the walk gave.
        for (p, ino) in index.walk().unwrap() {
            assert_eq!(index.resolve(&p).unwrap(), Some(ino));
        }
    }

    #[test]
    fn inodes_are_numbered_breadth_first_by_name() {
        let (b, _) = limits_tree();
        let index = Index::open(b.finish().unwrap()).unwrap();
        let names: Vec<&[u8]> = index.read_dir(0).unwrap().iter().map(|e| e.0).collect();
        assert_eq!(
            names,
            vec![
                &b"bin"[..],
                b"dev",
                b"empty",
                b"etc",
                b"sh-again",
                b"\xff\xfe latin1 \xe9"
            ]
        );
        let inos: Vec<u32> = index.read_dir(0).unwrap().iter().map(|e| e.1).collect();
        // sh-again is a hardlink to bin/sh, numbered where it is first seen (here, at the root).
        assert_eq!(inos, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(index.resolve(b"bin/sh").unwrap(), Some(5));
        assert_eq!(index.resolve(b"dev/fifo").unwrap(), Some(7));
    }

    #[test]
    fn ten_thousand_entry_directory() {
        let mut b = builder();
        let mut off = 0;
        b.add(b"d", dir(), vec![]).unwrap();
        // Insert in a scrambled order; the builder sorts.
        for i in (0..10_000u32).map(|i| (i * 7919) % 10_000) {
            let p = format!("d/file-{i:05}");
            add_file(&mut b, p.as_bytes(), u64::from(i % 3), &mut off);
        }
        let index = Index::open(b.finish().unwrap()).unwrap();
        index.validate().unwrap();
        let d = index.resolve(b"d").unwrap().unwrap();
        assert_eq!(index.dir_len(d).unwrap(), 10_000);
        for i in 0..10_000u32 {
            let name = format!("file-{i:05}");
            let ino = index.lookup(d, name.as_bytes()).unwrap().unwrap();
            assert_eq!(index.inode(ino).unwrap().size, u64::from(i % 3));
            assert_eq!(index.dir_entry(d, i).unwrap(), Some((name.as_bytes(), ino)));
        }
        for absent in [&b"file-10000"[..], b"file-", b"a", b"zzz", b"file-00000x"] {
            assert_eq!(index.lookup(d, absent).unwrap(), None);
        }
        assert_eq!(index.dir_entry(d, 10_000).unwrap(), None);
    }

    /// Builds the same tree with siblings and subtrees inserted in another order.
    fn build_in_order(reverse: bool) -> Vec<u8> {
        let mut b = builder();
        b.set_source([3; 32], b"{}".to_vec());
        let mut dirs: Vec<&[u8]> = vec![b"a", b"b", b"c"];
        let mut files: Vec<(&[u8], u64)> = vec![
            (b"a/x", 10),
            (b"a/y", 5000),
            (b"b/x", 10),
            (b"c/z", 0),
            (b"top", 8192),
        ];
        if reverse {
            dirs.reverse();
            files.reverse();
        }
        for d in dirs {
            let mut m = dir();
            m.xattrs = vec![
                (b"user.b".to_vec(), b"2".to_vec()),
                (b"user.a".to_vec(), vec![]),
            ];
            if reverse {
                m.xattrs.reverse();
            }
            b.add(d, m, vec![]).unwrap();
        }
        for (p, size) in files {
            // Chunk refs depend only on the path, not on the insertion order.
            let mut off = p.iter().map(|&c| u64::from(c)).sum::<u64>() * 100_000;
            add_file(&mut b, p, size, &mut off);
        }
        let links: Vec<(&[u8], &[u8])> = vec![(b"c/l1", b"a/x"), (b"b/l2", b"top")];
        for (p, t) in links {
            b.add_hardlink(p, t).unwrap();
        }
        b.finish().unwrap()
    }

    #[test]
    fn builds_are_deterministic_whatever_the_insertion_order() {
        let one = build_in_order(false);
        assert_eq!(one, build_in_order(false));
        assert_eq!(one, build_in_order(true));
        Index::open(one).unwrap().validate().unwrap();
    }

    #[test]
    fn heap_strings_are_stored_once() {
        let mut b = builder();
        for d in [&b"a"[..], b"b", b"c"] {
            b.add(d, dir(), vec![]).unwrap();
            let mut p = d.to_vec();
            p.extend_from_slice(b"/same-long-name");
            b.add(&p, NodeMeta::new(NodeKind::Fifo, 0o644), vec![])
                .unwrap();
        }
        let blob = b.finish().unwrap();
        let (_, heap_len) = section(&blob, Section::Heap);
        assert_eq!(heap_len as usize, 3 + "same-long-name".len());
    }

    /// The encoding of a tiny index, pinned: a shipped layout must never change silently. If
    /// this fails, the format changed: that needs a new version, not a new literal.
    #[test]
    fn pinned_encoding_of_a_tiny_index() {
        let mut b = IndexBuilder::new(4096);
        b.set_source([0x5a; 32], b"{}".to_vec());
        let pack = b.add_pack([0xcc; 32], 100);
        let mut root = dir();
        root.mtime = 1_700_000_000;
        b.set_root(root).unwrap();
        let mut f = file(5);
        f.uid = 1000;
        f.gid = 1000;
        f.mtime_nsec = 123;
        f.xattrs = vec![(b"user.k".to_vec(), b"v".to_vec())];
        let c = ChunkRef {
            digest: [0x42; 32],
            pack,
            compression: Compression::Lz4,
            offset: 7,
            compressed_size: 4,
            uncompressed_size: 5,
        };
        b.add(b"f", f, vec![c]).unwrap();
        let mut l = NodeMeta::new(NodeKind::Symlink, 0o777);
        l.symlink_target = b"f".to_vec();
        b.add(b"l", l, vec![]).unwrap();
        let blob = b.finish().unwrap();
        let hex: String = blob.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, PINNED_HEX, "the v1 encoding changed");
        let index = Index::open(blob).unwrap();
        index.validate().unwrap();
        assert_eq!(index.chunks(1).unwrap(), vec![c]);
    }

    const PINNED_HEX: &str = concat!(
        // header: magic, version, flags, header_size, chunk_size, blob_size
        "50524e54494458310100000000000000d0000000001000002a02000000000000",
        // header: source_manifest
        "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
        // header: section table (offset u64, count u32, entry_size u32) x 7
        "d0000000000000000100000028000000f8000000000000000300000040000000",
        "b801000000000000020000000c000000d0010000000000000100000038000000",
        "0802000000000000010000001000000018020000000000000900000001000000",
        "28020000000000000200000001000000",
        // header: checksum
        "6fb910b4e36dc2d0200036945586fca566b54fabc31f321568afdd643205c735",
        // packs: sha256, size
        "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc",
        "6400000000000000",
        // inode 0: root dir
        "0100ed0100000000000000000200000000f15365000000000000000000000000",
        "0000000000000000000000000000000000000000020000000000000000000000",
        // inode 1: file f
        "0200a401e8030000e80300000100000000000000000000007b00000000000000",
        "0500000000000000000000000000000000000000010000000000000001000000",
        // inode 2: symlink l
        "0300ff0100000000000000000100000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000010000000000000000000000",
        // dirents: f -> 1, l -> 2
        "000000000100000001000000010000000100000002000000",
        // chunks: f's only chunk
        "4242424242424242424242424242424242424242424242424242424242424242",
        "070000000000000000000000040000000500000002000000",
        // xattrs: user.k = v
        "02000000060000000800000001000000",
        // heap: "f" "l" "user.k" "v", then padding
        "666c757365722e6b7600000000000000",
        // config: {}
        "7b7d",
    );

    #[test]
    fn builder_refuses_bad_paths() {
        let mut b = builder();
        let e = |r: Result<()>| r.unwrap_err().to_string();
        assert_eq!(
            e(b.add(b"", dir(), vec![])),
            "invalid path \"\": empty (the root is set with set_root)"
        );
        assert_eq!(
            e(b.add(b"/a", dir(), vec![])),
            "invalid path \"/a\": absolute"
        );
        assert_eq!(
            e(b.add(b"a//b", dir(), vec![])),
            "invalid path \"a//b\": component \"\": empty"
        );
        assert_eq!(
            e(b.add(b"a/", dir(), vec![])),
            "invalid path \"a/\": component \"\": empty"
        );
        assert_eq!(
            e(b.add(b"./a", dir(), vec![])),
            "invalid path \"./a\": component \".\": is . or .."
        );
        assert_eq!(
            e(b.add(b"a/../b", dir(), vec![])),
            "invalid path \"a/../b\": component \"..\": is . or .."
        );
        assert_eq!(
            e(b.add(b"a\0b", dir(), vec![])),
            "invalid path \"a\\x00b\": component \"a\\x00b\": contains NUL"
        );
        let long = vec![b'a'; 256];
        assert_eq!(
            e(b.add(&long, dir(), vec![])),
            format!(
                "invalid path \"{0}\": component \"{0}\": longer than 255 bytes",
                "a".repeat(256)
            )
        );
        let deep = [b"a/".repeat(2048), b"b".to_vec()].concat();
        assert!(e(b.add(&deep, dir(), vec![])).ends_with("4097 bytes, longer than 4095"));
        assert_eq!(
            e(b.add(b"x/y", dir(), vec![])),
            "parent of \"x/y\" was not added"
        );
        b.add(b"f", NodeMeta::new(NodeKind::Fifo, 0o644), vec![])
            .unwrap();
        assert_eq!(
            e(b.add(b"f/y", dir(), vec![])),
            "parent of \"f/y\" is not a directory"
        );
        assert_eq!(e(b.add(b"f", dir(), vec![])), "\"f\" already exists");
        b.add(b"d", dir(), vec![]).unwrap();
        assert_eq!(
            e(b.add_hardlink(b"h", b"d")),
            "hardlink target \"d\" is a directory"
        );
        assert_eq!(
            e(b.add_hardlink(b"h", b"nope")),
            "hardlink target \"nope\" does not exist"
        );
        assert_eq!(e(b.add_hardlink(b"f", b"f")), "\"f\" already exists");
        assert_eq!(
            e(b.set_root(NodeMeta::new(NodeKind::File, 0o644))),
            "the root is a regular file, not a directory"
        );
    }

    #[test]
    fn builder_refuses_bad_nodes() {
        let mut b = builder();
        let e = |r: Result<()>| r.unwrap_err().to_string();
        let mut m = dir();
        m.mode = 0o40755;
        assert_eq!(
            e(b.add(b"d", m, vec![])),
            "invalid node \"d\": mode 0o40755 has bits outside 0o7777"
        );
        let mut m = dir();
        m.mtime_nsec = 1_000_000_000;
        assert_eq!(
            e(b.add(b"d", m, vec![])),
            "invalid node \"d\": mtime nanoseconds 1000000000 out of range (max 999999999)"
        );
        let mut m = dir();
        m.xattrs = vec![(b"user.a".to_vec(), vec![]), (b"user.a".to_vec(), vec![1])];
        assert_eq!(
            e(b.add(b"d", m, vec![])),
            "invalid node \"d\": duplicate xattr \"user.a\""
        );
        let mut m = dir();
        m.xattrs = vec![(b"".to_vec(), vec![])];
        assert_eq!(
            e(b.add(b"d", m, vec![])),
            "invalid node \"d\": xattr name \"\": empty"
        );
        let mut m = dir();
        m.xattrs = vec![(b"user.big".to_vec(), vec![0; XATTR_VALUE_MAX + 1])];
        assert_eq!(
            e(b.add(b"d", m, vec![])),
            "invalid node \"d\": xattr \"user.big\": value of 65537 bytes exceeds 65536"
        );
        let mut off = 0;
        assert_eq!(
            e(b.add(b"d", dir(), raw_chunks(1, 0, &mut off))),
            "invalid node \"d\": a directory has no chunks, got 1"
        );
        let mut s = NodeMeta::new(NodeKind::Symlink, 0o777);
        assert_eq!(
            e(b.add(b"s", s.clone(), vec![])),
            "invalid node \"s\": symlink target \"\": empty"
        );
        s.symlink_target = b"a\0".to_vec();
        assert_eq!(
            e(b.add(b"s", s, vec![])),
            "invalid node \"s\": symlink target \"a\\x00\": contains NUL"
        );
        // Chunks inconsistent with the size.
        assert_eq!(
            e(b.add(b"f", file(CS as u64 + 1), raw_chunks(1, 0, &mut off))),
            "invalid node \"f\": 1 chunks for 4097 bytes, expected 2 at chunk size 4096"
        );
        let mut ch = raw_chunks(2 * CS as u64, 0, &mut off);
        ch[0].uncompressed_size -= 1;
        ch[0].compressed_size -= 1;
        assert_eq!(
            e(b.add(b"f", file(2 * CS as u64), ch)),
            "invalid node \"f\": chunk 0: uncompressed size 4095, expected 4096"
        );
        let mut ch = raw_chunks(10, 0, &mut off);
        ch[0].compression = Compression::Zstd;
        assert_eq!(
            e(b.add(b"f", file(10), ch)),
            "invalid node \"f\": chunk 0: zstd chunk of 10 bytes stored in 10 (must be 1..10)"
        );
        // Packs are checked at the end, when all of them are known.
        let mut ch = raw_chunks(10, 0, &mut off);
        ch[0].pack = 1;
        b.add(b"f", file(10), ch).unwrap();
        assert_eq!(
            b.finish().unwrap_err().to_string(),
            "invalid node \"f\": chunk 0: pack index 1 out of range (1 packs)"
        );
        let mut b = builder();
        let mut ch = raw_chunks(10, 0, &mut off);
        ch[0].offset = PACK_SIZE - 5;
        b.add(b"f", file(10), ch).unwrap();
        assert_eq!(
            b.finish().unwrap_err().to_string(),
            format!(
                "invalid node \"f\": chunk 0: bytes {}+10 are past the end of pack 0 ({PACK_SIZE} bytes)",
                PACK_SIZE - 5
            )
        );
        for cs in [0, 4095, 4097, 1 << 27] {
            assert_eq!(
                IndexBuilder::new(cs).finish().unwrap_err().to_string(),
                format!("invalid chunk size {cs}: must be a power of two in 4096..=67108864")
            );
        }
    }

    #[test]
    fn unused_fields_are_cleared() {
        let mut b = builder();
        let mut m = NodeMeta::new(NodeKind::Fifo, 0o644);
        m.size = 99;
        m.rdev = 7;
        m.symlink_target = b"x".to_vec();
        b.add(b"p", m, vec![]).unwrap();
        let index = Index::open(b.finish().unwrap()).unwrap();
        let i = index.inode(1).unwrap();
        assert_eq!((i.size, i.rdev), (0, 0));
        assert_eq!(
            index.symlink_target(1).unwrap_err().to_string(),
            "inode 1 is a fifo, not a symlink"
        );
    }
}
