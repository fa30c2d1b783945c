//! The websocket side of live ingestion: subscribe with the cursor, hand each binary message
//! on, and tell the caller how the connection ended. A quiet connection is kept: it is pinged
//! after [`Liveness::ping_interval`] without a message, and dropped only when nothing answers
//! within [`Liveness::pong_timeout`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use super::frame::{Frame, FrameError, MAX_FRAME_BYTES, decode_frame};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// When a connection is pinged and when it is given up.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// A ping goes out after this long without a message from the server.
    pub ping_interval: Duration,
    /// The connection is dropped when nothing comes this long after a ping.
    pub pong_timeout: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self { ping_interval: Duration::from_secs(10), pong_timeout: Duration::from_secs(5) }
    }
}

/// Why a firehose URL is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// No `scheme://`.
    #[error("firehose URL {0:?} has no scheme")]
    NoScheme(String),
    /// Not `ws`, `wss`, `http` or `https`.
    #[error("firehose URL {url:?}: unsupported scheme {scheme:?}")]
    Scheme { url: String, scheme: String },
}

/// The subscribeRepos URL for a relay or PDS `base` (`http(s)://` or `ws(s)://`), resuming
/// after `cursor`.
pub fn subscribe_url(base: &str, cursor: Option<i64>) -> Result<String, UrlError> {
    let base = base.trim().trim_end_matches('/');
    let (scheme, rest) = base.split_once("://").ok_or_else(|| UrlError::NoScheme(base.to_string()))?;
    let scheme = match scheme {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => return Err(UrlError::Scheme { url: base.to_string(), scheme: other.to_string() }),
    };
    let path =
        if rest.contains("/xrpc/") { rest.to_string() } else { format!("{rest}/xrpc/com.atproto.sync.subscribeRepos") };
    Ok(match cursor {
        Some(c) => format!("{scheme}://{path}?cursor={c}"),
        None => format!("{scheme}://{path}"),
    })
}

/// How one connection ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// Asked to stop.
    Stopped,
    /// The connection failed or closed. `healthy`: the server had answered (a frame or a
    /// pong), so the next attempt need not back off.
    Dropped { reason: Disconnect, healthy: bool },
}

/// Why a connection failed or closed.
#[derive(Debug, thiserror::Error)]
pub enum Disconnect {
    /// The websocket could not be opened.
    #[error("connecting")]
    Connect(#[source] tokio_tungstenite::tungstenite::Error),
    /// Opening it took too long.
    #[error("connecting: timed out")]
    ConnectTimeout,
    /// A ping went unanswered.
    #[error("no answer to a ping within {} ms", .0.as_millis())]
    PingUnanswered(Duration),
    /// A ping could not be sent.
    #[error("sending a ping")]
    Ping(#[source] tokio_tungstenite::tungstenite::Error),
    /// Reading failed.
    #[error(transparent)]
    Read(tokio_tungstenite::tungstenite::Error),
    /// The server closed it, with this reason.
    #[error("closed by the server: {0}")]
    Closed(String),
    /// The stream ended without a close.
    #[error("the server closed the stream")]
    Ended,
}

/// Opens a subscribeRepos websocket to `url`.
async fn connect(url: &str, stop: &CancellationToken) -> Result<Socket, Ended> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_BYTES + 1024))
        .max_frame_size(Some(MAX_FRAME_BYTES + 1024));
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), false);
    tokio::select! {
        _ = stop.cancelled() => Err(Ended::Stopped),
        r = tokio::time::timeout(CONNECT_TIMEOUT, connect) => match r {
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(e)) => Err(Ended::Dropped { reason: Disconnect::Connect(e), healthy: false }),
            Err(_) => Err(Ended::Dropped { reason: Disconnect::ConnectTimeout, healthy: false }),
        },
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The liveness state of one connection: when the server was last heard, and whether a ping
/// waits for its answer.
struct Pulse {
    liveness: Liveness,
    heard: Instant,
    pinged: Option<Instant>,
    /// The server answered at least once (a frame or a pong).
    healthy: bool,
}

impl Pulse {
    fn new(liveness: Liveness) -> Self {
        Self { liveness, heard: Instant::now(), pinged: None, healthy: false }
    }

    /// When to act next: ping after a quiet spell, or give up on an unanswered ping.
    fn deadline(&self) -> Instant {
        match self.pinged {
            Some(at) => at + self.liveness.pong_timeout,
            None => self.heard + self.liveness.ping_interval,
        }
    }

    fn heard(&mut self) {
        (self.heard, self.pinged, self.healthy) = (Instant::now(), None, true);
    }

    /// At the deadline: pings, or ends the connection when the last ping went unanswered.
    async fn at_deadline(&mut self, socket: &mut Socket) -> Result<(), Ended> {
        let healthy = self.healthy;
        if self.pinged.is_some() {
            return Err(Ended::Dropped { reason: Disconnect::PingUnanswered(self.liveness.pong_timeout), healthy });
        }
        self.pinged = Some(Instant::now());
        match tokio::time::timeout(self.liveness.pong_timeout, socket.send(Message::Ping(Bytes::new()))).await {
            Ok(Err(e)) => Err(Ended::Dropped { reason: Disconnect::Ping(e), healthy }),
            // Sent, or stuck: the pong timeout judges either.
            _ => Ok(()),
        }
    }
}

