//! Helpers shared by the unit tests: synthetic chunks, a sample tree covering every kind, and
//! blob patching (with the checksum resealed, so the checks behind it are reached).

use crate::layout::{reseal, IndexHeaderV1, Section, HEADER_SIZE};
use crate::{ChunkRef, Compression, FormatError, Index, IndexBuilder, NodeKind, NodeMeta};

/// The chunk size of test trees.
pub const CS: u32 = 4096;
/// The size of the one pack of test trees (large enough for every synthetic chunk).
pub const PACK_SIZE: u64 = 1 << 40;

/// Raw (uncompressed) chunk refs for a file of `size` bytes, digests derived from `seed`, laid
/// out from `*offset` in pack 0.
pub fn raw_chunks(size: u64, seed: u8, offset: &mut u64) -> Vec<ChunkRef> {
    let n = size.div_ceil(u64::from(CS));
    (0..n)
        .map(|i| {
            let len = (size - i * u64::from(CS)).min(u64::from(CS)) as u32;
            let mut digest = [seed; 32];
            digest[..8].copy_from_slice(&i.to_le_bytes());
            let c = ChunkRef {
                digest,
                pack: 0,
                compression: Compression::None,
                offset: *offset,
                compressed_size: len,
                uncompressed_size: len,
            };
            *offset += u64::from(len);
            c
        })
        .collect()
}

/// A regular file's metadata.
pub fn file(size: u64) -> NodeMeta {
    let mut m = NodeMeta::new(NodeKind::File, 0o644);
    m.size = size;
    m
}

/// A directory's metadata.
pub fn dir() -> NodeMeta {
    NodeMeta::new(NodeKind::Dir, 0o755)
}

/// A builder with one pack.
pub fn builder() -> IndexBuilder {
    let mut b = IndexBuilder::new(CS);
    b.add_pack([0xaa; 32], PACK_SIZE);
    b
}

/// Adds a file of `size` bytes with synthetic raw chunks.
pub fn add_file(b: &mut IndexBuilder, path: &[u8], size: u64, offset: &mut u64) {
    let chunks = raw_chunks(size, path.len() as u8, offset);
    b.add(path, file(size), chunks).unwrap();
}

/// The offset and count of a section of a blob.
pub fn section(blob: &[u8], s: Section) -> (usize, u32) {
    let h = IndexHeaderV1::decode(blob[..HEADER_SIZE].try_into().unwrap());
    let d = h.sections[s as usize];
    (d.offset as usize, d.count)
}

/// Byte offset of record `i` of section `s`.
pub fn record_at(blob: &[u8], s: Section, i: u32) -> usize {
    section(blob, s).0 + i as usize * s.entry_size() as usize
}

/// Overwrites `bytes` at `at` and reseals the checksum.
pub fn patch(blob: &mut [u8], at: usize, bytes: &[u8]) {
    blob[at..at + bytes.len()].copy_from_slice(bytes);
    reseal(blob);
}

/// The error `Index::open` gives, as a string.
pub fn open_err(blob: Vec<u8>) -> String {
    match Index::open(blob) {
        Ok(_) => panic!("blob opened"),
        Err(e) => e.to_string(),
    }
}

/// `Index::open` then `Index::validate`: the error, as a string.
pub fn validate_err(blob: Vec<u8>) -> String {
    let r: Result<(), FormatError> = Index::open(blob).and_then(|i| i.validate());
    r.expect_err("blob validated").to_string()
}
