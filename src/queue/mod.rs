//! Queues: the definition (serde data), parsed arguments, and the runtime state behind a
//! per-queue mutex (never held across an `.await`, never global). Messages are `Arc<Message>`
//! shared with every other queue the message was routed to.
//!
//! Ordering: every enqueued message gets a sequence number; `ready` is kept sorted by it, so a
//! requeued message goes back to its original position, as RabbitMQ does.

pub mod args;

use crate::message::Message;
use args::QueueArgs;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What a queue is, as declared (serde: this is what durability persists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    /// Name.
    pub name: String,
    /// Survives restarts.
    pub durable: bool,
    /// Owned by one connection, deleted with it.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Arguments, as declared.
    pub arguments: amq_protocol::types::FieldTable,
}

/// A message in a queue.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position in the queue (enqueue order).
    pub seq: u64,
    /// The message (shared).
    pub msg: Arc<Message>,
    /// Delivered before.
    pub redelivered: bool,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Entry>,
    ready_bytes: u64,
    next_seq: u64,
    /// Delivered and not yet acked, by sequence number.
    unacked: HashMap<u64, Entry>,
    consumers: usize,
    last_used: Option<Instant>,
}

/// A queue.
pub struct Queue {
    /// Name (shared with bindings and deliveries).
    pub name: Arc<str>,
    /// Vhost name.
    pub vhost: Arc<str>,
    /// The definition.
    pub def: QueueDef,
    /// Parsed arguments.
    pub args: QueueArgs,
    /// Owning connection of an exclusive queue.
    pub owner: Option<u64>,
    /// Set once the queue is deleted (late publishers and acks see it).
    pub deleted: AtomicBool,
    state: Mutex<State>,
}

impl Queue {
    /// A new empty queue.
    pub fn new(vhost: &str, def: QueueDef, args: QueueArgs, owner: Option<u64>) -> Queue {
        Queue {
            name: def.name.as_str().into(),
            vhost: vhost.into(),
            def,
            args,
            owner,
            deleted: AtomicBool::new(false),
            state: Mutex::new(State {
                last_used: Some(Instant::now()),
                ..Default::default()
            }),
        }
    }

    /// `queue 'q' in vhost '/'`.
    pub fn resource(&self) -> String {
        crate::args::rs("queue", &self.name, &self.vhost)
    }

    /// Append a message.
    pub fn publish(&self, msg: Arc<Message>) {
        let mut s = self.state.lock();
        let seq = s.next_seq;
        s.next_seq += 1;
        s.ready_bytes += msg.body.len() as u64;
        s.ready.push_back(Entry {
            seq,
            msg,
            redelivered: false,
        });
    }

    /// Take the head message (`basic.get`); unless `no_ack` it is held until acked. Returns the
    /// entry and the number of messages still ready.
    pub fn get(&self, no_ack: bool) -> Option<(Entry, u32)> {
        let mut s = self.state.lock();
        s.last_used = Some(Instant::now());
        let e = s.ready.pop_front()?;
        s.ready_bytes -= e.msg.body.len() as u64;
        if !no_ack {
            s.unacked.insert(e.seq, e.clone());
        }
        Some((e, s.ready.len() as u32))
    }

    /// Forget acked messages.
    pub fn ack(&self, seqs: &[u64]) {
        let mut s = self.state.lock();
        for seq in seqs {
            s.unacked.remove(seq);
        }
    }

    /// Put unacked messages back at their original positions, marked redelivered.
    pub fn requeue(&self, seqs: &[u64]) {
        let mut s = self.state.lock();
        for seq in seqs {
            if let Some(mut e) = s.unacked.remove(seq) {
                e.redelivered = true;
                s.ready_bytes += e.msg.body.len() as u64;
                let pos = s.ready.partition_point(|x| x.seq < e.seq);
                s.ready.insert(pos, e);
            }
        }
    }

    /// Drop unacked messages (reject/nack without requeue; dead-lettering hooks in here).
    pub fn discard(&self, seqs: &[u64]) {
        self.ack(seqs)
    }

    /// Drop every ready message; returns how many (unacked ones stay, as in RabbitMQ).
    pub fn purge(&self) -> u32 {
        let mut s = self.state.lock();
        let n = s.ready.len() as u32;
        s.ready.clear();
        s.ready_bytes = 0;
        n
    }

    /// Ready messages.
    pub fn message_count(&self) -> u32 {
        self.state.lock().ready.len() as u32
    }

    /// Consumers.
    pub fn consumer_count(&self) -> u32 {
        self.state.lock().consumers as u32
    }

    /// Record use (declare, get, consume) for `x-expires`.
    pub fn touch(&self) {
        self.state.lock().last_used = Some(Instant::now());
    }

    /// When the queue was last used, if it is unused now (no consumers).
    pub fn idle_since(&self) -> Option<Instant> {
        let s = self.state.lock();
        if s.consumers > 0 { None } else { s.last_used }
    }

    /// Mark deleted; returns the number of ready messages it had.
    pub fn mark_deleted(&self) -> u32 {
        self.deleted.store(true, Ordering::Release);
        let mut s = self.state.lock();
        let n = s.ready.len() as u32;
        s.ready.clear();
        s.unacked.clear();
        n
    }

    /// Whether the queue was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn q() -> Queue {
        let def = QueueDef {
            name: "q".into(),
            durable: false,
            exclusive: false,
            auto_delete: false,
            arguments: Default::default(),
        };
        Queue::new("/", def, QueueArgs::default(), None)
    }

    fn msg(b: &'static str) -> Arc<Message> {
        Arc::new(Message {
            exchange: Bytes::new(),
            routing_key: Bytes::new(),
            properties: Bytes::from_static(&[0, 0]),
            body: Bytes::from_static(b.as_bytes()),
        })
    }

    #[test]
    fn requeue_restores_original_position() {
        let q = q();
        for b in ["a", "b", "c"] {
            q.publish(msg(b));
        }
        let (a, _) = q.get(false).unwrap();
        let (b, left) = q.get(false).unwrap();
        assert_eq!(left, 1);
        q.requeue(&[b.seq]);
        q.requeue(&[a.seq]);
        let order: Vec<_> = std::iter::from_fn(|| q.get(true))
            .map(|(e, _)| (e.msg.body.clone(), e.redelivered))
            .collect();
        assert_eq!(
            order,
            vec![
                (Bytes::from("a"), true),
                (Bytes::from("b"), true),
                (Bytes::from("c"), false)
            ]
        );
    }

    #[test]
    fn purge_keeps_unacked() {
        let q = q();
        q.publish(msg("a"));
        q.publish(msg("b"));
        let (a, _) = q.get(false).unwrap();
        assert_eq!(q.purge(), 1);
        q.requeue(&[a.seq]);
        assert_eq!(q.message_count(), 1);
    }
}
