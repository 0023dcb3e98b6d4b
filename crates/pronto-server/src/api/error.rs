//! Every error the control API returns, and its translation to HTTP in one place.

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::images::ImageError;
use crate::model::ValidationError;
use crate::store::StoreError;

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable, machine-readable (e.g. `FunctionNotFound`).
    pub code: String,
    /// For people: lowercase, names the bad field or value.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The body is not JSON at all.
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// The body could not be read (too large, connection dropped).
    #[error("request body: {message}")]
    Body { status: StatusCode, message: String },
    #[error("{name}: {message}")]
    Query { name: &'static str, message: String },
    /// Boxed: a pull error is large, and every handler returns this type.
    #[error("customContainerConfig.image: {0}")]
    Image(Box<ImageError>),
    #[error("functionName: cannot be changed from {current:?}, got {given:?}")]
    Rename { current: String, given: String },
    #[error("function {0} not found")]
    FunctionNotFound(String),
    #[error("function {0} already exists")]
    FunctionAlreadyExists(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("no route for {method} {path}")]
    RouteNotFound { method: Method, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: Method, path: String },
    #[error(transparent)]
    Store(StoreError),
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> ApiError {
        ApiError::Image(Box::new(e))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(name) => ApiError::FunctionNotFound(name),
            StoreError::AlreadyExists(name) => ApiError::FunctionAlreadyExists(name),
            e => ApiError::Store(e),
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_)
            | ApiError::MalformedJson(_)
            | ApiError::Query { .. }
            | ApiError::Image(_)
            | ApiError::Rename { .. } => StatusCode::BAD_REQUEST,
            ApiError::Body { status, .. } => *status,
            ApiError::FunctionNotFound(_) | ApiError::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::FunctionAlreadyExists(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `code` field (Function Compute's names where it has one).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation(_)
            | ApiError::Query { .. }
            | ApiError::Image(_)
            | ApiError::Rename { .. } => "InvalidArgument",
            ApiError::MalformedJson(_) => "MalformedJSON",
            ApiError::Body { status, .. } if *status == StatusCode::PAYLOAD_TOO_LARGE => {
                "PayloadTooLarge"
            }
            ApiError::Body { .. } => "InvalidArgument",
            ApiError::FunctionNotFound(_) => "FunctionNotFound",
            ApiError::FunctionAlreadyExists(_) => "FunctionAlreadyExists",
            ApiError::Unauthorized(_) => "Unauthorized",
            ApiError::RouteNotFound { .. } => "NotFound",
            ApiError::MethodNotAllowed { .. } => "MethodNotAllowed",
            ApiError::Store(_) => "InternalError",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED {
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorBody {
            code: self.code().to_string(),
            message: self.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
