//! `pronto-lazyfs`: the lazily loaded root filesystem of accelerated cold starts.
//!
//! A read-only FUSE filesystem ([`LazyMount`]) serves the tree of a Pronto index (see
//! `docs/format.md`) as it is, with no unpacking: metadata comes from the index in memory, file
//! contents chunk by chunk, fetched on first read with an HTTP Range request to the chunk's
//! pack, verified (BLAKE3) and decompressed, then kept in the node's [`ChunkCache`] for every
//! later read, by any mount. Nothing is read that no program asked for.
//!
//! - [`mount`]: mounting, unmounting, cleaning up after a crash;
//! - [`mountinfo`]: `/proc/self/mountinfo`, parsed (also used by the runtime);
//! - `fs`: the FUSE operations over the index;
//! - [`fetch`]: the chunk fetcher (runs of adjacent chunks in one request, in-flight dedup,
//!   bounded retries);
//! - [`cache`]: the node chunk cache (content-addressed, LRU-bounded, checked on read) and the
//!   backing files of FUSE passthrough (whole files built from cached chunks);
//! - `passthrough`: which files are open how, and the thread that builds backing files;
//! - [`stats`]: per-mount counters;
//! - [`stream`]: the background stream of the rest of an image into the node cache;
//! - [`trace`]: access traces (which chunks a start read), recorded by a fresh mount and
//!   prefetched by later ones ([`LazyMount::prefetch`]).

pub mod cache;
pub mod fetch;
mod fs;
pub mod mount;
pub mod mountinfo;
mod passthrough;
pub mod stats;
pub mod stream;
pub mod trace;

pub use cache::{CacheStats, ChunkCache};
pub use fetch::{FetchError, RetryPolicy};
pub use mount::{cleanup_stale_mounts, mounts_under, LazyMount, MountOptions};
pub use stats::{StatsSnapshot, StreamState};
pub use stream::StreamPolicy;
pub use trace::AccessTrace;
