//! A client for the OCI distribution API: manifests, verified blob downloads and pushes, with
//! Bearer-token and Basic auth.
//!
//! Registries on loopback (and those listed as insecure) are spoken to over plain HTTP; all others
//! over HTTPS. Every byte read is checked against its digest before it is handed on.
//!
//! Every request is bounded, so a registry that accepts a connection and then stalls fails the
//! transfer instead of hanging it: connecting ([`ClientOptions::connect_timeout`]), the wait for
//! the response headers ([`ClientOptions::response_timeout`]; an upload also gets its body's
//! time at [`MIN_UPLOAD_RATE`]) and each wait for the next bytes of a body
//! ([`ClientOptions::idle_timeout`]). The errors name the registry, what was being read and the
//! bound ([`RegistryError::NoResponse`], [`RegistryError::Stalled`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use tokio::io::AsyncWriteExt;

use crate::auth::{parse_challenge, Challenge, CredentialStore, Credentials};
use crate::digest::{Digest, Verifier, VerifyError};
use crate::manifest::{parse_manifest, ManifestError, ManifestKind, MANIFEST_ACCEPT};
use crate::reference::Reference;

/// Manifests larger than this are refused (the distribution spec suggests 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// An upload's wait for the response headers is [`ClientOptions::response_timeout`] plus its
/// body's length at this rate (bytes per second): slower uploads fail.
pub const MIN_UPLOAD_RATE: u64 = 256 << 10;

/// How long an error response's body is waited for (it only explains the status).
const ERROR_BODY_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach registry {registry}: {source}")]
    Connect {
        registry: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what} not found: {reference}")]
    NotFound {
        what: &'static str,
        reference: String,
    },
    #[error("registry {registry} denied access to {repository} ({status}): authentication failed; check credentials")]
    Unauthorized {
        registry: String,
        repository: String,
        status: StatusCode,
    },
    #[error(
        "registry {registry}: authentication failed: token request to {realm} failed: {detail}"
    )]
    Token {
        registry: String,
        realm: String,
        detail: String,
    },
    #[error("registry returned {status} for {method} {url}: {body}")]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("reading {what} {digest} from {registry}: {source}")]
    Transfer {
        what: &'static str,
        digest: String,
        registry: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what} {digest} failed verification: {source}")]
    Verify {
        what: &'static str,
        digest: Digest,
        #[source]
        source: VerifyError,
    },
    #[error("manifest {reference} is larger than {MAX_MANIFEST_BYTES} bytes")]
    ManifestTooLarge { reference: String },
    #[error("manifest {reference}: {source}")]
    Manifest {
        reference: String,
        #[source]
        source: ManifestError,
    },
    #[error("writing blob {digest} to {path}: {source}")]
    Io {
        digest: Digest,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("range {start}+{len} of blob {digest}: {detail}")]
    Range {
        digest: Digest,
        start: u64,
        len: u64,
        detail: String,
    },
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("registry {registry} sent no response to {method} {url} within {bound:?}")]
    NoResponse {
        registry: String,
        method: Method,
        url: String,
        bound: Duration,
    },
    #[error("registry {registry} stalled: no bytes of {what} {digest} for {bound:?}")]
    Stalled {
        registry: String,
        what: &'static str,
        digest: String,
        bound: Duration,
    },
}

/// Options for [`RegistryClient`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Registries (host[:port]) to speak plain HTTP to even though they are not on loopback, e.g.
    /// a bench registry inside a network namespace Pronto created.
    pub insecure_registries: Vec<String>,
    pub credentials: CredentialStore,
    /// Bound on making a connection (default 10 s).
    pub connect_timeout: Duration,
    /// Bound on the wait for a response's headers once the request is sent (default 30 s); an
    /// upload also gets its body's length at [`MIN_UPLOAD_RATE`].
    pub response_timeout: Duration,
    /// Bound on each wait for the next bytes of a response body (default 30 s): a registry that
    /// stops sending mid-blob fails the transfer after this long.
    pub idle_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure_registries: Vec::new(),
            credentials: CredentialStore::default(),
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// A manifest as fetched: its digest (computed and checked), media type and raw bytes.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub media_type: Option<String>,
    pub bytes: Bytes,
    pub kind: ManifestKind,
}

