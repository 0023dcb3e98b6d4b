//! The artifact's index layer on a real registry: the split index (artifact v3, mounted from
//! its tree first), the compressed one (v2) and the uncompressed one (v1) of artifacts
//! converted before all mount and equal a plain unpack; a compressed layer that is not what its
//! manifest says is refused by `fetch_artifact`, naming the check.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{accelerate, blocking, client, fast_retry, mount_at};
use pronto_artifact::{
    artifact_reference, build_manifest, fetch_artifact, fetch_artifact_for_mount, push_manifest,
    ArtifactError, IndexLayer, Revision, ARTIFACT_TYPE_V1, ARTIFACT_TYPE_V2, INDEX_MEDIA_TYPE,
    INDEX_SIZE_ANNOTATION, INDEX_SPLIT_MEDIA_TYPE, INDEX_ZSTD_MEDIA_TYPE,
};
use pronto_format::FormatError;
use pronto_image::manifest::{ImageManifest, ManifestKind};
use pronto_image::pull::{self, NoProgress, ResolvedImage};
use pronto_image::Digest;
use pronto_lazyfs::ChunkCache;
use pronto_testkit::fixtures::ground_truth_images;
use pronto_testkit::registry::TestRegistry;
use pronto_testkit::tree::Tree;

const CHUNK: u32 = 64 << 10;

async fn artifact_manifest(image: &ResolvedImage) -> ImageManifest {
    let reference = artifact_reference(&image.pinned, &image.manifest_digest);
    match client().fetch_manifest(&reference).await.unwrap().kind {
        ManifestKind::Image(m) => *m,
        ManifestKind::Index(_) => panic!("an artifact is an image manifest"),
    }
}

async fn replace_manifest(image: &ResolvedImage, manifest: &ImageManifest) {
    push_manifest(&client(), &image.pinned, &image.manifest_digest, manifest)
        .await
        .unwrap();
}

