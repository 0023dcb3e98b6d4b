//! An instance's names on the machine and its paths under the node's data dir, all derived
//! from its id in one place.
//!
//! - `instances/<id>/`: `state.json` (written first, so a crash at any later step can be
//!   undone), `config.json` (the bundle), `disk.img` mounted at `disk/` (the writable layer,
//!   bounded: `disk/upper/`, `disk/work/`), `lower/` (with a user namespace: the idmapped
//!   clone of the image), the runtime's `pid` and `runtime.log`;
//! - `/run/pronto/<node>/<id>/rootfs/`: the overlay mount point, outside the data dir (which
//!   stays `0700`) because a container's root in a user namespace must be able to search every
//!   directory above its rootfs ([`run_dir`], [`crate::userns`]);
//! - `logs/<function>/<id>.log`: the container's stdout+stderr, kept after teardown;
//! - network namespace `pronto-<id>`, cgroup `/pronto-<id>`, container `<id>`.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What `state.json` holds: enough to undo every step of a start after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceState {
    pub id: String,
    pub function: String,
    pub netns: String,
    pub cgroups_path: String,
    /// The network address of its /30 once it has an outbound network (see `network`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<std::net::Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceLayout {
    pub id: String,
    pub function: String,
    /// `DATA/instances/<id>`: the bundle.
    pub dir: PathBuf,
    /// `/run/pronto/<node>/<id>`: the rootfs mount point's directory.
    pub mounts: PathBuf,
    pub log: PathBuf,
    pub netns: String,
    pub cgroups_path: String,
}

impl InstanceLayout {
    /// The layout of a new instance `id` of `function` under the node's `data_dir`.
    pub fn new(data_dir: &Path, id: &str, function: &str) -> io::Result<InstanceLayout> {
        // The name becomes a directory name (logs).
        if function.is_empty() || function.starts_with('.') || function.contains(['/', '\0']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("function name {function:?} cannot name a directory"),
            ));
        }
        Ok(InstanceLayout {
            id: id.to_string(),
            function: function.to_string(),
            dir: instances_dir(data_dir).join(id),
            mounts: run_dir(data_dir).join(id),
            log: log_dir(data_dir, function).join(format!("{id}.log")),
            netns: format!("pronto-{id}"),
            cgroups_path: format!("/pronto-{id}"),
        })
    }

    /// The layout recorded in `DATA/instances/<id>/state.json`. Without a readable state (a
    /// crash before it was written) the names are derived from the id, as a start makes them.
    pub fn recorded(data_dir: &Path, id: &str) -> InstanceLayout {
        let dir = instances_dir(data_dir).join(id);
        let state: Option<InstanceState> = std::fs::read(dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let state = state.unwrap_or_else(|| InstanceState {
            id: id.to_string(),
            function: String::new(),
            netns: format!("pronto-{id}"),
            cgroups_path: format!("/pronto-{id}"),
            network: None,
        });
        InstanceLayout {
            id: id.to_string(),
            log: log_dir(data_dir, &state.function).join(format!("{id}.log")),
            function: state.function,
            dir,
            mounts: run_dir(data_dir).join(id),
            netns: state.netns,
            cgroups_path: state.cgroups_path,
        }
    }

    pub fn state(&self) -> InstanceState {
        InstanceState {
            id: self.id.clone(),
            function: self.function.clone(),
            netns: self.netns.clone(),
            cgroups_path: self.cgroups_path.clone(),
            network: None,
        }
    }

    /// Records the instance's /30 in `state.json` (before anything can fail without undoing
    /// it), so teardown and crash cleanup release it.
    pub fn record_network(&self, link: &crate::network::Link) -> io::Result<()> {
        let state = InstanceState {
            network: Some(link.network),
            ..self.state()
        };
        let tmp = self.dir.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&state).expect("state serializes"))?;
        std::fs::rename(tmp, self.dir.join("state.json"))
    }

    /// The /30 recorded in `state.json`, if any.
    pub fn recorded_network(&self) -> Option<crate::network::Link> {
        let state: InstanceState =
            serde_json::from_slice(&std::fs::read(self.dir.join("state.json")).ok()?).ok()?;
        state
            .network
            .map(|network| crate::network::Link { network })
    }

    /// Creates the instance directory and records the state in it (the first step of a start).
    pub fn create(&self) -> io::Result<()> {
        std::fs::create_dir(&self.dir)?;
        let state = serde_json::to_vec(&self.state()).expect("state serializes");
        std::fs::write(self.dir.join("state.json"), state)
    }

    pub fn rootfs(&self) -> PathBuf {
        self.mounts.join("rootfs")
    }

    /// The overlay's lower dir when the image is seen through an idmapped clone.
    pub fn idmapped_lower(&self) -> PathBuf {
        self.dir.join("lower")
    }

    /// The file holding the instance's disk (its writable layer's filesystem).
    pub fn disk_image(&self) -> PathBuf {
        self.dir.join("disk.img")
    }

    /// Where that disk is mounted; the overlay's upper and work directories are on it.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk")
    }

    pub fn upper(&self) -> PathBuf {
        self.disk().join("upper")
    }

    pub fn work(&self) -> PathBuf {
        self.disk().join("work")
    }

    pub fn config_json(&self) -> PathBuf {
        self.dir.join("config.json")
    }
}

