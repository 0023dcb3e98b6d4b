//! Reading ahead of a sequential reader, and the background stream of the rest of an image:
//! exact bytes (against the image's own data and a plain unpack), few large requests, the
//! window reset by a seek, a reader's miss never queued behind prefetch or the stream (a
//! rate-limited link in front of the real registry), the stream stopped by an unmount, and a
//! node cache left consistent by a process killed mid-stream.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{accelerate_with, blocking, client, is_mounted, mount_with};
use pronto_artifact::Artifact;
use pronto_format::ChunkRef;
use pronto_image::pull::{self, NoProgress};
use pronto_lazyfs::cache::Lookup;
use pronto_lazyfs::{AccessTrace, ChunkCache, MountOptions, StreamPolicy, StreamState};
use pronto_testkit::faulty::{FaultyProxy, Link};
use pronto_testkit::fixtures::{ground_truth_images, noise};
use pronto_testkit::image::{ImageBuilder, Layer};
use pronto_testkit::registry::TestRegistry;
use pronto_testkit::tree::Tree;

const CHUNK: u32 = 64 << 10;

/// The tests here measure time and count threads: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn logs() {
    common::logs("pronto_lazyfs=warn,fuser=error");
}

fn options(stream: StreamPolicy) -> MountOptions {
    MountOptions {
        background_stream: stream,
        ..MountOptions::default()
    }
}

fn all_chunks(artifact: &Artifact) -> Vec<ChunkRef> {
    let index = &artifact.index;
    let mut chunks: Vec<ChunkRef> = (0..index.inode_count())
        .filter_map(|n| index.chunks(n).ok())
        .flatten()
        .collect();
    chunks.sort_by_key(|c| c.digest);
    chunks.dedup_by_key(|c| c.digest);
    chunks
}

/// The artifact as read through `proxy` (so the mount's fetches go through it).
async fn via_proxy(proxy: &FaultyProxy, tag: &str) -> Artifact {
    let via: pronto_image::Reference = format!("{}/{tag}", proxy.host()).parse().unwrap();
    let resolved = pull::resolve(&client(), &via).await.unwrap();
    pronto_artifact::fetch_artifact(&client(), &resolved)
        .await
        .unwrap()
}

/// Polls `f` every 10 ms until it holds; panics with `what` after `within`.
async fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the mount's fetch counters stop moving (read-ahead landed).
async fn settled(mount: &pronto_lazyfs::LazyMount) -> pronto_lazyfs::StatsSnapshot {
    let mut last = mount.stats();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = mount.stats();
        if (now.fetched_chunks, now.range_requests) == (last.fetched_chunks, last.range_requests) {
            return now;
        }
        assert!(Instant::now() < deadline, "fetches never settled: {now}");
        last = now;
    }
}

fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == name)
        .count()
}

/// One 32 MiB file of 512 chunks in one pack: a sequential read through the mount comes in
/// few large requests (the window grows), every chunk fetched once, the bytes exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequential_read_grows_its_window_into_few_large_requests() {
    let _serial = SERIAL.lock().await;
    logs();
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let data = noise(32 << 20, 7);
    let image = ImageBuilder::new().layer(Layer::zstd().file("big", &data));
    let (_, artifact) =
        accelerate_with(&registry, image, "ra/seq:v1", CHUNK, 64 << 20, work.path()).await;
    let chunks = (data.len() / CHUNK as usize) as u64;
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    let dir = work.path().join("mnt");
    let mount = mount_with(&artifact, &cache, &dir, &options(StreamPolicy::Off));
    let path = dir.join("big");
    let read = blocking(move || std::fs::read(path).unwrap()).await;
    assert!(read == data, "the sequential read returned other bytes");
    let s = settled(&mount).await;
    eprintln!("sequential read of {chunks} chunks: {s}");
    assert_eq!(s.fetched_chunks, chunks, "every chunk once: {s}");
    assert!(
        s.range_requests <= chunks / 8,
        "{} requests for {chunks} chunks: {s}",
        s.range_requests
    );
    assert!(
        s.readahead_chunks >= chunks / 2,
        "most chunks came by read-ahead: {s}"
    );
    assert!(
        s.streamed_chunks == 0 && s.prefetched_chunks == 0,
        "nothing else fetched: {s}"
    );
    mount.unmount().unwrap();
}

