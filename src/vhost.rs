//! Virtual hosts: the topology shared by every connection: exchanges, queues, bindings, with
//! RabbitMQ's rules and reply codes for declare/delete/bind. Concurrent maps (`DashMap`), no
//! vhost-wide lock; routing reads one exchange's bindings at a time. No message bodies here.

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
}

/// A vhost's files.
pub struct VHostStore {
    /// `data_dir/vhosts/<hex name>`.
    pub dir: std::path::PathBuf,
    /// The message log.
    pub log: Arc<crate::store::log::Log>,
    /// Held while the durable topology changes, so changes reach the definitions journal in
    /// the order they happen (see [`VHost::topology`]).
    defs: parking_lot::Mutex<DefsState>,
}

/// Bookkeeping of the definitions journal.
#[derive(Default)]
struct DefsState {
    /// Bytes appended to the journal since the last snapshot.
    journal_bytes: u64,
    /// Size of the last snapshot.
    snapshot_bytes: u64,
}

/// The journal grows to at least this before a snapshot replaces it.
const MIN_JOURNAL_BYTES: u64 = 1 << 20;

/// A durable topology change in progress: holds the vhost's definitions lock, records each
/// change in the journal, and writes a snapshot when the journal has outgrown the last one
/// (when dropped: after every map entry the change held is released).
pub struct Topology<'a> {
    vhost: &'a VHost,
    state: Option<parking_lot::MutexGuard<'a, DefsState>>,
}

impl Topology<'_> {
    /// Record a change (a channel send: the writer thread writes and syncs it).
    fn record(&mut self, c: crate::store::journal::Change) {
        let (Some(store), Some(state)) = (&self.vhost.store, self.state.as_mut()) else {
            return;
        };
        let rec = crate::store::journal::encode(&c);
        state.journal_bytes += rec.len() as u64;
        store.log.define(rec);
    }
}

