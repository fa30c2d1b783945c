//! CAR loading with limits and CID checks.

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use cid::Cid;
use jacquard_common::types::crypto::PublicKey;
use jacquard_repo::commit::Commit;
use sha2::{Digest, Sha256};
use smol_str::SmolStr;
use tokio::io::{AsyncRead, ReadBuf};

use super::RepoError;

const SHA2_256: u64 = 0x12;

/// Size limits applied before and while reading a CAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarLimits {
    /// Largest CAR accepted, in bytes.
    pub max_car_bytes: u64,
    /// Largest single block, in bytes.
    pub max_block_bytes: usize,
    /// Most blocks in one CAR.
    pub max_blocks: usize,
}

impl Default for CarLimits {
    fn default() -> Self {
        Self { max_car_bytes: 1 << 30, max_block_bytes: 2 << 20, max_blocks: 4_000_000 }
    }
}

/// A CAR's blocks (each checked against its CID) and its decoded root commit.
pub struct LoadedRepo {
    /// CID of the root commit block.
    pub commit_cid: Cid,
    /// The root commit.
    pub commit: Commit<SmolStr>,
    blocks: Blocks,
}

/// Where a loaded repo's blocks are: an index by digest into one buffer or one file.
struct Blocks {
    index: BlockIndex,
    source: BlockSource,
}

/// What a [`BlockIndex`]'s positions point into.
enum BlockSource {
    /// One in-memory buffer holding every block back to back (a CAR read from bytes or a
    /// stream): no allocation per block, so loading and dropping a repo cost a few large
    /// allocations, not one per block.
    Memory(Bytes),
    /// The CAR file itself: a large export is walked without holding its bodies.
    File(std::fs::File),
}

/// Block positions by sha2-256 digest: (offset, length). Two CIDs with the same digest name
/// the same bytes, so the digest is a sufficient key, at a third of a CID's size; a small
/// entry keeps the lookups of a walk (one per node and record) in cache. foldhash, not
/// SipHash: the keys are hashes already.
type BlockIndex = HashMap<[u8; 32], (u64, u32), foldhash::fast::RandomState>;

impl Blocks {
    fn get(&self, cid: &Cid) -> Result<Option<Bytes>, RepoError> {
        let Some(&(offset, len)) = digest(cid).and_then(|d| self.index.get(&d)) else { return Ok(None) };
        match &self.source {
            BlockSource::Memory(buffer) => Ok(Some(buffer.slice(offset as usize..offset as usize + len as usize))),
            BlockSource::File(file) => {
                let mut buf = vec![0; len as usize];
                std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, offset)
                    .map_err(|e| RepoError::Read { what: "a block of the spooled export", source: e.into() })?;
                Ok(Some(Bytes::from(buf)))
            }
        }
    }

    fn contains(&self, cid: &Cid) -> bool {
        digest(cid).is_some_and(|d| self.index.contains_key(&d))
    }

    fn len(&self) -> usize {
        self.index.len()
    }
}

/// A CID's sha2-256 digest (every block was checked to be one when read).
fn digest(cid: &Cid) -> Option<[u8; 32]> {
    cid.hash().digest().try_into().ok()
}

/// Polls a future that never waits on I/O (the CAR reader over a slice or a file) to completion.
fn run_ready<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// The digest `cid` claims for its block, its key in a [`BlockIndex`], once it is known to be
/// a sha2-256 one.
fn claimed_digest(cid: &Cid) -> Result<[u8; 32], RepoError> {
    if cid.hash().code() != SHA2_256 {
        return Err(RepoError::UnsupportedHash(*cid));
    }
    cid.hash().digest().try_into().map_err(|_| RepoError::CidMismatch(*cid))
}

/// Checks that `data` hashes to `digest`, the one `cid` claims.
fn check_digest(cid: &Cid, digest: &[u8; 32], data: &[u8]) -> Result<(), RepoError> {
    let hashed: [u8; 32] = Sha256::digest(data).into();
    match hashed == *digest {
        true => Ok(()),
        false => Err(RepoError::CidMismatch(*cid)),
    }
}

