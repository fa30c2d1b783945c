//! subscribeRepos frames: a DAG-CBOR header (`{op, t}`) followed by a DAG-CBOR body, decoded
//! into jacquard's lexicon types. `op = -1` is an error frame (`{error, message}`), which
//! jacquard does not decode for us; an unknown `t` is kept by name so callers can log it.

use jacquard_api::com_atproto::sync::subscribe_repos::{Account, Commit, Identity, Info, Sync};
use serde::Deserialize;

/// Largest frame accepted (the relay's limit for a commit is 2 MiB of blocks).
pub const MAX_FRAME_BYTES: usize = 5 << 20;

/// One decoded frame.
#[derive(Debug)]
pub enum Frame {
    /// `#commit`: a repo's new commit, with its ops and a CAR slice of blocks.
    Commit(Box<Commit>),
    /// `#sync`: a repo's current commit, without ops.
    Sync(Box<Sync>),
    /// `#identity`: the DID's document or handle may have changed.
    Identity(Box<Identity>),
    /// `#account`: the account's hosting status changed.
    Account(Box<Account>),
    /// `#info`, e.g. `OutdatedCursor`.
    Info(Box<Info>),
    /// An error frame (`op = -1`).
    Error {
        /// The error name, e.g. `FutureCursor`.
        error: String,
        /// Its message, when given.
        message: Option<String>,
    },
    /// A message type this version does not know.
    Unknown {
        /// Its `t`.
        kind: String,
    },
}

impl Frame {
    /// The sequence number, for frames that carry one.
    pub fn seq(&self) -> Option<i64> {
        match self {
            Frame::Commit(c) => Some(c.seq),
            Frame::Sync(s) => Some(s.seq),
            Frame::Identity(i) => Some(i.seq),
            Frame::Account(a) => Some(a.seq),
            Frame::Info(_) | Frame::Error { .. } | Frame::Unknown { .. } => None,
        }
    }

    /// The frame's `time` (when the server sequenced it) as unix µs, when it has a readable one.
    pub fn time_us(&self) -> Option<u64> {
        let time = match self {
            Frame::Commit(c) => c.time.as_str(),
            Frame::Sync(s) => s.time.as_str(),
            Frame::Identity(i) => i.time.as_str(),
            Frame::Account(a) => a.time.as_str(),
            Frame::Info(_) | Frame::Error { .. } | Frame::Unknown { .. } => return None,
        };
        chrono::DateTime::parse_from_rfc3339(time).ok().and_then(|t| u64::try_from(t.timestamp_micros()).ok())
    }
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Over [`MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes is over the {MAX_FRAME_BYTES}-byte limit")]
    TooLarge(usize),
    /// The header is not `{op, t}` DAG-CBOR.
    #[error("malformed frame header: {0}")]
    Header(String),
    /// The body does not decode as its type.
    #[error("malformed {kind} frame body: {reason}")]
    Body {
        /// The frame's `t` (or `error` for op -1).
        kind: String,
        /// What was wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
struct Header {
    op: i64,
    t: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    message: Option<String>,
}

/// Decodes one frame.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, FrameError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(bytes.len()));
    }
    let mut reader = std::io::Cursor::new(bytes);
    let header: Header =
        serde_ipld_dagcbor::de::from_reader_once(&mut reader).map_err(|e| FrameError::Header(e.to_string()))?;
    let body = &bytes[reader.position() as usize..];
    let kind = header.t.clone().unwrap_or_default();
    let bad =
        |reason: String| FrameError::Body { kind: if header.op == -1 { "error".into() } else { kind.clone() }, reason };
    match (header.op, kind.as_str()) {
        (-1, _) => {
            let e: ErrorBody = body_of(body).map_err(bad)?;
            Ok(Frame::Error { error: e.error, message: e.message })
        }
        (1, "#commit") => Ok(Frame::Commit(Box::new(body_of(body).map_err(bad)?))),
        (1, "#sync") => Ok(Frame::Sync(Box::new(body_of(body).map_err(bad)?))),
        (1, "#identity") => Ok(Frame::Identity(Box::new(body_of(body).map_err(bad)?))),
        (1, "#account") => Ok(Frame::Account(Box::new(body_of(body).map_err(bad)?))),
        (1, "#info") => Ok(Frame::Info(Box::new(body_of(body).map_err(bad)?))),
        (1, _) => Ok(Frame::Unknown { kind }),
        (op, _) => Err(FrameError::Header(format!("unknown op {op}"))),
    }
}

/// Decodes a body as `T`, refusing trailing bytes.
fn body_of<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_ipld_dagcbor::from_slice(body).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(header: serde_json::Value, body: serde_json::Value) -> Vec<u8> {
        let mut out = serde_ipld_dagcbor::to_vec(&header).unwrap();
        out.extend(serde_ipld_dagcbor::to_vec(&body).unwrap());
        out
    }

    #[test]
    fn error_frames_unknown_types_and_bad_input_are_told_apart() {
        let e = decode_frame(&frame(
            serde_json::json!({"op": -1}),
            serde_json::json!({"error": "FutureCursor", "message": "too far"}),
        ))
        .unwrap();
        assert!(
            matches!(
                e,
                Frame::Error { ref error, ref message }
                    if error == "FutureCursor" && message.as_deref() == Some("too far")
            ),
            "{e:?}"
        );
        let u = decode_frame(&frame(serde_json::json!({"op": 1, "t": "#labels"}), serde_json::json!({}))).unwrap();
        assert!(matches!(u, Frame::Unknown { ref kind } if kind == "#labels"));
        assert!(matches!(decode_frame(b"\xff"), Err(FrameError::Header(_))));
        assert!(matches!(
            decode_frame(&frame(serde_json::json!({"op": 2}), serde_json::json!({}))),
            Err(FrameError::Header(_))
        ));
        let bad = decode_frame(&frame(serde_json::json!({"op": 1, "t": "#commit"}), serde_json::json!({"seq": "x"})))
            .unwrap_err();
        assert!(bad.to_string().starts_with("malformed #commit frame body"), "{bad}");
        assert_eq!(decode_frame(&vec![0; MAX_FRAME_BYTES + 1]).unwrap_err(), FrameError::TooLarge(MAX_FRAME_BYTES + 1));
    }
}
