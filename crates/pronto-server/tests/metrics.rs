//! `/metrics` against the real server: known functions invoked a known number of times, the
//! exposition parsed by a Prometheus text parser, every count exact.

mod common;

use common::{metric, parse_metrics, Env};
use pronto_testkit::image::{busybox_layer, ImageBuilder, Layer};
use reqwest::StatusCode;
use serde_json::json;

fn no_acceleration(c: &mut pronto_server::ServerConfig) {
    c.accelerate = false;
}

async fn push_httpd(env: &Env, tag: &str) {
    ImageBuilder::new()
        .layer(busybox_layer().unwrap())
        .layer(Layer::gzip().file("www/index.html", "hello\n"))
        .entrypoint(&["/bin/httpd", "-f", "-p", "9000", "-h", "/www"])
        .push(
            &env.client,
            &env.registry.reference(&format!("fn/web:{tag}")),
        )
        .await
        .unwrap();
}

async fn invoke(env: &Env, function: &str, path: &str, token: bool) -> StatusCode {
    let mut req = env.http.get(format!(
        "http://{}/invoke/{function}{path}",
        env.server().invoke_addr
    ));
    if token {
        req = req.bearer_auth(env.token());
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    r.bytes().await.unwrap();
    status
}

#[tokio::test]
async fn invocations_and_cold_starts_are_counted_exactly() {
    let env = Env::start_with(no_acceleration).await;
    push_httpd(&env, "v1").await;
    let image = env.image("fn/web:v1");
    env.create("a", &image, json!({})).await;
    env.create("b", &image, json!({})).await;

    for _ in 0..3 {
        assert_eq!(invoke(&env, "a", "/index.html", true).await, StatusCode::OK);
    }
    assert_eq!(
        invoke(&env, "a", "/missing", true).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        invoke(&env, "a", "/index.html", false).await,
        StatusCode::UNAUTHORIZED
    );
    for _ in 0..2 {
        assert_eq!(invoke(&env, "b", "/index.html", true).await, StatusCode::OK);
    }
    assert_eq!(
        invoke(&env, "nosuch", "/", true).await,
        StatusCode::NOT_FOUND
    );

    let m = env.scrape().await;
    let calls = |f: &str, status: &str| {
        metric(
            &m,
            "pronto_invocations_total",
            &[("function", f), ("qualifier", "LATEST"), ("status", status)],
        )
    };
    assert_eq!(calls("a", "200"), Some(3.0));
    assert_eq!(calls("a", "404"), Some(1.0));
    assert_eq!(calls("a", "401"), Some(1.0));
    assert_eq!(calls("b", "200"), Some(2.0));
    assert_eq!(calls("", "404"), Some(1.0), "no such function");
    assert_eq!(calls("b", "404"), None);

    // `a` pulled the image; `b` (the same digest) found it unpacked.
    let a = [("function", "a"), ("rootfs", "pulled")];
    let b = [("function", "b"), ("rootfs", "local")];
    assert_eq!(metric(&m, "pronto_cold_starts_total", &a), Some(1.0));
    assert_eq!(metric(&m, "pronto_cold_starts_total", &b), Some(1.0));
    assert_eq!(
        metric(
            &m,
            "pronto_cold_starts_total",
            &[("function", "a"), ("rootfs", "local")]
        ),
        None
    );
    assert_eq!(
        metric(&m, "pronto_cold_start_duration_seconds", &a),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "pronto_cold_start_duration_seconds", &b),
        Some(1.0)
    );

    // One observation per phase per cold start, and the phases add up to the duration.
    let phases: Vec<&prometheus_parse::Sample> = m
        .samples
        .iter()
        .filter(|s| {
            s.metric == "pronto_cold_start_phase_seconds" && s.labels.get("function") == Some("a")
        })
        .collect();
    assert!(phases.len() >= 5, "{phases:?}");
    for p in &phases {
        assert_eq!(
            metric(
                &m,
                "pronto_cold_start_phase_seconds",
                &[("function", "a"), ("phase", p.labels.get("phase").unwrap())]
            ),
            Some(1.0)
        );
    }
    let sum_of = |name: &str, labels: &[(&str, &str)]| -> f64 {
        m.samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v) => v,
                _ => panic!("{name}: {:?}", s.value),
            })
            .sum()
    };
    let total = sum_of("pronto_cold_start_duration_seconds_sum", &a);
    let phased = sum_of("pronto_cold_start_phase_seconds_sum", &[("function", "a")]);
    assert!(
        total > 0.0 && (total - phased).abs() < 1e-6,
        "{total} vs {phased}"
    );

    // Each function has one idle instance and nothing queued or starting.
    for f in ["a", "b"] {
        for (state, n) in [
            ("idle", 1.0),
            ("busy", 0.0),
            ("starting", 0.0),
            ("draining", 0.0),
        ] {
            assert_eq!(
                metric(&m, "pronto_instances", &[("function", f), ("state", state)]),
                Some(n),
                "{f} {state}"
            );
        }
        assert_eq!(
            metric(&m, "pronto_queue_length", &[("function", f)]),
            Some(0.0)
        );
    }
    // Nothing was lazily mounted; the chunk cache has its configured bound.
    assert_eq!(
        metric(&m, "pronto_lazyfs_read_requests_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "pronto_chunk_cache_evictions_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "pronto_chunk_cache_corrupt_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "pronto_chunk_cache_capacity_bytes", &[]),
        Some(pronto_runtime::DEFAULT_CHUNK_CACHE_BYTES as f64)
    );
    assert_eq!(
        metric(&m, "pronto_conversions_total", &[("result", "ready")]),
        None
    );
}

#[tokio::test]
async fn metrics_need_the_token_unless_opened() {
    let mut env = Env::start_with(no_acceleration).await;
    let url = env.url("/metrics");
    let r = env.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = env
        .http
        .get(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    env.restart_with(|c| {
        no_acceleration(c);
        c.metrics_public = true;
    })
    .await;
    let url = env.url("/metrics");
    let r = env.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let m = parse_metrics(&r.text().await.unwrap());
    assert_eq!(
        metric(&m, "pronto_lazyfs_fetch_errors_total", &[]),
        Some(0.0)
    );
    // Only /metrics is open: the API still needs the token.
    let r = env
        .http
        .get(env.url(common::FUNCTIONS))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = env.http.get(env.url("/nothing")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}
