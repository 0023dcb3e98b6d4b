//! Bad input gets a precise error, and leaves no partial rootfs (nor staging or download files)
//! behind.

mod common;

use bytes::Bytes;
use pronto_image::manifest::{self, Descriptor, ImageManifest};
use pronto_image::pull::PullError;
use pronto_image::registry::RegistryError;
use pronto_image::Digest;
use pronto_testkit::image::{ImageBuilder, Layer};
use pronto_testkit::registry::TestRegistry;

/// Runs a pull into `work/rootfs` and asserts it failed and left nothing in `work`.
async fn failing_pull(registry: &TestRegistry, repo_tag: &str) -> PullError {
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("rootfs");
    let err = common::pronto_unpack(&common::client(), &registry.reference(repo_tag), &target)
        .await
        .expect_err("the pull must fail");
    let left: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind after {err}: {left:?}");
    err
}

fn sample() -> ImageBuilder {
    ImageBuilder::new()
        .layer(
            Layer::gzip()
                .file("a", vec![7u8; 200_000])
                .file("b/c", b"c"),
        )
        .layer(Layer::gzip().file("d", b"d"))
}

#[tokio::test]
async fn unknown_repository_and_tag_are_not_found() {
    let registry = TestRegistry::start();
    sample()
        .push(&common::client(), &registry.reference("app:v1"))
        .await
        .unwrap();
    let err = failing_pull(&registry, "nosuch/repo:v1").await;
    assert_eq!(
        err.to_string(),
        format!("manifest not found: {}/nosuch/repo:v1", registry.host())
    );
    let err = failing_pull(&registry, "app:v2").await;
    assert_eq!(
        err.to_string(),
        format!("manifest not found: {}/app:v2", registry.host())
    );
}

#[tokio::test]
async fn registry_down_says_which_registry() {
    let mut registry = TestRegistry::start();
    sample()
        .push(&common::client(), &registry.reference("app:v1"))
        .await
        .unwrap();
    registry.stop();
    let err = failing_pull(&registry, "app:v1").await;
    assert!(
        matches!(err, PullError::Registry(RegistryError::Connect { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("cannot reach registry {}: ", registry.host())),
        "{err}"
    );
}

#[tokio::test]
async fn tampered_blob_is_a_digest_mismatch() {
    let registry = TestRegistry::start();
    let image = sample()
        .push(&common::client(), &registry.reference("app:v1"))
        .await
        .unwrap();
    let layer = &image.manifest.layers[0];
    let path = registry.blob_path(&layer.digest);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff; // same size, different content
    std::fs::write(&path, bytes).unwrap();
    let err = failing_pull(&registry, "app:v1").await;
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("blob {} failed verification", layer.digest)),
        "{msg}"
    );
    assert!(msg.contains("digest mismatch"), "{msg}");
}

#[tokio::test]
async fn truncated_blob_is_a_size_mismatch() {
    let registry = TestRegistry::start();
    let image = sample()
        .push(&common::client(), &registry.reference("app:v1"))
        .await
        .unwrap();
    let layer = &image.manifest.layers[0];
    let path = registry.blob_path(&layer.digest);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    let msg = failing_pull(&registry, "app:v1").await.to_string();
    assert!(
        msg.contains(&format!("blob {} failed verification", layer.digest)),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("size mismatch: expected {} bytes", layer.size)),
        "{msg}"
    );
}

