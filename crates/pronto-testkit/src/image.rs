//! OCI images built in-process from a declarative description, pushed to a registry.
//!
//! ```text
//! let image = ImageBuilder::new()
//!     .layer(Layer::gzip().dir("etc").file("etc/hosts", b"127.0.0.1 localhost\n").mode(0o644))
//!     .layer(Layer::zstd().whiteout("etc/hosts"))
//!     .entrypoint(&["/bin/server"])
//!     .push(&client, &registry.reference("app:v1"))
//!     .await?;
//! ```

use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use pronto_image::manifest::{self, Compression, Descriptor, Platform};
use pronto_image::{Digest, Reference, RegistryClient};
use serde_json::json;

/// A fixed mtime for entries that do not set one, so builds are reproducible.
pub const DEFAULT_MTIME: u64 = 1_700_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    CharDevice(u32, u32),
    BlockDevice(u32, u32),
    Fifo,
}

/// One tar entry. Paths are raw bytes: tests need non-UTF-8 and hostile names.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// A layer: entries in tar order, and how the blob is compressed.
#[derive(Debug, Clone)]
pub struct Layer {
    pub compression: Compression,
    pub entries: Vec<Entry>,
    /// Directories to add as they are on disk (bench images), after `entries`.
    pub host_dirs: Vec<(std::path::PathBuf, String)>,
}

impl Layer {
    pub fn new(compression: Compression) -> Layer {
        Layer {
            compression,
            entries: Vec::new(),
            host_dirs: Vec::new(),
        }
    }
    pub fn gzip() -> Layer {
        Self::new(Compression::Gzip)
    }
    pub fn zstd() -> Layer {
        Self::new(Compression::Zstd)
    }
    pub fn plain() -> Layer {
        Self::new(Compression::None)
    }

    fn push(mut self, path: impl AsRef<[u8]>, kind: EntryKind, mode: u32) -> Layer {
        self.entries.push(Entry {
            path: path.as_ref().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            xattrs: Vec::new(),
        });
        self
    }

    pub fn file(self, path: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> Layer {
        self.push(path, EntryKind::File(data.as_ref().to_vec()), 0o644)
    }
    pub fn dir(self, path: impl AsRef<[u8]>) -> Layer {
        self.push(path, EntryKind::Dir, 0o755)
    }
    pub fn symlink(self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Layer {
        self.push(path, EntryKind::Symlink(target.as_ref().to_vec()), 0o777)
    }
    pub fn hardlink(self, path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Layer {
        self.push(path, EntryKind::Hardlink(target.as_ref().to_vec()), 0o644)
    }
    pub fn char_device(self, path: impl AsRef<[u8]>, major: u32, minor: u32) -> Layer {
        self.push(path, EntryKind::CharDevice(major, minor), 0o666)
    }
    pub fn block_device(self, path: impl AsRef<[u8]>, major: u32, minor: u32) -> Layer {
        self.push(path, EntryKind::BlockDevice(major, minor), 0o660)
    }
    pub fn fifo(self, path: impl AsRef<[u8]>) -> Layer {
        self.push(path, EntryKind::Fifo, 0o644)
    }
    /// `DIR/.wh.NAME`: deletes `path` from lower layers.
    pub fn whiteout(self, path: &str) -> Layer {
        let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.push(wh, EntryKind::File(Vec::new()), 0o644)
    }
    /// `DIR/.wh..wh..opq`: hides everything lower layers put in `dir`.
    pub fn opaque(self, dir: &str) -> Layer {
        self.push(
            format!("{dir}/.wh..wh..opq"),
            EntryKind::File(Vec::new()),
            0o644,
        )
    }
    /// Adds a host directory's contents under `prefix` in the layer (symlinks kept as links).
    pub fn host_dir(mut self, dir: &Path, prefix: &str) -> Layer {
        self.host_dirs.push((dir.to_owned(), prefix.to_string()));
        self
    }

    fn last(&mut self) -> &mut Entry {
        self.entries
            .last_mut()
            .expect("a modifier needs an entry before it")
    }
    /// Sets the mode bits (incl. setuid/setgid/sticky) of the last entry.
    pub fn mode(mut self, mode: u32) -> Layer {
        self.last().mode = mode;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Layer {
        let e = self.last();
        e.uid = uid;
        e.gid = gid;
        self
    }
    pub fn mtime(mut self, mtime: u64) -> Layer {
        self.last().mtime = mtime;
        self
    }
    pub fn xattr(mut self, key: &str, value: impl AsRef<[u8]>) -> Layer {
        self.last()
            .xattrs
            .push((key.to_string(), value.as_ref().to_vec()));
        self
    }

    /// The uncompressed tar.
    pub fn tar_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        for e in &self.entries {
            append_entry(&mut b, e)?;
        }
        for (dir, prefix) in &self.host_dirs {
            b.append_dir_all(prefix, dir)
                .with_context(|| format!("adding {} to a layer", dir.display()))?;
        }
        Ok(b.into_inner()?)
    }

    /// (uncompressed tar, compressed blob).
    pub fn build(&self) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let tar = self.tar_bytes()?;
        let blob = compress(&tar, self.compression)?;
        Ok((tar, blob))
    }
}

pub fn compress(data: &[u8], compression: Compression) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    Ok(match compression {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(data)?;
            enc.finish()?
        }
        Compression::Zstd => zstd::encode_all(data, 3)?,
    })
}

