//! What verifying every node-cache read costs (issue 17, item 8): an image of 256 MiB read through
//! a mount from a warm node cache, the mounted files' page cache dropped before each pass, with
//! the cache hashing every segment a read reaches and with it trusting segments checked once (the
//! behaviour before). Three passes of each, alternating, medians printed. A measurement, not a
//! check: ignored by default, and meant for a release build:
//!
//! ```text
//! cargo test --release -p pronto-lazyfs-tests --test cache_bench -- --ignored --nocapture
//! ```

mod common;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{accelerate, blocking, fast_retry, mount_with};
use pronto_lazyfs::{ChunkCache, MountOptions};
use pronto_testkit::fixtures::noise;
use pronto_testkit::image::{ImageBuilder, Layer};
use pronto_testkit::registry::TestRegistry;

const MIB: usize = 1 << 20;
const FILES: usize = 4;
const FILE_SIZE: usize = 64 * MIB;
const PASSES: usize = 3;
const RANDOM_READS: usize = 4000;

fn drop_page_cache(path: &Path) {
    let f = std::fs::File::open(path).unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
}

/// Every entry file of the cache (chunks only: the mount uses no backing files).
fn cache_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir).unwrap() {
        let shard = shard.unwrap().path();
        if shard.is_dir() && shard.file_name().unwrap().len() == 2 {
            for f in std::fs::read_dir(&shard).unwrap() {
                out.push(f.unwrap().path());
            }
        }
    }
    out
}

#[derive(Clone, Copy, Debug)]
enum Pass {
    /// Every file read in order with 1 MiB `read`s; the cache's files in the page cache.
    Sequential,
    /// The same, the cache's files dropped from the page cache too (read from the disk).
    SequentialFromDisk,
    /// 4 KiB `pread`s at random offsets; the cache's files in the page cache.
    Random4k,
}

/// One pass: bytes read and the time it took.
fn run_pass(pass: Pass, mnt: &Path, cache_dir: &Path, seed: u64) -> (usize, Duration) {
    let files: Vec<PathBuf> = (0..FILES).map(|i| mnt.join(format!("f{i}"))).collect();
    for f in &files {
        drop_page_cache(f);
    }
    if let Pass::SequentialFromDisk = pass {
        for e in cache_entries(cache_dir) {
            drop_page_cache(&e);
        }
    }
    let started = Instant::now();
    let mut total = 0;
    match pass {
        Pass::Sequential | Pass::SequentialFromDisk => {
            let mut buf = vec![0u8; MIB];
            for f in &files {
                let mut f = std::fs::File::open(f).unwrap();
                loop {
                    let n = f.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    total += n;
                }
            }
        }
        Pass::Random4k => {
            let opened: Vec<std::fs::File> = files
                .iter()
                .map(|f| std::fs::File::open(f).unwrap())
                .collect();
            let mut x = seed | 1;
            let mut buf = vec![0u8; 4096];
            for _ in 0..RANDOM_READS {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let f = &opened[(x % FILES as u64) as usize];
                let at = (x >> 8) % (FILE_SIZE as u64 - 4096);
                f.read_exact_at(&mut buf, at).unwrap();
                total += 4096;
            }
        }
    }
    (total, started.elapsed())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it alone, in a release build"]
async fn cost_of_verifying_every_cache_read() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let contents: Vec<Vec<u8>> = (0..FILES)
        .map(|i| noise(FILE_SIZE, 100 + i as u64))
        .collect();
    let mut layer = Layer::plain();
    for (i, c) in contents.iter().enumerate() {
        layer = layer.file(format!("f{i}"), c);
    }
    let image = ImageBuilder::new().layer(layer);
    let chunk = pronto_format::DEFAULT_CHUNK_SIZE;
    let (_, artifact) = accelerate(&registry, image, "bench/cache:v1", chunk, work.path()).await;
    let cache_dir = work.path().join("cache");
    let cache = Arc::new(ChunkCache::open(&cache_dir, 4 << 30).unwrap());
    let mnt = work.path().join("mnt");
    let options = MountOptions {
        retry: fast_retry(),
        passthrough: false,
        ..MountOptions::default()
    };
    let mount = mount_with(&artifact, &cache, &mnt, &options);

    // Warm the node cache: every chunk fetched, checked and stored.
    let m = mnt.clone();
    let read: Vec<Vec<u8>> = blocking(move || {
        (0..FILES)
            .map(|i| std::fs::read(m.join(format!("f{i}"))).unwrap())
            .collect()
    })
    .await;
    assert!(read == contents, "the warm-up read differs");
    let chunks = FILES * FILE_SIZE / chunk as usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    while cache.len() < chunks {
        assert!(Instant::now() < deadline, "not cached: {}", cache.stats());
        std::thread::sleep(Duration::from_millis(20));
    }

    println!(
        "{} MiB in {FILES} files, {} KiB chunks, {PASSES} passes per mode",
        FILES * FILE_SIZE / MIB,
        chunk >> 10
    );
    // The hashing alone, for scale: every 64 KiB segment of the image hashed once, in memory.
    let started = Instant::now();
    for (i, seg) in contents.iter().flat_map(|c| c.chunks(64 << 10)).enumerate() {
        std::hint::black_box(pronto_format::segment_value(seg, i % 16));
    }
    let took = started.elapsed();
    println!(
        "hashing alone: {:.1} MB/s ({:.1} ms for the image)",
        (FILES * FILE_SIZE) as f64 / 1e6 / took.as_secs_f64(),
        took.as_secs_f64() * 1e3
    );
    for pass in [Pass::Sequential, Pass::SequentialFromDisk, Pass::Random4k] {
        let before = mount.stats();
        let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 0..PASSES {
            // Alternate which mode goes first, so neither always follows the other.
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for every_read in order {
                cache.set_verify_every_read(every_read);
                let (m, c) = (mnt.clone(), cache_dir.clone());
                let (bytes, took) =
                    blocking(move || run_pass(pass, &m, &c, 7 + round as u64)).await;
                let rate = bytes as f64 / 1e6 / took.as_secs_f64();
                println!("  {pass:?} every_read={every_read} round {round}: {rate:.1} MB/s");
                rates[usize::from(every_read)].push(rate);
            }
        }
        let (once, every) = (median(rates[0].clone()), median(rates[1].clone()));
        println!(
            "{pass:?}: checked once {once:.1} MB/s, every read {every:.1} MB/s, ratio {:.3} \
             (cost {:.1}%)",
            every / once,
            (1.0 - every / once) * 100.0
        );
        let s = mount.stats();
        let (requests, bytes) = (
            s.read_requests - before.read_requests,
            s.read_bytes - before.read_bytes,
        );
        println!(
            "  {requests} FUSE reads of {} KiB on average",
            bytes / requests.max(1) / 1024
        );
    }
    cache.set_verify_every_read(true);
    let s = mount.stats();
    assert_eq!(s.cache_corrupt, 0, "{s}");
    mount.unmount().unwrap();
}
