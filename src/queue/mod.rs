//! Queues: the definition (serde data), parsed arguments, and the runtime state behind a
//! per-queue mutex (never held across an `.await`, never global). Messages are `Arc<Message>`
//! shared with every other queue the message was routed to.
//!
//! Ordering: every enqueued message gets a sequence number; ready messages are kept sorted by
//! it (per priority level), so a requeued message goes back to its original position, as
//! RabbitMQ does. Expiry (`x-message-ttl`, `expiration`) is checked at the head only, as in
//! RabbitMQ, by whoever touches the queue and by one timer task per queue that has TTLs; length
//! limits are enforced on publish. Messages that die go to the dead-letter exchange once the
//! queue's lock is released (see [`dead_letter`]).

pub mod args;
pub mod consumer;
pub mod dead_letter;
pub mod ready;
pub mod replica;
mod stored;

pub use stored::{Held, Queued};

use crate::message::Message;
use crate::protocol::AmqpError;
use args::{Overflow, QueueArgs};
use consumer::{ConnEvent, Consumer, Delivery};
use dead_letter::Reason;
use parking_lot::{Mutex, MutexGuard};
use ready::Ready;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

pub use crate::defs::QueueDef;

/// Where a queue's dead letters are routed: its vhost, seen from below (the queue layer owns
/// this interface so that it does not depend on the vhost that holds it).
pub trait Router: Send + Sync {
    /// The queues a message from `exchange` with these routing keys and headers reaches;
    /// `None` when the exchange does not exist.
    fn route_from(
        &self,
        exchange: &str,
        keys: &[&[u8]],
        headers: Option<&amq_protocol::types::FieldTable>,
    ) -> Option<Vec<Arc<Queue>>>;
    /// Enqueue `msg` on `queues` (persisting it where they are durable).
    fn enqueue(&self, queues: &[Arc<Queue>], msg: Message);
    /// Keep `msg` in `exchange` if that is an `x-delayed-message` exchange and the message
    /// asks for a delay (`None`: taken); otherwise give it back to be routed now.
    fn delay_from(
        &self,
        _exchange: &str,
        msg: Message,
        _headers: &amq_protocol::types::FieldTable,
    ) -> Option<Message> {
        Some(msg)
    }
    /// A message died in `queue` (dead-lettered if `dlx`, else dropped), for the vhost's
    /// [`dead_letter::Counts`].
    fn dead_lettered(&self, _queue: &Queue, _reason: Reason, _dlx: bool) {}
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
    /// When it expires (ms on the broker's monotonic clock, see [`now_ms`]).
    pub expires_at: Option<u64>,
    /// Failed deliveries so far (requeues), for `x-delivery-limit` and `x-delivery-count`.
    pub delivery_count: u32,
}

impl State {
    fn hold(&mut self, e: Entry) {
        self.unacked_mem += e.msg.memory_cost();
        self.unacked.insert(e.seq, e);
    }

    fn unhold(&mut self, seq: u64) -> Option<Entry> {
        let e = self.unacked.remove(&seq)?;
        self.unacked_mem -= e.msg.memory_cost();
        Some(e)
    }
}

/// Milliseconds on the broker's clock ([`crate::clock::now_ms`]: monotonic, or the manual
/// test clock).
pub fn now_ms() -> u64 {
    crate::clock::now_ms()
}

/// Whether a publish was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Enqueued (or delivered).
    Yes,
    /// Refused by `x-overflow: reject-publish(-dlx)`: publisher confirms nack it.
    Rejected,
}