/// Writes one entry with raw-byte names (GNU long-name records past 100 bytes), PAX xattrs first.
fn append_entry(b: &mut tar::Builder<Vec<u8>>, e: &Entry) -> anyhow::Result<()> {
    if !e.xattrs.is_empty() {
        let pax: Vec<(String, &[u8])> = e
            .xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
            .collect();
        b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), *v)))?;
    }
    let mut h = tar::Header::new_gnu();
    let (ty, data, link): (tar::EntryType, &[u8], Option<&[u8]>) = match &e.kind {
        EntryKind::File(d) => (tar::EntryType::Regular, d, None),
        EntryKind::Dir => (tar::EntryType::Directory, &[], None),
        EntryKind::Symlink(t) => (tar::EntryType::Symlink, &[], Some(t)),
        EntryKind::Hardlink(t) => (tar::EntryType::Link, &[], Some(t)),
        EntryKind::CharDevice(..) => (tar::EntryType::Char, &[], None),
        EntryKind::BlockDevice(..) => (tar::EntryType::Block, &[], None),
        EntryKind::Fifo => (tar::EntryType::Fifo, &[], None),
    };
    h.set_entry_type(ty);
    h.set_mode(e.mode);
    h.set_uid(e.uid);
    h.set_gid(e.gid);
    h.set_mtime(e.mtime);
    h.set_size(data.len() as u64);
    if let EntryKind::CharDevice(ma, mi) | EntryKind::BlockDevice(ma, mi) = e.kind {
        h.set_device_major(ma)?;
        h.set_device_minor(mi)?;
    }
    let mut path = e.path.clone();
    if ty == tar::EntryType::Directory && !path.ends_with(b"/") {
        path.push(b'/');
    }
    set_raw_name(b, &mut h, &path, false)?;
    if let Some(link) = link {
        set_raw_name(b, &mut h, link, true)?;
    }
    h.set_cksum();
    b.append(&h, data)?;
    Ok(())
}

/// Puts `name` in the header, or a GNU `L`/`K` record before it when it is too long. The tar
/// crate's own setters refuse `..` and absolute paths, which the traversal tests need to write.
fn set_raw_name(
    b: &mut tar::Builder<Vec<u8>>,
    h: &mut tar::Header,
    name: &[u8],
    link: bool,
) -> anyhow::Result<()> {
    let field: &mut [u8; 100] = if link {
        &mut h.as_old_mut().linkname
    } else {
        &mut h.as_old_mut().name
    };
    field.fill(0);
    if name.len() <= 100 {
        field[..name.len()].copy_from_slice(name);
        return Ok(());
    }
    field.copy_from_slice(&name[..100]);
    let mut long = tar::Header::new_gnu();
    long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    long.set_entry_type(if link {
        tar::EntryType::GNULongLink
    } else {
        tar::EntryType::GNULongName
    });
    long.set_mode(0o644);
    let mut data = name.to_vec();
    data.push(0);
    long.set_size(data.len() as u64);
    long.set_cksum();
    b.append(&long, data.as_slice())?;
    Ok(())
}

