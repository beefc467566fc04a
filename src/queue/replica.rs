//! A quorum queue replicated over the cluster (step 3 of docs/clustering.md): the queue's
//! state is a [`Fifo`] in a Raft group of its own, with every voter of the metadata group as a
//! member. Every change (a publish, a consumer starting or stopping, an ack, a requeue, a
//! reject) is a log command proposed through the group's leader, and applied on every member
//! in log order; deliveries are effects of applying, carried out by the node of the consumer
//! they name, from its own copy of the message. So a client publishes through any node, the
//! confirm goes out once a majority holds the message, and a consumer on any node gets
//! messages whichever node leads.
//!
//! Failures: a consumer's node that stops answering is declared down by the group's leader
//! (its consumers' messages go back to the queue, redelivered, delivery count + 1); a node
//! that starts (or restarts) declares its own old consumers down first; a node that was
//! declared down while alive (a partition) checks its live consumers out again.
//!
//! The channel drives a replicated queue through the same `Queue` methods as a local one
//! (`publish`, `add_consumer`, `ack`, ...): those hand commands to this module's proposer
//! task and return at once; confirms wait for the commit (the `Done` of the publish).

use super::consumer::{ConnEvent, Consumer, Delivery};
use super::dead_letter::Reason;
use super::{Entry, Queue};
use crate::cluster::fifo::{
    ConsumerKey, DeadReason, Effect, Fifo, MsgId, PublisherKey, QueueCommand,
};
use crate::cluster::{Apply, Cluster, Command, Group, Reply};
use crate::message::Message;
use crate::store::log::Done;
use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a publish waits for its commit before it is nacked.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Commands and bytes of bodies per log entry: one entry holds a batch of what the node's
/// channels asked for meanwhile.
const BATCH_COMMANDS: usize = 4096;
const BATCH_BYTES: usize = 8 << 20;

/// Log entries between snapshots of a queue's group (a snapshot holds every message).
const SNAPSHOT_EVERY: u64 = 10_000;

/// How long a consumer's node may go unheard before the leader declares it down.
const DOWN_AFTER: Duration = Duration::from_secs(5);

/// A command waiting to be proposed, and who waits for its commit.
struct Pending {
    cmd: QueueCommand,
    done: Option<Done>,
}

/// What the group's state machine and the queue's methods share.
struct Shared {
    node: u64,
    queue: OnceLock<Weak<Queue>>,
    group: OnceLock<Weak<Group>>,
    state: Mutex<State>,
    tx: mpsc::UnboundedSender<Pending>,
}

struct State {
    fifo: Fifo,
    /// This node's consumers of the queue.
    local: HashMap<ConsumerKey, Arc<Consumer>>,
    /// Messages delivered to this node's consumers and not settled yet, and whose.
    held: HashMap<MsgId, ConsumerKey>,
    /// Messages this node's consumers settled, returned or rejected, whose command is not
    /// applied yet (a snapshot installed meanwhile still shows them held: not delivered
    /// again).
    settling: std::collections::HashSet<MsgId>,
}

/// A quorum queue's member on this node.
pub struct Replica {
    shared: Arc<Shared>,
    group: OnceLock<Arc<Group>>,
    cluster: Weak<Cluster>,
    dir: std::path::PathBuf,
    stop: CancellationToken,
    /// This node's enqueues carry this key and increasing numbers: a batch proposed again
    /// after its answer was lost (its leader died after committing it) is enqueued once.
    /// The key is new at every start (numbers start again at 1).
    publisher: PublisherKey,
    next_seq: Mutex<u64>,
}

/// A message as the log carries it: exchange, routing key, properties and body.
pub fn encode(msg: &Message) -> Vec<u8> {
    let (x, rk, p) = (msg.exchange(), msg.routing_key(), msg.properties());
    let mut out = Vec::with_capacity(12 + x.len() + rk.len() + p.len() + msg.body.len());
    for part in [x, rk, p] {
        out.extend_from_slice(&(part.len() as u32).to_le_bytes());
    }
    for part in [x, rk, p, &msg.body[..]] {
        out.extend_from_slice(part);
    }
    out
}

