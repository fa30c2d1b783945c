//! `#account` frames through the real path: the devnet's relay firehose, sluice's backfill and
//! live ingestion in this process, and its XRPC server. For each status the protocol names
//! (takendown, suspended, deactivated, deleted; the relay's own desynchronized and throttled;
//! active again), the repo's stored state, what getRecord, listRecords, describeRepo and
//! getRepoStatus answer, and the account events: exactly one per change, none for a frame that
//! changes nothing, each with the fields DESIGN.md gives it on the wire.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::backfill::{Backfill, RunMode};
use sluice::firehose::Firehose;
use sluice::store::{Action, RepoStatus, StoredEvent};
use sluice::{Config, Filter, Sluice};
use sluice_devnet::{AccountSpec, AccountStatus, Devnet, DevnetOptions};
use sluice_testkit as testkit;
use tokio_util::sync::CancellationToken;

/// Every wait in these tests ends well within this.
const LIMIT: Duration = Duration::from_secs(60);

const POST: &str = "app.bsky.feed.post";

/// sluice running backfill, live ingestion and its server against a devnet.
struct Running {
    net: Devnet,
    sluice: Sluice,
    backfill: Arc<Backfill>,
    firehose: Arc<Firehose>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    http: reqwest::Client,
    /// sluice's server: `127.0.0.1:PORT`.
    addr: String,
    _dir: tempfile::TempDir,
}

async fn start(net: Devnet) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::default();
    c.storage.path = dir.path().join("data");
    c.network.relay = net.relay_url();
    c.network.plc = net.plc_url();
    c.network.handle_resolver = Some(net.relay_url());
    c.network.allow_loopback();
    (c.backfill.retry_min_ms, c.backfill.retry_max_ms, c.backfill.progress_secs) = (50, 200, 1);
    let filter = Filter::from_toml("mode = \"full\"\n", "test.toml").unwrap();
    let sluice = Sluice::builder().config(c.clone()).filter(filter).open().unwrap();
    let backfill = Backfill::new(sluice.pipeline().clone(), &c);
    let firehose = sluice::service::firehose_beside(&sluice, &c, &backfill).unwrap();
    let stop = CancellationToken::new();
    let (f, s) = (firehose.clone(), stop.clone());
    let live = tokio::spawn(async move { f.run(s).await.expect("live ingestion runs") });
    let b = backfill.clone();
    let backfilling = tokio::spawn(async move { b.run(RunMode::Forever, true).await.expect("backfill runs") });
    let (base, _) = testkit::server::serving(&sluice).await;
    let running = Running {
        net,
        sluice,
        backfill,
        firehose,
        stop,
        tasks: vec![live, backfilling],
        http: reqwest::Client::builder().no_proxy().timeout(LIMIT).build().unwrap(),
        addr: base.trim_start_matches("http://").to_string(),
        _dir: dir,
    };
    wait("the firehose to connect", || running.net.request_count("com.atproto.sync.subscribeRepos") >= 1).await;
    running
}

