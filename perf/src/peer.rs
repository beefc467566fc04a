//! The in-process peer: a minimal AMQP server on 127.0.0.1:0.
//!
//! - `Discard` (`--discard-peer`): completes the handshake, answers the setup methods, confirms
//!   every publish and throws the messages away, so the producers' rate is the tool's own ceiling.
//! - `Echo` (hidden `--fault none|drop|dup`): a toy broker that routes publishes (default
//!   exchange, direct/topic by equal key, fanout) to consumers round-robin, dropping or
//!   duplicating every 100th delivery on request: the verifier's own test subject.

use amq_protocol::protocol::{
    AMQPClass, basic, channel as chan, confirm, connection as conn, exchange, parse_class, queue,
};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::{Buf, Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, FramedRead};
use warren::protocol::codec::{
    CodecError, Frame, FrameCodec, put_basic_deliver, put_content, put_method,
};

use super::client::READ_CAPACITY;

/// What the peer does with publishes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Confirm and discard.
    Discard,
    /// Route to consumers, faithfully or with a fault.
    Echo(Fault),
}

/// Deliberate misbehaviour of the echo peer.
#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum Fault {
    /// Deliver every message exactly once.
    None,
    /// Drop every 100th delivery.
    Drop,
    /// Deliver every 100th message twice (without the redelivered flag).
    Dup,
}

const FRAME_MAX: u32 = 131072;

/// A message on its way to a consumer connection.
struct Delivery {
    channel: u16,
    tag: Arc<str>,
    exchange: Bytes,
    routing_key: Bytes,
    properties: Bytes,
    body: Bytes,
}

#[derive(Clone)]
struct ConsumerRef {
    conn: u64,
    channel: u16,
    tag: Arc<str>,
    tx: mpsc::Sender<Vec<Delivery>>,
}

/// Deliveries gathered per consumer connection: (connection id, its inbox, the batch).
type Routed = Vec<(u64, mpsc::Sender<Vec<Delivery>>, Vec<Delivery>)>;

#[derive(Default)]
struct Routing {
    /// exchange name → (type, bindings (queue, key))
    exchanges: HashMap<String, (String, Vec<(String, String)>)>,
    /// queue name → consumers and the round-robin cursor
    queues: HashMap<String, (Vec<ConsumerRef>, usize)>,
}

struct Peer {
    mode: Mode,
    deliveries: AtomicU64,
    next_id: AtomicU64,
    routing: Mutex<Routing>,
}

/// Start the peer; returns its address.
pub async fn start(mode: Mode) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let peer = Arc::new(Peer {
        mode,
        deliveries: AtomicU64::new(0),
        next_id: AtomicU64::new(1),
        routing: Mutex::new(Routing::default()),
    });
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let peer = peer.clone();
            let id = peer.next_id.fetch_add(1, Relaxed);
            tokio::spawn(async move {
                let _ = serve(peer.clone(), sock, id).await;
                let mut r = peer.routing.lock();
                for (consumers, _) in r.queues.values_mut() {
                    consumers.retain(|c| c.conn != id);
                }
            });
        }
    });
    Ok(addr)
}

/// A publish being assembled on one channel.
struct Incoming {
    exchange: Bytes,
    routing_key: Bytes,
    properties: Bytes,
    remaining: u64,
    body: BytesMut,
    single: Option<Bytes>,
}

#[derive(Default)]
struct ChannelState {
    confirm: bool,
    published: u64,
    confirmed: u64,
    incoming: Option<Incoming>,
    delivery_tag: u64,
}

type Res = Result<(), String>;

/// Channel states indexed by channel number.
#[derive(Default)]
struct Channels(Vec<ChannelState>);

impl Channels {
    fn get(&mut self, ch: u16) -> &mut ChannelState {
        let i = ch as usize;
        if i >= self.0.len() {
            self.0.resize_with(i + 1, ChannelState::default);
        }
        &mut self.0[i]
    }
}

/// Warren's frame codec, except that in discard mode publishes and their content frames are
/// skipped in the read buffer (only counted per channel), the cheapest possible sink.
struct PeerCodec {
    inner: FrameCodec,
    discard: bool,
    /// Publishes skipped per channel since the last look.
    published: Vec<u64>,
}