/// CARs of at least this size have their blocks hashed on a second thread while the next
/// blocks are read: hashing is about a third of reading a large CAR, and nothing else can
/// start before the read ends, so the other core would sit idle. Smaller CARs (firehose
/// commits) are hashed as they are read.
const HASH_BESIDE_FROM_BYTES: u64 = 4 << 20;

/// Blocks are handed to the hashing thread in chunks of about this many bytes, and at most
/// [`HASH_CHUNKS_WAITING`] chunks wait for it: memory stays bounded whatever the CAR's size.
const HASH_CHUNK_BYTES: usize = 1 << 20;
const HASH_CHUNKS_WAITING: usize = 4;

/// Blocks waiting to be hashed, each with its CID and the digest it claims.
type HashChunk = Vec<(Cid, [u8; 32], Queued)>;

/// A block waiting to be hashed: its bytes, or where they lie in the CAR when the hashing
/// thread holds the CAR itself (then the reader's copy is freed where it was made).
enum Queued {
    Copy(Vec<u8>),
    At { offset: usize, len: usize },
}

/// Where a CAR's blocks are checked against their CIDs: as they are read, or on a thread of
/// its own ([`HASH_BESIDE_FROM_BYTES`]). Either way the first mismatch in the CAR's order is
/// what [`CidChecks::finish`] reports.
enum CidChecks {
    Inline,
    Beside {
        chunk: HashChunk,
        chunk_bytes: usize,
        send: std::sync::mpsc::SyncSender<HashChunk>,
        /// The hashing thread holds the CAR: blocks are queued by position.
        holds_car: bool,
        /// Set by the hashing thread at its first mismatch, so that reading stops early.
        failed: Arc<AtomicBool>,
        thread: std::thread::JoinHandle<Result<(), RepoError>>,
    },
}

impl CidChecks {
    /// Checks for a CAR of `size` bytes, if known; `car` is the CAR itself when the blocks'
    /// offsets are positions in it.
    fn for_car(size: Option<u64>, car: Option<Bytes>) -> Self {
        if size.is_none_or(|size| size < HASH_BESIDE_FROM_BYTES) {
            return CidChecks::Inline;
        }
        let (send, chunks) = std::sync::mpsc::sync_channel::<HashChunk>(HASH_CHUNKS_WAITING);
        let failed = Arc::new(AtomicBool::new(false));
        let (flag, holds_car) = (failed.clone(), car.is_some());
        let car = car.unwrap_or_default();
        let hash = move || {
            for chunk in chunks {
                for (cid, digest, block) in &chunk {
                    // Blocks are queued by position only when the CAR is held (`car` is then
                    // not empty).
                    let data = match block {
                        Queued::Copy(data) => &data[..],
                        Queued::At { offset, len } => car.get(*offset..*offset + *len).unwrap_or_default(),
                    };
                    check_digest(cid, digest, data).inspect_err(|_| flag.store(true, Ordering::Relaxed))?;
                }
            }
            Ok(())
        };
        match std::thread::Builder::new().name("car-hash".into()).spawn(hash) {
            Ok(thread) => CidChecks::Beside { chunk: Vec::new(), chunk_bytes: 0, send, holds_car, failed, thread },
            Err(_) => CidChecks::Inline,
        }
    }

    /// Checks (or queues for checking) the block `data`, at `offset` in the CAR, that `cid`
    /// names with `digest`. `Err(None)` means that an earlier block failed its check:
    /// [`CidChecks::finish`] says which.
    fn check(&mut self, cid: &Cid, digest: [u8; 32], data: &[u8], offset: u64) -> Result<(), Option<RepoError>> {
        match self {
            CidChecks::Inline => check_digest(cid, &digest, data).map_err(Some),
            CidChecks::Beside { chunk, chunk_bytes, send, holds_car, failed, .. } => {
                *chunk_bytes += data.len();
                let block = match holds_car {
                    true => Queued::At { offset: offset as usize, len: data.len() },
                    false => Queued::Copy(data.to_vec()),
                };
                chunk.push((*cid, digest, block));
                if *chunk_bytes >= HASH_CHUNK_BYTES {
                    *chunk_bytes = 0;
                    // The thread only stops early at a mismatch, which `finish` reports.
                    send.send(std::mem::take(chunk)).map_err(|_| None)?;
                }
                match failed.load(Ordering::Relaxed) {
                    true => Err(None),
                    false => Ok(()),
                }
            }
        }
    }

