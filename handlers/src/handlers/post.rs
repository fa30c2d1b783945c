//! `post`: app.bsky.feed.post -> text, languages, reply root/parent, and the links, mentions and
//! tags of its facets. Setting `langs = ["en", ...]` keeps only posts in those languages.

use serde::{Deserialize, Serialize};

use crate::{CollectionHandler, HandlerError, HandlerOutput, HandlerSettings, RecordView};

/// The built-in post handler.
pub struct PostHandler;

crate::register_handler!(PostHandler);

/// A post as the handler reads it: its strings borrowed from the record's bytes (DAG-CBOR
/// strings are never chunked), so reading a post allocates only its lists.
#[derive(Deserialize)]
struct Post<'a> {
    #[serde(default, borrow)]
    text: &'a str,
    #[serde(borrow)]
    langs: Option<Vec<&'a str>>,
    #[serde(borrow)]
    reply: Option<Reply<'a>>,
    #[serde(borrow)]
    facets: Option<Vec<Facet<'a>>>,
}

/// What the handler emits. Fields in alphabetical order: the order the JSON has always had.
#[derive(Serialize)]
struct PostOut<'a> {
    langs: &'a [&'a str],
    links: Vec<&'a str>,
    mentions: Vec<&'a str>,
    reply_parent: Option<&'a str>,
    reply_root: Option<&'a str>,
    tags: Vec<&'a str>,
    text: &'a str,
}

#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(borrow)]
    root: StrongRef<'a>,
    #[serde(borrow)]
    parent: StrongRef<'a>,
}

#[derive(Deserialize)]
struct StrongRef<'a> {
    uri: &'a str,
}

#[derive(Deserialize)]
struct Facet<'a> {
    #[serde(default, borrow)]
    features: Vec<Feature<'a>>,
}

#[derive(Deserialize)]
struct Feature<'a> {
    #[serde(rename = "$type", default)]
    kind: &'a str,
    uri: Option<&'a str>,
    did: Option<&'a str>,
    tag: Option<&'a str>,
}

impl CollectionHandler for PostHandler {
    fn name(&self) -> &'static str {
        "post"
    }

    fn collections(&self) -> &'static [&'static str] {
        &["app.bsky.feed.post"]
    }

    fn configure(&self, settings: &HandlerSettings) -> Result<(), HandlerError> {
        settings.only_keys(&["langs"])?;
        settings.str_list("langs").map(|_| ())
    }

    fn on_record(
        &self,
        rec: &RecordView<'_>,
        settings: &HandlerSettings,
        out: &mut HandlerOutput,
    ) -> Result<(), HandlerError> {
        let post: Post = rec.decode()?;
        let langs = post.langs.unwrap_or_default();
        if let Some(wanted) = settings.str_list("langs")?
            && !langs.iter().any(|l| wanted.iter().any(|w| lang_matches(w, l)))
        {
            out.drop_record();
            return Ok(());
        }
        let (mut links, mut mentions, mut tags) = (Vec::new(), Vec::new(), Vec::new());
        for feature in post.facets.into_iter().flatten().flat_map(|f| f.features) {
            match feature.kind.rsplit('#').next() {
                Some("link") => links.extend(feature.uri),
                Some("mention") => mentions.extend(feature.did),
                Some("tag") => tags.extend(feature.tag),
                _ => {}
            }
        }
        out.emit(PostOut {
            langs: &langs,
            links,
            mentions,
            reply_parent: post.reply.as_ref().map(|r| r.parent.uri),
            reply_root: post.reply.as_ref().map(|r| r.root.uri),
            tags,
            text: post.text,
        })
    }
}

/// `en` matches `en` and `en-US`; comparison ignores case.
fn lang_matches(wanted: &str, tag: &str) -> bool {
    let (w, t) = (wanted.to_ascii_lowercase(), tag.to_ascii_lowercase());
    t == w || t.strip_prefix(&w).is_some_and(|rest| rest.starts_with('-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{cbor, run_record};
    use serde_json::json;

    fn sample() -> Vec<u8> {
        cbor(&json!({
            "$type": "app.bsky.feed.post", "text": "hi #rust", "createdAt": "2024-01-01T00:00:00Z",
            "langs": ["en-US"],
            "reply": {
                "root": {
                    "uri": "at://did:plc:a/app.bsky.feed.post/1",
                    "cid": "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"
                },
                "parent": {
                    "uri": "at://did:plc:a/app.bsky.feed.post/2",
                    "cid": "bafyreiclp443lavogvhj3d2ob2cxbfuscni2k5jk7bebjzg7khl3esabwq"
                }
            },
            "facets": [{"index": {"byteStart": 3, "byteEnd": 8}, "features": [
                {"$type": "app.bsky.richtext.facet#tag", "tag": "rust"},
                {"$type": "app.bsky.richtext.facet#link", "uri": "https://example.com"},
                {"$type": "app.bsky.richtext.facet#mention", "did": "did:plc:b"}]}]
        }))
    }

    #[test]
    fn extracts_text_reply_and_facets() {
        let out = run_record(&PostHandler, "app.bsky.feed.post", &sample(), &HandlerSettings::default()).unwrap();
        assert_eq!(out.json().unwrap(), json!({
            "text": "hi #rust", "langs": ["en-US"],
            "reply_root": "at://did:plc:a/app.bsky.feed.post/1", "reply_parent": "at://did:plc:a/app.bsky.feed.post/2",
            "links": ["https://example.com"], "mentions": ["did:plc:b"], "tags": ["rust"],
        }).to_string());
    }

    #[test]
    fn langs_setting_drops_other_languages() {
        let only = |l: &str| HandlerSettings::new(toml::from_str(&format!("langs = [\"{l}\"]")).unwrap());
        let kept = run_record(&PostHandler, "app.bsky.feed.post", &sample(), &only("en")).unwrap();
        assert_eq!(kept.emit_choice(), &crate::Emit::Keep);
        let dropped = run_record(&PostHandler, "app.bsky.feed.post", &sample(), &only("ja")).unwrap();
        assert_eq!(dropped.emit_choice(), &crate::Emit::Drop);
    }

    #[test]
    fn bad_settings_are_refused() {
        let s = HandlerSettings::new(toml::from_str("langs = 3").unwrap());
        assert!(PostHandler.configure(&s).is_err());
        let s = HandlerSettings::new(toml::from_str("colour = 3").unwrap());
        assert!(PostHandler.configure(&s).unwrap_err().to_string().contains("colour"));
    }
}
