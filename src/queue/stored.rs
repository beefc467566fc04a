//! A queue's link to the message log: ready messages that may be paged out ([`Held`],
//! [`Queued`]), reading them back, removal and delivery records, recovery, paging and
//! compaction.

use super::{Entry, Queue, State, now_ms};
use crate::message::Message;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// A ready message's content: in memory, or paged out to its place in the message log.
#[derive(Debug, Clone)]
pub enum Held {
    /// In memory (shared with the other queues it was routed to).
    Mem(Arc<Message>),
    /// Only its location in the log (read back when delivered).
    Disk {
        /// Location of its publish record, or of its spooled record.
        loc: u64,
        /// Body size.
        size: u32,
        /// `priority` property.
        priority: u8,
        /// A spooled record (a transient message, or any message of a non-durable queue):
        /// not recovered after a restart, released once read back.
        spooled: bool,
    },
}

impl Held {
    /// Body size.
    pub fn size(&self) -> u32 {
        match self {
            Held::Mem(m) => m.body.len() as u32,
            Held::Disk { size, .. } => *size,
        }
    }

    /// `priority` property.
    pub fn priority(&self) -> u8 {
        match self {
            Held::Mem(m) => m.priority,
            Held::Disk { priority, .. } => *priority,
        }
    }

    /// Location in the message log, if stored (durable: spooled records are not).
    pub fn store_id(&self) -> Option<u64> {
        match self {
            Held::Mem(m) => m.store_id(),
            Held::Disk { loc, spooled, .. } => (!spooled).then_some(*loc),
        }
    }

    /// Location of its spooled record, if it is paged out as one.
    pub fn spool_loc(&self) -> Option<u64> {
        match self {
            Held::Disk {
                loc, spooled: true, ..
            } => Some(*loc),
            _ => None,
        }
    }
}

/// A ready message: an [`Entry`] whose content may be paged out (40 bytes).
#[derive(Debug, Clone)]
pub struct Queued {
    /// Position in the queue (enqueue order).
    pub seq: u64,
    /// When it expires (`u64::MAX`: never).
    pub expires_at: u64,
    /// Failed deliveries so far.
    pub delivery_count: u32,
    /// Delivered before.
    pub redelivered: bool,
    /// The message or its location.
    pub held: Held,
}

impl Queued {
    /// When it expires, if it does.
    pub fn expiry(&self) -> Option<u64> {
        (self.expires_at != u64::MAX).then_some(self.expires_at)
    }
}

impl From<Entry> for Queued {
    fn from(e: Entry) -> Queued {
        Queued {
            seq: e.seq,
            expires_at: e.expires_at.unwrap_or(u64::MAX),
            delivery_count: e.delivery_count,
            redelivered: e.redelivered,
            held: Held::Mem(e.msg),
        }
    }
}

impl Queue {
    /// Record that a stored message left this queue for good. If this durable queue is its
    /// only one and the log's writer has not reached its record yet, the record is never
    /// written and no removal is needed (see [`crate::message::ConfirmGate::cancel_write`]).
    pub fn forget(&self, e: &Entry) {
        if self.log.is_some() && e.msg.confirm.as_ref().is_some_and(|g| g.cancel_write()) {
            return;
        }
        self.forget_id(e.msg.store_id());
    }

    /// A consumer settled the message (acked it, or it was delivered to a no-ack consumer):
    /// it leaves the queue, and a durable queue releases its hold on the publisher's confirm
    /// (see [`crate::message::ConfirmGate`]).
    pub fn settled(&self, e: &Entry) {
        self.forget(e);
        if self.log.is_some()
            && let Some(g) = &e.msg.confirm
        {
            g.settle();
        }
    }

    pub(super) fn forget_id(&self, id: Option<u64>) {
        if let (Some(log), Some(id)) = (&self.log, id) {
            log.append(crate::store::log::remove_record(id, &self.name), None);
        }
    }

    /// A ready entry leaves the queue without being read: its log record stops counting.
    pub(super) fn forget_held(&self, h: &Held) {
        match h.spool_loc() {
            Some(loc) => self.release(vec![loc]),
            None => self.forget_id(h.store_id()),
        }
    }

