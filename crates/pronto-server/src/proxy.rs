//! Forwards one invocation to an instance and streams the response back.
//!
//! Method, path, query, headers and body pass through unchanged, except hop-by-hop headers
//! (RFC 9110 §7.6.1) and Pronto's own credentials, which never reach the function. Bodies are
//! streamed both ways: memory stays flat whatever their size.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response};
use axum::response::IntoResponse;
use hyper::body::{Frame, Incoming};

use crate::api::ApiError;
use crate::metrics::{ColdStartLabels, Metrics, PhaseLabels};
use crate::pool::{Lease, Pool, RunSpec};
use pronto_runtime::RootfsSource;

/// The header a cold start's response carries: where its time went, in milliseconds.
pub const COLD_START_HEADER: &str = "x-pronto-cold-start";
/// The instance that served the request.
pub const INSTANCE_HEADER: &str = "x-pronto-instance";

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// When an invocation passed the invoke handler's steps, before the pool: the start of a cold
/// start's breakdown.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// The request reached the invoke handler.
    pub arrived: Instant,
    /// Its function was read from the store and the caller's token checked.
    pub looked_up: Instant,
    /// The function's image was at hand (rebuilt from what was kept; resolved against the
    /// registry only for functions stored before images were kept).
    pub resolved: Instant,
}

/// Sends `req` (already stripped of the `/invoke/NAME` prefix: `path_and_query` is what the
/// function sees) to an instance of `spec`. `marks` say when the request arrived and passed
/// the handler's steps: a cold start's breakdown covers the time from arrival to first byte.
pub async fn forward(
    pool: &Arc<Pool>,
    metrics: &Metrics,
    spec: &RunSpec,
    req: Request<Body>,
    path_and_query: &str,
    marks: Arrival,
) -> Response<Body> {
    let mut lease = match pool.acquire(spec).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "no instance for the request");
            return ApiError::from(e).into_response();
        }
    };
    tracing::Span::current().record("instance", lease.instance.id.as_str());
    if spec.concurrency == 1 {
        // The instance serves only this request: what it prints is this request's.
        if let Some(id) = req
            .headers()
            .get(crate::invoke::REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            lease.tag_output(id).await;
        }
    }
    let (parts, body) = req.into_parts();
    let mut out = Request::builder().method(parts.method).uri(path_and_query);
    let headers = out.headers_mut().expect("fresh builder");
    copy_end_to_end(&parts.headers, headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove("x-fc-invocation-target");
    let out = out.body(body).expect("valid request parts");

    // The function's timeout bounds its own work, from the moment it has the request; the
    // wait for an instance had its own bound (the same length), past which the caller got 429.
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let sent = tokio::time::timeout_at(deadline, async {
        let conn = lease.connection().await?;
        conn.send_request(out).await.map_err(std::io::Error::other)
    })
    .await;
    let response = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(source)) => {
            let instance = lease.instance.clone();
            let (function, id) = (spec.name().to_string(), instance.id.clone());
            let e = if instance.oom_killed() {
                ApiError::OutOfMemory {
                    function,
                    instance: id,
                    memory_mb: spec.instance.memory_mb,
                }
            } else {
                ApiError::FunctionFailed {
                    function,
                    instance: id,
                    source,
                    log_tail: instance.log_tail(),
                }
            };
            drop(lease);
            tracing::warn!(error = %e, "the function failed the request");
            pool.recycle(spec.name(), &instance.id);
            return with_instance(e.into_response(), &instance.id);
        }
        Err(_) => {
            let id = lease.instance.id.clone();
            drop(lease);
            // It may be stuck for good: take it out of service.
            pool.recycle(spec.name(), &id);
            let e = ApiError::FunctionTimeout {
                function: spec.name().to_string(),
                timeout: spec.timeout,
            };
            tracing::warn!(error = %e, "the function timed out; its instance is recycled");
            return with_instance(e.into_response(), &id);
        }
    };
    let first_byte = Instant::now();
    let (parts, body) = response.into_parts();
    let mut builder = Response::builder().status(parts.status);
    let headers = builder.headers_mut().expect("fresh builder");
    copy_end_to_end(&parts.headers, headers);
    headers.insert(
        HeaderName::from_static(INSTANCE_HEADER),
        HeaderValue::from_str(&lease.instance.id).expect("hex id"),
    );
    let breakdown = Breakdown::of(&lease, marks, first_byte);
    if let Some(b) = &breakdown {
        pool.keep_access_trace(&lease, spec, b.start_profile(&lease));
        lease.instance.start_is_over();
        b.record(metrics, spec.name());
        tracing::info!(
            rootfs = b.rootfs,
            ms = b.total().as_millis() as u64,
            breakdown = %b.header(),
            "cold start"
        );
        headers.insert(
            HeaderName::from_static(COLD_START_HEADER),
            HeaderValue::from_str(&b.header()).expect("ascii"),
        );
    }
    if http_body::Body::is_end_stream(&body) {
        // Nothing to stream: nobody may poll the body, so release the connection now.
        lease.mark_reusable();
    }
    let mut response = builder
        .body(Body::new(LeasedBody {
            inner: body,
            lease: Some(lease),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            timeout: spec.timeout,
        }))
        .expect("valid response parts");
    if let Some(b) = breakdown {
        // For the invoke path's record of recent invocations (`crate::recent`).
        response.extensions_mut().insert(b);
    }
    response
}

