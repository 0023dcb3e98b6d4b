//! The seccomp filter of an instance: Docker's default profile (`seccomp/default.json`, origin
//! and license in `seccomp/README.md`), translated into the OCI `linux.seccomp` section for the
//! container's capabilities, this machine's architecture and the running kernel, as moby's
//! `setupSeccomp` (`profiles/seccomp/seccomp_linux.go`) does.
//!
//! The profile is a default-deny allow list (`EPERM` for anything it does not name). For a
//! container without `CAP_SYS_ADMIN` — every Pronto container — it refuses `unshare`, `setns`,
//! `mount` and the new mount API, `bpf`, `perf_event_open`, `keyctl`; `clone` is allowed only
//! without namespace flags (so no `CLONE_NEWUSER`); `clone3`, whose flags sit behind a pointer
//! a filter cannot read, answers `ENOSYS` so that libcs fall back to `clone`.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::LazyLock;

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompBuilder,
    LinuxSyscallBuilder,
};
use serde::Deserialize;

/// The profile as shipped, compiled in.
const DEFAULT_PROFILE: &str = include_str!("../seccomp/default.json");

/// The node's choice of seccomp filter for its containers (`pronto serve --seccomp`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// Docker's default profile.
    #[default]
    Default,
    /// No filter at all (`Seccomp: 0` inside).
    Unconfined,
}

impl SeccompMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SeccompMode::Default => "default",
            SeccompMode::Unconfined => "unconfined",
        }
    }
}

impl FromStr for SeccompMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(SeccompMode::Default),
            "unconfined" => Ok(SeccompMode::Unconfined),
            other => Err(format!(
                "unknown seccomp mode {other:?}: expected default or unconfined"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("parsing the seccomp profile: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("seccomp profile rule {rule}: {reason}")]
    Rule { rule: usize, reason: String },
    #[error("reading the kernel release {release:?}: {reason}")]
    KernelRelease { release: String, reason: String },
    #[error("building the seccomp section: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
}

/// moby's profile format (`profiles/seccomp/seccomp.go`, `Seccomp`). Unknown fields are
/// refused: a field this translation does not know could loosen or tighten a rule.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Profile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ArchMap {
    architecture: Arch,
    sub_architectures: Vec<Arch>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rule {
    names: Vec<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<LinuxSeccompArg>>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
    #[serde(default)]
    #[allow(dead_code)] // documentation inside the profile
    comment: String,
}

/// A rule's condition: every non-empty part must hold (`includes`) or none may (`excludes`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Filter {
    #[serde(default)]
    caps: Vec<Capability>,
    /// moby's architecture names (`amd64`, `arm64`, ...), not libseccomp's.
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    min_kernel: Option<String>,
}

static PROFILE: LazyLock<Result<Profile, String>> =
    LazyLock::new(|| serde_json::from_str(DEFAULT_PROFILE).map_err(|e| e.to_string()));

/// This build's architecture as moby names it, and as libseccomp does.
fn native_arch() -> Option<(&'static str, Arch)> {
    if cfg!(target_arch = "x86_64") {
        Some(("amd64", Arch::ScmpArchX86_64))
    } else if cfg!(target_arch = "aarch64") {
        Some(("arm64", Arch::ScmpArchAarch64))
    } else if cfg!(target_arch = "x86") {
        Some(("x86", Arch::ScmpArchX86))
    } else if cfg!(target_arch = "s390x") {
        Some(("s390x", Arch::ScmpArchS390x))
    } else if cfg!(all(target_arch = "powerpc64", target_endian = "little")) {
        Some(("ppc64le", Arch::ScmpArchPpc64le))
    } else {
        None
    }
}

/// `major.minor` of a kernel release such as `6.1.0-18-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?;
    let digits = minor
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(minor.len());
    let minor = minor[..digits].parse().ok()?;
    Some((major, minor))
}

