//! Stored values: a version byte, then postcard. Every type written to fjall lives here, and
//! every version that was ever written keeps a golden file in `tests/golden/` that must decode.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The format version written today.
pub const VERSION: u8 = 1;

/// Why a stored value did not decode.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// Empty value.
    #[error("stored {0} value is empty")]
    Empty(&'static str),
    /// Written by a format this build does not know.
    #[error("stored {what} value has format version {version}, this build reads up to {VERSION}")]
    Version { what: &'static str, version: u8 },
    /// The bytes do not decode.
    #[error("stored {what} value is corrupt: {source}")]
    Corrupt { what: &'static str, source: postcard::Error },
}

/// A value with a stored form.
pub trait Stored: Serialize + DeserializeOwned {
    /// Name used in errors.
    const WHAT: &'static str;

    /// Typical encoded size, to allocate once (events are ~150 bytes).
    const SIZE_HINT: usize = 64;

    /// Version byte + postcard.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE_HINT);
        out.push(VERSION);
        postcard::to_io(self, &mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Reads any known version.
    fn decode(bytes: &[u8]) -> Result<Self, ValueError> {
        match bytes.split_first() {
            None => Err(ValueError::Empty(Self::WHAT)),
            Some((&1, rest)) => postcard::from_bytes(rest).map_err(|source| ValueError::Corrupt { what: Self::WHAT, source }),
            Some((&version, _)) => Err(ValueError::Version { what: Self::WHAT, version }),
        }
    }
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
        RepoStatus::Pending, RepoStatus::Backfilling, RepoStatus::Synced, RepoStatus::Discarded, RepoStatus::Error, RepoStatus::Gone, RepoStatus::Desynchronized,
    ];

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

/// `repos` value: a repo's state.
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
}

impl RepoState {
    /// When the backfill queue should take this repo (unix ms), or `None` when it is not
    /// queued. Pending and backfilling repos are queued (a crash mid-backfill leaves the repo
    /// queued), and so is a desynchronized one; a failed one is queued until its retries run
    /// out.
    pub fn queue_due(&self) -> Option<u64> {
        match self.status {
            RepoStatus::Pending | RepoStatus::Backfilling | RepoStatus::Desynchronized => Some(self.next_retry_ms.unwrap_or(0)),
            RepoStatus::Error => self.next_retry_ms,
            RepoStatus::Synced | RepoStatus::Discarded | RepoStatus::Gone => None,
        }
    }
}

impl Stored for RepoState {
    const WHAT: &'static str = "repo state";
}

/// `records` value: the CID of the stored version (binary CID bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRef {
    /// Binary CID.
    #[serde(with = "serde_bytes")]
    pub cid: Vec<u8>,
}

impl Stored for RecordRef {
    const WHAT: &'static str = "record";
}

impl RecordRef {
    /// The stored form of a `RecordRef` holding `cid`, without building one.
    pub fn encode_cid(cid: &[u8]) -> Vec<u8> {
        #[derive(Serialize)]
        struct Borrowed<'a>(#[serde(with = "serde_bytes")] &'a [u8]);
        let mut out = vec![VERSION];
        postcard::to_io(&Borrowed(cid), &mut out).expect("writing to a Vec cannot fail");
        out
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

/// A record event as stored: the record body stays in `blocks`, referenced by CID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEvent {
    /// From the firehose (true) or a backfill walk (false).
    pub live: bool,
    /// Repo DID.
    pub did: String,
    /// Commit rev.
    pub rev: String,
    /// Collection NSID.
    pub collection: String,
    /// Record key.
    pub rkey: String,
    /// What happened.
    pub action: Action,
    /// Binary CID of the new version (none on delete).
    #[serde(with = "serde_bytes")]
    pub cid: Vec<u8>,
    /// JSON the event carries instead of the record, when a handler replaced it.
    pub replaced: Option<String>,
    /// Handler outputs: (handler name, JSON).
    pub handled: Vec<(String, String)>,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPage {
    /// The events, in id order.
    pub events: Vec<StoredEvent>,
}

impl EventPage {
    /// Most events in one page: bounds what a reader decodes to reach a cursor inside it.
    pub const MAX_EVENTS: usize = 512;
}

impl Stored for EventPage {
    const WHAT: &'static str = "event page";
    const SIZE_HINT: usize = 64 << 10;
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
        (any::<bool>(), "[a-z:0-9]{1,30}", "[a-z0-9]{13}", "[a-z.]{3,30}", "[a-z0-9]{1,15}", 0..3u8, proptest::collection::vec(any::<u8>(), 0..40), proptest::option::of(".{0,20}"), proptest::collection::vec(("[a-z-]{1,10}", ".{0,20}"), 0..3))
            .prop_map(|(live, did, rev, collection, rkey, a, cid, replaced, handled)| StoredEvent::Record(RecordEvent {
                live, did, rev, collection, rkey, action: [Action::Create, Action::Update, Action::Delete][a as usize], cid, replaced, handled,
            }))
    }

    proptest! {
        #[test]
        fn event_pages_round_trip(events in proptest::collection::vec(record_event(), 0..8)) {
            let page = EventPage { events };
            prop_assert_eq!(EventPage::decode(&page.encode()).unwrap(), page);
        }

        #[test]
        fn repo_states_round_trip(rev in proptest::option::of("[a-z0-9]{13}"), retries: u32, next in proptest::option::of(any::<u64>()), s in 0..7u8) {
            let status = RepoStatus::ALL[s as usize];
            let st = RepoState { status, rev, data: None, handle: Some("a.test".into()), error: None, retries, next_retry_ms: next, updated_ms: 7 };
            prop_assert_eq!(RepoState::decode(&st.encode()).unwrap(), st);
        }

        #[test]
        fn record_refs_encode_without_a_copy(cid in proptest::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(RecordRef::encode_cid(&cid), RecordRef { cid: cid.clone() }.encode());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = EventPage::decode(&bytes);
            let _ = RepoState::decode(&bytes);
        }
    }

    #[test]
    fn unknown_versions_and_empty_values_are_named() {
        assert!(RepoState::decode(&[]).unwrap_err().to_string().contains("empty"));
        assert!(RepoState::decode(&[9, 0]).unwrap_err().to_string().contains("version 9"));
    }
}