async fn wait(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An account event's fields: (active, status).
type Account = (bool, Option<String>);

fn active() -> Account {
    (true, None)
}

fn inactive(status: &str) -> Account {
    (false, Some(status.to_string()))
}

impl Running {
    async fn stop(self) {
        self.backfill.stop();
        self.stop.cancel();
        for task in self.tasks {
            tokio::time::timeout(LIMIT, task).await.expect("stops in time").expect("no panic");
        }
        self.net.shutdown().await;
    }

    fn status(&self, did: &str) -> Option<RepoStatus> {
        self.sluice.store().repos().state(did).unwrap().map(|s| s.status)
    }

    /// The stored repo state's status and reason.
    fn state(&self, did: &str) -> (RepoStatus, Option<String>) {
        let state = self.sluice.store().repos().state(did).unwrap().expect("a stored state");
        (state.status, state.error)
    }

    fn stored(&self, did: &str) -> BTreeMap<(String, String), String> {
        testkit::stored_cids(self.sluice.store(), did)
    }

    fn on_pds(&self, did: &str) -> BTreeMap<(String, String), String> {
        testkit::pds_cids(&self.net, did)
    }

    fn in_step(&self, did: &str) -> bool {
        testkit::in_step(self.sluice.store(), &self.net, did)
    }

    fn events(&self) -> Vec<(u64, StoredEvent)> {
        self.sluice.store().log().from(0, usize::MAX).unwrap()
    }

    /// `did`'s account events: (id, fields).
    fn account_events(&self, did: &str) -> Vec<(u64, Account)> {
        self.events()
            .into_iter()
            .filter_map(|(id, e)| match e {
                StoredEvent::Account(a) if a.did == did => Some((id, (a.active, a.status))),
                _ => None,
            })
            .collect()
    }

    /// `did`'s record events (action, rkey) after event `after`.
    fn record_events(&self, did: &str, after: u64) -> Vec<(Action, String)> {
        self.events()
            .into_iter()
            .filter_map(|(id, e)| match e {
                StoredEvent::Record(r) if id > after && r.did == did => Some((r.action, r.rkey.to_string())),
                _ => None,
            })
            .collect()
    }

    /// Makes `change` on the devnet, waits until sluice has handled every frame since and
    /// `settled` holds, and returns the events it added: all of them, and `did`'s account
    /// events among them.
    async fn step(
        &self,
        did: &str,
        change: impl FnOnce(&Devnet),
        settled: impl Fn(&Running) -> bool,
    ) -> (Vec<(u64, StoredEvent)>, Vec<Account>) {
        let before = self.sluice.store().next_event_id() - 1;
        change(&self.net);
        let seq = self.net.firehose_seq();
        wait("the frames to be handled", || self.firehose.safe_cursor() >= seq && settled(self)).await;
        let added: Vec<(u64, StoredEvent)> = self.events().into_iter().filter(|(id, _)| *id > before).collect();
        let accounts = added
            .iter()
            .filter_map(|(_, e)| match e {
                StoredEvent::Account(a) if a.did == did => Some((a.active, a.status.clone())),
                _ => None,
            })
            .collect();
        (added, accounts)
    }

    async fn get(&self, base: &str, method: &str, query: &[(&str, &str)]) -> (u16, Value) {
        let res = self.http.get(format!("{base}/xrpc/{method}")).query(query).send().await.expect("answered");
        let status = res.status().as_u16();
        (status, res.json().await.expect("a JSON answer"))
    }

    /// sluice's answer to `method`.
    async fn sluice(&self, method: &str, query: &[(&str, &str)]) -> (u16, Value) {
        self.get(&format!("http://{}", self.addr), method, query).await
    }

    /// The answer of `did`'s PDS to `method`.
    async fn pds(&self, did: &str, method: &str, query: &[(&str, &str)]) -> (u16, Value) {
        let pds = self.net.pds_urls()[self.net.pds_of(did).unwrap()].clone();
        self.get(&pds, method, query).await
    }

    /// What sluice's queries answer for `did` (whose post `rkey` it had) while its records may
    /// be read: the record, the listing, and an active status with the stored rev, as the PDS
    /// answers.
    async fn assert_readable(&self, did: &str, rkey: &str) {
        let (status, record) = self.sluice("com.atproto.repo.getRecord", &rec(did, rkey)).await;
        assert_eq!(status, 200, "{record}");
        assert_eq!(record["uri"], json!(format!("at://{did}/{POST}/{rkey}")));
        assert_eq!(record["cid"].as_str(), self.on_pds(did).get(&(POST.into(), rkey.into())).map(String::as_str));
        let (status, listed) =
            self.sluice("com.atproto.repo.listRecords", &[("repo", did), ("collection", POST)]).await;
        assert_eq!(status, 200, "{listed}");
        assert_eq!(listed["records"].as_array().unwrap().len(), self.on_pds(did).len());
        let ours = self.sluice("com.atproto.sync.getRepoStatus", &[("did", did)]).await;
        let rev = self.sluice.store().repos().state(did).unwrap().unwrap().rev;
        assert_eq!(ours, (200, json!({"did": did, "active": true, "rev": rev})));
        assert_eq!(ours, self.pds(did, "com.atproto.sync.getRepoStatus", &[("did", did)]).await, "as its PDS");
    }

    /// What sluice's queries answer for `did` while its account is `status` (`deleted`: gone
    /// for good): no record or listing, as the reference PDS answers for any unreadable repo;
    /// describeRepo names the reason; getRepoStatus as the PDS answers it.
    async fn assert_unreadable(&self, did: &str, rkey: &str, status: &str) {
        assert_eq!(
            self.sluice("com.atproto.repo.getRecord", &rec(did, rkey)).await,
            (400, json!({"error": "InvalidRequest", "message": "Could not locate record"}))
        );
        assert_eq!(
            self.sluice("com.atproto.repo.listRecords", &[("repo", did), ("collection", POST)]).await,
            (400, json!({"error": "InvalidRequest", "message": format!("Could not find repo: {did}")}))
        );
        let described = self.sluice("com.atproto.repo.describeRepo", &[("repo", did)]).await;
        let reason = match status {
            "takendown" => "RepoTakendown",
            "suspended" => "RepoSuspended",
            "deactivated" => "RepoDeactivated",
            _ => "RepoNotFound",
        };
        assert_eq!((described.0, &described.1["error"]), (400, &json!(reason)), "{status}: {}", described.1);
        let ours = self.sluice("com.atproto.sync.getRepoStatus", &[("did", did)]).await;
        match status {
            "deleted" => assert_eq!((ours.0, &ours.1["error"]), (400, &json!("RepoNotFound")), "{}", ours.1),
            _ => assert_eq!(ours, (200, json!({"did": did, "active": false, "status": status}))),
        }
        assert_eq!(ours, self.pds(did, "com.atproto.sync.getRepoStatus", &[("did", did)]).await, "as its PDS");
    }

    /// Every event as the event stream (`subscribeEvents?cursor=0`) sends it, up to the last.
    async fn streamed(&self) -> Vec<Value> {
        let url = format!("ws://{}/xrpc/dev.sluice.subscribeEvents?cursor=0", self.addr);
        let mut socket = tokio_tungstenite::connect_async(url).await.expect("connects").0;
        let last = self.sluice.store().next_event_id() - 1;
        let mut out: Vec<Value> = Vec::new();
        while out.last().is_none_or(|e| e["id"].as_u64().unwrap() < last) {
            out.push(testkit::server::next_json(&mut socket).await.expect("the stream stays open"));
        }
        out
    }
}

fn rec<'a>(did: &'a str, rkey: &'a str) -> [(&'static str, &'a str); 3] {
    [("repo", did), ("collection", POST), ("rkey", rkey)]
}

