//! XRPC plumbing of sluice's server, which the devnet's servers (crate `sluice-devnet`) use too:
//! error answers in the protocol's shape (`{"error", "message"}` with the right status) and query
//! parameters read with `InvalidRequest` errors that name the parameter.

use std::collections::HashMap;

use axum::Json;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An XRPC error answer: status, `error` name and `message`.
#[derive(Debug)]
pub struct XrpcError {
    status: StatusCode,
    error: &'static str,
    message: String,
    retry_after: Option<u64>,
}

/// What XRPC handlers return.
pub type XrpcResult = Result<Response, XrpcError>;

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

    /// 400 RecordNotFound.
    pub fn record_not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "RecordNotFound", message)
    }

    /// 401 AuthenticationRequired.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "AuthenticationRequired", message)
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

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error name.
    pub fn error(&self) -> &'static str {
        self.error
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
pub fn ok_json(v: serde_json::Value) -> XrpcResult {
    Ok(Json(v).into_response())
}

/// A 200 answer of JSON text written by the method itself.
pub fn ok_json_text(body: Vec<u8>) -> XrpcResult {
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

/// Query parameters of one XRPC call.
pub struct Params(HashMap<String, String>);

impl Params {
    /// Reads the query, a malformed one being an `InvalidRequest`.
    pub fn from_query(q: Result<Query<HashMap<String, String>>, QueryRejection>) -> Result<Self, XrpcError> {
        q.map(|Query(m)| Self(m)).map_err(|e| XrpcError::invalid(e.body_text()))
    }

    /// Parameters from a map (tests, and handlers that read the query themselves).
    pub fn from_map(map: HashMap<String, String>) -> Self {
        Self(map)
    }

    /// An optional parameter.
    pub fn opt(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A required parameter.
    pub fn req(&self, name: &str) -> Result<&str, XrpcError> {
        self.opt(name).ok_or_else(|| XrpcError::invalid(format!("Params must have the property \"{name}\"")))
    }

    /// `limit`, `default` when absent, refused outside `1..=max`.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, XrpcError> {
        let Some(s) = self.opt("limit") else { return Ok(default) };
        match s.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(XrpcError::invalid(format!("limit must be an integer from 1 to {max}"))),
        }
    }

    /// A boolean flag (`true`/`false`), false when absent.
    pub fn flag(&self, name: &str) -> Result<bool, XrpcError> {
        match self.opt(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(XrpcError::invalid(format!("{name} must be a boolean"))),
        }
    }

    /// A required DID parameter, checked by the DID syntax.
    pub fn did(&self, name: &str) -> Result<&str, XrpcError> {
        let v = self.req(name)?;
        crate::syntax::is_did(v).then_some(v).ok_or_else(|| XrpcError::invalid(format!("{name} must be a valid did")))
    }

    /// A required NSID parameter, checked by the NSID syntax.
    pub fn nsid(&self, name: &str) -> Result<&str, XrpcError> {
        let v = self.req(name)?;
        crate::syntax::is_nsid(v).then_some(v).ok_or_else(|| XrpcError::invalid(format!("{name} must be a valid nsid")))
    }

    /// A required record key parameter, checked by the record key syntax.
    pub fn rkey(&self, name: &str) -> Result<&str, XrpcError> {
        let v = self.req(name)?;
        crate::syntax::is_rkey(v)
            .then_some(v)
            .ok_or_else(|| XrpcError::invalid(format!("{name} must be a valid record key")))
    }
}
