//! The outbound address policy end to end, on loopback only: with loopback not allowed, a
//! name resolving to it, a did:web host, a PDS endpoint and a redirect hop at it are refused
//! before any connection (the test servers count theirs); allowed, the same requests go
//! through. Every server listens on 127.0.0.0/8 and every refused address is never dialled.

mod loopback;

use std::time::Duration;

use loopback::{Answer, Server};
use sluice::http::{AddressPolicy, client_builder, is_address_refused};
use sluice::identity::{DocumentError, IdentityError, Resolver, ResolverOptions};
use sluice_devnet::{AccountSpec, Devnet, DevnetOptions};

/// The longest any request here may take.
const LIMIT: Duration = Duration::from_secs(10);

fn guarded(policy: &AddressPolicy) -> reqwest::Client {
    policy.guarded(client_builder().timeout(LIMIT)).build().unwrap()
}

fn only(net: &str) -> AddressPolicy {
    AddressPolicy::new(false, &[net.parse().unwrap()])
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_without_a_connection() {
    let server = Server::start("127.0.0.1", |_| Answer::new(200, "hello")).await;
    let url = format!("http://localhost:{}/", server.addr.port());
    let err = guarded(&AddressPolicy::public_only()).get(&url).send().await.unwrap_err();
    assert!(is_address_refused(&err), "{:?}", err);
    let refused = sluice::http::address_refused(&err).unwrap();
    assert_eq!((refused.host.as_str(), refused.range), ("localhost", "loopback"), "{refused}");
    assert_eq!(server.connections(), 0, "the server saw no connection");

    // Allowed, the same request goes through.
    let body = guarded(&AddressPolicy::loopback()).get(&url).send().await.unwrap().text().await.unwrap();
    assert_eq!((body.as_str(), server.connections()), ("hello", 1));
}

#[tokio::test]
async fn a_redirect_to_a_refused_address_is_not_followed() {
    let target = Server::start("127.0.0.3", |_| Answer::new(200, "secret")).await;
    let to_target = target.url("/latest/meta-data");
    let first = Server::start("127.0.0.1", move |_| Answer::redirect(&to_target)).await;
    // Only the first server's address is open.
    let err = guarded(&only("127.0.0.1/32")).get(first.url("/")).send().await.unwrap_err();
    assert!(is_address_refused(&err), "{:?}", err);
    assert_eq!((first.connections(), target.connections()), (1, 0), "the hop to 127.0.0.3 was never dialled");

    // A redirect to a name that resolves to a refused address is refused by the resolver.
    let to_name = format!("http://localhost:{}/", target.addr.port());
    let by_name = Server::start("127.0.0.2", move |_| Answer::redirect(&to_name)).await;
    let err = guarded(&only("127.0.0.2/32")).get(by_name.url("/")).send().await.unwrap_err();
    assert!(is_address_refused(&err), "{:?}", err);
    assert_eq!((by_name.connections(), target.connections()), (1, 0));

    // With the target's network open too, the redirect is followed.
    let open = AddressPolicy::new(false, &["127.0.0.1/32".parse().unwrap(), "127.0.0.3/32".parse().unwrap()]);
    let body = guarded(&open).get(first.url("/")).send().await.unwrap().text().await.unwrap();
    assert_eq!((body.as_str(), target.connections()), ("secret", 1));
}

#[tokio::test]
async fn redirect_hops_are_limited() {
    let server = Server::start("127.0.0.1", |path| {
        let n: u32 = path.trim_start_matches('/').parse().unwrap_or(0);
        Answer::redirect(&format!("/{}", n + 1))
    })
    .await;
    let err = guarded(&AddressPolicy::loopback()).get(server.url("/0")).send().await.unwrap_err();
    assert!(err.is_redirect() && !is_address_refused(&err), "{:?}", err);
    let hops = sluice::http::policy::MAX_REDIRECTS as u64;
    assert_eq!(server.connections(), hops + 1, "the first request and {hops} hops");
}

fn resolver(plc: &str, policy: AddressPolicy) -> Resolver {
    Resolver::new(ResolverOptions { plc_url: format!("{plc}/"), timeout: LIMIT, policy, ..Default::default() })
}

#[tokio::test]
async fn a_did_web_host_at_a_refused_address_is_refused_without_a_connection() {
    let host = Server::start("127.0.0.1", |_| Answer::new(404, "")).await;
    let r = resolver("http://127.0.0.1:1", AddressPolicy::public_only());
    let port = host.addr.port();
    for did in [format!("did:web:127.0.0.1%3A{port}"), format!("did:web:localhost%3A{port}")] {
        let err = r.resolve(&did).await.unwrap_err();
        assert!(matches!(err, IdentityError::Refused { .. }) && err.is_permanent(), "{did}: {err:?}");
        let text = sluice::error::chain(&err).to_string();
        assert!(text.contains("loopback") && text.contains(&did), "{text}");
    }
    assert_eq!(host.connections(), 0);
    // Allowed, the host is asked (and knows no such DID).
    let r = resolver("http://127.0.0.1:1", AddressPolicy::loopback());
    let err = r.resolve(&format!("did:web:127.0.0.1%3A{port}")).await.unwrap_err();
    assert!(matches!(err, IdentityError::NotFound(_)) && err.is_permanent(), "{err:?}");
    assert_eq!(host.connections(), 1);
}

/// A DID document (served by a PLC directory of the test's own, trusted) naming `pds`, with
/// a real account's key.
fn document(did: &str, key: &str, pds: &str) -> String {
    serde_json::json!({
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": did,
        "verificationMethod": [{
            "id": format!("{did}#atproto"), "type": "Multikey", "controller": did, "publicKeyMultibase": key,
        }],
        "service": [{ "id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds }],
    })
    .to_string()
}

#[tokio::test]
async fn a_document_naming_a_pds_at_a_refused_address_is_refused() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let account = net.create_account(AccountSpec { seed: 7, ..Default::default() });
    let key = net.did_key(&account).unwrap().trim_start_matches("did:key:").to_string();
    let pds = Server::start("127.0.0.1", |_| Answer::new(200, "")).await;
    let endpoints = [
        ("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "http://169.254.169.254".to_string(), "link-local"),
        ("did:plc:bbbbbbbbbbbbbbbbbbbbbbbb", "http://[::ffff:10.0.0.1]:8080".to_string(), "private"),
        ("did:plc:cccccccccccccccccccccccc", pds.url(""), "loopback"),
    ];
    let docs: Vec<(String, String)> =
        endpoints.iter().map(|(d, e, _)| (format!("/{d}"), document(d, &key, e))).collect();
    let plc = Server::start("127.0.0.1", move |path| match docs.iter().find(|(p, _)| p == path) {
        Some((_, doc)) => Answer::new(200, doc.clone()),
        None => Answer::new(404, ""),
    })
    .await;
    let r = resolver(&plc.url(""), AddressPolicy::public_only());
    for (did, endpoint, range) in &endpoints {
        let err = r.resolve(did).await.unwrap_err();
        let IdentityError::InvalidDocument { source: DocumentError::PdsRefused { endpoint: named, source }, .. } = &err
        else {
            panic!("{did}: {err:?}")
        };
        assert!(err.is_permanent());
        assert_eq!((named, source.range), (endpoint, *range), "{}", sluice::error::chain(&err));
    }
    assert_eq!(pds.connections(), 0, "resolving never dials the PDS");
    // With loopback open, the loopback PDS is accepted; the others stay refused.
    let r = resolver(&plc.url(""), AddressPolicy::loopback());
    assert_eq!(r.resolve(endpoints[2].0).await.unwrap().pds, endpoints[2].1);
    assert!(r.resolve(endpoints[0].0).await.is_err());
}

/// The whole backfill with loopback refused: the relay and PLC directory (configured, trusted)
/// are asked, but the devnet's PDSes (at 127.0.0.1, named by DID documents) never are; every
/// repo ends in error naming the refused address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_never_fetches_from_a_pds_at_a_refused_address() {
    let net = Devnet::start(DevnetOptions { pds_hosts: 1, ..Default::default() }).await.unwrap();
    let dids = net.populate(3, 5, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = sluice::Config::default();
    sluice_testkit::on_devnet(&mut c, &net);
    c.network.allowed_networks.clear();
    c.backfill.max_retries = 0;
    c.storage.path = dir.path().join("data");
    let filter = sluice::Filter::from_toml("mode = \"full\"", "test.toml").unwrap();
    let sluice = sluice::Sluice::builder().config(c.clone()).filter(filter).open().unwrap();
    let backfill = sluice::backfill::Backfill::new(sluice.pipeline().clone(), &c);
    tokio::time::timeout(Duration::from_secs(60), backfill.run(sluice::backfill::RunMode::UntilEmpty, true))
        .await
        .expect("the backfill ends")
        .expect("the backfill ran");
    assert_eq!(net.request_count("com.atproto.sync.getRepo"), 0, "no PDS was asked");
    for did in &dids {
        let state = sluice.store().repos().state(did).unwrap().expect("queued");
        let error = state.error.clone().unwrap_or_default();
        assert_eq!(state.status, sluice::store::RepoStatus::Error, "{did}: {state:?}");
        assert!(error.contains("127.0.0.1") && error.contains("loopback"), "{did}: {error}");
    }
}
