//! `GET /2023-03-30/functions/{functionName}/logs`: what the function's instances on this node
//! printed (stdout and stderr), kept after instances are reclaimed. Each line is
//! `TIME INSTANCE REQUEST MESSAGE` as the runtime's output pump wrote it
//! (`pronto_runtime::output`).
//!
//! Query: `tail` (the last N lines, default 100), `since` (RFC 3339: lines at or after it),
//! `instanceId`, `requestId` (only that instance's or request's lines), `follow` (then the
//! answer is `text/plain`, streamed: the lines so far, then each new line as it is written,
//! until the client goes away or the daemon stops).
//!
//! Lines of several instances are merged by time. Logs written before lines were stamped have
//! no time: they come first and match no `since` or `requestId`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body::Frame;
use pronto_runtime::output::{stamp, LogRecord};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{function_name, query_params, ApiError};
use crate::model::ValidationError;
use crate::AppState;

pub const DEFAULT_TAIL: usize = 100;
pub const MAX_TAIL: usize = 10_000;
/// How often a followed log is looked at for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct LogsQuery {
    tail: Option<i64>,
    since: Option<String>,
    instance_id: Option<String>,
    request_id: Option<String>,
    follow: Option<bool>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogsOutput {
    pub function_name: String,
    pub logs: String,
}

/// Which lines a query wants.
#[derive(Debug, Clone, Default)]
struct Filter {
    /// A stamp (same format as the lines'), compared as text.
    since: Option<String>,
    instance: Option<String>,
    request: Option<String>,
}

impl Filter {
    fn matches(&self, line: &str) -> bool {
        let Some(r) = LogRecord::parse(line) else {
            return self.since.is_none() && self.request.is_none();
        };
        self.since.as_deref().is_none_or(|s| r.time >= s)
            && self
                .request
                .as_deref()
                .is_none_or(|q| r.request_id == Some(q))
            && self.instance.as_deref().is_none_or(|i| r.instance == i)
    }

    /// The log files to read in `dir`: one instance's, or all.
    fn files(&self, dir: &Path) -> Vec<PathBuf> {
        if let Some(i) = &self.instance {
            // The rotated part first: it holds the older lines.
            return [format!("{i}.log.1"), format!("{i}.log")]
                .into_iter()
                .map(|n| dir.join(n))
                .filter(|p| p.is_file())
                .collect();
        }
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.ends_with(".log") || name.ends_with(".log.1")
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        files.sort();
        files.into_iter().map(|(_, p)| p).collect()
    }
}

fn parse_query(q: LogsQuery) -> Result<(usize, Filter, bool), ApiError> {
    let tail = match q.tail {
        None => DEFAULT_TAIL,
        Some(n) if (1..=MAX_TAIL as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ValidationError::new(
                "tail",
                format!("must be between 1 and {MAX_TAIL}, got {n}"),
            )
            .into())
        }
    };
    let since = match q.since {
        None => None,
        Some(s) => Some(
            time::OffsetDateTime::parse(&s, &Rfc3339)
                .map(stamp)
                .map_err(|_| {
                    ValidationError::new(
                        "since",
                        format!("must be an RFC 3339 time (2024-05-01T12:00:00Z), got {s:?}"),
                    )
                })?,
        ),
    };
    if let Some(i) = &q.instance_id {
        if i.is_empty() || i.len() > 64 || !i.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ValidationError::new(
                "instanceId",
                format!("must be an instance id (letters and digits), got {i:?}"),
            )
            .into());
        }
    }
    if let Some(r) = &q.request_id {
        if r.is_empty()
            || r.len() > crate::invoke::MAX_REQUEST_ID_LEN
            || !r.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ValidationError::new(
                "requestId",
                format!("must be 1 to 128 visible ASCII characters, got {r:?}"),
            )
            .into());
        }
    }
    let filter = Filter {
        since,
        instance: q.instance_id,
        request: q.request_id,
    };
    Ok((tail, filter, q.follow.unwrap_or(false)))
}

