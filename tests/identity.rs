//! Identity resolution against the devnet's PLC directory and did:web hosts (127.0.0.1 only):
//! keys in both forms, the PDS endpoint, the cache and its expiry, and classified errors; and
//! DID documents read on their own.

use std::time::Duration;

use serde_json::json;
use sluice::error::chain;
use sluice::identity::{IdentityError, Resolver, ResolverOptions, identity_from_document};
use sluice_devnet::{Account, AccountSpec, Devnet, DevnetOptions, PLC_RESOLVE};

fn resolver(net: &Devnet, ttl: Duration) -> Resolver {
    Resolver::new(ResolverOptions {
        plc_url: net.plc_url(),
        ttl,
        timeout: Duration::from_secs(5),
        capacity: 10,
        policy: sluice::http::AddressPolicy::loopback(),
    })
}

#[tokio::test]
async fn plc_and_web_identities_resolve_to_their_pds_and_key() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let plain = net.create_account(AccountSpec { seed: 1, pds: 1, ..Default::default() });
    let legacy = net.create_account(AccountSpec {
        seed: 2,
        pds: 0,
        legacy_key: true,
        handle: Some("old.test".into()),
        ..Default::default()
    });
    let web = net.create_account(AccountSpec { seed: 3, pds: 1, did_web: true, ..Default::default() });
    let r = resolver(&net, Duration::from_secs(60));
    for (did, pds) in [(&plain, 1), (&legacy, 0), (&web, 1)] {
        let id = r.resolve(did).await.unwrap();
        assert_eq!(id.pds, net.pds_urls()[pds], "{did}");
        let want = sluice::repo::parse_public_key(&net.did_key(did).unwrap()).unwrap();
        assert_eq!(id.key.to_k256().unwrap(), want.to_k256().unwrap(), "{did}: the key in either form");
    }
    assert_eq!(r.resolve(&legacy).await.unwrap().handle.as_deref(), Some("old.test"));
}

#[tokio::test]
async fn the_cache_serves_until_it_expires_and_refresh_bypasses_it() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let did = net.create_account(AccountSpec { seed: 4, ..Default::default() });
    // Time is the feature here (the cache's TTL). The lookups meant to be cached follow each
    // other at once, a full second within the TTL even on a loaded machine.
    const TTL: Duration = Duration::from_secs(1);
    let r = resolver(&net, TTL);
    r.resolve(&did).await.unwrap();
    r.resolve(&did).await.unwrap();
    assert_eq!(net.request_count(PLC_RESOLVE), 1, "the second lookup is cached");
    r.refresh(&did).await.unwrap();
    assert_eq!(net.request_count(PLC_RESOLVE), 2, "refresh asks again");
    // Past the TTL of the entry refresh wrote, with a margin.
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    r.resolve(&did).await.unwrap();
    assert_eq!(net.request_count(PLC_RESOLVE), 3, "an expired entry is fetched again");
}

#[tokio::test]
async fn failures_are_classified() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let did = net.create_account(AccountSpec { seed: 5, ..Default::default() });
    net.remove_identity(&did);
    let r = resolver(&net, Duration::from_secs(60));
    assert!(matches!(r.resolve(&did).await, Err(IdentityError::NotFound(_))));
    assert!(matches!(r.resolve("did:key:z6Mk").await, Err(IdentityError::Unsupported(_))));
    let web_on_nothing = "did:web:127.0.0.1%3A1";
    assert!(
        matches!(r.resolve(web_on_nothing).await, Err(IdentityError::Transport { .. })),
        "a closed port is a transport error"
    );
    let closed = Resolver::new(ResolverOptions { plc_url: "http://127.0.0.1:1/".into(), ..Default::default() });
    let e = closed.resolve("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").await.unwrap_err();
    assert!(matches!(e, IdentityError::Transport { .. }) && e.to_string().contains("identity lookup failed"), "{e}");
}

/// A DID document for `did:plc:abc` with the verification method `method`.
fn doc(method: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": "did:plc:abc",
        "alsoKnownAs": ["at://alice.test"],
        "verificationMethod": [method],
        "service": [{
            "id": "#atproto_pds",
            "type": "AtprotoPersonalDataServer",
            "serviceEndpoint": "http://127.0.0.1:9/"
        }]
    }))
    .unwrap()
}

#[test]
fn multikey_and_legacy_keys_decode_to_the_same_key() {
    let account = Account::new(1);
    let point = account.key.verifying_key().to_encoded_point(false);
    let legacy = multibase::encode(multibase::Base::Base58Btc, point.as_bytes());
    let a = identity_from_document(
        "did:plc:abc",
        &doc(json!({
            "id": "did:plc:abc#atproto",
            "type": "Multikey",
            "publicKeyMultibase": account.public_multibase()
        })),
    )
    .unwrap();
    let b = identity_from_document(
        "did:plc:abc",
        &doc(json!({"id": "#atproto", "type": "EcdsaSecp256k1VerificationKey2019", "publicKeyMultibase": legacy})),
    )
    .unwrap();
    assert_eq!(a.key.to_k256().unwrap(), b.key.to_k256().unwrap());
    assert_eq!((a.pds.as_str(), a.handle.as_deref()), ("http://127.0.0.1:9", Some("alice.test")));
}

#[test]
fn unusable_documents_are_refused_with_the_reason() {
    let cases = [
        (b"{".to_vec(), "not a DID document"),
        (
            doc(json!({"id": "#atproto", "type": "Ed25519VerificationKey2020", "publicKeyMultibase": "z1"})),
            "unsupported key type",
        ),
        (doc(json!({"id": "#other", "type": "Multikey", "publicKeyMultibase": "z1"})), "no #atproto"),
        (doc(json!({"id": "#atproto", "type": "Multikey", "publicKeyMultibase": "zzzz"})), "bad Multikey"),
    ];
    for (json, want) in cases {
        let e = chain(&identity_from_document("did:plc:abc", &json).unwrap_err()).to_string();
        assert!(e.contains(want), "{e} should say {want}");
    }
    let e = identity_from_document("did:plc:other", &doc(json!({"id": "#atproto", "type": "Multikey"}))).unwrap_err();
    let e = chain(&e).to_string();
    assert!(e.contains("document is for did:plc:abc"), "{e}");
}