    /// Spooled records no entry needs any more.
    pub(super) fn release(&self, locs: Vec<u64>) {
        if let Some(log) = &self.spool {
            log.release(locs);
        }
    }

    /// The message of a ready entry, read back from the log if it was paged out. A message
    /// that cannot be read (its record damaged on disk) is logged and dropped.
    pub(super) fn load(&self, q: Queued) -> Option<Entry> {
        let expires_at = q.expiry();
        let msg = match q.held {
            Held::Mem(m) => m,
            Held::Disk {
                loc, size, spooled, ..
            } => {
                let read = match &self.spool {
                    Some(log) => log.read(loc, size),
                    None => Err(std::io::Error::other("no message log")),
                };
                match read {
                    Ok(m) => {
                        if spooled {
                            self.release(vec![loc]);
                        }
                        Arc::new(Self::unspooled(m, spooled))
                    }
                    Err(e) => {
                        tracing::error!(queue = %self.name, error = %e, "cannot read a paged-out message; dropped");
                        self.forget_held(&q.held);
                        return None;
                    }
                }
            }
        };
        Some(Entry {
            seq: q.seq,
            msg,
            redelivered: q.redelivered,
            expires_at,
            delivery_count: q.delivery_count,
        })
    }

    /// A message read back from its record: a spooled one is in memory only again (not
    /// stored, persistent as its properties say; its record is released by whoever puts it
    /// back), a stored one keeps its location.
    fn unspooled(mut m: Message, spooled: bool) -> Message {
        if spooled {
            m.set_store_id(None);
            m.persistent = crate::message::peek_properties(m.properties()).delivery_mode == Some(2);
        }
        m
    }

