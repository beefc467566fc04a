//! Virtual hosts: the topology shared by every connection: exchanges, queues, bindings, with
//! RabbitMQ's rules and reply codes for declare/delete/bind. Concurrent maps (`DashMap`), no
//! vhost-wide lock; routing reads one exchange's bindings at a time. No message bodies here.

use crate::args::{assert_equivalent, assert_flag, rs};
use crate::exchange::{BindingDef, Destination, Exchange, ExchangeDef, ExchangeKind};
use crate::protocol::AmqpError;
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
    pub fn new(name: &str) -> VHost {
        let v = VHost {
            name: name.to_string(),
            exchanges: DashMap::new(),
            queues: DashMap::new(),
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

    /// `exchange.declare`.
    pub fn declare_exchange(
        &self,
        def: ExchangeDef,
        kind_name: &str,
        passive: bool,
    ) -> Result<(), AmqpError> {
        if passive {
            if def.name.is_empty() {
                return Err(default_exchange_error());
            }
            self.exchange(&def.name)?;
            return Ok(());
        }
        if ExchangeKind::parse(kind_name).is_none() {
            return Err(AmqpError::command_invalid(format!(
                "invalid exchange type '{kind_name}'"
            )));
        }
        if def.name.is_empty() {
            return Err(default_exchange_error());
        }
        if let Some(ae) = def.arguments.inner().get("alternate-exchange")
            && crate::args::as_str_bytes(ae).is_none()
        {
            return Err(AmqpError::precondition_failed(format!(
                "invalid type '{}' for arg 'alternate-exchange' in {}",
                crate::args::type_name(ae),
                self.rs("exchange", &def.name)
            )));
        }
        match self.exchanges.entry(def.name.clone()) {
            Entry::Occupied(e) => {
                let cur = &e.get().def;
                let res = self.rs("exchange", &def.name);
                if cur.kind != def.kind {
                    return Err(AmqpError::precondition_failed(format!(
                        "inequivalent arg 'type' for {res}: received '{}' but current is '{}'",
                        def.kind.as_str(),
                        cur.kind.as_str()
                    )));
                }
                assert_flag("durable", cur.durable, def.durable, &res)?;
                assert_flag("auto_delete", cur.auto_delete, def.auto_delete, &res)?;
                assert_flag("internal", cur.internal, def.internal, &res)?;
                assert_equivalent(
                    &cur.arguments,
                    &def.arguments,
                    &["alternate-exchange"],
                    &res,
                )?;
                Ok(())
            }
            Entry::Vacant(v) => {
                if def.name.starts_with("amq.") {
                    return Err(AmqpError::access_refused(format!(
                        "exchange name '{}' contains reserved prefix 'amq.*'",
                        def.name
                    )));
                }
                v.insert(Arc::new(Exchange::new(def)));
                Ok(())
            }
        }
    }

    /// `exchange.delete`.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), AmqpError> {
        if name.is_empty() {
            return Err(default_exchange_error());
        }
        if name.starts_with("amq.") && PREDECLARED.iter().any(|(n, _)| *n == name) {
            return Err(AmqpError::access_refused(format!(
                "deletion of system {} not allowed",
                self.rs("exchange", name)
            )));
        }
        let Some(x) = self.exchanges.get(name).map(|x| x.clone()) else {
            // RabbitMQ 3.10: deleting a missing exchange is not an error.
            return Ok(());
        };
        let is_destination = || {
            let me = Destination::Exchange(name.into());
            self.exchanges
                .iter()
                .any(|e| e.bindings().iter().any(|b| b.destination == me))
        };
        if if_unused && (x.binding_count() > 0 || is_destination()) {
            return Err(AmqpError::precondition_failed(format!(
                "{} in use",
                self.rs("exchange", name)
            )));
        }
        self.exchanges.remove(name);
        self.remove_destination(&Destination::Exchange(name.into()));
        Ok(())
    }

    /// Remove every binding to `dest`, auto-deleting source exchanges left without bindings.
    fn remove_destination(&self, dest: &Destination) {
        let sources: Vec<Arc<Exchange>> = self.exchanges.iter().map(|e| e.clone()).collect();
        for x in sources {
            if x.unbind_destination(dest) > 0 {
                self.maybe_auto_delete(&x);
            }
        }
    }

    fn maybe_auto_delete(&self, x: &Arc<Exchange>) {
        if x.def.auto_delete && x.binding_count() == 0 {
            let name = x.def.name.clone();
            if self
                .exchanges
                .remove_if(&name, |_, cur| Arc::ptr_eq(cur, x))
                .is_some()
            {
                self.remove_destination(&Destination::Exchange(name.into()));
            }
        }
    }

    /// `queue.bind` / `exchange.bind`.
    pub fn bind(&self, b: BindingDef, conn: u64) -> Result<(), AmqpError> {
        if b.source.is_empty() {
            return Err(default_exchange_error());
        }
        if let Destination::Exchange(d) = &b.destination
            && d.is_empty()
        {
            return Err(default_exchange_error());
        }
        let x = self.exchange(&b.source)?;
        self.check_destination(&b.destination, conn)?;
        x.validate_binding(&b.arguments)?;
        x.bind(b)?;
        Ok(())
    }

    /// `queue.unbind` / `exchange.unbind`: a missing binding is fine, as in RabbitMQ.
    pub fn unbind(&self, b: BindingDef, conn: u64) -> Result<(), AmqpError> {
        if b.source.is_empty() {
            return Err(default_exchange_error());
        }
        if let Destination::Exchange(d) = &b.destination
            && d.is_empty()
        {
            return Err(default_exchange_error());
        }
        let x = self.exchange(&b.source)?;
        self.check_destination(&b.destination, conn)?;
        if x.unbind(&b) {
            self.maybe_auto_delete(&x);
        }
        Ok(())
    }

    fn check_destination(&self, d: &Destination, conn: u64) -> Result<(), AmqpError> {
        match d {
            Destination::Queue(q) => self.queue_for(q, conn).map(|_| ()),
            Destination::Exchange(x) => self.exchange(x).map(|_| ()),
        }
    }

    /// `queue.declare` (the name is already resolved, `server_named` if we generated it; `conn` is
    /// the declaring connection).
    pub fn declare_queue(
        self: &Arc<Self>,
        def: QueueDef,
        passive: bool,
        server_named: bool,
        conn: u64,
    ) -> Result<Declared, AmqpError> {
        let res = self.rs("queue", &def.name);
        if passive {
            let q = self.queue(&def.name)?;
            check_exclusive(&q, Some(conn), false)?;
            q.touch();
            return Ok(Declared {
                queue: q,
                created: false,
            });
        }
        let args = QueueArgs::parse(&def.arguments, &res)?;
        match self.queues.entry(def.name.clone()) {
            Entry::Occupied(e) => {
                let q = e.get().clone();
                drop(e);
                check_exclusive(&q, def.exclusive.then_some(conn), true)?;
                assert_flag("durable", q.def.durable, def.durable, &res)?;
                assert_flag("auto_delete", q.def.auto_delete, def.auto_delete, &res)?;
                assert_equivalent(&q.def.arguments, &def.arguments, EQUIVALENCE_KEYS, &res)?;
                q.touch();
                Ok(Declared {
                    queue: q,
                    created: false,
                })
            }
            Entry::Vacant(v) => {
                if def.name.starts_with("amq.") && !server_named {
                    return Err(AmqpError::access_refused(format!(
                        "queue name '{}' contains reserved prefix 'amq.*'",
                        def.name
                    )));
                }
                let owner = def.exclusive.then_some(conn);
                let expires = args.expires;
                let q = Arc::new(Queue::new(
                    &self.name,
                    Arc::downgrade(self),
                    def,
                    args,
                    owner,
                ));
                v.insert(q.clone());
                if let Some(ms) = expires {
                    spawn_expiry(
                        Arc::downgrade(self),
                        Arc::downgrade(&q),
                        Duration::from_millis(ms),
                    );
                }
                Ok(Declared {
                    queue: q,
                    created: true,
                })
            }
        }
    }

    /// `queue.delete`: returns the number of messages the queue held.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: u64,
    ) -> Result<u32, AmqpError> {
        let q = match self.queue(name) {
            Ok(q) => q,
            // RabbitMQ 3.10: deleting a missing queue succeeds with a count of 0.
            Err(_) => return Ok(0),
        };
        check_exclusive(&q, Some(conn), false)?;
        if if_unused && q.consumer_count() > 0 {
            return Err(AmqpError::precondition_failed(format!(
                "{} in use",
                q.resource()
            )));
        }
        if if_empty && q.message_count() > 0 {
            return Err(AmqpError::precondition_failed(format!(
                "{} not empty",
                q.resource()
            )));
        }
        Ok(self.remove_queue(&q))
    }

    /// Remove a queue and its bindings; returns its message count.
    pub fn remove_queue(&self, q: &Arc<Queue>) -> u32 {
        if self
            .queues
            .remove_if(q.name.as_ref(), |_, cur| Arc::ptr_eq(cur, q))
            .is_none()
        {
            return 0;
        }
        self.remove_destination(&Destination::Queue(q.name.clone()));
        // Consumers learn it (basic.cancel from the server, RabbitMQ's consumer_cancel_notify).
        for c in q.consumers() {
            let _ = c.events.send(crate::queue::consumer::ConnEvent::Cancelled {
                channel: c.channel,
                tag: c.tag.clone(),
            });
        }
        q.mark_deleted()
    }

    /// Route a message from `exchange` with the given routing keys (routing key, then CC and
    /// BCC) and headers: every queue once, following exchange-to-exchange bindings and
    /// alternate exchanges, each exchange visited at most once.
    pub fn route(
        &self,
        exchange: &Arc<Exchange>,
        keys: &[&[u8]],
        headers: Option<&FieldTable>,
    ) -> Vec<Arc<Queue>> {
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        let mut seen_x: Vec<Arc<str>> = Vec::new();
        let mut work: Vec<Arc<Exchange>> = vec![exchange.clone()];
        let mut dests = Vec::new();
        while let Some(x) = work.pop() {
            dests.clear();
            if x.def.name.is_empty() {
                // The default exchange: every queue is bound by its name.
                for k in keys {
                    if let Ok(name) = std::str::from_utf8(k)
                        && let Some(q) = self.queues.get(name)
                    {
                        dests.push(Destination::Queue(q.name.clone()));
                    }
                }
            } else {
                x.route(keys, headers, &mut dests);
            }
            if dests.is_empty()
                && let Some(ae) = &x.alternate
            {
                dests.push(Destination::Exchange(ae.as_str().into()));
            }
            for d in dests.drain(..) {
                match d {
                    Destination::Queue(name) => {
                        if queues.iter().any(|q| q.name == name) {
                            continue;
                        }
                        if let Some(q) = self.queues.get(name.as_ref()) {
                            queues.push(q.clone());
                        }
                    }
                    Destination::Exchange(name) => {
                        if name.as_ref() == exchange.def.name.as_str() || seen_x.contains(&name) {
                            continue;
                        }
                        if let Some(next) = self.exchanges.get(name.as_ref()) {
                            work.push(next.clone());
                        }
                        seen_x.push(name);
                    }
                }
            }
        }
        queues
    }

    /// Delete the exclusive queues of a closed connection.
    pub fn drop_exclusive(&self, conn: u64) {
        let doomed: Vec<Arc<Queue>> = self
            .queues
            .iter()
            .filter(|q| q.owner == Some(conn))
            .map(|q| q.clone())
            .collect();
        for q in doomed {
            self.remove_queue(&q);
        }
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

/// `x-expires`: delete the queue once it has been unused (no consumers, no declare or get) for
/// the period. One sleeping task per such queue; it ends when the queue goes.
fn spawn_expiry(vhost: Weak<VHost>, queue: Weak<Queue>, period: Duration) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let mut wait = period;
        loop {
            tokio::time::sleep(wait).await;
            let (Some(v), Some(q)) = (vhost.upgrade(), queue.upgrade()) else { return };
            if q.is_deleted() {
                return;
            }
            wait = match q.idle_since() {
                None => period,
                Some(since) => match (since + period).checked_duration_since(std::time::Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => {
                        tracing::info!(queue = %q.name, vhost = %v.name, "queue expired (x-expires)");
                        v.remove_queue(&q);
                        return;
                    }
                },
            };
        }
    });
}
