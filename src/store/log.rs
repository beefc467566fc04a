//! The message log: append-only segment files of checksummed records, written by one thread
//! with group commit (one `fdatasync` covers every record that arrived meanwhile, from every
//! connection and queue), and replayed at start.
//!
//! Record: `len u32 | crc32 u32 | payload` (crc over the payload). Payload types:
//! - 1 publish: `id u64, queues (u16 count, shortstr each), exchange shortstr, routing key
//!   shortstr, properties (u32 len + bytes), body (u32 len + bytes)` — one record per message,
//!   whatever the number of durable queues it went to;
//! - 2 remove: `id u64, queue shortstr` (acked, dropped, dead-lettered away, purged);
//! - 3 delivered: `id u64, queue shortstr` (first delivery: comes back redelivered);
//! - 4 delivery count: `id u64, queue shortstr, count u32`;
//! - 5 queue deleted: `queue shortstr`.
//!
//! A segment is deleted once it and every older segment hold no live message (so removal
//! records are never lost while the publishes they cancel still exist). A torn or corrupted
//! record fails its checksum and is skipped; recovery never refuses to start because of one.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Segment size at which a new file is started.
pub const SEGMENT_SIZE: u64 = 64 * 1024 * 1024;

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

/// Called once the records it was attached to are durable (per the policy).
pub type Done = Box<dyn FnOnce() + Send>;

enum Cmd {
    Append(Bytes, Option<Done>),
    /// Flush and sync, then call back (tests, shutdown).
    Barrier(Done),
}

/// A recovered message: its publish record and what later records said about it.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// Message id.
    pub id: u64,
    /// Exchange it was published to.
    pub exchange: Bytes,
    /// Routing key.
    pub routing_key: Bytes,
    /// Raw properties.
    pub properties: Bytes,
    /// Body.
    pub body: Bytes,
    /// Queues that still hold it, with (delivered before, delivery count); names interned.
    pub queues: Vec<(std::sync::Arc<str>, (bool, u32))>,
}

/// Handle to the log's writer thread.
pub struct Log {
    tx: mpsc::Sender<Cmd>,
    next_id: AtomicU64,
    /// The sync policy.
    pub policy: SyncPolicy,
}

fn put_str(b: &mut BytesMut, s: &[u8]) {
    let s = &s[..s.len().min(255)];
    b.put_u8(s.len() as u8);
    b.put_slice(s);
}

fn frame(payload: BytesMut) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 8);
    out.put_u32(payload.len() as u32);
    out.put_u32(crc32fast::hash(&payload));
    out.put_slice(&payload);
    out.freeze()
}

/// Encode a publish record.
pub fn publish_record(
    id: u64,
    queues: &[&str],
    exchange: &[u8],
    routing_key: &[u8],
    properties: &[u8],
    body: &[u8],
) -> Bytes {
    let mut p = BytesMut::with_capacity(64 + properties.len() + body.len());
    p.put_u8(1);
    p.put_u64(id);
    p.put_u16(queues.len() as u16);
    for q in queues {
        put_str(&mut p, q.as_bytes());
    }
    put_str(&mut p, exchange);
    put_str(&mut p, routing_key);
    p.put_u32(properties.len() as u32);
    p.put_slice(properties);
    p.put_u32(body.len() as u32);
    p.put_slice(body);
    frame(p)
}

fn small_record(ty: u8, id: u64, queue: &str, count: Option<u32>) -> Bytes {
    let mut p = BytesMut::with_capacity(16 + queue.len());
    p.put_u8(ty);
    if ty != 5 {
        p.put_u64(id);
    }
    put_str(&mut p, queue.as_bytes());
    if let Some(c) = count {
        p.put_u32(c);
    }
    frame(p)
}

/// Encode a remove record.
pub fn remove_record(id: u64, queue: &str) -> Bytes {
    small_record(2, id, queue, None)
}

/// Encode a delivered record.
pub fn delivered_record(id: u64, queue: &str) -> Bytes {
    small_record(3, id, queue, None)
}

/// Encode a delivery-count record.
pub fn count_record(id: u64, queue: &str, count: u32) -> Bytes {
    small_record(4, id, queue, Some(count))
}

/// Encode a queue-deleted record.
pub fn queue_deleted_record(queue: &str) -> Bytes {
    small_record(5, 0, queue, None)
}

enum Record {
    Publish {
        id: u64,
        queues: Vec<String>,
        exchange: Bytes,
        routing_key: Bytes,
        properties: Bytes,
        body: Bytes,
    },
    Remove(u64, String),
    Delivered(u64, String),
    Count(u64, String, u32),
    QueueDeleted(String),
}

fn get_str(p: &mut Bytes) -> Option<Bytes> {
    if p.is_empty() {
        return None;
    }
    let n = p.get_u8() as usize;
    (p.len() >= n).then(|| p.split_to(n))
}

