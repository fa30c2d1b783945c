//! XRPC plumbing shared by the devnet servers: error answers in the real shape, and query
//! parameters read with `InvalidRequest` errors.

use std::collections::HashMap;

use axum::Json;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::world::AccountStatus;

/// An XRPC error answer: status, `error` name and `message`.
#[derive(Debug)]
pub(crate) struct XrpcError {
    status: StatusCode,
    error: &'static str,
    message: String,
    retry_after: Option<u64>,
}

/// What XRPC handlers return.
pub(crate) type XrpcResult = Result<Response, XrpcError>;

impl XrpcError {
    /// An error with any status.
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self { status, error, message: message.into(), retry_after: None }
    }

    /// 400 InvalidRequest.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidRequest", message)
    }

    /// 400 RepoNotFound.
    pub fn repo_not_found(did: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "RepoNotFound", format!("Could not find repo for DID: {did}"))
    }

    /// The error a repo read gets for an account with `status`; `None` when active.
    pub fn for_status(did: &str, status: AccountStatus) -> Option<Self> {
        let (error, what) = match status {
            AccountStatus::Active => return None,
            AccountStatus::Deleted => return Some(Self::repo_not_found(did)),
            AccountStatus::Deactivated => ("RepoDeactivated", "deactivated"),
            AccountStatus::Takendown => ("RepoTakendown", "taken down"),
            AccountStatus::Suspended => ("RepoSuspended", "suspended"),
        };
        Some(Self::new(StatusCode::BAD_REQUEST, error, format!("Repo has been {what}: {did}")))
    }

    /// 429 RateLimitExceeded with `Retry-After: secs`.
    pub fn rate_limited(secs: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "RateLimitExceeded", "Rate Limit Exceeded");
        e.retry_after = Some(secs);
        e
    }

    /// 500 InternalServerError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", message)
    }

    /// 501 MethodNotImplemented.
    pub fn not_implemented(method: &str) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "MethodNotImplemented", format!("Method Not Implemented: {method}"))
    }
}

impl IntoResponse for XrpcError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(json!({"error": self.error, "message": self.message}))).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// A JSON 200 answer.
pub(crate) fn ok_json(v: serde_json::Value) -> XrpcResult {
    Ok(Json(v).into_response())
}

/// Query parameters of one XRPC call.
pub(crate) struct Params(HashMap<String, String>);

impl Params {
    /// Reads the query, a malformed one being an `InvalidRequest`.
    pub fn from_query(q: Result<Query<HashMap<String, String>>, QueryRejection>) -> Result<Self, XrpcError> {
        q.map(|Query(m)| Self(m)).map_err(|e| XrpcError::invalid(e.body_text()))
    }

    /// An optional parameter.
    pub fn opt(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A required parameter.
    pub fn req(&self, name: &str) -> Result<&str, XrpcError> {
        self.opt(name).ok_or_else(|| XrpcError::invalid(format!("Error: Params must have the property \"{name}\"")))
    }

    /// `limit`, `default` when absent, refused outside `1..=max`.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, XrpcError> {
        let Some(s) = self.opt("limit") else { return Ok(default) };
        match s.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(XrpcError::invalid(format!("Error: limit must be an integer from 1 to {max}"))),
        }
    }

    /// A boolean flag (`true`/`false`), false when absent.
    pub fn flag(&self, name: &str) -> Result<bool, XrpcError> {
        match self.opt(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(XrpcError::invalid(format!("Error: {name} must be a boolean"))),
        }
    }
}
