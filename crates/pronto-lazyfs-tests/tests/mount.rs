//! The lazy filesystem against the real parts: images converted and pushed to a real registry,
//! mounted through the kernel's FUSE, walked with plain `std::fs` and compared with a plain
//! unpack of the same image (ground truth). Then laziness (what a walk and a small read fetch),
//! the node cache (restart, corruption), and faults (corrupt chunk, registry down and back).

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{accelerate, blocking, client, fast_retry, is_mounted, logged, mount_at};
use pronto_image::pull::{self, NoProgress};
use pronto_lazyfs::{ChunkCache, MountOptions, RetryPolicy};
use pronto_testkit::faulty::{Fault, FaultyProxy, Rule};
use pronto_testkit::fixtures::{ground_truth_images, noise};
use pronto_testkit::image::{ImageBuilder, Layer};
use pronto_testkit::registry::TestRegistry;
use pronto_testkit::tree::Tree;

const CHUNK: u32 = 64 << 10;

/// Log lines of this binary: the crate's warnings and fuser's errors.
fn logs() {
    common::logs("pronto_lazyfs=warn,fuser=error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mounted_image_equals_a_plain_unpack() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    for (name, image) in ground_truth_images(CHUNK) {
        let (resolved, artifact) = accelerate(
            &registry,
            image,
            &format!("gt/{name}:v1"),
            CHUNK,
            work.path(),
        )
        .await;
        let unpacked = work.path().join(format!("unpack-{name}"));
        pull::unpack_image(&client(), &resolved, &unpacked, Arc::new(NoProgress))
            .await
            .unwrap();
        let dir = work.path().join(format!("mnt-{name}"));
        let mount = mount_at(&artifact, &cache, &dir, fast_retry());
        let (expected, actual) = blocking({
            let (unpacked, dir) = (unpacked.clone(), dir.clone());
            move || {
                (
                    Tree::snapshot(&unpacked).unwrap(),
                    Tree::snapshot(&dir).unwrap(),
                )
            }
        })
        .await;
        let diff = expected.diff(&actual);
        assert!(
            diff.is_empty(),
            "{name}: mount differs from the unpack:\n{}",
            diff.join("\n")
        );
        assert!(!expected.0.is_empty());

        // What Tree does not compare: link counts, blocks, the root, statfs.
        let (unpacked2, dir2) = (unpacked.clone(), dir.clone());
        blocking(move || {
            for (path, node) in &expected.0 {
                let rel = std::ffi::OsStr::from_bytes(path);
                let a = std::fs::symlink_metadata(unpacked2.join(rel)).unwrap();
                let b = std::fs::symlink_metadata(dir2.join(rel)).unwrap();
                assert_eq!(a.nlink(), b.nlink(), "{name}: nlink of {}", node);
                if node.kind == "file" {
                    assert!(b.blocks() * 512 >= b.size(), "{name}: st_blocks of {node}");
                }
            }
            let root = std::fs::metadata(&dir2).unwrap();
            assert!(root.is_dir());
            let st = rustix::fs::statvfs(&dir2).unwrap();
            assert_eq!(st.f_namemax, 255);
            assert!(st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY));
        })
        .await;
        // Read-only: no writes, no new files.
        let d = dir.clone();
        blocking(move || {
            let e = std::fs::write(d.join("new"), b"x").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        })
        .await;
        mount.unmount().unwrap();
        assert!(!is_mounted(&dir), "{name}: still mounted after unmount");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_enforces_modes_and_owners_for_other_users() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let image = ImageBuilder::new().layer(
        Layer::gzip()
            .file("secret", b"root only")
            .mode(0o600)
            .file("public", b"everyone")
            .mode(0o644)
            .file("nobodys", b"mine")
            .mode(0o600)
            .owner(65534, 65534),
    );
    let (_, artifact) = accelerate(&registry, image, "perm/app:v1", CHUNK, work.path()).await;
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    let dir = work.path().join("mnt");
    let mount = mount_at(&artifact, &cache, &dir, fast_retry());
    // The tempdir is 0700: let nobody traverse down to the mount.
    let mut p = dir.clone();
    while p != Path::new("/tmp") && p.pop() {
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        if p == work.path() {
            break;
        }
    }
    let mnt = dir.clone();
    let cat_as_nobody = move |file: &str| {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("cat")
            .arg(mnt.join(file))
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let secret = blocking({
        let c = cat_as_nobody.clone();
        move || c("secret")
    })
    .await;
    assert!(!secret.status.success());
    assert!(String::from_utf8_lossy(&secret.stderr).contains("Permission denied"));
    let public = blocking({
        let c = cat_as_nobody.clone();
        move || c("public")
    })
    .await;
    assert_eq!(public.stdout, b"everyone");
    let own = blocking(move || cat_as_nobody("nobodys")).await;
    assert_eq!(own.stdout, b"mine");
    mount.unmount().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_fetches_nothing_and_a_small_read_fetches_one_chunk() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    const MIB: usize = 1 << 20;
    let big = noise(100 * MIB, 9);
    let mut layer = Layer::plain().file("data/big", &big);
    for i in 0..200 {
        layer = layer.file(format!("tree/d{}/f{i}", i % 10), noise(3000, i));
    }
    let image = ImageBuilder::new().layer(layer);
    let (_, artifact) = accelerate(&registry, image, "lazy/app:v1", 1 << 20, work.path()).await;
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    let dir = work.path().join("mnt");
    let mount = mount_at(&artifact, &cache, &dir, fast_retry());

    // `ls -R` with stat of every entry, and xattr listing: metadata only.
    let d = dir.clone();
    let entries = blocking(move || {
        let out = std::process::Command::new("ls")
            .args(["-laR", "--"])
            .arg(&d)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).lines().count()
    })
    .await;
    assert!(entries > 200, "ls -R listed {entries} lines");
    // isatty() on a file asks an ioctl: the answer of a disk filesystem, ENOTTY.
    let d = dir.clone();
    let tty = blocking(move || {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(d.join("data/big")).unwrap();
        let mut t = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: TCGETS writes at most one termios into `t`, which outlives the call.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TCGETS, t.as_mut_ptr()) };
        (r, std::io::Error::last_os_error().raw_os_error())
    })
    .await;
    assert_eq!(tty, (-1, Some(libc::ENOTTY)));
    // An image without extended attributes: none listed, and `getxattr` is "not supported"
    // (the kernel stops asking the daemon after its first `ENOSYS`), again and again.
    let d = dir.clone();
    let xattrs = blocking(move || {
        let path = std::ffi::CString::new(d.join("data/big").into_os_string().into_vec()).unwrap();
        let get = |name: &std::ffi::CStr| {
            let mut buf = [0u8; 64];
            // SAFETY: both strings are NUL-terminated; the buffer's length is passed.
            let r = unsafe {
                libc::getxattr(
                    path.as_ptr(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            (r, std::io::Error::last_os_error().raw_os_error())
        };
        // SAFETY: as above; a zero-length buffer asks for the list's size.
        let listed = unsafe { libc::listxattr(path.as_ptr(), std::ptr::null_mut(), 0) };
        (get(c"user.k"), get(c"security.capability"), listed)
    })
    .await;
    let unsupported = (-1, Some(libc::EOPNOTSUPP));
    assert_eq!(xattrs, (unsupported, unsupported, 0));
    let s = mount.stats();
    assert_eq!(
        (s.fetched_chunks, s.range_requests, s.fetched_bytes),
        (0, 0, 0),
        "{s}"
    );

    // One 4 KiB read in the middle of the 100 MiB file.
    let offset = 50 * MIB as u64 + 12_345;
    let d = dir.clone();
    let got = blocking(move || {
        let mut f = std::fs::File::open(d.join("data/big")).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut buf = vec![0u8; 4096];
        f.read_exact(&mut buf).unwrap();
        buf
    })
    .await;
    assert_eq!(got, big[offset as usize..offset as usize + 4096]);
    let s = mount.stats();
    assert_eq!(s.fetched_chunks, 1, "{s}");
    assert_eq!(s.range_requests, 1, "{s}");
    assert!(s.fetched_bytes <= MIB as u64 + 1024, "{s}");

    // A sequential read of the whole file: each chunk fetched once, bytes exact.
    let d = dir.clone();
    let all = blocking(move || std::fs::read(d.join("data/big")).unwrap()).await;
    assert!(all == big, "whole-file read differs");
    let s = mount.stats();
    assert_eq!(s.fetched_chunks, 100, "{s}");
    // In order: the next chunks come with the one missed, not one request each.
    assert!(s.range_requests <= 40, "{s}");
    mount.unmount().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_cache_serves_a_second_mount_and_refetches_a_corrupt_entry() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let content = noise(5 * CHUNK as usize, 11);
    let image = ImageBuilder::new().layer(Layer::gzip().file("f", &content));
    let (_, artifact) = accelerate(&registry, image, "cache/app:v1", CHUNK, work.path()).await;
    let cache_dir = work.path().join("cache");
    let dir = work.path().join("mnt");

    let cache = Arc::new(ChunkCache::open(&cache_dir, 1 << 30).unwrap());
    let mount = mount_at(&artifact, &cache, &dir, fast_retry());
    let d = dir.clone();
    assert!(blocking(move || std::fs::read(d.join("f")).unwrap()).await == content);
    assert_eq!(mount.stats().fetched_chunks, 5);
    mount.unmount().unwrap();
    drop(cache);

    // As after a daemon restart: a new cache object over the same directory, one entry
    // corrupted on disk.
    let victim = pronto_format::chunk_digest(&content[CHUNK as usize..2 * CHUNK as usize]);
    let hex = hex::encode(victim);
    let path = cache_dir.join(&hex[..2]).join(&hex);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let cache = Arc::new(ChunkCache::open(&cache_dir, 1 << 30).unwrap());
    let mount = mount_at(&artifact, &cache, &dir, fast_retry());
    let d = dir.clone();
    assert!(blocking(move || std::fs::read(d.join("f")).unwrap()).await == content);
    let s = mount.stats();
    assert_eq!(
        s.fetched_chunks, 1,
        "only the corrupt entry is refetched: {s}"
    );
    assert_eq!(s.cache_corrupt, 1, "{s}");
    assert!(s.cache_hits >= 4, "{s}");
    mount.unmount().unwrap();
}

/// Drops the kernel's cached pages of `path` (`POSIX_FADV_DONTNEED`): on a FUSE file, its next
/// read goes to the daemon again; on a cache entry, to the disk.
fn drop_page_cache(path: &Path) {
    let f = std::fs::File::open(path).unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
}

/// Flips the bits of `mask` in the byte at `at` of `path`, in place (same inode: the cache's
/// open descriptor sees it).
fn flip_byte(path: &Path, at: u64, mask: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ mask], at).unwrap();
}

