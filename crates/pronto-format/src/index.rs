//! [`Index`]: a read-only view over an index blob.
//!
//! Nothing is decoded up front beyond the header: a lookup is a binary search over the sorted
//! entries of one directory, a stat is one 64-byte record, a read finds its chunk by arithmetic
//! (`offset / chunk_size`). Every accessor checks what it reads (ranges inside their tables,
//! names inside the heap, kinds, sizes) and returns an error instead of panicking, so a
//! corrupt or hostile blob that passed [`Index::open`] can still be served safely; what needs
//! the whole tree (canonical numbering, no cycles, link counts) is [`Index::validate`].

use std::cmp::Ordering;

use bytes::Bytes;

use crate::chunk::{
    check_chunk_shape, expected_chunk_count, expected_chunk_len, ChunkProblem, ChunkRef,
    Compression,
};
use crate::error::FormatError;
use crate::layout::{
    compute_checksum, ChunkV1, DirentV1, IndexHeaderV1, InodeV1, NodeKind, PackV1, Section,
    XattrV1, HEADER_SIZE, KNOWN_FLAGS, MAGIC, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, MODE_MASK, NAME_MAX,
    PATH_MAX, SECTION_ALIGN, SYMLINK_MAX, VERSION, XATTR_NAME_MAX, XATTR_VALUE_MAX,
};

type Result<T> = std::result::Result<T, FormatError>;

/// The metadata of one inode, as `stat` would show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inode {
    /// Inode number (0 is the root).
    pub ino: u32,
    /// Kind.
    pub kind: NodeKind,
    /// Permission bits (`0o7777` at most: rwx, setuid, setgid, sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count: entries naming it (non-directories), 2 + subdirectories (directories).
    pub nlink: u32,
    /// Modification time, seconds since the epoch (may be negative).
    pub mtime: i64,
    /// Modification time, nanoseconds (< 10⁹).
    pub mtime_nsec: u32,
    /// Files: content length; symlinks: target length; others: 0.
    pub size: u64,
    /// Devices: Linux `dev_t` encoding; others: 0.
    pub rdev: u64,
}

/// A decoded inode record with its ranges, checked on its own (O(1)).
#[derive(Debug, Clone, Copy)]
struct RawInode {
    inode: Inode,
    parent: u32,
    data_first: u32,
    data_count: u32,
    xattr_first: u32,
    xattr_count: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct Span {
    offset: usize,
    count: u32,
}

/// A read-only view over an index blob; cheap to clone (the bytes are shared).
#[derive(Clone)]
pub struct Index {
    bytes: Bytes,
    chunk_size: u32,
    source_manifest: [u8; 32],
    spans: [Span; Section::COUNT],
    /// Opened with [`Index::open_tree`]: the chunk digests are zeros, not to be handed out.
    tree_only: bool,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = |s: Section| self.spans[s as usize].count;
        f.debug_struct("Index")
            .field("bytes", &self.bytes.len())
            .field("chunk_size", &self.chunk_size)
            .field("inodes", &count(Section::Inodes))
            .field("dirents", &count(Section::Dirents))
            .field("chunks", &count(Section::Chunks))
            .field("packs", &count(Section::Packs))
            .field("tree_only", &self.tree_only)
            .finish_non_exhaustive()
    }
}

/// Why `name` cannot be a directory entry, if it cannot.
pub(crate) fn check_name(name: &[u8]) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        Err("empty")
    } else if name == b"." || name == b".." {
        Err("is . or ..")
    } else if name.len() > NAME_MAX {
        Err("longer than 255 bytes")
    } else if name.contains(&b'/') {
        Err("contains '/'")
    } else if name.contains(&0) {
        Err("contains NUL")
    } else {
        Ok(())
    }
}

/// Why `name` cannot be an xattr name, if it cannot.
pub(crate) fn check_xattr_name(name: &[u8]) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        Err("empty")
    } else if name.len() > XATTR_NAME_MAX {
        Err("longer than 255 bytes")
    } else if name.contains(&0) {
        Err("contains NUL")
    } else {
        Ok(())
    }
}

/// Why `target` cannot be a symlink target, if it cannot.
pub(crate) fn check_symlink_target(target: &[u8]) -> std::result::Result<(), &'static str> {
    if target.is_empty() {
        Err("empty")
    } else if target.len() > SYMLINK_MAX {
        Err("longer than 4095 bytes")
    } else if target.contains(&0) {
        Err("contains NUL")
    } else {
        Ok(())
    }
}

/// A bad value for an error message, cut so that an error never copies a large heap range.
pub(crate) fn cut(b: &[u8]) -> Vec<u8> {
    b[..b.len().min(NAME_MAX + 1)].to_vec()
}

fn invalid_name(name: &[u8], reason: &'static str) -> FormatError {
    FormatError::InvalidName {
        name: cut(name),
        reason,
    }
}

impl Index {
    /// Opens an index blob: checks the magic, version, flags, header size, declared length,
    /// checksum, chunk size, every section's entry size, alignment and bounds (with overflow
    /// checks), that no section overlaps the header or another, and that inode 0 is a directory.
    ///
    /// O(blob) for the checksum, O(1) otherwise. Call [`Index::validate`] before serving a blob
    /// from an untrusted source.
    pub fn open(bytes: impl Into<Bytes>) -> Result<Index> {
        Index::open_as(bytes.into(), false)
    }

    /// Opens the tree of a split index (`docs/format.md`, the index layer): an index blob whose
    /// chunk records have all-zero digests, the digests coming after. Checks all that
    /// [`Index::open`] checks but the checksum, which is the whole index's (the tree's bytes
    /// are checked against the digest its layer declares). Everything but the chunks reads as
    /// from the whole index; [`Index::chunk`] and [`Index::chunks`] refuse
    /// ([`FormatError::DigestsPending`]) until [`Index::with_digests`] makes the whole index.
    pub fn open_tree(bytes: impl Into<Bytes>) -> Result<Index> {
        Index::open_as(bytes.into(), true)
    }

