//! The ready messages of a queue: one FIFO, or one FIFO per priority level for
//! `x-max-priority` queues (levels are created on first use, so an unused high maximum costs
//! nothing). Each FIFO is kept in sequence order, so a requeued message goes back to its
//! original position within its priority.
//!
//! Paging: a durable queue keeps message bodies in memory up to a budget
//! ([`crate::store::log::Log::queue_memory`]); past it, persistent messages whose publish record
//! has been written are replaced by their location in the log (a [`Held::Disk`] index entry of
//! a few bytes) and read back when delivered. Each FIFO remembers how far it has paged, so a
//! publish pages out at most what it added, amortised O(1).

use super::{Held, Queued};
use crate::store::log::Log;
use std::collections::{BTreeMap, VecDeque};

#[derive(Default)]
struct Fifo {
    q: VecDeque<Queued>,
    /// Entries before this index have been considered for paging.
    paged: usize,
}

impl Fifo {
    fn pop_front(&mut self) -> Option<Queued> {
        let e = self.q.pop_front()?;
        self.paged = self.paged.saturating_sub(1);
        Some(e)
    }
}

/// Ready messages.
#[derive(Default)]
pub struct Ready {
    fifo: Fifo,
    /// Priority levels above 0 (level 0 lives in `fifo`), highest served first.
    levels: BTreeMap<u8, Fifo>,
    max_priority: Option<u8>,
    len: usize,
    bytes: u64,
    /// Estimated memory of the messages held in memory.
    mem: u64,
}

fn mem_cost(e: &Queued) -> u64 {
    match &e.held {
        Held::Mem(m) => m.memory_cost(),
        Held::Disk { .. } => 0,
    }
}

impl Ready {
    /// Empty; `max_priority` from `x-max-priority`.
    pub fn new(max_priority: Option<u8>) -> Ready {
        Ready {
            max_priority,
            ..Default::default()
        }
    }

    fn level_of(&self, priority: u8) -> u8 {
        match self.max_priority {
            Some(max) => priority.min(max),
            None => 0,
        }
    }

    fn fifo_mut(&mut self, level: u8) -> &mut Fifo {
        if level == 0 {
            &mut self.fifo
        } else {
            self.levels.entry(level).or_default()
        }
    }

    fn added(&mut self, e: &Queued) {
        self.len += 1;
        self.bytes += e.held.size() as u64;
        self.mem += mem_cost(e);
    }

    /// Append at the tail (a new message).
    pub fn push(&mut self, e: Queued) {
        self.added(&e);
        let level = self.level_of(e.held.priority());
        self.fifo_mut(level).q.push_back(e);
    }

    /// Append messages in sequence order (recovery); an empty plain queue takes the vector
    /// as it is.
    pub fn extend(&mut self, v: Vec<Queued>) {
        if self.max_priority.is_some() || !self.fifo.q.is_empty() {
            v.into_iter().for_each(|e| self.push(e));
            return;
        }
        for e in &v {
            self.added(e);
        }
        self.fifo.q = VecDeque::from(v);
    }

    /// Put back at its sequence position (a requeued message).
    pub fn insert(&mut self, e: Queued) {
        self.added(&e);
        let level = self.level_of(e.held.priority());
        let f = self.fifo_mut(level);
        let pos = f.q.partition_point(|x| x.seq < e.seq);
        f.q.insert(pos, e);
        if pos < f.paged {
            f.paged += 1;
        }
    }

    /// The next message to deliver.
    pub fn front(&self) -> Option<&Queued> {
        self.levels
            .values()
            .rev()
            .find_map(|f| f.q.front())
            .or_else(|| self.fifo.q.front())
    }

