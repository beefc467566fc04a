//! Durability: per-vhost durable definitions (`definitions.json`, replaced atomically before
//! the `-ok` is sent) and the message log ([`log`]) for persistent messages in durable queues.
//! Knows bytes and records, not AMQP semantics; the vhost and queues decide what to store.

pub mod journal;
pub mod log;
pub mod record;
mod recovery;
mod writer;

use crate::defs::QueueDef;
use crate::defs::{BindingDef, ExchangeDef};
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

/// Load `definitions.json` (missing = empty). If it is damaged (or missing after a crash in
/// the middle of a save), the previous copy, `definitions.prev.json`, is loaded instead: the
/// last change before the damage is lost, not the vhost. A file Warren could not write again
/// (a float argument out of range, which JSON would turn into `null`) is refused.
pub fn load_definitions(dir: &Path) -> io::Result<Definitions> {
    let main = dir.join("definitions.json");
    let prev = dir.join("definitions.prev.json");
    match read_definitions(&main) {
        Ok(Some(d)) => Ok(d),
        Ok(None) => Ok(read_definitions(&prev)?.unwrap_or_default()),
        Err(e) => match read_definitions(&prev) {
            Ok(Some(d)) => {
                tracing::error!(file = %main.display(), error = %e, "damaged definitions; loaded the previous copy (the last change before the damage is lost)");
                Ok(d)
            }
            _ => Err(io::Error::other(format!("{}: {e}", main.display()))),
        },
    }
}

fn read_definitions(path: &Path) -> io::Result<Option<Definitions>> {
    let defs: Definitions = match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(io::Error::other)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
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
                "an argument holds a float that is not finite",
            ));
        }
    }
    Ok(Some(defs))
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

/// Replace `definitions.json` atomically and durably (write, fsync, rename, fsync the dir),
/// keeping the copy it replaces as `definitions.prev.json`. At every moment one of the two
/// holds the latest saved definitions or the ones before.
pub fn save_definitions(dir: &Path, defs: &Definitions) -> io::Result<()> {
    write_snapshot(
        dir,
        &serde_json::to_vec_pretty(defs).map_err(io::Error::other)?,
    )
}

/// [`save_definitions`] of already serialised definitions.
pub fn write_snapshot(dir: &Path, json: &[u8]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("definitions.json.tmp");
    let main = dir.join("definitions.json");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(json)?;
    f.sync_all()?;
    match std::fs::rename(&main, dir.join("definitions.prev.json")) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::rename(&tmp, &main)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs(queues: &[&str]) -> Definitions {
        let mut d = Definitions::default();
        for q in queues {
            d.queues.push(serde_json::from_value(serde_json::json!({
                "name": q, "durable": true, "exclusive": false, "auto_delete": false, "arguments": {}
            })).unwrap());
        }
        d
    }

    fn names(d: &Definitions) -> Vec<String> {
        d.queues.iter().map(|q| q.name.clone()).collect()
    }

    #[test]
    fn a_damaged_definitions_file_falls_back_to_the_previous_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(load_definitions(dir).unwrap().queues.is_empty());
        save_definitions(dir, &defs(&["a"])).unwrap();
        save_definitions(dir, &defs(&["a", "b"])).unwrap();
        assert_eq!(names(&load_definitions(dir).unwrap()), ["a", "b"]);
        // Damaged: the previous copy is loaded.
        std::fs::write(dir.join("definitions.json"), b"{\"exchanges\": [tru").unwrap();
        assert_eq!(names(&load_definitions(dir).unwrap()), ["a"]);
        // Missing (a crash between the two renames): the previous copy too.
        std::fs::remove_file(dir.join("definitions.json")).unwrap();
        assert_eq!(names(&load_definitions(dir).unwrap()), ["a"]);
        // Both damaged: refused, naming the file.
        std::fs::write(dir.join("definitions.json"), b"x").unwrap();
        std::fs::write(dir.join("definitions.prev.json"), b"y").unwrap();
        let e = load_definitions(dir).unwrap_err().to_string();
        assert!(e.contains("definitions.json"), "{e}");
    }
}
