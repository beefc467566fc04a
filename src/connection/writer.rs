//! The writer task: the only code that writes to a socket. The connection task hands it whole
//! batches of encoded frames; the writer gathers everything queued and writes it with as few
//! syscalls as possible (one vectored write per batch when the kernel takes it all).

use super::WriteHalf;
use crate::queue::consumer::{Backlog, ConnEvent, MAX_CONNECTION_BACKLOG};
use bytes::{Buf, Bytes};
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Handle to a connection's writer task.
#[derive(Clone)]
pub(crate) struct Outbound {
    tx: mpsc::UnboundedSender<Bytes>,
    /// The connection's backlog (`socket`: bytes handed to the writer, not yet written).
    pub backlog: Arc<Backlog>,
}

impl Outbound {
    /// Spawn the writer for `half` (`flush`: after every batch, for TLS); it sends [`ConnEvent::Drained`] to `events` when a
    /// backlog that held queues back has drained.
    pub(crate) fn spawn(
        half: WriteHalf,
        flush: bool,
        backlog: Arc<Backlog>,
        events: mpsc::UnboundedSender<ConnEvent>,
    ) -> (Outbound, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(half, flush, rx, backlog.clone(), events));
        (Outbound { tx, backlog }, task)
    }

    /// Queue a batch of frames. Returns false if the socket is gone.
    pub(crate) fn send(&self, batch: Bytes) -> bool {
        if batch.is_empty() {
            return true;
        }
        self.backlog
            .socket
            .fetch_add(batch.len(), Ordering::Relaxed);
        self.tx.send(batch).is_ok()
    }
}

const MAX_GATHER: usize = 64;

async fn run(
    mut half: WriteHalf,
    flush: bool,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    backlog: Arc<Backlog>,
    events: mpsc::UnboundedSender<ConnEvent>,
) {
    let mut bufs: Vec<Bytes> = Vec::new();
    while let Some(first) = rx.recv().await {
        bufs.push(first);
        while bufs.len() < MAX_GATHER {
            match rx.try_recv() {
                Ok(b) => bufs.push(b),
                Err(_) => break,
            }
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if write_all_vectored(&mut half, &mut bufs).await.is_err() {
            return;
        }
        // TLS may hold the tail of a record until flushed (TCP has nothing to flush).
        if flush && half.flush().await.is_err() {
            return;
        }
        backlog.socket.fetch_sub(total, Ordering::Relaxed);
        backlog.sent.fetch_add(total as u64, Ordering::Relaxed);
        backlog.writes.fetch_add(1, Ordering::Relaxed);
        if backlog.total() < MAX_CONNECTION_BACKLOG / 2
            && backlog.blocked.swap(false, Ordering::Relaxed)
        {
            let _ = events.send(ConnEvent::Drained);
        }
    }
    let _ = half.shutdown().await;
}

async fn write_all_vectored(half: &mut WriteHalf, bufs: &mut Vec<Bytes>) -> std::io::Result<()> {
    let mut start = 0;
    while start < bufs.len() {
        let slices: Vec<IoSlice<'_>> = bufs[start..].iter().map(|b| IoSlice::new(b)).collect();
        let mut n = half.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let b = &mut bufs[start];
            if n >= b.len() {
                n -= b.len();
                start += 1;
            } else {
                b.advance(n);
                n = 0;
            }
        }
    }
    bufs.clear();
    Ok(())
}