/// The image config's `config` section.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub exposed_ports: Vec<String>,
}

/// An image description: layers bottom-up, run config, manifest flavour.
#[derive(Debug, Clone, Default)]
pub struct ImageBuilder {
    pub layers: Vec<Layer>,
    pub run: RunConfig,
    /// Docker schema 2 media types instead of OCI ones.
    pub docker_media_types: bool,
    pub architecture: Option<String>,
}

/// What a push produced.
#[derive(Debug, Clone)]
pub struct PushedImage {
    pub reference: Reference,
    pub digest: Digest,
    pub manifest: manifest::ImageManifest,
    /// The manifest exactly as pushed.
    pub manifest_bytes: Bytes,
    pub config: serde_json::Value,
}

impl PushedImage {
    /// The reference pinned to the manifest digest.
    pub fn pinned(&self) -> Reference {
        self.reference.with_digest(self.digest.clone())
    }
}

impl ImageBuilder {
    pub fn new() -> ImageBuilder {
        ImageBuilder::default()
    }
    pub fn layer(mut self, layer: Layer) -> ImageBuilder {
        self.layers.push(layer);
        self
    }
    pub fn entrypoint(mut self, args: &[&str]) -> ImageBuilder {
        self.run.entrypoint = Some(args.iter().map(|s| s.to_string()).collect());
        self
    }
    pub fn cmd(mut self, args: &[&str]) -> ImageBuilder {
        self.run.cmd = Some(args.iter().map(|s| s.to_string()).collect());
        self
    }
    pub fn env(mut self, kv: &str) -> ImageBuilder {
        self.run.env.push(kv.to_string());
        self
    }
    pub fn working_dir(mut self, dir: &str) -> ImageBuilder {
        self.run.working_dir = Some(dir.to_string());
        self
    }
    pub fn user(mut self, user: &str) -> ImageBuilder {
        self.run.user = Some(user.to_string());
        self
    }
    pub fn expose(mut self, port: &str) -> ImageBuilder {
        self.run.exposed_ports.push(port.to_string());
        self
    }
    pub fn docker_media_types(mut self) -> ImageBuilder {
        self.docker_media_types = true;
        self
    }
    pub fn architecture(mut self, arch: &str) -> ImageBuilder {
        self.architecture = Some(arch.to_string());
        self
    }

