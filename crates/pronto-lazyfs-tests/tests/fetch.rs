//! The chunk fetcher alone, against the real registry: concurrent misses on one chunk make one
//! fetch; adjacent chunks make one Range request.

use std::sync::{Arc, Barrier};

use pronto_artifact::fetch_artifact;
use pronto_convert::{convert, ConvertOptions};
use pronto_image::pull;
use pronto_image::{ClientOptions, RegistryClient};
use pronto_lazyfs::fetch::ChunkFetcher;
use pronto_lazyfs::stats::Stats;
use pronto_lazyfs::{ChunkCache, RetryPolicy};
use pronto_testkit::fixtures::noise;
use pronto_testkit::image::{ImageBuilder, Layer};
use pronto_testkit::registry::TestRegistry;

const CHUNK: u32 = 64 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_fetch_once_and_adjacent_chunks_share_a_request() {
    let registry = TestRegistry::start();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let content = noise(8 * CHUNK as usize, 5);
    let reference = registry.reference("fetch/app:v1");
    ImageBuilder::new()
        .layer(Layer::gzip().file("f", &content))
        .push(&client, &reference)
        .await
        .unwrap();
    let image = pull::resolve(&client, &reference).await.unwrap();
    let mut opts = ConvertOptions::new(work.path().join("convert"));
    opts.chunk_size = CHUNK;
    convert(&client, &image, &opts).await.unwrap();
    let artifact = fetch_artifact(&client, &image).await.unwrap();
    let ino = artifact.index.resolve(b"f").unwrap().unwrap();
    let chunks = artifact.index.chunks(ino).unwrap();
    let stats = Arc::new(Stats::default());
    let fetcher = Arc::new(ChunkFetcher::new(
        client,
        artifact.reference.clone(),
        artifact.packs.clone(),
        Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap()),
        stats.clone(),
        RetryPolicy::default(),
        tokio::runtime::Handle::current(),
    ));

    // 8 readers of chunk 2 at the same moment.
    let barrier = Arc::new(Barrier::new(8));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (f, b, c) = (fetcher.clone(), barrier.clone(), chunks[2]);
            std::thread::spawn(move || {
                b.wait();
                f.read(&[(c, 0..CHUNK)]).unwrap()
            })
        })
        .collect();
    let want = &content[2 * CHUNK as usize..3 * CHUNK as usize];
    for r in readers {
        let got = tokio::task::spawn_blocking(move || r.join().unwrap())
            .await
            .unwrap();
        assert!(got == want);
    }
    let s = stats.snapshot();
    assert_eq!(s.fetched_chunks, 1, "one fetch for eight readers: {s}");
    assert_eq!(s.range_requests, 1, "{s}");
    assert_eq!(s.cache_hits + s.cache_misses, 8, "{s}");

    // Chunks 4..8 in one read: adjacent in the pack, one request; byte ranges honoured.
    let pieces: Vec<_> = (4..8).map(|i| (chunks[i], 10..CHUNK)).collect();
    let f = fetcher.clone();
    let got = tokio::task::spawn_blocking(move || f.read(&pieces).unwrap())
        .await
        .unwrap();
    let mut want = Vec::new();
    for i in 4..8 {
        want.extend_from_slice(&content[i * CHUNK as usize + 10..(i + 1) * CHUNK as usize]);
    }
    assert!(got == want);
    let s = stats.snapshot();
    assert_eq!((s.fetched_chunks, s.range_requests), (5, 2), "{s}");
    assert_eq!(s.fetched_content_bytes, 5 * u64::from(CHUNK), "{s}");

    // A range outside its chunk is an error, not a panic.
    let f = fetcher.clone();
    let c = chunks[0];
    let err = tokio::task::spawn_blocking(move || f.read(&[(c, 0..CHUNK + 1)]).unwrap_err())
        .await
        .unwrap();
    assert!(err.to_string().contains("outside the chunk"), "{err}");
}
