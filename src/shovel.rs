//! Dynamic shovels within the broker: RabbitMQ's `shovel` runtime parameters
//! (`PUT /api/parameters/shovel/{vhost}/{name}`) that move messages from a queue to a queue or
//! an exchange, as runbooks and the management UI's "move messages" use them to replay a
//! dead-letter queue.
//!
//! An end in this broker (`amqp://` or `amqp:///vhost` URIs, no host) is reached through the
//! queues' own APIs, no AMQP loopback; an end on another broker (`amqp://user:pass@host:port/
//! vhost`, `amqps://...`) through lapin, consuming with manual acks (`src-prefetch-count`)
//! or publishing with confirms. The guarantee is RabbitMQ's `on-confirm` whatever `ack-mode`
//! says: a message leaves the source only once the destination has it (a persistent one routed
//! to durable queues here only once the log has synced it; there, once confirmed); a crash in
//! between leaves it in both (at least once, never lost). `src-delete-after` (`never`,
//! `queue-length`: the depth when the shovel starts, or a number) ends the shovel, which then
//! deletes its parameter, as RabbitMQ's does. A remote end that fails is retried after
//! `reconnect-delay` seconds (5), shown as `starting` meanwhile, as RabbitMQ shows it.

use crate::defs::QueueDef;
use crate::message::Message;
use crate::state::BrokerState;
use crate::stats::Shovel;
use crate::vhost::VHost;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// RabbitMQ's validation of a shovel parameter's value (texts recorded from 3.10.8, before
/// HTML escaping).
pub(crate) fn validate(name: &str, value: &Value) -> Result<(), String> {
    let mut errors = Vec::new();
    for key in ["dest-uri", "src-uri"] {
        if value.get(key).is_none() {
            errors.push(format!("Key \"{key}\" not found in {name}"));
        }
    }
    match value.get("src-delete-after") {
        None => {}
        Some(Value::String(s)) if s == "never" || s == "queue-length" => {}
        Some(v) if v.as_u64().is_some() => {}
        Some(other) => errors.push(format!(
            "src-delete-after should be a number greater than or equal to 0, \"never\" or \"queue-length\", actually was {}",
            crate::auth::policy::erlang_term(other)
        )),
    }
    if value.get("src-queue").is_none() && value.get("src-exchange").is_none() {
        errors.push("Key \"src-queue\" not found in ".to_string() + name);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("Validation failed\n\n{}\n", errors.join("\n")))
    }
}

/// The vhost of a URI that names this broker (`amqp://`, `amqp:///vhost`, `amqp://localhost/...`
/// is refused: only the host-less form means "this broker", as in RabbitMQ's direct connection).
fn local_vhost(uri: &str, default: &str) -> Result<String, String> {
    let rest = uri
        .strip_prefix("amqp://")
        .ok_or_else(|| format!("unsupported URI '{uri}'"))?;
    if rest.is_empty() {
        return Ok(default.to_string());
    }
    let path = rest.strip_prefix('/').ok_or_else(|| {
        format!("remote URI '{uri}': Warren's shovels move messages within the broker")
    })?;
    Ok(percent_decode(path))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(h) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// Start, restart or stop shovels so that they match the stored `shovel` parameters.
pub(crate) fn sync(state: &Arc<BrokerState>) {
    let data = state.auth.snapshot();
    let wanted: Vec<(String, String, Value)> = data
        .parameters
        .values()
        .filter(|p| p.component == "shovel")
        .map(|p| (p.vhost.clone(), p.name.clone(), p.value.clone()))
        .collect();
    // Stop those whose parameter went away or changed.
    state.shovels.retain(|(vhost, name), s| {
        let keep = wanted
            .iter()
            .any(|(v, n, val)| v == vhost && n == name && *val == s.value);
        if !keep {
            s.stop.cancel();
        }
        keep
    });
    for (vhost, name, value) in wanted {
        let key = (vhost.clone(), name.clone());
        if state.shovels.contains_key(&key) {
            continue;
        }
        let shovel = Arc::new(Shovel {
            vhost,
            name,
            value,
            moved: AtomicU64::new(0),
            state: std::sync::Mutex::new(("starting".into(), None)),
            stop: state.shutdown.child_token(),
            started: now_timestamp(),
        });
        state.shovels.insert(key, shovel.clone());
        tokio::spawn(run(state.clone(), shovel));
    }
}

fn now_timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Where moved messages go.
enum Dest {
    Queue(String),
    Exchange(String, Option<String>),
    /// Replay (Warren's `dest-x-death`): back where the message died, the exchange and
    /// routing keys of its newest `x-death` entry.
    XDeath,
}

/// Where a dead letter died: the exchange and routing keys of its newest `x-death` entry,
/// with that entry's reason and queue (for the replay filters).
fn last_death(props: &[u8]) -> Option<(String, Vec<String>, String, String)> {
    use amq_protocol::types::AMQPValue;
    let (_, p) = amq_protocol::protocol::basic::parse_properties(props).ok()?;
    let headers = p.headers().as_ref()?;
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        return None;
    };
    let Some(AMQPValue::FieldTable(newest)) = deaths.as_slice().first() else {
        return None;
    };
    let field = |k: &str| newest.inner().get(k).and_then(crate::args::as_string);
    let keys = match newest.inner().get("routing-keys") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .filter_map(crate::args::as_string)
            .collect(),
        _ => Vec::new(),
    };
    Some((
        field("exchange")?,
        keys,
        field("reason").unwrap_or_default(),
        field("queue").unwrap_or_default(),
    ))
}

