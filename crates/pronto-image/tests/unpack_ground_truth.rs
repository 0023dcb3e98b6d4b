//! Ground truth: `pronto image unpack` must produce exactly the tree `skopeo copy` + `umoci
//! unpack` produce for the same image: every path, type, mode, owner, size, content hash,
//! symlink target, device number, xattr and hardlink group.

mod common;

use pronto_image::manifest::Platform;
use pronto_testkit::fixtures::noise;
use pronto_testkit::image::{push_index, ImageBuilder, Layer};
use pronto_testkit::registry::TestRegistry;
use pronto_testkit::tree::Tree;

/// Pushes `image`, unpacks it with Pronto into `WORK/rootfs` and with umoci, asserts the trees
/// are equal; returns Pronto's tree and the work dir.
async fn assert_matches_umoci(
    registry: &TestRegistry,
    image: ImageBuilder,
    name: &str,
) -> (Tree, tempfile::TempDir) {
    let client = common::client();
    let reference = registry.reference(&format!("{name}:v1"));
    image.push(&client, &reference).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let ours = work.path().join("rootfs");
    common::pronto_unpack(&client, &reference, &ours)
        .await
        .unwrap();
    let truth = common::umoci_unpack(&reference);
    let ours_tree = Tree::snapshot(&ours).unwrap();
    let truth_tree = Tree::snapshot(&truth.path().join("bundle/rootfs")).unwrap();
    let diff = ours_tree.diff(&truth_tree);
    assert!(
        diff.is_empty(),
        "{name}: pronto (left) vs umoci (right):\n{}",
        diff.join("\n")
    );
    assert!(!ours_tree.0.is_empty());
    common::assert_no_leftovers(work.path(), ".rootfs.");
    (ours_tree, work)
}

#[tokio::test]
async fn basic_files_modes_owners_xattrs() {
    let registry = TestRegistry::start();
    let base = Layer::gzip()
        .dir("bin")
        .file("bin/server", b"#!/bin/sh\necho hi\n")
        .mode(0o755)
        .file("bin/su", b"setuid")
        .mode(0o4755)
        .file("bin/wall", b"setgid")
        .mode(0o2755)
        .owner(0, 5)
        .dir("tmp")
        .mode(0o1777)
        .dir("home/app")
        .owner(1000, 1000)
        .mode(0o700)
        .file("home/app/.profile", b"export A=1\n")
        .owner(1000, 1000)
        .mode(0o600)
        .file("empty", b"")
        .file("big.bin", noise(5 << 20, 1))
        .file("exact-1MiB", noise(1 << 20, 2))
        .symlink("bin/sh", "server")
        .symlink("abs-link", "/bin/server")
        .symlink("dangling", "../nowhere/at/all")
        .file("caps", b"ping")
        .xattr(
            "security.capability",
            [
                1u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        )
        .file("tagged", b"x")
        .xattr("user.pronto.note", b"hello")
        .xattr("trusted.overlay.test", b"y")
        .dir("etc")
        .mtime(1_600_000_000)
        .file("etc/hostname", b"pronto\n")
        .mtime(1_500_000_000);
    let image = ImageBuilder::new()
        .layer(base)
        .entrypoint(&["/bin/server"])
        .env("PATH=/bin")
        .working_dir("/home/app")
        .user("1000:1000")
        .expose("9000/tcp");
    let (tree, work) = assert_matches_umoci(&registry, image, "basic").await;
    // A few facts independent of umoci, so a shared bug cannot hide.
    assert_eq!(tree.get("bin/su").unwrap().mode, 0o4755);
    assert_eq!(tree.get("tmp").unwrap().mode, 0o1777);
    assert_eq!(tree.get("home/app").unwrap().uid, 1000);
    assert_eq!(tree.get("big.bin").unwrap().size, 5 << 20);
    assert_eq!(tree.get("etc/hostname").unwrap().mtime, 1_500_000_000);
    // A directory keeps its entry's mtime although a child was written into it afterwards.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(work.path().join("rootfs/etc"))
            .unwrap()
            .mtime(),
        1_600_000_000
    );
    assert_eq!(
        tree.get("abs-link").unwrap().link.as_deref(),
        Some(&b"/bin/server"[..])
    );
    assert_eq!(
        tree.get("tagged")
            .unwrap()
            .xattrs
            .get(&b"user.pronto.note"[..])
            .unwrap(),
        b"hello"
    );
}

