//! Crash cleanup: what a previous daemon on this data dir left running is torn down when the
//! node opens.

use std::collections::BTreeSet;

use crate::layout::{self, InstanceLayout};
use crate::node::Node;
use crate::teardown::teardown;

impl Node {
    /// Tears down every instance recorded under this data dir (a previous daemon's, after a
    /// crash) and any container the runtime still knows. Returns how many were cleaned.
    pub async fn cleanup_stale(&self) -> usize {
        let n = &self.inner;
        let mut cleaned = 0;
        // Recorded instances, and mount points of any a crash left before recording (none
        // should be: the record is the first step).
        let ids: BTreeSet<String> = [
            layout::instances_dir(&n.data_dir),
            layout::run_dir(&n.data_dir),
        ]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
        for id in &ids {
            let instance = InstanceLayout::recorded(&n.data_dir, id);
            tracing::warn!(instance = %id, "cleaning up an instance left by a previous daemon");
            if let Err(e) = teardown(n.host.as_ref(), &instance).await {
                tracing::error!(error = %e, "stale instance cleanup incomplete");
            }
            cleaned += 1;
        }
        for id in n.host.list_containers().await.unwrap_or_default() {
            let _ = n.host.delete_container(&id).await;
            cleaned += 1;
        }
        // Last: the overlays above them are gone now.
        cleaned += n.lazy.cleanup_stale().await;
        cleaned
    }
}
