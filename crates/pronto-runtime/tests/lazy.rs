//! Accelerated instances: the container's root is an overlay over the lazily mounted artifact.
//! Checked inside a running container (through `/proc/PID/root`) against a plain unpack of the
//! same image; the mount is shared by the image's instances and goes with the last one; an
//! image without an artifact falls back to the full pull. Needs root.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pronto_convert::{convert, ConvertOptions};
use pronto_image::pull::{self, NoProgress};
use pronto_image::{ClientOptions, RegistryClient};
use pronto_runtime::bundle::ProcessOverrides;
use pronto_runtime::{InstanceSpec, Node, NodeConfig, RootfsSource};
use pronto_testkit::fixtures::noise;
use pronto_testkit::image::{busybox_layer, ImageBuilder, Layer};
use pronto_testkit::registry::TestRegistry;
use pronto_testkit::tree::Tree;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client() -> RegistryClient {
    RegistryClient::new(ClientOptions::default()).unwrap()
}

fn image() -> ImageBuilder {
    ImageBuilder::new()
        .layer(busybox_layer().unwrap())
        .layer(
            Layer::gzip()
                .file("www/index.html", b"lazy hello\n")
                .file("gt/big", noise(3 << 20, 7))
                .file("gt/gone", b"removed by the next layer")
                .file("gt/orig", b"linked")
                .hardlink("gt/link", "gt/orig")
                .symlink("gt/sym", "../www/index.html")
                .file("gt/x", b"x")
                .xattr("user.k", b"v")
                .file(b"gt/caf\xe9".as_slice(), b"latin1")
                .file("gt/owned", b"o")
                .owner(1000, 1000)
                .mode(0o640),
        )
        .layer(Layer::zstd().whiteout("gt/gone").file("gt/new", b"top"))
        .entrypoint(&["/bin/httpd", "-f", "-p", "9000", "-h", "/www"])
}

fn spec(image: Arc<pull::ResolvedImage>, accelerated: bool) -> InstanceSpec {
    InstanceSpec {
        function: "lazy".into(),
        image,
        overrides: ProcessOverrides::default(),
        port: 9000,
        memory_mb: 128,
        disk_mb: 512,
        cpu: 0.5,
        init_timeout: Duration::from_secs(10),
        accelerated,
        prefetch: None,
        readiness: None,
        internet_access: true,
        registry: None,
        artifact_repository: None,
        artifact_revision: None,
    }
}

async fn open_node(data: &Path) -> Node {
    let (node, _) = Node::open(NodeConfig {
        data_dir: data.to_owned(),
        runtime_bin: "runc".into(),
        registry: client(),
        chunk_cache_bytes: 1 << 30,
        max_unpacked_bytes: pronto_image::pull::DEFAULT_MAX_UNPACKED_BYTES,
        background_stream: pronto_runtime::StreamPolicy::Auto,
        isolation: Default::default(),
        network: None,
    })
    .await
    .unwrap();
    node
}

async fn get(instance: &pronto_runtime::Instance, path: &str) -> String {
    let mut s = instance.connect().await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The trees below each top-level directory of `root` but those the OCI runtime mounts over
/// (`/proc`, `/dev`, `/sys`), as one tree.
/// Where the user namespace of process `pid` maps its ids (base, size); (0, 2^32-1) without one.
fn id_map(pid: i32) -> (u32, u32) {
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let f: Vec<u64> = map.split_whitespace().map(|f| f.parse().unwrap()).collect();
    (f[1] as u32, f[2] as u32)
}

/// The ground truth as the node sees it in the container of `pid` (its owners shifted by its
/// user namespace's map).
fn as_seen_in(pid: i32, truth: Tree) -> Tree {
    match id_map(pid) {
        (0, _) => truth,
        (base, size) => truth.shifted(base, size),
    }
}

fn image_part(root: &Path) -> Tree {
    let mut out = Tree::default();
    for entry in std::fs::read_dir(root).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if ["proc", "dev", "sys"].contains(&name.to_str().unwrap_or_default())
            || !entry.file_type().unwrap().is_dir()
        {
            continue;
        }
        for (path, node) in Tree::snapshot(&entry.path()).unwrap().0 {
            let mut full = name.as_encoded_bytes().to_vec();
            full.push(b'/');
            full.extend_from_slice(&path);
            out.0.insert(full, node);
        }
    }
    out
}

/// Resolves `reference` and converts it with `chunk`-byte chunks (work files under `work`).
async fn accelerate(
    reference: &pronto_image::Reference,
    work: &Path,
    chunk: u32,
) -> Arc<pull::ResolvedImage> {
    let resolved = Arc::new(pull::resolve(&client(), reference).await.unwrap());
    let mut opts = ConvertOptions::new(work.join("convert"));
    opts.chunk_size = chunk;
    convert(&client(), &resolved, &opts).await.unwrap();
    resolved
}

