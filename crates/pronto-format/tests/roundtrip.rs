//! Property test: random trees (every kind, hardlinks, non-UTF-8 names, random metadata) built,
//! opened, validated and read back through the public API; two insertion orders give the same
//! bytes.

use std::collections::{BTreeMap, BTreeSet};

use pronto_format::{ChunkRef, Compression, Index, IndexBuilder, NodeKind, NodeMeta};
use proptest::prelude::*;

const CS: u32 = 4096;
const PACK_SIZE: u64 = 1 << 40;

#[derive(Debug, Clone)]
struct Spec {
    parent: usize,
    name: Vec<u8>,
    /// 0..7: a node of that kind; 7: a hardlink.
    kind: u8,
    meta: NodeMeta,
    link_target: usize,
}

fn kind_of(k: u8) -> NodeKind {
    [
        NodeKind::Dir,
        NodeKind::File,
        NodeKind::Symlink,
        NodeKind::CharDevice,
        NodeKind::BlockDevice,
        NodeKind::Fifo,
        NodeKind::Socket,
    ][k as usize % 7]
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            Just(b'a'),
            Just(b'b'),
            Just(b'.'),
            Just(b' '),
            Just(0xffu8),
            Just(b'Z')
        ],
        1..4,
    )
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn non_nul(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(1u8..=255, 1..max)
}

fn meta() -> impl Strategy<Value = NodeMeta> {
    (
        0u32..=0o7777,
        any::<u32>(),
        any::<u32>(),
        any::<i64>(),
        0u32..1_000_000_000,
        prop_oneof![
            Just(0u64),
            1u64..10,
            Just(u64::from(CS)),
            1u64..(3 * u64::from(CS) + 10)
        ],
        any::<u64>(),
        non_nul(40),
        proptest::collection::vec(
            (non_nul(8), proptest::collection::vec(any::<u8>(), 0..12)),
            0..4,
        ),
    )
        .prop_map(
            |(mode, uid, gid, mtime, mtime_nsec, size, rdev, target, xattrs)| NodeMeta {
                kind: NodeKind::File,
                mode,
                uid,
                gid,
                mtime,
                mtime_nsec,
                size,
                rdev,
                symlink_target: target,
                xattrs,
            },
        )
}

fn specs() -> impl Strategy<Value = Vec<Spec>> {
    proptest::collection::vec(
        (any::<usize>(), name(), 0u8..8, meta(), any::<usize>()).prop_map(
            |(parent, name, kind, meta, link_target)| Spec {
                parent,
                name,
                kind,
                meta,
                link_target,
            },
        ),
        0..60,
    )
}

#[derive(Debug, Clone)]
enum Entry {
    Node(NodeMeta, Vec<ChunkRef>),
    Link(Vec<u8>),
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}

/// Turns specs into a valid tree: (path, entry) in an order where parents and link targets
/// come first.
fn model(specs: Vec<Spec>) -> Vec<(Vec<u8>, Entry)> {
    let mut dirs: Vec<Vec<u8>> = vec![Vec::new()];
    let mut linkable: Vec<Vec<u8>> = Vec::new();
    let mut taken: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut out = Vec::new();
    let mut offset = 0u64;
    for s in specs {
        let parent = dirs[s.parent % dirs.len()].clone();
        let path = join(&parent, &s.name);
        if path.len() > 4095 || !taken.insert(path.clone()) {
            continue;
        }
        if s.kind == 7 {
            if linkable.is_empty() {
                taken.remove(&path);
                continue;
            }
            let target = linkable[s.link_target % linkable.len()].clone();
            out.push((path, Entry::Link(target)));
            continue;
        }
        let mut m = s.meta;
        m.kind = kind_of(s.kind);
        let xattrs: BTreeMap<Vec<u8>, Vec<u8>> = m.xattrs.drain(..).collect();
        m.xattrs = xattrs.into_iter().collect();
        let mut chunks = Vec::new();
        if m.kind == NodeKind::File {
            let n = m.size.div_ceil(u64::from(CS));
            for i in 0..n {
                let len = (m.size - i * u64::from(CS)).min(u64::from(CS)) as u32;
                let mut digest = [i as u8; 32];
                digest[..path.len().min(32)].copy_from_slice(&path[..path.len().min(32)]);
                // Alternate raw and compressed records (only the shape matters here).
                let (compression, stored) = if i % 2 == 1 && len > 1 {
                    (Compression::Zstd, len / 2)
                } else {
                    (Compression::None, len)
                };
                chunks.push(ChunkRef {
                    digest,
                    pack: 0,
                    compression,
                    offset,
                    compressed_size: stored,
                    uncompressed_size: len,
                });
                offset += u64::from(stored);
            }
        }
        match m.kind {
            NodeKind::Dir => dirs.push(path.clone()),
            _ => linkable.push(path.clone()),
        }
        out.push((path, Entry::Node(m, chunks)));
    }
    out
}

