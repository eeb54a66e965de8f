//! The one place where registry errors become HTTP responses: `{"error": "..."}` with the status
//! HONO-CONTRACT §3.2 gives. Denials (4xx) are kept apart from backend trouble (503); a 500 is never the
//! answer to bad input.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("resource version does not match If-Match")]
    PreconditionFailed,
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("storage unavailable")]
    Unavailable(#[source] StoreError),
    #[error("request not completed within {0} s")]
    Timeout(u64),
    /// A backend other than the database is missing or busy (the router, for presence and the console).
    #[error("{0}")]
    NotAvailable(String),
    #[error("{0}")]
    TooManyRequests(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable(_) | Self::Timeout(_) | Self::NotAvailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::BadRequest(msg.into())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(format!("{what} not found")),
            StoreError::Conflict(m) => Self::Conflict(m),
            StoreError::VersionMismatch => Self::PreconditionFailed,
            StoreError::LimitExceeded(m) => Self::Forbidden(m),
            e @ (StoreError::Database(_) | StoreError::Migrate(_)) => Self::Unavailable(e),
        }
    }
}

impl From<ferry_core::ids::IdError> for ApiError {
    fn from(e: ferry_core::ids::IdError) -> Self {
        Self::BadRequest(e.to_string())
    }
}

impl From<ferry_registry_model::ValidationError> for ApiError {
    fn from(e: ferry_registry_model::ValidationError) -> Self {
        Self::BadRequest(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Unavailable(e) = &self {
            // Logged once, here, where the request ends; the client only learns it was a backend problem.
            tracing::error!(error = %e, "registry storage failed");
        }
        let status = self.status();
        let mut response = (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"ferry-registry\""),
            );
        }
        response
    }
}
