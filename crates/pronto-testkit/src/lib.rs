//! Test support for Pronto, used by the tests and benches of every crate:
//! - [`registry::TestRegistry`]: the real Docker Distribution registry on a free loopback port;
//! - [`image::ImageBuilder`]: OCI images built in-process from a declarative description;
//! - [`tree`]: a snapshot of a directory tree (paths, types, modes, owners, sizes, hashes,
//!   symlink targets, xattrs) for comparing against ground truth such as `umoci unpack`.

pub mod image;
pub mod registry;
pub mod token_server;
pub mod tree;
