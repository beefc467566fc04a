//! Declaring and deleting exchanges and queues, binding and unbinding: RabbitMQ's rules and
//! reply codes, auto-delete, exclusive ownership, `x-expires` timers; every durable change
//! goes through the [`Topology`](super::persist::Topology) guard.

use super::*;

/// The delayed message exchange plugin's check of `x-delayed-type` (its texts): a string
/// naming an exchange type, and not `x-delayed-message` itself.
pub(crate) fn validate_delayed_type(args: &FieldTable) -> Result<(), AmqpError> {
    let name = match args.inner().get("x-delayed-type") {
        Some(amq_protocol::types::AMQPValue::LongString(s)) => {
            String::from_utf8_lossy(s.as_bytes()).into_owned()
        }
        Some(amq_protocol::types::AMQPValue::ShortString(s)) => s.to_string(),
        _ => {
            return Err(AmqpError::precondition_failed(
                "Invalid argument, 'x-delayed-type' must be an existing exchange type",
            ));
        }
    };
    match ExchangeKind::parse(&name) {
        Some(ExchangeKind::DelayedMessage) => Err(AmqpError::precondition_failed(
            "Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'",
        )),
        Some(_) => Ok(()),
        None => Err(AmqpError::command_invalid(format!(
            "invalid exchange type '{name}'"
        ))),
    }
}