struct State {
    ready: Ready,
    next_seq: u64,
    /// Delivered and not yet acked, by sequence number.
    unacked: HashMap<u64, Entry>,
    /// Estimated memory of the unacked messages ([`Message::memory_cost`]).
    unacked_mem: u64,
    consumers: Vec<Arc<Consumer>>,
    /// Round-robin position among consumers.
    rr: usize,
    /// Whether the queue ever had a consumer (auto-delete only applies then).
    had_consumers: bool,
    last_used: Option<u64>,
    /// Messages that died under the lock, dead-lettered once it is released.
    dead: Vec<(Queued, Reason)>,
    /// A task retries paging out (records not written yet when last tried).
    page_retry: bool,
    /// A read-ahead of paged-out messages is in flight (off the async workers).
    reading: bool,
    /// Queue order (location of the original publish record) of the messages compaction
    /// moved, by sequence number: a moved message's record keeps it for recovery.
    moved_order: HashMap<u64, u64>,
    /// The deadline the expiry task sleeps until (`u64::MAX`: none).
    timer_at: u64,
    /// Whether the expiry task runs.
    timer_running: bool,
    /// What the queue did with messages (the management API's `message_stats`).
    counts: crate::stats::QueueCounts,
    /// The arguments in force: the declared ones with the applying policies merged in
    /// ([`QueueArgs::with_policy`]). Limits, TTL, dead-lettering and overflow read these.
    eff: QueueArgs,
    /// The policy and operator policy that apply, and their merged definition.
    policy: AppliedPolicy,
}

/// The policies that apply to a queue, as the management API shows them.
#[derive(Debug, Clone, Default)]
pub struct AppliedPolicy {
    /// The policy's name.
    pub policy: Option<String>,
    /// The operator policy's name.
    pub operator_policy: Option<String>,
    /// RabbitMQ's `effective_policy_definition`.
    pub definition: serde_json::Map<String, serde_json::Value>,
}

/// A queue.
pub struct Queue {
    /// Name (shared with bindings and deliveries).
    pub name: Arc<str>,
    /// Vhost name.
    pub vhost: Arc<str>,
    /// The vhost (for dead-lettering).
    pub vhost_ref: Weak<dyn Router>,
    /// The definition.
    pub def: QueueDef,
    /// Parsed arguments.
    pub args: QueueArgs,
    /// Owning connection of an exclusive queue.
    pub owner: Option<u64>,
    /// Set once the queue is deleted (late publishers and acks see it).
    pub deleted: AtomicBool,
    /// Deliveries are counted in `x-delivery-count` (declared or by policy: a delivery limit);
    /// read per delivery, outside the lock.
    counts_deliveries: AtomicBool,
    /// An `x-expires` task runs for this queue.
    pub(crate) expiry_task: AtomicBool,
    /// It has a consumer (kept with `State::consumers`; read without the lock, see
    /// [`Queue::has_consumers`]).
    consumed: AtomicBool,
    state: Mutex<State>,
    /// Wakes the expiry task when the head's deadline moved earlier.
    timer: tokio::sync::Notify,
    /// The vhost's message log, for a durable queue in a durable vhost.
    pub log: Option<Arc<crate::store::log::Log>>,
    /// The vhost's message log, for any queue in a durable vhost: where messages that are not
    /// stored are spooled when the queue outgrows its memory budget.
    pub spool: Option<Arc<crate::store::log::Log>>,
    /// A quorum queue in a cluster: its state is replicated ([`replica`]), and every method
    /// that changes it goes through the queue's Raft group instead of `state`.
    replica: std::sync::OnceLock<Arc<replica::Replica>>,
}

/// How many expired messages one pass removes before letting go of the lock.
const EXPIRE_BATCH: usize = 4096;

