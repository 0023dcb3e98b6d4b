//! FUSE passthrough of files whose chunks are all in the node cache, through the kernel's FUSE
//! (this kernel has `CONFIG_FUSE_PASSTHROUGH`): a fully cached file gets a backing file and its
//! reads (and maps) no longer reach the daemon; a partly cached one stays on the daemon's path;
//! bytes are those of a plain unpack either way; a backing file evicted while open keeps
//! serving its reader; an overlay over the mount (the container's rootfs) reads through it;
//! a kernel that refuses the backing file leaves the daemon serving, logged once.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{accelerate, blocking, client, logged, mount_with};
use pronto_image::pull::{self, NoProgress};
use pronto_lazyfs::{ChunkCache, LazyMount, MountOptions};
use pronto_testkit::fixtures::{ground_truth_images, noise};
use pronto_testkit::image::{ImageBuilder, Layer};
use pronto_testkit::registry::TestRegistry;
use pronto_testkit::tree::Tree;

const CHUNK: u32 = 64 << 10;

/// Mount options of a node that is not recording a start (recording keeps passthrough off).
fn options(min_size: u64) -> MountOptions {
    MountOptions {
        record_access: false,
        passthrough_min_size: min_size,
        retry: common::fast_retry(),
        ..MountOptions::default()
    }
}

