//! Versions, aliases, provision configs and `pronto release`, run as a user runs them against
//! a real `pronto serve` and a real registry.

mod common;

use std::time::{Duration, Instant};

use common::{ok, Daemon};
use pronto_image::{ClientOptions, Digest, RegistryClient};
use pronto_testkit::image::{httpd_image, ImageBuilder, Layer};
use pronto_testkit::registry::TestRegistry;
use serde_json::{json, Value};

/// Pushes a busybox httpd serving `body` at /index.html; returns its manifest digest.
async fn push_web(
    client: &RegistryClient,
    registry: &TestRegistry,
    tag: &str,
    body: &str,
) -> Digest {
    httpd_image(Layer::gzip().file("www/index.html", body))
        .push(client, &registry.reference(tag))
        .await
        .unwrap()
        .digest
}

fn json_of(out: std::process::Output) -> Value {
    let (stdout, _) = ok(out);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// The command failed; its stderr.
fn refused(out: std::process::Output) -> String {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    stderr.into_owned()
}

fn wait_ready(daemon: &Daemon, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let f = json_of(daemon.cli(&["function", "get", name]));
        if f["accelerationInfo"]["status"] == "Ready" {
            return;
        }
        assert_eq!(f["accelerationInfo"]["status"], "Preparing", "{f}");
        assert!(Instant::now() < deadline, "never Ready: {f}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn versions_aliases_provision_and_a_release_through_the_cli() {
    let registry = TestRegistry::start();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    push_web(&client, &registry, "cli/rel:v1", "v1\n").await;
    let v2 = push_web(&client, &registry, "cli/rel:v2", "v2\n").await;
    let (image1, image2) = (
        registry.reference("cli/rel:v1").to_string(),
        registry.reference("cli/rel:v2").to_string(),
    );
    let work = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&work.path().join("data"));

    let created = json_of(daemon.cli(&[
        "function",
        "create",
        "web",
        "--image",
        &image1,
        "--max-instances",
        "3",
        "--idle-timeout",
        "60",
    ]));
    assert_eq!(created["maxInstances"], 3, "{created}");
    assert_eq!(created["idleTimeout"], 60, "{created}");
    let updated = json_of(daemon.cli(&["function", "update", "web", "--max-instances", "4"]));
    assert_eq!(updated["maxInstances"], 4, "{updated}");
    assert_eq!(updated["idleTimeout"], 60, "only what is given changes");
    wait_ready(&daemon, "web");

    // Versions 1 and 2 (the same configuration), newest first.
    let v = json_of(daemon.cli(&["version", "publish", "web", "--description", "first"]));
    assert_eq!(
        (&v["versionId"], &v["description"]),
        (&json!("1"), &json!("first"))
    );
    assert_eq!(
        json_of(daemon.cli(&["version", "publish", "web"]))["versionId"],
        "2"
    );
    let list = json_of(daemon.cli(&["version", "list", "web"]));
    let ids: Vec<&Value> = list["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["versionId"])
        .collect();
    assert_eq!(ids, [&json!("2"), &json!("1")], "{list}");

    // An alias, invoked by qualifier: the status line names the version that served.
    let a = json_of(daemon.cli(&[
        "alias",
        "create",
        "web",
        "prod",
        "--version",
        "1",
        "--description",
        "production",
    ]));
    assert_eq!(
        (&a["versionId"], &a["description"]),
        (&json!("1"), &json!("production"))
    );
    let (body, status) = ok(daemon.cli(&[
        "invoke",
        "web",
        "--qualifier",
        "prod",
        "--path",
        "/index.html",
    ]));
    assert_eq!(body, "v1\n");
    assert!(status.contains("version 1, cold start"), "{status}");
    let a = json_of(daemon.cli(&[
        "alias",
        "update",
        "web",
        "prod",
        "--additional-version",
        "2",
        "--weight",
        "0.5",
    ]));
    assert_eq!(a["additionalVersionWeight"], json!({"2": 0.5}), "{a}");
    assert_eq!(a["versionId"], "1");
    assert_eq!(json_of(daemon.cli(&["alias", "get", "web", "prod"])), a);
    let list = json_of(daemon.cli(&["alias", "list", "web"]));
    assert_eq!(list["aliases"], json!([a]));

    // Provision configs: one instance of prod kept warm; target 0 removes the config.
    let p = json_of(daemon.cli(&[
        "provision",
        "put",
        "web",
        "--target",
        "1",
        "--qualifier",
        "prod",
    ]));
    assert_eq!(
        (&p["qualifier"], &p["target"]),
        (&json!("prod"), &json!(1)),
        "{p}"
    );
    let got = json_of(daemon.cli(&["provision", "get", "web", "--qualifier", "prod"]));
    assert_eq!(got["target"], 1, "{got}");
    let list = json_of(daemon.cli(&["provision", "list", "--function", "web"]));
    assert_eq!(list["provisionConfigs"][0]["qualifier"], "prod", "{list}");
    let p = json_of(daemon.cli(&[
        "provision",
        "put",
        "web",
        "--target",
        "0",
        "--qualifier",
        "prod",
    ]));
    assert_eq!(p["target"], 0, "{p}");
    let list = json_of(daemon.cli(&["provision", "list"]));
    assert_eq!(list["provisionConfigs"], json!([]), "{list}");
    let err = refused(daemon.cli(&["provision", "delete", "web", "--qualifier", "prod"]));
    assert!(
        err.contains("no provision config for qualifier prod"),
        "{err}"
    );

    // A version an alias names cannot go.
    let err = refused(daemon.cli(&["version", "delete", "web", "1"]));
    assert!(
        err.contains("409 Conflict") && err.contains("alias prod"),
        "{err}"
    );

    // The release: new image, its acceleration, version 3, prod entirely on it.
    let out = daemon.cli(&[
        "release",
        "web",
        "--alias",
        "prod",
        "--image",
        &image2,
        "--timeout",
        "120s",
    ]);
    let progress = String::from_utf8_lossy(&out.stderr).into_owned();
    let a = json_of(out);
    assert_eq!(a["versionId"], "3", "{a}");
    assert_eq!(a["additionalVersionWeight"], json!({}), "the split ended");
    for step in [
        format!("updating web to {image2}: updated"),
        "waiting for acceleration".into(),
        ": Ready\n".into(),
        "publishing web: version 3".into(),
        "switching alias prod: version 3".into(),
    ] {
        assert!(progress.contains(&step), "no {step:?} in:\n{progress}");
    }
    let f = json_of(daemon.cli(&["function", "get", "web"]));
    let pinned = format!("{}/cli/rel@{v2}", registry.host());
    assert_eq!(
        f["customContainerConfig"]["resolvedImageUri"], pinned,
        "{f}"
    );
    assert_eq!(f["lastUpdateStatus"], "Successful");
    let v3 = &json_of(daemon.cli(&["version", "list", "web"]))["versions"][0];
    assert_eq!(v3["resolvedImageUri"], pinned, "{v3}");
    assert_eq!(v3["description"], format!("release of {image2}"));
    assert_eq!(
        v3["accelerationInfo"]["status"], "Ready",
        "published once Ready"
    );
    let (body, status) = ok(daemon.cli(&[
        "invoke",
        "web",
        "--qualifier",
        "prod",
        "--path",
        "/index.html",
    ]));
    assert_eq!(body, "v2\n");
    assert!(status.contains("version 3"), "{status}");

    // A canary of what LATEST has: version 4 gets 20%, prod stays on 3.
    // The invocation above was version 3's first (accelerated) cold start: it recorded the
    // image's access trace, which --wait-trace waits for.
    let out = daemon.cli(&[
        "release",
        "web",
        "--alias",
        "prod",
        "--weight",
        "0.2",
        "--wait-trace",
        "--timeout",
        "60s",
    ]);
    let progress = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        progress.contains("waiting for an access trace"),
        "{progress}"
    );
    assert!(progress.contains(" chunks\n"), "{progress}");
    let a = json_of(out);
    assert!(
        progress.contains("switching alias prod: version 3, 20% to version 4\n"),
        "{progress}"
    );
    assert_eq!(a["versionId"], "3", "{a}");
    assert_eq!(a["additionalVersionWeight"], json!({"4": 0.2}));
    // Version 1 is free now.
    let (out, _) = ok(daemon.cli(&["version", "delete", "web", "1"]));
    assert_eq!(out, "deleted version 1 of web\n");
}

#[tokio::test]
async fn release_stops_on_a_failed_acceleration_unless_forced() {
    let registry = TestRegistry::start();
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let reference = registry.reference("cli/broken:v1");
    ImageBuilder::new()
        .layer(Layer::gzip().file("hello.txt", "hello\n"))
        .push(&client, &reference)
        .await
        .unwrap();
    // Scratch space for conversions that cannot be created: every conversion fails (as in
    // pronto-server's tests/acceleration.rs).
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("convert"), "not a directory").unwrap();
    let daemon = Daemon::start(&data);
    ok(daemon.cli(&[
        "function",
        "create",
        "broken",
        "--image",
        &reference.to_string(),
    ]));

    let err = refused(daemon.cli(&["release", "broken", "--alias", "prod", "--timeout", "60s"]));
    assert!(
        err.contains("error: the acceleration of broken failed: "),
        "{err}"
    );
    assert!(err.contains("nothing was published"), "{err}");
    let versions = json_of(daemon.cli(&["version", "list", "broken"]));
    assert_eq!(versions["versions"], json!([]), "{versions}");
    let err = refused(daemon.cli(&["alias", "get", "broken", "prod"]));
    assert!(err.contains("404"), "{err}");

    let a = json_of(daemon.cli(&["release", "broken", "--alias", "prod", "--force"]));
    assert_eq!(a["versionId"], "1", "{a}");
}
