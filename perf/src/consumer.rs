//! Consumers: one connection, channel and basic.consume each. The read loop decodes
//! basic.deliver by hand, measures end-to-end latency, marks message ids in the verifier's
//! bitsets and batches acks into one write per burst of frames.

use crate::client::{Conn, Res, Uri, decode_deliver, describe_close, put_ack};
use crate::stats::{AtomicBits, AtomicHistogram, Histogram};
use crate::{Control, ID_MASK, now_ns};
use amq_protocol::protocol::{AMQPClass, basic};
use bytes::BytesMut;
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tokio::io::AsyncWriteExt;
use warren::protocol::codec::Frame;

/// What one consumer does.
#[derive(Clone, Debug)]
pub struct ConsumerCfg {
    /// Consumer number.
    pub id: usize,
    /// Index of its queue.
    pub queue_idx: usize,
    /// Its queue.
    pub queue: String,
    /// no-ack consumer.
    pub autoack: bool,
    /// basic.qos prefetch (0 = none).
    pub prefetch: u16,
    /// Ack every K messages (multiple=true when K > 1).
    pub multi_ack: u64,
}

/// Counters the reporter, the drain loop and the verifier read.
#[derive(Default)]
pub struct ConsumerStats {
    /// Deliveries.
    pub received: AtomicU64,
    /// Deliveries of ids not seen before on this queue.
    pub unique: AtomicU64,
    /// Second deliveries without the redelivered flag.
    pub duplicated: AtomicU64,
    /// Second deliveries with the redelivered flag.
    pub redelivered: AtomicU64,
    /// Ids no producer sent to this queue.
    pub unexpected: AtomicU64,
    /// When the last delivery arrived (ns since start).
    pub last_ns: AtomicU64,
    /// Latencies since the reporter last looked.
    pub latency: AtomicHistogram,
}

/// Per (queue, producer) bitsets of the ids received; `None` where the producer does not
/// route to the queue.
pub type SeenRow = Vec<Option<AtomicBits>>;

/// Connect, set the prefetch and start consuming.
pub async fn setup(uri: &Uri, cfg: &ConsumerCfg) -> Res<Conn> {
    let mut c = Conn::connect(uri, &format!("warren-perf consumer {}", cfg.id)).await?;
    c.open_channel(1).await?;
    if !cfg.autoack && cfg.prefetch > 0 {
        c.rpc(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: cfg.prefetch,
                global: false,
            })),
            (60, 11),
        )
        .await?;
    }
    c.rpc(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: cfg.queue.as_str().into(),
            consumer_tag: format!("warren-perf-{}", cfg.id).into(),
            no_local: false,
            no_ack: cfg.autoack,
            exclusive: false,
            nowait: false,
            arguments: Default::default(),
        })),
        (60, 21),
    )
    .await?;
    Ok(c)
}

/// The message being assembled from deliver, header and body frames.
struct Assembly {
    tag: u64,
    redelivered: bool,
    remaining: u64,
    prefix: [u8; 16],
    have: usize,
}