impl Queue {
    /// A new empty queue.
    pub fn new(
        vhost: &str,
        vhost_ref: Weak<dyn Router>,
        def: QueueDef,
        args: QueueArgs,
        owner: Option<u64>,
        log: Option<Arc<crate::store::log::Log>>,
    ) -> Queue {
        Queue {
            name: def.name.as_str().into(),
            vhost: vhost.into(),
            vhost_ref,
            def,
            state: Mutex::new(State {
                ready: Ready::new(args.max_priority),
                next_seq: 0,
                unacked: HashMap::new(),
                unacked_mem: 0,
                consumers: Vec::new(),
                rr: 0,
                had_consumers: false,
                last_used: Some(now_ms()),
                dead: Vec::new(),
                page_retry: false,
                reading: false,
                moved_order: HashMap::new(),
                timer_at: u64::MAX,
                timer_running: false,
                counts: Default::default(),
                eff: args.clone(),
                policy: AppliedPolicy::default(),
            }),
            counts_deliveries: AtomicBool::new(args.counts_deliveries),
            expiry_task: AtomicBool::new(false),
            consumed: AtomicBool::new(false),
            args,
            owner,
            deleted: AtomicBool::new(false),
            timer: tokio::sync::Notify::new(),
            spool: log.clone(),
            log,
            replica: std::sync::OnceLock::new(),
        }
    }

    /// Make this queue replicated (once, before clients use it).
    pub fn set_replica(&self, r: Arc<replica::Replica>) {
        let _ = self.replica.set(r);
    }

    /// The queue's replica, if it is replicated.
    pub fn replica(&self) -> Option<&Arc<replica::Replica>> {
        self.replica.get()
    }

    /// Dead-letter what a replicated queue's group dead-lettered.
    pub(crate) fn bury_replicated(self: &Arc<Self>, dead: Vec<(Entry, Reason)>) {
        let dlx = self.dead_letter_target().0.is_some();
        if let Some(router) = self.vhost_ref.upgrade() {
            for (_, reason) in &dead {
                router.dead_lettered(self, *reason, dlx);
            }
        }
        if dlx {
            dead_letter::publish(self, dead);
        }
    }

    /// Spool to `log` past the memory budget (a non-durable queue in a durable vhost).
    pub fn with_spool(mut self, log: Option<Arc<crate::store::log::Log>>) -> Queue {
        self.spool = log;
        self
    }

    /// `queue 'q' in vhost '/'`.
    pub fn resource(&self) -> String {
        crate::args::rs("queue", &self.name, &self.vhost)
    }

    /// The dead-letter exchange and routing key in force (arguments or policy).
    pub fn dead_letter_target(&self) -> (Option<String>, Option<String>) {
        let s = self.state.lock();
        (
            s.eff.dead_letter_exchange.clone(),
            s.eff.dead_letter_routing_key.clone(),
        )
    }

    /// Whether deliveries carry `x-delivery-count` (a quorum queue, or a delivery limit).
    pub fn counts_deliveries(&self) -> bool {
        self.counts_deliveries.load(Ordering::Relaxed)
    }

    /// `x-expires` in force (argument or policy).
    pub fn expires(&self) -> Option<u64> {
        self.state.lock().eff.expires
    }

    /// `x-consumer-timeout` in force (argument or `consumer-timeout` policy, the lower).
    pub fn consumer_timeout(&self) -> Option<u64> {
        self.state.lock().eff.consumer_timeout
    }

    /// The policies that apply, as the management API shows them.
    pub fn applied_policy(&self) -> AppliedPolicy {
        self.state.lock().policy.clone()
    }

    /// Apply a policy and an operator policy (either may be `None`): the arguments in force
    /// become the declared ones with their merged definition, at once (a lower `max-length`
    /// drops or dead-letters the excess now, as in RabbitMQ). Returns whether `x-expires` is
    /// now in force and its timer is not running (the vhost starts it).
    pub fn apply_policy(
        self: &Arc<Self>,
        policy: Option<&crate::defs::Policy>,
        operator: Option<&crate::defs::Policy>,
    ) -> bool {
        let definition = args::merge_policies(
            policy.map(|p| &p.definition),
            operator.map(|p| &p.definition),
        );
        let mut s = self.state.lock();
        s.eff = self.args.with_policy(&self.def.arguments, &definition);
        self.counts_deliveries
            .store(s.eff.counts_deliveries, Ordering::Relaxed);
        s.policy = AppliedPolicy {
            policy: policy.map(|p| p.name.clone()),
            operator_policy: operator.map(|p| p.name.clone()),
            definition,
        };
        let start_timer = s.eff.expires.is_some() && !self.expiry_task.load(Ordering::Relaxed);
        self.drop_over_limit(&mut s);
        self.dispatch_locked(&mut s);
        self.finish(s);
        start_timer
    }

