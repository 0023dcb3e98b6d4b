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