async fn run(state: Arc<BrokerState>, shovel: Arc<Shovel>) {
    loop {
        match move_messages(&state, &shovel).await {
            Ok(true) => {
                // `src-delete-after` reached: the shovel deletes its own parameter.
                shovel.set_state("terminated", Some("src-delete-after reached".into()));
                let (vhost, name) = (shovel.vhost.clone(), shovel.name.clone());
                let st = state.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    st.auth.update(|d| {
                        d.parameters.remove(&(vhost, "shovel".to_string(), name));
                        Ok(())
                    })
                })
                .await;
                state
                    .shovels
                    .remove_if(&(shovel.vhost.clone(), shovel.name.clone()), |_, s| {
                        Arc::ptr_eq(s, &shovel)
                    });
                tracing::info!(vhost = %shovel.vhost, shovel = %shovel.name, moved = shovel.moved.load(Ordering::Relaxed), "shovel done");
                return;
            }
            Ok(false) => return,
            Err(Failure { reason, retry }) => {
                if !retry {
                    tracing::warn!(vhost = %shovel.vhost, shovel = %shovel.name, %reason, "shovel terminated");
                    shovel.set_state("terminated", Some(reason));
                    return;
                }
                // RabbitMQ 3.10.8 shows such a shovel as `starting` while it retries
                // (observed); the reason goes to the log.
                tracing::warn!(vhost = %shovel.vhost, shovel = %shovel.name, %reason, "shovel failed; restarting after reconnect-delay");
                shovel.set_state("starting", None);
                // A remote end failed (unreachable, closed): RabbitMQ's shovel restarts after
                // `reconnect-delay` seconds (5 by default).
                let delay = shovel
                    .value
                    .get("reconnect-delay")
                    .and_then(Value::as_f64)
                    .filter(|d| *d >= 0.0)
                    .unwrap_or(5.0);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs_f64(delay.min(3600.0))) => {}
                    _ = shovel.stop.cancelled() => return,
                }
            }
        }
    }
}

/// Why a shovel stopped, and whether it restarts (remote ends only).
struct Failure {
    reason: String,
    retry: bool,
}

impl From<String> for Failure {
    fn from(reason: String) -> Failure {
        Failure {
            reason,
            retry: false,
        }
    }
}

impl From<&str> for Failure {
    fn from(reason: &str) -> Failure {
        reason.to_string().into()
    }
}

fn remote_failure(e: impl std::fmt::Display) -> Failure {
    Failure {
        reason: e.to_string(),
        retry: true,
    }
}

/// A shovel's end: a vhost of this broker, or another broker (an AMQP URI with a host).
enum End {
    Local(String),
    Remote(String),
}

