//! Hostile layers never touch anything outside the target directory.
//!
//! Each case plants a sentinel directory *outside* the unpack target and checks it is unchanged
//! afterwards; entries with `..` or absolute names are refused outright, symlinks are resolved
//! as if the root were `/`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use pronto_image::pull::PullError;
use pronto_image::unpack::UnpackError;
use pronto_testkit::image::{ImageBuilder, Layer};
use pronto_testkit::registry::TestRegistry;
use pronto_testkit::tree::Tree;

struct Case {
    work: tempfile::TempDir,
    outside: std::path::PathBuf,
}

impl Case {
    /// A work dir holding `outside/` (with one file) and, later, `rootfs/`.
    fn new() -> Case {
        let work = tempfile::tempdir().unwrap();
        let outside = work.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"untouched").unwrap();
        Case { work, outside }
    }

    fn root(&self) -> std::path::PathBuf {
        self.work.path().join("rootfs")
    }

    fn assert_outside_untouched(&self) {
        let tree = Tree::snapshot(&self.outside).unwrap();
        assert_eq!(
            tree.0.len(),
            1,
            "outside dir gained entries: {:?}",
            tree.0
                .keys()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect::<Vec<_>>()
        );
        assert_eq!(
            std::fs::read(self.outside.join("victim")).unwrap(),
            b"untouched"
        );
        assert_eq!(
            std::fs::metadata(self.outside.join("victim"))
                .unwrap()
                .nlink(),
            1
        );
    }

    async fn pull(
        &self,
        registry: &TestRegistry,
        layers: Vec<Layer>,
        tag: &str,
    ) -> Result<(), PullError> {
        let client = common::client();
        let reference = registry.reference(&format!("evil:{tag}"));
        let mut image = ImageBuilder::new();
        for l in layers {
            image = image.layer(l);
        }
        image.push(&client, &reference).await.unwrap();
        common::pronto_unpack(&client, &reference, &self.root())
            .await
            .map(|_| ())
    }
}

fn assert_traversal(err: PullError, path: &str, reason: &str) {
    match err {
        PullError::Unpack {
            source: UnpackError::Traversal { path: p, reason: r },
            ..
        } => {
            assert_eq!((p.as_str(), r), (path, reason));
        }
        other => panic!("expected a traversal error for {path}, got {other}"),
    }
}

fn outside_rel(depth: usize) -> String {
    // From ROOT/<depth dirs>, this many ".." reach the work dir, then "outside".
    format!("{}outside", "../".repeat(depth + 1))
}

#[tokio::test]
async fn dotdot_and_absolute_entries_are_refused() {
    let registry = TestRegistry::start();
    let case = Case::new();
    let evil = format!("{}/victim", outside_rel(0));
    let err = case
        .pull(
            &registry,
            vec![Layer::gzip().file("ok", b"ok").file(&evil, b"pwned")],
            "dotdot",
        )
        .await
        .unwrap_err();
    assert_traversal(err, &evil, "path contains '..'");
    assert!(!case.root().exists(), "no partial rootfs");
    case.assert_outside_untouched();

    let abs = format!("{}/victim", case.outside.display());
    let err = case
        .pull(&registry, vec![Layer::gzip().file(&abs, b"pwned")], "abs")
        .await
        .unwrap_err();
    assert_traversal(err, &abs, "absolute path");
    case.assert_outside_untouched();

    // A hardlink whose target climbs out.
    let err = case
        .pull(
            &registry,
            vec![Layer::gzip().hardlink("h", format!("{}/victim", outside_rel(0)))],
            "hardlink",
        )
        .await
        .unwrap_err();
    assert_traversal(
        err,
        &format!("{}/victim", outside_rel(0)),
        "path contains '..'",
    );
    case.assert_outside_untouched();
    common::assert_no_leftovers(case.work.path(), ".rootfs.");
}

#[tokio::test]
async fn writes_through_planted_symlinks_stay_inside() {
    let registry = TestRegistry::start();
    let case = Case::new();
    let outside_abs = case.outside.display().to_string();
    let layers = vec![
        // Layer 1 plants links to the outside dir, absolute and relative.
        Layer::gzip()
            .symlink("abs", &outside_abs)
            .dir("d")
            .symlink("d/rel", outside_rel(1))
            .symlink("etc", "/etc"),
        // Layer 2 writes, links and whites out through them.
        Layer::gzip()
            .file("abs/victim", b"pwned-abs")
            .file("d/rel/victim", b"pwned-rel")
            .file("d/rel/new", b"new")
            .whiteout("abs/other")
            .hardlink("abs/h", "d/rel/victim"),
    ];
    case.pull(&registry, layers, "symlinks").await.unwrap();
    case.assert_outside_untouched();
    // Inside, they landed where a container would see them: `abs` means ROOT/<outside_abs>.
    let root = case.root();
    let inside_abs = root.join(outside_abs.trim_start_matches('/'));
    assert_eq!(
        std::fs::read(inside_abs.join("victim")).unwrap(),
        b"pwned-abs"
    );
    assert_eq!(std::fs::metadata(inside_abs.join("h")).unwrap().nlink(), 2);
    // The relative link climbs above the root: clamped at the root, so ROOT/outside.
    assert_eq!(
        std::fs::read(root.join("outside/victim")).unwrap(),
        b"pwned-rel"
    );
    assert!(root.join("outside/new").exists());
    // Host /etc was not written to.
    assert!(!Path::new("/etc/victim").exists());
}

#[tokio::test]
async fn an_entry_replaces_a_symlink_instead_of_writing_through_it() {
    let registry = TestRegistry::start();
    let case = Case::new();
    let target = format!("{}/victim", case.outside.display());
    let layers = vec![
        Layer::gzip().symlink("victim-link", &target),
        Layer::gzip()
            .file("victim-link", b"replaced the link")
            .mode(0o600),
    ];
    case.pull(&registry, layers, "replace").await.unwrap();
    case.assert_outside_untouched();
    let meta = std::fs::symlink_metadata(case.root().join("victim-link")).unwrap();
    assert!(meta.is_file());
    assert_eq!(
        std::fs::read(case.root().join("victim-link")).unwrap(),
        b"replaced the link"
    );
}

#[tokio::test]
async fn symlink_loops_fail_cleanly() {
    let registry = TestRegistry::start();
    let case = Case::new();
    // `etc -> /etc` resolves to itself inside the root: writing below it is an error, not an escape.
    let err = case
        .pull(
            &registry,
            vec![Layer::gzip()
                .symlink("etc", "/etc")
                .file("etc/passwd", b"root::0:0::/:/bin/sh")],
            "loop",
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("etc/passwd"), "{err}");
    assert!(!case.root().exists());
    case.assert_outside_untouched();
}