fn lazy_mounts(data: &Path) -> usize {
    // The shared mounts, not the instances' idmapped views of them.
    pronto_lazyfs::mounts_under(&data.join("lazy"))
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accelerated_instance_runs_on_the_lazy_rootfs_and_sees_the_image_exactly() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let reference = registry.reference("fn/lazy:v1");
    image().push(&client(), &reference).await.unwrap();
    let resolved = accelerate(&reference, work.path(), 256 << 10).await;
    let unpacked = work.path().join("unpacked");
    pull::unpack_image(&client(), &resolved, &unpacked, Arc::new(NoProgress))
        .await
        .unwrap();

    let data = tempfile::tempdir().unwrap();
    let node = open_node(data.path()).await;
    let first = node.start(spec(resolved.clone(), true)).await.unwrap();
    assert_eq!(first.timings.rootfs, RootfsSource::Lazy);
    assert!(
        !node.images().path_of(&resolved.manifest_digest).exists(),
        "no full pull"
    );
    assert!(get(&first, "/").await.ends_with("lazy hello\n"));

    // Inside the running container, through the overlay: the image, exactly.
    let pid = first.pid();
    let root = format!("/proc/{pid}/root");
    let (inside, expected) = tokio::task::spawn_blocking(move || {
        (
            image_part(Path::new(&root)),
            as_seen_in(pid, image_part(&unpacked)),
        )
    })
    .await
    .unwrap();
    let diff = expected.diff(&inside);
    assert!(
        diff.is_empty(),
        "container root differs:\n{}",
        diff.join("\n")
    );
    assert!(inside.get("gt/big").is_some() && inside.get("gt/gone").is_none());

    // A second instance shares the mount; the mount goes with the last instance.
    let second = node.start(spec(resolved.clone(), true)).await.unwrap();
    assert_eq!(second.timings.rootfs, RootfsSource::Lazy);
    assert_eq!(lazy_mounts(data.path()), 1);
    let stats = node.lazy().stats().await;
    assert_eq!(stats.len(), 1);
    assert!(stats[0].1.fetched_chunks > 0);
    first.stop().await.unwrap();
    assert_eq!(
        lazy_mounts(data.path()),
        1,
        "still used by the second instance"
    );
    assert!(get(&second, "/").await.ends_with("lazy hello\n"));
    second.stop().await.unwrap();
    assert_eq!(
        lazy_mounts(data.path()),
        0,
        "unmounted with the last instance"
    );
    assert_eq!(
        std::fs::read_dir(data.path().join("lazy")).unwrap().count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_without_an_artifact_falls_back_to_the_full_pull() {
    let registry = TestRegistry::start();
    let reference = registry.reference("fn/plain:v1");
    image().push(&client(), &reference).await.unwrap();
    let resolved = Arc::new(pull::resolve(&client(), &reference).await.unwrap());
    let data = tempfile::tempdir().unwrap();
    let node = open_node(data.path()).await;
    let instance = node.start(spec(resolved, true)).await.unwrap();
    assert_eq!(instance.timings.rootfs, RootfsSource::Pulled);
    assert!(get(&instance, "/").await.ends_with("lazy hello\n"));
    instance.stop().await.unwrap();
    assert_eq!(lazy_mounts(data.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ground_truth_image_is_exact_inside_a_running_container() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let node = open_node(data.path()).await;
    for (name, layers) in pronto_testkit::fixtures::ground_truth_layers(64 << 10) {
        let reference = registry.reference(&format!("gt/{name}:v1"));
        layers
            .into_iter()
            .fold(
                ImageBuilder::new().layer(busybox_layer().unwrap()),
                ImageBuilder::layer,
            )
            .entrypoint(&["/bin/httpd", "-f", "-p", "9000", "-h", "/bin"])
            .push(&client(), &reference)
            .await
            .unwrap();
        let resolved = accelerate(&reference, work.path(), 64 << 10).await;
        let unpacked = work.path().join(format!("unpacked-{name}"));
        pull::unpack_image(&client(), &resolved, &unpacked, Arc::new(NoProgress))
            .await
            .unwrap();
        let instance = node.start(spec(resolved, true)).await.unwrap();
        assert_eq!(instance.timings.rootfs, RootfsSource::Lazy);
        let pid = instance.pid();
        let root = format!("/proc/{pid}/root");
        let (inside, expected) = tokio::task::spawn_blocking(move || {
            (
                image_part(Path::new(&root)),
                as_seen_in(pid, image_part(&unpacked)),
            )
        })
        .await
        .unwrap();
        let diff = expected.diff(&inside);
        assert!(
            diff.is_empty(),
            "{name}: container root differs:\n{}",
            diff.join("\n")
        );
        instance.stop().await.unwrap();
    }
    assert_eq!(lazy_mounts(data.path()), 0);
}

/// Mounting one image waits only for that image: a mount stuck on its registry (one that
/// accepts connections and never answers) does not hold up another image's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_mount_does_not_hold_up_another_images() {
    use pronto_runtime::lazy::{Acquired, LazyStore};
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let reference = registry.reference("fn/other:v1");
    image().push(&client(), &reference).await.unwrap();
    let resolved = accelerate(&reference, work.path(), 1 << 20).await;

    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut stuck = (*resolved).clone();
    stuck.pinned = format!(
        "127.0.0.1:{}/fn/stuck@{}",
        silent.local_addr().unwrap().port(),
        resolved.manifest_digest
    )
    .parse()
    .unwrap();
    stuck.manifest_digest = pronto_image::Digest::from_bytes([0xab; 32]);

    let store = Arc::new(
        LazyStore::open(
            work.path().join("lazy"),
            &work.path().join("chunks"),
            1 << 30,
            client(),
        )
        .unwrap(),
    );
    let s = store.clone();
    let hung =
        tokio::spawn(async move { s.acquire(&stuck, None, None, None, None).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!hung.is_finished(), "the silent registry answered?");
    let (mount, how) = tokio::time::timeout(
        Duration::from_secs(20),
        store.acquire(&resolved, None, None, None, None),
    )
    .await
    .expect("held up by the other image's mount")
    .unwrap();
    assert_eq!(how, Acquired::Recording);
    assert!(mount.path().join("www/index.html").exists());
    hung.abort();
    drop(mount);
    assert_eq!(lazy_mounts(work.path()), 0, "the last holder unmounts");
}

/// Once the start's access trace is taken (the mount stops recording), a file whose chunks are
/// all on the node is read by the container through FUSE passthrough: the overlay over the lazy
/// mount (the container's root) reads the backing file, no read reaches the daemon, and the
/// bytes are the image's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_reads_a_cached_file_through_passthrough() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let reference = registry.reference("fn/pt:v1");
    image().push(&client(), &reference).await.unwrap();
    let resolved = accelerate(&reference, work.path(), 256 << 10).await;
    let unpacked = work.path().join("unpacked");
    pull::unpack_image(&client(), &resolved, &unpacked, Arc::new(NoProgress))
        .await
        .unwrap();
    let expected = std::fs::read(unpacked.join("gt/big")).unwrap();

    let data = tempfile::tempdir().unwrap();
    let node = open_node(data.path()).await;
    let instance = node.start(spec(resolved.clone(), true)).await.unwrap();
    assert!(get(&instance, "/").await.ends_with("lazy hello\n"));
    assert!(instance.take_access_trace().is_some());
    let big = Path::new(&format!("/proc/{}/root", instance.pid())).join("gt/big");
    let read = |big: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
            std::fs::read(big).unwrap()
        })
    };
    assert!(read(big.clone()).await.unwrap() == expected);
    let stats = || async { node.lazy().stats().await[0].1 };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stats().await.materialized_files == 0 {
        assert!(std::time::Instant::now() < deadline, "{}", stats().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = stats().await;
    assert!(read(big.clone()).await.unwrap() == expected);
    let after = stats().await;
    assert_eq!(
        after.passthrough_opens,
        before.passthrough_opens + 1,
        "{after}"
    );
    assert_eq!(after.read_requests, before.read_requests, "{after}");
    instance.stop().await.unwrap();
    assert_eq!(lazy_mounts(data.path()), 0);
}

/// A start that prefetches a trace leaves the rest of the image alone until it is over (the
/// prefetch brings what it reads; streaming the rest meanwhile would only compete with it),
/// then, told so by its first response (`Instance::start_is_over`), streams the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetched_start_streams_the_rest_of_its_image_only_once_it_is_over() {
    use pronto_lazyfs::StreamState;
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let reference = registry.reference("fn/deferred:v1");
    image().push(&client(), &reference).await.unwrap();
    let resolved = accelerate(&reference, work.path(), 256 << 10).await;

    // The trace of a first start, on a node of its own.
    let data = tempfile::tempdir().unwrap();
    let node = open_node(data.path()).await;
    let first = node.start(spec(resolved.clone(), true)).await.unwrap();
    assert!(get(&first, "/").await.ends_with("lazy hello\n"));
    let trace = first.take_access_trace().expect("a fresh mount records");
    first.stop().await.unwrap();
    drop(node);

    // A cold node prefetches it: no stream while the start runs...
    let data = tempfile::tempdir().unwrap();
    let node = open_node(data.path()).await;
    let mut prefetching = spec(resolved.clone(), true);
    prefetching.prefetch = Some(Arc::new(trace));
    let instance = node.start(prefetching).await.unwrap();
    assert!(instance.timings.prefetched);
    assert!(get(&instance, "/").await.ends_with("lazy hello\n"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = instance.lazy_stats().unwrap();
    assert_eq!(s.stream_state, StreamState::Off as u64, "{s}");
    assert_eq!(s.streamed_chunks, 0, "{s}");
    // ... and the rest of the image once it is over (gt/big, which it did not read).
    instance.start_is_over();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = instance.lazy_stats().unwrap();
        if s.stream_state == StreamState::Done as u64 {
            assert!(s.streamed_bytes >= 3 << 20, "{s}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no stream: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    instance.stop().await.unwrap();
    assert_eq!(lazy_mounts(data.path()), 0);
}