/// The end a URI names (the first of a list, as RabbitMQ tries them in turn).
fn end_of(v: &Value, key: &str, default_vhost: &str) -> Result<End, String> {
    let uri = match v.get(key) {
        Some(Value::Array(a)) => a.first().and_then(Value::as_str),
        Some(other) => other.as_str(),
        None => None,
    }
    .unwrap_or("amqp://");
    if uri == "amqp://" || uri.starts_with("amqp:///") {
        return local_vhost(uri, default_vhost).map(End::Local);
    }
    if uri.starts_with("amqp://") || uri.starts_with("amqps://") {
        return Ok(End::Remote(uri.to_string()));
    }
    Err(format!("unsupported URI '{uri}'"))
}

async fn connect(uri: &str, shovel: &Shovel) -> Result<lapin::Channel, Failure> {
    let props = lapin::ConnectionProperties::default()
        .with_connection_name(format!("Shovel {}", shovel.name).into());
    let conn = lapin::Connection::connect(uri, props)
        .await
        .map_err(remote_failure)?;
    conn.create_channel().await.map_err(remote_failure)
}

/// A message taken from the source, with its id there (queue position or delivery tag).
struct Taken {
    id: u64,
    msg: Arc<Message>,
}

/// Where a shovel takes messages from.
enum Source {
    Local(Arc<crate::queue::Queue>),
    /// A consumer on another broker (manual acks, `src-prefetch-count` unacked at most).
    Remote(Box<RemoteSource>),
}

/// A consumer on another broker, and its channel.
struct RemoteSource {
    ch: lapin::Channel,
    consumer: lapin::Consumer,
}

impl Source {
    /// Open the source (declaring its queue, durable, if missing, as a dynamic shovel does);
    /// returns it and the queue's depth now.
    async fn open(
        state: &BrokerState,
        shovel: &Shovel,
        end: &End,
        queue: &str,
    ) -> Result<(Source, u64), Failure> {
        match end {
            End::Local(vhost) => {
                let v = state
                    .vhost(vhost)
                    .ok_or_else(|| format!("no vhost '{vhost}'"))?;
                declare_local(&v, queue)?;
                let q = v.queue(queue).map_err(|e| e.text)?;
                let n = q.message_count() as u64;
                Ok((Source::Local(q), n))
            }
            End::Remote(uri) => {
                use lapin::options::*;
                let ch = connect(uri, shovel).await?;
                let prefetch = shovel
                    .value
                    .get("src-prefetch-count")
                    .and_then(Value::as_u64)
                    .unwrap_or(1000)
                    .clamp(1, u16::MAX as u64) as u16;
                ch.basic_qos(prefetch, BasicQosOptions::default())
                    .await
                    .map_err(remote_failure)?;
                let q = ch
                    .queue_declare(
                        queue.into(),
                        QueueDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        Default::default(),
                    )
                    .await
                    .map_err(remote_failure)?;
                let consumer = ch
                    .basic_consume(
                        queue.into(),
                        format!("shovel-{}", shovel.name).as_str().into(),
                        BasicConsumeOptions::default(),
                        Default::default(),
                    )
                    .await
                    .map_err(remote_failure)?;
                Ok((
                    Source::Remote(Box::new(RemoteSource { ch, consumer })),
                    q.message_count() as u64,
                ))
            }
        }
    }

    /// Put back what a replay run took but filtered out (local sources only).
    fn give_back(&self, skipped: &mut Vec<u64>) {
        if let Source::Local(q) = self {
            give_back(q, skipped);
        }
    }

    /// Whether the source is gone (a local queue deleted).
    fn gone(&self) -> bool {
        match self {
            Source::Local(q) => q.is_deleted(),
            Source::Remote(_) => false,
        }
    }