    /// Waits for every queued block's check: the first mismatch, if any.
    fn finish(self) -> Result<(), RepoError> {
        match self {
            CidChecks::Inline => Ok(()),
            CidChecks::Beside { chunk, send, thread, .. } => {
                // A send fails only if the thread stopped at a mismatch, which join returns.
                let _ = send.send(chunk);
                drop(send);
                thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }
        }
    }
}

/// Refuses a CAR of `size` bytes when it is over the limit, before anything is read.
fn check_car_size(size: u64, limits: &CarLimits) -> Result<(), RepoError> {
    match size > limits.max_car_bytes {
        true => Err(RepoError::TooLarge(format!(
            "{size} bytes is over the {}-byte limit (max_car_mb)",
            limits.max_car_bytes
        ))),
        false => Ok(()),
    }
}

/// Parses CAR bytes: every block checked against its CID, limits enforced, root commit decoded.
pub fn read_car(bytes: &[u8], limits: &CarLimits) -> Result<LoadedRepo, RepoError> {
    check_car_size(bytes.len() as u64, limits)?;
    // The blocks are the CAR less its framing: its size is enough for them.
    run_ready(read_car_into(
        bytes,
        limits,
        Vec::with_capacity(bytes.len()),
        CidChecks::for_car(Some(bytes.len() as u64), None),
    ))
}

/// [`read_car`] over bytes the repo may keep (a CAR read whole from a file or a download):
/// its blocks are used where they lie in `bytes`, with no copy of them.
pub fn read_car_owned(bytes: Bytes, limits: &CarLimits) -> Result<LoadedRepo, RepoError> {
    check_car_size(bytes.len() as u64, limits)?;
    let checks = CidChecks::for_car(Some(bytes.len() as u64), Some(bytes.clone()));
    let (root, index) = run_ready(scan_car(&bytes[..], limits, checks, |data, end| end - data.len() as u64))?;
    LoadedRepo::new(root, Blocks { index, source: BlockSource::Memory(bytes) })
}

/// [`read_car`] over a stream (a network body), which is never held whole: only its blocks
/// are kept, and reading stops as soon as a limit is passed.
pub async fn read_car_from<R: AsyncRead + Unpin + Send>(
    reader: R,
    limits: &CarLimits,
) -> Result<LoadedRepo, RepoError> {
    // Hashed as it is read: handing blocks to a thread would block this task.
    read_car_into(reader, limits, Vec::new(), CidChecks::Inline).await
}

/// [`read_car_from`], collecting the blocks in `buffer` (sized for them when the CAR's size
/// is known, so it is never copied as it grows).
async fn read_car_into<R: AsyncRead + Unpin + Send>(
    reader: R,
    limits: &CarLimits,
    mut buffer: Vec<u8>,
    checks: CidChecks,
) -> Result<LoadedRepo, RepoError> {
    let (root, index) = scan_car(reader, limits, checks, |data, _| {
        let offset = buffer.len() as u64;
        buffer.extend_from_slice(data);
        offset
    })
    .await?;
    LoadedRepo::new(root, Blocks { index, source: BlockSource::Memory(Bytes::from(buffer)) })
}