/// Where a cold start's time went, from the request's arrival to the first byte of the
/// response, in consecutive phases: they add up to the total by construction.
///
/// | phase | from the end of the one before to |
/// |---|---|
/// | `lookup` | the function read and the caller's token checked (from arrival) |
/// | `resolve` | the function's image at hand |
/// | `queue` | the cold start begins: waiting for room among `maxInstances`, the stored access trace read |
/// | `auth` | registry credentials for the image's repository at hand (answered now if the start needs the registry and none was cached) |
/// | `pull`, `mount` or `local` | the rootfs's lower dir ready: a full pull (download, unpack), a lazy mount (artifact, index, FUSE, prefetch started), or the image already on the node |
/// | `setup` | overlay, network namespace, bundle, output pipe made |
/// | `start` | the OCI runtime's `create` and `start` done |
/// | `ready` | the function's port answered HTTP |
/// | `response` | the function's response headers arrived (connection, request, the function's own work) |
#[derive(Debug, Clone, PartialEq)]
pub struct Breakdown {
    /// (name, duration), in order.
    pub phases: Vec<(&'static str, Duration)>,
    /// `pulled`, `lazy`, `lazy+prefetch` or `local`.
    pub rootfs: &'static str,
    pub image_pulled: bool,
    pub prefetched: bool,
}

impl Breakdown {
    /// The breakdown of `lease`'s cold start, if it made one; `first_byte` is when the
    /// response headers came back.
    fn of(lease: &Lease, marks: Arrival, first_byte: Instant) -> Option<Self> {
        let t = lease.cold_start?;
        let began = lease.cold_start_began?;
        let rootfs_phase = match t.rootfs {
            RootfsSource::Pulled => "pull",
            RootfsSource::Lazy => "mount",
            RootfsSource::Local => "local",
        };
        let points = [
            ("lookup", marks.looked_up),
            ("resolve", marks.resolved),
            ("queue", began),
            ("auth", began + t.auth_done),
            (rootfs_phase, began + t.image_ready),
            ("setup", began + t.setup_done),
            ("start", began + t.container_started),
            ("ready", began + t.app_ready),
            ("response", first_byte),
        ];
        let mut phases = Vec::with_capacity(points.len());
        let mut at = marks.arrived;
        for (name, end) in points {
            // Marks only grow; clocks of different steps are the same monotonic clock.
            let end = end.max(at);
            phases.push((name, end - at));
            at = end;
        }
        Some(Breakdown {
            phases,
            rootfs: match (t.rootfs, t.prefetched) {
                (RootfsSource::Lazy, true) => "lazy+prefetch",
                (r, _) => r.as_str(),
            },
            image_pulled: t.image_pulled,
            prefetched: t.prefetched,
        })
    }

    /// What this start spent besides the image (see [`crate::explain::StartProfile`]): the
    /// setup and start phases, and the program's time to its first byte less the time its
    /// reads waited on fetches (the lazy mount's fetch latencies).
    pub fn start_profile(&self, lease: &Lease) -> crate::explain::StartProfile {
        let ms = |names: &[&str]| -> f64 {
            self.phases
                .iter()
                .filter(|(n, _)| names.contains(n))
                .map(|(_, d)| d.as_secs_f64() * 1e3)
                .sum()
        };
        // What the program's reads waited on the registry: its own misses, and chunks the
        // stream, read-ahead or another reader had in flight.
        let fetch_wait_ms = lease.instance.lazy_stats().map_or(0.0, |s| {
            (s.fetch_micros_total + s.flight_wait_micros) as f64 / 1e3
        });
        let program = ms(&["ready", "response"]);
        crate::explain::StartProfile {
            setup_ms: ms(&["setup", "start"]),
            program_ms: (program - fetch_wait_ms).max(0.0),
            fetch_wait_ms: fetch_wait_ms.min(program),
        }
    }

    pub fn total(&self) -> Duration {
        self.phases.iter().map(|(_, d)| *d).sum()
    }

