//! Message counters and what the management API and the Prometheus endpoint learn of open
//! channels. A leaf module: plain data, no locks.
//!
//! Counting stays off the shared hot path: a channel counts in plain fields of its own
//! (owned by its connection's task); a queue counts under the lock it takes anyway. The
//! management API asks a connection for its channels' counts
//! ([`ConnEvent::Inspect`](crate::queue::consumer::ConnEvent)); a closing connection adds
//! its counts to its vhost's totals of closed connections, so broker-wide counters only grow.

use std::ops::AddAssign;

/// What a channel (or, merged, a connection, a vhost, the broker) did with messages: the
/// counters behind RabbitMQ's `message_stats` and its Prometheus `rabbitmq_global_*` totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageCounts {
    /// Messages published (`basic.publish` completed).
    pub publish: u64,
    /// Publishes on channels in confirm mode.
    pub publish_confirm: u64,
    /// Publishes routed to at least one queue.
    pub routed: u64,
    /// Publisher confirms sent (acks and nacks, counted per message).
    pub confirm: u64,
    /// Unroutable mandatory messages returned.
    pub return_unroutable: u64,
    /// Unroutable messages dropped (not mandatory).
    pub drop_unroutable: u64,
    /// Deliveries to consumers with manual acknowledgement.
    pub deliver: u64,
    /// Deliveries to consumers in no-ack mode.
    pub deliver_no_ack: u64,
    /// `basic.get` answered with a message, manual acknowledgement.
    pub get: u64,
    /// `basic.get` answered with a message, no-ack.
    pub get_no_ack: u64,
    /// `basic.get` answered get-empty.
    pub get_empty: u64,
    /// Deliveries (consume or get) of messages delivered before.
    pub redeliver: u64,
    /// Messages acknowledged.
    pub ack: u64,
}

impl MessageCounts {
    /// Deliveries and gets of every kind (RabbitMQ's `deliver_get`).
    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }

    /// Each counter the larger of the two (keeps totals read at different moments monotonic).
    pub fn max(&self, o: &Self) -> Self {
        MessageCounts {
            publish: self.publish.max(o.publish),
            publish_confirm: self.publish_confirm.max(o.publish_confirm),
            routed: self.routed.max(o.routed),
            confirm: self.confirm.max(o.confirm),
            return_unroutable: self.return_unroutable.max(o.return_unroutable),
            drop_unroutable: self.drop_unroutable.max(o.drop_unroutable),
            deliver: self.deliver.max(o.deliver),
            deliver_no_ack: self.deliver_no_ack.max(o.deliver_no_ack),
            get: self.get.max(o.get),
            get_no_ack: self.get_no_ack.max(o.get_no_ack),
            get_empty: self.get_empty.max(o.get_empty),
            redeliver: self.redeliver.max(o.redeliver),
            ack: self.ack.max(o.ack),
        }
    }

    /// The counters by RabbitMQ's `message_stats` names.
    pub fn named(&self) -> [(&'static str, u64); 12] {
        [
            ("publish", self.publish),
            ("confirm", self.confirm),
            ("return_unroutable", self.return_unroutable),
            ("drop_unroutable", self.drop_unroutable),
            ("deliver", self.deliver),
            ("deliver_no_ack", self.deliver_no_ack),
            ("get", self.get),
            ("get_no_ack", self.get_no_ack),
            ("get_empty", self.get_empty),
            ("deliver_get", self.deliver_get()),
            ("redeliver", self.redeliver),
            ("ack", self.ack),
        ]
    }
}

impl AddAssign for MessageCounts {
    fn add_assign(&mut self, o: Self) {
        self.publish += o.publish;
        self.publish_confirm += o.publish_confirm;
        self.routed += o.routed;
        self.confirm += o.confirm;
        self.return_unroutable += o.return_unroutable;
        self.drop_unroutable += o.drop_unroutable;
        self.deliver += o.deliver;
        self.deliver_no_ack += o.deliver_no_ack;
        self.get += o.get;
        self.get_no_ack += o.get_no_ack;
        self.get_empty += o.get_empty;
        self.redeliver += o.redeliver;
        self.ack += o.ack;
    }
}

/// What a queue did with messages, counted under its lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages enqueued (published or dead-lettered into it).
    pub publish: u64,
    /// Deliveries to consumers (manual ack).
    pub deliver: u64,
    /// Deliveries to no-ack consumers.
    pub deliver_no_ack: u64,
    /// `basic.get` with manual ack.
    pub get: u64,
    /// `basic.get` no-ack.
    pub get_no_ack: u64,
    /// Deliveries of messages delivered before.
    pub redeliver: u64,
    /// Messages acknowledged.
    pub ack: u64,
}

