//! proptest strategies for filters, shared by the filter's tests.

use proptest::prelude::*;

use super::{Filter, Mode};

/// A few patterns: exact NSIDs, a prefix pattern and one with a hyphen, so that lists overlap.
pub fn patterns() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop::sample::select(vec![
            "app.bsky.feed.post",
            "app.bsky.*",
            "xyz.statusphere.status",
            "com.example.a-b.c",
            "app.bsky.graph.follow",
        ]),
        0..4,
    )
    .prop_map(|v| v.into_iter().map(String::from).collect())
}

/// A few DIDs, so that `dids` and `exclude_dids` overlap.
pub fn dids() -> impl Strategy<Value = std::collections::BTreeSet<String>> {
    prop::collection::btree_set(prop::sample::select(vec!["did:plc:aaaa", "did:web:example.com", "did:plc:zz22"]), 0..3)
        .prop_map(|s| s.into_iter().map(String::from).collect())
}

prop_compose! {
    /// A valid filter of either mode (signal mode has at least one signal).
    pub fn filters()(
        signal in any::<bool>(),
        signals in patterns(),
        collections in patterns(),
        exclude in patterns(),
        dids in dids(),
        exclude_dids in dids(),
    ) -> Filter {
        let mut signals = signals;
        if signal && signals.is_empty() {
            signals.push("xyz.statusphere.status".into());
        }
        Filter {
            mode: if signal { Mode::Signal } else { Mode::Full },
            signals,
            collections,
            exclude_collections: exclude,
            dids,
            exclude_dids,
            handlers: Default::default(),
            indexes: Default::default(),
            lexicons: None,
        }
    }
}
