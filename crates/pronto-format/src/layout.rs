//! On-disk records of index format version 1 (`docs/format.md` is the specification).
//!
//! All integers are little-endian. Every record has a fixed size (`SIZE`, asserted below) and is
//! encoded and decoded field by field at fixed offsets: no `unsafe`, no alignment assumptions.
//! A shipped layout is never edited: a change is a new version with new `*V2` types.
//!
//! ```text
//! 0      header (IndexHeaderV1, 208 bytes)
//! ...    sections, each 8-byte aligned, zero padding between them:
//!        packs (PackV1) | inodes (InodeV1) | dirents (DirentV1) | chunks (ChunkV1)
//!        | xattrs (XattrV1) | heap (bytes) | config (bytes)
//! ```

use std::fmt;

/// `magic` of every index blob, version 1 and later (the version field tells them apart).
pub const MAGIC: [u8; 8] = *b"PRNTIDX1";
/// The format version this crate writes and reads.
pub const VERSION: u32 = 1;
/// Flag bits version 1 knows: none. A blob with any bit set is refused.
pub const KNOWN_FLAGS: u32 = 0;
/// Size of [`IndexHeaderV1`].
pub const HEADER_SIZE: usize = 208;
/// Where the section table starts in the header.
pub const SECTION_TABLE_OFFSET: usize = 64;
/// Where the BLAKE3 checksum lives in the header (32 bytes, zeroed while hashing).
pub const CHECKSUM_OFFSET: usize = 176;
/// Every section starts at a multiple of this (so records could be mapped in place later).
pub const SECTION_ALIGN: u64 = 8;

/// Smallest chunk size a blob may declare.
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest chunk size a blob may declare (also the decompression cap).
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;
/// Longest file name (Linux `NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// Longest path from the root, without a leading `/` (Linux `PATH_MAX` less the NUL): deeper
/// trees cannot be unpacked by the full-pull path either.
pub const PATH_MAX: usize = 4095;
/// Longest symlink target (Linux `PATH_MAX` less the NUL).
pub const SYMLINK_MAX: usize = 4095;
/// Longest xattr name (Linux `XATTR_NAME_MAX`).
pub const XATTR_NAME_MAX: usize = 255;
/// Longest xattr value (Linux `XATTR_SIZE_MAX`).
pub const XATTR_VALUE_MAX: usize = 65536;
/// Permission bits an inode may carry: rwx for user/group/other, setuid, setgid, sticky.
pub const MODE_MASK: u32 = 0o7777;

/// The sections of an index, in the order of the section table (and of the blob).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Section {
    /// Pack blobs: [`PackV1`].
    Packs = 0,
    /// Inodes: [`InodeV1`]; the inode number is the record index, 0 is the root.
    Inodes = 1,
    /// Directory entries: [`DirentV1`].
    Dirents = 2,
    /// Chunk table: [`ChunkV1`].
    Chunks = 3,
    /// Extended attributes: [`XattrV1`].
    Xattrs = 4,
    /// Byte heap: names, symlink targets, xattr names and values.
    Heap = 5,
    /// The original OCI image config, raw bytes.
    Config = 6,
}

impl Section {
    /// Number of sections in a version 1 header.
    pub const COUNT: usize = 7;
    /// All sections, in table order.
    pub const ALL: [Section; Self::COUNT] = [
        Section::Packs,
        Section::Inodes,
        Section::Dirents,
        Section::Chunks,
        Section::Xattrs,
        Section::Heap,
        Section::Config,
    ];

    /// Size of one entry of this section in version 1 (1 for byte sections).
    pub const fn entry_size(self) -> u32 {
        match self {
            Section::Packs => PackV1::SIZE as u32,
            Section::Inodes => InodeV1::SIZE as u32,
            Section::Dirents => DirentV1::SIZE as u32,
            Section::Chunks => ChunkV1::SIZE as u32,
            Section::Xattrs => XattrV1::SIZE as u32,
            Section::Heap | Section::Config => 1,
        }
    }

