//! The ready messages of a queue: one FIFO, or one FIFO per priority level for
//! `x-max-priority` queues (levels are created on first use, so an unused high maximum costs
//! nothing). Each FIFO is kept in sequence order, so a requeued message goes back to its
//! original position within its priority.
//!
//! Paging: a queue in a durable vhost keeps message bodies in memory up to a budget
//! ([`crate::store::log::Log::queue_memory`]); past it, messages are replaced by their location
//! in the log (a [`Held::Disk`] index entry of a few bytes) and read back when delivered: a
//! persistent message in a durable queue once its publish record is written; any other
//! message (transient, or in a non-durable queue) once a spooled record of it is written —
//! never synced nor recovered, released when it is read back or leaves. Each FIFO remembers
//! how far it has paged, so a publish pages out at most what it added, amortised O(1).

use super::{Held, Queued};
use crate::store::log::Log;
use std::collections::{BTreeMap, HashMap, VecDeque};

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
        // A drained deep queue gives its index memory back (amortised O(1): only when a
        // quarter full).
        if self.q.capacity() > 4096 && self.q.len() < self.q.capacity() / 4 {
            self.q.shrink_to(self.q.len() * 2);
        }
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
    /// Messages being spooled: their spooled record's location and priority, by sequence
    /// number (still in memory until the record is written).
    spooling: HashMap<u64, (u64, u8)>,
    /// Memory those messages will free.
    spooling_mem: u64,
    /// Spooled records no entry needs any more (the message left first): to release.
    pub orphans: Vec<u64>,
}