/// The message [`encode`] wrote (None if the bytes are not one).
pub fn decode(bytes: &[u8]) -> Option<Message> {
    let len = |i: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(i * 4..i * 4 + 4)?.try_into().ok()?) as usize)
    };
    let (xl, rl, pl) = (len(0)?, len(1)?, len(2)?);
    let rest = bytes.get(12..)?;
    if rest.len() < xl.checked_add(rl)?.checked_add(pl)? {
        return None;
    }
    let (x, rest) = rest.split_at(xl);
    let (rk, rest) = rest.split_at(rl);
    let (props, body) = rest.split_at(pl);
    let mut m = Message::new(x, rk, props, Bytes::copy_from_slice(body));
    m.priority = crate::message::peek_properties(props).priority;
    m.persistent = true;
    Some(m)
}

/// One completion split in `n` parts: it runs once every part has, with whether all
/// succeeded. A part dropped without being run counts as a success (a queue that did not need
/// to wait). `None` gives `n` empty parts.
pub fn split_done(done: Option<Done>, n: usize) -> Vec<Option<Done>> {
    struct Join {
        done: Mutex<Option<Done>>,
        left: std::sync::atomic::AtomicUsize,
        ok: std::sync::atomic::AtomicBool,
    }
    impl Join {
        fn finish(&self, ok: bool) {
            if !ok {
                self.ok.store(false, Ordering::Relaxed);
            }
            if self.left.fetch_sub(1, Ordering::AcqRel) == 1
                && let Some(d) = self.done.lock().take()
            {
                d(self.ok.load(Ordering::Relaxed));
            }
        }
    }
    struct Part(Arc<Join>, bool);
    impl Drop for Part {
        fn drop(&mut self) {
            if !self.1 {
                self.0.finish(true);
            }
        }
    }
    let Some(done) = done else {
        return (0..n).map(|_| None).collect();
    };
    let join = Arc::new(Join {
        done: Mutex::new(Some(done)),
        left: std::sync::atomic::AtomicUsize::new(n),
        ok: std::sync::atomic::AtomicBool::new(true),
    });
    (0..n)
        .map(|_| {
            let mut part = Part(join.clone(), false);
            Some(Box::new(move |ok: bool| {
                part.1 = true;
                part.0.finish(ok);
            }) as Done)
        })
        .collect()
}

/// A consumer's name in the group: its node, its connection (mixed with the node's
/// incarnation, so that a consumer after a restart is never taken for one from before, whose
/// deliveries the restarted node may re-apply from its log), channel and tag.
fn key(node: u64, incarnation: u64, c: &Consumer) -> ConsumerKey {
    ConsumerKey {
        node,
        conn: c.conn_id ^ incarnation,
        channel: c.channel,
        tag: c.tag.to_string(),
    }
}