/// Reads every block of a CAR, checking limits and CIDs, and indexes it by digest where
/// `place` says its bytes are: `place` gets the block and the stream position just after it,
/// and returns the block's offset in whatever `place` keeps. Returns the root CID and the index.
///
/// A CID mismatch is reported before any error found after it in the CAR, wherever `checks`
/// hashes the blocks.
async fn scan_car<R: AsyncRead + Unpin + Send>(
    reader: R,
    limits: &CarLimits,
    mut checks: CidChecks,
    place: impl FnMut(&[u8], u64) -> u64,
) -> Result<(Cid, BlockIndex), RepoError> {
    let scanned = scan_blocks(reader, limits, &mut checks, place).await;
    // A block that failed its check came before whatever stopped the scan, if anything did.
    checks.finish()?;
    scanned
}

/// [`scan_car`]'s reading, the blocks handed to `checks`. A failed check (`Err(None)` from
/// `checks`) ends the scan with a placeholder error: `checks.finish()` has the real one.
///
/// The CAR's framing (varint-length-prefixed sections) is read here, not by a CAR library, so
/// that sluice's own limits decide: a section longer than a block may be is refused from its
/// length, before it is read or allocated.
async fn scan_blocks<R: AsyncRead + Unpin + Send>(
    reader: R,
    limits: &CarLimits,
    checks: &mut CidChecks,
    mut place: impl FnMut(&[u8], u64) -> u64,
) -> Result<(Cid, BlockIndex), RepoError> {
    let over = Arc::new(AtomicBool::new(false));
    let position = Arc::new(AtomicU64::new(0));
    let mut capped =
        Capped { inner: reader, left: limits.max_car_bytes, over: over.clone(), position: position.clone() };
    let refused = |e: FrameError| match over.load(Ordering::Relaxed) {
        true => RepoError::TooLarge(format!("more than the {}-byte limit (max_car_mb)", limits.max_car_bytes)),
        false => e.into_repo_error(limits),
    };
    let mut frame = Vec::new();
    let header = read_frame(&mut capped, MAX_HEADER_BYTES, &mut frame).await.map_err(refused)?;
    let header = header.ok_or_else(|| RepoError::Car("empty: no CAR header".into()))?;
    let header = iroh_car::CarHeader::decode(header).map_err(|e| RepoError::Car(e.to_string()))?;
    let root = *header.roots().first().ok_or_else(|| RepoError::Car("header names no root".into()))?;
    let (mut index, mut count) = (BlockIndex::default(), 0);
    let max_frame = limits.max_block_bytes.saturating_add(MAX_CID_BYTES);
    while let Some(section) = read_frame(&mut capped, max_frame, &mut frame).await.map_err(refused)? {
        let mut cursor = std::io::Cursor::new(section);
        let cid = Cid::read_bytes(&mut cursor).map_err(|e| RepoError::Car(format!("a block's CID: {e}")))?;
        let data = &section[cursor.position() as usize..];
        if data.len() > limits.max_block_bytes {
            return Err(RepoError::TooLarge(block_over(data.len(), limits)));
        }
        count += 1;
        if count > limits.max_blocks {
            return Err(RepoError::TooLarge(blocks_over(limits)));
        }
        let key = claimed_digest(&cid)?;
        // The position is the end of this block's bytes: frames are read exactly.
        let offset = place(data, position.load(Ordering::Relaxed));
        index.insert(key, (offset, data.len() as u32));
        checks.check(&cid, key, data, offset).map_err(|e| e.unwrap_or(RepoError::CidMismatch(cid)))?;
    }
    Ok((root, index))
}

/// The longest CAR header accepted: a header names its roots (one, in a repo export), some
/// tens of bytes.
const MAX_HEADER_BYTES: usize = 64 << 10;

/// What a section may hold beyond its block's bytes: the block's CID (36 bytes for the
/// sha2-256 CIDs accepted; this leaves room for any CID that is then refused by name).
const MAX_CID_BYTES: usize = 64;

/// The refusal of a block of `len` bytes.
fn block_over(len: usize, limits: &CarLimits) -> String {
    format!("block of {len} bytes is over the {}-byte limit (max_block_kb)", limits.max_block_bytes)
}

