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
//! The record format is in [`super::record`], replay in [`super::recovery`], the writer
//! thread in [`super::writer`].
//!
//! A segment is deleted once it and every older segment hold no live message (so removal
//! records are never lost while the publishes they cancel still exist). When the segments
//! behind the head are mostly dead but the oldest still holds a few live messages, the writer
//! asks the queues to move those messages to the head (publish records with `from`), so the
//! old segments can go. Damage is stepped over record by record; recovery never refuses to
//! start because of it.

use super::record::{self, HEADER, Record};
pub use super::record::{
    QueueState, count_record, delivered_record, publish_record, queue_deleted_record,
    remove_record, spool_record,
};
pub use super::recovery::RecoveredMsg;
pub use super::writer::DefsSynced;
use super::writer::{Cmd, Journal, Shared, Writer};
use crate::message::Message;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Default size at which a new segment file is started.
pub const SEGMENT_SIZE: u64 = crate::config::DEFAULT_SEGMENT_BYTES;

/// How long the writer puts off a sync whose only waiting confirms are for messages handed to
/// no-ack consumers (they are settled, and their records left out, when those consumers'
/// connections write them; see [`crate::message::ConfirmGate::handed`]).
pub const HANDED_GRACE: Duration = Duration::from_millis(1);

/// The segment holding a location.
pub fn segment_of(loc: u64) -> u64 {
    loc >> 32
}

pub use crate::config::SyncPolicy;

use crate::message::ConfirmGate;
/// Called once the records it was attached to are durable (per the policy) with `true`, or
/// with `false` if they could not be written (the publish must be nacked, never confirmed).
pub use crate::message::Done;

/// A record as handed to the writer.
pub(super) enum Rec {
    /// Encoded.
    Bytes(Bytes),
    /// A new message's publish record for its one durable queue, encoded by the writer if
    /// it writes it: a message consumed before the writer reaches it (see
    /// [`ConfirmGate::cancel_write`]) is never encoded at all.
    Publish(Arc<Message>, Arc<str>),
}

impl Rec {
    /// Its length, header included.
    pub(super) fn len(&self) -> u64 {
        match self {
            Rec::Bytes(b) => b.len() as u64,
            Rec::Publish(m, q) => record::publish_len(q, m),
        }
    }

    /// Append the encoded record to `buf`.
    pub(super) fn encode_into(&self, buf: &mut Vec<u8>) {
        match self {
            Rec::Bytes(b) => buf.extend_from_slice(b),
            Rec::Publish(m, q) => record::encode_publish_into(buf, q, m),
        }
    }

    /// A message record (a publish or a spooled message).
    pub(super) fn is_message(&self) -> bool {
        match self {
            Rec::Bytes(b) => record::publish_prefix(b).is_some() || record::is_spool(b),
            Rec::Publish(..) => true,
        }
    }
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
    /// Records waiting to be written (a write or sync is failing).
    pub pending: u64,
    /// New messages are refused (a write or sync is failing, or the disk is full).
    pub refusing: bool,
    /// Bytes written to the definitions journal since start.
    pub journal_written: u64,
    /// `fdatasync` calls on the message log since start.
    pub syncs: u64,
    /// Publish records left out since start: their messages left their only queue before
    /// the writer reached them.
    pub skipped: u64,
}

/// Placement of the next record (guarded: reserving a location and handing the record to the
/// writer happen together, so the writer receives records in location order).
pub(super) struct Place {
    pub seg: u64,
    pub size: u64,
    tx: mpsc::Sender<Cmd>,
}

/// Handle to the log's writer thread.
pub struct Log {
    /// Shared with the writer (weakly: dropping the log disconnects the writer), which moves
    /// it to a new segment when it starts the log afresh on a full disk.
    place: Arc<Mutex<Place>>,
    shared: Arc<Shared>,
    /// The sync policy.
    pub policy: SyncPolicy,
    /// Body bytes (plus a fixed per-message estimate) a durable queue keeps in memory before
    /// it pages persistent messages out to their place in the log.
    pub queue_memory: u64,
    segment_size: u64,
    /// Sequence number of the last definitions journal record handed to the writer.
    defs_seq: AtomicU64,
    defs_synced: tokio::sync::watch::Sender<DefsSynced>,
}

pub(super) fn segment_path(dir: &Path, n: u64) -> PathBuf {
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
    /// The vhost directory whose definitions journal the writer keeps (see
    /// [`super::journal`]); `None`: no journal (tests, fuzzing).
    pub journal_dir: Option<PathBuf>,
}

