//! Durable definitions as a snapshot and a journal: `definitions.json` (see [`super`]) holds
//! the vhost's durable topology as of some moment, `definitions.journal` every change since,
//! one record each (the message log's self-checking record header, a JSON payload). A change
//! costs one small append, written and synced by the store's writer thread together with
//! whatever else is waiting (group commit), not a rewrite of the whole file; when the journal
//! outgrows the snapshot a new snapshot is written and the journal emptied.
//!
//! Changes are states, not operations: "exchange x is now this", "queue q is gone", so that
//! replaying them in order over any snapshot that already reflects a prefix of them gives the
//! same result (a crash between writing a snapshot and emptying the journal is harmless).
//! Deleting a queue or an exchange also removes the bindings that lead to it (and, for an
//! exchange, from it), as it does in the broker.

use super::Definitions;
use super::record::{self, HEADER};
use crate::defs::QueueDef;
use crate::defs::{BindingDef, Destination, ExchangeDef};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::Path;

/// The journal's file name, in the vhost's directory.
pub const FILE: &str = "definitions.journal";

/// One change to the durable topology.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// A durable exchange exists with this definition.
    PutExchange { exchange: ExchangeDef },
    /// The exchange is gone, with every binding from or to it.
    DelExchange { name: String },
    /// A durable queue exists with this definition.
    PutQueue { queue: QueueDef },
    /// The queue is gone, with every binding to it.
    DelQueue { name: String },
    /// A binding between durable objects exists.
    PutBinding { binding: BindingDef },
    /// The binding is gone.
    DelBinding { binding: BindingDef },
}

impl Change {
    /// Whether every float argument is finite (JSON cannot hold the others; the snapshot
    /// loader refuses them).
    fn is_finite(&self) -> bool {
        let t = match self {
            Change::PutExchange { exchange } => &exchange.arguments,
            Change::PutQueue { queue } => &queue.arguments,
            Change::PutBinding { binding } | Change::DelBinding { binding } => &binding.arguments,
            Change::DelExchange { .. } | Change::DelQueue { .. } => return true,
        };
        t.inner().values().all(super::finite)
    }
}

/// Encode a change as a journal record.
pub fn encode(c: &Change) -> Bytes {
    let json = serde_json::to_vec(c).unwrap_or_default();
    Bytes::from(record::framed(&json))
}

/// The topology while a journal is replayed, keyed for quick updates.
#[derive(Default)]
struct Model {
    exchanges: BTreeMap<String, ExchangeDef>,
    queues: BTreeMap<String, QueueDef>,
    bindings: BTreeMap<String, BindingDef>,
}

fn binding_key(b: &BindingDef) -> String {
    serde_json::to_string(b).unwrap_or_default()
}

impl Model {
    fn from(defs: Definitions) -> Model {
        let mut m = Model::default();
        for x in defs.exchanges {
            m.exchanges.insert(x.name.clone(), x);
        }
        for q in defs.queues {
            m.queues.insert(q.name.clone(), q);
        }
        for b in defs.bindings {
            m.bindings.insert(binding_key(&b), b);
        }
        m
    }

    fn apply(&mut self, c: Change) {
        match c {
            Change::PutExchange { exchange } => {
                self.exchanges.insert(exchange.name.clone(), exchange);
            }
            Change::DelExchange { name } => {
                self.exchanges.remove(&name);
                self.bindings.retain(|_, b| {
                    b.source != name
                        && !matches!(&b.destination, Destination::Exchange(d) if **d == *name)
                });
            }
            Change::PutQueue { queue } => {
                self.queues.insert(queue.name.clone(), queue);
            }
            Change::DelQueue { name } => {
                self.queues.remove(&name);
                self.bindings.retain(
                    |_, b| !matches!(&b.destination, Destination::Queue(d) if **d == *name),
                );
            }
            Change::PutBinding { binding } => {
                self.bindings.insert(binding_key(&binding), binding);
            }
            Change::DelBinding { binding } => {
                self.bindings.remove(&binding_key(&binding));
            }
        }
    }

    fn into_definitions(self) -> Definitions {
        Definitions {
            exchanges: self.exchanges.into_values().collect(),
            queues: self.queues.into_values().collect(),
            bindings: self.bindings.into_values().collect(),
        }
    }
}

/// What [`replay`] found.
pub struct Replayed {
    /// The snapshot with the journal applied.
    pub defs: Definitions,
    /// Changes applied.
    pub changes: usize,
    /// Damaged records or runs of damaged bytes stepped over.
    pub damaged: usize,
}