/// Waits until the mount has built `n` backing files.
async fn materialized(mount: &LazyMount, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while mount.stats().materialized_files < n {
        assert!(
            Instant::now() < deadline,
            "backing files: {}; {}",
            mount.stats(),
            mount.cache_stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the kernel's `RELEASE` of every handle closed so far has reached the daemon (it
/// comes after the program's `close`, asynchronously): until then the daemon must assume the
/// handles are open, and an inode with a handle open without passthrough gets no passthrough.
async fn released(mount: &LazyMount) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while mount.stats().handles_open > 0 {
        assert!(Instant::now() < deadline, "{}", mount.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the mount's count of backing files built stops moving.
async fn settled(mount: &LazyMount) {
    let mut last = mount.stats().materialized_files;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = mount.stats().materialized_files;
        if now == last {
            return;
        }
        last = now;
    }
}

/// The file's bytes, read with `read` and through a shared read-only map of the same open
/// file (one open).
fn read_and_map(path: &Path) -> (Vec<u8>, Vec<u8>) {
    use std::os::fd::AsRawFd;
    let mut f = std::fs::File::open(path).unwrap();
    let mut read = Vec::new();
    f.read_to_end(&mut read).unwrap();
    let len = read.len();
    // SAFETY: a fresh read-only shared mapping of `len` bytes of an open file; it is only read
    // (copied out) while `f` is open and unmapped before returning.
    let mapped = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        let copy = std::slice::from_raw_parts(p.cast::<u8>(), len).to_vec();
        libc::munmap(p, len);
        copy
    };
    (read, mapped)
}

fn drop_page_cache() {
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fully_cached_file_is_passed_through_and_a_partly_cached_one_is_not() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let whole = noise(20 * CHUNK as usize + 123, 1);
    let part = noise(20 * CHUNK as usize, 2);
    let image = ImageBuilder::new().layer(
        Layer::gzip()
            .file("lib/whole.so", &whole)
            .file("lib/part.so", &part)
            .file("small", b"below the bound"),
    );
    let (resolved, artifact) = accelerate(&registry, image, "pt/app:v1", CHUNK, work.path()).await;
    let unpacked = work.path().join("unpack");
    pull::unpack_image(&client(), &resolved, &unpacked, Arc::new(NoProgress))
        .await
        .unwrap();
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    let dir = work.path().join("mnt");
    let mount = mount_with(&artifact, &cache, &dir, &options(64 << 10));

    // First reads come through the daemon; `whole` is read to the end, `part` only in part.
    let d = dir.clone();
    let (first, head) = blocking(move || {
        let first = std::fs::read(d.join("lib/whole.so")).unwrap();
        let mut f = std::fs::File::open(d.join("lib/part.so")).unwrap();
        let mut head = vec![0u8; 3 * CHUNK as usize];
        f.read_exact(&mut head).unwrap();
        (first, head)
    })
    .await;
    assert!(first == whole && head == part[..head.len()]);
    let s = mount.stats();
    assert_eq!((s.file_opens, s.passthrough_opens), (2, 0), "{s}");
    // Closing `whole` with all its chunks cached asks for its backing file.
    materialized(&mount, 1).await;
    released(&mount).await;
    let c = mount.cache_stats();
    assert_eq!((c.files, c.file_bytes), (1, whole.len() as u64), "{c}");

    // Read again, from a cold page cache, with read and through a map: no read reaches the
    // daemon for it, and the bytes are those of the unpacked tree.
    let before = mount.stats();
    let (d, u) = (dir.clone(), unpacked.clone());
    blocking(move || {
        drop_page_cache();
        let (read, mapped) = read_and_map(&d.join("lib/whole.so"));
        let expected = std::fs::read(u.join("lib/whole.so")).unwrap();
        assert!(read == expected, "read through passthrough differs");
        assert!(mapped == expected, "map through passthrough differs");
    })
    .await;
    let s = mount.stats();
    assert_eq!(s.passthrough_opens, before.passthrough_opens + 1, "{s}");
    assert_eq!(s.read_requests, before.read_requests, "no FUSE read: {s}");
    assert_eq!(s.passthrough_refused, 0, "{s}");

    // `part` is not all cached: no backing file, its reads come to the daemon (and fetch the
    // rest), bytes equal to the unpack.
    let before = mount.stats();
    let (d, u) = (dir.clone(), unpacked.clone());
    blocking(move || {
        drop_page_cache();
        let (read, mapped) = read_and_map(&d.join("lib/part.so"));
        let expected = std::fs::read(u.join("lib/part.so")).unwrap();
        assert!(read == expected && mapped == expected, "part.so differs");
        // Small files stay with the daemon whatever is cached.
        assert_eq!(
            std::fs::read(d.join("small")).unwrap(),
            std::fs::read(u.join("small")).unwrap()
        );
    })
    .await;
    let s = mount.stats();
    assert_eq!(s.passthrough_opens, before.passthrough_opens, "{s}");
    assert!(s.read_requests > before.read_requests, "{s}");
    assert!(s.fetched_chunks > before.fetched_chunks, "{s}");
    // Now all cached: `part` gets its backing file too, `small` never does.
    materialized(&mount, 2).await;
    settled(&mount).await;
    assert_eq!(mount.cache_stats().files, 2);
    mount.unmount().unwrap();

    // A restart: a new cache object and mount over the same directory find the backing files
    // and use them at the first open.
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    assert_eq!(cache.stats().files, 2);
    let mount = mount_with(&artifact, &cache, &dir, &options(64 << 10));
    let (d, u) = (dir.clone(), unpacked.clone());
    blocking(move || {
        drop_page_cache();
        for f in ["lib/whole.so", "lib/part.so"] {
            let mut got = std::fs::File::open(d.join(f)).unwrap();
            let expected = std::fs::read(u.join(f)).unwrap();
            // Random reads, as a program's loader does.
            for at in [7 * CHUNK as u64 + 100, 0, 19 * CHUNK as u64 - 10] {
                let mut buf = vec![0u8; 4096];
                got.seek(SeekFrom::Start(at)).unwrap();
                got.read_exact(&mut buf).unwrap();
                assert!(
                    buf == expected[at as usize..at as usize + 4096],
                    "{f} at {at}"
                );
            }
        }
    })
    .await;
    let s = mount.stats();
    assert_eq!((s.passthrough_opens, s.read_requests), (2, 0), "{s}");
    assert_eq!(s.cache_hits + s.cache_misses, 0, "{s}");
    mount.unmount().unwrap();
}

/// The mount with every file eligible and all of them materialized still equals a plain
/// unpack of each ground-truth image (modes, owners, xattrs, links, contents).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_image_equals_a_plain_unpack_through_passthrough() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    let mut passed_through = 0;
    for (name, image) in ground_truth_images(CHUNK) {
        let (resolved, artifact) = accelerate(
            &registry,
            image,
            &format!("ptgt/{name}:v1"),
            CHUNK,
            work.path(),
        )
        .await;
        let unpacked = work.path().join(format!("unpack-{name}"));
        pull::unpack_image(&client(), &resolved, &unpacked, Arc::new(NoProgress))
            .await
            .unwrap();
        let dir = work.path().join(format!("mnt-{name}"));
        let mount = mount_with(&artifact, &cache, &dir, &options(1));
        // The first snapshot reads every file through the daemon, the second (once the
        // backing files are built) through passthrough.
        let d = dir.clone();
        blocking(move || Tree::snapshot(&d).unwrap()).await;
        settled(&mount).await;
        released(&mount).await;
        let (u, d) = (unpacked.clone(), dir.clone());
        let (expected, actual) = blocking(move || {
            drop_page_cache();
            (Tree::snapshot(&u).unwrap(), Tree::snapshot(&d).unwrap())
        })
        .await;
        let diff = expected.diff(&actual);
        assert!(
            diff.is_empty(),
            "{name}: mount differs from the unpack:\n{}",
            diff.join("\n")
        );
        let s = mount.stats();
        assert_eq!(s.passthrough_refused, 0, "{name}: {s}");
        passed_through += s.passthrough_opens;
        mount.unmount().unwrap();
    }
    assert!(passed_through > 0, "no file was read through passthrough");
}

/// A backing file deleted from the cache (LRU) while a program has it open: the program keeps
/// reading the right bytes (the kernel holds the file), new opens while it is open share it,
/// and once all are closed the file is served by the daemon again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicting_an_open_backing_file_does_not_break_its_reader() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let a = noise(24 * CHUNK as usize, 3);
    let mut layer = Layer::gzip().file("a", &a);
    // Fillers below the passthrough bound: chunks only.
    for i in 0..16 {
        layer = layer.file(format!("fill/{i}"), noise(8 * CHUNK as usize, 100 + i));
    }
    let (_, artifact) = accelerate(
        &registry,
        ImageBuilder::new().layer(layer),
        "evict/app:v1",
        CHUNK,
        work.path(),
    )
    .await;
    // 8 MiB: `a` (1.5 MiB) fits as a backing file (at most 2 MiB) beside its chunks; the
    // fillers (8 MiB) push both out.
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 8 << 20).unwrap());
    let dir = work.path().join("mnt");
    let mount = mount_with(&artifact, &cache, &dir, &options(1 << 20));
    let d = dir.clone();
    assert!(blocking(move || std::fs::read(d.join("a")).unwrap()).await == a);
    materialized(&mount, 1).await;
    released(&mount).await;
    let backing: Vec<PathBuf> = walk_files(&work.path().join("cache/files"));
    assert_eq!(backing.len(), 1);

    let d = dir.clone();
    let mut held = blocking(move || {
        let mut f = std::fs::File::open(d.join("a")).unwrap();
        let mut head = vec![0u8; 5 * CHUNK as usize];
        f.read_exact(&mut head).unwrap();
        (f, head)
    })
    .await;
    assert!(held.1 == a[..held.1.len()]);
    let s = mount.stats();
    assert_eq!(s.passthrough_opens, 1, "{s}; {}", mount.cache_stats());

    let d = dir.clone();
    blocking(move || {
        for i in 0..16 {
            std::fs::read(d.join(format!("fill/{i}"))).unwrap();
        }
    })
    .await;
    let c = mount.cache_stats();
    assert_eq!((c.files, c.files_evicted), (0, 1), "{c}");
    assert!(!backing[0].exists(), "the backing file is deleted");

    let before = mount.stats();
    let d = dir.clone();
    let a2 = a.clone();
    let (rest, again) = blocking(move || {
        drop_page_cache();
        let mut rest = Vec::new();
        held.0.read_to_end(&mut rest).unwrap();
        // Opened again while `held` is open: the same backing file.
        let again = std::fs::read(d.join("a")).unwrap();
        let mut start = vec![0u8; 4096];
        held.0.seek(SeekFrom::Start(0)).unwrap();
        held.0.read_exact(&mut start).unwrap();
        assert!(start == a2[..4096]);
        drop(held);
        (rest, again)
    })
    .await;
    assert!(
        rest == a[5 * CHUNK as usize..],
        "the reader's bytes after the eviction"
    );
    assert!(again == a);
    let s = mount.stats();
    assert_eq!(s.passthrough_opens, before.passthrough_opens + 1, "{s}");
    assert_eq!(s.read_requests, before.read_requests, "{s}");
    released(&mount).await;

    // All closed: no backing file any more, so the daemon serves (and refetches) it.
    let d = dir.clone();
    assert!(blocking(move || std::fs::read(d.join("a")).unwrap()).await == a);
    let s = mount.stats();
    assert_eq!(s.passthrough_opens, before.passthrough_opens + 1, "{s}");
    assert!(s.read_requests > before.read_requests, "{s}");
    mount.unmount().unwrap();
}

