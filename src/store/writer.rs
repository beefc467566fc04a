//! The message log's writer thread: group commit, segment roll and deletion, compaction
//! requests, and what happens when the disk fails.
//!
//! Records arrive in location order (the location was reserved when they were appended) and
//! wait in `pending` until written. A failed write or sync loses nothing: the file is cut
//! back to the last synced byte, every record after it goes back to `pending`, publishes
//! waiting for durability are nacked, and the writer retries with back-off until it succeeds
//! — records keep their locations, so readers never see a record move. While the writer is
//! failing, or cannot reserve space ahead of the segment's end, the log refuses new messages
//! (publishes are nacked at once and stay in memory) but still takes removals, deliveries and
//! counts: they are small, the reserve holds them, and acking must be able to free space.

use super::log::{Done, Rec, Stats, SyncPolicy, segment_of, segment_path};
use super::record;
use crate::message::ConfirmGate;
use bytes::Bytes;
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(super) enum Cmd {
    /// A record, the confirm waiting for it and the location reserved for it.
    Append(Rec, Option<Arc<ConfirmGate>>, u64),
    /// A deleted queue's messages (locations) no longer count as live.
    Release(Vec<u64>),
    /// Flush and sync, then call back (tests, shutdown).
    Barrier(Done),
    /// As `Barrier`, then stop the writer (shutdown).
    Close(Done),
    /// Report the counters (after everything before it).
    Stats(mpsc::Sender<Stats>),
    /// A definitions journal record (see [`super::journal`]) and its sequence number.
    Define(Bytes, u64),
    /// A snapshot of the definitions reflecting every journal record up to the sequence
    /// number: written as `definitions.json`, then the journal is emptied.
    Snapshot(Bytes, u64),
}

/// How far the definitions journal is on stable storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefsSynced {
    /// Every journal record up to this sequence number is synced.
    pub seq: u64,
    /// Writing the journal is failing (retried); waiting for it is pointless meanwhile.
    pub failing: bool,
}

/// The definitions journal, written by the writer thread.
pub(super) struct Journal {
    /// The vhost directory (`definitions.json`, the journal).
    pub dir: PathBuf,
    pub file: Option<File>,
    /// Bytes of the journal known to be written.
    pub size: u64,
    /// Records not written yet, with their sequence numbers.
    pub pending: VecDeque<(u64, Bytes)>,
    /// Highest sequence number written (not necessarily synced).
    pub written_seq: u64,
    pub synced: tokio::sync::watch::Sender<DefsSynced>,
    pub failing: bool,
    /// Bytes written to the journal since start (snapshots empty the file, not this).
    pub total: u64,
}

impl Journal {
    fn open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(super::journal::FILE))?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("opened"))
    }

    /// Write the pending records; false if that failed (they stay pending).
    fn write(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let buf: Vec<u8> = self
            .pending
            .iter()
            .flat_map(|(_, r)| r.iter().copied())
            .collect();
        let size = self.size;
        let result = self.open().and_then(|f| match f.write_all(&buf) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = f.set_len(size);
                Err(e)
            }
        });
        match result {
            Ok(()) => {
                self.size += buf.len() as u64;
                self.total += buf.len() as u64;
                if let Some((seq, _)) = self.pending.back() {
                    self.written_seq = self.written_seq.max(*seq);
                }
                self.pending.clear();
                true
            }
            Err(e) => {
                self.set_failing(Some(e));
                false
            }
        }
    }

    /// Sync what was written; on success publish the synced sequence number.
    fn sync(&mut self, policy: SyncPolicy) -> bool {
        let seq = self.written_seq;
        if seq <= self.synced.borrow().seq {
            return true;
        }
        if policy != SyncPolicy::Never
            && let Some(f) = &self.file
            && let Err(e) = f.sync_data()
        {
            self.set_failing(Some(e));
            return false;
        }
        self.set_failing(None);
        self.synced.send_modify(|s| s.seq = s.seq.max(seq));
        true
    }

    fn set_failing(&mut self, e: Option<io::Error>) {
        match e {
            Some(e) if !self.failing => {
                tracing::error!(error = %e, "cannot write the definitions journal (retried); declarations are not durable meanwhile");
                self.failing = true;
            }
            None if self.failing => {
                tracing::info!("definitions journal writes succeed again");
                self.failing = false;
            }
            _ => {}
        }
        let failing = self.failing;
        self.synced.send_if_modified(|s| {
            let changed = s.failing != failing;
            s.failing = failing;
            changed
        });
    }

    /// Write a snapshot covering every record up to `seq` and empty the journal.
    fn snapshot(&mut self, json: &[u8], seq: u64, policy: SyncPolicy) {
        if !self.write() || !self.sync(policy) {
            return;
        }
        let result = super::write_snapshot(&self.dir, json).and_then(|()| {
            let f = self.open()?;
            f.set_len(0)?;
            if policy != SyncPolicy::Never {
                f.sync_all()?;
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                self.size = 0;
                self.synced.send_modify(|s| s.seq = s.seq.max(seq));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write a definitions snapshot; the journal is kept");
            }
        }
    }
}

