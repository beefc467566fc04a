//! Delayed messages: the `x-delayed-message` exchange type of RabbitMQ's delayed message
//! exchange plugin. A message published to such an exchange with a positive `x-delay` header
//! (ms, at most 2³²−1, the plugin's range) waits in the vhost's timer index and is routed at
//! its time, through the exchange's bindings as they are then (`x-delayed-type` names the
//! routing); `x-delay` is then `-delay`, as the plugin leaves it.
//!
//! One ordered index per vhost (due time, arrival), one timer task per vhost: never a task or
//! a timer per message. A persistent message for a durable exchange is written to the
//! message log before it is confirmed, under a log name of its own per exchange
//! ([`log_name`]) with its due time as its order, so a restart (or `kill -9`) brings it back
//! in due order. Past the log's per-queue memory budget, stored messages keep only their
//! location (an index entry); the bodies are read back when due. Transient messages, and
//! every message of a non-durable exchange, stay in memory (counted by the memory alarm).

use super::*;
use crate::message::Message;
use crate::queue::Held;
use crate::store::log::{Done, Log, RecoveredMsg};
use amq_protocol::types::AMQPValue;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};

/// The longest delay the plugin takes (Erlang's timer limit); anything longer, zero or
/// negative routes the message at once.
const MAX_DELAY: i64 = u32::MAX as i64;

/// How many due messages one turn of the timer routes before it yields.
const BATCH: usize = 1024;

/// The name under which a durable delayed exchange's messages are stored in the message log
/// (a reserved `amq.` queue name no client can declare; a hash keeps it short).
pub(crate) fn log_name(exchange: &str) -> String {
    // FNV-1a: stable across builds and restarts.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in exchange.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("amq.warren.delayed.{h:016x}")
}

/// Unix time in ms on the broker's clock (due times survive restarts; the manual test clock
/// moves it too), rounded down; due times are computed from it plus 1, so a message is never
/// routed before its delay has fully passed.
fn wall_ms() -> u64 {
    crate::clock::wall_ms()
}

/// The delay a message asks for, read as the plugin reads `x-delay`: an integer of any
/// width, a float (truncated) or a numeric string; anything else means none.
pub(crate) fn requested_delay(headers: &FieldTable) -> Option<i64> {
    Some(match headers.inner().get("x-delay")? {
        AMQPValue::ShortShortInt(v) => *v as i64,
        AMQPValue::ShortShortUInt(v) => *v as i64,
        AMQPValue::ShortInt(v) => *v as i64,
        AMQPValue::ShortUInt(v) => *v as i64,
        AMQPValue::LongInt(v) => *v as i64,
        AMQPValue::LongUInt(v) => *v as i64,
        AMQPValue::LongLongInt(v) => *v,
        AMQPValue::Float(v) if v.is_finite() => v.trunc() as i64,
        AMQPValue::Double(v) if v.is_finite() => v.trunc() as i64,
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok()?,
        AMQPValue::ShortString(s) => s.as_str().parse().ok()?,
        _ => return None,
    })
}

/// A message waiting for its time.
struct Pending {
    /// The delayed exchange it was published to.
    exchange: Arc<str>,
    /// The message, or its location in the log.
    held: Held,
}

#[derive(Default)]
struct State {
    /// Waiting messages by (due time, arrival).
    index: BTreeMap<(u64, u64), Pending>,
    /// Arrival counter (ties between equal due times keep arrival order).
    seq: u64,
    /// Bytes of the messages held in memory.
    mem: u64,
    /// Waiting messages per exchange (`messages_delayed` in the management API).
    per_exchange: HashMap<Arc<str>, u64>,
    /// Whether the timer task runs.
    running: bool,
}

/// A vhost's delayed messages and their timer.
#[derive(Default)]
pub struct Delays {
    state: Mutex<State>,
    wake: Arc<tokio::sync::Notify>,
}

impl Delays {
    /// Messages waiting in the delayed exchange `exchange`.
    pub fn waiting(&self, exchange: &str) -> u64 {
        self.state
            .lock()
            .per_exchange
            .get(exchange)
            .copied()
            .unwrap_or(0)
    }

    /// Messages waiting in every delayed exchange of the vhost.
    pub fn total(&self) -> usize {
        self.state.lock().index.len()
    }

