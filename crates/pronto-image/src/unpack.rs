//! Applies OCI layer tars to a root directory, as a container engine does.
//!
//! Semantics (OCI image spec, "Applying Changesets"):
//! - `DIR/.wh.NAME` deletes `DIR/NAME` from the layers below; `DIR/.wh..wh..opq` hides every
//!   child of `DIR` that lower layers made (entries of the same layer stay).
//! - A directory entry over an existing directory only updates its metadata; any other
//!   replacement removes what was there first (file ↔ directory both ways).
//! - Hardlinks link to a path already in the tree (this layer's or a lower one's).
//!
//! Security: entry names with `..` or a leading `/` are refused. Every path is resolved with
//! `openat2(RESOLVE_IN_ROOT)`, so symlinks met on the way (`etc -> /etc`, `x -> ../../..`) are
//! resolved as if the root were `/`: they can never lead outside it. The last component is never
//! followed (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`), so an entry replaces a symlink instead of
//! writing through it.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;
use tokio_util::sync::CancellationToken;

use crate::manifest::Compression;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("refusing tar entry {path:?}: {reason}")]
    Traversal { path: String, reason: &'static str },
    #[error("reading layer tar: {0}")]
    ReadTar(#[source] io::Error),
    #[error("{op} {path:?}: {source}")]
    Entry {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("tar entry {path:?} has unsupported type {kind:?}")]
    UnsupportedEntry { path: String, kind: u8 },
    #[error("hardlink {path:?} points to {target:?}, which is not in the tree")]
    HardlinkTarget { path: String, target: String },
    #[error("opening unpack root {path}: {source}")]
    Root {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The uncompressed layers (tar streams, and the holes of sparse files) went over
    /// [`Unpacker::with_size_limit`]: a decompression bomb, or an image larger than allowed.
    #[error(
        "uncompressed size exceeds the limit of {limit} bytes \
         ({before} bytes unpacked from the layers before this one)"
    )]
    TooLarge { limit: u64, before: u64 },
    #[error("cancelled")]
    Cancelled,
}

/// What one layer did to the tree.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LayerStats {
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub file_bytes: u64,
    pub whiteouts: u64,
}

/// Takes the contents of regular files instead of the files (the converter chunks them straight
/// from the layer stream): the files are still created, with their metadata and length, but
/// sparse, without data.
pub trait ContentSink: Send {
    /// Reads the content of the file `origin` (`size` bytes by its tar header) from `content`;
    /// returns the number of bytes read, which becomes the file's length.
    fn file(&mut self, origin: &FileOrigin, size: u64, content: &mut dyn Read) -> io::Result<u64>;
}

/// Applies layers, in order, to one root directory.
#[derive(Debug)]
pub struct Unpacker {
    root: OwnedFd,
    /// chown and device nodes need root; without it owners stay the caller's and devices are skipped.
    privileged: bool,
    /// Device nodes are not created even as root ([`Unpacker::without_devices`]).
    skip_devices: bool,
    /// Directory mtimes, applied once at the end: creating a child changes its parent's mtime.
    dir_mtimes: HashMap<Vec<u8>, i64>,
    /// Layers applied so far (the index of the one being applied).
    layer: usize,
    /// Which layer entry wrote each regular file, by inode number (see [`FileOrigin`]).
    origins: HashMap<u64, FileOrigin>,
    /// Where file contents go instead of the files, if set.
    sink: Option<Sink>,
    /// Bound of the uncompressed bytes read over all layers (see [`Unpacker::with_size_limit`]).
    max_bytes: u64,
    /// Uncompressed bytes read so far, over all layers.
    read_bytes: u64,
    /// Stops the unpack at its next read.
    cancel: Option<CancellationToken>,
}

/// Why [`Metered`] stopped the reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Limit,
    Cancelled,
}

/// The read budget of one layer, shared by its reader and the entry loop.
struct Budget {
    used: Cell<u64>,
    limit: u64,
    stop: Cell<Option<Stop>>,
    cancel: Option<CancellationToken>,
}

