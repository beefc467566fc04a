//! The quorum-queue state machine (step 3 of docs/clustering.md), RabbitMQ's `rabbit_fifo` in
//! spirit: a queue's whole state — ready messages, consumers, which consumer holds which
//! message, delivery counts — changes only by applying log commands, deterministically, so
//! every member of the queue's Raft group holds the same state and a new leader carries on
//! where the old one stopped. Deliveries are *effects*: applying a command says which consumer
//! gets which message; the node where that consumer lives sends it.
//!
//! At-least-once across failures: a message leaves the queue only when its consumer's `settle`
//! is committed; a consumer that goes away (cancel, its channel or connection closed, its node
//! down) returns what it held, marked redelivered, delivery count + 1; past the delivery limit
//! a returned message is dead-lettered instead. A publisher's retry after a leader change is
//! recognised by its sequence number and enqueued once.
//!
//! Pure and synchronous (no I/O, no clock): `crate::queue::replica` runs it in a Raft group.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A message's id: the log index of its enqueue (unique and increasing).
pub type MsgId = u64;

/// A consumer, named as its node knows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConsumerKey {
    pub node: u64,
    pub conn: u64,
    pub channel: u16,
    pub tag: String,
}

/// A publisher whose enqueues carry sequence numbers (a channel in confirm mode).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublisherKey {
    pub node: u64,
    pub conn: u64,
    pub channel: u16,
}

/// A log command of a quorum queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum QueueCommand {
    /// A message; `publisher`'s `seq` makes a retried enqueue a no-op.
    Enqueue {
        publisher: Option<(PublisherKey, u64)>,
        #[serde(with = "b64")]
        body: Vec<u8>,
    },
    /// A consumer starts (or changes its prefetch; 0 = unlimited). A `no_ack` consumer's
    /// messages are settled as they are delivered.
    Checkout {
        consumer: ConsumerKey,
        prefetch: u32,
        #[serde(default)]
        no_ack: bool,
    },
    /// A consumer stops: what it holds goes back to the queue.
    Cancel { consumer: ConsumerKey },
    /// Acked: gone.
    Settle {
        consumer: ConsumerKey,
        ids: Vec<MsgId>,
    },
    /// Nacked or rejected with requeue: back to the queue, delivery count + 1.
    Return {
        consumer: ConsumerKey,
        ids: Vec<MsgId>,
    },
    /// Nacked or rejected without requeue: dead-lettered (`rejected`).
    Discard {
        consumer: ConsumerKey,
        ids: Vec<MsgId>,
    },
    /// A node left (crashed, partitioned away, its connections gone): its consumers are
    /// cancelled.
    Down { node: u64 },
    /// Every ready message removed (held ones stay with their consumers).
    Purge,
}

/// Why a message was dead-lettered (the `x-death` reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadReason {
    Rejected,
    DeliveryLimit,
}

/// What applying a command asks of the nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Effect {
    /// Send message `id` to `consumer` (the consumer's node does).
    Deliver {
        consumer: ConsumerKey,
        id: MsgId,
        redelivered: bool,
        delivery_count: u32,
    },
    /// Dead-letter message `id` (the leader routes it to the dead-letter exchange).
    DeadLetter { id: MsgId, reason: DeadReason },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Msg {
    #[serde(with = "b64")]
    body: Vec<u8>,
    /// Times returned to the queue (RabbitMQ's `x-delivery-count`).
    delivery_count: u32,
    /// Delivered at least once.
    delivered: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Consumer {
    prefetch: u32,
    held: BTreeSet<MsgId>,
    #[serde(default)]
    no_ack: bool,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        self.no_ack || self.prefetch == 0 || (self.held.len() as u32) < self.prefetch
    }
}

/// A quorum queue's replicated state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fifo {
    messages: BTreeMap<MsgId, Msg>,
    /// Ready messages in delivery order (returned ones go to the back, as RabbitMQ 3.10).
    ready: VecDeque<MsgId>,
    #[serde(with = "pairs")]
    consumers: BTreeMap<ConsumerKey, Consumer>,
    /// Consumers in round-robin order.
    service: VecDeque<ConsumerKey>,
    /// Highest sequence number enqueued per publisher.
    #[serde(with = "pairs")]
    publishers: BTreeMap<PublisherKey, u64>,
    /// Returns before a message is dead-lettered (`x-delivery-limit`; None: no limit).
    delivery_limit: Option<u32>,
    /// Delivered to no-ack consumers or dead-lettered by the last command: removed when the
    /// next is applied (after its effects were carried out: the node delivering or
    /// dead-lettering reads the bodies first).
    #[serde(default)]
    gone: Vec<MsgId>,
}

