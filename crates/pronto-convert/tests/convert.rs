//! Conversion against the real registry: every test image converts and verifies against a
//! plain unpack (ground truth), conversion is deterministic, tampering is detected, and chunks
//! are stored once.

use std::path::Path;

use pronto_convert::{convert, verify, ConvertOptions};
use pronto_format::Compression;
use pronto_image::pull::{self, ResolvedImage};
use pronto_image::{ClientOptions, Reference, RegistryClient};
use pronto_testkit::fixtures::{ground_truth_images, noise};
use pronto_testkit::image::{ImageBuilder, Layer};
use pronto_testkit::registry::TestRegistry;

const CHUNK: u32 = 64 << 10;

fn client() -> RegistryClient {
    RegistryClient::new(ClientOptions::default()).unwrap()
}

fn options(work: &Path) -> ConvertOptions {
    let mut o = ConvertOptions::new(work.to_owned());
    o.chunk_size = CHUNK;
    o.pack_target = 256 << 10; // several packs even for small images
    o
}

/// Options with a chunk memo in `work`.
fn memo_options(work: &Path) -> ConvertOptions {
    let mut o = options(work);
    o.memo = Some(work.join("memo.db"));
    o
}

/// A base layer: one file of `chunks` distinct chunks and one tiny file.
fn base_layer(chunks: usize, seed: u64) -> Layer {
    Layer::gzip()
        .file("usr/lib/big", noise(chunks * CHUNK as usize, seed))
        .file("usr/lib/small", b"libc")
}

async fn push(
    registry: &TestRegistry,
    image: ImageBuilder,
    tag: &str,
) -> (Reference, ResolvedImage) {
    let reference = registry.reference(tag);
    image.push(&client(), &reference).await.unwrap();
    let resolved = pull::resolve(&client(), &reference).await.unwrap();
    (reference, resolved)
}

/// The shared ground-truth images, and one for the converter: contents later entries replace.
fn images() -> Vec<(&'static str, ImageBuilder)> {
    let mut images = ground_truth_images(CHUNK);
    images.push((
        // Contents replaced or removed by later entries: only the last ones are stored.
        "replacements",
        ImageBuilder::new()
            .layer(
                Layer::gzip()
                    .file("replaced", noise(3 * CHUNK as usize, 5))
                    .file("gone/deep", noise(CHUNK as usize, 6))
                    .file("twice", b"first entry")
                    .file("twice", b"second entry wins")
                    .symlink("link-then-file", "replaced"),
            )
            .layer(
                Layer::zstd()
                    .file("replaced", b"short now")
                    .whiteout("gone")
                    .file("link-then-file", b"no longer a link"),
            ),
    ));
    images
}

#[tokio::test]
async fn every_image_converts_and_verifies_against_a_plain_unpack() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    for (name, image) in images() {
        let (_, resolved) = push(&registry, image, &format!("{name}:v1")).await;
        let report = convert(&client(), &resolved, &options(work.path()))
            .await
            .unwrap();
        assert!(
            report.packs >= 1 || report.file_bytes == 0,
            "{name}: {report:?}"
        );
        if name == "replacements" {
            assert!(
                report.stored_bytes < 1024,
                "replaced and removed contents are not stored: {report:?}"
            );
        }
        let v = verify(&client(), &resolved, None, work.path())
            .await
            .unwrap();
        assert_eq!(v.index_digest, report.index_digest);
        assert!(v.entries > 3, "{name}: {v:?}");
        assert_eq!(v.file_bytes, report.file_bytes, "{name}");
    }
    // Scratch space is cleaned up.
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn conversion_is_deterministic_and_lz4_and_raw_work_too() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let (_, resolved) = push(&registry, images().remove(0).1, "det:v1").await;
    let a = convert(&client(), &resolved, &options(work.path()))
        .await
        .unwrap();
    let b = convert(&client(), &resolved, &options(work.path()))
        .await
        .unwrap();
    assert_eq!(
        a.index_digest, b.index_digest,
        "same image, same options: same index"
    );
    assert_eq!(a.artifact_digest, b.artifact_digest);
    assert!(
        a.reused_chunks >= 1,
        "the 200 KB of zeros is four identical chunks: {a:?}"
    );
    for c in [Compression::Lz4, Compression::None] {
        let mut o = options(work.path());
        o.compression = c;
        let r = convert(&client(), &resolved, &o).await.unwrap();
        assert_ne!(r.index_digest, a.index_digest);
        verify(&client(), &resolved, None, work.path())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn tampering_is_detected_and_named() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let (_, resolved) = push(&registry, images().remove(0).1, "tamper:v1").await;
    let report = convert(&client(), &resolved, &options(work.path()))
        .await
        .unwrap();

    // A flipped byte in a pack: the pack fails its digest.
    let artifact = client()
        .fetch_manifest(&report.artifact.parse().unwrap())
        .await
        .unwrap();
    let pronto_image::manifest::ManifestKind::Image(m) = artifact.kind else {
        panic!()
    };
    let pack = &m.layers[1];
    let path = registry.blob_path(&pack.digest);
    let original = std::fs::read(&path).unwrap();
    let mut bad = original.clone();
    bad[original.len() / 2] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let e = verify(&client(), &resolved, None, work.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "blob {} failed verification: digest mismatch",
            pack.digest
        )),
        "{e}"
    );
    std::fs::write(&path, &original).unwrap();

    // A flipped byte in the index.
    let index = &m.layers[0];
    let path = registry.blob_path(&index.digest);
    let original = std::fs::read(&path).unwrap();
    let mut bad = original.clone();
    bad[100] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let e = verify(&client(), &resolved, None, work.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "fetching the artifact's index: blob {} failed verification",
            index.digest
        )),
        "{e}"
    );
    std::fs::write(&path, &original).unwrap();

    verify(&client(), &resolved, None, work.path())
        .await
        .unwrap();

    // No artifact at all.
    let (_, other) = push(&registry, images().remove(1).1, "never-converted:v1").await;
    let e = verify(&client(), &other, None, work.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "no accelerated artifact for {}",
            other.manifest_digest
        )),
        "{e}"
    );
}