/// Pushes a manifest over one real layer, with the layer's media type replaced.
async fn push_with_layer_type(registry: &TestRegistry, tag: &str, media_type: &str, config: &[u8]) {
    let client = common::client();
    let reference = registry.reference(&format!("odd:{tag}"));
    let (_, blob) = Layer::gzip().file("x", b"x").build().unwrap();
    let size = blob.len() as u64;
    let layer = client
        .push_blob(&reference, Bytes::from(blob))
        .await
        .unwrap();
    let config_digest = client
        .push_blob(&reference, Bytes::copy_from_slice(config))
        .await
        .unwrap();
    let desc = |media_type: &str, digest: Digest, size| Descriptor {
        media_type: media_type.into(),
        digest,
        size,
        platform: None,
        annotations: None,
        artifact_type: None,
    };
    let m = ImageManifest {
        schema_version: 2,
        media_type: Some(manifest::OCI_MANIFEST.into()),
        artifact_type: None,
        config: desc(manifest::OCI_CONFIG, config_digest, config.len() as u64),
        layers: vec![desc(media_type, layer, size)],
        subject: None,
        annotations: None,
    };
    client
        .push_manifest(
            &reference,
            tag,
            manifest::OCI_MANIFEST,
            Bytes::from(serde_json::to_vec(&m).unwrap()),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn unsupported_layer_media_type_fails_before_download() {
    let registry = TestRegistry::start();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    push_with_layer_type(
        &registry,
        "bzip",
        "application/vnd.oci.image.layer.v1.tar+bzip2",
        config,
    )
    .await;
    let msg = failing_pull(&registry, "odd:bzip").await.to_string();
    assert!(
        msg.contains(
            "unsupported layer media type \"application/vnd.oci.image.layer.v1.tar+bzip2\""
        ),
        "{msg}"
    );
}

#[tokio::test]
async fn malformed_config_json_is_reported_with_its_digest() {
    let registry = TestRegistry::start();
    push_with_layer_type(
        &registry,
        "badcfg",
        manifest::OCI_LAYER_GZIP,
        b"{\"architecture\": ",
    )
    .await;
    let msg = failing_pull(&registry, "odd:badcfg").await.to_string();
    let digest = Digest::of(b"{\"architecture\": ");
    assert!(
        msg.starts_with(&format!("image config {digest} is not valid JSON")),
        "{msg}"
    );
}

#[tokio::test]
async fn malformed_manifest_json_is_reported() {
    // The registry validates manifests on upload, so plant one in its storage the way a
    // corrupted or hostile registry would serve it: a blob with its true digest, and the tag
    // pointing at it.
    let registry = TestRegistry::start();
    let client = common::client();
    sample()
        .push(&client, &registry.reference("app:v1"))
        .await
        .unwrap();
    // Well-formed for Distribution (which unmarshals before serving), malformed for OCI: a
    // negative size and a digest that is not 64 hex digits.
    let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:abc","size":-1},"layers":[]}"#;
    let digest = client
        .push_blob(&registry.reference("app:v1"), Bytes::from_static(body))
        .await
        .unwrap();
    let repo = registry
        .blob_path(&digest)
        .ancestors()
        .nth(5)
        .unwrap()
        .join("repositories/app/_manifests");
    for link in [
        repo.join(format!("revisions/sha256/{}/link", digest.hex())),
        repo.join(format!("tags/broken/index/sha256/{}/link", digest.hex())),
        repo.join("tags/broken/current/link"),
    ] {
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::fs::write(&link, digest.to_string()).unwrap();
    }
    let err = failing_pull(&registry, "app:broken").await;
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "manifest {}/app:broken: malformed manifest: ",
            registry.host()
        )),
        "{msg}"
    );
}

#[tokio::test]
async fn target_that_is_not_empty_is_refused_and_kept() {
    let registry = TestRegistry::start();
    sample()
        .push(&common::client(), &registry.reference("app:v1"))
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("rootfs");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("precious"), b"keep me").unwrap();
    let err = common::pronto_unpack(&common::client(), &registry.reference("app:v1"), &target)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("target {}: directory is not empty", target.display())
    );
    assert_eq!(std::fs::read(target.join("precious")).unwrap(), b"keep me");

    // An empty directory is fine, and is replaced by the tree.
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    common::pronto_unpack(&common::client(), &registry.reference("app:v1"), &empty)
        .await
        .unwrap();
    assert_eq!(std::fs::read(empty.join("d")).unwrap(), b"d");
}