pub(super) async fn function_logs(
    State(state): State<AppState>,
    path: Result<UrlPath<String>, PathRejection>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let name = function_name(path)?;
    let q = query_params(query)?;
    let (tail, filter, follow) = parse_query(q)?;
    if !state.store.function_exists(&name).await? {
        return Err(ApiError::FunctionNotFound(name));
    }
    let dir = state.pool.node().function_log_dir(&name);
    let (f, d) = (filter.clone(), dir.clone());
    let (lines, offsets) = tokio::task::spawn_blocking(move || last_lines(&d, &f, tail))
        .await
        .unwrap_or_default();
    let mut logs = lines.join("\n");
    if !logs.is_empty() {
        logs.push('\n');
    }
    if !follow {
        return Ok(Json(LogsOutput {
            function_name: name,
            logs,
        })
        .into_response());
    }
    let (tx, rx) = mpsc::channel(16);
    let _ = tx.try_send(Bytes::from(logs));
    tokio::spawn(follow_logs(
        dir,
        filter,
        offsets,
        tx,
        state.shutdown.clone(),
    ));
    Ok((
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::new(ChannelBody(rx)),
    )
        .into_response())
}

/// The last `n` lines `name`'s instances printed, merged by time (the console's log view).
pub(crate) async fn recent_lines(state: &AppState, name: &str, n: usize) -> Vec<String> {
    let dir = state.pool.node().function_log_dir(name);
    tokio::task::spawn_blocking(move || last_lines(&dir, &Filter::default(), n).0)
        .await
        .unwrap_or_default()
}

/// Per file, how far it has been read (up to the end of its last complete line).
type Offsets = HashMap<PathBuf, u64>;

/// The complete lines of `bytes` and where the last one ends.
fn complete_lines(bytes: &[u8]) -> (Vec<String>, usize) {
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&bytes[..end]);
    (text.lines().map(str::to_string).collect(), end)
}

/// Sorts lines by their stamp (unstamped first), keeping each file's order among equals.
fn by_time(lines: &mut [String]) {
    lines.sort_by(|a, b| {
        let t = |l: &String| LogRecord::parse(l).map(|r| r.time.to_string());
        t(a).cmp(&t(b))
    });
}

/// The last `n` lines matching `filter` over the log files in `dir`, merged by time, and how
/// far each file was read.
fn last_lines(dir: &Path, filter: &Filter, n: usize) -> (Vec<String>, Offsets) {
    let mut lines = Vec::new();
    let mut offsets = Offsets::new();
    for path in filter.files(dir) {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let (file_lines, end) = complete_lines(&bytes);
        lines.extend(file_lines.into_iter().filter(|l| filter.matches(l)));
        offsets.insert(path, end as u64);
    }
    by_time(&mut lines);
    let skip = lines.len().saturating_sub(n);
    (lines.split_off(skip), offsets)
}

/// The lines written since `offsets` (files that appeared since included), and the new offsets.
fn new_lines(dir: &Path, filter: &Filter, offsets: &mut Offsets) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut lines = Vec::new();
    for path in filter.files(dir) {
        let from = offsets.get(&path).copied().unwrap_or(0);
        let Ok(mut f) = std::fs::File::open(&path) else {
            continue;
        };
        let len = f.metadata().map_or(0, |m| m.len());
        // Shorter than what was read: replaced; read it from the start.
        let from = if len < from { 0 } else { from };
        if len == from {
            continue;
        }
        let mut bytes = Vec::new();
        if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_end(&mut bytes).is_err() {
            continue;
        }
        let (file_lines, end) = complete_lines(&bytes);
        lines.extend(file_lines.into_iter().filter(|l| filter.matches(l)));
        offsets.insert(path, from + end as u64);
    }
    by_time(&mut lines);
    lines
}

/// Sends new lines until the client is gone or the daemon stops.
async fn follow_logs(
    dir: PathBuf,
    filter: Filter,
    mut offsets: Offsets,
    tx: mpsc::Sender<Bytes>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
        let (d, f, mut o) = (dir.clone(), filter.clone(), std::mem::take(&mut offsets));
        let Ok((lines, o)) = tokio::task::spawn_blocking(move || {
            let lines = new_lines(&d, &f, &mut o);
            (lines, o)
        })
        .await
        else {
            return;
        };
        offsets = o;
        if lines.is_empty() {
            continue;
        }
        let mut text = lines.join("\n");
        text.push('\n');
        if tx.send(Bytes::from(text)).await.is_err() {
            return;
        }
    }
}

