//! The websocket side of live ingestion: subscribe with the cursor, hand each binary message
//! on, and reconnect with backoff when the connection fails, closes or goes quiet.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use super::frame::MAX_FRAME_BYTES;

/// A connection that sends nothing for this long is dropped and made again.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The subscribeRepos URL for a relay or PDS `base` (`http(s)://` or `ws(s)://`), resuming
/// after `cursor`.
pub fn subscribe_url(base: &str, cursor: Option<i64>) -> Result<String, String> {
    let base = base.trim().trim_end_matches('/');
    let (scheme, rest) = base.split_once("://").ok_or_else(|| format!("firehose URL {base:?} has no scheme"))?;
    let scheme = match scheme {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => return Err(format!("firehose URL {base:?}: unsupported scheme {other:?}")),
    };
    let path = if rest.contains("/xrpc/") { rest.to_string() } else { format!("{rest}/xrpc/com.atproto.sync.subscribeRepos") };
    Ok(match cursor {
        Some(c) => format!("{scheme}://{path}?cursor={c}"),
        None => format!("{scheme}://{path}"),
    })
}

/// How one connection ended.
pub(super) enum Ended {
    /// Asked to stop.
    Stopped,
    /// The connection failed or closed (after `received` messages).
    Dropped { reason: String, received: u64 },
}

/// Reads one connection to `url` until it ends, sending binary messages to `frames`.
pub(super) async fn read_connection(url: &str, frames: &mpsc::Sender<Bytes>, stop: &CancellationToken) -> Ended {
    let config = WebSocketConfig::default().max_message_size(Some(MAX_FRAME_BYTES + 1024)).max_frame_size(Some(MAX_FRAME_BYTES + 1024));
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), false);
    let mut socket = tokio::select! {
        _ = stop.cancelled() => return Ended::Stopped,
        r = tokio::time::timeout(Duration::from_secs(15), connect) => match r {
            Ok(Ok((socket, _))) => socket,
            Ok(Err(e)) => return Ended::Dropped { reason: format!("connecting: {e}"), received: 0 },
            Err(_) => return Ended::Dropped { reason: "connecting: timed out".into(), received: 0 },
        },
    };
    tracing::info!(url, "firehose connected");
    let mut received = 0;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => {
                let _ = socket.close(None).await;
                return Ended::Stopped;
            }
            next = tokio::time::timeout(IDLE_TIMEOUT, socket.next()) => next,
        };
        let reason = match next {
            Err(_) => format!("no message for {}s", IDLE_TIMEOUT.as_secs()),
            Ok(None) => "the server closed the stream".into(),
            Ok(Some(Err(e))) => e.to_string(),
            Ok(Some(Ok(Message::Binary(bytes)))) => {
                received += 1;
                if frames.send(bytes).await.is_err() {
                    return Ended::Stopped;
                }
                continue;
            }
            Ok(Some(Ok(Message::Close(close)))) => format!("closed by the server: {}", close.map(|c| c.reason.to_string()).unwrap_or_default()),
            Ok(Some(Ok(Message::Text(text)))) => {
                tracing::warn!(message = %text.chars().take(200).collect::<String>(), "firehose sent a text message; ignored");
                continue;
            }
            Ok(Some(Ok(_))) => continue,
        };
        return Ended::Dropped { reason, received };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_urls_from_relay_and_pds_addresses() {
        assert_eq!(subscribe_url("https://bsky.network", None).unwrap(), "wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos");
        assert_eq!(subscribe_url("http://127.0.0.1:9/", Some(42)).unwrap(), "ws://127.0.0.1:9/xrpc/com.atproto.sync.subscribeRepos?cursor=42");
        assert_eq!(subscribe_url("wss://r.example/xrpc/com.atproto.sync.subscribeRepos", Some(1)).unwrap(), "wss://r.example/xrpc/com.atproto.sync.subscribeRepos?cursor=1");
        assert!(subscribe_url("ftp://x", None).unwrap_err().contains("unsupported scheme"));
        assert!(subscribe_url("bsky.network", None).unwrap_err().contains("no scheme"));
    }
}
