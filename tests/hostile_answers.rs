//! Small answers from hostile hosts are read with bounded memory: an endless or oversized DID
//! document or relay listing is refused at its cap (the server sees the client stop early),
//! a declared oversized one without reading it; a relay answering 429 forever stops the crawl
//! after a ceiling; a huge error body is cut to one short line. Loopback servers only.

mod loopback;

use std::time::Duration;

use loopback::{Answer, Body, Server};
use sluice::backfill::crawler::{CrawlError, Crawler, Listing, MAX_PAGE_BYTES, MAX_RATE_LIMITED, PageError};
use sluice::http::{AddressPolicy, BodyError};
use sluice::identity::{DocumentError, IdentityError, MAX_DOCUMENT_BYTES, Resolver, ResolverOptions};

/// The longest any test here may take.
const LIMIT: Duration = Duration::from_secs(60);

/// Beyond the cap, what may sit in socket buffers and one chunk in flight when the client
/// stops reading.
const SLACK: u64 = 16 << 20;

fn resolver() -> Resolver {
    let opts = ResolverOptions {
        plc_url: "http://127.0.0.1:1/".into(),
        timeout: Duration::from_secs(10),
        policy: AddressPolicy::loopback(),
        ..Default::default()
    };
    Resolver::new(opts)
}

#[tokio::test]
async fn an_endless_did_document_is_refused_at_its_cap() {
    let host = Server::start("127.0.0.1", |_| Answer::streamed(200, Body::Filler(1 << 30))).await;
    let did = format!("did:web:127.0.0.1%3A{}", host.addr.port());
    let err = tokio::time::timeout(LIMIT, resolver().resolve(&did)).await.unwrap().unwrap_err();
    let IdentityError::InvalidDocument { source: DocumentError::TooLarge(BodyError::TooLarge { cap, .. }), .. } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*cap, MAX_DOCUMENT_BYTES);
    assert!(err.is_permanent());
    let text = sluice::error::chain(&err).to_string();
    assert!(text.contains("DID document over its 65536-byte cap"), "{text}");
    // The server stops when its writes fail; give it a moment to notice.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(host.body_bytes() < MAX_DOCUMENT_BYTES as u64 + SLACK, "{} bytes sent of 1 GiB", host.body_bytes());
}

#[tokio::test]
async fn a_did_document_declared_too_large_is_not_read() {
    let host = Server::start("127.0.0.1", |_| Answer::streamed(200, Body::DeclaredFiller(100 << 20))).await;
    let did = format!("did:web:127.0.0.1%3A{}", host.addr.port());
    let err = tokio::time::timeout(LIMIT, resolver().resolve(&did)).await.unwrap().unwrap_err();
    let text = sluice::error::chain(&err).to_string();
    assert!(text.contains("Content-Length 104857600, not read"), "{text}");
}

fn store() -> (tempfile::TempDir, sluice::Sluice) {
    sluice_testkit::sluice_with("mode = \"full\"")
}

#[tokio::test]
async fn an_endless_listing_page_is_refused_at_its_cap() {
    let relay = Server::start("127.0.0.1", |_| Answer::streamed(200, Body::Filler(1 << 30))).await;
    let (_dir, sluice) = store();
    let crawler = Crawler::new(&relay.url(""));
    let crawl = crawler.crawl(sluice.store(), &Listing::AllRepos);
    let err = tokio::time::timeout(LIMIT, crawl).await.unwrap().unwrap_err();
    assert!(matches!(err, CrawlError::PageBody(BodyError::TooLarge { cap: MAX_PAGE_BYTES, .. })), "{err:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(relay.body_bytes() < MAX_PAGE_BYTES as u64 + SLACK, "{} bytes sent", relay.body_bytes());
    assert_eq!(relay.connections(), 1, "an oversized page is not asked for again");
}

#[tokio::test]
async fn a_relay_answering_429_forever_stops_the_crawl_after_the_ceiling() {
    let relay = Server::start("127.0.0.1", |_| Answer::new(429, "slow down").with_header("Retry-After: 0")).await;
    let (_dir, sluice) = store();
    let crawler = Crawler::new(&relay.url(""));
    let crawl = crawler.crawl(sluice.store(), &Listing::AllRepos);
    let err = tokio::time::timeout(LIMIT, crawl).await.expect("the crawl ends").unwrap_err();
    assert!(matches!(err, CrawlError::RateLimited(n) if n == MAX_RATE_LIMITED), "{err:?}");
    assert!(err.to_string().contains("resumes this listing from its saved cursor"), "{err}");
    assert_eq!(relay.connections(), u64::from(MAX_RATE_LIMITED));
}

#[tokio::test]
async fn a_relay_error_body_is_cut_to_one_short_line() {
    let huge = "boom\n".repeat(200_000);
    let relay = Server::start("127.0.0.1", move |_| Answer::new(500, huge.clone())).await;
    let (_dir, sluice) = store();
    let crawler = Crawler::new(&relay.url(""));
    let crawl = crawler.crawl(sluice.store(), &Listing::AllRepos);
    // Five attempts, about 15 s of backoff between them.
    let err = tokio::time::timeout(LIMIT, crawl).await.unwrap().unwrap_err();
    let CrawlError::Listing(PageError::Status { status, text, .. }) = &err else { panic!("{err:?}") };
    assert_eq!(status.as_u16(), 500);
    assert!(text.starts_with("boom boom") && text.ends_with("more bytes cut]"), "{text}");
    assert!(text.len() < 1100 && !text.contains('\n'), "{} bytes", text.len());
    assert_eq!(relay.connections(), 5);
}
