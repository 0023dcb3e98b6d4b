//! Manifests and image indexes, OCI and Docker schema 2.
//!
//! Our own small serde types rather than `oci-spec`'s: the two formats differ only in media-type
//! strings, and keeping the parse here lets every digest be validated as it is read (see
//! [`Digest`]). The image *config* is `oci-spec`'s [`ImageConfiguration`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// What the `Accept` header of a manifest request lists.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a layer media type, or `None` for a media type that is not a layer
    /// Pronto can unpack.
    pub fn of_layer_media_type(media_type: &str) -> Option<Compression> {
        // Non-distributable ("foreign") layers use the same encodings.
        let mt = media_type.replace(".nondistributable.", ".");
        match mt.as_str() {
            OCI_LAYER_TAR | "application/vnd.docker.image.rootfs.diff.tar" => {
                Some(Compression::None)
            }
            OCI_LAYER_GZIP
            | DOCKER_LAYER_GZIP
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            OCI_LAYER_ZSTD => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// A `BTreeMap`: serialized in key order, so a manifest built twice has one digest.
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// The platform this binary runs on, in OCI's words.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            architecture: architecture.to_string(),
            os: std::env::consts::OS.to_string(),
            variant: (architecture == "arm64").then(|| "v8".to_string()),
        }
    }

    /// `other` can run here: same os and architecture, and the variant matches when both say one
    /// (arm64 images often omit `v8`).
    pub fn accepts(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && match (&self.variant, &other.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index / Docker manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// What a manifest request returned, once its kind is known.
#[derive(Debug, Clone)]
pub enum ManifestKind {
    Image(Box<ImageManifest>),
    Index(ImageIndex),
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("malformed manifest: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("unsupported manifest schemaVersion {0} (expected 2)")]
    SchemaVersion(u32),
    #[error("unsupported layer media type {media_type:?} for layer {digest}")]
    UnsupportedLayer { media_type: String, digest: Digest },
    #[error("no manifest for platform {wanted} in the index (it has: {available})")]
    NoMatchingPlatform { wanted: Platform, available: String },
}

/// Parses a manifest body. `content_type` is the response's `Content-Type`; when it is missing or
/// generic the body's own `mediaType` (or its shape) decides.
pub fn parse_manifest(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<ManifestKind, ManifestError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        schema_version: Option<u32>,
    }
    let probe: Probe = serde_json::from_slice(body).map_err(ManifestError::Malformed)?;
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "text/plain");
    let media_type = match (content_type, &probe.media_type) {
        (Some(c), _) => c.to_string(),
        (None, Some(m)) => m.clone(),
        (None, None) if probe.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) => OCI_MANIFEST.to_string(),
    };
    if let Some(v) = probe.schema_version {
        if v != 2 {
            return Err(ManifestError::SchemaVersion(v));
        }
    }
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(ManifestKind::Image(Box::new(
            serde_json::from_slice(body).map_err(ManifestError::Malformed)?,
        ))),
        OCI_INDEX | DOCKER_MANIFEST_LIST => Ok(ManifestKind::Index(
            serde_json::from_slice(body).map_err(ManifestError::Malformed)?,
        )),
        other => Err(ManifestError::UnsupportedMediaType(other.to_string())),
    }
}

impl ImageIndex {
    /// The manifest for `platform`: the first entry that matches, as container engines pick.
    pub fn select(&self, platform: &Platform) -> Result<&Descriptor, ManifestError> {
        self.manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| platform.accepts(p)))
            .ok_or_else(|| ManifestError::NoMatchingPlatform {
                wanted: platform.clone(),
                available: self
                    .manifests
                    .iter()
                    .map(|d| {
                        d.platform
                            .as_ref()
                            .map_or("unknown".into(), |p| p.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

impl ImageManifest {
    /// Every layer's compression, or the first layer Pronto cannot unpack.
    pub fn layer_compressions(&self) -> Result<Vec<Compression>, ManifestError> {
        self.layers
            .iter()
            .map(|l| {
                Compression::of_layer_media_type(&l.media_type).ok_or_else(|| {
                    ManifestError::UnsupportedLayer {
                        media_type: l.media_type.clone(),
                        digest: l.digest.clone(),
                    }
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn docker_and_oci_manifests_parse_by_content_type_or_body() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
               "config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{D}","size":2}},
               "layers":[{{"mediaType":"{DOCKER_LAYER_GZIP}","digest":"{D}","size":0}}]}}"#
        );
        let ManifestKind::Image(m) = parse_manifest(None, body.as_bytes()).unwrap() else {
            panic!("expected an image manifest")
        };
        assert_eq!(m.layer_compressions().unwrap(), vec![Compression::Gzip]);
        assert!(matches!(
            parse_manifest(Some(OCI_MANIFEST), body.as_bytes()),
            Ok(ManifestKind::Image(_))
        ));
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse_manifest(None, b"{not json").unwrap_err();
        assert!(e.to_string().starts_with("malformed manifest: "), "{e}");
        let e = parse_manifest(
            Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
            br#"{"schemaVersion":2}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported manifest media type \"application/vnd.docker.distribution.manifest.v1+prettyjws\""
        );
        let e = parse_manifest(None, br#"{"schemaVersion":1}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported manifest schemaVersion 1 (expected 2)"
        );
        let bad_digest = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"sha256:12","size":2}},"layers":[]}}"#
        );
        let e = parse_manifest(None, bad_digest.as_bytes()).unwrap_err();
        assert!(
            e.to_string().contains("malformed digest \"sha256:12\""),
            "{e}"
        );
    }

    #[test]
    fn layer_media_types() {
        assert_eq!(
            Compression::of_layer_media_type(OCI_LAYER_ZSTD),
            Some(Compression::Zstd)
        );
        assert_eq!(
            Compression::of_layer_media_type(
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            ),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::of_layer_media_type("application/x-bzip2"),
            None
        );
    }

    #[test]
    fn index_selects_the_host_platform_or_lists_what_it_has() {
        let entry = |arch: &str| Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: D.parse().unwrap(),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            }),
            annotations: None,
            artifact_type: None,
        };
        let idx = ImageIndex {
            schema_version: 2,
            media_type: None,
            manifests: vec![entry("s390x"), entry("amd64"), entry("arm64")],
            annotations: None,
        };
        let amd64 = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(
            idx.select(&amd64)
                .unwrap()
                .platform
                .as_ref()
                .unwrap()
                .architecture,
            "amd64"
        );
        let riscv = Platform {
            architecture: "riscv64".into(),
            ..amd64
        };
        assert_eq!(
            idx.select(&riscv).unwrap_err().to_string(),
            "no manifest for platform linux/riscv64 in the index (it has: linux/s390x, linux/amd64, linux/arm64)"
        );
    }
}
