//! Method dispatch: each channel-level method to its handler (topology, publish, consume,
//! delivery settlement, confirms, transactions), the channel's own open/close/flow, and
//! buffering of settlements inside a transaction.

use super::*;

impl Channel {
    pub(super) fn handle_method(
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
    pub(super) fn dispatch_method(
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
                for (p, props, body, body_own) in buf.publishes {
                    self.publish(ctx, p, props, body, body_own)?;
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

    /// A complete message: buffered in a transaction, else published (and counted for
    /// confirms). `body_own`: the body has an allocation of its own (joined from several
    /// frames, or empty), not a slice of the read buffer.
    pub(super) fn on_publish(
        &mut self,
        ctx: &mut ConnCtx,
        p: Publish,
        properties: Bytes,
        body: Bytes,
        body_own: bool,
    ) -> Result<(), AmqpError> {
        if let Some(buf) = &mut self.tx {
            // Unknown exchanges are reported at publish time, as RabbitMQ does.
            ctx.vhost.exchange(&String::from_utf8_lossy(&p.exchange))?;
            let size = (properties.len() + body.len()) as i64;
            buf.publishes.push((p, properties, body, body_own));
            self.hold(ctx, size);
            return Ok(());
        }
        if let Some(seq) = &mut self.confirm_seq {
            *seq += 1;
            if !ctx.confirms_dirty.contains(&self.id) {
                ctx.confirms_dirty.push(self.id);
            }
        }
        let accepted = self.publish(ctx, p, properties, body, body_own)?;
        if !accepted && let Some(seq) = self.confirm_seq {
            // Refused by a queue (x-overflow reject-publish): confirmed with basic.nack.
            let pos = self.nacks.partition_point(|n| *n < seq);
            self.nacks.insert(pos, seq);
        }
        Ok(())
    }

    /// Ack/nack/reject now, or at commit in a transaction (the tag is checked now).
    pub(super) fn settle_or_buffer(
        &mut self,
        tag: u64,
        multiple: bool,
        how: Settle,
    ) -> Result<(), AmqpError> {
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