/// Apply the journal in `dir` (if any) to `defs`. Damage is stepped over as in the message
/// log: a record whose header verifies but whose payload does not is skipped, anything else
/// is scanned past to the next valid header; a cut-short tail is ignored. A change that is
/// not valid JSON of a known kind counts as damage.
pub fn replay(dir: &Path, defs: Definitions) -> io::Result<Replayed> {
    let data = match std::fs::read(dir.join(FILE)) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Replayed {
                defs,
                changes: 0,
                damaged: 0,
            });
        }
        Err(e) => return Err(e),
    };
    let mut model = Model::from(defs);
    let (mut changes, mut damaged) = (0, 0);
    let mut pos = 0usize;
    let mut in_damage = false;
    while pos + HEADER <= data.len() {
        let hdr = record::parse_header(&data[pos..])
            .filter(|(len, _)| pos + HEADER + *len as usize <= data.len());
        let Some((len, crc)) = hdr else {
            if !in_damage {
                damaged += 1;
                in_damage = true;
            }
            pos += 1;
            continue;
        };
        in_damage = false;
        let payload = &data[pos + HEADER..pos + HEADER + len as usize];
        pos += HEADER + len as usize;
        match serde_json::from_slice::<Change>(payload) {
            Ok(c) if crc32fast::hash(payload) == crc && c.is_finite() => {
                model.apply(c);
                changes += 1;
            }
            _ => damaged += 1,
        }
    }
    Ok(Replayed {
        defs: model.into_definitions(),
        changes,
        damaged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defs::ExchangeKind;

    fn queue(name: &str) -> QueueDef {
        QueueDef {
            name: name.into(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: Default::default(),
        }
    }

    fn exchange(name: &str) -> ExchangeDef {
        ExchangeDef {
            name: name.into(),
            kind: ExchangeKind::Direct,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: Default::default(),
        }
    }

    fn binding(x: &str, q: &str) -> BindingDef {
        BindingDef {
            source: x.into(),
            destination: Destination::Queue(q.into()),
            routing_key: q.into(),
            arguments: Default::default(),
        }
    }

    fn write(dir: &Path, changes: &[Change]) -> Vec<u8> {
        let bytes: Vec<u8> = changes.iter().flat_map(|c| encode(c).to_vec()).collect();
        std::fs::write(dir.join(FILE), &bytes).unwrap();
        bytes
    }

    fn names(d: &Definitions) -> (Vec<String>, Vec<String>, Vec<String>) {
        (
            d.exchanges.iter().map(|x| x.name.clone()).collect(),
            d.queues.iter().map(|q| q.name.clone()).collect(),
            d.bindings
                .iter()
                .map(|b| format!("{}->{}", b.source, b.destination.name()))
                .collect(),
        )
    }

    fn history() -> Vec<Change> {
        vec![
            Change::PutExchange {
                exchange: exchange("x"),
            },
            Change::PutQueue { queue: queue("a") },
            Change::PutQueue { queue: queue("b") },
            Change::PutBinding {
                binding: binding("x", "a"),
            },
            Change::PutBinding {
                binding: binding("x", "b"),
            },
            Change::PutBinding {
                binding: binding("amq.direct", "b"),
            },
            Change::DelQueue { name: "a".into() },
            Change::DelBinding {
                binding: binding("amq.direct", "b"),
            },
            Change::PutQueue { queue: queue("c") },
        ]
    }

    #[test]
    fn replay_applies_changes_in_order_with_their_cascades() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), &history());
        let r = replay(tmp.path(), Definitions::default()).unwrap();
        assert_eq!((r.changes, r.damaged), (9, 0));
        assert_eq!(
            names(&r.defs),
            (
                vec!["x".into()],
                vec!["b".into(), "c".into()],
                vec!["x->b".into()]
            )
        );
        // Deleting the exchange takes its bindings.
        let mut more = history();
        more.push(Change::DelExchange { name: "x".into() });
        write(tmp.path(), &more);
        let r = replay(tmp.path(), Definitions::default()).unwrap();
        assert_eq!(
            names(&r.defs),
            (vec![], vec!["b".into(), "c".into()], vec![])
        );
    }

    #[test]
    fn replaying_over_a_snapshot_that_already_has_a_prefix_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let all = history();
        write(tmp.path(), &all);
        let full = replay(tmp.path(), Definitions::default()).unwrap().defs;
        for k in 0..=all.len() {
            write(tmp.path(), &all[..k]);
            let snapshot = replay(tmp.path(), Definitions::default()).unwrap().defs;
            write(tmp.path(), &all);
            let again = replay(tmp.path(), snapshot).unwrap().defs;
            assert_eq!(names(&again), names(&full), "snapshot after {k} changes");
        }
    }

    #[test]
    fn damage_costs_only_the_records_it_touches() {
        let tmp = tempfile::tempdir().unwrap();
        let all = history();
        let bytes = write(tmp.path(), &all);
        let lens: Vec<usize> = all.iter().map(|c| encode(c).len()).collect();
        let start = |i: usize| lens[..i].iter().sum::<usize>();
        // A flipped byte in the third record's payload, the fifth's length, a torn tail.
        let mut bad = bytes.clone();
        bad[start(2) + HEADER + 3] ^= 0xff;
        bad[start(4) + 5] ^= 0x40;
        bad.truncate(bytes.len() - 4);
        std::fs::write(tmp.path().join(FILE), &bad).unwrap();
        let r = replay(tmp.path(), Definitions::default()).unwrap();
        assert_eq!(r.changes, 6);
        assert_eq!(r.damaged, 3);
        // Queue b's record and x->b are lost, a went as recorded, c was cut off.
        assert_eq!(names(&r.defs), (vec!["x".into()], vec![], vec![]));
    }
}