    /// Take the next message to deliver.
    pub fn pop(&mut self) -> Option<Queued> {
        let e = match self.levels.iter_mut().rev().find(|(_, f)| !f.q.is_empty()) {
            Some((&level, f)) => {
                let e = f.pop_front();
                if f.q.is_empty() {
                    self.levels.remove(&level);
                }
                e
            }
            None => self.fifo.pop_front(),
        }?;
        self.len -= 1;
        self.bytes -= e.held.size() as u64;
        self.mem -= mem_cost(&e);
        Some(e)
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Body bytes of all messages.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Estimated memory of the messages held in memory.
    pub fn memory(&self) -> u64 {
        self.mem
    }

    /// Every message (no particular order).
    pub fn iter(&self) -> impl Iterator<Item = &Queued> {
        self.fifo
            .q
            .iter()
            .chain(self.levels.values().flat_map(|f| f.q.iter()))
    }

    /// Whether the message with sequence number `seq` is ready.
    pub fn contains(&self, seq: u64) -> bool {
        std::iter::once(&self.fifo)
            .chain(self.levels.values())
            .any(|f| f.q.binary_search_by_key(&seq, |e| e.seq).is_ok())
    }

    /// The message with sequence number `seq` and priority `priority`, if still ready.
    pub fn get_mut(&mut self, seq: u64, priority: u8) -> Option<&mut Queued> {
        let level = self.level_of(priority);
        let f = if level == 0 {
            &mut self.fifo
        } else {
            self.levels.get_mut(&level)?
        };
        let i = f.q.binary_search_by_key(&seq, |e| e.seq).ok()?;
        f.q.get_mut(i)
    }

    /// Swap an entry's message for another (compaction moved it); keeps the accounting.
    pub fn replace(&mut self, seq: u64, priority: u8, held: Held) -> bool {
        let Some(e) = self.get_mut(seq, priority) else {
            return false;
        };
        let before = mem_cost(e);
        e.held = held;
        let after = mem_cost(e);
        self.mem = self.mem - before + after;
        true
    }

    /// Page messages out to the log until the memory estimate is within `budget`. Returns
    /// true if it stopped at a message whose record is not written yet (try again later).
    pub fn page_out(&mut self, log: &Log, budget: u64) -> bool {
        let mut mem = self.mem;
        let mut pending = false;
        for f in std::iter::once(&mut self.fifo).chain(self.levels.values_mut()) {
            while mem > budget && f.paged < f.q.len() {
                let e = &mut f.q[f.paged];
                if let Held::Mem(m) = &e.held
                    && let Some(loc) = m.store_id
                {
                    if !log.is_written(loc) {
                        pending = true;
                        break;
                    }
                    mem -= mem_cost(e);
                    e.held = Held::Disk {
                        loc,
                        size: m.body.len() as u32,
                        priority: m.priority,
                    };
                }
                f.paged += 1;
            }
        }
        self.mem = mem;
        pending
    }

    /// The paged-out entries among the next `n` to deliver (at most `bytes` of bodies, at
    /// least one), in delivery order.
    pub fn paged_out_head(&self, n: usize, bytes: u64) -> Vec<super::stored::Paged> {
        let mut out = Vec::new();
        let mut total = 0u64;
        let order = self
            .levels
            .values()
            .rev()
            .chain(std::iter::once(&self.fifo));
        for e in order.flat_map(|f| f.q.iter()).take(n) {
            if let Held::Disk {
                loc,
                size,
                priority,
            } = e.held
            {
                if !out.is_empty() && total + size as u64 > bytes {
                    break;
                }
                total += size as u64;
                out.push(super::stored::Paged {
                    seq: e.seq,
                    priority,
                    loc,
                    size,
                });
            }
        }
        out
    }

    /// Take out the message with sequence number `seq` and priority `priority`.
    pub fn remove(&mut self, seq: u64, priority: u8) -> Option<Queued> {
        let level = self.level_of(priority);
        let f = if level == 0 {
            &mut self.fifo
        } else {
            self.levels.get_mut(&level)?
        };
        let i = f.q.binary_search_by_key(&seq, |e| e.seq).ok()?;
        let e = f.q.remove(i)?;
        if i < f.paged {
            f.paged -= 1;
        }
        if level != 0 && f.q.is_empty() {
            self.levels.remove(&level);
        }
        self.len -= 1;
        self.bytes -= e.held.size() as u64;
        self.mem -= mem_cost(&e);
        Some(e)
    }

    /// Drop everything; returns how many.
    pub fn clear(&mut self) -> usize {
        let n = self.len;
        *self = Ready::new(self.max_priority);
        n
    }
}
