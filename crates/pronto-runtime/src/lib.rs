//! Function instances on one node.
//!
//! An *instance* is: a root filesystem (an overlay whose lower dir is the image — unpacked once
//! per node per digest, or, for an accelerated image, its artifact mounted lazily through FUSE
//! — with a per-instance upper dir), an OCI bundle (`config.json` generated
//! with `oci-spec`), a network namespace Pronto creates, cgroup limits, and a container run by a
//! real OCI runtime (`runc` by default). It is *ready* when the function's port, inside its
//! network namespace, answers HTTP (or, with a health check, when that passes:
//! [`ReadinessProbe`]).
//!
//! - [`images`]: the node's unpacked-image store (one unpack per digest, concurrent callers share it).
//! - [`lazy`]: lazily loaded lower dirs, one FUSE mount per accelerated image, shared.
//! - [`bundle`]: `config.json` from the image config and the function's settings.
//! - [`seccomp`]: the containers' seccomp filter, Docker's default profile translated.
//! - [`userns`]: a user namespace per instance (an unprivileged id range, the image seen
//!   through an idmapped mount).
//! - [`netns`]: named network namespaces and sockets opened inside them.
//! - [`network`]: instances' outbound network (veth, /30, NAT, filter rules, `resolv.conf`).
//! - [`oci`]: calls to the OCI runtime binary.
//! - [`output`]: the container's stdout and stderr through a pipe, stamped line by line
//!   (time, instance, request) into its log file.
//! - [`host`]: the seam between instances and the machine ([`Host`]: overlay mounts, network
//!   namespaces, the OCI runtime, process liveness, OOM), the real [`LinuxHost`], and with
//!   feature `fake` a recording `fake::FakeHost` for tests without root.
//! - [`node`]: the node ([`Node`]) and its data dir; [`layout`]: an instance's names and paths;
//! - [`instance`]: what to run and the running [`Instance`]; `start`, `teardown` and `cleanup`
//!   hold the verbs (start with readiness, teardown, crash cleanup); `procfs` what `/proc` and
//!   cgroupfs say about a process.
//!
//! Reaching an instance: the daemon never routes packets into the namespace. It creates the TCP
//! socket *inside* the instance's namespace (a short-lived thread `setns`es into it and calls
//! `socket()`) and connects to `127.0.0.1:PORT` there; the socket keeps its namespace when used
//! from the daemon's. No veth, no addresses to allocate, no traffic outside namespaces Pronto made.

pub mod bundle;
mod cleanup;
mod disk;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod host;
pub mod images;
pub mod instance;
pub mod layout;
pub mod lazy;
pub mod netns;
pub mod network;
pub mod node;
pub mod oci;
pub mod output;
mod procfs;
pub mod seccomp;
mod start;
mod teardown;
#[cfg(test)]
mod tests;
pub mod userns;

pub use pronto_lazyfs::stream::EAGER_TIME as STREAM_EAGER_TIME;
pub use pronto_lazyfs::{AccessTrace, StatsSnapshot, StreamPolicy};

pub use host::{Host, LinuxHost};
pub use instance::{
    Instance, InstanceSpec, ReadinessProbe, RootfsSource, StartError, StartTimings,
};
pub use node::{Isolation, NetworkConfig, Node, NodeConfig, DEFAULT_CHUNK_CACHE_BYTES};
pub use seccomp::SeccompMode;
pub use teardown::{TeardownError, TeardownFailure};
pub use userns::UsernsMode;
