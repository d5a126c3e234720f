//! One error type for every route, with one JSON shape: `{"code", "message", "pointer"?}`.

use axum::{
    Json,
    extract::rejection::{BytesRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use switchyard_events::{DataError, InvalidEvent, InvalidId};
use switchyard_store::Error as StoreError;

/// An error answered to a client. 5xx answers hide their cause, which is logged instead.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(
    example = json!({"code": "schema_violation", "message": "data does not match the schema of workspace.created.v1: …", "pointer": "/data/name"})
)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    /// Stable, machine-readable code.
    code: &'static str,
    /// What went wrong, for a person.
    message: String,
    /// JSON pointer into the request body (or the CloudEvent) of what is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pointer: Option<String>,
    /// Every problem, when there are several (each with its own code, pointer and message).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::openapi::ErrorDetail>>)]
    details: Option<serde_json::Value>,
    /// Seconds to wait before trying again (`Retry-After`).
    #[serde(skip)]
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status, a code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            pointer: None,
            details: None,
            retry_after: None,
        }
    }

    /// Lists every problem beside the first.
    #[must_use]
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// 429: too many failed attempts; try again after `seconds`.
    pub fn too_many(message: impl Into<String>, seconds: u64) -> Self {
        let mut error = Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message);
        error.retry_after = Some(seconds.max(1));
        error
    }

    /// The same error under another stable code.
    #[must_use]
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    /// Points at the offending part of the request body.
    #[must_use]
    pub fn at(mut self, pointer: impl Into<String>) -> Self {
        self.pointer = Some(pointer.into());
        self
    }

    /// 400 with code `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 with code `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 401: no valid token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: a valid token without the right.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 500, logging `cause` and telling the client nothing about it.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error = %cause, source = ?cause.source(), "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the details",
        )
    }

    /// Rewrites a pointer into an event (`/data/x`) as a pointer into a body that was the
    /// event's data (`/x`).
    pub(crate) fn strip_pointer_prefix(&mut self, prefix: &str) {
        if let Some(rest) = self.pointer.as_deref().and_then(|p| p.strip_prefix(prefix)) {
            self.pointer = Some(rest.to_owned());
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Maps a store error for an event posted alone (`batch_index = None`) or at an index of a
    /// batch, so that pointers lead into the request body.
    pub fn from_store(error: StoreError, batch: bool) -> Self {
        let prefix = |index: usize| {
            if batch {
                format!("/{index}")
            } else {
                String::new()
            }
        };
        match error {
            StoreError::Invalid {
                index,
                source: DataError::UnknownType(ty),
            } => Self::new(
                StatusCode::BAD_REQUEST,
                "unknown_event_type",
                format!("unknown event type {ty}: the catalog has no schema for it (GET /v1/schemas lists them)"),
            )
            .at(format!("{}/type", prefix(index))),
            StoreError::Invalid {
                index,
                source: DataError::Invalid { ty, violations },
            } => {
                let first = violations.first();
                Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "schema_violation",
                    format!(
                        "data does not match the schema of {ty}: {}",
                        first.map(|v| v.message.as_str()).unwrap_or_default()
                    ),
                )
                .at(format!(
                    "{}/data{}",
                    prefix(index),
                    first.map(|v| v.pointer.as_str()).unwrap_or_default()
                ))
            }
            StoreError::Conflict { .. } => {
                Self::new(StatusCode::CONFLICT, "conflict", error.to_string()).at(if batch {
                    String::new()
                } else {
                    "/expectedversion".into()
                })
            }
            StoreError::DuplicateInBatch { index, .. } => {
                Self::bad_request(error.to_string()).at(format!("/{index}/id"))
            }
            StoreError::BatchSize { len, max } if len > max => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                error.to_string(),
            ),
            StoreError::BatchSize { .. } => Self::bad_request(error.to_string()),
            StoreError::ConcurrentWrite | StoreError::Closed => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", error.to_string())
            }
            other => Self::internal(&other),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut response = (status, Json(&self)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<InvalidEvent> for ApiError {
    fn from(e: InvalidEvent) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_event", e.message).at(e.pointer)
    }
}

impl From<InvalidId> for ApiError {
    fn from(e: InvalidId) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(
                status,
                "payload_too_large",
                "the request body is larger than this route accepts",
            )
        } else {
            Self::new(status, "bad_request", rejection.body_text())
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

/// Parses a JSON request body, pointing at the line and column of a syntax error.
pub(crate) fn parse_json(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// A JSON body that may be absent: empty means `T::default()`; otherwise it must parse as `T`
/// (400 with serde's message).
pub(crate) fn optional_body<T: Default + serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<T, ApiError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_value(parse_json(body)?).map_err(|e| ApiError::bad_request(e.to_string()))
}
