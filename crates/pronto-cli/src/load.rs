//! `pronto bench load URL`: an HTTP load generator for the scheduler's benchmarks (throughput and
//! p99 against a warm pool, cold starts during a burst from zero) and for end-to-end tests that
//! must see no failed request while a function is updated under load.
//!
//! `--concurrency` workers each hold one keep-alive connection (a `reqwest::Client` of their
//! own, HTTP/1.1). Closed loop by default: a worker sends its next request as soon as the previous
//! one has answered. With `--rate`, open loop: request `i` is due at `i / rate` seconds after the
//! start, whichever worker is free takes it, and its latency counts from when it was due, so that
//! a backlog (every worker busy) shows in the latency instead of silently lowering the rate.
//!
//! Each request reads the whole response body. Every wait is bounded: each request by
//! `--timeout`, the run by `--duration` (requests in flight then still finish, each within its
//! timeout) or by `--requests`.
//!
//! It lives in the binary rather than a library crate: only the `pronto` command uses it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};

/// Responses from pronto's invoke listener that were cold starts carry this header.
const COLD_START_HEADER: &str = pronto_server::proxy::COLD_START_HEADER;
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// The URL every request goes to (http or https)
    #[arg(value_name = "URL")]
    url: Url,
    /// Workers, each with one keep-alive connection and at most one request in flight
    #[arg(short, long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// How long to send requests (e.g. 500ms, 10s, 2m); requests in flight at the end still
    /// finish [default: 10s, unless --requests is given]
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration,
          conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Send exactly N requests, then stop (instead of --duration)
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Open loop: start R requests per second, whether or not earlier ones have answered (at
    /// most --concurrency in flight); latency counts from when a request was due. Without it,
    /// closed loop: each worker sends its next request as soon as the previous one answers
    #[arg(short, long, value_name = "R", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Request header `Name: value`, repeatable
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(HeaderName, HeaderValue)>,
    /// HTTP method [default: GET, or POST with --body]
    #[arg(short = 'X', long, value_name = "METHOD", value_parser = parse_method)]
    method: Option<Method>,
    /// Request body: a string, or @FILE for a file's contents (read once, sent with every request)
    #[arg(long, value_name = "STRING")]
    body: Option<String>,
    /// Longest wait for one request, from sending it to the end of its response body; a request
    /// that takes longer counts as failed, error kind "timeout"
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Count responses by the value of this response header (e.g. x-pronto-version); in --out,
    /// its value is the fourth column
    #[arg(long, value_name = "NAME")]
    record_header: Option<HeaderName>,
    /// Print the report as one JSON object (camelCase keys) instead of text
    #[arg(long)]
    json: bool,
    /// Write one line per request to FILE, tab-separated, in order of start: start (ms after the
    /// run's start), latency (ms), status code or error kind, the --record-header value (- if
    /// absent); the first line names the columns
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Exit with status 1 if any request failed (a non-2xx status or a transport error)
    #[arg(long)]
    fail_on_error: bool,
}

/// `500ms`, `10s`, `1.5s`, `2m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let expected = || format!("{s:?}: expected a duration such as 500ms, 10s, 2m or 1h");
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(expected)?;
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().map_err(|_| expected())?;
    let seconds = match unit {
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("{s:?}: the unit must be ms, s, m or h")),
    };
    let duration = Duration::try_from_secs_f64(seconds).map_err(|_| expected())?;
    if duration.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(duration)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{s:?}: expected requests per second, more than zero"
        )),
    }
}

fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected 'Name: value'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{s:?}: invalid header name {:?}", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("{s:?}: invalid header value {:?}", value.trim()))?;
    Ok((name, value))
}

fn parse_method(s: &str) -> Result<Method, String> {
    Method::from_bytes(s.as_bytes()).map_err(|_| format!("{s:?}: not an HTTP method"))
}

