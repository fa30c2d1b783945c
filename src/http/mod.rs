//! The HTTP client pieces every network caller shares (identity, handles, backfill fetch,
//! crawler): one user agent, deadlines, `Retry-After`, capped body reads and foreign text made
//! log-safe ([`body`]), and the outbound address policy against SSRF ([`policy`]).

use std::time::Duration;

pub mod body;
pub mod policy;

pub use body::{BodyError, ERROR_BODY_CAP, FOREIGN_TEXT_MAX, error_excerpt, read_capped, truncate_foreign};
pub use policy::{AddressPolicy, AddressRefused, AllowedNetwork, BadNetwork, address_refused, is_address_refused};

/// A client builder with sluice's user agent, a connect timeout and an idle timeout
/// ([`Deadlines::STREAM`], no overall deadline: a large download keeps its own). Clients of
/// small answers apply [`Deadlines::SMALL`].
pub fn client_builder() -> reqwest::ClientBuilder {
    Deadlines::STREAM.apply(reqwest::Client::builder().user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION"))))
}

/// How long a request may take: to connect, between two reads of its answer, and in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// To open the connection (TCP and TLS).
    pub connect: Duration,
    /// With nothing read (a host that stops sending).
    pub idle: Duration,
    /// The whole request, answer read; `None`: no overall deadline (the caller keeps one,
    /// for example a minimum rate for a large body).
    pub total: Option<Duration>,
}

impl Deadlines {
    /// For small answers (DID documents, handle answers, listings): 10 s to connect, 30 s
    /// idle, 60 s in all.
    pub const SMALL: Deadlines = Deadlines {
        connect: Duration::from_secs(10),
        idle: Duration::from_secs(30),
        total: Some(Duration::from_secs(60)),
    };

    /// For streamed downloads, whose caller keeps the overall deadline: 10 s to connect, 60 s
    /// idle.
    pub const STREAM: Deadlines =
        Deadlines { connect: Duration::from_secs(10), idle: Duration::from_secs(60), total: None };

    /// The same with `total` as the overall deadline (and the idle timeout not above it).
    pub fn with_total(self, total: Duration) -> Self {
        Self { total: Some(total), idle: self.idle.min(total), ..self }
    }

    /// `builder` with these deadlines.
    pub fn apply(self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        let builder = builder.connect_timeout(self.connect).read_timeout(self.idle);
        match self.total {
            Some(total) => builder.timeout(total),
            None => builder,
        }
    }
}

/// `Retry-After` in seconds, when present and sane (capped at a day).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(24 * 3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_caps_them() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(reqwest::header::RETRY_AFTER, "999999999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(24 * 3600)));
        h.insert(reqwest::header::RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
