//! `backlinks`: likes, reposts and follows -> an index from subject to source.
//!
//! Keyspace layout: `subject \0 collection \0 source-did \0 rkey -> ""`, where the subject is an
//! at-uri (likes, reposts) or a DID (follows). So "who liked X" is one prefix scan, ordered by
//! source; [`backlink_prefix`] and [`parse_backlink_key`] are the codec, shared with the query.

use serde::Deserialize;

use crate::{
    CollectionHandler, HandlerError, HandlerOutput, HandlerSettings, PreviousRecord, RecordKeyView, RecordView,
};

/// The built-in backlinks handler.
pub struct BacklinksHandler;

crate::register_handler!(BacklinksHandler);

/// Collections whose `subject` is indexed.
pub const COLLECTIONS: &[&str] = &["app.bsky.feed.like", "app.bsky.feed.repost", "app.bsky.graph.follow"];

/// A record's `subject`: a strong ref's `uri` (likes, reposts) or a DID string (follows).
/// Decoded by hand because `#[serde(untagged)]` buffers every record and cost a third of
/// this handler's time. Borrowed from the record's bytes, as [`RecordView::decode`] allows.
struct Subject<'a>(&'a str);

impl<'de: 'a, 'a> Deserialize<'de> for Subject<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a str>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Subject<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a DID string or a strong ref with a `uri`")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Subject<'a>, E> {
                Ok(Subject(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Subject<'a>, A::Error> {
                let mut uri = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "uri" {
                        uri = Some(map.next_value::<&'de str>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                uri.map(Subject).ok_or_else(|| serde::de::Error::missing_field("uri"))
            }
        }
        d.deserialize_any(Visit(std::marker::PhantomData))
    }
}

/// What the handler emits.
#[derive(serde::Serialize)]
struct BacklinkOut<'a> {
    subject: &'a str,
}

#[derive(Deserialize)]
struct WithSubject<'a> {
    #[serde(borrow)]
    subject: Subject<'a>,
}

fn subject_of(bytes_decoded: Result<WithSubject<'_>, HandlerError>) -> Result<&str, HandlerError> {
    Ok(bytes_decoded?.subject.0)
}

/// The key of one backlink.
pub fn backlink_key(subject: &str, collection: &str, did: &str, rkey: &str) -> Vec<u8> {
    // Sized whole: a key grown from the prefix's size was reallocated for most likes.
    let mut k = Vec::with_capacity(subject.len() + collection.len() + did.len() + rkey.len() + 3);
    write_prefix(&mut k, subject, Some(collection));
    k.extend_from_slice(did.as_bytes());
    k.push(0);
    k.extend_from_slice(rkey.as_bytes());
    k
}

/// The prefix of all backlinks to `subject` (from `collection`, when given).
pub fn backlink_prefix(subject: &str, collection: Option<&str>) -> Vec<u8> {
    let mut k = Vec::with_capacity(subject.len() + collection.map_or(0, str::len) + 2);
    write_prefix(&mut k, subject, collection);
    k
}

fn write_prefix(k: &mut Vec<u8>, subject: &str, collection: Option<&str>) {
    k.extend_from_slice(subject.as_bytes());
    k.push(0);
    if let Some(c) = collection {
        k.extend_from_slice(c.as_bytes());
        k.push(0);
    }
}

/// Splits a backlink key into (subject, collection, did, rkey).
pub fn parse_backlink_key(key: &[u8]) -> Option<(&str, &str, &str, &str)> {
    let s = std::str::from_utf8(key).ok()?;
    let mut parts = s.split('\0');
    let out = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    parts.next().is_none().then_some(out)
}

fn unlink(prev: Option<PreviousRecord<'_>>, collection: &str, did: &str, rkey: &str, out: &mut HandlerOutput) {
    if let Some(Ok(subject)) = prev.map(|p| subject_of(p.decode())) {
        out.delete(backlink_key(subject, collection, did, rkey));
    }
}

