//! `decompress_index` (the artifact's compressed index layer) on arbitrary bytes and declared
//! sizes. The first 4 input bytes are the declared size (so small ones, which bombs exceed,
//! are common; past the cap too), the rest the stored stream. Oracles: nothing panics or
//! produces more than declared (an `Ok` is exactly the declared size); and a
//! `compress_index` → `decompress_index` round trip returns the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pronto_format::{compress_index, decompress_index, MAX_INDEX_BYTES};

fuzz_target!(|data: &[u8]| {
    let Some((size, stored)) = data.split_first_chunk::<4>() else {
        return;
    };
    let size = u64::from(u32::from_le_bytes(*size));
    // Above 2^31 the declared size is past the 1 GiB cap: refused before decoding.
    let size = if size > 1 << 31 {
        MAX_INDEX_BYTES + (size & 0xff)
    } else {
        size & 0xf_ffff
    };
    if let Ok(out) = decompress_index(stored, size) {
        assert_eq!(
            out.len() as u64,
            size,
            "Ok must be exactly the declared size"
        );
    }
    let packed = compress_index(stored);
    assert_eq!(
        decompress_index(&packed, stored.len() as u64).as_deref(),
        Ok(stored),
        "round trip"
    );
});