    /// Up to `want` messages that are there now (none: the caller waits a little).
    fn take(&mut self, want: usize) -> Result<Vec<Taken>, Failure> {
        use futures::{FutureExt, StreamExt};
        let mut batch = Vec::with_capacity(want);
        match self {
            Source::Local(q) => {
                while batch.len() < want
                    && let Some((entry, _)) = q.get(false)
                {
                    batch.push(Taken {
                        id: entry.seq,
                        msg: entry.msg,
                    });
                }
            }
            Source::Remote(r) => {
                let consumer = &mut r.consumer;
                while batch.len() < want {
                    match consumer.next().now_or_never() {
                        None => break,
                        Some(Some(Ok(d))) => batch.push(Taken {
                            id: d.delivery_tag,
                            msg: Arc::new(from_delivery(d)),
                        }),
                        Some(Some(Err(e))) => return Err(remote_failure(e)),
                        Some(None) => return Err(remote_failure("the source consumer ended")),
                    }
                }
            }
        }
        Ok(batch)
    }

    /// Settle a batch at the source: acked once the destination has it, else requeued.
    async fn settle(&self, ids: &[u64], ok: bool) -> Result<(), Failure> {
        use lapin::options::*;
        match self {
            Source::Local(q) if ok => q.ack(ids),
            Source::Local(q) => q.requeue(ids),
            Source::Remote(r) => {
                let ch = &r.ch;
                let Some(last) = ids.iter().copied().max() else {
                    return Ok(());
                };
                let r = if ok {
                    ch.basic_ack(last, BasicAckOptions { multiple: true }).await
                } else {
                    ch.basic_nack(
                        last,
                        BasicNackOptions {
                            multiple: true,
                            requeue: true,
                        },
                    )
                    .await
                };
                r.map_err(remote_failure)?;
            }
        }
        Ok(())
    }
}

/// A message as another broker delivered it.
fn from_delivery(d: lapin::message::Delivery) -> Message {
    let properties = crate::protocol::codec::encode_properties(&d.properties);
    let peek = crate::message::peek_properties(&properties);
    let mut m = Message::new(
        d.exchange.as_str().as_bytes(),
        d.routing_key.as_str().as_bytes(),
        &properties,
        bytes::Bytes::from(d.data),
    );
    m.priority = peek.priority;
    m.set_expiration(peek.expiration());
    m.persistent = peek.delivery_mode == Some(2);
    m
}

/// Where a shovel puts messages.
enum Sink {
    Local(Arc<VHost>),
    /// A publisher (with confirms) on another broker.
    Remote(lapin::Channel),
}

/// A copy on its way to the destination: done once stored there.
enum Stored {
    Local(tokio::sync::oneshot::Receiver<bool>),
    Remote(lapin::PublisherConfirm),
}

impl Stored {
    async fn ok(self) -> bool {
        match self {
            Stored::Local(rx) => rx.await.unwrap_or(false),
            Stored::Remote(c) => matches!(c.await, Ok(lapin::Confirmation::Ack(_))),
        }
    }
}

impl Sink {
    async fn open(
        state: &BrokerState,
        shovel: &Shovel,
        end: &End,
        queue: Option<&str>,
    ) -> Result<Sink, Failure> {
        match end {
            End::Local(vhost) => {
                let v = state
                    .vhost(vhost)
                    .ok_or_else(|| format!("no vhost '{vhost}'"))?;
                if let Some(q) = queue {
                    declare_local(&v, q)?;
                }
                Ok(Sink::Local(v))
            }
            End::Remote(uri) => {
                use lapin::options::*;
                let ch = connect(uri, shovel).await?;
                ch.confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(remote_failure)?;
                if let Some(q) = queue {
                    ch.queue_declare(
                        q.into(),
                        QueueDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        Default::default(),
                    )
                    .await
                    .map_err(remote_failure)?;
                }
                Ok(Sink::Remote(ch))
            }
        }
    }