/// The refusal of a CAR with too many blocks.
fn blocks_over(limits: &CarLimits) -> String {
    format!("more than {} blocks (max_blocks)", limits.max_blocks)
}

/// Why a CAR section could not be read.
#[derive(Debug)]
enum FrameError {
    /// The stream failed (or the byte cap cut it: the caller knows).
    Io(std::io::Error),
    /// The length prefix is not a valid varint.
    Varint(VarintError),
    /// The section says it is longer than `max` bytes.
    TooLong { len: u64, max: usize },
    /// The stream ended inside a section.
    Truncated,
}

impl FrameError {
    fn into_repo_error(self, limits: &CarLimits) -> RepoError {
        match self {
            FrameError::Io(e) => RepoError::Car(e.to_string()),
            FrameError::Varint(e) => RepoError::Car(e.to_string()),
            FrameError::TooLong { len, max } if max == MAX_HEADER_BYTES => {
                RepoError::Car(format!("a header of {len} bytes (at most {MAX_HEADER_BYTES} are read)"))
            }
            // Refused from its length, before the CID is read: the block is at least this big.
            FrameError::TooLong { len, .. } => RepoError::TooLarge(format!(
                "block of at least {} bytes is over the {}-byte limit (max_block_kb)",
                len.saturating_sub(MAX_CID_BYTES as u64),
                limits.max_block_bytes
            )),
            FrameError::Truncated => RepoError::Car("cut short inside a section".into()),
        }
    }
}

/// Reads one varint-length-prefixed section into `buf`: `None` at the end of the stream
/// (before a section starts), an error when the section is over `max` bytes (before reading
/// it) or cut short.
async fn read_frame<'b, R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
    buf: &'b mut Vec<u8>,
) -> Result<Option<&'b [u8]>, FrameError> {
    use tokio::io::AsyncReadExt;
    let mut varint = Varint::default();
    let len = loop {
        let mut byte = [0u8];
        if reader.read(&mut byte).await.map_err(FrameError::Io)? == 0 {
            return match varint.is_empty() {
                true => Ok(None),
                false => Err(FrameError::Truncated),
            };
        }
        if let Some(len) = varint.push(byte[0]).map_err(FrameError::Varint)? {
            break len;
        }
    };
    if len > max as u64 {
        return Err(FrameError::TooLong { len, max });
    }
    let len = len as usize;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    reader.read_exact(&mut buf[..len]).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    Ok(Some(&buf[..len]))
}

/// An unsigned varint (multiformats' LEB128: at most 9 bytes, minimally encoded) read a byte
/// at a time.
#[derive(Debug, Default, Clone, Copy)]
struct Varint {
    value: u64,
    bytes: u32,
}

/// A length prefix that is not a valid varint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    /// More than 9 bytes.
    #[error("a section length over 9 bytes")]
    Overflow,
    /// A trailing zero byte.
    #[error("a section length not minimally encoded")]
    NotMinimal,
}

impl Varint {
    /// Takes the next byte: the value once it is the last one.
    fn push(&mut self, byte: u8) -> Result<Option<u64>, VarintError> {
        self.value |= u64::from(byte & 0x7f) << (7 * self.bytes);
        self.bytes += 1;
        match byte & 0x80 {
            0 if byte == 0 && self.bytes > 1 => Err(VarintError::NotMinimal),
            0 => Ok(Some(std::mem::take(self).value)),
            _ if self.bytes >= 9 => Err(VarintError::Overflow),
            _ => Ok(None),
        }
    }

    fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

/// Refuses a CAR arriving in pieces (a download) as soon as its framing shows it over the
/// block-size or block-count limits: it reads each section's length and skips the section,
/// so it costs next to nothing beside the download. A CAR it lets through is still read and
/// checked in full by the readers above; this only refuses early what they would refuse.
#[derive(Debug, Clone)]
pub struct CarScanner {
    limits: CarLimits,
    varint: Varint,
    skip: u64,
    sections: u64,
}

impl CarScanner {
    /// A scanner for a CAR held to `limits`.
    pub fn new(limits: CarLimits) -> Self {
        Self { limits, varint: Varint::default(), skip: 0, sections: 0 }
    }

