//! Many CAR files indexed at once (`sluice index-car A B C ...`): several repos in flight, each
//! repo's exports applied in the order given, results reported in that order.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::json;
use sluice::IndexOptions;
use sluice::index_files::index_files;
use sluice::store::{Action, StoredEvent};
use sluice_devnet::{Account, RepoContents, export_car_blocking, rev_at};
use sluice_testkit as testkit;

fn post(n: u32) -> Vec<u8> {
    sluice::handlers::value::json_to_cbor(
        &json!({"$type": "app.bsky.feed.post", "text": format!("post {n}"), "createdAt": "2024-01-01T00:00:00Z"}),
    )
    .unwrap()
}

/// A repo holding posts `range`, each under its own rkey.
fn posts(range: std::ops::Range<u32>) -> RepoContents {
    range.map(|n| (format!("app.bsky.feed.post/3kaaaaaa{n:05}"), post(n))).collect()
}

/// Writes `car` as file `name` in `dir`.
fn file(dir: &std::path::Path, name: &str, car: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, car).unwrap();
    path
}

fn changes(events: &[(Action, String)]) -> BTreeSet<(Action, String)> {
    events.iter().cloned().collect()
}

/// `action` on each of the posts `range`, as [`posts`] names them.
fn changes_of(action: Action, range: std::ops::Range<u32>) -> BTreeSet<(Action, String)> {
    range.map(|n| (action, format!("3kaaaaaa{n:05}"))).collect()
}

#[test]
fn exports_of_one_repo_apply_in_order_while_other_repos_run_beside_them() {
    let (a, b, c) = (Account::new(21), Account::new(22), Account::new(23));
    let files = tempfile::tempdir().unwrap();
    // Repo a three times: a large export, then a small one taken beside it (loaded first, it
    // must still wait), then a trimmed one; b large enough to be several batches; c small; and
    // a file that is no CAR, between them.
    let paths = vec![
        file(files.path(), "a1.car", &export_car_blocking(&a, &rev_at(1), &posts(0..1500)).unwrap()),
        file(files.path(), "a2.car", &export_car_blocking(&a, &rev_at(2), &posts(1400..1520)).unwrap()),
        file(files.path(), "b.car", &export_car_blocking(&b, &rev_at(1), &posts(0..3000)).unwrap()),
        file(files.path(), "junk.car", b"not a CAR"),
        file(files.path(), "c.car", &export_car_blocking(&c, &rev_at(1), &posts(0..5)).unwrap()),
        file(files.path(), "a3.car", &export_car_blocking(&a, &rev_at(3), &posts(1410..1520)).unwrap()),
    ];
    for workers in [2, 4] {
        let (_dir, s) = testkit::sluice_batched("mode = \"full\"", 500);
        let mut reported = Vec::new();
        index_files(&s, &paths, &IndexOptions::default(), workers, |i, result| {
            reported.push((i, result.map(|o| (o.created, o.deleted)).map_err(|e| e.to_string())))
        });

        let order: Vec<usize> = reported.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, (0..paths.len()).collect::<Vec<_>>(), "reported in the order given");
        let outcomes: Vec<_> = reported.into_iter().map(|(_, r)| r).collect();
        // Had a later export of repo a gone first, the earlier one would be refused as older.
        assert_eq!(outcomes[0], Ok((1500, 0)));
        assert_eq!(outcomes[1], Ok((20, 1400)));
        assert_eq!(outcomes[2], Ok((3000, 0)));
        assert!(outcomes[3].as_ref().is_err_and(|e| e.contains("CAR")), "{:?}", outcomes[3]);
        assert_eq!(outcomes[4], Ok((5, 0)));
        assert_eq!(outcomes[5], Ok((0, 10)));

        assert_eq!(testkit::stored_cids(s.store(), &a.did).len(), 110);
        assert_eq!(testkit::stored_cids(s.store(), &b.did).len(), 3000);
        // Repo a's events are its three exports' changes, one export after the other.
        let events: Vec<(Action, String)> = s
            .store()
            .log()
            .from(1, 10_000)
            .unwrap()
            .into_iter()
            .filter_map(|(_, e)| match e {
                StoredEvent::Record(r) if r.did == a.did => Some((r.action, r.rkey.to_string())),
                _ => None,
            })
            .collect();
        let (first, rest) = events.split_at(1500);
        let (second, third) = rest.split_at(1420);
        assert_eq!(changes(first), changes_of(Action::Create, 0..1500));
        assert_eq!(
            changes(second),
            changes_of(Action::Create, 1500..1520).union(&changes_of(Action::Delete, 0..1400)).cloned().collect()
        );
        assert_eq!(changes(third), changes_of(Action::Delete, 1400..1410));
    }
}
