//! Exchange, queue and binding methods of a channel: argument mapping from the wire to
//! [`VHost`](crate::vhost::VHost) calls, `nowait`, and the `-ok` replies.

use super::Channel;
use super::ConnCtx;
use crate::auth::perms::Perm;
use crate::exchange::{BindingDef, Destination, ExchangeDef, ExchangeKind};
use crate::protocol::AmqpError;
use crate::queue::QueueDef;
use amq_protocol::protocol::{AMQPClass, exchange as ex, queue as qu};
use rand::RngCore;

/// `amq.gen-` + 22 base64url characters of 16 random bytes, like RabbitMQ's `rabbit_guid`.
pub(crate) fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut raw = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut raw);
    let mut bits: u128 = u128::from_be_bytes(raw);
    let mut s = String::with_capacity(prefix.len() + 23);
    s.push_str(prefix);
    s.push('-');
    let mut chars = [0u8; 22];
    for c in chars.iter_mut().rev() {
        *c = ALPHABET[(bits & 63) as usize];
        bits >>= 6;
    }
    s.push_str(std::str::from_utf8(&chars).unwrap_or_default());
    s
}

/// RabbitMQ's `binding_action` checks: write on the destination, read on the source, then the
/// topic permission on the routing key when the source is a topic exchange.
fn check_binding(ctx: &mut ConnCtx, b: &BindingDef) -> Result<(), AmqpError> {
    match &b.destination {
        Destination::Queue(q) => ctx.check(Perm::Write, "queue", q)?,
        Destination::Exchange(x) if !x.is_empty() => ctx.check(Perm::Write, "exchange", x)?,
        Destination::Exchange(_) => {}
    }
    if b.source.is_empty() {
        return Ok(());
    }
    ctx.check(Perm::Read, "exchange", &b.source)?;
    if let Some(x) = ctx.vhost.exchanges.get(&b.source).map(|x| x.clone()) {
        ctx.check_topic(Perm::Read, &x, &b.routing_key)?;
    }
    Ok(())
}

/// The vhost's `max-queues` limit, checked before a queue is created (RabbitMQ's 406 text).
fn check_queue_limit(ctx: &mut ConnCtx, name: &str) -> Result<(), AmqpError> {
    let data = ctx.broker.auth.snapshot();
    if let Some(limit) = data
        .vhosts
        .get(&ctx.vhost.name)
        .and_then(|v| v.limit("max-queues"))
        && ctx.vhost.queues.len() as u64 >= limit
    {
        return Err(AmqpError::precondition_failed(format!(
            "cannot declare queue '{name}': queue limit in vhost '{}' ({limit}) is reached",
            ctx.vhost.name
        )));
    }
    Ok(())
}

impl Channel {
    fn reply(&self, ctx: &mut ConnCtx, nowait: bool, m: AMQPClass) {
        if !nowait {
            ctx.send_method(self.id, m);
        }
    }

    /// Resolve AMQP's "empty queue name = last declared queue on this channel" shortcut.
    pub(super) fn queue_name(&self, name: &str) -> Result<String, AmqpError> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    pub(super) fn exchange_declare(
        &mut self,
        ctx: &mut ConnCtx,
        m: ex::Declare,
    ) -> Result<(), AmqpError> {
        let kind_name = m.kind.as_str();
        let name = m.exchange.as_str();
        if !m.passive && !name.is_empty() {
            ctx.check(Perm::Configure, "exchange", name)?;
            // An alternate exchange is checked only when the exchange is created (RabbitMQ):
            // read on the new exchange, write on the alternate.
            if !ctx.vhost.exchanges.contains_key(name)
                && let Some(ae) = m
                    .arguments
                    .inner()
                    .get("alternate-exchange")
                    .and_then(crate::args::as_string)
            {
                ctx.check(Perm::Read, "exchange", name)?;
                ctx.check(Perm::Write, "exchange", &ae)?;
            }
        }
        let def = ExchangeDef {
            name: m.exchange.to_string(),
            kind: ExchangeKind::parse(kind_name).unwrap_or(ExchangeKind::Direct),
            durable: m.durable,
            auto_delete: m.auto_delete,
            internal: m.internal,
            arguments: m.arguments,
        };
        ctx.vhost.declare_exchange(def, kind_name, m.passive)?;
        self.reply(
            ctx,
            m.nowait,
            AMQPClass::Exchange(ex::AMQPMethod::DeclareOk(ex::DeclareOk {})),
        );
        Ok(())
    }

    pub(super) fn exchange_delete(
        &mut self,
        ctx: &mut ConnCtx,
        m: ex::Delete,
    ) -> Result<(), AmqpError> {
        let name = m.exchange.as_str();
        // The default and amq.* exchanges are refused by the vhost first, as in RabbitMQ.
        if !name.is_empty() && !name.starts_with("amq.") {
            ctx.check(Perm::Configure, "exchange", name)?;
        }
        ctx.vhost.delete_exchange(name, m.if_unused)?;
        self.reply(
            ctx,
            m.nowait,
            AMQPClass::Exchange(ex::AMQPMethod::DeleteOk(ex::DeleteOk {})),
        );
        Ok(())
    }

    pub(super) fn exchange_bind(
        &mut self,
        ctx: &mut ConnCtx,
        m: ex::Bind,
        bind: bool,
    ) -> Result<(), AmqpError> {
        let b = BindingDef {
            source: m.source.to_string(),
            destination: Destination::Exchange(m.destination.as_str().into()),
            routing_key: m.routing_key.to_string(),
            arguments: m.arguments,
        };
        check_binding(ctx, &b)?;
        if bind {
            ctx.vhost.bind(b, ctx.id)?;
            self.reply(
                ctx,
                m.nowait,
                AMQPClass::Exchange(ex::AMQPMethod::BindOk(ex::BindOk {})),
            );
        } else {
            ctx.vhost.unbind(b, ctx.id)?;
            self.reply(
                ctx,
                m.nowait,
                AMQPClass::Exchange(ex::AMQPMethod::UnbindOk(ex::UnbindOk {})),
            );
        }
        Ok(())
    }

