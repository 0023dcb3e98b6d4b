//! The FUSE filesystem: read-only POSIX semantics over an [`Index`], file contents through the
//! [`ChunkFetcher`].
//!
//! FUSE inode `n + 1` is index inode `n` (FUSE's root is 1, the index's is 0). The tree never
//! changes, so the kernel is told to cache everything for a long time: entries (also negative
//! ones, which matter for programs that probe many paths, like Python's import), attributes,
//! symlink targets, directory listings and file pages (`FOPEN_KEEP_CACHE`). Permissions are
//! checked by the kernel (`default_permissions`) against the modes and owners in the index.
//!
//! Round trips a walk or an open need not make are not made: every directory listing is
//! `READDIRPLUS` (entries and attributes in one reply, so no `LOOKUP` per entry; "auto" mode
//! would send plain `READDIR` after the first reply and then look up each entry), `OPENDIR`
//! answers `ENOSYS` once, after which the kernel opens directories without asking (with
//! `FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR`) and sends no `RELEASEDIR`, and files are opened with
//! `FOPEN_NOFLUSH` (no `FLUSH` at every close).
//!
//! A regular file whose backing file is in the node cache is opened with FUSE passthrough (see
//! [`crate::passthrough`]): its reads never reach the daemon.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use std::sync::atomic::{AtomicBool, Ordering};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};
use pronto_format::{ChunkRef, FormatError, Index, Inode, NodeKind};
use tracing::{error, info, warn};

use crate::cache::{file_key, ChunkCache};
use crate::fetch::{ChunkFetcher, Unstored};
use crate::passthrough::{Busy, Materializer, OpenFiles, FH_NORMAL, FH_PASSTHROUGH};
use crate::stats::Stats;
use crate::trace::AccessRecorder;

/// How long the kernel may cache entries and attributes: the tree is immutable.
const TTL: Duration = Duration::from_secs(24 * 3600);
const BLOCK_SIZE: u32 = 4096;
/// A sequential reader's read-ahead window starts at this many chunks...
const READ_AHEAD_CHUNKS: u64 = 3;
/// ... and doubles each time it is topped up while the reader stays sequential, up to this
/// many bytes (at 1 Gbit/s, 268 ms of transfer: requests of `AHEAD_RUN_BYTES` keep the link
/// busy whatever the round trip; a seek starts over).
const MAX_READ_AHEAD_BYTES: u64 = 32 << 20;

/// A file's sequential reader (per inode: the kernel gives no per-reader handle here).
#[derive(Debug, Clone, Copy)]
struct Sequential {
    /// First chunk of the last read.
    first: u64,
    /// Chunks before this one have been asked for (read or read ahead).
    issued_until: u64,
    /// Chunks to keep asked for ahead of the reader; 0: not sequential (yet).
    window: u64,
}
/// The FUSE mount's place in the stack of filesystems, as the kernel counts for passthrough:
/// its backing files must be on a filesystem of a lower depth (0: ext4, xfs, ...), and the
/// container's overlayfs, mounted over this one, adds one more: 1 + 1 is the kernel's limit
/// (`FILESYSTEM_MAX_STACK_DEPTH`, 2). With 2, backing files could live on an overlay, but no
/// overlay could then be mounted over this filesystem.
const STACK_DEPTH: u32 = 1;

/// Logged once per process: passthrough is not there.
static PASSTHROUGH_UNAVAILABLE_LOGGED: AtomicBool = AtomicBool::new(false);

/// How a mount uses FUSE passthrough.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PassthroughPolicy {
    /// Asked for by the mount options.
    pub(crate) wanted: bool,
    /// Files smaller than this are served by the daemon: passthrough costs an open of the
    /// backing file, more than the one or two read requests such a file makes.
    pub(crate) min_size: u64,
}

/// What [`LazyFs`] shares with its [`crate::LazyMount`].
pub(crate) struct LazyFsParts {
    pub(crate) index: Index,
    pub(crate) fetcher: Arc<ChunkFetcher>,
    pub(crate) cache: Arc<ChunkCache>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) readahead: u32,
    pub(crate) recorder: Arc<AccessRecorder>,
    pub(crate) busy: Arc<Busy>,
    pub(crate) materializer: Materializer,
    pub(crate) passthrough: PassthroughPolicy,
}