/// Page-out parameters: the log, the memory budget, and whether the queue's persistent
/// messages are in the log already (a durable queue) or must be spooled like the others.
pub struct PageOut<'a> {
    pub log: &'a Log,
    pub budget: u64,
    pub durable: bool,
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

    /// An entry left the queue: if it was being spooled, its record is an orphan.
    fn left(&mut self, e: &Queued) {
        if !self.spooling.is_empty()
            && let Some((loc, _)) = self.spooling.remove(&e.seq)
        {
            self.spooling_mem -= mem_cost(e);
            self.orphans.push(loc);
        }
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
        self.left(&e);
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
        let f = Self::existing_fifo(&mut self.fifo, &mut self.levels, level)?;
        let i = f.q.binary_search_by_key(&seq, |e| e.seq).ok()?;
        f.q.get_mut(i)
    }

    /// The FIFO of a priority level, if it exists (level 0 always does).
    fn existing_fifo<'a>(
        fifo: &'a mut Fifo,
        levels: &'a mut BTreeMap<u8, Fifo>,
        level: u8,
    ) -> Option<&'a mut Fifo> {
        if level == 0 {
            Some(fifo)
        } else {
            levels.get_mut(&level)
        }
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

    /// Page messages out to the log until the memory estimate is within the budget. Returns
    /// true if records it waits for are not written yet (try again later).
    pub fn page_out(&mut self, p: &PageOut<'_>) -> bool {
        let mut pending = false;
        // Spooled records written since the last time: their entries leave memory now.
        if !self.spooling.is_empty() {
            let done: Vec<(u64, u64, u8)> = self
                .spooling
                .iter()
                .filter(|(_, (loc, _))| p.log.is_written(*loc))
                .map(|(seq, (loc, prio))| (*seq, *loc, *prio))
                .collect();
            for (seq, loc, prio) in done {
                self.spooling.remove(&seq);
                let Some(e) = self.get_mut(seq, prio) else {
                    continue;
                };
                let Held::Mem(m) = &e.held else { continue };
                let (size, priority) = (m.body.len() as u32, m.priority);
                let cost = mem_cost(e);
                e.held = Held::Disk {
                    loc,
                    size,
                    priority,
                    spooled: true,
                };
                self.mem -= cost;
                self.spooling_mem -= cost;
            }
            pending |= !self.spooling.is_empty();
        }
        let mut mem = self.mem - self.spooling_mem;
        let Ready {
            fifo,
            levels,
            spooling,
            spooling_mem,
            mem: held,
            ..
        } = self;
        for f in std::iter::once(fifo).chain(levels.values_mut()) {
            while mem > p.budget && f.paged < f.q.len() {
                let e = &mut f.q[f.paged];
                if let Held::Mem(m) = &e.held {
                    match m.store_id().filter(|_| p.durable) {
                        Some(loc) => {
                            if !p.log.is_written(loc) {
                                pending = true;
                                break;
                            }
                            let cost = mem_cost(e);
                            mem -= cost;
                            *held -= cost;
                            e.held = Held::Disk {
                                loc,
                                size: m.body.len() as u32,
                                priority: m.priority,
                                spooled: false,
                            };
                        }
                        None => {
                            // Refused while the disk is full: it stays in memory.
                            if let Some(loc) =
                                p.log.append(crate::store::log::spool_record(m), None)
                            {
                                let cost = mem_cost(e);
                                mem -= cost;
                                *spooling_mem += cost;
                                spooling.insert(e.seq, (loc, m.priority));
                                pending = true;
                            }
                        }
                    }
                }
                f.paged += 1;
            }
        }
        pending
    }

    /// Whether the `k`-th message to deliver is paged out (plain queues; priority queues
    /// answer false: they read ahead only when the head is paged out).
    pub fn paged_out_at(&self, k: usize) -> bool {
        self.levels.is_empty()
            && matches!(self.fifo.q.get(k).map(|e| &e.held), Some(Held::Disk { .. }))
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
                spooled,
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
                    spooled,
                });
            }
        }
        out
    }

    /// Put read-ahead messages back where their entries are still paged out at the same
    /// location: `Some(held)` replaces the entry's content (a spooled record replaced becomes
    /// an orphan, released by the queue), `None` (unreadable) takes the entry out and
    /// returns it. `items` are in delivery order, so one forward pass per
    /// priority level finds them (they are at the head: no search over a deep queue).
    pub fn put_back(&mut self, items: Vec<(super::stored::Paged, Option<Held>)>) -> Vec<Queued> {
        let mut removed = Vec::new();
        let mut cursors: BTreeMap<u8, usize> = BTreeMap::new();
        for (p, held) in items {
            let level = self.level_of(p.priority);
            let Ready {
                fifo,
                levels,
                mem,
                orphans,
                ..
            } = self;
            let Some(f) = Self::existing_fifo(fifo, levels, level) else {
                continue;
            };
            let c = cursors.entry(level).or_insert(0);
            while *c < f.q.len() && f.q[*c].seq < p.seq {
                *c += 1;
            }
            let Some(e) = f.q.get_mut(*c) else { continue };
            if e.seq != p.seq || !matches!(e.held, Held::Disk { loc, .. } if loc == p.loc) {
                continue;
            }
            match held {
                Some(h) => {
                    if let Some(loc) = e.held.spool_loc() {
                        orphans.push(loc); // in memory again: its spooled record goes
                    }
                    let before = mem_cost(e);
                    e.held = h;
                    *mem = *mem - before + mem_cost(e);
                }
                None => {
                    if let Some(e) = f.q.remove(*c) {
                        if *c < f.paged {
                            f.paged -= 1;
                        }
                        removed.push(e);
                    }
                }
            }
        }
        for e in &removed {
            self.len -= 1;
            self.bytes -= e.held.size() as u64;
        }
        self.levels.retain(|_, f| !f.q.is_empty());
        removed
    }

    /// Drop everything; returns how many. Spooled records (written or on their way) become
    /// orphans.
    pub fn clear(&mut self) -> usize {
        let n = self.len;
        let mut orphans = std::mem::take(&mut self.orphans);
        orphans.extend(self.spooling.values().map(|(loc, _)| *loc));
        orphans.extend(self.iter().filter_map(|e| e.held.spool_loc()));
        *self = Ready::new(self.max_priority);
        self.orphans = orphans;
        n
    }
}
