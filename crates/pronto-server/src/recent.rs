//! The last invocations of each function, in memory: what the console shows under "recent
//! invocations", with each cold start's breakdown ([`Breakdown`], the phases of
//! `x-pronto-cold-start`).
//!
//! Bounded: [`PER_FUNCTION`] entries per function, and only functions that exist are recorded
//! (the invoke path records after the function was found), so requests naming made-up
//! functions cannot grow it; a deleted function's entries go with it. Not persisted: a restart
//! starts empty (the metrics keep the long-run figures).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use time::OffsetDateTime;

use crate::proxy::Breakdown;

/// Invocations kept per function (the oldest dropped first).
pub const PER_FUNCTION: usize = 50;

/// One invocation as the invoke path saw it when the response headers went out.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// When it arrived.
    pub time: OffsetDateTime,
    pub request_id: String,
    /// `LATEST` or a version number.
    pub version: String,
    pub status: u16,
    /// From arrival to the response headers (the first byte).
    pub duration: Duration,
    /// The instance that served it, if one did.
    pub instance: Option<String>,
    /// Its cold start's breakdown, if it caused one.
    pub cold_start: Option<Breakdown>,
}

/// Per function, its last [`PER_FUNCTION`] invocations.
#[derive(Debug, Default)]
pub struct RecentInvocations {
    by_function: Mutex<HashMap<String, VecDeque<Invocation>>>,
}

impl RecentInvocations {
    pub fn record(&self, function: &str, invocation: Invocation) {
        let mut map = self.by_function.lock().expect("recent invocations lock");
        let ring = map.entry(function.to_string()).or_default();
        if ring.len() == PER_FUNCTION {
            ring.pop_front();
        }
        ring.push_back(invocation);
    }

    /// `function`'s invocations, newest first.
    pub fn of(&self, function: &str) -> Vec<Invocation> {
        let map = self.by_function.lock().expect("recent invocations lock");
        map.get(function)
            .map(|r| r.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets a deleted function.
    pub fn forget(&self, function: &str) {
        self.by_function
            .lock()
            .expect("recent invocations lock")
            .remove(function);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(n: u16) -> Invocation {
        Invocation {
            time: OffsetDateTime::UNIX_EPOCH,
            request_id: format!("r{n}"),
            version: "LATEST".into(),
            status: n,
            duration: Duration::from_millis(u64::from(n)),
            instance: None,
            cold_start: None,
        }
    }

    #[test]
    fn keeps_the_last_ones_per_function_newest_first() {
        let r = RecentInvocations::default();
        for n in 0..(PER_FUNCTION as u16 + 5) {
            r.record("f", call(n));
        }
        r.record("g", call(7));
        let f = r.of("f");
        assert_eq!(f.len(), PER_FUNCTION);
        assert_eq!(f[0].status, PER_FUNCTION as u16 + 4);
        assert_eq!(f.last().unwrap().status, 5);
        assert_eq!(r.of("g").len(), 1);
        r.forget("f");
        assert!(r.of("f").is_empty());
        assert!(r.of("nobody").is_empty());
    }
}
