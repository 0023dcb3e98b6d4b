//! Registry credentials (`~/.docker/config.json` style) and `WWW-Authenticate` challenges.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

/// A username and password for one registry. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("reading registry credentials {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing registry credentials {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("registry credentials {path}: entry for {registry:?} has an invalid auth field")]
    BadAuthField { path: PathBuf, registry: String },
}

/// Credentials per registry host, as read from a Docker-style config file.
#[derive(Debug, Clone, Default)]
pub struct CredentialStore {
    by_registry: HashMap<String, Credentials>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, DockerAuthEntry>,
}

#[derive(Deserialize)]
struct DockerAuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl CredentialStore {
    /// The store from `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; empty when
    /// neither exists.
    pub fn from_default_location() -> Result<Self, AuthConfigError> {
        let path = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) => PathBuf::from(dir).join("config.json"),
            None => match std::env::var_os("HOME") {
                Some(home) => PathBuf::from(home).join(".docker/config.json"),
                None => return Ok(Self::default()),
            },
        };
        if !path.exists() {
            return Ok(Self::default());
        }
        Self::from_file(&path)
    }

    pub fn from_file(path: &Path) -> Result<Self, AuthConfigError> {
        let text = std::fs::read(path).map_err(|source| AuthConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: DockerConfig =
            serde_json::from_slice(&text).map_err(|source| AuthConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let mut by_registry = HashMap::new();
        for (key, entry) in config.auths {
            let bad = || AuthConfigError::BadAuthField {
                path: path.to_owned(),
                registry: key.clone(),
            };
            let creds = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|_| bad())?;
                    let raw = String::from_utf8(raw).map_err(|_| bad())?;
                    let (u, p) = raw.split_once(':').ok_or_else(bad)?;
                    Credentials {
                        username: u.to_string(),
                        password: p.to_string(),
                    }
                }
                (_, Some(username), Some(password)) => Credentials { username, password },
                _ => continue,
            };
            by_registry.insert(normalize_registry_key(&key), creds);
        }
        Ok(CredentialStore { by_registry })
    }

    pub fn insert(&mut self, registry: &str, creds: Credentials) {
        self.by_registry
            .insert(normalize_registry_key(registry), creds);
    }

    pub fn get(&self, registry: &str) -> Option<&Credentials> {
        self.by_registry.get(&normalize_registry_key(registry))
    }
}

/// `https://index.docker.io/v1/` and `docker.io` name the same registry; keys may carry a scheme
/// and a path.
fn normalize_registry_key(key: &str) -> String {
    let key = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_auth_params(params);
    Some(Challenge::Bearer {
        realm: params.get("realm")?.clone(),
        service: params.get("service").cloned(),
        scope: params.get("scope").cloned(),
    })
}

/// `key="value", key2=value2`; quoted values may hold commas (scopes do).
fn parse_auth_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        rest = &rest[eq + 1..];
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            value = quoted[..end].to_string();
            rest = quoted.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        out.insert(key, value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge_with_comma_in_scope() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(
            parse_challenge("Bearer service=x"),
            None,
            "realm is required"
        );
    }

    #[test]
    fn reads_docker_config_auth_and_plain_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        // "alice:s3cr:et" — passwords may contain ':'
        std::fs::write(
            &path,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"YWxpY2U6czNjcjpldA=="},
                "127.0.0.1:5000":{"username":"bob","password":"pw"},
                "empty.example":{}}}"#,
        )
        .unwrap();
        let store = CredentialStore::from_file(&path).unwrap();
        let c = store.get("docker.io").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "s3cr:et")
        );
        assert_eq!(store.get("127.0.0.1:5000").unwrap().username, "bob");
        assert!(store.get("empty.example").is_none());
        assert!(
            !format!("{c:?}").contains("s3cr"),
            "Debug must not leak the password"
        );
    }

    #[test]
    fn bad_auth_field_names_the_registry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"auths":{"r.example":{"auth":"!!notbase64"}}}"#).unwrap();
        let e = CredentialStore::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("\"r.example\" has an invalid auth field"), "{e}");
    }
}