impl CollectionHandler for BacklinksHandler {
    fn name(&self) -> &'static str {
        "backlinks"
    }

    fn collections(&self) -> &'static [&'static str] {
        COLLECTIONS
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
        let subject = subject_of(rec.decode())?;
        unlink(rec.previous, rec.collection, rec.did, rec.rkey, out);
        out.put(backlink_key(subject, rec.collection, rec.did, rec.rkey), Vec::new());
        out.emit(BacklinkOut { subject })
    }

    fn on_delete(
        &self,
        key: &RecordKeyView<'_>,
        _: &HandlerSettings,
        out: &mut HandlerOutput,
    ) -> Result<(), HandlerError> {
        unlink(key.previous, key.collection, key.did, key.rkey, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{cbor, run_record};
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        /// The key codec: keys parse back into their parts, start with their prefixes, and sort
        /// as their (subject, collection, did, rkey) tuples do, so a prefix scan is one subject's
        /// links in order.
        #[test]
        fn keys_round_trip_and_sort_as_their_parts(
            a in "[a-z:/.]{1,12}",
            b in "[a-z:/.]{1,12}",
            c in "[a-z.]{1,6}",
            d in "[a-z:]{1,6}",
            r in "[a-z0-9]{1,4}",
            r2 in "[a-z0-9]{1,4}",
        ) {
            let key = backlink_key(&a, &c, &d, &r);
            prop_assert_eq!(parse_backlink_key(&key), Some((a.as_str(), c.as_str(), d.as_str(), r.as_str())));
            prop_assert!(
                key.starts_with(&backlink_prefix(&a, Some(&c))) && key.starts_with(&backlink_prefix(&a, None))
            );
            let others =
                [(backlink_key(&b, &c, &d, &r), (&b, &c, &d, &r)), (backlink_key(&a, &c, &d, &r2), (&a, &c, &d, &r2))];
            for (other, parts) in others {
                prop_assert_eq!(key.cmp(&other), (&a, &c, &d, &r).cmp(&parts));
            }
        }
    }

    #[test]
    fn like_indexes_subject_uri_and_follow_subject_did() {
        let like = cbor(&json!({
            "$type": "app.bsky.feed.like",
            "createdAt": "2024-01-01T00:00:00Z",
            "subject": {
                "uri": "at://did:plc:x/app.bsky.feed.post/1",
                "cid": "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"
            }
        }));
        let out = run_record(&BacklinksHandler, "app.bsky.feed.like", &like, &HandlerSettings::default()).unwrap();
        let key = &out.writes()[0].key;
        assert_eq!(
            parse_backlink_key(key),
            Some(("at://did:plc:x/app.bsky.feed.post/1", "app.bsky.feed.like", "did:plc:test", "3kabc"))
        );
        let follow = cbor(
            &json!({"$type": "app.bsky.graph.follow", "createdAt": "2024-01-01T00:00:00Z", "subject": "did:plc:y"}),
        );
        let out = run_record(&BacklinksHandler, "app.bsky.graph.follow", &follow, &HandlerSettings::default()).unwrap();
        assert!(out.writes()[0].key.starts_with(&backlink_prefix("did:plc:y", Some("app.bsky.graph.follow"))));
    }

    #[test]
    fn delete_removes_the_link_of_the_previous_version() {
        let follow = cbor(&json!({"subject": "did:plc:y", "createdAt": "2024-01-01T00:00:00Z"}));
        let key = RecordKeyView {
            did: "did:plc:a",
            collection: "app.bsky.graph.follow",
            rkey: "r",
            rev: "x",
            live: true,
            previous: Some(PreviousRecord { cid: "c", bytes: &follow }),
        };
        let mut out = HandlerOutput::new();
        BacklinksHandler.on_delete(&key, &HandlerSettings::default(), &mut out).unwrap();
        assert_eq!(
            out.writes(),
            &[crate::IndexWrite {
                key: backlink_key("did:plc:y", "app.bsky.graph.follow", "did:plc:a", "r"),
                value: None
            }]
        );
    }
}
