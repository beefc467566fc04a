//! Consumers on a channel: `basic.consume` / `cancel` / `qos` / `recover`, deliveries arriving
//! from queues (delivery tags, unacked bookkeeping), and server-side cancels.

use super::Channel;
use super::ConnCtx;
use super::delivery::Unacked;
use crate::args::{as_int, type_name};
use crate::protocol::AmqpError;
use crate::protocol::codec::{put_basic_deliver, put_content};
use crate::queue::consumer::{Consumer, Delivery};
use crate::queue::{Queue, delivery_size};
use amq_protocol::protocol::{AMQPClass, basic};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

impl Channel {
    pub(super) fn basic_qos(&mut self, ctx: &mut ConnCtx, m: basic::Qos) -> Result<(), AmqpError> {
        // RabbitMQ 3.x: global=false sets the limit of consumers created afterwards on this
        // channel; global=true a limit shared by all consumers of the channel.
        if m.global {
            self.credit
                .limit
                .store(m.prefetch_count as u32, Ordering::Relaxed);
            self.redispatch();
        } else {
            self.consumer_prefetch = m.prefetch_count as u32;
        }
        ctx.send_method(
            self.id,
            AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        );
        Ok(())
    }

    pub(super) fn basic_consume(
        &mut self,
        ctx: &mut ConnCtx,
        m: basic::Consume,
    ) -> Result<(), AmqpError> {
        let name = self.queue_name(m.queue.as_str())?;
        let q = if name == super::publish::REPLY_TO {
            // Direct reply-to: a hidden exclusive, auto-delete queue per consuming channel,
            // addressed by the name publishers on this channel get in `reply_to`.
            if !m.no_ack {
                return Err(AmqpError::precondition_failed(
                    "reply consumer cannot acknowledge",
                ));
            }
            if self.reply_queue.is_some() {
                return Err(AmqpError::precondition_failed("reply consumer already set"));
            }
            let def = crate::queue::QueueDef {
                // RabbitMQ's reply addresses are `amq.rabbitmq.reply-to.<opaque token>`.
                name: format!(
                    "{}.{}",
                    super::publish::REPLY_TO,
                    &super::generated_name("x")[2..]
                ),
                durable: false,
                exclusive: true,
                auto_delete: true,
                arguments: Default::default(),
            };
            let q = ctx.vhost.declare_queue(def, false, true, ctx.id)?.queue;
            ctx.exclusive_queues.push(q.clone());
            self.reply_queue = Some(q.name.to_string());
            q
        } else {
            ctx.check(crate::auth::perms::Perm::Read, "queue", &name)?;
            ctx.vhost.queue_for(&name, ctx.id)?
        };
        if q.args.quorum && self.credit.limit.load(Ordering::Relaxed) > 0 {
            // RabbitMQ 3.10.8 (observed): a connection error.
            return Err(AmqpError::not_implemented(format!(
                "{} does not support global qos",
                q.resource()
            ))
            .on(60, 20));
        }
        let tag: Arc<str> = if m.consumer_tag.as_str().is_empty() {
            super::generated_name("amq.ctag").into()
        } else {
            m.consumer_tag.as_str().into()
        };
        if self.consumers.contains_key(&tag) {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        let priority = match m.arguments.inner().get("x-priority") {
            None => 0,
            Some(v) => as_int(v).ok_or_else(|| {
                AmqpError::precondition_failed(format!(
                    "invalid arg 'x-priority' for {}: {{unacceptable_type,{}}}",
                    q.resource(),
                    type_name(v)
                ))
            })?,
        };
        // RabbitMQ 3.12+: the consumer's argument, else the queue's, else the broker's.
        let timeout = match m.arguments.inner().get("x-consumer-timeout") {
            None => q
                .consumer_timeout()
                .unwrap_or(ctx.broker.config.consumer_timeout),
            Some(v) => match as_int(v) {
                Some(n) if n >= 0 => n as u64,
                _ => {
                    return Err(AmqpError::precondition_failed(format!(
                        "invalid arg 'x-consumer-timeout' for {}: {}",
                        q.resource(),
                        crate::args::format_value(v)
                    )));
                }
            },
        };
        let consumer = Arc::new(Consumer {
            tag: tag.clone(),
            channel: self.id,
            conn_id: ctx.id,
            no_ack: m.no_ack,
            exclusive: m.exclusive,
            priority,
            prefetch: self.consumer_prefetch,
            outstanding: AtomicU32::new(0),
            channel_credit: self.credit.clone(),
            backlog: ctx.backlog.clone(),
            events: ctx.events.clone(),
            active: AtomicBool::new(true),
            timeout,
        });
        // consume-ok goes out before any delivery: deliveries reach the connection task as
        // events, which it handles after this frame.
        let mark = ctx.out.len();
        if !m.nowait {
            ctx.send_method(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: tag.as_ref().into(),
                })),
            );
        }
        if let Err(e) = q.add_consumer(consumer.clone()) {
            // Take back the consume-ok we queued: the error replaces it.
            ctx.out.truncate(mark);
            return Err(e);
        }
        self.consumers.insert(tag, (consumer, q));
        Ok(())
    }

    pub(super) fn basic_cancel(
        &mut self,
        ctx: &mut ConnCtx,
        m: basic::Cancel,
    ) -> Result<(), AmqpError> {
        let tag: Arc<str> = m.consumer_tag.as_str().into();
        self.cancel_consumer(ctx, &tag);
        if !m.nowait {
            ctx.send_method(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                    consumer_tag: m.consumer_tag,
                })),
            );
        }
        Ok(())
    }

    /// Remove a consumer from its queue (auto-deleting the queue if it was the last one).
    /// Its unacked messages stay unacked on the channel, as in RabbitMQ.
    pub(super) fn cancel_consumer(&mut self, ctx: &mut ConnCtx, tag: &Arc<str>) {
        if self
            .consumers
            .get(tag)
            .is_some_and(|(_, q)| self.reply_queue.as_deref() == Some(&*q.name))
        {
            self.reply_queue = None;
        }
        if let Some((c, q)) = self.consumers.remove(tag)
            && q.remove_consumer(&c)
        {
            ctx.vhost.remove_queue(&q);
        }
    }

    /// The queue of a consumer was deleted: forget it, and tell the client if it asked for
    /// `consumer_cancel_notify`.
    pub(crate) fn server_cancel(&mut self, ctx: &mut ConnCtx, tag: &Arc<str>) {
        if self.consumers.remove(tag).is_some() && ctx.cancel_notify {
            ctx.send_method(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: tag.as_ref().into(),
                    nowait: true,
                })),
            );
        }
    }

    pub(super) fn basic_recover(
        &mut self,
        ctx: &mut ConnCtx,
        requeue: bool,
        reply: bool,
    ) -> Result<(), AmqpError> {
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        self.requeue_all();
        if reply {
            ctx.send_method(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
            );
        }
        Ok(())
    }

    /// A delivery from a queue: assign a tag, remember it unless no-ack, write the frames.
    pub(crate) fn deliver(&mut self, ctx: &mut ConnCtx, d: Delivery) {
        let size = delivery_size(&d.entry);
        ctx.backlog.events.fetch_sub(size, Ordering::Relaxed);
        let current = self
            .consumers
            .get(&d.consumer.tag)
            .is_some_and(|(c, _)| Arc::ptr_eq(c, &d.consumer));
        if !current || self.state != super::ChannelState::Open {
            d.bounce();
            return;
        }
        self.next_tag += 1;
        let tag = self.next_tag;
        let e = &d.entry;
        if d.consumer.no_ack {
            self.counts.deliver_no_ack += 1;
        } else {
            self.counts.deliver += 1;
        }
        self.counts.redeliver += e.redelivered as u64;
        put_basic_deliver(
            &mut ctx.out,
            self.id,
            d.consumer.tag.as_bytes(),
            tag,
            e.redelivered,
            e.msg.exchange(),
            e.msg.routing_key(),
        );
        let props = crate::queue::dead_letter::delivered_properties(&d.queue, e, false);
        put_content(&mut ctx.out, self.id, &props, &e.msg.body, ctx.frame_max);
        if d.consumer.no_ack {
            // Settled on delivery: a stored message leaves the log now that it is written.
            d.queue.settled(&d.entry);
        } else {
            let delivered = ctx.now();
            ctx.watch_timeout(delivered, d.consumer.timeout);
            self.unacked.push_back(Unacked {
                tag,
                queue: d.queue,
                seq: d.entry.seq,
                consumer: Some(d.consumer),
                delivered,
            });
        }
    }

    /// Ask the queues of this channel's consumers to deliver (credit was freed).
    pub(crate) fn redispatch(&self) {
        for (_, q) in self.consumers.values() {
            q.dispatch();
        }
    }

    /// Cancel every consumer (channel or connection closing) without serving the queues'
    /// other consumers yet; returns the queues, to dispatch once unacked messages are back.
    pub(super) fn cancel_all(&mut self, ctx: &mut ConnCtx) -> Vec<Arc<Queue>> {
        let mut queues = Vec::new();
        for (_, (c, q)) in self.consumers.drain() {
            if q.remove_consumer(&c) {
                ctx.vhost.remove_queue(&q);
            } else {
                queues.push(q);
            }
        }
        queues
    }
}
