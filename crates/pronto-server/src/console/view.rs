//! What the console's templates show, computed from the store, the pool and the record of
//! recent invocations.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Response;
use serde::Serialize;

use crate::api::{ApiError, FunctionView};
use crate::model::format_time;
use crate::proxy::{Breakdown, COLD_START_HEADER, INSTANCE_HEADER};
use crate::recent::Invocation;
use crate::store::ListQuery;
use crate::AppState;

/// Functions listed at most (the API pages through more).
const MAX_LISTED: usize = 1000;

/// One line of the function list.
#[derive(Debug, Serialize)]
pub struct FunctionRow {
    pub name: String,
    pub image: String,
    /// `Successful` or `InProgress` (an update waiting for its acceleration).
    pub update: String,
    /// `Preparing`, `Ready`, `Failed`, or `None` (not accelerated).
    pub acceleration: String,
    pub idle: usize,
    pub busy: usize,
    pub starting: usize,
    /// The last invocation: its status and when.
    pub last_status: Option<u16>,
    pub last_time: Option<String>,
}

pub(super) async fn function_rows(app: &AppState) -> Result<Vec<FunctionRow>, ApiError> {
    let mut rows = Vec::new();
    let mut after = None;
    loop {
        let page = app
            .store
            .list_functions(ListQuery {
                prefix: None,
                after: after.clone(),
                limit: 100,
            })
            .await?;
        let done = page.len() < 100 || rows.len() + page.len() >= MAX_LISTED;
        after = page.last().map(|f| f.spec.function_name.clone());
        for f in &page {
            let v = FunctionView::from(f);
            let (instances, starting) = app.pool.instances(&v.function_name);
            let last = app.recent.of(&v.function_name).into_iter().next();
            rows.push(FunctionRow {
                image: v.custom_container_config.image.clone(),
                update: v.last_update_status.clone(),
                acceleration: acceleration_word(&v),
                idle: instances.iter().filter(|i| i.state == "idle").count(),
                busy: instances.iter().filter(|i| i.state != "idle").count(),
                starting,
                last_status: last.as_ref().map(|l| l.status),
                last_time: last.map(|l| format_time(l.time)),
                name: v.function_name,
            });
        }
        if done {
            return Ok(rows);
        }
    }
}

fn acceleration_word(v: &FunctionView) -> String {
    match &v.acceleration_info {
        Some(a) => format!("{:?}", a.status),
        None => "None".to_string(),
    }
}

/// One function's page.
#[derive(Debug, Serialize)]
pub struct FunctionDetail {
    /// As `GetFunction` answers it.
    pub function: FunctionView,
    pub acceleration: String,
    /// The artifact's bytes (index and packs), when `Ready`.
    pub artifact_bytes: Option<String>,
    pub instances: Vec<InstanceRow>,
    pub starting: usize,
    pub invocations: Vec<InvocationRow>,
}

#[derive(Debug, Serialize)]
pub struct InstanceRow {
    pub id: String,
    pub track: String,
    pub state: &'static str,
    pub in_flight: usize,
    pub provisioned: Option<String>,
    pub idle_for: String,
}

#[derive(Debug, Serialize)]
pub struct InvocationRow {
    pub time: String,
    pub request_id: String,
    pub version: String,
    pub status: u16,
    pub duration: String,
    pub instance: Option<String>,
    pub cold: Option<ColdBar>,
}

impl From<Invocation> for InvocationRow {
    fn from(i: Invocation) -> Self {
        InvocationRow {
            time: format_time(i.time),
            request_id: i.request_id,
            version: i.version,
            status: i.status,
            duration: ms(i.duration),
            instance: i.instance,
            cold: i.cold_start.as_ref().map(ColdBar::of),
        }
    }
}

pub(super) async fn function_detail(
    app: &AppState,
    name: &str,
) -> Result<FunctionDetail, ApiError> {
    let f = app.store.get_function(name).await?;
    let f = app.store.with_trace(f).await?;
    let function = FunctionView::from(&f);
    let (instances, starting) = app.pool.instances(name);
    let artifact_bytes = function.acceleration_info.as_ref().and_then(|a| {
        let total = a.index_size.unwrap_or(0) + a.stored_bytes?;
        Some(bytes(total))
    });
    Ok(FunctionDetail {
        acceleration: acceleration_word(&function),
        artifact_bytes,
        instances: instances
            .into_iter()
            .map(|i| InstanceRow {
                id: i.id,
                track: i.track,
                state: i.state,
                in_flight: i.in_flight,
                provisioned: i.provisioned,
                idle_for: format!("{} s", i.idle_for.as_secs()),
            })
            .collect(),
        starting,
        invocations: app.recent.of(name).into_iter().map(Into::into).collect(),
        function,
    })
}

