//! The message log: append-only segment files of checksummed records, written by one thread
//! with group commit (one `fdatasync` covers every record that arrived meanwhile, from every
//! connection and queue), read back by queues whose messages are paged out, and replayed at
//! start.
//!
//! A message's id is its **location**: `segment << 32 | offset` of its publish record. The
//! location is reserved when the record is appended (a short per-vhost lock that also fixes the
//! order in which the writer receives records), so a queue can drop a message's body and keep
//! only its location (an index entry), and the writer keeps only per-segment counts, never a
//! per-message map.
//!
//! Record: `len u32 | crc32 u32 | payload` (crc over the payload). Payload types:
//! - 1 publish: `order u64` (0: its own location; else the location of the original publish,
//!   kept by compaction so recovery restores queue order), `from u64` (0: a new message; else
//!   the location this record supersedes for the listed queues: a compaction move),
//!   `queues (u16 count; each shortstr name, u8 delivered, u32 delivery count)`,
//!   `exchange shortstr, routing key shortstr, properties (u32 len + bytes),
//!   body (u32 len + bytes)`, then, if the message had BCC routing keys, `u8 count` and a
//!   shortstr each (dead-lettering routes with them) — one record per message however many
//!   durable queues it went to;
//! - 2 remove: `loc u64, queue shortstr` (acked, dropped, dead-lettered away, purged);
//! - 3 delivered: `loc u64, queue shortstr` (first delivery: comes back redelivered);
//! - 4 delivery count: `loc u64, queue shortstr, count u32`;
//! - 5 queue deleted: `queue shortstr`.
//!
//! A segment is deleted once it and every older segment hold no live message (so removal
//! records are never lost while the publishes they cancel still exist). When the segments
//! behind the head are mostly dead but the oldest still holds a few live messages, the writer
//! asks the queues to move those messages to the head (publish records with `from`), so the
//! old segments can go. A torn or corrupted record fails its checksum and is skipped; recovery
//! never refuses to start because of one.

use crate::message::Message;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Default size at which a new segment file is started.
pub const SEGMENT_SIZE: u64 = 64 * 1024 * 1024;

/// The segment holding a location.
pub fn segment_of(loc: u64) -> u64 {
    loc >> 32
}

/// When a confirm may be sent for a persistent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// After `fdatasync` (group commit).
    #[default]
    Confirm,
    /// Sync every `sync_interval_ms`; confirm at once.
    Interval,
    /// Never sync explicitly (throw-away brokers).
    Never,
}

/// Called once the records it was attached to are durable (per the policy) with `true`, or
/// with `false` if they could not be written (the publish must be nacked, never confirmed).
pub type Done = Box<dyn FnOnce(bool) + Send>;

enum Cmd {
    /// A record and the location reserved for it.
    Append(Bytes, Option<Done>, u64),
    /// A deleted queue's messages (locations) no longer count as live.
    Release(Vec<u64>),
    /// Flush and sync, then call back (tests, shutdown).
    Barrier(Done),
    /// As `Barrier`, then stop the writer (shutdown).
    Close(Done),
    /// Report the counters (after everything before it).
    Stats(mpsc::Sender<Stats>),
}

/// The writer's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Segment files on disk.
    pub segments: u64,
    /// Live (queue, message) pairs.
    pub live: u64,
    /// (queue, message) pairs published into the segments on disk.
    pub total: u64,
}

/// A recovered message of one queue: index data only (the body stays in the log).
#[derive(Debug, Clone, Copy)]
pub struct RecoveredMsg {
    /// Location of its publish record (its id).
    pub loc: u64,
    /// Queue order (the location of the original publish).
    pub order: u64,
    /// `expiration` property in ms (`u64::MAX`: none).
    pub expiration: u64,
    /// Body size.
    pub size: u32,
    /// Delivery count.
    pub count: u32,
    /// `priority` property.
    pub priority: u8,
    /// Delivered before the restart.
    pub delivered: bool,
    removed: bool,
}

