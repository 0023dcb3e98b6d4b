//! The integration tests of `pronto-lazyfs` (in `tests/`), in a package of their own.
//!
//! They mount what the converter made: images built in-process, converted with
//! `pronto-convert`, pushed to a real registry and mounted through the kernel's FUSE. The
//! converter carries a SQLite memo and a thread pool that the lazy filesystem, which runs on
//! every node, must not link; as a dev-dependency of `pronto-lazyfs` it would still be in that
//! crate's dependency tree (`cargo tree -p pronto-lazyfs` lists dev-dependencies). Here the
//! tests keep the converter, and `pronto-lazyfs` depends only on `pronto-artifact`, the
//! artifact's manifest and its checked fetch. This library is empty.
