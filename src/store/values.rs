//! Stored values: a version byte, then postcard. Every type written to fjall lives here, and
//! every version that was ever written keeps a golden file in `tests/golden/` that must decode.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use smol_str::SmolStr;

/// The format version of a value type that has only ever had one; a type whose format changed
/// says which version it writes in [`Stored::VERSION`].
pub const VERSION: u8 = 1;

/// Why a stored value did not decode.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// Empty value.
    #[error("stored {0} value is empty")]
    Empty(&'static str),
    /// Written by a format this build does not know.
    #[error("stored {what} value has format version {version}, this build reads up to {newest}")]
    Version { what: &'static str, version: u8, newest: u8 },
    /// The bytes do not decode.
    #[error("stored {what} value is corrupt")]
    Corrupt { what: &'static str, source: postcard::Error },
    /// A row of a hand-laid format (index rows) does not have the layout it must have.
    #[error("stored {0} is malformed")]
    Malformed(&'static str),
}

/// A value with a stored form.
pub trait Stored: Serialize + DeserializeOwned {
    /// Name used in errors.
    const WHAT: &'static str;

    /// The format version this build writes for this type. Each type has its own, so one
    /// type's new format leaves the others' alone.
    const VERSION: u8 = VERSION;

    /// Typical encoded size, to allocate once (events are ~150 bytes).
    const SIZE_HINT: usize = 64;

    /// Version byte + postcard.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE_HINT);
        out.push(Self::VERSION);
        postcard::to_io(self, &mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Reads any known version.
    fn decode(bytes: &[u8]) -> Result<Self, ValueError> {
        match bytes.split_first() {
            None => Err(ValueError::Empty(Self::WHAT)),
            Some((&version, body)) => Self::decode_version(version, body),
        }
    }

    /// Reads the body (what follows the version byte) of a value of format `version`. Version
    /// 1 is postcard of the whole value; a type with later versions reads them here.
    fn decode_version(version: u8, body: &[u8]) -> Result<Self, ValueError> {
        match version {
            1 => postcard_body(Self::WHAT, body),
            _ => Err(ValueError::Version { what: Self::WHAT, version, newest: Self::VERSION }),
        }
    }
}

/// `body` as postcard, a failure naming `what`.
fn postcard_body<T: DeserializeOwned>(what: &'static str, body: &[u8]) -> Result<T, ValueError> {
    postcard::from_bytes(body).map_err(|source| ValueError::Corrupt { what, source })
}

/// Where a repo stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RepoStatus {
    /// Queued for backfill.
    #[default]
    Pending,
    /// Being backfilled.
    Backfilling,
    /// Indexed and current.
    Synced,
    /// Signal mode, no signal record (or excluded): nothing of it is stored.
    Discarded,
    /// Failed; retried later.
    Error,
    /// Deactivated, taken down, suspended or deleted.
    Gone,
    /// A live commit did not continue the stored chain: queued for a fresh backfill.
    Desynchronized,
}

impl RepoStatus {
    /// Every status, in the order stats list them.
    pub const ALL: [RepoStatus; 7] = [
        RepoStatus::Pending,
        RepoStatus::Backfilling,
        RepoStatus::Synced,
        RepoStatus::Discarded,
        RepoStatus::Error,
        RepoStatus::Gone,
        RepoStatus::Desynchronized,
    ];

    /// The statuses of repos still to be done now: queued, in flight, or queued again after
    /// their chain broke (a failed repo waiting for its retry is `Error`, not here).
    pub const QUEUED: [RepoStatus; 3] = [RepoStatus::Pending, RepoStatus::Backfilling, RepoStatus::Desynchronized];

    /// The lowercase name used in stats and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            RepoStatus::Pending => "pending",
            RepoStatus::Backfilling => "backfilling",
            RepoStatus::Synced => "synced",
            RepoStatus::Discarded => "discarded",
            RepoStatus::Error => "error",
            RepoStatus::Gone => "gone",
            RepoStatus::Desynchronized => "desynchronized",
        }
    }
}

/// `repos` value: a repo's state. A new format adds its field at the end, as an `Option`, so
/// older bodies still read (see its `decode_version`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RepoState {
    /// Where it stands.
    pub status: RepoStatus,
    /// Rev of the last applied commit.
    pub rev: Option<String>,
    /// MST root (data) CID of the last applied commit.
    pub data: Option<String>,
    /// Handle, when known.
    pub handle: Option<String>,
    /// Last error, for `error` and `gone`.
    pub error: Option<String>,
    /// Failed attempts since the last success.
    pub retries: u32,
    /// Unix ms before which no retry happens.
    pub next_retry_ms: Option<u64>,
    /// Unix ms of the last change.
    pub updated_ms: u64,
    /// CID of the last applied commit (`listRepos`' `head`); from format 2 on, `None` before
    /// and until the repo's next commit or walk.
    pub commit: Option<String>,
    /// Whether `handle` was found to be the repo's own: its DID document names it and it
    /// resolves back to the DID (`None`: not checked yet). From format 3 on. Kept in step by
    /// the store: a write that changes the handle clears it, other writes keep it.
    pub handle_ok: Option<bool>,
    /// The status of the last `#account` frame that said the account is not active but left
    /// the repo indexed (relay-side ones: `throttled`, `desynchronized`, statuses sluice does
    /// not know); `None` while active. From format 4 on. Kept so that a repeat of it changes
    /// nothing and `active` afterwards is a change, each with one account event.
    pub account_status: Option<String>,
}