impl Replica {
    /// Make `queue` replicated: its member of the queue's group starts (or restarts, from its
    /// files under `data_dir/cluster/queues/<group>`) in a task; what the queue is asked
    /// meanwhile waits in the proposer's queue.
    pub fn attach(cluster: &Arc<Cluster>, queue: &Arc<Queue>) {
        if queue.replica().is_some() {
            return;
        }
        let id = crate::cluster::queue_group(&queue.vhost, &queue.name);
        let dir = cluster.dir().join("queues").join(format!("{id:016x}"));
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            node: cluster.id,
            queue: OnceLock::new(),
            group: OnceLock::new(),
            state: Mutex::new(State {
                fifo: Fifo::new(
                    queue
                        .args
                        .delivery_limit
                        .map(|l| l.min(u32::MAX as u64) as u32),
                ),
                local: HashMap::new(),
                held: HashMap::new(),
                settling: Default::default(),
            }),
            tx,
        });
        let _ = shared.queue.set(Arc::downgrade(queue));
        // This node's consumers from before (a restart) are gone: first in its queue.
        let _ = shared.tx.send(Pending {
            cmd: QueueCommand::Down { node: cluster.id },
            done: None,
        });
        let replica = Arc::new(Replica {
            shared: shared.clone(),
            group: OnceLock::new(),
            cluster: Arc::downgrade(cluster),
            dir: dir.clone(),
            stop: CancellationToken::new(),
            publisher: PublisherKey {
                node: cluster.id,
                conn: rand::random(),
                channel: 0,
            },
            next_seq: Mutex::new(1),
        });
        queue.set_replica(replica.clone());
        let members = cluster.voters();
        // The leader of each queue's group: spread over the members by the group id.
        let ids: Vec<u64> = members.keys().copied().collect();
        let prefer = !ids.is_empty() && ids[(id % ids.len() as u64) as usize] == cluster.id;
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let machine = Arc::new(Machine(shared.clone()));
            let group = match cluster
                .open_group(id, &dir, machine, members, SNAPSHOT_EVERY, prefer)
                .await
            {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(group = id, error = %e, "quorum queue: its group did not start");
                    return;
                }
            };
            let _ = shared.group.set(Arc::downgrade(&group));
            let _ = replica.group.set(group.clone());
            if replica.stop.is_cancelled() {
                cluster.forget_group(id);
                group.shutdown().await;
                return;
            }
            tokio::spawn(watch_nodes(Arc::downgrade(&replica)));
            propose_loop(group, rx, replica.stop.clone()).await;
        });
    }

    /// The group, once started (tests look at its leader).
    pub fn group(&self) -> Option<&Arc<Group>> {
        self.group.get()
    }

    fn send(&self, cmd: QueueCommand, done: Option<Done>) {
        if let Err(e) = self.shared.tx.send(Pending { cmd, done })
            && let Some(d) = e.0.done
        {
            d(false);
        }
    }

    /// Enqueue a message; `done` (a publisher confirm) hears whether a majority took it.
    pub fn enqueue(&self, msg: &Message, done: Option<Done>) {
        let body = encode(msg);
        // Numbered and sent under one lock, so that numbers reach the log in order.
        let mut next = self.next_seq.lock();
        self.send(
            QueueCommand::Enqueue {
                publisher: Some((self.publisher.clone(), *next)),
                body,
            },
            done,
        );
        *next += 1;
    }

    /// A consumer of this node starts.
    pub fn add_consumer(&self, c: Arc<Consumer>) {
        let k = key(self.shared.node, self.publisher.conn, &c);
        let cmd = QueueCommand::Checkout {
            consumer: k.clone(),
            prefetch: c.prefetch,
            no_ack: c.no_ack,
        };
        self.shared.state.lock().local.insert(k, c);
        self.send(cmd, None);
    }

    /// A consumer of this node stops: what it holds goes back to the queue.
    pub fn remove_consumer(&self, c: &Arc<Consumer>) {
        let k = key(self.shared.node, self.publisher.conn, c);
        self.shared.state.lock().local.remove(&k);
        self.send(QueueCommand::Cancel { consumer: k }, None);
    }

    /// This node's consumers.
    pub fn consumers(&self) -> Vec<Arc<Consumer>> {
        self.shared.state.lock().local.values().cloned().collect()
    }

    /// Settle (`Settle`), return (`Return`) or reject (`Discard`) messages delivered on this
    /// node, grouped by the consumer that holds them.
    fn settle(&self, ids: &[u64], make: fn(ConsumerKey, Vec<MsgId>) -> QueueCommand) {
        let mut by: HashMap<ConsumerKey, Vec<MsgId>> = HashMap::new();
        {
            let mut s = self.shared.state.lock();
            for id in ids {
                if let Some(k) = s.held.remove(id) {
                    s.settling.insert(*id);
                    by.entry(k).or_default().push(*id);
                }
            }
        }
        for (k, ids) in by {
            self.send(make(k, ids), None);
        }
    }

    pub fn ack(&self, ids: &[u64]) {
        self.settle(ids, |consumer, ids| QueueCommand::Settle { consumer, ids });
    }

    pub fn requeue(&self, ids: &[u64]) {
        self.settle(ids, |consumer, ids| QueueCommand::Return { consumer, ids });
    }

    pub fn discard(&self, ids: &[u64]) {
        self.settle(ids, |consumer, ids| QueueCommand::Discard { consumer, ids });
    }

    /// Remove every ready message; returns how many there were as this node knows.
    pub fn purge(&self) -> u32 {
        let n = self.shared.state.lock().fifo.ready() as u32;
        self.send(QueueCommand::Purge, None);
        n
    }

    /// The group's leader, its members and those of them that answer, by name (the
    /// management API's `leader`, `members` and `online`).
    pub fn placement(&self) -> (Option<String>, Vec<String>, Vec<String>) {
        let Some(g) = self.group.get() else {
            return (None, Vec::new(), Vec::new());
        };
        let (members, leader) = g.members();
        let cluster = self.cluster.upgrade();
        let online = members
            .iter()
            .filter(|(id, _)| cluster.as_ref().is_some_and(|c| c.is_running(*id)))
            .map(|(_, n)| n.clone())
            .collect();
        let mut names: Vec<String> = members.into_iter().map(|(_, n)| n).collect();
        names.sort();
        (leader, names, online)
    }

    /// (ready, held by consumers, consumers on every node).
    pub fn stats(&self) -> (u32, u32, u32) {
        let s = self.shared.state.lock();
        (
            s.fifo.ready() as u32,
            s.fifo.held() as u32,
            s.fifo.consumer_count() as u32,
        )
    }

    /// The queue was deleted: stop this member and remove its files.
    pub fn close(self: &Arc<Self>) {
        self.stop.cancel();
        let me = self.clone();
        tokio::spawn(async move {
            if let Some(g) = me.group.get() {
                if let Some(c) = me.cluster.upgrade() {
                    c.forget_group(g.id);
                }
                g.shutdown().await;
            }
            let _ = std::fs::remove_dir_all(&me.dir);
        });
    }

    /// Stop this member (the node stops), keeping its files.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        if let Some(g) = self.group.get() {
            g.shutdown().await;
        }
    }
}