pub(crate) struct LazyFs {
    index: Index,
    fetcher: Arc<ChunkFetcher>,
    cache: Arc<ChunkCache>,
    stats: Arc<Stats>,
    /// Sum of file sizes, for statfs.
    file_bytes: u64,
    /// The kernel's readahead for the mount, in bytes.
    readahead: u32,
    recorder: Arc<AccessRecorder>,
    busy: Arc<Busy>,
    open_files: OpenFiles,
    materializer: Materializer,
    policy: PassthroughPolicy,
    /// The kernel granted passthrough at init, and has not refused a backing file since.
    passthrough: AtomicBool,
    /// No inode of the image has an extended attribute (see `getxattr`).
    xattr_free: bool,
    /// Per inode being read: its reader's read-ahead state.
    sequential: std::sync::Mutex<std::collections::HashMap<u32, Sequential>>,
}

impl LazyFs {
    pub(crate) fn new(parts: LazyFsParts) -> LazyFs {
        let file_bytes = file_bytes(&parts.index);
        let xattr_free = (0..parts.index.inode_count())
            .all(|n| parts.index.xattrs(n).is_ok_and(|x| x.is_empty()));
        LazyFs {
            index: parts.index,
            fetcher: parts.fetcher,
            cache: parts.cache,
            stats: parts.stats,
            file_bytes,
            readahead: parts.readahead,
            recorder: parts.recorder,
            busy: parts.busy,
            open_files: OpenFiles::default(),
            materializer: parts.materializer,
            policy: parts.passthrough,
            passthrough: AtomicBool::new(false),
            xattr_free,
            sequential: std::sync::Mutex::default(),
        }
    }

    /// The chunks of inode `n` (of `count`) to fetch ahead of a read of chunks
    /// `first..=last`: none for a random read; for a sequential one (it continues the last
    /// read, or the chunk before it is cached or coming) the window ahead is topped up when
    /// less than half of it is left, and doubles each time, up to `MAX_READ_AHEAD_BYTES`.
    fn plan_ahead(&self, n: u32, first: u64, last: u64, count: u64) -> std::ops::Range<u64> {
        let cs = u64::from(self.index.chunk_size()).max(1);
        let max_window = (MAX_READ_AHEAD_BYTES / cs).max(READ_AHEAD_CHUNKS);
        let mut seq = self.sequential.lock().expect("sequential lock poisoned");
        let before = seq.get(&n).copied();
        // The kernel's readahead sends reads of consecutive chunks in parallel, slightly out
        // of order: anything from just before the last read to what was asked for continues.
        let continues =
            before.is_some_and(|s| first + 2 >= s.first && first <= s.issued_until && s.window > 0);
        let mut st = match before {
            Some(s) if continues => s,
            _ => {
                // The chunk just before may not be claimed yet: either of the two before will do.
                let ordered = (first.saturating_sub(2)..first).any(|i| {
                    self.index
                        .chunk(n, i as u32)
                        .is_ok_and(|c| self.fetcher.is_cached_or_coming(&c.digest))
                });
                Sequential {
                    first,
                    issued_until: last + 1,
                    window: if ordered { READ_AHEAD_CHUNKS } else { 0 },
                }
            }
        };
        st.first = first;
        st.issued_until = st.issued_until.max(last + 1);
        let mut ahead = 0..0;
        let left = st.issued_until - (last + 1);
        if st.window > 0 && left * 2 <= st.window && st.issued_until < count {
            let to = count.min(last + 1 + st.window);
            ahead = st.issued_until..to;
            st.issued_until = to;
            st.window = (st.window * 2).min(max_window);
        }
        if seq.len() > 4096 && !seq.contains_key(&n) {
            // Bounded: readers of that many files at once lose their windows, nothing else.
            seq.clear();
        }
        seq.insert(n, st);
        ahead
    }

    fn index_ino(ino: INodeNo) -> Result<u32, Errno> {
        ino.0
            .checked_sub(1)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(Errno::ENOENT)
    }