impl Decoder for PeerCodec {
    /// `None`: only skipped publishes (the caller should look at the counts).
    type Item = Option<Frame>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Option<Frame>>, CodecError> {
        let mut skipped = false;
        while self.discard && src.len() >= 11 {
            let size = u32::from_be_bytes([src[3], src[4], src[5], src[6]]) as usize;
            let total = size + 8;
            if src.len() < total {
                break;
            }
            match src[0] {
                2 | 3 => {}
                1 if src[7..11] == [0, 60, 0, 40] => {
                    let ch = u16::from_be_bytes([src[1], src[2]]) as usize;
                    if ch >= self.published.len() {
                        self.published.resize(ch + 1, 0);
                    }
                    self.published[ch] += 1;
                }
                _ => break,
            }
            src.advance(total);
            skipped = true;
        }
        match self.inner.decode(src)? {
            Some(f) => Ok(Some(Some(f))),
            None if skipped => Ok(Some(None)),
            None => Ok(None),
        }
    }
}

fn shortstr(p: &Bytes, at: &mut usize) -> Option<Bytes> {
    let len = *p.get(*at)? as usize;
    let s = p.get(*at + 1..*at + 1 + len)?;
    let out = p.slice_ref(s);
    *at += 1 + len;
    Some(out)
}

async fn serve(peer: Arc<Peer>, mut sock: TcpStream, id: u64) -> Res {
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut hdr = [0u8; 8];
    sock.read_exact(&mut hdr).await.map_err(|e| e.to_string())?;
    let (r, mut wr) = sock.into_split();
    if &hdr != b"AMQP\x00\x00\x09\x01" {
        let _ = wr.write_all(b"AMQP\x00\x00\x09\x01").await;
        return Err("bad protocol header".into());
    }
    let codec = PeerCodec {
        inner: FrameCodec { frame_max: 0 },
        discard: peer.mode == Mode::Discard,
        published: Vec::new(),
    };
    let mut rd = FramedRead::with_capacity(r, codec, READ_CAPACITY);
    let mut out = BytesMut::with_capacity(64 * 1024);
    put_connection_start(&mut out);
    let (tx, mut rx) = mpsc::channel::<Vec<Delivery>>(64);
    let mut channels = Channels::default();
    let mut frame_max = FRAME_MAX;
    let mut routed: Routed = Vec::new();
    let mut closing = false;
    loop {
        if !out.is_empty() {
            wr.write_all(&out).await.map_err(|e| e.to_string())?;
            out.clear();
        }
        if closing {
            return Ok(());
        }
        // Wait for a frame or a batch of deliveries, then take everything already available.
        let first = tokio::select! {
            f = rd.next() => Some(f),
            Some(batch) = rx.recv() => {
                encode_deliveries(&mut out, &mut channels, batch, frame_max);
                None
            }
        };
        let mut next = first;
        for _ in 0..8192 {
            let f = match next.take() {
                Some(f) => f,
                None => match rd.next().now_or_never() {
                    Some(f) => f,
                    None => break,
                },
            };
            let f = match f {
                None => return Ok(()),
                Some(Err(e)) => return Err(format!("{e:?}")),
                Some(Ok(None)) => continue,
                Some(Ok(Some(f))) => f,
            };
            if handle(
                &peer,
                id,
                f,
                &mut out,
                &mut channels,
                &mut frame_max,
                &tx,
                &mut routed,
            )? {
                closing = true;
                break;
            }
        }
        // Confirm everything complete so far, one multiple ack per channel.
        let skipped = &mut rd.decoder_mut().published;
        for (ch, st) in channels.0.iter_mut().enumerate() {
            if let Some(n) = skipped.get_mut(ch) {
                st.published += std::mem::take(n);
            }
            if st.confirm && st.published > st.confirmed {
                st.confirmed = st.published;
                super::client::put_ack(&mut out, ch as u16, st.published, true);
            }
        }
        for (_, tx, batch) in routed.drain(..) {
            if !batch.is_empty() {
                let _ = tx.send(batch).await;
            }
        }
        while let Ok(batch) = rx.try_recv() {
            encode_deliveries(&mut out, &mut channels, batch, frame_max);
        }
    }
}