impl RepoState {
    /// Whether the repo's records are answered: read by `getRecord`, `listRecords` and index
    /// queries, and counted by `countIndex`. Not those of a gone (deactivated, taken down,
    /// deleted) or discarded repo.
    pub fn answered(&self) -> bool {
        !matches!(self.status, RepoStatus::Gone | RepoStatus::Discarded)
    }

    /// When the backfill queue should take this repo (unix ms), or `None` when it is not
    /// queued. Pending and backfilling repos are queued (a crash mid-backfill leaves the repo
    /// queued), and so is a desynchronized one; a failed one is queued until its retries run
    /// out.
    pub fn queue_due(&self) -> Option<u64> {
        match self.status {
            RepoStatus::Pending | RepoStatus::Backfilling | RepoStatus::Desynchronized => {
                Some(self.next_retry_ms.unwrap_or(0))
            }
            RepoStatus::Error => self.next_retry_ms,
            RepoStatus::Synced | RepoStatus::Discarded | RepoStatus::Gone => None,
        }
    }
}

impl Stored for RepoState {
    const WHAT: &'static str = "repo state";
    const VERSION: u8 = 4;

    fn decode_version(version: u8, body: &[u8]) -> Result<Self, ValueError> {
        match version {
            4 => postcard_body(Self::WHAT, body),
            // Each later format only appended an optional field (2: `commit`, 3: `handle_ok`,
            // 4: `account_status`),
            // so an older body reads as the current one with those fields absent: postcard
            // writes an absent `Option` as one 0 byte. A new format that adds anything else
            // needs its own case here.
            1..=3 => {
                let mut padded = body.to_vec();
                padded.resize(body.len() + usize::from(Self::VERSION - version), 0);
                postcard_body(Self::WHAT, &padded)
            }
            _ => Err(ValueError::Version { what: Self::WHAT, version, newest: Self::VERSION }),
        }
    }
}

/// `records` value: the stored version's CID (binary) and, from format 2 on, its DAG-CBOR
/// body. Version 1 held only the CID, its body in the legacy `blocks` keyspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRef {
    /// Binary CID.
    #[serde(with = "serde_bytes")]
    pub cid: Vec<u8>,
    /// The body; `None` for a version 1 value.
    #[serde(with = "serde_bytes")]
    pub body: Option<Vec<u8>>,
}

/// A `records` value read in place: what [`RecordRef::view`] borrows from the stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct RecordRefView<'a> {
    /// Binary CID.
    #[serde(borrow)]
    pub cid: &'a [u8],
    /// The body; `None` for a version 1 value.
    #[serde(borrow)]
    pub body: Option<&'a [u8]>,
}