impl Fifo {
    pub fn new(delivery_limit: Option<u32>) -> Fifo {
        Fifo {
            delivery_limit,
            ..Default::default()
        }
    }

    /// Messages ready for delivery.
    pub fn ready(&self) -> usize {
        self.ready.len()
    }

    /// Messages held by consumers (delivered, not settled).
    pub fn held(&self) -> usize {
        self.consumers.values().map(|c| c.held.len()).sum()
    }

    /// A message's body.
    pub fn body(&self, id: MsgId) -> Option<&[u8]> {
        self.messages.get(&id).map(|m| m.body.as_slice())
    }

    /// Consumers, on every node.
    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    /// The nodes that have consumers.
    pub fn consumer_nodes(&self) -> BTreeSet<u64> {
        self.consumers.keys().map(|k| k.node).collect()
    }

    /// What `consumer` holds: each message's id and delivery count.
    pub fn held_by(&self, consumer: &ConsumerKey) -> Vec<(MsgId, u32)> {
        let Some(c) = self.consumers.get(consumer) else {
            return Vec::new();
        };
        c.held
            .iter()
            .filter_map(|id| Some((*id, self.messages.get(id)?.delivery_count)))
            .collect()
    }

    /// Whether `consumer` is checked out.
    pub fn has_consumer(&self, consumer: &ConsumerKey) -> bool {
        self.consumers.contains_key(consumer)
    }

    /// Apply the command at log index `index`.
    pub fn apply(&mut self, index: u64, cmd: QueueCommand) -> Vec<Effect> {
        for id in std::mem::take(&mut self.gone) {
            self.messages.remove(&id);
        }
        let mut effects = Vec::new();
        match cmd {
            QueueCommand::Enqueue { publisher, body } => {
                if let Some((p, seq)) = publisher {
                    let last = self.publishers.entry(p).or_insert(0);
                    if seq != 0 && seq <= *last {
                        return effects;
                    }
                    *last = seq;
                }
                self.messages.insert(
                    index,
                    Msg {
                        body,
                        delivery_count: 0,
                        delivered: false,
                    },
                );
                self.ready.push_back(index);
            }
            QueueCommand::Checkout {
                consumer,
                prefetch,
                no_ack,
            } => match self.consumers.get_mut(&consumer) {
                Some(c) => c.prefetch = prefetch,
                None => {
                    self.consumers.insert(
                        consumer.clone(),
                        Consumer {
                            prefetch,
                            held: BTreeSet::new(),
                            no_ack,
                        },
                    );
                    self.service.push_back(consumer);
                }
            },
            QueueCommand::Cancel { consumer } => self.remove_consumer(&consumer, &mut effects),
            QueueCommand::Settle { consumer, ids } => {
                for id in self.take_held(&consumer, &ids) {
                    self.messages.remove(&id);
                }
            }
            QueueCommand::Return { consumer, ids } => {
                for id in self.take_held(&consumer, &ids) {
                    self.give_back(id, &mut effects);
                }
            }
            QueueCommand::Discard { consumer, ids } => {
                for id in self.take_held(&consumer, &ids) {
                    self.gone.push(id);
                    effects.push(Effect::DeadLetter {
                        id,
                        reason: DeadReason::Rejected,
                    });
                }
            }
            QueueCommand::Down { node } => {
                let gone: Vec<ConsumerKey> = self
                    .consumers
                    .keys()
                    .filter(|k| k.node == node)
                    .cloned()
                    .collect();
                for k in gone {
                    self.remove_consumer(&k, &mut effects);
                }
            }
            QueueCommand::Purge => {
                for id in self.ready.drain(..) {
                    self.messages.remove(&id);
                }
            }
        }
        self.deliver(&mut effects);
        effects
    }

    /// The ids `consumer` holds among `ids` (others are ignored: settled twice, or not its).
    fn take_held(&mut self, consumer: &ConsumerKey, ids: &[MsgId]) -> Vec<MsgId> {
        let Some(c) = self.consumers.get_mut(consumer) else {
            return Vec::new();
        };
        ids.iter().filter(|id| c.held.remove(id)).copied().collect()
    }

    fn remove_consumer(&mut self, consumer: &ConsumerKey, effects: &mut Vec<Effect>) {
        let Some(c) = self.consumers.remove(consumer) else {
            return;
        };
        self.service.retain(|k| k != consumer);
        for id in c.held {
            self.give_back(id, effects);
        }
    }

    /// A held message back to the queue, or dead-lettered past the delivery limit.
    fn give_back(&mut self, id: MsgId, effects: &mut Vec<Effect>) {
        let Some(m) = self.messages.get_mut(&id) else {
            return;
        };
        m.delivery_count += 1;
        if self.delivery_limit.is_some_and(|l| m.delivery_count > l) {
            self.gone.push(id);
            effects.push(Effect::DeadLetter {
                id,
                reason: DeadReason::DeliveryLimit,
            });
        } else {
            self.ready.push_back(id);
        }
    }

