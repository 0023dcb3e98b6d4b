//! Chunks: how a slice of a file is addressed, compressed and checked.
//!
//! A chunk is a fixed-size slice of a regular file (the index's `chunk_size`; the last chunk of
//! a file may be shorter), addressed by the BLAKE3 of its *uncompressed* bytes. It is stored in a
//! pack compressed on its own (zstd frame, or lz4 *block* without a size prefix: the size is in
//! the index), or raw when compression does not make it smaller. A pack is the plain
//! concatenation of stored chunks, so fetching a chunk is one Range read of
//! `offset..offset + compressed_size`.

use std::fmt;

use crate::error::FormatError;

/// zstd level used by [`compress_chunk`]: level 3 (zstd's own default) compresses a 1 MiB chunk
/// at a few hundred MB/s per core, so conversion stays I/O bound.
pub const ZSTD_LEVEL: i32 = 3;

/// Hard cap on a chunk's uncompressed size, whatever an index says: 64 MiB, the largest chunk
/// size a blob may declare. Bounds the buffer [`decompress_chunk`] allocates.
pub const MAX_CHUNK_BYTES: u32 = crate::layout::MAX_CHUNK_SIZE;

/// How a chunk is stored in its pack; the on-disk value is the discriminant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Compression {
    /// Stored raw: `compressed_size == uncompressed_size`.
    None = 0,
    /// One zstd frame.
    #[default]
    Zstd = 1,
    /// One lz4 block (`lz4_flex::block` format, no size prefix).
    Lz4 = 2,
}

impl Compression {
    /// The compression for an on-disk value, `None` if unknown.
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            2 => Some(Compression::Lz4),
            _ => None,
        }
    }

    /// Lowercase name.
    pub const fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a chunk lives and how to turn its stored bytes back into content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// BLAKE3 of the uncompressed bytes.
    pub digest: [u8; 32],
    /// Index of the pack (in the index's pack list).
    pub pack: u32,
    /// How the stored bytes are compressed.
    pub compression: Compression,
    /// Offset of the stored bytes in the pack.
    pub offset: u64,
    /// Length of the stored bytes.
    pub compressed_size: u32,
    /// Length of the content.
    pub uncompressed_size: u32,
}

impl ChunkRef {
    /// The byte range to read from the pack: `offset..offset + compressed_size` (saturating;
    /// an index that passed its checks never saturates).
    pub fn pack_range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset.saturating_add(u64::from(self.compressed_size))
    }
}

/// Why a chunk record does not fit the file it belongs to.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChunkProblem {
    /// Not the size its position in the file demands.
    #[error("uncompressed size {size}, expected {expected}")]
    UncompressedSize {
        /// Size found.
        size: u32,
        /// Size expected: `chunk_size`, or the remainder for the last chunk.
        expected: u64,
    },
    /// A raw chunk whose stored size differs from its content size.
    #[error("stored raw in {compressed} bytes but holds {uncompressed}")]
    RawSizeMismatch {
        /// Stored size.
        compressed: u32,
        /// Content size.
        uncompressed: u32,
    },
    /// A compressed chunk that is empty or not smaller than its content (it must be stored raw).
    #[error("{compression} chunk of {uncompressed} bytes stored in {compressed} (must be 1..{uncompressed})")]
    NotSmaller {
        /// The compression.
        compression: Compression,
        /// Stored size.
        compressed: u32,
        /// Content size.
        uncompressed: u32,
    },
    /// An unknown compression byte.
    #[error("unknown compression 0x{value:02x}")]
    UnknownCompression {
        /// The byte.
        value: u8,
    },
}

/// Number of chunks a file of `size` bytes has: `ceil(size / chunk_size)` (0 for an empty file).
pub(crate) fn expected_chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size))
}

/// Content length of chunk `index` of a file of `size` bytes (`index` < the chunk count).
pub(crate) fn expected_chunk_len(size: u64, chunk_size: u32, index: u32) -> u64 {
    let start = u64::from(index) * u64::from(chunk_size);
    size.saturating_sub(start).min(u64::from(chunk_size))
}

