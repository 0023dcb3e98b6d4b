//! Every error the server answers with — control API and invocations — and its translation to
//! HTTP, in one place.

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use std::time::Duration;

use crate::access::AccessError;
use crate::images::ImageError;
use crate::model::ValidationError;
use crate::pool::AcquireError;
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
    /// A request header with a value the server does not take.
    #[error("{name}: {message}")]
    Header { name: &'static str, message: String },
    /// Boxed: a pull error is large, and every handler returns this type.
    #[error("customContainerConfig.image: {0}")]
    Image(Box<ImageError>),
    #[error("functionName: cannot be changed from {current:?}, got {given:?}")]
    Rename { current: String, given: String },
    #[error("function {0} not found")]
    FunctionNotFound(String),
    #[error("function {0} already exists")]
    FunctionAlreadyExists(String),
    /// A function's registry settings name a credential that cannot be used.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// A named registry credential missing or in the way.
    #[error(transparent)]
    Credential(StoreError),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("no route for {method} {path}")]
    RouteNotFound { method: Method, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: Method, path: String },
    #[error(transparent)]
    Store(StoreError),
    /// A version, alias or provision config missing or in the way.
    #[error(transparent)]
    Release(StoreError),
    /// The function cannot be explained yet (not accelerated, or no trace recorded).
    #[error("{0}")]
    NothingToExplain(String),
    /// Its artifact or layers could not be read from the registry.
    #[error("function {function}: {message}")]
    ExplainFailed { function: String, message: String },

    // Invocations.
    #[error("invoke a function at /invoke/{{functionName}}/{{path}} or with the x-fc-invocation-target header")]
    NoInvocationTarget,
    #[error("function {function}: image {image}: {source}")]
    ImageUnavailable {
        function: String,
        image: String,
        #[source]
        source: Box<ImageError>,
    },
    /// No instance could take the request: none started, or all stayed busy.
    #[error(transparent)]
    Acquire(Box<AcquireError>),
    #[error("function {function}: instance {instance} was killed: out of memory (memorySize {memory_mb} MB)")]
    OutOfMemory {
        function: String,
        instance: String,
        memory_mb: u64,
    },
    #[error("function {function}: instance {instance} failed the request: {source}; container output:\n{log_tail}")]
    FunctionFailed {
        function: String,
        instance: String,
        #[source]
        source: std::io::Error,
        log_tail: String,
    },
    #[error("function {function} did not respond within its timeout of {timeout:?}")]
    FunctionTimeout { function: String, timeout: Duration },
}

impl From<AcquireError> for ApiError {
    fn from(e: AcquireError) -> ApiError {
        ApiError::Acquire(Box::new(e))
    }
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
            e @ (StoreError::VersionNotFound { .. }
            | StoreError::AliasNotFound { .. }
            | StoreError::AliasAlreadyExists { .. }
            | StoreError::VersionInUse { .. }
            | StoreError::ProvisionConfigNotFound { .. }) => ApiError::Release(e),
            e @ (StoreError::CredentialAlreadyExists(_) | StoreError::CredentialNotFound(_)) => {
                ApiError::Credential(e)
            }
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
            | ApiError::Header { .. }
            | ApiError::Image(_)
            | ApiError::Access(_)
            | ApiError::Rename { .. } => StatusCode::BAD_REQUEST,
            ApiError::Credential(StoreError::CredentialAlreadyExists(_)) => StatusCode::CONFLICT,
            ApiError::Credential(_) => StatusCode::NOT_FOUND,
            ApiError::Body { status, .. } => *status,
            ApiError::FunctionNotFound(_) | ApiError::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::FunctionAlreadyExists(_) | ApiError::NothingToExplain(_) => {
                StatusCode::CONFLICT
            }
            ApiError::ExplainFailed { .. } => StatusCode::BAD_GATEWAY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Release(e) => match e {
                StoreError::AliasAlreadyExists { .. } | StoreError::VersionInUse { .. } => {
                    StatusCode::CONFLICT
                }
                _ => StatusCode::NOT_FOUND,
            },
            ApiError::NoInvocationTarget => StatusCode::NOT_FOUND,
            ApiError::Acquire(e) => match **e {
                AcquireError::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
                AcquireError::Start { .. } | AcquireError::BackingOff { .. } => {
                    StatusCode::BAD_GATEWAY
                }
            },
            ApiError::ImageUnavailable { .. }
            | ApiError::OutOfMemory { .. }
            | ApiError::FunctionFailed { .. } => StatusCode::BAD_GATEWAY,
            ApiError::FunctionTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `code` field (Function Compute's names where it has one).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation(_)
            | ApiError::Query { .. }
            | ApiError::Header { .. }
            | ApiError::Image(_)
            | ApiError::Access(_)
            | ApiError::Rename { .. } => "InvalidArgument",
            ApiError::Credential(StoreError::CredentialAlreadyExists(_)) => {
                "CredentialAlreadyExists"
            }
            ApiError::Credential(_) => "CredentialNotFound",
            ApiError::MalformedJson(_) => "MalformedJSON",
            ApiError::Body { status, .. } if *status == StatusCode::PAYLOAD_TOO_LARGE => {
                "PayloadTooLarge"
            }
            ApiError::Body { .. } => "InvalidArgument",
            ApiError::FunctionNotFound(_) => "FunctionNotFound",
            ApiError::FunctionAlreadyExists(_) => "FunctionAlreadyExists",
            ApiError::NothingToExplain(_) => "NothingToExplain",
            ApiError::ExplainFailed { .. } => "ArtifactUnavailable",
            ApiError::Unauthorized(_) => "Unauthorized",
            ApiError::RouteNotFound { .. } => "NotFound",
            ApiError::MethodNotAllowed { .. } => "MethodNotAllowed",
            ApiError::Store(_) => "InternalError",
            ApiError::Release(e) => match e {
                StoreError::VersionNotFound { .. } => "VersionNotFound",
                StoreError::AliasNotFound { .. } => "AliasNotFound",
                StoreError::AliasAlreadyExists { .. } => "AliasAlreadyExists",
                StoreError::VersionInUse { .. } => "VersionInUse",
                _ => "ProvisionConfigNotFound",
            },
            ApiError::NoInvocationTarget => "NotFound",
            ApiError::ImageUnavailable { .. } => "ImagePullFailed",
            ApiError::Acquire(e) => match **e {
                AcquireError::Busy { .. } => "ResourceThrottled",
                AcquireError::Start { .. } | AcquireError::BackingOff { .. } => {
                    "FunctionNotStarted"
                }
            },
            ApiError::OutOfMemory { .. } | ApiError::FunctionFailed { .. } => "FunctionFailed",
            ApiError::FunctionTimeout { .. } => "FunctionTimeout",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // The server's own failures; a function's (502, 504) are the function's to fix.
        if status == StatusCode::INTERNAL_SERVER_ERROR {
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