    /// Release the lock, then dead-letter what died under it.
    fn finish(self: &Arc<Self>, mut s: MutexGuard<'_, State>) {
        self.arm_timer(&mut s);
        let dead = std::mem::take(&mut s.dead);
        let orphans = std::mem::take(&mut s.ready.orphans);
        drop(s);
        if !orphans.is_empty() {
            self.release(orphans);
        }
        if !dead.is_empty() {
            self.bury(dead);
        }
    }

    /// Dead-letter (or drop) messages taken out under the lock; they leave the log after
    /// being read back (a paged-out one is read before its removal is recorded).
    fn bury(self: &Arc<Self>, dead: Vec<(Queued, Reason)>) {
        let dlx = self.dead_letter_target().0.is_some();
        if let Some(router) = self.vhost_ref.upgrade() {
            for (_, reason) in &dead {
                router.dead_lettered(self, *reason, dlx);
            }
        }
        if !dlx {
            for (e, _) in &dead {
                self.forget_held(&e.held);
            }
            return;
        }
        // `load` forgets what it cannot read; the rest leaves the log once read.
        let mut loaded = Vec::with_capacity(dead.len());
        for (e, r) in dead {
            if let Some(e) = self.load(e) {
                loaded.push((e, r));
            }
        }
        for (e, _) in &loaded {
            self.forget(e);
        }
        dead_letter::publish(self, loaded);
    }

    /// The effective TTL of a message in this queue: the smaller of `x-message-ttl` and the
    /// message's `expiration`.
    fn ttl(message_ttl: Option<u64>, expiration: Option<u64>) -> Option<u64> {
        match (message_ttl, expiration) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The deadline of a message enqueued now with this `expiration` (`u64::MAX`: none); the
    /// clock is read only if there is a TTL.
    fn deadline(
        message_ttl: Option<u64>,
        expiration: Option<u64>,
        now: impl FnOnce() -> u64,
    ) -> u64 {
        Self::ttl(message_ttl, expiration).map_or(u64::MAX, |ttl| now().saturating_add(ttl))
    }

    /// Append a message, deliver it if a consumer has credit, then apply expiry and length
    /// limits. Returns whether the queue took it (`reject-publish` refuses when full).
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>) -> Accepted {
        if let Some(r) = self.replica() {
            if !self.is_deleted() {
                r.enqueue(&msg, None);
            }
            return Accepted::Yes;
        }
        let mut s = self.state.lock();
        if self.is_deleted() {
            return Accepted::Yes;
        }
        if s.eff.overflow != Overflow::DropHead && Self::is_full(&s, msg.body.len() as u64) {
            if s.eff.overflow == Overflow::RejectPublishDlx {
                let e = self.entry(&mut s, msg);
                s.dead.push((e, Reason::Maxlen));
            } else {
                // Not in this queue after a restart either.
                self.forget_id(msg.store_id());
            }
            self.finish(s);
            return Accepted::Rejected;
        }
        let e = self.entry(&mut s, msg);
        s.ready.push(e);
        s.counts.publish += 1;
        if !s.consumers.is_empty() {
            self.dispatch_locked(&mut s);
        }
        // What no consumer took at once and is due now (TTL 0) goes now.
        self.expire_head(&mut s, 1);
        self.drop_over_limit(&mut s);
        self.page(&mut s);
        self.finish(s);
        Accepted::Yes
    }