/// Checks a chunk against the length its position demands and its own size rules.
pub(crate) fn check_chunk_shape(c: &ChunkRef, expected_len: u64) -> Result<(), ChunkProblem> {
    if u64::from(c.uncompressed_size) != expected_len {
        return Err(ChunkProblem::UncompressedSize {
            size: c.uncompressed_size,
            expected: expected_len,
        });
    }
    match c.compression {
        Compression::None if c.compressed_size != c.uncompressed_size => {
            Err(ChunkProblem::RawSizeMismatch {
                compressed: c.compressed_size,
                uncompressed: c.uncompressed_size,
            })
        }
        Compression::Zstd | Compression::Lz4
            if c.compressed_size == 0 || c.compressed_size >= c.uncompressed_size =>
        {
            Err(ChunkProblem::NotSmaller {
                compression: c.compression,
                compressed: c.compressed_size,
                uncompressed: c.uncompressed_size,
            })
        }
        _ => Ok(()),
    }
}

/// BLAKE3 of a chunk's uncompressed bytes: its address.
pub fn chunk_digest(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// A chunk longer than this can be checked piece by piece: a power of two of at least BLAKE3's
/// 1 KiB chunk, so every segment boundary `k * SEGMENT_SIZE` is a boundary of the chunk's BLAKE3
/// tree (BLAKE3 splits an input at the largest power-of-two number of 1 KiB chunks below its
/// length), and the segments' chaining values combine into the chunk's digest.
pub const SEGMENT_SIZE: usize = 64 << 10;

/// The BLAKE3 chaining value of one segment (a non-root subtree of its chunk's tree).
pub type SegmentValue = [u8; 32];

/// The chaining value of segment `index` of a chunk (`seg` is its bytes).
pub fn segment_value(seg: &[u8], index: usize) -> SegmentValue {
    use blake3::hazmat::HasherExt;
    let mut h = blake3::Hasher::new();
    h.set_input_offset((index * SEGMENT_SIZE) as u64);
    h.update(seg);
    h.finalize_non_root()
}

/// The chaining values of the segments of a chunk longer than one segment (empty otherwise).
pub fn segment_values(data: &[u8]) -> Vec<SegmentValue> {
    if data.len() <= SEGMENT_SIZE {
        return Vec::new();
    }
    data.chunks(SEGMENT_SIZE)
        .enumerate()
        .map(|(i, seg)| segment_value(seg, i))
        .collect()
}

/// The digest of a chunk of `len` bytes (more than one segment) from its segments' values.
pub fn digest_of_segments(values: &[SegmentValue], len: u64) -> [u8; 32] {
    use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, Mode};
    fn split(values: &[SegmentValue], len: u64) -> (u64, &[SegmentValue], &[SegmentValue]) {
        let left = left_subtree_len(len);
        let (l, r) = values.split_at((left / SEGMENT_SIZE as u64) as usize);
        (left, l, r)
    }
    fn node(values: &[SegmentValue], len: u64) -> SegmentValue {
        if len <= SEGMENT_SIZE as u64 {
            return values[0];
        }
        let (left, l, r) = split(values, len);
        merge_subtrees_non_root(&node(l, left), &node(r, len - left), Mode::Hash)
    }
    let (left, l, r) = split(values, len);
    *merge_subtrees_root(&node(l, left), &node(r, len - left), Mode::Hash).as_bytes()
}

/// A chunk's digest and, if it is longer than one segment, its segments' values: one pass.
fn digest_and_segments(data: &[u8]) -> ([u8; 32], Vec<SegmentValue>) {
    let values = segment_values(data);
    if values.is_empty() {
        (chunk_digest(data), values)
    } else {
        (digest_of_segments(&values, data.len() as u64), values)
    }
}

