//! Invocations end to end: the real server, registry, runc, overlayfs and network namespaces.
//! Function images are busybox `httpd` with CGI handlers.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Env, FUNCTIONS};
use pronto_testkit::image::{busybox_layer, ImageBuilder, Layer};
use reqwest::{Method, StatusCode};
use serde_json::json;

const HTTPD: [&str; 6] = ["/bin/httpd", "-f", "-p", "9000", "-h", "/www"];

/// Echoes the request as the CGI saw it, then the body bytes unchanged.
const ECHO: &str = "#!/bin/sh\nprintf 'Content-Type: application/octet-stream\\r\\nX-Method: %s\\r\\nX-Query: %s\\r\\nX-Custom: %s\\r\\nX-Auth: %s\\r\\n\\r\\n' \"$REQUEST_METHOD\" \"$QUERY_STRING\" \"$HTTP_X_CUSTOM\" \"$HTTP_AUTHORIZATION\"\ncat\n";
const TEAPOT: &str = "#!/bin/sh\nprintf 'Status: 418 I am a teapot\\r\\nContent-Type: text/plain\\r\\nX-Brewed: yes\\r\\n\\r\\nshort and stout\\n'\n";
const COUNT: &str = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\nwc -c | tr -d ' '\n";
const HANG: &str = "#!/bin/sh\nsleep 1000\n";
const HOG: &str = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\nawk 'BEGIN { s = \"x\"; while (length(s) < 800000000) s = s s }'\n";
/// A raw HTTP handler for `nc -ll -e`: `/hog` allocates past any limit instead of answering.
const NC_HANDLER: &str = "#!/bin/sh\nread -r method path proto\ncase \"$path\" in\n  /hog) awk 'BEGIN { s = \"x\"; while (length(s) < 800000000) s = s s }' ;;\n  /drip) printf 'HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\nfirst\\n'; sleep 6; echo second ;;\n  *) printf 'HTTP/1.0 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n' ;;\nesac\n";
const WHOAMI: &str = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\necho \"pids=$(ls /proc | grep -c '^[0-9]') version=$VERSION host=$(hostname)\"\n";

/// These tests are about invocations: no conversions competing for the CPU.
fn no_acceleration(c: &mut pronto_server::ServerConfig) {
    c.accelerate = false;
}

async fn push_app(env: &Env, tag: &str, index: &str) {
    ImageBuilder::new()
        .layer(busybox_layer().unwrap())
        .layer(
            Layer::gzip()
                .dir("www/cgi-bin")
                .file("www/index.html", index)
                .file("www/big.bin", vec![0x5au8; 100 << 20])
                .file("www/cgi-bin/echo", ECHO)
                .mode(0o755)
                .file("www/cgi-bin/teapot", TEAPOT)
                .mode(0o755)
                .file("www/cgi-bin/count", COUNT)
                .mode(0o755)
                .file("www/cgi-bin/hang", HANG)
                .mode(0o755)
                .file("www/cgi-bin/hog", HOG)
                .mode(0o755)
                .file("www/cgi-bin/whoami", WHOAMI)
                .mode(0o755)
                .file("www/handler", NC_HANDLER)
                .mode(0o755),
        )
        .entrypoint(&HTTPD)
        .env("VERSION=image")
        .push(
            &env.client,
            &env.registry.reference(&format!("fn/app:{tag}")),
        )
        .await
        .unwrap();
}

fn invoke_url(env: &Env, function: &str, path: &str) -> String {
    format!(
        "http://{}/invoke/{function}{path}",
        env.server().invoke_addr
    )
}

async fn get(env: &Env, function: &str, path: &str) -> reqwest::Response {
    env.http
        .get(invoke_url(env, function, path))
        .bearer_auth(env.token())
        .send()
        .await
        .unwrap()
}

/// The instance's network namespace still exists (other tests run in parallel, so tests check
/// their own instances only).
fn ns_exists(instance: &str) -> bool {
    Path::new(&format!("/run/netns/pronto-{instance}")).exists()
}