/// Placement of the next record (guarded: reserving a location and handing the record to the
/// writer happen together, so the writer receives records in location order).
struct Place {
    seg: u64,
    size: u64,
    tx: mpsc::Sender<Cmd>,
}

/// State shared by the handle and the writer thread.
struct Shared {
    dir: PathBuf,
    /// Open segment files for reading, by segment.
    files: RwLock<HashMap<u64, Arc<File>>>,
    /// End of what the writer has written (a location): records before it can be read.
    written: AtomicU64,
}

impl Shared {
    fn file(&self, seg: u64) -> io::Result<Arc<File>> {
        if let Some(f) = self.files.read().get(&seg) {
            return Ok(f.clone());
        }
        let mut files = self.files.write();
        if let Some(f) = files.get(&seg) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(segment_path(&self.dir, seg))?);
        files.insert(seg, f.clone());
        Ok(f)
    }
}

/// Handle to the log's writer thread.
pub struct Log {
    place: Mutex<Place>,
    shared: Arc<Shared>,
    /// The sync policy.
    pub policy: SyncPolicy,
    /// Body bytes (plus a fixed per-message estimate) a durable queue keeps in memory before
    /// it pages persistent messages out to their place in the log.
    pub queue_memory: u64,
    segment_size: u64,
}

fn put_str(b: &mut BytesMut, s: &[u8]) {
    let s = &s[..s.len().min(255)];
    b.put_u8(s.len() as u8);
    b.put_slice(s);
}

/// A buffer for a record: 8 bytes for the header [`frame`] fills in, then the payload.
fn record(capacity: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(8 + capacity);
    b.put_bytes(0, 8);
    b
}

/// Fill in the header of a [`record`] (length, crc32 of the payload), in place: the body is
/// copied once, into the record.
fn frame(mut rec: BytesMut) -> Bytes {
    let len = (rec.len() - 8) as u32;
    let crc = crc32fast::hash(&rec[8..]);
    rec[0..4].copy_from_slice(&len.to_be_bytes());
    rec[4..8].copy_from_slice(&crc.to_be_bytes());
    rec.freeze()
}

/// A queue's state in a publish record: name, delivered before, delivery count.
pub type QueueState<'a> = (&'a str, bool, u32);

