//! The invoke listener. A placeholder until the instance pool exists: every request gets
//! 501 `{"code":"NotImplemented"}`.

use axum::Router;

use crate::api::ApiError;
use crate::AppState;

/// The router served on the invoke address.
pub fn invoke_router(state: AppState) -> Router {
    Router::new().fallback(not_implemented).with_state(state)
}

async fn not_implemented() -> ApiError {
    ApiError::NotImplemented("invoking functions is not implemented yet")
}