/// A config blob over the cap (8 MiB) is refused by its descriptor's size, before a byte of it
/// is downloaded (a 400 MB config once raised the daemon's RSS to ~1 GB).
#[tokio::test]
async fn config_over_the_cap_is_refused_before_download() {
    let registry = TestRegistry::start();
    let cap = 8usize << 20;
    let head =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"pad":""#;
    let mut config = head.to_vec();
    config.resize(cap + 1 - 2, b'x');
    config.extend_from_slice(b"\"}");
    assert_eq!(config.len(), cap + 1);
    serde_json::from_slice::<serde_json::Value>(&config).unwrap();
    push_with_layer_type(&registry, "bigcfg", manifest::OCI_LAYER_GZIP, &config).await;
    let msg = failing_pull(&registry, "odd:bigcfg").await.to_string();
    assert_eq!(
        msg,
        format!(
            "image config {} declares {} bytes, more than the limit of {cap} bytes",
            Digest::of(&config),
            cap + 1
        )
    );
    // Just under the cap is fine.
    config.truncate(cap - 2);
    config.extend_from_slice(b"\"}");
    push_with_layer_type(&registry, "okcfg", manifest::OCI_LAYER_GZIP, &config).await;
    let work = tempfile::tempdir().unwrap();
    common::pronto_unpack(
        &common::client(),
        &registry.reference("odd:okcfg"),
        &work.path().join("rootfs"),
    )
    .await
    .unwrap();
}

/// Runs a pull with `options` into `work/rootfs`; asserts it failed and left nothing in `work`.
async fn failing_pull_with(
    registry: &TestRegistry,
    repo_tag: &str,
    options: &pronto_image::pull::UnpackOptions,
) -> PullError {
    let client = common::client();
    let work = tempfile::tempdir().unwrap();
    let image = pronto_image::pull::resolve(&client, &registry.reference(repo_tag))
        .await
        .unwrap();
    let err = pronto_image::pull::unpack_image_with(
        &client,
        &image,
        &work.path().join("rootfs"),
        std::sync::Arc::new(pronto_image::pull::NoProgress),
        options,
    )
    .await
    .expect_err("the pull must fail");
    let left: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind after {err}: {left:?}");
    err
}

/// A decompression bomb (a small zstd layer of zeros) stops at the limit on uncompressed
/// bytes, with an error naming the layer and the limit, and leaves nothing; the limit holds
/// for the layers together too.
#[tokio::test]
async fn a_decompression_bomb_stops_at_the_unpacked_size_limit() {
    let registry = TestRegistry::start();
    let client = common::client();
    let limit = 1u64 << 20;
    let bomb = ImageBuilder::new()
        .layer(Layer::gzip().file("small", b"fine"))
        .layer(Layer::zstd().file("zeros", vec![0u8; 8 << 20]))
        .push(&client, &registry.reference("bomb:v1"))
        .await
        .unwrap();
    assert!(bomb.manifest.layers[1].size < 64 << 10, "a bomb is small");
    let options = pronto_image::pull::UnpackOptions {
        max_unpacked_bytes: limit,
        ..Default::default()
    };
    let err = failing_pull_with(&registry, "bomb:v1", &options).await;
    // Before it, layer 0's tar as read: a header, a data block and the first zero block (the
    // reader stops at the end-of-archive marker).
    assert_eq!(
        err.to_string(),
        format!(
            "layer 1 ({}): uncompressed size exceeds the limit of {limit} bytes \
             (1536 bytes unpacked from the layers before this one)",
            bomb.manifest.layers[1].digest
        )
    );
    // Layers each under the limit, together over it: the layer that crossed it is named.
    let split = ImageBuilder::new()
        .layer(Layer::zstd().file("a", vec![0u8; 700 << 10]))
        .layer(Layer::zstd().file("b", vec![1u8; 700 << 10]))
        .push(&client, &registry.reference("split:v1"))
        .await
        .unwrap();
    let err = failing_pull_with(&registry, "split:v1", &options).await;
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "layer 1 ({}): uncompressed size exceeds the limit of {limit} bytes (",
            split.manifest.layers[1].digest
        )),
        "{msg}"
    );
    // The default bound lets both through.
    let work = tempfile::tempdir().unwrap();
    common::pronto_unpack(
        &client,
        &registry.reference("bomb:v1"),
        &work.path().join("r"),
    )
    .await
    .unwrap();
}