/// Proposes what the queue's methods asked for, in order, a batch per log entry. A failed
/// publish is nacked; other commands are retried until they commit (settling, returning and
/// cancelling twice change nothing).
async fn propose_loop(
    group: Arc<Group>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    stop: CancellationToken,
) {
    let mut carry: Vec<Pending> = Vec::new();
    loop {
        if carry.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                p = rx.recv() => match p {
                    Some(p) => carry.push(p),
                    None => return,
                },
            }
        }
        let mut bytes: usize = carry.iter().map(|p| cmd_size(&p.cmd)).sum();
        while carry.len() < BATCH_COMMANDS && bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += cmd_size(&p.cmd);
                    carry.push(p);
                }
                Err(_) => break,
            }
        }
        let batch = std::mem::take(&mut carry);
        let cmds: Vec<QueueCommand> = batch.iter().map(|p| p.cmd.clone()).collect();
        let r = tokio::select! {
            _ = stop.cancelled() => return,
            r = group.propose(Command::Queue(cmds), PUBLISH_TIMEOUT) => r,
        };
        let ok = matches!(&r, Ok(reply) if reply.error.is_none());
        if !ok {
            tracing::debug!(group = group.id, error = ?r, "quorum queue: a batch did not commit");
        }
        for p in batch {
            match (ok, p.done) {
                (true, Some(d)) => d(true),
                (false, Some(d)) => d(false),
                (true, None) => {}
                (false, None) => {
                    // A failed verdict that a node is down is not kept: the leader judges
                    // again if it still holds.
                    let retry = match &p.cmd {
                        QueueCommand::Enqueue { .. } => false,
                        QueueCommand::Down { node } => *node == group_node(&group),
                        _ => true,
                    };
                    if retry {
                        carry.push(Pending {
                            cmd: p.cmd,
                            done: None,
                        });
                    }
                }
            }
        }
        if !carry.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}

/// This node's id, as the group knows it.
fn group_node(g: &Group) -> u64 {
    g.raft().metrics().borrow().id
}

fn cmd_size(c: &QueueCommand) -> usize {
    match c {
        QueueCommand::Enqueue { body, .. } => body.len() + 64,
        _ => 64,
    }
}