/// After a sequential start, random reads of the same file reset the window: what they fetch
/// stays a small multiple of what they read (widening only), not the grown window per read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_reads_reset_the_window() {
    let _serial = SERIAL.lock().await;
    logs();
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let data = noise(32 << 20, 8);
    let image = ImageBuilder::new().layer(Layer::zstd().file("big", &data));
    let (_, artifact) =
        accelerate_with(&registry, image, "ra/rand:v1", CHUNK, 64 << 20, work.path()).await;
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    let dir = work.path().join("mnt");
    let mount = mount_with(&artifact, &cache, &dir, &options(StreamPolicy::Off));
    let (path, expect) = (dir.join("big"), data.clone());
    let file = blocking(move || {
        let f = std::fs::File::open(path).unwrap();
        // Sequential: the first 2 MiB in 64 KiB reads.
        let mut buf = vec![0u8; CHUNK as usize];
        for i in 0..32u64 {
            f.read_exact_at(&mut buf, i * u64::from(CHUNK)).unwrap();
            assert!(buf[..] == expect[(i * u64::from(CHUNK)) as usize..][..buf.len()]);
        }
        f
    })
    .await;
    let before = settled(&mount).await;
    assert!(
        before.readahead_chunks > 0,
        "the start was read ahead: {before}"
    );
    let expect = data.clone();
    blocking(move || {
        use std::os::fd::AsRawFd;
        // No kernel readahead either: each pread is one FUSE read.
        // SAFETY: a valid fd; advice only.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        let mut buf = vec![0u8; 16 << 10];
        let mut x: u64 = 12345;
        for _ in 0..40 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Somewhere in 16..32 MiB, beyond anything the start read ahead.
            let at = (16 << 20) + (x >> 20) % ((16 << 20) - buf.len() as u64);
            file.read_exact_at(&mut buf, at).unwrap();
            assert!(buf[..] == expect[at as usize..][..buf.len()], "at {at}");
        }
    })
    .await;
    let after = settled(&mount).await;
    let (read, fetched) = (
        after.read_bytes - before.read_bytes,
        after.fetched_content_bytes - before.fetched_content_bytes,
    );
    eprintln!("random reads: {read} B read, {fetched} B fetched: {after}");
    assert!(read > 0);
    // Each miss is one 64 KiB chunk widened to at most 256 KiB: 4 chunks per 16 KiB read is
    // 16×; a window kept from the start would fetch megabytes per read.
    assert!(
        fetched <= 16 * read + 4 * u64::from(CHUNK),
        "random reads fetched {fetched} B for {read} B read: {after}"
    );
    assert!(
        after.readahead_chunks - before.readahead_chunks <= 3 * 40,
        "at most the first window per read: {after}"
    );
    mount.unmount().unwrap();
}

/// With the stream on, every file read while the stream runs and after it is done equals a
/// plain unpack; when done, every chunk of the image is in the node cache, each fetched once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_fills_the_cache_and_never_serves_wrong_bytes() {
    let _serial = SERIAL.lock().await;
    logs();
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let mut images = ground_truth_images(CHUNK);
    let mut big = Layer::zstd();
    for i in 0..24u64 {
        big = big.file(
            format!("lib/f{i:02}"),
            noise((i as usize + 1) * 70_000, 40 + i),
        );
    }
    images.push(("many-files", ImageBuilder::new().layer(big)));
    for (name, image) in images {
        let (resolved, artifact) = accelerate_with(
            &registry,
            image,
            &format!("stream/{name}:v1"),
            CHUNK,
            16 * u64::from(CHUNK),
            work.path(),
        )
        .await;
        let unpacked = work.path().join(format!("unpack-{name}"));
        pull::unpack_image(&client(), &resolved, &unpacked, Arc::new(NoProgress))
            .await
            .unwrap();
        let expected = Tree::snapshot(&unpacked).unwrap();
        let cache = Arc::new(
            ChunkCache::open(&work.path().join(format!("cache-{name}")), 1 << 30).unwrap(),
        );
        let dir = work.path().join(format!("mnt-{name}"));
        let mount = mount_with(&artifact, &cache, &dir, &options(StreamPolicy::Always));
        // While it streams.
        let d = dir.clone();
        let during = blocking(move || Tree::snapshot(&d).unwrap()).await;
        let diff = expected.diff(&during);
        assert!(
            diff.is_empty(),
            "{name} while streaming:\n{}",
            diff.join("\n")
        );
        wait_until(Duration::from_secs(60), "the stream is done", || {
            mount.stats().stream_state == StreamState::Done as u64
        })
        .await;
        let chunks = all_chunks(&artifact);
        for c in &chunks {
            assert!(cache.contains(&c.digest), "{name}: a chunk is missing");
        }
        let s = mount.stats();
        assert_eq!(
            s.fetched_chunks,
            chunks.len() as u64,
            "{name}: each once: {s}"
        );
        // After: from the cache alone (the page cache of the mount dropped by a new mount).
        mount.unmount().unwrap();
        let mount = mount_with(&artifact, &cache, &dir, &options(StreamPolicy::Always));
        let d = dir.clone();
        let after = blocking(move || Tree::snapshot(&d).unwrap()).await;
        let diff = expected.diff(&after);
        assert!(
            diff.is_empty(),
            "{name} after streaming:\n{}",
            diff.join("\n")
        );
        // The stream's thread finds nothing left to fetch, on its own time (bounded wait).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while mount.stats().stream_state != StreamState::Done as u64
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let s = mount.stats();
        assert_eq!(s.fetched_chunks, 0, "{name}: all from the cache: {s}");
        assert_eq!(s.stream_state, StreamState::Done as u64, "{name}: {s}");
        mount.unmount().unwrap();
    }
}