/// Encode a publish record (`order`/`from` 0 for a new message; see the module docs).
pub fn publish_record(order: u64, from: u64, queues: &[QueueState<'_>], msg: &Message) -> Bytes {
    let mut p = record(64 + queues.len() * 16 + msg.properties.len() + msg.body.len());
    p.put_u8(1);
    p.put_u64(order);
    p.put_u64(from);
    p.put_u16(queues.len() as u16);
    for (q, delivered, count) in queues {
        put_str(&mut p, q.as_bytes());
        p.put_u8(*delivered as u8);
        p.put_u32(*count);
    }
    put_str(&mut p, &msg.exchange);
    put_str(&mut p, &msg.routing_key);
    p.put_u32(msg.properties.len() as u32);
    p.put_slice(&msg.properties);
    p.put_u32(msg.body.len() as u32);
    p.put_slice(&msg.body);
    if !msg.bcc.is_empty() {
        let keys = &msg.bcc[..msg.bcc.len().min(255)];
        p.put_u8(keys.len() as u8);
        for k in keys {
            put_str(&mut p, k);
        }
    }
    frame(p)
}

fn small_record(ty: u8, loc: u64, queue: &str, count: Option<u32>) -> Bytes {
    let mut p = record(16 + queue.len());
    p.put_u8(ty);
    if ty != 5 {
        p.put_u64(loc);
    }
    put_str(&mut p, queue.as_bytes());
    if let Some(c) = count {
        p.put_u32(c);
    }
    frame(p)
}

/// Encode a remove record.
pub fn remove_record(loc: u64, queue: &str) -> Bytes {
    small_record(2, loc, queue, None)
}

/// Encode a delivered record.
pub fn delivered_record(loc: u64, queue: &str) -> Bytes {
    small_record(3, loc, queue, None)
}

/// Encode a delivery-count record.
pub fn count_record(loc: u64, queue: &str, count: u32) -> Bytes {
    small_record(4, loc, queue, Some(count))
}

/// Encode a queue-deleted record.
pub fn queue_deleted_record(queue: &str) -> Bytes {
    small_record(5, 0, queue, None)
}

struct Publish {
    order: u64,
    from: u64,
    queues: Vec<(Bytes, bool, u32)>,
    exchange: Bytes,
    routing_key: Bytes,
    properties: Bytes,
    body: Bytes,
    bcc: Vec<Bytes>,
}

enum Record {
    Publish(Publish),
    Remove(u64, Bytes),
    Delivered(u64, Bytes),
    Count(u64, Bytes, u32),
    QueueDeleted(Bytes),
}

fn get_str(p: &mut Bytes) -> Option<Bytes> {
    if p.is_empty() {
        return None;
    }
    let n = p.get_u8() as usize;
    (p.len() >= n).then(|| p.split_to(n))
}

fn get_blob(p: &mut Bytes) -> Option<Bytes> {
    if p.len() < 4 {
        return None;
    }
    let n = p.get_u32() as usize;
    (p.len() >= n).then(|| p.split_to(n))
}

fn decode(mut p: Bytes) -> Option<Record> {
    if p.is_empty() {
        return None;
    }
    let ty = p.get_u8();
    if ty == 5 {
        return Some(Record::QueueDeleted(get_str(&mut p)?));
    }
    if p.len() < 8 {
        return None;
    }
    let loc = p.get_u64();
    Some(match ty {
        1 => {
            if p.len() < 10 {
                return None;
            }
            let from = p.get_u64();
            let n = p.get_u16();
            let mut queues = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let name = get_str(&mut p)?;
                if p.len() < 5 {
                    return None;
                }
                queues.push((name, p.get_u8() != 0, p.get_u32()));
            }
            let exchange = get_str(&mut p)?;
            let routing_key = get_str(&mut p)?;
            let properties = get_blob(&mut p)?;
            let body = get_blob(&mut p)?;
            let mut bcc = Vec::new();
            if !p.is_empty() {
                for _ in 0..p.get_u8() {
                    bcc.push(get_str(&mut p)?);
                }
            }
            Record::Publish(Publish {
                order: loc,
                from,
                queues,
                exchange,
                routing_key,
                properties,
                body,
                bcc,
            })
        }
        2 => Record::Remove(loc, get_str(&mut p)?),
        3 => Record::Delivered(loc, get_str(&mut p)?),
        4 => {
            let q = get_str(&mut p)?;
            if p.len() < 4 {
                return None;
            }
            Record::Count(loc, q, p.get_u32())
        }
        _ => return None,
    })
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:012}.seg"))
}

fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
        .filter(|n| *n > 0 && *n < u32::MAX as u64)
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Per-segment counts of (queue, message) pairs: published into the segment, still live.
#[derive(Default)]
struct Accounting {
    live: BTreeMap<u64, u64>,
    total: BTreeMap<u64, u64>,
}

impl Accounting {
    fn add(&mut self, seg: u64, pairs: u64, live: u64) {
        *self.total.entry(seg).or_default() += pairs;
        *self.live.entry(seg).or_default() += live;
    }

    fn remove(&mut self, loc: u64, n: u64) {
        if let Some(l) = self.live.get_mut(&segment_of(loc)) {
            *l = l.saturating_sub(n);
        }
    }

    fn forget_segment(&mut self, seg: u64) {
        self.live.remove(&seg);
        self.total.remove(&seg);
    }
}

/// What `open` returns: the log handle and the messages to put back into queues.
pub struct Opened {
    /// The log.
    pub log: Log,
    /// Per queue, its live messages in queue order.
    pub queues: HashMap<String, Vec<RecoveredMsg>>,
    /// Records skipped because their checksum or layout was wrong.
    pub corrupt_records: usize,
    /// Segments the writer wants compacted: the vhost moves their live messages.
    pub compact: tokio::sync::mpsc::UnboundedReceiver<u64>,
}