    /// Add a waiting message; returns whether the timer must be woken (it is now the first,
    /// or memory is over `budget`) and whether the task must be started.
    fn insert(&self, due: u64, exchange: Arc<str>, held: Held, budget: u64) -> (bool, bool) {
        let mut s = self.state.lock();
        let first = s.index.keys().next().is_none_or(|(d, _)| due < *d);
        s.seq += 1;
        let seq = s.seq;
        if let Held::Mem(m) = &held {
            s.mem += m.memory_cost();
        }
        *s.per_exchange.entry(exchange.clone()).or_default() += 1;
        s.index.insert((due, seq), Pending { exchange, held });
        let start = !s.running;
        s.running = true;
        (first || s.mem > budget, start)
    }

    /// Take up to `max` messages due at `now`; otherwise the next due time.
    fn take_due(&self, now: u64, max: usize) -> (Vec<Pending>, Option<u64>) {
        let mut s = self.state.lock();
        let mut out = Vec::new();
        while out.len() < max {
            let Some(entry) = s.index.first_entry() else {
                break;
            };
            if entry.key().0 > now {
                break;
            }
            let p = entry.remove();
            if let Held::Mem(m) = &p.held {
                s.mem = s.mem.saturating_sub(m.memory_cost());
            }
            forget(&mut s.per_exchange, &p.exchange);
            out.push(p);
        }
        let next = s.index.keys().next().map(|(d, _)| *d);
        (out, next)
    }

    /// Drop every message waiting in `exchange` (deleted).
    fn drop_exchange(&self, exchange: &str) -> usize {
        let mut s = self.state.lock();
        let State {
            index,
            mem,
            per_exchange,
            ..
        } = &mut *s;
        let before = index.len();
        index.retain(|_, p| {
            let keep = &*p.exchange != exchange;
            if !keep && let Held::Mem(m) = &p.held {
                *mem = mem.saturating_sub(m.memory_cost());
            }
            keep
        });
        per_exchange.remove(exchange);
        before - index.len()
    }

    /// Page out: while the messages in memory are over `budget`, the ones due last whose
    /// records are written keep only their location. Returns whether some could not be
    /// paged yet (records on their way to disk): try again shortly.
    fn page_out(&self, log: &Log) -> bool {
        let mut s = self.state.lock();
        let budget = log.queue_memory;
        if s.mem <= budget {
            return false;
        }
        let State { index, mem, .. } = &mut *s;
        let mut waiting = false;
        for p in index.values_mut().rev() {
            if *mem <= budget / 2 {
                break;
            }
            let Held::Mem(m) = &p.held else { continue };
            let Some(loc) = m.store_id() else { continue };
            if !log.is_written(loc) {
                waiting = true;
                continue;
            }
            *mem = mem.saturating_sub(m.memory_cost());
            p.held = Held::Disk {
                loc,
                size: m.body.len() as u32,
                priority: m.priority,
                spooled: false,
            };
        }
        waiting
    }

    /// Messages recovered from the log for `exchange`, in due order (their order).
    fn recover(&self, exchange: &str, msgs: Vec<RecoveredMsg>) {
        let exchange: Arc<str> = Arc::from(exchange);
        let mut s = self.state.lock();
        for m in msgs {
            s.seq += 1;
            let seq = s.seq;
            s.index.insert(
                (m.order, seq),
                Pending {
                    exchange: exchange.clone(),
                    held: Held::Disk {
                        loc: m.loc,
                        size: m.size,
                        priority: m.priority,
                        spooled: false,
                    },
                },
            );
            *s.per_exchange.entry(exchange.clone()).or_default() += 1;
        }
    }

    /// Compaction: move the stored messages whose records are in segment `seg` to the head
    /// of the log (a publish record with `from`), so the segment can go. Reads happen
    /// without the lock; a message is moved only if it is still waiting at the same place.
    pub(super) fn compact(&self, seg: u64, log: &Log) -> usize {
        use crate::store::log::segment_of;
        // (index key, location, body size, the message if in memory)
        type Candidate = ((u64, u64), u64, u32, Option<Arc<Message>>);
        let found: Vec<Candidate> = {
            let s = self.state.lock();
            s.index
                .iter()
                .filter_map(|(k, p)| {
                    let loc = p.held.store_id().filter(|l| segment_of(*l) == seg)?;
                    let mem = match &p.held {
                        Held::Mem(m) => Some(m.clone()),
                        Held::Disk { .. } => None,
                    };
                    Some((*k, loc, p.held.size(), mem))
                })
                .collect()
        };
        let mut moved = 0;
        for chunk in found.chunks(256) {
            let read: Vec<_> = chunk
                .iter()
                .map(|(k, loc, size, mem)| {
                    let msg = match mem {
                        Some(m) => Ok((**m).clone()),
                        None => log.read(*loc, *size),
                    };
                    (*k, *loc, msg)
                })
                .collect();
            let mut s = self.state.lock();
            for (key, loc, msg) in read {
                let Ok(mut msg) = msg else { continue };
                let Some(p) = s.index.get_mut(&key) else {
                    continue;
                };
                if p.held.store_id() != Some(loc) {
                    continue;
                }
                let name = log_name(&p.exchange);
                let rec = crate::store::log::publish_record(key.0, loc, &[(&name, false, 0)], &msg);
                let Some(new) = log.append(rec, None) else {
                    continue;
                };
                p.held = match &p.held {
                    Held::Mem(_) => {
                        msg.set_store_id(Some(new));
                        Held::Mem(Arc::new(msg))
                    }
                    Held::Disk { size, priority, .. } => Held::Disk {
                        loc: new,
                        size: *size,
                        priority: *priority,
                        spooled: false,
                    },
                };
                moved += 1;
            }
        }
        moved
    }
}

