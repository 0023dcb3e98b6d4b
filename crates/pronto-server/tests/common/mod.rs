//! A real registry, a real server on 127.0.0.1:0 over a temporary data directory, and an HTTP
//! client that speaks to it.
#![allow(dead_code)] // each test binary uses its own part

use pronto_image::{ClientOptions, Digest, RegistryClient};
use pronto_server::{RunningServer, Server, ServerConfig};
use pronto_testkit::image::{ImageBuilder, Layer};
use pronto_testkit::registry::TestRegistry;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub const FUNCTIONS: &str = "/2023-03-30/functions";

pub struct Env {
    pub registry: TestRegistry,
    /// The test's own client (pushes, checks).
    pub client: RegistryClient,
    /// Each server start gets a new client with these (an empty token cache, as a new
    /// daemon has).
    pub client_options: ClientOptions,
    pub data: tempfile::TempDir,
    pub server: Option<RunningServer>,
    pub http: reqwest::Client,
    /// Applied to every config this env starts a server with.
    tweak: fn(&mut ServerConfig),
}

/// A response: status, headers, and the body as JSON (`Null` when empty; a string when the
/// response is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Env {
    pub async fn start() -> Env {
        Self::start_with(|_| {}).await
    }

    /// A server whose config `tweak` changed (e.g. a short idle timeout).
    pub async fn start_with(tweak: fn(&mut ServerConfig)) -> Env {
        Self::start_on(TestRegistry::start(), ClientOptions::default(), tweak).await
    }

    /// A server speaking to `registry` with `options` (credentials).
    pub async fn start_on(
        registry: TestRegistry,
        options: ClientOptions,
        tweak: fn(&mut ServerConfig),
    ) -> Env {
        let client = RegistryClient::new(options.clone()).unwrap();
        let data = tempfile::Builder::new()
            .prefix("pronto-server-test-")
            .tempdir()
            .unwrap();
        let mut env = Env {
            registry,
            client,
            client_options: options,
            data,
            server: None,
            http: reqwest::Client::new(),
            tweak,
        };
        env.server = Some(env.start_server().await);
        env
    }

    /// The data directory the server uses.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.data.path().join("data")
    }

    pub fn config(&self) -> ServerConfig {
        let client = RegistryClient::new(self.client_options.clone()).unwrap();
        let mut config = ServerConfig::new(self.data_dir(), client);
        config.control_addr = "127.0.0.1:0".parse().unwrap();
        config.invoke_addr = "127.0.0.1:0".parse().unwrap();
        (self.tweak)(&mut config);
        config
    }

    async fn start_server(&self) -> RunningServer {
        Server::new(self.config())
            .await
            .unwrap()
            .start()
            .await
            .unwrap()
    }

    /// Restarts with another config tweak (kept for later restarts).
    pub async fn restart_with(&mut self, tweak: fn(&mut ServerConfig)) {
        self.tweak = tweak;
        self.restart().await;
    }

    /// Stops the server (waiting for it) and starts a new one on the same data directory.
    pub async fn restart(&mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
        self.server = Some(self.start_server().await);
    }

    /// Stops the server, removes `path` (node state to forget), and starts a new one.
    pub async fn restart_clearing(&mut self, path: &std::path::Path) {
        self.server.take().unwrap().shutdown().await.unwrap();
        std::fs::remove_dir_all(path).unwrap();
        self.server = Some(self.start_server().await);
    }

    /// Stops the server, runs `between` on the data directory's store (what a daemon killed
    /// mid-way would have left), and starts a new one.
    pub async fn restart_after(&mut self, between: impl AsyncFnOnce(pronto_server::Store)) {
        self.server.take().unwrap().shutdown().await.unwrap();
        between(pronto_server::Store::open(&self.data_dir()).unwrap()).await;
        self.server = Some(self.start_server().await);
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    pub fn token(&self) -> String {
        self.server().token().expose().to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server().control_addr)
    }

    /// A request with the right token and a JSON body (if any).
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let body = body.map(|b| serde_json::to_vec(&b).unwrap());
        self.call_raw(
            method,
            path,
            Some(&format!("Bearer {}", self.token())),
            body,
        )
        .await
    }

    /// A request with exactly this `Authorization` header (or none) and body bytes.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut req = self.http.request(method, self.url(path));
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        reply(req.send().await.unwrap()).await
    }

    /// Pushes a one-file image whose digest depends on `content`.
    pub async fn push(&self, repo_tag: &str, content: &[u8]) -> Digest {
        ImageBuilder::new()
            .layer(Layer::gzip().file("app", content))
            .entrypoint(&["/app"])
            .push(&self.client, &self.registry.reference(repo_tag))
            .await
            .unwrap()
            .digest
    }

    /// `HOST/repo_tag`.
    pub fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.registry.host())
    }

    /// Creates a function from `image` with `extra` fields; asserts 201.
    pub async fn create(&self, name: &str, image: &str, extra: Value) -> Value {
        let mut body = json!({
            "functionName": name,
            "customContainerConfig": {"image": image},
        });
        merge(&mut body, extra);
        let r = self.call(Method::POST, FUNCTIONS, Some(body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body
    }
}

pub async fn reply(resp: reqwest::Response) -> Reply {
    let status = resp.status();
    let headers = resp.headers().clone();
    let json = headers
        .get("content-type")
        .is_none_or(|v| v.to_str().unwrap_or("").starts_with("application/json"));
    let bytes = resp.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else if !json {
        // Text (metrics, followed logs): kept as a string.
        Value::String(String::from_utf8(bytes.to_vec()).unwrap())
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {bytes:?}"))
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// Deep-merges objects; anything else in `extra` replaces.
pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// Asserts an error reply.
#[track_caller]
pub fn assert_error(r: &Reply, status: StatusCode, code: &str, message: &str) {
    assert_eq!(
        (r.status, &r.body),
        (status, &json!({"code": code, "message": message})),
    );
}

impl Drop for Env {
    /// However the test ended (a failed assertion included), nothing of its instances stays on
    /// the machine: the node's crash cleanup runs over the data dir, on a runtime of its own
    /// (the test's may be shutting down).
    fn drop(&mut self) {
        drop(self.server.take());
        let node_dir = self.data_dir().join("node");
        let registry = self.client.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("cleanup runtime");
            rt.block_on(pronto_runtime::Node::open(pronto_runtime::NodeConfig {
                data_dir: node_dir,
                runtime_bin: "runc".into(),
                registry,
                chunk_cache_bytes: pronto_runtime::DEFAULT_CHUNK_CACHE_BYTES,
                max_unpacked_bytes: pronto_image::pull::DEFAULT_MAX_UNPACKED_BYTES,
                background_stream: pronto_runtime::StreamPolicy::Auto,
                isolation: Default::default(),
                network: None,
            }))
            .map(drop)
        })
        .join();
    }
}

impl Env {
    /// `GET /metrics` with the token, parsed by a Prometheus text parser.
    pub async fn scrape(&self) -> prometheus_parse::Scrape {
        let r = self
            .http
            .get(self.url("/metrics"))
            .bearer_auth(self.token())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()["content-type"],
            pronto_server::metrics::CONTENT_TYPE
        );
        parse_metrics(&r.text().await.unwrap())
    }
}

pub fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    assert!(
        text.ends_with("# EOF\n"),
        "an OpenMetrics exposition ends with # EOF"
    );
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of sample `name` whose labels include `labels`: a counter's or gauge's value, a
/// histogram's count (its `+Inf` bucket). `None` if there is no such sample.
pub fn metric(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let found: Vec<f64> = pronto_testkit::metrics::matching(scrape, name, labels)
        .map(pronto_testkit::metrics::value)
        .collect();
    assert!(
        found.len() <= 1,
        "{name}{labels:?} names {} samples",
        found.len()
    );
    found.first().copied()
}

/// The daemon's log output at `filter` (e.g. `debug`), captured for this test binary: one
/// global subscriber, installed by the first call (later filters are ignored).
pub fn captured_logs(filter: &'static str) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .init();
        buf
    })
    .clone()
}

struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
