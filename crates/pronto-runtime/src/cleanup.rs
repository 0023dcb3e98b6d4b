//! Crash cleanup: what a previous daemon on this data dir left running is torn down when the
//! node opens.

use std::path::PathBuf;

use crate::layout::{self, InstanceLayout};
use crate::node::Node;
use crate::teardown::teardown;

impl Node {
    /// Tears down every instance recorded under this data dir (a previous daemon's, after a
    /// crash) and any container the runtime still knows. Returns how many were cleaned.
    pub async fn cleanup_stale(&self) -> usize {
        let n = &self.inner;
        let mut cleaned = 0;
        let dirs: Vec<PathBuf> = std::fs::read_dir(layout::instances_dir(&n.data_dir))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        for dir in dirs {
            let Some(id) = dir.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
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
