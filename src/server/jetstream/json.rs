//! A stored event as Jetstream v1 JSON, field for field (names, nesting, order, and which
//! fields are left out), as bluesky-social/jetstream's `models.Event` serializes it:
//!
//! ```text
//! {"did", "time_us", "kind": "commit",   "commit":   {"rev", "operation", "collection", "rkey", "record"?, "cid"?}}
//! {"did", "time_us", "kind": "identity", "identity": {"did", "handle"?, "seq", "time"}}
//! {"did", "time_us", "kind": "account",  "account":  {"active", "did", "seq", "status"?, "time"}}
//! ```
//!
//! sluice does not keep the relay's `seq`: `seq` carries the sluice event id (unique and
//! increasing, like the relay's), and `time` the event's time (`time_us`) in RFC 3339 with
//! microseconds. A commit's `record` is what sluice emits (a handler's replacement when one
//! replaced it), `cid` the record's CID; deletes have neither. Handler outputs are not part of
//! this format.

use cid::Cid;
use serde::Serialize;
use serde_json::Value;
use sluice_handlers::value::cbor_to_json;

use crate::store::{RecordEvent, Store, StoreError, StoredEvent};

#[derive(Serialize)]
struct Envelope<'a> {
    did: &'a str,
    time_us: u64,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    commit: Option<Commit<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<Account<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<Identity<'a>>,
}

#[derive(Serialize)]
struct Commit<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    rev: &'a str,
    operation: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    collection: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    rkey: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cid: Option<String>,
}

#[derive(Serialize)]
struct Identity<'a> {
    did: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    handle: Option<&'a str>,
    seq: u64,
    time: String,
}

#[derive(Serialize)]
struct Account<'a> {
    active: bool,
    did: &'a str,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a str>,
    time: String,
}

/// Event `id`, at `time_us`, as one Jetstream v1 message.
pub(super) fn event_json(store: &Store, id: u64, time_us: u64, event: &StoredEvent) -> Result<String, StoreError> {
    let mut envelope = Envelope { did: "", time_us, kind: "", commit: None, account: None, identity: None };
    match event {
        StoredEvent::Record(r) => {
            (envelope.did, envelope.kind) = (&r.did, "commit");
            envelope.commit = Some(commit(store, r)?);
        }
        StoredEvent::Identity(i) => {
            (envelope.did, envelope.kind) = (&i.did, "identity");
            envelope.identity =
                Some(Identity { did: &i.did, handle: i.handle.as_deref(), seq: id, time: rfc3339(time_us) });
        }
        StoredEvent::Account(a) => {
            (envelope.did, envelope.kind) = (&a.did, "account");
            envelope.account = Some(Account {
                active: a.active,
                did: &a.did,
                seq: id,
                status: a.status.as_deref(),
                time: rfc3339(time_us),
            });
        }
    }
    Ok(serde_json::to_string(&envelope).expect("serializing to a String cannot fail"))
}

fn commit<'a>(store: &Store, r: &'a RecordEvent) -> Result<Commit<'a>, StoreError> {
    let (record, cid) = if r.cid.is_empty() {
        (None, None)
    } else {
        let cid = Cid::try_from(&r.cid[..]).map(|c| c.to_string()).ok();
        (record_body(store, r)?, cid)
    };
    Ok(Commit { rev: &r.rev, operation: r.action.as_str(), collection: &r.collection, rkey: &r.rkey, record, cid })
}

/// The record as sluice emits it: a handler's replacement, or the stored body as AT Protocol
/// JSON; `None` when the body is not stored (the field is left out, as Jetstream does).
fn record_body(store: &Store, r: &RecordEvent) -> Result<Option<Value>, StoreError> {
    Ok(match &r.replaced {
        Some(json) => serde_json::from_str(json).ok(),
        None => store.log().body(r)?.and_then(|bytes| cbor_to_json(&bytes).ok()),
    })
}

/// Unix µs as RFC 3339 UTC with microseconds.
fn rfc3339(time_us: u64) -> String {
    let time = chrono::DateTime::from_timestamp_micros(time_us as i64).unwrap_or_default();
    time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_with_microseconds() {
        assert_eq!(rfc3339(1_779_719_010_267_528), "2026-05-25T14:23:30.267528Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
    }
}
