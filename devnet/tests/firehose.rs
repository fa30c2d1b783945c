//! The devnet's firehose over real websockets on 127.0.0.1: `#commit` frames that pass sync 1.1
//! validation and chain from the repo `getRepo` serves, cursor replay, per-host streams,
//! `#account`/`#identity`/`#sync`, injected faults, dropped connections, and the synthetic
//! stream for benchmarks. Every frame is read with sluice's own decoder.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use jacquard_repo::commit::firehose::validate_v1_1;
use serde_json::{Value, json};
use sluice::firehose::{Frame, decode_frame};
use sluice::repo::{LoadedRepo, parse_public_key, read_car};
use sluice_devnet::{AccountSpec, AccountStatus, Devnet, DevnetOptions, Tamper, synthetic_stream};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Commit = jacquard_api::com_atproto::sync::subscribe_repos::Commit;

const POSTS: &str = "app.bsky.feed.post";

/// Runs a test body with a time bound.
async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(10), f).await.expect("test timed out");
}

async fn devnet() -> Devnet {
    Devnet::start(DevnetOptions::default()).await.unwrap()
}

fn post(text: &str) -> Value {
    json!({"$type": "app.bsky.feed.post", "text": text, "createdAt": "2024-05-01T12:00:00.000Z"})
}

async fn connect(url: &str) -> Ws {
    connect_async(url).await.unwrap_or_else(|e| panic!("connecting {url}: {e}")).0
}

/// The next frame, decoded; `None` when the server closes the connection.
async fn next(ws: &mut Ws) -> Option<Frame> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("no frame within 5 s") {
            Some(Ok(Message::Binary(b))) => return Some(decode_frame(&b).unwrap()),
            Some(Ok(Message::Close(_))) | None => return None,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("websocket error: {e}"),
        }
    }
}

async fn next_commit(ws: &mut Ws) -> Box<Commit> {
    match next(ws).await {
        Some(Frame::Commit(c)) => c,
        other => panic!("expected a #commit, got {other:?}"),
    }
}

/// The repo `did`'s PDS serves now.
async fn get_repo(net: &Devnet, did: &str) -> LoadedRepo {
    let host = &net.pds_urls()[net.pds_of(did).unwrap()];
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let res = client.get(format!("{host}/xrpc/com.atproto.sync.getRepo")).query(&[("did", did)]).send().await.unwrap();
    read_car(&res.bytes().await.unwrap(), &Default::default()).unwrap()
}

/// The commit a frame's CAR slice carries (its root).
fn commit_of(c: &Commit) -> LoadedRepo {
    let repo = read_car(&c.blocks, &Default::default()).unwrap();
    assert_eq!(repo.commit_cid.to_string(), c.commit.as_str());
    repo
}

fn prev_data(c: &Commit) -> String {
    c.prev_data.as_ref().expect("prevData").as_str().to_string()
}