    fn inode(&self, ino: INodeNo) -> Result<Inode, Errno> {
        let n = Self::index_ino(ino)?;
        if n >= self.index.inode_count() {
            return Err(Errno::ENOENT);
        }
        self.index.inode(n).map_err(|e| self.corrupt(e))
    }

    /// The index with its chunk digests (a mount from a split index layer may wait for them;
    /// bounded): EIO, named in the log, if they never came or were not the index's.
    fn whole(&self) -> Result<&pronto_format::Index, Errno> {
        self.fetcher.whole_index().map_err(|e| {
            error!(error = %e, "no chunk can be read");
            Errno::EIO
        })
    }

    /// The index was validated at mount, so this means a bug; say so and fail the call.
    fn corrupt(&self, e: FormatError) -> Errno {
        error!(error = %e, "index read failed");
        Errno::EIO
    }

    fn attr(&self, inode: &Inode) -> FileAttr {
        let mtime = if inode.mtime >= 0 {
            UNIX_EPOCH + Duration::new(inode.mtime as u64, inode.mtime_nsec)
        } else {
            UNIX_EPOCH - Duration::from_secs(inode.mtime.unsigned_abs())
                + Duration::from_nanos(u64::from(inode.mtime_nsec))
        };
        let (major, minor) = (
            libc::major(inode.rdev as libc::dev_t),
            libc::minor(inode.rdev as libc::dev_t),
        );
        FileAttr {
            ino: INodeNo(u64::from(inode.ino) + 1),
            size: inode.size,
            blocks: if inode.kind == NodeKind::File {
                inode.size.div_ceil(512)
            } else {
                0
            },
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: file_type(inode.kind),
            perm: inode.mode as u16,
            nlink: inode.nlink,
            uid: inode.uid,
            gid: inode.gid,
            // The kernel's 32-bit encoding (`new_encode_dev`).
            rdev: (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12),
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }

    /// The bytes, and what was fetched for them: drop that after replying (it writes the
    /// chunks to the node cache, which the reader need not wait for).
    fn read_file(
        &self,
        ino: INodeNo,
        offset: u64,
        size: u32,
    ) -> Result<(Vec<u8>, Unstored<'_>), Errno> {
        let inode = self.inode(ino)?;
        if inode.kind != NodeKind::File {
            return Err(Errno::EISDIR);
        }
        let end = offset.saturating_add(u64::from(size)).min(inode.size);
        if offset >= end {
            return Ok((Vec::new(), self.fetcher.nothing_fetched()));
        }
        let cs = u64::from(self.index.chunk_size());
        let n = inode.ino;
        let whole = self.whole()?;
        let mut pieces = Vec::new();
        for i in offset / cs..=(end - 1) / cs {
            let chunk = whole.chunk(n, i as u32).map_err(|e| self.corrupt(e))?;
            let base = i * cs;
            let from = offset.max(base) - base;
            let to = end.min(base + u64::from(chunk.uncompressed_size)) - base;
            pieces.push((chunk, from as u32..to as u32));
        }
        self.recorder.record(pieces.iter().map(|(c, _)| c));
        // Read in order: the next chunks are asked for in the background before this read
        // waits for its own.
        let last = (end - 1) / cs;
        let count = u64::from(self.index.chunk_count(n).map_err(|e| self.corrupt(e))?);
        let ahead: Vec<_> = self
            .plan_ahead(n, offset / cs, last, count)
            .filter_map(|i| whole.chunk(n, i as u32).ok())
            .collect();
        if !ahead.is_empty() {
            self.fetcher.fetch_ahead(&ahead);
        }
        let (data, unstored) = self.fetcher.read_ahead(&pieces, &[]).map_err(|e| {
            error!(inode = n, offset, size, "read failed: {e}");
            Errno::EIO
        })?;
        self.stats.read(data.len());
        Ok((data, unstored))
    }
}

/// A regular file that passthrough could serve: its chunks and the key of its backing file.
struct Candidate {
    chunks: Vec<ChunkRef>,
    key: [u8; 32],
}

impl LazyFs {
    /// The file's passthrough candidacy: `None` if passthrough is off (not granted, refused,
    /// or the mount is recording an access trace: its reads must reach the recorder) or the
    /// file's size is outside the bounds.
    fn candidate(&self, inode: &Inode) -> Option<Candidate> {
        if !self.passthrough.load(Ordering::Relaxed)
            || inode.kind != NodeKind::File
            || inode.size < self.policy.min_size.max(1)
            || inode.size > self.cache.max_file_size()
            || self.recorder.is_on()
        {
            return None;
        }
        let chunks = self.whole().ok()?.chunks(inode.ino).ok()?;
        let key = file_key(&chunks);
        Some(Candidate { chunks, key })
    }

