//! Image references: `[REGISTRY/]REPO[:TAG][@DIGEST]`, parsed the way container engines do.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// Registry used when a reference names none (as `docker pull` does).
pub const DEFAULT_REGISTRY: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";

/// A parsed image reference.
///
/// A digest, when present, wins over the tag: it is what gets pulled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Host and optional port, e.g. `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/debian`.
    pub repository: String,
    /// Tag, `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("empty image reference")]
    Empty,
    #[error(
        "invalid repository name {0:?}: only lowercase letters, digits and . _ - / are allowed"
    )]
    Repository(String),
    #[error("invalid tag {0:?}: at most 128 of [A-Za-z0-9_.-], not starting with . or -")]
    Tag(String),
    #[error("invalid digest in reference: {0}")]
    Digest(#[from] crate::digest::DigestError),
}

impl Reference {
    /// The tag or digest to ask the registry for (`/v2/<repo>/manifests/<this>`).
    pub fn manifest_selector(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The same repository pinned to `digest` (the tag is kept for display only).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// True for registries on a loopback address, which are spoken to over plain HTTP.
    pub fn is_loopback_registry(&self) -> bool {
        let host = host_of(&self.registry);
        host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false)
    }
}

fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        // [::1]:5000
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.rsplit_once(':').map_or(registry, |(h, _)| h)
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>()?)),
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/' (a port is before it).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&rest[..i], Some(rest[i + 1..].to_string()))
            }
            None => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && !t.starts_with(['.', '-'])
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                return Err(ReferenceError::Tag(t.clone()));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, repo))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), repo.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let repo_ok = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
                    && part.as_bytes()[0].is_ascii_alphanumeric()
            });
        if !repo_ok {
            return Err(ReferenceError::Repository(repository));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some(DEFAULT_TAG.to_string())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_registry_port_tag_and_digest() {
        let r: Reference = "127.0.0.1:5000/team/app:v1".parse().unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(r.is_loopback_registry());
        assert_eq!(r.manifest_selector(), "v1");

        let r: Reference = format!("localhost:5000/app@{D}").parse().unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_selector(), D);
        assert_eq!(r.to_string(), format!("localhost:5000/app@{D}"));

        let r: Reference = "[::1]:5000/app".parse().unwrap();
        assert_eq!(r.registry, "[::1]:5000");
        assert!(r.is_loopback_registry());
        assert_eq!(r.tag.as_deref(), Some("latest"));
    }

    #[test]
    fn defaults_like_docker() {
        let r: Reference = "debian".parse().unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/debian");
        assert!(!r.is_loopback_registry());
        let r: Reference = "quay.io/x/y:1.0".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("quay.io", "x/y")
        );
    }

    #[test]
    fn rejects_bad_input_with_the_bad_value() {
        assert_eq!("".parse::<Reference>(), Err(ReferenceError::Empty));
        let e = "localhost:5000/App".parse::<Reference>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid repository name \"App\": only lowercase letters, digits and . _ - / are allowed"
        );
        assert!(matches!(
            "a/b:-x".parse::<Reference>(),
            Err(ReferenceError::Tag(_))
        ));
        assert!(matches!(
            "a/b@sha256:zz".parse::<Reference>(),
            Err(ReferenceError::Digest(_))
        ));
        assert!(matches!(
            "localhost:5000/a/../b".parse::<Reference>(),
            Err(ReferenceError::Repository(_))
        ));
    }
}