    /// Lowercase name, as in error messages and the spec.
    pub const fn name(self) -> &'static str {
        match self {
            Section::Packs => "packs",
            Section::Inodes => "inodes",
            Section::Dirents => "dirents",
            Section::Chunks => "chunks",
            Section::Xattrs => "xattrs",
            Section::Heap => "heap",
            Section::Config => "config",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kind of an inode; the on-disk value is the discriminant (0 is never valid, so a zeroed
/// record is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum NodeKind {
    /// Directory: its entries are a range of the dirent table.
    Dir = 1,
    /// Regular file: its content is a range of the chunk table.
    File = 2,
    /// Symbolic link: its target is a range of the heap.
    Symlink = 3,
    /// Character device (`rdev`).
    CharDevice = 4,
    /// Block device (`rdev`).
    BlockDevice = 5,
    /// Named pipe.
    Fifo = 6,
    /// Unix socket.
    Socket = 7,
}

impl NodeKind {
    /// The kind for an on-disk value, `None` if unknown.
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => NodeKind::Dir,
            2 => NodeKind::File,
            3 => NodeKind::Symlink,
            4 => NodeKind::CharDevice,
            5 => NodeKind::BlockDevice,
            6 => NodeKind::Fifo,
            7 => NodeKind::Socket,
            _ => return None,
        })
    }

    /// Lowercase name for messages.
    pub const fn name(self) -> &'static str {
        match self {
            NodeKind::Dir => "directory",
            NodeKind::File => "regular file",
            NodeKind::Symlink => "symlink",
            NodeKind::CharDevice => "character device",
            NodeKind::BlockDevice => "block device",
            NodeKind::Fifo => "fifo",
            NodeKind::Socket => "socket",
        }
    }

    /// Whether `rdev` is meaningful for this kind.
    pub const fn is_device(self) -> bool {
        matches!(self, NodeKind::CharDevice | NodeKind::BlockDevice)
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// Little-endian field access at fixed offsets. Callers pass arrays of the record's exact size
// and constant offsets inside it, so the indexing below cannot fail.
fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}
fn bytes32_at(b: &[u8], off: usize) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[off..off + 32]);
    a
}

/// One entry of the section table, 16 bytes.
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0 | 8 | `offset`: byte offset of the section from the start of the blob |
/// | 8 | 4 | `count`: number of entries (bytes for `heap` and `config`) |
/// | 12 | 4 | `entry_size`: must equal [`Section::entry_size`] |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SectionDescV1 {
    /// Byte offset from the start of the blob.
    pub offset: u64,
    /// Number of entries.
    pub count: u32,
    /// Size of one entry in bytes.
    pub entry_size: u32,
}

impl SectionDescV1 {
    /// Encoded size.
    pub const SIZE: usize = 16;

    /// Length of the section in bytes (cannot overflow: both factors are `u32`).
    pub const fn byte_len(&self) -> u64 {
        self.count as u64 * self.entry_size as u64
    }

    fn decode(b: &[u8]) -> Self {
        SectionDescV1 {
            offset: u64_at(b, 0),
            count: u32_at(b, 8),
            entry_size: u32_at(b, 12),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.entry_size.to_le_bytes());
    }
}

/// The index header, 208 bytes at offset 0.
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0 | 8 | `magic` = `PRNTIDX1` |
/// | 8 | 4 | `version` = 1 |
/// | 12 | 4 | `flags` = 0 (any set bit is refused) |
/// | 16 | 4 | `header_size` = 208 |
/// | 20 | 4 | `chunk_size`: power of two in 4 KiB..=64 MiB |
/// | 24 | 8 | `blob_size`: total length of the blob |
/// | 32 | 32 | `source_manifest`: sha256 of the original image manifest |
/// | 64 | 112 | section table: 7 × [`SectionDescV1`] in [`Section`] order |
/// | 176 | 32 | `checksum`: BLAKE3 of the whole blob with these 32 bytes zeroed |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexHeaderV1 {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`].
    pub version: u32,
    /// Feature flags; none defined in version 1.
    pub flags: u32,
    /// [`HEADER_SIZE`].
    pub header_size: u32,
    /// Chunk size of every file in this index.
    pub chunk_size: u32,
    /// Total length of the blob in bytes.
    pub blob_size: u64,
    /// sha256 of the image manifest this index was converted from.
    pub source_manifest: [u8; 32],
    /// The section table, indexed by [`Section`].
    pub sections: [SectionDescV1; Section::COUNT],
    /// BLAKE3 of the blob with this field zeroed.
    pub checksum: [u8; 32],
}

impl IndexHeaderV1 {
    /// Encoded size.
    pub const SIZE: usize = HEADER_SIZE;

