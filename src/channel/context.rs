//! What a channel works with: the connection's context (the broker, the user's rights, the
//! vhost, the frames queued for this loop turn, the event channel queues deliver through) and
//! the faults a frame can raise. Owned by the channel layer; the connection creates the context
//! and turns faults into closes.

use crate::protocol::AmqpError;
use crate::protocol::codec::put_method;
use crate::protocol::method::{self, DecodeError, Method};
use crate::queue::consumer::{Backlog, ConnEvent};
use crate::state::BrokerState;
use crate::vhost::VHost;
use amq_protocol::protocol::AMQPClass;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Per-connection context shared by the channels of the connection.
pub(crate) struct ConnCtx {
    /// Broker-wide state.
    pub broker: Arc<BrokerState>,
    /// Connection id (unique for the broker's lifetime).
    pub id: u64,
    /// The client address.
    pub peer: SocketAddr,
    /// Authenticated user.
    pub user: String,
    /// The user's permissions in this vhost, compiled.
    pub access: crate::auth::Access,
    /// The vhost opened by `connection.open`.
    pub vhost: Arc<VHost>,
    /// Negotiated frame_max.
    pub frame_max: u32,
    /// Frames waiting to be handed to the writer at the end of this loop turn.
    pub out: BytesMut,
    /// Exclusive queues this connection declared (deleted when it closes).
    pub exclusive_queues: Vec<Arc<crate::queue::Queue>>,
    /// Where queues send deliveries for this connection's consumers.
    pub events: mpsc::UnboundedSender<ConnEvent>,
    /// Output backlog shared with queues and the writer.
    pub backlog: Arc<Backlog>,
    /// The client accepts server-sent `basic.cancel` (capability `consumer_cancel_notify`).
    pub cancel_notify: bool,
    /// The client accepts `connection.blocked` / `unblocked` (capability `connection.blocked`).
    pub blocked_notify: bool,
    /// A message was published in this loop turn (the memory alarm blocks publishers).
    pub published: bool,
    /// An exchange or queue method ran in this loop turn: before its replies go out, the
    /// connection waits for the definitions journal to be synced (declare-ok means durable).
    pub topology_changed: bool,
    /// Channels that owe publisher confirms at the end of this loop turn.
    pub confirms_dirty: Vec<u16>,
    /// The broker's clock ([`crate::clock::now_ms`]) at this loop turn, read at most once per
    /// turn ([`ConnCtx::now`]).
    pub clock: Option<u64>,
    /// When to look for deliveries past their consumer timeout (the earliest deadline of a
    /// delivery made since the last look; acks do not move it, a look finds the next one).
    pub timeout_check: Option<u64>,
}

impl ConnCtx {
    /// RabbitMQ's permission check: `perm` on the `kind` ("queue" or "exchange") called `name`
    /// (the default exchange is `amq.default`), refused with its 403 text.
    #[inline]
    pub(crate) fn check(
        &mut self,
        perm: crate::auth::perms::Perm,
        kind: &str,
        name: &str,
    ) -> Result<(), AmqpError> {
        // The common case (`.*`, nothing changed since the last check) costs one atomic load.
        if self.access.allows_all(&self.broker.auth, perm) {
            return Ok(());
        }
        self.check_slow(perm, kind, name)
    }

    #[cold]
    fn check_slow(
        &mut self,
        perm: crate::auth::perms::Perm,
        kind: &str,
        name: &str,
    ) -> Result<(), AmqpError> {
        let name = if kind == "exchange" && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        if self.access.allows(&self.broker.auth, perm, name) {
            return Ok(());
        }
        Err(AmqpError::access_refused(format!(
            "access to {kind} '{name}' in vhost '{}' refused for user '{}'",
            self.vhost.name, self.user
        )))
    }

    /// A topic permission check on a routing key (only topic exchanges have them).
    pub(crate) fn check_topic(
        &mut self,
        perm: crate::auth::perms::Perm,
        exchange: &crate::exchange::Exchange,
        routing_key: &str,
    ) -> Result<(), AmqpError> {
        if exchange.def.kind != crate::exchange::ExchangeKind::Topic
            || !self.access.has_topic_permissions(&self.broker.auth)
        {
            return Ok(());
        }
        let x = exchange.def.name.as_str();
        if self
            .access
            .allows_topic(&self.broker.auth, perm, x, routing_key)
        {
            return Ok(());
        }
        Err(AmqpError::access_refused(format!(
            "access to topic '{routing_key}' in exchange '{x}' in vhost '{}' refused for user '{}'",
            self.vhost.name, self.user
        )))
    }

    /// The time of this loop turn: one clock read per turn, whatever the number of deliveries.
    pub(crate) fn now(&mut self) -> u64 {
        *self.clock.get_or_insert_with(crate::clock::now_ms)
    }

    /// A delivery made at `at` with a consumer timeout of `timeout_ms` (0: none).
    pub(crate) fn watch_timeout(&mut self, at: u64, timeout_ms: u64) {
        if timeout_ms == 0 {
            return;
        }
        let deadline = at + timeout_ms;
        if self.timeout_check.is_none_or(|t| deadline < t) {
            self.timeout_check = Some(deadline);
        }
    }

    /// Queue a method frame.
    pub(crate) fn send_method(&mut self, channel: u16, method: AMQPClass) {
        put_method(&mut self.out, channel, method);
    }
}

/// A fault raised while handling a frame.
pub(crate) enum Fault {
    /// Reply with `channel.close` (soft) or `connection.close` (hard).
    Amqp(AmqpError),
    /// Drop the socket without a close frame (RabbitMQ 3.10 does this for unknown methods).
    Drop(String),
}

impl From<AmqpError> for Fault {
    fn from(e: AmqpError) -> Self {
        Fault::Amqp(e)
    }
}

/// Decode a method frame's payload; unknown methods drop the socket.
pub(crate) fn decode_method(
    class_id: u16,
    method_id: u16,
    payload: &bytes::Bytes,
) -> Result<Method, Fault> {
    method::decode(class_id, method_id, payload).map_err(|e| match e {
        DecodeError::Unknown => Fault::Drop(format!("unknown method {class_id}/{method_id}")),
        DecodeError::Invalid(e) => Fault::Amqp(e),
    })
}
