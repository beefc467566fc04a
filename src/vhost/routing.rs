//! Routing a message through the vhost's exchanges (default exchange, exchange-to-exchange
//! bindings, alternate exchanges, each queue once) and enqueueing it on the queues reached.

use super::*;

impl VHost {
    /// Route a message from `exchange` with the given routing keys (routing key, then CC and
    /// BCC) and headers: every queue once, following exchange-to-exchange bindings and
    /// alternate exchanges, each exchange visited at most once.
    pub fn route(
        &self,
        exchange: &Arc<Exchange>,
        keys: &[&[u8]],
        headers: Option<&FieldTable>,
    ) -> Vec<Arc<Queue>> {
        fn add(queues: &mut Vec<Arc<Queue>>, q: &Arc<Queue>) {
            if !queues.iter().any(|x| Arc::ptr_eq(x, q)) {
                queues.push(q.clone());
            }
        }
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        // Exchanges still to route through, and those already seen (allocated only for
        // exchange-to-exchange bindings and alternate exchanges).
        let mut work: Vec<Arc<Exchange>> = Vec::new();
        let mut seen_x: Vec<Arc<str>> = Vec::new();
        let mut dests = Vec::new();
        let mut x = exchange.clone();
        loop {
            if x.def.name.is_empty() {
                // The default exchange: every queue is bound by its name (no further lookup).
                for k in keys {
                    if let Ok(name) = std::str::from_utf8(k)
                        && let Some(q) = self.queues.get(name)
                    {
                        add(&mut queues, &q);
                    }
                }
            } else {
                dests.clear();
                x.route(keys, headers, &mut dests);
                if dests.is_empty()
                    && let Some(ae) = x.alternate()
                {
                    dests.push(Destination::Exchange(ae));
                }
                for d in dests.drain(..) {
                    match d {
                        Destination::Queue(name) => {
                            if let Some(q) = self.queues.get(name.as_ref()) {
                                add(&mut queues, &q);
                            }
                        }
                        Destination::Exchange(name) => {
                            if name.as_ref() == exchange.def.name.as_str() || seen_x.contains(&name)
                            {
                                continue;
                            }
                            if let Some(next) = self.exchanges.get(name.as_ref()) {
                                work.push(next.clone());
                            }
                            seen_x.push(name);
                        }
                    }
                }
            }
            match work.pop() {
                Some(next) => x = next,
                None => return queues,
            }
        }
    }

    /// Enqueue a routed message in `queues`. A persistent message going to durable queues is
    /// written to the message log first (one record whatever the number of queues); `synced`
    /// runs once that record is durable. Returns (all queues accepted it, `synced` will run).
    pub fn publish_to(
        &self,
        queues: &[Arc<Queue>],
        mut msg: crate::message::Message,
        synced: Option<crate::store::log::Done>,
    ) -> (bool, bool) {
        // Replicated quorum queues (a cluster) take the message through their groups; the
        // confirm waits for every commit and for the local queues' sync.
        if queues.iter().any(|q| q.replica().is_some()) {
            let (replicated, local): (Vec<_>, Vec<_>) =
                queues.iter().cloned().partition(|q| q.replica().is_some());
            let waits = synced.is_some();
            let mut parts = crate::queue::replica::split_done(synced, replicated.len() + 1);
            let local_part = parts.pop().flatten();
            for (q, part) in replicated.iter().zip(parts) {
                if !q.is_deleted()
                    && let Some(r) = q.replica()
                {
                    r.enqueue(&msg, part);
                }
            }
            let accepted = local.is_empty() || self.publish_to(&local, msg, local_part).0;
            return (accepted, waits);
        }
        // A quorum queue stores every message (its single-node contract): a transient
        // message routed to one is stored for the quorum queues only, as a persistent copy
        // (the bytes are shared), and stays transient in the other queues.
        if !msg.persistent && queues.iter().any(|q| q.args.quorum && q.log.is_some()) {
            let (quorum, other): (Vec<_>, Vec<_>) = queues
                .iter()
                .cloned()
                .partition(|q| q.args.quorum && q.log.is_some());
            let mut stored = msg.clone();
            stored.persistent = true;
            let (accepted, waits) = self.publish_to(&quorum, stored, synced);
            let (rest, _) = self.publish_to(&other, msg, None);
            return (accepted && rest, waits);
        }
        let mut waits = false;
        let msg = 'stored: {
            if msg.persistent
                && let Some(log) = self.log()
            {
                let durable: Vec<crate::store::log::QueueState<'_>> = queues
                    .iter()
                    .filter(|q| q.log.is_some())
                    .map(|q| (q.name.as_ref(), false, 0))
                    .collect();
                if !durable.is_empty() {
                    waits =
                        synced.is_some() && log.policy == crate::store::log::SyncPolicy::Confirm;
                    // The confirm goes out when the record is synced, or before if every
                    // durable queue settles the message first (see `ConfirmGate`).
                    let gate = match synced.filter(|_| waits) {
                        Some(d) => Some(crate::message::ConfirmGate::new(d, durable.len())),
                        // No confirm waits, but a message for one durable queue still gets a
                        // gate: left out of the log if its queue is done with it first.
                        None if durable.len() == 1 => {
                            Some(crate::message::ConfirmGate::without_confirm())
                        }
                        None => None,
                    };
                    if let Some(gate) = gate.as_ref().filter(|g| g.skippable())
                        && let Some(q) = queues.iter().find(|q| q.log.is_some())
                    {
                        // One durable queue: the writer encodes the record if it writes it
                        // (a message consumed first is not written at all).
                        break 'stored log.append_publish(msg, q.name.clone(), gate.clone());
                    }
                    let rec = crate::store::log::publish_record(0, 0, &durable, &msg);
                    msg.confirm = gate.clone();
                    msg.set_store_id(log.append_gated(rec, gate));
                }
            }
            Arc::new(msg)
        };
        let mut accepted = true;
        for q in queues {
            accepted &= q.publish(msg.clone()) == crate::queue::Accepted::Yes;
        }
        (accepted, waits)
    }
}
