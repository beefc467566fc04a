//! The per-channel state machine, owned by its connection task: content assembly (method →
//! header → bodies, as RabbitMQ's `rabbit_command_assembler`) and the handling of channel-level
//! methods. Never awaits; effects are frames queued on the [`ConnCtx`] and calls into the vhost.

mod consume;
mod context;
mod delivery;
mod dispatch;
mod frames;
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
    /// Got the header, expecting more body bytes.
    Body(Partial),
}

/// A message whose body is still arriving.
struct Partial {
    publish: Publish,
    properties: Bytes,
    body_size: u64,
    parts: Vec<Bytes>,
    /// Body bytes still expected (`u64::MAX`: the body overflowed; frames are discarded until
    /// the next method, which is then a 505).
    remaining: u64,
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
    /// What the channel did with messages (the management API's `message_stats`).
    pub(crate) counts: crate::stats::MessageCounts,
}

/// Work buffered by a transaction until `tx.commit`.
#[derive(Default)]
struct TxBuffer {
    /// (method, properties, body, whether the body has an allocation of its own).
    publishes: Vec<(Publish, Bytes, Bytes, bool)>,
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
            counts: Default::default(),
            held: 0,
        }
    }

    /// The channel as the management API shows it.
    pub(crate) fn info(&self) -> crate::stats::ChannelInfo {
        crate::stats::ChannelInfo {
            number: self.id,
            prefetch_count: self.consumer_prefetch,
            global_prefetch_count: self.credit.limit.load(std::sync::atomic::Ordering::Relaxed),
            confirm: self.confirm_seq.is_some(),
            transactional: self.tx.is_some(),
            unacked: self.unacked.len() as u32,
            unconfirmed: self.confirm_seq.map_or(0, |s| (s - self.confirmed) as u32),
            consumers: self.consumers.len() as u32,
            counts: self.counts,
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
            // Every message up to `n` is confirmed now: acked before it, nacked at it.
            self.counts.confirm += n - self.confirmed;
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
            self.counts.confirm += seq - self.confirmed;
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
}