#[tokio::test]
async fn shared_chunks_are_stored_once() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let opts = memo_options(work.path());
    let base = || base_layer(40, 7);
    let (_, v1) = push(
        &registry,
        ImageBuilder::new()
            .layer(base())
            .layer(Layer::gzip().file("app/main", b"v1")),
        "app:v1",
    )
    .await;
    let first = convert(&client(), &v1, &opts).await.unwrap();
    assert_eq!(first.reused_chunks, 0);
    assert!(first.uploaded_bytes >= 40 * CHUNK as u64);
    let (_, bytes_after_first) = registry.blob_usage();

    // A new version changing one small file: ~one chunk uploaded.
    let (_, v2) = push(
        &registry,
        ImageBuilder::new()
            .layer(base())
            .layer(Layer::gzip().file("app/main", b"v2!")),
        "app:v2",
    )
    .await;
    let (_, bytes_before) = registry.blob_usage();
    let second = convert(&client(), &v2, &opts).await.unwrap();
    assert!(
        second.uploaded_bytes <= CHUNK as u64,
        "re-uploaded {} bytes",
        second.uploaded_bytes
    );
    assert_eq!(second.reused_chunks, second.chunks - 1);
    let (_, bytes_after) = registry.blob_usage();
    // New: one small pack, the index, the manifest; not the 2.5 MB of shared chunks again.
    assert!(
        bytes_after - bytes_before < 256 << 10,
        "registry grew by {} bytes",
        bytes_after - bytes_before
    );
    assert!(bytes_after_first > 40 * CHUNK as u64);
    verify(&client(), &v2, None, work.path()).await.unwrap();
    verify(&client(), &v1, None, work.path()).await.unwrap();
}

#[tokio::test]
async fn a_layer_converted_before_is_not_chunked_again() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let opts = memo_options(work.path());
    // The same base layer (same digest) under two apps of one repository (the memo is per
    // repository: another repository cannot read these packs).
    let base = || base_layer(20, 11);
    let (_, a) = push(
        &registry,
        ImageBuilder::new()
            .layer(base())
            .layer(Layer::gzip().file("app/a", noise(3000, 1))),
        "layered:a",
    )
    .await;
    let first = convert(&client(), &a, &opts).await.unwrap();
    assert_eq!(first.layer_reused_files, 0);
    assert_eq!(first.hashed_bytes, first.file_bytes);

    let (_, b) = push(
        &registry,
        ImageBuilder::new()
            .layer(base())
            .layer(Layer::gzip().file("app/b", noise(5000, 2))),
        "layered:b",
    )
    .await;
    assert_eq!(
        a.manifest.layers[0].digest, b.manifest.layers[0].digest,
        "shared base layer"
    );
    let second = convert(&client(), &b, &opts).await.unwrap();
    assert_eq!(
        second.layer_reused_files, 2,
        "both base files come from the memo: {second:?}"
    );
    assert_eq!(
        second.hashed_bytes, 5000,
        "only the new layer's file was read and hashed"
    );
    verify(&client(), &b, None, work.path()).await.unwrap();

    // A memo whose packs are gone from the registry is not trusted.
    let other = TestRegistry::start();
    let (_, c) = push(
        &other,
        ImageBuilder::new()
            .layer(base())
            .layer(Layer::gzip().file("app/a", noise(3000, 1))),
        "layered:a",
    )
    .await;
    let third = convert(&client(), &c, &opts).await.unwrap();
    assert_eq!(
        third.layer_reused_files, 0,
        "another registry: nothing to reuse"
    );
    verify(&client(), &c, None, work.path()).await.unwrap();
}