    /// Takes the next bytes of the CAR; an error as soon as a limit is passed.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), RepoError> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() as u64);
                self.skip -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            let pushed = self.varint.push(bytes[0]).map_err(|e| RepoError::Car(e.to_string()))?;
            bytes = &bytes[1..];
            if let Some(len) = pushed {
                self.section(len)?;
            }
        }
        Ok(())
    }

    /// Blocks seen so far (sections after the header).
    pub fn blocks(&self) -> u64 {
        self.sections.saturating_sub(1)
    }

    fn section(&mut self, len: u64) -> Result<(), RepoError> {
        self.sections += 1;
        let max = match self.sections {
            1 => MAX_HEADER_BYTES,
            _ => self.limits.max_block_bytes.saturating_add(MAX_CID_BYTES),
        };
        if len > max as u64 {
            return Err(FrameError::TooLong { len, max }.into_repo_error(&self.limits));
        }
        if self.blocks() > self.limits.max_blocks as u64 {
            return Err(RepoError::TooLarge(blocks_over(&self.limits)));
        }
        self.skip = len;
        Ok(())
    }
}

/// [`read_car`] over a file (a spooled download): every block is read and checked, but only
/// its position is kept; the walk reads blocks back from the file as it needs them, so a large
/// export costs an index, not its size in memory.
pub fn read_car_file(file: std::fs::File, limits: &CarLimits) -> Result<LoadedRepo, RepoError> {
    let size = file.metadata().ok().map(|m| m.len());
    let (root, index) =
        run_ready(scan_car(file_reader(&file), limits, CidChecks::for_car(size, None), |data, end| {
            end - data.len() as u64
        }))?;
    LoadedRepo::new(root, Blocks { index, source: BlockSource::File(file) })
}

/// [`read_car`] over a file, read whole into memory first: for a CAR small enough to walk
/// from memory, which then costs one read, not one per block.
pub fn read_car_file_into_memory(file: &std::fs::File, limits: &CarLimits) -> Result<LoadedRepo, RepoError> {
    let unreadable = |e: std::io::Error| RepoError::Read { what: "the CAR file", source: e.into() };
    let size = file.metadata().map_err(unreadable)?.len();
    check_car_size(size, limits)?;
    let mut bytes = Vec::with_capacity(size as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(file, limits.max_car_bytes + 1), &mut bytes)
        .map_err(unreadable)?;
    read_car_owned(Bytes::from(bytes), limits)
}

/// A CAR file read front to back in large reads, for [`scan_car`].
fn file_reader(file: &std::fs::File) -> BlockingReader<std::io::BufReader<&std::fs::File>> {
    BlockingReader(std::io::BufReader::with_capacity(256 << 10, file))
}

/// A synchronous reader served as an `AsyncRead` that is always ready: for files read on a
/// blocking thread, where waiting inside `poll_read` is fine.
struct BlockingReader<R>(R);

impl<R: std::io::Read + Unpin> AsyncRead for BlockingReader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = match std::io::Read::read(&mut self.0, buf.initialize_unfilled()) {
            Ok(n) => n,
            Err(e) => return Poll::Ready(Err(e)),
        };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// A reader that fails once more than `left` bytes have come through, and says so in `over`;
/// `position` counts the bytes it has passed on.
struct Capped<R> {
    inner: R,
    left: u64,
    over: Arc<AtomicBool>,
    position: Arc<AtomicU64>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Capped<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = (buf.filled().len() - before) as u64;
            if n > self.left {
                self.over.store(true, Ordering::Relaxed);
                return Poll::Ready(Err(std::io::Error::other("over the CAR size limit")));
            }
            self.left -= n;
            // This reader is the counter's only writer: no read-modify-write needed.
            self.position.store(self.position.load(Ordering::Relaxed) + n, Ordering::Relaxed);
        }
        polled
    }
}