/// Consume until halted; returns the latency histogram of the whole run.
pub async fn run(
    mut c: Conn,
    cfg: ConsumerCfg,
    stats: Arc<ConsumerStats>,
    seen: Option<Arc<Vec<SeenRow>>>,
    ctl: Arc<Control>,
) -> Res<Histogram> {
    let ack_every = if cfg.prefetch > 0 {
        cfg.multi_ack.min(cfg.prefetch as u64)
    } else {
        cfg.multi_ack
    }
    .max(1);
    let multiple = ack_every > 1;
    let manual = !cfg.autoack;
    let row = seen.as_ref().map(|s| &s[cfg.queue_idx]);
    let mut acks = BytesMut::with_capacity(16 * 1024);
    let mut pending = 0u64;
    let mut last_tag = 0u64;
    let mut hist = Histogram::default();
    let mut msg: Option<Assembly> = None;
    let (mut received, mut unique, mut dups, mut redelivered, mut unexpected) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut result = Ok(());
    loop {
        let item = match c.rd.next().now_or_never() {
            Some(item) => item,
            None => {
                if !acks.is_empty() {
                    if let Err(e) = c.wr.write_all(&acks).await {
                        result = Err(format!("consumer {}: write: {e}", cfg.id));
                        break;
                    }
                    acks.clear();
                }
                tokio::select! {
                    item = c.rd.next() => item,
                    _ = ctl.halt.cancelled() => break,
                }
            }
        };
        let frame = match item {
            None => {
                result = Err(format!(
                    "consumer {}: the broker closed the connection",
                    cfg.id
                ));
                break;
            }
            Some(Err(e)) => {
                result = Err(format!("consumer {}: bad frame: {e:?}", cfg.id));
                break;
            }
            Some(Ok(f)) => f,
        };
        let done = match frame {
            Frame::Method {
                class_id: 60,
                method_id: 60,
                payload,
                ..
            } => {
                let Some((tag, redeliv)) = decode_deliver(&payload) else {
                    result = Err(format!("consumer {}: bad basic.deliver", cfg.id));
                    break;
                };
                msg = Some(Assembly {
                    tag,
                    redelivered: redeliv,
                    remaining: u64::MAX,
                    prefix: [0; 16],
                    have: 0,
                });
                false
            }
            Frame::Header { body_size, .. } => match msg.as_mut() {
                Some(m) => {
                    m.remaining = body_size;
                    body_size == 0
                }
                None => false,
            },
            Frame::Body { payload, .. } => match msg.as_mut() {
                Some(m) => {
                    if m.have < 16 {
                        let k = (16 - m.have).min(payload.len());
                        m.prefix[m.have..m.have + k].copy_from_slice(&payload[..k]);
                        m.have += k;
                    }
                    m.remaining = m.remaining.saturating_sub(payload.len() as u64);
                    m.remaining == 0
                }
                None => false,
            },
            Frame::Method {
                class_id,
                method_id,
                payload,
                ..
            } => {
                match (class_id, method_id) {
                    (10, 50) | (20, 40) => {
                        result = Err(format!("consumer {}: {}", cfg.id, describe_close(&payload)));
                        break;
                    }
                    (60, 30) => {
                        eprintln!(
                            "warren-perf: the broker cancelled consumer {} (queue {})",
                            cfg.id, cfg.queue
                        );
                        break;
                    }
                    _ => {}
                }
                false
            }
            Frame::Heartbeat { .. } => false,
        };
        if !done {
            continue;
        }
        let Some(m) = msg.take() else { continue };
        let now = now_ns();
        received += 1;
        stats.received.store(received, Relaxed);
        stats.last_ns.store(now, Relaxed);
        if m.have == 16 {
            let id = u64::from_be_bytes(m.prefix[..8].try_into().unwrap());
            let ts = u64::from_be_bytes(m.prefix[8..].try_into().unwrap());
            let lat = now.saturating_sub(ts);
            hist.record(lat);
            stats.latency.record(lat);
            if let Some(row) = row {
                let bits = row.get((id >> 48) as usize).and_then(Option::as_ref);
                match bits.and_then(|b| b.test_and_set(id & ID_MASK)) {
                    Some(false) => {
                        unique += 1;
                        stats.unique.store(unique, Relaxed);
                    }
                    Some(true) if m.redelivered => {
                        redelivered += 1;
                        stats.redelivered.store(redelivered, Relaxed);
                    }
                    Some(true) => {
                        dups += 1;
                        stats.duplicated.store(dups, Relaxed);
                    }
                    None => {
                        unexpected += 1;
                        stats.unexpected.store(unexpected, Relaxed);
                    }
                }
            }
        }
        if manual {
            pending += 1;
            last_tag = m.tag;
            if pending >= ack_every {
                put_ack(&mut acks, 1, m.tag, multiple);
                pending = 0;
                if acks.len() >= 64 * 1024 {
                    if let Err(e) = c.wr.write_all(&acks).await {
                        result = Err(format!("consumer {}: write: {e}", cfg.id));
                        break;
                    }
                    acks.clear();
                }
            }
        }
    }
    if result.is_ok() {
        if manual && pending > 0 {
            put_ack(&mut acks, 1, last_tag, true);
        }
        if !acks.is_empty() {
            let _ = c.wr.write_all(&acks).await;
        }
        c.close().await;
    } else if let Err(e) = &result {
        ctl.fail(e.clone());
    }
    result.map(|_| hist)
}
