//! Request ids end to end: the caller's `x-fc-request-id` (or a generated UUID v4) reaches the
//! function, comes back on the response (errors too) and is on the daemon's log lines about
//! the request.

mod common;

use std::sync::{Arc, Mutex};

use common::Env;
use pronto_testkit::image::{busybox_layer, ImageBuilder, Layer};
use reqwest::StatusCode;
use serde_json::json;

/// Answers with the request id it was given, and prints it to stderr.
const REQID: &str = "#!/bin/sh\necho \"handling $HTTP_X_FC_REQUEST_ID\" >&2\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s' \"$HTTP_X_FC_REQUEST_ID\"\n";

/// The daemon's log output, captured for this test binary.
fn captured() -> Arc<Mutex<Vec<u8>>> {
    common::captured_logs("pronto_server=debug")
}

/// The function's logs (`query` added), once they have a line (bounded wait: the output pump
/// writes them a moment after the function printed them).
async fn logs_of(env: &Env, function: &str, query: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let r = env
            .call(
                reqwest::Method::GET,
                &format!("{}/{function}/logs?{query}", common::FUNCTIONS),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let logs = r.body["logs"].as_str().unwrap().to_string();
        if !logs.is_empty() || std::time::Instant::now() > deadline {
            return logs;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn log_lines_with(needle: &str) -> Vec<String> {
    let logs = captured();
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    text.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn request_ids_round_trip_and_are_logged() {
    captured();
    let env = Env::start_with(|c| c.accelerate = false).await;
    ImageBuilder::new()
        .layer(busybox_layer().unwrap())
        .layer(
            Layer::gzip()
                .dir("www/cgi-bin")
                .file("www/cgi-bin/reqid", REQID)
                .mode(0o755),
        )
        .entrypoint(&["/bin/httpd", "-f", "-p", "9000", "-h", "/www"])
        .push(&env.client, &env.registry.reference("fn/reqid:v1"))
        .await
        .unwrap();
    let image = env.image("fn/reqid:v1");
    env.create("reqid", &image, json!({})).await;
    let url = |f: &str| {
        format!(
            "http://{}/invoke/{f}/cgi-bin/reqid",
            env.server().invoke_addr
        )
    };

    // The caller's id: the function sees it, the response returns it.
    let r = env
        .http
        .get(url("reqid"))
        .bearer_auth(env.token())
        .header("x-fc-request-id", "caller-id-0001")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-fc-request-id"], "caller-id-0001");
    let instance = r.headers()["x-pronto-instance"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(r.text().await.unwrap(), "caller-id-0001");
    // What the function printed while serving it carries the id (the instance serves one
    // request at a time), with a time and the instance.
    let logs = logs_of(&env, "reqid", "requestId=caller-id-0001").await;
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines.len(), 1, "{logs}");
    let fields: Vec<&str> = lines[0].splitn(4, ' ').collect();
    assert_eq!(
        fields[1..],
        [
            instance.as_str(),
            "caller-id-0001",
            "handling caller-id-0001"
        ],
        "{logs}"
    );
    time::OffsetDateTime::parse(fields[0], &time::format_description::well_known::Rfc3339).unwrap();

    // None sent: a new UUID v4, the same on both sides.
    let r = env
        .http
        .get(url("reqid"))
        .bearer_auth(env.token())
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-fc-request-id"].to_str().unwrap().to_string();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
    assert_eq!(r.text().await.unwrap(), id);
    let lines = log_lines_with(&format!("request_id={id}"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("function=reqid") && l.contains("invoked")),
        "{lines:#?}"
    );

    // Errors carry it too: Pronto's own (no such function, no token) and a failed start.
    for (function, token, status) in [
        ("nosuch", true, StatusCode::NOT_FOUND),
        ("reqid", false, StatusCode::UNAUTHORIZED),
    ] {
        let mut req = env
            .http
            .get(url(function))
            .header("x-fc-request-id", "err-id");
        if token {
            req = req.bearer_auth(env.token());
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status);
        assert_eq!(r.headers()["x-fc-request-id"], "err-id");
    }
    env.create(
        "broken",
        &image,
        json!({"customContainerConfig": {"image": image, "entrypoint": ["/bin/sh", "-c", "exit 3"]}}),
    )
    .await;
    let r = env
        .http
        .get(url("broken"))
        .bearer_auth(env.token())
        .header("x-fc-request-id", "broken-id-7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(r.headers()["x-fc-request-id"], "broken-id-7");
    // The daemon's line about that failure names the request and the function.
    let lines = log_lines_with("request_id=broken-id-7");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("function=broken") && l.contains("no instance for the request")),
        "{lines:#?}"
    );
}

/// A followed log is a response that never ends by itself: stopping the daemon ends it, and
/// the stop does not wait for the client.
#[tokio::test]
async fn a_followed_log_ends_when_the_daemon_stops() {
    let mut env = Env::start_with(|c| c.accelerate = false).await;
    env.push("quiet:v1", b"x").await;
    env.create("quiet", &env.image("quiet:v1"), json!({})).await;
    let mut r = env
        .http
        .get(env.url(&format!("{}/quiet/logs?follow=true", common::FUNCTIONS)))
        .bearer_auth(env.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let server = env.server.take().unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), server.shutdown())
        .await
        .expect("the stop does not wait for the follower")
        .unwrap();
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Ok(Some(_)) = r.chunk().await {}
    })
    .await;
    assert!(end.is_ok(), "the stream ended");
}
