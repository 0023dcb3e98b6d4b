//! Writes a few valid index blobs to a directory, as seeds for the fuzzer:
//! `cargo run -p pronto-format --example fuzz_seeds -- fuzz/corpus/index_open`.

use std::path::PathBuf;

use pronto_format::{
    chunk_digest, compress_chunk, ChunkRef, Compression, IndexBuilder, NodeKind, NodeMeta,
};

fn meta(kind: NodeKind, mode: u32) -> NodeMeta {
    NodeMeta::new(kind, mode)
}

/// A file with real chunks of `content`, stored in pack 0 from `*offset`.
fn add_file(b: &mut IndexBuilder, path: &[u8], content: &[u8], chunk_size: u32, offset: &mut u64) {
    let mut chunks = Vec::new();
    for piece in content.chunks(chunk_size as usize) {
        let (stored, compression) = compress_chunk(piece, Compression::Zstd);
        chunks.push(ChunkRef {
            digest: chunk_digest(piece),
            pack: 0,
            compression,
            offset: *offset,
            compressed_size: stored.len() as u32,
            uncompressed_size: piece.len() as u32,
        });
        *offset += stored.len() as u64;
    }
    let mut m = meta(NodeKind::File, 0o644);
    m.size = content.len() as u64;
    b.add(path, m, chunks).expect("seed file");
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let cs = 4096;
    let mut out = Vec::new();

    let mut b = IndexBuilder::new(cs);
    b.set_source([1; 32], b"{}".to_vec());
    out.push(("empty-root", b.finish().expect("seed")));

    let mut b = IndexBuilder::new(cs);
    b.add_pack([2; 32], 1 << 20);
    b.set_source([3; 32], br#"{"config":{"Cmd":["/bin/sh"]}}"#.to_vec());
    let mut off = 0;
    for d in [&b"bin"[..], b"dev", b"etc", b"etc/empty"] {
        b.add(d, meta(NodeKind::Dir, 0o755), vec![])
            .expect("seed dir");
    }
    add_file(&mut b, b"bin/sh", &b"#!/bin/sh\n".repeat(500), cs, &mut off);
    add_file(&mut b, b"etc/zero", b"", cs, &mut off);
    add_file(&mut b, b"etc/\xffname", b"x", cs, &mut off);
    let mut l = meta(NodeKind::Symlink, 0o777);
    l.symlink_target = b"/bin/sh".to_vec();
    b.add(b"bin/ash", l, vec![]).expect("seed symlink");
    let mut null = meta(NodeKind::CharDevice, 0o666);
    null.rdev = 0x103;
    null.xattrs = vec![
        (b"user.a".to_vec(), b"1".to_vec()),
        (b"security.x".to_vec(), vec![]),
    ];
    b.add(b"dev/null", null, vec![]).expect("seed dev");
    b.add(b"dev/sda", meta(NodeKind::BlockDevice, 0o660), vec![])
        .expect("seed dev");
    b.add(b"dev/fifo", meta(NodeKind::Fifo, 0o600), vec![])
        .expect("seed fifo");
    b.add(b"dev/sock", meta(NodeKind::Socket, 0o600), vec![])
        .expect("seed sock");
    b.add_hardlink(b"bin/sh2", b"bin/sh").expect("seed link");
    out.push(("every-kind", b.finish().expect("seed")));

    let mut b = IndexBuilder::new(cs);
    b.add_pack([4; 32], 1 << 20);
    let mut off = 0;
    let mut path = Vec::new();
    for i in 0..6u8 {
        if i > 0 {
            path.push(b'/');
        }
        path.push(b'a' + i);
        b.add(&path, meta(NodeKind::Dir, 0o700), vec![])
            .expect("seed deep");
        let mut f = path.clone();
        f.extend_from_slice(b"/file");
        add_file(&mut b, &f, &[i; 5000], cs, &mut off);
    }
    out.push(("deep", b.finish().expect("seed")));
    out
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus/index_open".into()),
    );
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    for (name, blob) in seeds() {
        pronto_format::Index::open(blob.clone())
            .and_then(|i| i.validate())
            .expect("seeds are valid");
        let path = dir.join(format!("seed-{name}"));
        std::fs::write(&path, &blob).expect("write a seed");
        println!("{} ({} bytes)", path.display(), blob.len());
    }
}
