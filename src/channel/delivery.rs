//! The consuming side of a channel: `basic.get`, delivery tags, the unacked list, and
//! `basic.ack` / `nack` / `reject` with RabbitMQ's `multiple` and unknown-tag rules.

use super::Channel;
use super::ConnCtx;
use crate::protocol::AmqpError;
use crate::protocol::codec::{put_basic_get_ok, put_content};
use crate::queue::Queue;
use amq_protocol::protocol::{AMQPClass, basic};
use std::sync::Arc;

/// A delivered, not yet acknowledged message.
pub(super) struct Unacked {
    /// Delivery tag on this channel.
    pub tag: u64,
    /// Queue it came from.
    pub queue: Arc<Queue>,
    /// Its position in that queue.
    pub seq: u64,
    /// The consumer it was delivered to (`None` for `basic.get`).
    pub consumer: Option<Arc<crate::queue::consumer::Consumer>>,
    /// When it was delivered (ms on the broker's clock, read once per connection loop turn).
    pub delivered: u64,
}

impl Unacked {
    /// Its consumer timeout in ms (0: none): the consumer's, or for `basic.get` the queue's
    /// or the broker's.
    pub(super) fn timeout(&self, broker_default: u64) -> u64 {
        match &self.consumer {
            Some(c) => c.timeout,
            None => self.queue.consumer_timeout().unwrap_or(broker_default),
        }
    }
}

/// What to do with acknowledged messages.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Settle {
    /// `basic.ack`.
    Ack,
    /// `nack`/`reject` with requeue.
    Requeue,
    /// `nack`/`reject` without requeue (dead-lettering goes here).
    Discard,
}

impl Channel {
    pub(super) fn basic_get(&mut self, ctx: &mut ConnCtx, m: basic::Get) -> Result<(), AmqpError> {
        let name = self.queue_name(m.queue.as_str())?;
        ctx.check(crate::auth::perms::Perm::Read, "queue", &name)?;
        let q = ctx.vhost.queue_for(&name, ctx.id)?;
        if q.replica().is_some() {
            // Its answer would have to wait for the group's commit: not built yet.
            return Err(AmqpError::precondition_failed(format!(
                "basic.get from {} is not supported in a cluster yet; use basic.consume",
                q.resource()
            )));
        }
        match q.get(m.no_ack) {
            None => {
                self.counts.get_empty += 1;
                ctx.send_method(
                    self.id,
                    AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                )
            }
            Some((entry, left)) => {
                if m.no_ack {
                    self.counts.get_no_ack += 1;
                } else {
                    self.counts.get += 1;
                }
                self.counts.redeliver += entry.redelivered as u64;
                self.next_tag += 1;
                let tag = self.next_tag;
                if !m.no_ack {
                    let delivered = ctx.now();
                    let timeout = q
                        .consumer_timeout()
                        .unwrap_or(ctx.broker.config.consumer_timeout);
                    ctx.watch_timeout(delivered, timeout);
                    self.unacked.push_back(Unacked {
                        tag,
                        queue: q.clone(),
                        seq: entry.seq,
                        consumer: None,
                        delivered,
                    });
                }
                let msg = &entry.msg;
                put_basic_get_ok(
                    &mut ctx.out,
                    self.id,
                    tag,
                    entry.redelivered,
                    msg.exchange(),
                    msg.routing_key(),
                    left,
                );
                let props = crate::queue::dead_letter::delivered_properties(&q, &entry, true);
                put_content(&mut ctx.out, self.id, &props, &msg.body, ctx.frame_max);
            }
        }
        Ok(())
    }

    /// Settle `tag` (and every earlier one with `multiple`; tag 0 + multiple = all).
    pub(super) fn settle(
        &mut self,
        tag: u64,
        multiple: bool,
        how: Settle,
    ) -> Result<(), AmqpError> {
        let taken: Vec<Unacked> = if multiple && tag == 0 {
            self.unacked.drain(..).collect()
        } else {
            let pos = self.unacked.binary_search_by_key(&tag, |u| u.tag);
            match (pos, multiple) {
                (Ok(i), false) => self.unacked.remove(i).into_iter().collect(),
                (Ok(i), true) => self.unacked.drain(..=i).collect(),
                (Err(_), _) => {
                    return Err(AmqpError::precondition_failed(format!(
                        "unknown delivery tag {tag}"
                    )));
                }
            }
        };
        if how == Settle::Ack {
            self.counts.ack += taken.len() as u64;
        }
        settle_all(taken, how);
        Ok(())
    }

    /// RabbitMQ's consumer timeout looks at the oldest unacked delivery only: its deadline,
    /// and its timeout in ms, if it has one.
    pub(crate) fn oldest_deadline(&self, broker_default: u64) -> Option<(u64, u64)> {
        let u = self.unacked.front()?;
        match u.timeout(broker_default) {
            0 => None,
            t => Some((u.delivered + t, t)),
        }
    }

    /// Requeue everything unacked (channel or connection closed).
    pub(super) fn requeue_all(&mut self) {
        let taken: Vec<Unacked> = self.unacked.drain(..).collect();
        settle_all(taken, Settle::Requeue);
    }
}

/// Apply a settlement, one queue call per run of messages from the same queue; credit goes
/// back to the consumers and their queues deliver again.
fn settle_all(taken: Vec<Unacked>, how: Settle) {
    for u in &taken {
        if let Some(c) = &u.consumer {
            c.return_credit(1);
        }
    }
    let mut i = 0;
    while i < taken.len() {
        let q = &taken[i].queue;
        let mut seqs = Vec::new();
        let mut j = i;
        let mut from_consumers = false;
        while j < taken.len() && Arc::ptr_eq(&taken[j].queue, q) {
            seqs.push(taken[j].seq);
            from_consumers |= taken[j].consumer.is_some();
            j += 1;
        }
        match how {
            Settle::Ack => q.ack(&seqs),
            Settle::Requeue => q.requeue(&seqs),
            Settle::Discard => q.discard(&seqs),
        }
        if from_consumers && how != Settle::Requeue {
            q.dispatch();
        }
        i = j;
    }
}
