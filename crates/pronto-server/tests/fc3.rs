//! Function Compute 3.0 behaviour end to end, with the real server, registry, runc and
//! network namespaces: `entrypoint`/`command` against the image's ENTRYPOINT/CMD,
//! `healthCheckConfig` as the readiness check, and `InvokeFunction`
//! (`POST /2023-03-30/functions/{name}/invocations`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{assert_error, Env, FUNCTIONS};
use pronto_testkit::image::{httpd_image, Layer};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// The image's ENTRYPOINT: notes its arguments in `/www/argv`, then serves `/www`.
const START: &str =
    "#!/bin/sh\necho \"start[$*]\" > /www/argv\nexec /bin/httpd -f -p 9000 -h /www\n";
/// Another program an `entrypoint` can name.
const OTHER: &str =
    "#!/bin/sh\necho \"other[$*]\" > /www/argv\nexec /bin/httpd -f -p 9000 -h /www\n";
/// A health check path that passes, counting its calls.
const OK: &str =
    "#!/bin/sh\necho hit >> /tmp/hits\nprintf 'Content-Type: text/plain\\r\\n\\r\\nok\\n'\n";
const HITS: &str =
    "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\nwc -l < /tmp/hits | tr -d ' '\n";
/// A health check path that fails.
const SICK: &str = "#!/bin/sh\nprintf 'Status: 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\nsick\\n'\n";
/// A raw HTTP server for `nc -ll -e`: answers 202 with the request's body, and its path,
/// method, request id and `$VERSION` in headers.
const EVENT: &str = r#"#!/bin/sh
read -r method path proto
len=0
rid=-
while read -r line; do
  line=$(printf '%s' "$line" | tr -d '\r')
  [ -z "$line" ] && break
  name=$(printf '%s' "${line%%:*}" | tr 'A-Z' 'a-z')
  case "$name" in
    content-length) len=${line#*: } ;;
    x-fc-request-id) rid=${line#*: } ;;
  esac
done
body=$(head -c "$len")
printf 'HTTP/1.0 202 Accepted\r\nContent-Type: application/json\r\nX-Event-Path: %s\r\nX-Event-Method: %s\r\nX-Event-Request-Id: %s\r\nX-Version: %s\r\nContent-Length: %s\r\n\r\n%s' "$path" "$method" "$rid" "$VERSION" "${#body}" "$body"
"#;
const NC: [&str; 6] = ["/bin/nc", "-ll", "-p", "9000", "-e", "/www/event"];

/// These tests are about starts and invocations: no conversions competing for the CPU.
fn no_acceleration(c: &mut pronto_server::ServerConfig) {
    c.accelerate = false;
}

/// ENTRYPOINT `/bin/sh /start.sh`, CMD `image-cmd`.
async fn push_app(env: &Env) -> String {
    let app = Layer::gzip()
        .file("start.sh", START)
        .file("other.sh", OTHER)
        .dir("www/cgi-bin")
        .file("www/index.html", "hello\n")
        .file("www/event", EVENT)
        .mode(0o755)
        .file("www/cgi-bin/ok", OK)
        .mode(0o755)
        .file("www/cgi-bin/hits", HITS)
        .mode(0o755)
        .file("www/cgi-bin/sick", SICK)
        .mode(0o755);
    httpd_image(app)
        .entrypoint(&["/bin/sh", "/start.sh"])
        .cmd(&["image-cmd"])
        .push(&env.client, &env.registry.reference("fc3/app:v1"))
        .await
        .unwrap();
    env.image("fc3/app:v1")
}

async fn get(env: &Env, function: &str, path: &str) -> reqwest::Response {
    env.http
        .get(format!(
            "http://{}/invoke/{function}{path}",
            env.server().invoke_addr
        ))
        .bearer_auth(env.token())
        .send()
        .await
        .unwrap()
}

fn assert_no_instance_dirs(data: &Path) {
    let left: Vec<_> = std::fs::read_dir(data.join("node/instances"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "instance dirs left: {left:?}");
}

#[tokio::test]
async fn entrypoint_and_command_override_the_image_as_docker_does() {
    let env = Env::start_with(no_acceleration).await;
    let image = push_app(&env).await;
    let cases = [
        ("plain", json!({}), "start[image-cmd]"),
        (
            "cmd",
            json!({"command": ["fn-cmd", "-v"]}),
            "start[fn-cmd -v]",
        ),
        // A new ENTRYPOINT drops the image CMD (`docker run --entrypoint`).
        (
            "entry",
            json!({"entrypoint": ["/bin/sh", "/other.sh"]}),
            "other[]",
        ),
        (
            "both",
            json!({"entrypoint": ["/bin/sh", "/other.sh"], "command": ["fn-cmd"]}),
            "other[fn-cmd]",
        ),
        // Pronto's older name of `command`.
        ("legacy", json!({"args": ["legacy"]}), "start[legacy]"),
    ];
    for (name, cc, _) in &cases {
        let mut cc = cc.clone();
        cc["image"] = json!(image);
        env.create(name, &image, json!({"customContainerConfig": cc}))
            .await;
    }
    for (name, _, want) in cases {
        let r = get(&env, name, "/argv").await;
        assert_eq!(r.status(), StatusCode::OK, "{name}");
        assert_eq!(r.text().await.unwrap(), format!("{want}\n"), "{name}");
    }
}

#[tokio::test]
async fn a_health_check_that_answers_200_makes_the_instance_ready() {
    let env = Env::start_with(no_acceleration).await;
    let image = push_app(&env).await;
    env.create(
        "healthy",
        &image,
        json!({"customContainerConfig": {"image": image, "healthCheckConfig": {
            "httpGetUrl": "/cgi-bin/ok", "periodSeconds": 1, "successThreshold": 2,
        }}}),
    )
    .await;
    let started = Instant::now();
    let r = get(&env, "healthy", "/cgi-bin/hits").await;
    assert_eq!(r.status(), StatusCode::OK);
    // Two passes a period apart, and none after the instance was ready.
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(r.text().await.unwrap(), "2\n");
}

#[tokio::test]
async fn a_health_check_that_answers_500_keeps_the_instance_out_until_the_init_timeout() {
    let env = Env::start_with(no_acceleration).await;
    let image = push_app(&env).await;
    env.create(
        "sick",
        &image,
        json!({"initializationTimeout": 3, "customContainerConfig": {"image": image,
            "healthCheckConfig": {
                "httpGetUrl": "/cgi-bin/sick", "periodSeconds": 1, "failureThreshold": 120,
            },
        }}),
    )
    .await;
    let started = Instant::now();
    let r = get(&env, "sick", "/index.html").await;
    let took = started.elapsed();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "FunctionNotStarted", "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains(
            "the health check GET /cgi-bin/sick on port 9000 did not pass within the \
             initialization timeout of 3s (last check: answered 500)"
        ),
        "{message}"
    );
    // The app answered `/index.html` all along: only the check kept it out.
    assert!(took >= Duration::from_secs(3), "{took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert_no_instance_dirs(&env.data_dir());
}

#[tokio::test]
async fn a_health_check_failing_failure_threshold_times_fails_the_start_at_once() {
    let env = Env::start_with(no_acceleration).await;
    let image = push_app(&env).await;
    env.create(
        "missing",
        &image,
        json!({"initializationTimeout": 60, "customContainerConfig": {"image": image,
            "healthCheckConfig": {
                "httpGetUrl": "/no-such-page", "periodSeconds": 1, "failureThreshold": 2,
            },
        }}),
    )
    .await;
    let started = Instant::now();
    let r = get(&env, "missing", "/index.html").await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let v: serde_json::Value = r.json().await.unwrap();
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains(
            "the health check GET /no-such-page on port 9000 failed 2 times in a row \
             (failureThreshold; last check: answered 404)"
        ),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_no_instance_dirs(&env.data_dir());
}

/// `POST /2023-03-30/functions/{name}/invocations`.
fn invocations(name: &str) -> String {
    format!("{FUNCTIONS}/{name}/invocations")
}

#[tokio::test]
async fn invoke_function_posts_the_event_to_invoke_and_returns_the_response() {
    let env = Env::start_with(no_acceleration).await;
    let image = push_app(&env).await;
    env.create(
        "events",
        &image,
        json!({
            "authType": "anonymous",
            "environmentVariables": {"VERSION": "one"},
            "customContainerConfig": {"image": image, "entrypoint": NC},
        }),
    )
    .await;
    let published = env
        .call(Method::POST, &format!("{FUNCTIONS}/events/versions"), None)
        .await;
    assert_eq!(published.status, StatusCode::CREATED, "{}", published.body);
    let r = env
        .call(
            Method::PUT,
            &format!("{FUNCTIONS}/events"),
            Some(json!({"environmentVariables": {"VERSION": "two"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let invoke = |query: &str, headers: &[(&str, &str)], token: bool| {
        let mut req = env
            .http
            .post(env.url(&format!("{}{query}", invocations("events"))))
            .body(r#"{"key":"value"}"#);
        if token {
            req = req.bearer_auth(env.token());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let r = invoke("", &[("x-fc-request-id", "fc3-req-1")], true)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "the function's status");
    let h = r.headers().clone();
    assert_eq!(h["x-event-path"], "/invoke");
    assert_eq!(h["x-event-method"], "POST");
    assert_eq!(h["x-event-request-id"], "fc3-req-1");
    assert_eq!(h["x-fc-request-id"], "fc3-req-1");
    assert_eq!(h["x-version"], "two");
    assert_eq!(h["x-pronto-version"], "LATEST");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(r.text().await.unwrap(), r#"{"key":"value"}"#);

    // Sync, said explicitly; a version by query or by header.
    for (query, headers) in [
        ("?qualifier=1", vec![("x-fc-invocation-type", "Sync")]),
        ("", vec![("x-fc-qualifier", "1")]),
    ] {
        let r = invoke(query, &headers, true).await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(r.headers()["x-version"], "one", "{query} {headers:?}");
        assert_eq!(r.headers()["x-pronto-version"], "1");
        assert!(r.headers().contains_key("x-fc-request-id"));
    }

    // Asynchronous invocations are refused, saying so.
    let r = invoke("", &[("x-fc-invocation-type", "Async")], true)
        .await
        .unwrap();
    assert!(r.headers().contains_key("x-fc-request-id"));
    let r = common::reply(r).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "InvalidArgument",
        "x-fc-invocation-type: only Sync is supported (Pronto has no asynchronous \
         invocations), got \"Async\"",
    );
    let r = common::reply(invoke("?qualifier=bad.name", &[], true).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .starts_with("qualifier: "),
        "{}",
        r.body
    );
    // Behind the API token, though the function is anonymous on the invoke listener.
    let r = common::reply(invoke("", &[], false).await.unwrap()).await;
    assert_error(
        &r,
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "missing Authorization header",
    );
    let r = env
        .call(Method::POST, &invocations("nosuch"), Some(json!({})))
        .await;
    assert_error(
        &r,
        StatusCode::NOT_FOUND,
        "FunctionNotFound",
        "function nosuch not found",
    );
    let r = env.call(Method::GET, &invocations("events"), None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    // Counted as invocations, like the invoke listener's.
    let scrape = env.scrape().await;
    let ok = common::metric(
        &scrape,
        "pronto_invocations_total",
        &[
            ("function", "events"),
            ("qualifier", "LATEST"),
            ("status", "202"),
        ],
    );
    assert_eq!(ok, Some(1.0));
}

/// `internetAccess` reaches the instance: with it (the default) an instance gets its /30 and
/// a veth; with `false`, none (only its loopback). What each can reach is tested on the
/// runtime (`pronto-runtime/tests/instances.rs`, with a stand-in internet).
#[tokio::test]
async fn internet_access_decides_whether_an_instance_gets_a_network() {
    let env = Env::start_with(no_acceleration).await;
    let image = push_app(&env).await;
    for (name, access) in [("online", true), ("offline", false)] {
        env.create(name, &image, json!({"internetAccess": access}))
            .await;
        let r = get(&env, name, "/index.html").await;
        assert_eq!(r.status(), StatusCode::OK);
        let id = r.headers()["x-pronto-instance"]
            .to_str()
            .unwrap()
            .to_string();
        let state: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                env.data_dir()
                    .join("node/instances")
                    .join(&id)
                    .join("state.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let network = state["network"].as_str();
        assert_eq!(network.is_some(), access, "{name}: {state}");
        if let Some(net) = network {
            let net: std::net::Ipv4Addr = net.parse().unwrap();
            let veth = format!("pn{:08x}", u32::from(net));
            assert!(Path::new("/sys/class/net").join(&veth).exists(), "{veth}");
        }
        let shown = env
            .call(Method::GET, &format!("/2023-03-30/functions/{name}"), None)
            .await;
        assert_eq!(shown.body["internetAccess"], access);
    }
}
