//! Chunk decode throughput per core: zstd and lz4 (Pronto's chunk codecs) against gzip (what
//! registries hold today, zlib-ng backend), on the same bytes, in the same run.
//!
//! Data: up to 64 MiB of real files from the machine's /usr (shared libraries, binaries, text),
//! cut into 1 MiB chunks like an image. `cargo bench -p pronto-format --bench decode`.

use std::io::{Read, Write};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pronto_format::{chunk_digest, compress_chunk, decompress_chunk, ChunkRef, Compression};

const CHUNK: usize = 1 << 20;
const TOTAL: usize = 64 << 20;

fn corpus() -> Vec<u8> {
    let mut out = Vec::with_capacity(TOTAL);
    let mut stack = vec![
        std::path::PathBuf::from("/usr/lib"),
        std::path::PathBuf::from("/usr/share"),
    ];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            if out.len() >= TOTAL {
                return out;
            }
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                if let Ok(mut f) = std::fs::File::open(e.path()) {
                    let _ = (&mut f)
                        .take((TOTAL - out.len()) as u64)
                        .read_to_end(&mut out);
                }
            }
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let data = corpus();
    let chunks: Vec<&[u8]> = data.chunks(CHUNK).collect();
    let mut group = c.benchmark_group("decode-1MiB-chunks");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(10);
    for codec in [Compression::Zstd, Compression::Lz4] {
        let stored: Vec<(Vec<u8>, ChunkRef)> = chunks
            .iter()
            .map(|c| {
                let (bytes, used) = compress_chunk(c, codec);
                let r = ChunkRef {
                    digest: chunk_digest(c),
                    pack: 0,
                    compression: used,
                    offset: 0,
                    compressed_size: bytes.len() as u32,
                    uncompressed_size: c.len() as u32,
                };
                (bytes, r)
            })
            .collect();
        let ratio = stored.iter().map(|(b, _)| b.len()).sum::<usize>() as f64 / data.len() as f64;
        eprintln!("{}: stored/original = {ratio:.3}", codec.name());
        // Includes the BLAKE3 check every read does.
        group.bench_function(format!("{} (+blake3 verify)", codec.name()), |b| {
            b.iter(|| {
                for (bytes, r) in &stored {
                    black_box(decompress_chunk(bytes, r).unwrap());
                }
            })
        });
    }
    // gzip: one stream over the whole data, as a layer is.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&data).unwrap();
    let gz = enc.finish().unwrap();
    eprintln!(
        "gzip: stored/original = {:.3}",
        gz.len() as f64 / data.len() as f64
    );
    group.bench_function("gzip (zlib-ng, one stream)", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(data.len());
            flate2::read::GzDecoder::new(gz.as_slice())
                .read_to_end(&mut out)
                .unwrap();
            black_box(out);
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