    /// Decodes the header fields; checks nothing.
    pub fn decode(b: &[u8; Self::SIZE]) -> Self {
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[0..8]);
        let mut sections = [SectionDescV1::default(); Section::COUNT];
        for (i, s) in sections.iter_mut().enumerate() {
            let off = SECTION_TABLE_OFFSET + i * SectionDescV1::SIZE;
            *s = SectionDescV1::decode(&b[off..off + SectionDescV1::SIZE]);
        }
        IndexHeaderV1 {
            magic,
            version: u32_at(b, 8),
            flags: u32_at(b, 12),
            header_size: u32_at(b, 16),
            chunk_size: u32_at(b, 20),
            blob_size: u64_at(b, 24),
            source_manifest: bytes32_at(b, 32),
            sections,
            checksum: bytes32_at(b, CHECKSUM_OFFSET),
        }
    }

    /// Appends the encoded header.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.header_size.to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.blob_size.to_le_bytes());
        out.extend_from_slice(&self.source_manifest);
        for s in &self.sections {
            s.encode(out);
        }
        out.extend_from_slice(&self.checksum);
    }
}

/// A pack blob, 40 bytes.
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0 | 32 | `sha256`: digest of the pack blob (its registry digest) |
/// | 32 | 8 | `size`: length of the pack blob in bytes |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackV1 {
    /// sha256 of the pack blob.
    pub sha256: [u8; 32],
    /// Its size in bytes.
    pub size: u64,
}

impl PackV1 {
    /// Encoded size.
    pub const SIZE: usize = 40;

    /// Decodes a record.
    pub fn decode(b: &[u8; Self::SIZE]) -> Self {
        PackV1 {
            sha256: bytes32_at(b, 0),
            size: u64_at(b, 32),
        }
    }

    /// Appends the encoded record.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sha256);
        out.extend_from_slice(&self.size.to_le_bytes());
    }
}

/// An inode, 64 bytes; its number is its index in the inode section.
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0 | 1 | `kind`: [`NodeKind`] |
/// | 1 | 1 | reserved, 0 |
/// | 2 | 2 | `mode`: permission bits, `& !0o7777` must be 0 |
/// | 4 | 4 | `uid` |
/// | 8 | 4 | `gid` |
/// | 12 | 4 | `nlink` |
/// | 16 | 8 | `mtime`: seconds since the epoch, signed |
/// | 24 | 4 | `mtime_nsec`: < 10⁹ |
/// | 28 | 4 | `parent`: directories: the directory listing it (root: 0); others: 0 |
/// | 32 | 8 | `size`: files: content length; symlinks: target length; others: 0 |
/// | 40 | 8 | `rdev`: devices: Linux `dev_t` encoding; others: 0 |
/// | 48 | 4 | `data_first`: dir: first dirent; file: first chunk; symlink: heap offset; others 0 |
/// | 52 | 4 | `data_count`: dir: entries; file: chunks; symlink: target length; others 0 |
/// | 56 | 4 | `xattr_first`: first xattr record (0 when `xattr_count` is 0) |
/// | 60 | 4 | `xattr_count` |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InodeV1 {
    /// Raw kind byte.
    pub kind: u8,
    /// Reserved byte (must be 0).
    pub reserved: u8,
    /// Permission bits.
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Parent directory (directories only).
    pub parent: u32,
    /// Size in bytes.
    pub size: u64,
    /// Device number.
    pub rdev: u64,
    /// Start of the kind's data range.
    pub data_first: u32,
    /// Length of the kind's data range.
    pub data_count: u32,
    /// Start of the xattr range.
    pub xattr_first: u32,
    /// Length of the xattr range.
    pub xattr_count: u32,
}

impl InodeV1 {
    /// Encoded size.
    pub const SIZE: usize = 64;

    /// Decodes a record; checks nothing.
    pub fn decode(b: &[u8; Self::SIZE]) -> Self {
        InodeV1 {
            kind: b[0],
            reserved: b[1],
            mode: u16_at(b, 2),
            uid: u32_at(b, 4),
            gid: u32_at(b, 8),
            nlink: u32_at(b, 12),
            mtime: u64_at(b, 16) as i64,
            mtime_nsec: u32_at(b, 24),
            parent: u32_at(b, 28),
            size: u64_at(b, 32),
            rdev: u64_at(b, 40),
            data_first: u32_at(b, 48),
            data_count: u32_at(b, 52),
            xattr_first: u32_at(b, 56),
            xattr_count: u32_at(b, 60),
        }
    }

