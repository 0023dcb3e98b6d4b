//! A mount from a split index layer (artifact v3) serves from the tree before the chunk
//! digests after it have arrived; when they never arrive (a registry that stalls right after
//! the tree) or are not the index's (a layer rewritten with another index's digests), the tree
//! still reads as the image and every read of a file's bytes fails with EIO, the reason in the
//! log, never a byte from a chunk that could not be checked; no wait is unbounded.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{accelerate, blocking, client, fast_retry, is_mounted, mount_at};
use pronto_artifact::{
    artifact_reference, build_manifest, fetch_artifact, fetch_artifact_for_mount, push_manifest,
    Artifact, ArtifactError, IndexLayer, Revision, TREE_SIZE_ANNOTATION,
};
use pronto_format::{Index, NodeKind};
use pronto_image::manifest::{ImageManifest, ManifestKind};
use pronto_image::pull::{self, ResolvedImage};
use pronto_image::{ClientOptions, RegistryClient};
use pronto_lazyfs::{ChunkCache, LazyMount, MountOptions};
use pronto_testkit::faulty::{Fault, FaultyProxy, Rule};
use pronto_testkit::fixtures::ground_truth_images;
use pronto_testkit::registry::TestRegistry;

const CHUNK: u32 = 64 << 10;

fn logs() -> &'static Arc<std::sync::Mutex<Vec<u8>>> {
    common::logs("pronto_lazyfs=warn,pronto_artifact=warn,fuser=error")
}

async fn artifact_manifest(image: &ResolvedImage) -> ImageManifest {
    let reference = artifact_reference(&image.pinned, &image.manifest_digest);
    match client().fetch_manifest(&reference).await.unwrap().kind {
        ManifestKind::Image(m) => *m,
        ManifestKind::Index(_) => panic!("an artifact is an image manifest"),
    }
}

/// Every entry of `index` has, under `dir`, the kind, mode, owner and size the index says
/// (stat only: no file's bytes are read).
fn metadata_matches(index: &Index, dir: &Path) {
    let entries = index.walk().unwrap();
    assert!(entries.len() > 3, "{} entries", entries.len());
    for (path, ino) in entries {
        let path = String::from_utf8(path).unwrap();
        let node = index.inode(ino).unwrap();
        let m = std::fs::symlink_metadata(dir.join(path.trim_start_matches('/'))).unwrap();
        assert_eq!(m.mode() & 0o7777, node.mode, "{path}");
        assert_eq!((m.uid(), m.gid()), (node.uid, node.gid), "{path}");
        if node.kind == NodeKind::File {
            assert!(m.is_file(), "{path}");
            assert_eq!(m.len(), node.size, "{path}");
        }
    }
}

/// The largest regular file of `index`: its path under the mount.
fn largest_file(index: &Index) -> (String, u64) {
    index
        .walk()
        .unwrap()
        .into_iter()
        .filter_map(|(path, ino)| {
            let node = index.inode(ino).unwrap();
            (node.kind == NodeKind::File).then(|| (String::from_utf8(path).unwrap(), node.size))
        })
        .max_by_key(|(_, size)| *size)
        .unwrap()
}

fn read_fails_with_eio(dir: &Path, path: &str, within: Duration) {
    let started = Instant::now();
    let e = std::fs::read(dir.join(path.trim_start_matches('/'))).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{path}: {e}");
    assert!(started.elapsed() < within, "{:?}", started.elapsed());
}

