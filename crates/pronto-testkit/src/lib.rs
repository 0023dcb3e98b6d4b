//! Test support for Pronto, used by the tests and benches of every crate:
//! - [`registry::TestRegistry`]: the real Docker Distribution registry on a free loopback port;
//! - [`image::ImageBuilder`]: OCI images built in-process from a declarative description;
//! - [`faulty::FaultyProxy`]: a proxy in front of a registry that stalls, resets, truncates or
//!   delays chosen requests;
//! - [`internet::Internet`]: a stand-in for the internet (a network namespace with HTTP and DNS
//!   servers) that instances reach through the node's NAT;
//! - [`fixtures`]: the ground-truth test images shared by the converter and lazy-fs tests;
//! - [`tree`]: a snapshot of a directory tree (paths, types, modes, owners, sizes, hashes,
//!   symlink targets, xattrs) for comparing against ground truth such as `umoci unpack`.

pub mod faulty;
pub mod fixtures;
pub mod image;
pub mod internet;
pub mod metrics;
pub mod registry;
pub mod token_server;
pub mod tree;