    /// Appends the encoded record.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind);
        out.push(self.reserved);
        out.extend_from_slice(&self.mode.to_le_bytes());
        out.extend_from_slice(&self.uid.to_le_bytes());
        out.extend_from_slice(&self.gid.to_le_bytes());
        out.extend_from_slice(&self.nlink.to_le_bytes());
        out.extend_from_slice(&self.mtime.to_le_bytes());
        out.extend_from_slice(&self.mtime_nsec.to_le_bytes());
        out.extend_from_slice(&self.parent.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.rdev.to_le_bytes());
        out.extend_from_slice(&self.data_first.to_le_bytes());
        out.extend_from_slice(&self.data_count.to_le_bytes());
        out.extend_from_slice(&self.xattr_first.to_le_bytes());
        out.extend_from_slice(&self.xattr_count.to_le_bytes());
    }
}

/// A directory entry, 12 bytes.
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0 | 4 | `name_offset` into the heap |
/// | 4 | 4 | `name_len`: 1..=255 |
/// | 8 | 4 | `ino` it names |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirentV1 {
    /// Heap offset of the name.
    pub name_offset: u32,
    /// Name length.
    pub name_len: u32,
    /// Inode named.
    pub ino: u32,
}

impl DirentV1 {
    /// Encoded size.
    pub const SIZE: usize = 12;

    /// Decodes a record.
    pub fn decode(b: &[u8; Self::SIZE]) -> Self {
        DirentV1 {
            name_offset: u32_at(b, 0),
            name_len: u32_at(b, 4),
            ino: u32_at(b, 8),
        }
    }

    /// Appends the encoded record.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.name_offset.to_le_bytes());
        out.extend_from_slice(&self.name_len.to_le_bytes());
        out.extend_from_slice(&self.ino.to_le_bytes());
    }
}

/// A chunk of a regular file, 56 bytes.
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0 | 32 | `digest`: BLAKE3 of the uncompressed bytes |
/// | 32 | 8 | `offset` of the stored bytes in the pack |
/// | 40 | 4 | `pack`: index into the pack section |
/// | 44 | 4 | `compressed_size`: stored length in the pack |
/// | 48 | 4 | `uncompressed_size` |
/// | 52 | 1 | `compression`: 0 none, 1 zstd, 2 lz4 (block) |
/// | 53 | 3 | reserved, 0 |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkV1 {
    /// BLAKE3 of the uncompressed bytes.
    pub digest: [u8; 32],
    /// Byte offset in the pack.
    pub offset: u64,
    /// Pack index.
    pub pack: u32,
    /// Stored length.
    pub compressed_size: u32,
    /// Uncompressed length.
    pub uncompressed_size: u32,
    /// Raw compression byte.
    pub compression: u8,
    /// Reserved bytes (must be 0).
    pub reserved: [u8; 3],
}

impl ChunkV1 {
    /// Encoded size.
    pub const SIZE: usize = 56;

    /// Decodes a record; checks nothing.
    pub fn decode(b: &[u8; Self::SIZE]) -> Self {
        ChunkV1 {
            digest: bytes32_at(b, 0),
            offset: u64_at(b, 32),
            pack: u32_at(b, 40),
            compressed_size: u32_at(b, 44),
            uncompressed_size: u32_at(b, 48),
            compression: b[52],
            reserved: [b[53], b[54], b[55]],
        }
    }

    /// Appends the encoded record.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.pack.to_le_bytes());
        out.extend_from_slice(&self.compressed_size.to_le_bytes());
        out.extend_from_slice(&self.uncompressed_size.to_le_bytes());
        out.push(self.compression);
        out.extend_from_slice(&self.reserved);
    }
}

/// An extended attribute, 16 bytes.
///
/// | off | size | field |
/// |----:|-----:|-------|
/// | 0 | 4 | `name_offset` into the heap |
/// | 4 | 4 | `name_len`: 1..=255 |
/// | 8 | 4 | `value_offset` into the heap |
/// | 12 | 4 | `value_len`: 0..=65536 |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XattrV1 {
    /// Heap offset of the name.
    pub name_offset: u32,
    /// Name length.
    pub name_len: u32,
    /// Heap offset of the value.
    pub value_offset: u32,
    /// Value length.
    pub value_len: u32,
}

impl XattrV1 {
    /// Encoded size.
    pub const SIZE: usize = 16;

    /// Decodes a record.
    pub fn decode(b: &[u8; Self::SIZE]) -> Self {
        XattrV1 {
            name_offset: u32_at(b, 0),
            name_len: u32_at(b, 4),
            value_offset: u32_at(b, 8),
            value_len: u32_at(b, 12),
        }
    }