/// When the run stops taking new requests.
#[derive(Debug, Clone, Copy)]
enum Stop {
    After(Duration),
    Requests(u64),
}

/// The run, checked and ready: what every request sends and when to stop.
#[derive(Debug)]
struct Plan {
    url: Url,
    method: Method,
    headers: HeaderMap,
    body: Option<bytes::Bytes>,
    concurrency: u32,
    stop: Stop,
    rate: Option<f64>,
    timeout: Duration,
    record_header: Option<HeaderName>,
}

impl LoadArgs {
    fn plan(&self) -> anyhow::Result<Plan> {
        if !matches!(self.url.scheme(), "http" | "https") {
            bail!("{}: the scheme must be http or https", self.url);
        }
        let body = match &self.body {
            Some(b) => Some(match b.strip_prefix('@') {
                Some(path) => std::fs::read(path).with_context(|| format!("reading {path}"))?,
                None => b.clone().into_bytes(),
            }),
            None => None,
        };
        let method = self.method.clone().unwrap_or(match body {
            Some(_) => Method::POST,
            None => Method::GET,
        });
        Ok(Plan {
            url: self.url.clone(),
            method,
            headers: self.headers.iter().cloned().collect(),
            body: body.map(Into::into),
            concurrency: self.concurrency,
            stop: match (self.requests, self.duration) {
                (Some(n), _) => Stop::Requests(n),
                (None, d) => Stop::After(d.unwrap_or(DEFAULT_DURATION)),
            },
            rate: self.rate,
            timeout: self.timeout,
            record_header: self.record_header.clone(),
        })
    }
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Status(u16),
    /// No complete response: `timeout`, `connect`, `request` (failed before a response came,
    /// e.g. the connection closed), `body` (failed while reading the body) or `other`.
    Error(&'static str),
}

impl Outcome {
    fn is_ok(&self) -> bool {
        matches!(self, Outcome::Status(200..=299))
    }
}

/// One request.
#[derive(Debug, Clone)]
struct Sample {
    /// When it was due (sent, in closed loop), after the run's start.
    start: Duration,
    /// From `start` to the end of the response body, or to the error.
    latency: Duration,
    outcome: Outcome,
    cold_start: bool,
    /// The `--record-header` value, if the response had one.
    recorded: Option<String>,
}

/// Hands out the requests: which is next, and when it is due.
struct Schedule {
    start: Instant,
    stop: Stop,
    rate: Option<f64>,
    claimed: AtomicU64,
}

impl Schedule {
    /// The time the next request is due, or `None` when the run takes no more.
    fn next(&self) -> Option<Instant> {
        let index = self.claimed.fetch_add(1, Ordering::Relaxed);
        let due = match self.rate {
            Some(rate) => self.start + Duration::from_secs_f64(index as f64 / rate),
            None => Instant::now(),
        };
        let more = match self.stop {
            Stop::Requests(n) => index < n,
            Stop::After(duration) => due < self.start + duration,
        };
        more.then_some(due)
    }
}

/// All requests of a run, in order of start, and its wall time (to the last response).
#[derive(Debug)]
struct Run {
    samples: Vec<Sample>,
    elapsed: Duration,
}

async fn generate(plan: Arc<Plan>) -> anyhow::Result<Run> {
    let mut clients = Vec::new();
    for _ in 0..plan.concurrency {
        let client = reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            // measure the URL's own answer: a 3xx counts as failed, not the page it points to
            .redirect(reqwest::redirect::Policy::none())
            // a load test of localhost must not go through an http_proxy from the environment
            .no_proxy()
            .build()
            .context("building the HTTP client")?;
        clients.push(client);
    }
    let schedule = Arc::new(Schedule {
        start: Instant::now(),
        stop: plan.stop,
        rate: plan.rate,
        claimed: AtomicU64::new(0),
    });
    let workers: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::spawn(worker(plan.clone(), client, schedule.clone())))
        .collect();
    let mut samples = Vec::new();
    for w in workers {
        samples.extend(w.await.context("a load worker panicked")?);
    }
    let elapsed = schedule.start.elapsed();
    samples.sort_by_key(|s| s.start);
    Ok(Run { samples, elapsed })
}

