//! Repo discovery: pages of the relay's `com.atproto.sync.listRepos` (full mode, or signal
//! patterns that cannot be listed exactly), or `listReposByCollection` for each exact signal
//! collection. New DIDs are queued as pending in the same batch as the page's cursor, so a
//! restart continues from the last queued page; repos the relay lists as inactive are
//! recorded as gone without a fetch.
//!
//! Cursors: `crawler` for listRepos, `crawler/<nsid>` for listReposByCollection; `done` once the
//! listing ended (a later run skips it unless asked to crawl again).

use std::time::Duration;

use serde::Deserialize;

use crate::filter::{Filter, Mode};
use crate::http::{error_chain, retry_after};
use crate::store::{RepoState, RepoStatus, Store, values::now_ms};

use crate::store::schedule;

/// The cursor value of a finished listing.
pub const DONE: &str = "done";

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
        let http = crate::http::client_builder().timeout(Duration::from_secs(60)).build().expect("HTTP client");
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
    pub async fn crawl(&self, store: &Store, listing: &Listing) -> anyhow::Result<CrawlSummary> {
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

    /// One page, retrying rate limits and failures a few times.
    async fn page(&self, listing: &Listing, cursor: Option<&str>) -> anyhow::Result<Page> {
        let mut query = vec![("limit", self.page_size.to_string())];
        if let Listing::ByCollection(c) = listing {
            query.push(("collection", c.clone()));
        }
        if let Some(c) = cursor {
            query.push(("cursor", c.to_string()));
        }
        let url = listing.url(&self.relay);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let failure = match self.http.get(&url).query(&query).send().await {
                Ok(resp) if resp.status().is_success() => return Ok(resp.json().await?),
                Ok(resp) if resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                    let pause = retry_after(resp.headers()).unwrap_or(Duration::from_secs(5));
                    tokio::time::sleep(pause).await;
                    continue;
                }
                Ok(resp) => format!("{url} answered HTTP {}", resp.status()),
                Err(e) => error_chain(&e),
            };
            if attempt >= 5 {
                anyhow::bail!("listing repos: {failure}");
            }
            tracing::warn!(%failure, attempt, "listing repos failed; retrying");
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
    }
}

/// Queues the new DIDs of a page that `shard` owns (inactive ones recorded as gone), with the
/// page's cursor in the same batch. Returns (queued, inactive).
fn queue_page(
    store: &Store,
    repos: &[Listed],
    shard: crate::cluster::Shard,
    service: &str,
    cursor: Option<&str>,
) -> anyhow::Result<(u64, u64)> {
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
