//! The metadata group's state machine: committed commands are handed, in log order, to an
//! [`Apply`] (the broker applies them to its own state; tests record them). The applier's own
//! durable state (the definitions journal) is what survives a restart; openraft re-applies the
//! committed log on start, and commands are idempotent declarations, so re-applying is harmless.
//! Snapshots are the applier's export (the broker's definitions JSON).

use super::{Apply, Command, Member, Meta, NodeId, Reply};
use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Serialize, Deserialize)]
struct Stored {
    meta: SnapshotMeta<NodeId, Member>,
    #[serde(with = "b64")]
    data: Vec<u8>,
}

/// Bytes as base64 in the snapshot file (JSON would write an array of numbers).
mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// Keep the snapshot on disk (write, sync, rename, sync the directory): a restarted node
/// whose log was purged up to it starts from it.
fn persist(dir: &Path, s: &Stored) -> io::Result<()> {
    let path = dir.join("snapshot.json");
    let tmp = dir.join("snapshot.tmp");
    let bytes = serde_json::to_vec(s).map_err(io::Error::other)?;
    let mut f = File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()
}

/// The state machine openraft drives.
pub struct Machine {
    dir: PathBuf,
    applier: Arc<dyn Apply>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
    current: Arc<Mutex<Option<Stored>>>,
    snapshots: u64,
}

impl Machine {
    /// The state machine of `dir`: when a snapshot is kept there, the applier is given its
    /// content first and the log is re-applied from after it.
    pub async fn open(dir: &Path, applier: Arc<dyn Apply>) -> io::Result<Machine> {
        let mut m = Machine {
            dir: dir.to_path_buf(),
            applier,
            last_applied: None,
            membership: StoredMembership::default(),
            current: Arc::new(Mutex::new(None)),
            snapshots: 0,
        };
        match fs::read(dir.join("snapshot.json")) {
            Ok(bytes) => {
                let s: Stored = serde_json::from_slice(&bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                m.applier.install(s.data.clone()).await;
                m.last_applied = s.meta.last_log_id;
                m.membership = s.meta.last_membership.clone();
                *m.current.lock() = Some(s);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(m)
    }
}

/// Builds one snapshot of what was applied when it was made. openraft builds it in a task of
/// its own while the machine goes on applying, so the applier's content is taken when the
/// builder is made (the machine is not applying then), not when it builds: content taken later
/// would hold entries after `last_applied`, and a node installing it would apply them twice.
pub struct Builder {
    dir: PathBuf,
    data: Vec<u8>,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
    current: Arc<Mutex<Option<Stored>>>,
    id: String,
}

impl RaftSnapshotBuilder<Meta> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Meta>, StorageError<NodeId>> {
        let data = std::mem::take(&mut self.data);
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: self.id.clone(),
        };
        let stored = Stored {
            meta: meta.clone(),
            data: data.clone(),
        };
        persist(&self.dir, &stored).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        *self.current.lock() = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<Meta> for Machine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StorageError<NodeId>>
    {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<Meta>> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        for e in entries {
            self.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => replies.push(Reply::default()),
                EntryPayload::Normal(cmd) => {
                    let cmd: Command = cmd;
                    replies.push(self.applier.apply(e.log_id.index, cmd).await)
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(e.log_id), m);
                    replies.push(Reply::default())
                }
            }
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        self.snapshots += 1;
        Builder {
            dir: self.dir.clone(),
            data: self.applier.snapshot().await,
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            current: self.current.clone(),
            id: format!(
                "{}-{}",
                self.last_applied.map(|l| l.index).unwrap_or(0),
                self.snapshots
            ),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        self.applier.install(data.clone()).await;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        let stored = Stored {
            meta: meta.clone(),
            data,
        };
        persist(&self.dir, &stored).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        *self.current.lock() = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<Meta>>, StorageError<NodeId>> {
        Ok(self.current.lock().clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
