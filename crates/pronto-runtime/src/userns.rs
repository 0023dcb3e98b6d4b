//! User namespaces: each instance's root is an unprivileged host uid.
//!
//! An instance gets a range of 65536 host ids of its own ([`IdRange`], picked at random from
//! `[2^30, 2^31)`, never two live instances of a node on one range); its container runs in a
//! user namespace that maps ids `0..65536` onto that range, so root inside is host uid
//! `2^30 + k·65536`, owning nothing on the node and nothing of another instance.
//!
//! What that needs from the rootfs and the network namespace, found on this kernel (6.x) with
//! runc 1.1:
//! - the image's files are owned by ids `0..65536` as unpacked (or as the lazy file system
//!   reports them); the overlay's lower dir is an **idmapped clone** of the image
//!   ([`mount_idmapped`]: `open_tree` + `mount_setattr(MOUNT_ATTR_IDMAP)` + `move_mount`), so
//!   they appear owned by the range without copying or chowning anything. Overlayfs cannot be
//!   idmapped itself, but takes idmapped lower layers; the lazy FUSE mount allows it
//!   (`FUSE_ALLOW_IDMAP` with `default_permissions`). The upper dir is chowned to the range's
//!   root, so the container's root owns `/` as it would without a user namespace.
//! - the container's init prepares the rootfs from inside the user namespace, so every
//!   directory above the rootfs must be searchable by the range's root: the rootfs mount
//!   points live under `/run/pronto/<node>/` ([`crate::layout::run_dir`]), the per-instance
//!   directory `0710` with the range's root as group; the data dir stays `0700`.
//! - mounting `/sys` needs a network namespace owned by the container's user namespace: the
//!   runtime creates the namespace, and Pronto names it (`/run/netns/pronto-<id>`, as
//!   `ip netns attach` does) between `create` and `start` to reach the app.
//!
//! Cost per start, measured on the dev machine: the user namespace for the idmapped mount
//! (a `clone`, the two maps, the `nsfs` fd) and the three mount calls, ~1 ms together.

use std::collections::HashSet;
use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;

/// Ids per instance: what an image's files and users use (`nobody` is 65534).
pub const RANGE_SIZE: u32 = 1 << 16;
/// Ranges are slots `FIRST_SLOT..LAST_SLOT` of 65536 ids: host ids `2^30..2^31`, far above
/// ordinary users and `/etc/subuid` allocations (which start at 100000).
const FIRST_SLOT: u32 = 1 << 14;
const LAST_SLOT: u32 = 1 << 15;

/// The node's choice for its containers' user namespace (`pronto serve --userns`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UsernsMode {
    /// A user namespace per instance, its root an unprivileged id range of its own.
    #[default]
    Private,
    /// The node's own user namespace: root inside is root on the node.
    Host,
}

impl UsernsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            UsernsMode::Private => "private",
            UsernsMode::Host => "host",
        }
    }
}

impl FromStr for UsernsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "private" => Ok(UsernsMode::Private),
            "host" => Ok(UsernsMode::Host),
            other => Err(format!(
                "unknown user namespace mode {other:?}: expected private or host"
            )),
        }
    }
}

/// The host ids an instance's ids `0..RANGE_SIZE` map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdRange {
    /// The host uid and gid of the container's root.
    pub host_base: u32,
}

impl IdRange {
    /// `/proc/PID/uid_map` (and `gid_map`) of the range.
    pub fn map_line(&self) -> String {
        format!("0 {} {}", self.host_base, RANGE_SIZE)
    }
}

/// The ranges a node's live instances hold. Random slots: another node on the same machine
/// picks the same range with odds of 1 in 16384 per instance pair.
#[derive(Debug, Default)]
pub(crate) struct IdRanges {
    used: Mutex<HashSet<u32>>,
}

impl IdRanges {
    pub(crate) fn allocate(&self) -> io::Result<IdRange> {
        let mut used = self.used.lock().expect("id ranges lock poisoned");
        if used.len() >= (LAST_SLOT - FIRST_SLOT) as usize {
            return Err(io::Error::other("every user namespace id range is in use"));
        }
        loop {
            let mut b = [0u8; 4];
            rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())?;
            let slot = FIRST_SLOT + u32::from_le_bytes(b) % (LAST_SLOT - FIRST_SLOT);
            if used.insert(slot) {
                return Ok(IdRange {
                    host_base: slot * RANGE_SIZE,
                });
            }
        }
    }

    pub(crate) fn release(&self, range: IdRange) {
        self.used
            .lock()
            .expect("id ranges lock poisoned")
            .remove(&(range.host_base / RANGE_SIZE));
    }
}

