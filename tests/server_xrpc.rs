//! The XRPC queries over HTTP against a devnet backfilled into a temporary store (127.0.0.1
//! only): records and their pages are exactly what the devnet PDS serves, repo listings and
//! statuses follow what sluice indexes, backlinks list their sources, and every bad parameter
//! is an `InvalidRequest` naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sluice::backfill::{Backfill, RunMode};
use sluice::handlers::value::cbor_to_json;
use sluice::handles::{HandleChecker, HandleResolver};
use sluice::identity::Resolver;
use sluice::server::{ServerState, serve};
use sluice::store::{RepoState, RepoStatus};
use sluice::{Config, Sluice};
use sluice_devnet::{AccountSpec, AccountStatus, Devnet, DevnetOptions};
use sluice_testkit as testkit;

/// Every backfill and request ends well within these.
const RUN_LIMIT: Duration = Duration::from_secs(120);
const REQUEST_LIMIT: Duration = Duration::from_secs(30);

const POST: &str = "app.bsky.feed.post";
const LIKE: &str = "app.bsky.feed.like";
const FOLLOW: &str = "app.bsky.graph.follow";

/// A backfilled devnet served by sluice.
struct Setup {
    net: Devnet,
    sluice: Sluice,
    http: reqwest::Client,
    /// sluice's base URL.
    base: String,
    _state: Arc<ServerState>,
    /// The populated repos (all synced); the first one also holds `post`.
    dids: Vec<String>,
    /// Accounts gone before the backfill, with their status.
    gone: Vec<(String, AccountStatus)>,
    /// at-uri of a post of `dids[0]` that `dids[1]` and `dids[2]` like.
    post: String,
    /// The identity cache the handle checker reads DID documents through.
    identities: Arc<Resolver>,
    _dir: tempfile::TempDir,
}

/// A status answer and its JSON.
type Answer = (u16, Value);

/// A refused call: method, query, and the parameter its message must name.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

impl Setup {
    async fn get(&self, url: String, query: &[(&str, &str)]) -> Answer {
        let res = self.http.get(url).query(query).send().await.expect("request answered");
        let status = res.status().as_u16();
        (status, res.json().await.expect("a JSON answer"))
    }

    /// sluice's answer to `method`.
    async fn sluice(&self, method: &str, query: &[(&str, &str)]) -> Answer {
        self.get(format!("{}/xrpc/{method}", self.base), query).await
    }

    /// The answer of `did`'s PDS to `method`.
    async fn pds(&self, did: &str, method: &str, query: &[(&str, &str)]) -> Answer {
        let host = self.net.pds_of(did).expect("a devnet account");
        self.pds_at(host, method, query).await
    }

    /// The answer of PDS host `host` to `method`.
    async fn pds_at(&self, host: usize, method: &str, query: &[(&str, &str)]) -> Answer {
        self.get(format!("{}/xrpc/{method}", self.net.pds_urls()[host]), query).await
    }