fn forget(per_exchange: &mut HashMap<Arc<str>, u64>, exchange: &Arc<str>) {
    if let Some(n) = per_exchange.get_mut(exchange) {
        *n -= 1;
        if *n == 0 {
            per_exchange.remove(exchange);
        }
    }
}

/// `x-delay` as the plugin leaves it on a delivered message: the delay, negated (a signed
/// 32-bit integer, or 64-bit where the negation does not fit).
fn swap_delay_header(properties: &[u8], delay: i64) -> Option<bytes::Bytes> {
    let (_, props) = amq_protocol::protocol::basic::parse_properties(properties).ok()?;
    let mut headers = props.headers().clone().unwrap_or_default();
    let v = match i32::try_from(-delay) {
        Ok(v) => AMQPValue::LongInt(v),
        Err(_) => AMQPValue::LongLongInt(-delay),
    };
    headers.insert("x-delay".into(), v);
    Some(crate::protocol::codec::encode_properties(
        &props.with_headers(headers),
    ))
}

impl VHost {
    /// Keep a message published to `x` until its time, if `x` is an `x-delayed-message`
    /// exchange and the message's `x-delay` asks for a delay. `Ok(waits)`: taken (`waits`:
    /// `synced`, taken from the caller, runs once its record is durable); `Err(msg)`: not
    /// delayed, route it now (handed back by value: boxing would allocate per publish).
    #[allow(clippy::result_large_err)]
    pub fn delay(
        &self,
        x: &Exchange,
        mut msg: Message,
        headers: Option<&FieldTable>,
        synced: &mut Option<Done>,
    ) -> Result<bool, Message> {
        if !x.is_delayed() {
            return Err(msg);
        }
        let delay = match headers.and_then(requested_delay) {
            Some(d) if d > 0 && d <= MAX_DELAY => d,
            _ => return Err(msg),
        };
        if let Some(p) = swap_delay_header(msg.properties(), delay) {
            msg.set_properties(&p);
        }
        // +1: real time is read in whole ms, rounded down (the manual test clock is exact).
        let due = wall_ms() + u64::from(!crate::clock::is_manual()) + delay as u64;
        let mut waits = false;
        msg.set_store_id(None);
        if msg.persistent
            && x.def.durable
            && let Some(log) = self.log()
        {
            let name = log_name(&x.def.name);
            let rec = crate::store::log::publish_record(due, 0, &[(&name, false, 0)], &msg);
            waits = synced.is_some() && log.policy == crate::store::log::SyncPolicy::Confirm;
            msg.set_store_id(log.append(rec, if waits { synced.take() } else { None }));
            if msg.store_id().is_none() && waits {
                // Refused by the log (a failing or full disk): nacked, not kept.
                return Ok(true);
            }
        }
        let budget = self.log().map_or(u64::MAX, |l| l.queue_memory);
        let (wake, start) = self.delays.insert(
            due,
            Arc::from(x.def.name.as_str()),
            Held::Mem(Arc::new(msg)),
            budget,
        );
        if start {
            self.start_delay_timer();
        } else if wake {
            self.delays.wake.notify_one();
        }
        Ok(waits)
    }

    /// Drop the messages waiting in a deleted delayed exchange (and their records).
    pub(super) fn drop_delayed(&self, x: &Exchange) {
        if !x.is_delayed() {
            return;
        }
        let n = self.delays.drop_exchange(&x.def.name);
        if let Some(log) = self.log()
            && x.def.durable
        {
            log.append(
                crate::store::log::queue_deleted_record(&log_name(&x.def.name)),
                None,
            );
        }
        if n > 0 {
            tracing::debug!(vhost = %self.name, exchange = %x.def.name, dropped = n, "delayed messages of a deleted exchange dropped");
        }
    }

