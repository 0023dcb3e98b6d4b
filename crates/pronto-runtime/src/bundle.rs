//! The OCI runtime `config.json` of an instance.
//!
//! Starts from `oci-spec`'s default, which is `runc spec`'s: the runtime's default capability
//! set only (`CAP_AUDIT_WRITE`, `CAP_KILL`, `CAP_NET_BIND_SERVICE`), `noNewPrivileges`, masked
//! and read-only kernel paths, a private `/dev`. On top: the process from the image config and
//! the function, the namespaces (network = the one Pronto made), cgroup limits, and the
//! seccomp filter (Docker's default profile, [`crate::seccomp`], unless the node is
//! `unconfined`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::seccomp::{self, SeccompError, SeccompMode};
use crate::userns::{IdRange, RANGE_SIZE};

use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxIdMappingBuilder,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, MountBuilder, PosixRlimitBuilder, PosixRlimitType, RootBuilder, Spec,
    UserBuilder,
};

/// CFS period for `cpu` → quota.
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("the image has no command to run: set customContainerConfig.entrypoint or an image ENTRYPOINT/CMD")]
    NoCommand,
    #[error("image user {user:?}: {reason}")]
    User { user: String, reason: String },
    #[error("building the runtime spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// What the function says about its process; `None`s fall back to the image config.
#[derive(Debug, Clone, Default)]
pub struct ProcessOverrides {
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
}

/// The process's argv: the function's `command` replaces the image ENTRYPOINT (and with it the
/// image CMD, as `docker run --entrypoint` does); `args` replace CMD.
pub fn process_args(
    image_config: &serde_json::Value,
    o: &ProcessOverrides,
) -> Result<Vec<String>, BundleError> {
    let strings = |key: &str| -> Option<Vec<String>> {
        image_config["config"][key].as_array().map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
    };
    let mut argv = match &o.command {
        Some(c) => c.clone(),
        None => strings("Entrypoint").unwrap_or_default(),
    };
    match (&o.args, &o.command) {
        (Some(a), _) => argv.extend(a.iter().cloned()),
        (None, None) => argv.extend(strings("Cmd").unwrap_or_default()),
        (None, Some(_)) => {}
    }
    if argv.is_empty() {
        return Err(BundleError::NoCommand);
    }
    Ok(argv)
}

/// Image `Env`, then the function's variables (which win), then `FC_SERVER_PORT`.
pub fn process_env(
    image_config: &serde_json::Value,
    o: &ProcessOverrides,
    port: u16,
) -> Vec<String> {
    let mut env: Vec<(String, String)> = image_config["config"]["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            v.as_str()?
                .split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    if !image_config["config"]["Env"].as_array().is_some_and(|a| {
        a.iter()
            .any(|v| v.as_str().is_some_and(|s| s.starts_with("PATH=")))
    }) {
        set(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    for (k, v) in &o.env {
        set(k, v);
    }
    set("FC_SERVER_PORT", &port.to_string());
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Resolves the image `User` (`uid`, `uid:gid`, `name`, `name:group`) against the rootfs's
/// `/etc/passwd` and `/etc/group`. Empty means root.
pub fn resolve_user(user: &str, rootfs: &Path) -> Result<(u32, u32), BundleError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let err = |reason: &str| BundleError::User {
        user: user.to_string(),
        reason: reason.to_string(),
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let lookup = |file: &str, name: &str| -> Option<(u32, Option<u32>)> {
        let text = std::fs::read_to_string(rootfs.join(file)).ok()?;
        text.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 3 && f[0] == name)
                .then(|| (f[2].parse().ok(), f.get(3).and_then(|g| g.parse().ok())))
                .and_then(|(id, gid)| Some((id?, gid)))
        })
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => {
            let (uid, gid) = lookup("etc/passwd", u)
                .ok_or_else(|| err("no such user in the image's /etc/passwd"))?;
            (uid, gid)
        }
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                lookup("etc/group", g)
                    .ok_or_else(|| err("no such group in the image's /etc/group"))?
                    .0
            }
        },
        None => primary_gid.unwrap_or(0),
    };
    Ok((uid, gid))
}