impl Drop for Topology<'_> {
    fn drop(&mut self) {
        let (Some(store), Some(state)) = (&self.vhost.store, self.state.as_mut()) else {
            return;
        };
        if state.journal_bytes <= MIN_JOURNAL_BYTES.max(2 * state.snapshot_bytes) {
            return;
        }
        let json = serde_json::to_vec_pretty(&self.vhost.durable_definitions()).unwrap_or_default();
        state.snapshot_bytes = json.len() as u64;
        state.journal_bytes = 0;
        store.log.snapshot(json.into());
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
    pub fn new(name: &str) -> VHost {
        Self::with_store(name, None)
    }

    fn with_store(name: &str, store: Option<VHostStore>) -> VHost {
        let v = VHost {
            name: name.to_string(),
            exchanges: DashMap::new(),
            queues: DashMap::new(),
            store,
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

    /// Open a durable vhost: replay its definitions and message log. Returns the vhost and
    /// the number of messages recovered.
    pub fn open(
        name: &str,
        data_dir: &std::path::Path,
        storage: &crate::config::Storage,
    ) -> std::io::Result<(Arc<VHost>, usize)> {
        let dir = crate::store::vhost_dir(data_dir, name);
        let defs = crate::store::load_definitions(&dir)?;
        // The journal's changes since the snapshot; folded into a new snapshot at once, so
        // the journal starts empty.
        let replayed = crate::store::journal::replay(&dir, defs)?;
        if replayed.damaged > 0 {
            tracing::warn!(vhost = %name, records = replayed.damaged, "skipped damaged definitions journal records");
        }
        let defs = replayed.defs;
        let journal = dir.join(crate::store::journal::FILE);
        if replayed.changes > 0 || replayed.damaged > 0 {
            // On a full disk the snapshot may not be writable: the journal is then kept (and
            // appended to), which is as good.
            let folded = crate::store::save_definitions(&dir, &defs).and_then(|()| {
                std::fs::remove_file(&journal)?;
                std::fs::File::open(&dir)?.sync_all()
            });
            if let Err(e) = folded {
                tracing::warn!(vhost = %name, error = %e, "cannot fold the definitions journal into a snapshot; keeping the journal");
            }
        }
        let snapshot_bytes = std::fs::metadata(dir.join("definitions.json")).map_or(0, |m| m.len());
        let durable: std::collections::HashSet<&str> =
            defs.queues.iter().map(|q| q.name.as_str()).collect();
        let opened = crate::store::log::open(
            &dir.join("msgs"),
            crate::store::log::Options {
                policy: storage.sync,
                interval: Duration::from_millis(storage.sync_interval_ms.max(1)),
                queue_memory: storage.queue_memory_bytes,
                segment_size: storage.segment_bytes,
                journal_dir: Some(dir.clone()),
            },
            &|q| durable.contains(q),
        )?;
        drop(durable);
        if opened.corrupt_records > 0 {
            tracing::warn!(vhost = %name, records = opened.corrupt_records, "skipped damaged message log records");
        }
        let store = VHostStore {
            dir,
            log: Arc::new(opened.log),
            defs: parking_lot::Mutex::new(DefsState {
                journal_bytes: std::fs::metadata(&journal).map_or(0, |m| m.len()),
                snapshot_bytes,
            }),
        };
        let v = Arc::new(VHost::with_store(name, Some(store)));
        for x in defs.exchanges {
            v.exchanges
                .insert(x.name.clone(), Arc::new(Exchange::new(x)));
        }
        for q in defs.queues {
            let res = rs("queue", &q.name, name);
            // Arguments stored by a version that accepted them: keep every one that can be
            // read, and say which failed the current checks.
            let args = QueueArgs::parse(&q.arguments, &res).unwrap_or_else(|e| {
                tracing::error!(vhost = %name, queue = %q.name, error = %e.text, "stored queue arguments no longer validate; kept as far as they can be read");
                QueueArgs::extract(&q.arguments)
            });
            let expires = args.expires;
            let log = v.store.as_ref().map(|s| s.log.clone());
            let queue = Arc::new(Queue::new(name, router(&v), q, args, None, log));
            if let Some(ms) = expires {
                spawn_expiry(
                    Arc::downgrade(&v),
                    Arc::downgrade(&queue),
                    Duration::from_millis(ms),
                );
            }
            v.queues.insert(queue.def.name.clone(), queue);
        }
        for b in defs.bindings {
            if let Ok(x) = v.exchange(&b.source)
                && v.destination_exists(&b.destination)
            {
                let _ = x.bind(b);
            }
        }
        let mut n = 0;
        for (qname, msgs) in opened.queues {
            if let Some(q) = v.queues.get(qname.as_str()) {
                n += msgs.len();
                q.recover(msgs);
            }
        }
        spawn_compaction(Arc::downgrade(&v), opened.compact);
        Ok((v, n))
    }

    /// The durable topology as it is now (a snapshot).
    fn durable_definitions(&self) -> crate::store::Definitions {
        let mut defs = crate::store::Definitions::default();
        for x in self.exchanges.iter() {
            if x.def.durable && !PREDECLARED.iter().any(|(n, _)| *n == x.def.name) {
                defs.exchanges.push(x.def.clone());
            }
        }
        for q in self.queues.iter() {
            if q.log.is_some() {
                defs.queues.push(q.def.clone());
            }
        }
        for x in self.exchanges.iter() {
            if x.def.durable {
                defs.bindings.extend(
                    x.bindings()
                        .into_iter()
                        .filter(|b| self.is_durable_destination(&b.destination)),
                );
            }
        }
        defs
    }

    fn is_durable_destination(&self, d: &Destination) -> bool {
        match d {
            Destination::Queue(n) => self.queues.get(n.as_ref()).is_some_and(|q| q.log.is_some()),
            Destination::Exchange(n) => self
                .exchanges
                .get(n.as_ref())
                .is_some_and(|x| x.def.durable),
        }
    }

    fn destination_exists(&self, d: &Destination) -> bool {
        match d {
            Destination::Queue(n) => self.queues.contains_key(n.as_ref()),
            Destination::Exchange(n) => self.exchanges.contains_key(n.as_ref()),
        }
    }

    /// Begin a topology change: takes the definitions lock of a durable vhost (no-op in
    /// memory mode). Take it before any map entry the change touches.
    pub fn topology(&self) -> Topology<'_> {
        Topology {
            vhost: self,
            state: self.store.as_ref().map(|s| s.defs.lock()),
        }
    }

    /// The sequence number of the last definitions change and a receiver of how far the
    /// journal is synced, if that change is not synced yet: a connection that changed the
    /// topology waits for it before sending its replies (declare-ok means durable).
    pub fn definitions_pending(
        &self,
    ) -> Option<(
        u64,
        tokio::sync::watch::Receiver<crate::store::log::DefsSynced>,
    )> {
        self.store.as_ref()?.log.definitions_pending()
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
                if def.durable {
                    t.record(crate::store::journal::Change::PutExchange {
                        exchange: def.clone(),
                    });
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
        let mut t = self.topology();
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
        if x.def.durable {
            t.record(crate::store::journal::Change::DelExchange { name: name.into() });
        }
        self.remove_destination(&mut t, &Destination::Exchange(name.into()));
        Ok(())
    }

    /// Remove every binding to `dest`, auto-deleting source exchanges left without bindings.
    /// (The journal's record of the destination's deletion removes these bindings too.)
    fn remove_destination(&self, t: &mut Topology<'_>, dest: &Destination) {
        let sources: Vec<Arc<Exchange>> = self.exchanges.iter().map(|e| e.clone()).collect();
        for x in sources {
            if x.unbind_destination(dest) > 0 {
                self.maybe_auto_delete(t, &x);
            }
        }
    }

    fn maybe_auto_delete(&self, t: &mut Topology<'_>, x: &Arc<Exchange>) {
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
        if x.bind(b)?
            && let Some(binding) = rec
        {
            t.record(crate::store::journal::Change::PutBinding { binding });
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
        if x.unbind(&b) {
            if x.def.durable {
                t.record(crate::store::journal::Change::DelBinding { binding: b });
            }
            self.maybe_auto_delete(&mut t, &x);
        }
        Ok(())
    }

    /// Checks shared by bind and unbind: neither end may be the default exchange (403), both
    /// must exist (404), an exclusive queue must be ours (405). Returns the source.
    fn binding_source(&self, b: &BindingDef, conn: u64) -> Result<Arc<Exchange>, AmqpError> {
        if b.source.is_empty() || matches!(&b.destination, Destination::Exchange(d) if d.is_empty())
        {
            return Err(default_exchange_error());
        }
        let x = self.exchange(&b.source)?;
        self.check_destination(&b.destination, conn)?;
        Ok(x)
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
        let mut t = self.topology();
        if self
            .queues
            .remove_if(q.name.as_ref(), |_, cur| Arc::ptr_eq(cur, q))
            .is_none()
        {
            return 0;
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

    /// Route a message from `exchange` with the given routing keys (routing key, then CC and
    /// BCC) and headers: every queue once, following exchange-to-exchange bindings and
    /// alternate exchanges, each exchange visited at most once.
    pub fn route(
        &self,
        exchange: &Arc<Exchange>,
        keys: &[&[u8]],
        headers: Option<&FieldTable>,
    ) -> Vec<Arc<Queue>> {
        fn add(queues: &mut Vec<Arc<Queue>>, q: &Arc<Queue>) {
            if !queues.iter().any(|x| Arc::ptr_eq(x, q)) {
                queues.push(q.clone());
            }
        }
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        // Exchanges still to route through, and those already seen (allocated only for
        // exchange-to-exchange bindings and alternate exchanges).
        let mut work: Vec<Arc<Exchange>> = Vec::new();
        let mut seen_x: Vec<Arc<str>> = Vec::new();
        let mut dests = Vec::new();
        let mut x = exchange.clone();
        loop {
            if x.def.name.is_empty() {
                // The default exchange: every queue is bound by its name (no further lookup).
                for k in keys {
                    if let Ok(name) = std::str::from_utf8(k)
                        && let Some(q) = self.queues.get(name)
                    {
                        add(&mut queues, &q);
                    }
                }
            } else {
                dests.clear();
                x.route(keys, headers, &mut dests);
                if dests.is_empty()
                    && let Some(ae) = &x.alternate
                {
                    dests.push(Destination::Exchange(ae.clone()));
                }
                for d in dests.drain(..) {
                    match d {
                        Destination::Queue(name) => {
                            if let Some(q) = self.queues.get(name.as_ref()) {
                                add(&mut queues, &q);
                            }
                        }
                        Destination::Exchange(name) => {
                            if name.as_ref() == exchange.def.name.as_str() || seen_x.contains(&name)
                            {
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
            match work.pop() {
                Some(next) => x = next,
                None => return queues,
            }
        }
    }

    /// Enqueue a routed message in `queues`. A persistent message going to durable queues is
    /// written to the message log first (one record whatever the number of queues); `synced`
    /// runs once that record is durable. Returns (all queues accepted it, `synced` will run).
    pub fn publish_to(
        &self,
        queues: &[Arc<Queue>],
        mut msg: crate::message::Message,
        synced: Option<crate::store::log::Done>,
    ) -> (bool, bool) {
        // A quorum queue stores every message (its single-node contract): a transient
        // message routed to one is stored for the quorum queues only, as a persistent copy
        // (the bytes are shared), and stays transient in the other queues.
        if !msg.persistent && queues.iter().any(|q| q.args.quorum && q.log.is_some()) {
            let (quorum, other): (Vec<_>, Vec<_>) = queues
                .iter()
                .cloned()
                .partition(|q| q.args.quorum && q.log.is_some());
            let mut stored = msg.clone();
            stored.persistent = true;
            let (accepted, waits) = self.publish_to(&quorum, stored, synced);
            let (rest, _) = self.publish_to(&other, msg, None);
            return (accepted && rest, waits);
        }
        let mut waits = false;
        if msg.persistent
            && let Some(log) = self.log()
        {
            let durable: Vec<crate::store::log::QueueState<'_>> = queues
                .iter()
                .filter(|q| q.log.is_some())
                .map(|q| (q.name.as_ref(), false, 0))
                .collect();
            if !durable.is_empty() {
                let rec = crate::store::log::publish_record(0, 0, &durable, &msg);
                waits = synced.is_some() && log.policy == crate::store::log::SyncPolicy::Confirm;
                msg.store_id = log.append(rec, if waits { synced } else { None });
            }
        }
        let msg = Arc::new(msg);
        let mut accepted = true;
        for q in queues {
            accepted &= q.publish(msg.clone()) == crate::queue::Accepted::Yes;
        }
        (accepted, waits)
    }

    /// Delete every queue (the vhost itself is being deleted).
    pub fn delete_everything(&self) {
        let all: Vec<Arc<Queue>> = self.queues.iter().map(|q| q.clone()).collect();
        for q in all {
            self.remove_queue(&q);
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

/// Compaction: when the log asks, the durable queues move their messages out of the oldest
/// segment (see [`Queue::compact`]), off the async workers since it reads from disk.
fn spawn_compaction(vhost: Weak<VHost>, mut rx: tokio::sync::mpsc::UnboundedReceiver<u64>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        while let Some(seg) = rx.recv().await {
            let Some(v) = vhost.upgrade() else { return };
            let queues: Vec<Arc<Queue>> = v
                .queues
                .iter()
                .filter(|q| q.spool.is_some())
                .map(|q| q.clone())
                .collect();
            drop(v);
            let _ = tokio::task::spawn_blocking(move || {
                let moved: usize = queues.iter().map(|q| q.compact(seg)).sum();
                tracing::debug!(segment = seg, moved, "compacted message log segment");
            })
            .await;
        }
    });
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
