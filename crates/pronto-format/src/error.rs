//! [`FormatError`]: everything that can be wrong with an index blob, a chunk or a build.
//!
//! Variants are named after what is wrong and carry the bad value; messages are lowercase,
//! digests, magic and flags in hex, names escaped (`\xff` for non-UTF-8 bytes).

use std::fmt;

use crate::chunk::{ChunkProblem, Compression};
use crate::layout::{NodeKind, Section};

/// Displays bytes as lowercase hex.
pub(crate) struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Displays a name or path with non-printable and non-ASCII bytes escaped.
pub(crate) struct Esc<'a>(pub &'a [u8]);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_ascii())
    }
}

fn hex(b: &[u8]) -> Hex<'_> {
    Hex(b)
}

fn esc(b: &[u8]) -> Esc<'_> {
    Esc(b)
}

/// Everything that can be wrong with an index blob, a stored chunk or a tree given to the
/// builder.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    // --- a compressed index (compressed::decompress_index) ---
    /// A compressed index that declares an uncompressed size over the cap.
    #[error("compressed index: declared size {declared} bytes exceeds the {max}-byte cap")]
    IndexTooLarge {
        /// The declared uncompressed size.
        declared: u64,
        /// [`crate::compressed::MAX_INDEX_BYTES`].
        max: u64,
    },
    /// A compressed index that would decompress to more bytes than it declares: a
    /// decompression bomb, or a wrong declared size. Decompression stopped at `declared + 1`.
    #[error(
        "compressed index: decompresses to more than its declared {declared} bytes (refused: \
         decompression is bounded by the declared size)"
    )]
    IndexLargerThanDeclared {
        /// The declared uncompressed size.
        declared: u64,
    },
    /// A compressed index that decompresses to fewer bytes than it declares.
    #[error("compressed index: decompresses to {actual} bytes, declared {declared}")]
    IndexSmallerThanDeclared {
        /// The declared uncompressed size.
        declared: u64,
        /// Bytes produced.
        actual: u64,
    },
    /// Bytes that are not a valid zstd stream.
    #[error("compressed index: not a valid zstd stream: {reason}")]
    IndexDecompress {
        /// The decoder's message.
        reason: String,
    },
    // --- the blob as a whole (Index::open) ---
    /// The blob is shorter than its header or than the size the header declares.
    #[error("truncated blob: need {needed} bytes, have {actual}")]
    Truncated {
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The blob is longer than the size its header declares.
    #[error("blob has {actual} bytes but its header says {declared}")]
    TrailingBytes {
        /// `blob_size` from the header.
        declared: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The first 8 bytes are not `PRNTIDX1`.
    #[error("bad magic 0x{} (expected \"PRNTIDX1\")", hex(.found))]
    BadMagic {
        /// The bytes found.
        found: Vec<u8>,
    },
    /// A version this build does not read.
    #[error("unsupported index version {version} (this build reads version 1)")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// Flag bits this version does not define.
    #[error("unknown index flags 0x{flags:08x}")]
    UnknownFlags {
        /// The unknown bits.
        flags: u32,
    },
    /// `header_size` is not the size of a version 1 header.
    #[error("header size {size} does not match version 1 (208)")]
    BadHeaderSize {
        /// The size found.
        size: u32,
    },
    /// A chunk size that is not a power of two in 4 KiB..=64 MiB.
    #[error("invalid chunk size {size}: must be a power of two in 4096..=67108864")]
    InvalidChunkSize {
        /// The size found.
        size: u32,
    },
    /// A section's entry size is not the version's record size.
    #[error("section {section}: entry size {found}, expected {expected}")]
    SectionEntrySize {
        /// The section.
        section: Section,
        /// Entry size found.
        found: u32,
        /// Entry size of this version.
        expected: u32,
    },
    /// A section does not start on an 8-byte boundary.
    #[error("section {section} at offset {offset} is not 8-byte aligned")]
    SectionMisaligned {
        /// The section.
        section: Section,
        /// Its offset.
        offset: u64,
    },
    /// A section starts inside the header.
    #[error("section {section} at offset {offset} overlaps the 208-byte header")]
    SectionOverlapsHeader {
        /// The section.
        section: Section,
        /// Its offset.
        offset: u64,
    },
    /// A section ends past the end of the blob (or its end overflows).
    #[error("section {section} at {offset}+{len} is out of bounds of the {blob_len}-byte blob")]
    SectionOutOfBounds {
        /// The section.
        section: Section,
        /// Its offset.
        offset: u64,
        /// Its length in bytes.
        len: u64,
        /// Length of the blob.
        blob_len: u64,
    },
    /// Two sections share bytes.
    #[error("sections {first} and {second} overlap")]
    SectionsOverlap {
        /// The section that starts first.
        first: Section,
        /// The section that starts inside it.
        second: Section,
    },
    /// The BLAKE3 of the blob is not the one in the header.
    #[error("checksum mismatch: header says blake3:{}, blob hashes to blake3:{}", hex(.stored), hex(.computed))]
    ChecksumMismatch {
        /// Checksum in the header.
        stored: [u8; 32],
        /// Checksum computed.
        computed: [u8; 32],
    },
    /// A chunk asked of an index opened from a split layer's tree, before its digests.
    #[error("the chunk digests of this index have not arrived (a split index's tree)")]
    DigestsPending,
    /// A split index's digest table that is not 32 bytes per chunk record.
    #[error("digest table of {actual} bytes; the index's chunk records need {expected}")]
    DigestTableSize {
        /// 32 × the chunk records.
        expected: u64,
        /// Bytes given.
        actual: u64,
    },
    /// The index has no inode 0.
    #[error("index has no inodes (inode 0 must be the root directory)")]
    NoRoot,
    /// Inode 0 is not a directory.
    #[error("the root is a {kind}, not a directory")]
    RootNotDirectory {
        /// Its kind.
        kind: NodeKind,
    },

    // --- records (accessors) ---
    /// An inode number past the end of the inode section.
    #[error("inode {ino} out of range (index has {count} inodes)")]
    InodeOutOfRange {
        /// The inode number.
        ino: u32,
        /// Number of inodes.
        count: u32,
    },
    /// An unknown `kind` byte.
    #[error("inode {ino}: unknown kind 0x{kind:02x}")]
    BadInodeKind {
        /// The inode.
        ino: u32,
        /// The kind byte.
        kind: u8,
    },
    /// Mode bits outside `0o7777`.
    #[error("inode {ino}: mode 0o{mode:o} has bits outside 0o7777")]
    BadMode {
        /// The inode.
        ino: u32,
        /// The mode.
        mode: u32,
    },
    /// Nanoseconds ≥ 10⁹.
    #[error("inode {ino}: mtime nanoseconds {nsec} out of range (max 999999999)")]
    BadNanoseconds {
        /// The inode.
        ino: u32,
        /// The nanoseconds.
        nsec: u32,
    },
    /// A field that this kind does not use is not 0.
    #[error("inode {ino}: {field} must be 0 for a {kind}, found 0x{value:x}")]
    FieldNotZero {
        /// The inode.
        ino: u32,
        /// Its kind.
        kind: NodeKind,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// Reserved bytes of a record are not 0.
    #[error("{record} {index}: reserved bytes are not zero (0x{value:x})")]
    ReservedNotZero {
        /// The record type.
        record: &'static str,
        /// Its index.
        index: u64,
        /// The reserved bytes.
        value: u64,
    },
    /// A directory operation on something else.
    #[error("inode {ino} is a {kind}, not a directory")]
    NotADirectory {
        /// The inode.
        ino: u32,
        /// Its kind.
        kind: NodeKind,
    },
    /// A file operation on something else.
    #[error("inode {ino} is a {kind}, not a regular file")]
    NotAFile {
        /// The inode.
        ino: u32,
        /// Its kind.
        kind: NodeKind,
    },
    /// A symlink operation on something else.
    #[error("inode {ino} is a {kind}, not a symlink")]
    NotASymlink {
        /// The inode.
        ino: u32,
        /// Its kind.
        kind: NodeKind,
    },
    /// An inode's range of dirents, chunks or xattrs leaves its table.
    #[error("inode {ino}: {table} {first}+{count} out of bounds (table has {len})")]
    RangeOutOfBounds {
        /// The inode.
        ino: u32,
        /// The table.
        table: Section,
        /// First index.
        first: u32,
        /// Count.
        count: u32,
        /// Entries in the table.
        len: u32,
    },
    /// An empty range that does not start at 0 (the canonical encoding).
    #[error("inode {ino}: empty {table} range starts at {first}, must start at 0")]
    EmptyRangeOffset {
        /// The inode.
        ino: u32,
        /// The table.
        table: Section,
        /// Its start.
        first: u32,
    },
    /// A name, target or value points outside the heap.
    #[error("{what} at heap {offset}+{len} out of bounds (heap is {heap_len} bytes)")]
    HeapOutOfBounds {
        /// What was read.
        what: &'static str,
        /// Heap offset.
        offset: u32,
        /// Length.
        len: u32,
        /// Heap length.
        heap_len: u32,
    },
    /// A directory entry name that cannot be a file name.
    #[error("invalid name \"{}\": {reason}", esc(.name))]
    InvalidName {
        /// The name.
        name: Vec<u8>,
        /// Why.
        reason: &'static str,
    },
    /// A directory whose entries are out of order.
    #[error("directory {dir}: entries not sorted (\"{}\" before \"{}\")", esc(.prev), esc(.name))]
    DirentsNotSorted {
        /// The directory.
        dir: u32,
        /// The earlier name.
        prev: Vec<u8>,
        /// The later, smaller name.
        name: Vec<u8>,
    },
    /// A directory listing one name twice.
    #[error("directory {dir}: duplicate entry \"{}\"", esc(.name))]
    DuplicateEntry {
        /// The directory.
        dir: u32,
        /// The name.
        name: Vec<u8>,
    },
    /// A chunk naming a pack that does not exist.
    #[error("inode {ino} chunk {chunk}: pack index {pack} out of range ({packs} packs)")]
    ChunkPackOutOfRange {
        /// The file.
        ino: u32,
        /// Chunk number within the file.
        chunk: u32,
        /// The pack index.
        pack: u32,
        /// Number of packs.
        packs: u32,
    },
    /// A chunk extending past the end of its pack.
    #[error("inode {ino} chunk {chunk}: bytes up to {end} are past the end of pack {pack} ({pack_size} bytes)")]
    ChunkBeyondPack {
        /// The file.
        ino: u32,
        /// Chunk number within the file.
        chunk: u32,
        /// The pack index.
        pack: u32,
        /// End offset of the chunk.
        end: u64,
        /// Size of the pack.
        pack_size: u64,
    },
    /// A file whose chunk count does not fit its size.
    #[error("inode {ino}: {count} chunks for {size} bytes, expected {expected} at chunk size {chunk_size}")]
    ChunkCountMismatch {
        /// The file.
        ino: u32,
        /// Chunks found.
        count: u32,
        /// File size.
        size: u64,
        /// Chunks expected.
        expected: u64,
        /// Chunk size.
        chunk_size: u32,
    },
    /// A chunk record inconsistent with its file.
    #[error("inode {ino} chunk {chunk}: {problem}")]
    BadChunk {
        /// The file.
        ino: u32,
        /// Chunk number within the file.
        chunk: u32,
        /// What is wrong.
        problem: ChunkProblem,
    },
    /// A chunk index past the end of a file's chunk list.
    #[error("inode {ino}: chunk {chunk} out of range (file has {count} chunks)")]
    ChunkOutOfRange {
        /// The file.
        ino: u32,
        /// Requested chunk.
        chunk: u32,
        /// Chunks of the file.
        count: u32,
    },
    /// A symlink target that cannot be one.
    #[error("inode {ino}: invalid symlink target \"{}\": {reason}", esc(.target))]
    InvalidSymlinkTarget {
        /// The symlink.
        ino: u32,
        /// The target (possibly cut).
        target: Vec<u8>,
        /// Why.
        reason: &'static str,
    },
    /// A symlink whose `size` is not its target length.
    #[error("inode {ino}: symlink size {size} but target is {len} bytes")]
    SymlinkSizeMismatch {
        /// The symlink.
        ino: u32,
        /// `size`.
        size: u64,
        /// Target length.
        len: u32,
    },
    /// An xattr name that cannot be one.
    #[error("invalid xattr name \"{}\": {reason}", esc(.name))]
    InvalidXattrName {
        /// The name.
        name: Vec<u8>,
        /// Why.
        reason: &'static str,
    },
    /// An xattr value over 64 KiB.
    #[error("xattr \"{}\": value of {len} bytes exceeds 65536", esc(.name))]
    XattrValueTooLarge {
        /// The name.
        name: Vec<u8>,
        /// The value length.
        len: u64,
    },
    /// An inode's xattrs out of order.
    #[error("inode {ino}: xattrs not sorted (\"{}\" before \"{}\")", esc(.prev), esc(.name))]
    XattrsNotSorted {
        /// The inode.
        ino: u32,
        /// The earlier name.
        prev: Vec<u8>,
        /// The later, smaller name.
        name: Vec<u8>,
    },
    /// An inode with one xattr name twice.
    #[error("inode {ino}: duplicate xattr \"{}\"", esc(.name))]
    DuplicateXattr {
        /// The inode.
        ino: u32,
        /// The name.
        name: Vec<u8>,
    },
    /// A directory entry naming one of its own ancestors.
    #[error("directory {dir} links back to its ancestor {ino} (cycle)")]
    DirectoryCycle {
        /// The directory holding the entry.
        dir: u32,
        /// The ancestor named.
        ino: u32,
    },
    /// A directory named by more than one entry.
    #[error("directory {ino} is linked more than once")]
    DirectoryLinkedTwice {
        /// The directory.
        ino: u32,
    },
    /// The directories' entry ranges overlap (so a walk would revisit entries).
    #[error("directory {dir}: entries {first}+{count} overlap another directory's")]
    DirentRangesOverlap {
        /// The directory.
        dir: u32,
        /// First entry.
        first: u32,
        /// Count.
        count: u32,
    },
    /// A range that is not where the canonical layout puts it.
    #[error("inode {ino}: {table} start at {first}, canonical layout needs {expected}")]
    NotCanonical {
        /// The inode.
        ino: u32,
        /// The table.
        table: Section,
        /// Start found.
        first: u32,
        /// Start expected.
        expected: u32,
    },
    /// Records of a table that no inode references.
    #[error("{table}: {used} of {len} entries are referenced")]
    TableNotCovered {
        /// The table.
        table: Section,
        /// Entries referenced.
        used: u64,
        /// Entries present.
        len: u32,
    },
    /// Inodes not numbered in canonical (breadth-first, sorted-name) order.
    #[error("inode numbering is not canonical: found {found} where {expected} comes next")]
    InodeOrder {
        /// Number found.
        found: u32,
        /// Number expected.
        expected: u32,
    },
    /// Inodes no path reaches.
    #[error("{unreachable} of {count} inodes are unreachable from the root")]
    UnreachableInodes {
        /// Unreachable count.
        unreachable: u32,
        /// Total count.
        count: u32,
    },
    /// A link count that does not match the tree.
    #[error("inode {ino}: nlink {nlink}, expected {expected}")]
    BadNlink {
        /// The inode.
        ino: u32,
        /// nlink found.
        nlink: u32,
        /// nlink expected.
        expected: u64,
    },
    /// A directory whose `parent` is not the directory listing it.
    #[error("directory {ino}: parent {parent}, but it is listed in {expected}")]
    BadParent {
        /// The directory.
        ino: u32,
        /// `parent` found.
        parent: u32,
        /// The directory listing it.
        expected: u32,
    },
    /// A path longer than 4095 bytes.
    #[error("path of {len} bytes exceeds 4095")]
    PathTooLong {
        /// Its length.
        len: usize,
    },

    // --- chunks (decompress_chunk) ---
    /// A chunk over the 64 MiB decompression cap.
    #[error("chunk blake3:{}: {size} bytes exceeds the 67108864-byte cap", hex(.digest))]
    ChunkTooLarge {
        /// The chunk.
        digest: [u8; 32],
        /// Its declared size.
        size: u32,
    },
    /// Stored bytes whose length is not the chunk's compressed size.
    #[error("chunk blake3:{}: {actual} stored bytes, index says {expected}", hex(.digest))]
    StoredSizeMismatch {
        /// The chunk.
        digest: [u8; 32],
        /// Size from the index.
        expected: u32,
        /// Bytes given.
        actual: u64,
    },
    /// The decompressor refused the stored bytes.
    #[error("chunk blake3:{}: {compression} decompression failed: {reason}", hex(.digest))]
    Decompress {
        /// The chunk.
        digest: [u8; 32],
        /// The compression.
        compression: Compression,
        /// The decompressor's message.
        reason: String,
    },
    /// Decompressed to another length than the index says.
    #[error("chunk blake3:{}: decompressed to {actual} bytes, index says {expected}", hex(.digest))]
    DecompressedLengthMismatch {
        /// The chunk.
        digest: [u8; 32],
        /// Size from the index.
        expected: u32,
        /// Size produced.
        actual: u64,
    },
    /// Decompressed bytes whose BLAKE3 is not the chunk's digest.
    #[error("chunk blake3:{} is corrupt: content hashes to blake3:{}", hex(.digest), hex(.actual))]
    ChunkCorrupt {
        /// The chunk.
        digest: [u8; 32],
        /// The digest of what was decompressed.
        actual: [u8; 32],
    },

    // --- building ---
    /// A path given to the builder that is not relative, `/`-separated and clean.
    #[error("invalid path \"{}\": {reason}", esc(.path))]
    InvalidPath {
        /// The path.
        path: Vec<u8>,
        /// Why.
        reason: String,
    },
    /// A path whose parent was not added first.
    #[error("parent of \"{}\" was not added", esc(.path))]
    ParentMissing {
        /// The path.
        path: Vec<u8>,
    },
    /// A path under something that is not a directory.
    #[error("parent of \"{}\" is not a directory", esc(.path))]
    ParentNotDirectory {
        /// The path.
        path: Vec<u8>,
    },
    /// A path added twice.
    #[error("\"{}\" already exists", esc(.path))]
    AlreadyExists {
        /// The path.
        path: Vec<u8>,
    },
    /// A hardlink to a path that was not added.
    #[error("hardlink target \"{}\" does not exist", esc(.path))]
    HardlinkTargetMissing {
        /// The target.
        path: Vec<u8>,
    },
    /// A hardlink to a directory.
    #[error("hardlink target \"{}\" is a directory", esc(.path))]
    HardlinkToDirectory {
        /// The target.
        path: Vec<u8>,
    },
    /// A node whose metadata or chunks are not valid for its kind.
    #[error("invalid node \"{}\": {reason}", esc(.path))]
    InvalidNode {
        /// The path.
        path: Vec<u8>,
        /// Why.
        reason: String,
    },
    /// The tree does not fit the format's 32-bit counts and offsets.
    #[error("index too large: {what}")]
    TooLarge {
        /// What overflowed.
        what: String,
    },
}