impl QueueCounts {
    /// The counters by RabbitMQ's `message_stats` names.
    pub fn named(&self) -> [(&'static str, u64); 8] {
        [
            ("publish", self.publish),
            ("deliver", self.deliver),
            ("deliver_no_ack", self.deliver_no_ack),
            ("get", self.get),
            ("get_no_ack", self.get_no_ack),
            (
                "deliver_get",
                self.deliver + self.deliver_no_ack + self.get + self.get_no_ack,
            ),
            ("redeliver", self.redeliver),
            ("ack", self.ack),
        ]
    }
}

/// One open channel as the management API shows it.
#[derive(Clone, Debug, Default)]
pub struct ChannelInfo {
    /// Channel number.
    pub number: u16,
    /// `basic.qos` prefetch for new consumers (global = false).
    pub prefetch_count: u32,
    /// `basic.qos` prefetch shared by the channel (global = true).
    pub global_prefetch_count: u32,
    /// In confirm mode.
    pub confirm: bool,
    /// In transaction mode.
    pub transactional: bool,
    /// Delivered, unacknowledged messages.
    pub unacked: u32,
    /// Publishes not confirmed yet.
    pub unconfirmed: u32,
    /// Consumers on the channel.
    pub consumers: u32,
    /// Message counters since the channel opened.
    pub counts: MessageCounts,
}

/// A connection's answer to an inspection: its open channels and the counts of the channels
/// it closed.
#[derive(Clone, Debug, Default)]
pub struct ConnSnapshot {
    /// Open channels by number.
    pub channels: Vec<ChannelInfo>,
    /// Counts of channels closed before.
    pub closed: MessageCounts,
    /// Bytes received.
    pub recv_oct: u64,
    /// Frames received.
    pub recv_cnt: u64,
}

impl ConnSnapshot {
    /// Every count of the connection: closed channels and open ones.
    pub fn total(&self) -> MessageCounts {
        let mut t = self.closed;
        for c in &self.channels {
            t += c.counts;
        }
        t
    }
}

/// Counters sampled at one moment, by object key (`conn:7`, `q:/\0orders`, `vhost:/`, ...).
#[derive(Debug)]
pub struct Sample {
    at: std::time::Instant,
    entries: std::collections::HashMap<String, Vec<(&'static str, u64)>>,
}

impl Sample {
    /// An empty sample taken now.
    pub fn new() -> Sample {
        Sample {
            at: std::time::Instant::now(),
            entries: Default::default(),
        }
    }

    /// Record an object's counters.
    pub fn put(&mut self, key: String, values: Vec<(&'static str, u64)>) {
        self.entries.insert(key, values);
    }
}

impl Default for Sample {
    fn default() -> Self {
        Self::new()
    }
}

/// The last two samples' difference per second: RabbitMQ's `*_details.rate`, refreshed every
/// `collect_statistics_interval` by the management sampler, read by HTTP handlers.
#[derive(Default, Debug)]
pub struct Rates(std::sync::Mutex<RateTable>);

#[derive(Default, Debug)]
struct RateTable {
    last: Option<Sample>,
    rates: std::collections::HashMap<String, Vec<(&'static str, f64)>>,
}

impl Rates {
    /// Replace the last sample with `s`; rates are the change since the last one.
    pub fn commit(&self, s: Sample) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut rates = std::collections::HashMap::with_capacity(s.entries.len());
        if let Some(prev) = &t.last {
            let dt = s.at.duration_since(prev.at).as_secs_f64();
            if dt > 0.0 {
                for (key, values) in &s.entries {
                    let Some(old) = prev.entries.get(key) else {
                        continue;
                    };
                    let r = values
                        .iter()
                        .map(|(name, v)| {
                            let before = old.iter().find(|(n, _)| n == name).map_or(*v, |x| x.1);
                            // Gauges fall as well as rise.
                            (*name, (*v as f64 - before as f64) / dt)
                        })
                        .collect();
                    rates.insert(key.clone(), r);
                }
            }
        }
        t.rates = rates;
        t.last = Some(s);
    }

    /// The rate of `name` for object `key` (0 until two samples saw it).
    pub fn rate(&self, key: &str, name: &str) -> f64 {
        let t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        t.rates
            .get(key)
            .and_then(|r| r.iter().find(|(n, _)| *n == name))
            .map_or(0.0, |x| x.1)
    }

