//! Handles: resolving one to a DID, and checking that a repo's handle is its own.
//!
//! A handle is a repo's own when its DID document names it (`alsoKnownAs`) and it resolves back
//! to the DID: the DNS TXT record `_atproto.<handle>` (`did=<DID>`), else
//! `https://<handle>/.well-known/atproto-did`. With `[network] handle_resolver` set, a service's
//! `com.atproto.identity.resolveHandle` answers instead (the devnet's relay, or an appview
//! one trusts).
//!
//! The handle's own host is the network's: its well-known answer is fetched by a client the
//! outbound address policy guards ([`crate::http::policy`]), and read up to
//! [`MAX_WELL_KNOWN_BYTES`]. The configured service is trusted; its answer is read up to
//! [`MAX_SERVICE_ANSWER_BYTES`].
//!
//! The [`HandleChecker`] checks each repo once when its handle is stored or changes, and again
//! after an `#identity` frame (the store queues them, see `store/handles.rs`), at a bounded
//! rate, so that a backfill of millions of repos does not flood DNS or anyone's web server.
//! Its verdicts fill the handle index that XRPC resolves at-identifiers through, and
//! `describeRepo`'s `handleIsCorrect`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hickory_resolver::TokioResolver;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use tokio_util::sync::CancellationToken;

use crate::http::{AddressPolicy, BodyError, Deadlines, read_capped};
use crate::identity::{IdentityError, Resolver};
use crate::store::Store;

/// The most of a `/.well-known/atproto-did` answer read (a DID is under 2 KiB by its syntax).
pub const MAX_WELL_KNOWN_BYTES: usize = 2 * 1024;

/// The most of a `resolveHandle` answer read (`{"did": "..."}`).
pub const MAX_SERVICE_ANSWER_BYTES: usize = 16 * 1024;

/// Why a handle could not be resolved now (or a resolver not made).
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The system's DNS configuration could not be read.
    #[error("reading the system's DNS configuration")]
    DnsConfig(#[source] NetError),
    /// The HTTP client could not be built.
    #[error("building the HTTP client")]
    Client(#[source] reqwest::Error),
    /// DNS did not answer.
    #[error("DNS TXT _atproto.{handle}")]
    Dns { handle: String, source: NetError },
    /// The `resolveHandle` service could not be asked, or its answer read.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    /// The `resolveHandle` service answered an error.
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: reqwest::StatusCode },
    /// The `resolveHandle` service's answer is too large, or did not arrive.
    #[error("{url}: reading the answer")]
    Body { url: String, source: BodyError },
    /// The `resolveHandle` service's answer is not JSON.
    #[error("{url}: the answer is not JSON")]
    Json { url: String, source: serde_json::Error },
}

/// How a handle is resolved to a DID.
pub struct HandleResolver {
    http: reqwest::Client,
    how: How,
}

enum How {
    /// DNS TXT, then HTTPS well-known.
    Direct(Box<TokioResolver>),
    /// `com.atproto.identity.resolveHandle` at this base URL.
    Service(String),
}

impl HandleResolver {
    /// Resolves through `service`'s `resolveHandle` when given (trusted), else directly (DNS,
    /// HTTPS), the handle's host held to `policy`.
    pub fn new(service: Option<&str>, timeout: Duration, policy: &AddressPolicy) -> Result<Self, HandleError> {
        match service {
            Some(url) => {
                Ok(Self { http: http_client(timeout)?, how: How::Service(url.trim_end_matches('/').to_string()) })
            }
            None => Self::direct(
                TokioResolver::builder_tokio().map_err(HandleError::DnsConfig)?,
                timeout,
                crate::http::client_builder(),
                policy,
            ),
        }
    }

