//! A client of sluice's own event stream (`dev.sluice.subscribeEvents`): what `sluice tail`
//! prints, and a small example of reading the stream from Rust.

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// The subscribeEvents URL of the server at `base` (`http(s)://` or `ws(s)://`).
pub fn stream_url(base: &str, cursor: Option<u64>) -> anyhow::Result<String> {
    let base = base.trim().trim_end_matches('/');
    let (scheme, rest) = base.split_once("://").ok_or_else(|| anyhow::anyhow!("server URL {base:?} has no scheme"))?;
    let scheme = match scheme {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => anyhow::bail!("server URL {base:?}: unsupported scheme {other:?}"),
    };
    let cursor = cursor.map(|c| format!("?cursor={c}")).unwrap_or_default();
    Ok(format!("{scheme}://{rest}/xrpc/{}.subscribeEvents{cursor}", crate::server::NS))
}

/// Reads events from the server at `base`, from after `cursor` (live when `None`), calling
/// `on_event` with each one's JSON text, until `limit` events or the stream ends. An error
/// message from the server (a slow consumer, say) ends it with that error; an info message
/// (a cursor past the retention) is logged.
pub async fn tail(
    base: &str,
    cursor: Option<u64>,
    limit: Option<usize>,
    mut on_event: impl FnMut(&str) -> std::io::Result<()>,
) -> anyhow::Result<usize> {
    let url = stream_url(base, cursor)?;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(&url).await.map_err(|e| anyhow::anyhow!("connecting to {url}: {e}"))?;
    let mut seen = 0;
    while limit.is_none_or(|l| seen < l) {
        let Some(message) = socket.next().await else { break };
        match message? {
            Message::Text(text) => {
                if text.starts_with("{\"error\"") {
                    anyhow::bail!("the server ended the stream: {text}");
                }
                if text.starts_with("{\"info\"") {
                    // Not an event: a notice such as OutdatedCursor (events past the retention).
                    tracing::warn!(notice = %text, "the server says");
                    continue;
                }
                on_event(&text)?;
                seen += 1;
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_urls() {
        assert_eq!(
            stream_url("http://127.0.0.1:2480/", Some(5)).unwrap(),
            "ws://127.0.0.1:2480/xrpc/dev.sluice.subscribeEvents?cursor=5"
        );
        assert_eq!(stream_url("https://x.example", None).unwrap(), "wss://x.example/xrpc/dev.sluice.subscribeEvents");
        assert!(stream_url("x.example", None).is_err());
    }
}
