//! Pronto's accelerated image format: the *index* blob and the *pack* blobs.
//!
//! An image is converted into one small index (the whole filesystem tree: inodes, names, modes,
//! owners, xattrs, symlinks, hardlinks, devices and each regular file's chunk list) and a few
//! pack blobs (the file contents, cut into fixed-size chunks, each compressed on its own and
//! concatenated). A node fetches the index, mounts it, and reads an absent chunk with one HTTP
//! Range request to its pack. `docs/format.md` at the repository root is the specification;
//! this crate is its reference implementation and holds only the layout: no network, no async,
//! no storage.
//!
//! - [`layout`]: the on-disk records of version 1 (`IndexHeaderV1`, `InodeV1`, ...), their
//!   sizes and limits.
//! - [`IndexBuilder`] (`builder`): a tree in, a canonical index blob out (byte-identical for the
//!   same tree, whatever the insertion order).
//! - [`Index`] (`index`): a read-only view over an index blob. [`Index::open`] checks the header,
//!   the section table and the checksum; every accessor bounds-checks what it reads and returns
//!   an error instead of panicking; [`Index::validate`] checks the whole tree once (canonical
//!   layout, sorted directories, no cycles, link counts) and is what a mount or a verify
//!   should call before trusting a blob.
//! - [`chunk`]: [`ChunkRef`], [`compress_chunk`] (and [`ChunkCompressor`], which keeps its zstd
//!   context), [`decompress_chunk`] (bounded, digest-checked) and [`chunk_digest`]; a chunk's
//!   BLAKE3 tree in 64 KiB segments ([`segment_values`], [`digest_of_segments`]), so that a
//!   copy of it can be checked piece by piece.
//! - [`compressed`]: the index as the artifact stores it, one zstd stream
//!   ([`compress_index`], [`decompress_index`]: bounded by the declared size).
//! - [`FormatError`] (`error`): every way a blob or a build can be wrong, with the bad value.
//!
//! Every input is hostile: a blob from a registry, a chunk from a pack, a tree from a layer.
//! Nothing here panics on bad bytes, and nothing allocates from an untrusted count without a
//! bound (a count is only trusted after the bytes it covers were seen to exist).

pub mod builder;
pub mod chunk;
pub mod compressed;
pub mod error;
pub mod index;
pub mod layout;

pub use builder::{IndexBuilder, NodeMeta};
pub use chunk::{
    chunk_digest, compress_chunk, decompress_chunk, decompress_chunk_with_segments,
    digest_of_segments, segment_value, segment_values, ChunkCompressor, ChunkProblem, ChunkRef,
    Compression, SegmentValue, MAX_CHUNK_BYTES, SEGMENT_SIZE, ZSTD_LEVEL,
};
pub use compressed::{compress_index, decompress_index, INDEX_ZSTD_LEVEL, MAX_INDEX_BYTES};
pub use error::FormatError;
pub use index::{Index, Inode};
pub use layout::{NodeKind, Section};

/// The default chunk size: 1 MiB. A chunk is the unit of fetch, cache and decompression.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;

#[cfg(test)]
mod testutil;
