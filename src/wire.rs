//! Events in their JSON wire shape (DESIGN.md, "Events"); the record body the event carries is
//! rendered as AT Protocol JSON.

use cid::Cid;
use serde_json::{Map, Value, json};
use sluice_handlers::value::cbor_to_json;

use crate::store::{Store, StoreError, StoredEvent};

/// One stored event as its JSON wire value.
pub fn event_json(store: &Store, id: u64, event: &StoredEvent) -> Result<Value, StoreError> {
    Ok(match event {
        StoredEvent::Record(r) => {
            let mut rec = Map::new();
            rec.insert("live".into(), r.live.into());
            rec.insert("did".into(), r.did.as_str().into());
            rec.insert("rev".into(), r.rev.as_str().into());
            rec.insert("collection".into(), r.collection.as_str().into());
            rec.insert("rkey".into(), r.rkey.as_str().into());
            rec.insert("action".into(), r.action.as_str().into());
            if !r.cid.is_empty() {
                let cid = Cid::try_from(&r.cid[..]).map(|c| c.to_string()).unwrap_or_default();
                rec.insert("cid".into(), cid.into());
                let body = match &r.replaced {
                    Some(json) => serde_json::from_str(json).unwrap_or(Value::Null),
                    None => match store.log().body(r)? {
                        Some(bytes) => cbor_to_json(&bytes).unwrap_or(Value::Null),
                        None => Value::Null,
                    },
                };
                rec.insert("record".into(), body);
            }
            if !r.handled.is_empty() {
                let handled: Map<String, Value> = r
                    .handled
                    .iter()
                    .map(|(name, v)| (name.to_string(), serde_json::from_str(v).unwrap_or(Value::Null)))
                    .collect();
                rec.insert("handled".into(), handled.into());
            }
            json!({ "id": id, "type": "record", "record": rec })
        }
        StoredEvent::Identity(i) => {
            json!({ "id": id, "type": "identity", "identity": { "did": i.did, "handle": i.handle } })
        }
        StoredEvent::Account(a) => {
            json!({ "id": id, "type": "account", "account": { "did": a.did, "active": a.active, "status": a.status } })
        }
    })
}

/// One stored event as JSON text: the same value as [`event_json`], written straight from the
/// stored bytes with no JSON tree in between (the event stream's hot path).
pub fn event_text(store: &Store, id: u64, event: &StoredEvent) -> Result<String, StoreError> {
    Ok(String::from_utf8(event_json_bytes(store, id, event)?).expect("serde_json writes UTF-8"))
}

/// [`event_text`] as bytes, for a caller that sends bytes (the NATS sink): the text is not
/// checked again for UTF-8, which serde_json writes.
pub fn event_json_bytes(store: &Store, id: u64, event: &StoredEvent) -> Result<Vec<u8>, StoreError> {
    let StoredEvent::Record(record) = event else { return Ok(event_json(store, id, event)?.to_string().into_bytes()) };
    let body = store.log().body(record)?;
    let body = body.as_deref();
    // Sized for the body's JSON (about twice its CBOR), so the buffer rarely grows.
    let mut out = Vec::with_capacity(320 + body.map_or(0, |b| 2 * b.len()));
    // The body is transcoded straight into the event; one that does not decode (rare: the
    // network's records are checked on the way in) fails the write, which is redone with the
    // body checked on its own first and shown as `null`.
    if serde_json::to_writer(&mut out, &RecordEventText { id, record, body, body_checked: false }).is_err() {
        out.clear();
        serde_json::to_writer(&mut out, &RecordEventText { id, record, body, body_checked: true })
            .expect("a checked body writes");
    }
    Ok(out)
}

/// A record event as [`event_json`] writes it (keys in the same, sorted, order).
struct RecordEventText<'a> {
    id: u64,
    record: &'a crate::store::RecordEvent,
    /// The stored body, when the event carries one and no handler replaced it.
    body: Option<&'a [u8]>,
    /// Whether the body is decoded on its own before it is written (`null` if it does not
    /// decode), rather than straight into the event (which then fails as a whole).
    body_checked: bool,
}

impl serde::Serialize for RecordEventText<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(Some(3))?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("record", &RecordFields(self))?;
        map.serialize_entry("type", "record")?;
        map.end()
    }
}

