//! `Index::open` on arbitrary bytes, then every accessor on whatever opened.
//!
//! The fuzzer cannot forge a BLAKE3 checksum, so most inputs are resealed first (their checksum
//! recomputed) to reach the structural checks behind it; inputs whose last byte is odd keep
//! theirs, so the checksum path is fuzzed too. Oracles: nothing panics, allocates without
//! bound or loops; and an index that passes `validate` answers every accessor without error,
//! its walk and its lookups agree. Split (artifact v3): the tree of any index that opened opens
//! with `open_tree`, validates as the index does, walks the same, hands out no chunk, and
//! with its digests back is the same blob; `open_tree` of the raw input never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pronto_format::{layout, Index, NodeKind};

fuzz_target!(|data: &[u8]| {
    let mut blob = data.to_vec();
    if data.last().is_some_and(|b| b & 1 == 0) {
        layout::reseal(&mut blob);
    }
    let _ = Index::open_tree(blob.clone()).map(|t| t.validate());
    let Ok(index) = Index::open(blob) else {
        return;
    };
    let valid = index.validate().is_ok();
    let _ = index.packs();
    let _ = index.config_json();
    let _ = index.source_manifest();
    let _ = index.chunk_size();

    // Every inode, every accessor (each must fail cleanly or succeed).
    let n = index.inode_count();
    for ino in 0..n {
        let inode = index.inode(ino);
        if valid {
            assert!(inode.is_ok(), "validated index: inode({ino}) failed");
        }
        let ok = |r: bool, what: &str| {
            if valid {
                assert!(r, "validated index: {what}({ino}) failed");
            }
        };
        let kind = inode.map(|i| i.kind).ok();
        let _ = index.parent(ino);
        let entries = index.read_dir(ino);
        ok(entries.is_ok() || kind != Some(NodeKind::Dir), "read_dir");
        if let Ok(entries) = &entries {
            for (i, (name, child)) in entries.iter().enumerate() {
                let found = index.lookup(ino, name);
                if valid {
                    assert_eq!(found, Ok(Some(*child)), "lookup disagrees with read_dir");
                    assert_eq!(
                        index.dir_entry(ino, i as u32),
                        Ok(Some((*name, *child))),
                        "dir_entry disagrees with read_dir"
                    );
                }
            }
        }
        let _ = index.dir_len(ino);
        let _ = index.dir_entry(ino, 0);
        let _ = index.dir_entry(ino, u32::MAX);
        for name in [&b"a"[..], b"", b".", b"..", b"a/b", b"\xff", b"zzzzzzzz"] {
            let _ = index.lookup(ino, name);
        }
        let chunks = index.chunks(ino);
        ok(chunks.is_ok() || kind != Some(NodeKind::File), "chunks");
        let _ = index.chunk_count(ino);
        let _ = index.chunk(ino, 0);
        let _ = index.chunk(ino, u32::MAX);
        let target = index.symlink_target(ino);
        ok(
            target.is_ok() || kind != Some(NodeKind::Symlink),
            "symlink_target",
        );
        ok(index.xattrs(ino).is_ok(), "xattrs");
    }
    for ino in [n, u32::MAX] {
        assert!(index.inode(ino).is_err());
    }

    match index.walk() {
        Ok(paths) => {
            for (path, ino) in &paths {
                let resolved = index.resolve(path);
                if valid {
                    assert_eq!(resolved, Ok(Some(*ino)), "resolve disagrees with walk");
                }
            }
        }
        Err(e) => assert!(!valid, "validated index: walk failed: {e}"),
    }
    for path in [&b""[..], b"/", b"a", b"a/b/c", b"../x", b"/./a//b"] {
        let _ = index.resolve(path);
    }

    let (tree, digests) = index.split_digests().expect("an opened index splits");
    let tree = Index::open_tree(tree).expect("the tree of an opened index opens");
    assert_eq!(tree.validate().is_ok(), valid, "the tree validates as the index does");
    if valid {
        assert_eq!(tree.walk().ok(), index.walk().ok(), "the tree walks as the index");
    }
    assert!(tree.chunk(0, 0).is_err() && tree.chunks(0).is_err());
    let whole = tree.with_digests(&digests).expect("its own digests complete it");
    assert_eq!(whole.as_bytes(), index.as_bytes());
});
