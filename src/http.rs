//! The HTTP client pieces every network caller shares (identity, backfill fetch, crawler): one
//! user agent and `Retry-After`.

use std::time::Duration;

/// A client builder with sluice's user agent; callers add their timeouts.
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
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