async fn worker(plan: Arc<Plan>, client: reqwest::Client, schedule: Arc<Schedule>) -> Vec<Sample> {
    let mut samples = Vec::new();
    while let Some(due) = schedule.next() {
        tokio::time::sleep_until(due.into()).await;
        let response = tokio::time::timeout(plan.timeout, exchange(&plan, &client)).await;
        let latency = due.elapsed();
        let start = due - schedule.start;
        samples.push(match response {
            Ok(Ok(response)) => Sample {
                start,
                latency,
                ..response
            },
            Ok(Err(e)) => Sample::failed(start, latency, error_kind(&e)),
            Err(_elapsed) => Sample::failed(start, latency, "timeout"),
        });
    }
    samples
}

impl Sample {
    fn failed(start: Duration, latency: Duration, kind: &'static str) -> Self {
        Sample {
            start,
            latency,
            outcome: Outcome::Error(kind),
            cold_start: false,
            recorded: None,
        }
    }
}

/// Sends one request and reads the whole response; the caller fills in the timing.
async fn exchange(plan: &Plan, client: &reqwest::Client) -> reqwest::Result<Sample> {
    let mut request = client
        .request(plan.method.clone(), plan.url.clone())
        .headers(plan.headers.clone());
    if let Some(body) = &plan.body {
        request = request.body(body.clone());
    }
    let mut response = request.send().await?;
    let headers = response.headers();
    let cold_start = headers.contains_key(COLD_START_HEADER);
    let recorded = plan
        .record_header
        .as_ref()
        .and_then(|name| headers.get(name))
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let status = response.status().as_u16();
    // chunk by chunk: the body is read to its end (as a real client would) but never held whole
    while response.chunk().await?.is_some() {}
    Ok(Sample {
        start: Duration::ZERO,
        latency: Duration::ZERO,
        outcome: Outcome::Status(status),
        cold_start,
        recorded,
    })
}

fn error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else if e.is_request() {
        "request"
    } else {
        "other"
    }
}

/// What `--json` prints (and the text report shows).
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    url: String,
    concurrency: u32,
    /// `--rate`, if open loop.
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<f64>,
    requests: u64,
    /// 2xx responses.
    ok: u64,
    /// Non-2xx responses and transport errors.
    failed: u64,
    /// Responses by status code.
    statuses: BTreeMap<u16, u64>,
    /// Requests without a response, by error kind (see [`Outcome::Error`]).
    errors: BTreeMap<&'static str, u64>,
    /// Responses that carried `x-pronto-cold-start`.
    cold_starts: u64,
    /// From the first request to the last response.
    duration_seconds: f64,
    /// Requests (ok or failed) per second of `duration_seconds`.
    throughput: f64,
    /// Of the requests that got a response (any status): transport errors have no latency worth
    /// mixing in (a timeout would pin p99 to `--timeout`). `null` if none did.
    latency_ms: Option<Latency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record_header: Option<HeaderCounts>,
}