    /// If the head of the queue is paged out, make sure a read-ahead is on its way: a blocking
    /// task reads the next paged-out messages (up to [`READ_AHEAD`] of them, or
    /// [`READ_AHEAD_BYTES`]) without holding the lock, puts them back in memory and resumes
    /// delivery. Returns true if the head is paged out (the caller waits for the task).
    /// Without a runtime (unit tests) it reads in place.
    pub(super) fn read_ahead(self: &Arc<Self>, s: &mut State) -> bool {
        let head_paged = matches!(s.ready.front().map(|e| &e.held), Some(Held::Disk { .. }));
        // Pipelined: the next batch is read while the one in memory is delivered.
        if !head_paged && (s.reading || !s.ready.paged_out_at(READ_AHEAD / 2)) {
            return false;
        }
        if s.reading {
            return true;
        }
        let Some(log) = self.spool.clone() else {
            return false;
        };
        let want = s.ready.paged_out_head(READ_AHEAD, READ_AHEAD_BYTES);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            let read = read_all(&log, &want);
            self.put_back(s, read);
            return false;
        };
        s.reading = true;
        if want.is_empty() {
            s.reading = false;
            return head_paged;
        }
        let queue = Arc::downgrade(self);
        rt.spawn_blocking(move || {
            let read = read_all(&log, &want);
            let Some(q) = queue.upgrade() else { return };
            let mut s = q.state.lock();
            s.reading = false;
            if q.is_deleted() {
                return;
            }
            q.put_back(&mut s, read);
            q.dispatch_locked(&mut s);
            q.finish(s);
        });
        head_paged
    }

    /// Put messages read ahead back in memory, where their entries are still paged out. One
    /// that could not be read is dropped from the queue (logged), never served.
    fn put_back(&self, s: &mut State, read: Vec<(Paged, std::io::Result<Message>)>) {
        let items = read
            .into_iter()
            .map(|(p, r)| {
                let held = match r {
                    Ok(m) => Some(Held::Mem(Arc::new(Self::unspooled(m, p.spooled)))),
                    Err(e) => {
                        tracing::error!(queue = %self.name, error = %e, "cannot read a paged-out message; dropped");
                        None
                    }
                };
                (p, held)
            })
            .collect();
        for q in s.ready.put_back(items) {
            self.forget_held(&q.held);
        }
    }

    /// Page out past the memory budget (durable queues); a task retries while records are
    /// still on their way to disk.
    pub(super) fn page(self: &Arc<Self>, s: &mut State) {
        let Some(log) = &self.spool else { return };
        if s.ready.memory() <= log.queue_memory || s.page_retry {
            return;
        }
        if s.ready.page_out(&self.page_out(log))
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            s.page_retry = true;
            rt.spawn(page_task(Arc::downgrade(self)));
        }
    }

    /// Record a stored message's first delivery (it comes back redelivered after a crash).
    pub(super) fn mark_delivered(&self, e: &Entry) {
        if !e.redelivered
            && let (Some(log), Some(id)) = (&self.log, e.msg.store_id())
        {
            log.append(crate::store::log::delivered_record(id, &self.name), None);
        }
    }

    /// Put back the messages recovered from the message log (in queue order), as index
    /// entries: their bodies are read when delivered.
    pub fn recover(self: &Arc<Self>, msgs: Vec<crate::store::log::RecoveredMsg>) {
        let mut s = self.state.lock();
        let now = now_ms();
        let message_ttl = s.eff.message_ttl;
        let State {
            next_seq,
            moved_order,
            ..
        } = &mut *s;
        // Same size as the recovered records: collected in place, no second copy.
        let entries: Vec<Queued> = msgs
            .into_iter()
            .map(|m| {
                let seq = *next_seq;
                *next_seq += 1;
                if m.order != m.loc {
                    moved_order.insert(seq, m.order);
                }
                let expiration = (m.expiration != u64::MAX).then_some(m.expiration);
                Queued {
                    seq,
                    expires_at: Self::deadline(message_ttl, expiration, || now),
                    delivery_count: m.count,
                    redelivered: m.delivered,
                    held: Held::Disk {
                        loc: m.loc,
                        size: m.size,
                        priority: m.priority,
                        spooled: false,
                    },
                }
            })
            .collect();
        s.ready.extend(entries);
        self.finish(s);
    }

    /// Compaction: move this queue's messages whose publish record is in segment `seg` to the
    /// head of the log (one record each, superseding the old one), keeping their queue order,
    /// delivered flag and delivery count, so the old segment can be deleted. Returns how many
    /// moved. Bodies are read without the lock; each move is checked and written under it, so
    /// a message acked meanwhile is not resurrected.
    pub fn compact(self: &Arc<Self>, seg: u64) -> usize {
        let unspooled = self.unspool_segment(seg);
        self.compact_stored(seg) + unspooled
    }

    /// Compaction of spooled records: the messages of this queue spooled in segment `seg`
    /// come back into memory (their records released); paging spools them again at the head
    /// if the queue is still over its budget. Reads happen without the lock.
    fn unspool_segment(self: &Arc<Self>, seg: u64) -> usize {
        use crate::store::log::segment_of;
        let Some(log) = &self.spool else { return 0 };
        let want: Vec<Paged> = {
            let s = self.state.lock();
            s.ready
                .iter()
                .filter_map(|e| match e.held {
                    Held::Disk {
                        loc,
                        size,
                        priority,
                        spooled: true,
                    } if segment_of(loc) == seg => Some(Paged {
                        seq: e.seq,
                        priority,
                        loc,
                        size,
                        spooled: true,
                    }),
                    _ => None,
                })
                .collect()
        };
        let mut n = 0;
        for chunk in want.chunks(256) {
            let read = read_all(log, chunk);
            let mut s = self.state.lock();
            if self.is_deleted() {
                return n;
            }
            n += read.iter().filter(|(_, r)| r.is_ok()).count();
            self.put_back(&mut s, read);
        }
        n
    }

    fn compact_stored(self: &Arc<Self>, seg: u64) -> usize {
        use crate::store::log::segment_of;
        let Some(log) = &self.log else { return 0 };
        let mut found: Vec<Candidate> = Vec::new();
        {
            let mut s = self.state.lock();
            let State {
                ready,
                unacked,
                moved_order,
                ..
            } = &mut *s;
            moved_order.retain(|seq, _| unacked.contains_key(seq) || ready.contains(*seq));
            let order = |seq: u64, loc: u64| moved_order.get(&seq).copied().unwrap_or(loc);
            for e in ready.iter() {
                if let Some(loc) = e.held.store_id().filter(|l| segment_of(*l) == seg) {
                    found.push(Candidate {
                        seq: e.seq,
                        priority: e.held.priority(),
                        loc,
                        order: order(e.seq, loc),
                        mem: match &e.held {
                            Held::Mem(m) => Some(m.clone()),
                            Held::Disk { .. } => None,
                        },
                        size: e.held.size(),
                    });
                }
            }
            for e in unacked.values() {
                if let Some(loc) = e.msg.store_id().filter(|l| segment_of(*l) == seg) {
                    found.push(Candidate {
                        seq: e.seq,
                        priority: e.msg.priority,
                        loc,
                        order: order(e.seq, loc),
                        mem: Some(e.msg.clone()),
                        size: 0,
                    });
                }
            }
        }
        let mut moved = 0;
        for chunk in found.chunks(256) {
            let loaded: Vec<_> = chunk
                .iter()
                .filter_map(|c| {
                    let msg = match &c.mem {
                        Some(m) => m.clone(),
                        None => Arc::new(log.read(c.loc, c.size).ok()?),
                    };
                    Some((c.seq, c.priority, c.loc, c.order, msg))
                })
                .collect();
            let mut s = self.state.lock();
            if self.is_deleted() {
                return moved;
            }
            for (seq, prio, loc, order, msg) in loaded {
                let state = match s.ready.get_mut(seq, prio) {
                    Some(e) if e.held.store_id() == Some(loc) => {
                        Some((e.redelivered, e.delivery_count))
                    }
                    _ => s
                        .unacked
                        .get(&seq)
                        .filter(|e| e.msg.store_id() == Some(loc))
                        .map(|e| (true, e.delivery_count)),
                };
                let Some((delivered, count)) = state else {
                    continue;
                };
                let rec = crate::store::log::publish_record(
                    order,
                    loc,
                    &[(&self.name, delivered, count)],
                    &msg,
                );
                // Refused while the disk is full: the message stays where it is.
                let Some(at) = log.append(rec, None) else {
                    return moved;
                };
                let mut m = (*msg).clone();
                m.set_store_id(Some(at));
                let m = Arc::new(m);
                if !s.ready.replace(seq, prio, Held::Mem(m.clone()))
                    && let Some(e) = s.unacked.get_mut(&seq)
                {
                    e.msg = m;
                }
                s.moved_order.insert(seq, order);
                moved += 1;
            }
        }
        moved
    }
}

