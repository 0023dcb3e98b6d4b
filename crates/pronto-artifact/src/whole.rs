//! The whole index of a mount that started from its tree (see
//! [`crate::fetch_artifact_for_mount`]): the chunk digests arrive after the mount, and the
//! threads that need a chunk (a FUSE reader, the prefetch, the stream) wait here for them, with
//! a bound.

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pronto_format::Index;

/// The index with its chunk digests, now or once they have arrived (or why they never will).
/// Cheap to clone: the clones share it.
#[derive(Clone, Debug)]
pub struct WholeIndex(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    index: OnceLock<Index>,
    failed: OnceLock<String>,
    lock: Mutex<()>,
    changed: Condvar,
}

/// Why [`WholeIndex::wait`] has no index to give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WholeIndexError {
    #[error("the index's chunk digests did not arrive within {0:?}")]
    TimedOut(Duration),
    #[error("the index's chunk digests are unusable: {0}")]
    Failed(String),
}

impl WholeIndex {
    /// An index that is whole already.
    pub fn ready(index: Index) -> WholeIndex {
        let w = WholeIndex::pending();
        w.set(Ok(index));
        w
    }

    pub(crate) fn pending() -> WholeIndex {
        WholeIndex(Arc::new(Inner {
            index: OnceLock::new(),
            failed: OnceLock::new(),
            lock: Mutex::new(()),
            changed: Condvar::new(),
        }))
    }

    /// Settles it (the first outcome stays) and wakes the waiters.
    pub(crate) fn set(&self, outcome: Result<Index, String>) {
        match outcome {
            Ok(index) => {
                let _ = self.0.index.set(index);
            }
            Err(why) => {
                let _ = self.0.failed.set(why);
            }
        }
        let _guard = self.0.lock.lock().expect("whole index lock poisoned");
        self.0.changed.notify_all();
    }

    /// The whole index if it is here.
    pub fn get(&self) -> Option<&Index> {
        self.0.index.get()
    }

    /// The whole index, waiting at most `timeout` for it (blocks the thread: not for a
    /// runtime's worker).
    pub fn wait(&self, timeout: Duration) -> Result<&Index, WholeIndexError> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.0.lock.lock().expect("whole index lock poisoned");
        loop {
            if let Some(index) = self.0.index.get() {
                return Ok(index);
            }
            if let Some(why) = self.0.failed.get() {
                return Err(WholeIndexError::Failed(why.clone()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WholeIndexError::TimedOut(timeout));
            }
            guard = self
                .0
                .changed
                .wait_timeout(guard, left)
                .expect("whole index lock poisoned")
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_get_the_index_when_it_comes_the_failure_or_a_timeout() {
        let pending = WholeIndex::pending();
        assert!(pending.get().is_none());
        assert_eq!(
            pending.wait(Duration::from_millis(20)).unwrap_err(),
            WholeIndexError::TimedOut(Duration::from_millis(20))
        );
        let failing = WholeIndex::pending();
        let waiter = {
            let f = failing.clone();
            std::thread::spawn(move || f.wait(Duration::from_secs(10)).map(|_| ()))
        };
        std::thread::sleep(Duration::from_millis(20));
        failing.set(Err("the layer hashes to sha256:00".into()));
        assert_eq!(
            waiter.join().unwrap().unwrap_err().to_string(),
            "the index's chunk digests are unusable: the layer hashes to sha256:00"
        );
    }
}