/// Issue 17, item 8: an entry corrupted on disk *after* its first (verified) use, with the
/// mount and the cache still running, is found on the next read that reaches it, deleted and
/// refetched: the reader gets the right bytes, never the flipped ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_entry_corrupted_after_first_use_is_refetched_not_served() {
    logs();
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    // 256 KiB chunks: four segments each, checked one by one; and a small file, whose chunk is
    // one segment, checked whole.
    const BIG_CHUNK: u32 = 256 << 10;
    let big = noise(4 * BIG_CHUNK as usize, 21);
    let small = noise(10_000, 22);
    let image = ImageBuilder::new().layer(Layer::gzip().file("big", &big).file("small", &small));
    let (resolved, artifact) =
        accelerate(&registry, image, "cache/late:v1", BIG_CHUNK, work.path()).await;
    let unpacked = work.path().join("unpack");
    pull::unpack_image(&client(), &resolved, &unpacked, Arc::new(NoProgress))
        .await
        .unwrap();
    let cache_dir = work.path().join("cache");
    let cache = Arc::new(ChunkCache::open(&cache_dir, 1 << 30).unwrap());
    let dir = work.path().join("mnt");
    // Every read through the daemon (no backing file for the kernel to read instead).
    let options = MountOptions {
        retry: fast_retry(),
        passthrough: false,
        ..MountOptions::default()
    };
    let mount = common::mount_with(&artifact, &cache, &dir, &options);
    let read_both = {
        let dir = dir.clone();
        move || {
            (
                std::fs::read(dir.join("big")).unwrap(),
                std::fs::read(dir.join("small")).unwrap(),
            )
        }
    };
    let (b, s) = blocking(read_both.clone()).await;
    assert!(b == big && s == small, "first read differs");
    // The chunks land in the cache after the replies: wait for all five.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.len() < 5 {
        assert!(
            Instant::now() < deadline,
            "chunks not cached: {}",
            cache.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Read again from the cache (page cache dropped): every segment is now verified and in use.
    for name in ["big", "small"] {
        drop_page_cache(&dir.join(name));
    }
    let (b, s) = blocking(read_both.clone()).await;
    assert!(b == big && s == small, "second read differs");
    let before = mount.stats();
    assert_eq!(
        (before.fetched_chunks, before.cache_corrupt),
        (5, 0),
        "{before}"
    );

    // Bytes flipped on disk: in segment 2 of the big file's chunk 1, and in the small file's
    // chunk. Then the page caches dropped, of the entries and of the mounted files.
    let entry = |data: &[u8]| {
        let hex = hex::encode(pronto_format::chunk_digest(data));
        cache_dir.join(&hex[..2]).join(hex)
    };
    let c = BIG_CHUNK as usize;
    let big_entry = entry(&big[c..2 * c]);
    let small_entry = entry(&small);
    flip_byte(&big_entry, 2 * 65_536 + 1234, 0x10);
    flip_byte(&small_entry, 77, 0x01);
    for path in [
        &big_entry,
        &small_entry,
        &dir.join("big"),
        &dir.join("small"),
    ] {
        drop_page_cache(path);
    }
    let (b, s) = blocking(read_both.clone()).await;
    let truth = (
        std::fs::read(unpacked.join("big")).unwrap(),
        std::fs::read(unpacked.join("small")).unwrap(),
    );
    assert!(
        b == truth.0 && s == truth.1,
        "served with the flipped byte: big file {}, small file {}",
        b != truth.0,
        s != truth.1
    );
    let after = mount.stats();
    assert_eq!(
        (after.cache_corrupt, after.fetched_chunks),
        (2, 7),
        "the two corrupt entries are refetched, nothing else: {after}"
    );
    assert_eq!(cache.stats().chunks_corrupt, 2, "{}", cache.stats());
    let log = logged();
    for data in [&big[c..2 * c], &small[..]] {
        let hex = hex::encode(pronto_format::chunk_digest(data));
        assert_eq!(
            log.matches(&format!(
                "corrupt chunk cache entry deleted; refetching chunk={hex} why=\"bytes do not \
                 hash to the digest\""
            ))
            .count(),
            1,
            "{log}"
        );
    }
    // The entries are replaced by sound ones.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.len() < 5 {
        assert!(
            Instant::now() < deadline,
            "entries not replaced: {}",
            cache.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(std::fs::read(&big_entry).unwrap()[..c] == big[c..2 * c]);
    assert!(std::fs::read(&small_entry).unwrap() == small);
    mount.unmount().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_chunk_in_the_registry_is_eio_and_named_never_bad_bytes() {
    logs();
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let good = noise(2 * CHUNK as usize, 21);
    let bad = noise(3 * CHUNK as usize, 22);
    let image = ImageBuilder::new().layer(Layer::gzip().file("good", &good).file("bad", &bad));
    let (_, artifact) = accelerate(&registry, image, "corrupt/app:v1", CHUNK, work.path()).await;
    // Flip a byte inside the stored bytes of the second chunk of `bad`.
    let index = &artifact.index;
    let ino = index.resolve(b"bad").unwrap().unwrap();
    let chunk = index.chunk(ino, 1).unwrap();
    let (pack, _) = &artifact.packs[chunk.pack as usize];
    let blob = registry.blob_path(pack);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[(chunk.offset + u64::from(chunk.compressed_size) / 2) as usize] ^= 0x55;
    std::fs::write(&blob, bytes).unwrap();

    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    let dir = work.path().join("mnt");
    let mount = mount_at(&artifact, &cache, &dir, fast_retry());
    let d = dir.clone();
    let (good_read, bad_head, bad_chunk) = blocking(move || {
        let good = std::fs::read(d.join("good")).unwrap();
        let mut f = std::fs::File::open(d.join("bad")).unwrap();
        let mut head = vec![0u8; CHUNK as usize];
        f.read_exact(&mut head).unwrap();
        let mut rest = Vec::new();
        let err = f.read_to_end(&mut rest).unwrap_err();
        (good, head, err)
    })
    .await;
    assert!(good_read == good, "other files read fine");
    assert!(
        bad_head == bad[..CHUNK as usize],
        "chunks before the bad one read fine"
    );
    assert_eq!(bad_chunk.raw_os_error(), Some(libc::EIO), "{bad_chunk}");
    let log = logged();
    let name = hex::encode(chunk.digest);
    assert!(log.contains(&name), "the log names chunk {name}:\n{log}");
    assert!(
        !cache.contains(&chunk.digest),
        "a bad chunk is never cached"
    );
    let s = mount.stats();
    assert!(s.fetch_errors >= 1 && s.fetch_retries >= 1, "{s}");
    mount.unmount().unwrap();

    // A prefetch of the file (one request, each chunk handed out as its bytes arrive): the
    // sound chunks around the bad one land, the bad one is never handed out nor cached, and a
    // reader of it gets EIO.
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache2"), 1 << 30).unwrap());
    let dir = work.path().join("mnt2");
    let mut mount = mount_at(&artifact, &cache, &dir, fast_retry());
    let chunks = index.chunks(ino).unwrap();
    let trace = pronto_lazyfs::AccessTrace {
        chunks: chunks.iter().map(|c| c.digest).collect(),
    };
    assert_eq!(mount.prefetch(&trace), 3);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = mount.stats();
        if s.prefetched_chunks == 2 && s.fetch_errors >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the prefetch never ended: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cache.contains(&chunks[0].digest) && cache.contains(&chunks[2].digest));
    assert!(
        !cache.contains(&chunk.digest),
        "a bad chunk is never cached"
    );
    let d = dir.clone();
    let err = blocking(move || {
        let mut f = std::fs::File::open(d.join("bad")).unwrap();
        let mut rest = vec![0u8; CHUNK as usize];
        f.seek(SeekFrom::Start(u64::from(CHUNK))).unwrap();
        f.read_exact(&mut rest).unwrap_err()
    })
    .await;
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    mount.unmount().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_registry_is_eio_within_the_retry_bound_then_recovers() {
    let mut registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let a = noise(CHUNK as usize, 31);
    let b = noise(CHUNK as usize, 32);
    // A filler between them in the pack, larger than a miss is ever widened: reading `a` must
    // not bring `z` along.
    let image = ImageBuilder::new().layer(
        Layer::gzip()
            .file("a", &a)
            .file("m", noise(16 * CHUNK as usize, 33))
            .file("z", &b),
    );
    let (_, artifact) = accelerate(&registry, image, "down/app:v1", CHUNK, work.path()).await;
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    let dir = work.path().join("mnt");
    let mount = mount_at(&artifact, &cache, &dir, fast_retry());
    let d = dir.clone();
    assert!(blocking(move || std::fs::read(d.join("a")).unwrap()).await == a);

    registry.stop();
    let d = dir.clone();
    let (err, took) = blocking(move || {
        let t = Instant::now();
        let err = match std::fs::read(d.join("z")) {
            Ok(_) => panic!("z must not be readable with the registry down"),
            Err(e) => e,
        };
        (err, t.elapsed())
    })
    .await;
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // 3 attempts, 50 + 100 ms apart, each refused at once.
    assert!(took < Duration::from_secs(3), "EIO took {took:?}");
    // Cached data still reads while the registry is down.
    let d = dir.clone();
    assert!(blocking(move || std::fs::read(d.join("a")).unwrap()).await == a);

    registry.restart().unwrap();
    let d = dir.clone();
    let again = blocking(move || std::fs::read(d.join("z"))).await;
    assert!(
        again.unwrap() == b,
        "reads recover once the registry is back"
    );
    mount.unmount().unwrap();
}

/// An accelerated image of one 4-chunk file (`f`, `data`), its artifact read through a
/// [`FaultyProxy`] in front of its registry, a chunk cache and a mount point.
struct ProxiedImage {
    _registry: TestRegistry,
    work: tempfile::TempDir,
    data: Vec<u8>,
    proxy: FaultyProxy,
    artifact: pronto_artifact::Artifact,
    cache: Arc<ChunkCache>,
    dir: std::path::PathBuf,
}

async fn proxied_image(repo_tag: &str, seed: u64) -> ProxiedImage {
    logs();
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let data = noise(4 * CHUNK as usize, seed);
    let image = ImageBuilder::new().layer(Layer::gzip().file("f", &data));
    accelerate(&registry, image, repo_tag, CHUNK, work.path()).await;
    let proxy = FaultyProxy::start(registry.addr());
    let via: pronto_image::Reference = format!("{}/{repo_tag}", proxy.host()).parse().unwrap();
    let resolved = pull::resolve(&client(), &via).await.unwrap();
    let artifact = pronto_artifact::fetch_artifact(&client(), &resolved)
        .await
        .unwrap();
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    let dir = work.path().join("mnt");
    ProxiedImage {
        _registry: registry,
        work,
        data,
        proxy,
        artifact,
        cache,
        dir,
    }
}

/// A registry that accepts the request and never answers: a program's read is EIO within the
/// retry policy's bound (attempts × per-attempt timeout + backoffs), counted for the read as
/// the program sees it (the kernel asks again after a failed readahead), and reads work again
/// once the registry answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_registry_is_eio_within_the_documented_bound() {
    let ProxiedImage {
        _registry,
        work: _work,
        data,
        proxy,
        artifact,
        cache,
        dir,
    } = proxied_image("stall/app:v1", 51).await;
    let retry = RetryPolicy {
        attempts: 3,
        first_backoff: Duration::from_millis(50),
        attempt_timeout: Duration::from_secs(1),
    };
    // 3 attempts of 1 s, 50 + 100 ms apart.
    let bound = Duration::from_millis(3150);
    let mount = mount_at(&artifact, &cache, &dir, retry);
    proxy.add(
        Rule::path("/blobs/")
            .method("GET")
            .fault(Fault::StallBeforeHeaders),
    );
    let d = dir.clone();
    let (err, took) = blocking(move || {
        let t = Instant::now();
        let err = std::fs::read(d.join("f")).expect_err("f must not be readable");
        (err, t.elapsed())
    })
    .await;
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        took < bound + Duration::from_millis(850),
        "EIO took {took:?}, the documented bound is {bound:?}"
    );
    assert!(proxy.faults() >= 1, "{:?}", proxy.seen());
    let log = logged();
    assert!(
        log.contains("no answer within 1s"),
        "the log says why:\n{log}"
    );

    proxy.clear();
    // A chunk that just failed fails again at once for a moment (the kernel's second ask).
    tokio::time::sleep(pronto_lazyfs::fetch::FAILED_RECENTLY).await;
    let d = dir.clone();
    let again = blocking(move || std::fs::read(d.join("f"))).await;
    assert!(
        again.unwrap() == data,
        "reads recover once the registry answers"
    );
    mount.unmount().unwrap();
}