    fn open_as(bytes: Bytes, tree_only: bool) -> Result<Index> {
        let len = bytes.len() as u64;
        if bytes.len() >= MAGIC.len() && bytes[..MAGIC.len()] != MAGIC {
            return Err(FormatError::BadMagic {
                found: bytes[..MAGIC.len()].to_vec(),
            });
        }
        if bytes.len() < 12 {
            return Err(FormatError::Truncated {
                needed: HEADER_SIZE as u64,
                actual: len,
            });
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion { version });
        }
        let Some(Ok(head)) = bytes.get(..HEADER_SIZE).map(<&[u8; HEADER_SIZE]>::try_from) else {
            return Err(FormatError::Truncated {
                needed: HEADER_SIZE as u64,
                actual: len,
            });
        };
        let h = IndexHeaderV1::decode(head);
        if h.header_size as usize != HEADER_SIZE {
            return Err(FormatError::BadHeaderSize {
                size: h.header_size,
            });
        }
        if h.flags & !KNOWN_FLAGS != 0 {
            return Err(FormatError::UnknownFlags {
                flags: h.flags & !KNOWN_FLAGS,
            });
        }
        match h.blob_size.cmp(&len) {
            Ordering::Greater => {
                return Err(FormatError::Truncated {
                    needed: h.blob_size,
                    actual: len,
                })
            }
            Ordering::Less => {
                return Err(FormatError::TrailingBytes {
                    declared: h.blob_size,
                    actual: len,
                })
            }
            Ordering::Equal => {}
        }
        // The checksum before the structure: a flipped bit reads as corruption, not as some
        // structural error that happens to follow from it.
        let computed = if tree_only {
            h.checksum
        } else {
            compute_checksum(&bytes).unwrap_or_default()
        };
        if computed != h.checksum {
            return Err(FormatError::ChecksumMismatch {
                stored: h.checksum,
                computed,
            });
        }
        if !h.chunk_size.is_power_of_two()
            || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&h.chunk_size)
        {
            return Err(FormatError::InvalidChunkSize { size: h.chunk_size });
        }
        let mut spans = [Span::default(); Section::COUNT];
        let mut extents: Vec<(u64, u64, Section)> = Vec::with_capacity(Section::COUNT);
        for s in Section::ALL {
            let d = h.sections[s as usize];
            if d.entry_size != s.entry_size() {
                return Err(FormatError::SectionEntrySize {
                    section: s,
                    found: d.entry_size,
                    expected: s.entry_size(),
                });
            }
            if d.offset < HEADER_SIZE as u64 {
                return Err(FormatError::SectionOverlapsHeader {
                    section: s,
                    offset: d.offset,
                });
            }
            if !d.offset.is_multiple_of(SECTION_ALIGN) {
                return Err(FormatError::SectionMisaligned {
                    section: s,
                    offset: d.offset,
                });
            }
            let blen = d.byte_len();
            match d.offset.checked_add(blen) {
                Some(end) if end <= len => {
                    if blen > 0 {
                        extents.push((d.offset, end, s));
                    }
                }
                _ => {
                    return Err(FormatError::SectionOutOfBounds {
                        section: s,
                        offset: d.offset,
                        len: blen,
                        blob_len: len,
                    })
                }
            }
            spans[s as usize] = Span {
                // In bounds of the blob, so it fits a usize.
                offset: d.offset as usize,
                count: d.count,
            };
        }
        extents.sort_unstable();
        for w in extents.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(FormatError::SectionsOverlap {
                    first: w[0].2,
                    second: w[1].2,
                });
            }
        }
        let index = Index {
            bytes,
            chunk_size: h.chunk_size,
            source_manifest: h.source_manifest,
            spans,
            tree_only,
        };
        if index.inode_count() == 0 {
            return Err(FormatError::NoRoot);
        }
        let root = index.raw_inode(0)?;
        if root.inode.kind != NodeKind::Dir {
            return Err(FormatError::RootNotDirectory {
                kind: root.inode.kind,
            });
        }
        Ok(index)
    }

    /// The blob.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Opened with [`Index::open_tree`]: chunk digests not here yet.
    pub fn is_tree_only(&self) -> bool {
        self.tree_only
    }

    /// Splits the index for a split index layer: the tree (the blob with every chunk record's
    /// digest zeroed; the checksum stays the whole blob's) and the digests, 32 bytes per chunk
    /// record in record order. About 70% of a compressed index is digests (random bytes), which
    /// a mount does not need before its first chunk.
    pub fn split_digests(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        if self.tree_only {
            return Err(FormatError::DigestsPending);
        }
        let mut tree = self.bytes.to_vec();
        let span = self.spans[Section::Chunks as usize];
        let mut digests = Vec::with_capacity(span.count as usize * 32);
        for i in 0..span.count as usize {
            let at = span.offset + i * ChunkV1::SIZE;
            digests.extend_from_slice(&tree[at..at + 32]);
            tree[at..at + 32].fill(0);
        }
        Ok((tree, digests))
    }

    /// The whole index: this tree with `digests` (as [`Index::split_digests`] gave them)
    /// written back, opened with its checksum, which is how a digest table that is not this
    /// index's is caught.
    pub fn with_digests(&self, digests: &[u8]) -> Result<Index> {
        let span = self.spans[Section::Chunks as usize];
        let expected = u64::from(span.count) * 32;
        if digests.len() as u64 != expected {
            return Err(FormatError::DigestTableSize {
                expected,
                actual: digests.len() as u64,
            });
        }
        let mut blob = self.bytes.to_vec();
        for (i, d) in digests.chunks_exact(32).enumerate() {
            let at = span.offset + i * ChunkV1::SIZE;
            blob[at..at + 32].copy_from_slice(d);
        }
        Index::open(blob)
    }

    /// The root directory's inode number: always 0.
    pub fn root(&self) -> u32 {
        0
    }

    /// Number of inodes.
    pub fn inode_count(&self) -> u32 {
        self.spans[Section::Inodes as usize].count
    }

    /// The chunk size of every file.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// sha256 of the image manifest this index was converted from.
    pub fn source_manifest(&self) -> [u8; 32] {
        self.source_manifest
    }

    /// The original OCI image config, raw bytes.
    pub fn config_json(&self) -> &[u8] {
        self.section_bytes(Section::Config)
    }

    /// The pack blobs: (sha256, size), indexed by [`ChunkRef::pack`].
    pub fn packs(&self) -> Vec<([u8; 32], u64)> {
        (0..self.spans[Section::Packs as usize].count)
            .filter_map(|i| self.pack(i))
            .collect()
    }

    /// One pack blob, `None` past the end.
    pub fn pack(&self, index: u32) -> Option<([u8; 32], u64)> {
        self.record::<{ PackV1::SIZE }>(Section::Packs, index)
            .map(|b| {
                let p = PackV1::decode(b);
                (p.sha256, p.size)
            })
    }

    /// The metadata of an inode.
    pub fn inode(&self, ino: u32) -> Result<Inode> {
        Ok(self.raw_inode(ino)?.inode)
    }

    /// The parent of a directory (the root is its own parent), for `..`.
    pub fn parent(&self, dir: u32) -> Result<u32> {
        let raw = self.dir_inode(dir)?;
        Ok(raw.parent)
    }

    /// Number of entries of a directory (no `.` and `..`).
    pub fn dir_len(&self, dir: u32) -> Result<u32> {
        Ok(self.dir_inode(dir)?.data_count)
    }

    /// Entry `index` of a directory in name order, `None` past the end (for offset-based
    /// readdir). Does not check the order against neighbours; [`Index::read_dir`] does.
    pub fn dir_entry(&self, dir: u32, index: u32) -> Result<Option<(&[u8], u32)>> {
        let raw = self.dir_inode(dir)?;
        if index >= raw.data_count {
            return Ok(None);
        }
        self.dirent(raw.data_first + index).map(Some)
    }

    /// The entries of a directory, sorted by raw name bytes, without `.` and `..`.
    ///
    /// Checks every name and inode number, and that names are strictly increasing.
    pub fn read_dir(&self, dir: u32) -> Result<Vec<(&[u8], u32)>> {
        let raw = self.dir_inode(dir)?;
        // Bounded: the range was checked against the dirent table, which is in the blob.
        let mut out: Vec<(&[u8], u32)> = Vec::with_capacity(raw.data_count as usize);
        for i in 0..raw.data_count {
            let (name, ino) = self.dirent(raw.data_first + i)?;
            if let Some(&(prev, _)) = out.last() {
                check_order(dir, prev, name)?;
            }
            out.push((name, ino));
        }
        Ok(out)
    }

    /// Looks `name` up in a directory: a binary search, O(log n) records read.
    ///
    /// `Ok(None)` if absent, including for names no entry can have (`.`, `..`, empty, with `/`
    /// or NUL). On a directory whose entries are not sorted (which [`Index::validate`] refuses)
    /// the answer may be wrong, but the search still ends and never panics.
    pub fn lookup(&self, dir: u32, name: &[u8]) -> Result<Option<u32>> {
        let raw = self.dir_inode(dir)?;
        if check_name(name).is_err() {
            return Ok(None);
        }
        let (mut lo, mut hi) = (0u32, raw.data_count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (n, ino) = self.dirent(raw.data_first + mid)?;
            match n.cmp(name) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Ok(Some(ino)),
            }
        }
        Ok(None)
    }

    /// Resolves a `/`-separated path from the root (a leading `/`, empty and `.` components
    /// are ignored; symlinks are not followed). `Ok(None)` if a component is missing or a
    /// non-final component is not a directory; `..` is an error.
    pub fn resolve(&self, path: &[u8]) -> Result<Option<u32>> {
        let mut ino = self.root();
        for comp in path.split(|&b| b == b'/') {
            if comp.is_empty() || comp == b"." {
                continue;
            }
            if comp == b".." {
                return Err(invalid_name(comp, "is . or .."));
            }
            if self.raw_inode(ino)?.inode.kind != NodeKind::Dir {
                return Ok(None);
            }
            match self.lookup(ino, comp)? {
                Some(child) => ino = child,
                None => return Ok(None),
            }
        }
        Ok(Some(ino))
    }

    /// Number of chunks of a regular file (`ceil(size / chunk_size)`).
    pub fn chunk_count(&self, ino: u32) -> Result<u32> {
        Ok(self.file_inode(ino)?.data_count)
    }

    /// Chunk `index` of a regular file: the chunk holding bytes
    /// `index * chunk_size..min(size, (index + 1) * chunk_size)`.
    pub fn chunk(&self, ino: u32, index: u32) -> Result<ChunkRef> {
        if self.tree_only {
            return Err(FormatError::DigestsPending);
        }
        let raw = self.file_inode(ino)?;
        self.chunk_of(&raw, index)
    }

    /// All chunks of a regular file, in file order (empty for an empty file).
    pub fn chunks(&self, ino: u32) -> Result<Vec<ChunkRef>> {
        if self.tree_only {
            return Err(FormatError::DigestsPending);
        }
        let raw = self.file_inode(ino)?;
        (0..raw.data_count)
            .map(|i| self.chunk_of(&raw, i))
            .collect()
    }

    /// The target of a symlink, raw bytes (1..=4095 of them, no NUL).
    pub fn symlink_target(&self, ino: u32) -> Result<&[u8]> {
        let raw = self.raw_inode(ino)?;
        if raw.inode.kind != NodeKind::Symlink {
            return Err(FormatError::NotASymlink {
                ino,
                kind: raw.inode.kind,
            });
        }
        let target = self.heap("symlink target", raw.data_first, raw.data_count)?;
        check_symlink_target(target).map_err(|reason| FormatError::InvalidSymlinkTarget {
            ino,
            target: cut(target),
            reason,
        })?;
        Ok(target)
    }

    /// The extended attributes of an inode, sorted by name: (name, value).
    pub fn xattrs(&self, ino: u32) -> Result<Vec<(&[u8], &[u8])>> {
        let raw = self.raw_inode(ino)?;
        self.xattrs_of(&raw)
    }

    /// Every path in the tree with its inode, depth-first, entries in name order, the root
    /// first as the empty path. A hardlinked inode appears once per path.
    ///
    /// Refuses (instead of looping) a directory that is linked twice or links back to an
    /// ancestor, and paths over 4095 bytes. Memory: the sum of all path lengths; use
    /// [`Index::walk_with`] to visit without collecting.
    pub fn walk(&self) -> Result<Vec<(Vec<u8>, u32)>> {
        let mut out = Vec::new();
        self.walk_with(|path, ino| {
            out.push((path.to_vec(), ino));
            Ok(())
        })?;
        Ok(out)
    }

    /// [`Index::walk`] without collecting: calls `visit(path, ino)` for each entry, stops at the
    /// first error (from the index or from `visit`). Memory: O(inodes / 8 + depth).
    pub fn walk_with<F>(&self, mut visit: F) -> Result<()>
    where
        F: FnMut(&[u8], u32) -> Result<()>,
    {
        #[derive(Clone, Copy)]
        struct Frame<'a> {
            dir: u32,
            first: u32,
            count: u32,
            next: u32,
            path_len: usize,
            // The previous name (for the order check).
            prev: Option<&'a [u8]>,
        }
        const UNSEEN: u8 = 0;
        const OPEN: u8 = 1;
        const DONE: u8 = 2;

        let n = self.inode_count();
        let dirent_total = u64::from(self.spans[Section::Dirents as usize].count);
        // One byte per inode: bounded by the inode section, which is in the blob.
        let mut state = vec![UNSEEN; n as usize];
        let root = self.dir_inode(0)?;
        visit(b"", 0)?;
        let mut visited_dirents = u64::from(root.data_count);
        state[0] = OPEN;
        let mut path: Vec<u8> = Vec::new();
        let mut stack = vec![Frame {
            dir: 0,
            first: root.data_first,
            count: root.data_count,
            next: 0,
            path_len: 0,
            prev: None,
        }];
        while let Some(top) = stack.last_mut() {
            if top.next == top.count {
                state[top.dir as usize] = DONE;
                stack.pop();
                continue;
            }
            let frame = *top;
            top.next += 1;
            let (name, ino) = self.dirent(frame.first + frame.next)?;
            if let Some(prev) = frame.prev {
                check_order(frame.dir, prev, name)?;
            }
            top.prev = Some(name);
            path.truncate(frame.path_len);
            if frame.path_len > 0 {
                path.push(b'/');
            }
            path.extend_from_slice(name);
            if path.len() > PATH_MAX {
                return Err(FormatError::PathTooLong { len: path.len() });
            }
            let raw = self.raw_inode(ino)?;
            if raw.inode.kind == NodeKind::Dir {
                match state[ino as usize] {
                    OPEN => {
                        return Err(FormatError::DirectoryCycle {
                            dir: frame.dir,
                            ino,
                        })
                    }
                    DONE => return Err(FormatError::DirectoryLinkedTwice { ino }),
                    _ => {}
                }
                // Each directory is entered once; if their ranges still add up to more than
                // the table, some overlap, and the walk would not be linear.
                visited_dirents += u64::from(raw.data_count);
                if visited_dirents > dirent_total {
                    return Err(FormatError::DirentRangesOverlap {
                        dir: ino,
                        first: raw.data_first,
                        count: raw.data_count,
                    });
                }
                visit(&path, ino)?;
                state[ino as usize] = OPEN;
                stack.push(Frame {
                    dir: ino,
                    first: raw.data_first,
                    count: raw.data_count,
                    next: 0,
                    path_len: path.len(),
                    prev: None,
                });
            } else {
                visit(&path, ino)?;
            }
        }
        Ok(())
    }

    /// Checks the whole index, O(blob): every inode, every directory (names, order), every
    /// chunk (pack, sizes), every symlink and xattr; that inodes are numbered canonically
    /// (breadth-first from the root, entries in name order, a hardlinked inode at its first
    /// entry), which also proves every inode reachable and every directory linked once;
    /// that ranges tile their tables in inode order; directory parents; and link counts.
    ///
    /// After this, every accessor succeeds on every inode of the tree.
    pub fn validate(&self) -> Result<()> {
        let n = self.inode_count();
        // Pass 1: each inode alone, and the canonical layout of the ranges.
        let (mut dcur, mut ccur, mut xcur) = (0u64, 0u64, 0u64);
        for ino in 0..n {
            let raw = self.raw_inode(ino)?;
            match raw.inode.kind {
                NodeKind::Dir => tile(
                    ino,
                    Section::Dirents,
                    raw.data_first,
                    raw.data_count,
                    &mut dcur,
                )?,
                NodeKind::File => {
                    tile(
                        ino,
                        Section::Chunks,
                        raw.data_first,
                        raw.data_count,
                        &mut ccur,
                    )?;
                    for i in 0..raw.data_count {
                        self.chunk_of(&raw, i)?;
                    }
                }
                NodeKind::Symlink => {
                    self.symlink_target(ino)?;
                }
                _ => {}
            }
            tile(
                ino,
                Section::Xattrs,
                raw.xattr_first,
                raw.xattr_count,
                &mut xcur,
            )?;
            self.xattrs_of(&raw)?;
        }
        for (table, used) in [
            (Section::Dirents, dcur),
            (Section::Chunks, ccur),
            (Section::Xattrs, xcur),
        ] {
            let len = self.spans[table as usize].count;
            if used != u64::from(len) {
                return Err(FormatError::TableNotCovered { table, used, len });
            }
        }

        // Pass 2: the tree. In canonical numbering, breadth-first order is inode order, so
        // the directories are processed by walking the inode numbers; an inode not yet named
        // when its turn comes is unreachable.
        let mut seen = vec![false; n as usize];
        let mut links = vec![0u32; n as usize];
        seen[0] = true;
        let mut next: u32 = 1;
        let root = self.raw_inode(0)?;
        if root.parent != 0 {
            return Err(FormatError::BadParent {
                ino: 0,
                parent: root.parent,
                expected: 0,
            });
        }
        for dir in 0..n {
            if dir >= next {
                return Err(FormatError::UnreachableInodes {
                    unreachable: n - next,
                    count: n,
                });
            }
            let raw = self.raw_inode(dir)?;
            if raw.inode.kind != NodeKind::Dir {
                continue;
            }
            let mut subdirs: u64 = 0;
            for (_, child) in self.read_dir(dir)? {
                let c = self.raw_inode(child)?;
                let is_dir = c.inode.kind == NodeKind::Dir;
                if !seen[child as usize] {
                    if child != next {
                        return Err(FormatError::InodeOrder {
                            found: child,
                            expected: next,
                        });
                    }
                    seen[child as usize] = true;
                    next += 1;
                    if is_dir && c.parent != dir {
                        return Err(FormatError::BadParent {
                            ino: child,
                            parent: c.parent,
                            expected: dir,
                        });
                    }
                } else if is_dir {
                    return Err(if child == 0 || child == dir {
                        FormatError::DirectoryCycle { dir, ino: child }
                    } else {
                        FormatError::DirectoryLinkedTwice { ino: child }
                    });
                }
                links[child as usize] = links[child as usize].saturating_add(1);
                if is_dir {
                    subdirs += 1;
                }
            }
            if u64::from(raw.inode.nlink) != 2 + subdirs {
                return Err(FormatError::BadNlink {
                    ino: dir,
                    nlink: raw.inode.nlink,
                    expected: 2 + subdirs,
                });
            }
        }
        if next != n {
            return Err(FormatError::UnreachableInodes {
                unreachable: n - next,
                count: n,
            });
        }
        for ino in 0..n {
            let raw = self.raw_inode(ino)?;
            if raw.inode.kind != NodeKind::Dir && raw.inode.nlink != links[ino as usize] {
                return Err(FormatError::BadNlink {
                    ino,
                    nlink: raw.inode.nlink,
                    expected: u64::from(links[ino as usize]),
                });
            }
        }
        Ok(())
    }

    // --- internals ---

    fn section_bytes(&self, s: Section) -> &[u8] {
        let span = self.spans[s as usize];
        let len = span.count as usize * s.entry_size() as usize;
        self.bytes
            .get(span.offset..span.offset + len)
            .unwrap_or_default()
    }

    /// Record `i` of a section, `None` past its end.
    fn record<const N: usize>(&self, s: Section, i: u32) -> Option<&[u8; N]> {
        let span = self.spans[s as usize];
        if i >= span.count {
            return None;
        }
        // No overflow: i < count and offset + count * N <= blob length (checked by open).
        let start = span.offset + i as usize * N;
        self.bytes.get(start..start + N)?.try_into().ok()
    }

    fn heap(&self, what: &'static str, offset: u32, len: u32) -> Result<&[u8]> {
        let heap = self.section_bytes(Section::Heap);
        let end = u64::from(offset) + u64::from(len);
        if end > heap.len() as u64 {
            return Err(FormatError::HeapOutOfBounds {
                what,
                offset,
                len,
                heap_len: heap.len() as u32,
            });
        }
        Ok(&heap[offset as usize..end as usize])
    }

    fn raw_inode(&self, ino: u32) -> Result<RawInode> {
        let count = self.inode_count();
        let b = self
            .record::<{ InodeV1::SIZE }>(Section::Inodes, ino)
            .ok_or(FormatError::InodeOutOfRange { ino, count })?;
        let r = InodeV1::decode(b);
        let kind =
            NodeKind::from_u8(r.kind).ok_or(FormatError::BadInodeKind { ino, kind: r.kind })?;
        if r.reserved != 0 {
            return Err(FormatError::ReservedNotZero {
                record: "inode",
                index: u64::from(ino),
                value: u64::from(r.reserved),
            });
        }
        let mode = u32::from(r.mode);
        if mode & !MODE_MASK != 0 {
            return Err(FormatError::BadMode { ino, mode });
        }
        if r.mtime_nsec >= 1_000_000_000 {
            return Err(FormatError::BadNanoseconds {
                ino,
                nsec: r.mtime_nsec,
            });
        }
        let zero = |field: &'static str, value: u64| {
            if value == 0 {
                Ok(())
            } else {
                Err(FormatError::FieldNotZero {
                    ino,
                    kind,
                    field,
                    value,
                })
            }
        };
        if kind == NodeKind::Dir {
            if r.parent >= count {
                return Err(FormatError::InodeOutOfRange {
                    ino: r.parent,
                    count,
                });
            }
        } else {
            zero("parent", u64::from(r.parent))?;
        }
        if !kind.is_device() {
            zero("rdev", r.rdev)?;
        }
        if !matches!(kind, NodeKind::File | NodeKind::Symlink) {
            zero("size", r.size)?;
        }
        if !matches!(kind, NodeKind::Dir | NodeKind::File | NodeKind::Symlink) {
            zero("data_first", u64::from(r.data_first))?;
            zero("data_count", u64::from(r.data_count))?;
        }
        // Empty ranges start at 0: one encoding per tree.
        let data_table = match kind {
            NodeKind::Dir => Section::Dirents,
            NodeKind::File => Section::Chunks,
            _ => Section::Heap,
        };
        for (table, first, n) in [
            (data_table, r.data_first, r.data_count),
            (Section::Xattrs, r.xattr_first, r.xattr_count),
        ] {
            if n == 0 && first != 0 {
                return Err(FormatError::EmptyRangeOffset { ino, table, first });
            }
        }
        let in_table = |table: Section, first: u32, n: u32| {
            let len = self.spans[table as usize].count;
            if u64::from(first) + u64::from(n) > u64::from(len) {
                Err(FormatError::RangeOutOfBounds {
                    ino,
                    table,
                    first,
                    count: n,
                    len,
                })
            } else {
                Ok(())
            }
        };
        match kind {
            NodeKind::Dir => in_table(Section::Dirents, r.data_first, r.data_count)?,
            NodeKind::File => {
                in_table(Section::Chunks, r.data_first, r.data_count)?;
                let expected = expected_chunk_count(r.size, self.chunk_size);
                if u64::from(r.data_count) != expected {
                    return Err(FormatError::ChunkCountMismatch {
                        ino,
                        count: r.data_count,
                        size: r.size,
                        expected,
                        chunk_size: self.chunk_size,
                    });
                }
            }
            NodeKind::Symlink => {
                if r.size != u64::from(r.data_count) {
                    return Err(FormatError::SymlinkSizeMismatch {
                        ino,
                        size: r.size,
                        len: r.data_count,
                    });
                }
                self.heap("symlink target", r.data_first, r.data_count)?;
            }
            _ => {}
        }
        in_table(Section::Xattrs, r.xattr_first, r.xattr_count)?;
        Ok(RawInode {
            inode: Inode {
                ino,
                kind,
                mode,
                uid: r.uid,
                gid: r.gid,
                nlink: r.nlink,
                mtime: r.mtime,
                mtime_nsec: r.mtime_nsec,
                size: r.size,
                rdev: r.rdev,
            },
            parent: r.parent,
            data_first: r.data_first,
            data_count: r.data_count,
            xattr_first: r.xattr_first,
            xattr_count: r.xattr_count,
        })
    }

    fn dir_inode(&self, ino: u32) -> Result<RawInode> {
        let raw = self.raw_inode(ino)?;
        if raw.inode.kind != NodeKind::Dir {
            return Err(FormatError::NotADirectory {
                ino,
                kind: raw.inode.kind,
            });
        }
        Ok(raw)
    }

    fn file_inode(&self, ino: u32) -> Result<RawInode> {
        let raw = self.raw_inode(ino)?;
        if raw.inode.kind != NodeKind::File {
            return Err(FormatError::NotAFile {
                ino,
                kind: raw.inode.kind,
            });
        }
        Ok(raw)
    }

    /// Dirent `index` of the table: its name (checked) and inode (in range).
    fn dirent(&self, index: u32) -> Result<(&[u8], u32)> {
        let len = self.spans[Section::Dirents as usize].count;
        let b = self
            .record::<{ DirentV1::SIZE }>(Section::Dirents, index)
            .ok_or(FormatError::RangeOutOfBounds {
                ino: u32::MAX,
                table: Section::Dirents,
                first: index,
                count: 1,
                len,
            })?;
        let d = DirentV1::decode(b);
        let name = self.heap("dirent name", d.name_offset, d.name_len)?;
        check_name(name).map_err(|reason| invalid_name(name, reason))?;
        let count = self.inode_count();
        if d.ino >= count {
            return Err(FormatError::InodeOutOfRange { ino: d.ino, count });
        }
        Ok((name, d.ino))
    }

    fn chunk_of(&self, raw: &RawInode, index: u32) -> Result<ChunkRef> {
        let ino = raw.inode.ino;
        if index >= raw.data_count {
            return Err(FormatError::ChunkOutOfRange {
                ino,
                chunk: index,
                count: raw.data_count,
            });
        }
        // In the table: raw_inode checked first + count against it.
        let at = raw.data_first + index;
        let len = self.spans[Section::Chunks as usize].count;
        let b = self
            .record::<{ ChunkV1::SIZE }>(Section::Chunks, at)
            .ok_or(FormatError::RangeOutOfBounds {
                ino,
                table: Section::Chunks,
                first: at,
                count: 1,
                len,
            })?;
        let r = ChunkV1::decode(b);
        let compression = Compression::from_u8(r.compression).ok_or(FormatError::BadChunk {
            ino,
            chunk: index,
            problem: ChunkProblem::UnknownCompression {
                value: r.compression,
            },
        })?;
        if r.reserved != [0; 3] {
            return Err(FormatError::ReservedNotZero {
                record: "chunk",
                index: u64::from(at),
                value: u64::from(u32::from_le_bytes([
                    r.reserved[0],
                    r.reserved[1],
                    r.reserved[2],
                    0,
                ])),
            });
        }
        let c = ChunkRef {
            digest: r.digest,
            pack: r.pack,
            compression,
            offset: r.offset,
            compressed_size: r.compressed_size,
            uncompressed_size: r.uncompressed_size,
        };
        check_chunk_shape(
            &c,
            expected_chunk_len(raw.inode.size, self.chunk_size, index),
        )
        .map_err(|problem| FormatError::BadChunk {
            ino,
            chunk: index,
            problem,
        })?;
        let packs = self.spans[Section::Packs as usize].count;
        let (_, pack_size) = self.pack(c.pack).ok_or(FormatError::ChunkPackOutOfRange {
            ino,
            chunk: index,
            pack: c.pack,
            packs,
        })?;
        let end = c.offset.checked_add(u64::from(c.compressed_size));
        if end.is_none_or(|end| end > pack_size) {
            return Err(FormatError::ChunkBeyondPack {
                ino,
                chunk: index,
                pack: c.pack,
                end: end.unwrap_or(u64::MAX),
                pack_size,
            });
        }
        Ok(c)
    }

    fn xattrs_of(&self, raw: &RawInode) -> Result<Vec<(&[u8], &[u8])>> {
        let ino = raw.inode.ino;
        let len = self.spans[Section::Xattrs as usize].count;
        // Bounded: the range was checked against the xattr table, which is in the blob.
        let mut out: Vec<(&[u8], &[u8])> = Vec::with_capacity(raw.xattr_count as usize);
        for i in 0..raw.xattr_count {
            let at = raw.xattr_first + i;
            let b = self
                .record::<{ XattrV1::SIZE }>(Section::Xattrs, at)
                .ok_or(FormatError::RangeOutOfBounds {
                    ino,
                    table: Section::Xattrs,
                    first: at,
                    count: 1,
                    len,
                })?;
            let x = XattrV1::decode(b);
            let name = self.heap("xattr name", x.name_offset, x.name_len)?;
            check_xattr_name(name).map_err(|reason| FormatError::InvalidXattrName {
                name: cut(name),
                reason,
            })?;
            if x.value_len as usize > XATTR_VALUE_MAX {
                return Err(FormatError::XattrValueTooLarge {
                    name: name.to_vec(),
                    len: u64::from(x.value_len),
                });
            }
            let value = self.heap("xattr value", x.value_offset, x.value_len)?;
            if let Some(&(prev, _)) = out.last() {
                match prev.cmp(name) {
                    Ordering::Less => {}
                    Ordering::Equal => {
                        return Err(FormatError::DuplicateXattr {
                            ino,
                            name: name.to_vec(),
                        })
                    }
                    Ordering::Greater => {
                        return Err(FormatError::XattrsNotSorted {
                            ino,
                            prev: prev.to_vec(),
                            name: name.to_vec(),
                        })
                    }
                }
            }
            out.push((name, value));
        }
        Ok(out)
    }
}