/// Options for [`open`].
pub struct Options {
    /// Sync policy.
    pub policy: SyncPolicy,
    /// Sync period for [`SyncPolicy::Interval`].
    pub interval: Duration,
    /// See [`Log::queue_memory`].
    pub queue_memory: u64,
    /// Size at which a new segment is started.
    pub segment_size: u64,
}

/// Replay the segments in `dir`, then start the writer thread. Messages of queues for which
/// `known` is false (deleted, never durable) are dropped and count as dead.
pub fn open(dir: &Path, opts: Options, known: &dyn Fn(&str) -> bool) -> io::Result<Opened> {
    std::fs::create_dir_all(dir)?;
    let segments = list_segments(dir)?;
    let mut acct = Accounting::default();
    let mut queues: HashMap<String, Vec<RecoveredMsg>> = HashMap::new();
    let mut corrupt = 0;
    let mut last_len = 0u64;
    let find = |v: &mut Vec<RecoveredMsg>, loc: u64| -> Option<usize> {
        v.binary_search_by_key(&loc, |m| m.loc)
            .ok()
            .filter(|&i| !v[i].removed)
    };
    for &seg in &segments {
        let mut data = Vec::new();
        File::open(segment_path(dir, seg))?.read_to_end(&mut data)?;
        let data = Bytes::from(data);
        let mut pos = 0usize;
        while pos + 8 <= data.len() {
            let len =
                u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap_or_default()) as usize;
            let crc = u32::from_be_bytes(data[pos + 4..pos + 8].try_into().unwrap_or_default());
            if pos + 8 + len > data.len() {
                // Torn tail: the write was cut short. Everything before it is intact.
                corrupt += 1;
                break;
            }
            let loc = seg << 32 | pos as u64;
            let payload = data.slice(pos + 8..pos + 8 + len);
            pos += 8 + len;
            if crc32fast::hash(&payload) != crc {
                corrupt += 1;
                continue;
            }
            let Some(rec) = decode(payload) else {
                corrupt += 1;
                continue;
            };
            match rec {
                Record::Publish(p) => {
                    let peek = crate::message::peek_properties(&p.properties);
                    let (priority, expiration) = (peek.priority, peek.expiration());
                    acct.add(seg, p.queues.len() as u64, 0);
                    for (name, delivered, count) in p.queues {
                        let name = String::from_utf8_lossy(&name);
                        if !known(&name) {
                            continue;
                        }
                        let v = match queues.get_mut(&*name) {
                            Some(v) => v,
                            None => queues.entry(name.into_owned()).or_default(),
                        };
                        if p.from != 0
                            && let Some(i) = find(v, p.from)
                        {
                            v[i].removed = true;
                        }
                        v.push(RecoveredMsg {
                            loc,
                            order: if p.order == 0 { loc } else { p.order },
                            expiration: expiration.unwrap_or(u64::MAX),
                            size: p.body.len() as u32,
                            count,
                            priority,
                            delivered,
                            removed: false,
                        });
                    }
                }
                Record::Remove(loc, q) => {
                    if let Some(v) = queues.get_mut(&*String::from_utf8_lossy(&q))
                        && let Some(i) = find(v, loc)
                    {
                        v[i].removed = true;
                    }
                }
                Record::Delivered(loc, q) => {
                    if let Some(v) = queues.get_mut(&*String::from_utf8_lossy(&q))
                        && let Some(i) = find(v, loc)
                    {
                        v[i].delivered = true;
                    }
                }
                Record::Count(loc, q, n) => {
                    if let Some(v) = queues.get_mut(&*String::from_utf8_lossy(&q))
                        && let Some(i) = find(v, loc)
                    {
                        v[i].count = n;
                    }
                }
                Record::QueueDeleted(q) => {
                    if let Some(v) = queues.get_mut(&*String::from_utf8_lossy(&q)) {
                        v.clear();
                    }
                }
            }
        }
        last_len = pos as u64;
        if seg == *segments.last().unwrap_or(&0) && (pos as u64) < data.len() as u64 {
            // Cut the torn tail so new records follow intact ones.
            OpenOptions::new()
                .write(true)
                .open(segment_path(dir, seg))?
                .set_len(pos as u64)?;
        }
    }
    for v in queues.values_mut() {
        v.retain(|m| !m.removed);
        v.shrink_to_fit();
        for m in v.iter() {
            acct.add(segment_of(m.loc), 0, 1);
        }
        if v.iter().any(|m| m.order != m.loc) {
            v.sort_by_key(|m| m.order);
        }
    }
    let current = segments.last().copied().unwrap_or(1);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, current))?;
    let size = file.metadata()?.len();
    debug_assert!(segments.is_empty() || size == last_len);
    let (tx, rx) = mpsc::channel();
    let (compact_tx, compact_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut segs: VecDeque<u64> = segments.into_iter().filter(|s| *s < current).collect();
    segs.push_back(current);
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        files: RwLock::new(HashMap::new()),
        written: AtomicU64::new(current << 32 | size),
    });
    let writer = Writer {
        shared: shared.clone(),
        file,
        current,
        size,
        acct,
        policy: opts.policy,
        interval: opts.interval,
        segments: segs,
        compact: compact_tx,
        compact_asked: None,
        failed: false,
    };
    std::thread::Builder::new()
        .name("warren-store".into())
        .spawn(move || writer.run(rx))?;
    Ok(Opened {
        log: Log {
            place: Mutex::new(Place {
                seg: current,
                size,
                tx,
            }),
            shared,
            policy: opts.policy,
            queue_memory: opts.queue_memory,
            segment_size: opts.segment_size,
        },
        queues,
        corrupt_records: corrupt,
        compact: compact_rx,
    })
}