    /// Asks for the file's backing file if it has none and all its chunks are cached or about
    /// to be (a file's last chunks may be stored after its reader closed it, by another
    /// reader's request that fetched them).
    fn consider_materializing(&self, inode: u32, candidate: Option<Candidate>) {
        let Some(c) = candidate else {
            return;
        };
        if !self.cache.has_file(&c.key) && self.fetcher.all_cached_or_coming(&c.chunks) {
            self.materializer.request(inode);
        }
    }

    /// The kernel refused a backing file: say so once, and serve files through the daemon
    /// from now on (the refusals that matter are the mount's, not the file's: no passthrough
    /// in this kernel or for this user (`EPERM`), backing files on a stacked filesystem
    /// (`ELOOP`), ...).
    fn passthrough_refused(&self, e: &std::io::Error) {
        self.stats.passthrough_refused();
        if self.passthrough.swap(false, Ordering::Relaxed) {
            warn!(
                error = %e,
                "FUSE passthrough refused by the kernel; files are served through the daemon"
            );
        }
    }
}

fn file_bytes(index: &Index) -> u64 {
    (0..index.inode_count())
        .filter_map(|n| index.inode(n).ok())
        .filter(|i| i.kind == NodeKind::File)
        .map(|i| i.size)
        .sum()
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::Dir => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
    }
}

