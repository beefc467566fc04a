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

/// The bindings of an exchange, found by destination and key (a bind, an unbind and a queue's
/// deletion are hash lookups, not scans: 100,000 bindings on one exchange took a minute to
/// create before). Each binding keeps its insertion number, so snapshots list them in the
/// order they were made.
#[derive(Default)]
struct Table {
    /// Destination → binding key → (insertion number, arguments): the same key with other
    /// arguments is another binding.
    by_dest: HashMap<Destination, HashMap<String, Vec<(u64, FieldTable)>>>,
    count: usize,
    next: u64,
}

impl Table {
    fn contains(&self, b: &BindingDef) -> bool {
        self.by_dest
            .get(&b.destination)
            .and_then(|keys| keys.get(&b.routing_key))
            .is_some_and(|args| args.iter().any(|(_, a)| *a == b.arguments))
    }

    fn insert(&mut self, b: &BindingDef) {
        self.by_dest
            .entry(b.destination.clone())
            .or_default()
            .entry(b.routing_key.clone())
            .or_default()
            .push((self.next, b.arguments.clone()));
        self.next += 1;
        self.count += 1;
    }

    fn remove(&mut self, b: &BindingDef) -> bool {
        let Some(keys) = self.by_dest.get_mut(&b.destination) else {
            return false;
        };
        let Some(args) = keys.get_mut(&b.routing_key) else {
            return false;
        };
        let Some(i) = args.iter().position(|(_, a)| *a == b.arguments) else {
            return false;
        };
        args.swap_remove(i);
        if args.is_empty() {
            keys.remove(&b.routing_key);
            if keys.is_empty() {
                self.by_dest.remove(&b.destination);
            }
        }
        self.count -= 1;
        true
    }

    /// Every binding to `dest`, removed from the table.
    fn take_destination(&mut self, source: &str, dest: &Destination) -> Vec<BindingDef> {
        let Some(keys) = self.by_dest.remove(dest) else {
            return Vec::new();
        };
        let out: Vec<BindingDef> = keys
            .into_iter()
            .flat_map(|(key, args)| {
                args.into_iter().map(move |(_, arguments)| BindingDef {
                    source: source.to_string(),
                    destination: dest.clone(),
                    routing_key: key.clone(),
                    arguments,
                })
            })
            .collect();
        self.count -= out.len();
        out
    }

    /// All bindings in insertion order.
    fn snapshot(&self, source: &str) -> Vec<BindingDef> {
        let mut all: Vec<(u64, BindingDef)> = Vec::with_capacity(self.count);
        for (dest, keys) in &self.by_dest {
            for (key, args) in keys {
                for (n, arguments) in args {
                    all.push((
                        *n,
                        BindingDef {
                            source: source.to_string(),
                            destination: dest.clone(),
                            routing_key: key.clone(),
                            arguments: arguments.clone(),
                        },
                    ));
                }
            }
        }
        all.sort_unstable_by_key(|(n, _)| *n);
        all.into_iter().map(|(_, b)| b).collect()
    }
}

struct Bindings {
    all: Table,
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
                all: Table::default(),
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
        if g.all.contains(&b) {
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
        g.all.insert(&b);
        Ok(true)
    }

    /// Remove a binding; returns whether it existed.
    pub fn unbind(&self, b: &BindingDef) -> bool {
        let mut g = self.bindings.write();
        if !g.all.remove(b) {
            return false;
        }
        Self::unindex(&mut g.index, b);
        true
    }

    /// Remove a binding from the routing index.
    fn unindex(index: &mut Index, b: &BindingDef) {
        let dest = &b.destination;
        match index {
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
    }

    /// Remove every binding to `dest`; returns how many were removed.
    pub fn unbind_destination(&self, dest: &Destination) -> usize {
        let mut g = self.bindings.write();
        let doomed = g.all.take_destination(&self.def.name, dest);
        for b in &doomed {
            Self::unindex(&mut g.index, b);
        }
        doomed.len()
    }

    /// Whether some binding leads to `dest`.
    pub fn has_destination(&self, dest: &Destination) -> bool {
        self.bindings.read().all.by_dest.contains_key(dest)
    }

    /// Number of bindings with this exchange as source.
    pub fn binding_count(&self) -> usize {
        self.bindings.read().all.count
    }

    /// Whether this exact binding exists.
    pub fn has_binding(&self, b: &BindingDef) -> bool {
        self.bindings.read().all.contains(b)
    }

    /// A snapshot of the bindings, in the order they were made.
    pub fn bindings(&self) -> Vec<BindingDef> {
        self.bindings.read().all.snapshot(&self.def.name)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(key: &str, q: usize, tag: Option<i32>) -> BindingDef {
        let mut arguments = FieldTable::default();
        if let Some(t) = tag {
            arguments.insert("t".into(), amq_protocol::types::AMQPValue::LongInt(t));
        }
        BindingDef {
            source: "x".into(),
            destination: Destination::Queue(format!("q{q}").into()),
            routing_key: key.into(),
            arguments,
        }
    }

    #[test]
    fn many_bindings_are_made_and_removed_by_lookup() {
        let x = Exchange::new(ExchangeDef {
            name: "x".into(),
            kind: ExchangeKind::Topic,
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::default(),
        });
        // 40,000 bindings over 100 queues: a scan per bind (as before) made this quadratic,
        // ~800 M comparisons; lookups make it take well under a second even unoptimized.
        let n = 40_000;
        let started = std::time::Instant::now();
        for i in 0..n {
            assert!(x.bind(binding(&format!("k.{i}.*"), i % 100, None)).unwrap());
        }
        assert!(
            !x.bind(binding("k.7.*", 7, None)).unwrap(),
            "bind is idempotent"
        );
        // Same key and queue, other arguments: another binding.
        assert!(x.bind(binding("k.7.*", 7, Some(1))).unwrap());
        assert_eq!(x.binding_count(), n + 1);
        assert!(x.has_binding(&binding("k.7.*", 7, Some(1))));
        assert!(!x.has_binding(&binding("k.7.*", 8, None)));
        let mut out = Vec::new();
        x.route(&[b"k.12345.x"], None, &mut out);
        assert_eq!(out, vec![Destination::Queue("q45".into())]);
        // Snapshots keep the order the bindings were made in.
        let all = x.bindings();
        assert_eq!(all.len(), n + 1);
        assert_eq!(all[0].routing_key, "k.0.*");
        assert_eq!(all[n - 1].routing_key, format!("k.{}.*", n - 1));
        assert!(x.unbind(&binding("k.7.*", 7, Some(1))));
        assert!(!x.unbind(&binding("k.7.*", 7, Some(1))));
        assert!(x.has_destination(&Destination::Queue("q3".into())));
        for q in 0..100 {
            assert_eq!(
                x.unbind_destination(&Destination::Queue(format!("q{q}").into())),
                n / 100
            );
        }
        assert_eq!(x.binding_count(), 0);
        assert!(!x.has_destination(&Destination::Queue("q3".into())));
        out.clear();
        x.route(&[b"k.12345.x"], None, &mut out);
        assert!(out.is_empty());
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    }
}
