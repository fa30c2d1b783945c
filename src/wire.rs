//! Events in their JSON wire shape (DESIGN.md, "Events"); the record body is read back from
//! the blocks keyspace and rendered as AT Protocol JSON.

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
            rec.insert("did".into(), r.did.clone().into());
            rec.insert("rev".into(), r.rev.clone().into());
            rec.insert("collection".into(), r.collection.clone().into());
            rec.insert("rkey".into(), r.rkey.clone().into());
            rec.insert("action".into(), r.action.as_str().into());
            if !r.cid.is_empty() {
                let cid = Cid::try_from(&r.cid[..]).map(|c| c.to_string()).unwrap_or_default();
                rec.insert("cid".into(), cid.into());
                let body = match &r.replaced {
                    Some(json) => serde_json::from_str(json).unwrap_or(Value::Null),
                    None => match store.block(&r.cid)? {
                        Some(bytes) => cbor_to_json(&bytes).unwrap_or(Value::Null),
                        None => Value::Null,
                    },
                };
                rec.insert("record".into(), body);
            }
            if !r.handled.is_empty() {
                let handled: Map<String, Value> =
                    r.handled.iter().map(|(name, v)| (name.clone(), serde_json::from_str(v).unwrap_or(Value::Null))).collect();
                rec.insert("handled".into(), handled.into());
            }
            json!({ "id": id, "type": "record", "record": rec })
        }
        StoredEvent::Identity(i) => json!({ "id": id, "type": "identity", "identity": { "did": i.did, "handle": i.handle } }),
        StoredEvent::Account(a) => json!({ "id": id, "type": "account", "account": { "did": a.did, "active": a.active, "status": a.status } }),
    })
}