    /// Resolves directly (DNS, then HTTPS), asking the DNS server at `nameserver` (UDP)
    /// instead of the system's, for the TXT record and for the well-known host's address alike:
    /// for a resolver of one's own, and for tests. No proxy is used, since a proxy would look
    /// the host up its own way.
    pub fn direct_via(
        nameserver: std::net::SocketAddr,
        timeout: Duration,
        policy: &AddressPolicy,
    ) -> Result<Self, HandleError> {
        use hickory_resolver::config::{NameServerConfig, ResolverConfig};
        let mut server = NameServerConfig::udp(nameserver.ip());
        server.connections.iter_mut().for_each(|c| c.port = nameserver.port());
        let provider = hickory_resolver::net::runtime::TokioRuntimeProvider::default();
        Self::direct(
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(vec![server]), provider),
            timeout,
            crate::http::client_builder().no_proxy(),
            policy,
        )
    }

    /// Direct resolution through the DNS resolver `builder` makes, each lookup within `timeout`;
    /// the HTTPS client (from `http`) finds hosts through that resolver too, and connects only
    /// to the addresses `policy` allows.
    fn direct(
        mut builder: hickory_resolver::ResolverBuilder<hickory_resolver::net::runtime::TokioRuntimeProvider>,
        timeout: Duration,
        http: reqwest::ClientBuilder,
        policy: &AddressPolicy,
    ) -> Result<Self, HandleError> {
        builder.options_mut().timeout = timeout;
        let dns = builder.build().map_err(HandleError::DnsConfig)?;
        let http =
            policy.guarded_via(Deadlines::SMALL.with_total(timeout).apply(http), Arc::new(HostsByDns(dns.clone())));
        Ok(Self { http: http.build().map_err(HandleError::Client)?, how: How::Direct(Box::new(dns)) })
    }

    /// The DID `handle` resolves to: `Ok(None)` when it resolves to none, `Err` when the
    /// answer could not be had (worth asking again later).
    pub async fn resolve(&self, handle: &str) -> Result<Option<String>, HandleError> {
        match &self.how {
            How::Service(base) => self.by_service(base, handle).await,
            How::Direct(dns) => match by_dns(dns, handle).await? {
                Some(did) => Ok(Some(did)),
                None => Ok(self.by_well_known(handle).await),
            },
        }
    }

    async fn by_service(&self, base: &str, handle: &str) -> Result<Option<String>, HandleError> {
        let url = format!("{base}/xrpc/com.atproto.identity.resolveHandle");
        let resp = self.http.get(&url).query(&[("handle", handle)]).send().await?;
        if resp.status() == reqwest::StatusCode::BAD_REQUEST || resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(HandleError::Status { url, status: resp.status() });
        }
        let body = read_capped(resp, MAX_SERVICE_ANSWER_BYTES, "resolveHandle answer")
            .await
            .map_err(|source| HandleError::Body { url: url.clone(), source })?;
        let body: serde_json::Value =
            serde_json::from_slice(&body).map_err(|source| HandleError::Json { url: url.clone(), source })?;
        Ok(body["did"].as_str().filter(|d| crate::syntax::is_did(d)).map(str::to_string))
    }

    /// `https://<handle>/.well-known/atproto-did`: any failure (a refused address, an answer
    /// over [`MAX_WELL_KNOWN_BYTES`] among them) means it does not resolve there.
    async fn by_well_known(&self, handle: &str) -> Option<String> {
        self.well_known_at(handle, &format!("https://{handle}/.well-known/atproto-did")).await
    }

    /// [`by_well_known`](Self::by_well_known) at `url`, logging why it found nothing.
    async fn well_known_at(&self, handle: &str, url: &str) -> Option<String> {
        let answer = async {
            let resp = self.http.get(url).send().await.map_err(WellKnownError::Request)?;
            if !resp.status().is_success() {
                return Err(WellKnownError::Status(resp.status()));
            }
            read_capped(resp, MAX_WELL_KNOWN_BYTES, "well-known handle answer").await.map_err(WellKnownError::Body)
        };
        match answer.await {
            Ok(body) => {
                let did = String::from_utf8_lossy(&body);
                let did = did.trim();
                crate::syntax::is_did(did).then(|| did.to_string())
            }
            Err(e) => {
                tracing::debug!(handle, error = %crate::error::chain(&e), "no DID at the handle's well-known URL");
                None
            }
        }
    }
}