fn post(text: &str) -> Value {
    json!({"$type": POST, "text": text, "createdAt": "2026-11-01T00:00:00.000Z"})
}

/// An account with `n` posts (`3l{seed:05}{i:06}`).
fn account(net: &Devnet, seed: u64, n: usize) -> String {
    let did = net.create_account(AccountSpec { seed, ..Default::default() });
    for i in 0..n {
        net.put_record(&did, POST, &format!("3l{seed:05}{i:06}"), post(&format!("post {i}"))).unwrap();
    }
    did
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_account_status_moves_the_state_the_queries_and_the_log_once() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let (did, other) = (account(&net, 81, 3), account(&net, 82, 2));
    let s = start(net).await;
    wait("the backfill", || s.in_step(&did) && s.in_step(&other)).await;
    let rkey = "3l00081000000";
    s.assert_readable(&did, rkey).await;
    let records = s.stored(&did);
    let gone = |s: &Running| s.status(&did) == Some(RepoStatus::Gone);
    let mut expected: Vec<Account> = Vec::new();

    // Taken down, suspended, deactivated: gone with the status as its reason, records kept
    // and unreadable; one event each, none for the same status twice.
    for (status, word) in [
        (AccountStatus::Takendown, "takendown"),
        (AccountStatus::Suspended, "suspended"),
        (AccountStatus::Takendown, "takendown"),
    ] {
        let (added, accounts) = s.step(&did, |net| net.set_status(&did, status), gone).await;
        assert_eq!(accounts, vec![inactive(word)], "{word}: one account event");
        assert_eq!(added.len(), 1, "{word}: nothing but the account event: {added:?}");
        assert_eq!(s.state(&did), (RepoStatus::Gone, Some(word.to_string())));
        assert_eq!(s.stored(&did), records, "{word}: the records are kept");
        assert_eq!(s.sluice.store().repo_count(RepoStatus::Gone), 1, "the counters follow the state");
        s.assert_unreadable(&did, rkey, word).await;
        expected.push(inactive(word));

        let (added, _) = s.step(&did, |net| net.set_status(&did, status), gone).await;
        assert!(added.is_empty(), "{word} again changes nothing and emits nothing: {added:?}");
    }

    // Active again: a backfill, whose diff finds nothing changed; one event.
    let (added, accounts) = s.step(&did, |net| net.set_status(&did, AccountStatus::Active), |s| s.in_step(&did)).await;
    assert_eq!((accounts, added.len()), (vec![active()], 1), "reactivated: one event, no record events: {added:?}");
    assert_eq!(s.state(&did), (RepoStatus::Synced, None));
    assert_eq!(s.sluice.store().repo_count(RepoStatus::Gone), 0);
    s.assert_readable(&did, rkey).await;
    expected.push(active());
    let (added, _) = s.step(&did, |net| net.set_status(&did, AccountStatus::Active), |s| s.in_step(&did)).await;
    assert!(added.is_empty(), "active while active emits nothing: {added:?}");

    // Deactivated, then active with a record written meanwhile: the backfill brings it in.
    let (_, accounts) = s.step(&did, |net| net.set_status(&did, AccountStatus::Deactivated), gone).await;
    assert_eq!(accounts, vec![inactive("deactivated")]);
    assert_eq!(s.state(&did), (RepoStatus::Gone, Some("deactivated".into())));
    s.assert_unreadable(&did, rkey, "deactivated").await;
    expected.push(inactive("deactivated"));
    let before = s.sluice.store().next_event_id() - 1;
    let (_, accounts) = s
        .step(
            &did,
            |net| {
                net.set_status(&did, AccountStatus::Active);
                net.put_record(&did, POST, "3lzzzzzzzzzz1", post("written on reactivation")).unwrap();
            },
            |s| s.in_step(&did),
        )
        .await;
    assert_eq!(accounts, vec![active()]);
    assert_eq!(s.record_events(&did, before), vec![(Action::Create, "3lzzzzzzzzzz1".into())], "the new record, once");
    s.assert_readable(&did, "3lzzzzzzzzzz1").await;
    expected.push(active());

    // Relay-side statuses about an account its PDS still serves: the event only; the repo
    // stays synced and readable.
    let state = s.sluice.store().repos().state(&did).unwrap().unwrap();
    for word in ["throttled", "desynchronized"] {
        let (added, accounts) = s.step(&did, |net| net.emit_relay_account(&did, false, Some(word)), |_| true).await;
        assert_eq!((accounts, added.len()), (vec![inactive(word)], 1), "{word}: the account event alone");
        let now = s.sluice.store().repos().state(&did).unwrap().unwrap();
        assert_eq!((now.status, &now.rev, &now.error), (RepoStatus::Synced, &state.rev, &None), "{word}");
        let theirs = s.pds(&did, "com.atproto.sync.getRepoStatus", &[("did", &did)]).await;
        assert_eq!(theirs.1["active"], json!(true), "the PDS still serves it");
        s.assert_readable(&did, rkey).await;
        expected.push(inactive(word));
    }
    // A live write still lands.
    let (added, _) = s
        .step(
            &did,
            |net| net.put_record(&did, POST, "3lzzzzzzzzzz2", post("after the relay's word")).map(drop).unwrap(),
            |s| s.in_step(&did),
        )
        .await;
    assert_eq!(added.len(), 1, "one record event: {added:?}");

    // Deleted: every record goes, each with a delete event, then the account event; the
    // repo is not found.
    let before = s.sluice.store().next_event_id() - 1;
    let (added, accounts) = s
        .step(&did, |net| net.set_status(&did, AccountStatus::Deleted), |s| gone(s) && s.stored(&did).is_empty())
        .await;
    assert_eq!(accounts, vec![inactive("deleted")]);
    let deletes = s.record_events(&did, before);
    let on_pds: Vec<(Action, String)> = s.on_pds(&did).into_keys().map(|(_, r)| (Action::Delete, r)).collect();
    assert_eq!(deletes, on_pds, "one delete event per record, in key order");
    assert!(matches!(added.last(), Some((_, StoredEvent::Account(_)))), "the account event comes last");
    assert_eq!(s.state(&did), (RepoStatus::Gone, Some("deleted".into())));
    s.assert_unreadable(&did, rkey, "deleted").await;
    expected.push(inactive("deleted"));
    let (added, _) = s.step(&did, |net| net.set_status(&did, AccountStatus::Deleted), |_| true).await;
    assert!(added.is_empty(), "deleted again emits nothing: {added:?}");

    // Active after a deletion: the repo is backfilled again, every record created once more.
    let before = s.sluice.store().next_event_id() - 1;
    let (_, accounts) = s.step(&did, |net| net.set_status(&did, AccountStatus::Active), |s| s.in_step(&did)).await;
    assert_eq!(accounts, vec![active()]);
    let creates: Vec<(Action, String)> = s.on_pds(&did).into_keys().map(|(_, r)| (Action::Create, r)).collect();
    assert_eq!(s.record_events(&did, before), creates);
    s.assert_readable(&did, rkey).await;
    expected.push(active());

    // The log holds exactly the expected account events, and the stream sends them in
    // DESIGN.md's shape; the other account saw none and is untouched.
    let logged: Vec<(u64, Account)> = s.account_events(&did);
    assert_eq!(logged.iter().map(|(_, a)| a.clone()).collect::<Vec<_>>(), expected);
    assert!(s.account_events(&other).is_empty());
    assert!(s.in_step(&other));
    let streamed: Vec<Value> = s.streamed().await.into_iter().filter(|e| e["type"] == json!("account")).collect();
    let shaped: Vec<Value> = logged
        .iter()
        .map(|(id, (active, status))| {
            json!({"id": id, "type": "account", "account": {"did": did, "active": active, "status": status}})
        })
        .collect();
    assert_eq!(streamed, shaped);
    s.stop().await;
}