/// A registry whose chunk responses are reset or cut short (fewer body bytes than their
/// `Content-Length`): a program's read is EIO at once (retries included), never short or
/// wrong bytes; a single reset is retried and the read returns the exact file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_or_truncated_chunk_is_eio_never_short_or_wrong_bytes() {
    let ProxiedImage {
        _registry,
        work: _work,
        data,
        proxy,
        artifact,
        cache,
        dir,
    } = proxied_image("cut/app:v1", 52).await;
    let mount = mount_at(&artifact, &cache, &dir, fast_retry());
    for fault in [Fault::ResetAfter(1000), Fault::TruncateAfter(1000)] {
        proxy.clear();
        proxy.add(Rule::path("/blobs/").method("GET").fault(fault));
        let d = dir.clone();
        let (read, took) = blocking(move || {
            let t = Instant::now();
            (std::fs::read(d.join("f")), t.elapsed())
        })
        .await;
        let err = read.expect_err("f must not be readable");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{fault:?}: {err}");
        assert!(
            took < Duration::from_secs(5),
            "{fault:?}: EIO after {took:?}"
        );
        assert!(proxy.faults() >= 1, "{fault:?}: {:?}", proxy.seen());
        tokio::time::sleep(pronto_lazyfs::fetch::FAILED_RECENTLY).await;
    }
    // One reset, then the registry behaves: the retry reads the exact bytes.
    proxy.clear();
    let faults_before = proxy.faults();
    proxy.add(
        Rule::path("/blobs/")
            .method("GET")
            .nth(1)
            .fault(Fault::ResetAfter(1000)),
    );
    let d = dir.clone();
    let read = blocking(move || std::fs::read(d.join("f"))).await;
    assert!(
        read.unwrap() == data,
        "a retried read returns the file exactly"
    );
    assert_eq!(proxy.faults() - faults_before, 1);
    mount.unmount().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmount_with_a_reader_inside_does_not_hang() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let image = ImageBuilder::new().layer(Layer::gzip().file("f", noise(1000, 1)));
    let (_, artifact) = accelerate(&registry, image, "busy/app:v1", CHUNK, work.path()).await;
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    let dir: PathBuf = work.path().join("mnt");
    let mount = mount_at(&artifact, &cache, &dir, fast_retry());
    // An open file keeps the mount busy; unmount must still return, and the holder then
    // sees an error, not a hang.
    let d = dir.clone();
    let held = blocking(move || std::fs::File::open(d.join("f")).unwrap()).await;
    let t = Instant::now();
    blocking(move || mount.unmount()).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!is_mounted(&dir));
    let mut held = held;
    let mut buf = Vec::new();
    assert!(held.read_to_end(&mut buf).is_err());
}

