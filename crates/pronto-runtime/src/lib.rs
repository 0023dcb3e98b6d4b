//! Function instances on one node.
//!
//! An *instance* is: a root filesystem (an overlay whose lower dir is the image — unpacked once
//! per node per digest, or, for an accelerated image, its artifact mounted lazily through FUSE
//! — with a per-instance upper dir), an OCI bundle (`config.json` generated
//! with `oci-spec`), a network namespace Pronto creates, cgroup limits, and a container run by a
//! real OCI runtime (`runc` by default). It is *ready* when the function's port, inside its
//! network namespace, answers HTTP.
//!
//! - [`images`]: the node's unpacked-image store (one unpack per digest, concurrent callers share it).
//! - [`lazy`]: lazily loaded lower dirs, one FUSE mount per accelerated image, shared.
//! - [`bundle`]: `config.json` from the image config and the function's settings.
//! - [`netns`]: named network namespaces and sockets opened inside them.
//! - [`oci`]: calls to the OCI runtime binary.
//! - [`instance`]: start (with readiness) and teardown of one instance; crash cleanup in [`Node`].
//!
//! Reaching an instance: the daemon never routes packets into the namespace. It creates the TCP
//! socket *inside* the instance's namespace (a short-lived thread `setns`es into it and calls
//! `socket()`) and connects to `127.0.0.1:PORT` there; the socket keeps its namespace when used
//! from the daemon's. No veth, no addresses to allocate, no traffic outside namespaces Pronto made.

pub mod bundle;
pub mod images;
pub mod instance;
pub mod lazy;
pub mod netns;
pub mod oci;

pub use pronto_lazyfs::AccessTrace;

pub use instance::{
    Instance, InstanceSpec, Node, NodeConfig, RootfsSource, StartError, StartTimings,
    DEFAULT_CHUNK_CACHE_BYTES,
};