    /// Builds every layer, the config and the manifest, pushes them, and tags the manifest with
    /// `reference`'s tag (or pushes it by digest).
    pub async fn push(
        &self,
        client: &RegistryClient,
        reference: &Reference,
    ) -> anyhow::Result<PushedImage> {
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        for layer in &self.layers {
            let (tar, blob) = layer.build()?;
            diff_ids.push(Digest::of(&tar).to_string());
            let size = blob.len() as u64;
            let digest = client.push_blob(reference, Bytes::from(blob)).await?;
            layer_descs.push(descriptor(
                self.layer_media_type(layer.compression),
                digest,
                size,
            ));
        }
        let mut run = serde_json::Map::new();
        let r = &self.run;
        if let Some(e) = &r.entrypoint {
            run.insert("Entrypoint".into(), json!(e));
        }
        if let Some(c) = &r.cmd {
            run.insert("Cmd".into(), json!(c));
        }
        if !r.env.is_empty() {
            run.insert("Env".into(), json!(r.env));
        }
        if let Some(w) = &r.working_dir {
            run.insert("WorkingDir".into(), json!(w));
        }
        if let Some(u) = &r.user {
            run.insert("User".into(), json!(u));
        }
        if !r.exposed_ports.is_empty() {
            let ports: serde_json::Map<String, serde_json::Value> = r
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            run.insert("ExposedPorts".into(), json!(ports));
        }
        let config = json!({
            "architecture": self.architecture.clone().unwrap_or_else(|| Platform::host().architecture),
            "os": "linux",
            "created": "2023-11-14T22:13:20Z",
            "config": run,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config_bytes = Bytes::from(serde_json::to_vec(&config)?);
        let config_size = config_bytes.len() as u64;
        let config_digest = client.push_blob(reference, config_bytes).await?;
        let (manifest_type, config_type) = if self.docker_media_types {
            (manifest::DOCKER_MANIFEST, manifest::DOCKER_CONFIG)
        } else {
            (manifest::OCI_MANIFEST, manifest::OCI_CONFIG)
        };
        let manifest = manifest::ImageManifest {
            schema_version: 2,
            media_type: Some(manifest_type.to_string()),
            artifact_type: None,
            config: descriptor(config_type, config_digest, config_size),
            layers: layer_descs,
            subject: None,
            annotations: None,
        };
        let body = Bytes::from(serde_json::to_vec(&manifest)?);
        let digest = client
            .push_manifest(
                reference,
                &reference.manifest_selector(),
                manifest_type,
                body.clone(),
            )
            .await?;
        Ok(PushedImage {
            reference: reference.clone(),
            digest,
            manifest,
            manifest_bytes: body,
            config,
        })
    }

    fn layer_media_type(&self, c: Compression) -> &'static str {
        match (self.docker_media_types, c) {
            (true, Compression::Gzip) => manifest::DOCKER_LAYER_GZIP,
            (true, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
            (_, Compression::Gzip) => manifest::OCI_LAYER_GZIP,
            (_, Compression::None) => manifest::OCI_LAYER_TAR,
            (_, Compression::Zstd) => manifest::OCI_LAYER_ZSTD,
        }
    }
}

fn descriptor(media_type: &str, digest: Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest,
        size,
        platform: None,
        annotations: None,
        artifact_type: None,
    }
}

/// Pushes an image index over already pushed manifests, tagged with `reference`'s tag.
pub async fn push_index(
    client: &RegistryClient,
    reference: &Reference,
    entries: &[(&PushedImage, Platform)],
) -> anyhow::Result<Digest> {
    let manifests: Vec<Descriptor> = entries
        .iter()
        .map(|(img, platform)| Descriptor {
            platform: Some(platform.clone()),
            ..descriptor(
                img.manifest
                    .media_type
                    .as_deref()
                    .unwrap_or(manifest::OCI_MANIFEST),
                img.digest.clone(),
                img.manifest_bytes.len() as u64,
            )
        })
        .collect();
    let index = manifest::ImageIndex {
        schema_version: 2,
        media_type: Some(manifest::OCI_INDEX.to_string()),
        manifests,
        annotations: None,
    };
    let body = Bytes::from(serde_json::to_vec(&index)?);
    Ok(client
        .push_manifest(
            reference,
            &reference.manifest_selector(),
            manifest::OCI_INDEX,
            body,
        )
        .await?)
}

/// Where Debian's `busybox-static` puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// The command of a busybox-httpd function image: serve `/www` on port 9000 (CGI under
/// `/www/cgi-bin/`).
pub const HTTPD: [&str; 6] = ["/bin/httpd", "-f", "-p", "9000", "-h", "/www"];

/// A function image: [`busybox_layer`], then `app` (its `/www`), running [`HTTPD`].
pub fn httpd_image(app: Layer) -> ImageBuilder {
    ImageBuilder::new()
        .layer(busybox_layer().expect("busybox layer"))
        .layer(app)
        .entrypoint(&HTTPD)
}

/// A layer with a static busybox at `/bin/busybox` and links for the applets a function image
/// needs (`sh`, `httpd`, ...): a real HTTP server (`httpd -f -p PORT -h DIR`, CGI under
/// `DIR/cgi-bin/`) without a Docker engine or a distribution rootfs.
pub fn busybox_layer() -> anyhow::Result<Layer> {
    let binary = std::fs::read(BUSYBOX)
        .with_context(|| format!("reading {BUSYBOX} (install the busybox-static package)"))?;
    let mut layer = Layer::gzip()
        .dir("bin")
        .file("bin/busybox", binary)
        .mode(0o755)
        .dir("tmp")
        .mode(0o1777)
        .dir("etc")
        .file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )
        .file("etc/group", "root:x:0:\nnogroup:x:65534:\n");
    for applet in [
        "sh", "httpd", "cat", "echo", "ls", "ps", "sleep", "head", "tail", "env", "id", "hostname",
        "wc", "dd", "true", "false", "printf", "kill", "awk", "tr", "grep", "mkdir", "rm", "nc",
    ] {
        layer = layer.symlink(format!("bin/{applet}"), "busybox");
    }
    Ok(layer)
}