/// An image being streamed over a slow link: unmount ends the stream at once (it does not
/// wait for the requests in flight, several seconds each here) and leaves no thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmount_stops_a_slow_stream_at_once() {
    let _serial = SERIAL.lock().await;
    logs();
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let data = noise(24 << 20, 9);
    let image = ImageBuilder::new().layer(Layer::zstd().file("big", &data));
    accelerate_with(
        &registry,
        image,
        "stream/stop:v1",
        CHUNK,
        8 << 20,
        work.path(),
    )
    .await;
    let proxy = FaultyProxy::start(registry.addr());
    let artifact = via_proxy(&proxy, "stream/stop:v1").await;
    // 2.5 MB/s: each 4 MiB request takes over 1.6 s alone.
    proxy.set_link(Some(Link::mbit(20, 2)));
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    let dir = work.path().join("mnt");
    let mount = mount_with(&artifact, &cache, &dir, &options(StreamPolicy::Always));
    let stats = mount.stats_handle();
    wait_until(Duration::from_secs(10), "streaming", || {
        stats.snapshot().stream_state == StreamState::Streaming as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(threads_named("pronto-stream"), 1);
    let started = Instant::now();
    blocking(move || mount.unmount().unwrap()).await;
    let took = started.elapsed();
    eprintln!(
        "unmount during the stream took {took:?}: {}",
        stats.snapshot()
    );
    assert!(took < Duration::from_secs(1), "unmount took {took:?}");
    assert!(!is_mounted(&dir));
    let s = stats.snapshot();
    assert_eq!(s.stream_state, StreamState::Stopped as u64, "{s}");
    assert!(s.streamed_chunks < 384, "the stream was cut short: {s}");
    wait_until(Duration::from_secs(1), "the stream's thread ended", || {
        threads_named("pronto-stream") == 0
    })
    .await;
    // What landed verifies.
    drop(cache);
    let cache = ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap();
    let (hits, _) = verify_cache(&cache, &artifact);
    assert_eq!(hits, s.streamed_chunks, "what the stream counted is cached");
}

/// Every chunk of `artifact` the cache holds reads back whole and verified (none corrupt);
/// (entries found, entries missing).
fn verify_cache(cache: &ChunkCache, artifact: &Artifact) -> (u64, u64) {
    let (mut hits, mut misses) = (0, 0);
    for c in all_chunks(artifact) {
        match cache.read(&c.digest, c.uncompressed_size, 0..c.uncompressed_size) {
            Lookup::Hit(bytes) => {
                assert_eq!(pronto_format::chunk_digest(&bytes), c.digest);
                hits += 1;
            }
            Lookup::Miss => misses += 1,
            Lookup::Corrupt => panic!("a corrupt cache entry"),
        }
    }
    assert_eq!(cache.stats().chunks_corrupt, 0);
    (hits, misses)
}

/// The child of [`a_kill_mid_stream_leaves_a_consistent_cache`]: mounts the image named in
/// its environment with the stream on, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_kill_mid_stream_leaves_a_consistent_cache"]
async fn stream_child_process() {
    let (Ok(reference), Ok(work)) = (
        std::env::var("PRONTO_STREAM_CHILD_REF"),
        std::env::var("PRONTO_STREAM_CHILD_DIR"),
    ) else {
        return;
    };
    let work = PathBuf::from(work);
    let resolved = pull::resolve(&client(), &reference.parse().unwrap())
        .await
        .unwrap();
    let artifact = pronto_artifact::fetch_artifact(&client(), &resolved)
        .await
        .unwrap();
    let cache = Arc::new(ChunkCache::open(&work.join("cache"), 1 << 30).unwrap());
    let _mount = mount_with(
        &artifact,
        &cache,
        &work.join("mnt"),
        &options(StreamPolicy::Always),
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
}

fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

/// A process streaming an image is killed (SIGKILL) mid-stream: the node cache it leaves
/// opens, every entry in it verifies, and a new mount over it serves the image exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_mid_stream_leaves_a_consistent_cache() {
    let _serial = SERIAL.lock().await;
    logs();
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let mut layer = Layer::zstd().file("big", noise(16 << 20, 10));
    for i in 0..16u64 {
        layer = layer.file(format!("small/f{i}"), noise(100_000, 60 + i));
    }
    let (resolved, _) = accelerate_with(
        &registry,
        ImageBuilder::new().layer(layer),
        "stream/kill:v1",
        CHUNK,
        4 << 20,
        work.path(),
    )
    .await;
    let proxy = FaultyProxy::start(registry.addr());
    let artifact = via_proxy(&proxy, "stream/kill:v1").await;
    proxy.set_link(Some(Link::mbit(40, 2)));
    let child_dir = work.path().join("child");
    std::fs::create_dir_all(&child_dir).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "stream_child_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "PRONTO_STREAM_CHILD_REF",
            format!("{}/stream/kill:v1", proxy.host()),
        )
        .env("PRONTO_STREAM_CHILD_DIR", &child_dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cache_dir = child_dir.join("cache");
    let deadline = Instant::now() + Duration::from_secs(30);
    while files_under(&cache_dir) < 40 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        files_under(&cache_dir) >= 40,
        "the child cached chunks before the kill"
    );
    assert_eq!(
        pronto_lazyfs::cleanup_stale_mounts(&child_dir).unwrap(),
        1,
        "the child's mount"
    );
    proxy.set_link(None);
    let cache = Arc::new(ChunkCache::open(&cache_dir, 1 << 30).unwrap());
    let (hits, misses) = verify_cache(&cache, &artifact);
    eprintln!("after the kill: {hits} chunks cached and verified, {misses} not cached");
    assert!(
        hits >= 20 && misses > 0,
        "killed mid-stream: {hits} cached, {misses} not"
    );
    // A new mount over what was left serves the image exactly, and streams the rest.
    let unpacked = work.path().join("unpack");
    pull::unpack_image(&client(), &resolved, &unpacked, Arc::new(NoProgress))
        .await
        .unwrap();
    let dir = work.path().join("mnt");
    let mount = mount_with(&artifact, &cache, &dir, &options(StreamPolicy::Always));
    let d = dir.clone();
    let actual = blocking(move || Tree::snapshot(&d).unwrap()).await;
    let diff = Tree::snapshot(&unpacked).unwrap().diff(&actual);
    assert!(diff.is_empty(), "after the kill:\n{}", diff.join("\n"));
    wait_until(Duration::from_secs(60), "the stream is done", || {
        mount.stats().stream_state == StreamState::Done as u64
    })
    .await;
    let s = mount.stats();
    assert!(
        s.fetched_chunks <= misses,
        "what the killed stream cached is not fetched again: {s}"
    );
    mount.unmount().unwrap();
}

