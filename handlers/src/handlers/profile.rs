//! `profile`: app.bsky.actor.profile -> display name, description, avatar and banner CIDs;
//! indexes `did -> display name` in its keyspace for lookups.

use serde::Deserialize;
use serde_json::json;

use crate::{CollectionHandler, HandlerError, HandlerOutput, HandlerSettings, RecordKeyView, RecordView};

/// The built-in profile handler.
pub struct ProfileHandler;

crate::register_handler!(ProfileHandler);

#[derive(Deserialize)]
struct Profile {
    #[serde(rename = "displayName")]
    display_name: Option<String>,
    description: Option<String>,
    avatar: Option<serde_json::Value>,
    banner: Option<serde_json::Value>,
}

/// The `$link` of a blob's `ref`, as decoded by the shared codec.
fn blob_cid(blob: &serde_json::Value) -> Option<String> {
    blob.pointer("/ref/$link").and_then(|v| v.as_str()).map(str::to_owned)
}

impl CollectionHandler for ProfileHandler {
    fn name(&self) -> &'static str {
        "profile"
    }

    fn collections(&self) -> &'static [&'static str] {
        &["app.bsky.actor.profile"]
    }

    fn configure(&self, settings: &HandlerSettings) -> Result<(), HandlerError> {
        settings.only_keys(&[])
    }

    fn on_record(
        &self,
        rec: &RecordView<'_>,
        _: &HandlerSettings,
        out: &mut HandlerOutput,
    ) -> Result<(), HandlerError> {
        if rec.rkey != "self" {
            return Ok(());
        }
        // Blobs carry CID links, so this goes through the shared JSON codec, not serde structs.
        let profile: Profile =
            serde_json::from_value(rec.value()?.clone()).map_err(|e| HandlerError::Decode(e.to_string()))?;
        let name = profile.display_name.clone().unwrap_or_default();
        out.put(rec.did.as_bytes(), name.into_bytes());
        out.emit(json!({
            "display_name": profile.display_name,
            "description": profile.description,
            "avatar": profile.avatar.as_ref().and_then(blob_cid),
            "banner": profile.banner.as_ref().and_then(blob_cid),
        }))
    }

    fn on_delete(
        &self,
        key: &RecordKeyView<'_>,
        _: &HandlerSettings,
        out: &mut HandlerOutput,
    ) -> Result<(), HandlerError> {
        if key.rkey == "self" {
            out.delete(key.did.as_bytes());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{cbor, run_record_at};

    #[test]
    fn profile_emits_names_and_blob_cids() {
        let rec = cbor(&json!({
            "$type": "app.bsky.actor.profile",
            "displayName": "Alice",
            "description": "hi",
            "avatar": {
                "$type": "blob",
                "ref": {"$link": "bafkreiccldh766hwcnuxnf2wh6jgzepf2nlu2lvcllt63eww5p6chi4ity"},
                "mimeType": "image/jpeg",
                "size": 10
            }
        }));
        let out = run_record_at(&ProfileHandler, "app.bsky.actor.profile", "self", &rec, &HandlerSettings::default())
            .unwrap();
        assert_eq!(out.value().unwrap()["display_name"], "Alice");
        assert_eq!(out.value().unwrap()["avatar"], "bafkreiccldh766hwcnuxnf2wh6jgzepf2nlu2lvcllt63eww5p6chi4ity");
        assert_eq!(out.writes()[0].value.as_deref(), Some(&b"Alice"[..]));
    }
}