/// What the rules are matched against.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// The container's bounding capabilities.
    pub capabilities: &'a HashSet<Capability>,
    /// moby's name of the architecture (`amd64`), `None` if the profile does not know it.
    pub arch: Option<(&'a str, Arch)>,
    /// The running kernel's `major.minor`.
    pub kernel: (u32, u32),
}

impl Target<'_> {
    /// This machine, for a container with `capabilities`.
    pub fn host(capabilities: &HashSet<Capability>) -> Result<Target<'_>, SeccompError> {
        let uname = rustix::system::uname();
        let release = uname.release().to_string_lossy().into_owned();
        let kernel = kernel_version(&release).ok_or_else(|| SeccompError::KernelRelease {
            release: release.clone(),
            reason: "no major.minor version".into(),
        })?;
        Ok(Target {
            capabilities,
            arch: native_arch(),
            kernel,
        })
    }
}

/// The default profile translated for `target`.
pub fn default_profile(target: &Target<'_>) -> Result<LinuxSeccomp, SeccompError> {
    let profile = match &*PROFILE {
        Ok(p) => p,
        Err(e) => {
            return Err(SeccompError::Rule {
                rule: 0,
                reason: e.clone(),
            })
        }
    };
    translate(profile, target)
}

fn translate(profile: &Profile, target: &Target<'_>) -> Result<LinuxSeccomp, SeccompError> {
    let arch_name = target.arch.map(|(name, _)| name);
    let architectures: Vec<Arch> = target
        .arch
        .and_then(|(_, arch)| profile.arch_map.iter().find(|m| m.architecture == arch))
        .map(|m| {
            std::iter::once(m.architecture)
                .chain(m.sub_architectures.iter().copied())
                .collect()
        })
        .unwrap_or_default();

    let mut syscalls = Vec::new();
    for (i, rule) in profile.syscalls.iter().enumerate() {
        let min_kernel = |f: &Filter| -> Result<Option<bool>, SeccompError> {
            f.min_kernel
                .as_deref()
                .map(|v| {
                    kernel_version(v)
                        .map(|min| target.kernel >= min)
                        .ok_or_else(|| SeccompError::Rule {
                            rule: i,
                            reason: format!("bad minKernel {v:?}"),
                        })
                })
                .transpose()
        };
        let ex = &rule.excludes;
        let excluded = arch_name.is_some_and(|a| ex.arches.iter().any(|x| x == a))
            || ex.caps.iter().any(|c| target.capabilities.contains(c))
            || min_kernel(ex)? == Some(true);
        let inc = &rule.includes;
        let included = (inc.arches.is_empty()
            || arch_name.is_some_and(|a| inc.arches.iter().any(|x| x == a)))
            && inc.caps.iter().all(|c| target.capabilities.contains(c))
            && min_kernel(inc)? != Some(false);
        if excluded || !included {
            continue;
        }
        if rule.names.is_empty() {
            return Err(SeccompError::Rule {
                rule: i,
                reason: "names no syscall".into(),
            });
        }
        let mut b = LinuxSyscallBuilder::default()
            .names(rule.names.clone())
            .action(rule.action);
        if let Some(errno) = rule.errno_ret {
            b = b.errno_ret(errno);
        }
        if let Some(args) = rule.args.as_ref().filter(|a| !a.is_empty()) {
            b = b.args(args.clone());
        }
        syscalls.push(b.build()?);
    }

    let mut b = LinuxSeccompBuilder::default()
        .default_action(profile.default_action)
        .syscalls(syscalls);
    if let Some(errno) = profile.default_errno_ret {
        b = b.default_errno_ret(errno);
    }
    if !architectures.is_empty() {
        b = b.architectures(architectures);
    }
    Ok(b.build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(names: &[&str]) -> HashSet<Capability> {
        names
            .iter()
            .map(|n| serde_json::from_value(serde_json::Value::from(*n)).unwrap())
            .collect()
    }

    fn rules_for<'a>(s: &'a LinuxSeccomp, name: &str) -> Vec<&'a oci_spec::runtime::LinuxSyscall> {
        s.syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|r| r.names().iter().any(|n| n == name))
            .collect()
    }

    fn runc_default_caps() -> HashSet<Capability> {
        caps(&["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"])
    }

    #[test]
    fn the_shipped_profile_parses_and_is_the_one_documented() {
        assert!(PROFILE.is_ok(), "{:?}", PROFILE.as_ref().err());
        // The README pins the file's digest: an edit must update both.
        let readme = include_str!("../seccomp/README.md");
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(DEFAULT_PROFILE));
        assert!(
            readme.contains(&digest),
            "README does not name sha256 {digest}"
        );
    }

    #[test]
    fn without_sys_admin_namespaces_are_refused() {
        let c = runc_default_caps();
        let t = Target {
            capabilities: &c,
            arch: Some(("amd64", Arch::ScmpArchX86_64)),
            kernel: (6, 1),
        };
        let s = default_profile(&t).unwrap();
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(
            s.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        for name in ["unshare", "setns", "mount", "bpf", "keyctl", "open_tree"] {
            assert!(
                rules_for(&s, name)
                    .iter()
                    .all(|r| r.action() != LinuxSeccompAction::ScmpActAllow),
                "{name} allowed"
            );
        }
        // clone: only with no namespace flag (CLONE_NEWUSER = 0x10000000 among them).
        let clone = rules_for(&s, "clone");
        assert_eq!(clone.len(), 1);
        let arg = clone[0].args().as_ref().unwrap()[0];
        // masked with `value`, must equal `valueTwo` (absent: 0)
        assert_eq!((arg.index(), arg.value_two().unwrap_or(0)), (0, 0));
        assert_ne!(arg.value() & 0x1000_0000, 0);
        // clone3: ENOSYS, so that libcs fall back to clone.
        let clone3 = rules_for(&s, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0].errno_ret(), Some(38));
        // x86-only rules are kept, other architectures' dropped.
        assert_eq!(rules_for(&s, "arch_prctl").len(), 1);
        assert!(rules_for(&s, "s390_runtime_instr").is_empty());
        // minKernel 4.8: ptrace is allowed on newer kernels only.
        assert_eq!(rules_for(&s, "ptrace").len(), 1);
        let old = Target {
            kernel: (4, 4),
            ..t.clone()
        };
        assert!(rules_for(&default_profile(&old).unwrap(), "ptrace").is_empty());
    }

    #[test]
    fn capabilities_bring_their_syscalls() {
        let c = caps(&["CAP_SYS_ADMIN", "CAP_SYS_TIME"]);
        let t = Target {
            capabilities: &c,
            arch: Some(("amd64", Arch::ScmpArchX86_64)),
            kernel: (6, 1),
        };
        let s = default_profile(&t).unwrap();
        for name in ["unshare", "mount", "clock_settime"] {
            assert!(rules_for(&s, name)
                .iter()
                .any(|r| r.action() == LinuxSeccompAction::ScmpActAllow && r.args().is_none()));
        }
        assert!(rules_for(&s, "clone3")
            .iter()
            .all(|r| r.action() == LinuxSeccompAction::ScmpActAllow));
    }

    #[test]
    fn modes_parse() {
        assert_eq!("default".parse(), Ok(SeccompMode::Default));
        assert_eq!("unconfined".parse(), Ok(SeccompMode::Unconfined));
        assert_eq!(
            "off".parse::<SeccompMode>().unwrap_err(),
            "unknown seccomp mode \"off\": expected default or unconfined"
        );
        assert_eq!(kernel_version("6.18.44-fc-v1272"), Some((6, 18)));
        assert_eq!(kernel_version("4.8"), Some((4, 8)));
        assert_eq!(kernel_version("5.10rc1"), Some((5, 10)));
    }
}
