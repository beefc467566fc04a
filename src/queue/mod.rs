//! Queues: the definition (serde data), parsed arguments, and the runtime state behind a
//! per-queue mutex (never held across an `.await`, never global). Messages are `Arc<Message>`
//! shared with every other queue the message was routed to.
//!
//! Ordering: every enqueued message gets a sequence number; `ready` is kept sorted by it, so a
//! requeued message goes back to its original position, as RabbitMQ does.

pub mod args;
pub mod consumer;

use crate::message::Message;
use crate::protocol::AmqpError;
use args::QueueArgs;
use consumer::{ConnEvent, Consumer, Delivery};
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
    consumers: Vec<Arc<Consumer>>,
    /// Round-robin position among consumers.
    rr: usize,
    /// Whether the queue ever had a consumer (auto-delete only applies then).
    had_consumers: bool,
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
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>) {
        let mut s = self.state.lock();
        let seq = s.next_seq;
        s.next_seq += 1;
        s.ready_bytes += msg.body.len() as u64;
        s.ready.push_back(Entry {
            seq,
            msg,
            redelivered: false,
        });
        if !s.consumers.is_empty() {
            self.dispatch_locked(&mut s);
        }
    }

    /// Deliver ready messages to consumers with credit (round-robin within the highest
    /// priority that has room; single-active-consumer queues use only the first consumer).
    pub fn dispatch(self: &Arc<Self>) {
        let mut s = self.state.lock();
        self.dispatch_locked(&mut s);
    }

    fn dispatch_locked(self: &Arc<Self>, s: &mut State) {
        while !s.ready.is_empty() && !s.consumers.is_empty() {
            let Some(i) = pick_consumer(s, self.args.single_active_consumer) else {
                break;
            };
            s.rr = i + 1;
            let c = s.consumers[i].clone();
            let Some(entry) = s.ready.pop_front() else {
                break;
            };
            s.ready_bytes -= entry.msg.body.len() as u64;
            c.take_credit();
            let size = delivery_size(&entry);
            c.backlog.events.fetch_add(size, Ordering::Relaxed);
            if !c.no_ack {
                s.unacked.insert(entry.seq, entry.clone());
            }
            let d = Delivery {
                consumer: c.clone(),
                queue: self.clone(),
                entry,
            };
            if let Err(err) = c.events.send(ConnEvent::Deliver(d)) {
                // The connection is gone: undo, and stop using the consumer.
                let ConnEvent::Deliver(d) = err.0 else {
                    unreachable!()
                };
                c.backlog.events.fetch_sub(size, Ordering::Relaxed);
                c.return_credit(1);
                c.active.store(false, Ordering::Relaxed);
                s.unacked.remove(&d.entry.seq);
                s.ready_bytes += d.entry.msg.body.len() as u64;
                s.ready.push_front(d.entry);
            }
        }
    }

    /// Register a consumer (exclusive rules as RabbitMQ: 403 if either side is exclusive).
    pub fn add_consumer(self: &Arc<Self>, c: Arc<Consumer>) -> Result<(), AmqpError> {
        let mut s = self.state.lock();
        // RabbitMQ refuses exclusive consumers on single-active-consumer queues outright.
        let refused = s.consumers.iter().any(|x| x.exclusive)
            || (c.exclusive && (!s.consumers.is_empty() || self.args.single_active_consumer));
        if refused {
            return Err(AmqpError::access_refused(format!(
                "{} in exclusive use",
                self.resource()
            )));
        }
        s.consumers.push(c);
        s.had_consumers = true;
        s.last_used = Some(Instant::now());
        self.dispatch_locked(&mut s);
        Ok(())
    }

    /// Remove a consumer; returns true if the queue should now be auto-deleted.
    /// Like RabbitMQ 3.10, this does not deliver to the remaining consumers by itself (a single
    /// active consumer taking over is served at the next event: a publish, an ack, a requeue),
    /// so the messages a closing channel requeues go out first.
    pub fn remove_consumer(self: &Arc<Self>, c: &Arc<Consumer>) -> bool {
        let mut s = self.state.lock();
        c.active.store(false, Ordering::Relaxed);
        s.consumers.retain(|x| !Arc::ptr_eq(x, c));
        s.last_used = Some(Instant::now());
        self.def.auto_delete && s.had_consumers && s.consumers.is_empty()
    }

    /// The consumers (snapshot), e.g. to notify them when the queue is deleted.
    pub fn consumers(&self) -> Vec<Arc<Consumer>> {
        self.state.lock().consumers.clone()
    }

    /// Take the head message (`basic.get`); unless `no_ack` it is held until acked. Returns the
    /// entry and the number of messages still ready.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<(Entry, u32)> {
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

    /// Put unacked messages back at their original positions, marked redelivered, and
    /// deliver again.
    pub fn requeue(self: &Arc<Self>, seqs: &[u64]) {
        let mut s = self.state.lock();
        for seq in seqs {
            if let Some(mut e) = s.unacked.remove(seq) {
                e.redelivered = true;
                s.ready_bytes += e.msg.body.len() as u64;
                let pos = s.ready.partition_point(|x| x.seq < e.seq);
                s.ready.insert(pos, e);
            }
        }
        self.dispatch_locked(&mut s);
    }

    /// Put back a message that was dispatched to a no-ack consumer but never written.
    pub fn return_undelivered(self: &Arc<Self>, e: Entry) {
        let mut s = self.state.lock();
        if self.is_deleted() {
            return;
        }
        s.ready_bytes += e.msg.body.len() as u64;
        let pos = s.ready.partition_point(|x| x.seq < e.seq);
        s.ready.insert(pos, e);
        self.dispatch_locked(&mut s);
    }

    /// Put back a message that was dispatched (and recorded unacked) but never written: it
    /// keeps its redelivered flag, since the client never saw it.
    pub fn return_undelivered_unacked(self: &Arc<Self>, seq: u64) {
        let e = self.state.lock().unacked.remove(&seq);
        if let Some(e) = e {
            self.return_undelivered(e);
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
        self.state.lock().consumers.len() as u32
    }

    /// Record use (declare, get, consume) for `x-expires`.
    pub fn touch(&self) {
        self.state.lock().last_used = Some(Instant::now());
    }

    /// When the queue was last used, if it is unused now (no consumers).
    pub fn idle_since(&self) -> Option<Instant> {
        let s = self.state.lock();
        if s.consumers.is_empty() {
            s.last_used
        } else {
            None
        }
    }

    /// Mark deleted; returns the number of ready messages it had.
    pub fn mark_deleted(&self) -> u32 {
        self.deleted.store(true, Ordering::Release);
        let mut s = self.state.lock();
        let n = s.ready.len() as u32;
        s.ready.clear();
        s.unacked.clear();
        for c in &s.consumers {
            c.active.store(false, Ordering::Relaxed);
        }
        n
    }

    /// Whether the queue was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }
}

/// Bytes a delivery adds to its connection's backlog (frames overhead included).
pub fn delivery_size(e: &Entry) -> usize {
    e.msg.body.len() + e.msg.properties.len() + e.msg.routing_key.len() + e.msg.exchange.len() + 64
}

/// The consumer to deliver to next: the highest priority with credit, round-robin from `rr`.
fn pick_consumer(s: &State, single_active: bool) -> Option<usize> {
    if single_active {
        return s.consumers.first().filter(|c| c.has_credit()).map(|_| 0);
    }
    let n = s.consumers.len();
    let mut best: Option<usize> = None;
    for k in 0..n {
        let i = (s.rr + k) % n;
        let c = &s.consumers[i];
        if best.is_none_or(|b| c.priority > s.consumers[b].priority) && c.has_credit() {
            best = Some(i);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn q() -> Arc<Queue> {
        let def = QueueDef {
            name: "q".into(),
            durable: false,
            exclusive: false,
            auto_delete: false,
            arguments: Default::default(),
        };
        Arc::new(Queue::new("/", def, QueueArgs::default(), None))
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