/// A relay's own status ends when the relay says the account is active again: a consumer of
/// the log that saw `throttled` must see the account come back. And a status repeated changes
/// nothing, so it emits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_side_status_ends_with_one_active_event() {
    let net = Devnet::start(DevnetOptions::default()).await.unwrap();
    let did = account(&net, 83, 1);
    let s = start(net).await;
    wait("the backfill", || s.in_step(&did)).await;
    let (_, accounts) = s.step(&did, |net| net.emit_relay_account(&did, false, Some("throttled")), |_| true).await;
    assert_eq!(accounts, vec![inactive("throttled")]);
    let (added, _) = s.step(&did, |net| net.emit_relay_account(&did, false, Some("throttled")), |_| true).await;
    assert!(added.is_empty(), "throttled again changes nothing: {added:?}");
    let (_, accounts) = s.step(&did, |net| net.emit_relay_account(&did, true, None), |_| true).await;
    assert_eq!(accounts, vec![active()], "the account is active again");
    assert!(s.in_step(&did));
    let (added, _) = s.step(&did, |net| net.emit_relay_account(&did, true, None), |_| true).await;
    assert!(added.is_empty(), "active again changes nothing: {added:?}");
    // A host's status, then the relay's, then the host's again: three changes, three events,
    // and the repo stays gone until the account is active.
    for status in ["takendown", "throttled", "takendown"] {
        let (_, accounts) = s.step(&did, |net| net.emit_relay_account(&did, false, Some(status)), |_| true).await;
        assert_eq!(accounts, vec![inactive(status)], "{status}");
        assert_eq!(s.status(&did), Some(RepoStatus::Gone), "after {status}");
    }
    s.stop().await;
}