impl Budget {
    /// Counts `n` more uncompressed bytes; false (and the stop recorded) once over the limit.
    fn charge(&self, n: u64) -> bool {
        let used = self.used.get().saturating_add(n);
        self.used.set(used);
        if used > self.limit {
            self.stop.set(Some(Stop::Limit));
            return false;
        }
        true
    }

    fn cancelled(&self) -> bool {
        let cancelled = self.cancel.as_ref().is_some_and(|c| c.is_cancelled());
        if cancelled {
            self.stop.set(Some(Stop::Cancelled));
        }
        cancelled
    }
}

/// The layer's decompressed stream, counted as the tar reader reads it: a bomb stops after at
/// most the limit (plus one read), however small it was compressed.
struct Metered<'a, R> {
    inner: R,
    budget: &'a Budget,
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.budget.cancelled() {
            return Err(io::Error::other("unpack cancelled"));
        }
        let n = self.inner.read(buf)?;
        if !self.budget.charge(n as u64) {
            return Err(io::Error::other("uncompressed size over the limit"));
        }
        Ok(n)
    }
}

struct Sink(Box<dyn ContentSink>);

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentSink")
    }
}

/// The tar entry a regular file of the tree came from. Files are never changed in place (a
/// later entry replaces them with a new inode, hardlinks share the content), so the layer digest
/// and the entry path name the file's bytes: what the converter's layer memo relies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOrigin {
    pub layer: usize,
    /// The entry's path in the layer tar (normalized).
    pub path: Vec<u8>,
}

/// One tar entry's path, split into checked components.
struct EntryPath {
    display: String,
    components: Vec<Vec<u8>>,
}

impl EntryPath {
    fn parse(raw: &[u8]) -> Result<EntryPath, UnpackError> {
        let display = String::from_utf8_lossy(raw).into_owned();
        if raw.starts_with(b"/") {
            return Err(UnpackError::Traversal {
                path: display,
                reason: "absolute path",
            });
        }
        let mut components = Vec::new();
        for c in raw.split(|&b| b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => {
                    return Err(UnpackError::Traversal {
                        path: display,
                        reason: "path contains '..'",
                    })
                }
                c => components.push(c.to_vec()),
            }
        }
        Ok(EntryPath {
            display,
            components,
        })
    }

    fn joined(&self, n: usize) -> Vec<u8> {
        self.components[..n].join(&b'/')
    }

    fn parent(&self) -> &[Vec<u8>] {
        &self.components[..self.components.len().saturating_sub(1)]
    }

    fn name(&self) -> Option<&OsStr> {
        self.components.last().map(|c| OsStr::from_bytes(c))
    }
}

fn entry_err<'a>(op: &'static str, path: &'a str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |e| UnpackError::Entry {
        op,
        path: path.to_string(),
        source: e.into(),
    }
}

