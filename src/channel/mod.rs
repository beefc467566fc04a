//! The per-channel state machine, owned by its connection task: content assembly (method →
//! header → bodies, as RabbitMQ's `rabbit_command_assembler`) and the handling of channel-level
//! methods. Never awaits; effects are frames queued on the [`ConnCtx`] and calls into the vhost.

mod consume;
mod context;
mod delivery;
pub(crate) mod harness;
mod publish;
mod topology;

use crate::protocol::AmqpError;
use crate::protocol::codec::Frame;
use crate::protocol::method::{Method, Publish};
use crate::queue::Queue;
use crate::queue::consumer::{ChannelCredit, Consumer};
use amq_protocol::protocol::{
    AMQPClass, basic, channel as chan, confirm, exchange as ex, queue as qu, tx,
};
use bytes::{Bytes, BytesMut};
pub(crate) use context::{ConnCtx, Fault, decode_method};
use delivery::{Settle, Unacked};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;

pub(crate) use topology::generated_name;

/// Whether the channel can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChannelState {
    /// Open; frames are processed.
    Open,
    /// We sent `channel.close`; everything but close/close-ok is discarded.
    Closing,
}

/// What a frame on a closing channel (we sent `channel.close`) amounts to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Closing {
    /// Discarded, as RabbitMQ's closing channel discards methods and whole contents.
    Discard,
    /// The client's close-ok: the channel is gone.
    Done,
    /// The client's own `channel.close` crossed ours: answer close-ok, keep waiting.
    Crossed,
}

/// What the connection should do with the channel after a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Keep it.
    Open,
    /// The client closed it (close-ok already queued): forget it.
    Closed,
}

/// Content assembly state.
enum Assembly {
    /// Expecting a method frame.
    Method,
    /// A body over `max_message_size`: its frames are counted, not kept; once it is complete
    /// the publish is refused (RabbitMQ answers after the whole body, observed on 3.10.8).
    Oversized { body_size: u64, remaining: u64 },
    /// On a closing channel: a discarded publish's content header, then `remaining` body
    /// bytes (kept only as counts, so content frames are still checked in order).
    Discarding { header: bool, remaining: u64 },
    /// Got `basic.publish`, expecting its content header.
    Header(Publish),
    /// Got the header, expecting `remaining` more body bytes.
    Body {
        publish: Publish,
        properties: Bytes,
        body_size: u64,
        parts: Vec<Bytes>,
        remaining: u64,
    },
}

/// One open channel.
pub(crate) struct Channel {
    /// Channel number.
    pub id: u16,
    /// Open or closing.
    pub state: ChannelState,
    assembly: Assembly,
    /// Last delivery tag handed out.
    next_tag: u64,
    /// Delivered, unacked messages in tag order.
    unacked: VecDeque<Unacked>,
    /// The queue most recently declared on this channel (for empty-name shortcuts).
    last_queue: Option<String>,
    /// Consumers by tag, with their queue.
    consumers: HashMap<Arc<str>, (Arc<Consumer>, Arc<Queue>)>,
    /// `basic.qos` global=false: prefetch of consumers created from now on.
    consumer_prefetch: u32,
    /// `basic.qos` global=true: shared prefetch of the channel's consumers.
    credit: Arc<ChannelCredit>,
    /// Publisher confirms: `Some(seq of the last publish)` once `confirm.select` was seen.
    confirm_seq: Option<u64>,
    /// Highest publish sequence already confirmed.
    confirmed: u64,
    /// Publishes of this turn to confirm with basic.nack.
    nacks: Vec<u64>,
    /// Publishes waiting for the message log to sync before they may be confirmed.
    unsynced: std::collections::BTreeSet<u64>,
    /// Transaction buffer once `tx.select` was seen.
    tx: Option<TxBuffer>,
    /// The hidden queue of this channel's direct reply-to consumer.
    reply_queue: Option<String>,
    /// Bytes this channel counts in the broker's `buffered` (a body still arriving, an
    /// uncommitted transaction's publishes): the memory alarm sees them.
    held: u64,
}