    /// Messages recovered for a durable delayed exchange; starts the timer.
    pub(super) fn recover_delayed(&self, exchange: &str, msgs: Vec<RecoveredMsg>) {
        if msgs.is_empty() {
            return;
        }
        self.delays.recover(exchange, msgs);
        let mut s = self.delays.state.lock();
        if !s.running {
            s.running = true;
            drop(s);
            self.start_delay_timer();
        }
    }

    fn start_delay_timer(&self) {
        let me = self.this.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.delays.state.lock().running = false;
            return;
        };
        rt.spawn(delay_timer(me));
    }

    /// Route a message whose time has come: through its exchange's bindings as they are
    /// now (its alternate exchange if none matches), then drop its delay record.
    fn route_delayed(&self, exchange: &str, mut msg: Message) {
        let stored = msg.store_id();
        msg.set_store_id(None);
        if let Ok(x) = self.exchange(exchange) {
            let props = amq_protocol::protocol::basic::parse_properties(msg.properties())
                .ok()
                .map(|(_, p)| p);
            let headers = props.as_ref().and_then(|p| p.headers().as_ref());
            let rk = msg.routing_key().to_vec();
            let mut keys: Vec<&[u8]> = vec![&rk];
            if let Some(AMQPValue::FieldArray(a)) = headers.and_then(|h| h.inner().get("CC")) {
                keys.extend(a.as_slice().iter().filter_map(crate::args::as_str_bytes));
            }
            let bcc = msg.bcc().to_vec();
            keys.extend(bcc.iter().map(|k| &k[..]));
            let queues = self.route(&x, &keys, headers);
            self.publish_to(&queues, msg, None);
        }
        if let (Some(loc), Some(log)) = (stored, self.log()) {
            // After the copies' records: a crash in between delivers it again (at least once).
            log.append(
                crate::store::log::remove_record(loc, &log_name(exchange)),
                None,
            );
        }
    }
}

/// The vhost's timer: routes messages as they fall due, pages out past the budget, and
/// sleeps until the next due time or a new first message. Ends with the vhost.
async fn delay_timer(vhost: Weak<VHost>) {
    let mut retry_paging = false;
    let Some(notify) = vhost.upgrade().map(|v| v.delays.wake.clone()) else {
        return;
    };
    loop {
        let Some(v) = vhost.upgrade() else { return };
        let wake = notify.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let (due, next) = v.delays.take_due(wall_ms(), BATCH);
        if !due.is_empty() {
            deliver(&v, due).await;
            tokio::task::yield_now().await;
            continue;
        }
        if let Some(log) = v.log() {
            retry_paging = v.delays.page_out(log);
        }
        drop(v);
        // The next due time on the broker's monotonic clock (a manual test clock wakes it
        // when advanced); paging retries in real time.
        let deadline = match next {
            Some(d) => crate::clock::now_ms() + d.saturating_sub(wall_ms()),
            None => u64::MAX,
        };
        let retry = if retry_paging {
            Duration::from_millis(5)
        } else {
            Duration::from_secs(3600)
        };
        tokio::select! {
            _ = crate::clock::sleep_until(deadline) => {}
            _ = tokio::time::sleep(retry) => {}
            _ = wake => {}
        }
    }
}

/// Route a batch of due messages, reading paged-out ones back off the async workers.
async fn deliver(v: &Arc<VHost>, due: Vec<Pending>) {
    let (mem, disk): (Vec<Pending>, Vec<Pending>) = due
        .into_iter()
        .partition(|p| matches!(p.held, Held::Mem(_)));
    for p in mem {
        if let Held::Mem(m) = p.held {
            v.route_delayed(&p.exchange, Arc::unwrap_or_clone(m));
        }
    }
    if disk.is_empty() {
        return;
    }
    let Some(log) = v.log().cloned() else { return };
    let read = tokio::task::spawn_blocking(move || {
        disk.into_iter()
            .map(|p| {
                let Held::Disk { loc, size, .. } = p.held else {
                    unreachable!("partitioned")
                };
                (p.exchange, loc, log.read(loc, size))
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    for (exchange, loc, msg) in read {
        match msg {
            Ok(mut m) => {
                m.set_store_id(Some(loc));
                v.route_delayed(&exchange, m);
            }
            Err(e) => {
                tracing::error!(vhost = %v.name, exchange = %exchange, error = %e, "a delayed message could not be read back; dropped");
                if let Some(log) = v.log() {
                    log.append(
                        crate::store::log::remove_record(loc, &log_name(&exchange)),
                        None,
                    );
                }
            }
        }
    }
}
