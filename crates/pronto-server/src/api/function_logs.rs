//! `GET /2023-03-30/functions/{functionName}/logs?tail=N`: the last lines its instances wrote
//! (stdout and stderr), oldest instance first; kept after instances are reclaimed.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{function_name, ApiError};
use crate::model::ValidationError;
use crate::AppState;

pub const DEFAULT_TAIL: usize = 100;
pub const MAX_TAIL: usize = 10_000;

#[derive(Deserialize)]
pub(super) struct LogsQuery {
    tail: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogsOutput {
    pub function_name: String,
    pub logs: String,
}

pub(super) async fn function_logs(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Json<LogsOutput>, ApiError> {
    let name = function_name(path)?;
    let Query(q) = query.map_err(|r| ValidationError::new("tail", r.body_text().to_lowercase()))?;
    let tail = match q.tail {
        None => DEFAULT_TAIL,
        Some(n) if (1..=MAX_TAIL as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ValidationError::new(
                "tail",
                format!("must be between 1 and {MAX_TAIL}, got {n}"),
            )
            .into())
        }
    };
    if !state.store.function_exists(&name).await? {
        return Err(ApiError::FunctionNotFound(name));
    }
    let dir = state.pool.node().function_log_dir(&name);
    let logs = tokio::task::spawn_blocking(move || last_lines(&dir, tail))
        .await
        .unwrap_or_default();
    Ok(Json(LogsOutput {
        function_name: name,
        logs,
    }))
}

/// The last `n` lines over every log file in `dir`, files in modification order.
fn last_lines(dir: &std::path::Path, n: usize) -> String {
    let mut files: Vec<(std::time::SystemTime, std::path::PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    let mut lines: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for (_, path) in files {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        for line in String::from_utf8_lossy(&bytes).lines() {
            if lines.len() == n {
                lines.pop_front();
            }
            lines.push_back(line.to_string());
        }
    }
    let mut out = lines.into_iter().collect::<Vec<_>>().join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}