impl Unpacker {
    /// An unpacker writing into `root`, which must exist and be a directory.
    pub fn new(root: &Path) -> Result<Unpacker, UnpackError> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| UnpackError::Root {
            path: root.display().to_string(),
            source: e.into(),
        })?;
        Ok(Unpacker {
            root: fd,
            privileged: rustix::process::geteuid().is_root(),
            skip_devices: false,
            // The root's time, unless a layer has a "./" entry.
            dir_mtimes: HashMap::from([(Vec::new(), 0)]),
            layer: 0,
            origins: HashMap::new(),
            sink: None,
            max_bytes: u64::MAX,
            read_bytes: 0,
            cancel: None,
        })
    }

    /// Bounds the uncompressed bytes read over all the layers this unpacker applies: the tar
    /// streams as read, plus the holes of sparse entries (which the tar reader expands into
    /// zeros without reading them). A layer that goes over fails with
    /// [`UnpackError::TooLarge`] after at most `max_bytes` (and one read) were read.
    pub fn with_size_limit(mut self, max_bytes: u64) -> Unpacker {
        self.max_bytes = max_bytes;
        self
    }

    /// Stops the layer being applied at its next read once `cancel` is cancelled
    /// ([`UnpackError::Cancelled`]); what was written stays for the caller to remove.
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Unpacker {
        self.cancel = Some(cancel);
        self
    }

    /// Creates no character or block device nodes: an image's device nodes keep their modes
    /// (often 0666, as umoci and container engines create them), so in a directory other users
    /// can reach they are a way to the host's devices. Fifos are still made.
    pub fn without_devices(mut self) -> Unpacker {
        self.skip_devices = true;
        self
    }

    /// Uncompressed bytes read so far, over all layers.
    pub fn unpacked_bytes(&self) -> u64 {
        self.read_bytes
    }

    /// Hands regular-file contents to `sink` instead of writing them (see [`ContentSink`]).
    pub fn with_content_sink(mut self, sink: Box<dyn ContentSink>) -> Unpacker {
        self.sink = Some(Sink(sink));
        self
    }

    /// Applies one uncompressed layer tar.
    pub fn apply_layer(&mut self, reader: impl Read) -> Result<LayerStats, UnpackError> {
        let before = self.read_bytes;
        let budget = Budget {
            used: Cell::new(before),
            limit: self.max_bytes,
            stop: Cell::new(None),
            cancel: self.cancel.clone(),
        };
        let result = self.apply_entries(
            Metered {
                inner: reader,
                budget: &budget,
            },
            &budget,
        );
        self.read_bytes = budget.used.get().min(self.max_bytes);
        // The reader's error reaches us wrapped by the tar reader (or as a write error): name
        // the real cause.
        match budget.stop.get() {
            Some(Stop::Limit) => Err(UnpackError::TooLarge {
                limit: self.max_bytes,
                before,
            }),
            Some(Stop::Cancelled) => Err(UnpackError::Cancelled),
            None => result,
        }
    }

    fn apply_entries(
        &mut self,
        reader: impl Read,
        budget: &Budget,
    ) -> Result<LayerStats, UnpackError> {
        let mut archive = tar::Archive::new(reader);
        let mut stats = LayerStats::default();
        // Paths this layer made (entries and the parents made for them): an opaque marker
        // hides only what lower layers made.
        let mut made_here: HashSet<Vec<u8>> = HashSet::new();
        for entry in archive.entries().map_err(UnpackError::ReadTar)? {
            let mut entry = entry.map_err(UnpackError::ReadTar)?;
            stats.entries += 1;
            if budget.cancelled() {
                return Err(UnpackError::Cancelled);
            }
            if entry.header().entry_type().is_gnu_sparse() {
                // The holes are zeros the tar reader makes up: bytes of the layer that were
                // never in the stream. (`size` is the file's, `entry_size` what is stored.)
                let stored = entry.header().entry_size().unwrap_or(0);
                if !budget.charge(entry.size().saturating_sub(stored)) {
                    return Err(UnpackError::TooLarge {
                        limit: budget.limit,
                        before: 0,
                    });
                }
            }
            let path = EntryPath::parse(&entry.path_bytes())?;
            let Some(name) = path.components.last() else {
                // The root itself ("./"): take its metadata.
                let meta = EntryMeta::read(&mut entry)?;
                self.set_meta(
                    self.root.as_fd(),
                    OsStr::new("."),
                    &meta,
                    &path,
                    FileType::Directory,
                )?;
                self.dir_mtimes.insert(Vec::new(), meta.mtime);
                continue;
            };
            if name.as_slice() == OPAQUE_MARKER {
                stats.whiteouts += 1;
                self.make_opaque(&path, &made_here)?;
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                stats.whiteouts += 1;
                self.whiteout(&path, hidden, &made_here)?;
                continue;
            }
            let parent = self.open_parent(&path, &mut made_here)?;
            made_here.insert(path.joined(path.components.len()));
            stats.file_bytes += self.write_entry(parent.as_fd(), &path, &mut entry)?;
        }
        self.layer += 1;
        Ok(stats)
    }

    /// Where each regular file came from, by inode number.
    pub fn take_origins(&mut self) -> HashMap<u64, FileOrigin> {
        std::mem::take(&mut self.origins)
    }

    /// Sets directory mtimes, deepest first. Call once after the last layer.
    pub fn finish(mut self) -> Result<(), UnpackError> {
        let mut dirs: Vec<_> = std::mem::take(&mut self.dir_mtimes).into_iter().collect();
        dirs.sort_by_key(|(p, _)| {
            std::cmp::Reverse(p.iter().filter(|&&b| b == b'/').count() + usize::from(!p.is_empty()))
        });
        for (path, mtime) in dirs {
            let rel = if path.is_empty() { b".".to_vec() } else { path };
            let fd = match self.resolve(&rel, OFlags::RDONLY | OFlags::DIRECTORY) {
                Ok(fd) => fd,
                Err(Errno::NOENT | Errno::NOTDIR) => continue, // removed by a later layer
                Err(e) => {
                    return Err(entry_err(
                        "opening directory",
                        &String::from_utf8_lossy(&rel),
                    )(e))
                }
            };
            let ts = Timestamps {
                last_access: Timespec {
                    tv_sec: mtime,
                    tv_nsec: 0,
                },
                last_modification: Timespec {
                    tv_sec: mtime,
                    tv_nsec: 0,
                },
            };
            rustix::fs::futimens(&fd, &ts).map_err(entry_err(
                "setting mtime of",
                &String::from_utf8_lossy(&rel),
            ))?;
        }
        Ok(())
    }

    /// Opens `rel` (relative to the root) with every symlink resolved inside the root.
    fn resolve(&self, rel: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
        let rel = if rel.is_empty() { b"." as &[u8] } else { rel };
        rustix::fs::openat2(
            &self.root,
            OsStr::from_bytes(rel),
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// The directory that will hold the entry, creating missing parents (0755, root-owned).
    fn open_parent(
        &mut self,
        path: &EntryPath,
        made_here: &mut HashSet<Vec<u8>>,
    ) -> Result<OwnedFd, UnpackError> {
        let parent = path.parent();
        let dir_flags = OFlags::PATH | OFlags::DIRECTORY;
        match self.resolve(&parent.join(&b'/'), dir_flags) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(entry_err("opening parent of", &path.display)(e)),
        }
        self.mkdir_all(parent, made_here)
            .map_err(entry_err("creating parent directory for", &path.display))
    }

    /// `mkdir -p` of `components` inside the root, following symlinks met on the way as the
    /// kernel would if the root were `/` (so a link to a missing directory gets that directory
    /// made, inside the root). `..` never climbs above the root.
    fn mkdir_all(
        &mut self,
        components: &[Vec<u8>],
        made_here: &mut HashSet<Vec<u8>>,
    ) -> Result<OwnedFd, Errno> {
        const MAX_SYMLINKS: usize = 40; // the kernel's limit
        let dir_flags = OFlags::PATH | OFlags::DIRECTORY;
        let mut remaining: std::collections::VecDeque<Vec<u8>> =
            components.iter().cloned().collect();
        let mut resolved: Vec<Vec<u8>> = Vec::new();
        let mut links = 0;
        while let Some(c) = remaining.pop_front() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            // `resolved` holds no symlinks, so this opens exactly that path.
            let here = self.resolve(&resolved.join(&b'/'), dir_flags)?;
            let name = OsStr::from_bytes(&c);
            match rustix::fs::statat(&here, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => resolved.push(c),
                    FileType::Symlink => {
                        links += 1;
                        if links > MAX_SYMLINKS {
                            return Err(Errno::LOOP);
                        }
                        let target = rustix::fs::readlinkat(&here, name, Vec::new())?;
                        let target = target.as_bytes();
                        if target.starts_with(b"/") {
                            resolved.clear();
                        }
                        for t in target.split(|&b| b == b'/').rev() {
                            remaining.push_front(t.to_vec());
                        }
                    }
                    _ => return Err(Errno::NOTDIR),
                },
                Err(Errno::NOENT) => {
                    rustix::fs::mkdirat(&here, name, Mode::from_raw_mode(0o755))?;
                    resolved.push(c);
                    let made = resolved.join(&b'/');
                    // No tar entry gives it a time: the epoch, not "now", so that unpacking
                    // the same image twice gives the same tree.
                    self.dir_mtimes.insert(made.clone(), 0);
                    made_here.insert(made);
                }
                Err(e) => return Err(e),
            }
        }
        self.resolve(&resolved.join(&b'/'), dir_flags)
    }

    fn whiteout(
        &self,
        path: &EntryPath,
        hidden: &[u8],
        made_here: &HashSet<Vec<u8>>,
    ) -> Result<(), UnpackError> {
        let target = [path.parent(), &[hidden.to_vec()]].concat().join(&b'/');
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(UnpackError::Traversal {
                path: path.display.clone(),
                reason: "whiteout of an invalid name",
            });
        }
        if made_here.contains(&target) {
            return Ok(()); // a whiteout hides lower layers only
        }
        let parent =
            match self.resolve(&path.parent().join(&b'/'), OFlags::PATH | OFlags::DIRECTORY) {
                Ok(fd) => fd,
                Err(Errno::NOENT | Errno::NOTDIR) => return Ok(()), // nothing to hide
                Err(e) => return Err(entry_err("opening parent of whiteout", &path.display)(e)),
            };
        remove_all_at(parent.as_fd(), OsStr::from_bytes(hidden)).map_err(|source| {
            UnpackError::Entry {
                op: "applying whiteout",
                path: path.display.clone(),
                source,
            }
        })
    }

    fn make_opaque(
        &self,
        path: &EntryPath,
        made_here: &HashSet<Vec<u8>>,
    ) -> Result<(), UnpackError> {
        let dir_rel = path.parent().join(&b'/');
        let dir = match self.resolve(&dir_rel, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(entry_err("opening opaque directory", &path.display)(e)),
        };
        let mut doomed = Vec::new();
        for child in rustix::fs::Dir::read_from(&dir)
            .map_err(entry_err("reading opaque directory", &path.display))?
        {
            let child = child.map_err(entry_err("reading opaque directory", &path.display))?;
            let name = child.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let full = if dir_rel.is_empty() {
                name.to_vec()
            } else {
                [&dir_rel[..], b"/", name].concat()
            };
            if !made_here.contains(&full) {
                doomed.push(name.to_vec());
            }
        }
        for name in doomed {
            remove_all_at(dir.as_fd(), OsStr::from_bytes(&name)).map_err(|source| {
                UnpackError::Entry {
                    op: "applying opaque marker",
                    path: path.display.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// Creates one entry in `parent`; returns the bytes of file content written.
    fn write_entry<R: Read>(
        &mut self,
        parent: BorrowedFd<'_>,
        path: &EntryPath,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<u64, UnpackError> {
        let name = path.name().expect("root handled by the caller");
        let kind = entry.header().entry_type();
        let existing = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(entry_err("inspecting", &path.display)(e)),
        };
        // Replace whatever is there, except a directory over a directory (metadata only).
        let keep_dir = kind.is_dir() && existing == Some(FileType::Directory);
        if existing.is_some() && !keep_dir {
            remove_all_at(parent, name).map_err(|source| UnpackError::Entry {
                op: "replacing",
                path: path.display.clone(),
                source,
            })?;
        }
        let meta = EntryMeta::read(entry)?;
        let err = |op| entry_err(op, &path.display);
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let fd = rustix::fs::openat(
                    parent,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(err("creating file"))?;
                let mut file = File::from(fd);
                let origin = FileOrigin {
                    layer: self.layer,
                    path: path.joined(path.components.len()),
                };
                let io_err = |op| {
                    let path = path.display.clone();
                    move |source| UnpackError::Entry { op, path, source }
                };
                let written = match &mut self.sink {
                    Some(Sink(sink)) => {
                        let size = entry.size();
                        let n = sink.file(&origin, size, entry).map_err(io_err("reading"))?;
                        // Before the metadata: a length change sets the mtime.
                        file.set_len(n).map_err(io_err("setting the length of"))?;
                        n
                    }
                    None => io::copy(entry, &mut file).map_err(io_err("writing"))?,
                };
                self.set_meta(
                    file.as_fd(),
                    OsStr::new(""),
                    &meta,
                    path,
                    FileType::RegularFile,
                )?;
                if let Ok(st) = rustix::fs::fstat(&file) {
                    self.origins.insert(st.st_ino, origin);
                }
                return Ok(written);
            }
            tar::EntryType::Directory => {
                if !keep_dir {
                    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
                        .map_err(err("creating directory"))?;
                }
                let key = path.joined(path.components.len());
                self.dir_mtimes.insert(key, meta.mtime);
                self.set_meta(parent, name, &meta, path, FileType::Directory)?;
                return Ok(0);
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| UnpackError::Entry {
                    op: "reading symlink target of",
                    path: path.display.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidData, "symlink without a target"),
                })?;
                // The target is stored as is: it is only ever resolved inside the root.
                rustix::fs::symlinkat(OsStr::from_bytes(&target), parent, name)
                    .map_err(err("creating symlink"))?;
                self.set_meta(parent, name, &meta, path, FileType::Symlink)?;
            }
            tar::EntryType::Link => {
                let target_raw = entry.link_name_bytes().unwrap_or_default().into_owned();
                let target = EntryPath::parse(&target_raw)?;
                let missing = || UnpackError::HardlinkTarget {
                    path: path.display.clone(),
                    target: target.display.clone(),
                };
                let Some(target_name) = target.name() else {
                    return Err(missing());
                };
                let target_parent = self
                    .resolve(
                        &target.parent().join(&b'/'),
                        OFlags::PATH | OFlags::DIRECTORY,
                    )
                    .map_err(|_| missing())?;
                match rustix::fs::linkat(
                    &target_parent,
                    target_name,
                    parent,
                    name,
                    AtFlags::empty(),
                ) {
                    Ok(()) => {}
                    Err(Errno::NOENT) => return Err(missing()),
                    Err(e) => return Err(err("creating hardlink")(e)),
                }
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (file_type, dev) = match kind {
                    tar::EntryType::Char => (FileType::CharacterDevice, meta.device),
                    tar::EntryType::Block => (FileType::BlockDevice, meta.device),
                    _ => (FileType::Fifo, 0),
                };
                if file_type != FileType::Fifo && !self.privileged {
                    tracing::warn!(path = %path.display, "skipping device node: not running as root");
                    return Ok(0);
                }
                if file_type != FileType::Fifo && self.skip_devices {
                    tracing::debug!(path = %path.display, "skipping device node (asked to)");
                    return Ok(0);
                }
                rustix::fs::mknodat(parent, name, file_type, Mode::from_raw_mode(0o600), dev)
                    .map_err(err("creating device node"))?;
                self.set_meta(parent, name, &meta, path, file_type)?;
            }
            tar::EntryType::XGlobalHeader => {}
            other => {
                return Err(UnpackError::UnsupportedEntry {
                    path: path.display.clone(),
                    kind: other.as_byte(),
                })
            }
        }
        Ok(0)
    }

    /// Owner, xattrs, mode, mtime — in that order: chown clears setuid bits, so mode comes after
    /// it. `name` empty means `dir` is the object itself (an open regular file).
    fn set_meta(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        meta: &EntryMeta,
        path: &EntryPath,
        kind: FileType,
    ) -> Result<(), UnpackError> {
        let err = |op| entry_err(op, &path.display);
        let flags = if name.is_empty() {
            AtFlags::EMPTY_PATH
        } else {
            AtFlags::SYMLINK_NOFOLLOW
        };
        if self.privileged {
            let (uid, gid) = (
                rustix::fs::Uid::from_raw(meta.uid),
                rustix::fs::Gid::from_raw(meta.gid),
            );
            rustix::fs::chownat(dir, name, Some(uid), Some(gid), flags)
                .map_err(err("setting owner of"))?;
        }
        if !meta.xattrs.is_empty() {
            // xattr syscalls have no *at form; go through the fd's /proc path, never following
            // the last component.
            let mut proc_path = std::path::PathBuf::from(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&dir)
            ));
            if !name.is_empty() {
                proc_path.push(name);
            }
            for (key, value) in &meta.xattrs {
                let set = if name.is_empty() {
                    rustix::fs::setxattr(
                        &proc_path,
                        OsStr::from_bytes(key),
                        value,
                        rustix::fs::XattrFlags::empty(),
                    )
                } else {
                    rustix::fs::lsetxattr(
                        &proc_path,
                        OsStr::from_bytes(key),
                        value,
                        rustix::fs::XattrFlags::empty(),
                    )
                };
                match set {
                    Ok(()) => {}
                    // Symlinks cannot carry user.* xattrs on Linux; engines skip them too.
                    Err(Errno::PERM | Errno::OPNOTSUPP)
                        if kind == FileType::Symlink || !self.privileged =>
                    {
                        tracing::warn!(path = %path.display, key = %String::from_utf8_lossy(key), "skipping xattr the kernel refused");
                    }
                    Err(e) => return Err(err("setting xattr on")(e)),
                }
            }
        }
        if kind != FileType::Symlink {
            let mode = Mode::from_raw_mode(meta.mode & 0o7777);
            if name.is_empty() {
                rustix::fs::fchmod(dir, mode).map_err(err("setting mode of"))?;
            } else {
                rustix::fs::chmodat(dir, name, mode, AtFlags::empty())
                    .map_err(err("setting mode of"))?;
            }
        }
        if kind != FileType::Directory {
            let t = Timespec {
                tv_sec: meta.mtime,
                tv_nsec: 0,
            };
            let ts = Timestamps {
                last_access: t,
                last_modification: t,
            };
            if name.is_empty() {
                rustix::fs::futimens(dir, &ts).map_err(err("setting mtime of"))?;
            } else {
                rustix::fs::utimensat(dir, name, &ts, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(err("setting mtime of"))?;
            }
        }
        Ok(())
    }
}