#[derive(Debug, serde::Serialize)]
struct Latency {
    min: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

/// Responses by the value of `--record-header`.
#[derive(Debug, serde::Serialize)]
struct HeaderCounts {
    name: String,
    values: BTreeMap<String, u64>,
    /// Responses without the header.
    missing: u64,
}

impl Report {
    fn new(plan: &Plan, run: &Run) -> Self {
        let mut statuses = BTreeMap::new();
        let mut errors = BTreeMap::new();
        let mut latencies = Vec::new();
        let mut values = BTreeMap::new();
        let mut missing = 0;
        let mut cold_starts = 0;
        for sample in &run.samples {
            match sample.outcome {
                Outcome::Status(code) => {
                    *statuses.entry(code).or_default() += 1;
                    latencies.push(sample.latency);
                    match &sample.recorded {
                        Some(value) => *values.entry(value.clone()).or_default() += 1,
                        None => missing += 1,
                    }
                }
                Outcome::Error(kind) => *errors.entry(kind).or_default() += 1,
            }
            cold_starts += u64::from(sample.cold_start);
        }
        let requests = run.samples.len() as u64;
        let ok = run.samples.iter().filter(|s| s.outcome.is_ok()).count() as u64;
        let seconds = run.elapsed.as_secs_f64();
        Report {
            url: plan.url.to_string(),
            concurrency: plan.concurrency,
            rate: plan.rate,
            requests,
            ok,
            failed: requests - ok,
            statuses,
            errors,
            cold_starts,
            duration_seconds: seconds,
            throughput: if seconds > 0.0 {
                requests as f64 / seconds
            } else {
                0.0
            },
            latency_ms: Latency::of(latencies),
            record_header: plan.record_header.as_ref().map(|name| HeaderCounts {
                name: name.to_string(),
                values,
                missing,
            }),
        }
    }
}

impl Latency {
    /// Exact percentiles (nearest rank) of a full sort: a run holds at most a few million
    /// samples, so no histogram's rounding is needed.
    fn of(mut latencies: Vec<Duration>) -> Option<Latency> {
        if latencies.is_empty() {
            return None;
        }
        latencies.sort_unstable();
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        let rank = |p: f64| {
            let index = (p / 100.0 * latencies.len() as f64).ceil() as usize;
            ms(&latencies[index.clamp(1, latencies.len()) - 1])
        };
        Some(Latency {
            min: rank(0.0),
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: rank(100.0),
        })
    }
}

/// `200 90, 500 10`, or `-` when empty.
fn counts<K: fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    let parts: Vec<String> = map.iter().map(|(k, n)| format!("{k} {n}")).collect();
    parts.join(", ")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = match self.rate {
            Some(rate) => format!("open loop, {rate} req/s"),
            None => "closed loop".into(),
        };
        writeln!(f, "url:         {}", self.url)?;
        writeln!(f, "load:        {} workers, {rate}", self.concurrency)?;
        writeln!(
            f,
            "requests:    {} (ok {}, failed {})",
            self.requests, self.ok, self.failed
        )?;
        writeln!(f, "statuses:    {}", counts(&self.statuses))?;
        writeln!(f, "errors:      {}", counts(&self.errors))?;
        writeln!(f, "cold starts: {}", self.cold_starts)?;
        writeln!(f, "duration:    {:.3} s", self.duration_seconds)?;
        writeln!(f, "throughput:  {:.1} req/s", self.throughput)?;
        match &self.latency_ms {
            Some(l) => writeln!(
                f,
                "latency ms:  min {:.2}  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
                l.min, l.p50, l.p90, l.p99, l.max
            )?,
            None => writeln!(f, "latency ms:  - (no responses)")?,
        }
        if let Some(h) = &self.record_header {
            writeln!(
                f,
                "{}: {} (missing {})",
                h.name,
                counts(&h.values),
                h.missing
            )?;
        }
        Ok(())
    }
}

