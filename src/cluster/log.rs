//! The metadata group's Raft log on disk: one append-only file of CRC-checked records (appended
//! entries, truncations, purges, votes, the committed id), each write `fdatasync`ed before
//! openraft hears it is durable. Opening replays the file up to its first damaged record (a torn
//! tail after a crash) and cuts it there; the file is rewritten with only what is live when it
//! grows past twice that. Metadata changes are rare and small, so this log does its I/O inline
//! on the Raft task; the quorum-queue groups (docs/clustering.md) are to share the message
//! store's writer instead.

use super::{Meta, NodeId};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, LogId, LogState, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The largest record read back (a corrupt length field must not allocate gigabytes). A
/// record holds one entry: a definitions import of at most 20 MiB, escaped.
const MAX_RECORD: usize = 256 << 20;

/// One record of the log file.
#[derive(Serialize, Deserialize)]
enum Op {
    Append(Vec<Entry<Meta>>),
    /// Entries from this index on are gone (a new leader overwrote them).
    Truncate(u64),
    /// Entries up to this id are gone (a snapshot holds them).
    Purge(LogId<NodeId>),
    Vote(Vote<NodeId>),
    Committed(Option<LogId<NodeId>>),
}

struct Inner {
    path: PathBuf,
    file: File,
    /// Bytes in the file.
    written: u64,
    /// Bytes of live records when last measured (a rewrite is looked at past twice this).
    measured: u64,
    entries: BTreeMap<u64, Entry<Meta>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
}

/// The log store; clones share one file (openraft's reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

fn frame(op: &Op) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(op).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The records of a log file up to its first damaged one, and the length they cover.
fn replay(bytes: &[u8]) -> (Vec<Op>, usize) {
    let mut ops = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        if len > MAX_RECORD || bytes.len() - at - 8 < len {
            break;
        }
        let body = &bytes[at + 8..at + 8 + len];
        if crc32fast::hash(body) != crc {
            break;
        }
        match serde_json::from_slice(body) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
        at += 8 + len;
    }
    (ops, at)
}

impl Inner {
    fn apply(&mut self, op: Op) {
        match op {
            Op::Append(entries) => {
                for e in entries {
                    self.entries.insert(e.log_id.index, e);
                }
            }
            Op::Truncate(index) => {
                self.entries.split_off(&index);
            }
            Op::Purge(id) => {
                self.entries = self.entries.split_off(&(id.index + 1));
                self.purged = Some(id);
            }
            Op::Vote(v) => self.vote = Some(v),
            Op::Committed(c) => self.committed = c,
        }
    }

    /// Append one record and sync it.
    fn write(&mut self, op: Op) -> io::Result<()> {
        self.write_all(vec![op])
    }

    /// Append records and sync them once; rewrite the file when it is mostly dead records
    /// (looked at when it has doubled since the live records were last measured).
    fn write_all(&mut self, ops: Vec<Op>) -> io::Result<()> {
        self.write_ops(ops, true)
    }

    /// Append records, synced or not: a record whose loss a crash may cause harmlessly (the
    /// committed index, which only ever lags what the synced entries say) goes to disk with
    /// the next synced write.
    fn write_ops(&mut self, ops: Vec<Op>, sync: bool) -> io::Result<()> {
        let mut buf = Vec::new();
        for op in &ops {
            buf.extend_from_slice(&frame(op)?);
        }
        self.file.write_all(&buf)?;
        if sync {
            self.file.sync_data()?;
        }
        self.written += buf.len() as u64;
        for op in ops {
            self.apply(op);
        }
        if self.written > (1 << 20).max(2 * self.measured) {
            let live = self.snapshot_ops();
            let size: u64 = live.iter().map(|r| r.len() as u64).sum();
            self.measured = size;
            if self.written > 2 * size {
                self.rewrite(live)?;
            }
        }
        Ok(())
    }

    /// The records that rebuild the current state.
    fn snapshot_ops(&self) -> Vec<Vec<u8>> {
        let mut ops = Vec::new();
        let mut push = |op: Op| {
            if let Ok(r) = frame(&op) {
                ops.push(r)
            }
        };
        if let Some(v) = self.vote {
            push(Op::Vote(v));
        }
        push(Op::Committed(self.committed));
        if let Some(p) = self.purged {
            push(Op::Purge(p));
        }
        for e in self.entries.values() {
            push(Op::Append(vec![e.clone()]));
        }
        ops
    }