    /// `total=..;lookup=..;...;response=..;imageReady=..;containerStarted=..;appReady=..;
    /// firstByte=..;imagePulled=..;rootfs=..;prefetch=..`: whole milliseconds, first each
    /// phase's own, then the cumulative marks since arrival (`firstByte` is the total). Each
    /// phase is the difference of its rounded marks, so the phases add up to `total` exactly.
    pub fn header(&self) -> String {
        let ms = |d: Duration| d.as_millis();
        let mut phases = String::new();
        let mut marks = String::new();
        let (mut at, mut at_ms) = (Duration::ZERO, 0);
        for (i, (name, d)) in self.phases.iter().enumerate() {
            at += *d;
            let end_ms = ms(at);
            phases.push_str(&format!(";{name}={}", end_ms - at_ms));
            at_ms = end_ms;
            // The older cumulative fields: after the rootfs, start, ready and response phases.
            let mark = match (i, *name) {
                (4, _) => "imageReady",
                (_, "start") => "containerStarted",
                (_, "ready") => "appReady",
                (_, "response") => "firstByte",
                _ => continue,
            };
            marks.push_str(&format!(";{mark}={end_ms}"));
        }
        let rootfs = self.rootfs.split('+').next().unwrap_or(self.rootfs);
        format!(
            "total={at_ms}{phases}{marks};imagePulled={};rootfs={rootfs};prefetch={}",
            self.image_pulled, self.prefetched
        )
    }

    fn record(&self, metrics: &Metrics, function: &str) {
        let labels = ColdStartLabels {
            function: function.to_string(),
            rootfs: self.rootfs.to_string(),
        };
        metrics.cold_starts.get_or_create(&labels).inc();
        metrics
            .cold_start_seconds
            .get_or_create(&labels)
            .observe(self.total().as_secs_f64());
        for (phase, d) in &self.phases {
            metrics
                .cold_start_phase_seconds
                .get_or_create(&PhaseLabels {
                    function: function.to_string(),
                    phase: phase.to_string(),
                })
                .observe(d.as_secs_f64());
        }
    }
}

fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let listed: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for (name, value) in from {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || listed.iter().any(|l| l == n) {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// Names the instance a failed request went to.
fn with_instance(mut r: Response<Body>, id: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(id) {
        r.headers_mut()
            .insert(HeaderName::from_static(INSTANCE_HEADER), v);
    }
    r
}

/// The instance's response body, holding the lease until the last byte (so the instance counts
/// as busy while it streams) and marking the connection reusable when it ends cleanly.
struct LeasedBody {
    inner: Incoming,
    lease: Option<Lease>,
    /// The function's timeout bounds the whole response, a streamed body too: past it the body
    /// ends in an error (the client sees a cut response) and the instance is recycled.
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

/// A response body cut at the function's timeout.
#[derive(Debug, thiserror::Error)]
#[error("the function's response did not complete within its timeout of {0:?}")]
struct BodyTimeout(Duration);

impl http_body::Body for LeasedBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.lease.is_some() && self.deadline.as_mut().poll(cx).is_ready() {
            if let Some(lease) = self.lease.take() {
                tracing::warn!(function = %lease.function, instance = %lease.instance.id,
                    timeout = ?self.timeout, "response body cut at the function's timeout; instance recycled");
                lease.recycle();
            }
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(self.timeout)))));
        }
        let polled = Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(|e| e.into());
        match &polled {
            Poll::Ready(None) => {
                if let Some(mut lease) = self.lease.take() {
                    lease.mark_reusable();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                self.lease = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_names_every_phase_and_they_add_up_to_the_total() {
        let micros = |u| Duration::from_micros(u);
        let b = Breakdown {
            phases: vec![
                ("lookup", micros(600)),
                ("resolve", micros(600)),
                ("queue", micros(2_600)),
                ("auth", micros(1_400)),
                ("pull", micros(900_700)),
                ("setup", micros(600)),
                ("start", micros(40_600)),
                ("ready", micros(10_600)),
                ("response", micros(5_600)),
            ],
            rootfs: "pulled",
            image_pulled: true,
            prefetched: false,
        };
        assert_eq!(b.total(), micros(963_300));
        assert_eq!(
            b.header(),
            // Marks 0.6, 1.2, 3.8, 5.2, 905.9, 906.5, 947.1, 957.7, 963.3 ms, truncated; each
            // phase the difference of two of them.
            "total=963;lookup=0;resolve=1;queue=2;auth=2;pull=900;setup=1;start=41;ready=10;\
             response=6;imageReady=905;containerStarted=947;appReady=957;firstByte=963;\
             imagePulled=true;rootfs=pulled;prefetch=false"
        );
    }
}
