//! Repo discovery: pages of the relay's `com.atproto.sync.listRepos` (full mode, or signal
//! patterns that cannot be listed exactly), or `listReposByCollection` for each exact signal
//! collection. New DIDs are queued as pending in the same batch as the page's cursor, so a
//! restart continues from the last queued page; repos the relay lists as inactive are
//! recorded as gone without a fetch.
//!
//! Cursors: `crawler` for listRepos, `crawler/<nsid>` for listReposByCollection; `done` once the
//! listing ended (a later run skips it unless asked to crawl again).
//!
//! The relay is the operator's and trusted as given, but what it sends is still bounded: a page
//! is read up to [`MAX_PAGE_BYTES`], an error's text is cut to one short line, and a relay that
//! keeps answering 429 is asked [`MAX_RATE_LIMITED`] times in a row (each pause its
//! `Retry-After`, at most [`MAX_RATE_LIMIT_PAUSE`]); then the crawl of that listing stops with
//! [`CrawlError::RateLimited`], what it queued stays queued, and the next run (`sluice run` or
//! `sluice backfill`) resumes the listing from its saved cursor.

use std::time::Duration;

use serde::Deserialize;

use crate::error::chain;
use crate::filter::{Filter, Mode};
use crate::http::{BodyError, Deadlines, error_excerpt, read_capped, retry_after};
use crate::store::{RepoState, RepoStatus, Store, StoreError, values::now_ms};

use crate::store::schedule;

/// The cursor value of a finished listing.
pub const DONE: &str = "done";

/// The largest page of a listing read: a page of 1,000 repos (DID, head CID, rev, status) is
/// about 150 KiB; a relay may list up to 10,000 a page.
pub const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// 429 answers in a row after which a crawl stops until the next run.
pub const MAX_RATE_LIMITED: u32 = 10;

/// The longest pause after a 429 (a longer `Retry-After` is shortened to this).
pub const MAX_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(300);

/// The pause after a 429 without `Retry-After`.
const DEFAULT_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(5);

/// One listing the crawler pages through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// Every repo on the relay.
    AllRepos,
    /// Repos holding a record in this collection.
    ByCollection(String),
}

impl Listing {
    /// The listings that find every repo `filter` may index.
    pub fn for_filter(filter: &Filter) -> Vec<Listing> {
        let exact = filter.signals.iter().all(|s| !s.ends_with(".*"));
        match filter.mode {
            Mode::Signal if exact && !filter.signals.is_empty() => {
                filter.signals.iter().map(|s| Listing::ByCollection(s.clone())).collect()
            }
            Mode::Signal if filter.signals.is_empty() => vec![],
            _ => vec![Listing::AllRepos],
        }
    }

    /// The cursor's service name.
    pub fn service(&self) -> String {
        match self {
            Listing::AllRepos => "crawler".into(),
            Listing::ByCollection(c) => format!("crawler/{c}"),
        }
    }

    fn url(&self, relay: &str) -> String {
        match self {
            Listing::AllRepos => format!("{relay}/xrpc/com.atproto.sync.listRepos"),
            Listing::ByCollection(_) => format!("{relay}/xrpc/com.atproto.sync.listReposByCollection"),
        }
    }
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    repos: Vec<Listed>,
    cursor: Option<String>,
}

#[derive(Deserialize)]
struct Listed {
    did: String,
    #[serde(default = "active_default")]
    active: bool,
    status: Option<String>,
}

fn active_default() -> bool {
    true
}

/// Why a crawl stopped (what it queued until then stays queued).
#[derive(Debug, thiserror::Error)]
pub enum CrawlError {
    /// A page of the listing could not be had, five times in a row.
    #[error("listing repos")]
    Listing(#[source] PageError),
    /// A page of the listing did not decode.
    #[error("listing repos: a page did not decode")]
    Page(#[source] serde_json::Error),
    /// A page of the listing is over [`MAX_PAGE_BYTES`], or its body did not arrive.
    #[error("listing repos: reading a page")]
    PageBody(#[source] BodyError),
    /// The relay answered 429 [`MAX_RATE_LIMITED`] times in a row.
    #[error(
        "listing repos: the relay answered 429 (rate limited) {0} times in a row; the next run \
         resumes this listing from its saved cursor"
    )]
    RateLimited(u32),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// One failed request for a page of a listing.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The relay answered an error (`text`: the start of its body, cut to one line).
    #[error("{url} answered HTTP {status}: {text}")]
    Status { url: String, status: reqwest::StatusCode, text: String },
    /// The request failed (connection, TLS, timeout).
    #[error(transparent)]
    Request(#[from] reqwest::Error),
}

/// What a crawl found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CrawlSummary {
    /// DIDs listed.
    pub listed: u64,
    /// New repos queued.
    pub queued: u64,
    /// New repos listed as inactive, recorded as gone.
    pub inactive: u64,
}

/// Pages through the relay's listings.
pub struct Crawler {
    http: reqwest::Client,
    relay: String,
    /// Only the DIDs of this shard are queued.
    shard: crate::cluster::Shard,
    /// DIDs per page asked for.
    pub page_size: u32,
}

impl Crawler {
    /// A crawler of the relay at `relay`.
    pub fn new(relay: &str) -> Self {
        let http = Deadlines::SMALL.apply(crate::http::client_builder()).build().expect("HTTP client");
        Self {
            http,
            relay: relay.trim_end_matches('/').to_string(),
            shard: crate::cluster::Shard::default(),
            page_size: 1000,
        }
    }