/// The container's rootfs is an overlay whose lower dir is the mount: the stacking depth the
/// mount asks for leaves room for it, and its reads go through passthrough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlay_over_the_mount_reads_through_passthrough() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let lib = noise(10 * CHUNK as usize, 7);
    let image = ImageBuilder::new().layer(Layer::gzip().file("usr/lib/libx.so", &lib));
    let (_, artifact) = accelerate(&registry, image, "ovl/app:v1", CHUNK, work.path()).await;
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    let dir = work.path().join("mnt");
    let mount = mount_with(&artifact, &cache, &dir, &options(64 << 10));
    let d = dir.clone();
    assert!(blocking(move || std::fs::read(d.join("usr/lib/libx.so")).unwrap()).await == lib);
    materialized(&mount, 1).await;
    released(&mount).await;

    let root = work.path().join("rootfs");
    let (upper, workdir) = (work.path().join("upper"), work.path().join("work"));
    for d in [&root, &upper, &workdir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let overlay = mount_overlay(&root, &dir, &upper, &workdir);
    let before = mount.stats();
    let r = root.clone();
    let (read, mapped) = blocking(move || {
        drop_page_cache();
        read_and_map(&r.join("usr/lib/libx.so"))
    })
    .await;
    drop(overlay);
    assert!(read == lib && mapped == lib, "bytes through the overlay");
    let s = mount.stats();
    assert!(s.passthrough_opens > before.passthrough_opens, "{s}");
    assert_eq!(s.read_requests, before.read_requests, "{s}");
    mount.unmount().unwrap();
}

