//! The per-channel state machine, owned by its connection task: content assembly (method →
//! header → bodies, as RabbitMQ's `rabbit_command_assembler`) and the handling of channel-level
//! methods. Never awaits; effects are frames queued on the [`ConnCtx`] and calls into the vhost.

mod delivery;
mod publish;
mod topology;

use crate::connection::{ConnCtx, Fault, decode_method};
use crate::protocol::AmqpError;
use crate::protocol::codec::Frame;
use crate::protocol::method::{Method, Publish};
use amq_protocol::protocol::{AMQPClass, basic, channel as chan, exchange as ex, queue as qu};
use bytes::{Bytes, BytesMut};
use delivery::{Settle, Unacked};
use std::collections::VecDeque;

pub use topology::generated_name;

/// Whether the channel can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    /// Open; frames are processed.
    Open,
    /// We sent `channel.close`; everything but close/close-ok is discarded.
    Closing,
}

/// What the connection should do with the channel after a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Keep it.
    Open,
    /// The client closed it (close-ok already queued): forget it.
    Closed,
}

/// Content assembly state.
enum Assembly {
    /// Expecting a method frame.
    Method,
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
pub struct Channel {
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
}

impl Channel {
    /// A freshly opened channel.
    pub fn new(id: u16) -> Channel {
        Channel {
            id,
            state: ChannelState::Open,
            assembly: Assembly::Method,
            next_tag: 0,
            unacked: VecDeque::new(),
            last_queue: None,
        }
    }

    /// Release what the channel holds: unacked messages go back to their queues (at their
    /// original positions, marked redelivered).
    pub fn release(&mut self, _ctx: &mut ConnCtx) {
        self.assembly = Assembly::Method;
        self.requeue_all();
    }

    /// Handle one frame on this (open) channel.
    pub fn handle_frame(&mut self, ctx: &mut ConnCtx, frame: Frame) -> Result<Outcome, Fault> {
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
                    // Checked at the header so an oversized body is never buffered; the body
                    // frames that follow are discarded by the closing channel.
                    return Err(AmqpError::precondition_failed(format!(
                        "message size {body_size} is larger than configured max size {max}"
                    ))
                    .on(60, 40)
                    .into());
                }
                if body_size == 0 {
                    self.publish(ctx, publish, properties, Bytes::new())?;
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
                if len > remaining {
                    return Err(AmqpError::unexpected_frame(format!(
                        "content body of {} bytes exceeds the declared body size {body_size}",
                        body_size - remaining + len
                    ))
                    .on(60, 40)
                    .into());
                }
                if len > 0 {
                    parts.push(payload);
                }
                let remaining = remaining - len;
                if remaining == 0 {
                    let body = join(parts, body_size as usize);
                    self.publish(ctx, publish, properties, body)?;
                } else {
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
        match m {
            AMQPClass::Channel(chan::AMQPMethod::Close(_)) => {
                ctx.send_method(
                    self.id,
                    AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
                );
                Ok(Outcome::Closed)
            }
            AMQPClass::Channel(chan::AMQPMethod::CloseOk(_)) => Ok(Outcome::Open),
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
                Ok(Outcome::Open)
            }
            AMQPClass::Exchange(ex::AMQPMethod::Declare(m)) => {
                self.exchange_declare(ctx, m).map(|_| Outcome::Open)
            }
            AMQPClass::Exchange(ex::AMQPMethod::Delete(m)) => {
                self.exchange_delete(ctx, m).map(|_| Outcome::Open)
            }
            AMQPClass::Exchange(ex::AMQPMethod::Bind(m)) => {
                self.exchange_bind(ctx, m, true).map(|_| Outcome::Open)
            }
            AMQPClass::Exchange(ex::AMQPMethod::Unbind(m)) => {
                let m = ex::Bind {
                    destination: m.destination,
                    source: m.source,
                    routing_key: m.routing_key,
                    nowait: m.nowait,
                    arguments: m.arguments,
                };
                self.exchange_bind(ctx, m, false).map(|_| Outcome::Open)
            }
            AMQPClass::Queue(qu::AMQPMethod::Declare(m)) => {
                self.queue_declare(ctx, m).map(|_| Outcome::Open)
            }
            AMQPClass::Queue(qu::AMQPMethod::Bind(m)) => {
                self.queue_bind(ctx, m).map(|_| Outcome::Open)
            }
            AMQPClass::Queue(qu::AMQPMethod::Unbind(m)) => {
                self.queue_unbind(ctx, m).map(|_| Outcome::Open)
            }
            AMQPClass::Queue(qu::AMQPMethod::Purge(m)) => {
                self.queue_purge(ctx, m).map(|_| Outcome::Open)
            }
            AMQPClass::Queue(qu::AMQPMethod::Delete(m)) => {
                self.queue_delete(ctx, m).map(|_| Outcome::Open)
            }
            AMQPClass::Basic(basic::AMQPMethod::Get(m)) => {
                self.basic_get(ctx, m).map(|_| Outcome::Open)
            }
            AMQPClass::Basic(basic::AMQPMethod::Ack(m)) => self
                .settle(m.delivery_tag, m.multiple, Settle::Ack)
                .map(|_| Outcome::Open),
            AMQPClass::Basic(basic::AMQPMethod::Nack(m)) => {
                let how = if m.requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                };
                self.settle(m.delivery_tag, m.multiple, how)
                    .map(|_| Outcome::Open)
            }
            AMQPClass::Basic(basic::AMQPMethod::Reject(m)) => {
                let how = if m.requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                };
                self.settle(m.delivery_tag, false, how)
                    .map(|_| Outcome::Open)
            }
            _ => Err(AmqpError::not_implemented(format!(
                "method {class_id}/{method_id} is not implemented yet"
            ))),
        }
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
