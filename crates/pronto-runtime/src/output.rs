//! An instance's output: the container's stdout and stderr go to a pipe whose read end a task
//! of the daemon pumps into `logs/<function>/<id>.log`, one line at a time, each line prefixed
//! with when it was read, the instance and the request it is serving:
//!
//! ```text
//! 2026-12-06T15:20:01.123456Z 0a1b2c3d4e5f 6f1d...-uuid GET / from the function
//! 2026-12-06T15:20:02.000001Z 0a1b2c3d4e5f - a line printed between requests
//! ```
//!
//! - The time is UTC with microseconds, always the same width, so the text of two stamps
//!   sorts as their times do.
//! - The request id is `-` unless the instance serves one request at a time and one is in
//!   flight ([`RequestTag`], set by the scheduler); with several at once no line can be
//!   attributed. A line takes the tag current when the pump reads it, so changing the tag
//!   first waits (briefly, bounded) until the pipe is empty: lines printed before a request
//!   began, or by a request that ended, keep their own tag. Best effort: a line read in the
//!   microseconds between the pump's read and its look at the tag can get the next one.
//! - A line longer than [`MAX_LINE`] bytes is cut into several (memory stays bounded whatever
//!   the function prints); bytes are kept as they are (not necessarily UTF-8).
//!
//! Why a pipe and not the file itself as the container's stdout: only the daemon can stamp a
//! line when it is written. The cost is the daemon's life: if it dies, the read end closes and
//! the function's next write gets `EPIPE` (or `SIGPIPE`, which ends it) instead of blocking
//! forever; the next daemon's crash cleanup tears the instance down anyway. While the daemon
//! lives, a function that prints faster than the disk takes its lines blocks on the full pipe,
//! as it would on a slow terminal.
//!
//! Bounded on disk ([`LogLimits`]): an instance's file is rotated when it reaches 8 MiB (to
//! `<id>.log.1`, replacing the previous one), so one instance keeps at most 16 MiB; and when a
//! pump starts, the function's oldest log files go until the function's logs fit in 64 MiB.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

/// Longest line kept whole, in bytes; longer ones are cut.
pub const MAX_LINE: usize = 16 * 1024;

/// How much log a function keeps on the node.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// An instance's file is rotated (to `<id>.log.1`) when it reaches this.
    pub file_bytes: u64,
    /// A function's log directory is pruned, oldest files first, to this when an instance
    /// starts.
    pub function_bytes: u64,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            file_bytes: 8 << 20,
            function_bytes: 64 << 20,
        }
    }
}

/// The request field of a line printed outside any (known) request.
pub const NO_REQUEST: &str = "-";

const STAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// `t` as a log line's stamp (`2026-12-06T15:20:01.123456Z`).
pub fn stamp(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(STAMP)
        .expect("every UTC time formats")
}

/// How long a tag change waits for the pipe to empty.
const RETAG_DRAIN: Duration = Duration::from_millis(50);

/// The request an instance is serving, when it serves one at a time: its output lines carry
/// the id. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct RequestTag(Arc<TagInner>);

#[derive(Debug, Default)]
struct TagInner {
    current: Mutex<Option<String>>,
    /// The pipe's read end (a duplicate), to see whether lines are still waiting in it.
    pipe: Option<OwnedFd>,
}

impl RequestTag {
    fn with_pipe(pipe: OwnedFd) -> RequestTag {
        RequestTag(Arc::new(TagInner {
            current: Mutex::default(),
            pipe: Some(pipe),
        }))
    }

    /// Lines printed from now on belong to `request_id` (once those already printed are read).
    pub async fn begin(&self, request_id: &str) {
        self.drain().await;
        *self.lock() = Some(request_id.to_string());
    }

    /// `request_id` is over (once the lines it printed are read); a later request's tag is
    /// left alone.
    pub async fn end(&self, request_id: &str) {
        self.drain().await;
        let mut current = self.lock();
        if current.as_deref() == Some(request_id) {
            *current = None;
        }
    }