#[tokio::test]
async fn commits_validate_and_chain_from_the_served_repo() {
    bounded(async {
        let net = devnet().await;
        // Populated repos take the quiet path: the first firehose write builds the chain.
        let did = net.populate(2, 40, 7).await.remove(1);
        let key = parse_public_key(&net.did_key(&did).unwrap()).unwrap();
        let before = get_repo(&net, &did).await;
        let mut ws = connect(&net.firehose_url(None)).await;

        let cid1 = net.put_record(&did, POSTS, "3kaaaaaaaaa22", post("hello")).unwrap();
        let cid2 = net.put_record(&did, POSTS, "3kaaaaaaaaa22", post("edited")).unwrap();
        net.delete_record(&did, POSTS, "3kaaaaaaaaa22").unwrap();

        let (mut data, mut rev) = (before.data().to_string(), before.rev().to_string());
        let want = [("create", Some(&cid1), None), ("update", Some(&cid2), Some(&cid1)), ("delete", None, Some(&cid2))];
        for (action, cid, prev) in want {
            let c = next_commit(&mut ws).await;
            assert_eq!(
                (c.repo.as_str(), c.ops.len(), c.rebase, c.too_big, c.blobs.len()),
                (did.as_str(), 1, false, false, 0)
            );
            let op = &c.ops[0];
            assert_eq!(op.action.as_str(), action);
            assert_eq!(op.path.as_str(), format!("{POSTS}/3kaaaaaaaaa22"));
            assert_eq!(op.cid.as_ref().map(|c| c.as_str().to_string()).as_ref(), cid);
            assert_eq!(op.prev.as_ref().map(|c| c.as_str().to_string()).as_ref(), prev);
            assert_eq!(prev_data(&c), data, "{action}: prevData continues the previous root");
            assert_eq!(c.since.as_ref().unwrap().as_str(), rev);
            let root = validate_v1_1(&*c, &key).await.unwrap_or_else(|e| panic!("{action}: {e}"));
            let commit = commit_of(&c);
            assert_eq!((commit.data(), commit.rev()), (root, c.rev.as_str()));
            (data, rev) = (root.to_string(), c.rev.to_string());
        }
        let after = get_repo(&net, &did).await;
        assert_eq!((after.data().to_string(), after.rev()), (data, rev.as_str()), "the last commit is the served repo");
        assert_eq!(net.firehose_seq(), 3);
        net.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_cursor_replays_what_follows_it_then_goes_live() {
    bounded(async {
        let net = devnet().await;
        let did = net.create_account(AccountSpec { seed: 1, ..Default::default() });
        for i in 0..5 {
            net.put_record(&did, POSTS, &format!("3kaaaaaaaaa{i}2"), post("x")).unwrap();
        }
        let mut ws = connect(&format!("{}?cursor=2", net.firehose_url(None))).await;
        for seq in 3..=5 {
            assert_eq!(next(&mut ws).await.unwrap().seq(), Some(seq));
        }
        net.put_record(&did, POSTS, "3kaaaaaaaaa72", post("live")).unwrap();
        let live = next_commit(&mut ws).await;
        assert_eq!((live.seq, live.ops[0].path.as_str()), (6, "app.bsky.feed.post/3kaaaaaaaaa72"));

        let mut all = connect(&format!("{}?cursor=0", net.firehose_url(Some(0)))).await;
        for seq in 1..=6 {
            assert_eq!(next(&mut all).await.unwrap().seq(), Some(seq));
        }

        let mut ahead = connect(&format!("{}?cursor=9", net.firehose_url(None))).await;
        match next(&mut ahead).await {
            Some(Frame::Error { error, .. }) => assert_eq!(error, "FutureCursor"),
            other => panic!("expected FutureCursor, got {other:?}"),
        }
        assert!(next(&mut ahead).await.is_none(), "closed after the error");
        assert_eq!(net.request_count("com.atproto.sync.subscribeRepos"), 3);
        net.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_pds_streams_its_own_accounts_and_the_relay_all() {
    bounded(async {
        let net = devnet().await;
        let on0 = net.create_account(AccountSpec { seed: 10, pds: 0, ..Default::default() });
        let on1 = net.create_account(AccountSpec { seed: 11, pds: 1, ..Default::default() });
        for (i, did) in [&on0, &on1, &on1, &on0, &on1].into_iter().enumerate() {
            net.put_record(did, POSTS, &format!("3kaaaaaaaaa{i}2"), post("x")).unwrap();
        }
        let mut relay = connect(&format!("{}?cursor=0", net.firehose_url(None))).await;
        let mut pds0 = connect(&format!("{}?cursor=0", net.firehose_url(Some(0)))).await;
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(next_commit(&mut relay).await.repo.to_string());
        }
        assert_eq!(seen, [&on0, &on1, &on1, &on0, &on1].map(String::clone));
        let mine: Vec<(i64, String)> = [next_commit(&mut pds0).await, next_commit(&mut pds0).await]
            .iter()
            .map(|c| (c.seq, c.repo.to_string()))
            .collect();
        assert_eq!(mine, [(1, on0.clone()), (4, on0.clone())]);
        // Live: host 1's event is not sent to host 0's subscriber; host 0's next one is.
        net.put_record(&on1, POSTS, "3kaaaaaaaaa82", post("x")).unwrap();
        net.put_record(&on0, POSTS, "3kaaaaaaaaa92", post("x")).unwrap();
        let c = next_commit(&mut pds0).await;
        assert_eq!((c.seq, c.repo.as_str()), (7, on0.as_str()));
        net.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn account_identity_and_sync_frames() {
    bounded(async {
        let net = devnet().await;
        let did = net.create_account(AccountSpec {
            seed: 20,
            pds: 1,
            handle: Some("alice.test".into()),
            ..Default::default()
        });
        net.put_record(&did, POSTS, "3kaaaaaaaaa22", post("x")).unwrap();
        let mut ws = connect(&net.firehose_url(Some(1))).await;
        net.set_status(&did, AccountStatus::Takendown);
        net.set_status(&did, AccountStatus::Active);
        net.emit_identity(&did);
        net.emit_sync(&did);
        let Some(Frame::Account(down)) = next(&mut ws).await else { panic!("expected #account") };
        assert_eq!(
            (down.did.as_str(), down.active, down.status.as_ref().map(|s| s.as_str())),
            (did.as_str(), false, Some("takendown"))
        );
        let Some(Frame::Account(up)) = next(&mut ws).await else { panic!("expected #account") };
        assert_eq!((up.active, up.status.is_none(), up.seq), (true, true, down.seq + 1));
        let Some(Frame::Identity(id)) = next(&mut ws).await else { panic!("expected #identity") };
        assert_eq!((id.did.as_str(), id.handle.as_ref().map(|h| h.as_str())), (did.as_str(), Some("alice.test")));
        let Some(Frame::Sync(sync)) = next(&mut ws).await else { panic!("expected #sync") };
        assert_eq!((sync.did.as_str(), sync.rev.as_str()), (did.as_str(), net.rev(&did).unwrap().as_str()));
        let slice = read_car(&sync.blocks, &Default::default()).unwrap();
        assert_eq!(slice.block_count(), 1, "just the commit");
        slice.verify_signature(&parse_public_key(&net.did_key(&did).unwrap()).unwrap()).unwrap();
        let served = get_repo(&net, &did).await;
        assert_eq!((slice.commit_cid, slice.data()), (served.commit_cid, served.data()), "the commit getRepo serves");
        net.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn tampered_commits_are_altered_and_the_repo_moves_on() {
    bounded(async {
        let net = devnet().await;
        let did = net.create_account(AccountSpec { seed: 30, ..Default::default() });
        let key = parse_public_key(&net.did_key(&did).unwrap()).unwrap();
        net.put_record(&did, POSTS, "3kaaaaaaaaa12", post("x")).unwrap();
        let mut ws = connect(&net.firehose_url(None)).await;
        let mut data = get_repo(&net, &did).await.data().to_string();
        let tampers = [Tamper::ForgedSignature, Tamper::StaleRev, Tamper::BrokenPrevData, Tamper::RepeatedOp];
        for (i, tamper) in tampers.into_iter().enumerate() {
            let rev_before = net.rev(&did).unwrap();
            net.tamper_next_commit(&did, tamper);
            net.put_record(&did, POSTS, &format!("3kaaaaaaaab{i}2"), post("x")).unwrap();
            let c = next_commit(&mut ws).await;
            let commit = commit_of(&c);
            match tamper {
                Tamper::ForgedSignature => {
                    let e = validate_v1_1(&*c, &key).await.unwrap_err().to_string();
                    assert!(e.to_lowercase().contains("signature"), "a forged signature fails: {e}");
                    assert_eq!(prev_data(&c), data);
                }
                Tamper::StaleRev => {
                    assert_eq!((c.rev.as_str(), commit.rev()), (rev_before.as_str(), rev_before.as_str()));
                    assert!(c.rev.as_str() < net.rev(&did).unwrap().as_str());
                    validate_v1_1(&*c, &key).await.unwrap();
                }
                Tamper::BrokenPrevData => {
                    assert_ne!(prev_data(&c), data);
                    let e = validate_v1_1(&*c, &key).await.unwrap_err().to_string();
                    assert!(e.contains(&prev_data(&c)), "the ops do not invert to prevData: {e}");
                }
                Tamper::RepeatedOp => {
                    let paths: Vec<&str> = c.ops.iter().map(|op| op.path.as_str()).collect();
                    assert_eq!(paths, [paths[0]; 2], "the one op and its copy");
                    assert_eq!(prev_data(&c), data);
                }
            }
            data = commit.data().to_string();
        }
        // The repo moved on normally: the next commit is clean and continues the served root.
        let served = get_repo(&net, &did).await;
        assert_eq!(served.data().to_string(), data);
        net.put_record(&did, POSTS, "3kaaaaaaaac12", post("x")).unwrap();
        let c = next_commit(&mut ws).await;
        assert_eq!(prev_data(&c), data);
        validate_v1_1(&*c, &key).await.unwrap();
        net.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn dropped_connections_close_and_reconnects_resume_from_the_cursor() {
    bounded(async {
        let net = devnet().await;
        let did = net.create_account(AccountSpec { seed: 40, ..Default::default() });
        let mut ws = connect(&net.firehose_url(None)).await;
        net.put_record(&did, POSTS, "3kaaaaaaaaa12", post("x")).unwrap();
        let cursor = next_commit(&mut ws).await.seq;
        net.drop_firehose_connections();
        assert!(next(&mut ws).await.is_none(), "closed by the devnet");
        net.put_record(&did, POSTS, "3kaaaaaaaaa22", post("x")).unwrap();
        let mut again = connect(&format!("{}?cursor={cursor}", net.firehose_url(None))).await;
        assert_eq!(next_commit(&mut again).await.seq, cursor + 1);
        assert_eq!(net.request_count("com.atproto.sync.subscribeRepos"), 2);
        net.shutdown().await;
    })
    .await;
}

#[test]
fn the_synthetic_stream_validates_against_its_keys_and_chains() {
    let stream = synthetic_stream(3, 50, 5);
    assert_eq!((stream.frames.len(), stream.keys.len(), stream.initial.len()), (50, 3, 3));
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut state: std::collections::HashMap<String, (String, String)> =
        stream.initial.iter().map(|(d, r, c)| (d.clone(), (r.clone(), c.clone()))).collect();
    let keys: std::collections::HashMap<&str, _> =
        stream.keys.iter().map(|(d, k)| (d.as_str(), parse_public_key(k).unwrap())).collect();
    let mut actions = std::collections::BTreeSet::new();
    for (i, bytes) in stream.frames.iter().enumerate() {
        let Frame::Commit(c) = decode_frame(bytes).unwrap() else { panic!("frame {i} is not a #commit") };
        assert_eq!(c.seq, i as i64 + 1);
        let (rev, data) = state.get_mut(c.repo.as_str()).unwrap();
        assert_eq!((prev_data(&c), c.since.as_ref().unwrap().as_str()), (data.clone(), rev.as_str()));
        assert!(c.rev.as_str() > rev.as_str());
        let root = rt.block_on(validate_v1_1(&*c, &keys[c.repo.as_str()])).unwrap_or_else(|e| panic!("frame {i}: {e}"));
        (*rev, *data) = (c.rev.to_string(), root.to_string());
        actions.extend(c.ops.iter().map(|o| o.action.as_str().to_string()));
    }
    assert_eq!(actions.into_iter().collect::<Vec<_>>(), ["create", "delete", "update"]);
    assert_eq!(synthetic_stream(3, 50, 5).frames[..5], stream.frames[..5], "deterministic");
}
