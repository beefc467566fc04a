//! Virtual hosts: the topology shared by every connection (exchanges, queues, bindings) in
//! concurrent maps (`DashMap`), looked up here; declaring, deleting and binding with RabbitMQ's
//! rules in [`topology`], routing in [`routing`], durability (open/recover, the definitions
//! journal, compaction) in [`persist`]. Durable topology changes are serialised by the
//! definitions lock ([`VHost::topology`]); routing reads one exchange's bindings at a time.
//! No message bodies are kept here, and nothing here knows connections: consumers learn of a
//! deleted queue through their own event channel.

mod delayed;
mod persist;
mod routing;
mod topology;

pub use delayed::Delays;
pub use persist::{Topology, VHostStore};

use crate::args::{assert_equivalent, assert_flag, rs};
use crate::exchange::{BindingDef, Destination, Exchange, ExchangeDef, ExchangeKind};
use crate::protocol::{AmqpError, ReplyCode};
use crate::queue::args::{EQUIVALENCE_KEYS, QueueArgs};
use crate::queue::{Queue, QueueDef};
use amq_protocol::types::FieldTable;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// A virtual host.
pub struct VHost {
    /// Its name, e.g. `/`.
    pub name: String,
    /// Exchanges by name (`""` is the default exchange).
    pub exchanges: DashMap<String, Arc<Exchange>>,
    /// Queues by name.
    pub queues: DashMap<String, Arc<Queue>>,
    /// Durable state (absent in memory mode).
    pub store: Option<VHostStore>,
    /// Queues created, declared and deleted (the management API's churn rates).
    pub churn: crate::stats::QueueChurn,
    /// Messages that died in its queues (the Prometheus endpoint's dead-lettered totals).
    pub dead_lettered: crate::queue::dead_letter::Counts,
    /// Its policies and operator policies (set from above: [`VHost::set_policies`]).
    pub(crate) policies: parking_lot::RwLock<Arc<crate::defs::Policies>>,
    /// Messages waiting in its `x-delayed-message` exchanges, and their timer.
    pub delays: Delays,
    /// Itself, weakly (the delay timer holds it so).
    this: Weak<VHost>,
    /// In a cluster: told of every durable quorum queue created or removed here (the
    /// cluster replicates them).
    pub(crate) replication: std::sync::OnceLock<Arc<dyn Replication>>,
}

/// What a clustered broker does with a vhost's changes: a durable quorum queue created here
/// is replicated (`queue_created`, on every node); a change to the topology a cluster shares
/// (durable exchanges, durable quorum queues, bindings between them) is proposed to the
/// metadata group unless it is the application of one (`changed`).
pub trait Replication: Send + Sync {
    fn queue_created(&self, vhost: &VHost, q: &Arc<Queue>);
    fn changed(&self, vhost: &VHost, change: Change);
}

/// A topology change a cluster shares.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Change {
    Exchange(ExchangeDef),
    ExchangeDeleted(String),
    Queue(QueueDef),
    QueueDeleted(String),
    Bind(BindingDef),
    Unbind(BindingDef),
}

impl VHost {
    /// Tell the cluster of a change (a no-op on a node that is not clustered).
    fn replicate(&self, change: impl FnOnce() -> Change) {
        if let Some(r) = self.replication.get() {
            r.changed(self, change());
        }
    }

    /// Whether a binding is shared by a cluster: from a durable exchange to a durable
    /// exchange or a replicated quorum queue.
    fn shared_binding(&self, b: &BindingDef) -> bool {
        self.replication.get().is_some()
            && self.exchanges.get(&b.source).is_some_and(|x| x.def.durable)
            && match &b.destination {
                Destination::Exchange(n) => self
                    .exchanges
                    .get(n.as_ref())
                    .is_some_and(|x| x.def.durable),
                Destination::Queue(n) => self
                    .queues
                    .get(n.as_ref())
                    .is_some_and(|q| q.replica().is_some()),
            }
    }
}