#[tokio::test]
async fn whiteouts_opaque_dirs_and_type_changes() {
    let registry = TestRegistry::start();
    let l1 = Layer::gzip()
        .dir("a")
        .file("a/keep", b"keep")
        .file("a/gone", b"gone")
        .dir("a/sub")
        .file("a/sub/deep", b"deep")
        .dir("opq")
        .file("opq/old1", b"1")
        .dir("opq/olddir")
        .file("opq/olddir/x", b"x")
        .file("file-then-dir", b"was a file")
        .dir("dir-then-file")
        .file("dir-then-file/child", b"c")
        .symlink("link-then-file", "a/keep")
        .file("replaced", b"old content");
    let l2 = Layer::gzip()
        .whiteout("a/gone")
        .whiteout("a/sub")
        .file("opq/new-before-marker", b"n1")
        .opaque("opq")
        .file("opq/new-after-marker", b"n2")
        .dir("file-then-dir")
        .file("file-then-dir/inside", b"now a dir")
        .file("dir-then-file", b"now a file")
        .file("link-then-file", b"no longer a link")
        .file("replaced", b"new content, longer than before")
        .whiteout("never-existed");
    let l3 = Layer::plain().whiteout("a").dir("a").file("a/reborn", b"r");
    let image = ImageBuilder::new().layer(l1).layer(l2).layer(l3);
    let (tree, _work) = assert_matches_umoci(&registry, image, "whiteouts").await;
    assert!(tree.get("a/keep").is_none(), "a was whited out in layer 3");
    assert!(tree.get("a/reborn").is_some());
    assert!(tree.get("opq/old1").is_none() && tree.get("opq/olddir").is_none());
    assert!(
        tree.get("opq/new-before-marker").is_some() && tree.get("opq/new-after-marker").is_some()
    );
    assert_eq!(tree.get("dir-then-file").unwrap().kind, "file");
    assert_eq!(tree.get("file-then-dir").unwrap().kind, "dir");
    assert_eq!(tree.get("link-then-file").unwrap().kind, "file");
    assert!(
        tree.0.keys().all(|k| !k.windows(4).any(|w| w == b".wh.")),
        "no whiteout files in the tree"
    );
}

#[tokio::test]
async fn hardlinks_within_and_across_layers() {
    let registry = TestRegistry::start();
    let l1 = Layer::gzip()
        .dir("usr/bin")
        .file("usr/bin/python3.11", noise(100_000, 3))
        .mode(0o755)
        .hardlink("usr/bin/python3", "usr/bin/python3.11")
        .file("orig", b"shared");
    let l2 = Layer::gzip()
        .hardlink("usr/bin/python", "usr/bin/python3.11")
        .hardlink("second-name", "orig")
        .whiteout("orig");
    let image = ImageBuilder::new().layer(l1).layer(l2);
    let (tree, _work) = assert_matches_umoci(&registry, image, "hardlinks").await;
    assert_eq!(
        tree.get("usr/bin/python").unwrap().hardlinks,
        vec![b"usr/bin/python3".to_vec(), b"usr/bin/python3.11".to_vec()]
    );
    assert!(tree.get("orig").is_none());
    assert_eq!(
        tree.get("second-name").unwrap().size,
        6,
        "link survives its first name's whiteout"
    );
}

#[tokio::test]
async fn long_and_non_utf8_names() {
    let registry = TestRegistry::start();
    let long_dir = "d".repeat(120);
    let long_file = format!("{long_dir}/{}", "f".repeat(200));
    let deep = (0..40)
        .map(|i| format!("level{i}"))
        .collect::<Vec<_>>()
        .join("/");
    let l1 = Layer::gzip()
        .dir(&long_dir)
        .file(&long_file, b"long")
        .symlink("long-link", format!("{long_dir}/{}", "t".repeat(150)))
        .file(b"caf\xe9-latin1".as_slice(), b"not utf-8")
        .file("spaces and\ttabs", b"ws")
        .file("日本語/ファイル", b"utf8")
        .file(format!("{deep}/leaf"), b"deep")
        .file("with\nnewline", b"nl");
    let l2 = Layer::gzip().hardlink("long-hardlink", &long_file);
    let image = ImageBuilder::new().layer(l1).layer(l2);
    let (tree, _work) = assert_matches_umoci(&registry, image, "names").await;
    assert!(tree.0.contains_key(&b"caf\xe9-latin1"[..]));
    assert_eq!(
        tree.get(&long_file).unwrap().hardlinks,
        vec![b"long-hardlink".to_vec()]
    );
}

