//! A fault-injecting HTTP proxy to put in front of a [`TestRegistry`](crate::registry::TestRegistry):
//! requests pass through unchanged unless a [`Rule`] matches, which then stalls, resets,
//! truncates or delays the exchange at a chosen point.
//!
//! Each client connection carries one request: the proxy asks the registry to close after
//! its response (`Connection: close`) and tells the client the same, so a response ends where
//! the registry's stream ends and the faults count body bytes without parsing chunked
//! encodings. Request bodies (uploads) must have a `Content-Length`, as the registry client's
//! do.
//!
//! The proxy runs on a thread with a runtime of its own; dropping it stops that runtime, which
//! closes every socket, stalled ones included.
//!
//! ```no_run
//! # use pronto_testkit::faulty::{FaultyProxy, Fault, Rule};
//! # use pronto_testkit::registry::TestRegistry;
//! let registry = TestRegistry::start();
//! let proxy = FaultyProxy::start(registry.addr());
//! // Layer downloads through the proxy send their headers and 1 KiB, then nothing.
//! proxy.add(Rule::path("/blobs/").method("GET").fault(Fault::StallBodyAfter(1024)));
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a matching request gets instead of a plain pass-through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request is read, nothing is ever answered (the connection stays open).
    StallBeforeHeaders,
    /// The response headers and the first N body bytes are passed on, then nothing more (the
    /// connection stays open).
    StallBodyAfter(u64),
    /// The response headers and the first N body bytes are passed on, then the connection is
    /// reset (RST).
    ResetAfter(u64),
    /// The response headers and the first N body bytes are passed on, then the connection is
    /// closed cleanly (FIN): a body shorter than its `Content-Length`.
    TruncateAfter(u64),
    /// The exchange passes through after this wait.
    Delay(Duration),
}

/// Which requests a fault applies to; every condition given must hold.
#[derive(Debug, Clone)]
pub struct Rule {
    path_contains: Vec<String>,
    method: Option<String>,
    /// Only the n-th request this rule's conditions match (1-based); every one if `None`.
    nth: Option<usize>,
    fault: Fault,
    /// Requests the conditions matched so far.
    seen: usize,
}

impl Rule {
    /// Requests whose path contains `part` (e.g. `/blobs/`, or a digest).
    pub fn path(part: &str) -> Rule {
        Rule {
            path_contains: vec![part.to_string()],
            method: None,
            nth: None,
            fault: Fault::StallBeforeHeaders,
            seen: 0,
        }
    }

    /// Every request.
    pub fn any() -> Rule {
        Rule::path("")
    }

    /// And whose path contains `part` too.
    pub fn and_path(mut self, part: &str) -> Rule {
        self.path_contains.push(part.to_string());
        self
    }

    /// And whose method is `method` (`GET`, `HEAD`, ...).
    pub fn method(mut self, method: &str) -> Rule {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Only the `n`-th matching request (1-based).
    pub fn nth(mut self, n: usize) -> Rule {
        self.nth = Some(n);
        self
    }

    /// The fault to apply (default: [`Fault::StallBeforeHeaders`]).
    pub fn fault(mut self, fault: Fault) -> Rule {
        self.fault = fault;
        self
    }

    /// Counts `req` if it matches; the fault if it applies to this one.
    fn apply(&mut self, method: &str, path: &str) -> Option<Fault> {
        let matches = self.path_contains.iter().all(|p| path.contains(p.as_str()))
            && self.method.as_deref().is_none_or(|m| m == method);
        if !matches {
            return None;
        }
        self.seen += 1;
        match self.nth {
            Some(n) if n != self.seen => None,
            _ => Some(self.fault),
        }
    }
}

/// One request the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The fault it got, if any.
    pub fault: Option<Fault>,
}

/// A link to emulate between the proxy's clients and the registry: every response body shares
/// one rate (a token bucket over all connections, as a real link would), and every request waits
/// one round trip before it reaches the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub bytes_per_sec: u64,
    pub rtt: Duration,
}

impl Link {
    /// `mbit` Mbit/s with `rtt_ms` ms of round trip.
    pub fn mbit(mbit: u64, rtt_ms: u64) -> Link {
        Link {
            bytes_per_sec: mbit * 1_000_000 / 8,
            rtt: Duration::from_millis(rtt_ms),
        }
    }
}

/// Bytes the link may send at once after being idle, as time at its rate: lets the pacing
/// absorb the timer's millisecond granularity without losing rate.
const LINK_BURST: Duration = Duration::from_millis(4);

#[derive(Debug, Default)]
struct Shared {
    rules: Vec<Rule>,
    seen: Vec<Seen>,
    link: Option<Link>,
    /// The link's virtual clock: when the bytes reserved so far have been sent.
    link_busy_until: Option<tokio::time::Instant>,
}

/// Waits until the link has sent `len` more bytes (reserved now, in order of asking).
async fn pace(shared: &Mutex<Shared>, len: usize) {
    let until = {
        let mut st = shared.lock().expect("proxy state poisoned");
        let Some(link) = st.link else {
            return;
        };
        let now = tokio::time::Instant::now();
        let start = st
            .link_busy_until
            .map_or(now, |t| t.max(now.checked_sub(LINK_BURST).unwrap_or(now)));
        let took = Duration::from_secs_f64(len as f64 / link.bytes_per_sec.max(1) as f64);
        let until = start + took;
        st.link_busy_until = Some(until);
        until
    };
    tokio::time::sleep_until(until).await;
}