impl VHost {
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
        let mut t = self.topology();
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
                if def.kind == ExchangeKind::DelayedMessage {
                    validate_delayed_type(&def.arguments)?;
                }
                if def.durable {
                    t.record(crate::store::journal::Change::PutExchange {
                        exchange: def.clone(),
                    });
                }
                let shared = def.durable.then(|| def.clone());
                let x = Exchange::new(def);
                x.set_policy(self.policies.read().for_exchange(&x.def.name));
                v.insert(Arc::new(x));
                if let Some(def) = shared {
                    self.replicate(|| super::Change::Exchange(def));
                }
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
        let mut t = self.topology();
        let Some(x) = self.exchanges.get(name).map(|x| x.clone()) else {
            // RabbitMQ 3.10: deleting a missing exchange is not an error.
            return Ok(());
        };
        let is_destination = || {
            let me = Destination::Exchange(name.into());
            self.exchanges.iter().any(|e| e.has_destination(&me))
        };
        if if_unused && (x.binding_count() > 0 || is_destination()) {
            return Err(AmqpError::precondition_failed(format!(
                "{} in use",
                self.rs("exchange", name)
            )));
        }
        self.exchanges.remove(name);
        if x.def.durable {
            t.record(crate::store::journal::Change::DelExchange { name: name.into() });
            self.replicate(|| super::Change::ExchangeDeleted(name.into()));
        }
        self.drop_delayed(&x);
        self.remove_destination(&mut t, &Destination::Exchange(name.into()));
        Ok(())
    }

    /// Remove every binding to `dest`, auto-deleting source exchanges left without bindings.
    /// (The journal's record of the destination's deletion removes these bindings too.)
    pub(super) fn remove_destination(&self, t: &mut Topology<'_>, dest: &Destination) {
        let sources: Vec<Arc<Exchange>> = self.exchanges.iter().map(|e| e.clone()).collect();
        for x in sources {
            if x.unbind_destination(dest) > 0 {
                self.maybe_auto_delete(t, &x);
            }
        }
    }

    pub(super) fn maybe_auto_delete(&self, t: &mut Topology<'_>, x: &Arc<Exchange>) {
        if x.def.auto_delete && x.binding_count() == 0 {
            let name = x.def.name.clone();
            if self
                .exchanges
                .remove_if(&name, |_, cur| Arc::ptr_eq(cur, x))
                .is_some()
            {
                if x.def.durable {
                    t.record(crate::store::journal::Change::DelExchange { name: name.clone() });
                }
                self.drop_delayed(x);
                self.remove_destination(t, &Destination::Exchange(name.into()));
            }
        }
    }

    /// `queue.bind` / `exchange.bind`.
    pub fn bind(&self, b: BindingDef, conn: u64) -> Result<(), AmqpError> {
        let mut t = self.topology();
        let x = self.binding_source(&b, conn)?;
        x.validate_binding(&b.arguments)?;
        let durable = x.def.durable && self.is_durable_destination(&b.destination);
        let rec = durable.then(|| b.clone());
        let shared = self.shared_binding(&b).then(|| b.clone());
        if x.bind(b)? {
            if let Some(binding) = rec {
                t.record(crate::store::journal::Change::PutBinding { binding });
            }
            if let Some(b) = shared {
                self.replicate(|| super::Change::Bind(b));
            }
        }
        Ok(())
    }

    /// `queue.unbind` / `exchange.unbind`: idempotent, as in RabbitMQ 3.10.8 (observed): a
    /// missing binding, source or destination answers unbind-ok. The default exchange is a
    /// 403; another connection's exclusive queue a 405 only if the binding exists (absence is
    /// checked first).
    pub fn unbind(&self, b: BindingDef, conn: u64) -> Result<(), AmqpError> {
        if b.source.is_empty() || matches!(&b.destination, Destination::Exchange(d) if d.is_empty())
        {
            return Err(default_exchange_error());
        }
        let mut t = self.topology();
        let Ok(x) = self.exchange(&b.source) else {
            return Ok(());
        };
        if !x.has_binding(&b) {
            return Ok(());
        }
        match self.check_destination(&b.destination, conn) {
            Err(e) if e.code == ReplyCode::NotFound => return Ok(()),
            r => r?,
        }
        let shared = self.shared_binding(&b);
        if x.unbind(&b) {
            if shared {
                self.replicate(|| super::Change::Unbind(b.clone()));
            }
            if x.def.durable {
                t.record(crate::store::journal::Change::DelBinding { binding: b });
            }
            self.maybe_auto_delete(&mut t, &x);
        }
        Ok(())
    }

    /// Checks shared by bind and unbind: neither end may be the default exchange (403), both
    /// must exist (404), an exclusive queue must be ours (405). Returns the source.
    pub(super) fn binding_source(
        &self,
        b: &BindingDef,
        conn: u64,
    ) -> Result<Arc<Exchange>, AmqpError> {
        if b.source.is_empty() || matches!(&b.destination, Destination::Exchange(d) if d.is_empty())
        {
            return Err(default_exchange_error());
        }
        let x = self.exchange(&b.source)?;
        self.check_destination(&b.destination, conn)?;
        Ok(x)
    }

    pub(super) fn check_destination(&self, d: &Destination, conn: u64) -> Result<(), AmqpError> {
        match d {
            Destination::Queue(q) => self.queue_for(q, conn).map(|_| ()),
            Destination::Exchange(x) => self.exchange(x).map(|_| ()),
        }
    }

    pub(super) fn destination_exists(&self, d: &Destination) -> bool {
        match d {
            Destination::Queue(n) => self.queues.contains_key(n.as_ref()),
            Destination::Exchange(n) => self.exchanges.contains_key(n.as_ref()),
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
        self.churn
            .declared
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut t = self.topology();
        match self.queues.entry(def.name.clone()) {
            Entry::Occupied(e) => {
                let q = e.get().clone();
                drop(e);
                check_exclusive(&q, def.exclusive.then_some(conn), true)?;
                assert_flag("durable", q.def.durable, def.durable, &res)?;
                assert_flag("auto_delete", q.def.auto_delete, def.auto_delete, &res)?;
                crate::queue::args::assert_type_equivalent(&q, &def.arguments, &res)?;
                assert_equivalent(&q.def.arguments, &def.arguments, EQUIVALENCE_KEYS, &res)?;
                q.touch();
                Ok(Declared {
                    queue: q,
                    created: false,
                })
            }
            Entry::Vacant(v) => {
                if args.quorum {
                    crate::queue::args::check_quorum(&def, server_named, &res)?;
                }
                if def.name.starts_with("amq.") && !server_named {
                    return Err(AmqpError::access_refused(format!(
                        "queue name '{}' contains reserved prefix 'amq.*'",
                        def.name
                    )));
                }
                let owner = def.exclusive.then_some(conn);
                let expires = args.expires;
                // Exclusive queues never survive a restart, even if declared durable.
                let log = match (def.durable && !def.exclusive, self.log()) {
                    (true, Some(l)) => Some(l.clone()),
                    _ => None,
                };
                if log.is_some() {
                    // Before the queue is visible: nothing routed to it is synced before it.
                    t.record(crate::store::journal::Change::PutQueue { queue: def.clone() });
                }
                let q = Arc::new(
                    Queue::new(&self.name, router(self), def, args, owner, log)
                        .with_spool(self.log().cloned()),
                );
                v.insert(q.clone());
                self.churn
                    .created
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if q.args.quorum
                    && q.def.durable
                    && let Some(r) = self.replication.get()
                {
                    r.queue_created(self, &q);
                    r.changed(self, super::Change::Queue(q.def.clone()));
                }
                let (policy, operator) = {
                    let p = self.policies.read();
                    let (a, b) = p.for_queue(&q.name);
                    (a.cloned(), b.cloned())
                };
                if policy.is_some() || operator.is_some() {
                    q.apply_policy(policy.as_ref(), operator.as_ref());
                }
                if expires.is_some() || q.expires().is_some() {
                    spawn_expiry(Arc::downgrade(self), Arc::downgrade(&q));
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
        let mut t = self.topology();
        if self
            .queues
            .remove_if(q.name.as_ref(), |_, cur| Arc::ptr_eq(cur, q))
            .is_none()
        {
            return 0;
        }
        self.churn
            .deleted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if q.replica().is_some() {
            self.replicate(|| super::Change::QueueDeleted(q.name.to_string()));
        }
        if let Some(log) = &q.log {
            t.record(crate::store::journal::Change::DelQueue {
                name: q.name.to_string(),
            });
            log.append(crate::store::log::queue_deleted_record(&q.name), None);
        }
        self.remove_destination(&mut t, &Destination::Queue(q.name.clone()));
        // Consumers learn it (basic.cancel from the server, RabbitMQ's consumer_cancel_notify).
        for c in q.consumers() {
            let _ = c.events.send(crate::queue::consumer::ConnEvent::Cancelled {
                channel: c.channel,
                tag: c.tag.clone(),
            });
        }
        q.mark_deleted()
    }

    /// Delete every queue (the vhost itself is being deleted).
    pub fn delete_everything(&self) {
        // The whole vhost goes, its files with it (the caller removes its directory): no
        // journal or log record per queue, no unbinding one destination at a time.
        let all: Vec<Arc<Queue>> = self.queues.iter().map(|q| q.clone()).collect();
        self.queues.clear();
        for q in all {
            self.churn
                .deleted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for c in q.consumers() {
                let _ = c.events.send(crate::queue::consumer::ConnEvent::Cancelled {
                    channel: c.channel,
                    tag: c.tag.clone(),
                });
            }
            q.mark_deleted();
        }
        for x in self.exchanges.iter() {
            self.drop_delayed(&x);
        }
    }
}

/// `x-expires`: delete the queue once it has been unused (no consumers, no declare or get) for
/// the period. One sleeping task per such queue; it ends when the queue goes.
/// The period is read at every wake: a policy may set, change or remove it.
pub(super) fn spawn_expiry(vhost: Weak<VHost>, queue: Weak<Queue>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Some(q) = queue.upgrade() else { return };
    let Some(first) = q.expires() else { return };
    if q.expiry_task
        .swap(true, std::sync::atomic::Ordering::AcqRel)
    {
        return;
    }
    drop(q);
    rt.spawn(async move {
        let mut deadline = crate::clock::now_ms() + first;
        loop {
            crate::clock::sleep_until(deadline).await;
            let (Some(v), Some(q)) = (vhost.upgrade(), queue.upgrade()) else {
                return;
            };
            if q.is_deleted() {
                return;
            }
            let Some(ms) = q.expires() else {
                q.expiry_task
                    .store(false, std::sync::atomic::Ordering::Release);
                return;
            };
            let now = crate::clock::now_ms();
            deadline = match q.idle_since() {
                None => now + ms,
                Some(since) if since + ms > now => since + ms,
                Some(_) => {
                    tracing::info!(queue = %q.name, vhost = %v.name, "queue expired (x-expires)");
                    v.remove_queue(&q);
                    return;
                }
            };
        }
    });
}
