//! Loopback HTTP hosts that misbehave, for the tests of what sluice does with hostile hosts:
//! each answers every request the same way ([`Misbehaviour`]), one request per connection,
//! and counts what happened ([`HostileHost::connections`], the body bytes the client's socket
//! took, the most requests in flight at once). Raw HTTP/1.1 over a tokio `TcpListener`, so
//! that a host can do what no framework would let it: trickle, hang, lie about its length.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a hostile host answers.
#[derive(Debug, Clone)]
pub enum Misbehaviour {
    /// An honest answer: 200 and these bytes (with their `Content-Length`), after `delay`.
    Serve { body: Arc<Vec<u8>>, delay: Duration },
    /// An honest answer without `Content-Length` (the end is the close), written in pieces
    /// of `piece` bytes every `every`.
    Stream { body: Arc<Vec<u8>>, piece: usize, every: Duration },
    /// 200, then one byte of a never-ending body every `every`.
    Trickle { every: Duration },
    /// 200 and the headers, then nothing, ever.
    Stall,
    /// Reads the request and never answers.
    Hang,
    /// `status` with a body of `len` filler bytes, its `Content-Length` declared when `declared`.
    Huge { status: u16, len: u64, declared: bool },
    /// `status` with this short body (a JSON XRPC error, say).
    Status { status: u16, body: String },
}

/// A running hostile host; it stops when dropped.
pub struct HostileHost {
    addr: SocketAddr,
    stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    body_bytes: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

impl HostileHost {
    /// A host on 127.0.0.1 answering every request with `how`.
    pub async fn start(how: Misbehaviour) -> HostileHost {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let stats = Arc::new(Stats::default());
        let counts = stats.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counts.connections.fetch_add(1, Ordering::SeqCst);
                let (counts, how) = (counts.clone(), how.clone());
                tokio::spawn(async move { serve(socket, &how, &counts).await });
            }
        });
        HostileHost { addr, stats, task }
    }

    /// `http://127.0.0.1:PORT`, as a PDS endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// Body bytes the clients' sockets took so far.
    pub fn body_bytes(&self) -> u64 {
        self.stats.body_bytes.load(Ordering::SeqCst)
    }

    /// The most requests served at once.
    pub fn peak_in_flight(&self) -> u64 {
        self.stats.peak_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for HostileHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a request's head, then answers as `how` says, until done or the client leaves.
/// Reads a request's head and answers it. The request counts as in flight from its head on
/// until its answer is written, the last write of a served body excepted: the client may
/// have read it whole (and started its next request) before this task is scheduled again, so
/// counting past it would see requests overlap that the client never overlapped.
async fn serve(mut socket: tokio::net::TcpStream, how: &Misbehaviour, counts: &Stats) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let now = counts.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    counts.peak_in_flight.fetch_max(now, Ordering::SeqCst);
    let in_flight = InFlight(&counts.in_flight, std::sync::atomic::AtomicBool::new(true));
    let _ = answer(&mut socket, how, &counts.body_bytes, &in_flight).await;
    in_flight.end();
    let _ = socket.shutdown().await;
}

/// A request counted in flight until [`InFlight::end`] (once).
struct InFlight<'a>(&'a AtomicU64, std::sync::atomic::AtomicBool);

impl InFlight<'_> {
    fn end(&self) {
        if self.1.swap(false, Ordering::SeqCst) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Writes `how`'s answer; an error once the client went away.
async fn answer(
    socket: &mut tokio::net::TcpStream,
    how: &Misbehaviour,
    bytes: &AtomicU64,
    in_flight: &InFlight<'_>,
) -> std::io::Result<()> {
    let head = |status: u16, length: Option<u64>| {
        let length = length.map(|n| format!("Content-Length: {n}\r\n")).unwrap_or_default();
        format!("HTTP/1.1 {status} X\r\nConnection: close\r\n{length}\r\n")
    };
    match how {
        Misbehaviour::Serve { body, delay } => {
            tokio::time::sleep(*delay).await;
            socket.write_all(head(200, Some(body.len() as u64)).as_bytes()).await?;
            in_flight.end();
            write_counted(socket, body, bytes).await
        }
        Misbehaviour::Stream { body, piece, every } => {
            socket.write_all(head(200, None).as_bytes()).await?;
            for piece in body.chunks((*piece).max(1)) {
                write_counted(socket, piece, bytes).await?;
                tokio::time::sleep(*every).await;
            }
            Ok(())
        }
        Misbehaviour::Trickle { every } => {
            socket.write_all(head(200, None).as_bytes()).await?;
            loop {
                write_counted(socket, b"x", bytes).await?;
                tokio::time::sleep(*every).await;
            }
        }
        Misbehaviour::Stall => {
            socket.write_all(head(200, None).as_bytes()).await?;
            std::future::pending().await
        }
        Misbehaviour::Hang => std::future::pending().await,
        Misbehaviour::Huge { status, len, declared } => {
            socket.write_all(head(*status, declared.then_some(*len)).as_bytes()).await?;
            let filler = vec![b'x'; 64 << 10];
            let mut left = *len;
            while left > 0 {
                let n = left.min(filler.len() as u64) as usize;
                write_counted(socket, &filler[..n], bytes).await?;
                left -= n as u64;
            }
            Ok(())
        }
        Misbehaviour::Status { status, body } => {
            socket.write_all(head(*status, Some(body.len() as u64)).as_bytes()).await?;
            write_counted(socket, body.as_bytes(), bytes).await
        }
    }
}

async fn write_counted(socket: &mut tokio::net::TcpStream, data: &[u8], bytes: &AtomicU64) -> std::io::Result<()> {
    socket.write_all(data).await?;
    bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
    Ok(())
}

/// A CAR of raw blocks of these sizes (each filled with its index), its root the first
/// block: well framed, every CID right, but not a repo (the root is no commit), for tests of
/// the framing and limits.
pub fn raw_car(sizes: &[usize]) -> Vec<u8> {
    let blocks: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, n)| vec![i as u8; *n]).collect();
    let root = raw_cid(blocks.first().map_or(&[][..], |b| &b[..]));
    let header = iroh_car::CarHeader::new_v1(vec![root]).encode().expect("a CAR header");
    let mut car = varint(header.len() as u64);
    car.extend_from_slice(&header);
    for data in &blocks {
        let cid = raw_cid(data).to_bytes();
        car.extend(varint((cid.len() + data.len()) as u64));
        car.extend_from_slice(&cid);
        car.extend_from_slice(data);
    }
    car
}

/// A raw block's CID (sha2-256).
fn raw_cid(data: &[u8]) -> cid::Cid {
    use sha2::Digest;
    let digest = multihash::Multihash::<64>::wrap(0x12, &sha2::Sha256::digest(data)).expect("a sha2-256 digest");
    cid::Cid::new_v1(0x55, digest)
}

/// `n` as an unsigned varint (a CAR section's length prefix).
pub fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}