/// Reads one connection to `url` until it ends, sending binary messages to `frames`.
/// Holds `connected` true while a connection is open.
struct Connected<'a>(&'a AtomicBool);

impl<'a> Connected<'a> {
    fn now(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Relaxed);
        Self(flag)
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

pub(super) async fn read_connection(
    url: &str,
    frames: &mpsc::Sender<Bytes>,
    stop: &CancellationToken,
    liveness: Liveness,
    connected: &AtomicBool,
) -> Ended {
    let mut socket = match connect(url, stop).await {
        Ok(socket) => socket,
        Err(ended) => return ended,
    };
    tracing::info!(url, "firehose connected");
    let _connected = Connected::now(connected);
    let mut pulse = Pulse::new(liveness);
    loop {
        let next = tokio::select! {
            // Messages already read come before the timer, so a consumer that made us wait
            // (a full shard queue) does not look like a dead server.
            biased;
            _ = stop.cancelled() => {
                let _ = socket.close(None).await;
                return Ended::Stopped;
            }
            next = socket.next() => next,
            _ = tokio::time::sleep_until(pulse.deadline()) => match pulse.at_deadline(&mut socket).await {
                Ok(()) => continue,
                Err(ended) => return ended,
            },
        };
        let reason = match next {
            None => Disconnect::Ended,
            Some(Err(e)) => Disconnect::Read(e),
            Some(Ok(message)) => {
                pulse.heard();
                match message {
                    Message::Binary(bytes) => {
                        if frames.send(bytes).await.is_err() {
                            return Ended::Stopped;
                        }
                        pulse.heard();
                        continue;
                    }
                    Message::Close(close) => {
                        Disconnect::Closed(close.map(|c| c.reason.to_string()).unwrap_or_default())
                    }
                    Message::Text(text) => {
                        tracing::warn!(
                            message = %text.chars().take(200).collect::<String>(),
                            "firehose sent a text message; ignored"
                        );
                        continue;
                    }
                    // Pongs (and pings, which tungstenite answers for us).
                    _ => continue,
                }
            }
        };
        return Ended::Dropped { reason, healthy: pulse.healthy };
    }
}

/// What a probe found after its cursor.
#[derive(Debug)]
pub(super) enum Probe {
    /// The first sequenced frame after the cursor: its `seq` and `time` (unix µs).
    First { seq: i64, time_us: Option<u64> },
    /// Nothing after the cursor yet: `FutureCursor`, or no frame within the wait.
    Head,
}

/// Why a probe found nothing.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The URL is unusable.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The connection failed or closed.
    #[error(transparent)]
    Connection(#[from] Disconnect),
    /// The first frame did not decode.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The server answered an error frame.
    #[error("{error}: {message}")]
    ErrorFrame { error: String, message: String },
    /// Asked to stop.
    #[error("stopped")]
    Stopped,
}

/// Subscribes at `url` just to read where its stream starts (`#info` frames such as
/// `OutdatedCursor` are passed over); waits at most `quiet` for a frame.
pub(super) async fn probe(url: &str, stop: &CancellationToken, quiet: Duration) -> Result<Probe, ProbeError> {
    let mut socket = match connect(url, stop).await {
        Ok(socket) => socket,
        Err(Ended::Dropped { reason, .. }) => return Err(reason.into()),
        Err(Ended::Stopped) => return Err(ProbeError::Stopped),
    };
    let read = async {
        while let Some(message) = socket.next().await {
            let Message::Binary(bytes) = message.map_err(Disconnect::Read)? else { continue };
            let frame = decode_frame(&bytes)?;
            match (&frame, frame.seq()) {
                (_, Some(seq)) => return Ok(Probe::First { seq, time_us: frame.time_us() }),
                (Frame::Error { error, .. }, _) if error == "FutureCursor" => return Ok(Probe::Head),
                (Frame::Error { error, message }, _) => {
                    let message = message.clone().unwrap_or_default();
                    return Err(ProbeError::ErrorFrame { error: error.clone(), message });
                }
                _ => continue,
            }
        }
        Err(Disconnect::Ended.into())
    };
    let found = tokio::time::timeout(quiet, read).await.unwrap_or(Ok(Probe::Head));
    let _ = socket.close(None).await;
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_urls_from_relay_and_pds_addresses() {
        assert_eq!(
            subscribe_url("https://bsky.network", None).unwrap(),
            "wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos"
        );
        assert_eq!(
            subscribe_url("http://127.0.0.1:9/", Some(42)).unwrap(),
            "ws://127.0.0.1:9/xrpc/com.atproto.sync.subscribeRepos?cursor=42"
        );
        assert_eq!(
            subscribe_url("wss://r.example/xrpc/com.atproto.sync.subscribeRepos", Some(1)).unwrap(),
            "wss://r.example/xrpc/com.atproto.sync.subscribeRepos?cursor=1"
        );
        assert!(subscribe_url("ftp://x", None).unwrap_err().to_string().contains("unsupported scheme"));
        assert!(subscribe_url("bsky.network", None).unwrap_err().to_string().contains("no scheme"));
    }
}