/// A cold start's breakdown as a bar of four segments, one per milestone the start passes:
/// image ready (every phase up to the rootfs's lower dir: lookup, resolve, queue, auth and
/// pull/mount/local), container started (setup, start), app ready (the port answers) and
/// first byte (the response's headers). Widths are shares of the total on a 0–1000 scale
/// (an SVG `viewBox`: no inline styles, which the console's CSP forbids).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ColdBar {
    pub total_ms: u128,
    /// `pulled`, `lazy`, `lazy+prefetch` or `local`.
    pub rootfs: String,
    pub segments: Vec<Segment>,
    /// Every phase, `name ms`, for the tooltip and the detail line.
    pub phases: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Segment {
    /// `image`, `container`, `app`, `response` (the CSS class is `seg-<kind>`).
    pub kind: &'static str,
    /// The milestone it ends at.
    pub label: &'static str,
    pub ms: u128,
    pub x: f64,
    pub width: f64,
}

impl ColdBar {
    pub fn of(b: &Breakdown) -> ColdBar {
        let groups: [(&str, &str, &[&str]); 4] = [
            (
                "image",
                "image ready",
                &[
                    "lookup", "resolve", "queue", "auth", "pull", "mount", "local",
                ],
            ),
            ("container", "container started", &["setup", "start"]),
            ("app", "app ready", &["ready"]),
            ("response", "first byte", &["response"]),
        ];
        let total = b.total();
        let mut segments = Vec::new();
        let mut x = 0.0;
        for (kind, label, names) in groups {
            let d: Duration = b
                .phases
                .iter()
                .filter(|(n, _)| names.contains(n))
                .map(|(_, d)| *d)
                .sum();
            let width = if total.is_zero() {
                0.0
            } else {
                1000.0 * d.as_secs_f64() / total.as_secs_f64()
            };
            segments.push(Segment {
                kind,
                label,
                ms: d.as_millis(),
                x,
                width,
            });
            x += width;
        }
        ColdBar {
            total_ms: total.as_millis(),
            rootfs: b.rootfs.to_string(),
            segments,
            phases: b
                .phases
                .iter()
                .map(|(n, d)| format!("{n} {}", ms(*d)))
                .collect::<Vec<_>>()
                .join(" · "),
        }
    }
}

/// What the invoke form got back.
#[derive(Debug, Serialize)]
pub struct InvokeResult {
    pub status: Option<u16>,
    pub duration: String,
    pub request_id: Option<String>,
    pub instance: Option<String>,
    pub cold_start: Option<String>,
    pub body: String,
    /// Set when the console refused to send it, or the body could not be shown.
    pub note: Option<String>,
}

impl InvokeResult {
    pub(super) fn refused(why: String) -> InvokeResult {
        InvokeResult {
            status: None,
            duration: String::new(),
            request_id: None,
            instance: None,
            cold_start: None,
            body: String::new(),
            note: Some(why),
        }
    }

    pub(super) async fn read(r: Response<Body>, started: Instant, limit: usize) -> InvokeResult {
        let duration = ms(started.elapsed());
        // In a block: a borrow of the response (its body is not `Sync`) must not live across
        // the await below.
        let (status, request_id, instance, cold_start) = {
            let header = |name: &str| {
                r.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            (
                r.status().as_u16(),
                header(crate::invoke::REQUEST_ID_HEADER),
                header(INSTANCE_HEADER),
                header(COLD_START_HEADER),
            )
        };
        let (body, note) = match axum::body::to_bytes(r.into_body(), limit).await {
            Ok(b) => (String::from_utf8_lossy(&b).into_owned(), None),
            Err(e) => (
                String::new(),
                Some(format!(
                    "body not shown (over {} or cut: {e})",
                    bytes(limit as u64)
                )),
            ),
        };
        InvokeResult {
            status: Some(status),
            duration,
            request_id,
            instance,
            cold_start,
            body,
            note,
        }
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_groups_the_phases_into_four_milestones_that_fill_it() {
        let ms = Duration::from_millis;
        let b = Breakdown {
            phases: vec![
                ("lookup", ms(1)),
                ("resolve", ms(1)),
                ("queue", ms(2)),
                ("auth", ms(6)),
                ("mount", ms(90)),
                ("setup", ms(20)),
                ("start", ms(80)),
                ("ready", ms(300)),
                ("response", ms(500)),
            ],
            rootfs: "lazy",
            image_pulled: false,
            prefetched: false,
        };
        let bar = ColdBar::of(&b);
        assert_eq!(bar.total_ms, 1000);
        let got: Vec<(&str, u128, f64, f64)> = bar
            .segments
            .iter()
            .map(|s| (s.kind, s.ms, s.x.round(), s.width.round()))
            .collect();
        assert_eq!(
            got,
            [
                ("image", 100, 0.0, 100.0),
                ("container", 100, 100.0, 100.0),
                ("app", 300, 200.0, 300.0),
                ("response", 500, 500.0, 500.0)
            ]
        );
        assert!(
            bar.phases.starts_with("lookup 1.0 ms · resolve 1.0 ms"),
            "{}",
            bar.phases
        );
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 + 512 * 1024), "3.5 MiB");
    }
}

