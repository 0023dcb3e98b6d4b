//! The `pronto image` commands, run as a user would run them.

use std::process::Command;

use pronto_image::{ClientOptions, RegistryClient};
use pronto_testkit::image::{ImageBuilder, Layer};
use pronto_testkit::registry::TestRegistry;

fn pronto(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pronto"))
        .args(args)
        .env("HOME", "/nonexistent") // no credentials file
        .output()
        .expect("running pronto")
}

#[tokio::test]
async fn inspect_and_unpack() {
    let registry = TestRegistry::start();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let reference = registry.reference("cli/app:v1");
    let pushed = ImageBuilder::new()
        .layer(Layer::gzip().file("hello.txt", b"hello\n").dir("var/empty"))
        .layer(Layer::zstd().whiteout("var/empty"))
        .entrypoint(&["/bin/app", "--port", "9000"])
        .env("A=1")
        .push(&client, &reference)
        .await
        .unwrap();
    let r = reference.to_string();

    let out = pronto(&["image", "inspect", &r]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["digest"], pushed.digest.to_string());
    assert_eq!(
        v["pinned"],
        format!("{}/cli/app@{}", registry.host(), pushed.digest)
    );
    assert_eq!(v["layers"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["layers"][1]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(
        v["config"]["config"]["Entrypoint"],
        serde_json::json!(["/bin/app", "--port", "9000"])
    );

    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("root");
    let pinned = format!("{}/cli/app@{}", registry.host(), pushed.digest);
    let out = pronto(&["image", "unpack", &pinned, dir.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["layers"], 2);
    assert_eq!(summary["whiteouts"], 1);
    assert_eq!(summary["file_bytes"], 6);
    assert_eq!(std::fs::read(dir.join("hello.txt")).unwrap(), b"hello\n");
    assert!(!dir.join("var/empty").exists());
}

#[test]
fn errors_are_one_clear_line_and_a_failure_exit() {
    let registry = TestRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("root");
    let r = registry.reference("cli/missing:v1").to_string();
    let out = pronto(&["image", "unpack", &r, dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!("error: resolving {r}: manifest not found: {r}")
    );
    assert!(!dir.exists());

    let out = pronto(&["image", "inspect", "Not A Ref"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .starts_with("error: invalid image reference \"Not A Ref\": "));
}
