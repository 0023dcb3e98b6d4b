//! Acceleration jobs: `Preparing` → `Ready` (the artifact verifies against the image) or
//! `Failed` with the reason; jobs survive a restart; an update supersedes a running job.

mod common;

use std::time::Duration;

use common::{Env, FUNCTIONS};
use pronto_image::pull;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn accel(env: &Env, name: &str) -> Value {
    let r = env
        .call(Method::GET, &format!("{FUNCTIONS}/{name}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["accelerationInfo"].clone()
}

async fn wait_status(env: &Env, name: &str, want: &str) -> Value {
    for _ in 0..200 {
        let a = accel(env, name).await;
        if a["status"] == want {
            return a;
        }
        assert!(a["status"] == "Preparing", "{name}: {a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never became {want}");
}

#[tokio::test]
async fn preparing_then_ready_and_the_artifact_verifies() {
    let env = Env::start().await;
    env.push("app:v1", &vec![7u8; 3 << 20]).await;
    let created = env.create("fast", &env.image("app:v1"), json!({})).await;
    assert_eq!(created["accelerationInfo"]["status"], "Preparing");
    let ready = wait_status(&env, "fast", "Ready").await;
    assert!(
        ready["artifactDigest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{ready}"
    );
    assert!(ready["indexSize"].as_u64().unwrap() > 0);

    // Ground truth: the artifact rebuilds the image exactly.
    let image = pull::resolve(&env.client, &env.registry.reference("app:v1"))
        .await
        .unwrap();
    assert!(ready["artifact"]
        .as_str()
        .unwrap()
        .ends_with(&format!("sha256-{}.pronto", image.manifest_digest.hex())));
    let work = tempfile::tempdir().unwrap();
    pronto_convert::verify(&env.client, &image, work.path())
        .await
        .unwrap();

    // accelerationType None: no job, no accelerationInfo.
    let plain = env
        .create("plain", &env.image("app:v1"), json!({"customContainerConfig": {"image": env.image("app:v1"), "accelerationType": "None"}}))
        .await;
    assert!(plain.get("accelerationInfo").is_none(), "{plain}");
}

#[tokio::test]
async fn a_failed_conversion_says_why_and_the_function_still_serves_metadata() {
    // Scratch space that cannot be created: every conversion fails.
    let env = Env::start_with(|c| {
        let blocker = c.data_dir.join("convert");
        std::fs::create_dir_all(&c.data_dir).unwrap();
        std::fs::write(&blocker, b"not a directory").unwrap();
    })
    .await;
    env.push("app:v1", b"x").await;
    env.create("broken", &env.image("app:v1"), json!({})).await;
    let failed = wait_status(&env, "broken", "Failed").await;
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("/convert") && reason.to_lowercase().contains("file exists")
            || reason.contains("not a directory"),
        "{reason}"
    );
}

#[tokio::test]
async fn jobs_resume_after_a_restart_and_updates_supersede() {
    let mut env = Env::start_with(|c| c.accelerate = false).await;
    env.push("app:v1", b"one").await;
    env.create("later", &env.image("app:v1"), json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        accel(&env, "later").await["status"],
        "Preparing",
        "no jobs while accelerate is off"
    );
    env.restart_with(|_| {}).await;
    wait_status(&env, "later", "Ready").await;

    // Update right after create: only the new image's artifact may be recorded.
    env.push("app:v2", &vec![1u8; 2 << 20]).await;
    env.push("app:v3", &vec![2u8; 2 << 20]).await;
    env.create("moving", &env.image("app:v2"), json!({})).await;
    let r = env
        .call(
            Method::PUT,
            &format!("{FUNCTIONS}/moving"),
            Some(json!({"customContainerConfig": {"image": env.image("app:v3")}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    env.server().state().accel.idle().await;
    let ready = wait_status(&env, "moving", "Ready").await;
    let v3 = pull::resolve(&env.client, &env.registry.reference("app:v3"))
        .await
        .unwrap();
    assert!(
        ready["artifact"]
            .as_str()
            .unwrap()
            .ends_with(&format!("sha256-{}.pronto", v3.manifest_digest.hex())),
        "{ready}"
    );
}
