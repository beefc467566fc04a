//! Definitions: what an exchange, a queue and a binding are, as declared (names, flags,
//! arguments). Plain serde data with no behaviour, below every layer that keeps or acts on
//! them: the store persists them, `exchange` and `queue` build their runtime state from them.

use amq_protocol::types::FieldTable;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    /// Exact routing-key match.
    Direct,
    /// Every binding.
    Fanout,
    /// `*` / `#` patterns.
    Topic,
    /// Header matching.
    Headers,
    /// `x-delayed-message` (RabbitMQ's delayed message exchange plugin): routes as the
    /// type named by its `x-delayed-type` argument, after the delay in a message's
    /// `x-delay` header.
    #[serde(rename = "x-delayed-message")]
    DelayedMessage,
}

impl ExchangeKind {
    /// Parse a type name from `exchange.declare`.
    pub fn parse(s: &str) -> Option<ExchangeKind> {
        Some(match s {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            "x-delayed-message" => ExchangeKind::DelayedMessage,
            _ => return None,
        })
    }

    /// The type name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
            ExchangeKind::DelayedMessage => "x-delayed-message",
        }
    }
}

/// What an exchange is, as declared (serde: this is what durability persists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDef {
    /// Name (`""` is the default exchange).
    pub name: String,
    /// Type.
    pub kind: ExchangeKind,
    /// Survives restarts.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Cannot be published to directly.
    pub internal: bool,
    /// Arguments (`alternate-exchange`).
    pub arguments: FieldTable,
}

impl ExchangeDef {
    /// How it routes: its type, or for an `x-delayed-message` exchange the type its
    /// `x-delayed-type` argument names (validated at declare; direct if unreadable).
    pub fn routing_kind(&self) -> ExchangeKind {
        match self.kind {
            ExchangeKind::DelayedMessage => self
                .arguments
                .inner()
                .get("x-delayed-type")
                .and_then(|v| match v {
                    amq_protocol::types::AMQPValue::LongString(s) => {
                        ExchangeKind::parse(&String::from_utf8_lossy(s.as_bytes()))
                    }
                    amq_protocol::types::AMQPValue::ShortString(s) => {
                        ExchangeKind::parse(s.as_str())
                    }
                    _ => None,
                })
                .filter(|k| *k != ExchangeKind::DelayedMessage)
                .unwrap_or(ExchangeKind::Direct),
            k => k,
        }
    }
}

/// Where a binding leads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Destination {
    /// A queue, by name.
    Queue(Arc<str>),
    /// An exchange, by name (exchange-to-exchange binding).
    Exchange(Arc<str>),
}

impl Destination {
    /// The destination's name.
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(n) | Destination::Exchange(n) => n,
        }
    }
}

/// A binding, as declared (serde).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingDef {
    /// Source exchange.
    pub source: String,
    /// Destination queue or exchange.
    pub destination: Destination,
    /// Binding key.
    pub routing_key: String,
    /// Binding arguments.
    pub arguments: FieldTable,
}

/// What a queue is, as declared (serde: this is what durability persists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDef {
    /// Name.
    pub name: String,
    /// Survives restarts.
    pub durable: bool,
    /// Owned by one connection, deleted with it.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Arguments, as declared.
    pub arguments: FieldTable,
}

/// A policy or operator policy of a vhost, compiled for matching names (RabbitMQ's
/// policies; stored and validated by the metadata layer above, applied by the vhost).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Its name (shown on the queue or exchange it applies to).
    pub name: String,
    /// The regular expression names must match.
    pub pattern: regex::Regex,
    /// `apply-to` includes queues.
    pub queues: bool,
    /// `apply-to` includes exchanges.
    pub exchanges: bool,
    /// Highest wins.
    pub priority: i64,
    /// The keys it sets.
    pub definition: serde_json::Map<String, serde_json::Value>,
}

/// A vhost's policies and operator policies.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    /// Policies.
    pub policies: Vec<Policy>,
    /// Operator policies.
    pub operator: Vec<Policy>,
}

impl Policies {
    /// The one policy of `list` that applies to `name`: the highest priority among those that
    /// match (ties: the first name in order).
    fn best<'a>(list: &'a [Policy], name: &str, queue: bool) -> Option<&'a Policy> {
        list.iter()
            .filter(|p| if queue { p.queues } else { p.exchanges })
            .filter(|p| p.pattern.is_match(name))
            .max_by(|a, b| {
                a.priority
                    .cmp(&b.priority)
                    .then_with(|| b.name.cmp(&a.name))
            })
    }

    /// The policy and the operator policy that apply to queue `name`.
    pub fn for_queue(&self, name: &str) -> (Option<&Policy>, Option<&Policy>) {
        (
            Self::best(&self.policies, name, true),
            Self::best(&self.operator, name, true),
        )
    }

    /// The policy that applies to exchange `name`.
    pub fn for_exchange(&self, name: &str) -> Option<&Policy> {
        Self::best(&self.policies, name, false)
    }
}