/// A reader's miss while a large prefetch, then the stream, fill a slow link (100 Mbit/s,
/// 10 ms) is answered in about a round trip plus its own transfer at a share of the link, not
/// after the queue: far less than the prefetch or the stream as a whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_is_not_queued_behind_prefetch_or_the_stream() {
    let _serial = SERIAL.lock().await;
    logs();
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let bulk = noise(32 << 20, 11);
    let probes: Vec<Vec<u8>> = (0..2).map(|i| noise(CHUNK as usize, 20 + i)).collect();
    let image = ImageBuilder::new().layer(
        Layer::zstd()
            .file("aa/bulk", &bulk)
            .file("zz/probe0", &probes[0])
            .file("zz/probe1", &probes[1]),
    );
    accelerate_with(
        &registry,
        image,
        "stream/starve:v1",
        CHUNK,
        4 << 20,
        work.path(),
    )
    .await;
    let proxy = FaultyProxy::start(registry.addr());
    let artifact = via_proxy(&proxy, "stream/starve:v1").await;
    proxy.set_link(Some(Link::mbit(100, 10)));
    let trace = AccessTrace {
        chunks: bulk
            .chunks(CHUNK as usize)
            .map(pronto_format::chunk_digest)
            .collect(),
    };
    let read_probe = |dir: PathBuf, i: usize, expect: Vec<u8>| {
        blocking(move || {
            let started = Instant::now();
            let got = std::fs::read(dir.join(format!("zz/probe{i}"))).unwrap();
            assert!(got == expect, "probe {i}: other bytes");
            started.elapsed()
        })
    };

    // Prefetch.
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache1"), 1 << 30).unwrap());
    let dir = work.path().join("mnt1");
    let mut mount = mount_with(&artifact, &cache, &dir, &options(StreamPolicy::Off));
    let started = Instant::now();
    assert_eq!(mount.prefetch(&trace), trace.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let miss = read_probe(dir.clone(), 0, probes[0].clone()).await;
    let at_miss = mount.stats();
    wait_until(Duration::from_secs(60), "the prefetch is done", || {
        mount.stats().prefetched_chunks == trace.len() as u64
    })
    .await;
    let whole = started.elapsed();
    let s = mount.stats();
    eprintln!("a miss during prefetch: {miss:?}, the prefetch {whole:?}: {s}");
    assert!(
        at_miss.prefetched_chunks < trace.len() as u64 / 2,
        "the miss came during the prefetch: {at_miss}"
    );
    assert!(
        miss * 4 < whole && miss < Duration::from_millis(800),
        "a miss took {miss:?} during a prefetch of {whole:?}: {s}"
    );
    assert_eq!(s.demand_range_requests, 1, "the probe's own request: {s}");
    assert!(
        Duration::from_micros(s.fetch_micros_max) <= miss,
        "the miss latency figure is the probe's: {s}"
    );
    mount.unmount().unwrap();

    // The stream (the probes are last in pack order).
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache2"), 1 << 30).unwrap());
    let dir = work.path().join("mnt2");
    let mount = mount_with(&artifact, &cache, &dir, &options(StreamPolicy::Always));
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let miss = read_probe(dir.clone(), 1, probes[1].clone()).await;
    let at_miss = mount.stats();
    wait_until(Duration::from_secs(60), "the stream is done", || {
        mount.stats().stream_state == StreamState::Done as u64
    })
    .await;
    let whole = started.elapsed();
    let s = mount.stats();
    eprintln!("a miss during the stream: {miss:?}, the stream {whole:?}: {s}");
    assert!(
        at_miss.streamed_chunks < s.streamed_chunks / 2,
        "the miss came during the stream: {at_miss}"
    );
    assert!(
        miss * 4 < whole && miss < Duration::from_millis(800),
        "a miss took {miss:?} during a stream of {whole:?}: {s}"
    );
    assert_eq!(s.demand_range_requests, 1, "the probe's own request: {s}");
    mount.unmount().unwrap();
}