/// The handshake's opening: connection.start with the peer's properties and capabilities.
fn put_connection_start(out: &mut BytesMut) {
    let mut caps = FieldTable::default();
    for c in [
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "exchange_exchange_bindings",
        "connection.blocked",
    ] {
        caps.insert(c.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert(
        "product".into(),
        AMQPValue::LongString("warren-perf peer".into()),
    );
    props.insert(
        "version".into(),
        AMQPValue::LongString(env!("CARGO_PKG_VERSION").into()),
    );
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    put_method(
        out,
        0,
        AMQPClass::Connection(conn::AMQPMethod::Start(conn::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: props,
            mechanisms: "PLAIN AMQPLAIN".into(),
            locales: "en_US".into(),
        })),
    );
}

fn encode_deliveries(
    out: &mut BytesMut,
    channels: &mut Channels,
    batch: Vec<Delivery>,
    frame_max: u32,
) {
    for d in batch {
        let st = channels.get(d.channel);
        st.delivery_tag += 1;
        put_basic_deliver(
            out,
            d.channel,
            d.tag.as_bytes(),
            st.delivery_tag,
            false,
            &d.exchange,
            &d.routing_key,
        );
        put_content(out, d.channel, &d.properties, &d.body, frame_max);
    }
}

/// Handle one frame; `Ok(true)` when the connection is done.
#[allow(clippy::too_many_arguments)]
fn handle(
    peer: &Peer,
    id: u64,
    f: Frame,
    out: &mut BytesMut,
    channels: &mut Channels,
    frame_max: &mut u32,
    tx: &mpsc::Sender<Vec<Delivery>>,
    routed: &mut Routed,
) -> Result<bool, String> {
    let echo = matches!(peer.mode, Mode::Echo(_));
    match f {
        Frame::Method {
            channel,
            class_id: 60,
            method_id: 40,
            payload,
        } => start_publish(channels.get(channel), echo, &payload)?,
        Frame::Header {
            channel,
            body_size,
            properties,
            ..
        } => content_header(peer, channels.get(channel), routed, body_size, properties),
        Frame::Body { channel, payload } => {
            content_body(peer, channels.get(channel), routed, echo, payload)
        }
        Frame::Heartbeat { .. } => {}
        Frame::Method {
            channel,
            class_id,
            method_id,
            payload,
        } => {
            if class_id == 60 && matches!(method_id, 80 | 90 | 120) {
                return Ok(false); // consumer acks: nothing to track
            }
            let m = parse_class(&payload[..])
                .map(|(_, m)| m)
                .map_err(|e| format!("undecodable {class_id}/{method_id}: {e:?}"))?;
            match m {
                AMQPClass::Connection(m) => {
                    return Ok(connection_method(m, channel, out, frame_max));
                }
                AMQPClass::Channel(m) => channel_method(m, channel, out, channels),
                AMQPClass::Exchange(m) => exchange_method(peer, m, channel, out),
                AMQPClass::Queue(m) => queue_method(peer, id, m, channel, out),
                AMQPClass::Basic(m) => basic_method(peer, id, m, channel, out, tx),
                AMQPClass::Confirm(m) => confirm_method(m, channel, out, channels),
                _ => {}
            }
        }
    }
    Ok(false)
}

/// basic.publish: start assembling a message (in echo mode with its exchange and routing key).
fn start_publish(st: &mut ChannelState, echo: bool, payload: &Bytes) -> Res {
    let mut at = 6;
    let (exchange, routing_key) = if echo {
        (
            shortstr(payload, &mut at).ok_or("bad publish")?,
            shortstr(payload, &mut at).ok_or("bad publish")?,
        )
    } else {
        (Bytes::new(), Bytes::new())
    };
    st.incoming = Some(Incoming {
        exchange,
        routing_key,
        properties: Bytes::new(),
        remaining: u64::MAX,
        body: BytesMut::new(),
        single: None,
    });
    Ok(())
}

/// A content header: the publish's properties and body size (complete if the body is empty).
fn content_header(
    peer: &Peer,
    st: &mut ChannelState,
    routed: &mut Routed,
    body_size: u64,
    properties: Bytes,
) {
    if let Some(inc) = st.incoming.as_mut() {
        inc.remaining = body_size;
        inc.properties = properties;
        if body_size == 0 {
            complete(peer, st, routed);
        }
    }
}

/// A content body frame: counted (in echo mode, kept) until the publish is complete.
fn content_body(
    peer: &Peer,
    st: &mut ChannelState,
    routed: &mut Routed,
    echo: bool,
    payload: Bytes,
) {
    if let Some(inc) = st.incoming.as_mut() {
        inc.remaining = inc.remaining.saturating_sub(payload.len() as u64);
        if echo {
            if inc.single.is_none() && inc.body.is_empty() && inc.remaining == 0 {
                inc.single = Some(payload);
            } else {
                if let Some(s) = inc.single.take() {
                    inc.body.extend_from_slice(&s);
                }
                inc.body.extend_from_slice(&payload);
            }
        }
        if inc.remaining == 0 {
            complete(peer, st, routed);
        }
    }
}

/// connection.*: the rest of the handshake and the close; `true` when the connection is done.
fn connection_method(
    m: conn::AMQPMethod,
    channel: u16,
    out: &mut BytesMut,
    frame_max: &mut u32,
) -> bool {
    match m {
        conn::AMQPMethod::StartOk(_) => put_method(
            out,
            channel,
            AMQPClass::Connection(conn::AMQPMethod::Tune(conn::Tune {
                channel_max: 2047,
                frame_max: FRAME_MAX,
                heartbeat: 0,
            })),
        ),
        conn::AMQPMethod::TuneOk(t) if t.frame_max != 0 => {
            *frame_max = t.frame_max.min(FRAME_MAX);
        }
        conn::AMQPMethod::Open(_) => put_method(
            out,
            channel,
            AMQPClass::Connection(conn::AMQPMethod::OpenOk(conn::OpenOk {})),
        ),
        conn::AMQPMethod::Close(_) => {
            put_method(
                out,
                channel,
                AMQPClass::Connection(conn::AMQPMethod::CloseOk(conn::CloseOk {})),
            );
            return true;
        }
        conn::AMQPMethod::CloseOk(_) => return true,
        _ => {}
    }
    false
}

/// channel.open and channel.close: a fresh channel state, and the reply.
fn channel_method(m: chan::AMQPMethod, channel: u16, out: &mut BytesMut, channels: &mut Channels) {
    match m {
        chan::AMQPMethod::Open(_) => {
            *channels.get(channel) = ChannelState::default();
            put_method(
                out,
                channel,
                AMQPClass::Channel(chan::AMQPMethod::OpenOk(chan::OpenOk {})),
            )
        }
        chan::AMQPMethod::Close(_) => {
            *channels.get(channel) = ChannelState::default();
            put_method(
                out,
                channel,
                AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
            )
        }
        _ => {}
    }
}

/// exchange.declare and exchange.delete: the routing table, and the reply.
fn exchange_method(peer: &Peer, m: exchange::AMQPMethod, channel: u16, out: &mut BytesMut) {
    match m {
        exchange::AMQPMethod::Declare(d) => {
            peer.routing
                .lock()
                .exchanges
                .entry(d.exchange.to_string())
                .or_insert_with(|| (d.kind.to_string(), Vec::new()));
            if !d.nowait {
                put_method(
                    out,
                    channel,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
                )
            }
        }
        exchange::AMQPMethod::Delete(d) => {
            peer.routing.lock().exchanges.remove(d.exchange.as_str());
            if !d.nowait {
                put_method(
                    out,
                    channel,
                    AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                )
            }
        }
        _ => {}
    }
}

/// queue.declare, bind, purge and delete: the routing table, and the reply.
fn queue_method(peer: &Peer, id: u64, m: queue::AMQPMethod, channel: u16, out: &mut BytesMut) {
    let reply = |out: &mut BytesMut, m: queue::AMQPMethod| {
        put_method(out, channel, AMQPClass::Queue(m));
    };
    match m {
        queue::AMQPMethod::Declare(d) => {
            let name = if d.queue.as_str().is_empty() {
                format!("amq.gen-{id}-{}", peer.next_id.fetch_add(1, Relaxed))
            } else {
                d.queue.to_string()
            };
            peer.routing.lock().queues.entry(name.clone()).or_default();
            if !d.nowait {
                reply(
                    out,
                    queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: name.into(),
                        message_count: 0,
                        consumer_count: 0,
                    }),
                )
            }
        }
        queue::AMQPMethod::Bind(b) => {
            if let Some((_, binds)) = peer.routing.lock().exchanges.get_mut(b.exchange.as_str()) {
                binds.push((b.queue.to_string(), b.routing_key.to_string()));
            }
            if !b.nowait {
                reply(out, queue::AMQPMethod::BindOk(queue::BindOk {}))
            }
        }
        queue::AMQPMethod::Purge(p) if !p.nowait => reply(
            out,
            queue::AMQPMethod::PurgeOk(queue::PurgeOk { message_count: 0 }),
        ),
        queue::AMQPMethod::Delete(d) => {
            peer.routing.lock().queues.remove(d.queue.as_str());
            if !d.nowait {
                reply(
                    out,
                    queue::AMQPMethod::DeleteOk(queue::DeleteOk { message_count: 0 }),
                )
            }
        }
        _ => {}
    }
}

