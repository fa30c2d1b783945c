//! XRPC plumbing of sluice's server, which the devnet's servers (crate `sluice-devnet`) use too:
//! error answers in the protocol's shape (`{"error", "message"}` with the right status) and query
//! parameters read with `InvalidRequest` errors that name the parameter.

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
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

/// Query parameters of one XRPC call, in order, each as often as it was given (an index's
/// `key` may be given once per key part). A parameter read as one value and given twice is
/// refused, naming it. Taken from the request as an extractor, which never fails.
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Reads a raw query string (`None`: no query).
    pub fn parse(raw: Option<&str>) -> Self {
        Self(form_urlencoded::parse(raw.unwrap_or("").as_bytes()).into_owned().collect())
    }

    /// Every value of `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// An optional parameter; given more than once, an `InvalidRequest` naming it.
    pub fn opt(&self, name: &str) -> Result<Option<&str>, XrpcError> {
        let mut values = self.0.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let first = values.next();
        match values.next() {
            Some(_) => Err(XrpcError::invalid(format!("{name}: given more than once"))),
            None => Ok(first),
        }
    }

    /// A required parameter.
    pub fn req(&self, name: &str) -> Result<&str, XrpcError> {
        self.opt(name)?.ok_or_else(|| XrpcError::invalid(format!("Params must have the property \"{name}\"")))
    }

    /// `limit`, `default` when absent, refused outside `1..=max`.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, XrpcError> {
        let Some(s) = self.opt("limit")? else { return Ok(default) };
        match s.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(XrpcError::invalid(format!("limit must be an integer from 1 to {max}, not `{s}`"))),
        }
    }

    /// A boolean flag (`true`/`false`), false when absent.
    pub fn flag(&self, name: &str) -> Result<bool, XrpcError> {
        match self.opt(name)? {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(XrpcError::invalid(format!("{name} must be a boolean (true or false), not `{other}`"))),
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

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Params::parse(parts.uri.query()))
    }
}
