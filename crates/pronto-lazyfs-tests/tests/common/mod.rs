//! What the lazy filesystem's integration tests share: images converted and pushed to a real
//! registry, mounts through the kernel's FUSE, captured log lines.

#![allow(dead_code)] // each test binary uses its own part

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pronto_artifact::{fetch_artifact, Artifact};
use pronto_convert::{convert, ConvertOptions};
use pronto_image::pull::{self, ResolvedImage};
use pronto_image::{ClientOptions, RegistryClient};
use pronto_lazyfs::{ChunkCache, LazyMount, MountOptions, RetryPolicy};
use pronto_testkit::image::ImageBuilder;
use pronto_testkit::registry::TestRegistry;

pub fn client() -> RegistryClient {
    RegistryClient::new(ClientOptions::default()).unwrap()
}

/// Pushes `image`, converts it with `chunk`-byte chunks and fetches the artifact.
pub async fn accelerate(
    registry: &TestRegistry,
    image: ImageBuilder,
    tag: &str,
    chunk: u32,
    work: &Path,
) -> (ResolvedImage, Artifact) {
    // Several packs per image, each holding runs of adjacent chunks.
    accelerate_with(registry, image, tag, chunk, 16 * u64::from(chunk), work).await
}

/// As [`accelerate`], with packs of about `pack_target` bytes.
pub async fn accelerate_with(
    registry: &TestRegistry,
    image: ImageBuilder,
    tag: &str,
    chunk: u32,
    pack_target: u64,
    work: &Path,
) -> (ResolvedImage, Artifact) {
    let reference = registry.reference(tag);
    image.push(&client(), &reference).await.unwrap();
    let resolved = pull::resolve(&client(), &reference).await.unwrap();
    let mut opts = ConvertOptions::new(work.join("convert"));
    opts.chunk_size = chunk;
    opts.pack_target = pack_target;
    convert(&client(), &resolved, &opts).await.unwrap();
    let artifact = fetch_artifact(&client(), &resolved).await.unwrap();
    (resolved, artifact)
}

/// Mounts `artifact` at `dir` (created) with `options`.
pub fn mount_with(
    artifact: &Artifact,
    cache: &Arc<ChunkCache>,
    dir: &Path,
    options: &MountOptions,
) -> LazyMount {
    std::fs::create_dir_all(dir).unwrap();
    LazyMount::mount(
        artifact,
        client(),
        cache.clone(),
        dir,
        options,
        tokio::runtime::Handle::current(),
    )
    .unwrap()
}

pub fn mount_at(
    artifact: &Artifact,
    cache: &Arc<ChunkCache>,
    dir: &Path,
    retry: RetryPolicy,
) -> LazyMount {
    let options = MountOptions {
        retry,
        ..MountOptions::default()
    };
    mount_with(artifact, cache, dir, &options)
}

pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        first_backoff: Duration::from_millis(50),
        attempt_timeout: Duration::from_secs(2),
    }
}

/// Runs blocking filesystem work off the runtime (whose threads the FUSE workers need).
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

pub fn is_mounted(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
}

/// Log lines of this test binary (`filter` applies to the first call), for tests that check
/// what was said.
pub fn logs(filter: &str) -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .with_writer(move || LogWriter(sink.clone()))
            .with_env_filter(filter)
            .with_ansi(false)
            .init();
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What was logged so far (see [`logs`]).
pub fn logged() -> String {
    String::from_utf8_lossy(&logs("").lock().unwrap()).into_owned()
}
