//! Durability: per-vhost durable definitions (`definitions.json`, replaced atomically before
//! the `-ok` is sent) and the message log ([`log`]) for persistent messages in durable queues.
//! Knows bytes and records, not AMQP semantics; the vhost and queues decide what to store.

pub mod log;

use crate::exchange::{BindingDef, ExchangeDef};
use crate::queue::QueueDef;
use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The durable topology of a vhost.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Definitions {
    /// Durable exchanges (not the predeclared ones).
    pub exchanges: Vec<ExchangeDef>,
    /// Durable, non-exclusive queues.
    pub queues: Vec<QueueDef>,
    /// Bindings between durable objects.
    pub bindings: Vec<BindingDef>,
}

/// Where a vhost keeps its files: `data_dir/vhosts/<hex of the name>/`.
pub fn vhost_dir(data_dir: &Path, vhost: &str) -> PathBuf {
    let hex: String = vhost.bytes().map(|b| format!("{b:02x}")).collect();
    data_dir
        .join("vhosts")
        .join(if hex.is_empty() { "empty".into() } else { hex })
}

/// Load `definitions.json` (missing = empty). A file Warren could not write again (a float
/// argument out of range, which JSON would turn into `null`) is refused.
pub fn load_definitions(dir: &Path) -> io::Result<Definitions> {
    let defs: Definitions = match std::fs::read(dir.join("definitions.json")) {
        Ok(b) => serde_json::from_slice(&b).map_err(io::Error::other)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Definitions::default()),
        Err(e) => return Err(e),
    };
    let tables = defs
        .exchanges
        .iter()
        .map(|x| &x.arguments)
        .chain(defs.queues.iter().map(|q| &q.arguments))
        .chain(defs.bindings.iter().map(|b| &b.arguments));
    for t in tables {
        if !t.inner().values().all(finite) {
            return Err(io::Error::other(
                "definitions.json: an argument holds a float that is not finite",
            ));
        }
    }
    Ok(defs)
}

/// Whether every float in `v` is finite (tables from JSON nest at most serde_json's 128).
pub fn finite(v: &amq_protocol::types::AMQPValue) -> bool {
    use amq_protocol::types::AMQPValue;
    match v {
        AMQPValue::Float(f) => f.is_finite(),
        AMQPValue::Double(d) => d.is_finite(),
        AMQPValue::FieldArray(a) => a.as_slice().iter().all(finite),
        AMQPValue::FieldTable(t) => t.inner().values().all(finite),
        _ => true,
    }
}

/// Replace `definitions.json` atomically and durably (write, fsync, rename, fsync the dir).
pub fn save_definitions(dir: &Path, defs: &Definitions) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("definitions.json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(defs).map_err(io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("definitions.json"))?;
    std::fs::File::open(dir)?.sync_all()
}