#[tokio::test]
async fn docker_media_types_mixed_compression_devices() {
    let registry = TestRegistry::start();
    let l1 = Layer::gzip()
        .dir("dev")
        .char_device("dev/null", 1, 3)
        .char_device("dev/tty", 5, 0)
        .block_device("dev/loop9", 7, 9)
        .fifo("dev/initctl")
        .mode(0o600);
    let l2 = Layer::plain().file("etc/os-release", b"ID=pronto\n");
    let image = ImageBuilder::new().layer(l1).layer(l2).docker_media_types();
    let (tree, _work) = assert_matches_umoci(&registry, image, "devices").await;
    assert_eq!(tree.get("dev/null").unwrap().kind, "char");
    assert_eq!(tree.get("dev/initctl").unwrap().kind, "fifo");

    // zstd layers: umoci 0.4.7 predates them, so check against the same image in gzip.
    let client = common::client();
    let files = |l: Layer| {
        l.file("a", noise(300_000, 9))
            .symlink("b", "a")
            .file("c/d", b"d")
    };
    let gz = registry.reference("zstd-check:gzip");
    let zs = registry.reference("zstd-check:zstd");
    ImageBuilder::new()
        .layer(files(Layer::gzip()))
        .push(&client, &gz)
        .await
        .unwrap();
    ImageBuilder::new()
        .layer(files(Layer::zstd()))
        .push(&client, &zs)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    common::pronto_unpack(&client, &gz, &work.path().join("gz"))
        .await
        .unwrap();
    common::pronto_unpack(&client, &zs, &work.path().join("zs"))
        .await
        .unwrap();
    let (a, b) = (
        Tree::snapshot(&work.path().join("gz")).unwrap(),
        Tree::snapshot(&work.path().join("zs")).unwrap(),
    );
    assert_eq!(a.diff(&b), Vec::<String>::new());
}