fn mount(
    artifact: &Artifact,
    client: RegistryClient,
    cache: &Arc<ChunkCache>,
    dir: &Path,
) -> LazyMount {
    std::fs::create_dir_all(dir).unwrap();
    let options = MountOptions {
        retry: fast_retry(),
        ..MountOptions::default()
    };
    LazyMount::mount(
        artifact,
        client,
        cache.clone(),
        dir,
        &options,
        tokio::runtime::Handle::current(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_that_stalls_after_its_tree_mounts_the_tree_and_fails_reads_with_eio() {
    logs();
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let (name, image) = ground_truth_images(CHUNK).remove(0);
    let tag = format!("split/{name}:v1");
    let (resolved, whole) = accelerate(&registry, image, &tag, CHUNK, work.path()).await;
    let manifest = artifact_manifest(&resolved).await;
    let layer = &manifest.layers[0];
    let tree_size: u64 = layer.annotations.as_ref().unwrap()[TREE_SIZE_ANNOTATION]
        .parse()
        .unwrap();

    // Through a proxy that passes the layer's tree, then sends nothing more.
    let proxy = FaultyProxy::start(registry.addr());
    proxy.add(Rule::path(&layer.digest.hex()).fault(Fault::StallBodyAfter(tree_size)));
    let stalling = RegistryClient::new(ClientOptions {
        idle_timeout: Duration::from_secs(1),
        ..ClientOptions::default()
    })
    .unwrap();
    let via: pronto_image::Reference = format!("{}/{tag}", proxy.host()).parse().unwrap();
    let via = pull::resolve(&client(), &via).await.unwrap();
    let artifact = fetch_artifact_for_mount(&stalling, &via, &via.pinned, &Revision::Base)
        .await
        .unwrap();
    assert!(artifact.index.is_tree_only());
    assert!(
        artifact.whole_index.get().is_none(),
        "the digests never came"
    );

    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    let dir = work.path().join("mnt");
    let mount = mount(&artifact, stalling, &cache, &dir);
    let (index, d) = (whole.index.clone(), dir.clone());
    blocking(move || {
        // The tree is the image's, though no digest has arrived.
        metadata_matches(&index, &d);
        // A read waits for the digests; the stalled layer fails after the client's idle bound.
        let (path, size) = largest_file(&index);
        assert!(size > 0);
        read_fails_with_eio(&d, &path, Duration::from_secs(10));
        // And at once after that (the failure stays).
        read_fails_with_eio(&d, &path, Duration::from_secs(1));
    })
    .await;
    let log = String::from_utf8(logs().lock().unwrap().clone()).unwrap();
    assert!(
        log.lines().any(|l| l.contains("no chunk can be read")
            && l.contains("chunk digests are unusable")
            && l.contains(&layer.digest.to_string())),
        "{log}"
    );
    assert_eq!(cache.stats().chunks, 0, "nothing unchecked was cached");
    blocking(move || mount.unmount().unwrap()).await;
    assert!(!is_mounted(&dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_that_are_not_the_index_s_are_refused_and_no_byte_is_served() {
    logs();
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let (name, image) = ground_truth_images(CHUNK).remove(0);
    let tag = format!("split-lie/{name}:v1");
    let (resolved, whole) = accelerate(&registry, image, &tag, CHUNK, work.path()).await;
    let manifest = artifact_manifest(&resolved).await;

    // The same tree, each chunk's digest swapped with the next one's: a layer whose own digest
    // and tree digest are right (its manifest was made for it), whose digests are not the index's.
    let good = IndexLayer::split(&whole.index).unwrap();
    let (tree_size, _) = good.tree.clone().unwrap();
    let mut lying = good.bytes.to_vec();
    let digests = &mut lying[tree_size as usize..];
    assert!(digests.len() >= 64, "at least two chunks");
    let (first, second) = digests.split_at_mut(32);
    first.swap_with_slice(&mut second[..32]);
    assert_ne!(&lying[..], &good.bytes[..]);
    let mut layer = good.clone();
    layer.bytes = Bytes::from(lying);
    layer.digest = client()
        .push_blob(&resolved.pinned, layer.bytes.clone())
        .await
        .unwrap();
    let packs: Vec<_> = manifest.layers[1..]
        .iter()
        .map(|l| (l.digest.clone(), l.size))
        .collect();
    let m = build_manifest(manifest.subject.as_ref().unwrap(), &layer, &packs);
    push_manifest(&client(), &resolved.pinned, &resolved.manifest_digest, &m)
        .await
        .unwrap();

    // Fetched whole: refused, naming the check.
    let e = fetch_artifact(&client(), &resolved).await.unwrap_err();
    assert!(matches!(e, ArtifactError::IndexDigests { .. }), "{e}");
    assert!(e.to_string().contains("checksum mismatch"), "{e}");

    // For a mount: the tree serves, the bytes do not.
    let artifact =
        fetch_artifact_for_mount(&client(), &resolved, &resolved.pinned, &Revision::Base)
            .await
            .unwrap();
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    let dir = work.path().join("mnt");
    let mount = mount_at(&artifact, &cache, &dir, fast_retry());
    let (index, d) = (whole.index.clone(), dir.clone());
    blocking(move || {
        metadata_matches(&index, &d);
        let (path, _) = largest_file(&index);
        read_fails_with_eio(&d, &path, Duration::from_secs(10));
    })
    .await;
    let log = String::from_utf8(logs().lock().unwrap().clone()).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("no chunk can be read") && l.contains("checksum mismatch")),
        "{log}"
    );
    assert_eq!(cache.stats().chunks, 0);
    blocking(move || mount.unmount().unwrap()).await;
    assert!(!is_mounted(&dir));
}