    /// The values of object `key` at the last sample.
    pub fn sampled(&self, key: &str) -> Option<Vec<(&'static str, u64)>> {
        let t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        t.last.as_ref()?.entries.get(key).cloned()
    }
}

/// Broker-wide churn: connections and channels opened and closed (cold paths: one atomic
/// add per open or close).
#[derive(Debug, Default)]
pub struct Churn {
    /// Connections opened (logged in).
    pub connection_created: std::sync::atomic::AtomicU64,
    /// Connections closed.
    pub connection_closed: std::sync::atomic::AtomicU64,
    /// Channels opened.
    pub channel_created: std::sync::atomic::AtomicU64,
    /// Channels closed.
    pub channel_closed: std::sync::atomic::AtomicU64,
}

/// A vhost's queue churn.
#[derive(Debug, Default)]
pub struct QueueChurn {
    /// Queues created.
    pub created: std::sync::atomic::AtomicU64,
    /// `queue.declare` (and HTTP declarations) answered, created or not.
    pub declared: std::sync::atomic::AtomicU64,
    /// Queues deleted.
    pub deleted: std::sync::atomic::AtomicU64,
}

/// A running (or ended) shovel, as `/api/shovels` shows it.
pub struct Shovel {
    /// Its vhost.
    pub vhost: String,
    /// Its name.
    pub name: String,
    /// The parameter's value.
    pub value: serde_json::Value,
    /// Messages moved so far.
    pub moved: std::sync::atomic::AtomicU64,
    /// `running` or `terminated`, and why.
    pub state: std::sync::Mutex<(String, Option<String>)>,
    /// Stops it.
    pub stop: tokio_util::sync::CancellationToken,
    /// When it started (for the `timestamp` field).
    pub started: String,
}

impl Shovel {
    /// The status object of `/api/shovels`.
    pub fn status(&self, node: &str) -> serde_json::Value {
        let (state, reason) = self.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let v = &self.value;
        let mut o = serde_json::json!({
            "node": node,
            "timestamp": self.started,
            "name": self.name,
            "vhost": self.vhost,
            "type": "dynamic",
            "state": state,
            "src_uri": v.get("src-uri"),
            "src_protocol": v.get("src-protocol").cloned().unwrap_or(serde_json::json!("amqp091")),
            "dest_protocol": v.get("dest-protocol").cloned().unwrap_or(serde_json::json!("amqp091")),
            "dest_uri": v.get("dest-uri"),
            "src_queue": v.get("src-queue"),
            "messages_moved": self.moved.load(std::sync::atomic::Ordering::Relaxed),
        });
        for (k, field) in [
            ("dest-queue", "dest_queue"),
            ("dest-exchange", "dest_exchange"),
            ("dest-exchange-key", "dest_exchange_key"),
        ] {
            if let Some(x) = v.get(k) {
                o[field] = x.clone();
            }
        }
        if let Some(r) = reason {
            o["reason"] = serde_json::json!(r);
        }
        o
    }

    pub fn set_state(&self, state: &str, reason: Option<String>) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (state.to_string(), reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_the_change_per_second_between_samples() {
        let rates = Rates::default();
        let mut a = Sample::new();
        a.put("q".into(), vec![("publish", 100), ("messages", 50)]);
        let t0 = a.at;
        rates.commit(a);
        assert_eq!(rates.rate("q", "publish"), 0.0, "one sample: no rate yet");
        let mut b = Sample::new();
        b.at = t0 + std::time::Duration::from_secs(2);
        b.put("q".into(), vec![("publish", 300), ("messages", 10)]);
        b.put("new".into(), vec![("publish", 5)]);
        rates.commit(b);
        assert_eq!(rates.rate("q", "publish"), 100.0);
        // Gauges fall as well as rise.
        assert_eq!(rates.rate("q", "messages"), -20.0);
        assert_eq!(rates.rate("new", "publish"), 0.0, "first seen: no rate");
        assert_eq!(rates.sampled("q").unwrap()[0], ("publish", 300));
    }

    #[test]
    fn snapshot_totals_include_closed_channels() {
        let mut s = ConnSnapshot {
            closed: MessageCounts {
                publish: 3,
                ..Default::default()
            },
            ..Default::default()
        };
        s.channels.push(ChannelInfo {
            counts: MessageCounts {
                publish: 2,
                ack: 1,
                ..Default::default()
            },
            ..Default::default()
        });
        let t = s.total();
        assert_eq!((t.publish, t.ack), (5, 1));
    }
}