/// The exchanges every vhost has.
const PREDECLARED: &[(&str, ExchangeKind)] = &[
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

/// Result of `queue.declare`.
pub struct Declared {
    /// The queue.
    pub queue: Arc<Queue>,
    /// Whether this call created it.
    pub created: bool,
}

fn default_exchange_error() -> AmqpError {
    AmqpError::access_refused("operation not permitted on the default exchange")
}

impl VHost {
    /// A vhost with the predeclared exchanges.
    pub fn new(name: &str) -> Arc<VHost> {
        Self::with_store(name, None)
    }

    fn with_store(name: &str, store: Option<VHostStore>) -> Arc<VHost> {
        Arc::new_cyclic(|this| Self::build(name, store, this.clone()))
    }

    fn build(name: &str, store: Option<VHostStore>, this: Weak<VHost>) -> VHost {
        let v = VHost {
            name: name.to_string(),
            exchanges: DashMap::new(),
            queues: DashMap::new(),
            store,
            churn: Default::default(),
            dead_lettered: Default::default(),
            policies: Default::default(),
            delays: Default::default(),
            this,
            replication: Default::default(),
        };
        for (n, kind) in PREDECLARED {
            v.exchanges.insert(
                n.to_string(),
                Arc::new(Exchange::new(ExchangeDef {
                    name: n.to_string(),
                    kind: *kind,
                    durable: true,
                    auto_delete: false,
                    internal: false,
                    arguments: FieldTable::default(),
                })),
            );
        }
        v
    }

    /// The log, when this vhost is durable.
    pub fn log(&self) -> Option<&Arc<crate::store::log::Log>> {
        self.store.as_ref().map(|s| &s.log)
    }

    fn rs(&self, kind: &str, name: &str) -> String {
        rs(kind, name, &self.name)
    }

    /// Look up an exchange or fail with RabbitMQ's 404.
    pub fn exchange(&self, name: &str) -> Result<Arc<Exchange>, AmqpError> {
        self.exchanges
            .get(name)
            .map(|e| e.clone())
            .ok_or_else(|| AmqpError::not_found(format!("no {}", self.rs("exchange", name))))
    }

    /// Look up a queue or fail with RabbitMQ's 404.
    pub fn queue(&self, name: &str) -> Result<Arc<Queue>, AmqpError> {
        self.queues
            .get(name)
            .map(|q| q.clone())
            .ok_or_else(|| AmqpError::not_found(format!("no {}", self.rs("queue", name))))
    }

    /// Look up a queue for use by connection `conn` (exclusive queues: owner only, else 405).
    pub fn queue_for(&self, name: &str, conn: u64) -> Result<Arc<Queue>, AmqpError> {
        let q = self.queue(name)?;
        check_exclusive(&q, Some(conn), false)?;
        Ok(q)
    }

    /// Replace the vhost's policies and apply them at once to every queue and exchange
    /// (RabbitMQ re-applies on every policy change); queues declared later get them when
    /// created.
    pub fn set_policies(self: &Arc<Self>, policies: crate::defs::Policies) {
        let policies = Arc::new(policies);
        *self.policies.write() = policies.clone();
        let queues: Vec<Arc<Queue>> = self.queues.iter().map(|q| q.value().clone()).collect();
        for q in queues {
            let (policy, operator) = policies.for_queue(&q.name);
            if q.apply_policy(policy, operator) {
                topology::spawn_expiry(Arc::downgrade(self), Arc::downgrade(&q));
            }
        }
        for x in self.exchanges.iter() {
            if !x.def.name.is_empty() {
                x.set_policy(policies.for_exchange(&x.def.name));
            }
        }
    }

    /// The vhost's directory, when durable.
    pub fn dir(&self) -> Option<&std::path::Path> {
        self.store.as_ref().map(|s| s.dir.as_path())
    }
}

/// The vhost as its queues see it (for dead-lettering).
fn router(v: &Arc<VHost>) -> std::sync::Weak<dyn crate::queue::Router> {
    let w: std::sync::Weak<VHost> = Arc::downgrade(v);
    w
}

impl crate::queue::Router for VHost {
    fn route_from(
        &self,
        exchange: &str,
        keys: &[&[u8]],
        headers: Option<&FieldTable>,
    ) -> Option<Vec<Arc<Queue>>> {
        let x = self.exchange(exchange).ok()?;
        Some(self.route(&x, keys, headers))
    }

    fn enqueue(&self, queues: &[Arc<Queue>], msg: crate::message::Message) {
        self.publish_to(queues, msg, None);
    }

    fn delay_from(
        &self,
        exchange: &str,
        msg: crate::message::Message,
        headers: &FieldTable,
    ) -> Option<crate::message::Message> {
        match self.exchange(exchange) {
            Ok(x) => self.delay(&x, msg, Some(headers), &mut None).err(),
            Err(_) => Some(msg),
        }
    }

    fn dead_lettered(&self, queue: &Queue, reason: crate::queue::dead_letter::Reason, dlx: bool) {
        self.dead_lettered.add(queue.args.quorum, reason, dlx);
    }
}

/// RabbitMQ's `check_exclusive_access`: `strict` (declare) also refuses a non-exclusive
/// redeclare of an exclusive queue and an exclusive redeclare of a shared one.
fn check_exclusive(q: &Queue, conn: Option<u64>, strict: bool) -> Result<(), AmqpError> {
    let ok = match (q.owner, strict) {
        (None, false) => true,
        (owner, _) => owner == conn,
    };
    if ok {
        Ok(())
    } else {
        Err(AmqpError::resource_locked(format!(
            "cannot obtain exclusive access to locked {}. It could be originally declared on another \
             connection or the exclusive property value does not match that of the original declaration.",
            q.resource()
        )))
    }
}