    /// Waits until the handle checker has a verdict on `did`'s handle `handle`; returns it.
    async fn checked(&self, did: &str, handle: &str) -> bool {
        let deadline = std::time::Instant::now() + RUN_LIMIT;
        loop {
            let state = self.sluice.store().repos().state(did).unwrap().unwrap();
            if let (Some(h), Some(ok)) = (&state.handle, state.handle_ok)
                && h == handle
            {
                return ok;
            }
            assert!(std::time::Instant::now() < deadline, "no verdict on {did}'s handle {handle}: {state:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// sluice's 200 answer to `method`.
    async fn ok(&self, method: &str, query: &[(&str, &str)]) -> Value {
        let (status, body) = self.sluice(method, query).await;
        assert_eq!(status, 200, "{method} {query:?}: {body}");
        body
    }

    /// The collections `did`'s PDS holds records in.
    fn collections(&self, did: &str) -> BTreeSet<String> {
        self.net.records(did).into_keys().map(|(c, _)| c).collect()
    }
}

async fn setup() -> Setup {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let dids = net.populate(6, 40, 21).await;
    let post_cid = net
        .put_record(
            &dids[0],
            POST,
            "3kalicepost22",
            json!({"$type": POST, "text": "like me", "createdAt": "2026-01-01T00:00:00.000Z"}),
        )
        .unwrap();
    let post = format!("at://{}/{POST}/3kalicepost22", dids[0]);
    for (i, liker) in dids[1..3].iter().enumerate() {
        let like =
            json!({"$type": LIKE, "subject": {"uri": post, "cid": post_cid}, "createdAt": "2026-01-01T00:00:01.000Z"});
        net.put_record(liker, LIKE, &format!("3klikeofpost{i}"), like).unwrap();
    }
    net.put_record(
        &dids[0],
        "app.bsky.actor.profile",
        "self",
        json!({"$type": "app.bsky.actor.profile", "displayName": "Alice"}),
    )
    .unwrap();
    net.put_record(
        &dids[0],
        "xyz.statusphere.status",
        "3kstatus00001",
        json!({"$type": "xyz.statusphere.status", "status": "🦀", "createdAt": "2026-01-01T00:00:00.000Z"}),
    )
    .unwrap();
    let statuses =
        [AccountStatus::Deactivated, AccountStatus::Takendown, AccountStatus::Suspended, AccountStatus::Deleted];
    let gone: Vec<(String, AccountStatus)> = statuses
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let did = net.create_account(AccountSpec { seed: 700 + i as u64, pds: i, ..Default::default() });
            net.put_record(
                &did,
                POST,
                "3kgonepost001",
                json!({"$type": POST, "text": "gone", "createdAt": "2026-01-01T00:00:00.000Z"}),
            )
            .unwrap();
            net.set_status(&did, *st);
            (did, *st)
        })
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::default();
    c.storage.path = dir.path().join("data");
    testkit::on_devnet(&mut c, &net);
    let sluice = testkit::sluice_full(&c);
    let backfill = Backfill::new(sluice.pipeline().clone(), &c);
    tokio::time::timeout(RUN_LIMIT, backfill.run(RunMode::UntilEmpty, true))
        .await
        .expect("backfill ended in time")
        .expect("backfill ran");

    // Handles are checked against the relay's resolveHandle, as `sluice run --devnet` does.
    let handles =
        HandleResolver::new(Some(&net.relay_url()), REQUEST_LIMIT, &sluice::http::AddressPolicy::loopback()).unwrap();
    let identities = backfill.resolver().clone();
    let checker = Arc::new(HandleChecker::new(sluice.store().clone(), identities.clone(), handles, 1000));
    tokio::spawn(checker.run(tokio_util::sync::CancellationToken::new()));
    // Its one-time pass over older states saves a cursor; the tests compare cursors after it.
    testkit::wait_until("the handle checker's first pass to end", || {
        sluice.store().cursors().get(sluice::handles::QUEUE_OLD_CURSOR).unwrap().as_deref() == Some("done")
    })
    .await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(ServerState::new(sluice.pipeline().clone(), c));
    tokio::spawn(serve(listener, state.clone()));
    let http = reqwest::Client::builder().no_proxy().timeout(REQUEST_LIMIT).build().unwrap();
    Setup { net, sluice, http, base, _state: state, dids, gone, post, identities, _dir: dir }
}

/// Pages through `collection` of `did` on sluice and on its PDS with the same cursors, checks
/// every page is the same, and returns sluice's records.
async fn walk_pages(s: &Setup, did: &str, collection: &str, limit: Option<usize>, reverse: bool) -> Vec<Value> {
    let (limit_s, reverse_s) = (limit.map(|l| l.to_string()), reverse.to_string());
    let mut cursor: Option<String> = None;
    let mut all = Vec::new();
    for _ in 0..1000 {
        let mut q = vec![("repo", did), ("collection", collection), ("reverse", reverse_s.as_str())];
        q.extend(limit_s.as_deref().map(|l| ("limit", l)));
        q.extend(cursor.as_deref().map(|c| ("cursor", c)));
        let ours = s.ok("com.atproto.repo.listRecords", &q).await;
        let (status, theirs) = s.pds(did, "com.atproto.repo.listRecords", &q).await;
        assert_eq!(status, 200);
        let at = format!("{did} {collection} limit {limit:?} reverse {reverse} cursor {cursor:?}");
        assert_eq!(ours["records"], theirs["records"], "{at}: the same page as the PDS");
        let records = ours["records"].as_array().unwrap().clone();
        assert!(records.len() <= limit.unwrap_or(50), "{at}: at most limit records");
        let last_rkey = records.last().map(|r| r["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string());
        all.extend(records);
        match (ours.get("cursor"), theirs.get("cursor")) {
            (Some(a), Some(b)) => assert_eq!(a, b, "{at}: the PDS's cursor"),
            // The reference PDS gives the last rkey of every non-empty page; the devnet only
            // when more follow. After sluice's last page comes an empty one without a cursor.
            (Some(a), None) => {
                assert_eq!(a.as_str(), last_rkey.as_deref(), "{at}: the cursor is the last rkey");
                let mut q = q.clone();
                q.retain(|(k, _)| *k != "cursor");
                q.push(("cursor", a.as_str().unwrap()));
                let end = s.ok("com.atproto.repo.listRecords", &q).await;
                assert_eq!(end, json!({"records": []}), "{at}: nothing after the last page");
                return all;
            }
            (None, None) => {
                assert!(last_rkey.is_none(), "{at}: only an empty page has no cursor");
                return all;
            }
            (None, Some(_)) => panic!("{at}: sluice ended before the PDS"),
        }
        cursor = ours["cursor"].as_str().map(str::to_string);
    }
    panic!("listRecords pages never end for {did} {collection}");
}

/// What `did`'s PDS holds in `collection` as listRecords items, rkeys ascending.
fn expected_records(s: &Setup, did: &str, collection: &str) -> Vec<Value> {
    let records = s.net.records(did).into_iter().filter(|((c, _), _)| c == collection);
    records
        .map(|((c, r), (cid, cbor))| {
            json!({"uri": format!("at://{did}/{c}/{r}"), "cid": cid, "value": cbor_to_json(&cbor).unwrap()})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_their_pages_are_what_the_pds_serves() {
    let s = setup().await;
    for did in &s.dids {
        let collections = s.collections(did);
        let described = s.ok("com.atproto.repo.describeRepo", &[("repo", did)]).await;
        assert_eq!(described["collections"], json!(collections), "describeRepo lists the stored collections");
        let (_, on_pds) = s.pds(did, "com.atproto.repo.describeRepo", &[("repo", did)]).await;
        assert_eq!(
            (described["did"].as_str(), &described["handle"]),
            (Some(did.as_str()), &on_pds["handle"]),
            "the handle the DID document claims"
        );
        assert_eq!(described["didDoc"]["id"], json!(did));
        for collection in &collections {
            let mut want = expected_records(&s, did, collection);
            for limit in [None, Some(3), Some(7), Some(100)] {
                assert_eq!(
                    walk_pages(&s, did, collection, limit, true).await,
                    want,
                    "{did} {collection} ascending, limit {limit:?}"
                );
            }
            want.reverse();
            for limit in [None, Some(2), Some(100)] {
                assert_eq!(
                    walk_pages(&s, did, collection, limit, false).await,
                    want,
                    "{did} {collection} descending, limit {limit:?}"
                );
            }
        }
        // Cursors that are no stored rkey page from where they fall.
        for cursor in ["2a", "3l", "3kzzzzzzzzzz", "zzz"] {
            for reverse in ["true", "false"] {
                let q = [
                    ("repo", did.as_str()),
                    ("collection", POST),
                    ("cursor", cursor),
                    ("reverse", reverse),
                    ("limit", "5"),
                ];
                let (ours, theirs) = (
                    s.ok("com.atproto.repo.listRecords", &q).await,
                    s.pds(did, "com.atproto.repo.listRecords", &q).await.1,
                );
                assert_eq!(ours["records"], theirs["records"], "cursor {cursor} reverse {reverse}");
            }
        }
    }
    assert!(
        s.collections(&s.dids[0]).len() >= 4,
        "the first repo holds posts, likes or follows, a profile and a status"
    );
    assert_eq!(walk_pages(&s, &s.dids[0], "app.bsky.actor.profile", Some(1), false).await.len(), 1);
    // A collection the repo does not hold is an empty page, as on the PDS.
    assert_eq!(walk_pages(&s, &s.dids[0], "com.example.none", Some(5), false).await, Vec::<Value>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_record_is_the_pds_record_and_checks_its_cid() {
    let s = setup().await;
    let mut checked = 0;
    for did in &s.dids {
        for ((collection, rkey), (cid, _)) in s.net.records(did) {
            let q = [("repo", did.as_str()), ("collection", collection.as_str()), ("rkey", rkey.as_str())];
            let ours = s.ok("com.atproto.repo.getRecord", &q).await;
            let (status, theirs) = s.pds(did, "com.atproto.repo.getRecord", &q).await;
            assert_eq!((status, &ours), (200, &theirs), "{did} {collection} {rkey}");
            let with_cid = [q[0], q[1], q[2], ("cid", cid.as_str())];
            assert_eq!(s.ok("com.atproto.repo.getRecord", &with_cid).await, theirs, "the stored version's cid matches");
            checked += 1;
        }
    }
    assert!(checked > 200, "{checked} records checked");

    // A missing record, and a stored one asked at another version.
    let did = s.dids[0].as_str();
    let (status, body) =
        s.sluice("com.atproto.repo.getRecord", &[("repo", did), ("collection", POST), ("rkey", "3knotthere000")]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("RecordNotFound")), "{body}");
    assert!(body["message"].as_str().unwrap().contains(&format!("at://{did}/{POST}/3knotthere000")));
    let other_cid = s.net.records(&s.dids[1]).into_values().next().unwrap().0;
    let (status, body) = s
        .sluice(
            "com.atproto.repo.getRecord",
            &[("repo", did), ("collection", POST), ("rkey", "3kalicepost22"), ("cid", &other_cid)],
        )
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("RecordNotFound")), "another version: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repo_listings_and_statuses_follow_what_sluice_indexes() {
    let s = setup().await;
    let store = s.sluice.store();
    let synced: BTreeSet<String> = s.dids.iter().cloned().collect();
    for limit in [None, Some("1"), Some("2"), Some("5"), Some("1000")] {
        let listed = list_all_repos(&s, limit).await;
        let dids: Vec<&str> = listed.iter().map(|r| r["did"].as_str().unwrap()).collect();
        assert_eq!(dids.iter().copied().collect::<BTreeSet<_>>().len(), dids.len(), "limit {limit:?}: every repo once");
        assert_eq!(
            dids.iter().map(|d| d.to_string()).collect::<BTreeSet<_>>(),
            synced,
            "limit {limit:?}: the synced repos, not the gone ones sluice never fetched"
        );
        for r in &listed {
            let did = r["did"].as_str().unwrap();
            let latest = s.pds(did, "com.atproto.sync.getLatestCommit", &[("did", did)]).await.1;
            assert_eq!(
                r,
                &json!({"did": did, "head": latest["cid"], "rev": latest["rev"], "active": true}),
                "head is the commit CID the PDS gives"
            );
        }
    }

    // getRepoStatus answers as the PDS does, for active and gone accounts alike.
    for did in s.dids.iter().chain(s.gone.iter().map(|(d, _)| d)) {
        let ours = s.sluice("com.atproto.sync.getRepoStatus", &[("did", did)]).await;
        let theirs = s.pds(did, "com.atproto.sync.getRepoStatus", &[("did", did)]).await;
        assert_eq!(ours, theirs, "getRepoStatus of {did}");
    }
    let statuses: Vec<_> = s.gone.iter().map(|(d, _)| store.repos().state(d).unwrap().map(|st| st.status)).collect();
    assert_eq!(statuses, vec![Some(RepoStatus::Gone); 4]);

    // A synced repo taken down afterwards (as an #account event would): listed inactive.
    let did = s.dids[3].clone();
    let state = store.repos().state(&did).unwrap().unwrap();
    store
        .set_states(
            &[(did.clone(), RepoState { status: RepoStatus::Gone, error: Some("takendown".into()), ..state.clone() })],
            None,
        )
        .unwrap();
    let listed = list_all_repos(&s, Some("4")).await;
    let entry = listed.iter().find(|r| r["did"] == json!(did)).expect("still listed");
    assert_eq!(
        entry,
        &json!({"did": did, "head": state.commit, "rev": state.rev, "active": false, "status": "takendown"})
    );
    assert_eq!(
        s.ok("com.atproto.sync.getRepoStatus", &[("did", &did)]).await,
        json!({"did": did, "active": false, "status": "takendown"})
    );
    let (status, body) = s.sluice("com.atproto.repo.listRecords", &[("repo", &did), ("collection", POST)]).await;
    assert_eq!(
        (status, body),
        (400, json!({"error": "InvalidRequest", "message": format!("Could not find repo: {did}")})),
        "as the reference PDS answers"
    );
    assert_eq!(s.sluice(DESCRIBE, &[("repo", &did)]).await.1["error"], json!("RepoTakendown"));

    // A repo indexed before sluice kept commit CIDs (a version 1 state) gives its MST root
    // until its next commit.
    let did = s.dids[4].clone();
    let state = store.repos().state(&did).unwrap().unwrap();
    store.set_states(&[(did.clone(), RepoState { commit: None, ..state.clone() })], None).unwrap();
    let listed = list_all_repos(&s, None).await;
    let entry = listed.iter().find(|r| r["did"] == json!(did)).expect("listed");
    assert_eq!(entry["head"], json!(state.data));
}

/// Every listRepos page with `limit`.
async fn list_all_repos(s: &Setup, limit: Option<&str>) -> Vec<Value> {
    let (mut out, mut cursor) = (Vec::new(), None::<String>);
    for _ in 0..100 {
        let mut q: Vec<(&str, &str)> = limit.map(|l| ("limit", l)).into_iter().collect();
        q.extend(cursor.as_deref().map(|c| ("cursor", c)));
        let page = s.ok("com.atproto.sync.listRepos", &q).await;
        let repos = page["repos"].as_array().unwrap();
        assert!(repos.len() <= limit.map_or(500, |l| l.parse().unwrap()));
        out.extend(repos.iter().cloned());
        match page["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
    panic!("listRepos pages never end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repo_state_and_stats_show_the_store() {
    let s = setup().await;
    let store = s.sluice.store();
    let did = &s.dids[0];
    let state = s.ok("dev.sluice.getRepoState", &[("did", did)]).await;
    assert_eq!(state["status"], "synced");
    assert_eq!(state["rev"].as_str(), s.net.rev(did).as_deref());
    assert_eq!(state["records"], json!(s.net.records(did).len()));
    assert_eq!(state["data"].as_str(), store.repos().state(did).unwrap().unwrap().data.as_deref());
    assert!(state["updatedAt"].as_str().unwrap().ends_with('Z'));
    let (gone, st) = &s.gone[0];
    assert_eq!(*st, AccountStatus::Deactivated);
    let state = s.ok("dev.sluice.getRepoState", &[("did", gone)]).await;
    assert_eq!(
        (state["status"].as_str(), state["error"].as_str(), &state["records"]),
        (Some("gone"), Some("deactivated"), &json!(0))
    );

    let stats = s.ok("dev.sluice.getStats", &[]).await;
    assert_eq!(stats["repos"]["synced"], json!(s.dids.len()));
    assert_eq!(stats["repos"]["gone"], json!(s.gone.len()));
    assert_eq!(stats["repos"]["pending"], json!(0));
    let mut per_collection: BTreeMap<String, u64> = BTreeMap::new();
    for did in &s.dids {
        for (collection, _) in s.net.records(did).into_keys() {
            *per_collection.entry(collection).or_default() += 1;
        }
    }
    assert_eq!(stats["records"], json!(per_collection));
    let last = store.next_event_id() - 1;
    assert_eq!(stats["events"], json!({"last": last, "next": last + 1}));
    assert!(last >= per_collection.values().sum::<u64>(), "an event per record at least");
    let services: Vec<String> = store.cursors().all().unwrap().into_keys().collect();
    assert!(!services.is_empty(), "the crawl saved a cursor");
    assert_eq!(stats["cursors"].as_object().unwrap().keys().cloned().collect::<Vec<_>>(), services);
}

/// Every link to `subject` (from `collection`, when given), page by page with `limit`.
async fn all_backlinks(
    s: &Setup,
    subject: &str,
    collection: Option<&str>,
    limit: &str,
) -> Vec<(String, String, String)> {
    let (mut out, mut cursor) = (Vec::new(), None::<String>);
    for _ in 0..1000 {
        let mut q = vec![("subject", subject), ("limit", limit)];
        q.extend(collection.map(|c| ("collection", c)));
        q.extend(cursor.as_deref().map(|c| ("cursor", c)));
        let page = s.ok("dev.sluice.getBacklinks", &q).await;
        assert_eq!(page["subject"], json!(subject));
        let links = page["links"].as_array().unwrap();
        assert!(links.len() <= limit.parse().unwrap());
        for l in links {
            let (c, d, r) =
                (l["collection"].as_str().unwrap(), l["did"].as_str().unwrap(), l["rkey"].as_str().unwrap());
            assert_eq!(l["uri"], json!(format!("at://{d}/{c}/{r}")));
            out.push((c.to_string(), d.to_string(), r.to_string()));
        }
        match page["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
    panic!("backlink pages never end");
}

/// What the PDS hosts hold: subject -> sorted (collection, did, rkey) of every like and follow.
fn expected_backlinks(s: &Setup) -> BTreeMap<String, Vec<(String, String, String)>> {
    let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for did in &s.dids {
        for ((collection, rkey), (_, cbor)) in s.net.records(did) {
            let value = cbor_to_json(&cbor).unwrap();
            let subject = match collection.as_str() {
                LIKE => value["subject"]["uri"].as_str().unwrap().to_string(),
                FOLLOW => value["subject"].as_str().unwrap().to_string(),
                _ => continue,
            };
            out.entry(subject).or_default().push((collection, did.clone(), rkey));
        }
    }
    out.values_mut().for_each(|v| v.sort());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlinks_list_the_records_pointing_at_a_subject() {
    let s = setup().await;
    let likers: Vec<(String, String, String)> =
        (0..2).map(|i| (LIKE.to_string(), s.dids[1 + i].clone(), format!("3klikeofpost{i}"))).collect();
    let mut want = likers.clone();
    want.sort();
    assert_eq!(all_backlinks(&s, &s.post, None, "50").await, want, "the post's likers");
    assert_eq!(all_backlinks(&s, &s.post, Some(LIKE), "1").await, want, "one page each");
    assert_eq!(all_backlinks(&s, &s.post, Some(FOLLOW), "10").await, vec![], "no follow points at a post");
    let page = s.ok("dev.sluice.getBacklinks", &[("subject", &s.post), ("limit", "2")]).await;
    assert!(page.get("cursor").is_none(), "no cursor when nothing follows: {page}");

    let expected = expected_backlinks(&s);
    let follows: Vec<_> = expected.iter().filter(|(subject, _)| subject.starts_with("did:")).collect();
    assert!(follows.len() >= 3 && follows.iter().any(|(_, l)| l.len() >= 2), "followed DIDs: {follows:?}");
    for (subject, links) in &follows {
        for (collection, limit) in [(None, "1"), (None, "2"), (Some(FOLLOW), "100"), (Some(LIKE), "3")] {
            let want: Vec<_> = links.iter().filter(|(c, _, _)| collection.is_none_or(|w| w == c)).cloned().collect();
            assert_eq!(
                &all_backlinks(&s, subject, collection, limit).await,
                &want,
                "{subject} {collection:?} limit {limit}"
            );
        }
    }
    let likes: Vec<_> = expected.iter().filter(|(subject, _)| subject.starts_with("at://")).take(20).collect();
    assert!(!likes.is_empty());
    for (subject, links) in likes {
        assert_eq!(&all_backlinks(&s, subject, None, "2").await, links, "{subject}");
    }
    assert_eq!(
        all_backlinks(&s, "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", None, "5").await,
        vec![],
        "nothing points at an unknown DID"
    );
}

/// Asserts a 400 `error` answer whose message names `param`.
async fn refused(s: &Setup, method: &str, query: &[(&str, &str)], error: &str, param: &str) {
    let (status, body) = s.sluice(method, query).await;
    assert_eq!((status, body["error"].as_str()), (400, Some(error)), "{method} {query:?}: {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(param), "{method} {query:?}: the message names {param}: {message}");
    assert!(!message.starts_with("Error"), "{method} {query:?}: the message is the reason alone: {message}");
}

const GET: &str = "com.atproto.repo.getRecord";
const LIST: &str = "com.atproto.repo.listRecords";
const DESCRIBE: &str = "com.atproto.repo.describeRepo";

/// getRecord's query.
fn rec<'a>(repo: &'a str, collection: &'a str, rkey: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("repo", repo), ("collection", collection), ("rkey", rkey)]
}

/// Calls with a bad parameter, `did` being an indexed repo's.
fn bad_parameter_cases<'a>(did: &'a str, like_cursor: &'a str) -> Vec<Case<'a>> {
    let (get, list, describe) = (GET, LIST, DESCRIBE);
    vec![
        (get, vec![("collection", POST), ("rkey", "3kalicepost22")], "repo"),
        (get, rec("not a did", POST, "3kalicepost22"), "repo"),
        (get, rec("did:nope", POST, "3kalicepost22"), "repo"),
        (get, rec("at://alice.test", POST, "3kalicepost22"), "repo"),
        (get, vec![("repo", did), ("rkey", "3kalicepost22")], "collection"),
        (get, rec(did, "not-an-nsid", "3kalicepost22"), "collection"),
        (get, vec![("repo", did), ("collection", POST)], "rkey"),
        (get, rec(did, POST, "bad/rkey"), "rkey"),
        (get, rec(did, POST, ".."), "rkey"),
        (get, vec![("repo", did), ("collection", POST), ("rkey", "3kalicepost22"), ("cid", "notacid")], "cid"),
        (list, vec![("collection", POST)], "repo"),
        (list, vec![("repo", "not a did"), ("collection", POST)], "repo"),
        (list, vec![("repo", did)], "collection"),
        (list, vec![("repo", did), ("collection", "nope")], "collection"),
        (list, vec![("repo", did), ("collection", POST), ("limit", "0")], "limit"),
        (list, vec![("repo", did), ("collection", POST), ("limit", "101")], "limit"),
        (list, vec![("repo", did), ("collection", POST), ("limit", "ten")], "limit"),
        (list, vec![("repo", did), ("collection", POST), ("limit", "-1")], "limit"),
        (list, vec![("repo", did), ("collection", POST), ("reverse", "yes")], "reverse"),
        (list, vec![("repo", did), ("collection", POST), ("reverse", "1")], "reverse"),
        (list, vec![("repo", did), ("collection", POST), ("limit", "1"), ("limit", "2")], "limit"),
        (list, vec![("repo", did), ("repo", did), ("collection", POST)], "repo"),
        (describe, vec![], "repo"),
        (describe, vec![("repo", "at://x")], "repo"),
        ("com.atproto.sync.listRepos", vec![("limit", "0")], "limit"),
        ("com.atproto.sync.listRepos", vec![("limit", "1001")], "limit"),
        ("com.atproto.sync.getRepoStatus", vec![], "did"),
        ("com.atproto.sync.getRepoStatus", vec![("did", "alice.test")], "did"),
        ("dev.sluice.getRepoState", vec![], "did"),
        ("dev.sluice.getRepoState", vec![("did", "did:")], "did"),
        ("dev.sluice.getBacklinks", vec![], "subject"),
        ("dev.sluice.getBacklinks", vec![("subject", "nope")], "subject"),
        ("dev.sluice.getBacklinks", vec![("subject", did), ("collection", "x")], "collection"),
        ("dev.sluice.getBacklinks", vec![("subject", did), ("limit", "0")], "limit"),
        ("dev.sluice.getBacklinks", vec![("subject", did), ("limit", "101")], "limit"),
        ("dev.sluice.getBacklinks", vec![("subject", did), ("cursor", "garbage")], "cursor"),
        ("dev.sluice.getBacklinks", vec![("subject", did), ("collection", FOLLOW), ("cursor", like_cursor)], "cursor"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_and_unknown_repos_are_refused() {
    let s = setup().await;
    let did = s.dids[0].as_str();
    let like_cursor = format!("{LIKE}/{did}/3kabc");
    for (method, query, param) in &bad_parameter_cases(did, &like_cursor) {
        refused(&s, method, query, "InvalidRequest", param).await;
    }
    let (get, list, describe) = (GET, LIST, DESCRIBE);

    let unknown = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
    for (method, query) in [
        ("com.atproto.sync.getRepoStatus", vec![("did", unknown)]),
        ("dev.sluice.getRepoState", vec![("did", unknown)]),
    ] {
        refused(&s, method, &query, "RepoNotFound", unknown).await;
    }

    // Unknown DIDs and handles, and gone repos, get what the PDS answers, method by method:
    // status, error name and message.
    let mut repos: Vec<(String, usize)> = vec![(unknown.to_string(), 0), ("nobody.test".to_string(), 1)];
    repos.extend(s.gone.iter().map(|(did, _)| (did.clone(), s.net.pds_of(did).unwrap())));
    for (repo, host) in &repos {
        for (method, query) in [
            (get, rec(repo, POST, "3kgonepost001")),
            (list, vec![("repo", repo.as_str()), ("collection", POST)]),
            (describe, vec![("repo", repo.as_str())]),
        ] {
            let ours = s.sluice(method, &query).await;
            assert_eq!(ours, s.pds_at(*host, method, &query).await, "{method} {query:?}");
            assert_eq!(ours.0, 400, "{method} {query:?}");
        }
    }
}

/// describeRepo's fields that sluice and a PDS both know (sluice keeps no full DID document).
fn described(answer: &Answer) -> Value {
    let (status, body) = answer;
    json!({
        "status": status,
        "handle": body["handle"],
        "did": body["did"],
        "collections": body["collections"],
        "handleIsCorrect": body["handleIsCorrect"]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_name_repos_as_on_the_pds_once_they_resolve_back() {
    let s = setup().await;
    let (did, other) = (s.dids[0].clone(), s.dids[1].clone());
    let handle = s.pds(&did, DESCRIBE, &[("repo", &did)]).await.1["handle"].as_str().unwrap().to_string();
    assert!(s.checked(&did, &handle).await, "{handle} resolves back to {did}");

    // By handle, each method answers as the PDS does (any case).
    for repo in [handle.clone(), handle.to_uppercase()] {
        let (rkey, list_q) = ("3kalicepost22", vec![("repo", repo.as_str()), ("collection", POST)]);
        assert_eq!(
            s.sluice(GET, &rec(&repo, POST, rkey)).await,
            s.pds(&did, GET, &rec(&repo, POST, rkey)).await,
            "getRecord by {repo}"
        );
        // (The devnet, unlike the reference PDS and sluice, gives no cursor on a last page.)
        let (ours, theirs) = (s.sluice(LIST, &list_q).await, s.pds(&did, LIST, &list_q).await);
        assert_eq!((ours.0, &ours.1["records"]), (theirs.0, &theirs.1["records"]), "listRecords by {repo}");
        let ours = s.sluice(DESCRIBE, &[("repo", &repo)]).await;
        assert_eq!(
            described(&ours),
            described(&s.pds(&did, DESCRIBE, &[("repo", &repo)]).await),
            "describeRepo by {repo}"
        );
        assert_eq!(ours.1["handleIsCorrect"], json!(true));
    }
    let by_handle = format!("at://{handle}/{POST}/3kalicepost22");
    assert_eq!(
        all_backlinks(&s, &by_handle, None, "1").await,
        all_backlinks(&s, &s.post, None, "1").await,
        "a subject named by handle"
    );

    // A handle the document claims but that resolves elsewhere is not the repo's: describeRepo
    // says so as the PDS does, and the handle names nothing here. (The PDS still answers its
    // own account by that handle: it trusts its database; an indexer cannot.)
    s.net.set_handle(&other, "imposter.test", false);
    take_identity_frame(&s, &other, "imposter.test");
    assert!(!s.checked(&other, "imposter.test").await);
    let ours = s.sluice(DESCRIBE, &[("repo", &other)]).await;
    assert_eq!(described(&ours), described(&s.pds(&other, DESCRIBE, &[("repo", &other)]).await));
    assert_eq!(ours.1["handleIsCorrect"], json!(false));
    let (status, body) = s.sluice(LIST, &[("repo", "imposter.test"), ("collection", POST)]).await;
    assert_eq!((status, body["message"].as_str()), (400, Some("Could not find repo: imposter.test")));

    // Moved to a handle that resolves back: found by the new one, not by the old one.
    let old = s.pds(&other, DESCRIBE, &[("repo", &other)]).await.1["handle"].as_str().unwrap().to_string();
    s.net.set_handle(&other, "moved.test", true);
    take_identity_frame(&s, &other, "moved.test");
    assert!(s.checked(&other, "moved.test").await);
    let ours = s.sluice(DESCRIBE, &[("repo", "moved.test")]).await;
    assert_eq!(described(&ours), described(&s.pds(&other, DESCRIBE, &[("repo", "moved.test")]).await));
    assert_eq!((ours.1["did"].as_str(), ours.1["handleIsCorrect"].as_bool()), (Some(other.as_str()), Some(true)));
    assert_ne!(old, "moved.test");
    assert_eq!(
        s.sluice(DESCRIBE, &[("repo", &old)]).await.1["error"],
        json!("RepoNotFound"),
        "the old handle names nothing"
    );
}

/// What an `#identity` frame for `did` does to the store and the identity cache (this test
/// runs no firehose; `firehose_live` checks that the frame does this).
fn take_identity_frame(s: &Setup, did: &str, handle: &str) {
    s.identities.invalidate(did);
    let store = s.sluice.store();
    let state = store.repos().state(did).unwrap().unwrap();
    store.set_states(&[(did.to_string(), RepoState { handle: Some(handle.to_string()), ..state })], None).unwrap();
    store.handles().request_check(did).unwrap();
}
