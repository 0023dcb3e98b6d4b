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

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};
use pronto_format::{FormatError, Index, Inode, NodeKind};
use tracing::error;

use crate::fetch::{ChunkFetcher, Unstored};
use crate::stats::Stats;
use crate::trace::AccessRecorder;

/// How long the kernel may cache entries and attributes: the tree is immutable.
const TTL: Duration = Duration::from_secs(24 * 3600);
const BLOCK_SIZE: u32 = 4096;
/// Chunks fetched ahead of a sequential reader, with the chunk it misses.
const READ_AHEAD_CHUNKS: u64 = 3;

pub(crate) struct LazyFs {
    index: Index,
    fetcher: Arc<ChunkFetcher>,
    stats: Arc<Stats>,
    /// Sum of file sizes, for statfs.
    file_bytes: u64,
    /// The kernel's readahead for the mount, in bytes.
    readahead: u32,
    recorder: Arc<AccessRecorder>,
}

impl LazyFs {
    pub(crate) fn new(
        index: Index,
        fetcher: Arc<ChunkFetcher>,
        stats: Arc<Stats>,
        file_bytes: u64,
        readahead: u32,
        recorder: Arc<AccessRecorder>,
    ) -> LazyFs {
        LazyFs {
            index,
            fetcher,
            stats,
            file_bytes,
            readahead,
            recorder,
        }
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
        let mut pieces = Vec::new();
        for i in offset / cs..=(end - 1) / cs {
            let chunk = self.index.chunk(n, i as u32).map_err(|e| self.corrupt(e))?;
            let base = i * cs;
            let from = offset.max(base) - base;
            let to = end.min(base + u64::from(chunk.uncompressed_size)) - base;
            pieces.push((chunk, from as u32..to as u32));
        }
        self.recorder.record(pieces.iter().map(|(c, _)| c));
        // Read in order (a chunk just before this read is cached or coming): fetch the next few
        // with it.
        let last = (end - 1) / cs;
        let count = u64::from(self.index.chunk_count(n).map_err(|e| self.corrupt(e))?);
        // The kernel's readahead sends reads of consecutive chunks in parallel, so the one just
        // before may not be claimed yet: either of the two before will do.
        let first = offset / cs;
        let sequential = (first.saturating_sub(2)..first).any(|i| {
            self.index
                .chunk(n, i as u32)
                .is_ok_and(|c| self.fetcher.is_cached_or_coming(&c.digest))
        });
        let ahead: Vec<_> = if sequential {
            (last + 1..count.min(last + 1 + READ_AHEAD_CHUNKS))
                .filter_map(|i| self.index.chunk(n, i as u32).ok())
                .collect()
        } else {
            Vec::new()
        };
        let (data, unstored) = self.fetcher.read_ahead(&pieces, &ahead).map_err(|e| {
            error!(inode = n, offset, size, "read failed: {e}");
            Errno::EIO
        })?;
        self.stats.read(data.len());
        Ok((data, unstored))
    }
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
        ] {
            let _ = config.add_capabilities(flag);
        }
        if let Err(max) = config.set_max_readahead(self.readahead) {
            let _ = config.set_max_readahead(max);
        }
        // Readahead and concurrent readers are served in parallel by the worker threads.
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
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
        match self.inode(ino) {
            Ok(inode) => reply.attr(&TTL, &self.attr(&inode)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
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
        match self.inode(ino) {
            Ok(_) if flags.0 & libc::O_ACCMODE != libc::O_RDONLY => reply.error(Errno::EROFS),
            Ok(inode) if inode.kind == NodeKind::Dir => reply.error(Errno::EISDIR),
            Ok(_) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
            ),
            Err(e) => reply.error(e),
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
        match self.read_file(ino, offset, size) {
            Ok((data, unstored)) => {
                reply.data(&data);
                drop(unstored);
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