fn read_full_at(f: &File, buf: &mut [u8], mut off: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                off += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn damaged(loc: u64, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "message at segment {} offset {}: {what}",
            segment_of(loc),
            loc & 0xffff_ffff
        ),
    )
}

impl Log {
    /// Append a record; `done` runs once it is durable (per the policy). Returns the
    /// record's location.
    pub fn append(&self, record: Bytes, done: Option<Done>) -> u64 {
        let len = record.len() as u64;
        let mut p = self.place.lock();
        if p.size > 0 && p.size + len > self.segment_size {
            p.seg += 1;
            p.size = 0;
        }
        let loc = p.seg << 32 | p.size;
        p.size += len;
        if let Err(mpsc::SendError(Cmd::Append(_, Some(d), _))) =
            p.tx.send(Cmd::Append(record, done, loc))
        {
            drop(p);
            d(false);
        }
        loc
    }

    /// A deleted queue's messages (their locations) no longer hold their segments.
    pub fn release(&self, locs: Vec<u64>) {
        if !locs.is_empty() {
            let _ = self.place.lock().tx.send(Cmd::Release(locs));
        }
    }

    /// Whether the record at `loc` has been written (so it can be read back).
    pub fn is_written(&self, loc: u64) -> bool {
        loc < self.shared.written.load(Ordering::Acquire)
    }

