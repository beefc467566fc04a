//! A durable vhost's persistence driver: its files ([`VHostStore`]), opening and recovering it
//! (definitions snapshot and journal, then the message log), the [`Topology`] guard that
//! journals each durable change in order and snapshots when the journal outgrows the last
//! snapshot, and the compaction driver the log asks for.

use super::topology::spawn_expiry;
use super::*;

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
    pub(super) fn record(&mut self, c: crate::store::journal::Change) {
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

/// Compaction: when the log asks, the durable queues move their messages out of the oldest
/// segment (see [`Queue::compact`]), off the async workers since it reads from disk.
pub(super) fn spawn_compaction(
    vhost: Weak<VHost>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<u64>,
) {
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
            let _ = tokio::task::spawn_blocking(move || {
                let mut moved: usize = queues.iter().map(|q| q.compact(seg)).sum();
                if let Some(log) = v.log() {
                    moved += v.delays.compact(seg, log);
                }
                tracing::debug!(segment = seg, moved, "compacted message log segment");
            })
            .await;
        }
    });
}

impl VHost {
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
        // Durable delayed exchanges keep their waiting messages under a log name of their own.
        let delayed: std::collections::HashMap<String, String> = defs
            .exchanges
            .iter()
            .filter(|x| x.kind == ExchangeKind::DelayedMessage)
            .map(|x| (super::delayed::log_name(&x.name), x.name.clone()))
            .collect();
        let opened = crate::store::log::open(
            &dir.join("msgs"),
            crate::store::log::Options {
                policy: storage.sync,
                interval: Duration::from_millis(storage.sync_interval_ms.max(1)),
                queue_memory: storage.queue_memory_bytes,
                segment_size: storage.segment_bytes,
                journal_dir: Some(dir.clone()),
            },
            &|q| durable.contains(q) || delayed.contains_key(q),
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
        let v = VHost::with_store(name, Some(store));
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
            if expires.is_some() {
                spawn_expiry(Arc::downgrade(&v), Arc::downgrade(&queue));
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
            if let Some(x) = delayed.get(&qname) {
                n += msgs.len();
                v.recover_delayed(x, msgs);
            } else if let Some(q) = v.queues.get(qname.as_str()) {
                n += msgs.len();
                q.recover(msgs);
            }
        }
        spawn_compaction(Arc::downgrade(&v), opened.compact);
        Ok((v, n))
    }

    /// The durable topology as it is now (a snapshot).
    pub(super) fn durable_definitions(&self) -> crate::store::Definitions {
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

    pub(super) fn is_durable_destination(&self, d: &Destination) -> bool {
        match d {
            Destination::Queue(n) => self.queues.get(n.as_ref()).is_some_and(|q| q.log.is_some()),
            Destination::Exchange(n) => self
                .exchanges
                .get(n.as_ref())
                .is_some_and(|x| x.def.durable),
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
}