    pub(super) fn queue_declare(
        &mut self,
        ctx: &mut ConnCtx,
        m: qu::Declare,
    ) -> Result<(), AmqpError> {
        if m.passive && m.queue.as_str() == super::publish::REPLY_TO {
            // RabbitMQ answers a passive declare of the reply-to pseudo queue.
            self.reply(
                ctx,
                m.nowait,
                AMQPClass::Queue(qu::AMQPMethod::DeclareOk(qu::DeclareOk {
                    queue: m.queue,
                    message_count: 0,
                    // 1 when this channel consumes its replies (RabbitMQ 3.10.8, observed).
                    consumer_count: self.reply_queue.is_some() as u32,
                })),
            );
            return Ok(());
        }
        let server_named = m.queue.as_str().is_empty() && !m.passive;
        let name = if server_named {
            generated_name("amq.gen")
        } else {
            self.queue_name(m.queue.as_str())?
        };
        if !m.passive {
            ctx.check(Perm::Configure, "queue", &name)?;
            if !ctx.vhost.queues.contains_key(&name) {
                // A dead-letter exchange is checked only when the queue is created (RabbitMQ):
                // read on the queue, write on the exchange.
                if let Some(dlx) = m
                    .arguments
                    .inner()
                    .get("x-dead-letter-exchange")
                    .and_then(crate::args::as_string)
                {
                    ctx.check(Perm::Read, "queue", &name)?;
                    ctx.check(Perm::Write, "exchange", &dlx)?;
                }
                check_queue_limit(ctx, &name)?;
            }
        }
        let def = QueueDef {
            name,
            durable: m.durable,
            exclusive: m.exclusive,
            auto_delete: m.auto_delete,
            arguments: m.arguments,
        };
        let declared = ctx
            .vhost
            .declare_queue(def, m.passive, server_named, ctx.id)?;
        let q = declared.queue;
        if declared.created && q.owner.is_some() {
            ctx.exclusive_queues.push(q.clone());
        }
        self.last_queue = Some(q.name.to_string());
        self.reply(
            ctx,
            m.nowait,
            AMQPClass::Queue(qu::AMQPMethod::DeclareOk(qu::DeclareOk {
                queue: q.name.as_ref().into(),
                message_count: q.message_count(),
                consumer_count: q.consumer_count(),
            })),
        );
        Ok(())
    }

    pub(super) fn queue_bind(&mut self, ctx: &mut ConnCtx, m: qu::Bind) -> Result<(), AmqpError> {
        let queue = self.queue_name(m.queue.as_str())?;
        // Both empty: the routing key is the last declared queue's name (AMQP shortcut).
        let routing_key = if m.queue.as_str().is_empty() && m.routing_key.as_str().is_empty() {
            queue.clone()
        } else {
            m.routing_key.to_string()
        };
        let b = BindingDef {
            source: m.exchange.to_string(),
            destination: Destination::Queue(queue.as_str().into()),
            routing_key,
            arguments: m.arguments,
        };
        check_binding(ctx, &b)?;
        ctx.vhost.bind(b, ctx.id)?;
        self.reply(
            ctx,
            m.nowait,
            AMQPClass::Queue(qu::AMQPMethod::BindOk(qu::BindOk {})),
        );
        Ok(())
    }

    pub(super) fn queue_unbind(
        &mut self,
        ctx: &mut ConnCtx,
        m: qu::Unbind,
    ) -> Result<(), AmqpError> {
        let queue = self.queue_name(m.queue.as_str())?;
        let b = BindingDef {
            source: m.exchange.to_string(),
            destination: Destination::Queue(queue.as_str().into()),
            routing_key: m.routing_key.to_string(),
            arguments: m.arguments,
        };
        check_binding(ctx, &b)?;
        ctx.vhost.unbind(b, ctx.id)?;
        ctx.send_method(
            self.id,
            AMQPClass::Queue(qu::AMQPMethod::UnbindOk(qu::UnbindOk {})),
        );
        Ok(())
    }

    pub(super) fn queue_purge(&mut self, ctx: &mut ConnCtx, m: qu::Purge) -> Result<(), AmqpError> {
        let name = self.queue_name(m.queue.as_str())?;
        ctx.check(Perm::Read, "queue", &name)?;
        let q = ctx.vhost.queue_for(&name, ctx.id)?;
        let message_count = q.purge();
        self.reply(
            ctx,
            m.nowait,
            AMQPClass::Queue(qu::AMQPMethod::PurgeOk(qu::PurgeOk { message_count })),
        );
        Ok(())
    }

    pub(super) fn queue_delete(
        &mut self,
        ctx: &mut ConnCtx,
        m: qu::Delete,
    ) -> Result<(), AmqpError> {
        let name = self.queue_name(m.queue.as_str())?;
        ctx.check(Perm::Configure, "queue", &name)?;
        let message_count = ctx
            .vhost
            .delete_queue(&name, m.if_unused, m.if_empty, ctx.id)?;
        self.reply(
            ctx,
            m.nowait,
            AMQPClass::Queue(qu::AMQPMethod::DeleteOk(qu::DeleteOk { message_count })),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_names_look_like_rabbitmq() {
        let n = super::generated_name("amq.gen");
        assert!(n.starts_with("amq.gen-"));
        assert_eq!(n.len(), "amq.gen-".len() + 22);
        assert_ne!(n, super::generated_name("amq.gen"));
    }
}
