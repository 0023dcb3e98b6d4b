//! A token server for the registry's Bearer ("token") auth, as Docker Hub and Harbor run one.
//!
//! Distribution checks a JWT signed with a key whose certificate is in its `rootcertbundle`
//! (the certificate travels in the JWT header's `x5c`). This server issues such tokens for one
//! username and password, granting what the `scope` asks, and counts the requests it serves.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;

pub const SERVICE: &str = "pronto-test-registry";
pub const ISSUER: &str = "pronto-test-issuer";

#[derive(Debug)]
pub struct TokenServer {
    addr: SocketAddr,
    pub cert_pem: String,
    issued: Arc<AtomicUsize>,
    denied: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    pub fn start(username: &str, password: &str) -> anyhow::Result<TokenServer> {
        let certified = rcgen::generate_simple_self_signed(vec!["pronto-token".to_string()])?;
        let cert_pem = certified.cert.pem();
        let cert_der = base64::engine::general_purpose::STANDARD.encode(certified.cert.der());
        let key = jsonwebtoken::EncodingKey::from_ec_pem(
            certified.signing_key.serialize_pem().as_bytes(),
        )?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
        );
        let (issued, denied, stop) = (
            Arc::default(),
            Arc::default(),
            Arc::new(AtomicBool::new(false)),
        );
        let (issued2, denied2, stop2): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicBool>) =
            (Arc::clone(&issued), Arc::clone(&denied), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let (stream, _) = match listener.accept() {
                    Ok(s) => s,
                    Err(_) => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = stream.set_nonblocking(false);
                let mut reader = BufReader::new(stream);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut authorization = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("authorization") {
                            authorization = Some(v.trim().to_string());
                        }
                    }
                }
                let mut stream = reader.into_inner();
                if authorization.as_deref() != Some(expected.as_str()) {
                    denied2.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    continue;
                }
                let target = request_line.split_whitespace().nth(1).unwrap_or("");
                let scope = target
                    .split_once('?')
                    .map(|(_, q)| q)
                    .unwrap_or("")
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("scope="))
                    .map(percent_decode)
                    .unwrap_or_default();
                let access: Vec<serde_json::Value> = scope
                    .split(' ')
                    .filter_map(|s| {
                        let mut parts = s.splitn(3, ':');
                        let (ty, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                        Some(serde_json::json!({"type": ty, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                    })
                    .collect();
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let claims = serde_json::json!({
                    "iss": ISSUER, "sub": "alice", "aud": SERVICE,
                    "exp": now + 300, "nbf": now - 10, "iat": now,
                    "jti": format!("{now}-{}", issued2.load(Ordering::Relaxed)),
                    "access": access,
                });
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
                header.x5c = Some(vec![cert_der.clone()]);
                let token = jsonwebtoken::encode(&header, &claims, &key).expect("signing a token");
                let body = serde_json::json!({"token": token, "expires_in": 300}).to_string();
                issued2.fetch_add(1, Ordering::Relaxed);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Ok(TokenServer {
            addr,
            cert_pem,
            issued,
            denied,
            stop,
            thread: Some(thread),
        })
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::Relaxed)
    }

    /// Requests refused for bad or missing credentials.
    pub fn denied(&self) -> usize {
        self.denied.load(Ordering::Relaxed)
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