    /// Send one message through `xname` with `keys`; `Ok(None)`: nothing to wait for.
    async fn send(
        &self,
        xname: &str,
        keys: &[String],
        msg: Message,
    ) -> Result<Option<Stored>, Failure> {
        let rk = keys.first().cloned().unwrap_or_default();
        match self {
            Sink::Local(dst) => {
                let Ok(x) = dst.exchange(xname) else {
                    return Err(format!("no exchange '{xname}' in vhost '{}'", dst.name).into());
                };
                let mut msg = msg;
                msg.set_route(xname.as_bytes(), rk.as_bytes());
                msg.set_store_id(None);
                msg.confirm = None;
                msg.set_bcc(Vec::new());
                // Headers are decoded for a headers exchange (and a delayed one) only.
                let headers = (x.def.routing_kind() == crate::defs::ExchangeKind::Headers
                    || x.is_delayed())
                .then(|| amq_protocol::protocol::basic::parse_properties(msg.properties()).ok())
                .flatten()
                .and_then(|(_, p)| p.headers().clone());
                let (tx, rx) = tokio::sync::oneshot::channel();
                let mut done: Option<crate::store::log::Done> = Some(Box::new(move |ok| {
                    let _ = tx.send(ok);
                }));
                let waits = match dst.delay(&x, msg, headers.as_ref(), &mut done) {
                    Ok(waits) => waits,
                    Err(msg) => {
                        let key_refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
                        let queues = dst.route(&x, &key_refs, headers.as_ref());
                        dst.publish_to(&queues, msg, done).1
                    }
                };
                Ok(waits.then_some(Stored::Local(rx)))
            }
            Sink::Remote(ch) => {
                let props = amq_protocol::protocol::basic::parse_properties(msg.properties())
                    .map(|(_, p)| p)
                    .unwrap_or_default();
                let confirm = ch
                    .basic_publish(
                        xname.into(),
                        rk.as_str().into(),
                        lapin::options::BasicPublishOptions::default(),
                        &msg.body,
                        props,
                    )
                    .await
                    .map_err(remote_failure)?;
                Ok(Some(Stored::Remote(confirm)))
            }
        }
    }
}

/// A dynamic shovel declares its source queue (and a destination queue) if missing.
fn declare_local(vh: &Arc<VHost>, name: &str) -> Result<(), String> {
    if vh.queues.contains_key(name) {
        return Ok(());
    }
    let def = QueueDef {
        name: name.to_string(),
        durable: true,
        exclusive: false,
        auto_delete: false,
        arguments: Default::default(),
    };
    vh.declare_queue(def, false, false, 0)
        .map(|_| ())
        .map_err(|e| e.text)
}