/// Why a handle's well-known URL gave no DID (logged at debug level).
#[derive(Debug, thiserror::Error)]
enum WellKnownError {
    /// The request failed, or its address was refused.
    #[error("request")]
    Request(#[source] reqwest::Error),
    /// The host answered an error.
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
    /// The answer is too large, or did not arrive.
    #[error(transparent)]
    Body(BodyError),
}

/// The HTTP client of the trusted `resolveHandle` service.
fn http_client(timeout: Duration) -> Result<reqwest::Client, HandleError> {
    Deadlines::SMALL.with_total(timeout).apply(crate::http::client_builder()).build().map_err(HandleError::Client)
}

/// The well-known fetch's host look-ups, through the DNS resolver the TXT look-ups use, so that
/// one resolver (the system's, or the one `direct_via` names) answers both.
struct HostsByDns(TokioResolver);

impl reqwest::dns::Resolve for HostsByDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (dns, host) = (self.0.clone(), format!("{}.", name.as_str().trim_end_matches('.')));
        Box::pin(async move {
            let ips = dns.lookup_ip(host).await?;
            // Port 0: reqwest puts the URL's port (443) in.
            let addrs: reqwest::dns::Addrs = Box::new(ips.into_iter().map(|ip| std::net::SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The DID of `_atproto.<handle>`'s TXT record; `Ok(None)` when there is none (or several that
/// disagree), `Err` when DNS did not answer.
async fn by_dns(dns: &TokioResolver, handle: &str) -> Result<Option<String>, HandleError> {
    let lookup = match dns.txt_lookup(format!("_atproto.{handle}.")).await {
        Ok(lookup) => lookup,
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => return Ok(None),
        Err(source) => return Err(HandleError::Dns { handle: handle.to_string(), source }),
    };
    let dids: Vec<String> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(txt.txt_data.iter().map(|part| String::from_utf8_lossy(part)).collect::<String>()),
            _ => None,
        })
        .filter_map(|text| text.strip_prefix("did=").filter(|d| crate::syntax::is_did(d)).map(str::to_string))
        .collect();
    Ok(match dids.as_slice() {
        [did] => Some(did.clone()),
        _ => None,
    })
}

/// What one check concluded.
#[derive(Debug)]
pub enum Verdict {
    /// The handle (`Some`: what the DID document names now) is the repo's own, or not.
    Checked { handle: Option<String>, ok: bool },
    /// The document or the handle could not be looked up now; asked again later.
    Later(CheckError),
}

/// Why a check was put off.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The DID document could not be had now.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The handle could not be resolved now.
    #[error(transparent)]
    Handle(#[from] HandleError),
}

/// Checks queued handles at a bounded rate (see the module's doc).
pub struct HandleChecker {
    store: Arc<Store>,
    identities: Arc<Resolver>,
    handles: HandleResolver,
    per_sec: u32,
}

/// The cursor of the one-time pass that queues the handles of stores written before handles
/// were checked; `done` when it finished.
pub const QUEUE_OLD_CURSOR: &str = "handle-checks-queued";

/// Checks in flight at once.
const CONCURRENCY: usize = 16;

impl HandleChecker {
    /// A checker writing verdicts into `store`, `per_sec` checks a second at most.
    pub fn new(store: Arc<Store>, identities: Arc<Resolver>, handles: HandleResolver, per_sec: u32) -> Self {
        Self { store, identities, handles, per_sec: per_sec.max(1) }
    }

    /// Checks `did`'s handle: what its document names now, and whether that resolves back.
    pub async fn check(&self, did: &str) -> Verdict {
        let identity = match self.identities.resolve(did).await {
            Ok(identity) => identity,
            // A document that cannot be had (a refused host, an invalid one): no handle.
            Err(e) if e.is_permanent() => {
                return Verdict::Checked { handle: None, ok: false };
            }
            Err(e) => return Verdict::Later(e.into()),
        };
        let Some(handle) = identity.handle.clone().filter(|h| crate::syntax::is_handle(h)) else {
            return Verdict::Checked { handle: None, ok: false };
        };
        match self.handles.resolve(&handle).await {
            Ok(found) => Verdict::Checked { ok: found.as_deref() == Some(did), handle: Some(handle) },
            Err(e) => Verdict::Later(e.into()),
        }
    }

    /// Takes queued checks until `stop`: first queues the never-checked handles of an older
    /// store (once), then goes round the queue in DID order, a second apart between rounds.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        if let Err(e) = self.queue_old_handles(&stop).await {
            tracing::warn!(
                error = %crate::error::chain(&e),
                "queueing the handles of older repo states failed; they are checked when next stored"
            );
        }
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(self.per_sec)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut after: Option<String> = None;
        while !stop.is_cancelled() {
            let page = match self.store.handles().checks_after(after.as_deref(), 256) {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %crate::error::chain(&e), "reading the handle-check queue failed");
                    Vec::new()
                }
            };
            if page.is_empty() {
                // The end of a round (checks put off wait for the next) or an empty queue.
                after = None;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            after = page.last().cloned();
            if self.check_page(page, &mut ticks, &stop).await.is_err() {
                return;
            }
        }
    }

