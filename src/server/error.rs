//! Errors as the HTTP API shows them: a status, a stable `code`, and a message a
//! person can act on, as JSON `{"code", "message"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use weir_engine::Error;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// More fields for the JSON body (e.g. which quota limit was reached).
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), details: None, retry_after: None }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, code) = match &e {
            Error::QuotaExceeded(refusal) => {
                // the body names the limit; Retry-After says when the window resets
                let details = match serde_json::to_value(refusal.as_ref()) {
                    Ok(serde_json::Value::Object(map)) => Some(map),
                    _ => None,
                };
                let retry_after = Some(refusal.retry_after_s);
                return ApiError { details, retry_after, ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", e.to_string()) };
            }
            Error::Sql(_) => (StatusCode::BAD_REQUEST, "invalid_sql"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::AlreadyExists(_) => (StatusCode::CONFLICT, "already_exists"),
            Error::Config(_) => (StatusCode::BAD_REQUEST, "invalid_config"),
            Error::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            Error::Io { .. } | Error::Log(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let mut body = self.details.unwrap_or_default();
        body.insert("code".into(), self.code.into());
        body.insert("message".into(), self.message.into());
        let mut response = (self.status, Json(serde_json::Value::Object(body))).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
