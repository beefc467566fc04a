//! Consumers as queues see them: prefetch credit (per consumer and per channel, RabbitMQ 3.x
//! `basic.qos` semantics), priority, and the connection's event channel that deliveries go to.
//! Shared (`Arc`) between the channel that created the consumer and the queue it consumes from.

use super::{Entry, Queue};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use tokio::sync::mpsc;

/// How many bytes of deliveries may wait for a connection's socket before queues stop
/// delivering to its consumers (a consumer that does not read cannot make the broker buffer
/// without bound).
pub const MAX_CONNECTION_BACKLOG: usize = 4 * 1024 * 1024;

/// Events a connection task receives from the rest of the broker.
pub enum ConnEvent {
    /// A message for one of the connection's consumers.
    Deliver(Delivery),
    /// The queue of a consumer was deleted: send `basic.cancel` to the client.
    Cancelled {
        /// Channel of the consumer.
        channel: u16,
        /// Its tag.
        tag: Arc<str>,
    },
    /// The connection's backlog drained: queues may deliver again.
    Drained,
    /// The management API asks for the connection's channels and counters.
    Inspect(tokio::sync::oneshot::Sender<crate::stats::ConnSnapshot>),
    /// Close the connection with 320 CONNECTION_FORCED (its user or vhost was deleted).
    Close {
        /// The reply text after `CONNECTION_FORCED - `.
        text: String,
    },
    /// The message log synced a publish (confirm it now), or failed to write it (nack it).
    Synced {
        /// Channel of the publish.
        channel: u16,
        /// Its confirm sequence number.
        seq: u64,
        /// False if the log could not write it: nack instead.
        ok: bool,
    },
}

/// A message on its way to a consumer.
pub struct Delivery {
    /// The consumer.
    pub consumer: Arc<Consumer>,
    /// The queue it comes from.
    pub queue: Arc<Queue>,
    /// The message and its position.
    pub entry: Entry,
}

impl Delivery {
    /// The delivery could not be made (its channel or consumer went away meanwhile): give the
    /// message back to the queue as it was, and the credit back to the consumer.
    pub fn bounce(self) {
        self.consumer.return_credit(1);
        if self.consumer.no_ack {
            self.queue.return_undelivered(self.entry);
        } else {
            self.queue.return_undelivered_unacked(self.entry.seq);
        }
    }
}

/// Per-connection output backlog: deliveries on their way through the connection task
/// (`events`, added by queues) and encoded bytes waiting for the socket (`socket`, added by the
/// connection, subtracted by the writer). Queues stop delivering to a connection's consumers
/// while the sum is over [`MAX_CONNECTION_BACKLOG`]; the writer wakes them when it drains.
#[derive(Default)]
pub struct Backlog {
    /// Bytes of deliveries sent to the connection task and not yet encoded.
    pub events: AtomicUsize,
    /// Encoded bytes handed to the writer and not yet written.
    pub socket: AtomicUsize,
    /// Set when a queue held back a delivery because of the backlog.
    pub blocked: AtomicBool,
    /// Bytes written to the socket so far (the writer's count, for the management API).
    pub sent: std::sync::atomic::AtomicU64,
    /// Writes to the socket so far.
    pub writes: std::sync::atomic::AtomicU64,
}

impl Backlog {
    /// Bytes waiting in total.
    pub fn total(&self) -> usize {
        self.events.load(Ordering::Relaxed) + self.socket.load(Ordering::Relaxed)
    }

    /// Whether more deliveries may be queued.
    pub fn has_room(&self) -> bool {
        self.total() < MAX_CONNECTION_BACKLOG
    }
}

/// Channel-wide prefetch (`basic.qos` with `global=true`).
#[derive(Default)]
pub struct ChannelCredit {
    /// Limit (0 = none).
    pub limit: AtomicU32,
    /// Unacked deliveries to consumers of the channel.
    pub outstanding: AtomicU32,
}

/// A consumer.
pub struct Consumer {
    /// Consumer tag.
    pub tag: Arc<str>,
    /// Channel number.
    pub channel: u16,
    /// Owning connection id.
    pub conn_id: u64,
    /// No acknowledgements: messages are settled on delivery.
    pub no_ack: bool,
    /// Exclusive consumer.
    pub exclusive: bool,
    /// `x-priority`.
    pub priority: i64,
    /// Per-consumer prefetch (0 = unlimited).
    pub prefetch: u32,
    /// Unacked deliveries of this consumer.
    pub outstanding: AtomicU32,
    /// The channel's shared prefetch.
    pub channel_credit: Arc<ChannelCredit>,
    /// The connection's backlog.
    pub backlog: Arc<Backlog>,
    /// Where deliveries go.
    pub events: mpsc::UnboundedSender<ConnEvent>,
    /// Cleared when the consumer is cancelled.
    pub active: AtomicBool,
    /// Consumer timeout in ms for its deliveries (its `x-consumer-timeout`, else its queue's,
    /// else the broker's `consumer_timeout`; 0: none).
    pub timeout: u64,
}

impl Consumer {
    /// Whether the consumer may take one more message now.
    pub fn has_credit(&self) -> bool {
        if !self.active.load(Ordering::Relaxed) {
            return false;
        }
        if !self.backlog.has_room() {
            self.backlog.blocked.store(true, Ordering::Relaxed);
            return false;
        }
        if self.no_ack {
            return true;
        }
        let own = self.prefetch == 0 || self.outstanding.load(Ordering::Relaxed) < self.prefetch;
        let limit = self.channel_credit.limit.load(Ordering::Relaxed);
        let chan = limit == 0 || self.channel_credit.outstanding.load(Ordering::Relaxed) < limit;
        own && chan
    }

    /// Account for a delivery handed to this consumer.
    pub fn take_credit(&self) {
        if !self.no_ack {
            self.outstanding.fetch_add(1, Ordering::Relaxed);
            self.channel_credit
                .outstanding
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Give credit back (ack, nack, reject, requeue).
    pub fn return_credit(&self, n: u32) {
        if !self.no_ack && n > 0 {
            let _ = self
                .outstanding
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(n))
                });
            let _ = self.channel_credit.outstanding.fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |v| Some(v.saturating_sub(n)),
            );
        }
    }
}
