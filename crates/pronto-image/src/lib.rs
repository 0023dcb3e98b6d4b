//! Registry access, OCI types and the full-pull path of Pronto.
//!
//! - [`reference`]: `REGISTRY/REPO[:TAG][@DIGEST]` parsing.
//! - [`digest`]: sha256 digests and the streaming [`digest::Verifier`] every read goes through.
//! - [`auth`]: Docker-style credentials and `WWW-Authenticate` challenges.
//! - [`manifest`]: OCI / Docker schema 2 manifests and indexes, platform selection.
//! - [`registry`]: the distribution-API client (manifests, verified blobs, pushes).
//! - [`unpack`]: applies layer tars to a directory the way container engines do (whiteouts,
//!   opaque dirs, hardlinks, owners, xattrs), never writing outside it.
//! - [`pull`]: resolve → download layers concurrently → unpack in order → atomic rename.

pub mod auth;
pub mod digest;
pub mod manifest;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod unpack;

pub use digest::Digest;
pub use reference::Reference;
pub use registry::{ClientOptions, RegistryClient, RegistryError};
