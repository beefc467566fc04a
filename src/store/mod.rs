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

/// Load `definitions.json` (missing = empty).
pub fn load_definitions(dir: &Path) -> io::Result<Definitions> {
    match std::fs::read(dir.join("definitions.json")) {
        Ok(b) => serde_json::from_slice(&b).map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Definitions::default()),
        Err(e) => Err(e),
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