impl Stored for RecordRef {
    const WHAT: &'static str = "record";
    const VERSION: u8 = 2;

    fn decode_version(version: u8, body: &[u8]) -> Result<Self, ValueError> {
        Ok(RecordRef::view_version(version, body)?.into())
    }
}

impl From<RecordRefView<'_>> for RecordRef {
    fn from(view: RecordRefView<'_>) -> Self {
        RecordRef { cid: view.cid.to_vec(), body: view.body.map(<[u8]>::to_vec) }
    }
}

impl RecordRef {
    /// The stored form of a `RecordRef` of `cid` and `body`, without building one.
    pub fn encode_parts(cid: &[u8], body: &[u8]) -> Vec<u8> {
        #[derive(Serialize)]
        struct Borrowed<'a>(#[serde(with = "serde_bytes")] &'a [u8], #[serde(with = "serde_bytes")] Option<&'a [u8]>);
        let mut out = Vec::with_capacity(8 + cid.len() + body.len());
        out.push(<Self as Stored>::VERSION);
        postcard::to_io(&Borrowed(cid, Some(body)), &mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Reads a stored value of any known version in place, copying nothing.
    pub fn view(bytes: &[u8]) -> Result<RecordRefView<'_>, ValueError> {
        match bytes.split_first() {
            None => Err(ValueError::Empty(Self::WHAT)),
            Some((&version, body)) => Self::view_version(version, body),
        }
    }

    fn view_version(version: u8, body: &[u8]) -> Result<RecordRefView<'_>, ValueError> {
        let corrupt = |source| ValueError::Corrupt { what: Self::WHAT, source };
        match version {
            1 => {
                let cid: &[u8] = postcard::from_bytes::<&serde_bytes::Bytes>(body).map_err(corrupt)?;
                Ok(RecordRefView { cid, body: None })
            }
            2 => postcard::from_bytes(body).map_err(corrupt),
            _ => Err(ValueError::Version { what: Self::WHAT, version, newest: <Self as Stored>::VERSION }),
        }
    }
}

/// What happened to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    /// New record.
    Create,
    /// New version of an existing record.
    Update,
    /// Removed.
    Delete,
}

impl Action {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// A record event as stored, with the body of the version it created (so replay reads pages
/// and nothing else).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEvent {
    /// From the firehose (true) or a backfill walk (false).
    pub live: bool,
    /// Repo DID.
    pub did: SmolStr,
    /// Commit rev.
    pub rev: SmolStr,
    /// Collection NSID.
    pub collection: SmolStr,
    /// Record key.
    pub rkey: SmolStr,
    /// What happened.
    pub action: Action,
    /// Binary CID of the new version (none on delete).
    #[serde(with = "serde_bytes")]
    pub cid: Vec<u8>,
    /// JSON the event carries instead of the record, when a handler replaced it.
    pub replaced: Option<String>,
    /// Handler outputs: (handler name, JSON).
    pub handled: Vec<(SmolStr, String)>,
    /// The DAG-CBOR body of the new version, unless `replaced` stands for it (none on delete,
    /// and none in pages of format 1 and 2, whose bodies are in the legacy `blocks` keyspace).
    pub body: Option<bytes::Bytes>,
}

/// An identity change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityEvent {
    /// DID.
    pub did: String,
    /// Handle, if known.
    pub handle: Option<String>,
}

/// An account status change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountEvent {
    /// DID.
    pub did: String,
    /// Whether the account is active.
    pub active: bool,
    /// Status when not active (deactivated, takendown, suspended, deleted).
    pub status: Option<String>,
}

/// `events` value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredEvent {
    /// A record changed.
    Record(RecordEvent),
    /// An identity changed.
    Identity(IdentityEvent),
    /// An account's status changed.
    Account(AccountEvent),
}