#[tokio::test]
async fn multi_arch_index_picks_the_host_platform() {
    let registry = TestRegistry::start();
    let client = common::client();
    let host = Platform::host();
    let other = Platform {
        architecture: if host.architecture == "s390x" {
            "ppc64le"
        } else {
            "s390x"
        }
        .into(),
        os: "linux".into(),
        variant: None,
    };
    let mine = ImageBuilder::new()
        .layer(Layer::gzip().file("arch", host.architecture.as_bytes()))
        .push(&client, &registry.reference("multi:host"))
        .await
        .unwrap();
    let theirs = ImageBuilder::new()
        .architecture(&other.architecture)
        .layer(Layer::gzip().file("arch", other.architecture.as_bytes()))
        .push(&client, &registry.reference("multi:other"))
        .await
        .unwrap();
    let index_ref = registry.reference("multi:v1");
    let index_digest = push_index(
        &client,
        &index_ref,
        &[(&theirs, other), (&mine, host.clone())],
    )
    .await
    .unwrap();

    let image = pronto_image::pull::resolve(&client, &index_ref)
        .await
        .unwrap();
    assert_eq!(image.index_digest, Some(index_digest));
    assert_eq!(
        image.manifest_digest, mine.digest,
        "the host platform's manifest is pinned"
    );
    let work = tempfile::tempdir().unwrap();
    common::pronto_unpack(&client, &index_ref, &work.path().join("root"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(work.path().join("root/arch")).unwrap(),
        host.architecture.as_bytes()
    );
    let truth = common::umoci_unpack(&index_ref);
    let diff = Tree::snapshot(&work.path().join("root"))
        .unwrap()
        .diff(&Tree::snapshot(&truth.path().join("bundle/rootfs")).unwrap());
    assert!(diff.is_empty(), "{diff:?}");
}

/// (layer, entry path) → (size by the header, content), the last entry winning.
type Received = std::collections::HashMap<(usize, Vec<u8>), (u64, Vec<u8>)>;

/// Records what a `ContentSink` is given.
#[derive(Clone, Default)]
struct Recorder(std::sync::Arc<std::sync::Mutex<Received>>);

impl pronto_image::unpack::ContentSink for Recorder {
    fn file(
        &mut self,
        origin: &pronto_image::unpack::FileOrigin,
        size: u64,
        content: &mut dyn std::io::Read,
    ) -> std::io::Result<u64> {
        let mut bytes = Vec::new();
        content.read_to_end(&mut bytes)?;
        let n = bytes.len() as u64;
        self.0
            .lock()
            .unwrap()
            .insert((origin.layer, origin.path.clone()), (size, bytes));
        Ok(n)
    }
}

#[tokio::test]
async fn a_content_sink_gets_the_bytes_and_the_tree_everything_else() {
    use std::os::unix::fs::MetadataExt;
    let registry = TestRegistry::start();
    let client = common::client();
    let reference = registry.reference("sink:v1");
    ImageBuilder::new()
        .layer(
            Layer::gzip()
                .file("bin/tool", noise(300_000, 5))
                .mode(0o4755)
                .owner(7, 8)
                .mtime(1_600_000_000)
                .xattr("user.k", b"v")
                .hardlink("bin/alias", "bin/tool")
                .file("replaced", b"old")
                .file("empty", b"")
                .symlink("link", "bin/tool"),
        )
        .layer(
            Layer::zstd()
                .file("replaced", b"new, and longer")
                .file("twice", b"first entry")
                .file("twice", b"second entry wins"),
        )
        .push(&client, &reference)
        .await
        .unwrap();
    let image = pronto_image::pull::resolve(&client, &reference)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let (plain, sparse) = (work.path().join("plain"), work.path().join("sparse"));
    pronto_image::pull::unpack_image(
        &client,
        &image,
        &plain,
        std::sync::Arc::new(pronto_image::pull::NoProgress),
    )
    .await
    .unwrap();
    let recorder = Recorder::default();
    let summary = pronto_image::pull::unpack_image_to_sink(
        &client,
        &image,
        &sparse,
        std::sync::Arc::new(pronto_image::pull::NoProgress),
        Box::new(recorder.clone()),
        &pronto_image::pull::UnpackOptions::default(),
    )
    .await
    .unwrap();

    // The same tree but for file contents, which the sparse files do not hold.
    let without_content = |root: &std::path::Path| {
        let mut t = Tree::snapshot(root).unwrap();
        t.0.values_mut().for_each(|n| n.sha256 = None);
        t
    };
    assert_eq!(
        without_content(&sparse).diff(&without_content(&plain)),
        Vec::<String>::new()
    );
    // Each file's bytes went to the sink, under the entry its origin names.
    let got = recorder.0.lock().unwrap();
    let mut inodes = std::collections::HashSet::new();
    for (path, node) in without_content(&sparse).0 {
        if node.kind != "file" {
            continue;
        }
        let on_disk = std::fs::read(plain.join(String::from_utf8(path.clone()).unwrap())).unwrap();
        let meta =
            std::fs::metadata(sparse.join(String::from_utf8(path.clone()).unwrap())).unwrap();
        assert_eq!(meta.blocks(), 0, "{path:?} holds no data");
        let origin = &summary.file_origins[&meta.ino()];
        let (size, bytes) = &got[&(origin.layer, origin.path.clone())];
        assert_eq!((*size, bytes), (on_disk.len() as u64, &on_disk), "{path:?}");
        inodes.insert(meta.ino());
    }
    assert_eq!(
        inodes.len(),
        4,
        "tool (and its alias), empty, replaced, twice"
    );
    assert_eq!(got[&(1, b"twice".to_vec())].1, b"second entry wins");
}

/// The same layer listed twice (same digest; a build with an identical `RUN` step makes this):
/// downloaded once, applied at both places, as umoci does.
#[tokio::test]
async fn the_same_layer_listed_twice() {
    let registry = TestRegistry::start();
    let repeated = Layer::gzip()
        .file("etc/stamp", b"repeated layer")
        .file("big", noise(300_000, 9));
    let image = ImageBuilder::new()
        .layer(repeated.clone())
        .layer(
            Layer::gzip()
                .file("etc/stamp", b"middle layer")
                .whiteout("big"),
        )
        .layer(repeated);
    let client = common::client();
    let pushed = image
        .clone()
        .push(&client, &registry.reference("twice-probe:v1"))
        .await
        .unwrap();
    assert_eq!(
        pushed.manifest.layers[0].digest,
        pushed.manifest.layers[2].digest
    );
    let (tree, _work) = assert_matches_umoci(&registry, image, "twice").await;
    // The top copy is applied over the middle layer: its file is back, its stamp on top.
    assert_eq!(tree.0[&b"big"[..]].size, 300_000);
    assert_eq!(
        tree.0[&b"etc/stamp"[..]].size,
        b"repeated layer".len() as u64
    );
}
