//! Access traces: which chunks a start read, in the order it first read them.
//!
//! A fresh mount records every chunk its FUSE reads touch (cache hits included: the trace is
//! what the program needs, not what happened to be missing) until the trace is taken, normally
//! when the instance has answered its first request. A later start of the same image hands the
//! trace to [`crate::LazyMount::prefetch`], which fetches those chunks ahead of demand.
//!
//! Encoding ([`AccessTrace::to_bytes`]): the chunks' BLAKE3 digests, 32 bytes each,
//! concatenated in first-read order. Digests, not positions, so a trace cannot point outside
//! the index it is used with: digests the index does not hold are skipped.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use pronto_format::ChunkRef;

/// A trace stops growing at this many chunks (32 MiB of digests; 64 GiB of 1 MiB chunks).
pub const MAX_TRACE_CHUNKS: usize = 1 << 20;

/// The chunks a start read, first read first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessTrace {
    pub chunks: Vec<[u8; 32]>,
}

#[derive(Debug, thiserror::Error)]
#[error("access trace of {len} bytes: not a whole number of 32-byte chunk digests")]
pub struct TraceDecodeError {
    pub len: usize,
}

impl AccessTrace {
    pub fn to_bytes(&self) -> Vec<u8> {
        self.chunks.concat()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<AccessTrace, TraceDecodeError> {
        if !bytes.len().is_multiple_of(32) || bytes.len() / 32 > MAX_TRACE_CHUNKS {
            return Err(TraceDecodeError { len: bytes.len() });
        }
        Ok(AccessTrace {
            chunks: bytes
                .chunks_exact(32)
                .map(|d| d.try_into().expect("32-byte chunks"))
                .collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

#[derive(Debug, Default)]
struct Recording {
    seen: HashSet<[u8; 32]>,
    trace: AccessTrace,
}

/// Records first reads of chunks while on. Cheap when off (one atomic load per read).
#[derive(Debug)]
pub(crate) struct AccessRecorder {
    on: AtomicBool,
    recording: Mutex<Recording>,
}

impl AccessRecorder {
    pub(crate) fn new(on: bool) -> AccessRecorder {
        AccessRecorder {
            on: AtomicBool::new(on),
            recording: Mutex::default(),
        }
    }

    pub(crate) fn record<'a>(&self, chunks: impl IntoIterator<Item = &'a ChunkRef>) {
        if !self.on.load(Ordering::Relaxed) {
            return;
        }
        let mut r = self.recording.lock().expect("recorder lock poisoned");
        for c in chunks {
            if r.trace.chunks.len() >= MAX_TRACE_CHUNKS {
                break;
            }
            if r.seen.insert(c.digest) {
                r.trace.chunks.push(c.digest);
            }
        }
    }

    /// Stops recording and returns what was recorded; `None` if it was not recording (never
    /// started, or taken before).
    pub(crate) fn take(&self) -> Option<AccessTrace> {
        if !self.on.swap(false, Ordering::Relaxed) {
            return None;
        }
        let r = std::mem::take(&mut *self.recording.lock().expect("recorder lock poisoned"));
        Some(r.trace)
    }

    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    pub(crate) fn stop(&self) {
        self.on.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8) -> ChunkRef {
        ChunkRef {
            digest: [n; 32],
            pack: 0,
            offset: u64::from(n) * 10,
            compressed_size: 10,
            uncompressed_size: 20,
            compression: pronto_format::Compression::Zstd,
        }
    }

    #[test]
    fn records_first_reads_in_order_until_taken() {
        let r = AccessRecorder::new(true);
        r.record(&[chunk(3), chunk(1)]);
        r.record(&[chunk(3), chunk(2), chunk(1)]);
        let t = r.take().unwrap();
        assert_eq!(t.chunks, vec![[3; 32], [1; 32], [2; 32]]);
        r.record(&[chunk(4)]);
        assert_eq!(r.take(), None, "taken once; off afterwards");
        assert_eq!(AccessRecorder::new(false).take(), None);
    }

    #[test]
    fn round_trips_and_refuses_partial_digests() {
        let t = AccessTrace {
            chunks: vec![[7; 32], [9; 32]],
        };
        assert_eq!(AccessTrace::from_bytes(&t.to_bytes()).unwrap(), t);
        let err = AccessTrace::from_bytes(&[0u8; 33]).unwrap_err();
        assert!(err.to_string().contains("33 bytes"), "{err}");
    }
}
