//! Producers: one connection and channel each; a writer loop that batches hand-encoded publishes
//! into large writes (windowed by confirms, paced by the rate limit) and a reader task that
//! tracks confirms and returns.

use crate::client::{Conn, Res, Uri, decode_ack, describe_close, publish_frame};
use crate::stats::Bits;
use crate::{Control, now_ns};
use amq_protocol::protocol::{AMQPClass, confirm};
use bytes::BytesMut;
use futures::StreamExt;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};
use tokio_util::codec::FramedRead;
use warren::protocol::codec::{Frame, FrameCodec, put_content};

/// Bytes of publishes gathered into one socket write.
const BATCH_BYTES: usize = 64 * 1024;

/// How long after the deadline a write the broker blocks (flow control) may still complete.
const WRITE_GRACE: Duration = Duration::from_secs(1);

/// What one producer does.
#[derive(Clone, Debug)]
pub struct ProducerCfg {
    /// Producer id (the top 16 bits of message ids).
    pub id: u64,
    /// Exchange to publish to ("" = default).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// Body size in bytes.
    pub size: usize,
    /// delivery_mode 2.
    pub persistent: bool,
    /// Outstanding confirm window (0 = no confirms).
    pub confirm: u64,
    /// Messages per second (0 = unlimited).
    pub rate: u64,
    /// Messages to send (None = until the deadline).
    pub count: Option<u64>,
}

/// Counters the reporter and the orchestrator read.
#[derive(Default)]
pub struct ProducerStats {
    /// Messages completely written to the socket.
    pub sent: AtomicU64,
    /// Publishes acked by the broker.
    pub confirmed: AtomicU64,
    /// Publishes nacked by the broker.
    pub nacked: AtomicU64,
    /// basic.return received.
    pub returned: AtomicU64,
    /// Acked + nacked (the confirm window's lower edge).
    pub resolved: AtomicU64,
    /// When the publishing loop ended (ns since start).
    pub done_ns: AtomicU64,
    notify: Notify,
    closing: AtomicBool,
    confirms: Mutex<Confirms>,
}

/// What a producer reports at the end.
pub struct ProducerResult {
    /// Messages sent (ids 0..sent).
    pub sent: u64,
    /// Ids the broker confirmed (with confirms only).
    pub confirmed: Option<Bits>,
}

