//! Dead-lettering as RabbitMQ 3.10 `rabbit_dead_letter` does it, plus 3.13's `x-last-death-*`:
//! the `x-death` header (one table per queue and reason, newest first, counts merged), the
//! `x-first-death-*` headers, `expiration` moved to `original-expiration`, routing to the
//! dead-letter exchange with the original or the `x-dead-letter-routing-key` key, and cycle
//! detection (a message that would return to a queue it died in, with no rejection on the way,
//! is dropped).

use super::{Entry, Queue};
use crate::args::as_str_bytes;
use crate::message::Message;
use crate::protocol::codec::encode_properties;
use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use bytes::Bytes;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Why a message is dead-lettered (the `reason` field of `x-death`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Rejected or nacked with requeue=false.
    Rejected,
    /// TTL expired.
    Expired,
    /// Dropped by a length limit.
    Maxlen,
    /// Redelivered more than `x-delivery-limit` times.
    DeliveryLimit,
}

impl Reason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

impl Reason {
    /// Every reason, in the order [`Counts`] keeps them.
    pub const ALL: [Reason; 4] = [
        Reason::Expired,
        Reason::Rejected,
        Reason::Maxlen,
        Reason::DeliveryLimit,
    ];

    fn index(self) -> usize {
        match self {
            Reason::Expired => 0,
            Reason::Rejected => 1,
            Reason::Maxlen => 2,
            Reason::DeliveryLimit => 3,
        }
    }
}

/// Messages that died in a vhost's queues, by queue type (classic or quorum), reason, and
/// whether the queue had a dead-letter exchange (RabbitMQ's `dead_letter_strategy`
/// `at_most_once`) or not (`disabled`: the message was dropped): the counters behind
/// RabbitMQ's `rabbitmq_global_messages_dead_lettered_*_total`. Counted when the message
/// leaves the queue, whether or not the dead-letter exchange then routes it anywhere, as
/// RabbitMQ 3.10 does. A cold path: one atomic add per message.
#[derive(Debug, Default)]
pub struct Counts([[[std::sync::atomic::AtomicU64; 2]; 4]; 2]);