/// The explain page: [`crate::explain::Explanation`] cut to what a page shows.
#[derive(Debug, Serialize)]
pub struct ExplainView {
    pub image: String,
    pub files_read: u64,
    pub image_files: u64,
    pub bytes_read: String,
    pub image_bytes: String,
    pub read_percent: String,
    pub bytes_fetched: String,
    pub untouched_percent: String,
    pub read: Vec<FileRow>,
    pub more_read: usize,
    pub untouched: Vec<FileRow>,
    pub link: String,
    pub model: String,
    pub paths: Vec<PathRow>,
    /// The recorded start's setup / program / waiting, when it was kept.
    pub profile: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FileRow {
    pub n: usize,
    pub path: String,
    pub read: String,
    pub size: String,
}

/// One way to start the function, predicted.
#[derive(Debug, Serialize)]
pub struct PathRow {
    pub label: &'static str,
    pub bytes: String,
    pub round_trips: u64,
    pub transfer: String,
    /// Predicted cold start, and its parts as widths (per mille of the slowest path's).
    pub cold_start: Option<String>,
    pub image_width: u64,
    pub local_width: u64,
}

pub(super) fn explain_view(e: &crate::explain::Explanation, top: usize) -> ExplainView {
    let percent = |n: u64, of: u64| {
        if of == 0 {
            "0.0".to_string()
        } else {
            format!("{:.1}", 100.0 * n as f64 / of as f64)
        }
    };
    let row = |(i, f): (usize, &crate::explain::FileUse)| FileRow {
        n: i + 1,
        path: f.path.clone(),
        read: bytes(f.bytes_read),
        size: bytes(f.size),
    };
    let p = &e.prediction;
    let cold = p.cold_start.as_ref();
    let local_ms = e.start_profile.map_or(0.0, |s| s.setup_ms + s.program_ms);
    let paths = [
        ("Full pull", &p.full, cold.map(|c| c.full_ms)),
        (
            "Accelerated, first start",
            &p.accelerated,
            cold.map(|c| c.accelerated_ms),
        ),
        (
            "Accelerated + prefetch",
            &p.prefetched,
            cold.map(|c| c.prefetched_ms),
        ),
    ];
    let slowest = paths
        .iter()
        .map(|(_, t, c)| c.unwrap_or(t.seconds * 1e3))
        .fold(1e-9, f64::max);
    let width = |ms: f64| (1000.0 * ms / slowest).round().max(0.0) as u64;
    ExplainView {
        image: e.resolved_image_uri.clone(),
        files_read: e.files_read,
        image_files: e.image_files,
        bytes_read: bytes(e.bytes_read),
        image_bytes: bytes(e.image_file_bytes),
        read_percent: percent(e.bytes_read, e.image_file_bytes),
        bytes_fetched: bytes(e.bytes_fetched),
        untouched_percent: format!("{:.1}", 100.0 * e.untouched_share),
        read: e.read.iter().take(top).enumerate().map(row).collect(),
        more_read: e.read.len().saturating_sub(top),
        untouched: e
            .largest_untouched
            .iter()
            .take(top)
            .enumerate()
            .map(row)
            .collect(),
        link: format!(
            "{:.0} Mbit/s, {:.1} ms RTT",
            p.link.bits_per_second / 1e6,
            p.link.rtt_seconds * 1e3
        ),
        model: p.model.clone(),
        paths: paths
            .iter()
            .map(|(label, t, c)| {
                let total = c.unwrap_or(t.seconds * 1e3);
                let local = if c.is_some() {
                    local_ms.min(total)
                } else {
                    0.0
                };
                PathRow {
                    label,
                    bytes: bytes(t.bytes),
                    round_trips: t.round_trips,
                    transfer: format!("{:.2} s", t.seconds),
                    cold_start: c.map(|ms| format!("{:.2} s", ms / 1e3)),
                    image_width: width(total - local),
                    local_width: width(local),
                }
            })
            .collect(),
        profile: e.start_profile.map(|s| {
            format!(
                "setup {:.0} ms, program {:.0} ms, waiting on the registry {:.0} ms",
                s.setup_ms, s.program_ms, s.fetch_wait_ms
            )
        }),
    }
}