/// A response body fed by a channel; it ends when the sender is dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbb";

    fn write(dir: &Path, instance: &str, lines: &[(&str, &str, &str)]) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{instance}.log")))
            .unwrap();
        for (t, req, msg) in lines {
            writeln!(f, "2026-01-01T00:00:{t}.000000Z {instance} {req} {msg}").unwrap();
        }
    }

    fn messages(lines: &[String]) -> Vec<&str> {
        lines
            .iter()
            .map(|l| LogRecord::parse(l).unwrap().message)
            .collect()
    }

    #[test]
    fn lines_of_all_instances_merge_by_time_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), A, &[("01", "r1", "a1"), ("03", "-", "a3")]);
        write(dir.path(), B, &[("02", "r2", "b2"), ("04", "r1", "b4")]);
        let all = Filter::default();
        let (lines, _) = last_lines(dir.path(), &all, 10);
        assert_eq!(messages(&lines), ["a1", "b2", "a3", "b4"]);
        let (lines, _) = last_lines(dir.path(), &all, 2);
        assert_eq!(messages(&lines), ["a3", "b4"], "the last ones");
        let since = Filter {
            since: Some("2026-01-01T00:00:02.000000Z".into()),
            ..Filter::default()
        };
        assert_eq!(
            messages(&last_lines(dir.path(), &since, 10).0),
            ["b2", "a3", "b4"]
        );
        let request = Filter {
            request: Some("r1".into()),
            ..Filter::default()
        };
        assert_eq!(
            messages(&last_lines(dir.path(), &request, 10).0),
            ["a1", "b4"]
        );
        let instance = Filter {
            instance: Some(B.into()),
            ..Filter::default()
        };
        assert_eq!(
            messages(&last_lines(dir.path(), &instance, 10).0),
            ["b2", "b4"]
        );
    }

    #[test]
    fn following_reads_only_complete_new_lines_of_old_and_new_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), A, &[("01", "-", "a1")]);
        let filter = Filter::default();
        let (_, mut offsets) = last_lines(dir.path(), &filter, 10);
        assert!(new_lines(dir.path(), &filter, &mut offsets).is_empty());
        write(dir.path(), A, &[("05", "-", "a5")]);
        write(dir.path(), B, &[("04", "-", "b4")]);
        // Half a line: not yet.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(format!("{A}.log")))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"2026-01-01T00:00:06.000000Z"))
            .unwrap();
        assert_eq!(
            messages(&new_lines(dir.path(), &filter, &mut offsets)),
            ["b4", "a5"]
        );
        assert!(new_lines(dir.path(), &filter, &mut offsets).is_empty());
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(format!("{A}.log")))
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!(" {A} - a6\n").as_bytes()))
            .unwrap();
        assert_eq!(
            messages(&new_lines(dir.path(), &filter, &mut offsets)),
            ["a6"]
        );
    }

    #[test]
    fn bad_queries_name_the_parameter() {
        let q = |since: Option<&str>, instance: Option<&str>, request: Option<&str>| LogsQuery {
            tail: None,
            since: since.map(str::to_string),
            instance_id: instance.map(str::to_string),
            request_id: request.map(str::to_string),
            follow: None,
        };
        let err = |q| parse_query(q).err().unwrap().to_string();
        assert!(err(q(Some("10m"), None, None)).starts_with("since: must be an RFC 3339 time"));
        assert!(err(q(None, Some("../x"), None)).starts_with("instanceId: "));
        assert!(err(q(None, None, Some("a b"))).starts_with("requestId: "));
        let (_, f, follow) = parse_query(q(Some("2026-01-01T01:00:00+01:00"), None, None)).unwrap();
        assert_eq!(f.since.as_deref(), Some("2026-01-01T00:00:00.000000Z"));
        assert!(!follow);
    }
}