    /// The same crawler queueing only `shard`'s DIDs.
    pub fn for_shard(self, shard: crate::cluster::Shard) -> Self {
        Self { shard, ..self }
    }

    /// Pages through `listing` from its saved cursor to the end, queueing new repos.
    pub async fn crawl(&self, store: &Store, listing: &Listing) -> Result<CrawlSummary, CrawlError> {
        let service = listing.service();
        let mut cursor = store.cursors().all()?.remove(&service).map(|(c, _)| c).filter(|c| !c.is_empty());
        let mut summary = CrawlSummary::default();
        if cursor.as_deref() == Some(DONE) {
            return Ok(summary);
        }
        loop {
            let page = self.page(listing, cursor.as_deref()).await?;
            summary.listed += page.repos.len() as u64;
            let (queued, inactive) = queue_page(store, &page.repos, self.shard, &service, page.cursor.as_deref())?;
            summary.queued += queued;
            summary.inactive += inactive;
            match page.cursor {
                Some(next) if !page.repos.is_empty() && Some(&next) != cursor.as_ref() => cursor = Some(next),
                _ => break,
            }
        }
        store.set_states(&[], Some((&service, DONE)))?;
        Ok(summary)
    }

    /// One page, retrying failures a few times and rate limits up to [`MAX_RATE_LIMITED`]
    /// in a row.
    async fn page(&self, listing: &Listing, cursor: Option<&str>) -> Result<Page, CrawlError> {
        let mut query = vec![("limit", self.page_size.to_string())];
        if let Listing::ByCollection(c) = listing {
            query.push(("collection", c.clone()));
        }
        if let Some(c) = cursor {
            query.push(("cursor", c.to_string()));
        }
        let url = listing.url(&self.relay);
        let (mut failures, mut rate_limited) = (0u32, 0u32);
        loop {
            let failure = match self.http.get(&url).query(&query).send().await {
                Ok(resp) if resp.status().is_success() => return read_page(resp).await,
                Ok(resp) if resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                    rate_limited += 1;
                    if rate_limited >= MAX_RATE_LIMITED {
                        return Err(CrawlError::RateLimited(rate_limited));
                    }
                    let pause = retry_after(resp.headers()).unwrap_or(DEFAULT_RATE_LIMIT_PAUSE);
                    let pause = pause.min(MAX_RATE_LIMIT_PAUSE);
                    tracing::info!(
                        rate_limited,
                        pause_secs = pause.as_secs(),
                        "the relay rate limits listRepos; waiting"
                    );
                    tokio::time::sleep(pause).await;
                    continue;
                }
                Ok(resp) => {
                    let status = resp.status();
                    PageError::Status { url: url.clone(), status, text: error_excerpt(resp).await }
                }
                Err(e) => PageError::Request(e),
            };
            rate_limited = 0;
            failures += 1;
            if failures >= 5 {
                return Err(CrawlError::Listing(failure));
            }
            tracing::warn!(failure = %chain(&failure), attempt = failures, "listing repos failed; retrying");
            tokio::time::sleep(Duration::from_millis(500 << failures)).await;
        }
    }
}

/// A page's body, read up to [`MAX_PAGE_BYTES`] and decoded.
async fn read_page(resp: reqwest::Response) -> Result<Page, CrawlError> {
    let body = read_capped(resp, MAX_PAGE_BYTES, "listRepos page").await.map_err(CrawlError::PageBody)?;
    serde_json::from_slice(&body).map_err(CrawlError::Page)
}

/// Queues the new DIDs of a page that `shard` owns (inactive ones recorded as gone), with the
/// page's cursor in the same batch. Returns (queued, inactive).
fn queue_page(
    store: &Store,
    repos: &[Listed],
    shard: crate::cluster::Shard,
    service: &str,
    cursor: Option<&str>,
) -> Result<(u64, u64), StoreError> {
    let now = now_ms();
    let fresh = RepoState { updated_ms: now, ..Default::default() };
    let candidates =
        repos.iter().filter(|listed| crate::syntax::is_did(&listed.did) && shard.owns(&listed.did)).map(|listed| {
            let state = match listed.active {
                true => fresh.clone(),
                false => schedule::gone(&fresh, listed.status.clone().unwrap_or_else(|| "inactive".into()), now),
            };
            (listed.did.clone(), state)
        });
    let added = store.queue().add_unknown(candidates, cursor.map(|c| (service, c)))?;
    let inactive = added.iter().filter(|(_, s)| s.status == RepoStatus::Gone).count() as u64;
    Ok((added.len() as u64 - inactive, inactive))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(text: &str) -> Filter {
        Filter::from_toml(text, "t.toml").unwrap()
    }

    #[test]
    fn listings_follow_the_filter() {
        assert_eq!(Listing::for_filter(&filter("mode = \"full\"")), vec![Listing::AllRepos]);
        let exact = filter("mode = \"signal\"\nsignals = [\"a.b.c\", \"a.b.d\"]");
        assert_eq!(
            Listing::for_filter(&exact),
            vec![Listing::ByCollection("a.b.c".into()), Listing::ByCollection("a.b.d".into())]
        );
        assert_eq!(Listing::for_filter(&filter("mode = \"signal\"\nsignals = [\"a.b.*\"]")), vec![Listing::AllRepos]);
        assert_eq!(Listing::ByCollection("a.b.c".into()).service(), "crawler/a.b.c");
    }
}