/// The proxy; stopped (every connection closed) on drop.
#[derive(Debug)]
pub struct FaultyProxy {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultyProxy {
    /// A proxy on a free loopback port in front of `upstream`, passing everything through
    /// until rules are added.
    pub fn start(upstream: SocketAddr) -> FaultyProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("faulty-proxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("proxy listener");
                    tokio::pin!(stopped);
                    loop {
                        tokio::select! {
                            _ = &mut stopped => break,
                            accepted = listener.accept() => {
                                let Ok((client, _)) = accepted else { continue };
                                tokio::spawn(serve(client, upstream, state.clone()));
                            }
                        }
                    }
                });
                // Dropping the runtime drops every connection task and closes its sockets.
                drop(rt);
            })
            .expect("spawning the proxy thread");
        FaultyProxy {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`: use it as the registry host in references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a rule; the first rule that applies to a request decides its fault.
    pub fn add(&self, rule: Rule) {
        self.lock().rules.push(rule);
    }

    /// Emulates `link` for every exchange from now on (`None`: as fast as loopback).
    pub fn set_link(&self, link: Option<Link>) {
        let mut st = self.lock();
        st.link = link;
        st.link_busy_until = None;
    }

    /// Removes every rule: from now on everything passes through (stalled connections stay
    /// stalled).
    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    /// The requests seen so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// How many requests got a fault.
    pub fn faults(&self) -> usize {
        self.lock()
            .seen
            .iter()
            .filter(|s| s.fault.is_some())
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("proxy state poisoned")
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The end of an HTTP head (`\r\n\r\n`) in `buf`: the index just past it.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Reads from `s` into `buf` until it holds a whole head; its length.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = head_end(buf) {
            return Some(end);
        }
        if buf.len() > 64 << 10 {
            return None;
        }
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// `head` with its `Connection` header replaced by `Connection: close`.
fn close_after(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.trim_end_matches("\r\n").split("\r\n") {
        let name = line.split(':').next().unwrap_or("").trim();
        if !name.eq_ignore_ascii_case("connection") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

/// Serves one client connection: one request.
async fn serve(mut client: TcpStream, upstream: SocketAddr, shared: Arc<Mutex<Shared>>) {
    let mut buf = Vec::new();
    let Some(end) = read_head(&mut client, &mut buf).await else {
        return;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut words = head.split_whitespace();
    let (method, path) = (
        words.next().unwrap_or("").to_string(),
        words.next().unwrap_or("").to_string(),
    );
    let content_length: usize = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    // The request body, whole (uploads in tests are small enough).
    while buf.len() < end + content_length {
        let mut chunk = [0u8; 65536];
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let fault = {
        let mut st = shared.lock().expect("proxy state poisoned");
        let fault = st.rules.iter_mut().find_map(|r| r.apply(&method, &path));
        st.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            fault,
        });
        fault
    };
    let body_limit = match fault {
        Some(Fault::StallBeforeHeaders) => {
            // Hold the connection open, answering nothing, until the client or the proxy goes.
            let mut sink = [0u8; 1024];
            while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            None
        }
        Some(Fault::StallBodyAfter(n) | Fault::ResetAfter(n) | Fault::TruncateAfter(n)) => Some(n),
        None => None,
    };
    let link = shared.lock().expect("proxy state poisoned").link;
    if let Some(link) = link {
        // The request's way there and the first byte's way back.
        tokio::time::sleep(link.rtt).await;
    }
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    let mut request = close_after(&buf[..end]);
    request.extend_from_slice(&buf[end..]);
    if up.write_all(&request).await.is_err() {
        return;
    }
    // The response head, passed on with `Connection: close`.
    let mut resp = Vec::new();
    let Some(rend) = read_head(&mut up, &mut resp).await else {
        return;
    };
    if client.write_all(&close_after(&resp[..rend])).await.is_err() {
        return;
    }
    let mut pending = resp.split_off(rend);
    let mut sent: u64 = 0;
    loop {
        if pending.is_empty() {
            let mut chunk = vec![0u8; 65536];
            match up.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    chunk.truncate(n);
                    pending = chunk;
                }
            }
        }
        let room = body_limit.map_or(u64::MAX, |l| l - sent);
        let take = (pending.len() as u64).min(room) as usize;
        pace(&shared, take).await;
        if client.write_all(&pending[..take]).await.is_err() {
            return;
        }
        sent += take as u64;
        pending.drain(..take);
        if body_limit.is_some_and(|l| sent >= l) {
            break;
        }
    }
    let _ = client.flush().await;
    match fault {
        Some(Fault::StallBodyAfter(_)) => {
            let mut sink = [0u8; 1024];
            while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        Some(Fault::ResetAfter(_)) => {
            // A zero linger makes the close an RST.
            let _ = client.set_zero_linger();
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_path_method_and_nth() {
        let mut r = Rule::path("/blobs/")
            .and_path("sha256:ab")
            .method("get")
            .nth(2);
        assert_eq!(r.apply("GET", "/v2/x/blobs/sha256:ab"), None, "first match");
        assert_eq!(r.apply("HEAD", "/v2/x/blobs/sha256:ab"), None, "method");
        assert_eq!(r.apply("GET", "/v2/x/manifests/sha256:ab"), None, "path");
        assert_eq!(
            r.apply("GET", "/v2/x/blobs/sha256:ab"),
            Some(Fault::StallBeforeHeaders)
        );
        assert_eq!(r.apply("GET", "/v2/x/blobs/sha256:ab"), None, "third");
    }

    #[test]
    fn close_after_replaces_the_connection_header() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n";
        assert_eq!(
            close_after(head),
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
    }
}
