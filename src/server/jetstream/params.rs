//! What a `/subscribe` client asks for: Jetstream v1's query parameters (checked before the
//! upgrade) and its `options_update` message (which replaces the filter on a live stream).

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::HeaderMap;
use serde::Deserialize;

use super::filter::Filter;
use crate::xrpc::XrpcError;

/// A client's options, from the query and headers.
#[derive(Debug)]
pub(super) struct Options {
    /// `cursor`: unix µs to replay from (0 for negative values); `None`: live.
    pub cursor: Option<u64>,
    /// `compress=true` or `Socket-Encoding: zstd`: zstd frames, sent as binary messages.
    pub compress: bool,
    /// `requireHello=true`: nothing is sent before the first `options_update`.
    pub require_hello: bool,
    /// `wantedCollections`, `wantedDids`, `maxMessageSizeBytes`.
    pub filter: Filter,
}

impl Options {
    /// Reads the query (parameters may repeat; unknown ones are ignored, as Jetstream does)
    /// and the `Socket-Encoding` header.
    pub(super) fn parse(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        headers: &HeaderMap,
    ) -> Result<Options, XrpcError> {
        let Query(pairs) = query.map_err(|e| XrpcError::invalid(e.body_text()))?;
        let all = |name: &str| pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect::<Vec<_>>();
        let first = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let cursor = match first("cursor") {
            Some(c) => Some(
                c.parse::<i64>()
                    .map_err(|_| {
                        XrpcError::invalid(format!("invalid cursor {c:?}: a cursor is a unix time in microseconds"))
                    })?
                    .max(0) as u64,
            ),
            None => None,
        };
        let max_size = match first("maxMessageSizeBytes") {
            Some(m) => m.parse::<i64>().map_err(|_| {
                XrpcError::invalid(format!("invalid maxMessageSizeBytes {m:?}: a number of bytes (0 for no limit)"))
            })?,
            None => 0,
        };
        let socket_zstd =
            headers.get("socket-encoding").and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("zstd"));
        Ok(Options {
            cursor,
            compress: flag(first("compress"), "compress")? || socket_zstd,
            require_hello: flag(first("requireHello"), "requireHello")?,
            filter: Filter::new(&all("wantedCollections"), &all("wantedDids"), max_size.max(0) as usize)
                .map_err(XrpcError::invalid)?,
        })
    }
}

/// A `true`/`false` parameter (absent is false).
fn flag(value: Option<&str>, name: &str) -> Result<bool, XrpcError> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(XrpcError::invalid(format!("invalid {name} {other:?}: use true or false"))),
    }
}

/// A message from the client.
#[derive(Deserialize)]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
    payload: Option<serde_json::Value>,
}

/// `options_update`'s payload: absent lists mean everything, an absent size no limit.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Update {
    wanted_collections: Vec<String>,
    wanted_dids: Vec<String>,
    max_message_size_bytes: i64,
}

/// Why a client message ends the stream: a websocket close code and reason.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Refused {
    /// 1007 for JSON that does not parse, 1008 for options that are not valid.
    pub code: u16,
    /// What was wrong.
    pub reason: String,
}

/// Reads a text message: the new filter of an `options_update`, `None` for other types (ignored,
/// as Jetstream does), or why the stream ends.
pub(super) fn parse_update(text: &str) -> Result<Option<Filter>, Refused> {
    let bad_json =
        |what: &str, e: serde_json::Error| Refused { code: 1007, reason: format!("{what} is not valid: {e}") };
    let message: ClientMessage = serde_json::from_str(text).map_err(|e| bad_json("the message", e))?;
    if message.kind != "options_update" {
        return Ok(None);
    }
    let payload =
        message.payload.ok_or_else(|| Refused { code: 1007, reason: "options_update has no payload".into() })?;
    let update: Update = serde_json::from_value(payload).map_err(|e| bad_json("the options_update payload", e))?;
    let max_size = update.max_message_size_bytes.max(0) as usize;
    let filter = Filter::new(&update.wanted_collections, &update.wanted_dids, max_size)
        .map_err(|reason| Refused { code: 1008, reason })?;
    Ok(Some(filter))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<Options, XrpcError> {
        let uri: axum::http::Uri = format!("/subscribe?{query}").parse().unwrap();
        Options::parse(Query::try_from_uri(&uri), &HeaderMap::new())
    }

    #[test]
    fn query_parameters_repeat_and_unknown_ones_are_ignored() {
        let o = parse(
            "wantedCollections=a.b.c&wantedCollections=x.y.*&wantedDids=did:plc:a&cursor=17&compress=true&maxSize=9",
        )
        .unwrap();
        assert_eq!((o.cursor, o.compress, o.require_hello, o.filter.max_size), (Some(17), true, false, 0));
        assert_eq!(parse("cursor=-5&maxMessageSizeBytes=-1").unwrap().cursor, Some(0));
        assert_eq!(parse("maxMessageSizeBytes=1000&requireHello=true").unwrap().filter.max_size, 1000);
    }

    #[test]
    fn bad_parameters_are_named() {
        for (query, named) in [
            ("cursor=soon", "cursor"),
            ("compress=yes", "compress"),
            ("requireHello=1", "requireHello"),
            ("maxMessageSizeBytes=big", "maxMessageSizeBytes"),
            ("wantedCollections=app.bs*", "app.bs*"),
            ("wantedDids=bob", "bob"),
        ] {
            let e = parse(query).unwrap_err();
            assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
            let body = format!("{e:?}");
            assert!(body.contains(named), "{query}: {body}");
        }
    }

    #[test]
    fn options_updates_replace_the_filter_or_end_the_stream() {
        let f = parse_update(
            r#"{"type":"options_update","payload":{"wantedCollections":["a.b.c"],"maxMessageSizeBytes":-3}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(f.max_size, 0);
        assert!(parse_update(r#"{"type":"hello","payload":{}}"#).unwrap().is_none(), "other types are ignored");
        assert_eq!(parse_update("not json").unwrap_err().code, 1007);
        assert_eq!(parse_update(r#"{"type":"options_update"}"#).unwrap_err().code, 1007);
        assert_eq!(
            parse_update(r#"{"type":"options_update","payload":{"wantedDids":"did:plc:a"}}"#).unwrap_err().code,
            1007
        );
        let refused = parse_update(r#"{"type":"options_update","payload":{"wantedDids":["bob"]}}"#).unwrap_err();
        assert_eq!(refused.code, 1008);
        assert!(refused.reason.contains("bob"));
    }
}
