//! `pronto image verify`: the artifact rebuilt chunk by chunk must equal a plain unpack of its
//! source image — every path, type, mode, owner, mtime, size, device, symlink target, xattr,
//! hardlink and byte. Both revisions when the artifact has a hot one (`relayout`).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pronto_format::{Index, NodeKind};
use pronto_image::pull::{self, NoProgress, PullError, ResolvedImage};
use pronto_image::{Digest, RegistryClient, RegistryError};
use serde::Serialize;

use pronto_artifact::{
    fetch_artifact_in, fetch_artifact_revision, Artifact, ArtifactError, Revision,
};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Registry(Box<RegistryError>),
    #[error("index {digest}: {error}")]
    Index {
        digest: Digest,
        #[source]
        error: pronto_format::FormatError,
    },
    #[error("{path:?}: chunk {chunk} of the artifact: {error}")]
    Chunk {
        path: String,
        chunk: String,
        #[source]
        error: pronto_format::FormatError,
    },
    #[error("{path:?}: {what} differs: artifact has {artifact}, the image has {image}")]
    Mismatch {
        path: String,
        what: &'static str,
        artifact: String,
        image: String,
    },
    #[error("{path:?} is in the image but not in the artifact")]
    Missing { path: String },
    #[error("unpacking the source image: {0}")]
    Unpack(#[source] Box<PullError>),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<RegistryError> for VerifyError {
    fn from(e: RegistryError) -> Self {
        VerifyError::Registry(Box::new(e))
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub artifact: String,
    pub index_digest: Digest,
    pub entries: u64,
    pub files: u64,
    pub chunks: u64,
    pub file_bytes: u64,
    /// The hot revision (`sha256-<hex>.pronto-hot`), checked the same way, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hot: Option<Box<VerifyReport>>,
}

/// Fetches the artifact of `image` (from `artifact_repository`, else beside the image) and
/// compares it with a plain unpack of `image`; then its hot revision, if it has one.
pub async fn verify(
    client: &RegistryClient,
    image: &ResolvedImage,
    artifact_repository: Option<&pronto_image::Reference>,
    work_dir: &Path,
) -> Result<VerifyReport, VerifyError> {
    let repo = artifact_repository.unwrap_or(&image.pinned);
    let base = fetch_artifact_in(client, image, repo).await?;
    let hot = match fetch_artifact_revision(client, image, repo, &Revision::Hot).await {
        Ok(a) => Some(a),
        Err(ArtifactError::NoArtifact { source, .. })
            if matches!(*source, RegistryError::NotFound { .. }) =>
        {
            None
        }
        Err(e) => return Err(e.into()),
    };
    let io = |op, path: &Path| {
        let path = path.to_owned();
        move |source| VerifyError::Io { op, path, source }
    };
    std::fs::create_dir_all(work_dir).map_err(io("creating", work_dir))?;
    let scratch = tempfile::Builder::new()
        .prefix("pronto-verify-")
        .tempdir_in(work_dir)
        .map_err(io("creating scratch dir in", work_dir))?;
    let rootfs = scratch.path().join("rootfs");
    pull::unpack_image(client, image, &rootfs, Arc::new(NoProgress))
        .await
        .map_err(|e| VerifyError::Unpack(Box::new(e)))?;
    let mut report = verify_revision(client, base, &rootfs, scratch.path()).await?;
    if let Some(hot) = hot {
        report.hot = Some(Box::new(
            verify_revision(client, hot, &rootfs, scratch.path()).await?,
        ));
    }
    Ok(report)
}

/// One revision against the unpacked `rootfs`: every pack downloaded whole (each verified
/// against its digest; into `scratch`, reused by a later revision listing the same pack), then
/// every node and chunk compared.
async fn verify_revision(
    client: &RegistryClient,
    artifact: Artifact,
    rootfs: &Path,
    scratch: &Path,
) -> Result<VerifyReport, VerifyError> {
    let Artifact {
        reference,
        index_digest,
        index,
        packs,
        ..
    } = artifact;
    let mut pack_files = Vec::new();
    for (digest, size) in &packs {
        let path = scratch.join(format!("pack-{}", digest.hex()));
        if !path.exists() {
            client
                .download_blob(&reference, digest, Some(*size), &path, &|_| {})
                .await?;
        }
        pack_files.push(path);
    }
    let mut report = VerifyReport {
        artifact: reference.to_string(),
        index_digest,
        entries: 0,
        files: 0,
        chunks: 0,
        file_bytes: 0,
        hot: None,
    };
    let rootfs = rootfs.to_owned();
    tokio::task::spawn_blocking(move || {
        compare(&index, &rootfs, &pack_files, &mut report).map(|()| report)
    })
    .await
    .expect("verify task panicked")
}

fn compare(
    index: &Index,
    rootfs: &Path,
    packs: &[PathBuf],
    report: &mut VerifyReport,
) -> Result<(), VerifyError> {
    let index_digest = report.index_digest.clone();
    let index_err = |error| VerifyError::Index {
        digest: index_digest.clone(),
        error,
    };
    let walked = index.walk().map_err(index_err)?;
    let mut seen_inode: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut open_packs: HashMap<u32, std::fs::File> = HashMap::new();
    for (path, ino) in &walked {
        report.entries += 1;
        let shown = String::from_utf8_lossy(path).into_owned();
        let on_disk = rootfs.join(std::ffi::OsStr::from_bytes(path));
        let m = std::fs::symlink_metadata(&on_disk).map_err(|_| VerifyError::Mismatch {
            path: shown.clone(),
            what: "existence",
            artifact: "a node".into(),
            image: "nothing".into(),
        })?;
        let node = index.inode(*ino).map_err(index_err)?;
        let mismatch = |what, artifact: String, image: String| VerifyError::Mismatch {
            path: shown.clone(),
            what,
            artifact,
            image,
        };
        let kind = crate::tree::kind_of(m.file_type());
        if node.kind != kind {
            return Err(mismatch(
                "type",
                format!("{:?}", node.kind),
                format!("{kind:?}"),
            ));
        }
        let checks: [(&'static str, u64, u64); 4] = [
            ("mode", node.mode as u64, (m.mode() & 0o7777) as u64),
            ("uid", node.uid as u64, m.uid() as u64),
            ("gid", node.gid as u64, m.gid() as u64),
            (
                "rdev",
                node.rdev,
                if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
                    m.rdev()
                } else {
                    0
                },
            ),
        ];
        for (what, a, b) in checks {
            if a != b {
                return Err(mismatch(what, format!("{a:o}"), format!("{b:o}")));
            }
        }
        if kind != NodeKind::Dir
            && (node.mtime, node.mtime_nsec) != (m.mtime(), m.mtime_nsec() as u32)
        {
            return Err(mismatch(
                "mtime",
                node.mtime.to_string(),
                m.mtime().to_string(),
            ));
        }
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> = index
            .xattrs(*ino)
            .map_err(index_err)?
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        let disk_xattrs = crate::tree::xattrs(&on_disk).map_err(|source| VerifyError::Io {
            op: "reading xattrs of",
            path: on_disk.clone(),
            source,
        })?;
        if xattrs != disk_xattrs {
            return Err(mismatch(
                "xattrs",
                format!("{} entries", xattrs.len()),
                format!("{} entries", disk_xattrs.len()),
            ));
        }
        match kind {
            NodeKind::Symlink => {
                let target = std::fs::read_link(&on_disk).map_err(|source| VerifyError::Io {
                    op: "reading link",
                    path: on_disk.clone(),
                    source,
                })?;
                let a = index.symlink_target(*ino).map_err(index_err)?;
                if a != target.as_os_str().as_bytes() {
                    return Err(mismatch(
                        "symlink target",
                        String::from_utf8_lossy(a).into_owned(),
                        target.display().to_string(),
                    ));
                }
            }
            NodeKind::File => {
                // Paths of one inode in the artifact are one inode on disk too.
                let id = (m.dev(), m.ino());
                match seen_inode.get(ino) {
                    Some(first) if *first != id => {
                        return Err(mismatch(
                            "hardlink",
                            "a link to an earlier path".into(),
                            "a separate file".into(),
                        ))
                    }
                    Some(_) => continue,
                    None => {
                        seen_inode.insert(*ino, id);
                    }
                }
                if node.size != m.size() {
                    return Err(mismatch(
                        "size",
                        node.size.to_string(),
                        m.size().to_string(),
                    ));
                }
                report.files += 1;
                report.file_bytes += node.size;
                let mut f = std::fs::File::open(&on_disk).map_err(|source| VerifyError::Io {
                    op: "opening",
                    path: on_disk.clone(),
                    source,
                })?;
                for c in index.chunks(*ino).map_err(index_err)? {
                    report.chunks += 1;
                    let chunk_name = hex::encode(c.digest);
                    let pack_path =
                        packs
                            .get(c.pack as usize)
                            .ok_or_else(|| VerifyError::Chunk {
                                path: shown.clone(),
                                chunk: chunk_name.clone(),
                                error: pronto_format::FormatError::ChunkPackOutOfRange {
                                    ino: *ino,
                                    chunk: report.chunks as u32,
                                    pack: c.pack,
                                    packs: packs.len() as u32,
                                },
                            })?;
                    let pf = match open_packs.entry(c.pack) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(std::fs::File::open(pack_path).map_err(|source| {
                                VerifyError::Io {
                                    op: "opening",
                                    path: pack_path.clone(),
                                    source,
                                }
                            })?)
                        }
                    };
                    let mut stored = vec![0u8; c.compressed_size as usize];
                    pf.seek(SeekFrom::Start(c.offset))
                        .and_then(|_| pf.read_exact(&mut stored))
                        .map_err(|source| VerifyError::Io {
                            op: "reading chunk from",
                            path: pack_path.clone(),
                            source,
                        })?;
                    let data = pronto_format::decompress_chunk(&stored, &c).map_err(|error| {
                        VerifyError::Chunk {
                            path: shown.clone(),
                            chunk: chunk_name.clone(),
                            error,
                        }
                    })?;
                    let mut expected = vec![0u8; data.len()];
                    f.read_exact(&mut expected)
                        .map_err(|source| VerifyError::Io {
                            op: "reading",
                            path: on_disk.clone(),
                            source,
                        })?;
                    if expected != data {
                        return Err(mismatch(
                            "content",
                            format!("chunk {chunk_name}"),
                            "other bytes".into(),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    // And nothing of the image is missing from the artifact.
    let count = count_entries(rootfs).map_err(|source| VerifyError::Io {
        op: "walking",
        path: rootfs.to_owned(),
        source,
    })?;
    if count != walked.len() as u64 {
        let disk = crate::tree::walk(rootfs).map_err(|(path, source)| VerifyError::Io {
            op: "walking",
            path,
            source,
        })?;
        for e in disk {
            if index.resolve(&e.path).map_err(index_err)?.is_none() {
                return Err(VerifyError::Missing {
                    path: String::from_utf8_lossy(&e.path).into_owned(),
                });
            }
        }
    }
    Ok(())
}

/// Paths in the tree, the root included.
fn count_entries(root: &Path) -> std::io::Result<u64> {
    let mut n = 1;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            n += 1;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(n)
}