/// Backing files on a stacked filesystem (here the cache on an overlay, as in a container
/// whose /var is one) are refused by the kernel: said once, and files are served by the
/// daemon, correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_backing_file_leaves_the_daemon_serving() {
    common::logs("pronto_lazyfs=warn");
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let f = noise(6 * CHUNK as usize, 9);
    let g = noise(6 * CHUNK as usize, 10);
    let image = ImageBuilder::new().layer(Layer::gzip().file("f", &f).file("g", &g));
    let (_, artifact) = accelerate(&registry, image, "refused/app:v1", CHUNK, work.path()).await;
    let cache_dir = work.path().join("cache");
    let (lower, upper, workdir) = (
        work.path().join("c-lower"),
        work.path().join("c-upper"),
        work.path().join("c-work"),
    );
    for d in [&cache_dir, &lower, &upper, &workdir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let overlay = mount_overlay(&cache_dir, &lower, &upper, &workdir);
    let cache = Arc::new(ChunkCache::open(&cache_dir, 1 << 30).unwrap());
    let dir = work.path().join("mnt");
    let mount = mount_with(&artifact, &cache, &dir, &options(64 << 10));
    let d = dir.clone();
    blocking(move || {
        std::fs::read(d.join("f")).unwrap();
        std::fs::read(d.join("g")).unwrap();
    })
    .await;
    materialized(&mount, 2).await;
    released(&mount).await;
    let d = dir.clone();
    let (f2, g2) = blocking(move || {
        drop_page_cache();
        (
            std::fs::read(d.join("f")).unwrap(),
            std::fs::read(d.join("g")).unwrap(),
        )
    })
    .await;
    assert!(f2 == f && g2 == g);
    let s = mount.stats();
    assert_eq!((s.passthrough_opens, s.passthrough_refused), (0, 1), "{s}");
    mount.unmount().unwrap();
    drop(cache);
    drop(overlay);
    let log = logged();
    assert_eq!(
        log.matches("FUSE passthrough refused").count(),
        1,
        "said once:\n{log}"
    );
}

/// An overlay mount, unmounted on drop (also when a test fails).
struct Overlay(PathBuf);

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

fn mount_overlay(at: &Path, lower: &Path, upper: &Path, work: &Path) -> Overlay {
    let data = std::ffi::CString::new(format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    ))
    .unwrap();
    rustix::mount::mount(
        "overlay",
        at,
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(data.as_c_str()),
    )
    .unwrap_or_else(|e| panic!("overlay at {}: {e}", at.display()));
    Overlay(at.to_owned())
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_files(&e.path()));
        } else if e.file_name().as_bytes().len() == 64 {
            out.push(e.path());
        }
    }
    out
}