/// State shared by the handle and the writer thread.
pub(super) struct Shared {
    pub dir: PathBuf,
    /// Open segment files for reading, by segment.
    pub files: RwLock<HashMap<u64, Arc<File>>>,
    /// End of what may be read back (a location): written, and under `sync = "confirm"`
    /// synced, so a record before it never changes again.
    pub written: AtomicU64,
    /// The log refuses new messages: a write or sync is failing, or no space could be
    /// reserved ahead of the current segment's end.
    pub refusing: AtomicBool,
    /// Bytes of records appended and not yet written (flow control).
    pub backlog: AtomicU64,
    /// True while publishers wait for the backlog to drain (see [`FLOW_LOW`]).
    pub flow: tokio::sync::watch::Sender<bool>,
}

/// Under `sync = "confirm"`, the log is synced at least every this many bytes written even
/// when no confirm waits (see [`Writer::sync_needed`]).
pub(super) const SYNC_AT_LEAST: u64 = 4 << 20;

/// Publishing connections pause while the records waiting for the writer exceed this...
pub(super) const FLOW_HIGH: u64 = 64 << 20;
/// ...until they are below this.
pub(super) const FLOW_LOW: u64 = 32 << 20;

impl Shared {
    /// The writer wrote `n` bytes of records: wake paused publishers once below the low mark.
    fn drained(&self, n: u64) {
        let left = self
            .backlog
            .fetch_sub(n, Ordering::AcqRel)
            .saturating_sub(n);
        if left < FLOW_LOW {
            self.flow.send_if_modified(std::mem::take);
        }
    }
}

