//! `decompress_chunk` on arbitrary stored bytes and chunk refs, plus a compress/decompress
//! round trip of the same bytes.
//!
//! Input: byte 0 picks the compression, bytes 1..4 the declared uncompressed size (so sizes
//! around and over the 64 MiB cap are reached), the rest is the stored chunk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pronto_format::{chunk_digest, compress_chunk, decompress_chunk, ChunkRef, Compression};

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let compression = match data[0] % 3 {
        0 => Compression::None,
        1 => Compression::Zstd,
        _ => Compression::Lz4,
    };
    let declared = u32::from_le_bytes([data[1], data[2], data[3], data[4]]);
    // Keep most sizes small (fast), but let the top bit through to reach the cap check.
    let declared = if declared & 0x8000_0000 != 0 {
        declared
    } else {
        declared % (1 << 20)
    };
    let stored = &data[5..];
    let c = ChunkRef {
        digest: chunk_digest(stored),
        pack: 0,
        compression,
        offset: 0,
        compressed_size: stored.len() as u32,
        uncompressed_size: declared,
    };
    if let Ok(out) = decompress_chunk(stored, &c) {
        assert_eq!(out.len(), declared as usize);
        assert_eq!(chunk_digest(&out), c.digest);
    }

    // Round trip: whatever compress_chunk stores, decompress_chunk gives back.
    let (packed, used) = compress_chunk(stored, compression);
    assert!(packed.len() <= stored.len());
    let c = ChunkRef {
        digest: chunk_digest(stored),
        pack: 0,
        compression: used,
        offset: 0,
        compressed_size: packed.len() as u32,
        uncompressed_size: stored.len() as u32,
    };
    assert_eq!(decompress_chunk(&packed, &c).as_deref(), Ok(stored));
});