fn instance_of(r: &reqwest::Response) -> String {
    r.headers()["x-pronto-instance"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn create_cold_warm_update_delete() {
    let env = Env::start_with(no_acceleration).await;
    push_app(&env, "v1", "version one\n").await;
    env.create("hello", &env.image("fn/app:v1"), json!({"memorySize": 128}))
        .await;

    let cold = get(&env, "hello", "/index.html").await;
    assert_eq!(cold.status(), StatusCode::OK);
    let timing = cold.headers()["x-pronto-cold-start"]
        .to_str()
        .unwrap()
        .to_string();
    for part in [
        "imageReady=",
        "containerStarted=",
        "appReady=",
        "firstByte=",
        "imagePulled=true",
    ] {
        assert!(timing.contains(part), "{timing}");
    }
    let first = instance_of(&cold);
    assert_eq!(cold.text().await.unwrap(), "version one\n");

    let warm = get(&env, "hello", "/index.html").await;
    assert!(
        warm.headers().get("x-pronto-cold-start").is_none(),
        "second call is warm"
    );
    assert_eq!(instance_of(&warm), first, "same instance, no new container");
    assert_eq!(warm.text().await.unwrap(), "version one\n");
    assert!(ns_exists(&first));

    // The function env reaches the process; its own pid namespace hides the host's processes.
    let r = env
        .call(
            Method::PUT,
            &format!("{FUNCTIONS}/hello"),
            Some(json!({"environmentVariables": {"VERSION": "fn"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let who = get(&env, "hello", "/cgi-bin/whoami").await;
    let second = instance_of(&who);
    assert_ne!(second, first, "an update starts fresh instances");
    wait_until(
        || !ns_exists(&first),
        "the instance of the old settings is stopped",
    )
    .await;
    let text = who.text().await.unwrap();
    assert!(text.contains("version=fn"), "{text}");
    let pids: usize = text
        .split("pids=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(pids < 10, "{text}");

    // New image under a new tag: the next invoke runs it.
    push_app(&env, "v2", "version two\n").await;
    let r = env
        .call(
            Method::PUT,
            &format!("{FUNCTIONS}/hello"),
            Some(json!({"customContainerConfig": {"image": env.image("fn/app:v2")}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let after = get(&env, "hello", "/index.html").await;
    assert!(after.headers().get("x-pronto-cold-start").is_some());
    let third = instance_of(&after);
    assert_eq!(after.text().await.unwrap(), "version two\n");
    wait_until(
        || !ns_exists(&second),
        "the old image's instance is stopped",
    )
    .await;

    let r = env
        .call(Method::DELETE, &format!("{FUNCTIONS}/hello"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let gone = get(&env, "hello", "/").await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    wait_until(|| !ns_exists(&third), "instances torn down after delete").await;
    assert_no_instance_dirs(&env.data_dir());
}

async fn wait_until(mut f: impl FnMut() -> bool, what: &str) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting: {what}");
}

fn assert_no_instance_dirs(data: &Path) {
    let dir = data.join("node/instances");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "instance dirs left: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&dir.display().to_string()),
        "mounts left under {}",
        dir.display()
    );
}

/// The image is resolved once, when the function is created: cold starts (here after a
/// restart, with the image on the node) never ask the registry for the manifest again.
#[tokio::test]
async fn a_pinned_image_is_not_resolved_again() {
    let mut env = Env::start_with(no_acceleration).await;
    push_app(&env, "pinned", "pinned\n").await;
    env.create("pinned", &env.image("fn/app:pinned"), json!({}))
        .await;
    let first = get(&env, "pinned", "/index.html").await;
    assert_eq!(first.status(), StatusCode::OK);
    env.restart().await;
    env.registry.stop();

    let cold = get(&env, "pinned", "/index.html").await;
    assert_eq!(cold.status(), StatusCode::OK);
    let timing = cold.headers()["x-pronto-cold-start"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(timing.contains("rootfs=local"), "{timing}");
    assert_eq!(cold.text().await.unwrap(), "pinned\n");
    let r = env
        .call(Method::DELETE, &format!("{FUNCTIONS}/pinned"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn request_fidelity() {
    let env = Env::start_with(no_acceleration).await;
    push_app(&env, "v1", "x").await;
    env.create(
        "echo",
        &env.image("fn/app:v1"),
        json!({"instanceConcurrency": 4}),
    )
    .await;

    // Method, query, custom header and a binary body round-trip; Pronto's token does not leak.
    // (busybox httpd hands CGIs the whole body only for POST; other methods get a small one.)
    let big: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let body = if method == Method::POST {
            big.clone()
        } else {
            big[..200].to_vec()
        };
        let r = env
            .http
            .request(
                method.clone(),
                invoke_url(&env, "echo", "/cgi-bin/echo?a=1&b=%20x"),
            )
            .bearer_auth(env.token())
            .header("x-custom", "hello")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-method"], method.as_str());
        assert_eq!(r.headers()["x-query"], "a=1&b=%20x");
        assert_eq!(r.headers()["x-custom"], "hello");
        assert_eq!(
            r.headers()["x-auth"],
            "",
            "the API token is not passed to the function"
        );
        let got = r.bytes().await.unwrap();
        assert!(
            got.as_ref() == body.as_slice(),
            "{method}: echoed {} of {} bytes",
            got.len(),
            body.len()
        );
    }

    // Status codes and response headers pass through.
    let r = get(&env, "echo", "/cgi-bin/teapot").await;
    assert_eq!(r.status().as_u16(), 418);
    assert_eq!(r.headers()["x-brewed"], "yes");
    assert_eq!(r.text().await.unwrap(), "short and stout\n");
    assert_eq!(
        get(&env, "echo", "/missing").await.status(),
        StatusCode::NOT_FOUND
    );

    // The header form of Function Compute's examples.
    let r = env
        .http
        .get(format!("http://{}/index.html", env.server().invoke_addr))
        .header("x-fc-invocation-target", "2016-08-15/proxy/svc/echo")
        .bearer_auth(env.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "x");

    // 100 MB up and down, streamed: the daemon's memory stays flat. (A length is given:
    // busybox httpd does not take chunked request bodies.)
    let before = peak_rss_kb();
    let upload = reqwest::Body::wrap_stream(futures_stream(100));
    let r = env
        .http
        .post(invoke_url(&env, "echo", "/cgi-bin/count"))
        .bearer_auth(env.token())
        .header("content-length", (100u64 << 20).to_string())
        .body(upload)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(text.trim(), (100u64 << 20).to_string());
    let mut r = get(&env, "echo", "/big.bin").await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut total = 0usize;
    while let Some(chunk) = r.chunk().await.unwrap() {
        assert!(chunk.iter().all(|&b| b == 0x5a));
        total += chunk.len();
    }
    assert_eq!(total, 100 << 20);
    let grown_mb = (peak_rss_kb() - before) / 1024;
    assert!(
        grown_mb < 64,
        "peak RSS grew by {grown_mb} MB for 200 MB of bodies: buffered?"
    );

    // Concurrent requests.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (http, url, token) = (
            env.http.clone(),
            invoke_url(&env, "echo", &format!("/cgi-bin/echo?i={i}")),
            env.token(),
        );
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .body(format!("req {i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["x-query"], format!("i={i}").as_str());
            assert_eq!(r.text().await.unwrap(), format!("req {i}"));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// `mb` MiB of zeros as a stream of 1 MiB chunks.
fn futures_stream(mb: usize) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::iter((0..mb).map(|_| Ok(vec![0u8; 1 << 20])))
}

fn peak_rss_kb() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn failures_are_reported_and_nothing_leaks() {
    let env = Env::start_with(no_acceleration).await;
    push_app(&env, "v1", "x").await;
    let image = env.image("fn/app:v1");

    // Exits at once.
    env.create("crash", &image, json!({"customContainerConfig": {"image": image, "entrypoint": ["/bin/sh", "-c", "echo bad config >&2; exit 2"]}})).await;
    let r = get(&env, "crash", "/").await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "FunctionNotStarted");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("exited before its port 9000 answered") && msg.contains("bad config"),
        "{msg}"
    );
    let logs = env
        .call(
            Method::GET,
            &format!("{FUNCTIONS}/crash/logs?tail=10"),
            None,
        )
        .await;
    assert_eq!(logs.status, StatusCode::OK);
    assert!(
        logs.body["logs"].as_str().unwrap().contains("bad config\n"),
        "{}",
        logs.body
    );

    // Never listens.
    env.create("deaf", &image, json!({"initializationTimeout": 1, "customContainerConfig": {"image": image, "entrypoint": ["/bin/sleep", "1000"]}})).await;
    let r = get(&env, "deaf", "/").await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("within the initialization timeout of 1s"),
        "{v}"
    );

    // Hangs: 504 after `timeout`, and the instance is recycled.
    env.create("slow", &image, json!({"timeout": 2})).await;
    assert_eq!(
        get(&env, "slow", "/index.html").await.status(),
        StatusCode::OK
    );
    let started = std::time::Instant::now();
    let r = get(&env, "slow", "/cgi-bin/hang").await;
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    let hung_instance = instance_of(&r);
    assert!(started.elapsed() < Duration::from_secs(5));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "FunctionTimeout");
    let next = get(&env, "slow", "/index.html").await;
    assert_eq!(next.status(), StatusCode::OK);
    assert_ne!(
        instance_of(&next),
        hung_instance,
        "the hung instance was replaced"
    );
    wait_until(
        || !ns_exists(&hung_instance),
        "the hung instance is torn down",
    )
    .await;
    let mut seen = vec![instance_of(&next)];

    let nc = ["/bin/nc", "-ll", "-p", "9000", "-e", "/www/handler"];
    // A response whose body outlasts the timeout is cut there (headers came in time).
    env.create(
        "drip",
        &image,
        json!({"timeout": 2, "customContainerConfig": {"image": image, "entrypoint": nc}}),
    )
    .await;
    assert_eq!(get(&env, "drip", "/").await.text().await.unwrap(), "ok\n");
    let started = std::time::Instant::now();
    let r = get(&env, "drip", "/drip").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.text().await;
    assert!(body.is_err(), "the body was not cut: {body:?}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "cut after {took:?}, timeout 2 s"
    );

    // Out of memory: the request fails and says why.
    env.create(
        "hog",
        &image,
        json!({"memorySize": 128, "customContainerConfig": {"image": image, "entrypoint": nc}}),
    )
    .await;
    assert_eq!(get(&env, "hog", "/").await.text().await.unwrap(), "ok\n");
    let r = get(&env, "hog", "/hog").await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "FunctionFailed");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("was killed: out of memory (memorySize 128 MB)"),
        "{v}"
    );

    // Auth: the token is required unless the function is anonymous.
    let r = env
        .http
        .get(invoke_url(&env, "slow", "/index.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = env
        .http
        .get(invoke_url(&env, "slow", "/index.html"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    env.create("open", &image, json!({"authType": "anonymous"}))
        .await;
    let r = env
        .http
        .get(invoke_url(&env, "open", "/index.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    seen.push(instance_of(&r));

    // Unknown function: 404 with the token; without it 401, as for one that exists (names
    // cannot be probed).
    assert_eq!(
        get(&env, "nosuch", "/").await.status(),
        StatusCode::NOT_FOUND
    );
    for function in ["nosuch", "slow"] {
        let r = env
            .http
            .get(invoke_url(&env, function, "/index.html"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{function}");
    }

    // Graceful stop tears every instance down.
    let data = env.data_dir();
    let mut env = env;
    env.server.take().unwrap().shutdown().await.unwrap();
    for id in &seen {
        assert!(!ns_exists(id), "namespace of {id} left after shutdown");
    }
    assert_no_instance_dirs(&data);
}

#[tokio::test]
async fn idle_instances_are_reclaimed() {
    let env = Env::start_with(|c| {
        no_acceleration(c);
        c.idle_timeout = Duration::from_millis(800);
    })
    .await;
    push_app(&env, "v1", "x").await;
    env.create("idle", &env.image("fn/app:v1"), json!({})).await;
    let r = get(&env, "idle", "/index.html").await;
    let id = instance_of(&r);
    assert!(ns_exists(&id));
    wait_until(|| !ns_exists(&id), "idle instance reclaimed").await;
    let r = get(&env, "idle", "/index.html").await;
    assert!(
        r.headers().get("x-pronto-cold-start").is_some(),
        "scaled to zero: the next call is cold"
    );
}