/// Move messages until stopped (`Ok(false)`) or `src-delete-after` is reached (`Ok(true)`).
async fn move_messages(state: &BrokerState, shovel: &Shovel) -> Result<bool, Failure> {
    let v = &shovel.value;
    let src_end = end_of(v, "src-uri", &shovel.vhost)?;
    let dest_end = end_of(v, "dest-uri", &shovel.vhost)?;
    let src_name = text(v, "src-queue")
        .ok_or("src-exchange shovels are not supported; use src-queue")?
        .to_string();
    let replay = v.get("dest-x-death").and_then(Value::as_bool) == Some(true);
    let dest = match (text(v, "dest-queue"), text(v, "dest-exchange")) {
        _ if replay => Dest::XDeath,
        (Some(q), _) => Dest::Queue(q.to_string()),
        (None, Some(x)) => Dest::Exchange(
            x.to_string(),
            text(v, "dest-exchange-key").map(String::from),
        ),
        // No destination: the source queue's name on the default exchange (RabbitMQ's default).
        (None, None) => Dest::Queue(src_name.clone()),
    };
    if replay && matches!(src_end, End::Remote(_)) {
        return Err("dest-x-death replays a queue of this broker; src-uri is remote".into());
    }
    let dest_queue = match &dest {
        Dest::Queue(q) => Some(q.as_str()),
        _ => None,
    };
    let (mut src, depth) = Source::open(state, shovel, &src_end, &src_name).await?;
    let sink = Sink::open(state, shovel, &dest_end, dest_queue).await?;
    let mut remaining: Option<u64> = match v.get("src-delete-after") {
        Some(Value::String(s)) if s == "queue-length" => Some(depth),
        Some(n) if n.as_u64().is_some() => n.as_u64(),
        _ => None,
    };
    // Replay filters and rate (Warren's extension keys).
    let filter_reason = text(v, "x-death-reason").map(String::from);
    let filter_queue = text(v, "x-death-queue").map(String::from);
    let rate = v
        .get("rate-limit")
        .and_then(Value::as_f64)
        .filter(|r| *r > 0.0);
    let mut skipped: Vec<u64> = Vec::new();
    shovel.set_state("running", None);
    let mut idle = Duration::from_millis(1);
    loop {
        if remaining == Some(0) {
            src.give_back(&mut skipped);
            return Ok(true);
        }
        if shovel.stop.is_cancelled() || src.gone() {
            src.give_back(&mut skipped);
            return Ok(false);
        }
        // A batch: taken (unacked) from the source, published, then acked at the source once
        // every stored copy is synced or confirmed (one group commit for the batch).
        let mut want = remaining.map_or(BATCH, |r| r.min(BATCH as u64) as usize);
        if let Some(rate) = rate {
            want = want.min((rate as usize).max(1));
        }
        let batch = src.take(want)?;
        let taken = batch.len();
        if batch.is_empty() {
            if !skipped.is_empty() {
                // Everything left was filtered out: give it back, and the run is over.
                src.give_back(&mut skipped);
                return Ok(remaining.is_some());
            }
            tokio::select! {
                _ = tokio::time::sleep(idle) => {}
                _ = shovel.stop.cancelled() => return Ok(false),
            }
            idle = (idle * 2).min(Duration::from_millis(50));
            continue;
        }
        idle = Duration::from_millis(1);
        let mut waiting = Vec::new();
        let mut ids: Vec<u64> = Vec::with_capacity(batch.len());
        let mut failed = None;
        for t in batch {
            let (xname, keys) = match &dest {
                Dest::Queue(q) => (String::new(), vec![q.clone()]),
                Dest::Exchange(x, key) => (
                    x.clone(),
                    vec![key.clone().unwrap_or_else(|| {
                        String::from_utf8_lossy(t.msg.routing_key()).into_owned()
                    })],
                ),
                Dest::XDeath => match last_death(t.msg.properties()) {
                    Some((x, keys, reason, queue))
                        if filter_reason.as_ref().is_none_or(|r| *r == reason)
                            && filter_queue.as_ref().is_none_or(|q| *q == queue) =>
                    {
                        (x, keys)
                    }
                    // Not a dead letter, or filtered out: it stays, and is not taken again
                    // by this run (given back when the run ends).
                    _ => {
                        skipped.push(t.id);
                        continue;
                    }
                },
            };
            ids.push(t.id);
            if failed.is_some() {
                continue;
            }
            match sink.send(&xname, &keys, Arc::unwrap_or_clone(t.msg)).await {
                Ok(Some(s)) => waiting.push(s),
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        let mut ok = failed.is_none();
        for s in waiting {
            ok &= s.ok().await;
        }
        if !ok {
            // Some copy is not stored: the whole batch stays at the source (at least once).
            src.settle(&ids, false).await?;
            src.give_back(&mut skipped);
            return Err(failed.unwrap_or_else(|| Failure {
                reason: "the destination could not store a message".into(),
                retry: matches!(sink, Sink::Remote(_)),
            }));
        }
        src.settle(&ids, true).await?;
        shovel.moved.fetch_add(ids.len() as u64, Ordering::Relaxed);
        if let Some(r) = remaining.as_mut() {
            *r -= taken as u64;
        }
        if let Some(rate) = rate {
            // At most `rate` messages a second: this batch's share of time.
            let due = Duration::from_secs_f64(ids.len() as f64 / rate);
            tokio::select! {
                _ = tokio::time::sleep(due) => {}
                _ = shovel.stop.cancelled() => {}
            }
        }
    }
}

/// Put back messages a replay run took but filtered out, as they were (no redelivery is
/// counted: they were not delivered anywhere).
fn give_back(q: &Arc<crate::queue::Queue>, seqs: &mut Vec<u64>) {
    for seq in seqs.drain(..) {
        q.return_undelivered_unacked(seq);
    }
}

/// Messages moved per batch (one log sync per batch).
const BATCH: usize = 256;

/// Statuses of the shovels in `vhost` (all: `None`).
pub(crate) fn statuses(state: &BrokerState, vhost: Option<&str>) -> Vec<Value> {
    let mut list: Vec<Value> = state
        .shovels
        .iter()
        .filter(|s| vhost.is_none_or(|v| s.vhost == v))
        .map(|s| s.status(&state.config.cluster_name))
        .collect();
    list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    list
}