/// Paged-out messages one read-ahead brings back at most.
pub(super) const READ_AHEAD: usize = 1024;

/// Bytes one read-ahead brings back at most (at least one message).
pub(super) const READ_AHEAD_BYTES: u64 = 4 << 20;

/// A paged-out entry to read back.
#[derive(Debug, Clone, Copy)]
pub struct Paged {
    pub seq: u64,
    pub priority: u8,
    pub loc: u64,
    pub size: u32,
    pub spooled: bool,
}

fn read_all(
    log: &crate::store::log::Log,
    want: &[Paged],
) -> Vec<(Paged, std::io::Result<Message>)> {
    want.iter().map(|p| (*p, log.read(p.loc, p.size))).collect()
}

/// A message compaction may move (see [`Queue::compact`]).
struct Candidate {
    seq: u64,
    priority: u8,
    loc: u64,
    order: u64,
    mem: Option<Arc<Message>>,
    size: u32,
}

impl Queue {
    fn page_out<'a>(&self, log: &'a crate::store::log::Log) -> super::ready::PageOut<'a> {
        super::ready::PageOut {
            log,
            budget: log.queue_memory / 2,
            durable: self.log.is_some(),
        }
    }
}

/// Retries paging out while a queue's newest records are on their way to disk: every 5 ms,
/// backing off to once a second while the log refuses new records (a failing or full disk).
async fn page_task(queue: Weak<Queue>) {
    let mut delay = Duration::from_millis(5);
    loop {
        tokio::time::sleep(delay).await;
        let Some(q) = queue.upgrade() else { return };
        let Some(log) = &q.spool else { return };
        let mut s = q.state.lock();
        if q.is_deleted()
            || s.ready.memory() <= log.queue_memory
            || !s.ready.page_out(&q.page_out(log))
        {
            s.page_retry = false;
            return;
        }
        delay = if log.refusing() {
            (delay * 2).min(Duration::from_secs(1))
        } else {
            Duration::from_millis(5)
        };
    }
}