/// `events` value: consecutive events, the first of which has the page's key as its id.
/// One repo change writes its events as pages of at most [`EventPage::MAX_EVENTS`], so a
/// 100k-record walk costs a few hundred log entries, not 100k, and replay reads pages.
///
/// Event times: every event has a unix-µs time, unique and increasing with its id, and a
/// change's events have consecutive times (so do its pages), so a page stores only its first
/// event's time and event `i` of the page has `first_time + i`.
///
/// Formats: version 1 is postcard of the events (no times: pages written before events had
/// times read back with `first_time` 0). Version 2 is the first time as 8 bytes big-endian at
/// a fixed place, then postcard of the events: the writer encodes a page before its time is
/// known and stamps the time in at commit ([`EventPage::stamp_time`]). Version 3 is version 2
/// with each record event's body ([`RecordEvent::body`]). The serde derives are not the
/// stored form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPage {
    /// Unix µs of the first event; 0 when unknown (a version 1 page).
    pub first_time: u64,
    /// The events, in id order.
    pub events: Vec<StoredEvent>,
}

impl EventPage {
    /// Most events in one page: bounds what a reader decodes to reach a cursor inside it.
    pub const MAX_EVENTS: usize = 512;

    /// Where the first event's time sits in a version 2 page.
    const TIME_AT: std::ops::Range<usize> = 1..9;

    /// Writes `first_time` into `encoded`, a page encoded by this build, without encoding it
    /// again.
    pub fn stamp_time(encoded: &mut [u8], first_time: u64) {
        debug_assert_eq!(encoded.first(), Some(&<Self as Stored>::VERSION));
        encoded[Self::TIME_AT].copy_from_slice(&first_time.to_be_bytes());
    }

    /// The time of the page's event `index`: unix µs, or 0 when unknown.
    pub fn time_of(&self, index: usize) -> u64 {
        if self.first_time == 0 { 0 } else { self.first_time + index as u64 }
    }
}

impl Stored for EventPage {
    const WHAT: &'static str = "event page";
    const VERSION: u8 = 3;
    const SIZE_HINT: usize = 64 << 10;

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE_HINT);
        out.push(Self::VERSION);
        out.extend_from_slice(&self.first_time.to_be_bytes());
        postcard::to_io(&self.events, &mut out).expect("writing to a Vec cannot fail");
        out
    }

    fn decode_version(version: u8, body: &[u8]) -> Result<Self, ValueError> {
        /// A version 1 page.
        #[derive(Deserialize)]
        struct PageV1 {
            events: Vec<legacy::StoredEvent>,
        }
        fn timed(body: &[u8]) -> Result<(u64, &[u8]), ValueError> {
            match body.split_first_chunk::<8>() {
                Some((time, events)) => Ok((u64::from_be_bytes(*time), events)),
                None => Err(ValueError::Corrupt {
                    what: EventPage::WHAT,
                    source: postcard::Error::DeserializeUnexpectedEnd,
                }),
            }
        }
        let upgrade = |events: Vec<legacy::StoredEvent>| events.into_iter().map(StoredEvent::from).collect();
        match version {
            1 => Ok(EventPage { first_time: 0, events: upgrade(postcard_body::<PageV1>(Self::WHAT, body)?.events) }),
            2 => {
                let (first_time, events) = timed(body)?;
                Ok(EventPage { first_time, events: upgrade(postcard_body(Self::WHAT, events)?) })
            }
            3 => {
                let (first_time, events) = timed(body)?;
                Ok(EventPage { first_time, events: postcard_body(Self::WHAT, events)? })
            }
            _ => Err(ValueError::Version { what: Self::WHAT, version, newest: Self::VERSION }),
        }
    }
}

/// Events as page formats 1 and 2 stored them: record events without their bodies.
pub mod legacy {
    use serde::{Deserialize, Serialize};

    use super::{AccountEvent, Action, IdentityEvent};

