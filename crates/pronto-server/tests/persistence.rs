//! What a restart keeps: the token, the functions; and how `serve` starts and stops.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Env, FUNCTIONS};
use pronto_server::{serve, ServerError};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn token_file_is_private_and_stable_across_restarts() {
    let mut env = Env::start().await;
    let path = env.data_dir().join("api-token");
    let token = env.token();
    assert_eq!(token.len(), 64);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{token}\n")
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&env.data_dir()), 0o700);

    env.restart().await;
    assert_eq!(env.token(), token);
    assert_eq!(mode(&path), 0o600);
    let r = env.call(Method::GET, FUNCTIONS, None).await;
    assert_eq!(r.status, StatusCode::OK);

    // Another data directory gets another token.
    let other = tempfile::tempdir().unwrap();
    let mut config = env.config();
    config.data_dir = other.path().join("d");
    let server = pronto_server::Server::new(config).await.unwrap();
    assert_ne!(server.token().expose(), token);
}

#[tokio::test]
async fn functions_survive_a_restart() {
    let mut env = Env::start().await;
    env.push("app:v1", b"x").await;
    let a = env
        .create("a", &env.image("app:v1"), json!({"memorySize": 1024}))
        .await;
    let b = env.create("b", &env.image("app:v1"), json!({})).await;
    let r = env
        .call(Method::DELETE, "/2023-03-30/functions/b", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let old_addr = env.server().control_addr;

    env.restart().await;
    assert!(env.data_dir().join("pronto.db").exists());
    // Ports are new; the data is not.
    assert_ne!(env.server().control_addr, old_addr);
    let got = env.call(Method::GET, "/2023-03-30/functions/a", None).await;
    assert_eq!((got.status, &got.body), (StatusCode::OK, &a));
    let list = env.call(Method::GET, FUNCTIONS, None).await;
    assert_eq!(list.body, json!({"functions": [a]}));
    // The deleted name is free again.
    let b2 = env.create("b", &env.image("app:v1"), json!({})).await;
    assert_ne!(b2["functionId"], b["functionId"]);
}

#[tokio::test]
async fn serve_runs_until_its_shutdown_future_completes() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = env.config();
    config.data_dir = dir.path().to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(config, async {
        let _ = rx.await;
    }));
    // Its database exists once it has opened the data directory (before binding).
    for _ in 0..200 {
        if dir.path().join("pronto.db").exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!task.is_finished());
    tx.send(()).unwrap();
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), task)
        .await
        .expect("serve stops after shutdown")
        .unwrap();
    result.unwrap();
}

#[tokio::test]
async fn a_taken_address_is_a_bind_error() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = env.config();
    config.data_dir = dir.path().to_path_buf();
    config.control_addr = env.server().control_addr;
    let err = serve(config, std::future::pending()).await.unwrap_err();
    assert!(matches!(err, ServerError::Bind { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "binding the control listener to {}: ",
            env.server().control_addr
        )),
        "{err}"
    );
}