    /// Checks the repos of `page`, one per tick, [`CONCURRENCY`] at a time, and records the
    /// verdicts; `Err` when asked to stop.
    async fn check_page(
        &self,
        page: Vec<String>,
        ticks: &mut tokio::time::Interval,
        stop: &CancellationToken,
    ) -> Result<(), ()> {
        let mut todo = page.into_iter();
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < CONCURRENCY {
                let Some(did) = todo.next() else { break };
                tokio::select! {
                    _ = stop.cancelled() => return Err(()),
                    _ = ticks.tick() => {}
                }
                in_flight.push(async move { (self.check(&did).await, did) });
            }
            let next = tokio::select! {
                _ = stop.cancelled() => return Err(()),
                next = in_flight.next() => next,
            };
            match next {
                Some((verdict, did)) => self.record(&did, verdict),
                None => return Ok(()),
            }
        }
    }

    fn record(&self, did: &str, verdict: Verdict) {
        let written = match verdict {
            Verdict::Checked { handle, ok } => {
                tracing::debug!(did, handle = handle.as_deref().unwrap_or("-"), ok, "handle checked");
                self.store.handles().set_verdict(did, handle, ok)
            }
            Verdict::Later(e) => {
                tracing::debug!(did, reason = %crate::error::chain(&e), "handle check put off");
                return;
            }
        };
        if let Err(e) = written {
            tracing::error!(did, error = %crate::error::chain(&e), "storing a handle verdict failed");
        }
    }

    /// Queues the handles never checked (a store from before handle checks), a page at a
    /// time, resuming where a stopped pass left off.
    async fn queue_old_handles(&self, stop: &CancellationToken) -> Result<(), crate::store::StoreError> {
        let mut after = self.store.cursors().get(QUEUE_OLD_CURSOR)?;
        if after.as_deref() == Some("done") {
            return Ok(());
        }
        while !stop.is_cancelled() {
            let store = self.store.clone();
            let from = after.clone();
            let next = tokio::task::spawn_blocking(move || store.handles().queue_unchecked(from.as_deref(), 1024))
                .await
                .expect("queueing task")?;
            match next {
                Some(next) => {
                    self.store.cursors().save(QUEUE_OLD_CURSOR, &next)?;
                    after = Some(next);
                }
                None => return self.store.cursors().save(QUEUE_OLD_CURSOR, "done"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::op::{Message, OpCode, ResponseCode};
    use hickory_resolver::proto::rr::rdata::TXT;
    use hickory_resolver::proto::rr::{Record, RecordType};

    /// The questions a [`dns_server`] was asked: (name without the final dot, type).
    type Asked = Arc<std::sync::Mutex<Vec<(String, RecordType)>>>;

    /// A DNS server on 127.0.0.1 that knows `_atproto` TXT records: `alice.test` has one,
    /// `twice.test` has two that disagree; `loop.test` is at 127.0.0.1; every other name does
    /// not exist. It keeps the questions it was asked.
    async fn dns_server() -> (std::net::SocketAddr, Asked) {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let asked = Asked::default();
        let log = asked.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                let mut answer = Message::response(query.metadata.id, OpCode::Query);
                for q in &query.queries {
                    answer.add_query(q.clone());
                    let name = q.name().to_ascii().trim_end_matches('.').to_string();
                    log.lock().unwrap().push((name.clone(), q.query_type()));
                    let txt = |did: &str| {
                        Record::from_rdata(q.name().clone(), 60, RData::TXT(TXT::new(vec![format!("did={did}")])))
                    };
                    match (name.as_str(), q.query_type()) {
                        ("_atproto.alice.test", RecordType::TXT) => drop(answer.add_answer(txt("did:plc:alice"))),
                        ("_atproto.twice.test", RecordType::TXT) => {
                            answer.add_answers([txt("did:plc:one"), txt("did:plc:two")]);
                        }
                        ("loop.test", RecordType::A) => {
                            let a = RData::A(hickory_resolver::proto::rr::rdata::A::new(127, 0, 0, 1));
                            answer.add_answer(Record::from_rdata(q.name().clone(), 60, a));
                        }
                        _ => answer.metadata.response_code = ResponseCode::NXDomain,
                    }
                }
                let _ = socket.send_to(&answer.to_vec().unwrap(), from).await;
            }
        });
        (addr, asked)
    }

    /// The direct path against a real DNS exchange: a TXT record resolves a handle; none, or
    /// two that disagree, resolve it to nothing (the HTTPS fallback finds nothing either).
    #[tokio::test]
    async fn handles_resolve_by_their_atproto_txt_record() {
        let resolver =
            HandleResolver::direct_via(dns_server().await.0, Duration::from_secs(2), &AddressPolicy::public_only())
                .unwrap();
        assert_eq!(resolver.resolve("alice.test").await.unwrap().as_deref(), Some("did:plc:alice"));
        assert_eq!(resolver.resolve("twice.test").await.unwrap(), None, "records that disagree name no DID");
        assert_eq!(resolver.resolve("nobody.test").await.unwrap(), None);
    }

    /// The HTTPS well-known fallback finds its host through the nameserver `direct_via` names,
    /// not the system's: the fake server is asked for the host's address (A or AAAA) after the
    /// TXT record, and for no name but the two. A system look-up would reach it with neither.
    #[tokio::test]
    async fn the_well_known_fallback_asks_the_given_nameserver_for_its_host() {
        let (nameserver, asked) = dns_server().await;
        let resolver =
            HandleResolver::direct_via(nameserver, Duration::from_secs(2), &AddressPolicy::public_only()).unwrap();
        assert_eq!(resolver.resolve("nobody.test").await.unwrap(), None);
        let asked = asked.lock().unwrap().clone();
        assert_eq!(asked.first(), Some(&("_atproto.nobody.test".to_string(), RecordType::TXT)), "{asked:?}");
        let host: Vec<_> = asked.iter().filter(|(name, _)| name == "nobody.test").map(|(_, t)| *t).collect();
        assert!(
            host.iter().any(|t| matches!(t, RecordType::A | RecordType::AAAA)),
            "the well-known host was looked up here: {asked:?}"
        );
        assert!(
            asked.iter().all(|(name, _)| name == "nobody.test" || name == "_atproto.nobody.test"),
            "no other name (no search domain) was asked: {asked:?}"
        );

        // A handle with a TXT record never gets as far as HTTPS.
        let (nameserver, asked) = dns_server().await;
        let resolver =
            HandleResolver::direct_via(nameserver, Duration::from_secs(2), &AddressPolicy::public_only()).unwrap();
        assert_eq!(resolver.resolve("alice.test").await.unwrap().as_deref(), Some("did:plc:alice"));
        assert_eq!(*asked.lock().unwrap(), [("_atproto.alice.test".to_string(), RecordType::TXT)]);
    }

    /// An HTTP server on 127.0.0.1: `/.well-known/atproto-did` answers `did:plc:alice`, any
    /// other path an endless body. Returns its port, and counts of connections and of body
    /// bytes its clients took.
    async fn well_known_server() -> (u16, Arc<std::sync::atomic::AtomicU64>, Arc<std::sync::atomic::AtomicU64>) {
        use std::sync::atomic::{AtomicU64, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (connections, sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (count, bytes) = (connections.clone(), sent.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let bytes = bytes.clone();
                tokio::spawn(async move {
                    let mut head = vec![0u8; 4096];
                    let n = socket.read(&mut head).await.unwrap_or(0);
                    let endless = !String::from_utf8_lossy(&head[..n]).starts_with("GET /.well-known/atproto-did ");
                    if !endless {
                        let _ = socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\ndid:plc:alice\n").await;
                        return;
                    }
                    let _ = socket.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").await;
                    let chunk = vec![b'x'; 64 * 1024];
                    while socket.write_all(&chunk).await.is_ok() {
                        bytes.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    }
                });
            }
        });
        (port, connections, sent)
    }

    /// The handle's host is held to the address policy: `loop.test` (127.0.0.1 by the given
    /// nameserver) is never dialled while loopback is refused, and answers once it is open.
    #[tokio::test]
    async fn the_well_known_host_is_held_to_the_address_policy() {
        let (nameserver, _) = dns_server().await;
        let (port, connections, _) = well_known_server().await;
        let url = format!("http://loop.test:{port}/.well-known/atproto-did");
        let refused = HandleResolver::direct_via(nameserver, Duration::from_secs(2), &AddressPolicy::public_only());
        assert_eq!(refused.unwrap().well_known_at("loop.test", &url).await, None);
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 0, "loopback was never dialled");
        let open = HandleResolver::direct_via(nameserver, Duration::from_secs(2), &AddressPolicy::loopback()).unwrap();
        assert_eq!(open.well_known_at("loop.test", &url).await.as_deref(), Some("did:plc:alice"));
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// An endless well-known answer is given up at [`MAX_WELL_KNOWN_BYTES`]: the server sees
    /// the client stop after little more than its socket buffers.
    #[tokio::test]
    async fn an_endless_well_known_answer_is_cut_at_its_cap() {
        let (nameserver, _) = dns_server().await;
        let (port, _, sent) = well_known_server().await;
        let resolver =
            HandleResolver::direct_via(nameserver, Duration::from_secs(5), &AddressPolicy::loopback()).unwrap();
        let url = format!("http://127.0.0.1:{port}/endless");
        assert_eq!(resolver.well_known_at("loop.test", &url).await, None);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = sent.load(std::sync::atomic::Ordering::SeqCst);
        assert!(sent < 16 << 20, "{sent} bytes sent before the client stopped");
    }
}
