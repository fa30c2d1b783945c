//! The devnet servers over real HTTP on 127.0.0.1: signed CARs that verify, PLC and did:web
//! documents, listRepos paging, statuses, injected faults, writes and bulk population.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice::repo::{LoadedRepo, parse_public_key, read_car};
use sluice_devnet::{Account, AccountSpec, AccountStatus, Devnet, DevnetOptions};

/// Runs a test body with a time bound.
async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(60), f).await.expect("test timed out");
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().unwrap()
}

async fn devnet() -> Devnet {
    Devnet::start(DevnetOptions::default()).await.unwrap()
}

/// GET `url`: status, headers and body as JSON (or `Null` when not JSON).
async fn get_json(url: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let res = client().get(url).send().await.unwrap();
    let (status, headers) = (res.status(), res.headers().clone());
    let body = res.bytes().await.unwrap();
    (status, headers, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// An XRPC query on `host`.
async fn xrpc(host: &str, method: &str, query: &str) -> (StatusCode, Value) {
    let (status, _, body) = get_json(&format!("{host}/xrpc/{method}?{query}")).await;
    (status, body)
}

/// getRepo (the DID query-encoded: a did:web holds `%`).
async fn get_repo(host: &str, did: &str) -> reqwest::Response {
    client().get(format!("{host}/xrpc/com.atproto.sync.getRepo")).query(&[("did", did)]).send().await.unwrap()
}

/// Fetches, parses and checks `did`'s CAR against its published key.
async fn fetch_verified(net: &Devnet, did: &str) -> LoadedRepo {
    let host = &net.pds_urls()[net.pds_of(did).unwrap()];
    let res = get_repo(host, did).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/vnd.ipld.car");
    let repo = read_car(&res.bytes().await.unwrap(), &Default::default()).unwrap();
    repo.check_commit(Some(did)).unwrap();
    repo.verify_signature(&parse_public_key(&net.did_key(did).unwrap()).unwrap()).unwrap();
    repo
}

fn post(text: &str) -> Value {
    json!({"$type": "app.bsky.feed.post", "text": text, "createdAt": "2024-05-01T12:00:00.000Z"})
}

fn account(seed: u64, pds: usize) -> AccountSpec {
    AccountSpec { seed, pds, ..Default::default() }
}

#[tokio::test]
async fn get_repo_serves_a_signed_car_holding_the_current_records() {
    bounded(async {
        let net = devnet().await;
        let did = net.create_account(account(1, 1));
        let cid = net.put_record(&did, "app.bsky.feed.post", "3kaaaaaaaaa22", post("hello")).unwrap();
        net.put_record(
            &did,
            "app.bsky.actor.profile",
            "self",
            json!({"$type": "app.bsky.actor.profile", "displayName": "One"}),
        )
        .unwrap();

        let repo = fetch_verified(&net, &did).await;
        assert_eq!(repo.rev(), net.rev(&did).unwrap());
        let walked: Vec<_> = repo.records().collect::<Result<_, _>>().unwrap();
        let held = net.records(&did);
        assert_eq!(walked.len(), 2);
        for e in &walked {
            let (want_cid, want_bytes) = &held[&(e.collection.to_string(), e.rkey.to_string())];
            assert_eq!(&e.cid.to_string(), want_cid);
            assert_eq!(&e.bytes[..], &want_bytes[..]);
        }
        assert_eq!(held[&("app.bsky.feed.post".into(), "3kaaaaaaaaa22".into())].0, cid);

        let (status, latest) =
            xrpc(&net.pds_urls()[1], "com.atproto.sync.getLatestCommit", &format!("did={did}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(latest["cid"], repo.commit_cid.to_string());
        assert_eq!(latest["rev"], repo.rev());

        // A write moves the rev and the served repo with it.
        net.delete_record(&did, "app.bsky.actor.profile", "self").unwrap();
        let after = fetch_verified(&net, &did).await;
        assert!(after.rev() > repo.rev(), "rev {} must follow {}", after.rev(), repo.rev());
        assert_eq!(after.records().count(), 1);
        assert_eq!(net.request_count("com.atproto.sync.getRepo"), 2);
        net.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn an_empty_repo_exports_and_verifies() {
    bounded(async {
        let net = devnet().await;
        let did = net.create_account(account(2, 0));
        let repo = fetch_verified(&net, &did).await;
        assert_eq!(repo.records().count(), 0);
    })
    .await;
}

/// The key a document's `#atproto` verification method publishes, as compressed SEC1 bytes.
fn published_key(doc: &Value) -> (String, Vec<u8>) {
    let vm = &doc["verificationMethod"][0];
    assert_eq!(vm["id"], format!("{}#atproto", doc["id"].as_str().unwrap()));
    let kind = vm["type"].as_str().unwrap().to_string();
    let multibase = vm["publicKeyMultibase"].as_str().unwrap();
    let point = if kind == "Multikey" {
        parse_public_key(multibase).unwrap().bytes.to_vec()
    } else {
        let (base, raw) = cid::multibase::decode(multibase).unwrap();
        assert_eq!(base, cid::multibase::Base::Base58Btc);
        assert_eq!((raw.len(), raw[0]), (65, 0x04), "an uncompressed point without multicodec prefix");
        raw
    };
    let key = k256::PublicKey::from_sec1_bytes(&point).unwrap();
    (kind, k256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&key, true).as_bytes().to_vec())
}

fn compressed(seed: u64) -> Vec<u8> {
    Account::new(seed).key.verifying_key().to_encoded_point(true).as_bytes().to_vec()
}

#[tokio::test]
async fn plc_documents_publish_the_key_as_multikey_or_legacy() {
    bounded(async {
        let net = devnet().await;
        assert!(net.plc_url().ends_with('/'));
        let modern = net.create_account(AccountSpec {
            seed: 10,
            pds: 0,
            handle: Some("alice.test".into()),
            ..Default::default()
        });
        let legacy = net.create_account(AccountSpec { seed: 11, pds: 1, legacy_key: true, ..Default::default() });

        let (status, _, doc) = get_json(&format!("{}{modern}", net.plc_url())).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(doc["id"], modern);
        assert_eq!(doc["alsoKnownAs"], json!(["at://alice.test"]));
        assert_eq!(doc["service"][0]["type"], "AtprotoPersonalDataServer");
        assert_eq!(doc["service"][0]["serviceEndpoint"], net.pds_urls()[0]);
        assert_eq!(published_key(&doc), ("Multikey".to_string(), compressed(10)));

        let (_, _, doc) = get_json(&format!("{}{legacy}", net.plc_url())).await;
        assert_eq!(doc["service"][0]["serviceEndpoint"], net.pds_urls()[1]);
        assert_eq!(published_key(&doc), ("EcdsaSecp256k1VerificationKey2019".to_string(), compressed(11)));

        net.remove_identity(&modern);
        let (status, _, body) = get_json(&format!("{}{modern}", net.plc_url())).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["message"], format!("DID not registered: {modern}"));
        let (status, _, _) = get_json(&format!("{}did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", net.plc_url())).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(net.request_count(sluice_devnet::PLC_RESOLVE), 4);
    })
    .await;
}

#[tokio::test]
async fn did_web_accounts_are_served_by_their_pds() {
    bounded(async {
        let net = devnet().await;
        let did = net.create_account(AccountSpec { seed: 77, pds: 1, did_web: true, ..Default::default() });
        let pds = &net.pds_urls()[1];
        let port = pds.rsplit(':').next().unwrap();
        assert_eq!(did, format!("did:web:127.0.0.1%3A{port}:u:77"));

        let (status, _, doc) = get_json(&format!("{pds}/u/77/did.json")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(doc["id"], did);
        assert_eq!(doc["service"][0]["serviceEndpoint"], *pds);
        assert_eq!(published_key(&doc), ("Multikey".to_string(), compressed(77)));

        net.put_record(&did, "app.bsky.feed.post", "3kbbbbbbbbb22", post("from the web")).unwrap();
        let repo = fetch_verified(&net, &did).await;
        assert_eq!(repo.did(), did);
        // Not on the other host, not in PLC.
        assert_eq!(get_json(&format!("{}/u/77/did.json", net.pds_urls()[0])).await.0, StatusCode::NOT_FOUND);
        assert_eq!(get_json(&format!("{}{did}", net.plc_url())).await.0, StatusCode::NOT_FOUND);
        net.remove_identity(&did);
        assert_eq!(get_json(&format!("{pds}/u/77/did.json")).await.0, StatusCode::NOT_FOUND);
    })
    .await;
}

/// Pages through `method` on `host` with `limit`, returning every item and the page count.
async fn all_pages(host: &str, method: &str, extra: &str, limit: usize) -> (Vec<Value>, usize) {
    let (mut items, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    loop {
        let cur = cursor.as_deref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let (status, body) = xrpc(host, method, &format!("limit={limit}{extra}{cur}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        items.extend(body["repos"].as_array().unwrap().iter().cloned());
        pages += 1;
        match body["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return (items, pages),
        }
        assert!(pages < 100, "paging does not end");
    }
}

#[tokio::test]
async fn list_repos_pages_over_every_account_exactly_once() {
    bounded(async {
        let net = devnet().await;
        let mut dids: Vec<String> = (0..23).map(|i| net.create_account(account(100 + i, i as usize % 2))).collect();
        dids.sort();
        assert_eq!(net.accounts(), dids);

        let (items, pages) = all_pages(&net.relay_url(), "com.atproto.sync.listRepos", "", 5).await;
        assert_eq!(pages, 5);
        let listed: Vec<String> = items.iter().map(|r| r["did"].as_str().unwrap().to_string()).collect();
        assert_eq!(listed, dids, "every account once, in DID order");
        for r in &items {
            let did = r["did"].as_str().unwrap();
            assert_eq!(r["rev"], net.rev(did).unwrap());
            assert_eq!(r["active"], true);
            assert!(sluice::syntax::is_cid(r["head"].as_str().unwrap()));
        }

        let mut union = Vec::new();
        for (i, host) in net.pds_urls().iter().enumerate() {
            let (items, _) = all_pages(host, "com.atproto.sync.listRepos", "", 4).await;
            let here: Vec<String> = items.iter().map(|r| r["did"].as_str().unwrap().to_string()).collect();
            assert!(here.iter().all(|d| net.pds_of(d) == Some(i)), "a PDS lists only its own accounts");
            union.extend(here);
        }
        union.sort();
        assert_eq!(union, dids);
        let (status, body) = xrpc(&net.relay_url(), "com.atproto.sync.listRepos", "limit=1001").await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidRequest")));
    })
    .await;
}

#[tokio::test]
async fn the_relay_lists_unresolvable_dids_among_the_accounts_in_did_order() {
    bounded(async {
        let net = devnet().await;
        let accounts: Vec<String> = (0..7).map(|i| net.create_account(account(300 + i, i as usize % 2))).collect();
        let ghosts = net.list_unresolvable(40, 3);
        assert!(ghosts.iter().all(|d| sluice::syntax::is_did(d)));
        let mut everyone: Vec<String> = accounts.iter().chain(&ghosts).cloned().collect();
        everyone.sort();
        everyone.dedup();
        assert_eq!(everyone.len(), 47);

        let (items, pages) = all_pages(&net.relay_url(), "com.atproto.sync.listRepos", "", 10).await;
        assert_eq!(pages, 5);
        let listed: Vec<String> = items.iter().map(|r| r["did"].as_str().unwrap().to_string()).collect();
        assert_eq!(listed, everyone, "accounts and unresolvable DIDs once each, in DID order");
        assert!(items.iter().all(|r| sluice::syntax::is_cid(r["head"].as_str().unwrap())));
        let (items, _) = all_pages(&net.pds_urls()[0], "com.atproto.sync.listRepos", "", 10).await;
        assert!(
            items.iter().all(|r| accounts.contains(&r["did"].as_str().unwrap().to_string())),
            "a PDS lists only its accounts"
        );
        let (status, _, _) = get_json(&format!("{}{}", net.plc_url(), ghosts[0])).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "their documents do not resolve");
    })
    .await;
}

#[tokio::test]
async fn list_repos_by_collection_names_the_accounts_holding_it() {
    bounded(async {
        let net = devnet().await;
        let dids: Vec<String> = (0..6).map(|i| net.create_account(account(200 + i, i as usize))).collect();
        for (i, did) in dids.iter().enumerate() {
            let collection = if i % 2 == 0 { "xyz.statusphere.status" } else { "app.bsky.feed.post" };
            net.put_record(
                did,
                collection,
                "3kccccccccc22",
                json!({"$type": collection, "createdAt": "2024-01-01T00:00:00Z"}),
            )
            .unwrap();
        }
        net.set_status(&dids[4], AccountStatus::Deleted);
        let mut want: Vec<String> = vec![dids[0].clone(), dids[2].clone()];
        want.sort();

        let method = "com.atproto.sync.listReposByCollection";
        let (items, pages) = all_pages(&net.relay_url(), method, "&collection=xyz.statusphere.status", 1).await;
        let got: Vec<&str> = items.iter().map(|r| r["did"].as_str().unwrap()).collect();
        assert_eq!(got, want, "holders of the collection, deleted ones left out");
        assert_eq!(pages, 2);
        let (items, _) = all_pages(&net.relay_url(), method, "&collection=app.bsky.feed.like", 10).await;
        assert!(items.is_empty());
        let (status, body) = xrpc(&net.relay_url(), method, "").await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidRequest")));
    })
    .await;
}

#[tokio::test]
async fn each_status_gives_its_xrpc_error() {
    bounded(async {
        let net = devnet().await;
        let did = net.create_account(account(300, 0));
        let pds = &net.pds_urls()[0];
        let cases = [
            (AccountStatus::Deactivated, "RepoDeactivated", Some("deactivated")),
            (AccountStatus::Takendown, "RepoTakendown", Some("takendown")),
            (AccountStatus::Suspended, "RepoSuspended", Some("suspended")),
            (AccountStatus::Deleted, "RepoNotFound", None),
        ];
        for (status, error, reported) in cases {
            net.set_status(&did, status);
            let res = get_repo(pds, &did).await;
            assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{status:?}");
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["error"], error, "{status:?}");
            assert!(body["message"].as_str().unwrap().contains(&did));
            let (code, st) = xrpc(pds, "com.atproto.sync.getRepoStatus", &format!("did={did}")).await;
            match reported {
                Some(s) => assert_eq!(
                    (code, st["active"].clone(), st["status"].clone()),
                    (StatusCode::OK, json!(false), json!(s))
                ),
                None => assert_eq!((code, st["error"].as_str()), (StatusCode::BAD_REQUEST, Some("RepoNotFound"))),
            }
            let (_, list) = xrpc(&net.relay_url(), "com.atproto.sync.listRepos", "").await;
            assert_eq!(list["repos"][0]["status"], status.as_str().unwrap());
        }
        net.set_status(&did, AccountStatus::Active);
        assert_eq!(get_repo(pds, &did).await.status(), StatusCode::OK);
        let (_, st) = xrpc(pds, "com.atproto.sync.getRepoStatus", &format!("did={did}")).await;
        assert_eq!((st["active"].clone(), st["rev"].clone()), (json!(true), json!(net.rev(&did).unwrap())));
        assert!(st.get("status").is_none());
    })
    .await;
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_then_recovers() {
    bounded(async {
        let net = devnet().await;
        let did = net.create_account(account(400, 0));
        let other = net.create_account(account(401, 1));
        net.rate_limit(0, 2, 7);
        for _ in 0..2 {
            let res = get_repo(&net.pds_urls()[0], &did).await;
            assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(res.headers()["retry-after"], "7");
            assert_eq!(res.json::<Value>().await.unwrap()["error"], "RateLimitExceeded");
        }
        assert_eq!(get_repo(&net.pds_urls()[1], &other).await.status(), StatusCode::OK, "other hosts unaffected");
        fetch_verified(&net, &did).await;
        assert_eq!(net.request_count("com.atproto.sync.getRepo"), 4);
    })
    .await;
}

#[tokio::test]
async fn fail_next_answers_500_then_recovers() {
    bounded(async {
        let net = devnet().await;
        let did = net.create_account(account(500, 1));
        net.put_record(&did, "app.bsky.feed.post", "3kddddddddd22", post("x")).unwrap();
        net.fail_next(&did, 2);
        for _ in 0..2 {
            let res = get_repo(&net.pds_urls()[1], &did).await;
            assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(res.json::<Value>().await.unwrap()["error"], "InternalServerError");
        }
        assert_eq!(fetch_verified(&net, &did).await.records().count(), 1);
    })
    .await;
}

#[tokio::test]
async fn bad_requests_get_xrpc_errors() {
    bounded(async {
        let net = devnet().await;
        let did = net.create_account(account(600, 0));
        let wrong_host = &net.pds_urls()[1];
        let (status, body) = xrpc(wrong_host, "com.atproto.sync.getRepo", &format!("did={did}")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("RepoNotFound")),
            "a host serves only its own accounts"
        );
        let (status, body) = xrpc(wrong_host, "com.atproto.sync.getRepo", "").await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidRequest")));
        let (status, body) = xrpc(wrong_host, "com.example.nothing", "").await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::NOT_IMPLEMENTED, Some("MethodNotImplemented")));
        assert!(net.put_record(&did, "not an nsid", "self", post("x")).is_err());
        assert!(net.put_record(&did, "app.bsky.feed.post", "bad/key", post("x")).is_err());
        assert!(
            net.put_record(&did, "app.bsky.feed.post", "self", json!({"n": 1.5})).is_err(),
            "floats are not in the data model"
        );
        assert!(net.delete_record(&did, "app.bsky.feed.post", "missing").is_err());
        assert!(net.put_record("did:plc:unknownunknownunknown", "app.bsky.feed.post", "self", post("x")).is_err());
    })
    .await;
}

#[tokio::test]
async fn puts_and_deletes_show_in_get_record_and_list_records() {
    bounded(async {
        let net = devnet().await;
        let did = net.create_account(AccountSpec {
            seed: 700,
            pds: 0,
            handle: Some("carol.test".into()),
            ..Default::default()
        });
        let pds = &net.pds_urls()[0];
        let rkeys = ["3kaaaaaaaaa22", "3kbbbbbbbbb22", "3kccccccccc22", "3kddddddddd22", "3keeeeeeeee22"];
        for (i, rkey) in rkeys.iter().enumerate() {
            net.put_record(&did, "app.bsky.feed.post", rkey, post(&format!("post {i}"))).unwrap();
        }
        let cid = net.put_record(&did, "app.bsky.feed.post", rkeys[1], post("edited")).unwrap();

        let q = |rkey: &str| format!("repo={did}&collection=app.bsky.feed.post&rkey={rkey}");
        let (status, rec) = xrpc(pds, "com.atproto.repo.getRecord", &q(rkeys[1])).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!((rec["cid"].as_str(), rec["value"]["text"].as_str()), (Some(cid.as_str()), Some("edited")));
        assert_eq!(rec["uri"], format!("at://{did}/app.bsky.feed.post/{}", rkeys[1]));

        let list = |extra: &str| {
            let query = format!("repo=carol.test&collection=app.bsky.feed.post&limit=2{extra}");
            async move { xrpc(pds, "com.atproto.repo.listRecords", &query).await }
        };
        let (_, page) = list("").await;
        let newest: Vec<&str> = page["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["uri"].as_str().unwrap().rsplit('/').next().unwrap())
            .collect();
        assert_eq!(newest, [rkeys[4], rkeys[3]], "newest first by default");
        let (_, next) = list(&format!("&cursor={}", page["cursor"].as_str().unwrap())).await;
        assert_eq!(next["records"][0]["value"]["text"], "post 2");
        let (_, oldest) = list("&reverse=true").await;
        assert_eq!(oldest["records"][1]["value"]["text"], "edited");

        net.delete_record(&did, "app.bsky.feed.post", rkeys[1]).unwrap();
        let (status, body) = xrpc(pds, "com.atproto.repo.getRecord", &q(rkeys[1])).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("RecordNotFound")));
        let (_, all) =
            xrpc(pds, "com.atproto.repo.listRecords", &format!("repo={did}&collection=app.bsky.feed.post")).await;
        assert_eq!(all["records"].as_array().unwrap().len(), 4);
        assert!(all.get("cursor").is_none());

        let (_, desc) = xrpc(pds, "com.atproto.repo.describeRepo", &format!("repo={did}")).await;
        assert_eq!(
            (desc["handle"].as_str(), desc["collections"].clone()),
            (Some("carol.test"), json!(["app.bsky.feed.post"]))
        );
        assert_eq!(desc["didDoc"]["id"], did);
    })
    .await;
}

/// POSTs JSON to `url`.
async fn post_json(url: &str, body: Value) -> (StatusCode, Value) {
    let res = client().post(url).json(&body).send().await.unwrap();
    (res.status(), res.json().await.unwrap())
}

#[tokio::test]
async fn the_http_write_api_creates_accounts_and_records() {
    bounded(async {
        let net = devnet().await;
        let pds = &net.pds_urls()[1];
        let (status, created) =
            post_json(&format!("{pds}/devnet/createAccount"), json!({"seed": 800, "handle": "dave.test"})).await;
        assert_eq!(status, StatusCode::OK);
        let did = created["did"].as_str().unwrap().to_string();
        assert_eq!((did.as_str(), net.pds_of(&did)), (Account::new(800).did.as_str(), Some(1)));

        let xrpc_url = |m: &str| format!("{pds}/xrpc/com.atproto.repo.{m}");
        let rec = json!({"$type": "app.bsky.feed.post", "text": "via xrpc", "createdAt": "2024-01-01T00:00:00Z"});
        let (status, made) = post_json(
            &xrpc_url("createRecord"),
            json!({"repo": did, "collection": "app.bsky.feed.post", "record": rec}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{made}");
        let rkey = made["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
        assert!(sluice::syntax::is_tid(&rkey), "a generated TID rkey: {rkey}");
        assert_eq!(net.records(&did)[&("app.bsky.feed.post".into(), rkey.clone())].0, made["cid"].as_str().unwrap());

        let (status, _) = post_json(
            &xrpc_url("createRecord"),
            json!({"repo": did, "collection": "app.bsky.feed.post", "rkey": rkey, "record": rec}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "create refuses an existing record");
        let (status, put) = post_json(
            &xrpc_url("putRecord"),
            json!({
                "repo": "dave.test",
                "collection": "app.bsky.actor.profile",
                "rkey": "self",
                "record": {"displayName": "Dave"}
            }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{put}");
        let (status, _) = post_json(
            &xrpc_url("deleteRecord"),
            json!({"repo": did, "collection": "app.bsky.feed.post", "rkey": rkey}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let keys: Vec<_> = net.records(&did).into_keys().collect();
        assert_eq!(keys, [("app.bsky.actor.profile".to_string(), "self".to_string())]);
        // The profile was put without `$type`: it got its collection's, as from a real PDS.
        let (_, _, got) = get_json(&format!(
            "{pds}/xrpc/com.atproto.repo.getRecord?repo={did}&collection=app.bsky.actor.profile&rkey=self"
        ))
        .await;
        assert_eq!(got["value"], json!({"$type": "app.bsky.actor.profile", "displayName": "Dave"}), "{got}");
        let (status, body) =
            post_json(&xrpc_url("putRecord"), json!({"repo": did, "collection": "app.bsky.feed.post"})).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("InvalidRequest")));
    })
    .await;
}

#[tokio::test]
async fn populate_builds_realistic_verifiable_repos_deterministically() {
    bounded(async {
        let net = devnet().await;
        let dids = net.populate(4, 60, 9).await;
        assert_eq!(dids.len(), 4);
        assert_eq!(BTreeSet::from_iter(dids.iter().map(|d| net.pds_of(d).unwrap())), BTreeSet::from([0, 1]));
        let allowed = BTreeSet::from(["app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow"]);
        let mut seen = BTreeSet::new();
        for did in &dids {
            let repo = fetch_verified(&net, did).await;
            let records: Vec<_> = repo.records().collect::<Result<_, _>>().unwrap();
            assert_eq!(records.len(), 60);
            for r in &records {
                assert!(
                    allowed.contains(r.collection.as_str()) && sluice::syntax::is_tid(&r.rkey),
                    "{}/{}",
                    r.collection,
                    r.rkey
                );
                let value = sluice::handlers::value::cbor_to_json(&r.bytes).unwrap();
                assert_eq!(value["$type"], r.collection.as_str());
                assert!(sluice::syntax::is_datetime(value["createdAt"].as_str().unwrap()));
                seen.insert(r.collection.clone());
            }
        }
        assert_eq!(seen.len(), 3, "a mix of collections");

        let again = devnet().await;
        assert_eq!(again.populate(4, 60, 9).await, dids);
        assert_eq!(again.records(&dids[2]), net.records(&dids[2]), "the same seed gives the same records");
        net.shutdown().await;
        again.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn base_port_places_the_servers_and_shutdown_stops_them() {
    bounded(async {
        // Find a free run of ports (another process may take one in between: retry).
        let mut started = None;
        for _ in 0..10 {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let base = probe.local_addr().unwrap().port().min(60_000);
            drop(probe);
            if let Ok(net) = Devnet::start(DevnetOptions { pds_hosts: 3, base_port: base }).await {
                started = Some((net, base));
                break;
            }
        }
        let (net, base) = started.expect("a free run of 5 ports");
        assert_eq!(net.plc_url(), format!("http://127.0.0.1:{base}/"));
        assert_eq!(net.relay_url(), format!("http://127.0.0.1:{}", base + 1));
        assert_eq!(net.pds_urls(), (0..3).map(|i| format!("http://127.0.0.1:{}", base + 2 + i)).collect::<Vec<_>>());
        let relay = net.relay_url();
        assert_eq!(xrpc(&relay, "com.atproto.sync.listRepos", "").await.0, StatusCode::OK);
        net.shutdown().await;
        let gone = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("{relay}/xrpc/com.atproto.sync.listRepos"))
            .send()
            .await;
        assert!(gone.is_err(), "the relay no longer answers");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_api_is_shared_across_threads_and_tasks() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    bounded(async {
        let net = std::sync::Arc::new(devnet().await);
        send_sync(&*net);
        let populate = net.populate(2, 5, 3);
        send(&populate);
        assert_eq!(populate.await.len(), 2);
        let writers: Vec<_> = (0..4u64)
            .map(|t| {
                let net = net.clone();
                std::thread::spawn(move || {
                    let did = net.create_account(account(900 + t, t as usize));
                    for i in 0..25 {
                        net.put_record(&did, "app.bsky.feed.post", &format!("r{i}"), post("x")).unwrap();
                    }
                    did
                })
            })
            .collect();
        let dids: Vec<String> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        let tasks: Vec<_> = dids
            .iter()
            .map(|d| {
                let (net, did) = (net.clone(), d.clone());
                tokio::spawn(async move { fetch_verified(&net, &did).await.records().count() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 25);
        }
        assert_eq!(net.accounts().len(), 6);
    })
    .await;
}