    /// A record event of page formats 1 and 2.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RecordEvent {
        pub live: bool,
        pub did: String,
        pub rev: String,
        pub collection: String,
        pub rkey: String,
        pub action: Action,
        #[serde(with = "serde_bytes")]
        pub cid: Vec<u8>,
        pub replaced: Option<String>,
        /// The same stored form as a `String` name.
        pub handled: Vec<(smol_str::SmolStr, String)>,
    }

    /// An event of page formats 1 and 2.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum StoredEvent {
        Record(RecordEvent),
        Identity(IdentityEvent),
        Account(AccountEvent),
    }

    impl From<StoredEvent> for super::StoredEvent {
        fn from(event: StoredEvent) -> Self {
            match event {
                StoredEvent::Record(RecordEvent {
                    live,
                    did,
                    rev,
                    collection,
                    rkey,
                    action,
                    cid,
                    replaced,
                    handled,
                }) => super::StoredEvent::Record(super::RecordEvent {
                    live,
                    did: did.into(),
                    rev: rev.into(),
                    collection: collection.into(),
                    rkey: rkey.into(),
                    action,
                    cid,
                    replaced,
                    handled,
                    body: None,
                }),
                StoredEvent::Identity(i) => super::StoredEvent::Identity(i),
                StoredEvent::Account(a) => super::StoredEvent::Account(a),
            }
        }
    }
}

/// `event_times` value: the page whose first event has the key's time (unix µs, big-endian):
/// its first id and how many events it holds. An index kept with the pages, in their batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSpan {
    /// Id of the page's first event.
    pub first_id: u64,
    /// Events in the page (their times and ids are consecutive).
    pub count: u32,
}

impl Stored for EventSpan {
    const WHAT: &'static str = "event time index";
    const SIZE_HINT: usize = 16;
}

/// `held` value: a live `#commit` frame, as received, waiting for its repo's backfill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldCommit {
    /// The whole frame (header and body).
    #[serde(with = "serde_bytes")]
    pub frame: Vec<u8>,
}

impl Stored for HeldCommit {
    const WHAT: &'static str = "held commit";
    const SIZE_HINT: usize = 4 << 10;
}

/// `cursors` value: a service's position and when it was saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The position, in the service's own terms.
    pub value: String,
    /// Unix ms of the save.
    pub updated_ms: u64,
}

impl Stored for Cursor {
    const WHAT: &'static str = "cursor";
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record_event() -> impl Strategy<Value = StoredEvent> {
        let body = proptest::option::of(proptest::collection::vec(any::<u8>(), 1..60));
        (
            any::<bool>(),
            "[a-z:0-9]{1,30}",
            "[a-z0-9]{13}",
            "[a-z.]{3,30}",
            "[a-z0-9]{1,15}",
            0..3u8,
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::option::of(".{0,20}"),
            proptest::collection::vec(("[a-z-]{1,10}".prop_map(SmolStr::from), ".{0,20}"), 0..3),
            body,
        )
            .prop_map(|(live, did, rev, collection, rkey, a, cid, replaced, handled, body)| {
                StoredEvent::Record(RecordEvent {
                    live,
                    did: did.into(),
                    rev: rev.into(),
                    collection: collection.into(),
                    rkey: rkey.into(),
                    action: [Action::Create, Action::Update, Action::Delete][a as usize],
                    cid,
                    replaced,
                    handled,
                    body: body.map(Into::into),
                })
            })
    }

    /// `event` as page formats 1 and 2 stored it (no body).
    fn legacy_of(event: &StoredEvent) -> legacy::StoredEvent {
        match event.clone() {
            StoredEvent::Record(RecordEvent {
                live,
                did,
                rev,
                collection,
                rkey,
                action,
                cid,
                replaced,
                handled,
                ..
            }) => legacy::StoredEvent::Record(legacy::RecordEvent {
                live,
                did: did.into(),
                rev: rev.into(),
                collection: collection.into(),
                rkey: rkey.into(),
                action,
                cid,
                replaced,
                handled,
            }),
            StoredEvent::Identity(i) => legacy::StoredEvent::Identity(i),
            StoredEvent::Account(a) => legacy::StoredEvent::Account(a),
        }
    }

    fn without_bodies(events: &[StoredEvent]) -> Vec<StoredEvent> {
        events.iter().map(|e| StoredEvent::from(legacy_of(e))).collect()
    }