/// Metadata of an entry, PAX records applied over the header.
struct EntryMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    device: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EntryMeta {
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<EntryMeta, UnpackError> {
        let h = entry.header();
        let bad = |what: &str, e: io::Error| {
            UnpackError::ReadTar(io::Error::new(
                e.kind(),
                format!("bad {what} in tar header: {e}"),
            ))
        };
        let mut meta = EntryMeta {
            mode: h.mode().map_err(|e| bad("mode", e))?,
            uid: h
                .uid()
                .map_err(|e| bad("uid", e))?
                .try_into()
                .unwrap_or(u32::MAX),
            gid: h
                .gid()
                .map_err(|e| bad("gid", e))?
                .try_into()
                .unwrap_or(u32::MAX),
            mtime: h
                .mtime()
                .map_err(|e| bad("mtime", e))?
                .try_into()
                .unwrap_or(i64::MAX),
            device: 0,
            xattrs: Vec::new(),
        };
        if matches!(h.entry_type(), tar::EntryType::Char | tar::EntryType::Block) {
            let major = h
                .device_major()
                .map_err(|e| bad("device major", e))?
                .unwrap_or(0);
            let minor = h
                .device_minor()
                .map_err(|e| bad("device minor", e))?
                .unwrap_or(0);
            meta.device = rustix::fs::makedev(major, minor);
        }
        if let Some(pax) = entry.pax_extensions().map_err(UnpackError::ReadTar)? {
            for ext in pax {
                let ext = ext.map_err(UnpackError::ReadTar)?;
                let key = ext.key_bytes();
                let value = ext.value_bytes();
                let num = || {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.split('.').next()?.parse::<i64>().ok())
                };
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    meta.xattrs.push((name.to_vec(), value.to_vec()));
                } else if key == b"uid" {
                    meta.uid = num().and_then(|v| v.try_into().ok()).unwrap_or(meta.uid);
                } else if key == b"gid" {
                    meta.gid = num().and_then(|v| v.try_into().ok()).unwrap_or(meta.gid);
                } else if key == b"mtime" {
                    meta.mtime = num().unwrap_or(meta.mtime);
                }
            }
        }
        Ok(meta)
    }
}