/// Connect, open channel 1 and enable confirms if asked.
pub async fn setup(uri: &Uri, cfg: &ProducerCfg) -> Res<Conn> {
    let mut c = Conn::connect(uri, &format!("warren-perf producer {}", cfg.id)).await?;
    c.open_channel(1).await?;
    if cfg.confirm > 0 {
        c.rpc(
            1,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
            (85, 11),
        )
        .await?;
    }
    Ok(c)
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Publish until the count, the deadline or a stop; then wait for outstanding confirms and close.
pub async fn run(
    conn: Conn,
    cfg: ProducerCfg,
    deadline: Option<Instant>,
    stats: Arc<ProducerStats>,
    ctl: Arc<Control>,
) -> Res<ProducerResult> {
    let Conn {
        rd,
        mut wr,
        frame_max,
        ..
    } = conn;
    let confirms = cfg.confirm > 0;
    let reader = tokio::spawn(read_loop(rd, stats.clone(), ctl.clone(), confirms));
    let props: &[u8] = if cfg.persistent {
        &[0x10, 0x00, 0x02]
    } else {
        &[0x00, 0x00]
    };
    let method = publish_frame(1, &cfg.exchange, &cfg.routing_key);
    let mut body = vec![0u8; cfg.size];
    let msg_len = {
        let mut probe = BytesMut::new();
        probe.extend_from_slice(&method);
        put_content(&mut probe, 1, props, &body, frame_max);
        probe.len()
    };
    let batch_max = (BATCH_BYTES / msg_len).clamp(1, 4096) as u64;
    let mut buf = BytesMut::with_capacity(batch_max as usize * msg_len);
    let mut seq = 0u64;
    let start = Instant::now();
    let mut dirty = false;
    let mut error = None;
    'run: loop {
        if ctl.stop.is_cancelled() || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let mut n = batch_max;
        if let Some(c) = cfg.count {
            if seq >= c {
                break;
            }
            n = n.min(c - seq);
        }
        if confirms {
            loop {
                let outstanding = seq - stats.resolved.load(Ordering::Acquire);
                if outstanding < cfg.confirm {
                    n = n.min(cfg.confirm - outstanding);
                    break;
                }
                tokio::select! {
                    _ = stats.notify.notified() => {}
                    _ = ctl.stop.cancelled() => break 'run,
                    _ = sleep_until_opt(deadline) => break 'run,
                }
            }
        }
        if cfg.rate > 0 {
            let due = (start.elapsed().as_secs_f64() * cfg.rate as f64) as u64 + 1;
            if due <= seq {
                let at = start + Duration::from_secs_f64(seq as f64 / cfg.rate as f64);
                tokio::select! {
                    _ = sleep_until(at) => {}
                    _ = ctl.stop.cancelled() => break 'run,
                    _ = sleep_until_opt(deadline) => break 'run,
                }
                continue;
            }
            n = n.min(due - seq);
        }
        let ts = now_ns().to_be_bytes();
        for i in 0..n {
            if cfg.size >= 16 {
                body[..8].copy_from_slice(&((cfg.id << 48) | (seq + i)).to_be_bytes());
                body[8..16].copy_from_slice(&ts);
            }
            buf.extend_from_slice(&method);
            put_content(&mut buf, 1, props, &body, frame_max);
        }
        // Write the batch; a stop or the deadline may interrupt a write the broker blocks.
        let mut written = 0;
        while written < buf.len() {
            tokio::select! {
                biased;
                r = wr.write(&buf[written..]) => match r {
                    Ok(0) => { error = Some("the broker closed the connection".to_string()); break 'run }
                    Ok(k) => written += k,
                    Err(e) => { error = Some(format!("write: {e}")); break 'run }
                },
                _ = ctl.stop.cancelled() => break,
                _ = sleep_until_opt(deadline.map(|d| d + WRITE_GRACE)) => break,
            }
        }
        buf.clear();
        let complete = (written / msg_len) as u64;
        seq += complete;
        stats.sent.store(seq, Ordering::Release);
        if complete < n {
            dirty = written % msg_len != 0;
            break;
        }
    }
    stats.sent.store(seq, Ordering::Release);
    stats.done_ns.store(now_ns(), Ordering::Release);
    if let Some(e) = error {
        ctl.fail(format!("producer {}: {e}", cfg.id));
        reader.abort();
        return Err(e);
    }
    // Wait for the outstanding confirms (5 s without progress at most).
    if confirms && !dirty {
        let mut last = stats.resolved.load(Ordering::Acquire);
        let mut since = Instant::now();
        while last < seq && !ctl.halt.is_cancelled() && since.elapsed() < Duration::from_secs(5) {
            tokio::select! {
                _ = stats.notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = ctl.halt.cancelled() => {}
            }
            let now = stats.resolved.load(Ordering::Acquire);
            if now != last {
                last = now;
                since = Instant::now();
            }
        }
    }
    if !dirty {
        stats.closing.store(true, Ordering::Release);
        let mut out = BytesMut::new();
        warren::protocol::codec::put_method(
            &mut out,
            0,
            AMQPClass::Connection(amq_protocol::protocol::connection::AMQPMethod::Close(
                amq_protocol::protocol::connection::Close {
                    reply_code: 200,
                    reply_text: "done".into(),
                    class_id: 0,
                    method_id: 0,
                },
            )),
        );
        let _ = wr.write_all(&out).await;
    }
    // After an interrupted write the connection is unusable: no close handshake.
    let wait = if dirty {
        Duration::ZERO
    } else {
        Duration::from_secs(3)
    };
    let abort = reader.abort_handle();
    if tokio::time::timeout(wait, reader).await.is_err() {
        abort.abort();
    }
    let confirmed = std::mem::take(&mut stats.confirms.lock().acked);
    Ok(ProducerResult {
        sent: seq,
        confirmed: confirms.then_some(confirmed),
    })
}

/// Confirm bookkeeping: which publish sequence numbers (0-based) were acked or nacked.
#[derive(Default)]
struct Confirms {
    acked: Bits,
    resolved: Bits,
    low: u64,
    n_acked: u64,
    n_nacked: u64,
}

impl Confirms {
    fn apply(&mut self, tag: u64, multiple: bool, nack: bool) {
        if tag == 0 {
            return;
        }
        let last = tag - 1;
        let from = if multiple { self.low } else { last };
        for s in from..=last {
            if !self.resolved.set(s) {
                if nack {
                    self.n_nacked += 1;
                } else {
                    self.acked.set(s);
                    self.n_acked += 1;
                }
            }
        }
        while self.resolved.get(self.low) {
            self.low += 1;
        }
    }
}

/// The producer connection's inbound side: confirms, returns, flow control and closes.
async fn read_loop(
    mut rd: FramedRead<OwnedReadHalf, FrameCodec>,
    stats: Arc<ProducerStats>,
    ctl: Arc<Control>,
    confirms: bool,
) {
    loop {
        let f = tokio::select! {
            f = rd.next() => f,
            _ = ctl.halt.cancelled() => break,
        };
        let frame = match f {
            None => {
                if !stats.closing.load(Ordering::Acquire) {
                    ctl.fail("a producer connection was closed by the broker".into());
                }
                break;
            }
            Some(Err(e)) => {
                ctl.fail(format!("bad frame on a producer connection: {e:?}"));
                break;
            }
            Some(Ok(f)) => f,
        };
        let Frame::Method {
            class_id,
            method_id,
            payload,
            ..
        } = frame
        else {
            continue;
        };
        match (class_id, method_id) {
            (60, 80) | (60, 120) => {
                if let (true, Some((tag, multiple))) = (confirms, decode_ack(&payload)) {
                    let mut c = stats.confirms.lock();
                    c.apply(tag, multiple, method_id == 120);
                    stats.confirmed.store(c.n_acked, Ordering::Relaxed);
                    stats.nacked.store(c.n_nacked, Ordering::Relaxed);
                    stats
                        .resolved
                        .store(c.n_acked + c.n_nacked, Ordering::Release);
                    stats.notify.notify_one();
                }
            }
            (60, 50) => {
                stats.returned.fetch_add(1, Ordering::Relaxed);
            }
            (10, 51) => break,
            (10, 50) | (20, 40) => {
                ctl.fail(format!("producer: {}", describe_close(&payload)));
                break;
            }
            (10, 60) => eprintln!("warren-perf: the broker blocked a producer connection"),
            (10, 61) => eprintln!("warren-perf: the broker unblocked a producer connection"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Confirms;

    #[test]
    fn confirm_tracking() {
        let mut c = Confirms::default();
        c.apply(2, false, false);
        assert_eq!((c.n_acked, c.low), (1, 0));
        c.apply(3, true, false);
        assert_eq!((c.n_acked, c.low), (3, 3));
        c.apply(5, false, true);
        c.apply(4, false, false);
        assert_eq!((c.n_acked, c.n_nacked, c.low), (4, 1, 5));
        assert!(c.acked.get(3) && !c.acked.get(4));
        c.apply(8, true, true);
        assert_eq!((c.n_acked, c.n_nacked, c.low), (4, 4, 8));
    }
}