/// Compresses one chunk with `want`; returns the stored bytes and the compression actually used,
/// which is [`Compression::None`] (the bytes as they are) when compressing does not make them
/// strictly smaller, or when `want` is `None`.
///
/// zstd uses [`ZSTD_LEVEL`]; lz4 is `lz4_flex`'s block format without a size prefix.
pub fn compress_chunk(data: &[u8], want: Compression) -> (Vec<u8>, Compression) {
    ChunkCompressor::default().compress(data, want)
}

/// [`compress_chunk`] with one zstd context kept from chunk to chunk (same output): making a
/// context costs about as much as compressing a small file, and most files are small.
#[derive(Default)]
pub struct ChunkCompressor {
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl ChunkCompressor {
    /// Same as [`compress_chunk`].
    pub fn compress(&mut self, data: &[u8], want: Compression) -> (Vec<u8>, Compression) {
        let out = match want {
            Compression::None => None,
            // Only fails on allocation failure inside zstd: storing raw is always correct.
            Compression::Zstd => {
                if self.zstd.is_none() {
                    self.zstd = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
                }
                self.zstd.as_mut().and_then(|z| z.compress(data).ok())
            }
            Compression::Lz4 => Some(lz4_flex::block::compress(data)),
        };
        match out {
            Some(o) if !o.is_empty() && o.len() < data.len() => (o, want),
            _ => (data.to_vec(), Compression::None),
        }
    }
}

/// Turns a chunk's stored bytes (exactly `c.compressed_size` of them, as read from its pack) back
/// into its content and checks it: the length must be `c.uncompressed_size` and the BLAKE3 must
/// be `c.digest`.
///
/// Never allocates more than `c.uncompressed_size` (itself capped at [`MAX_CHUNK_BYTES`]) for the
/// output, whatever the stored bytes claim: a decompression bomb fails instead of growing.
pub fn decompress_chunk(stored: &[u8], c: &ChunkRef) -> Result<Vec<u8>, FormatError> {
    decompress_chunk_with_segments(stored, c).map(|(data, _)| data)
}

/// A zstd frame decompressed into at most `capacity` bytes (a frame that would give more
/// fails), with this thread's decompression context: making one per chunk (allocating and
/// clearing ~100 KiB) cost about an eighth of the lazy fetcher's CPU on images of small files.
fn zstd_decompress(stored: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static CONTEXT: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CONTEXT.with(|cell| {
        let mut cell = cell.borrow_mut();
        let dctx = match cell.as_mut() {
            Some(d) => d,
            None => cell.insert(zstd::bulk::Decompressor::new()?),
        };
        dctx.decompress(stored, capacity)
    })
}

/// As [`decompress_chunk`], and also returns the values of the chunk's segments
/// ([`segment_values`]): the check computes them anyway, at the cost of one hash.
pub fn decompress_chunk_with_segments(
    stored: &[u8],
    c: &ChunkRef,
) -> Result<(Vec<u8>, Vec<SegmentValue>), FormatError> {
    if c.uncompressed_size > MAX_CHUNK_BYTES {
        return Err(FormatError::ChunkTooLarge {
            digest: c.digest,
            size: c.uncompressed_size,
        });
    }
    if stored.len() as u64 != u64::from(c.compressed_size) {
        return Err(FormatError::StoredSizeMismatch {
            digest: c.digest,
            expected: c.compressed_size,
            actual: stored.len() as u64,
        });
    }
    let expected = c.uncompressed_size as usize;
    let fail = |reason: String| FormatError::Decompress {
        digest: c.digest,
        compression: c.compression,
        reason,
    };
    let data = match c.compression {
        Compression::None => stored.to_vec(),
        // `capacity` bounds the output: a frame that would decompress to more fails.
        Compression::Zstd => zstd_decompress(stored, expected)
            .map_err(|e| fail(format!("{e} (expected {expected} bytes)")))?,
        Compression::Lz4 => {
            let mut buf = vec![0u8; expected];
            let n = lz4_flex::block::decompress_into(stored, &mut buf)
                .map_err(|e| fail(format!("{e} (expected {expected} bytes)")))?;
            buf.truncate(n);
            buf
        }
    };
    if data.len() != expected {
        return Err(FormatError::DecompressedLengthMismatch {
            digest: c.digest,
            expected: c.uncompressed_size,
            actual: data.len() as u64,
        });
    }
    let (actual, values) = digest_and_segments(&data);
    if actual != c.digest {
        return Err(FormatError::ChunkCorrupt {
            digest: c.digest,
            actual,
        });
    }
    Ok((data, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_values_combine_into_the_chunk_digest() {
        for len in [
            SEGMENT_SIZE + 1,
            2 * SEGMENT_SIZE,
            3 * SEGMENT_SIZE + 5,
            (1 << 20) - 1,
            1 << 20,
            (1 << 20) + 1024,
            4 << 20,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(11)).collect();
            let values = segment_values(&data);
            assert_eq!(values.len(), len.div_ceil(SEGMENT_SIZE));
            assert_eq!(
                digest_of_segments(&values, len as u64),
                chunk_digest(&data),
                "length {len}"
            );
        }
        assert!(segment_values(&[1u8; SEGMENT_SIZE]).is_empty());
    }

    fn chunk_for(data: &[u8], want: Compression) -> (Vec<u8>, ChunkRef) {
        let (stored, compression) = compress_chunk(data, want);
        let c = ChunkRef {
            digest: chunk_digest(data),
            pack: 0,
            compression,
            offset: 0,
            compressed_size: stored.len() as u32,
            uncompressed_size: data.len() as u32,
        };
        (stored, c)
    }

    fn compressible() -> Vec<u8> {
        b"hello pronto ".repeat(1000)
    }

    #[test]
    fn a_kept_compressor_gives_the_bytes_of_a_fresh_one() {
        let big = compressible();
        let inputs: [&[u8]; 4] = [&big, b"tiny", &big[..1000], &[0u8; 70_000]];
        let mut kept = ChunkCompressor::default();
        for want in [Compression::Zstd, Compression::Lz4, Compression::None] {
            for data in inputs {
                assert_eq!(kept.compress(data, want), compress_chunk(data, want));
            }
        }
    }

    fn incompressible(n: usize) -> Vec<u8> {
        // xorshift: deterministic, high entropy
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn round_trip_each_compression() {
        let data = compressible();
        for want in [Compression::None, Compression::Zstd, Compression::Lz4] {
            let (stored, c) = chunk_for(&data, want);
            assert_eq!(c.compression, want);
            if want != Compression::None {
                assert!(stored.len() < data.len());
            }
            assert_eq!(decompress_chunk(&stored, &c).unwrap(), data);
        }
    }

    #[test]
    fn incompressible_and_empty_are_stored_raw() {
        let data = incompressible(4096);
        for want in [Compression::Zstd, Compression::Lz4] {
            let (stored, c) = chunk_for(&data, want);
            assert_eq!(c.compression, Compression::None);
            assert_eq!(stored, data);
            assert_eq!(decompress_chunk(&stored, &c).unwrap(), data);
            let (stored, c) = chunk_for(b"", want);
            assert_eq!(c.compression, Compression::None);
            assert!(stored.is_empty());
        }
    }

    #[test]
    fn corrupted_chunk_names_its_digest() {
        let data = compressible();
        let (stored, mut c) = chunk_for(&data, Compression::Zstd);
        c.digest = [0xab; 32];
        let err = decompress_chunk(&stored, &c).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "chunk blake3:{} is corrupt: content hashes to blake3:{}",
                "ab".repeat(32),
                crate::error::Hex(&chunk_digest(&data))
            )
        );
        // A flipped byte in a raw chunk is caught by the digest too.
        let (mut stored, c) = chunk_for(&incompressible(100), Compression::None);
        stored[50] ^= 1;
        assert!(matches!(
            decompress_chunk(&stored, &c),
            Err(FormatError::ChunkCorrupt { .. })
        ));
    }

    #[test]
    fn decompressed_length_mismatch() {
        let data = compressible();
        for want in [Compression::Zstd, Compression::Lz4] {
            let (stored, mut c) = chunk_for(&data, want);
            c.uncompressed_size += 10;
            c.digest = [1; 32];
            let err = decompress_chunk(&stored, &c).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "chunk blake3:{}: decompressed to 13000 bytes, index says 13010",
                    "01".repeat(32)
                ),
                "{want}"
            );
        }
    }

    #[test]
    fn output_is_bounded_by_the_declared_size() {
        // A bomb: 13000 bytes of content declared as 100.
        let data = compressible();
        for want in [Compression::Zstd, Compression::Lz4] {
            let (stored, mut c) = chunk_for(&data, want);
            c.uncompressed_size = 100;
            let err = decompress_chunk(&stored, &c).unwrap_err();
            assert!(
                matches!(err, FormatError::Decompress { .. }),
                "{want}: {err}"
            );
            assert!(err.to_string().contains("decompression failed"), "{err}");
            assert!(err.to_string().contains("expected 100 bytes"), "{err}");
        }
    }

    #[test]
    fn cap_and_stored_size_are_checked_first() {
        let c = ChunkRef {
            digest: [2; 32],
            pack: 0,
            compression: Compression::Zstd,
            offset: 0,
            compressed_size: 4,
            uncompressed_size: MAX_CHUNK_BYTES + 1,
        };
        assert_eq!(
            decompress_chunk(b"abcd", &c).unwrap_err().to_string(),
            format!(
                "chunk blake3:{}: 67108865 bytes exceeds the 67108864-byte cap",
                "02".repeat(32)
            )
        );
        let c = ChunkRef {
            uncompressed_size: 10,
            ..c
        };
        assert_eq!(
            decompress_chunk(b"abc", &c).unwrap_err().to_string(),
            format!(
                "chunk blake3:{}: 3 stored bytes, index says 4",
                "02".repeat(32)
            )
        );
    }

    #[test]
    fn garbage_fails_cleanly() {
        let garbage = incompressible(64);
        for compression in [Compression::Zstd, Compression::Lz4] {
            let c = ChunkRef {
                digest: [3; 32],
                pack: 0,
                compression,
                offset: 0,
                compressed_size: 64,
                uncompressed_size: 4096,
            };
            assert!(decompress_chunk(&garbage, &c).is_err());
        }
    }

    #[test]
    fn shape_rules() {
        let c = ChunkRef {
            digest: [0; 32],
            pack: 0,
            compression: Compression::None,
            offset: 0,
            compressed_size: 10,
            uncompressed_size: 10,
        };
        assert!(check_chunk_shape(&c, 10).is_ok());
        assert_eq!(
            check_chunk_shape(&c, 11).unwrap_err().to_string(),
            "uncompressed size 10, expected 11"
        );
        let raw_bad = ChunkRef {
            compressed_size: 9,
            ..c
        };
        assert_eq!(
            check_chunk_shape(&raw_bad, 10).unwrap_err().to_string(),
            "stored raw in 9 bytes but holds 10"
        );
        let z = ChunkRef {
            compression: Compression::Zstd,
            ..c
        };
        assert_eq!(
            check_chunk_shape(&z, 10).unwrap_err().to_string(),
            "zstd chunk of 10 bytes stored in 10 (must be 1..10)"
        );
        assert!(check_chunk_shape(
            &ChunkRef {
                compressed_size: 9,
                ..z
            },
            10
        )
        .is_ok());
        assert_eq!(expected_chunk_count(0, 4096), 0);
        assert_eq!(expected_chunk_count(4096, 4096), 1);
        assert_eq!(expected_chunk_count(4097, 4096), 2);
        assert_eq!(expected_chunk_len(4097, 4096, 1), 1);
        assert_eq!(expected_chunk_len(8192, 4096, 1), 4096);
    }
}