/// Rewrites the artifact as a converter from before the split did (v2: the index compressed
/// whole); returns its manifest.
async fn rewrite_as_v2(image: &ResolvedImage, whole: &Bytes) -> ImageManifest {
    let current = artifact_manifest(image).await;
    let layer = IndexLayer::compress(whole);
    client()
        .push_blob(&image.pinned, layer.bytes.clone())
        .await
        .unwrap();
    let packs: Vec<_> = current.layers[1..]
        .iter()
        .map(|l| (l.digest.clone(), l.size))
        .collect();
    let v2 = build_manifest(current.subject.as_ref().unwrap(), &layer, &packs);
    assert_eq!(v2.artifact_type.as_deref(), Some(ARTIFACT_TYPE_V2));
    replace_manifest(image, &v2).await;
    v2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_v2_and_v3_artifacts_all_mount_and_equal_an_unpack() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    let (name, image) = ground_truth_images(CHUNK).remove(0);
    let (resolved, whole) = accelerate(
        &registry,
        image,
        &format!("v1/{name}:v1"),
        CHUNK,
        work.path(),
    )
    .await;

    // What the converter writes now: the index split, its own digest kept. For a mount, the
    // tree comes first; the whole index is the one `fetch_artifact` gives.
    let mut manifest = artifact_manifest(&resolved).await;
    assert_eq!(manifest.layers[0].media_type, INDEX_SPLIT_MEDIA_TYPE);
    let uncompressed = whole.index.as_bytes().clone();
    assert_eq!(whole.index_digest, Digest::of(&uncompressed));
    assert_eq!(whole.index_layer_size, manifest.layers[0].size);
    assert!(whole.index_layer_size < uncompressed.len() as u64);
    let v3 = fetch_artifact_for_mount(&client(), &resolved, &resolved.pinned, &Revision::Base)
        .await
        .unwrap();
    assert!(v3.index.is_tree_only());
    assert_eq!(v3.index.walk().unwrap(), whole.index.walk().unwrap());
    let completed = blocking({
        let w = v3.whole_index.clone();
        move || w.wait(Duration::from_secs(10)).unwrap().as_bytes().clone()
    })
    .await;
    assert_eq!(completed, uncompressed);

    let v2_manifest = rewrite_as_v2(&resolved, &uncompressed).await;
    let v2 = fetch_artifact_for_mount(&client(), &resolved, &resolved.pinned, &Revision::Base)
        .await
        .unwrap();
    assert_eq!(v2.index_layer_size, v2_manifest.layers[0].size);
    assert!(!v2.index.is_tree_only(), "a v2 layer is fetched whole");
    assert_eq!(v2.index.as_bytes(), &uncompressed);

    // Rewrite it as a converter from before the change did: artifact v1, the index as is.
    let reference = registry.reference(&format!("v1/{name}:v1"));
    let pushed = client()
        .push_blob(&reference, uncompressed.clone())
        .await
        .unwrap();
    assert_eq!(pushed, whole.index_digest);
    manifest.artifact_type = Some(ARTIFACT_TYPE_V1.into());
    manifest.layers[0].media_type = INDEX_MEDIA_TYPE.into();
    manifest.layers[0].digest = pushed;
    manifest.layers[0].size = uncompressed.len() as u64;
    manifest.layers[0].annotations = None;
    replace_manifest(&resolved, &manifest).await;

    let v1 = fetch_artifact(&client(), &resolved).await.unwrap();
    assert_ne!(v1.digest, v2.digest, "the manifest was replaced");
    assert_eq!(v1.index_digest, v2.index_digest);
    assert_eq!(v1.index_layer_size, uncompressed.len() as u64);
    assert_eq!(v1.index.as_bytes(), &uncompressed);

    let unpacked = work.path().join("unpack");
    pull::unpack_image(&client(), &resolved, &unpacked, Arc::new(NoProgress))
        .await
        .unwrap();
    for (label, artifact) in [("v1", &v1), ("v2", &v2), ("v3", &v3)] {
        let dir = work.path().join(format!("mnt-{label}"));
        let mount = mount_at(artifact, &cache, &dir, fast_retry());
        let (expected, actual) = blocking({
            let (unpacked, dir) = (unpacked.clone(), dir.clone());
            move || {
                (
                    Tree::snapshot(&unpacked).unwrap(),
                    Tree::snapshot(&dir).unwrap(),
                )
            }
        })
        .await;
        assert!(!expected.0.is_empty());
        let diff = expected.diff(&actual);
        assert!(
            diff.is_empty(),
            "{label}: mount differs from the unpack:\n{}",
            diff.join("\n")
        );
        blocking(move || mount.unmount().unwrap()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_index_that_is_not_what_the_manifest_says_is_refused_naming_the_check() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let (name, image) = ground_truth_images(CHUNK).remove(0);
    let tag = format!("bad/{name}:v1");
    let (resolved, good) = accelerate(&registry, image, &tag, CHUNK, work.path()).await;
    let reference = registry.reference(&tag);
    let original = rewrite_as_v2(&resolved, good.index.as_bytes()).await;
    assert_eq!(original.layers[0].media_type, INDEX_ZSTD_MEDIA_TYPE);
    let n = good.index.as_bytes().len();

    // Layer bytes that match their own digest (so the registry client passes them) but
    // decompress to another blob: the index digest check names both.
    let mut other = good.index.as_bytes().to_vec();
    other[n - 1] ^= 1;
    let lying = Bytes::from(zstd::bulk::compress(&other, 3).unwrap());
    let lying_digest = client().push_blob(&reference, lying.clone()).await.unwrap();
    let mut m = original.clone();
    m.layers[0].digest = lying_digest.clone();
    m.layers[0].size = lying.len() as u64;
    replace_manifest(&resolved, &m).await;
    let e = fetch_artifact(&client(), &resolved).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "index layer {lying_digest} decompresses to {}, its annotation says {}",
            Digest::of(&other),
            good.index_digest
        )
    );

    // A bomb: 256 MiB of zeros in a few KiB, declared as the index's size. Refused at that size.
    let bomb = Bytes::from(zstd::bulk::compress(&vec![0u8; 256 << 20], 3).unwrap());
    assert!(bomb.len() < 64 << 10);
    let bomb_digest = client().push_blob(&reference, bomb.clone()).await.unwrap();
    let mut m = original.clone();
    m.layers[0].digest = bomb_digest.clone();
    m.layers[0].size = bomb.len() as u64;
    replace_manifest(&resolved, &m).await;
    let e = fetch_artifact(&client(), &resolved).await.unwrap_err();
    assert!(
        matches!(
            &e,
            ArtifactError::IndexDecompress {
                source: FormatError::IndexLargerThanDeclared { declared },
                ..
            } if *declared == n as u64
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "index layer {bomb_digest}: compressed index: decompresses to more than its \
             declared {n} bytes (refused: decompression is bounded by the declared size)"
        )
    );

    // The manifest declaring a size past the cap: refused before decoding.
    let mut m = original.clone();
    m.layers[0]
        .annotations
        .as_mut()
        .unwrap()
        .insert(INDEX_SIZE_ANNOTATION.into(), (2u64 << 30).to_string());
    replace_manifest(&resolved, &m).await;
    let e = fetch_artifact(&client(), &resolved).await.unwrap_err();
    assert!(
        e.to_string().ends_with(
            "compressed index: declared size 2147483648 bytes exceeds the 1073741824-byte cap"
        ),
        "{e}"
    );

    // A byte flipped in the stored layer: the registry client's digest check.
    replace_manifest(&resolved, &original).await;
    let path = registry.blob_path(&original.layers[0].digest);
    let stored = std::fs::read(&path).unwrap();
    let mut flipped = stored.clone();
    flipped[stored.len() / 2] ^= 1;
    std::fs::write(&path, &flipped).unwrap();
    let e = fetch_artifact(&client(), &resolved).await.unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "fetching the artifact's index: blob {} failed verification",
            original.layers[0].digest
        )),
        "{e}"
    );
    std::fs::write(&path, &stored).unwrap();
    let again = fetch_artifact(&client(), &resolved).await.unwrap();
    assert_eq!(again.index_digest, good.index_digest);
}