/// `--out`: one tab-separated line per request, after a line naming the columns.
fn write_samples(
    out: &mut impl std::io::Write,
    samples: &[Sample],
    header: Option<&HeaderName>,
) -> std::io::Result<()> {
    let header = header.map_or("header", HeaderName::as_str);
    writeln!(out, "start_ms\tlatency_ms\tstatus\t{header}")?;
    for s in samples {
        let outcome = match &s.outcome {
            Outcome::Status(code) => code.to_string(),
            Outcome::Error(kind) => (*kind).to_string(),
        };
        writeln!(
            out,
            "{:.3}\t{:.3}\t{outcome}\t{}",
            s.start.as_secs_f64() * 1e3,
            s.latency.as_secs_f64() * 1e3,
            s.recorded.as_deref().unwrap_or("-")
        )?;
    }
    out.flush()
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let plan = Arc::new(args.plan()?);
    let run = generate(plan.clone()).await?;
    let report = Report::new(&plan, &run);
    if let Some(path) = &args.out {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        write_samples(
            &mut std::io::BufWriter::new(file),
            &run.samples,
            plan.record_header.as_ref(),
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    if args.fail_on_error && report.failed > 0 {
        bail!("{} of {} requests failed", report.failed, report.requests);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{ConnectInfo, State};
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::Router;
    use clap::Parser;
    use std::collections::BTreeSet;
    use std::net::SocketAddr;
    use std::sync::Mutex;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadArgs,
    }

    fn args(argv: &[&str]) -> LoadArgs {
        Cli::try_parse_from(std::iter::once("load").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    async fn load(argv: &[&str]) -> (Report, Run) {
        let plan = Arc::new(args(argv).plan().unwrap());
        let run = generate(plan.clone()).await.unwrap();
        (Report::new(&plan, &run), run)
    }

    /// What the test server saw: requests so far, and the client ports they came from.
    #[derive(Default)]
    struct Seen {
        hits: AtomicU64,
        peers: Mutex<BTreeSet<SocketAddr>>,
    }

    /// Serves on a free loopback port; the server ends with the test's runtime.
    async fn serve(router: Router<Arc<Seen>>) -> (String, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let app = router
            .with_state(seen.clone())
            .into_make_service_with_connect_info::<SocketAddr>();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    /// Counts the request and returns its number, from 1.
    fn hit(seen: &Seen, peer: SocketAddr) -> u64 {
        seen.peers.lock().unwrap().insert(peer);
        seen.hits.fetch_add(1, Ordering::SeqCst) + 1
    }

    async fn every_tenth_fails(
        State(seen): State<Arc<Seen>>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ) -> StatusCode {
        match hit(&seen, peer) % 10 {
            0 => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::OK,
        }
    }

    #[tokio::test]
    async fn load_counts_every_tenth_failure_exactly() {
        let (url, seen) = serve(Router::new().route("/", get(every_tenth_fails))).await;
        let (report, run) = load(&[&url, "--requests", "100", "--concurrency", "4"]).await;
        assert_eq!(seen.hits.load(Ordering::SeqCst), 100);
        assert_eq!(run.samples.len(), 100);
        assert_eq!((report.requests, report.ok, report.failed), (100, 90, 10));
        assert_eq!(report.statuses, BTreeMap::from([(200, 90), (500, 10)]));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.cold_starts, 0);
        assert!(report.throughput > 0.0);
        // keep-alive: one connection per worker, not one per request
        let peers = seen.peers.lock().unwrap().len();
        assert!(
            (1..=4).contains(&peers),
            "{peers} connections for 4 workers"
        );
    }

    #[tokio::test]
    async fn load_sends_exactly_the_requests_asked_for() {
        let (url, seen) = serve(Router::new().route("/", get(every_tenth_fails))).await;
        // more workers than requests, and a count no worker count divides
        for (n, workers) in [("1", "8"), ("7", "3")] {
            seen.hits.store(0, Ordering::SeqCst);
            let (report, _) = load(&[&url, "-n", n, "-c", workers]).await;
            let n: u64 = n.parse().unwrap();
            assert_eq!(report.requests, n);
            assert_eq!(seen.hits.load(Ordering::SeqCst), n);
        }
    }

    async fn slow(State(seen): State<Arc<Seen>>, ConnectInfo(peer): ConnectInfo<SocketAddr>) {
        // 0, 10, 20, 30, 40 ms in turn
        let n = hit(&seen, peer);
        tokio::time::sleep(Duration::from_millis(n % 5 * 10)).await;
    }

    async fn hang() {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }

    #[tokio::test]
    async fn load_latency_percentiles_are_ordered() {
        let (url, _) = serve(Router::new().route("/", get(slow))).await;
        let (report, _) = load(&[&url, "-n", "50", "-c", "5"]).await;
        assert_eq!(report.ok, 50);
        let l = report.latency_ms.unwrap();
        assert!(
            l.min <= l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max,
            "{l:?}"
        );
        assert!(l.max >= 40.0, "the 40 ms requests: {l:?}");
        assert!(l.min < 10.0, "the 0 ms requests: {l:?}");
    }

    #[tokio::test]
    async fn load_timeout_is_an_error_kind() {
        let (url, _) = serve(
            Router::new()
                .route("/", get(slow))
                .route("/hang", get(hang)),
        )
        .await;
        let started = Instant::now();
        let (report, run) = load(&[&format!("{url}/hang"), "-n", "3", "--timeout", "200ms"]).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the timeout held"
        );
        assert_eq!((report.requests, report.ok, report.failed), (3, 0, 3));
        assert_eq!(report.errors, BTreeMap::from([("timeout", 3)]));
        assert!(report.statuses.is_empty());
        assert!(report.latency_ms.is_none(), "errors have no latency");
        for s in &run.samples {
            assert!(s.latency >= Duration::from_millis(200), "{s:?}");
        }
    }

    #[tokio::test]
    async fn load_counts_connection_errors() {
        // a port nobody listens on
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/");
        let (report, _) = load(&[&url, "-n", "4", "-c", "2"]).await;
        assert_eq!(report.failed, 4);
        assert_eq!(report.errors, BTreeMap::from([("connect", 4)]));
    }

    async fn versioned(
        State(seen): State<Arc<Seen>>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let n = hit(&seen, peer);
        let mut headers = axum::http::HeaderMap::new();
        match n {
            // the first two are cold starts without a version
            1 | 2 => {
                headers.insert(COLD_START_HEADER, "total=120".parse().unwrap());
            }
            3..=10 => {
                headers.insert("x-pronto-version", "1".parse().unwrap());
            }
            _ => {
                headers.insert("x-pronto-version", "2".parse().unwrap());
            }
        }
        (headers, "hello").into_response()
    }

    #[tokio::test]
    async fn load_counts_by_recorded_header_and_cold_starts() {
        let (url, _) = serve(Router::new().route("/", get(versioned))).await;
        let argv = [
            url.as_str(),
            "-n",
            "25",
            "-c",
            "3",
            "--record-header",
            "X-Pronto-Version",
        ];
        let (report, run) = load(&argv).await;
        assert_eq!(report.ok, 25);
        assert_eq!(report.cold_starts, 2);
        let counts = report.record_header.as_ref().unwrap();
        assert_eq!(counts.name, "x-pronto-version");
        assert_eq!(
            counts.values,
            BTreeMap::from([("1".to_owned(), 8), ("2".to_owned(), 15)])
        );
        assert_eq!(counts.missing, 2);

        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["recordHeader"]["values"]["2"], 15);
        assert_eq!(json["coldStarts"], 2);
        assert_eq!(json["statuses"]["200"], 25);

        let mut tsv = Vec::new();
        write_samples(&mut tsv, &run.samples, plan_header(&argv).as_ref()).unwrap();
        let tsv = String::from_utf8(tsv).unwrap();
        let lines: Vec<&str> = tsv.lines().collect();
        assert_eq!(lines.len(), 26);
        assert_eq!(lines[0], "start_ms\tlatency_ms\tstatus\tx-pronto-version");
        let columns: Vec<&str> = lines[1].split('\t').collect();
        assert_eq!(columns.len(), 4, "{}", lines[1]);
        assert_eq!(columns[2], "200");
        assert_eq!(tsv.matches("\t200\t-\n").count(), 2, "{tsv}");
        assert_eq!(tsv.matches("\t200\t2\n").count(), 15, "{tsv}");
    }

    fn plan_header(argv: &[&str]) -> Option<HeaderName> {
        args(argv).plan().unwrap().record_header
    }

    #[tokio::test]
    async fn load_with_a_rate_is_paced() {
        let (url, _) = serve(Router::new().route("/", get(every_tenth_fails))).await;
        // 10 requests at 50/s: the last is due 180 ms after the start
        let (report, run) = load(&[&url, "-n", "10", "-c", "4", "--rate", "50"]).await;
        assert_eq!(report.requests, 10);
        assert!(report.duration_seconds >= 0.18, "{report:?}");
        let starts: Vec<f64> = run
            .samples
            .iter()
            .map(|s| (s.start.as_secs_f64() * 1e3).round())
            .collect();
        assert_eq!(
            starts,
            [0., 20., 40., 60., 80., 100., 120., 140., 160., 180.]
        );
    }

    #[tokio::test]
    async fn load_for_a_duration_stops_in_time() {
        let (url, _) = serve(Router::new().route("/", get(slow))).await;
        let (report, run) = load(&[&url, "--duration", "300ms", "-c", "2"]).await;
        assert!(report.requests > 0);
        assert!(report.duration_seconds >= 0.3, "{report:?}");
        // the last request started before the end, and took at most 40 ms (plus slack)
        assert!(report.duration_seconds < 2.0, "{report:?}");
        assert!(run
            .samples
            .iter()
            .all(|s| s.start < Duration::from_millis(300)));
    }

    #[test]
    fn load_flags_are_checked() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(
            parse_duration("10").unwrap_err(),
            r#""10": expected a duration such as 500ms, 10s, 2m or 1h"#
        );
        assert_eq!(
            parse_duration("3d").unwrap_err(),
            r#""3d": the unit must be ms, s, m or h"#
        );
        assert_eq!(
            parse_duration("0s").unwrap_err(),
            r#""0s": must be more than zero"#
        );
        assert_eq!(
            parse_rate("0").unwrap_err(),
            r#""0": expected requests per second, more than zero"#
        );
        let (name, value) = parse_header("X-Token:  abc ").unwrap();
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("x-token", "abc"));
        assert_eq!(
            parse_header("no colon").unwrap_err(),
            r#""no colon": expected 'Name: value'"#
        );

        let plan = args(&["http://h/", "--body", "x"]).plan().unwrap();
        assert_eq!(plan.method, Method::POST, "a body makes it a POST");
        assert!(matches!(plan.stop, Stop::After(d) if d == DEFAULT_DURATION));
        let plan = args(&["http://h/", "-X", "PUT", "-n", "5"]).plan().unwrap();
        assert_eq!(plan.method, Method::PUT);
        assert!(matches!(plan.stop, Stop::Requests(5)));
        let both = Cli::try_parse_from(["load", "http://h/", "-n", "5", "-d", "1s"]);
        assert!(
            both.is_err(),
            "--requests and --duration exclude each other"
        );
        let err = args(&["ftp://h/"]).plan().unwrap_err();
        assert_eq!(
            err.to_string(),
            "ftp://h/: the scheme must be http or https"
        );
    }

    #[test]
    fn load_percentiles_are_nearest_rank() {
        let ms = |n: u64| Duration::from_millis(n);
        let l = Latency::of((1..=100).rev().map(ms).collect()).unwrap();
        assert_eq!(
            (l.min, l.p50, l.p90, l.p99, l.max),
            (1.0, 50.0, 90.0, 99.0, 100.0)
        );
        let l = Latency::of(vec![ms(7)]).unwrap();
        assert_eq!((l.min, l.p50, l.p99, l.max), (7.0, 7.0, 7.0, 7.0));
        assert!(Latency::of(Vec::new()).is_none());
    }
}