/// On the group's leader: a node with consumers that has not been heard from for
/// [`DOWN_AFTER`] is declared down.
async fn watch_nodes(replica: Weak<Replica>) {
    let mut unseen: HashMap<u64, tokio::time::Instant> = HashMap::new();
    loop {
        let Some(r) = replica.upgrade() else { return };
        if r.stop.is_cancelled() {
            return;
        }
        // Only a leader a majority hears from judges (an isolated leader sees everyone
        // gone, and its verdict would land after the partition heals).
        if let Some(c) = r.cluster.upgrade()
            && r.group
                .get()
                .is_some_and(|g| g.leads_a_quorum(Duration::from_secs(1)))
        {
            let nodes = r.shared.state.lock().fifo.consumer_nodes();
            let now = tokio::time::Instant::now();
            unseen.retain(|n, _| nodes.contains(n));
            for n in nodes {
                if c.is_running(n) {
                    unseen.remove(&n);
                    continue;
                }
                let since = *unseen.entry(n).or_insert(now);
                if now.duration_since(since) >= DOWN_AFTER {
                    tracing::info!(queue = %r.shared.name(), node = n, "quorum queue: a consumer's node is down");
                    r.send(QueueCommand::Down { node: n }, None);
                    unseen.remove(&n);
                }
            }
        } else {
            unseen.clear();
        }
        let stop = r.stop.clone();
        drop(r);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The group's state machine: the fifo, and the effects this node carries out.
struct Machine(Arc<Shared>);

impl Shared {
    fn name(&self) -> String {
        match self.queue.get().and_then(Weak::upgrade) {
            Some(q) => q.resource(),
            None => String::new(),
        }
    }

    fn apply(&self, index: u64, cmds: Vec<QueueCommand>) {
        let queue = self.queue.get().and_then(Weak::upgrade);
        let leader = self
            .group
            .get()
            .and_then(Weak::upgrade)
            .is_some_and(|g| g.is_leader());
        let mut dead: Vec<(Entry, Reason)> = Vec::new();
        let mut s = self.state.lock();
        for (i, cmd) in cmds.into_iter().enumerate() {
            // Message ids: the entry's index and the command's place in it.
            let id = (index << 16) | i as u64;
            let me_down = matches!(cmd, QueueCommand::Down { node } if node == self.node);
            if let QueueCommand::Settle { consumer, ids }
            | QueueCommand::Return { consumer, ids }
            | QueueCommand::Discard { consumer, ids } = &cmd
                && consumer.node == self.node
            {
                for id in ids {
                    s.settling.remove(id);
                }
            }
            let effects = s.fifo.apply(id, cmd);
            if me_down {
                self.rejoin(&mut s);
            }
            for e in effects {
                match e {
                    Effect::Deliver {
                        consumer,
                        id,
                        redelivered,
                        delivery_count,
                    } => {
                        if consumer.node == self.node
                            && let Some(q) = &queue
                        {
                            self.deliver(&mut s, q, consumer, id, redelivered, delivery_count);
                        }
                    }
                    Effect::DeadLetter { id, reason } => {
                        // The leader dead-letters (from its copy, still readable until the
                        // next command is applied).
                        if leader && let Some(msg) = s.fifo.body(id).and_then(decode) {
                            dead.push((
                                Entry {
                                    seq: id,
                                    msg: Arc::new(msg),
                                    redelivered: true,
                                    expires_at: None,
                                    delivery_count: 0,
                                },
                                match reason {
                                    DeadReason::Rejected => Reason::Rejected,
                                    DeadReason::DeliveryLimit => Reason::DeliveryLimit,
                                },
                            ));
                        }
                    }
                }
            }
        }
        drop(s);
        if let (Some(q), false) = (queue, dead.is_empty()) {
            q.bury_replicated(dead);
        }
    }

    /// Send message `id` to this node's `consumer` (if it is still here: else its cancel
    /// is on its way and returns the message).
    fn deliver(
        &self,
        s: &mut State,
        q: &Arc<Queue>,
        consumer: ConsumerKey,
        id: MsgId,
        redelivered: bool,
        delivery_count: u32,
    ) {
        let Some(c) = s.local.get(&consumer).cloned() else {
            return;
        };
        let Some(msg) = s.fifo.body(id).and_then(decode) else {
            return;
        };
        let entry = Entry {
            seq: id,
            msg: Arc::new(msg),
            redelivered,
            expires_at: None,
            delivery_count,
        };
        let size = super::delivery_size(&entry);
        c.take_credit();
        c.backlog.events.fetch_add(size, Ordering::Relaxed);
        if !c.no_ack {
            s.held.insert(id, consumer);
        }
        let d = Delivery {
            consumer: c.clone(),
            queue: q.clone(),
            entry,
        };
        if c.events.send(ConnEvent::Deliver(d)).is_err() {
            // The connection is gone: its channel's close cancels the consumer.
            c.backlog.events.fetch_sub(size, Ordering::Relaxed);
            c.return_credit(1);
            s.held.remove(&id);
        }
    }

    /// This node was declared down while alive (a partition): its consumers' messages went
    /// back to the queue; check the consumers that are still here out again.
    fn rejoin(&self, s: &mut State) {
        let mine: Vec<ConsumerKey> = s.held.values().cloned().collect();
        for k in mine {
            if !s.fifo.has_consumer(&k) {
                s.held.retain(|_, v| *v != k);
            }
        }
        for (k, c) in &s.local {
            if !s.fifo.has_consumer(k) {
                let _ = self.tx.send(Pending {
                    cmd: QueueCommand::Checkout {
                        consumer: k.clone(),
                        prefetch: c.prefetch,
                        no_ack: c.no_ack,
                    },
                    done: None,
                });
            }
        }
    }

    /// After a snapshot was installed (deliveries in the entries it covers were never carried
    /// out here): deliver what the fifo says this node's consumers hold and this node has
    /// not delivered; forget deliveries the fifo no longer has.
    fn reconcile(&self) {
        let queue = self.queue.get().and_then(Weak::upgrade);
        let mut s = self.state.lock();
        let State {
            fifo,
            held,
            settling,
            local,
        } = &mut *s;
        held.retain(|id, k| fifo.held_by(k).iter().any(|(h, _)| h == id));
        let still: std::collections::HashSet<MsgId> = local
            .keys()
            .flat_map(|k| fifo.held_by(k).into_iter().map(|(id, _)| id))
            .collect();
        settling.retain(|id| still.contains(id));
        let Some(q) = queue else { return };
        let keys: Vec<ConsumerKey> = s.local.keys().cloned().collect();
        for k in keys {
            for (id, count) in s.fifo.held_by(&k) {
                if !s.held.contains_key(&id) && !s.settling.contains(&id) {
                    self.deliver(&mut s, &q, k.clone(), id, true, count);
                }
            }
        }
        self.rejoin(&mut s);
    }
}

impl Apply for Machine {
    fn apply(&self, index: u64, cmd: Command) -> BoxFuture<'static, Reply> {
        if let Command::Queue(cmds) = cmd {
            self.0.apply(index, cmds);
        }
        Box::pin(async { Reply::default() })
    }

    fn snapshot(&self) -> BoxFuture<'static, Vec<u8>> {
        let bytes = serde_json::to_vec(&self.0.state.lock().fifo).unwrap_or_default();
        Box::pin(async move { bytes })
    }

    fn install(&self, data: Vec<u8>) -> BoxFuture<'static, ()> {
        match serde_json::from_slice::<Fifo>(&data) {
            Ok(f) => {
                self.0.state.lock().fifo = f;
                self.0.reconcile();
            }
            Err(e) => tracing::error!(error = %e, "quorum queue: unreadable snapshot"),
        }
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_completion_runs_once_all_parts_did() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let mut parts = split_done(Some(Box::new(move |ok| g.lock().push(ok))), 3);
        let (a, b, c) = (parts.remove(0), parts.remove(0), parts.remove(0));
        a.unwrap()(true);
        drop(b);
        assert!(got.lock().is_empty());
        c.unwrap()(false);
        assert_eq!(*got.lock(), [false]);
        let g = got.clone();
        let parts = split_done(Some(Box::new(move |ok| g.lock().push(ok))), 2);
        drop(parts);
        assert_eq!(*got.lock(), [false, true]);
        assert!(split_done(None, 2).iter().all(Option::is_none));
    }

    #[test]
    fn messages_round_trip_and_bad_bytes_are_refused() {
        let m = Message::new(b"x", b"rk", &[0x80, 0, 2], Bytes::from_static(b"body"));
        let back = decode(&encode(&m)).unwrap();
        assert_eq!(
            (back.exchange(), back.routing_key(), back.properties()),
            (&b"x"[..], &b"rk"[..], &[0x80, 0, 2][..])
        );
        assert_eq!(&back.body[..], b"body");
        // Cut inside the header or the exchange, key and properties: refused.
        let bytes = encode(&m);
        for cut in 0..12 + 1 + 2 + 3 {
            assert!(decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_none());
    }
}