/// A plain HTTP proxy to `upstream` that answers 500 to every blob upload (`PUT …/blobs/uploads/…`)
/// after the first `allowed`. One request per connection (`Connection: close` both ways), which
/// is all a registry client needs. Returns the address to use as the registry and the count of
/// uploads refused.
fn failing_proxy(
    upstream: std::net::SocketAddr,
    allowed: usize,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (puts, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let refused2 = refused.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let (puts, refused) = (puts.clone(), refused2.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut reader = BufReader::new(client.try_clone()?);
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                        break;
                    }
                    head.push(line);
                }
                let Some(request_line) = head.first() else {
                    return Ok(());
                };
                let len: usize = head
                    .iter()
                    .find_map(|h| {
                        let (name, value) = h.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                reader.read_exact(&mut body)?;
                if request_line.starts_with("PUT ")
                    && request_line.contains("/blobs/uploads/")
                    && puts.fetch_add(1, Ordering::SeqCst) >= allowed
                {
                    refused.fetch_add(1, Ordering::SeqCst);
                    return client.write_all(
                        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                }
                let mut up = std::net::TcpStream::connect(upstream)?;
                let mut request = request_line.clone();
                for h in &head[1..] {
                    if !h.to_ascii_lowercase().starts_with("connection:") {
                        request.push_str(h);
                    }
                }
                request.push_str("Connection: close\r\n\r\n");
                up.write_all(request.as_bytes())?;
                up.write_all(&body)?;
                std::io::copy(&mut up, &mut client)?;
                Ok(())
            });
        }
    });
    (addr, refused)
}

#[tokio::test]
async fn a_failed_upload_tags_nothing_and_teaches_the_memo_nothing() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let memo_dir = tempfile::tempdir().unwrap();
    let mut opts = options(work.path());
    opts.memo = Some(memo_dir.path().join("memo.db"));
    // 40 distinct chunks: about ten packs; the first upload passes, the others fail.
    let (_, direct) = push(
        &registry,
        ImageBuilder::new().layer(base_layer(40, 21)),
        "flaky:v1",
    )
    .await;
    let (proxy, refused) = failing_proxy(registry.addr(), 1);
    let via_proxy: Reference = format!("{proxy}/flaky:v1").parse().unwrap();
    let resolved = pull::resolve(&client(), &via_proxy).await.unwrap();

    let e = convert(&client(), &resolved, &opts).await.unwrap_err();
    assert!(
        matches!(e, pronto_convert::ConvertError::Push(_)),
        "the upload's error is the one reported: {e}"
    );
    assert!(refused.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    // Nothing tagged: the artifact manifest is what makes packs visible.
    let tag = pronto_artifact::artifact_reference(&direct.pinned, &direct.manifest_digest);
    assert!(client().fetch_manifest(&tag).await.is_err());
    // The memo learned nothing (its entries would point at packs that never arrived).
    let memo = pronto_convert::memo::Memo::open(opts.memo.as_ref().unwrap()).unwrap();
    for repo in [
        format!("{proxy}/flaky"),
        format!("{}/flaky", registry.host()),
    ] {
        assert!(memo.chunks_of(&repo).unwrap().is_empty());
        let layers = [resolved.manifest.layers[0].digest.clone()];
        assert!(memo.layer_files(&repo, &layers).unwrap().is_empty());
    }
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);

    // Straight to the registry, with the same memo: converts and verifies.
    let report = convert(&client(), &direct, &opts).await.unwrap();
    assert_eq!(report.reused_chunks, 0, "{report:?}");
    verify(&client(), &direct, None, work.path()).await.unwrap();
}

/// An image listing the same layer twice (same digest) converts and verifies.
#[tokio::test]
async fn the_same_layer_listed_twice_converts_and_verifies() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let repeated = Layer::gzip()
        .file("etc/stamp", b"repeated layer")
        .file("usr/lib/big", noise(3 * CHUNK as usize, 11));
    let image = ImageBuilder::new()
        .layer(repeated.clone())
        .layer(Layer::zstd().file("etc/stamp", b"middle").whiteout("usr"))
        .layer(repeated);
    let (_, resolved) = push(&registry, image, "twice:v1").await;
    assert_eq!(
        resolved.manifest.layers[0].digest,
        resolved.manifest.layers[2].digest
    );
    let report = convert(&client(), &resolved, &memo_options(work.path()))
        .await
        .unwrap();
    assert_eq!(
        report.file_bytes,
        3 * CHUNK as u64 + b"repeated layer".len() as u64
    );
    let v = verify(&client(), &resolved, None, work.path())
        .await
        .unwrap();
    assert_eq!(v.index_digest, report.index_digest);
    // Converted again with the memo: both places of the layer are taken from it.
    let again = convert(&client(), &resolved, &memo_options(work.path()))
        .await
        .unwrap();
    assert_eq!(again.index_digest, report.index_digest);
}