    /// Write the live records to a new file and put it in place of the old (rename, then
    /// sync the directory, so a crash leaves one whole file or the other).
    fn rewrite(&mut self, live: Vec<Vec<u8>>) -> io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        let mut n = 0;
        for r in &live {
            f.write_all(r)?;
            n += r.len() as u64;
        }
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.written = n;
        Ok(())
    }
}

impl LogStore {
    /// Open (or create) the log in `dir`.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        fs::create_dir_all(dir)?;
        let path = dir.join("raft.log");
        let mut bytes = Vec::new();
        if let Ok(mut f) = File::open(&path) {
            f.read_to_end(&mut bytes)?;
        }
        let (ops, good) = replay(&bytes);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .truncate(false)
            .open(&path)?;
        if good < bytes.len() {
            tracing::warn!(
                file = %path.display(),
                cut = bytes.len() - good,
                "cluster log: damaged tail cut"
            );
            file.set_len(good as u64)?;
            file.sync_all()?;
        }
        let mut inner = Inner {
            path,
            file,
            written: good as u64,
            measured: 0,
            entries: BTreeMap::new(),
            vote: None,
            committed: None,
            purged: None,
        };
        for op in ops {
            inner.apply(op);
        }
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    // openraft's error type is what its traits return.
    #[allow(clippy::result_large_err)]
    fn write(&self, op: Op) -> Result<(), StorageError<NodeId>> {
        self.inner
            .lock()
            .write(op)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

impl RaftLogReader<Meta> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<Meta>>, StorageError<NodeId>> {
        let inner = self.inner.lock();
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<Meta> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<Meta>, StorageError<NodeId>> {
        let inner = self.inner.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| *e.get_log_id())
            .or(inner.purged);
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.inner
            .lock()
            .write(Op::Vote(*vote))
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not synced: lost in a crash, the node re-applies less on restart and learns the
        // rest from the leader (openraft keeps no promise on it).
        self.inner
            .lock()
            .write_ops(vec![Op::Committed(committed)], false)
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<Meta>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<Meta>> + Send,
        I::IntoIter: Send,
    {
        // A record per entry, one sync for them all; the sync blocks this worker thread only
        // with the runtime's leave (its other tasks move on), in order (the next append
        // waits for this one).
        let ops = entries.into_iter().map(|e| Op::Append(vec![e])).collect();
        let write = || self.inner.lock().write_all(ops);
        let result = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(write),
            _ => write(),
        };
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = StorageIOError::write_logs(&e).into();
                callback.log_io_completed(Err(e));
                Err(err)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write(Op::Truncate(log_id.index))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write(Op::Purge(log_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry<Meta> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn replays_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = LogStore::open(dir.path()).unwrap();
            s.write(Op::Append((1..=5).map(entry).collect())).unwrap();
            s.write(Op::Truncate(4)).unwrap();
            s.write(Op::Vote(Vote::new(3, 2))).unwrap();
        }
        // A torn record: a length and part of a body.
        let path = dir.path().join("raft.log");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
        drop(f);
        let before = fs::metadata(&path).unwrap().len();
        let s = LogStore::open(dir.path()).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), before - 9);
        let inner = s.inner.lock();
        assert_eq!(inner.entries.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(inner.vote, Some(Vote::new(3, 2)));
    }

    #[test]
    fn rewrite_keeps_what_is_live() {
        let dir = tempfile::tempdir().unwrap();
        let s = LogStore::open(dir.path()).unwrap();
        // Far more than 1 MiB of records, most of them purged.
        for round in 0..60u64 {
            let from = round * 200 + 1;
            s.write(Op::Append((from..from + 200).map(entry).collect()))
                .unwrap();
            s.write(Op::Purge(LogId::new(
                CommittedLeaderId::new(1, 1),
                from + 189,
            )))
            .unwrap();
        }
        let size = fs::metadata(dir.path().join("raft.log")).unwrap().len();
        assert!(size < 1 << 20, "file not rewritten: {size} B");
        drop(s);
        let s = LogStore::open(dir.path()).unwrap();
        let inner = s.inner.lock();
        assert_eq!(inner.entries.len(), 10);
        assert_eq!(inner.purged.map(|p| p.index), Some(59 * 200 + 190));
    }
}