fn get_string(p: &mut Bytes) -> Option<String> {
    get_str(p).map(|b| String::from_utf8_lossy(&b).into_owned())
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
    let id = if ty != 5 {
        if p.len() < 8 {
            return None;
        }
        p.get_u64()
    } else {
        0
    };
    Some(match ty {
        1 => {
            if p.len() < 2 {
                return None;
            }
            let n = p.get_u16();
            let mut queues = Vec::with_capacity(n as usize);
            for _ in 0..n {
                queues.push(get_string(&mut p)?);
            }
            Record::Publish {
                id,
                queues,
                exchange: get_str(&mut p)?,
                routing_key: get_str(&mut p)?,
                properties: get_blob(&mut p)?,
                body: get_blob(&mut p)?,
            }
        }
        2 => Record::Remove(id, get_string(&mut p)?),
        3 => Record::Delivered(id, get_string(&mut p)?),
        4 => {
            let q = get_string(&mut p)?;
            if p.len() < 4 {
                return None;
            }
            Record::Count(id, q, p.get_u32())
        }
        5 => Record::QueueDeleted(get_string(&mut p)?),
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
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Per-segment bookkeeping shared by recovery and the writer thread.
#[derive(Default)]
struct Accounting {
    /// Live (queue, message) pairs published in each segment.
    live: BTreeMap<u64, u64>,
    /// For each live message: its segment and how many queues still hold it.
    msgs: HashMap<u64, (u64, u32)>,
}

impl Accounting {
    fn publish(&mut self, seg: u64, id: u64, queues: u32) {
        *self.live.entry(seg).or_default() += queues as u64;
        self.msgs.insert(id, (seg, queues));
    }

    fn remove(&mut self, id: u64) {
        if let Some((seg, left)) = self.msgs.get_mut(&id) {
            *left -= 1;
            let seg = *seg;
            if *left == 0 {
                self.msgs.remove(&id);
            }
            if let Some(l) = self.live.get_mut(&seg) {
                *l = l.saturating_sub(1);
            }
        }
    }

    fn forget_queue(&mut self, ids: impl Iterator<Item = u64>) {
        for id in ids {
            self.remove(id);
        }
    }
}

/// What `open` returns: the log handle and the messages to put back into queues.
pub struct Opened {
    /// The log.
    pub log: Log,
    /// Live messages in publish order.
    pub messages: Vec<Recovered>,
    /// Records skipped because their checksum or layout was wrong.
    pub corrupt_records: usize,
}

/// Replay the segments in `dir`, then start the writer thread.
pub fn open(dir: &Path, policy: SyncPolicy, interval: Duration) -> io::Result<Opened> {
    std::fs::create_dir_all(dir)?;
    let segments = list_segments(dir)?;
    let mut acct = Accounting::default();
    let mut msgs: BTreeMap<u64, Recovered> = BTreeMap::new();
    let mut by_queue: HashMap<String, Vec<u64>> = HashMap::new();
    // One allocation per queue name, not per message.
    let mut names: HashMap<String, std::sync::Arc<str>> = HashMap::new();
    let mut corrupt = 0;
    let mut max_id = 0;
    let mut last_len = 0u64;
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
                Record::Publish {
                    id,
                    queues,
                    exchange,
                    routing_key,
                    properties,
                    body,
                } => {
                    max_id = max_id.max(id);
                    acct.publish(seg, id, queues.len() as u32);
                    for q in &queues {
                        match by_queue.get_mut(q.as_str()) {
                            Some(ids) => ids.push(id),
                            None => {
                                by_queue.insert(q.clone(), vec![id]);
                            }
                        }
                    }
                    let queues = queues
                        .into_iter()
                        .map(|q| {
                            let name = names
                                .entry(q)
                                .or_insert_with_key(|k| k.as_str().into())
                                .clone();
                            (name, (false, 0))
                        })
                        .collect();
                    msgs.insert(
                        id,
                        Recovered {
                            id,
                            exchange,
                            routing_key,
                            properties,
                            body,
                            queues,
                        },
                    );
                }
                Record::Remove(id, q) => {
                    if let Some(m) = msgs.get_mut(&id)
                        && let Some(i) = m.queues.iter().position(|(n, _)| **n == *q)
                    {
                        m.queues.swap_remove(i);
                        acct.remove(id);
                        if m.queues.is_empty() {
                            msgs.remove(&id);
                        }
                    }
                }
                Record::Delivered(id, q) => {
                    if let Some(e) = msgs
                        .get_mut(&id)
                        .and_then(|m| m.queues.iter_mut().find(|(n, _)| **n == *q))
                    {
                        e.1.0 = true;
                    }
                }
                Record::Count(id, q, n) => {
                    if let Some(e) = msgs
                        .get_mut(&id)
                        .and_then(|m| m.queues.iter_mut().find(|(n, _)| **n == *q))
                    {
                        e.1.1 = n;
                    }
                }
                Record::QueueDeleted(q) => {
                    for id in by_queue.remove(&q).unwrap_or_default() {
                        if let Some(m) = msgs.get_mut(&id)
                            && let Some(i) = m.queues.iter().position(|(n, _)| **n == *q)
                        {
                            m.queues.swap_remove(i);
                            acct.forget_queue(std::iter::once(id));
                            if m.queues.is_empty() {
                                msgs.remove(&id);
                            }
                        }
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
    let current = segments
        .last()
        .copied()
        .map(|s| if last_len >= SEGMENT_SIZE { s + 1 } else { s })
        .unwrap_or(1);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, current))?;
    let size = file.metadata()?.len();
    let (tx, rx) = mpsc::channel();
    let mut segs: std::collections::VecDeque<u64> =
        segments.into_iter().filter(|s| *s < current).collect();
    segs.push_back(current);
    let writer = Writer {
        dir: dir.to_path_buf(),
        file,
        current,
        size,
        acct,
        policy,
        interval,
        segments: segs,
    };
    std::thread::Builder::new()
        .name("warren-store".into())
        .spawn(move || writer.run(rx))?;
    let messages: Vec<Recovered> = msgs.into_values().collect();
    Ok(Opened {
        log: Log {
            tx,
            next_id: AtomicU64::new(max_id + 1),
            policy,
        },
        messages,
        corrupt_records: corrupt,
    })
}

impl Log {
    /// A fresh message id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Append a record; `done` runs once it is durable (per the sync policy).
    pub fn append(&self, record: Bytes, done: Option<Done>) {
        if let Err(mpsc::SendError(Cmd::Append(_, Some(d)))) =
            self.tx.send(Cmd::Append(record, done))
        {
            d();
        }
    }

    /// Wait until everything appended so far is written and synced.
    pub fn barrier(&self) {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        if self
            .tx
            .send(Cmd::Barrier(Box::new(move || {
                let _ = tx.send(());
            })))
            .is_ok()
        {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }
}

struct Writer {
    dir: PathBuf,
    file: File,
    current: u64,
    size: u64,
    acct: Accounting,
    policy: SyncPolicy,
    interval: Duration,
    /// Segment files on disk, oldest first.
    segments: std::collections::VecDeque<u64>,
}

impl Writer {
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
            let mut cmds: Vec<Cmd> = first.into_iter().collect();
            while let Ok(c) = rx.try_recv() {
                cmds.push(c);
                if cmds.len() >= 65536 {
                    break;
                }
            }
            for c in cmds {
                match c {
                    Cmd::Append(rec, done) => {
                        self.account(&rec);
                        buf.extend_from_slice(&rec);
                        if let Some(d) = done {
                            waiting.push(d);
                        }
                    }
                    Cmd::Barrier(d) => barrier.push(d),
                }
            }
            if !buf.is_empty() {
                if let Err(e) = self.file.write_all(&buf) {
                    tracing::error!(error = %e, "message store write failed");
                }
                self.size += buf.len() as u64;
                buf.clear();
                dirty = true;
            }
            let sync_now = match self.policy {
                SyncPolicy::Confirm => dirty,
                SyncPolicy::Interval => {
                    dirty && (last_sync.elapsed() >= self.interval || !barrier.is_empty())
                }
                SyncPolicy::Never => false,
            };
            if sync_now || (!barrier.is_empty() && dirty && self.policy != SyncPolicy::Never) {
                if let Err(e) = self.file.sync_data() {
                    tracing::error!(error = %e, "message store fdatasync failed");
                }
                last_sync = Instant::now();
                dirty = false;
            }
            // Confirm policy: callbacks only after the sync; the others: at once.
            if self.policy != SyncPolicy::Confirm || !dirty {
                for d in waiting.drain(..) {
                    d();
                }
            }
            for d in barrier {
                d();
            }
            if self.size >= SEGMENT_SIZE {
                self.roll();
            }
            self.reclaim();
        }
    }

    /// Keep the per-segment live counts from the records written. Reads only the fixed
    /// prefix (type, id, queue count): no decoding, no allocation per record.
    fn account(&mut self, rec: &Bytes) {
        let p = &rec[8..];
        let id = || {
            p.get(1..9)
                .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
        };
        match p.first() {
            Some(1) => {
                if let (Some(id), Some(n)) = (id(), p.get(9..11)) {
                    self.acct
                        .publish(self.current, id, u16::from_be_bytes([n[0], n[1]]) as u32);
                }
            }
            Some(2) => {
                if let Some(id) = id() {
                    self.acct.remove(id);
                }
            }
            _ => {}
        }
    }

    fn roll(&mut self) {
        if self.policy != SyncPolicy::Never {
            let _ = self.file.sync_data();
        }
        self.current += 1;
        match OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.dir, self.current))
        {
            Ok(f) => {
                self.file = f;
                self.size = 0;
                self.segments.push_back(self.current);
            }
            Err(e) => tracing::error!(error = %e, "cannot start a new segment"),
        }
    }

    /// Delete the oldest segments while they hold no live message.
    fn reclaim(&mut self) {
        while let Some(&seg) = self.segments.front() {
            if seg >= self.current || self.acct.live.get(&seg).copied().unwrap_or(0) > 0 {
                return;
            }
            let _ = std::fs::remove_file(segment_path(&self.dir, seg));
            self.acct.live.remove(&seg);
            self.segments.pop_front();
        }
    }
}