    pub fn get(&self) -> Option<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.0.current.lock().expect("request tag poisoned")
    }

    /// Waits (bounded) until nothing is waiting in the pipe.
    async fn drain(&self) {
        let Some(pipe) = &self.0.pipe else { return };
        let deadline = tokio::time::Instant::now() + RETAG_DRAIN;
        while rustix::io::ioctl_fionread(pipe).is_ok_and(|n| n > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// One line of an instance log, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRecord<'a> {
    /// The stamp, as written (RFC 3339, UTC, microseconds).
    pub time: &'a str,
    pub instance: &'a str,
    /// `None` for `-`.
    pub request_id: Option<&'a str>,
    pub message: &'a str,
}

impl<'a> LogRecord<'a> {
    /// A line as the pump writes it; `None` if it is not one (say, from before the pump).
    pub fn parse(line: &'a str) -> Option<LogRecord<'a>> {
        let mut parts = line.splitn(4, ' ');
        let time = parts.next()?;
        let instance = parts.next()?;
        let request = parts.next()?;
        let message = parts.next().unwrap_or("");
        if time.len() != 27 || !time.ends_with('Z') || time.as_bytes()[10] != b'T' {
            return None;
        }
        Some(LogRecord {
            time,
            instance,
            request_id: (request != NO_REQUEST).then_some(request),
            message,
        })
    }
}

/// Appends `message` as one stamped line to `out`.
fn write_line(out: &mut Vec<u8>, instance: &str, request: Option<&str>, message: &[u8]) {
    let message = message.strip_suffix(b"\r").unwrap_or(message);
    out.extend_from_slice(stamp(OffsetDateTime::now_utc()).as_bytes());
    out.push(b' ');
    out.extend_from_slice(instance.as_bytes());
    out.push(b' ');
    out.extend_from_slice(request.unwrap_or(NO_REQUEST).as_bytes());
    out.push(b' ');
    out.extend_from_slice(message);
    out.push(b'\n');
}

/// The read side of an instance's output pipe, pumped into its log file by a task that ends
/// when every writer is gone (the container's processes, and the runtime that created it).
#[derive(Debug)]
pub(crate) struct LogPump {
    task: Option<JoinHandle<()>>,
}

impl LogPump {
    /// A pipe for a container's stdout and stderr: returns the pump (already reading), the tag
    /// its lines take, and the write end to give the container. Lines go to `log` (created,
    /// appended to).
    pub(crate) fn start(log: &Path, instance: &str) -> io::Result<(LogPump, RequestTag, OwnedFd)> {
        Self::start_with(log, instance, LogLimits::default())
    }

    /// [`LogPump::start`] with other bounds.
    pub(crate) fn start_with(
        log: &Path,
        instance: &str,
        limits: LogLimits,
    ) -> io::Result<(LogPump, RequestTag, OwnedFd)> {
        if let Some(dir) = log.parent() {
            prune(dir, limits.function_bytes);
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let sink = LogFile {
            written: file.metadata().map_or(0, |m| m.len()),
            file,
            path: log.to_path_buf(),
            limit: limits.file_bytes,
        };
        // Close-on-exec on both ends: only the runtime's child gets the write end (as its
        // stdout and stderr), no other process the daemon starts meanwhile.
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let tag = RequestTag::with_pipe(read.try_clone()?);
        let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
        let task = tokio::spawn(pump(receiver, sink, instance.to_string(), tag.clone()));
        Ok((LogPump { task: Some(task) }, tag, write))
    }

    /// Waits (at most `within`) until every writer has closed the pipe and the last line is
    /// in the file. True if so.
    pub(crate) async fn finish(&mut self, within: Duration) -> bool {
        let Some(task) = self.task.as_mut() else {
            return true;
        };
        match tokio::time::timeout(within, task).await {
            Ok(_) => {
                self.task = None;
                true
            }
            Err(_) => false,
        }
    }
}

/// An instance's log file, rotated at its limit.
struct LogFile {
    file: File,
    path: std::path::PathBuf,
    written: u64,
    limit: u64,
}

impl LogFile {
    /// Appends whole lines, rotating between two lines when the next would pass the limit.
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            // As many whole lines as fit (at least one).
            let room = self.limit.saturating_sub(self.written) as usize;
            let mut cut = 0;
            for (i, _) in rest.iter().enumerate().filter(|(_, &b)| b == b'\n') {
                if i + 1 > room && cut > 0 {
                    break;
                }
                cut = i + 1;
                if cut >= room {
                    break;
                }
            }
            if cut == 0 {
                cut = rest.len();
            }
            if self.written > 0 && self.written + cut as u64 > self.limit {
                self.rotate()?;
                continue;
            }
            self.file.write_all(&rest[..cut])?;
            self.written += cut as u64;
            rest = &rest[cut..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

/// Deletes the oldest files of a function's log directory until the rest fit in `limit`.
fn prune(dir: &Path, limit: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, u64, std::path::PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            m.is_file()
                .then(|| Some((m.modified().ok()?, m.len(), e.path())))
                .flatten()
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, len, path) in files {
        if total <= limit {
            break;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => total -= len,
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "pruning logs"),
        }
    }
}

async fn pump(
    mut receiver: tokio::net::unix::pipe::Receiver,
    mut file: LogFile,
    instance: String,
    tag: RequestTag,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        let n = match receiver.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(%instance, error = %e, "reading the instance's output");
                break;
            }
        };
        pending.extend_from_slice(&chunk[..n]);
        let request = tag.get();
        let mut start = 0;
        while let Some(i) = pending[start..].iter().position(|&b| b == b'\n') {
            let end = start + i;
            for piece in pending[start..end].chunks(MAX_LINE) {
                write_line(&mut out, &instance, request.as_deref(), piece);
            }
            start = end + 1;
        }
        pending.drain(..start);
        // No newline in sight: a line too long to keep waiting for is cut here.
        while pending.len() >= MAX_LINE {
            write_line(
                &mut out,
                &instance,
                request.as_deref(),
                &pending[..MAX_LINE],
            );
            pending.drain(..MAX_LINE);
        }
        if !out.is_empty() {
            if let Err(e) = file.write_all(&out) {
                tracing::warn!(%instance, error = %e, "writing the instance's log");
            }
            out.clear();
        }
    }
    if !pending.is_empty() {
        write_line(&mut out, &instance, tag.get().as_deref(), &pending);
        if let Err(e) = file.write_all(&out) {
            tracing::warn!(%instance, error = %e, "writing the instance's log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes each of `writes` into a pump's pipe, the ones at `tagged` during request `req-7`.
    async fn pumped(writes: &[&[u8]], tagged: &[usize]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("i.log");
        let (mut pump, tag, write) = LogPump::start(&log, "abc123").unwrap();
        let mut w = File::from(write);
        for (i, bytes) in writes.iter().enumerate() {
            if tagged.contains(&i) {
                tag.begin("req-7").await;
            }
            w.write_all(bytes).unwrap();
            w.flush().unwrap();
            if tagged.contains(&i) {
                tag.end("req-7").await;
            }
        }
        drop(w);
        assert!(
            pump.finish(Duration::from_secs(5)).await,
            "ends at end of file"
        );
        std::fs::read_to_string(&log).unwrap()
    }

    #[tokio::test]
    async fn lines_are_stamped_with_time_instance_and_request() {
        let before = stamp(OffsetDateTime::now_utc());
        // No pause between writes: the tag changes wait for the pipe to be read.
        let text = pumped(
            &[b"first\nsecond\r\n", b"partial\n", b"no newline at the end"],
            &[1],
        )
        .await;
        let after = stamp(OffsetDateTime::now_utc());
        let records: Vec<LogRecord> = text.lines().map(|l| LogRecord::parse(l).unwrap()).collect();
        let got: Vec<(Option<&str>, &str)> =
            records.iter().map(|r| (r.request_id, r.message)).collect();
        assert_eq!(
            got,
            [
                (None, "first"),
                (None, "second"),
                (Some("req-7"), "partial"),
                (None, "no newline at the end"),
            ]
        );
        for r in &records {
            assert_eq!(r.instance, "abc123");
            assert!(
                before.as_str() <= r.time && r.time <= after.as_str(),
                "{}",
                r.time
            );
            assert!(
                OffsetDateTime::parse(r.time, &time::format_description::well_known::Rfc3339)
                    .is_ok()
            );
        }
        assert!(records.windows(2).all(|w| w[0].time <= w[1].time));
    }

    #[tokio::test]
    async fn a_long_line_is_cut_and_memory_stays_bounded() {
        let long = vec![b'x'; 2 * MAX_LINE + 10];
        let text = pumped(&[&long, b"\nok\n"], &[]).await;
        let messages: Vec<usize> = text
            .lines()
            .map(|l| LogRecord::parse(l).unwrap().message.len())
            .collect();
        assert_eq!(messages, [MAX_LINE, MAX_LINE, 10, 2]);
    }

    #[tokio::test]
    async fn a_request_that_ended_does_not_clear_the_next_ones_tag() {
        let tag = RequestTag::default();
        tag.begin("a").await;
        tag.begin("b").await;
        tag.end("a").await;
        assert_eq!(tag.get().as_deref(), Some("b"));
        tag.end("b").await;
        assert_eq!(tag.get(), None);
    }

    #[test]
    fn lines_not_written_by_the_pump_do_not_parse() {
        for line in ["", "hello world", "bad config", "2026-12-06 x y z"] {
            assert_eq!(LogRecord::parse(line), None, "{line}");
        }
        let r = LogRecord::parse("2026-12-06T15:20:01.123456Z id - a b  c").unwrap();
        assert_eq!(
            (r.instance, r.request_id, r.message),
            ("id", None, "a b  c")
        );
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[tokio::test]
    async fn an_instance_log_rotates_and_a_function_keeps_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        // An older instance's log, to be pruned first.
        let old = dir.path().join("old.log");
        std::fs::write(&old, vec![b'x'; 3000]).unwrap();
        let limits = LogLimits {
            file_bytes: 1000,
            function_bytes: 2500,
        };
        let log = dir.path().join("i.log");
        let (mut pump, _tag, write) = LogPump::start_with(&log, "abc123", limits).unwrap();
        assert!(
            !old.exists(),
            "over the function's bound: the oldest file went"
        );
        let mut w = File::from(write);
        for i in 0..200 {
            writeln!(w, "line {i}").unwrap();
        }
        drop(w);
        assert!(pump.finish(Duration::from_secs(5)).await);
        let now = std::fs::read_to_string(&log).unwrap();
        let rotated = std::fs::read_to_string(dir.path().join("i.log.1")).unwrap();
        assert!(
            now.len() <= 1000 && rotated.len() <= 1000,
            "{} {}",
            now.len(),
            rotated.len()
        );
        assert!(now.ends_with("line 199\n"), "the newest lines are kept");
        // Rotated whole lines, in order: the rotated file ends where the current one begins.
        let last_rotated = rotated.lines().last().unwrap();
        let first_now = now.lines().next().unwrap();
        let n = |l: &str| l.rsplit(' ').next().unwrap().parse::<u32>().unwrap();
        assert_eq!(n(last_rotated) + 1, n(first_now));
    }
}