/// Where the rootfs mount points of the node on `data_dir` are: `/run/pronto/` and 12 hex
/// digits of the data dir's SHA-256 (so a restarted daemon finds its own, and another node on
/// the machine has its own). `/run` is a tmpfs: after a reboot it is empty, as are the mounts.
pub fn run_dir(data_dir: &Path) -> PathBuf {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    PathBuf::from(RUN_ROOT).join(hex::encode(&hash[..6]))
}

/// Searchable by everyone (`0711`): the containers' roots cross it.
pub const RUN_ROOT: &str = "/run/pronto";

pub fn instances_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("instances")
}

/// Where the logs of `function`'s instances are, kept after they are gone.
pub fn log_dir(data_dir: &Path, function: &str) -> PathBuf {
    data_dir.join("logs").join(function)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_derive_from_the_id() {
        let l = InstanceLayout::new(Path::new("/d"), "0a1b2c", "hello").unwrap();
        assert_eq!(l.dir, Path::new("/d/instances/0a1b2c"));
        assert_eq!(l.mounts, run_dir(Path::new("/d")).join("0a1b2c"));
        assert_eq!(l.rootfs(), l.mounts.join("rootfs"));
        assert!(l.mounts.starts_with("/run/pronto/"));
        assert_ne!(run_dir(Path::new("/d")), run_dir(Path::new("/e")));
        assert_eq!(l.log, Path::new("/d/logs/hello/0a1b2c.log"));
        assert_eq!(l.netns, "pronto-0a1b2c");
        assert_eq!(l.cgroups_path, "/pronto-0a1b2c");
    }

    #[test]
    fn function_names_that_are_not_directory_names_are_refused() {
        for bad in ["", ".", "..", ".hidden", "a/b", "nul\0"] {
            let e = InstanceLayout::new(Path::new("/d"), "x", bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn the_recorded_state_is_read_back_and_a_missing_one_is_derived() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(instances_dir(tmp.path())).unwrap();
        let mut l = InstanceLayout::new(tmp.path(), "abc", "fn").unwrap();
        l.netns = "custom-ns".into();
        l.create().unwrap();
        assert_eq!(InstanceLayout::recorded(tmp.path(), "abc"), l);

        let missing = InstanceLayout::recorded(tmp.path(), "def");
        assert_eq!(missing.netns, "pronto-def");
        assert_eq!(missing.cgroups_path, "/pronto-def");
        // A second create of the same id fails instead of reusing another instance's dir.
        assert!(l.create().is_err());
    }
}