/// Removes `name` in `dir` and, for a directory, everything below it, never following symlinks.
fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(Into::into);
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for child in rustix::fs::Dir::read_from(&sub)? {
        let child = child?;
        let n = child.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    for n in names {
        remove_all_at(sub.as_fd(), OsStr::from_bytes(&n))?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(Into::into)
}

/// A reader over a decompressed layer. Decompression runs on its own thread so that inflating
/// (CPU) and writing files (syscalls) overlap on two cores.
pub fn decompressed_reader(file: File, compression: Compression) -> impl Read + Send {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(8);
    std::thread::Builder::new()
        .name("pronto-inflate".into())
        .spawn(move || {
            let input = io::BufReader::with_capacity(1 << 20, file);
            let mut reader: Box<dyn Read> = match compression {
                Compression::None => Box::new(input),
                Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
                Compression::Zstd => match zstd::stream::read::Decoder::with_buffer(input) {
                    Ok(d) => Box::new(d),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                },
            };
            loop {
                let mut buf = vec![0u8; 256 << 10];
                let mut filled = 0;
                // Fill the buffer (decoders return short reads) to keep channel traffic low.
                while filled < buf.len() {
                    match reader.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
                if filled == 0 {
                    return;
                }
                buf.truncate(filled);
                if tx.send(Ok(buf)).is_err() {
                    return; // the reader is gone (error or done)
                }
            }
        })
        .expect("spawning the decompression thread");
    ChannelReader {
        rx,
        current: Vec::new(),
        pos: 0,
    }
}

struct ChannelReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(Ok(buf)) => {
                    self.current = buf;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("decompressing layer: {e}"),
                    ))
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_refuse_traversal_and_normalize() {
        let p = EntryPath::parse(b"./a//b/./c").unwrap();
        assert_eq!(
            p.components,
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        let e = EntryPath::parse(b"a/../../etc/passwd").err().unwrap();
        assert_eq!(
            e.to_string(),
            "refusing tar entry \"a/../../etc/passwd\": path contains '..'"
        );
        let e = EntryPath::parse(b"/etc/passwd").err().unwrap();
        assert_eq!(
            e.to_string(),
            "refusing tar entry \"/etc/passwd\": absolute path"
        );
        assert!(EntryPath::parse(b"./").unwrap().components.is_empty());
    }

    /// A GNU sparse entry of 8 MiB that stores 512 bytes: the holes count against the limit
    /// (the tar reader makes up their zeros without reading them), so a 2 KiB tar cannot
    /// make the unpacker write gigabytes.
    #[test]
    fn the_holes_of_a_sparse_entry_count_against_the_limit() {
        let real_size = 8u64 << 20;
        let mut header = tar::Header::new_gnu();
        header.set_path("sparse").unwrap();
        header.set_entry_type(tar::EntryType::GNUSparse);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(512);
        let gnu = header.as_gnu_mut().unwrap();
        gnu.set_real_size(real_size);
        gnu.sparse[0].set_offset(real_size - 512);
        gnu.sparse[0].set_length(512);
        header.set_cksum();
        let mut tar = header.as_bytes().to_vec();
        tar.extend_from_slice(&[7u8; 512]);
        tar.extend_from_slice(&[0u8; 1024]);

        let dir = tempfile::tempdir().unwrap();
        let mut unpacker = Unpacker::new(dir.path()).unwrap().with_size_limit(1 << 20);
        let e = unpacker.apply_layer(&tar[..]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "uncompressed size exceeds the limit of 1048576 bytes \
             (0 bytes unpacked from the layers before this one)"
        );
        let written = std::fs::metadata(dir.path().join("sparse")).map_or(0, |m| m.len());
        assert_eq!(written, 0, "nothing of it was written");

        // Within a large enough limit it unpacks (as zeros and the stored block).
        let dir = tempfile::tempdir().unwrap();
        let mut unpacker = Unpacker::new(dir.path()).unwrap().with_size_limit(16 << 20);
        unpacker.apply_layer(&tar[..]).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("sparse")).unwrap().len(),
            real_size
        );
    }

    #[test]
    fn a_cancelled_unpacker_stops_at_its_next_read() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(4096);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "f", &[1u8; 4096][..])
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let dir = tempfile::tempdir().unwrap();
        let mut unpacker = Unpacker::new(dir.path()).unwrap().with_cancel(cancel);
        let e = unpacker.apply_layer(&tar[..]).unwrap_err();
        assert!(matches!(e, UnpackError::Cancelled), "{e:?}");
    }
}

#[cfg(test)]
mod device_tests {
    use super::*;

    fn device_layer() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Char);
        h.set_path("dev-null").unwrap();
        h.set_mode(0o666);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        h.set_size(0);
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn device_nodes_are_made_unless_asked_not_to() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        for skip in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut u = Unpacker::new(dir.path()).unwrap();
            if skip {
                u = u.without_devices();
            }
            u.apply_layer(&device_layer()[..]).unwrap();
            u.finish().unwrap();
            assert_eq!(dir.path().join("dev-null").exists(), !skip, "skip={skip}");
        }
    }
}
