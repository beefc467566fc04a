//! Exchanges: definitions (plain serde data, persisted later by the store) and their routing
//! tables. Routing only: no queue state, no I/O, no async. Direct routing is one hash lookup per
//! routing key, fanout a list, topic a word trie, headers a list of compiled specs.

pub mod headers;
pub mod topic;

use crate::protocol::AmqpError;
use amq_protocol::types::FieldTable;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;

pub use crate::defs::{BindingDef, Destination, ExchangeDef, ExchangeKind};

/// Type-specific routing index.
enum Index {
    Direct(HashMap<Box<[u8]>, Vec<Destination>>),
    Fanout(Vec<Destination>),
    Topic(topic::Node<Destination>),
    Headers(Vec<(headers::Spec, Destination)>),
}

struct Bindings {
    all: Vec<BindingDef>,
    index: Index,
}

/// An exchange: its definition and its bindings (behind a per-exchange lock; routing takes it
/// for reading only).
pub struct Exchange {
    /// The definition.
    pub def: ExchangeDef,
    /// `alternate-exchange` argument, if set.
    pub alternate: Option<Arc<str>>,
    /// The policy that applies to it, and the alternate exchange it sets (the argument wins).
    policy: RwLock<Option<(String, Option<Arc<str>>)>>,
    bindings: RwLock<Bindings>,
}

impl Exchange {
    /// A new exchange with no bindings.
    pub fn new(def: ExchangeDef) -> Exchange {
        let index = match def.routing_kind() {
            ExchangeKind::Direct | ExchangeKind::DelayedMessage => Index::Direct(HashMap::new()),
            ExchangeKind::Fanout => Index::Fanout(Vec::new()),
            ExchangeKind::Topic => Index::Topic(topic::Node::default()),
            ExchangeKind::Headers => Index::Headers(Vec::new()),
        };
        let alternate = def
            .arguments
            .inner()
            .get("alternate-exchange")
            .and_then(crate::args::as_string)
            .map(Arc::from);
        Exchange {
            def,
            alternate,
            policy: RwLock::new(None),
            bindings: RwLock::new(Bindings {
                all: Vec::new(),
                index,
            }),
        }
    }

    /// The alternate exchange in force: the argument's, else the policy's (RabbitMQ's
    /// precedence). Read on the unroutable path only.
    pub fn alternate(&self) -> Option<Arc<str>> {
        if let Some(a) = &self.alternate {
            return Some(a.clone());
        }
        self.policy.read().as_ref().and_then(|(_, ae)| ae.clone())
    }

    /// Apply a policy (`None`: none applies any more).
    pub fn set_policy(&self, p: Option<&crate::defs::Policy>) {
        *self.policy.write() = p.map(|p| {
            let ae = p
                .definition
                .get("alternate-exchange")
                .and_then(|v| v.as_str())
                .map(Arc::from);
            (p.name.clone(), ae)
        });
    }

    /// An `x-delayed-message` exchange: a message with a positive `x-delay` header waits
    /// before it is routed (see `vhost::delayed`).
    pub fn is_delayed(&self) -> bool {
        self.def.kind == ExchangeKind::DelayedMessage
    }

    /// The name of the policy that applies to it.
    pub fn policy_name(&self) -> Option<String> {
        self.policy.read().as_ref().map(|(n, _)| n.clone())
    }

    /// Validate a binding for this exchange type (headers: `x-match`).
    pub fn validate_binding(&self, args: &FieldTable) -> Result<(), AmqpError> {
        if self.def.routing_kind() == ExchangeKind::Headers {
            headers::Spec::compile(args)?;
        }
        Ok(())
    }

    /// Add a binding; returns false if an identical binding exists (bind is idempotent).
    pub fn bind(&self, b: BindingDef) -> Result<bool, AmqpError> {
        let mut g = self.bindings.write();
        if g.all.iter().any(|x| x == &b) {
            return Ok(false);
        }
        let dest = b.destination.clone();
        match &mut g.index {
            Index::Direct(m) => m
                .entry(b.routing_key.as_bytes().into())
                .or_default()
                .push(dest),
            Index::Fanout(v) => v.push(dest),
            Index::Topic(t) => t.insert(b.routing_key.as_bytes(), dest),
            Index::Headers(v) => v.push((headers::Spec::compile(&b.arguments)?, dest)),
        }
        g.all.push(b);
        Ok(true)
    }

    /// Remove a binding; returns whether it existed.
    pub fn unbind(&self, b: &BindingDef) -> bool {
        let mut g = self.bindings.write();
        let Some(pos) = g.all.iter().position(|x| x == b) else {
            return false;
        };
        g.all.swap_remove(pos);
        let dest = &b.destination;
        match &mut g.index {
            Index::Direct(m) => {
                if let Some(v) = m.get_mut(b.routing_key.as_bytes()) {
                    if let Some(i) = v.iter().position(|d| d == dest) {
                        v.swap_remove(i);
                    }
                    if v.is_empty() {
                        m.remove(b.routing_key.as_bytes());
                    }
                }
            }
            Index::Fanout(v) => {
                if let Some(i) = v.iter().position(|d| d == dest) {
                    v.swap_remove(i);
                }
            }
            Index::Topic(t) => {
                t.remove(b.routing_key.as_bytes(), dest);
            }
            Index::Headers(v) => {
                if let Ok(spec) = headers::Spec::compile(&b.arguments)
                    && let Some(i) = v.iter().position(|(s, d)| d == dest && *s == spec)
                {
                    v.swap_remove(i);
                }
            }
        }
        true
    }

    /// Remove every binding to `dest`; returns how many were removed.
    pub fn unbind_destination(&self, dest: &Destination) -> usize {
        let doomed: Vec<BindingDef> = self
            .bindings
            .read()
            .all
            .iter()
            .filter(|b| &b.destination == dest)
            .cloned()
            .collect();
        doomed.iter().filter(|b| self.unbind(b)).count()
    }

    /// Number of bindings with this exchange as source.
    pub fn binding_count(&self) -> usize {
        self.bindings.read().all.len()
    }

    /// Whether this exact binding exists.
    pub fn has_binding(&self, b: &BindingDef) -> bool {
        self.bindings.read().all.contains(b)
    }

    /// A snapshot of the bindings.
    pub fn bindings(&self) -> Vec<BindingDef> {
        self.bindings.read().all.clone()
    }

    /// Route: append the destinations for these routing keys and headers (may repeat).
    pub fn route(&self, keys: &[&[u8]], headers: Option<&FieldTable>, out: &mut Vec<Destination>) {
        let g = self.bindings.read();
        match &g.index {
            Index::Direct(m) => {
                for k in keys {
                    if let Some(v) = m.get(*k) {
                        out.extend(v.iter().cloned());
                    }
                }
            }
            Index::Fanout(v) => out.extend(v.iter().cloned()),
            Index::Topic(t) => {
                let mut found = Vec::new();
                for k in keys {
                    t.matches(k, &mut found);
                }
                out.extend(found.into_iter().cloned());
            }
            Index::Headers(v) => {
                out.extend(
                    v.iter()
                        .filter(|(s, _)| s.matches(headers))
                        .map(|(_, d)| d.clone()),
                );
            }
        }
    }
}
