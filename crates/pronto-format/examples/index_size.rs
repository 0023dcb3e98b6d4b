//! Index size on the wire and time to open it, for a real directory tree: builds the index the
//! converter would (1 MiB chunks; chunk digests and stored sizes synthesized, since only the
//! index is measured), then compresses it at several zstd levels and times decompression,
//! `Index::open` and `Index::validate` (the work a mount does before it serves).
//!
//!     cargo run --release -p pronto-format --example index_size -- [DIR [MAX_ENTRIES [OUT]]]
//!
//! Default: /usr, 40000 entries (the bench's python-ml and puppeteer-pdf images have ~38k).
//! A file instead of DIR is read as an index blob.
//! With OUT, writes the index to OUT/index and its compressed form to OUT/index.zst (to time
//! their transfer over a shaped link).

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use pronto_format::{
    compress_index, decompress_index, ChunkRef, Compression, Index, IndexBuilder, NodeKind,
    NodeMeta, DEFAULT_CHUNK_SIZE,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(args.next().unwrap_or_else(|| "/usr".into()));
    let max: usize = args
        .next()
        .map_or(40_000, |n| n.parse().expect("MAX_ENTRIES"));
    let out = args.next().map(PathBuf::from);
    // A file is taken as an index blob (e.g. one fetched from a registry) instead.
    let (blob, files) = if root.is_file() {
        let blob = std::fs::read(&root).unwrap();
        let n = Index::open(blob.clone()).unwrap().inode_count() as usize;
        (blob, n)
    } else {
        build(&root, max)
    };
    println!(
        "{}: {files} entries, index {} bytes ({:.0} B/entry)",
        root.display(),
        blob.len(),
        blob.len() as f64 / files as f64
    );
    for level in [1, 3, 9, 19] {
        let t = Instant::now();
        let z = zstd::bulk::compress(&blob, level).unwrap();
        println!(
            "  zstd -{level}: {} bytes ({:.2}x), {:.1} ms",
            z.len(),
            blob.len() as f64 / z.len() as f64,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let stored = compress_index(&blob);
    if let Some(out) = &out {
        std::fs::write(out.join("index"), &blob).unwrap();
        std::fs::write(out.join("index.zst"), &stored).unwrap();
    }
    let t = Instant::now();
    let back = decompress_index(&stored, blob.len() as u64).unwrap();
    let decompress = t.elapsed();
    assert_eq!(back, blob);
    let t = Instant::now();
    let index = Index::open(back).unwrap();
    let open = t.elapsed();
    let t = Instant::now();
    index.validate().unwrap();
    let validate = t.elapsed();
    println!(
        "  compress_index: {} bytes; decompress {:.1} ms, open (checksum) {:.1} ms, validate {:.1} ms",
        stored.len(),
        decompress.as_secs_f64() * 1e3,
        open.as_secs_f64() * 1e3,
        validate.as_secs_f64() * 1e3
    );
}

fn build(root: &Path, max: usize) -> (Vec<u8>, usize) {
    let mut b = IndexBuilder::new(DEFAULT_CHUNK_SIZE);
    b.set_source(
        [7; 32],
        br#"{"architecture":"amd64","os":"linux"}"#.to_vec(),
    );
    b.add_pack([1; 32], u64::MAX / 2);
    b.set_root(NodeMeta::new(NodeKind::Dir, 0o755)).unwrap();
    let mut offset = 0u64;
    let mut entries = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(dir) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        let mut dir: Vec<_> = dir.flatten().collect();
        dir.sort_by_key(|e| e.file_name());
        for e in dir {
            if entries >= max {
                return (b.finish().unwrap(), entries);
            }
            let path = rel.join(e.file_name());
            let Ok(m) = e.metadata() else { continue };
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                NodeKind::Dir
            } else if ft.is_file() {
                NodeKind::File
            } else if ft.is_symlink() {
                NodeKind::Symlink
            } else {
                continue;
            };
            let mut meta = NodeMeta::new(kind, m.mode() & 0o7777);
            (meta.uid, meta.gid, meta.mtime) = (m.uid(), m.gid(), m.mtime());
            meta.mtime_nsec = m.mtime_nsec() as u32;
            let mut chunks = Vec::new();
            match kind {
                NodeKind::File => {
                    meta.size = m.len();
                    let cs = u64::from(DEFAULT_CHUNK_SIZE);
                    for i in 0..m.len().div_ceil(cs) {
                        let len = (m.len() - i * cs).min(cs) as u32;
                        // Digests are random-looking in a real index; stored sizes about 40%.
                        let mut h = blake3::Hasher::new();
                        h.update(path.as_os_str().as_bytes());
                        h.update(&i.to_le_bytes());
                        let digest = *h.finalize().as_bytes();
                        let stored = (len / 5 * 2).max(1);
                        chunks.push(ChunkRef {
                            digest,
                            pack: 0,
                            compression: if stored < len {
                                Compression::Zstd
                            } else {
                                Compression::None
                            },
                            offset,
                            compressed_size: stored.min(len),
                            uncompressed_size: len,
                        });
                        offset += u64::from(stored.min(len));
                    }
                }
                NodeKind::Symlink => {
                    let Ok(t) = std::fs::read_link(e.path()) else {
                        continue;
                    };
                    meta.symlink_target = t.as_os_str().as_bytes().to_vec();
                }
                _ => stack.push(path.clone()),
            }
            b.add(path.as_os_str().as_bytes(), meta, chunks).unwrap();
            entries += 1;
        }
    }
    (b.finish().unwrap(), entries)
}