impl Counts {
    /// Count one message.
    pub fn add(&self, quorum: bool, reason: Reason, dlx: bool) {
        self.0[quorum as usize][reason.index()][dlx as usize]
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Messages counted so far.
    pub fn get(&self, quorum: bool, reason: Reason, dlx: bool) -> u64 {
        self.0[quorum as usize][reason.index()][dlx as usize]
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Messages that died in a queue with a dead-letter exchange, for every reason and queue
    /// type (the management API's `dead_lettered`).
    pub fn to_dlx(&self) -> u64 {
        self.0
            .iter()
            .flatten()
            .map(|c| c[1].load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }
}

fn lstr(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn key(s: &str) -> ShortString {
    ShortString::from(s)
}

fn decode(raw: &[u8]) -> BasicProperties {
    amq_protocol::protocol::basic::parse_properties(raw)
        .map(|(_, p)| p)
        .unwrap_or_default()
}

/// Copy `p` with new headers and, if asked, without `expiration` (amq-protocol has no setter
/// to clear a field, so the properties are rebuilt).
pub fn rebuild(p: &BasicProperties, headers: FieldTable, drop_expiration: bool) -> BasicProperties {
    let mut n = BasicProperties::default().with_headers(headers);
    if let Some(v) = p.content_type() {
        n = n.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        n = n.with_content_encoding(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        n = n.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        n = n.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        n = n.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        n = n.with_reply_to(v.clone());
    }
    if let (Some(v), false) = (p.expiration(), drop_expiration) {
        n = n.with_expiration(v.clone());
    }
    if let Some(v) = p.message_id() {
        n = n.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        n = n.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        n = n.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        n = n.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        n = n.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        n = n.with_cluster_id(v.clone());
    }
    n
}

/// The message as it leaves `queue` for the dead-letter exchange, the routing keys to use, and
/// its new headers (so callers need not decode the properties again).
pub fn make_message(
    queue: &Queue,
    msg: &Message,
    reason: Reason,
    dlx: &str,
    dlrk: Option<&str>,
) -> (Message, Vec<Bytes>, FieldTable) {
    let props = decode(msg.properties());
    let priority = msg.priority;
    let mut headers: BTreeMap<ShortString, AMQPValue> = props
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default();
    let rk = Bytes::copy_from_slice(msg.routing_key());
    // x-death routing-keys: the publish key, then the CC keys (BCC is already gone).
    let mut death_keys = vec![rk.clone()];
    if let Some(AMQPValue::FieldArray(cc)) = headers.get("CC") {
        death_keys.extend(
            cc.as_slice()
                .iter()
                .filter_map(as_str_bytes)
                .map(Bytes::copy_from_slice),
        );
    }
    let route_keys = match dlrk {
        Some(k) => {
            headers.remove("CC");
            vec![Bytes::copy_from_slice(k.as_bytes())]
        }
        // The message's own routing keys, BCC included (RabbitMQ keeps them on the message
        // although the header is gone).
        None => death_keys.iter().chain(msg.bcc().iter()).cloned().collect(),
    };
    let exchange = String::from_utf8_lossy(msg.exchange()).into_owned();
    // Seconds since the Unix epoch on the broker's clock (the manual test clock moves it).
    let now = crate::clock::wall_ms() / 1000;
    let mut info = FieldTable::default();
    info.insert(key("reason"), lstr(reason.as_str()));
    info.insert(key("queue"), lstr(&queue.name));
    info.insert(key("time"), AMQPValue::Timestamp(now));
    info.insert(key("exchange"), lstr(&exchange));
    let keys: Vec<AMQPValue> = death_keys
        .iter()
        .map(|k| AMQPValue::LongString(LongString::from(k.to_vec())))
        .collect();
    info.insert(
        key("routing-keys"),
        AMQPValue::FieldArray(FieldArray::from(keys)),
    );
    if let Some(exp) = props.expiration() {
        info.insert(key("original-expiration"), lstr(exp.as_str()));
    }
    // Merge with an earlier death in the same queue for the same reason: count + 1, moved to
    // the front (RabbitMQ 3.10 keeps that entry's other fields).
    let mut deaths: Vec<AMQPValue> = match headers.get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let same = |t: &FieldTable| {
        t.inner().get("queue").and_then(as_str_bytes) == Some(queue.name.as_bytes())
            && t.inner().get("reason").and_then(as_str_bytes) == Some(reason.as_str().as_bytes())
    };
    let found = deaths
        .iter()
        .position(|d| matches!(d, AMQPValue::FieldTable(t) if same(t)));
    let entry = match found {
        Some(i) => {
            let AMQPValue::FieldTable(old) = deaths.remove(i) else {
                unreachable!()
            };
            let count = old
                .inner()
                .get("count")
                .and_then(crate::args::as_int)
                .unwrap_or(0);
            let mut t = old.inner().clone();
            t.insert(key("count"), AMQPValue::LongLongInt(count + 1));
            FieldTable::from(t)
        }
        None => {
            let mut t = info.inner().clone();
            t.insert(key("count"), AMQPValue::LongLongInt(1));
            FieldTable::from(t)
        }
    };
    // RabbitMQ 3.10.8 (observed): the new or merged entry first, the others in reverse order.
    deaths.reverse();
    deaths.insert(0, AMQPValue::FieldTable(entry));
    headers.insert(
        key("x-death"),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    for (k, v) in [
        ("reason", reason.as_str()),
        ("queue", &queue.name),
        ("exchange", exchange.as_str()),
    ] {
        headers
            .entry(key(&format!("x-first-death-{k}")))
            .or_insert_with(|| lstr(v));
        headers.insert(key(&format!("x-last-death-{k}")), lstr(v));
    }
    let headers = FieldTable::from(headers);
    let props = rebuild(&props, headers.clone(), true);
    let mut msg = Message::new(
        dlx.as_bytes(),
        &route_keys[0],
        &encode_properties(&props),
        msg.body.clone(),
    );
    msg.priority = priority;
    // From its delivery mode: a transient message stored only because it was in a quorum
    // queue is transient again where it is dead-lettered.
    msg.persistent = *props.delivery_mode() == Some(2);
    (msg, route_keys, headers)
}

/// The properties of a redelivered message with RabbitMQ's `x-delivery-count` header.
pub fn with_delivery_count(raw: &[u8], count: u32) -> Bytes {
    let props = decode(raw);
    let mut headers: BTreeMap<ShortString, AMQPValue> = props
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default();
    headers.insert(
        key("x-delivery-count"),
        AMQPValue::LongLongInt(count as i64),
    );
    encode_properties(&rebuild(&props, FieldTable::from(headers), false))
}

/// The properties to deliver an entry with: `x-delivery-count` once it was delivered before,
/// and on every `basic.get` from a quorum queue (RabbitMQ 3.10.8 adds it there even at 0).
pub fn delivered_properties<'a>(
    queue: &Queue,
    e: &'a Entry,
    get: bool,
) -> std::borrow::Cow<'a, [u8]> {
    if queue.counts_deliveries() && (e.delivery_count > 0 || (get && queue.args.quorum)) {
        std::borrow::Cow::Owned(with_delivery_count(e.msg.properties(), e.delivery_count).into())
    } else {
        std::borrow::Cow::Borrowed(e.msg.properties())
    }
}

/// RabbitMQ's `is_cycle`: the message already died in `target`, and no death since then (nor
/// that one) was a rejection.
pub fn is_cycle(target: &str, headers: &FieldTable) -> bool {
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        return false;
    };
    for d in deaths.as_slice() {
        let AMQPValue::FieldTable(t) = d else {
            return false;
        };
        if t.inner().get("reason").and_then(as_str_bytes) == Some(b"rejected") {
            return false;
        }
        if t.inner().get("queue").and_then(as_str_bytes) == Some(target.as_bytes()) {
            return true;
        }
    }
    false
}

thread_local! {
    /// Dead-lettering in progress on this thread: what dying messages cause further down
    /// (a TTL-0 queue expiring into another, a full queue dropping its head) is queued here
    /// and handled by the outermost call in a loop, never by recursion.
    static PENDING: RefCell<Option<VecDeque<Work>>> = const { RefCell::new(None) };
}

type Work = (Arc<Queue>, Vec<(Entry, Reason)>);

/// Dead letters one cascade handles inline, beyond the messages that started it; the rest
/// continues in a task of its own, so no connection is held up by a dead-letter topology.
const INLINE_BUDGET: usize = 10_000;

/// Dead letters one cascade may cause beyond the messages that started it. Dead-letter
/// cycles end when a message comes back to a queue it died in (RabbitMQ's rule), but a fanout
/// dead-letter exchange bound to queues that dead-letter into it multiplies messages at every
/// hop: past this, the cascade's remaining dead letters are dropped (dead-lettering is
/// at-most-once) and a warning is logged.
pub const MAX_CASCADE: usize = 1_000_000;

/// Dead-letter `entries` from `queue` (called without the queue's lock held).
pub fn publish(queue: &Arc<Queue>, entries: Vec<(Entry, Reason)>) {
    let outermost = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        match p.as_mut() {
            Some(pending) => {
                pending.push_back((queue.clone(), entries));
                None
            }
            None => {
                *p = Some(VecDeque::new());
                Some(entries)
            }
        }
    });
    let Some(entries) = outermost else {
        return;
    };
    publish_now(queue, entries);
    // Depth first (the newest work first): what is pending stays bounded by the depth of the
    // cascade times its fan-out, not by its breadth.
    let mut done = 0;
    loop {
        let next = PENDING.with(|p| p.borrow_mut().as_mut().and_then(VecDeque::pop_back));
        let Some((q, entries)) = next else {
            break;
        };
        if done >= INLINE_BUDGET
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let mut rest = PENDING.with(|p| p.borrow_mut().take()).unwrap_or_default();
            rest.push_back((q, entries));
            rt.spawn(continue_cascade(rest, done));
            return;
        }
        done += publish_now(&q, entries);
        if done >= MAX_CASCADE {
            drop_cascade();
            break;
        }
    }
    PENDING.with(|p| *p.borrow_mut() = None);
}