impl Shared {
    pub(super) fn file(&self, seg: u64) -> io::Result<Arc<File>> {
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

/// Per-segment counts of (queue, message) pairs: published into the segment, still live.
#[derive(Default)]
pub(super) struct Accounting {
    pub live: BTreeMap<u64, u64>,
    pub total: BTreeMap<u64, u64>,
}

impl Accounting {
    pub(super) fn add(&mut self, seg: u64, pairs: u64, live: u64) {
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

/// Compaction is asked for when the segments behind the head hold at most this fraction
/// (1/N) of live (queue, message) pairs, and again at most once a second while it holds.
const COMPACT_RATIO: u64 = 8;

/// Longest wait between two attempts after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A write, sync or segment creation that failed; retried at `retry_at`.
struct Fault {
    backoff: Duration,
    retry_at: Instant,
}

/// When a sync is due under `sync = "confirm"` (see [`Writer::sync_due`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Now,
    /// Only confirms handed to no-ack consumers wait: sync at this time if they still do.
    At(Instant),
    /// No confirm waits.
    Never,
}

/// A record waiting to be written (or, under `confirm`, to be synced).
pub(super) struct Pending {
    /// Its reserved location.
    pub loc: u64,
    /// Its length (the space reserved for it).
    pub len: u64,
    /// The record (emptied once it is left out).
    pub rec: Rec,
    /// The confirm of a message that went to a single durable queue: if the queue is done with
    /// the message before the record is written, it is left out (see
    /// [`ConfirmGate::cancel_write`]).
    pub gate: Option<Arc<ConfirmGate>>,
    /// Left out: its space is a hole behind a skip header, and its (queue, message) pair no
    /// longer counts as live.
    pub skipped: bool,
}

/// A run of left-out records shorter than this is filled with zeros in the same write; a
/// longer one is a hole (not written at all).
const HOLE_MIN: u64 = 4096;

pub(super) struct Writer {
    pub shared: Arc<Shared>,
    /// The current segment's file (`None` until it could be opened).
    pub file: Option<File>,
    pub current: u64,
    /// Bytes of the current segment written.
    pub size: u64,
    /// Bytes of the current segment known to be on stable storage.
    pub synced: u64,
    pub acct: Accounting,
    pub policy: SyncPolicy,
    pub interval: Duration,
    /// Segment files on disk, oldest first.
    pub segments: VecDeque<u64>,
    pub compact: tokio::sync::mpsc::UnboundedSender<u64>,
    pub compact_asked: Option<(u64, Instant)>,
    /// Records not written yet, in location order.
    pub pending: VecDeque<Pending>,
    /// Records written to the current segment since its last sync (`confirm` policy): after
    /// a failed sync they are written again.
    pub unsynced: Vec<Pending>,
    /// A message record no confirm waits for was written since the last sync: sync anyway.
    pub must_sync: bool,
    /// `fdatasync` calls on segments since start.
    pub syncs: u64,
    /// Publish records left out since start (see [`Pending::skipped`]).
    pub skipped: u64,
    /// Bytes kept allocated beyond the end of the current segment (0: not supported here).
    pub reserve: u64,
    /// End of the space allocated for the current segment.
    pub reserved_to: u64,
    /// The last attempt to reserve space found the disk full.
    pub low_space: bool,
    fault: Option<Fault>,
    /// The definitions journal (durable vhosts).
    pub journal: Option<Journal>,
    /// Where appends reserve their locations (see [`Writer::reset`]).
    pub place: std::sync::Weak<parking_lot::Mutex<super::log::Place>>,
    /// A sync put off for confirms handed to no-ack consumers is due then.
    sync_at: Option<Instant>,
    /// Location of the last compaction move appended (see [`Writer::moves_in_flight`]).
    last_move: Option<u64>,
    /// The current segment file's position, when known (writes are sequential but for the
    /// holes left by records not written).
    cursor: Option<u64>,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        shared: Arc<Shared>,
        current: u64,
        size: u64,
        acct: Accounting,
        policy: SyncPolicy,
        interval: Duration,
        segments: VecDeque<u64>,
        compact: tokio::sync::mpsc::UnboundedSender<u64>,
        reserve: u64,
    ) -> Writer {
        Writer {
            shared,
            file: None,
            current,
            size,
            synced: size,
            acct,
            policy,
            interval,
            segments,
            compact,
            compact_asked: None,
            pending: VecDeque::new(),
            unsynced: Vec::new(),
            must_sync: false,
            syncs: 0,
            skipped: 0,
            reserve,
            reserved_to: 0,
            low_space: false,
            fault: None,
            journal: None,
            place: std::sync::Weak::new(),
            sync_at: None,
            last_move: None,
            cursor: None,
        }
    }

    /// Open the current segment for appending (at start).
    pub(super) fn open_current(&mut self) -> io::Result<()> {
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(segment_path(&self.shared.dir, self.current))?;
        self.file = Some(f);
        self.reserved_to = self.size;
        self.ensure_reserve();
        self.update_refusing();
        Ok(())
    }

    fn failing(&self) -> bool {
        self.fault.is_some()
    }

    fn update_refusing(&self) {
        self.shared
            .refusing
            .store(self.failing() || self.low_space, Ordering::Release);
    }

    fn fail(&mut self, what: &str, e: io::Error) {
        let now = Instant::now();
        match &mut self.fault {
            Some(f) => {
                f.backoff = (f.backoff * 2).min(MAX_BACKOFF);
                f.retry_at = now + f.backoff;
            }
            None => {
                tracing::error!(error = %e, "message store {what} failed: persistent publishes are nacked until it succeeds again");
                let backoff = Duration::from_millis(10);
                self.fault = Some(Fault {
                    backoff,
                    retry_at: now + backoff,
                });
            }
        }
        self.update_refusing();
    }

    fn recovered(&mut self) {
        if self.fault.take().is_some() {
            tracing::info!("message store writes succeed again");
        }
        self.update_refusing();
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut last_sync = Instant::now();
        let mut waiting: Vec<(Arc<ConfirmGate>, Instant)> = Vec::new();
        loop {
            let journal_failing = self.journal.as_ref().is_some_and(|j| j.failing);
            let deadline = match (&self.fault, self.policy) {
                (Some(f), _) => Some(f.retry_at),
                _ if journal_failing => Some(Instant::now() + MAX_BACKOFF),
                _ if self.low_space => Some(Instant::now() + MAX_BACKOFF),
                (None, SyncPolicy::Interval) if self.size > self.synced => {
                    Some(last_sync + self.interval)
                }
                _ => None,
            };
            // A sync put off for confirms handed to no-ack consumers (see `Due`).
            let deadline = deadline.into_iter().chain(self.sync_at).min();
            // Putting a sync off, the writer sleeps rather than waits on the channel: appends
            // meanwhile then cost their senders no wake-up (it is at most `HANDED_GRACE`).
            if let Some(at) = self.sync_at
                && deadline == Some(at)
            {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
            }
            let first = match deadline {
                Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(c) => Some(c),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                },
                None => match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                },
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
            // A full disk and nothing live in the log: start it afresh. Appends wait on the
            // place lock meanwhile, and everything sent before is handled first.
            let reset_place = self.should_reset().then(|| self.place.upgrade()).flatten();
            let mut place = reset_place.as_ref().map(|p| p.lock());
            if place.is_some() {
                while let Ok(c) = rx.try_recv() {
                    cmds.push(c);
                }
            }
            self.handle(cmds, &mut waiting, &mut barrier, &mut close);
            if let Some(p) = place.as_mut()
                && close.is_none()
                && self.acct.live.values().all(|l| *l == 0)
            {
                self.reset(p);
            }
            drop(place);
            // Definitions first: a message routed to a queue declared meanwhile is never
            // synced before the queue's record.
            if let Some(j) = self.journal.as_mut()
                && j.write()
            {
                j.sync(self.policy);
            }
            let retry_due = self
                .fault
                .as_ref()
                .is_none_or(|f| Instant::now() >= f.retry_at);
            let asked = !barrier.is_empty() || close.is_some();
            let ok;
            // While the only confirms waiting are for messages handed to no-ack consumers, the
            // records wait too: those consumers settling them first means they are not
            // written at all (see `Pending::skipped`).
            let defer = self.policy == SyncPolicy::Confirm
                && !asked
                && matches!(self.sync_due(&waiting, Instant::now()), Due::At(_));
            if retry_due || asked {
                let mut wrote = defer || self.write_pending();
                let sync_now = match self.policy {
                    SyncPolicy::Confirm => {
                        !defer && (self.sync_due(&waiting, Instant::now()) == Due::Now || asked)
                    }
                    SyncPolicy::Interval => last_sync.elapsed() >= self.interval || asked,
                    SyncPolicy::Never => false,
                };
                if wrote && sync_now && self.size > self.synced {
                    wrote = self.sync();
                    last_sync = Instant::now();
                }
                if self.low_space {
                    self.ensure_reserve();
                }
                if wrote && self.pending.is_empty() {
                    self.recovered();
                }
                ok = wrote;
            } else {
                ok = false;
            }
            let written = self.pending.is_empty();
            let durable = written && (self.policy == SyncPolicy::Never || self.size == self.synced);
            // Deleting a segment must not run ahead of the sync of a compaction move that
            // superseded its messages; it is done before barriers return, so no file changes
            // after a barrier but appends.
            if durable || (self.policy == SyncPolicy::Confirm && !self.moves_in_flight()) {
                self.reclaim();
                if close.is_none() && durable {
                    self.maybe_compact();
                }
            }
            // Confirm policy: callbacks only after the sync; the others once written. A
            // failure nacks every publish waiting (its record stays queued and is written when
            // the disk allows, which is harmless: its message is still in its queues).
            let settled = if self.policy == SyncPolicy::Confirm {
                durable
            } else {
                written
            };
            if settled {
                for (g, _) in waiting.drain(..) {
                    g.fire(true);
                }
                self.must_sync = false;
            } else if !ok || self.failing() {
                for (g, _) in waiting.drain(..) {
                    g.fire(false);
                }
            } else {
                // Confirms released by their queues meanwhile need no sync.
                waiting.retain(|(g, _)| g.pending());
            }
            self.sync_at = match self.sync_due(&waiting, Instant::now()) {
                Due::At(t) if ok && self.policy == SyncPolicy::Confirm => Some(t),
                _ => None,
            };
            for d in barrier {
                d(true);
            }
            if let Some(d) = close {
                for (g, _) in waiting.drain(..) {
                    g.fire(settled);
                }
                d(true);
                return;
            }
        }
    }

    /// Under `sync = "confirm"`: when the records written since the last sync need one. Not
    /// when every message written since was settled by its queues before (its confirm went
    /// out then) and the rest are removals: RabbitMQ does not sync what was consumed first.
    /// A confirm whose message was handed to a no-ack consumer is given
    /// [`HANDED_GRACE`](super::log::HANDED_GRACE) from when the writer received its record
    /// to be settled instead. Still at least every [`SYNC_AT_LEAST`] bytes, which bounds the
    /// records kept for a rewrite after a failed sync.
    fn sync_due(&self, waiting: &[(Arc<ConfirmGate>, Instant)], now: Instant) -> Due {
        if self.must_sync || self.size.saturating_sub(self.synced) >= SYNC_AT_LEAST {
            return Due::Now;
        }
        let mut at: Option<Instant> = None;
        for (g, t) in waiting {
            if !g.pending() {
                continue;
            }
            let due = *t + super::log::HANDED_GRACE;
            if !g.handed() || due <= now {
                return Due::Now;
            }
            at = Some(at.map_or(due, |a| a.min(due)));
        }
        at.map_or(Due::Never, Due::At)
    }

    fn handle(
        &mut self,
        cmds: Vec<Cmd>,
        waiting: &mut Vec<(Arc<ConfirmGate>, Instant)>,
        barrier: &mut Vec<Done>,
        close: &mut Option<Done>,
    ) {
        let now = Instant::now();
        for c in cmds {
            match c {
                Cmd::Append(rec, gate, loc) => {
                    self.account(&rec, loc);
                    // A message record no confirm waits for is synced promptly all the same:
                    // queues read paged-out messages back only up to the synced end.
                    if gate.is_none() && rec.is_message() {
                        self.must_sync = true;
                    }
                    self.pending.push_back(Pending {
                        loc,
                        len: rec.len(),
                        rec,
                        gate: gate.as_ref().filter(|g| g.skippable()).cloned(),
                        skipped: false,
                    });
                    if let Some(g) = gate {
                        waiting.push((g, now));
                    }
                }
                Cmd::Release(locs) => {
                    for loc in locs {
                        self.acct.remove(loc, 1);
                    }
                }
                Cmd::Barrier(d) => barrier.push(d),
                Cmd::Stats(tx) => {
                    self.leave_out_cancelled();
                    let _ = tx.send(Stats {
                        segments: self.segments.len() as u64,
                        live: self.acct.live.values().sum(),
                        total: self.acct.total.values().sum(),
                        pending: self.pending.len() as u64,
                        refusing: self.shared.refusing.load(Ordering::Acquire),
                        journal_written: self.journal.as_ref().map_or(0, |j| j.total),
                        syncs: self.syncs,
                        skipped: self.skipped,
                    });
                }
                Cmd::Close(d) => {
                    *close = Some(d);
                    return;
                }
                Cmd::Define(rec, seq) => {
                    if let Some(j) = self.journal.as_mut() {
                        j.pending.push_back((seq, rec));
                    }
                }
                Cmd::Snapshot(json, seq) => {
                    if let Some(j) = self.journal.as_mut() {
                        j.snapshot(&json, seq, self.policy);
                    }
                }
            }
        }
    }

    /// The log refuses new messages (a full or failing disk) and holds no live message, but
    /// has something on disk or waiting: [`Writer::reset`] would free it all.
    fn should_reset(&self) -> bool {
        self.shared.refusing.load(Ordering::Acquire)
            && self.acct.live.values().all(|l| *l == 0)
            && (self.segments.len() > 1 || self.size > 0 || !self.pending.is_empty())
    }

    /// Start the log afresh: nothing in it is live (every record still waiting refers to
    /// messages that are gone), so every segment is deleted and appends continue in a new,
    /// empty one. This is what lets acking everything free the space of a single large
    /// segment on a full disk. Called with the place lock held.
    fn reset(&mut self, place: &mut super::log::Place) {
        let next = place.seg.max(self.current) + 1;
        let dropped: u64 = self.pending.drain(..).map(|p| p.len).sum();
        self.shared.drained(dropped);
        self.unsynced.clear();
        self.file = None;
        let n = self.segments.len();
        for seg in self.segments.drain(..) {
            self.shared.files.write().remove(&seg);
            let _ = std::fs::remove_file(segment_path(&self.shared.dir, seg));
        }
        self.acct = Accounting::default();
        self.compact_asked = None;
        self.last_move = None;
        place.seg = next;
        place.size = 0;
        self.fault = None;
        self.current = next;
        self.size = 0;
        self.synced = 0;
        self.publish_written(0);
        tracing::warn!(
            segments = n,
            "message store: the disk is full and no message in the log is live; its segments are deleted and it starts afresh"
        );
        if let Err(e) = self.open_segment(next) {
            self.fail("creating a segment", e);
        }
        self.update_refusing();
    }

    /// Whether a compaction move (a publish record superseding an older location) is not yet
    /// on stable storage.
    fn moves_in_flight(&self) -> bool {
        // Records are written and synced in location order: the last move is the one to ask.
        self.last_move
            .is_some_and(|loc| loc >= (self.current << 32 | self.synced))
    }

    /// Write the pending records, rolling segments as their locations say. A record whose
    /// message left its only queue before the writer reached it is left out: a skip header
    /// stands for each run of such records and their space stays a hole (never written), so
    /// later records keep their reserved locations. Returns false (and records the fault) if a
    /// write or a segment creation failed.
    fn write_pending(&mut self) -> bool {
        let mut buf: Vec<u8> = Vec::new();
        // Parts of `buf` to write: (file offset, start in `buf`); each ends where the next
        // starts.
        let mut parts: Vec<(u64, usize)> = Vec::new();
        while let Some(loc) = self.pending.front().map(|p| p.loc) {
            let seg = segment_of(loc);
            if seg != self.current || self.file.is_none() {
                if seg != self.current && self.size > self.synced && !self.sync() {
                    return false;
                }
                if let Err(e) = self.open_segment(seg) {
                    self.fail("creating a segment", e);
                    return false;
                }
            }
            let off = loc & 0xffff_ffff;
            if off != self.size {
                // Locations are reserved in order and nothing is dropped: a gap is a bug.
                // Writing on would put records where no reader looks for them.
                self.fail(
                    "write",
                    io::Error::other(format!(
                        "record for offset {off} of segment {seg}, but the segment ends at {}",
                        self.size
                    )),
                );
                return false;
            }
            // The contiguous records of this segment (bounded), in as few writes as the
            // holes allow.
            buf.clear();
            parts.clear();
            parts.push((off, 0));
            let mut end = off;
            let mut run: Option<u64> = None;
            let mut n = 0;
            let close_run =
                |from: u64, to: u64, buf: &mut Vec<u8>, parts: &mut Vec<(u64, usize)>| {
                    buf.extend_from_slice(&record::skip_header(to - from));
                    let gap = to - from - record::HEADER as u64;
                    if gap < HOLE_MIN {
                        buf.resize(buf.len() + gap as usize, 0);
                    } else {
                        parts.push((to, buf.len()));
                    }
                };
            for p in self.pending.iter_mut() {
                if segment_of(p.loc) != seg || (n > 0 && buf.len() as u64 + p.len > 8 << 20) {
                    break;
                }
                if !p.skipped && p.gate.as_ref().is_some_and(|g| !g.take_write()) {
                    Self::leave_out(p, &mut self.acct, &mut self.skipped);
                }
                if p.skipped {
                    run.get_or_insert(end);
                } else {
                    if let Some(from) = run.take() {
                        close_run(from, end, &mut buf, &mut parts);
                    }
                    let at = buf.len();
                    p.rec.encode_into(&mut buf);
                    debug_assert_eq!((buf.len() - at) as u64, p.len, "a record's reserved length");
                }
                end += p.len;
                n += 1;
            }
            if let Some(from) = run.take() {
                close_run(from, end, &mut buf, &mut parts);
            }
            let Some(mut file) = self.file.as_ref() else {
                return false;
            };
            let mut result = Ok(());
            for (i, &(at, from)) in parts.iter().enumerate() {
                let to = parts.get(i + 1).map_or(buf.len(), |p| p.1);
                if from < to {
                    // Sequential writes; a seek only past a hole (or after a failure).
                    if self.cursor != Some(at) {
                        result = file.seek(io::SeekFrom::Start(at)).map(drop);
                    }
                    if result.is_ok() {
                        result = file.write_all(&buf[from..to]);
                    }
                    self.cursor = result.is_ok().then_some(at + (to - from) as u64);
                    if result.is_err() {
                        break;
                    }
                }
            }
            if let Err(e) = result {
                // Cut what part of it reached the file: the records go again, at the same
                // offsets.
                let _ = file.set_len(self.size);
                self.fail("write", e);
                return false;
            }
            self.shared.drained(end - self.size);
            self.size = end;
            for _ in 0..n {
                let Some(p) = self.pending.pop_front() else {
                    break;
                };
                if self.policy == SyncPolicy::Confirm {
                    self.unsynced.push(p);
                }
            }
            if self.policy != SyncPolicy::Confirm {
                self.publish_written(self.size);
            }
            if self.reserve > 0 && self.size + self.reserve / 2 > self.reserved_to {
                self.ensure_reserve();
            }
        }
        true
    }

    /// A record whose message left its only queue first (which wrote no removal for it): it
    /// is not written, and stops counting as live here.
    fn leave_out(p: &mut Pending, acct: &mut Accounting, skipped: &mut u64) {
        p.skipped = true;
        p.rec = Rec::Bytes(Bytes::new());
        acct.remove(p.loc, 1);
        *skipped += 1;
    }

    /// Leave out every waiting record whose message already left its queue, so the counts
    /// are exact (see [`Writer::leave_out`]).
    fn leave_out_cancelled(&mut self) {
        for p in self.pending.iter_mut() {
            if !p.skipped && p.gate.as_ref().is_some_and(|g| g.write_cancelled()) {
                Self::leave_out(p, &mut self.acct, &mut self.skipped);
            }
        }
    }

    fn publish_written(&self, upto: u64) {
        self.shared
            .written
            .store(self.current << 32 | upto, Ordering::Release);
    }

    /// `fdatasync` the current segment. On failure under `confirm`, the file is cut back to
    /// the last synced byte and the records after it are queued again (the page cache may
    /// have dropped them: they are written again from memory, never trusted).
    fn sync(&mut self) -> bool {
        let Some(file) = self.file.as_ref() else {
            return false;
        };
        if self.policy == SyncPolicy::Never {
            return true;
        }
        self.syncs += 1;
        match file.sync_data() {
            Ok(()) => {
                self.synced = self.size;
                self.unsynced.clear();
                self.publish_written(self.size);
                true
            }
            Err(e) => {
                if self.policy == SyncPolicy::Confirm {
                    let _ = file.set_len(self.synced);
                    self.size = self.synced;
                    self.cursor = None;
                    for p in self.unsynced.drain(..).rev() {
                        self.pending.push_front(p);
                    }
                }
                self.fail("fdatasync", e);
                false
            }
        }
    }

    /// Start segment `seg` (empty). The directory is synced so the file survives a crash.
    fn open_segment(&mut self, seg: u64) -> io::Result<()> {
        if let Some(f) = self.file.take() {
            // Give back the space reserved beyond the old segment's end.
            if self.reserved_to > self.size {
                let _ = f.set_len(self.size);
            }
        }
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(segment_path(&self.shared.dir, seg))?;
        if f.metadata()?.len() > 0 {
            f.set_len(0)?;
        }
        if self.policy != SyncPolicy::Never {
            File::open(&self.shared.dir)?.sync_all()?;
        }
        if self.segments.back() != Some(&seg) {
            self.segments.push_back(seg);
        }
        self.file = Some(f);
        self.cursor = Some(0);
        self.current = seg;
        self.size = 0;
        self.synced = 0;
        self.reserved_to = 0;
        self.ensure_reserve();
        Ok(())
    }

    /// Keep `reserve` bytes allocated beyond the current end, so removals can be written when
    /// the disk fills up. Failing for lack of space sets `low_space` (new messages refused).
    fn ensure_reserve(&mut self) {
        if self.reserve == 0 {
            return;
        }
        let Some(file) = self.file.as_ref() else {
            return;
        };
        let want = 2 * self.reserve;
        match fallocate_keep_size(file, self.size, want) {
            Ok(()) => {
                self.reserved_to = self.size + want;
                if self.low_space {
                    tracing::info!("message store: disk space available again");
                }
                self.low_space = false;
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) => {
                if !self.low_space {
                    tracing::warn!(
                        "message store: no space left to reserve; new messages are refused until there is"
                    );
                }
                self.low_space = true;
            }
            Err(_) => {
                // Not supported by this filesystem: no reserve (writes may then fail).
                self.reserve = 0;
                self.low_space = false;
            }
        }
        self.update_refusing();
    }

    /// Keep the per-segment counts from the records appended (fixed prefix only).
    fn account(&mut self, rec: &Rec, loc: u64) {
        let Rec::Bytes(b) = rec else {
            // A new message for one queue.
            self.acct.add(segment_of(loc), 1, 1);
            return;
        };
        let rec = b;
        if let Some((n, from)) = record::publish_prefix(rec) {
            self.acct.add(segment_of(loc), n, n);
            if from != 0 {
                self.acct.remove(from, n);
                self.last_move = Some(loc);
            }
        } else if let Some(at) = record::remove_prefix(rec) {
            self.acct.remove(at, 1);
        } else if record::is_spool(rec) {
            // Live until the queue releases it (read back, or the message left).
            self.acct.add(segment_of(loc), 1, 1);
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
        if front >= self.current || self.shared.refusing.load(Ordering::Acquire) {
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

/// `fallocate(FALLOC_FL_KEEP_SIZE)`: allocate blocks without changing the file's length.
fn fallocate_keep_size(f: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open file descriptor; the call reads no memory of ours.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
