//! `/proc/self/mountinfo`, the one parser of it in Pronto (the lazy fs finds its stale mounts
//! with it, the runtime its instance overlays).

use std::io;
use std::path::{Path, PathBuf};

/// The fields of one mount that Pronto looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// The mounts this process sees.
pub fn mounts() -> io::Result<Vec<MountInfo>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_line).collect())
}

/// Something is mounted at `path` (exactly there, not above or below it).
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    Ok(mounts()?.iter().any(|m| m.mountpoint == path))
}

/// One line: `ID PARENT DEV ROOT MOUNTPOINT OPTS [TAGS...] - TYPE SOURCE SUPEROPTS`.
pub fn parse_line(line: &str) -> Option<MountInfo> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|f| *f == "-")?;
    Some(MountInfo {
        mountpoint: PathBuf::from(unescape(fields.get(4)?)),
        fstype: fields.get(sep + 1)?.to_string(),
        source: unescape(fields.get(sep + 2)?),
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let digit = |k: usize| u32::from(b[i + k] - b'0');
            out.push((digit(1) * 64 + digit(2) * 8 + digit(3)) as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_escapes() {
        let line = "612 30 0:77 / /var/lib/pronto/node/lazy/ab\\040c/mnt ro,nosuid shared:1 - fuse pronto:sha256:x ro,user_id=0";
        let m = parse_line(line).unwrap();
        assert_eq!(m.fstype, "fuse");
        assert_eq!(m.source, "pronto:sha256:x");
        assert_eq!(
            m.mountpoint,
            PathBuf::from("/var/lib/pronto/node/lazy/ab c/mnt")
        );
        assert!(parse_line("garbage").is_none());
    }

    #[test]
    fn optional_tags_do_not_shift_the_type() {
        let line = "40 1 0:33 / /d/instances/x/rootfs rw,relatime shared:5 master:2 - overlay overlay rw,lowerdir=/a";
        let m = parse_line(line).unwrap();
        assert_eq!(m.fstype, "overlay");
        assert_eq!(m.mountpoint, PathBuf::from("/d/instances/x/rootfs"));
    }

    #[test]
    fn a_backslash_without_octal_digits_is_kept() {
        assert_eq!(unescape("a\\x\\04"), "a\\x\\04");
        assert_eq!(unescape("tab\\011end"), "tab\tend");
    }

    #[test]
    fn the_root_is_a_mount_point_and_a_fresh_dir_is_not() {
        assert!(is_mount_point(Path::new("/")).unwrap());
        let dir = std::env::temp_dir().join(format!("pronto-mi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!is_mount_point(&dir).unwrap());
        std::fs::remove_dir(&dir).unwrap();
    }
}
