//! Shared helpers for the pronto-image integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use pronto_image::pull::{self, NoProgress, PullError, UnpackSummary};
use pronto_image::{ClientOptions, Reference, RegistryClient};

pub fn client() -> RegistryClient {
    RegistryClient::new(ClientOptions::default()).expect("client")
}

/// Resolve + unpack with Pronto.
pub async fn pronto_unpack(
    client: &RegistryClient,
    reference: &Reference,
    dir: &Path,
) -> Result<UnpackSummary, PullError> {
    let image = pull::resolve(client, reference).await?;
    pull::unpack_image(client, &image, dir, Arc::new(NoProgress)).await
}

/// Ground truth: `skopeo copy` into an OCI layout, then `umoci unpack`. Returns the bundle
/// directory (its `rootfs/` is the tree).
pub fn umoci_unpack(reference: &Reference) -> tempfile::TempDir {
    let work = tempfile::Builder::new()
        .prefix("pronto-umoci-")
        .tempdir()
        .unwrap();
    let layout = work.path().join("layout");
    let run = |cmd: &mut Command| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("skopeo").args([
        "copy",
        "--insecure-policy",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("oci:{}:img", layout.display()),
    ]));
    run(Command::new("umoci").args([
        "unpack",
        "--image",
        &format!("{}:img", layout.display()),
        &work.path().join("bundle").display().to_string(),
    ]));
    work
}

/// Asserts no file or directory under `dir` starts with `prefix` (staging/download leftovers).
pub fn assert_no_leftovers(dir: &Path, prefix: &str) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        dir.display()
    );
}