    /// Read the message whose publish record is at `loc` (`size`: its body size, a hint).
    pub fn read(&self, loc: u64, size: u32) -> io::Result<Message> {
        let f = self.shared.file(segment_of(loc))?;
        let off = loc & 0xffff_ffff;
        let mut buf = vec![0u8; 8 + 512 + size as usize];
        let mut n = read_full_at(&f, &mut buf, off)?;
        if n < 8 {
            return Err(damaged(loc, "cut short"));
        }
        let len = u32::from_be_bytes(buf[0..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_be_bytes(buf[4..8].try_into().unwrap_or_default());
        if 8 + len > n {
            buf.resize(8 + len, 0);
            n += read_full_at(&f, &mut buf[n..], off + n as u64)?;
            if n < 8 + len {
                return Err(damaged(loc, "cut short"));
            }
        }
        buf.truncate(8 + len);
        let payload = Bytes::from(buf).slice(8..);
        if crc32fast::hash(&payload) != crc {
            return Err(damaged(loc, "checksum mismatch"));
        }
        match decode(payload) {
            Some(Record::Publish(p)) => {
                let mut m =
                    Message::recovered(loc, p.exchange, p.routing_key, p.properties, p.body);
                m.bcc = p.bcc;
                Ok(m)
            }
            _ => Err(damaged(loc, "not a publish record")),
        }
    }

    /// Wait until everything appended so far is written and synced.
    pub fn barrier(&self) {
        self.wait(Cmd::Barrier);
    }

    /// Write and sync everything appended so far, then stop the writer: later appends are
    /// dropped and no file is touched any more (shutdown).
    pub fn close(&self) {
        self.wait(Cmd::Close);
    }

    /// The writer's counters, once it has handled everything appended so far.
    pub fn stats(&self) -> Option<Stats> {
        let (tx, rx) = mpsc::channel();
        self.place.lock().tx.send(Cmd::Stats(tx)).ok()?;
        rx.recv_timeout(Duration::from_secs(10)).ok()
    }

    fn wait(&self, cmd: fn(Done) -> Cmd) {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let sent = self
            .place
            .lock()
            .tx
            .send(cmd(Box::new(move |_| {
                let _ = tx.send(());
            })))
            .is_ok();
        if sent {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }
}

/// Compaction is asked for when the segments behind the head hold at most this fraction
/// (1/N) of live (queue, message) pairs, and again at most once a second while it holds.
const COMPACT_RATIO: u64 = 8;

struct Writer {
    shared: Arc<Shared>,
    file: File,
    current: u64,
    size: u64,
    acct: Accounting,
    policy: SyncPolicy,
    interval: Duration,
    /// Segment files on disk, oldest first.
    segments: VecDeque<u64>,
    compact: tokio::sync::mpsc::UnboundedSender<u64>,
    compact_asked: Option<(u64, Instant)>,
    /// A write or sync failed (disk full, I/O error): nothing more is written, and every
    /// publish waiting for durability from now on is nacked.
    failed: bool,
}

impl Writer {
    fn fail(&mut self, what: &str, e: io::Error) {
        if !self.failed {
            tracing::error!(error = %e, "message store {what} failed: persistent publishes are nacked from now on");
        }
        self.failed = true;
    }

    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut last_sync = Instant::now();
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        let mut waiting: Vec<Done> = Vec::new();
        let mut dirty = false;
        loop {
            let first = if self.policy == SyncPolicy::Interval && dirty {
                match rx.recv_timeout(self.interval.saturating_sub(last_sync.elapsed())) {
                    Ok(c) => Some(c),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                }
            };
            let mut barrier = Vec::new();
            let mut close = None;
            let mut cmds: Vec<Cmd> = first.into_iter().collect();
            while let Ok(c) = rx.try_recv() {
                cmds.push(c);
                if cmds.len() >= 65536 {
                    break;
                }
            }
            for c in cmds {
                match c {
                    Cmd::Append(rec, done, loc) => {
                        if segment_of(loc) != self.current {
                            self.flush(&mut buf);
                            self.roll(segment_of(loc));
                        }
                        self.account(&rec);
                        buf.extend_from_slice(&rec);
                        if let Some(d) = done {
                            waiting.push(d);
                        }
                    }
                    Cmd::Release(locs) => {
                        for loc in locs {
                            self.acct.remove(loc, 1);
                        }
                    }
                    Cmd::Barrier(d) => barrier.push(d),
                    Cmd::Stats(tx) => {
                        let _ = tx.send(Stats {
                            segments: self.segments.len() as u64,
                            live: self.acct.live.values().sum(),
                            total: self.acct.total.values().sum(),
                        });
                    }
                    Cmd::Close(d) => {
                        close = Some(d);
                        break;
                    }
                }
            }
            if !buf.is_empty() {
                self.flush(&mut buf);
                dirty = true;
            }
            let sync_now = match self.policy {
                SyncPolicy::Confirm => dirty,
                SyncPolicy::Interval => {
                    dirty && (last_sync.elapsed() >= self.interval || !barrier.is_empty())
                }
                SyncPolicy::Never => false,
            };
            let asked = !barrier.is_empty() || close.is_some();
            if sync_now || (asked && dirty && self.policy != SyncPolicy::Never) {
                if let Err(e) = self.file.sync_data() {
                    self.fail("fdatasync", e);
                }
                last_sync = Instant::now();
                dirty = false;
            }
            // Deleting a segment must not run ahead of the sync of what replaced it; and it
            // is done before barriers return, so no file changes after a barrier but appends.
            if !dirty || self.policy == SyncPolicy::Never {
                self.reclaim();
                if close.is_none() {
                    self.maybe_compact();
                }
            }
            // Confirm policy: callbacks only after the sync; the others: at once.
            if self.policy != SyncPolicy::Confirm || !dirty {
                for d in waiting.drain(..) {
                    d(!self.failed);
                }
            }
            for d in barrier {
                d(true);
            }
            if let Some(d) = close {
                for d in waiting.drain(..) {
                    d(!self.failed);
                }
                d(true);
                return;
            }
        }
    }

    fn flush(&mut self, buf: &mut Vec<u8>) {
        if buf.is_empty() || self.failed {
            buf.clear();
            return;
        }
        if let Err(e) = self.file.write_all(buf) {
            // What follows would land at the wrong offsets: stop writing altogether.
            self.fail("write", e);
            buf.clear();
            return;
        }
        self.size += buf.len() as u64;
        buf.clear();
        self.shared
            .written
            .store(self.current << 32 | self.size, Ordering::Release);
    }

    /// Keep the per-segment counts from the records written. Reads only the fixed prefix:
    /// no decoding, no allocation per record.
    fn account(&mut self, rec: &Bytes) {
        let p = &rec[8..];
        let u64_at = |i: usize| {
            p.get(i..i + 8)
                .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
        };
        match p.first() {
            Some(1) => {
                if let (Some(from), Some(n)) = (u64_at(9), p.get(17..19)) {
                    let n = u16::from_be_bytes([n[0], n[1]]) as u64;
                    self.acct.add(self.current, n, n);
                    if from != 0 {
                        self.acct.remove(from, n);
                    }
                }
            }
            Some(2) => {
                if let Some(loc) = u64_at(1) {
                    self.acct.remove(loc, 1);
                }
            }
            _ => {}
        }
    }

    fn roll(&mut self, seg: u64) {
        if self.policy != SyncPolicy::Never {
            let _ = self.file.sync_data();
        }
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.shared.dir, seg))
        {
            Ok(f) => {
                self.file = f;
                self.current = seg;
                self.size = 0;
                self.segments.push_back(seg);
            }
            Err(e) => self.fail("opening a new segment", e),
        }
    }