/// The xattr reply protocol: size 0 asks for the length; too small a buffer is ERANGE.
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if (size as usize) < data.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for LazyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Best effort: each is an optimisation the kernel may not offer. Not
        // FUSE_READDIRPLUS_AUTO: see the module docs.
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_MAX_PAGES,
            // Instances in user namespaces see the mount through an idmapped clone.
            InitFlags::FUSE_ALLOW_IDMAP,
        ] {
            let _ = config.add_capabilities(flag);
        }
        if self.policy.wanted {
            let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(STACK_DEPTH).is_ok();
            self.passthrough.store(granted, Ordering::Relaxed);
            if !granted && !PASSTHROUGH_UNAVAILABLE_LOGGED.swap(true, Ordering::Relaxed) {
                info!("the kernel offers no FUSE passthrough; files are served through the daemon");
            }
        }
        if let Err(max) = config.set_max_readahead(self.readahead) {
            let _ = config.set_max_readahead(max);
        }
        // Readahead and concurrent readers are served in parallel by the worker threads.
        let _ = config.set_max_background(64);
        Ok(())
    }

    /// After the last worker: the connection is gone, and its backing ids with it.
    fn destroy(&mut self) {
        self.open_files.forget_backing_ids();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _busy = self.busy.enter();
        let result = Self::index_ino(parent).and_then(|dir| {
            self.index
                .lookup(dir, name.as_bytes())
                .map_err(|e| match e {
                    FormatError::NotADirectory { .. } => Errno::ENOTDIR,
                    e => self.corrupt(e),
                })
        });
        match result {
            Ok(Some(n)) => match self.index.inode(n) {
                Ok(inode) => reply.entry(&TTL, &self.attr(&inode), Generation(0)),
                Err(e) => reply.error(self.corrupt(e)),
            },
            // A negative entry (inode 0) the kernel caches for TTL: no repeated misses.
            Ok(None) => {
                let mut attr = self.attr(&self.index.inode(0).expect("root was validated"));
                attr.ino = INodeNo(0);
                reply.entry(&TTL, &attr, Generation(0));
            }
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _busy = self.busy.enter();
        match self.inode(ino) {
            Ok(inode) => reply.attr(&TTL, &self.attr(&inode)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _busy = self.busy.enter();
        let result = Self::index_ino(ino).and_then(|n| {
            self.index.symlink_target(n).map_err(|e| match e {
                FormatError::NotASymlink { .. } => Errno::EINVAL,
                e => self.corrupt(e),
            })
        });
        match result {
            Ok(target) => reply.data(target),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _busy = self.busy.enter();
        let inode = match self.inode(ino) {
            Ok(_) if flags.0 & libc::O_ACCMODE != libc::O_RDONLY => {
                return reply.error(Errno::EROFS)
            }
            Ok(inode) if inode.kind == NodeKind::Dir => return reply.error(Errno::EISDIR),
            Ok(inode) => inode,
            Err(e) => return reply.error(e),
        };
        let n = inode.ino;
        let candidate = self.candidate(&inode);
        let mut open = self.open_files.lock(n);
        let opened = open.entry(n).or_default();
        // Passthrough handles open: this one must be too, on the same backing file.
        // Counted before the reply: once the kernel has it, the program may read without us.
        if let Some(id) = &opened.backing {
            opened.passthrough += 1;
            self.stats.file_open(true);
            reply.opened_passthrough(FileHandle(FH_PASSTHROUGH), FopenFlags::FOPEN_NOFLUSH, id);
            return;
        }
        // Handles open without passthrough forbid it until they are closed.
        if opened.normal == 0 {
            if let Some(file) = candidate
                .as_ref()
                .and_then(|c| self.cache.open_file(&c.key, inode.size))
            {
                match reply.open_backing(&file) {
                    Ok(id) => {
                        opened.passthrough = 1;
                        self.stats.file_open(true);
                        reply.opened_passthrough(
                            FileHandle(FH_PASSTHROUGH),
                            FopenFlags::FOPEN_NOFLUSH,
                            &id,
                        );
                        // Kept until the last passthrough handle is released: the kernel looks
                        // it up when it gets the reply.
                        opened.backing = Some(id);
                        return;
                    }
                    Err(e) => self.passthrough_refused(&e),
                }
            }
        }
        opened.normal += 1;
        drop(open);
        self.stats.file_open(false);
        reply.opened(
            FileHandle(FH_NORMAL),
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
        );
        self.consider_materializing(n, candidate);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _busy = self.busy.enter();
        let Ok(n) = Self::index_ino(ino) else {
            return reply.ok();
        };
        let mut backing = None;
        let mut last_normal = false;
        {
            let mut open = self.open_files.lock(n);
            if let Some(opened) = open.get_mut(&n) {
                self.stats.file_released(fh.0 == FH_PASSTHROUGH);
                if fh.0 == FH_PASSTHROUGH {
                    opened.passthrough = opened.passthrough.saturating_sub(1);
                    if opened.passthrough == 0 {
                        backing = opened.backing.take();
                    }
                } else {
                    opened.normal = opened.normal.saturating_sub(1);
                    last_normal = opened.normal == 0;
                }
                if opened.normal == 0 && opened.passthrough == 0 {
                    open.remove(&n);
                }
            }
        }
        reply.ok();
        // The kernel let go of the backing file when the last passthrough handle was closed.
        drop(backing);
        // Read to the end (or whatever made its chunks cached): worth a backing file now.
        if last_normal {
            if let Ok(inode) = self.index.inode(n) {
                self.consider_materializing(n, self.candidate(&inode));
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _busy = self.busy.enter();
        match self.read_file(ino, offset, size) {
            Ok((data, unstored)) => {
                reply.data(&data);
                let fetched = !unstored.is_empty();
                drop(unstored);
                // The chunks are in the cache now: this may have been the file's last missing
                // one (a close can come before the last read's chunks are stored).
                if fetched {
                    if let Ok(inode) = self.inode(ino) {
                        self.consider_materializing(inode.ino, self.candidate(&inode));
                    }
                }
            }
            Err(e) => reply.error(e),
        }
    }

    /// Nothing to flush: ENOSYS tells the kernel to stop sending `FLUSH` at every close (files
    /// are opened with `FOPEN_NOFLUSH` too).
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    /// No ioctls: what a program asks a regular file (e.g. `TCGETS` from `isatty`) gets the
    /// answer a disk filesystem gives.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    /// `SEEK_DATA`/`SEEK_HOLE`: no holes are recorded; ENOSYS makes the kernel answer them
    /// itself (the whole file is data) and stop asking.
    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// ENOSYS: from then on the kernel opens directories itself, as if answered with
    /// `FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR`, and sends neither `OPENDIR` nor `RELEASEDIR` (one
    /// round trip less per directory of a walk). It only asks for directories.
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _busy = self.busy.enter();
        let result = self.dir_entries(ino, offset, |next, ino, inode, name| {
            reply.add(ino, next, file_type(inode.kind), OsStr::from_bytes(name))
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _busy = self.busy.enter();
        let result = self.dir_entries(ino, offset, |next, _ino, inode, name| {
            reply.add(
                INodeNo(u64::from(inode.ino) + 1),
                next,
                OsStr::from_bytes(name),
                &TTL,
                &self.attr(&inode),
                Generation(0),
            )
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _busy = self.busy.enter();
        let blocks = self.file_bytes.div_ceil(u64::from(BLOCK_SIZE));
        reply.statfs(
            blocks,
            0,
            0,
            u64::from(self.index.inode_count()),
            0,
            BLOCK_SIZE,
            255,
            BLOCK_SIZE,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _busy = self.busy.enter();
        if self.xattr_free {
            // An image without extended attributes: `ENOSYS` makes the kernel stop asking
            // (every later `getxattr` on the mount fails at once with `EOPNOTSUPP`, "none" to
            // overlayfs and to `exec`). Without it each file an overlay looks up costs a round
            // trip to the daemon for its metacopy xattr, and each exec one for
            // `security.capability`: about half of a Python start's synchronous FUSE requests.
            // `listxattr` still answers (an empty list), so the tree reads as unpacked.
            reply.error(Errno::ENOSYS);
            return;
        }
        let xattrs =
            Self::index_ino(ino).and_then(|n| self.index.xattrs(n).map_err(|e| self.corrupt(e)));
        match xattrs {
            Ok(list) => match list.iter().find(|(k, _)| *k == name.as_bytes()) {
                Some((_, v)) => reply_xattr(reply, size, v),
                None => reply.error(Errno::NO_XATTR),
            },
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _busy = self.busy.enter();
        let xattrs =
            Self::index_ino(ino).and_then(|n| self.index.xattrs(n).map_err(|e| self.corrupt(e)));
        match xattrs {
            Ok(list) => {
                let mut names = Vec::new();
                for (k, _) in list {
                    names.extend_from_slice(k);
                    names.push(0);
                }
                reply_xattr(reply, size, &names);
            }
            Err(e) => reply.error(e),
        }
    }
}

impl LazyFs {
    /// Calls `add(next_offset, fuse_ino, inode, name)` for `.`, `..` and the entries from
    /// `offset` on, until it returns true (the reply buffer is full). Offset `k` is stable:
    /// 1 and 2 are `.` and `..`, `k + 3` is after dirent `k`.
    fn dir_entries(
        &self,
        ino: INodeNo,
        offset: u64,
        mut add: impl FnMut(u64, INodeNo, Inode, &[u8]) -> bool,
    ) -> Result<(), Errno> {
        let dir = self.inode(ino)?;
        if dir.kind != NodeKind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let n = dir.ino;
        let parent = self.index.parent(n).map_err(|e| self.corrupt(e))?;
        let parent_inode = self.index.inode(parent).map_err(|e| self.corrupt(e))?;
        let dots: [(&[u8], Inode); 2] = [(b".", dir), (b"..", parent_inode)];
        let mut k = offset;
        while k < 2 {
            let (name, inode) = dots[k as usize];
            if add(k + 1, INodeNo(u64::from(inode.ino) + 1), inode, name) {
                return Ok(());
            }
            k += 1;
        }
        let len = u64::from(self.index.dir_len(n).map_err(|e| self.corrupt(e))?);
        for i in k - 2..len {
            let Some((name, child)) = self
                .index
                .dir_entry(n, i as u32)
                .map_err(|e| self.corrupt(e))?
            else {
                break;
            };
            let inode = self.index.inode(child).map_err(|e| self.corrupt(e))?;
            if add(i + 3, INodeNo(u64::from(child) + 1), inode, name) {
                break;
            }
        }
        Ok(())
    }
}