fn build(entries: &[(Vec<u8>, Entry)]) -> Vec<u8> {
    let mut b = IndexBuilder::new(CS);
    b.add_pack([9; 32], PACK_SIZE);
    b.set_source([8; 32], b"{\"os\":\"linux\"}".to_vec());
    for (path, e) in entries {
        match e {
            Entry::Node(m, chunks) => b.add(path, m.clone(), chunks.clone()).unwrap(),
            Entry::Link(target) => b.add_hardlink(path, target).unwrap(),
        }
    }
    b.finish().unwrap()
}

/// Another valid insertion order: by depth, siblings reversed, hardlinks last.
fn reordered(entries: &[(Vec<u8>, Entry)]) -> Vec<(Vec<u8>, Entry)> {
    let depth = |p: &[u8]| p.iter().filter(|&&c| c == b'/').count();
    let (mut links, mut nodes): (Vec<_>, Vec<_>) = entries
        .iter()
        .cloned()
        .partition(|(_, e)| matches!(e, Entry::Link(_)));
    nodes.reverse();
    nodes.sort_by_key(|(p, _)| depth(p));
    links.reverse();
    nodes.extend(links);
    nodes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_trees_round_trip(specs in specs()) {
        let entries = model(specs);
        let blob = build(&entries);
        prop_assert_eq!(&blob, &build(&reordered(&entries)), "insertion order changed the bytes");
        let index = Index::open(blob).unwrap();
        index.validate().unwrap();

        // The walk lists exactly the model's paths (and the root).
        let walked: BTreeMap<Vec<u8>, u32> = index.walk().unwrap().into_iter().collect();
        let mut want: BTreeSet<Vec<u8>> = entries.iter().map(|(p, _)| p.clone()).collect();
        want.insert(Vec::new());
        prop_assert_eq!(walked.keys().cloned().collect::<BTreeSet<_>>(), want);

        let mut names_of: BTreeMap<u32, u32> = BTreeMap::new();
        for (path, e) in &entries {
            let ino = index.resolve(path).unwrap().unwrap();
            prop_assert_eq!(walked[path], ino);
            *names_of.entry(ino).or_default() += 1;
            let m = match e {
                Entry::Link(target) => {
                    prop_assert_eq!(index.resolve(target).unwrap(), Some(ino));
                    continue;
                }
                Entry::Node(m, chunks) => {
                    if m.kind == NodeKind::File {
                        prop_assert_eq!(&index.chunks(ino).unwrap(), chunks);
                    }
                    m
                }
            };
            let i = index.inode(ino).unwrap();
            prop_assert_eq!(i.kind, m.kind);
            prop_assert_eq!(
                (i.mode, i.uid, i.gid, i.mtime, i.mtime_nsec),
                (m.mode, m.uid, m.gid, m.mtime, m.mtime_nsec)
            );
            match m.kind {
                NodeKind::File => prop_assert_eq!(i.size, m.size),
                NodeKind::Symlink => {
                    prop_assert_eq!(index.symlink_target(ino).unwrap(), &m.symlink_target[..]);
                    prop_assert_eq!(i.size, m.symlink_target.len() as u64);
                }
                _ => prop_assert_eq!(i.size, 0),
            }
            prop_assert_eq!(i.rdev, if m.kind.is_device() { m.rdev } else { 0 });
            let xattrs: Vec<(Vec<u8>, Vec<u8>)> = index
                .xattrs(ino)
                .unwrap()
                .into_iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect();
            prop_assert_eq!(&xattrs, &m.xattrs);
        }
        for (ino, names) in names_of {
            let i = index.inode(ino).unwrap();
            if i.kind != NodeKind::Dir {
                prop_assert_eq!(i.nlink, names);
            } else {
                let subdirs = index
                    .read_dir(ino)
                    .unwrap()
                    .iter()
                    .filter(|(_, c)| index.inode(*c).unwrap().kind == NodeKind::Dir)
                    .count() as u32;
                prop_assert_eq!(i.nlink, 2 + subdirs);
            }
        }
    }
}