    /// Delete the oldest segments while they hold no live message.
    fn reclaim(&mut self) {
        while let Some(&seg) = self.segments.front() {
            if seg >= self.current || self.acct.live.get(&seg).copied().unwrap_or(0) > 0 {
                return;
            }
            self.shared.files.write().remove(&seg);
            let _ = std::fs::remove_file(segment_path(&self.shared.dir, seg));
            self.acct.forget_segment(seg);
            self.segments.pop_front();
        }
    }

    /// Ask for the oldest segment to be compacted when the segments behind the head are
    /// mostly dead (see [`COMPACT_RATIO`]).
    fn maybe_compact(&mut self) {
        let Some(&front) = self.segments.front() else {
            return;
        };
        if front >= self.current {
            return;
        }
        let (mut live, mut total) = (0u64, 0u64);
        for seg in self.segments.iter().filter(|s| **s < self.current) {
            live += self.acct.live.get(seg).copied().unwrap_or(0);
            total += self.acct.total.get(seg).copied().unwrap_or(0);
        }
        if live == 0 || live * COMPACT_RATIO > total {
            return;
        }
        if let Some((seg, at)) = self.compact_asked
            && seg == front
            && at.elapsed() < Duration::from_secs(1)
        {
            return;
        }
        self.compact_asked = Some((front, Instant::now()));
        let _ = self.compact.send(front);
    }
}
