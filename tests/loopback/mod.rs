//! A tiny HTTP/1.1 server on a loopback address for the tests of hostile hosts: it answers
//! each request as a closure says, closes the connection after each answer, and counts the
//! connections it accepted and the body bytes the client took, so a test can tell that a
//! client never connected, or stopped reading early.

// Each test file that includes this module uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the server answers to one request.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Extra header lines (`Name: value`).
    pub headers: Vec<String>,
    /// The body.
    pub body: Body,
}

/// A body: given bytes, or `n` filler bytes streamed in 64 KiB writes.
pub enum Body {
    /// These bytes, with their `Content-Length`.
    Bytes(Vec<u8>),
    /// `n` bytes of `x`, with no `Content-Length` (the end is the connection's close).
    Filler(u64),
    /// `Content-Length: n` declared, then `n` bytes of `x`.
    DeclaredFiller(u64),
}

impl Answer {
    /// `status` with `body`.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self { status, headers: Vec::new(), body: Body::Bytes(body.into()) }
    }

    /// A redirect (302) to `location`.
    pub fn redirect(location: &str) -> Self {
        Self { status: 302, headers: vec![format!("Location: {location}")], body: Body::Bytes(Vec::new()) }
    }

    /// `status` with a streamed `body`.
    pub fn streamed(status: u16, body: Body) -> Self {
        Self { status, headers: Vec::new(), body }
    }

    /// The same with one more header line.
    pub fn with_header(mut self, line: &str) -> Self {
        self.headers.push(line.to_string());
        self
    }
}

/// A running server.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    connections: Arc<AtomicU64>,
    body_bytes: Arc<AtomicU64>,
}

impl Server {
    /// Serves on `ip` (a loopback address, any port), answering each request's path with
    /// `answer`.
    pub async fn start(ip: &str, answer: impl Fn(&str) -> Answer + Send + Sync + 'static) -> Server {
        assert!(ip.starts_with("127."), "tests talk only to loopback");
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connections, body_bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (count, bytes, answer) = (connections.clone(), body_bytes.clone(), Arc::new(answer));
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (bytes, answer) = (bytes.clone(), answer.clone());
                tokio::spawn(async move { serve_one(socket, &*answer, &bytes).await });
            }
        });
        Server { addr, connections, body_bytes }
    }

    /// `http://ADDR` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Body bytes the clients' sockets took so far.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes.load(Ordering::SeqCst)
    }
}

/// Reads one request's head and writes the answer; stops when the client goes away.
async fn serve_one(
    mut socket: tokio::net::TcpStream,
    answer: &(dyn Fn(&str) -> Answer + Send + Sync),
    bytes: &AtomicU64,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let answer = answer(&path);
    let mut out = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", answer.status);
    for line in &answer.headers {
        out.push_str(&format!("{line}\r\n"));
    }
    match &answer.body {
        Body::Bytes(b) => out.push_str(&format!("Content-Length: {}\r\n", b.len())),
        Body::DeclaredFiller(n) => out.push_str(&format!("Content-Length: {n}\r\n")),
        Body::Filler(_) => {}
    }
    out.push_str("\r\n");
    if socket.write_all(out.as_bytes()).await.is_err() {
        return;
    }
    match answer.body {
        Body::Bytes(b) => {
            if socket.write_all(&b).await.is_ok() {
                bytes.fetch_add(b.len() as u64, Ordering::SeqCst);
            }
        }
        Body::Filler(n) | Body::DeclaredFiller(n) => {
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let len = left.min(chunk.len() as u64) as usize;
                if socket.write_all(&chunk[..len]).await.is_err() {
                    return;
                }
                bytes.fetch_add(len as u64, Ordering::SeqCst);
                left -= len as u64;
            }
        }
    }
    let _ = socket.shutdown().await;
}
