//! An instance's writable layer on a filesystem of its own, so that `diskSize` bounds what a
//! function can write (its `/tmp`, copied-up files): a sparse file under the instance's
//! directory, formatted ext4 and mounted through a loop device; the overlay's upper and work
//! directories live on it. A full disk is `ENOSPC` inside the function, never the node's disk
//! filling up.
//!
//! Cost, measured on the dev machine: `mkfs.ext4` of a sparse 512 MiB or 10 GiB file with lazy
//! inode tables ~10 ms, `losetup` ~3 ms, the mount ~5 ms (`mount -o loop` takes ~130 ms: it
//! waits for udev, hence the two steps). Only written blocks take space on the node.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Makes an ext4 filesystem of `bytes` in `image` (created sparse) and mounts it at `target`.
pub(crate) fn mount(image: &Path, bytes: u64, target: &Path) -> io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(image)?;
    file.set_len(bytes)?;
    drop(file);
    // No journal (the layer dies with the instance), no reserved blocks (all of diskSize is
    // the function's), inode tables initialised lazily (fast mkfs), an inode per 16 KiB.
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-m", "0", "-i", "16384"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .arg(image))?;
    let out = run(Command::new("losetup")
        .args(["--find", "--show", "--nooverlap"])
        .arg(image))?;
    let device = String::from_utf8_lossy(&out).trim().to_string();
    std::fs::create_dir_all(target)?;
    let mounted = rustix::mount::mount(
        device.as_str(),
        target,
        "ext4",
        rustix::mount::MountFlags::NOATIME,
        None,
    );
    if let Err(e) = mounted {
        let _ = detach(image);
        return Err(io::Error::other(format!(
            "mounting {device} ({}) at {}: {e}",
            image.display(),
            target.display()
        )));
    }
    Ok(())
}

/// Unmounts `target` if mounted, then detaches the loop devices backed by `image`.
pub(crate) fn unmount(image: &Path, target: &Path) -> io::Result<()> {
    if target.exists() && pronto_lazyfs::mountinfo::is_mount_point(target)? {
        // Nothing is above it any more (the overlay went first): a plain unmount, which also
        // lets the loop device go.
        if let Err(e) = rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty()) {
            tracing::warn!(target = %target.display(), error = %e, "unmounting an instance disk; detaching it");
            rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH)
                .map_err(io::Error::from)?;
        }
    }
    detach(image)
}

/// Detaches every loop device whose backing file is `image`.
fn detach(image: &Path) -> io::Result<()> {
    for device in backed_by(image)? {
        run(Command::new("losetup").arg("-d").arg(&device))?;
    }
    Ok(())
}

/// The loop devices backed by `image` (from `/sys/block/loop*/loop/backing_file`).
fn backed_by(image: &Path) -> io::Result<Vec<PathBuf>> {
    let Ok(image) = image.canonicalize() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block")?.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with("loop")) else {
            continue;
        };
        let Ok(backing) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        if Path::new(backing.trim_end()) == image {
            out.push(PathBuf::from("/dev").join(name));
        }
    }
    Ok(out)
}

fn run(cmd: &mut Command) -> io::Result<Vec<u8>> {
    let out = cmd
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} {:?}: {}: {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}