/// basic.qos, consume and cancel (acks never get here): the consumers, and the reply.
fn basic_method(
    peer: &Peer,
    id: u64,
    m: basic::AMQPMethod,
    channel: u16,
    out: &mut BytesMut,
    tx: &mpsc::Sender<Vec<Delivery>>,
) {
    let reply = |out: &mut BytesMut, m: basic::AMQPMethod| {
        put_method(out, channel, AMQPClass::Basic(m));
    };
    match m {
        basic::AMQPMethod::Qos(_) => reply(out, basic::AMQPMethod::QosOk(basic::QosOk {})),
        basic::AMQPMethod::Consume(c) => {
            let tag: Arc<str> = if c.consumer_tag.as_str().is_empty() {
                format!("ctag-{id}-{channel}").into()
            } else {
                c.consumer_tag.as_str().into()
            };
            peer.routing
                .lock()
                .queues
                .entry(c.queue.to_string())
                .or_default()
                .0
                .push(ConsumerRef {
                    conn: id,
                    channel,
                    tag: tag.clone(),
                    tx: tx.clone(),
                });
            if !c.nowait {
                reply(
                    out,
                    basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                        consumer_tag: tag.as_ref().into(),
                    }),
                )
            }
        }
        basic::AMQPMethod::Cancel(c) => {
            for (consumers, _) in peer.routing.lock().queues.values_mut() {
                consumers.retain(|r| {
                    !(r.conn == id && r.channel == channel && *r.tag == *c.consumer_tag.as_str())
                });
            }
            if !c.nowait {
                reply(
                    out,
                    basic::AMQPMethod::CancelOk(basic::CancelOk {
                        consumer_tag: c.consumer_tag,
                    }),
                )
            }
        }
        _ => {}
    }
}