    /// Hand ready messages to consumers with credit, round robin.
    fn deliver(&mut self, effects: &mut Vec<Effect>) {
        let mut idle = 0;
        while !self.ready.is_empty() && idle < self.service.len() {
            let key = self.service.pop_front().unwrap();
            let c = self.consumers.get_mut(&key).unwrap();
            if !c.has_credit() {
                self.service.push_back(key);
                idle += 1;
                continue;
            }
            idle = 0;
            let id = self.ready.pop_front().unwrap();
            let m = self.messages.get_mut(&id).unwrap();
            effects.push(Effect::Deliver {
                consumer: key.clone(),
                id,
                redelivered: m.delivered,
                delivery_count: m.delivery_count,
            });
            m.delivered = true;
            if c.no_ack {
                // Settled as it goes: the effect is applied before the next command, and
                // the node delivering it reads the body from the effect's message.
                self.gone.push(id);
            } else {
                c.held.insert(id);
            }
            self.service.push_back(key);
        }
    }
}

/// Bytes as base64 (JSON would write an array of numbers).
mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// Maps with structured keys as lists of pairs (JSON keys must be strings).
mod pairs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub(super) fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        m: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub(super) fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn consumer(node: u64, tag: &str) -> ConsumerKey {
        ConsumerKey {
            node,
            conn: 1,
            channel: 1,
            tag: tag.into(),
        }
    }

    fn enqueue(body: &str) -> QueueCommand {
        QueueCommand::Enqueue {
            publisher: None,
            body: body.as_bytes().to_vec(),
        }
    }

    fn delivered(effects: &[Effect]) -> Vec<(String, MsgId, bool, u32)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Deliver {
                    consumer,
                    id,
                    redelivered,
                    delivery_count,
                } => Some((consumer.tag.clone(), *id, *redelivered, *delivery_count)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn round_robin_within_prefetch_then_settle_frees_credit() {
        let mut f = Fifo::new(None);
        let (a, b) = (consumer(1, "a"), consumer(2, "b"));
        f.apply(
            1,
            QueueCommand::Checkout {
                consumer: a.clone(),
                prefetch: 1,
                no_ack: false,
            },
        );
        f.apply(
            2,
            QueueCommand::Checkout {
                consumer: b.clone(),
                prefetch: 1,
                no_ack: false,
            },
        );
        let mut got = Vec::new();
        for i in 3..6 {
            got.extend(delivered(&f.apply(i, enqueue("m"))));
        }
        assert_eq!(got, [("a".into(), 3, false, 0), ("b".into(), 4, false, 0)]);
        assert_eq!((f.ready(), f.held()), (1, 2));
        let e = f.apply(
            6,
            QueueCommand::Settle {
                consumer: a.clone(),
                ids: vec![3],
            },
        );
        assert_eq!(delivered(&e), [("a".into(), 5, false, 0)]);
        // Settling what it does not hold (again, or another's) changes nothing.
        let before = f.clone();
        f.apply(
            7,
            QueueCommand::Settle {
                consumer: a,
                ids: vec![3, 4],
            },
        );
        assert_eq!(f, before);
    }

    #[test]
    fn a_node_down_returns_its_messages_redelivered_and_the_limit_dead_letters() {
        let mut f = Fifo::new(Some(1));
        let (a, b) = (consumer(1, "a"), consumer(2, "b"));
        f.apply(1, enqueue("m"));
        f.apply(
            2,
            QueueCommand::Checkout {
                consumer: a.clone(),
                prefetch: 0,
                no_ack: false,
            },
        );
        // Node 1 goes down: the message goes to b, redelivered, count 1.
        let e = f.apply(
            3,
            QueueCommand::Checkout {
                consumer: b.clone(),
                prefetch: 0,
                no_ack: false,
            },
        );
        assert!(delivered(&e).is_empty());
        let e = f.apply(4, QueueCommand::Down { node: 1 });
        assert_eq!(delivered(&e), [("b".into(), 1, true, 1)]);
        // Returned once more: past the limit of 1, dead-lettered.
        let e = f.apply(
            5,
            QueueCommand::Return {
                consumer: b.clone(),
                ids: vec![1],
            },
        );
        assert_eq!(
            e,
            [Effect::DeadLetter {
                id: 1,
                reason: DeadReason::DeliveryLimit
            }]
        );
        assert_eq!((f.ready(), f.held()), (0, 0));
        f.apply(6, enqueue("n"));
        let e = f.apply(
            7,
            QueueCommand::Discard {
                consumer: b,
                ids: vec![6],
            },
        );
        assert_eq!(
            e,
            [Effect::DeadLetter {
                id: 6,
                reason: DeadReason::Rejected
            }]
        );
    }

    #[test]
    fn a_publishers_retry_is_enqueued_once() {
        let mut f = Fifo::new(None);
        let p = PublisherKey {
            node: 1,
            conn: 1,
            channel: 1,
        };
        for (i, seq) in [(1, 1), (2, 2), (3, 2), (4, 1), (5, 3)] {
            f.apply(
                i,
                QueueCommand::Enqueue {
                    publisher: Some((p.clone(), seq)),
                    body: vec![],
                },
            );
        }
        assert_eq!(f.ready(), 3);
    }

    /// Random commands against the invariants: every message is either ready, held by exactly
    /// one consumer, or gone; what was settled or dead-lettered is never delivered again; no
    /// consumer holds more than its prefetch; two replicas applying the same commands agree on
    /// state and effects.
    #[test]
    fn random_commands_keep_the_invariants_and_replicas_agree() {
        for seed in 0..30u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut f = Fifo::new(if seed % 2 == 0 { Some(3) } else { None });
            let mut replica = f.clone();
            let mut gone: BTreeSet<MsgId> = BTreeSet::new();
            let mut enqueued = 0usize;
            let keys: Vec<ConsumerKey> =
                (0..4).map(|i| consumer(i % 3, &format!("c{i}"))).collect();
            for index in 1..2000u64 {
                let k = keys[rng.gen_range(0..keys.len())].clone();
                let held: Vec<MsgId> = f
                    .consumers
                    .get(&k)
                    .map(|c| c.held.iter().copied().collect())
                    .unwrap_or_default();
                let some: Vec<MsgId> = held.iter().copied().filter(|_| rng.gen_bool(0.5)).collect();
                let cmd = match rng.gen_range(0..10) {
                    0..=3 => {
                        enqueued += 1;
                        enqueue("x")
                    }
                    4 => QueueCommand::Checkout {
                        consumer: k,
                        prefetch: rng.gen_range(0..4),
                        no_ack: rng.gen_bool(0.2),
                    },
                    5 => QueueCommand::Cancel { consumer: k },
                    6 | 7 => QueueCommand::Settle {
                        consumer: k,
                        ids: some,
                    },
                    8 => QueueCommand::Return {
                        consumer: k,
                        ids: some,
                    },
                    _ => match rng.gen_range(0..3) {
                        0 => QueueCommand::Discard {
                            consumer: k,
                            ids: some,
                        },
                        1 => QueueCommand::Down {
                            node: rng.gen_range(0..3),
                        },
                        _ => QueueCommand::Purge,
                    },
                };
                if let QueueCommand::Settle { ids, .. } = &cmd {
                    gone.extend(ids);
                }
                let purged: Vec<MsgId> = if cmd == QueueCommand::Purge {
                    f.ready.iter().copied().collect()
                } else {
                    Vec::new()
                };
                gone.extend(purged);
                let e = f.apply(index, cmd.clone());
                assert_eq!(e, replica.apply(index, cmd), "seed {seed}: replicas differ");
                for x in &e {
                    match x {
                        Effect::Deliver { id, consumer, .. } => {
                            assert!(
                                !gone.contains(id),
                                "seed {seed}: {id} delivered after it left"
                            );
                            let c = &f.consumers[consumer];
                            assert!(c.prefetch == 0 || c.held.len() as u32 <= c.prefetch);
                            if c.no_ack {
                                // Settled on delivery.
                                assert!(f.gone.contains(id) && f.body(*id).is_some());
                                gone.insert(*id);
                            }
                        }
                        Effect::DeadLetter { id, .. } => {
                            gone.insert(*id);
                        }
                    }
                }
                // Each message in exactly one place.
                let mut places: BTreeMap<MsgId, u32> = BTreeMap::new();
                for id in &f.ready {
                    *places.entry(*id).or_default() += 1;
                }
                for c in f.consumers.values() {
                    for id in &c.held {
                        *places.entry(*id).or_default() += 1;
                    }
                }
                assert!(places.values().all(|n| *n == 1), "seed {seed}: {places:?}");
                assert_eq!(
                    places.keys().collect::<Vec<_>>(),
                    f.messages
                        .keys()
                        .filter(|id| !f.gone.contains(id))
                        .collect::<Vec<_>>()
                );
                assert_eq!(
                    f.messages.len() - f.gone.len() + gone.len(),
                    enqueued,
                    "seed {seed}"
                );
            }
            assert_eq!(f, replica);
            // A snapshot (serialized state) restores the same queue.
            let copy: Fifo = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
            assert_eq!(copy, f);
        }
    }
}