    fn entry(&self, s: &mut State, msg: Arc<Message>) -> Queued {
        let seq = s.next_seq;
        s.next_seq += 1;
        let expires_at = Self::deadline(s.eff.message_ttl, msg.expiration(), now_ms);
        Queued {
            seq,
            expires_at,
            delivery_count: 0,
            redelivered: false,
            held: Held::Mem(msg),
        }
    }

    /// Whether one more message of `size` bytes would exceed a limit (reject-publish modes).
    fn is_full(s: &State, size: u64) -> bool {
        s.eff
            .max_length
            .is_some_and(|max| s.ready.len() as u64 >= max)
            || s.eff
                .max_length_bytes
                .is_some_and(|max| s.ready.bytes() + size > max)
    }

    /// drop-head: remove (and dead-letter) from the head until within the limits.
    fn drop_over_limit(&self, s: &mut State) {
        if s.eff.overflow != Overflow::DropHead {
            return;
        }
        loop {
            let over = s
                .eff
                .max_length
                .is_some_and(|max| s.ready.len() as u64 > max)
                || s.eff
                    .max_length_bytes
                    .is_some_and(|max| s.ready.bytes() > max);
            if !over {
                return;
            }
            match s.ready.pop() {
                Some(e) => s.dead.push((e, Reason::Maxlen)),
                None => return,
            }
        }
    }

    /// Remove expired messages from the head (at most a batch); true if more may be expired.
    /// A message is expired once its deadline has passed (`deadline < now`): a TTL of 0 still
    /// lets a waiting consumer take it on publish, as in RabbitMQ; `publish` then expires what
    /// is left at its deadline.
    /// The clock is read only if the head has a deadline (`slack` ms are added to it).
    fn expire_head(&self, s: &mut State, slack: u64) -> bool {
        let mut now = None;
        for _ in 0..EXPIRE_BATCH {
            let Some(at) = s.ready.front().and_then(Queued::expiry) else {
                return false;
            };
            if at >= *now.get_or_insert_with(|| now_ms() + slack) {
                return false;
            }
            if let Some(e) = s.ready.pop() {
                s.dead.push((e, Reason::Expired));
            }
        }
        true
    }