impl LoadedRepo {
    fn new(root: Cid, blocks: Blocks) -> Result<Self, RepoError> {
        let commit_bytes = blocks.get(&root)?.ok_or(RepoError::MissingBlock { cid: root, what: "root commit" })?;
        let commit =
            Commit::<SmolStr>::from_cbor(&commit_bytes).map_err(|e| RepoError::NotACommit(root, e.to_string()))?;
        Ok(LoadedRepo { commit_cid: root, commit, blocks })
    }

    /// The repo DID named by the commit.
    pub fn did(&self) -> &str {
        self.commit.did.as_str()
    }

    /// The commit's rev.
    pub fn rev(&self) -> &str {
        self.commit.rev.as_str()
    }

    /// The MST root CID.
    pub fn data(&self) -> Cid {
        self.commit.data
    }

    /// The commit's own CID (the CAR's root).
    pub fn commit_cid(&self) -> Cid {
        self.commit_cid
    }

    /// Number of blocks in the CAR.
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// The block `cid`, or [`RepoError::MissingBlock`] naming `what` it was wanted as.
    pub fn block(&self, cid: &Cid, what: &'static str) -> Result<Bytes, RepoError> {
        self.blocks.get(cid)?.ok_or(RepoError::MissingBlock { cid: *cid, what })
    }

    /// Whether the CAR holds block `cid`.
    pub fn has_block(&self, cid: &Cid) -> bool {
        self.blocks.contains(cid)
    }

    /// Checks the commit: version 3, a valid DID, and `expected_did` when given.
    pub fn check_commit(&self, expected_did: Option<&str>) -> Result<(), RepoError> {
        if self.commit.version != 3 {
            return Err(RepoError::Version(self.commit.version));
        }
        let found = self.did();
        if !crate::syntax::is_did(found) {
            return Err(RepoError::Did { found: found.into(), problem: "not a valid DID".into() });
        }
        match expected_did {
            Some(want) if want != found => {
                Err(RepoError::Did { found: found.into(), problem: format!("expected {want}") })
            }
            _ => Ok(()),
        }
    }

    /// Verifies the commit signature against `key`.
    pub fn verify_signature(&self, key: &PublicKey<'_>) -> Result<(), RepoError> {
        super::verify_commit(&self.commit, key)
    }
}

/// Parses a signing key given as `did:key:z...` or a bare multibase multikey `z...`.
pub fn parse_public_key(s: &str) -> Result<PublicKey<'static>, KeyError> {
    let multibase = s.strip_prefix("did:key:").unwrap_or(s);
    PublicKey::decode(multibase).map_err(|source| KeyError { key: s.to_string(), source })
}

/// A public key that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("invalid public key `{key}`")]
pub struct KeyError {
    /// The key as given.
    pub key: String,
    /// Why it does not decode.
    pub source: jacquard_common::types::crypto::CryptoError,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sluice_testkit::hostile::{raw_car as car_of_sizes, varint};

    /// The limit refusal a read gives, if any.
    fn limit_refusal(read: Result<LoadedRepo, RepoError>) -> Option<String> {
        match read {
            Err(RepoError::TooLarge(m)) => Some(m),
            _ => None,
        }
    }

    #[test]
    fn a_block_over_four_mib_is_read_when_the_limit_allows_it_and_refused_by_name_when_not() {
        let car = car_of_sizes(&[100, 4_608 << 10]);
        let wide = CarLimits { max_block_bytes: 5_120 << 10, ..Default::default() };
        // The root is not a commit: the scan got through every block.
        assert!(matches!(read_car(&car, &wide), Err(RepoError::NotACommit(..))));
        let e = read_car(&car, &CarLimits::default()).err().unwrap().to_string();
        assert!(e.contains("is over the 2097152-byte limit (max_block_kb)"), "{e}");
        let mut scanner = CarScanner::new(CarLimits::default());
        let e = scanner.feed(&car).unwrap_err().to_string();
        assert!(e.contains("2097152-byte limit (max_block_kb)"), "{e}");
        assert!(CarScanner::new(wide).feed(&car).is_ok());
    }