/// Mounts a read-only clone of `source` at `target` (an existing directory) whose files owned
/// by id `n` appear owned by `range.host_base + n`.
pub fn mount_idmapped(source: &Path, target: &Path, range: IdRange) -> io::Result<()> {
    use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("idmapped mount of {}: {what}: {e}", source.display()),
        )
    };
    let userns = user_namespace(range).map_err(|e| ctx("making its user namespace", e))?;
    let tree = open_tree(
        rustix::fs::CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| ctx("open_tree", e.into()))?;
    set_idmap(&tree, &userns).map_err(|e| ctx("mount_setattr", e))?;
    move_mount(
        &tree,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| ctx("move_mount", e.into()))
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

fn set_idmap(tree: &OwnedFd, userns: &OwnedFd) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: plain syscall on a valid fd, an empty C string and a live, correctly sized
    // `mount_attr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A user namespace mapping ids `0..RANGE_SIZE` onto `range`, as an `nsfs` fd.
///
/// The kernel makes user namespaces only for a process: a child is cloned into a new one
/// (sharing our memory, on a small stack of its own, so nothing of the daemon is copied), the
/// maps are written, the namespace opened, and the child released.
fn user_namespace(range: IdRange) -> io::Result<OwnedFd> {
    let (release_rx, release_tx) = rustix::pipe::pipe()?;
    let mut stack = vec![0u8; 64 << 10];
    // SAFETY: the stack outlives the child (we wait for it below); the child runs only
    // `wait_for_release`, which makes one `read` on the fd passed as its argument.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len()) as *mut c_void;
        libc::clone(
            wait_for_release,
            top,
            libc::CLONE_NEWUSER | libc::CLONE_VM | libc::SIGCHLD,
            release_rx.as_raw_fd() as usize as *mut c_void,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = (|| {
        let proc = Path::new("/proc").join(pid.to_string());
        std::fs::write(proc.join("uid_map"), range.map_line())?;
        std::fs::write(proc.join("gid_map"), range.map_line())?;
        let ns = std::fs::File::open(proc.join("ns/user"))?;
        Ok(OwnedFd::from(ns))
    })();
    // The child holds copies of both pipe ends: a byte, not EOF, releases it.
    let _ = rustix::io::write(&release_tx, &[1]);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    drop(stack);
    result
}

extern "C" fn wait_for_release(fd: *mut c_void) -> libc::c_int {
    let mut byte = 0u8;
    // SAFETY: `fd` is the pipe's read end, open in this child's copy of the fd table.
    unsafe {
        libc::read(
            fd as usize as libc::c_int,
            &mut byte as *mut u8 as *mut c_void,
            1,
        )
    };
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn ranges_are_distinct_unprivileged_and_reusable() {
        let ranges = IdRanges::default();
        let a = ranges.allocate().unwrap();
        let b = ranges.allocate().unwrap();
        assert_ne!(a, b);
        for r in [a, b] {
            assert!(r.host_base >= 1 << 30 && r.host_base < 1 << 31, "{r:?}");
            assert_eq!(r.host_base % RANGE_SIZE, 0);
        }
        ranges.release(a);
        assert_eq!(ranges.used.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_user_namespace_has_the_range_as_its_map() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let range = IdRange { host_base: 1 << 30 };
        let ns = std::fs::File::from(user_namespace(range).unwrap());
        let own = std::fs::metadata("/proc/self/ns/user").unwrap().ino();
        assert_ne!(ns.metadata().unwrap().ino(), own, "a new user namespace");
    }

    #[test]
    fn an_idmapped_clone_shows_files_owned_by_the_range() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/owned-by-7"), "x").unwrap();
        std::os::unix::fs::chown(src.join("etc/owned-by-7"), Some(7), Some(8)).unwrap();
        std::fs::create_dir(&dst).unwrap();
        let range = IdRange { host_base: 3 << 29 };
        mount_idmapped(&src, &dst, range).unwrap();
        let root = std::fs::metadata(dst.join("etc")).unwrap();
        let file = std::fs::metadata(dst.join("etc/owned-by-7")).unwrap();
        let written = std::fs::write(dst.join("new"), "y");
        rustix::mount::unmount(&dst, rustix::mount::UnmountFlags::DETACH).unwrap();
        assert_eq!((root.uid(), root.gid()), (3 << 29, 3 << 29));
        assert_eq!((file.uid(), file.gid()), ((3 << 29) + 7, (3 << 29) + 8));
        assert!(written.is_err(), "the clone is read-only");
        // The source is untouched.
        assert_eq!(std::fs::metadata(src.join("etc")).unwrap().uid(), 0);
    }
}