/// The rest of a long dead-letter cascade, a batch at a time with yields in between.
async fn continue_cascade(mut work: VecDeque<Work>, mut done: usize) {
    let mut batch = 0;
    while let Some((q, entries)) = work.pop_back() {
        PENDING.with(|p| *p.borrow_mut() = Some(VecDeque::new()));
        let n = publish_now(&q, entries);
        work.extend(PENDING.with(|p| p.borrow_mut().take()).unwrap_or_default());
        done += n;
        batch += n;
        if done >= MAX_CASCADE {
            PENDING.with(|p| *p.borrow_mut() = Some(work));
            drop_cascade();
            PENDING.with(|p| *p.borrow_mut() = None);
            return;
        }
        if batch >= INLINE_BUDGET {
            batch = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// Drop what a cascade past [`MAX_CASCADE`] still had pending.
fn drop_cascade() {
    let dropped: usize = PENDING
        .with(|p| p.borrow_mut().take())
        .unwrap_or_default()
        .iter()
        .map(|(_, e)| e.len())
        .sum();
    tracing::warn!(
        dropped,
        limit = MAX_CASCADE,
        "dead-letter cascade too large (a dead-letter exchange fanning out into queues that \
         dead-letter into it?): the rest of its dead letters are dropped"
    );
}

/// Route and enqueue dead letters; returns how many were handled.
fn publish_now(queue: &Arc<Queue>, entries: Vec<(Entry, Reason)>) -> usize {
    let n = entries.len();
    let (dlx, dlrk) = queue.dead_letter_target();
    let Some(dlx) = &dlx else {
        return n;
    };
    let Some(vhost) = queue.vhost_ref.upgrade() else {
        return n;
    };
    for (e, reason) in entries {
        let (msg, keys, headers) = make_message(queue, &e.msg, reason, dlx, dlrk.as_deref());
        // A delayed message exchange as the DLX holds the message for its `x-delay`.
        let Some(msg) = vhost.delay_from(dlx, msg, &headers) else {
            continue;
        };
        let key_refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
        let Some(targets) = vhost.route_from(dlx, &key_refs, Some(&headers)) else {
            tracing::debug!(queue = %queue.name, dlx = %dlx, "dead-letter exchange does not exist; messages dropped");
            return n;
        };
        let targets: Vec<Arc<Queue>> = targets
            .into_iter()
            .filter(|q| reason == Reason::Rejected || !is_cycle(&q.name, &headers))
            .collect();
        vhost.enqueue(&targets, msg);
    }
    n
}
