//! The ready messages of a queue: one FIFO, or one FIFO per priority level for
//! `x-max-priority` queues (levels are created on first use, so an unused high maximum costs
//! nothing). Each FIFO is kept in sequence order, so a requeued message goes back to its
//! original position within its priority.

use super::Entry;
use std::collections::{BTreeMap, VecDeque};

/// Ready messages.
#[derive(Default)]
pub struct Ready {
    fifo: VecDeque<Entry>,
    /// Priority levels above 0 (level 0 lives in `fifo`), highest served first.
    levels: BTreeMap<u8, VecDeque<Entry>>,
    max_priority: Option<u8>,
    len: usize,
    bytes: u64,
}

impl Ready {
    /// Empty; `max_priority` from `x-max-priority`.
    pub fn new(max_priority: Option<u8>) -> Ready {
        Ready {
            max_priority,
            ..Default::default()
        }
    }

    fn level_of(&self, e: &Entry) -> u8 {
        match self.max_priority {
            Some(max) => e.msg.priority.min(max),
            None => 0,
        }
    }

    fn fifo_mut(&mut self, level: u8) -> &mut VecDeque<Entry> {
        if level == 0 {
            &mut self.fifo
        } else {
            self.levels.entry(level).or_default()
        }
    }

    /// Append at the tail (a new message).
    pub fn push(&mut self, e: Entry) {
        self.len += 1;
        self.bytes += e.msg.body.len() as u64;
        let level = self.level_of(&e);
        self.fifo_mut(level).push_back(e);
    }

    /// Put back at its sequence position (a requeued message).
    pub fn insert(&mut self, e: Entry) {
        self.len += 1;
        self.bytes += e.msg.body.len() as u64;
        let level = self.level_of(&e);
        let q = self.fifo_mut(level);
        let pos = q.partition_point(|x| x.seq < e.seq);
        q.insert(pos, e);
    }

    /// The next message to deliver.
    pub fn front(&self) -> Option<&Entry> {
        self.levels
            .values()
            .rev()
            .find_map(|q| q.front())
            .or_else(|| self.fifo.front())
    }

    /// Take the next message to deliver.
    pub fn pop(&mut self) -> Option<Entry> {
        let e = match self.levels.iter_mut().rev().find(|(_, q)| !q.is_empty()) {
            Some((&level, q)) => {
                let e = q.pop_front();
                if q.is_empty() {
                    self.levels.remove(&level);
                }
                e
            }
            None => self.fifo.pop_front(),
        }?;
        self.len -= 1;
        self.bytes -= e.msg.body.len() as u64;
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

    /// Drop everything; returns how many.
    pub fn clear(&mut self) -> usize {
        let n = self.len;
        *self = Ready::new(self.max_priority);
        n
    }
}