    #[test]
    fn malformed_framing_is_named() {
        let e = read_car(&[0x80, 0x80], &CarLimits::default()).err().unwrap().to_string();
        assert!(e.contains("cut short"), "{e}");
        let e = read_car(&[0x80, 0x00], &CarLimits::default()).err().unwrap().to_string();
        assert!(e.contains("not minimally encoded"), "{e}");
        let e = read_car(&[0xff; 12], &CarLimits::default()).err().unwrap().to_string();
        assert!(e.contains("over 9 bytes"), "{e}");
        let mut car = car_of_sizes(&[10, 10]);
        car.truncate(car.len() - 3);
        let e = read_car(&car, &CarLimits::default()).err().unwrap().to_string();
        assert!(e.contains("cut short inside a section"), "{e}");
    }

    /// On demand (`--ignored`): the scanner's cost beside a download's own copy of each chunk,
    /// over a 256 MiB CAR of 4 KiB blocks fed in 64 KiB chunks.
    #[test]
    #[ignore]
    fn scanner_throughput() {
        let car = car_of_sizes(&vec![4096; 65_536]);
        let limits = CarLimits { max_blocks: 1 << 20, ..Default::default() };
        let start = std::time::Instant::now();
        let mut scanner = CarScanner::new(limits);
        for chunk in car.chunks(64 << 10) {
            scanner.feed(chunk).unwrap();
        }
        let scanned = start.elapsed();
        let start = std::time::Instant::now();
        let mut copy = Vec::with_capacity(car.len());
        for chunk in car.chunks(64 << 10) {
            copy.extend_from_slice(chunk);
        }
        let copied = start.elapsed();
        assert_eq!((scanner.blocks(), copy.len()), (65_536, car.len()));
        let mib = car.len() as f64 / (1 << 20) as f64;
        println!("scan {:.0} MiB/s, copy {:.0} MiB/s", mib / scanned.as_secs_f64(), mib / copied.as_secs_f64());
    }

    proptest! {
        #[test]
        fn varints_read_back(n in 0u64..(1 << 63)) {
            let mut v = Varint::default();
            let bytes = varint(n);
            let (last, head) = bytes.split_last().unwrap();
            for b in head {
                prop_assert_eq!(v.push(*b), Ok(None));
            }
            prop_assert_eq!(v.push(*last), Ok(Some(n)));
        }

        /// Fed in any pieces, the scanner refuses a CAR over the block-size or block-count
        /// limit, as the reader does, and lets through what the reader reads.
        #[test]
        fn the_scanner_refuses_what_the_reader_refuses(
            sizes in proptest::collection::vec(0usize..3000, 1..12),
            max_block_bytes in 500usize..3000,
            max_blocks in 1usize..12,
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let car = car_of_sizes(&sizes);
            let limits = CarLimits { max_car_bytes: 1 << 20, max_block_bytes, max_blocks };
            let read = limit_refusal(read_car(&car, &limits));
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(car.len())).collect();
            points.push(car.len());
            points.sort();
            let (mut scanner, mut at, mut scanned) = (CarScanner::new(limits), 0, Ok(()));
            for p in points {
                scanned = scanned.and_then(|()| scanner.feed(&car[at..p]));
                at = p;
            }
            let over_blocks = sizes.len() > max_blocks;
            // The reader's exact limit; the scanner's is the section's, a CID's bytes above it.
            let over_size = |slack: usize| sizes.iter().any(|n| *n > max_block_bytes + slack);
            prop_assert_eq!(read.is_some(), over_blocks || over_size(0), "{:?}", read);
            if over_blocks || over_size(MAX_CID_BYTES - 36) {
                prop_assert!(scanned.is_err());
            }
            if !over_blocks && !over_size(0) {
                prop_assert!(scanned.is_ok());
            }
        }
    }
}