/// The converter reads the layers through the same bound: a bomb stops at it, naming the layer,
/// and the scratch directory is removed.
#[tokio::test]
async fn a_decompression_bomb_stops_the_conversion_at_the_limit() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let image = ImageBuilder::new().layer(Layer::zstd().file("zeros", vec![0u8; 8 << 20]));
    let (_, resolved) = push(&registry, image, "bomb:v1").await;
    let mut o = options(work.path());
    o.max_unpacked_bytes = 1 << 20;
    let e = convert(&client(), &resolved, &o).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "unpacking the source image: layer 0 ({}): uncompressed size exceeds the limit of \
             1048576 bytes (0 bytes unpacked from the layers before this one)",
            resolved.manifest.layers[0].digest
        )
    );
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
}

/// What a killed conversion left (`pronto-convert-XXXXXX`) is removed; nothing else is.
#[test]
fn stale_scratch_is_removed_and_nothing_else() {
    let work = tempfile::tempdir().unwrap();
    for dir in [
        "pronto-convert-Ab3dE9/rootfs/usr",
        "pronto-convert-zz9ZZ0/packs",
        "pronto-convert-keep-me/x",
        "pronto-verify-Ab3dE9/x",
        "other/x",
    ] {
        std::fs::create_dir_all(work.path().join(dir)).unwrap();
    }
    std::fs::write(work.path().join("pronto-convert-file00"), b"a file").unwrap();
    let mut removed = pronto_convert::remove_stale_scratch(work.path()).unwrap();
    removed.sort();
    assert_eq!(
        removed,
        [
            work.path().join("pronto-convert-Ab3dE9"),
            work.path().join("pronto-convert-zz9ZZ0")
        ]
    );
    let mut left: Vec<String> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "other",
            "pronto-convert-file00",
            "pronto-convert-keep-me",
            "pronto-verify-Ab3dE9"
        ]
    );
}

/// A registry that resets, truncates or stalls a layer download (the testkit's `FaultyProxy`):
/// the conversion fails within the client's bounds with an error naming the layer, tags
/// nothing and leaves nothing in its scratch directory.
#[tokio::test]
async fn a_reset_truncated_or_stalled_layer_fails_the_conversion_and_tags_nothing() {
    use pronto_testkit::faulty::{Fault, FaultyProxy, Rule};
    use std::time::{Duration, Instant};
    const BOUND: Duration = Duration::from_secs(2);
    let quick = || {
        RegistryClient::new(ClientOptions {
            response_timeout: BOUND,
            idle_timeout: BOUND,
            ..ClientOptions::default()
        })
        .unwrap()
    };
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let opts = options(work.path());
    let (_, direct) = push(
        &registry,
        ImageBuilder::new().layer(base_layer(40, 41)),
        "faulty:v1",
    )
    .await;
    let proxy = FaultyProxy::start(registry.addr());
    let via_proxy: Reference = format!("{}/faulty:v1", proxy.host()).parse().unwrap();
    let resolved = pull::resolve(&quick(), &via_proxy).await.unwrap();
    let layer = resolved.manifest.layers[0].digest.to_string();
    for fault in [
        Fault::ResetAfter(100 << 10),
        Fault::TruncateAfter(100 << 10),
        Fault::StallBodyAfter(100 << 10),
    ] {
        proxy.clear();
        proxy.add(Rule::path(&layer).method("GET").fault(fault));
        let t = Instant::now();
        let e = tokio::time::timeout(Duration::from_secs(30), convert(&quick(), &resolved, &opts))
            .await
            .unwrap_or_else(|_| panic!("{fault:?}: the conversion still runs after 30 s"))
            .unwrap_err();
        let took = t.elapsed();
        let msg = e.to_string();
        assert!(msg.contains(&layer), "{fault:?}: names the layer: {msg}");
        assert!(
            took < BOUND + Duration::from_secs(2),
            "{fault:?}: took {took:?}"
        );
        let tag = pronto_artifact::artifact_reference(&direct.pinned, &direct.manifest_digest);
        assert!(
            client().fetch_manifest(&tag).await.is_err(),
            "{fault:?}: nothing tagged"
        );
        assert_eq!(
            std::fs::read_dir(work.path()).unwrap().count(),
            0,
            "{fault:?}"
        );
    }
    // Once the registry behaves, the same conversion succeeds.
    proxy.clear();
    convert(&quick(), &resolved, &opts).await.unwrap();
}