/// confirm.select: confirms on for the channel, and the reply.
fn confirm_method(
    m: confirm::AMQPMethod,
    channel: u16,
    out: &mut BytesMut,
    channels: &mut Channels,
) {
    if let confirm::AMQPMethod::Select(s) = m {
        channels.get(channel).confirm = true;
        if !s.nowait {
            put_method(
                out,
                channel,
                AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
            )
        }
    }
}

/// A publish is complete: count it for confirms and, in echo mode, route it.
fn complete(peer: &Peer, st: &mut ChannelState, routed: &mut Routed) {
    let Some(inc) = st.incoming.take() else {
        return;
    };
    st.published += 1;
    let Mode::Echo(fault) = peer.mode else {
        return;
    };
    let body = match inc.single {
        Some(b) => b,
        None => inc.body.freeze(),
    };
    let mut r = peer.routing.lock();
    let ex = String::from_utf8_lossy(&inc.exchange);
    let key = String::from_utf8_lossy(&inc.routing_key);
    let queues: Vec<String> = if ex.is_empty() {
        vec![key.to_string()]
    } else {
        match r.exchanges.get(ex.as_ref()) {
            Some((kind, binds)) => binds
                .iter()
                .filter(|(_, k)| kind == "fanout" || *k == key)
                .map(|(q, _)| q.clone())
                .collect(),
            None => Vec::new(),
        }
    };
    for q in queues {
        let Some((consumers, rr)) = r.queues.get_mut(&q) else {
            continue;
        };
        if consumers.is_empty() {
            continue;
        }
        let c = consumers[*rr % consumers.len()].clone();
        *rr = rr.wrapping_add(1);
        let n = peer.deliveries.fetch_add(1, Relaxed);
        let copies = match fault {
            Fault::Drop if n % 100 == 99 => 0,
            Fault::Dup if n % 100 == 99 => 2,
            _ => 1,
        };
        let slot = match routed.iter().position(|(id, ..)| *id == c.conn) {
            Some(i) => i,
            None => {
                routed.push((c.conn, c.tx.clone(), Vec::new()));
                routed.len() - 1
            }
        };
        for _ in 0..copies {
            routed[slot].2.push(Delivery {
                channel: c.channel,
                tag: c.tag.clone(),
                exchange: inc.exchange.clone(),
                routing_key: inc.routing_key.clone(),
                properties: inc.properties.clone(),
                body: body.clone(),
            });
        }
    }
}