    /// Make sure the expiry task will wake up for the head's deadline.
    fn arm_timer(self: &Arc<Self>, s: &mut State) {
        let Some(at) = s.ready.front().and_then(Queued::expiry) else {
            return;
        };
        if at >= s.timer_at {
            return;
        }
        s.timer_at = at;
        if s.timer_running {
            self.timer.notify_one();
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        s.timer_running = true;
        rt.spawn(expiry_task(Arc::downgrade(self)));
    }

    /// Deliver ready messages to consumers with credit (round-robin within the highest
    /// priority that has room; single-active-consumer queues use only the first consumer).
    pub fn dispatch(self: &Arc<Self>) {
        if self.replica().is_some() {
            return;
        }
        let mut s = self.state.lock();
        self.dispatch_locked(&mut s);
        self.finish(s);
    }

    fn dispatch_locked(self: &Arc<Self>, s: &mut State) {
        while !s.ready.is_empty() && !s.consumers.is_empty() {
            self.expire_head(s, 0);
            // A paged-out head is read by a blocking task, never under this lock on an async
            // worker; delivery resumes when it is back in memory.
            if self.read_ahead(s) {
                break;
            }
            let Some(i) = pick_consumer(s, self.args.single_active_consumer) else {
                break;
            };
            s.rr = i + 1;
            let c = s.consumers[i].clone();
            let Some(queued) = s.ready.pop() else {
                break;
            };
            let Some(entry) = self.load(queued) else {
                continue;
            };
            c.take_credit();
            if c.no_ack {
                s.counts.deliver_no_ack += 1;
                if self.log.is_some()
                    && let Some(g) = &entry.msg.confirm
                {
                    g.hand();
                }
            } else {
                s.counts.deliver += 1;
                self.mark_delivered(&entry);
            }
            s.counts.redeliver += entry.redelivered as u64;
            let size = delivery_size(&entry);
            c.backlog.events.fetch_add(size, Ordering::Relaxed);
            if !c.no_ack {
                s.hold(entry.clone());
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
                s.unhold(d.entry.seq);
                s.ready.insert(d.entry.into());
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
        if let Some(r) = self.replica() {
            r.add_consumer(c.clone());
        }
        s.consumers.push(c);
        s.had_consumers = true;
        self.consumed.store(true, Ordering::Relaxed);
        s.last_used = Some(now_ms());
        self.dispatch_locked(&mut s);
        self.finish(s);
        Ok(())
    }

    /// Remove a consumer; returns true if the queue should now be auto-deleted.
    /// Like RabbitMQ 3.10, this does not deliver to the remaining consumers by itself (a single
    /// active consumer taking over is served at the next event: a publish, an ack, a requeue),
    /// so the messages a closing channel requeues go out first.
    pub fn remove_consumer(self: &Arc<Self>, c: &Arc<Consumer>) -> bool {
        if let Some(r) = self.replica() {
            r.remove_consumer(c);
        }
        let mut s = self.state.lock();
        c.active.store(false, Ordering::Relaxed);
        s.consumers.retain(|x| !Arc::ptr_eq(x, c));
        self.consumed
            .store(!s.consumers.is_empty(), Ordering::Relaxed);
        s.last_used = Some(now_ms());
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
        s.last_used = Some(now_ms());
        self.expire_head(&mut s, 0);
        let mut got = None;
        while got.is_none()
            && let Some(q) = s.ready.pop()
        {
            got = match q.held {
                Held::Mem(_) => self.load(q),
                Held::Disk { .. } => {
                    // Paged out (no read-ahead got to it yet): read without the lock, and
                    // have the next ones read ahead meanwhile.
                    self.read_ahead(&mut s);
                    drop(s);
                    let e = self.load(q);
                    s = self.state.lock();
                    if self.is_deleted() {
                        if let (Some(log), Some(e)) = (&self.log, &e) {
                            log.release(e.msg.store_id().into_iter().collect());
                        }
                        return None;
                    }
                    e
                }
            };
        }
        if let Some(e) = &got {
            s.counts.redeliver += e.redelivered as u64;
            if no_ack {
                s.counts.get_no_ack += 1;
                self.settled(e);
            } else {
                s.counts.get += 1;
                self.mark_delivered(e);
                s.hold(e.clone());
            }
        }
        let left = s.ready.len() as u32;
        self.finish(s);
        got.map(|e| (e, left))
    }

    /// Forget acked messages.
    pub fn ack(&self, seqs: &[u64]) {
        if let Some(r) = self.replica() {
            return r.ack(seqs);
        }
        let mut s = self.state.lock();
        for seq in seqs {
            if let Some(e) = s.unhold(*seq) {
                s.counts.ack += 1;
                self.settled(&e);
            }
        }
    }

    /// Put unacked messages back at their original positions, marked redelivered, and
    /// deliver again. Each return counts as a failed delivery: past `x-delivery-limit` the
    /// message is dead-lettered instead (reason `delivery_limit`).
    pub fn requeue(self: &Arc<Self>, seqs: &[u64]) {
        if let Some(r) = self.replica() {
            return r.requeue(seqs);
        }
        let mut s = self.state.lock();
        for seq in seqs {
            if let Some(mut e) = s.unhold(*seq) {
                e.redelivered = true;
                e.delivery_count += 1;
                if s.eff.counts_deliveries
                    && let (Some(log), Some(id)) = (&self.log, e.msg.store_id())
                {
                    log.append(
                        crate::store::log::count_record(id, &self.name, e.delivery_count),
                        None,
                    );
                }
                if s.eff
                    .delivery_limit
                    .is_some_and(|limit| e.delivery_count as u64 > limit)
                {
                    s.dead.push((e.into(), Reason::DeliveryLimit));
                } else {
                    s.ready.insert(e.into());
                }
            }
        }
        self.dispatch_locked(&mut s);
        self.finish(s);
    }

    /// Put back a message that was dispatched to a no-ack consumer but never written.
    pub fn return_undelivered(self: &Arc<Self>, e: Entry) {
        if self.replica().is_some() {
            // A no-ack delivery is settled in the group as it is made: at most once.
            return;
        }
        let mut s = self.state.lock();
        if self.is_deleted() {
            // Deletion released what the queue held; this one was on its way out.
            self.forget(&e);
            return;
        }
        s.ready.insert(e.into());
        self.dispatch_locked(&mut s);
        self.finish(s);
    }

    /// Put back a message that was dispatched (and recorded unacked) but never written: it
    /// keeps its redelivered flag, since the client never saw it.
    pub fn return_undelivered_unacked(self: &Arc<Self>, seq: u64) {
        if let Some(r) = self.replica() {
            return r.requeue(&[seq]);
        }
        let e = self.state.lock().unhold(seq);
        if let Some(e) = e {
            self.return_undelivered(e);
        }
    }

    /// Reject without requeue: the messages are dead-lettered (reason `rejected`) or dropped.
    pub fn discard(self: &Arc<Self>, seqs: &[u64]) {
        if let Some(r) = self.replica() {
            return r.discard(seqs);
        }
        let mut s = self.state.lock();
        for seq in seqs {
            if let Some(e) = s.unhold(*seq) {
                s.dead.push((e.into(), Reason::Rejected));
            }
        }
        self.finish(s);
    }

    /// Drop every ready message; returns how many (unacked ones stay, as in RabbitMQ).
    pub fn purge(&self) -> u32 {
        if let Some(r) = self.replica() {
            return r.purge();
        }
        let mut s = self.state.lock();
        let n = if self.log.is_none() {
            s.ready.clear() as u32
        } else {
            let mut n = 0;
            while let Some(e) = s.ready.pop() {
                self.forget_held(&e.held);
                n += 1;
            }
            n
        };
        let orphans = std::mem::take(&mut s.ready.orphans);
        drop(s);
        self.release(orphans);
        n
    }

    /// Estimated memory held by the ready messages' contents (paged-out ones hold none).
    pub fn memory(&self) -> u64 {
        self.state.lock().ready.memory()
    }

    /// (ready, unacked, consumers, memory held by ready and unacked messages), under one lock
    /// (management API, memory alarm).
    pub fn stats(&self) -> (u32, u32, u32, u64) {
        if let Some(r) = self.replica() {
            let (ready, held, consumers) = r.stats();
            return (ready, held, consumers, 0);
        }
        let s = self.state.lock();
        (
            s.ready.len() as u32,
            s.unacked.len() as u32,
            s.consumers.len() as u32,
            s.ready.memory() + s.unacked_mem,
        )
    }

    /// Up to `limit` ready messages from the head, without taking them: those held in memory,
    /// and how many of the rest are paged out (not read here: no disk reads under the lock).
    pub fn peek(&self, limit: usize) -> (Vec<Arc<Message>>, usize) {
        let s = self.state.lock();
        let mut paged_out = 0;
        let mut out = Vec::new();
        for q in s.ready.iter().take(limit) {
            match &q.held {
                Held::Mem(m) => out.push(m.clone()),
                Held::Disk { .. } => paged_out += 1,
            }
        }
        (out, paged_out)
    }

    /// What the queue did with messages since it was declared (or recovered).
    pub fn counts(&self) -> crate::stats::QueueCounts {
        self.state.lock().counts
    }

    /// Ready messages.
    pub fn message_count(&self) -> u32 {
        if let Some(r) = self.replica() {
            return r.stats().0;
        }
        self.state.lock().ready.len() as u32
    }

    /// Consumers.
    /// Whether it has a consumer, without taking the lock (a hint: it may change at once).
    pub fn has_consumers(&self) -> bool {
        self.consumed.load(Ordering::Relaxed)
    }

    pub fn consumer_count(&self) -> u32 {
        if let Some(r) = self.replica() {
            return r.stats().2;
        }
        self.state.lock().consumers.len() as u32
    }

    /// Record use (declare, get, consume) for `x-expires`.
    pub fn touch(&self) {
        self.state.lock().last_used = Some(now_ms());
    }

    /// When the queue was last used, if it is unused now (no consumers).
    pub fn idle_since(&self) -> Option<u64> {
        let s = self.state.lock();
        if s.consumers.is_empty() {
            s.last_used
        } else {
            None
        }
    }

    /// Mark deleted; returns the number of ready messages it had. The stored messages it held
    /// stop holding their log segments (the queue-deleted record, written first, drops them
    /// at recovery).
    pub fn mark_deleted(&self) -> u32 {
        self.deleted.store(true, Ordering::Release);
        if let Some(r) = self.replica() {
            let n = r.stats().0;
            r.close();
            for c in &self.state.lock().consumers {
                c.active.store(false, Ordering::Relaxed);
            }
            return n;
        }
        let mut s = self.state.lock();
        if let Some(log) = &self.log {
            let locs = s
                .ready
                .iter()
                .filter_map(|e| e.held.store_id())
                .chain(s.unacked.values().filter_map(|e| e.msg.store_id()))
                .collect();
            log.release(locs);
        }
        let n = s.ready.clear() as u32;
        let orphans = std::mem::take(&mut s.ready.orphans);
        self.release(orphans);
        s.unacked.clear();
        s.unacked_mem = 0;
        for c in &s.consumers {
            c.active.store(false, Ordering::Relaxed);
        }
        drop(s);
        self.timer.notify_one();
        n
    }

    /// Whether the queue was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }
}

/// One per queue with TTLs: sleeps until the head's deadline, expires (and dead-letters) what
/// is due in batches, and sleeps again; ends when the queue is gone or holds no deadline.
async fn expiry_task(queue: Weak<Queue>) {
    loop {
        let Some(q) = queue.upgrade() else { return };
        if q.is_deleted() {
            return;
        }
        let (more, next, dead) = {
            let mut s = q.state.lock();
            let more = q.expire_head(&mut s, 1);
            if !s.consumers.is_empty() {
                q.dispatch_locked(&mut s);
            }
            let next = if more {
                Some(0)
            } else {
                s.ready.front().and_then(Queued::expiry)
            };
            match next {
                None => {
                    s.timer_running = false;
                    s.timer_at = u64::MAX;
                }
                Some(at) => s.timer_at = at,
            }
            (more, next, std::mem::take(&mut s.dead))
        };
        if !dead.is_empty() {
            q.bury(dead);
        }
        let Some(at) = next else { return };
        if more {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = crate::clock::sleep_until(at) => {}
            _ = q.timer.notified() => {}
        }
    }
}

/// Bytes a delivery adds to its connection's backlog (frames overhead included).
pub fn delivery_size(e: &Entry) -> usize {
    e.msg.body.len()
        + e.msg.properties().len()
        + e.msg.routing_key().len()
        + e.msg.exchange().len()
        + 64
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
        Arc::new(Queue::new(
            "/",
            std::sync::Weak::<crate::vhost::VHost>::new(),
            def,
            QueueArgs::default(),
            None,
            None,
        ))
    }

    fn msg(b: &'static str) -> Arc<Message> {
        Arc::new(Message::new(
            b"",
            b"",
            &[0, 0],
            Bytes::from_static(b.as_bytes()),
        ))
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

#[cfg(test)]
mod size_tests {
    #[test]
    fn index_entries_are_40_bytes() {
        assert_eq!(std::mem::size_of::<super::Queued>(), 40);
        assert_eq!(
            std::mem::size_of::<crate::store::log::RecoveredMsg>(),
            std::mem::size_of::<super::Queued>()
        );
    }
}