/// Work buffered by a transaction until `tx.commit`.
#[derive(Default)]
struct TxBuffer {
    publishes: Vec<(Publish, Bytes, Bytes)>,
    settles: Vec<(u64, bool, Settle)>,
}

impl Channel {
    /// A freshly opened channel.
    pub(crate) fn new(id: u16) -> Channel {
        Channel {
            id,
            state: ChannelState::Open,
            assembly: Assembly::Method,
            next_tag: 0,
            unacked: VecDeque::new(),
            last_queue: None,
            consumers: HashMap::new(),
            consumer_prefetch: 0,
            credit: Arc::new(ChannelCredit::default()),
            confirm_seq: None,
            confirmed: 0,
            nacks: Vec::new(),
            unsynced: Default::default(),
            tx: None,
            reply_queue: None,
            held: 0,
        }
    }

    /// Count `n` more bytes held (negative: fewer) in the broker's `buffered`.
    fn hold(&mut self, ctx: &ConnCtx, n: i64) {
        use std::sync::atomic::Ordering;
        if n >= 0 {
            self.held += n as u64;
            ctx.broker.buffered.fetch_add(n as u64, Ordering::Relaxed);
        } else {
            let n = n.unsigned_abs().min(self.held);
            self.held -= n;
            ctx.broker.buffered.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Release what the channel holds: unacked messages go back to their queues (at their
    /// original positions, marked redelivered).
    pub(crate) fn release(&mut self, ctx: &mut ConnCtx) {
        self.assembly = Assembly::Method;
        self.hold(ctx, -(self.held as i64));
        // Cancel first, so requeued messages are not handed back to this channel's consumers;
        // then requeue, then let the queues serve their other consumers (requeued first).
        let queues = self.cancel_all(ctx);
        self.requeue_all();
        for q in queues {
            q.dispatch();
        }
        self.tx = None;
    }

    /// The message log synced the record of publish `seq` (`ok`), or could not write it: then
    /// the publish is nacked.
    pub(crate) fn synced(&mut self, ctx: &mut ConnCtx, seq: u64, ok: bool) {
        if !self.unsynced.remove(&seq) {
            return;
        }
        if !ok {
            let pos = self.nacks.partition_point(|n| *n < seq);
            if self.nacks.get(pos) != Some(&seq) {
                self.nacks.insert(pos, seq);
            }
        }
        if !ctx.confirms_dirty.contains(&self.id) {
            ctx.confirms_dirty.push(self.id);
        }
    }

    /// Send the publisher confirms owed since the last call (one `basic.ack` with `multiple`
    /// for a run of publishes): called once per connection loop turn, after returns.
    pub(crate) fn flush_confirms(&mut self, ctx: &mut ConnCtx) {
        let Some(seq) = self.confirm_seq else { return };
        // Only a prefix can be confirmed: up to the first publish still waiting for a sync.
        let seq = self.unsynced.first().map_or(seq, |s| s - 1);
        // Nacks in order, with the acks before each coalesced.
        let (now, later): (Vec<u64>, Vec<u64>) = std::mem::take(&mut self.nacks)
            .into_iter()
            .partition(|n| *n <= seq);
        self.nacks = later;
        for n in now {
            if n - 1 > self.confirmed {
                ctx.send_method(
                    self.id,
                    AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                        delivery_tag: n - 1,
                        multiple: n - 1 - self.confirmed > 1,
                    })),
                );
            }
            ctx.send_method(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: n,
                    multiple: false,
                    requeue: false,
                })),
            );
            self.confirmed = n;
        }
        if seq > self.confirmed {
            let multiple = seq - self.confirmed > 1;
            self.confirmed = seq;
            ctx.send_method(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: seq,
                    multiple,
                })),
            );
        }
    }

    /// A frame on this channel after we sent `channel.close`: everything but close and
    /// close-ok is discarded (RabbitMQ 3.10.8, observed), but content frames still follow the
    /// assembler's rules (a content header with no publish before it is a 505) and a second
    /// `channel.open` is a 504.
    pub(crate) fn closing_frame(&mut self, frame: &Frame) -> Result<Closing, Fault> {
        let unexpected = |text: &str| -> Fault { AmqpError::unexpected_frame(text).into() };
        match (&mut self.assembly, frame) {
            (
                Assembly::Method,
                Frame::Method {
                    class_id,
                    method_id,
                    ..
                },
            ) => match (*class_id, *method_id) {
                (20, 41) => Ok(Closing::Done),
                (20, 40) => Ok(Closing::Crossed),
                (20, 10) => Err(AmqpError::channel_error("second 'channel.open' seen")
                    .on(20, 10)
                    .into()),
                (60, 40) => {
                    self.assembly = Assembly::Discarding {
                        header: true,
                        remaining: 0,
                    };
                    Ok(Closing::Discard)
                }
                _ => Ok(Closing::Discard),
            },
            (Assembly::Method, _) => Err(unexpected(
                "expected method frame, got non method frame instead",
            )),
            (Assembly::Discarding { header: true, .. }, Frame::Header { body_size, .. }) => {
                if *body_size == 0 {
                    self.assembly = Assembly::Method;
                } else {
                    self.assembly = Assembly::Discarding {
                        header: false,
                        remaining: *body_size,
                    };
                }
                Ok(Closing::Discard)
            }
            (Assembly::Discarding { header: true, .. }, _) => Err(AmqpError::unexpected_frame(
                "expected content header for class 60, got non content header frame instead",
            )
            .on(60, 40)
            .into()),
            (Assembly::Discarding { remaining, .. }, Frame::Body { payload, .. }) => {
                *remaining = remaining.saturating_sub(payload.len() as u64);
                if *remaining == 0 {
                    self.assembly = Assembly::Method;
                }
                Ok(Closing::Discard)
            }
            (Assembly::Discarding { .. }, _) => Err(AmqpError::unexpected_frame(
                "expected content body, got non content body frame instead",
            )
            .on(60, 40)
            .into()),
            // Not reached: a closing channel's assembly is reset when it closes.
            _ => Ok(Closing::Discard),
        }
    }

    /// Handle one frame on this (open) channel.
    pub(crate) fn handle_frame(
        &mut self,
        ctx: &mut ConnCtx,
        frame: Frame,
    ) -> Result<Outcome, Fault> {
        match (
            std::mem::replace(&mut self.assembly, Assembly::Method),
            frame,
        ) {
            (
                Assembly::Method,
                Frame::Method {
                    class_id,
                    method_id,
                    payload,
                    ..
                },
            ) => {
                let m = decode_method(class_id, method_id, &payload)?;
                self.handle_method(ctx, m, class_id, method_id)
                    .map_err(|e| Fault::Amqp(e.on_if_unset(class_id, method_id)))
            }
            (Assembly::Method, _) => Err(AmqpError::unexpected_frame(
                "expected method frame, got non method frame instead",
            )
            .into()),
            (
                Assembly::Header(publish),
                Frame::Header {
                    class_id,
                    weight,
                    body_size,
                    properties,
                    ..
                },
            ) => {
                if class_id != 60 {
                    return Err(AmqpError::unexpected_frame(format!(
                        "expected content header for class 60, got one for class {class_id} instead"
                    ))
                    .on(60, 40)
                    .into());
                }
                if weight != 0 {
                    return Err(AmqpError::unexpected_frame(
                        "expected content header for class 60, got non content header frame instead",
                    )
                    .on(60, 40)
                    .into());
                }
                let max = ctx.broker.config.limits.max_message_size;
                if body_size > max {
                    // Known at the header, refused once the body is in: nothing of it is kept.
                    self.assembly = Assembly::Oversized {
                        body_size,
                        remaining: body_size,
                    };
                    return Ok(Outcome::Open);
                }
                if body_size == 0 {
                    self.on_publish(ctx, publish, properties, Bytes::new())
                        .map_err(|e| e.on_if_unset(60, 40))?;
                } else {
                    self.assembly = Assembly::Body {
                        publish,
                        properties,
                        body_size,
                        parts: Vec::new(),
                        remaining: body_size,
                    };
                }
                Ok(Outcome::Open)
            }
            (Assembly::Header(_), _) => Err(AmqpError::unexpected_frame(
                "expected content header for class 60, got non content header frame instead",
            )
            .on(60, 40)
            .into()),
            (
                Assembly::Body {
                    publish,
                    properties,
                    body_size,
                    mut parts,
                    remaining,
                },
                Frame::Body { payload, .. },
            ) => {
                let len = payload.len() as u64;
                if remaining == u64::MAX {
                    // An overflowed body (see below): discard until the client sends a method.
                    self.assembly = Assembly::Body {
                        publish,
                        properties,
                        body_size,
                        parts,
                        remaining,
                    };
                    return Ok(Outcome::Open);
                }
                if len > remaining {
                    // RabbitMQ 3.10.8 accepts the frame and keeps waiting for a body that can
                    // never complete: the next method is then a 505. Do the same, keeping
                    // nothing more in memory.
                    let earlier = body_size - remaining;
                    self.hold(ctx, -(earlier as i64));
                    self.assembly = Assembly::Body {
                        publish,
                        properties: Bytes::new(),
                        body_size,
                        parts: Vec::new(),
                        remaining: u64::MAX,
                    };
                    return Ok(Outcome::Open);
                }
                let remaining = remaining - len;
                if len > 0 {
                    parts.push(payload);
                }
                if remaining == 0 {
                    // What earlier frames of this body held is released now.
                    let earlier = body_size - len;
                    self.hold(ctx, -(earlier as i64));
                    let body = join(parts, body_size as usize);
                    self.on_publish(ctx, publish, properties, body)
                        .map_err(|e| e.on_if_unset(60, 40))?;
                } else {
                    self.hold(ctx, len as i64);
                    self.assembly = Assembly::Body {
                        publish,
                        properties,
                        body_size,
                        parts,
                        remaining,
                    };
                }
                Ok(Outcome::Open)
            }
            (Assembly::Body { .. }, _) => Err(AmqpError::unexpected_frame(
                "expected content body, got non content body frame instead",
            )
            .on(60, 40)
            .into()),
            (
                Assembly::Oversized {
                    body_size,
                    remaining,
                },
                Frame::Body { payload, .. },
            ) => {
                let len = payload.len() as u64;
                if len < remaining {
                    self.assembly = Assembly::Oversized {
                        body_size,
                        remaining: remaining - len,
                    };
                    return Ok(Outcome::Open);
                }
                let max = ctx.broker.config.limits.max_message_size;
                Err(AmqpError::precondition_failed(format!(
                    "message size {body_size} is larger than configured max size {max}"
                ))
                .on(60, 40)
                .into())
            }
            (Assembly::Oversized { .. }, _) => Err(AmqpError::unexpected_frame(
                "expected content body, got non content body frame instead",
            )
            .on(60, 40)
            .into()),
            // Only a closing channel discards (see `closing_frame`); an open one never is.
            (Assembly::Discarding { .. }, _) => Ok(Outcome::Open),
        }
    }

    fn handle_method(
        &mut self,
        ctx: &mut ConnCtx,
        m: Method,
        class_id: u16,
        method_id: u16,
    ) -> Result<Outcome, AmqpError> {
        let m = match m {
            Method::Publish(p) => {
                if p.immediate {
                    return Err(AmqpError::not_implemented("immediate=true").on(60, 40));
                }
                self.assembly = Assembly::Header(p);
                return Ok(Outcome::Open);
            }
            Method::Other(m) => m,
        };
        if let AMQPClass::Channel(chan::AMQPMethod::Close(_)) = m {
            ctx.send_method(
                self.id,
                AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
            );
            return Ok(Outcome::Closed);
        }
        self.dispatch_method(ctx, m, class_id, method_id)
            .map(|()| Outcome::Open)
    }

    /// Every channel method but `basic.publish` and `channel.close`.
    fn dispatch_method(
        &mut self,
        ctx: &mut ConnCtx,
        m: AMQPClass,
        class_id: u16,
        method_id: u16,
    ) -> Result<(), AmqpError> {
        if matches!(m, AMQPClass::Exchange(_) | AMQPClass::Queue(_)) {
            ctx.topology_changed = true;
        }
        match m {
            // RabbitMQ 3.10.8: close-ok for a close it never sent (observed).
            AMQPClass::Channel(chan::AMQPMethod::CloseOk(_)) => Err(AmqpError::new(
                crate::protocol::ReplyCode::CommandInvalid,
                "unimplemented method",
            )),
            AMQPClass::Channel(chan::AMQPMethod::Open(_)) => {
                Err(AmqpError::channel_error("second 'channel.open' seen"))
            }
            AMQPClass::Channel(chan::AMQPMethod::Flow(f)) => {
                if !f.active {
                    return Err(AmqpError::not_implemented("active=false"));
                }
                ctx.send_method(
                    self.id,
                    AMQPClass::Channel(chan::AMQPMethod::FlowOk(chan::FlowOk { active: true })),
                );
                Ok(())
            }
            AMQPClass::Exchange(ex::AMQPMethod::Declare(m)) => self.exchange_declare(ctx, m),
            AMQPClass::Exchange(ex::AMQPMethod::Delete(m)) => self.exchange_delete(ctx, m),
            AMQPClass::Exchange(ex::AMQPMethod::Bind(m)) => self.exchange_bind(ctx, m, true),
            AMQPClass::Exchange(ex::AMQPMethod::Unbind(m)) => {
                let m = ex::Bind {
                    destination: m.destination,
                    source: m.source,
                    routing_key: m.routing_key,
                    nowait: m.nowait,
                    arguments: m.arguments,
                };
                self.exchange_bind(ctx, m, false)
            }
            AMQPClass::Queue(qu::AMQPMethod::Declare(m)) => self.queue_declare(ctx, m),
            AMQPClass::Queue(qu::AMQPMethod::Bind(m)) => self.queue_bind(ctx, m),
            AMQPClass::Queue(qu::AMQPMethod::Unbind(m)) => self.queue_unbind(ctx, m),
            AMQPClass::Queue(qu::AMQPMethod::Purge(m)) => self.queue_purge(ctx, m),
            AMQPClass::Queue(qu::AMQPMethod::Delete(m)) => self.queue_delete(ctx, m),
            AMQPClass::Basic(basic::AMQPMethod::Get(m)) => self.basic_get(ctx, m),
            AMQPClass::Basic(basic::AMQPMethod::Ack(m)) => {
                self.settle_or_buffer(m.delivery_tag, m.multiple, Settle::Ack)
            }
            AMQPClass::Basic(basic::AMQPMethod::Nack(m)) => {
                let how = if m.requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                };
                self.settle_or_buffer(m.delivery_tag, m.multiple, how)
            }
            AMQPClass::Basic(basic::AMQPMethod::Reject(m)) => {
                let how = if m.requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                };
                self.settle_or_buffer(m.delivery_tag, false, how)
            }
            AMQPClass::Basic(basic::AMQPMethod::Qos(m)) => self.basic_qos(ctx, m),
            AMQPClass::Basic(basic::AMQPMethod::Consume(m)) => self.basic_consume(ctx, m),
            AMQPClass::Basic(basic::AMQPMethod::Cancel(m)) => self.basic_cancel(ctx, m),
            AMQPClass::Basic(basic::AMQPMethod::Recover(m)) => {
                self.basic_recover(ctx, m.requeue, true)
            }
            AMQPClass::Basic(basic::AMQPMethod::RecoverAsync(m)) => {
                self.basic_recover(ctx, m.requeue, false)
            }
            AMQPClass::Confirm(confirm::AMQPMethod::Select(m)) => {
                if self.tx.is_some() {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                if self.confirm_seq.is_none() {
                    self.confirm_seq = Some(0);
                }
                if !m.nowait {
                    ctx.send_method(
                        self.id,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
                Ok(())
            }
            AMQPClass::Tx(tx::AMQPMethod::Select(_)) => {
                if self.confirm_seq.is_some() {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                self.tx.get_or_insert_with(TxBuffer::default);
                ctx.send_method(
                    self.id,
                    AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                );
                Ok(())
            }
            AMQPClass::Tx(tx::AMQPMethod::Commit(_)) => {
                let Some(buf) = self.tx.replace(TxBuffer::default()) else {
                    return Err(AmqpError::precondition_failed(
                        "channel is not transactional",
                    ));
                };
                self.hold(ctx, -(self.held as i64));
                for (p, props, body) in buf.publishes {
                    self.publish(ctx, p, props, body)?;
                }
                for (tag, multiple, how) in buf.settles {
                    self.settle(tag, multiple, how)?;
                }
                ctx.send_method(
                    self.id,
                    AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                );
                Ok(())
            }
            AMQPClass::Tx(tx::AMQPMethod::Rollback(_)) => {
                if self.tx.replace(TxBuffer::default()).is_none() {
                    return Err(AmqpError::precondition_failed(
                        "channel is not transactional",
                    ));
                }
                self.hold(ctx, -(self.held as i64));
                ctx.send_method(
                    self.id,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
                Ok(())
            }
            _ => Err(AmqpError::not_implemented(format!(
                "method {class_id}/{method_id} is not implemented yet"
            ))),
        }
    }
}

impl Channel {
    /// A complete message: buffered in a transaction, else published (and counted for
    /// confirms).
    fn on_publish(
        &mut self,
        ctx: &mut ConnCtx,
        p: Publish,
        properties: Bytes,
        body: Bytes,
    ) -> Result<(), AmqpError> {
        if let Some(buf) = &mut self.tx {
            // Unknown exchanges are reported at publish time, as RabbitMQ does.
            ctx.vhost.exchange(&String::from_utf8_lossy(&p.exchange))?;
            let size = (properties.len() + body.len()) as i64;
            buf.publishes.push((p, properties, body));
            self.hold(ctx, size);
            return Ok(());
        }
        if let Some(seq) = &mut self.confirm_seq {
            *seq += 1;
            if !ctx.confirms_dirty.contains(&self.id) {
                ctx.confirms_dirty.push(self.id);
            }
        }
        let accepted = self.publish(ctx, p, properties, body)?;
        if !accepted && let Some(seq) = self.confirm_seq {
            // Refused by a queue (x-overflow reject-publish): confirmed with basic.nack.
            let pos = self.nacks.partition_point(|n| *n < seq);
            self.nacks.insert(pos, seq);
        }
        Ok(())
    }

    /// Ack/nack/reject now, or at commit in a transaction (the tag is checked now).
    fn settle_or_buffer(&mut self, tag: u64, multiple: bool, how: Settle) -> Result<(), AmqpError> {
        if let Some(buf) = &mut self.tx {
            let known = (multiple && tag == 0) || self.unacked.iter().any(|u| u.tag == tag);
            if !known {
                return Err(AmqpError::precondition_failed(format!(
                    "unknown delivery tag {tag}"
                )));
            }
            buf.settles.push((tag, multiple, how));
            return Ok(());
        }
        self.settle(tag, multiple, how)
    }
}

/// Join body frames; a single frame is passed through without a copy.
fn join(mut parts: Vec<Bytes>, size: usize) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().unwrap_or_default(),
        _ => {
            let mut b = BytesMut::with_capacity(size);
            for p in parts {
                b.extend_from_slice(&p);
            }
            b.freeze()
        }
    }
}
