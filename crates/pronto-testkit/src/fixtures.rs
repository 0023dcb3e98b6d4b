//! Test images shared by the tests of the converter and the lazy filesystem: every case the
//! full-pull path handles (whiteouts, opaque dirs, type changes, hardlinks across layers,
//! xattrs, odd names, devices, empty, multi-chunk and exactly-N-chunk files).

use crate::image::{ImageBuilder, Layer};

/// Incompressible, reproducible bytes (xorshift): content no chunk can dedup by accident.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `(name, image)` for each ground-truth case; file sizes are multiples of `chunk` where the
/// case is about chunk boundaries.
pub fn ground_truth_images(chunk: u32) -> Vec<(&'static str, ImageBuilder)> {
    ground_truth_layers(chunk)
        .into_iter()
        .map(|(name, layers)| {
            let image = layers
                .into_iter()
                .fold(ImageBuilder::new(), ImageBuilder::layer);
            (name, image)
        })
        .collect()
}

/// The layers of each [`ground_truth_images`] case, to stack on a base of one's own.
pub fn ground_truth_layers(chunk: u32) -> Vec<(&'static str, Vec<Layer>)> {
    let chunk = chunk as usize;
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(200));
    vec![
        (
            "basic",
            vec![Layer::gzip()
                .dir("bin")
                .file("bin/su", b"setuid")
                .mode(0o4755)
                .dir("tmp")
                .mode(0o1777)
                .file("empty", b"")
                .file("one-chunk-exactly", noise(chunk, 1))
                .file("three-chunks-exactly", noise(3 * chunk, 2))
                .file("multi", noise(5 * chunk + 17, 3))
                .file("zeros", vec![0u8; 200_000])
                .symlink("link", "/bin/su")
                .file("tagged", b"x")
                .xattr("user.note", b"hello")
                .xattr(
                    "security.capability",
                    [
                        1u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    ],
                )
                .file("owned", b"o")
                .owner(1000, 1001)
                .mtime(1_234_567_890)],
        ),
        (
            "whiteouts",
            vec![
                Layer::gzip()
                    .file("a/keep", b"k")
                    .file("a/gone", b"g")
                    .file("opq/old", b"o")
                    .file("x", b"file"),
                Layer::zstd()
                    .whiteout("a/gone")
                    .opaque("opq")
                    .file("opq/new", b"n")
                    .dir("x")
                    .file("x/in", b"dir now"),
            ],
        ),
        (
            "links-names-devices",
            vec![
                Layer::gzip()
                    .file("orig", noise(100_000, 4))
                    .hardlink("second", "orig")
                    .file(&long, b"long")
                    .file(b"caf\xe9".as_slice(), b"latin1")
                    .char_device("dev/null", 1, 3)
                    .block_device("dev/loop7", 7, 7)
                    .fifo("dev/fifo"),
                Layer::plain().hardlink("third", "orig"),
            ],
        ),
    ]
}