    proptest! {
        #[test]
        fn event_pages_round_trip(
            events in proptest::collection::vec(record_event(), 0..8),
            first_time: u64,
            stamped: u64,
        ) {
            let mut page = EventPage { first_time, events };
            let mut bytes = page.encode();
            prop_assert_eq!(EventPage::decode(&bytes).unwrap(), page.clone());
            EventPage::stamp_time(&mut bytes, stamped);
            page.first_time = stamped;
            prop_assert_eq!(EventPage::decode(&bytes).unwrap(), page);
        }

        #[test]
        fn version_1_pages_decode_without_times_or_bodies(events in proptest::collection::vec(record_event(), 0..8)) {
            #[derive(Serialize)]
            struct PageV1 { events: Vec<legacy::StoredEvent> }
            let mut bytes = vec![1];
            postcard::to_io(&PageV1 { events: events.iter().map(legacy_of).collect() }, &mut bytes).unwrap();
            prop_assert_eq!(
                EventPage::decode(&bytes).unwrap(),
                EventPage { first_time: 0, events: without_bodies(&events) }
            );
        }

        #[test]
        fn version_2_pages_decode_without_bodies(
            events in proptest::collection::vec(record_event(), 0..8),
            first_time: u64,
        ) {
            let mut bytes = vec![2];
            bytes.extend_from_slice(&first_time.to_be_bytes());
            postcard::to_io(&events.iter().map(legacy_of).collect::<Vec<_>>(), &mut bytes).unwrap();
            prop_assert_eq!(
                EventPage::decode(&bytes).unwrap(),
                EventPage { first_time, events: without_bodies(&events) }
            );
        }

        #[test]
        fn event_spans_round_trip(first_id: u64, count: u32) {
            let span = EventSpan { first_id, count };
            prop_assert_eq!(EventSpan::decode(&span.encode()).unwrap(), span);
        }

        #[test]
        fn repo_states_round_trip(
            rev in proptest::option::of("[a-z0-9]{13}"),
            retries: u32,
            next in proptest::option::of(any::<u64>()),
            s in 0..7u8,
        ) {
            let status = RepoStatus::ALL[s as usize];
            let st = RepoState {
                status,
                rev,
                data: None,
                handle: Some("a.test".into()),
                error: None,
                retries,
                next_retry_ms: next,
                updated_ms: 7,
                commit: Some("bafyreia".into()),
                handle_ok: Some(true),
                account_status: Some("throttled".into()),
            };
            prop_assert_eq!(RepoState::decode(&st.encode()).unwrap(), st);
        }

        #[test]
        fn record_refs_encode_and_view_without_a_copy(
            cid in proptest::collection::vec(any::<u8>(), 0..40),
            body in proptest::collection::vec(any::<u8>(), 1..200),
        ) {
            let stored = RecordRef { cid: cid.clone(), body: Some(body.clone()) };
            let bytes = RecordRef::encode_parts(&cid, &body);
            prop_assert_eq!(&bytes, &stored.encode());
            prop_assert_eq!(RecordRef::decode(&bytes).unwrap(), stored);
            prop_assert_eq!(RecordRef::view(&bytes).unwrap(), RecordRefView { cid: &cid, body: Some(&body) });
        }

        #[test]
        fn version_1_record_refs_view_without_a_body(cid in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut bytes = vec![1];
            postcard::to_io(&serde_bytes::Bytes::new(&cid), &mut bytes).unwrap();
            prop_assert_eq!(RecordRef::view(&bytes).unwrap(), RecordRefView { cid: &cid, body: None });
        }

        /// Bytes of any shape (random, or a valid value with one byte changed, cut short or
        /// grown): each type either reads a value that its own encoding reads back as, or says
        /// what is wrong, consistently with the version byte.
        #[test]
        fn whatever_decodes_reads_back_and_whatever_fails_says_why(bytes in damaged_values()) {
            decodes_soundly::<RepoState>(&bytes, &[1, 2, 3, 4])?;
            decodes_soundly::<EventPage>(&bytes, &[1, 2, 3])?;
            decodes_soundly::<RecordRef>(&bytes, &[1, 2])?;
            decodes_soundly::<EventSpan>(&bytes, &[1])?;
            decodes_soundly::<Cursor>(&bytes, &[1])?;
            decodes_soundly::<HeldCommit>(&bytes, &[1])?;
            // The in-place view reads what the copying decode reads, or fails alike.
            match (RecordRef::view(&bytes), RecordRef::decode(&bytes)) {
                (Ok(view), Ok(owned)) => {
                    prop_assert_eq!(view.cid, &owned.cid[..]);
                    prop_assert_eq!(view.body, owned.body.as_deref());
                }
                (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                (view, owned) => prop_assert!(false, "view {:?} but decode {:?}", view, owned),
            }
        }

        /// A value cut short anywhere is refused: nothing of a current encoding reads as a value.
        #[test]
        fn cut_values_are_refused(
            state in repo_state(),
            events in proptest::collection::vec(record_event(), 0..4),
            first_time: u64,
        ) {
            let page = EventPage { first_time, events };
            let (state, page) = (state.encode(), page.encode());
            for n in 0..state.len() {
                refused(RepoState::decode(&state[..n]), n)?;
            }
            for n in 0..page.len() {
                refused(EventPage::decode(&page[..n]), n)?;
            }
        }
    }

    /// `n` bytes were refused: as empty when there were none, else as corrupt.
    fn refused<T: std::fmt::Debug>(decoded: Result<T, ValueError>, n: usize) -> Result<(), TestCaseError> {
        match decoded {
            Err(ValueError::Empty(_)) if n == 0 => Ok(()),
            Err(ValueError::Corrupt { .. }) if n > 0 => Ok(()),
            other => Err(TestCaseError::fail(format!("{n} bytes: {other:?}"))),
        }
    }

    fn repo_state() -> impl Strategy<Value = RepoState> {
        let text = || proptest::option::of("[a-z0-9.:]{0,20}");
        (
            (0..7usize, text(), text(), text(), text()),
            (
                any::<u32>(),
                proptest::option::of(any::<u64>()),
                any::<u64>(),
                text(),
                proptest::option::of(any::<bool>()),
                text(),
            ),
        )
            .prop_map(
                |(
                    (s, rev, data, handle, error),
                    (retries, next_retry_ms, updated_ms, commit, handle_ok, account_status),
                )| RepoState {
                    status: RepoStatus::ALL[s],
                    rev,
                    data,
                    handle,
                    error,
                    retries,
                    next_retry_ms,
                    updated_ms,
                    commit,
                    handle_ok,
                    account_status,
                },
            )
    }

    /// Random bytes, bytes under a chosen version byte, and valid values of each type damaged
    /// once: one byte changed, cut short, or a byte put in.
    fn damaged_values() -> impl Strategy<Value = Vec<u8>> {
        let valid = prop_oneof![
            repo_state().prop_map(|s| s.encode()),
            proptest::collection::vec(record_event(), 0..3)
                .prop_flat_map(
                    |events| any::<u64>().prop_map(move |t| EventPage { first_time: t, events: events.clone() })
                )
                .prop_map(|p| p.encode()),
            (proptest::collection::vec(any::<u8>(), 0..40), proptest::collection::vec(any::<u8>(), 1..40))
                .prop_map(|(cid, body)| RecordRef::encode_parts(&cid, &body)),
            (any::<u64>(), any::<u32>()).prop_map(|(first_id, count)| EventSpan { first_id, count }.encode()),
        ];
        let damaged =
            (valid, 0..3u8, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut bytes, how, at, byte)| {
                let i = at.index(bytes.len() + 1);
                match how {
                    0 if i < bytes.len() => bytes[i] ^= byte.max(1),
                    1 => bytes.truncate(i),
                    _ => bytes.insert(i, byte),
                }
                bytes
            });
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            (0..6u8, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(v, mut body)| {
                body.insert(0, v);
                body
            }),
            damaged,
        ]
    }

    /// `T` on `bytes`: a value whose encoding reads back as itself, read from a version `T` has
    /// (`known`); or the error that fits the version byte, naming `T`: empty, an unknown
    /// version (named, with the newest this build reads), or corrupt under a known version.
    fn decodes_soundly<T: Stored + PartialEq + std::fmt::Debug>(
        bytes: &[u8],
        known: &[u8],
    ) -> Result<(), TestCaseError> {
        match (T::decode(bytes), bytes.first()) {
            (Ok(value), Some(version)) => {
                prop_assert!(known.contains(version), "{} read from version {}", T::WHAT, version);
                let again = T::decode(&value.encode());
                prop_assert_eq!(again.as_ref().ok(), Some(&value), "{} reads back as itself: {:?}", T::WHAT, again);
            }
            (Ok(value), None) => prop_assert!(false, "{} read from no bytes: {:?}", T::WHAT, value),
            (Err(e), first) => {
                let message = e.to_string();
                prop_assert!(message.contains(T::WHAT), "{:?} names {}", message, T::WHAT);
                match (e, first) {
                    (ValueError::Empty(_), None) => prop_assert!(message.contains("empty")),
                    (ValueError::Version { version, newest, .. }, Some(&v)) if !known.contains(&v) => {
                        prop_assert_eq!((version, newest), (v, T::VERSION));
                        prop_assert!(message.contains(&format!("version {v}")), "{}", message);
                    }
                    (ValueError::Corrupt { .. }, Some(v)) if known.contains(v) => {
                        prop_assert!(message.contains("corrupt"))
                    }
                    (e, first) => prop_assert!(false, "{:?} for a value starting {:?}", e, first),
                }
            }
        }
        Ok(())
    }

    /// Every golden value, cut short anywhere, is refused as empty or corrupt; under any
    /// version byte its type does not know it is refused naming that version.
    #[test]
    fn cut_and_mislabelled_golden_values_are_refused() {
        fn check<T: Stored + std::fmt::Debug>(name: &str) {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            T::decode(&bytes).unwrap_or_else(|e| panic!("{name} decodes whole: {e}"));
            assert!(matches!(T::decode(&[]), Err(ValueError::Empty(_))));
            for n in 1..bytes.len() {
                match T::decode(&bytes[..n]) {
                    Err(e @ ValueError::Corrupt { .. }) => {
                        assert!(e.to_string().contains(&format!("stored {} value is corrupt", T::WHAT)))
                    }
                    other => panic!("{name} cut to {n} of {} bytes: {other:?}", bytes.len()),
                }
            }
            for v in (0..=u8::MAX).filter(|&v| v == 0 || v > T::VERSION) {
                let mut mislabelled = bytes.clone();
                mislabelled[0] = v;
                let e = T::decode(&mislabelled).unwrap_err();
                assert_eq!(
                    e.to_string(),
                    format!("stored {} value has format version {v}, this build reads up to {}", T::WHAT, T::VERSION),
                    "{name} under version {v}"
                );
            }
        }
        for name in ["v1-repo-state.bin", "v1-repo-state-desynchronized.bin", "v2-repo-state.bin", "v3-repo-state.bin"]
        {
            check::<RepoState>(name);
        }
        for name in ["v1-event-page.bin", "v2-event-page.bin", "v3-event-page.bin"] {
            check::<EventPage>(name);
        }
        for name in ["v1-record-ref.bin", "v2-record-ref.bin"] {
            check::<RecordRef>(name);
        }
        check::<EventSpan>("v1-event-span.bin");
        check::<Cursor>("v1-cursor.bin");
        check::<HeldCommit>("v1-held-commit.bin");
    }

    #[test]
    fn unknown_versions_and_empty_values_are_named() {
        assert!(RepoState::decode(&[]).unwrap_err().to_string().contains("empty"));
        assert!(RepoState::decode(&[9, 0]).unwrap_err().to_string().contains("version 9"));
        assert!(EventPage::decode(&[4, 0]).unwrap_err().to_string().contains("reads up to 3"));
        assert!(EventPage::decode(&[2, 0, 0]).unwrap_err().to_string().contains("corrupt"));
    }
}