/// Replay the segments in `dir`, then start the writer thread. Messages of queues for which
/// `known` is false (deleted, never durable) are dropped and count as dead.
pub fn open(dir: &Path, opts: Options, known: &dyn Fn(&str) -> bool) -> io::Result<Opened> {
    std::fs::create_dir_all(dir)?;
    let segments = list_segments(dir)?;
    let scanned = super::recovery::scan(dir, &segments, known)?;
    let current = segments.last().copied().unwrap_or(1);
    let size = scanned.last_len;
    let (tx, rx) = mpsc::channel();
    let (compact_tx, compact_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut segs: VecDeque<u64> = segments.into_iter().filter(|s| *s < current).collect();
    segs.push_back(current);
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        files: RwLock::new(HashMap::new()),
        written: AtomicU64::new(current << 32 | size),
        refusing: AtomicBool::new(false),
        backlog: AtomicU64::new(0),
        flow: tokio::sync::watch::Sender::new(false),
    });
    let mut writer = Writer::new(
        shared.clone(),
        current,
        size,
        scanned.acct,
        opts.policy,
        opts.interval,
        segs,
        compact_tx,
        (opts.segment_size / 4).clamp(4096, 1 << 20),
    );
    let (defs_tx, _) = tokio::sync::watch::channel(DefsSynced::default());
    if let Some(dir) = opts.journal_dir {
        writer.journal = Some(Journal {
            dir,
            file: None,
            size: 0,
            pending: VecDeque::new(),
            written_seq: 0,
            synced: defs_tx.clone(),
            failing: false,
            total: 0,
        });
    }
    let place = Arc::new(Mutex::new(Place {
        seg: current,
        size,
        tx,
    }));
    writer.place = Arc::downgrade(&place);
    writer.open_current()?;
    std::thread::Builder::new()
        .name("warren-store".into())
        .spawn(move || writer.run(rx))?;
    Ok(Opened {
        log: Log {
            place,
            shared,
            policy: opts.policy,
            queue_memory: opts.queue_memory,
            segment_size: opts.segment_size,
            defs_seq: AtomicU64::new(0),
            defs_synced: defs_tx,
        },
        queues: scanned.queues,
        corrupt_records: scanned.corrupt,
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
    /// record's location; `None` (and `done(false)` at once) for a publish record while the
    /// log refuses new messages (a failing disk, or no space left: see [`Log::refusing`]).
    pub fn append(&self, record: Bytes, done: Option<Done>) -> Option<u64> {
        self.append_gated(record, done.map(|d| ConfirmGate::new(d, 0)))
    }

    /// As [`Log::append`], with a confirm that the message's queues may release before the
    /// sync (see [`ConfirmGate`]); the writer skips a sync that no one waits for.
    pub fn append_gated(&self, record: Bytes, gate: Option<Arc<ConfirmGate>>) -> Option<u64> {
        if self.refusing()
            && (record::publish_prefix(&record).is_some() || record::is_spool(&record))
        {
            if let Some(g) = gate {
                g.fire(false);
            }
            return None;
        }
        let len = record.len() as u64;
        Some(self.reserve(len, gate, |_| Rec::Bytes(record)))
    }

    /// Store a new persistent message for its one durable queue, `queue`, with a confirm
    /// that its queue may release before the sync: its publish record is encoded and written
    /// by the writer, and not at all if the queue is done with the message first (see
    /// [`ConfirmGate::cancel_write`]). Returns the message, its location set (not stored,
    /// the confirm nacked, while the log refuses new messages).
    pub fn append_publish(
        &self,
        mut msg: Message,
        queue: Arc<str>,
        gate: Arc<ConfirmGate>,
    ) -> Arc<Message> {
        msg.confirm = Some(gate.clone());
        if self.refusing() {
            gate.fire(false);
            return Arc::new(msg);
        }
        let len = record::publish_len(&queue, &msg);
        let mut out = None;
        self.reserve(len, Some(gate), |loc| {
            msg.set_store_id(Some(loc));
            let m = Arc::new(msg);
            out = Some(m.clone());
            Rec::Publish(m, queue)
        });
        out.expect("reserve calls back")
    }

    /// Reserve `len` bytes for a record and hand it (made by `rec` from its location) to the
    /// writer, under the place lock: the writer receives records in location order.
    fn reserve(
        &self,
        len: u64,
        gate: Option<Arc<ConfirmGate>>,
        rec: impl FnOnce(u64) -> Rec,
    ) -> u64 {
        let mut p = self.place.lock();
        if p.size > 0 && p.size + len > self.segment_size {
            p.seg += 1;
            p.size = 0;
        }
        let loc = p.seg << 32 | p.size;
        p.size += len;
        self.shared.backlog.fetch_add(len, Ordering::Relaxed);
        if let Err(mpsc::SendError(Cmd::Append(_, Some(g), _))) =
            p.tx.send(Cmd::Append(rec(loc), gate, loc))
        {
            drop(p);
            g.fire(false);
        }
        loc
    }

    /// Hand a definitions journal record to the writer; returns its sequence number.
    pub fn define(&self, record: Bytes) -> u64 {
        let p = self.place.lock();
        let seq = self.defs_seq.fetch_add(1, Ordering::AcqRel) + 1;
        let _ = p.tx.send(Cmd::Define(record, seq));
        seq
    }

    /// Hand the writer a snapshot of the definitions reflecting every journal record so far.
    pub fn snapshot(&self, json: Bytes) {
        let p = self.place.lock();
        let seq = self.defs_seq.load(Ordering::Acquire);
        let _ = p.tx.send(Cmd::Snapshot(json, seq));
    }

    /// The sequence number of the last definitions record, and a receiver of how far the
    /// journal is synced, if that record is not synced yet.
    pub fn definitions_pending(&self) -> Option<(u64, tokio::sync::watch::Receiver<DefsSynced>)> {
        let seq = self.defs_seq.load(Ordering::Acquire);
        let rx = self.defs_synced.subscribe();
        let synced = rx.borrow().seq;
        (synced < seq).then_some((seq, rx))
    }

    /// Flow control: if the records waiting for the writer exceed [`super::writer::FLOW_HIGH`]
    /// (publishers outrun the disk), a receiver to wait on until they drain below
    /// [`super::writer::FLOW_LOW`]. Not while the log refuses new messages (those are nacked:
    /// a paused connection could not deliver the acks that free space).
    pub fn flow(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        use super::writer::{FLOW_HIGH, FLOW_LOW};
        let s = &self.shared;
        if s.backlog.load(Ordering::Relaxed) <= FLOW_HIGH || self.refusing() {
            return None;
        }
        s.flow.send_modify(|paused| *paused = true);
        // The writer may have drained meanwhile (it clears the flag only below the low mark).
        if s.backlog.load(Ordering::Acquire) < FLOW_LOW {
            s.flow.send_modify(|paused| *paused = false);
            return None;
        }
        Some(s.flow.subscribe())
    }

    /// Whether new messages are refused: a write or sync is failing (retried with back-off),
    /// or there is no space left to reserve. Removals are still taken.
    pub fn refusing(&self) -> bool {
        self.shared.refusing.load(Ordering::Acquire)
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
    /// The header is verified before its length is trusted, and the length is checked
    /// against the file before anything is allocated for it.
    pub fn read(&self, loc: u64, size: u32) -> io::Result<Message> {
        let f = self.shared.file(segment_of(loc))?;
        let off = loc & 0xffff_ffff;
        let mut buf = vec![0u8; HEADER + 512 + size as usize];
        let mut n = read_full_at(&f, &mut buf, off)?;
        let Some((len, crc)) = buf.get(..n).and_then(record::parse_header) else {
            return Err(damaged(loc, "no valid record header"));
        };
        let end = HEADER + len as usize;
        if end > n {
            if off + end as u64 > f.metadata()?.len() {
                return Err(damaged(loc, "cut short"));
            }
            buf.resize(end, 0);
            n += read_full_at(&f, &mut buf[n..], off + n as u64)?;
            if n < end {
                return Err(damaged(loc, "cut short"));
            }
        }
        buf.truncate(end);
        let payload = Bytes::from(buf).slice(HEADER..);
        if crc32fast::hash(&payload) != crc {
            return Err(damaged(loc, "checksum mismatch"));
        }
        match record::decode(&payload) {
            Some(Record::Publish(p) | Record::Spool(p)) => {
                let field = |f: &[u8]| payload.slice_ref(f);
                let mut m = Message::recovered(
                    loc,
                    field(p.exchange),
                    field(p.routing_key),
                    field(p.properties),
                    field(p.body),
                );
                m.set_bcc(p.bcc.into_iter().map(field).collect());
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
