//! Ignored: a measurement, not a check. An uncached sequential read of a large file through a
//! mount, over an emulated link (`pronto_testkit::faulty::Link`: one token bucket for every
//! connection, one round trip per request) in front of the real registry; prints MB/s per run
//! and the median. Release build:
//!
//! ```text
//! PRONTO_SEQ_LINK=1000,2 PRONTO_SEQ_RUNS=3 \
//!   cargo test --release -p pronto-lazyfs-tests --test seq_bench -- --ignored --nocapture
//! ```
//!
//! 256 MiB of incompressible data (every byte crosses the link), 1 MiB chunks (the bench's),
//! packs of 64 MiB; each run a fresh node cache and mount, read with 1 MiB `read`s.

mod common;

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{accelerate_with, blocking, client, mount_with};
use pronto_lazyfs::{ChunkCache, MountOptions};
use pronto_testkit::faulty::{FaultyProxy, Link};
use pronto_testkit::fixtures::noise;
use pronto_testkit::image::{ImageBuilder, Layer};
use pronto_testkit::registry::TestRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it by hand (see the module docs)"]
async fn uncached_sequential_read_over_a_shaped_link() {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let link = env("PRONTO_SEQ_LINK", "1000,2");
    let (mbit, rtt) = link.split_once(',').expect("PRONTO_SEQ_LINK=MBIT,RTT_MS");
    let link = Link::mbit(mbit.parse().unwrap(), rtt.parse().unwrap());
    let runs: usize = env("PRONTO_SEQ_RUNS", "3").parse().unwrap();
    let size: usize = env("PRONTO_SEQ_MIB", "256").parse::<usize>().unwrap() << 20;
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let data = noise(size, 77);
    let image = ImageBuilder::new().layer(Layer::plain().file("asset", &data));
    accelerate_with(
        &registry,
        image,
        "bench/seq:v1",
        1 << 20,
        64 << 20,
        work.path(),
    )
    .await;
    let proxy = FaultyProxy::start(registry.addr());
    let via: pronto_image::Reference = format!("{}/bench/seq:v1", proxy.host()).parse().unwrap();
    let resolved = pronto_image::pull::resolve(&client(), &via).await.unwrap();
    let artifact = pronto_artifact::fetch_artifact(&client(), &resolved)
        .await
        .unwrap();
    proxy.set_link(Some(link));
    let mut rates = Vec::new();
    for run in 0..runs {
        let cache =
            Arc::new(ChunkCache::open(&work.path().join(format!("cache{run}")), 2 << 30).unwrap());
        let dir = work.path().join(format!("mnt{run}"));
        let mount = mount_with(&artifact, &cache, &dir, &MountOptions::default());
        let (path, expect) = (dir.join("asset"), data.clone());
        let took = blocking(move || {
            let mut f = std::fs::File::open(path).unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let mut at = 0;
            let started = Instant::now();
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                assert!(buf[..n] == expect[at..at + n], "other bytes at {at}");
                at += n;
            }
            assert_eq!(at, expect.len());
            started.elapsed()
        })
        .await;
        let mbs = size as f64 / took.as_secs_f64() / 1e6;
        eprintln!(
            "run {run}: {size} B in {took:?}: {mbs:.1} MB/s; {}",
            mount.stats()
        );
        rates.push(mbs);
        mount.unmount().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rates.sort_by(f64::total_cmp);
    eprintln!(
        "link {}: {:.1} MB/s; median of {runs}: {:.1} MB/s (runs {rates:.1?})",
        format_args!("{mbit} Mbit/s, {} ms", link.rtt.as_millis()),
        link.bytes_per_sec as f64 / 1e6,
        rates[rates.len() / 2]
    );
}