/// Everything the spec needs.
#[derive(Debug, Clone)]
pub struct BundleParams<'a> {
    pub hostname: &'a str,
    pub rootfs: &'a Path,
    pub image_config: &'a serde_json::Value,
    pub overrides: &'a ProcessOverrides,
    pub port: u16,
    /// The network namespace to join; `None`: the runtime makes one (with `ids`).
    pub netns: Option<&'a Path>,
    /// The user namespace's host ids; `None`: the node's user namespace.
    pub ids: Option<IdRange>,
    /// Bound read-only on `/etc/resolv.conf` when the node gives instances a network.
    pub resolv_conf: Option<&'a Path>,
    pub cgroups_path: &'a str,
    pub memory_bytes: i64,
    pub cpu: f64,
    pub seccomp: SeccompMode,
}

pub fn build_spec(p: &BundleParams<'_>) -> Result<Spec, BundleError> {
    let args = process_args(p.image_config, p.overrides)?;
    let env = process_env(p.image_config, p.overrides, p.port);
    let user_field = p.image_config["config"]["User"].as_str().unwrap_or("");
    let (uid, gid) = resolve_user(user_field, p.rootfs)?;
    let cwd = p.image_config["config"]["WorkingDir"]
        .as_str()
        .filter(|w| w.starts_with('/'))
        .unwrap_or("/");

    let mut spec = Spec::default();
    spec.set_hostname(Some(p.hostname.to_string()));
    spec.set_root(Some(
        RootBuilder::default()
            .path(p.rootfs)
            .readonly(false)
            .build()?,
    ));
    let mut process = spec.process().clone().expect("default spec has a process");
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(cwd.into());
    process.set_terminal(Some(false));
    process.set_user(UserBuilder::default().uid(uid).gid(gid).build()?);
    process.set_no_new_privileges(Some(true));
    // As many open files as servers expect, within what the daemon itself may grant.
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX)
        .min(65536);
    process.set_rlimits(Some(vec![PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(nofile)
        .soft(nofile)
        .build()?]));
    spec.set_process(Some(process));
    if let Some(conf) = p.resolv_conf {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.push(
            MountBuilder::default()
                .destination("/etc/resolv.conf")
                .typ("bind")
                .source(conf)
                .options(vec!["rbind".into(), "ro".into()])
                .build()?,
        );
        spec.set_mounts(Some(mounts));
    }

    let mut namespaces = vec![
        (LinuxNamespaceType::Pid, None),
        (LinuxNamespaceType::Ipc, None),
        (LinuxNamespaceType::Uts, None),
        (LinuxNamespaceType::Mount, None),
        (LinuxNamespaceType::Network, p.netns),
    ];
    if p.ids.is_some() {
        namespaces.push((LinuxNamespaceType::User, None));
    }
    let namespaces: Vec<LinuxNamespace> = namespaces
        .into_iter()
        .map(|(typ, path)| {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(typ);
            ns.set_path(path.map(Into::into));
            ns
        })
        .collect();

    let quota = (p.cpu * CPU_PERIOD_US as f64).round().max(1000.0) as i64;
    let resources = LinuxResourcesBuilder::default()
        .devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?])
        .memory(
            LinuxMemoryBuilder::default()
                .limit(p.memory_bytes)
                .swap(p.memory_bytes) // memory+swap = memory: no swap
                .build()?,
        )
        .cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build()?,
        )
        .pids(LinuxPidsBuilder::default().limit(4096i64).build()?)
        .build()?;
    let default_linux = spec.linux().clone().expect("default spec has linux");
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(std::path::PathBuf::from(p.cgroups_path))
        .masked_paths(default_linux.masked_paths().clone().unwrap_or_default())
        .readonly_paths(default_linux.readonly_paths().clone().unwrap_or_default());
    if let Some(ids) = p.ids {
        let map = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(ids.host_base)
            .size(RANGE_SIZE)
            .build()?;
        linux = linux.uid_mappings(vec![map]).gid_mappings(vec![map]);
    }
    if p.seccomp == SeccompMode::Default {
        let bounding = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().as_ref())
            .and_then(|c| c.bounding().clone())
            .unwrap_or_default();
        let target = seccomp::Target::host(&bounding)?;
        linux = linux.seccomp(seccomp::default_profile(&target)?);
    }
    spec.set_linux(Some(linux.build()?));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> serde_json::Value {
        json!({"config": {"Entrypoint": ["/bin/server"], "Cmd": ["--port", "80"], "Env": ["PATH=/bin", "A=image"], "User": "app:staff", "WorkingDir": "/srv"}})
    }

    #[test]
    fn argv_follows_docker_override_rules() {
        let none = ProcessOverrides::default();
        assert_eq!(
            process_args(&cfg(), &none).unwrap(),
            ["/bin/server", "--port", "80"]
        );
        let args = ProcessOverrides {
            args: Some(vec!["-v".into()]),
            ..Default::default()
        };
        assert_eq!(process_args(&cfg(), &args).unwrap(), ["/bin/server", "-v"]);
        let cmd = ProcessOverrides {
            command: Some(vec!["/bin/sh".into()]),
            ..Default::default()
        };
        assert_eq!(
            process_args(&cfg(), &cmd).unwrap(),
            ["/bin/sh"],
            "command drops the image CMD"
        );
        let e = process_args(&json!({"config": {}}), &none).unwrap_err();
        assert!(e.to_string().starts_with("the image has no command to run"));
    }

    #[test]
    fn env_function_wins_and_port_is_set() {
        let o = ProcessOverrides {
            env: [("A".to_string(), "fn".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(
            process_env(&cfg(), &o, 9000),
            ["PATH=/bin", "A=fn", "FC_SERVER_PORT=9000"]
        );
        let env = process_env(&json!({}), &ProcessOverrides::default(), 8080);
        assert!(env[0].starts_with("PATH=/usr/local/sbin"));
    }

    #[test]
    fn users_resolve_from_the_image() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(root.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(resolve_user("", root.path()).unwrap(), (0, 0));
        assert_eq!(resolve_user("app", root.path()).unwrap(), (1000, 1001));
        assert_eq!(resolve_user("app:staff", root.path()).unwrap(), (1000, 50));
        assert_eq!(resolve_user("7:8", root.path()).unwrap(), (7, 8));
        let e = resolve_user("ghost", root.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "image user \"ghost\": no such user in the image's /etc/passwd"
        );
    }

    /// The parameters of a 256 MiB, half-CPU instance running `/app` from `rootfs`, joining
    /// `/run/netns/x`.
    fn params<'a>(
        rootfs: &'a Path,
        config: &'a serde_json::Value,
        o: &'a ProcessOverrides,
    ) -> BundleParams<'a> {
        BundleParams {
            hostname: "i1",
            rootfs,
            image_config: config,
            overrides: o,
            port: 9000,
            netns: Some(Path::new("/run/netns/x")),
            ids: None,
            resolv_conf: None,
            cgroups_path: "/pronto-i1",
            memory_bytes: 256 << 20,
            cpu: 0.5,
            seccomp: SeccompMode::Default,
        }
    }

    #[test]
    fn spec_has_limits_namespaces_and_default_capabilities_only() {
        let root = tempfile::tempdir().unwrap();
        let (o, config) = (
            ProcessOverrides::default(),
            json!({"config": {"Cmd": ["/app"]}}),
        );
        let spec = build_spec(&params(root.path(), &config, &o)).unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 256 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(v["process"]["noNewPrivileges"], true);
        let mut caps: Vec<_> = v["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        caps.sort();
        assert_eq!(
            caps,
            ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        );
        let ns: Vec<_> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
        assert_eq!(v["linux"]["namespaces"][4]["path"], "/run/netns/x");
        assert!(v["linux"]["maskedPaths"]
            .as_array()
            .is_some_and(|m| !m.is_empty()));
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let allowed: Vec<&str> = v["linux"]["seccomp"]["syscalls"][0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert!(allowed.contains(&"read") && !allowed.contains(&"unshare"));
    }

    #[test]
    fn a_user_namespace_maps_the_range_and_the_runtime_makes_the_network_namespace() {
        let root = tempfile::tempdir().unwrap();
        let (o, config) = (
            ProcessOverrides::default(),
            json!({"config": {"Cmd": ["/app"]}}),
        );
        let spec = build_spec(&BundleParams {
            netns: None,
            ids: Some(IdRange { host_base: 1 << 30 }),
            resolv_conf: Some(Path::new("/run/pronto/x/resolv.conf")),
            ..params(root.path(), &config, &o)
        })
        .unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.iter().any(|n| n["type"] == "user"));
        let net = ns.iter().find(|n| n["type"] == "network").unwrap();
        assert!(net.get("path").is_none(), "{net}");
        let resolv = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/etc/resolv.conf")
            .expect("resolv.conf is bound");
        assert_eq!(resolv["source"], "/run/pronto/x/resolv.conf");
        assert!(resolv["options"].as_array().unwrap().contains(&json!("ro")));
        for key in ["uidMappings", "gidMappings"] {
            assert_eq!(
                v["linux"][key],
                json!([{"containerID": 0, "hostID": 1u32 << 30, "size": 65536}])
            );
        }
    }
}