/// Entries must be strictly increasing by raw bytes.
fn check_order(dir: u32, prev: &[u8], name: &[u8]) -> Result<()> {
    match prev.cmp(name) {
        Ordering::Less => Ok(()),
        Ordering::Equal => Err(FormatError::DuplicateEntry {
            dir,
            name: name.to_vec(),
        }),
        Ordering::Greater => Err(FormatError::DirentsNotSorted {
            dir,
            prev: prev.to_vec(),
            name: name.to_vec(),
        }),
    }
}

/// Canonical layout: non-empty ranges follow each other in inode order without gaps.
fn tile(ino: u32, table: Section, first: u32, count: u32, cursor: &mut u64) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    if u64::from(first) != *cursor {
        return Err(FormatError::NotCanonical {
            ino,
            table,
            first,
            expected: u32::try_from(*cursor).unwrap_or(u32::MAX),
        });
    }
    *cursor += u64::from(count);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{reseal, SECTION_TABLE_OFFSET};
    use crate::testutil::*;
    use crate::{IndexBuilder, NodeMeta};

    /// Root with files `a` (1, 10 bytes, two xattrs) and `b` (2, one chunk and a byte), and
    /// symlink `s` (3) -> `a`.
    fn small() -> Vec<u8> {
        let mut b = builder();
        let mut off = 0;
        let mut a = file(10);
        a.xattrs = vec![
            (b"user.one".to_vec(), b"1".to_vec()),
            (b"user.two".to_vec(), b"2".to_vec()),
        ];
        b.add(b"a", a, raw_chunks(10, 1, &mut off)).unwrap();
        add_file(&mut b, b"b", u64::from(CS) + 1, &mut off);
        let mut s = NodeMeta::new(NodeKind::Symlink, 0o777);
        s.symlink_target = b"a".to_vec();
        b.add(b"s", s, vec![]).unwrap();
        b.finish().unwrap()
    }

    /// Root with directories `a` (1) and `c` (2), `a/b` (3), and file `a/b/f` (4).
    fn dirs() -> Vec<u8> {
        let mut b = builder();
        for d in [&b"a"[..], b"c", b"a/b"] {
            b.add(d, dir(), vec![]).unwrap();
        }
        b.add(b"a/b/f", file(0), vec![]).unwrap();
        b.finish().unwrap()
    }

    /// Byte offset of field `field` of record `i` of section `s`.
    fn at(blob: &[u8], s: Section, i: u32, field: usize) -> usize {
        record_at(blob, s, i) + field
    }

    /// Overwrites field `field` of record `i` of section `s` and reseals.
    fn set(blob: &mut [u8], s: Section, i: u32, field: usize, bytes: &[u8]) {
        let off = at(blob, s, i, field);
        patch(blob, off, bytes);
    }

    fn desc(s: Section) -> usize {
        SECTION_TABLE_OFFSET + s as usize * 16
    }

    fn opened(blob: Vec<u8>) -> Index {
        Index::open(blob).unwrap()
    }

    #[test]
    fn valid_blobs_open_and_validate() {
        for blob in [small(), dirs(), builder().finish().unwrap()] {
            let index = opened(blob);
            index.validate().unwrap();
            index.walk().unwrap();
        }
    }

    #[test]
    fn a_split_index_reads_as_a_tree_then_whole_with_its_own_digests_only() {
        let index = opened(small());
        let (tree, digests) = index.split_digests().unwrap();
        // Three chunk records (a: 1, b: 2); their digests are gone from the tree.
        assert_eq!(digests.len(), 3 * 32);
        assert_eq!(&digests[..32], &index.chunk(1, 0).unwrap().digest[..]);
        assert_eq!(tree.len(), index.as_bytes().len());
        assert!(matches!(
            Index::open(tree.clone()).unwrap_err(),
            FormatError::ChecksumMismatch { .. }
        ));
        // The tree: all but chunks, as the whole index; validate passes (it checks records,
        // not digests); no chunk is handed out with a zero digest.
        let t = Index::open_tree(tree).unwrap();
        assert!(t.is_tree_only());
        t.validate().unwrap();
        assert_eq!(t.walk().unwrap(), index.walk().unwrap());
        assert_eq!(t.lookup(0, b"b").unwrap(), Some(2));
        assert_eq!(t.inode(2).unwrap().size, u64::from(CS) + 1);
        assert_eq!(t.xattrs(1).unwrap(), index.xattrs(1).unwrap());
        assert!(matches!(t.chunk(2, 0), Err(FormatError::DigestsPending)));
        assert!(matches!(t.chunks(1), Err(FormatError::DigestsPending)));
        assert!(matches!(
            t.split_digests(),
            Err(FormatError::DigestsPending)
        ));
        // Whole again: the same bytes.
        let whole = t.with_digests(&digests).unwrap();
        assert_eq!(whole.as_bytes(), index.as_bytes());
        assert_eq!(whole.chunks(2).unwrap(), index.chunks(2).unwrap());
        // Digests of another index, or reordered, or cut: refused.
        let mut swapped = digests.clone();
        swapped[..32].copy_from_slice(&digests[64..]);
        swapped[64..].copy_from_slice(&digests[..32]);
        assert_ne!(swapped, digests);
        assert!(matches!(
            t.with_digests(&swapped).unwrap_err(),
            FormatError::ChecksumMismatch { .. }
        ));
        assert_eq!(
            t.with_digests(&digests[..64]).unwrap_err().to_string(),
            "digest table of 64 bytes; the index's chunk records need 96"
        );
    }

    #[test]
    fn bad_magic() {
        let mut blob = small();
        blob[..8].copy_from_slice(b"PRNTIDX9");
        assert_eq!(
            open_err(blob),
            "bad magic 0x50524e5449445839 (expected \"PRNTIDX1\")"
        );
        assert_eq!(
            open_err(b"\x89PNG\r\n\x1a\n".to_vec()),
            "bad magic 0x89504e470d0a1a0a (expected \"PRNTIDX1\")"
        );
    }

    #[test]
    fn unsupported_version() {
        let mut blob = small();
        patch(&mut blob, 8, &2u32.to_le_bytes());
        assert_eq!(
            open_err(blob),
            "unsupported index version 2 (this build reads version 1)"
        );
        let mut blob = small();
        patch(&mut blob, 8, &0u32.to_le_bytes());
        assert_eq!(
            open_err(blob),
            "unsupported index version 0 (this build reads version 1)"
        );
    }

    #[test]
    fn unknown_flags() {
        let mut blob = small();
        patch(&mut blob, 12, &0x8000_0010u32.to_le_bytes());
        assert_eq!(open_err(blob), "unknown index flags 0x80000010");
    }

    #[test]
    fn bad_header_size_and_chunk_size() {
        let mut blob = small();
        patch(&mut blob, 16, &256u32.to_le_bytes());
        assert_eq!(
            open_err(blob),
            "header size 256 does not match version 1 (208)"
        );
        for cs in [0u32, 1, 4095, 12288, 1 << 27, u32::MAX] {
            let mut blob = small();
            patch(&mut blob, 20, &cs.to_le_bytes());
            assert_eq!(
                open_err(blob),
                format!("invalid chunk size {cs}: must be a power of two in 4096..=67108864")
            );
        }
    }

    #[test]
    fn truncated_blob() {
        let blob = small();
        let len = blob.len();
        assert_eq!(open_err(vec![]), "truncated blob: need 208 bytes, have 0");
        assert_eq!(
            open_err(blob[..8].to_vec()),
            "truncated blob: need 208 bytes, have 8"
        );
        assert_eq!(
            open_err(blob[..100].to_vec()),
            "truncated blob: need 208 bytes, have 100"
        );
        assert_eq!(
            open_err(blob[..len - 1].to_vec()),
            format!("truncated blob: need {len} bytes, have {}", len - 1)
        );
        let mut longer = blob.clone();
        longer.push(0);
        assert_eq!(
            open_err(longer),
            format!("blob has {} bytes but its header says {len}", len + 1)
        );
    }

    #[test]
    fn checksum_mismatch() {
        let mut blob = small();
        let stored = blob[176..208].to_vec();
        let (heap, _) = section(&blob, Section::Heap);
        blob[heap] ^= 0x20; // "a" -> "A": still a valid name, only the checksum can tell
        let computed = compute_checksum(&blob).unwrap();
        assert_eq!(
            open_err(blob),
            format!(
                "checksum mismatch: header says blake3:{}, blob hashes to blake3:{}",
                crate::error::Hex(&stored),
                crate::error::Hex(&computed)
            )
        );
    }

    #[test]
    fn sections_out_of_bounds_or_overlapping() {
        let base = small();
        let len = base.len();
        let (inodes, _) = section(&base, Section::Inodes);

        let mut blob = base.clone();
        patch(&mut blob, desc(Section::Inodes) + 8, &1000u32.to_le_bytes());
        assert_eq!(
            open_err(blob),
            format!("section inodes at {inodes}+64000 is out of bounds of the {len}-byte blob")
        );
        // An offset so large that offset + length overflows.
        let mut blob = base.clone();
        let huge = u64::MAX - 7;
        patch(&mut blob, desc(Section::Heap), &huge.to_le_bytes());
        assert!(open_err(blob).starts_with(&format!("section heap at {huge}+")));
        let mut blob = base.clone();
        patch(&mut blob, desc(Section::Packs), &8u64.to_le_bytes());
        assert_eq!(
            open_err(blob),
            "section packs at offset 8 overlaps the 208-byte header"
        );
        let mut blob = base.clone();
        patch(&mut blob, desc(Section::Config), &0u64.to_le_bytes());
        assert_eq!(
            open_err(blob),
            "section config at offset 0 overlaps the 208-byte header"
        );
        let mut blob = base.clone();
        patch(
            &mut blob,
            desc(Section::Dirents),
            &(inodes as u64).to_le_bytes(),
        );
        assert_eq!(open_err(blob), "sections dirents and inodes overlap");
        let mut blob = base.clone();
        patch(
            &mut blob,
            desc(Section::Dirents),
            &(inodes as u64 + 4).to_le_bytes(),
        );
        assert_eq!(
            open_err(blob),
            format!(
                "section dirents at offset {} is not 8-byte aligned",
                inodes + 4
            )
        );
        let mut blob = base.clone();
        patch(&mut blob, desc(Section::Chunks) + 12, &64u32.to_le_bytes());
        assert_eq!(open_err(blob), "section chunks: entry size 64, expected 56");
        let mut blob = base.clone();
        patch(&mut blob, desc(Section::Inodes) + 8, &0u32.to_le_bytes());
        assert_eq!(
            open_err(blob),
            "index has no inodes (inode 0 must be the root directory)"
        );
    }

    #[test]
    fn root_must_be_a_directory() {
        let mut blob = builder().finish().unwrap();
        set(&mut blob, Section::Inodes, 0, 0, &[6]);
        assert_eq!(open_err(blob), "the root is a fifo, not a directory");
    }

    #[test]
    fn inode_out_of_range() {
        let index = opened(small());
        assert_eq!(
            index.inode(4).unwrap_err().to_string(),
            "inode 4 out of range (index has 4 inodes)"
        );
        assert_eq!(
            index.inode(u32::MAX).unwrap_err().to_string(),
            "inode 4294967295 out of range (index has 4 inodes)"
        );
        // A dirent naming an inode past the end.
        let mut blob = small();
        set(&mut blob, Section::Dirents, 1, 8, &77u32.to_le_bytes());
        let index = opened(blob);
        let want = "inode 77 out of range (index has 4 inodes)";
        assert_eq!(index.read_dir(0).unwrap_err().to_string(), want);
        assert_eq!(index.walk().unwrap_err().to_string(), want);
        assert_eq!(index.validate().unwrap_err().to_string(), want);
        // A directory's parent past the end.
        let mut blob = small();
        set(&mut blob, Section::Inodes, 0, 28, &9u32.to_le_bytes());
        assert_eq!(open_err(blob), "inode 9 out of range (index has 4 inodes)");
    }

    #[test]
    fn bad_inode_fields() {
        let check = |field: usize, bytes: &[u8], want: &str| {
            let mut blob = small();
            set(&mut blob, Section::Inodes, 1, field, bytes);
            assert_eq!(opened(blob).inode(1).unwrap_err().to_string(), want);
        };
        check(0, &[0], "inode 1: unknown kind 0x00");
        check(0, &[8], "inode 1: unknown kind 0x08");
        check(1, &[1], "inode 1: reserved bytes are not zero (0x1)");
        check(
            2,
            &0o10000u16.to_le_bytes(),
            "inode 1: mode 0o10000 has bits outside 0o7777",
        );
        check(
            24,
            &1_000_000_000u32.to_le_bytes(),
            "inode 1: mtime nanoseconds 1000000000 out of range (max 999999999)",
        );
        check(
            28,
            &1u32.to_le_bytes(),
            "inode 1: parent must be 0 for a regular file, found 0x1",
        );
        check(
            40,
            &5u64.to_le_bytes(),
            "inode 1: rdev must be 0 for a regular file, found 0x5",
        );
        let mut blob = small();
        set(&mut blob, Section::Inodes, 2, 56, &1u32.to_le_bytes());
        assert_eq!(
            opened(blob).inode(2).unwrap_err().to_string(),
            "inode 2: empty xattrs range starts at 1, must start at 0"
        );
        // A fifo with a size.
        let mut b = builder();
        b.add(b"p", NodeMeta::new(NodeKind::Fifo, 0o644), vec![])
            .unwrap();
        let mut blob = b.finish().unwrap();
        set(&mut blob, Section::Inodes, 1, 32, &3u64.to_le_bytes());
        assert_eq!(
            opened(blob).inode(1).unwrap_err().to_string(),
            "inode 1: size must be 0 for a fifo, found 0x3"
        );
    }

    #[test]
    fn ranges_out_of_bounds() {
        let mut blob = small();
        set(&mut blob, Section::Inodes, 0, 52, &4u32.to_le_bytes());
        // The root is checked by open.
        assert_eq!(
            open_err(blob),
            "inode 0: dirents 0+4 out of bounds (table has 3)"
        );
        let mut blob = small();
        set(&mut blob, Section::Inodes, 1, 60, &3u32.to_le_bytes());
        assert_eq!(
            opened(blob).xattrs(1).unwrap_err().to_string(),
            "inode 1: xattrs 0+3 out of bounds (table has 2)"
        );
        let mut blob = small();
        set(&mut blob, Section::Inodes, 2, 48, &u32::MAX.to_le_bytes());
        assert_eq!(
            opened(blob).chunks(2).unwrap_err().to_string(),
            "inode 2: chunks 4294967295+2 out of bounds (table has 3)"
        );
    }

    #[test]
    fn dirent_name_out_of_heap() {
        let blob = small();
        let (_, heap_len) = section(&blob, Section::Heap);
        let mut bad = blob.clone();
        set(&mut bad, Section::Dirents, 0, 0, &1000u32.to_le_bytes());
        let index = opened(bad);
        let want = format!("dirent name at heap 1000+1 out of bounds (heap is {heap_len} bytes)");
        assert_eq!(index.read_dir(0).unwrap_err().to_string(), want);
        assert_eq!(index.lookup(0, b"a").unwrap_err().to_string(), want);
        assert_eq!(index.walk().unwrap_err().to_string(), want);
        // Offset + length past u32::MAX.
        let mut bad = blob.clone();
        set(&mut bad, Section::Dirents, 0, 4, &u32::MAX.to_le_bytes());
        assert_eq!(
            opened(bad).read_dir(0).unwrap_err().to_string(),
            format!("dirent name at heap 0+4294967295 out of bounds (heap is {heap_len} bytes)")
        );
    }

    #[test]
    fn entries_not_sorted_or_duplicate() {
        let blob = small();
        let a = blob[at(&blob, Section::Dirents, 0, 0)..][..12].to_vec();
        let b = blob[at(&blob, Section::Dirents, 1, 0)..][..12].to_vec();
        let mut swapped = blob.clone();
        swapped[at(&blob, Section::Dirents, 0, 0)..][..12].copy_from_slice(&b);
        set(&mut swapped, Section::Dirents, 1, 0, &a);
        let index = opened(swapped);
        let want = "directory 0: entries not sorted (\"b\" before \"a\")";
        assert_eq!(index.read_dir(0).unwrap_err().to_string(), want);
        assert_eq!(index.walk().unwrap_err().to_string(), want);
        assert_eq!(index.validate().unwrap_err().to_string(), want);
        // Lookups still end (with possibly wrong answers), never panic.
        for name in [&b"a"[..], b"b", b"s", b"zz"] {
            index.lookup(0, name).unwrap();
        }

        let mut dup = blob.clone();
        set(&mut dup, Section::Dirents, 1, 0, &a[..8]);
        let index = opened(dup);
        let want = "directory 0: duplicate entry \"a\"";
        assert_eq!(index.read_dir(0).unwrap_err().to_string(), want);
        assert_eq!(index.walk().unwrap_err().to_string(), want);
    }

    #[test]
    fn invalid_names() {
        let blob = small();
        let (heap, _) = section(&blob, Section::Heap);
        let name_at = at(&blob, Section::Dirents, 1, 0); // "b"
        let b_off = u32::from_le_bytes(blob[name_at..name_at + 4].try_into().unwrap()) as usize;
        // The heap holds "a" "b" ...: point `b`'s entry at 2 bytes starting at "b".
        let cases: Vec<(&[u8], u32, &str)> = vec![
            (b"b/", 2, "invalid name \"b/\": contains '/'"),
            (b"b\0", 2, "invalid name \"b\\x00\": contains NUL"),
            (b".", 1, "invalid name \".\": is . or .."),
            (b"..", 2, "invalid name \"..\": is . or .."),
            (b"b", 0, "invalid name \"\": empty"),
        ];
        for (bytes, len, want) in cases {
            let mut bad = blob.clone();
            bad[heap + b_off..][..bytes.len()].copy_from_slice(bytes);
            patch(&mut bad, name_at + 4, &len.to_le_bytes());
            let index = opened(bad);
            assert_eq!(index.read_dir(0).unwrap_err().to_string(), want);
            assert_eq!(index.walk().unwrap_err().to_string(), want);
        }
        // Longer than NAME_MAX.
        let mut b = builder();
        let mut m = dir();
        m.xattrs = vec![(vec![b'x'; 255], vec![b'y'; 10])];
        b.set_root(m).unwrap();
        b.add(b"n", dir(), vec![]).unwrap();
        let mut blob = b.finish().unwrap();
        let name_at = at(&blob, Section::Dirents, 0, 0);
        // "n" is first in the heap, then 255 x's and 10 y's: a 256-byte name.
        patch(&mut blob, name_at + 4, &256u32.to_le_bytes());
        assert!(opened(blob)
            .read_dir(0)
            .unwrap_err()
            .to_string()
            .ends_with("\": longer than 255 bytes"));
    }

    #[test]
    fn chunk_pack_index_out_of_range() {
        let mut blob = small();
        set(&mut blob, Section::Chunks, 0, 40, &5u32.to_le_bytes());
        let index = opened(blob);
        let want = "inode 1 chunk 0: pack index 5 out of range (1 packs)";
        assert_eq!(index.chunks(1).unwrap_err().to_string(), want);
        assert_eq!(index.chunk(1, 0).unwrap_err().to_string(), want);
        assert_eq!(index.validate().unwrap_err().to_string(), want);
        let mut blob = small();
        set(
            &mut blob,
            Section::Chunks,
            0,
            32,
            &(PACK_SIZE - 4).to_le_bytes(),
        );
        assert_eq!(
            opened(blob).chunk(1, 0).unwrap_err().to_string(),
            format!(
                "inode 1 chunk 0: bytes up to {} are past the end of pack 0 ({PACK_SIZE} bytes)",
                PACK_SIZE + 6
            )
        );
        let mut blob = small();
        set(&mut blob, Section::Chunks, 0, 32, &u64::MAX.to_le_bytes());
        assert_eq!(
            opened(blob).chunk(1, 0).unwrap_err().to_string(),
            format!(
                "inode 1 chunk 0: bytes up to {} are past the end of pack 0 ({PACK_SIZE} bytes)",
                u64::MAX
            )
        );
    }

    #[test]
    fn chunks_inconsistent_with_file_size() {
        // Size says 2 chunks, the file has 1.
        let mut blob = small();
        set(&mut blob, Section::Inodes, 1, 32, &5000u64.to_le_bytes());
        let index = opened(blob);
        let want = "inode 1: 1 chunks for 5000 bytes, expected 2 at chunk size 4096";
        assert_eq!(index.inode(1).unwrap_err().to_string(), want);
        assert_eq!(index.chunks(1).unwrap_err().to_string(), want);
        // Right count, wrong sizes: the sum of the chunks must be the file size.
        let mut blob = small();
        set(&mut blob, Section::Inodes, 1, 32, &11u64.to_le_bytes());
        assert_eq!(
            opened(blob).chunks(1).unwrap_err().to_string(),
            "inode 1 chunk 0: uncompressed size 10, expected 11"
        );
        // Every chunk but the last is a full chunk.
        let mut blob = small();
        set(&mut blob, Section::Chunks, 1, 48, &4000u32.to_le_bytes());
        assert_eq!(
            opened(blob).chunks(2).unwrap_err().to_string(),
            "inode 2 chunk 0: uncompressed size 4000, expected 4096"
        );
        // A raw chunk whose stored size differs; an unknown compression; reserved bytes.
        let mut blob = small();
        set(&mut blob, Section::Chunks, 0, 44, &9u32.to_le_bytes());
        assert_eq!(
            opened(blob).chunks(1).unwrap_err().to_string(),
            "inode 1 chunk 0: stored raw in 9 bytes but holds 10"
        );
        let mut blob = small();
        set(&mut blob, Section::Chunks, 0, 52, &[3]);
        assert_eq!(
            opened(blob).chunks(1).unwrap_err().to_string(),
            "inode 1 chunk 0: unknown compression 0x03"
        );
        let mut blob = small();
        set(&mut blob, Section::Chunks, 0, 53, &[0, 0, 1]);
        assert_eq!(
            opened(blob).chunks(1).unwrap_err().to_string(),
            "chunk 0: reserved bytes are not zero (0x10000)"
        );
    }

    #[test]
    fn symlink_and_xattr_errors() {
        let blob = small();
        let mut bad = blob.clone();
        set(&mut bad, Section::Inodes, 3, 32, &2u64.to_le_bytes());
        assert_eq!(
            opened(bad).symlink_target(3).unwrap_err().to_string(),
            "inode 3: symlink size 2 but target is 1 bytes"
        );
        let (heap, _) = section(&blob, Section::Heap);
        let mut bad = blob.clone();
        patch(&mut bad, heap, b"\0"); // "a" is the heap's first string, and the target
        assert_eq!(
            opened(bad).symlink_target(3).unwrap_err().to_string(),
            "inode 3: invalid symlink target \"\\x00\": contains NUL"
        );
        let mut bad = blob.clone();
        set(&mut bad, Section::Inodes, 3, 48, &1000u32.to_le_bytes());
        assert!(opened(bad)
            .inode(3)
            .unwrap_err()
            .to_string()
            .starts_with("symlink target at heap 1000+1 out of bounds"));
        assert_eq!(
            opened(blob.clone())
                .symlink_target(1)
                .unwrap_err()
                .to_string(),
            "inode 1 is a regular file, not a symlink"
        );

        // Xattrs: swap the two records, then make them equal, then break a name.
        let x0 = blob[at(&blob, Section::Xattrs, 0, 0)..][..16].to_vec();
        let x1 = blob[at(&blob, Section::Xattrs, 1, 0)..][..16].to_vec();
        let mut bad = blob.clone();
        bad[at(&blob, Section::Xattrs, 0, 0)..][..16].copy_from_slice(&x1);
        set(&mut bad, Section::Xattrs, 1, 0, &x0);
        assert_eq!(
            opened(bad).xattrs(1).unwrap_err().to_string(),
            "inode 1: xattrs not sorted (\"user.two\" before \"user.one\")"
        );
        let mut bad = blob.clone();
        set(&mut bad, Section::Xattrs, 1, 0, &x0[..8]);
        assert_eq!(
            opened(bad).xattrs(1).unwrap_err().to_string(),
            "inode 1: duplicate xattr \"user.one\""
        );
        let mut bad = blob.clone();
        set(&mut bad, Section::Xattrs, 0, 4, &0u32.to_le_bytes());
        assert_eq!(
            opened(bad).xattrs(1).unwrap_err().to_string(),
            "invalid xattr name \"\": empty"
        );
        let mut bad = blob.clone();
        set(&mut bad, Section::Xattrs, 0, 12, &65537u32.to_le_bytes());
        assert_eq!(
            opened(bad).xattrs(1).unwrap_err().to_string(),
            "xattr \"user.one\": value of 65537 bytes exceeds 65536"
        );
        let mut bad = blob.clone();
        set(&mut bad, Section::Xattrs, 0, 8, &5000u32.to_le_bytes());
        assert!(opened(bad)
            .xattrs(1)
            .unwrap_err()
            .to_string()
            .starts_with("xattr value at heap 5000+1 out of bounds"));
    }

    #[test]
    fn wrong_kind_for_the_operation() {
        let index = opened(small());
        assert_eq!(
            index.read_dir(1).unwrap_err().to_string(),
            "inode 1 is a regular file, not a directory"
        );
        assert_eq!(
            index.lookup(3, b"x").unwrap_err().to_string(),
            "inode 3 is a symlink, not a directory"
        );
        assert_eq!(
            index.chunks(0).unwrap_err().to_string(),
            "inode 0 is a directory, not a regular file"
        );
    }

    #[test]
    fn directory_cycle_is_refused_not_followed() {
        // a/b/f -> a: an entry naming its grandparent.
        let blob = dirs();
        let mut bad = blob.clone();
        // Dirents in inode order: root (a, c), a (b), c (), b (f).
        set(&mut bad, Section::Dirents, 3, 8, &1u32.to_le_bytes());
        let index = opened(bad);
        assert_eq!(
            index.walk().unwrap_err().to_string(),
            "directory 3 links back to its ancestor 1 (cycle)"
        );
        assert_eq!(
            index.validate().unwrap_err().to_string(),
            "directory 1 is linked more than once"
        );
        // An entry naming the root, and a directory naming itself.
        let mut bad = blob.clone();
        set(&mut bad, Section::Dirents, 2, 8, &0u32.to_le_bytes());
        let index = opened(bad);
        assert_eq!(
            index.walk().unwrap_err().to_string(),
            "directory 1 links back to its ancestor 0 (cycle)"
        );
        assert_eq!(
            index.validate().unwrap_err().to_string(),
            "directory 1 links back to its ancestor 0 (cycle)"
        );
        let mut bad = blob.clone();
        set(&mut bad, Section::Dirents, 2, 8, &1u32.to_le_bytes());
        assert_eq!(
            opened(bad).walk().unwrap_err().to_string(),
            "directory 1 links back to its ancestor 1 (cycle)"
        );
    }

    #[test]
    fn directory_linked_twice_is_refused() {
        // c -> a: two entries name directory 1.
        let blob = dirs();
        let mut bad = blob.clone();
        set(&mut bad, Section::Dirents, 1, 8, &1u32.to_le_bytes());
        let index = opened(bad);
        assert_eq!(
            index.walk().unwrap_err().to_string(),
            "directory 1 is linked more than once"
        );
        assert_eq!(
            index.validate().unwrap_err().to_string(),
            "directory 1 is linked more than once"
        );
    }

    #[test]
    fn overlapping_dirent_ranges_keep_the_walk_linear() {
        // Directory c (2, empty) given root's entries: a walk would list a, c, a, c, ...
        let blob = dirs();
        let mut bad = blob.clone();
        set(&mut bad, Section::Inodes, 2, 52, &2u32.to_le_bytes());
        let index = opened(bad);
        assert_eq!(
            index.walk().unwrap_err().to_string(),
            "directory 2: entries 0+2 overlap another directory's"
        );
        assert_eq!(
            index.validate().unwrap_err().to_string(),
            "inode 2: dirents start at 0, canonical layout needs 3"
        );
        // Files shared between two directories' ranges: no cycle, but overlapping ranges.
        let mut b = builder();
        b.add(b"d", dir(), vec![]).unwrap();
        b.add(b"e", dir(), vec![]).unwrap();
        for f in [&b"d/f1"[..], b"d/f2", b"d/f3"] {
            b.add(f, file(0), vec![]).unwrap();
        }
        let blob = b.finish().unwrap();
        let mut bad = blob.clone();
        // e (2) lists d's three entries too.
        let d_first = at(&blob, Section::Inodes, 1, 48);
        let first = blob[d_first..d_first + 4].to_vec();
        bad[at(&blob, Section::Inodes, 2, 48)..][..4].copy_from_slice(&first);
        set(&mut bad, Section::Inodes, 2, 52, &3u32.to_le_bytes());
        let index = opened(bad);
        assert_eq!(
            index.walk().unwrap_err().to_string(),
            "directory 2: entries 2+3 overlap another directory's"
        );
        assert_eq!(
            index.validate().unwrap_err().to_string(),
            "inode 2: dirents start at 2, canonical layout needs 5"
        );
    }

    #[test]
    fn canonical_numbering_and_link_counts() {
        let blob = small();
        // a -> 2, b -> 1: numbered out of order.
        let mut bad = blob.clone();
        bad[at(&blob, Section::Dirents, 0, 8)..][..4].copy_from_slice(&2u32.to_le_bytes());
        set(&mut bad, Section::Dirents, 1, 8, &1u32.to_le_bytes());
        assert_eq!(
            validate_err(bad),
            "inode numbering is not canonical: found 2 where 1 comes next"
        );
        // s -> 1 as well: inode 3 unreachable.
        let mut bad = blob.clone();
        set(&mut bad, Section::Dirents, 2, 8, &1u32.to_le_bytes());
        assert_eq!(
            validate_err(bad),
            "1 of 4 inodes are unreachable from the root"
        );
        let mut bad = blob.clone();
        set(&mut bad, Section::Inodes, 1, 12, &5u32.to_le_bytes());
        assert_eq!(validate_err(bad), "inode 1: nlink 5, expected 1");
        let mut bad = blob.clone();
        set(&mut bad, Section::Inodes, 0, 12, &3u32.to_le_bytes());
        assert_eq!(validate_err(bad), "inode 0: nlink 3, expected 2");
        let mut bad = dirs();
        set(&mut bad, Section::Inodes, 3, 28, &2u32.to_le_bytes());
        assert_eq!(
            validate_err(bad),
            "directory 3: parent 2, but it is listed in 1"
        );
        let mut bad = dirs();
        set(&mut bad, Section::Inodes, 0, 28, &1u32.to_le_bytes());
        assert_eq!(
            validate_err(bad),
            "directory 0: parent 1, but it is listed in 0"
        );
    }

    #[test]
    fn ranges_must_tile_their_tables() {
        let blob = small();
        // b's chunks start at 0 (a's chunk) instead of 1: overlapping, and chunk 2 unused.
        let mut bad = blob.clone();
        set(&mut bad, Section::Inodes, 2, 48, &0u32.to_le_bytes());
        let index = opened(bad);
        assert_eq!(
            index.validate().unwrap_err().to_string(),
            "inode 2: chunks start at 0, canonical layout needs 1"
        );
        // An xattr record nobody references.
        let mut bad = blob.clone();
        set(&mut bad, Section::Inodes, 1, 60, &1u32.to_le_bytes());
        assert_eq!(validate_err(bad), "xattrs: 1 of 2 entries are referenced");
    }

    #[test]
    fn long_paths_are_refused_by_the_walk() {
        // 16 nested directories named with 254 bytes, then a file: a 4081-byte path.
        let mut b = builder();
        let name = vec![b'b'; 254];
        let mut path = Vec::new();
        for _ in 0..16 {
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            b.add(&path, dir(), vec![]).unwrap();
        }
        path.extend_from_slice(b"/x");
        b.add(&path, file(0), vec![]).unwrap();
        let blob = b.finish().unwrap();
        opened(blob.clone()).validate().unwrap();
        // The heap is "bbb...b" "x": a 255-byte name reads one byte into "x".
        let mut bad = blob.clone();
        for i in 0..16 {
            set(&mut bad, Section::Dirents, i, 4, &255u32.to_le_bytes());
        }
        assert_eq!(
            opened(bad).walk().unwrap_err().to_string(),
            "path of 4097 bytes exceeds 4095"
        );
    }

    #[test]
    fn reseal_is_what_open_checks() {
        let mut blob = small();
        blob[crate::layout::CHECKSUM_OFFSET] ^= 1;
        assert!(open_err(blob.clone()).starts_with("checksum mismatch"));
        reseal(&mut blob);
        opened(blob).validate().unwrap();
    }

    #[test]
    fn builder_output_covers_every_kind() {
        // Every kind survives open + validate (the accessor paths per kind).
        let mut b = IndexBuilder::new(CS);
        for (name, kind) in [
            (&b"c"[..], NodeKind::CharDevice),
            (b"b", NodeKind::BlockDevice),
            (b"f", NodeKind::Fifo),
            (b"s", NodeKind::Socket),
        ] {
            b.add(name, NodeMeta::new(kind, 0o600), vec![]).unwrap();
        }
        let index = opened(b.finish().unwrap());
        index.validate().unwrap();
        let kinds: Vec<NodeKind> = (1..5).map(|i| index.inode(i).unwrap().kind).collect();
        assert_eq!(
            kinds,
            vec![
                NodeKind::BlockDevice,
                NodeKind::CharDevice,
                NodeKind::Fifo,
                NodeKind::Socket
            ]
        );
    }
}