/// A start records what it read, in order; a later mount with an empty cache prefetches that
/// trace in a few merged requests, and the same reads then fetch nothing themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_trace_is_prefetched_by_the_next_mount() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| {
            let len = 3 * CHUNK as usize + i * 100 + 1; // 4 chunks each
            (format!("app/lib{i:02}"), noise(len, 100 + i as u64))
        })
        .collect();
    let mut layer = Layer::zstd();
    for (name, data) in &files {
        layer = layer.file(name, data);
    }
    for i in 0..10 {
        layer = layer.file(format!("unread/f{i}"), noise(2 * CHUNK as usize, 500 + i));
    }
    let image = ImageBuilder::new().layer(layer);
    let (_, artifact) = accelerate(&registry, image, "trace/app:v1", CHUNK, work.path()).await;
    let read_all = |dir: PathBuf, files: Vec<(String, Vec<u8>)>| {
        blocking(move || {
            // Not in pack order: the trace keeps the order of first reads.
            for (name, data) in files.iter().rev() {
                assert!(std::fs::read(dir.join(name)).unwrap() == *data, "{name}");
            }
        })
    };

    let cache = Arc::new(ChunkCache::open(&work.path().join("cache1"), 1 << 30).unwrap());
    let dir = work.path().join("mnt1");
    let mount = mount_at(&artifact, &cache, &dir, fast_retry());
    read_all(dir.clone(), files.clone()).await;
    let trace = mount.take_access_trace().expect("a fresh mount records");
    assert_eq!(trace.len(), 30 * 4, "every chunk read, once");
    let last_file_first_chunk = pronto_format::chunk_digest(&files[29].1[..CHUNK as usize]);
    assert_eq!(trace.chunks[0], last_file_first_chunk, "first read first");
    assert_eq!(mount.take_access_trace(), None, "taken once");
    mount.unmount().unwrap();

    // Another node (empty cache): prefetch the trace, plus a digest this index lacks.
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache2"), 1 << 30).unwrap());
    let dir = work.path().join("mnt2");
    let mut mount = mount_at(&artifact, &cache, &dir, fast_retry());
    let mut with_stranger = trace.clone();
    with_stranger.chunks.push([0xee; 32]);
    assert_eq!(mount.prefetch(&with_stranger), trace.len());
    let deadline = Instant::now() + Duration::from_secs(30);
    while mount.stats().prefetched_chunks < trace.len() as u64 {
        assert!(Instant::now() < deadline, "prefetch: {}", mount.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = mount.stats();
    assert_eq!(s.fetched_chunks, 120, "only the trace's chunks: {s}");
    // 120 adjacent chunks in packs of 16: merged into runs, not one request per chunk.
    assert!(s.range_requests <= 20, "{s}");
    read_all(dir.clone(), files.clone()).await;
    let after = mount.stats();
    assert_eq!(
        (
            after.fetched_chunks,
            after.range_requests,
            after.cache_misses
        ),
        (s.fetched_chunks, s.range_requests, 0),
        "the reads found everything prefetched: {after}"
    );
    assert_eq!(
        mount.take_access_trace(),
        None,
        "a prefetching mount does not record"
    );
    mount.unmount().unwrap();
}

/// A request still being answered when the mount goes (here a read retrying a registry that is
/// down, for a reader that was killed) is answered before the connection ends: nothing is
/// replied into a dead connection (fuser logs "Failed to send FUSE reply" when that happens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmount_answers_the_requests_in_flight_first() {
    logs();
    let mut registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let image = ImageBuilder::new().layer(Layer::gzip().file("f", noise(5 * CHUNK as usize, 41)));
    let (_, artifact) = accelerate(&registry, image, "inflight/app:v1", CHUNK, work.path()).await;
    let cache = Arc::new(ChunkCache::open(&work.path().join("cache"), 1 << 30).unwrap());
    let dir = work.path().join("mnt");
    // Retries long enough to still be under way at the unmount.
    let options = MountOptions {
        retry: RetryPolicy {
            attempts: 20,
            first_backoff: Duration::from_millis(100),
            attempt_timeout: Duration::from_secs(2),
        },
        ..MountOptions::default()
    };
    let mount = common::mount_with(&artifact, &cache, &dir, &options);
    registry.stop();
    let mut reader = std::process::Command::new("cat")
        .arg(dir.join("f"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Its read is in the daemon, retrying.
    let deadline = Instant::now() + Duration::from_secs(10);
    while mount.stats().fetch_retries == 0 {
        assert!(Instant::now() < deadline, "no retry: {}", mount.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader.kill().unwrap();
    let t = Instant::now();
    blocking(move || mount.unmount()).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(!is_mounted(&dir));
    let status = blocking(move || reader.wait().unwrap()).await;
    assert!(!status.success());
    let log = logged();
    assert!(
        !log.contains("Failed to send FUSE reply"),
        "a reply went into a dead connection:\n{log}"
    );
    assert!(log.contains("the mount is closing"), "{log}");
}