/// How long reading `expect.len()` bytes of `path` at `at` took; they must be `expect`.
async fn timed_read(path: &Path, at: u64, expect: &[u8]) -> Duration {
    let (path, expect) = (path.to_owned(), expect.to_vec());
    blocking(move || {
        let began = Instant::now();
        let mut got = vec![0u8; expect.len()];
        std::fs::File::open(&path)
            .unwrap()
            .read_exact_at(&mut got, at)
            .unwrap();
        assert!(got == expect, "{} at {at}: other bytes", path.display());
        began.elapsed()
    })
    .await
}

/// A long prefetch request (a hot pack's back-to-back chunks: one request of 8 MiB, about
/// 0.7 s at 100 Mbit/s) hands out each chunk as soon as its bytes are in: a reader of the
/// first chunk, which the request claimed, waits for that chunk, not for the whole request
/// and its decoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_prefetch_request_serves_its_first_chunks_before_its_last_arrive() {
    let _serial = SERIAL.lock().await;
    logs();
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let hot = noise(8 << 20, 31);
    let image = ImageBuilder::new().layer(Layer::zstd().file("app/hot", &hot));
    accelerate_with(
        &registry,
        image,
        "stream/progressive:v1",
        CHUNK,
        32 << 20,
        work.path(),
    )
    .await;
    let proxy = FaultyProxy::start(registry.addr());
    let artifact = via_proxy(&proxy, "stream/progressive:v1").await;
    proxy.set_link(Some(Link::mbit(100, 10)));
    let trace = AccessTrace {
        chunks: hot
            .chunks(CHUNK as usize)
            .map(pronto_format::chunk_digest)
            .collect(),
    };
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    let dir = work.path().join("mnt");
    let mut mount = mount_with(&artifact, &cache, &dir, &options(StreamPolicy::Off));
    let started = Instant::now();
    assert_eq!(mount.prefetch(&trace), trace.len());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let file = dir.join("app/hot");
    let waited = timed_read(&file, 0, &hot[..CHUNK as usize]).await;
    let at_read = mount.stats();
    // The last chunk comes with the request's last bytes: its reader waits on the flight,
    // and that wait is counted (explain takes it out of the program's own time).
    let at = hot.len() - CHUNK as usize;
    let waited_last = timed_read(&file, at as u64, &hot[at..]).await;
    wait_until(Duration::from_secs(60), "the prefetch is done", || {
        mount.stats().prefetched_chunks == trace.len() as u64
    })
    .await;
    let whole = started.elapsed();
    let s = mount.stats();
    eprintln!(
        "the first chunk after {waited:?}, the last after {waited_last:?} more, the prefetch \
         {whole:?}: {s}"
    );
    assert_eq!(s.range_requests, 1, "one request for the hot set: {s}");
    assert_eq!(s.demand_range_requests, 0, "the reader waited on it: {s}");
    let flight_wait = Duration::from_micros(s.flight_wait_micros);
    assert!(
        flight_wait >= waited_last / 2 && flight_wait < whole,
        "the last chunk's wait ({waited_last:?}) is counted as a wait on a flight: {s}"
    );
    assert!(
        waited_last > Duration::from_millis(100),
        "the last chunk came with the request's end"
    );
    assert!(
        at_read.prefetched_chunks < trace.len() as u64,
        "the read came during the request: {at_read}"
    );
    assert!(
        waited * 3 < whole,
        "the first chunk took {waited:?} of a request of {whole:?}: {s}"
    );
    mount.unmount().unwrap();
}

