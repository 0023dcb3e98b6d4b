//! The index as stored in the artifact: one zstd stream of the whole blob
//! (`docs/format.md`, "The index layer"). Mounting starts with fetching the index, so its wire
//! size is paid on every cold start; index records (zeroed fields, small counters, repeated
//! name stems) compress about 3×. The uncompressed blob is what [`crate::Index::open`] reads.

use std::io::Read;

use crate::FormatError;

/// The zstd level of a compressed index (higher levels cost the converter more time for
/// little gain on index bytes; see docs/format.md).
pub const INDEX_ZSTD_LEVEL: i32 = 9;

/// Hard cap on an index's uncompressed size, whatever the artifact declares: 1 GiB (about 8
/// million small files). Bounds what [`decompress_index`] may allocate.
pub const MAX_INDEX_BYTES: u64 = 1 << 30;

/// Compresses an index blob for the artifact (one zstd frame, with its content size).
pub fn compress_index(index: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(index, INDEX_ZSTD_LEVEL).expect("zstd compression of a buffer")
}

/// Decompresses a stored index that declares `size` uncompressed bytes. Never produces (or
/// allocates for) more than `size` bytes, `size` is capped at [`MAX_INDEX_BYTES`], and the
/// output must be exactly `size` bytes: a stream that would expand further is refused as soon
/// as it passes `size`, whatever its frame header claims.
pub fn decompress_index(stored: &[u8], size: u64) -> Result<Vec<u8>, FormatError> {
    if size > MAX_INDEX_BYTES {
        return Err(FormatError::IndexTooLarge {
            declared: size,
            max: MAX_INDEX_BYTES,
        });
    }
    let broken = |e: std::io::Error| FormatError::IndexDecompress {
        reason: e.to_string(),
    };
    let decoder = zstd::stream::read::Decoder::with_buffer(stored).map_err(broken)?;
    // Grow as bytes arrive (a tiny blob declaring 1 GiB gets no 1 GiB buffer up front).
    let mut out = Vec::with_capacity(size.min(16 << 20) as usize);
    decoder
        .take(size + 1)
        .read_to_end(&mut out)
        .map_err(broken)?;
    let actual = out.len() as u64;
    if actual > size {
        return Err(FormatError::IndexLargerThanDeclared { declared: size });
    }
    if actual < size {
        return Err(FormatError::IndexSmallerThanDeclared {
            declared: size,
            actual,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| (i % 1000).to_le_bytes())
            .collect()
    }

    #[test]
    fn a_compressed_index_round_trips_and_is_smaller() {
        let blob = sample();
        let stored = compress_index(&blob);
        assert!(stored.len() * 4 < blob.len(), "{} bytes", stored.len());
        assert_eq!(decompress_index(&stored, blob.len() as u64).unwrap(), blob);
        // Empty too (a zero-length stream still has a frame).
        assert_eq!(decompress_index(&compress_index(&[]), 0).unwrap(), b"");
    }

    #[test]
    fn a_bomb_is_refused_at_its_declared_size() {
        // 256 MiB of zeros in a few KiB; declared as 4 KiB it must stop there.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            std::io::Write::write_all(&mut enc, &zeros).unwrap();
        }
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        let started = std::time::Instant::now();
        assert_eq!(
            decompress_index(&bomb, 4096),
            Err(FormatError::IndexLargerThanDeclared { declared: 4096 })
        );
        // Stopped at the bound, not after expanding the stream.
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(
            decompress_index(&bomb, 4096).unwrap_err().to_string(),
            "compressed index: decompresses to more than its declared 4096 bytes (refused: \
             decompression is bounded by the declared size)"
        );
        // A declared size past the cap is refused before decoding.
        assert_eq!(
            decompress_index(&bomb, MAX_INDEX_BYTES + 1),
            Err(FormatError::IndexTooLarge {
                declared: MAX_INDEX_BYTES + 1,
                max: MAX_INDEX_BYTES
            })
        );
    }

    #[test]
    fn short_corrupt_or_truncated_streams_are_refused() {
        let blob = sample();
        let stored = compress_index(&blob);
        let n = blob.len() as u64;
        assert_eq!(
            decompress_index(&stored, n + 1),
            Err(FormatError::IndexSmallerThanDeclared {
                declared: n + 1,
                actual: n
            })
        );
        let e = decompress_index(&stored[..stored.len() / 2], n).unwrap_err();
        assert!(
            matches!(e, FormatError::IndexDecompress { .. }),
            "truncated: {e}"
        );
        let e = decompress_index(b"not zstd at all", n).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("compressed index: not a valid zstd stream: "),
            "{e}"
        );
    }
}