    /// Appends the encoded record.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.name_offset.to_le_bytes());
        out.extend_from_slice(&self.name_len.to_le_bytes());
        out.extend_from_slice(&self.value_offset.to_le_bytes());
        out.extend_from_slice(&self.value_len.to_le_bytes());
    }
}

/// The checksum of a blob: BLAKE3 over all of it with the checksum field
/// (`CHECKSUM_OFFSET..CHECKSUM_OFFSET + 32`) taken as zeros. `None` if the blob is shorter than
/// a header.
pub fn compute_checksum(blob: &[u8]) -> Option<[u8; 32]> {
    if blob.len() < HEADER_SIZE {
        return None;
    }
    let mut h = blake3::Hasher::new();
    h.update(&blob[..CHECKSUM_OFFSET]);
    h.update(&[0u8; 32]);
    h.update(&blob[CHECKSUM_OFFSET + 32..]);
    Some(*h.finalize().as_bytes())
}

/// Recomputes and stores the checksum of a blob in place (no-op if shorter than a header).
///
/// For tools and tests that patch a blob on purpose (the fuzzer reseals its inputs so that the
/// structural checks behind the checksum get exercised). A reader never calls this.
pub fn reseal(blob: &mut [u8]) {
    if let Some(sum) = compute_checksum(blob) {
        blob[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 32].copy_from_slice(&sum);
    }
}

// The sizes the spec promises; a change here is a format change.
const _: () = {
    assert!(IndexHeaderV1::SIZE == SECTION_TABLE_OFFSET + Section::COUNT * 16 + 32);
    assert!(CHECKSUM_OFFSET == SECTION_TABLE_OFFSET + Section::COUNT * SectionDescV1::SIZE);
    assert!(PackV1::SIZE == 32 + 8);
    assert!(InodeV1::SIZE == 64);
    assert!(DirentV1::SIZE == 12);
    assert!(ChunkV1::SIZE == 56);
    assert!(XattrV1::SIZE == 16);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_sizes_match_constants() {
        let mut v = Vec::new();
        IndexHeaderV1 {
            magic: MAGIC,
            version: 1,
            flags: 0,
            header_size: HEADER_SIZE as u32,
            chunk_size: 4096,
            blob_size: 0,
            source_manifest: [0; 32],
            sections: Default::default(),
            checksum: [0; 32],
        }
        .encode(&mut v);
        assert_eq!(v.len(), IndexHeaderV1::SIZE);
        v.clear();
        PackV1 {
            sha256: [1; 32],
            size: 2,
        }
        .encode(&mut v);
        assert_eq!(v.len(), PackV1::SIZE);
        v.clear();
        let ino = InodeV1 {
            kind: 1,
            reserved: 0,
            mode: 0o7777,
            uid: u32::MAX,
            gid: 7,
            nlink: 3,
            mtime: -5,
            mtime_nsec: 999_999_999,
            parent: 9,
            size: u64::MAX,
            rdev: 0x1234,
            data_first: 1,
            data_count: 2,
            xattr_first: 3,
            xattr_count: 4,
        };
        ino.encode(&mut v);
        assert_eq!(v.len(), InodeV1::SIZE);
        assert_eq!(InodeV1::decode(v.as_slice().try_into().unwrap()), ino);
        v.clear();
        let c = ChunkV1 {
            digest: [7; 32],
            offset: u64::MAX - 1,
            pack: 3,
            compressed_size: 5,
            uncompressed_size: 6,
            compression: 2,
            reserved: [0; 3],
        };
        c.encode(&mut v);
        assert_eq!(v.len(), ChunkV1::SIZE);
        assert_eq!(ChunkV1::decode(v.as_slice().try_into().unwrap()), c);
        v.clear();
        DirentV1 {
            name_offset: 1,
            name_len: 2,
            ino: 3,
        }
        .encode(&mut v);
        assert_eq!(v.len(), DirentV1::SIZE);
        v.clear();
        XattrV1 {
            name_offset: 1,
            name_len: 2,
            value_offset: 3,
            value_len: 4,
        }
        .encode(&mut v);
        assert_eq!(v.len(), XattrV1::SIZE);
    }

    #[test]
    fn node_kind_values_round_trip() {
        for v in 0..=255u8 {
            if let Some(k) = NodeKind::from_u8(v) {
                assert_eq!(k as u8, v);
            } else {
                assert!(v == 0 || v > 7);
            }
        }
    }
}
