//! The API token: made once per data directory, required on every control-API request.
//!
//! The token lives in `DATA_DIR/api-token` (mode 0600 from the moment it exists). It is never
//! logged: [`ApiToken`]'s `Debug` redacts it, and the only way to see it is [`ApiToken::expose`].

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::api::ApiError;

/// The token file inside the data directory.
pub const TOKEN_FILE: &str = "api-token";
/// Random bytes in a new token (hex-encoded: 64 characters).
const TOKEN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading api token {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing api token {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("generating api token: {0}")]
    Random(getrandom::Error),
    #[error(
        "api token {path} has mode {mode:04o}: it must not be accessible by group or others \
         (chmod 600 {path})"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("api token {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
}

/// A bearer token. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(Arc<str>);

impl ApiToken {
    /// The token itself: for printing once to its owner, or for a client's header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in constant time (for tokens of equal length; the length is not secret).
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// The token of `data_dir`, made if there is none. `true` with a token made by this call.
pub fn load_or_create(data_dir: &Path) -> Result<(ApiToken, bool), AuthError> {
    let path = data_dir.join(TOKEN_FILE);
    match read(&path) {
        Err(AuthError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        other => return other.map(|t| (t, false)),
    }
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(AuthError::Random)?;
    let token = hex::encode(bytes);
    // Written whole to a private temp file, then hard-linked into place: the link fails if the
    // name exists, so two processes starting at once agree on one token, and nobody ever reads
    // a half-written one.
    let tmp = data_dir.join(format!(".{TOKEN_FILE}.{}", hex::encode(&bytes[..4])));
    let write_err = |source| AuthError::Write {
        path: path.clone(),
        source,
    };
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(format!("{token}\n").as_bytes())?;
        f.sync_all()?;
        fs::hard_link(&tmp, &path)
    })();
    let _ = fs::remove_file(&tmp);
    match result {
        Ok(()) => Ok((ApiToken(token.into()), true)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read(&path).map(|t| (t, false)),
        Err(e) => Err(write_err(e)),
    }
}

fn read(path: &Path) -> Result<ApiToken, AuthError> {
    let read_err = |source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_err)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(AuthError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(read_err)?;
    let token = text.trim_end_matches(['\n', '\r']);
    let malformed = |reason: String| AuthError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    // The token goes into an HTTP header, so: visible ASCII, no spaces. Its value is not shown.
    if let Some(c) = token.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(malformed(format!(
            "contains {c:?}; only visible ASCII is allowed"
        )));
    }
    if token.len() < 16 {
        return Err(malformed(format!(
            "{} characters, at least 16 are needed",
            token.len()
        )));
    }
    Ok(ApiToken(token.into()))
}

/// Checks an `Authorization` header against the token. The error says why a request was
/// refused (the client is told; the token never is).
pub fn check(
    token: &ApiToken,
    header: Option<&axum::http::HeaderValue>,
) -> Result<(), &'static str> {
    let header = header.ok_or("missing Authorization header")?;
    let value = header
        .to_str()
        .map_err(|_| "Authorization header is not visible ASCII")?;
    let (scheme, presented) = value
        .split_once(' ')
        .ok_or("Authorization header must be \"Bearer TOKEN\"")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("Authorization header must be \"Bearer TOKEN\"");
    }
    if !token.matches(presented.trim()) {
        return Err("invalid API token");
    }
    Ok(())
}

/// Middleware: the request must carry `Authorization: Bearer TOKEN`.
pub async fn require_token(State(token): State<ApiToken>, req: Request, next: Next) -> Response {
    match check(&token, req.headers().get(AUTHORIZATION)) {
        Ok(()) => next.run(req).await,
        Err(reason) => {
            tracing::debug!(method = %req.method(), uri = %req.uri(), reason, "refused request");
            ApiError::Unauthorized(reason).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn token_is_made_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (t1, created) = load_or_create(dir.path()).unwrap();
        assert!(created);
        assert_eq!(t1.expose().len(), 64);
        assert!(t1.expose().bytes().all(|b| b.is_ascii_hexdigit()));
        let mode = fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (t2, created) = load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(t1, t2);
        // Only the token file is left: the temp file is gone.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [TOKEN_FILE]);
    }

    #[test]
    fn readable_or_malformed_token_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        load_or_create(dir.path()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(dir.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "api token {0} has mode 0644: it must not be accessible by group or others \
                 (chmod 600 {0})",
                path.display()
            )
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "short\n").unwrap();
        let e = load_or_create(dir.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "api token {} is malformed: 5 characters, at least 16 are needed",
                path.display()
            )
        );
    }

    #[test]
    fn debug_redacts() {
        let t = ApiToken("secret-secret-secret".into());
        assert_eq!(format!("{t:?}"), "ApiToken(<redacted>)");
    }

    #[test]
    fn header_checks() {
        let t = ApiToken("0123456789abcdef".into());
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(check(&t, Some(&h("Bearer 0123456789abcdef"))), Ok(()));
        assert_eq!(check(&t, Some(&h("bearer 0123456789abcdef"))), Ok(()));
        assert_eq!(check(&t, None), Err("missing Authorization header"));
        assert_eq!(
            check(&t, Some(&h("Basic 0123456789abcdef"))),
            Err("Authorization header must be \"Bearer TOKEN\"")
        );
        assert_eq!(
            check(&t, Some(&h("Bearer 0123456789abcdeF"))),
            Err("invalid API token")
        );
        assert_eq!(
            check(&t, Some(&h("Bearer 0123456789abcde"))),
            Err("invalid API token")
        );
    }
}