/// `Auto` on a mount whose program reads a little and then stops: the stream measures the
/// link (its first request when nothing else did), waits for the reads to settle or streams
/// at once when the rest is small for the link, and ends with every chunk cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_measures_the_link_and_streams_the_rest() {
    let _serial = SERIAL.lock().await;
    logs();
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let files: Vec<Vec<u8>> = (0..8).map(|i| noise(1 << 20, 90 + i)).collect();
    let mut layer = Layer::zstd();
    for (i, data) in files.iter().enumerate() {
        layer = layer.file(format!("f{i}"), data);
    }
    accelerate_with(
        &registry,
        ImageBuilder::new().layer(layer),
        "stream/auto:v1",
        CHUNK,
        4 << 20,
        work.path(),
    )
    .await;
    let proxy = FaultyProxy::start(registry.addr());
    let artifact = via_proxy(&proxy, "stream/auto:v1").await;
    proxy.set_link(Some(Link::mbit(100, 10)));
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    let dir = work.path().join("mnt");
    let mount = mount_with(&artifact, &cache, &dir, &options(StreamPolicy::Auto));
    let (d, expect) = (dir.clone(), files[5].clone());
    blocking(move || assert!(std::fs::read(d.join("f5")).unwrap() == expect)).await;
    wait_until(Duration::from_secs(30), "the stream is done", || {
        mount.stats().stream_state == StreamState::Done as u64
    })
    .await;
    let s = mount.stats();
    eprintln!("auto: {s}");
    assert!(
        s.link_bytes_per_sec > 1_000_000,
        "the link was measured: {s}"
    );
    assert!(s.streamed_chunks > 0, "{s}");
    for c in all_chunks(&artifact) {
        assert!(cache.contains(&c.digest), "every chunk cached: {s}");
    }
    let d = dir.clone();
    blocking(move || {
        for (i, data) in files.iter().enumerate() {
            assert!(
                std::fs::read(d.join(format!("f{i}"))).unwrap() == *data,
                "f{i}"
            );
        }
    })
    .await;
    assert_eq!(
        mount.stats().fetched_chunks,
        s.fetched_chunks,
        "nothing more fetched"
    );
    mount.unmount().unwrap();
}