struct RecordFields<'a, 'b>(&'b RecordEventText<'a>);

impl serde::Serialize for RecordFields<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let r = self.0.record;
        // Stored JSON, checked and embedded as it is (borrowed: no copy per event).
        let raw = |json| serde_json::from_str::<&serde_json::value::RawValue>(json).ok();
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("action", r.action.as_str())?;
        if !r.cid.is_empty() {
            map.serialize_entry("cid", &Cid::try_from(&r.cid[..]).map(|c| c.to_string()).unwrap_or_default())?;
        }
        map.serialize_entry("collection", &r.collection)?;
        map.serialize_entry("did", &r.did)?;
        if !r.handled.is_empty() {
            let handled: std::collections::BTreeMap<&str, Option<&serde_json::value::RawValue>> =
                r.handled.iter().map(|(name, v)| (name.as_str(), raw(v))).collect();
            map.serialize_entry("handled", &handled)?;
        }
        map.serialize_entry("live", &r.live)?;
        if !r.cid.is_empty() {
            match (&r.replaced, self.0.body) {
                (Some(json), _) => map.serialize_entry("record", &raw(json))?,
                (None, Some(body)) if self.0.body_checked => {
                    map.serialize_entry("record", &sluice_handlers::value::CborAsJson(body))?
                }
                (None, Some(body)) => map.serialize_entry("record", &sluice_handlers::transcode::Transcode(body))?,
                (None, None) => map.serialize_entry("record", &())?,
            }
        }
        map.serialize_entry("rev", &r.rev)?;
        map.serialize_entry("rkey", &r.rkey)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Action, RecordEvent};

    /// The text form is the tree form, for bodies (carried, or in `blocks` for pages written
    /// before events carried them), deletes, replaced values and handler outputs.
    #[test]
    fn event_text_is_event_json() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let body = sluice_handlers::value::json_to_cbor(&json!({
            "$type": "a.b.c",
            "n": 1,
            "b": {"$bytes": "AQID"},
            "l": {"$link": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"}
        }))
        .unwrap();
        let cid = jacquard_repo::mst::util::compute_cid(&body).unwrap().to_bytes();
        store.log().insert_legacy_body(&cid, &body);
        let carried = Some(bytes::Bytes::from(body.clone()));
        let event = |action,
                     cid: Vec<u8>,
                     replaced: Option<&str>,
                     handled: Vec<(smol_str::SmolStr, String)>,
                     body: Option<bytes::Bytes>| {
            StoredEvent::Record(RecordEvent {
                live: true,
                did: "did:plc:a".into(),
                rev: "3l".into(),
                collection: "a.b.c".into(),
                rkey: "k\"q".into(),
                action,
                cid,
                replaced: replaced.map(str::to_string),
                handled,
                body,
            })
        };
        let legacy = event(Action::Create, cid.clone(), None, vec![], None);
        let text: Value = serde_json::from_str(&event_text(&store, 7, &legacy).unwrap()).unwrap();
        assert_eq!(text["record"]["record"]["n"], 1, "a legacy event's body is read from blocks");
        for e in [
            legacy,
            event(Action::Create, cid.clone(), None, vec![("post".into(), "{\"text\":\"x\"}".into())], carried.clone()),
            event(Action::Update, cid.clone(), Some("{\"kept\":true}"), vec![], None),
            event(Action::Delete, Vec::new(), None, vec![], None),
            event(Action::Create, vec![1, 85, 18, 32, 0], None, vec![], None),
            event(Action::Create, cid.clone(), None, vec![], Some(bytes::Bytes::from_static(&[0xff]))),
            // Refused midway, after part of the body was written: the event is written again.
            event(
                Action::Create,
                cid.clone(),
                None,
                vec![],
                Some(serde_ipld_dagcbor::to_vec(&std::collections::BTreeMap::from([("a", 1.0f64)])).unwrap().into()),
            ),
        ] {
            let text: Value = serde_json::from_str(&event_text(&store, 7, &e).unwrap()).unwrap();
            assert_eq!(text, event_json(&store, 7, &e).unwrap(), "{e:?}");
            assert!(text["record"]["action"].is_string(), "{e:?}");
        }
    }
}