/// Talks to any number of registries; cheap to clone (shared connection pool and token cache).
#[derive(Clone, Debug)]
pub struct RegistryClient {
    http: reqwest::Client,
    options: Arc<ClientOptions>,
    /// `Authorization` values by (registry, scope); never logged. An empty value: the
    /// repository was found open ([`RegistryClient::authorize_pull`]).
    tokens: Arc<Mutex<HashMap<(String, String), String>>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Pull,
    Push,
}

impl RegistryClient {
    pub fn new(options: ClientOptions) -> Result<Self, RegistryError> {
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("pronto/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(RegistryError::Client)?;
        Ok(RegistryClient {
            http,
            options: Arc::new(options),
            tokens: Arc::default(),
        })
    }

    /// This client with `credentials` for `registry` (host[:port]) in place of any it has
    /// there, its other registries' credentials kept: a function's own client beside the
    /// daemon's. It shares the connection pool but starts with an empty token cache of its own,
    /// so what it may read is only what these credentials prove (never a token another
    /// client's credentials earned).
    pub fn with_credentials(&self, registry: &str, credentials: Credentials) -> RegistryClient {
        let mut options = (*self.options).clone();
        options.credentials.insert(registry, credentials);
        RegistryClient {
            http: self.http.clone(),
            options: Arc::new(options),
            tokens: Arc::default(),
        }
    }

    /// A client with credentials from the default Docker config location.
    pub fn from_env() -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let credentials = CredentialStore::from_default_location()?;
        let insecure_registries = std::env::var("PRONTO_INSECURE_REGISTRIES")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self::new(ClientOptions {
            insecure_registries,
            credentials,
            ..ClientOptions::default()
        })?)
    }

    fn base_url(&self, r: &Reference) -> String {
        let plain = r.is_loopback_registry()
            || self
                .options
                .insecure_registries
                .iter()
                .any(|i| i == &r.registry);
        let host = if r.registry == crate::reference::DEFAULT_REGISTRY {
            "registry-1.docker.io"
        } else {
            &r.registry
        };
        format!(
            "{}://{host}/v2/{}",
            if plain { "http" } else { "https" },
            r.repository
        )
    }

    /// The token cache's key for `access` to `r`'s repository.
    fn scope_key(r: &Reference, access: Access) -> (String, String) {
        let scope = format!(
            "repository:{}:{}",
            r.repository,
            if access == Access::Push {
                "pull,push"
            } else {
                "pull"
            }
        );
        (r.registry.clone(), scope)
    }

    /// Makes sure pulls from `r`'s repository meet no auth challenge: unless a credential is
    /// cached for it, one request (a `HEAD` of the manifest `r` names) answers the registry's
    /// challenge now (Bearer token or Basic) and caches the answer; a repository that asks for
    /// none is remembered as open. So a caller can time authentication apart from the
    /// transfers that follow (the cold-start breakdown's `auth`). Whether the manifest exists
    /// does not matter here.
    pub async fn authorize_pull(&self, r: &Reference) -> Result<(), RegistryError> {
        let key = Self::scope_key(r, Access::Pull);
        if self
            .tokens
            .lock()
            .expect("token cache poisoned")
            .contains_key(&key)
        {
            return Ok(());
        }
        let url = format!("{}/manifests/{}", self.base_url(r), r.manifest_selector());
        self.send(r, Access::Pull, Method::HEAD, &url, |b| {
            b.header(ACCEPT, MANIFEST_ACCEPT)
        })
        .await?;
        self.tokens
            .lock()
            .expect("token cache poisoned")
            .entry(key)
            .or_default();
        Ok(())
    }

    /// Sends a request built by `build`, answering one auth challenge if the registry asks.
    async fn send(
        &self,
        r: &Reference,
        access: Access,
        method: Method,
        url: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        self.send_upload(r, access, method, url, 0, build).await
    }

    /// [`RegistryClient::send`] for a request with a body of `body_len` bytes: the wait for the
    /// response headers also allows for sending the body at [`MIN_UPLOAD_RATE`].
    async fn send_upload(
        &self,
        r: &Reference,
        access: Access,
        method: Method,
        url: &str,
        body_len: u64,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let bound = self.options.response_timeout
            + Duration::from_secs_f64(body_len as f64 / MIN_UPLOAD_RATE as f64);
        let key = Self::scope_key(r, access);
        let scope = key.1.clone();
        let mut attempt = 0;
        loop {
            let mut req = build(self.http.request(method.clone(), url));
            let token = self
                .tokens
                .lock()
                .expect("token cache poisoned")
                .get(&key)
                .cloned();
            if let Some(auth) = token.filter(|t| !t.is_empty()) {
                req = req.header(AUTHORIZATION, auth);
            }
            let resp = tokio::time::timeout(bound, req.send())
                .await
                .map_err(|_| RegistryError::NoResponse {
                    registry: r.registry.clone(),
                    method: method.clone(),
                    url: url.to_string(),
                    bound,
                })?
                .map_err(|source| RegistryError::Connect {
                    registry: r.registry.clone(),
                    source,
                })?;
            if resp.status() != StatusCode::UNAUTHORIZED || attempt > 0 {
                if resp.status() == StatusCode::UNAUTHORIZED
                    || resp.status() == StatusCode::FORBIDDEN
                {
                    if resp.status() == StatusCode::UNAUTHORIZED {
                        // A credential refused is not kept: the next request asks afresh.
                        self.tokens
                            .lock()
                            .expect("token cache poisoned")
                            .remove(&key);
                    }
                    return Err(RegistryError::Unauthorized {
                        registry: r.registry.clone(),
                        repository: r.repository.clone(),
                        status: resp.status(),
                    });
                }
                return Ok(resp);
            }
            attempt += 1;
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|h| h.to_str().ok())
                .and_then(parse_challenge);
            let creds = self.options.credentials.get(&r.registry).cloned();
            let header = match challenge {
                Some(Challenge::Bearer { realm, service, .. }) => {
                    self.fetch_token(r, &realm, service.as_deref(), &scope, creds.as_ref())
                        .await?
                }
                Some(Challenge::Basic) if creds.is_some() => {
                    basic_header(creds.as_ref().expect("checked"))
                }
                _ => {
                    return Err(RegistryError::Unauthorized {
                        registry: r.registry.clone(),
                        repository: r.repository.clone(),
                        status: StatusCode::UNAUTHORIZED,
                    })
                }
            };
            self.tokens
                .lock()
                .expect("token cache poisoned")
                .insert(key.clone(), header);
        }
    }

    async fn fetch_token(
        &self,
        r: &Reference,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        creds: Option<&Credentials>,
    ) -> Result<String, RegistryError> {
        let token_err = |detail: String| RegistryError::Token {
            registry: r.registry.clone(),
            realm: realm.to_string(),
            detail,
        };
        let mut query = vec![("scope", scope)];
        if let Some(s) = service {
            query.push(("service", s));
        }
        let mut req = self.http.get(realm).query(&query);
        if let Some(c) = creds {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let bound = self.options.response_timeout;
        let no_answer = || token_err(format!("no answer within {bound:?}"));
        let resp = tokio::time::timeout(bound, req.send())
            .await
            .map_err(|_| no_answer())?
            .map_err(|e| token_err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(token_err(format!("status {}", resp.status())));
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body: TokenResponse = tokio::time::timeout(bound, resp.json())
            .await
            .map_err(|_| no_answer())?
            .map_err(|e| token_err(e.to_string()))?;
        let token = body
            .token
            .or(body.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| token_err("response has no token".into()))?;
        Ok(format!("Bearer {token}"))
    }

    /// Fetches the manifest `r` names. When `r` carries a digest the body is verified against it.
    pub async fn fetch_manifest(&self, r: &Reference) -> Result<FetchedManifest, RegistryError> {
        let url = format!("{}/manifests/{}", self.base_url(r), r.manifest_selector());
        let resp = self
            .send(r, Access::Pull, Method::GET, &url, |b| {
                b.header(ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        let resp = check_status(resp, Method::GET, &url, "manifest", &r.to_string()).await?;
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_BYTES as u64)
        {
            return Err(RegistryError::ManifestTooLarge {
                reference: r.to_string(),
            });
        }
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        let selector = r.manifest_selector();
        while let Some(chunk) = self.next_chunk(&mut stream, r, "manifest", &selector).await {
            let chunk = chunk?;
            body.extend_from_slice(&chunk);
            if body.len() > MAX_MANIFEST_BYTES {
                return Err(RegistryError::ManifestTooLarge {
                    reference: r.to_string(),
                });
            }
        }
        let digest = Digest::of(&body);
        // Pinned: the body must hash to the pin. By tag: to what the registry says it is.
        let expected = r.digest.clone().or(header_digest);
        if let Some(expected) = &expected {
            if &digest != expected {
                return Err(RegistryError::Verify {
                    what: "manifest",
                    digest: expected.clone(),
                    source: VerifyError::Digest {
                        expected: expected.clone(),
                        actual: digest,
                    },
                });
            }
        }
        let kind = parse_manifest(media_type.as_deref(), &body).map_err(|source| {
            RegistryError::Manifest {
                reference: r.to_string(),
                source,
            }
        })?;
        Ok(FetchedManifest {
            digest,
            media_type,
            bytes: Bytes::from(body),
            kind,
        })
    }

    async fn get_blob(&self, r: &Reference, digest: &Digest) -> Result<Response, RegistryError> {
        let url = format!("{}/blobs/{digest}", self.base_url(r));
        let resp = self.send(r, Access::Pull, Method::GET, &url, |b| b).await?;
        check_status(
            resp,
            Method::GET,
            &url,
            "blob",
            &format!("{}/{}@{digest}", r.registry, r.repository),
        )
        .await
    }

    /// Downloads a whole blob into memory, verified. For small blobs (configs, indexes).
    pub async fn fetch_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<Bytes, RegistryError> {
        let mut out = Vec::with_capacity(size.unwrap_or(0).min(64 << 20) as usize);
        self.stream_blob(r, digest, size, |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        Ok(Bytes::from(out))
    }

    /// Downloads a blob into `path` (created or truncated), verifying size and digest; on a
    /// mismatch the file is removed. `on_bytes` is told of each chunk's length (progress).
    pub async fn download_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        size: Option<u64>,
        path: &Path,
        on_bytes: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RegistryError> {
        let io_err = |source| RegistryError::Io {
            digest: digest.clone(),
            path: path.display().to_string(),
            source,
        };
        // Created here, not on the blocking pool (`tokio::fs::File::create`): a download
        // aborted while the create is in flight would otherwise still create the file after its
        // task is gone, racing the removal of the download directory.
        let file = std::fs::File::create(path).map_err(io_err)?;
        let file = tokio::fs::File::from_std(file);
        let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let resp = self.get_blob(r, digest).await?;
        let mut verifier = Verifier::default();
        let mut stream = resp.bytes_stream();
        let name = digest.to_string();
        let result: Result<(), RegistryError> = async {
            while let Some(chunk) = self.next_chunk(&mut stream, r, "blob", &name).await {
                let chunk = chunk?;
                verifier.update(&chunk);
                if size.is_some_and(|s| verifier.len() > s) {
                    break; // longer than declared: stop reading, finish() reports it
                }
                file.write_all(&chunk).await.map_err(io_err)?;
                on_bytes(chunk.len() as u64);
            }
            file.flush().await.map_err(io_err)?;
            verifier
                .finish(digest, size)
                .map_err(|source| RegistryError::Verify {
                    what: "blob",
                    digest: digest.clone(),
                    source,
                })
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(path).await;
        }
        result
    }

    async fn stream_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        size: Option<u64>,
        mut sink: impl FnMut(&[u8]) -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        let resp = self.get_blob(r, digest).await?;
        let mut verifier = Verifier::default();
        let mut stream = resp.bytes_stream();
        let name = digest.to_string();
        while let Some(chunk) = self.next_chunk(&mut stream, r, "blob", &name).await {
            let chunk = chunk?;
            verifier.update(&chunk);
            if size.is_some_and(|s| verifier.len() > s) {
                break;
            }
            sink(&chunk)?;
        }
        verifier
            .finish(digest, size)
            .map_err(|source| RegistryError::Verify {
                what: "blob",
                digest: digest.clone(),
                source,
            })
    }

    /// Reads `len` bytes of a blob from `start` with one HTTP Range request. Not verified here:
    /// a part of a blob has no registry digest, so the caller checks what it names (the lazy
    /// filesystem checks each chunk's BLAKE3). A registry that ignores the range (200 with the
    /// whole blob) or answers with a different length is an error, never a silent over-read.
    pub async fn read_blob_range(
        &self,
        r: &Reference,
        digest: &Digest,
        start: u64,
        len: u64,
    ) -> Result<Bytes, RegistryError> {
        self.read_blob_range_progressive(r, digest, start, len, |_| {})
            .await
    }

    /// As [`RegistryClient::read_blob_range`]; `progress` is called with the bytes received so
    /// far (a prefix of the range) each time more arrive, so that a caller can use the start
    /// of a large range before its end has come (the lazy fetcher hands out each chunk of a
    /// long request as soon as its bytes are in).
    pub async fn read_blob_range_progressive(
        &self,
        r: &Reference,
        digest: &Digest,
        start: u64,
        len: u64,
        mut progress: impl FnMut(&[u8]) + Send,
    ) -> Result<Bytes, RegistryError> {
        let range_err = |detail: String| RegistryError::Range {
            digest: digest.clone(),
            start,
            len,
            detail,
        };
        if len == 0 {
            return Ok(Bytes::new());
        }
        let end = start
            .checked_add(len - 1)
            .ok_or_else(|| range_err("range overflows".into()))?;
        let url = format!("{}/blobs/{digest}", self.base_url(r));
        let resp = self
            .send(r, Access::Pull, Method::GET, &url, |b| {
                b.header(reqwest::header::RANGE, format!("bytes={start}-{end}"))
            })
            .await?;
        let resp = check_status(
            resp,
            Method::GET,
            &url,
            "blob",
            &format!("{}/{}@{digest}", r.registry, r.repository),
        )
        .await?;
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            return Err(range_err(format!(
                "registry answered {} instead of 206 Partial Content",
                resp.status()
            )));
        }
        if resp.content_length().is_some_and(|n| n != len) {
            return Err(range_err(format!(
                "registry sent {} bytes",
                resp.content_length().unwrap_or(0)
            )));
        }
        let mut out = Vec::with_capacity(len.min(64 << 20) as usize);
        let mut stream = resp.bytes_stream();
        let name = digest.to_string();
        while let Some(chunk) = self.next_chunk(&mut stream, r, "blob range", &name).await {
            let chunk = chunk?;
            if (out.len() + chunk.len()) as u64 > len {
                return Err(range_err("registry sent more bytes than asked for".into()));
            }
            out.extend_from_slice(&chunk);
            progress(&out);
        }
        if out.len() as u64 != len {
            return Err(range_err(format!("registry sent {} bytes", out.len())));
        }
        Ok(Bytes::from(out))
    }

    /// The next piece of a response body of `what` `name` from `r`'s registry; `Stalled` when
    /// none comes within the idle bound, `Transfer` when the connection fails.
    async fn next_chunk(
        &self,
        stream: &mut (impl Stream<Item = reqwest::Result<Bytes>> + Unpin),
        r: &Reference,
        what: &'static str,
        name: &str,
    ) -> Option<Result<Bytes, RegistryError>> {
        let bound = self.options.idle_timeout;
        match tokio::time::timeout(bound, stream.next()).await {
            Err(_) => Some(Err(RegistryError::Stalled {
                registry: r.registry.clone(),
                what,
                digest: name.to_string(),
                bound,
            })),
            Ok(None) => None,
            Ok(Some(Ok(chunk))) => Some(Ok(chunk)),
            Ok(Some(Err(source))) => Some(Err(RegistryError::Transfer {
                what,
                digest: name.to_string(),
                registry: r.registry.clone(),
                source,
            })),
        }
    }

    /// True when the repository already has the blob.
    pub async fn blob_exists(&self, r: &Reference, digest: &Digest) -> Result<bool, RegistryError> {
        let url = format!("{}/blobs/{digest}", self.base_url(r));
        let resp = self
            .send(r, Access::Pull, Method::HEAD, &url, |b| b)
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            status => Err(RegistryError::Status {
                method: Method::HEAD,
                url,
                status,
                body: String::new(),
            }),
        }
    }

    /// Uploads a blob held in memory (monolithic POST then PUT), unless the registry has it.
    pub async fn push_blob(&self, r: &Reference, data: Bytes) -> Result<Digest, RegistryError> {
        let digest = Digest::of(&data);
        if self.blob_exists(r, &digest).await? {
            return Ok(digest);
        }
        let location = self.start_upload(r).await?;
        let url = upload_url(&location, &digest);
        let resp = self
            .send_upload(r, Access::Push, Method::PUT, &url, data.len() as u64, |b| {
                b.header(CONTENT_TYPE, "application/octet-stream")
                    .body(data.clone())
            })
            .await?;
        check_status(resp, Method::PUT, &url, "upload", &r.to_string()).await?;
        Ok(digest)
    }

    /// Uploads a blob from a file whose digest is known, streaming it.
    pub async fn push_blob_file(
        &self,
        r: &Reference,
        digest: &Digest,
        path: &Path,
    ) -> Result<(), RegistryError> {
        if self.blob_exists(r, digest).await? {
            return Ok(());
        }
        let io_err = |source| RegistryError::Io {
            digest: digest.clone(),
            path: path.display().to_string(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io_err)?.len();
        let location = self.start_upload(r).await?;
        let url = upload_url(&location, digest);
        let resp = self
            .send_upload(r, Access::Push, Method::PUT, &url, len, |b| {
                // Each (re)try streams the file from its start; an open error surfaces as a body
                // error of the request.
                let body = match std::fs::File::open(path) {
                    Ok(f) => {
                        reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                            tokio::fs::File::from_std(f),
                            1 << 20,
                        ))
                    }
                    Err(e) => reqwest::Body::wrap_stream(futures_util::stream::once(async move {
                        Err::<Bytes, _>(e)
                    })),
                };
                b.header(CONTENT_TYPE, "application/octet-stream")
                    .header(reqwest::header::CONTENT_LENGTH, len)
                    .body(body)
            })
            .await?;
        check_status(resp, Method::PUT, &url, "upload", &r.to_string()).await?;
        Ok(())
    }

    async fn start_upload(&self, r: &Reference) -> Result<String, RegistryError> {
        let url = format!("{}/blobs/uploads/", self.base_url(r));
        let resp = self
            .send(r, Access::Push, Method::POST, &url, |b| b)
            .await?;
        let resp = check_status(resp, Method::POST, &url, "upload", &r.to_string()).await?;
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Status {
                method: Method::POST,
                url: url.clone(),
                status: resp.status(),
                body: "upload response has no Location header".into(),
            })?;
        // Location may be relative to the registry root.
        Ok(if location.starts_with('/') {
            let base = self.base_url(r);
            let root = &base[..base.find("/v2/").expect("base url has /v2/")];
            format!("{root}{location}")
        } else {
            location.to_string()
        })
    }

    /// Puts a manifest under `tag_or_digest`; returns its digest.
    pub async fn push_manifest(
        &self,
        r: &Reference,
        tag_or_digest: &str,
        media_type: &str,
        body: Bytes,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::of(&body);
        let url = format!("{}/manifests/{tag_or_digest}", self.base_url(r));
        let resp = self
            .send_upload(r, Access::Push, Method::PUT, &url, body.len() as u64, |b| {
                b.header(CONTENT_TYPE, media_type).body(body.clone())
            })
            .await?;
        check_status(resp, Method::PUT, &url, "manifest upload", &r.to_string()).await?;
        Ok(digest)
    }
}

fn upload_url(location: &str, digest: &Digest) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

fn basic_header(c: &Credentials) -> String {
    use base64::Engine as _;
    let raw = format!("{}:{}", c.username, c.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Turns non-success statuses into errors: 404 into `NotFound` naming `what`, others into
/// `Status` with the start of the body (registries explain errors there).
async fn check_status(
    resp: Response,
    method: Method,
    url: &str,
    what: &'static str,
    reference: &str,
) -> Result<Response, RegistryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == StatusCode::NOT_FOUND {
        return Err(RegistryError::NotFound {
            what,
            reference: reference.to_string(),
        });
    }
    let body = tokio::time::timeout(ERROR_BODY_WAIT, resp.text())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    Err(RegistryError::Status {
        method,
        url: url.to_string(),
        status,
        body: body.trim().to_string(),
    })
}
