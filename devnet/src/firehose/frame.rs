//! subscribeRepos frames as the wire has them: a DAG-CBOR header (`{op: 1, t}`, or `{op: -1}`
//! for an error) followed by a DAG-CBOR body, the bodies being jacquard's lexicon types.

use jacquard_api::com_atproto::sync::subscribe_repos::{Account, Commit, Identity, Sync};
use serde::Serialize;

/// Why a frame could not be encoded as DAG-CBOR (serde_ipld_dagcbor's error, kept).
#[derive(Debug, thiserror::Error)]
#[error("encoding a frame as DAG-CBOR")]
pub(crate) struct EncodeError(#[source] Box<dyn std::error::Error + Send + std::marker::Sync>);

/// An event body waiting for its `seq`.
#[derive(Clone)]
pub(crate) enum Body {
    /// `#commit`.
    Commit(Box<Commit>),
    /// `#sync`.
    Sync(Box<Sync>),
    /// `#identity`.
    Identity(Box<Identity>),
    /// `#account`.
    Account(Box<Account>),
}

impl Body {
    /// The frame of this body numbered `seq`.
    pub fn encode(self, seq: i64) -> Result<Vec<u8>, EncodeError> {
        match self {
            Body::Commit(mut c) => {
                c.seq = seq;
                frame(1, Some("#commit"), &c)
            }
            Body::Sync(mut s) => {
                s.seq = seq;
                frame(1, Some("#sync"), &s)
            }
            Body::Identity(mut i) => {
                i.seq = seq;
                frame(1, Some("#identity"), &i)
            }
            Body::Account(mut a) => {
                a.seq = seq;
                frame(1, Some("#account"), &a)
            }
        }
    }
}

#[derive(Serialize)]
struct Header<'a> {
    op: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    t: Option<&'a str>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

/// An error frame (`{op: -1}`, then `{error, message}`), e.g. `FutureCursor`.
pub(crate) fn error_frame(error: &str, message: &str) -> Vec<u8> {
    frame(-1, None, &ErrorBody { error, message }).expect("an error body always encodes")
}

/// Header then body.
fn frame<T: Serialize>(op: i64, t: Option<&str>, body: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = serde_ipld_dagcbor::to_vec(&Header { op, t }).map_err(|e| EncodeError(e.into()))?;
    serde_ipld_dagcbor::to_writer(&mut out, body).map_err(|e| EncodeError(e.into()))?;
    Ok(out)
}
