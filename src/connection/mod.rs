//! One task per client connection: the protocol header, the handshake, then a loop over inbound
//! frames, broker events and heartbeat timers. Owns the socket's read half, the channel table
//! and the close handshake; every [`AmqpError`] becomes a `channel.close` or `connection.close`
//! here and nowhere else. Writes go through the [`writer`] task, one batch per loop turn.

mod handshake;
pub(crate) mod writer;

use crate::channel::{Channel, ChannelState};
use crate::protocol::codec::{CodecError, Frame, FrameCodec, put_heartbeat};
use crate::protocol::method::Method;
use crate::protocol::{AmqpError, ReplyCode};
use crate::queue::consumer::{Backlog, ConnEvent, MAX_CONNECTION_BACKLOG};
use crate::state::BrokerState;
use amq_protocol::protocol::{AMQPClass, channel as chan, connection as conn};
use futures::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn};
use writer::Outbound;

pub(crate) use crate::channel::{ConnCtx, Fault, decode_method};

/// How long to wait for `connection.close-ok` after sending `connection.close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Frames processed per loop turn before the batch is handed to the writer.
const MAX_FRAMES_PER_TURN: usize = 256;
/// Output a loop turn may produce before it stops reading frames (the socket's backlog is
/// checked between turns).
const MAX_TURN_OUTPUT: usize = 1024 * 1024;

/// What the loop does after handling an input.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    /// Flush what is queued, then close the socket.
    Stop,
}

/// The read half of a client socket (plain TCP or TLS).
pub(crate) type ReadHalf = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
/// The write half of a client socket (plain TCP or TLS).
pub(crate) type WriteHalf = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// What TLS told about a connection.
#[derive(Clone, Debug, Default)]
pub(crate) struct TlsInfo {
    /// The common name of the client's verified certificate (EXTERNAL logs in as it).
    pub peer_cn: Option<String>,
}

/// Serve one socket until it closes (`tls`: the AMQPS listener's acceptor). Never panics on
/// client input.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<BrokerState>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let id = broker.next_connection_id();
    debug!(conn = id, %peer, "accepted");
    let local = stream.local_addr().unwrap_or(peer);
    // Bounded handshakes: past the limit the socket is closed before anything is read.
    let Ok(permit) = broker.handshakes.clone().try_acquire_owned() else {
        warn!(conn = id, %peer, "too many handshakes in progress: connection refused");
        return;
    };
    let timeout = Duration::from_secs(broker.config.handshake_timeout.max(1));
    let (read, write, tls_info): (ReadHalf, WriteHalf, Option<TlsInfo>) = match tls {
        None => {
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w), None)
        }
        Some(acceptor) => {
            // Boxed: the TLS handshake's state is not carried in every connection's future.
            match Box::pin(accept_tls(acceptor, stream, id, peer, &broker, timeout)).await {
                Some(halves) => halves,
                None => return,
            }
        }
    };
    let tls_on = tls_info.is_some();
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let backlog = Arc::new(Backlog::default());
    let (outbound, writer_task) = Outbound::spawn(
        write,
        tls_info.is_some(),
        backlog.clone(),
        events_tx.clone(),
    );
    let shake = handshake::Handshake {
        broker: broker.clone(),
        id,
        peer,
        outbound: outbound.clone(),
        events: events_tx,
        backlog,
        refusal_delay_ms: Default::default(),
        permit: Some(permit),
        tls: tls_info,
    };
    let outcome = tokio::select! {
        // Boxed: the handshake state is freed once the connection is open, so it does not
        // add to the size of every open connection's task.
        r = tokio::time::timeout(timeout, Box::pin(shake.run(read))) => match r {
            Ok(outcome) => outcome,
            Err(_) => {
                info!(conn = id, %peer, "closing connection: handshake timeout");
                handshake::Outcome::Failed(None)
            }
        },
        _ = broker.shutdown.cancelled() => handshake::Outcome::Failed(None),
    };
    let (mut reader, client_closed) = match outcome {
        handshake::Outcome::Opened(opened) => {
            let opened = *opened;
            let details = Arc::new(crate::state::ConnDetails {
                name: format!(
                    "{} -> {}",
                    crate::state::host_port(peer),
                    crate::state::host_port(local)
                ),
                local,
                client_properties: opened.client_properties,
                connected_at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                auth_mechanism: opened.mechanism,
                tls: tls_on,
                frame_max: opened.ctx.frame_max,
                channel_max: opened.channel_max,
                heartbeat: opened.heartbeat,
            });
            let mut c = Connection {
                ctx: opened.ctx,
                heartbeat: opened.heartbeat,
                channel_max: opened.channel_max,
                outbound: outbound.clone(),
                channels: HashMap::new(),
                closing_since: None,
                last_recv: Instant::now(),
                last_sent: Instant::now(),
                stop_reason: None,
                client_closed: false,
                alarm: broker.alarms.subscribe(),
                blocked: false,
                sent_blocked: false,
                channel_count: Default::default(),
                closed_counts: Default::default(),
                recv_oct: 0,
                recv_cnt: 0,
            };
            info!(conn = id, %peer, user = %c.ctx.user, vhost = %c.ctx.vhost.name, "connection opened");
            broker.registry.insert(
                id,
                crate::state::ConnInfo {
                    user: c.ctx.user.clone(),
                    vhost: c.ctx.vhost.name.clone(),
                    peer,
                    channels: c.channel_count.clone(),
                    events: c.ctx.events.clone(),
                    details,
                    backlog: c.outbound.backlog.clone(),
                },
            );
            broker
                .churn
                .connection_created
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut reader = opened.reader;
            let reason = c.run(&mut reader, &mut events_rx).await;
            broker.registry.remove(&id);
            c.cleanup(&mut events_rx);
            broker.retire_counts(&c.ctx.vhost.name, c.closed_counts);
            broker
                .churn
                .connection_closed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            info!(conn = id, %peer, user = %c.ctx.user, vhost = %c.ctx.vhost.name, %reason, "connection closed");
            (Some(reader), c.client_closed)
        }
        handshake::Outcome::Failed(reader) => (reader, false),
    };
    if client_closed && let Some(r) = reader.take() {
        // After the close-ok for a client's connection.close, RabbitMQ leaves closing the
        // socket to the client: a FIN from us first can reach a client before it has read
        // the close-ok (aiormq then reports its reader closed unexpectedly).
        drain_until_eof(r).await;
    }
    // Dropping the last sender lets the writer flush what is queued and send FIN.
    drop(outbound);
    if let Some(reader) = reader {
        drain_until_eof(reader).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), writer_task).await;
}

/// The TLS handshake of an AMQPS connection, within the handshake deadline; the halves of the
/// TLS stream and what the client's certificate says.
async fn accept_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    id: u64,
    peer: SocketAddr,
    broker: &BrokerState,
    timeout: Duration,
) -> Option<(ReadHalf, WriteHalf, Option<TlsInfo>)> {
    let accepted = tokio::select! {
        r = tokio::time::timeout(timeout, acceptor.accept(stream)) => r,
        _ = broker.shutdown.cancelled() => return None,
    };
    match accepted {
        Ok(Ok(s)) => {
            let info = TlsInfo {
                peer_cn: crate::tls::peer_common_name(s.get_ref().1),
            };
            let (r, w) = tokio::io::split(s);
            Some((Box::new(r), Box::new(w), Some(info)))
        }
        Ok(Err(e)) => {
            info!(conn = id, %peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            info!(conn = id, %peer, "closing connection: TLS handshake timeout");
            None
        }
    }
}

struct Connection {
    ctx: ConnCtx,
    heartbeat: u16,
    channel_max: u16,
    outbound: Outbound,
    channels: HashMap<u16, Channel>,
    /// Set when we have sent `connection.close` and wait for close-ok.
    closing_since: Option<Instant>,
    last_recv: Instant,
    last_sent: Instant,
    /// Why the loop stopped, for the log line.
    stop_reason: Option<String>,
    /// The client sent `connection.close` (and was answered close-ok).
    client_closed: bool,
    /// The broker's resource alarms.
    alarm: tokio::sync::watch::Receiver<crate::state::Alarms>,
    /// Not reading from the socket: the connection published during a memory alarm.
    blocked: bool,
    /// `connection.blocked` was sent (so `connection.unblocked` is owed).
    sent_blocked: bool,
    /// Channels open, shared with the broker's registry (user `max-channels` limits).
    channel_count: Arc<std::sync::atomic::AtomicU32>,
    /// Message counts of the channels closed so far.
    closed_counts: crate::stats::MessageCounts,
    /// Bytes and frames received.
    recv_oct: u64,
    recv_cnt: u64,
}

type Reader = FramedRead<ReadHalf, FrameCodec>;

impl Connection {
    async fn run(
        &mut self,
        reader: &mut Reader,
        events: &mut mpsc::UnboundedReceiver<ConnEvent>,
    ) -> String {
        reader.decoder_mut().frame_max = self.ctx.frame_max;
        let hb = Duration::from_secs(self.heartbeat as u64);
        let mut shutdown_seen = false;
        loop {
            self.ctx.clock = None;
            let hb_deadline = self.next_heartbeat_deadline(hb);
            let close_deadline = self.closing_since.map(|t| t + CLOSE_TIMEOUT);
            let timeout_check = self
                .ctx
                .timeout_check
                .filter(|_| self.closing_since.is_none());
            let reading = !self.blocked && !self.output_full();
            let flow = tokio::select! {
                frame = reader.next(), if reading => match frame {
                    // What this turn produced still goes out (a client may half-close
                    // after its last frames and read the replies).
                    None => self.stopped("client closed the socket".into()),
                    Some(Err(CodecError::Io(e))) => self.stopped(format!("socket error: {e}")),
                    Some(first) => {
                        // Once per turn: reading the clock per frame showed in profiles.
                        self.last_recv = Instant::now();
                        let mut flow = self.on_read(first);
                        let mut n = 1;
                        while flow == Flow::Continue
                            && n < MAX_FRAMES_PER_TURN
                            && self.ctx.out.len() < MAX_TURN_OUTPUT
                        {
                            match reader.next().now_or_never() {
                                Some(Some(Err(CodecError::Io(e)))) => {
                                    flow = self.stopped(format!("socket error: {e}"));
                                }
                                Some(Some(r)) => flow = self.on_read(r),
                                Some(None) => flow = self.stopped("client closed the socket".into()),
                                None => break,
                            }
                            n += 1;
                        }
                        flow
                    }
                },
                Some(ev) = events.recv() => {
                    self.on_event(ev);
                    let mut n = 1;
                    while n < MAX_FRAMES_PER_TURN {
                        match events.try_recv() {
                            Ok(ev) => self.on_event(ev),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                    Flow::Continue
                }
                changed = self.alarm.changed(), if self.blocked => {
                    if changed.is_err() || !self.alarm.borrow_and_update().any() {
                        self.unblock();
                    }
                    Flow::Continue
                }
                _ = self.ctx.broker.shutdown.cancelled(), if !shutdown_seen => {
                    shutdown_seen = true;
                    if self.closing_since.is_none() {
                        self.close_connection(AmqpError::new(
                            ReplyCode::ConnectionForced,
                            "broker forced connection closure with reason 'shutdown'",
                        ));
                    }
                    Flow::Continue
                }
                _ = sleep_until(hb_deadline.unwrap_or_else(far_future)), if hb_deadline.is_some() => {
                    self.on_heartbeat_timer(hb)
                }
                // The broker's clock: a manual test clock times consumers out when advanced.
                _ = crate::clock::sleep_until(timeout_check.unwrap_or(u64::MAX)), if timeout_check.is_some() => {
                    self.check_consumer_timeouts();
                    Flow::Continue
                }
                _ = sleep_until(close_deadline.unwrap_or_else(far_future)), if close_deadline.is_some() => {
                    return "timed out waiting for connection.close-ok".into();
                }
            };
            let published = std::mem::take(&mut self.ctx.published);
            if published && self.alarm.borrow().any() && self.closing_since.is_none() {
                self.block();
            }
            if published
                && !self.blocked
                && let Some(mut rx) = self.ctx.vhost.log().and_then(|l| l.flow())
            {
                // Flow control (RabbitMQ's "flow" state): the store's writer is behind the
                // publishers; stop reading this connection until it catches up. A second at
                // most per turn, so a stuck writer only slows publishers to a crawl.
                self.flush();
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), rx.wait_for(|paused| !*paused))
                        .await;
                self.last_recv = Instant::now();
            }
            if std::mem::take(&mut self.ctx.topology_changed)
                && let Some((seq, mut rx)) = self.ctx.vhost.definitions_pending()
            {
                // Only this connection waits (its replies, in order); the worker is free.
                let _ = rx.wait_for(|s| s.seq >= seq || s.failing).await;
            }
            self.count_channels();
            self.flush();
            if let Flow::Stop = flow {
                return self.stop_reason.take().unwrap_or_else(|| "closed".into());
            }
        }
    }
}

/// After the close handshake (or a framing error), read and discard until the client closes,
/// so that closing our end never turns into a TCP reset that could destroy the close frame.
async fn drain_until_eof(reader: Reader) {
    use tokio::io::AsyncReadExt;
    let mut read = reader.into_inner();
    // On the heap: an array here would be part of every connection task's size.
    let mut scratch = vec![0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(n) = read.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

impl Connection {
    fn on_read(&mut self, r: Result<Frame, CodecError>) -> Flow {
        let frame = match r {
            Ok(f) => {
                self.recv_oct += f.wire_len() as u64;
                self.recv_cnt += 1;
                f
            }
            Err(CodecError::Protocol(e)) => {
                // The byte stream cannot be trusted any more: say why and stop reading.
                self.send_connection_close(&e);
                self.stop_reason = Some(e.text);
                return Flow::Stop;
            }
            Err(CodecError::Io(e)) => {
                self.stop_reason = Some(format!("socket error: {e}"));
                return Flow::Stop;
            }
        };
        if self.closing_since.is_some() {
            return self.on_frame_while_closing(frame);
        }
        let channel = frame.channel();
        match self.on_frame(frame) {
            Ok(flow) => flow,
            Err(Fault::Drop(reason)) => {
                self.stop_reason = Some(reason);
                Flow::Stop
            }
            Err(Fault::Amqp(e)) => {
                if e.closes_connection() || channel == 0 {
                    self.close_connection(e);
                } else {
                    self.close_channel(channel, e);
                }
                Flow::Continue
            }
        }
    }

    /// After we sent `connection.close`, only close-ok (or a crossing close) matters.
    fn on_frame_while_closing(&mut self, frame: Frame) -> Flow {
        if let Frame::Method {
            channel: 0,
            class_id: 10,
            method_id,
            ..
        } = frame
        {
            match method_id {
                51 => return Flow::Stop,
                50 => {
                    self.ctx.send_method(
                        0,
                        AMQPClass::Connection(conn::AMQPMethod::CloseOk(conn::CloseOk {})),
                    );
                    return Flow::Stop;
                }
                _ => {}
            }
        }
        Flow::Continue
    }

    fn on_frame(&mut self, frame: Frame) -> Result<Flow, Fault> {
        match frame {
            Frame::Heartbeat { channel: 0 } => Ok(Flow::Continue),
            // RabbitMQ 3.10.8: `505 UNEXPECTED_FRAME - type 8, all octets = <<>>`, 0/0.
            Frame::Heartbeat { .. } => {
                Err(AmqpError::unexpected_frame("type 8, all octets = <<>>")
                    .on(0, 0)
                    .into())
            }
            Frame::Method {
                channel: 0,
                class_id,
                method_id,
                payload,
            } => {
                let m = decode_method(class_id, method_id, &payload)?;
                self.on_connection_method(m, class_id, method_id)
            }
            Frame::Header { channel: 0, .. } | Frame::Body { channel: 0, .. } => Err(
                AmqpError::unexpected_frame("expected method frame, got non method frame instead")
                    .into(),
            ),
            frame => self.on_channel_frame(frame),
        }
    }

    fn on_connection_method(
        &mut self,
        m: Method,
        class_id: u16,
        method_id: u16,
    ) -> Result<Flow, Fault> {
        match m {
            Method::Other(AMQPClass::Connection(conn::AMQPMethod::Close(c))) => {
                debug!(conn = self.ctx.id, code = c.reply_code, text = %c.reply_text, "client closed the connection");
                // As RabbitMQ: confirms already owed go out before close-ok, nothing after it
                // (publishes still waiting for the disk are never confirmed).
                self.flush_confirms();
                self.ctx.send_method(
                    0,
                    AMQPClass::Connection(conn::AMQPMethod::CloseOk(conn::CloseOk {})),
                );
                self.stop_reason = Some(format!(
                    "client sent connection.close ({} {})",
                    c.reply_code, c.reply_text
                ));
                self.client_closed = true;
                Ok(Flow::Stop)
            }
            Method::Other(AMQPClass::Connection(conn::AMQPMethod::UpdateSecret(_))) => {
                // Warren has no expiring credentials; accept as RabbitMQ does for PLAIN.
                self.ctx.send_method(
                    0,
                    AMQPClass::Connection(conn::AMQPMethod::UpdateSecretOk(
                        conn::UpdateSecretOk {},
                    )),
                );
                Ok(Flow::Continue)
            }
            Method::Other(AMQPClass::Connection(
                conn::AMQPMethod::Blocked(_) | conn::AMQPMethod::Unblocked(_),
            )) => Ok(Flow::Continue),
            _ => Err(
                AmqpError::channel_error("unexpected method in connection state running")
                    .on(class_id, method_id)
                    .into(),
            ),
        }
    }

    fn on_channel_frame(&mut self, frame: Frame) -> Result<Flow, Fault> {
        let id = frame.channel();
        let Some(channel) = self.channels.get_mut(&id) else {
            return self.open_channel(frame);
        };
        match channel.state {
            ChannelState::Closing => {
                match channel.closing_frame(&frame)? {
                    crate::channel::Closing::Discard => {}
                    // close-ok for ours: the channel number is free again
                    crate::channel::Closing::Done => {
                        self.take_channel(id);
                    }
                    // A close crossing ours: answer it and keep waiting for the close-ok of
                    // ours (RabbitMQ's closing state; AMQP 0-9-1 2.2.4): a client that sends
                    // both must not find the number unopened (504).
                    crate::channel::Closing::Crossed => {
                        self.ctx.send_method(
                            id,
                            AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
                        );
                    }
                }
                Ok(Flow::Continue)
            }
            ChannelState::Open => {
                let outcome = channel.handle_frame(&mut self.ctx, frame)?;
                if outcome == crate::channel::Outcome::Closed
                    && let Some(mut ch) = self.take_channel(id)
                {
                    ch.release(&mut self.ctx);
                }
                Ok(Flow::Continue)
            }
        }
    }

    /// A frame on a channel number that is not open: only `channel.open` is allowed.
    fn open_channel(&mut self, frame: Frame) -> Result<Flow, Fault> {
        let id = frame.channel();
        let Frame::Method {
            class_id: 20,
            method_id: 10,
            payload,
            ..
        } = frame
        else {
            let (c, m) = match frame {
                Frame::Method {
                    class_id,
                    method_id,
                    ..
                } => (class_id, method_id),
                _ => (0, 0),
            };
            return Err(AmqpError::channel_error("expected 'channel.open'")
                .on(c, m)
                .into());
        };
        decode_method(20, 10, &payload)?;
        // RabbitMQ limits how many channels are open, not the channel number.
        if self.channel_max != 0 && self.channels.len() >= self.channel_max as usize {
            return Err(AmqpError::not_allowed(format!(
                "number of channels opened ({}) has reached the negotiated channel_max ({})",
                self.channels.len(),
                self.channel_max
            ))
            .on(0, 0)
            .into());
        }
        if let Some(limit) = self.ctx.access.user.limit("max-channels")
            && self.ctx.broker.user_usage(&self.ctx.user).1 >= limit
        {
            return Err(AmqpError::not_allowed(format!(
                "number of channels opened for user '{}' has reached the maximum allowed user limit of ({limit})",
                self.ctx.user
            ))
            .on(0, 0)
            .into());
        }
        self.channels.insert(id, Channel::new(id));
        self.ctx
            .broker
            .churn
            .channel_created
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.count_channels();
        self.ctx.send_method(
            id,
            AMQPClass::Channel(chan::AMQPMethod::OpenOk(chan::OpenOk {})),
        );
        Ok(Flow::Continue)
    }

    /// Remove a channel, keeping its message counts.
    fn take_channel(&mut self, id: u16) -> Option<Channel> {
        let ch = self.channels.remove(&id)?;
        self.closed_counts += ch.counts;
        self.ctx
            .broker
            .churn
            .channel_closed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(ch)
    }

    /// The connection's channels and counters, for the management API.
    fn snapshot(&self) -> crate::stats::ConnSnapshot {
        let mut channels: Vec<_> = self
            .channels
            .values()
            .filter(|c| c.state == ChannelState::Open)
            .map(|c| c.info())
            .collect();
        channels.sort_by_key(|c| c.number);
        let mut closed = self.closed_counts;
        for c in self.channels.values() {
            if c.state != ChannelState::Open {
                closed += c.counts;
            }
        }
        crate::stats::ConnSnapshot {
            channels,
            closed,
            recv_oct: self.recv_oct,
            recv_cnt: self.recv_cnt,
        }
    }

    /// Publish the number of open channels to the registry (user channel limits).
    fn count_channels(&self) {
        self.channel_count.store(
            self.channels.len() as u32,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn close_channel(&mut self, id: u16, e: AmqpError) {
        debug!(conn = self.ctx.id, channel = id, error = %e, "closing channel");
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.release(&mut self.ctx);
            ch.state = ChannelState::Closing;
        }
        self.ctx.send_method(
            id,
            AMQPClass::Channel(chan::AMQPMethod::Close(chan::Close {
                reply_code: e.code.code(),
                reply_text: e.short_text().into(),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
    }

    fn send_connection_close(&mut self, e: &AmqpError) {
        self.ctx.send_method(
            0,
            AMQPClass::Connection(conn::AMQPMethod::Close(conn::Close {
                reply_code: e.code.code(),
                reply_text: e.short_text().into(),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
    }

    /// Send `connection.close` and wait for close-ok; everything else is discarded meanwhile.
    fn close_connection(&mut self, e: AmqpError) {
        if e.code != ReplyCode::ConnectionForced {
            warn!(conn = self.ctx.id, peer = %self.ctx.peer, error = %e, "closing connection");
        }
        self.send_connection_close(&e);
        self.stop_reason = Some(e.text.clone());
        self.closing_since = Some(Instant::now());
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            if let Some(mut ch) = self.take_channel(id) {
                ch.release(&mut self.ctx);
            }
        }
    }

    /// An event from a queue or the writer.
    fn on_event(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::Deliver(d) => match self.channels.get_mut(&d.consumer.channel) {
                Some(ch) => ch.deliver(&mut self.ctx, d),
                None => {
                    let size = crate::queue::delivery_size(&d.entry);
                    self.ctx
                        .backlog
                        .events
                        .fetch_sub(size, std::sync::atomic::Ordering::Relaxed);
                    d.bounce();
                }
            },
            ConnEvent::Cancelled { channel, tag } => {
                if let Some(ch) = self.channels.get_mut(&channel)
                    && ch.state == ChannelState::Open
                {
                    ch.server_cancel(&mut self.ctx, &tag);
                }
            }
            ConnEvent::Synced { channel, seq, ok } => {
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.synced(&mut self.ctx, seq, ok);
                }
            }
            ConnEvent::Drained => {
                for ch in self.channels.values() {
                    ch.redispatch();
                }
            }
            ConnEvent::Inspect(reply) => {
                let _ = reply.send(self.snapshot());
            }
            ConnEvent::Close { text } => {
                if self.closing_since.is_none() {
                    self.close_connection(AmqpError::new(ReplyCode::ConnectionForced, text));
                }
            }
        }
    }

    /// RabbitMQ's consumer timeout: a channel whose oldest unacked delivery is past its
    /// timeout is closed with 406 (its unacked messages go back to their queues, redelivered).
    fn check_consumer_timeouts(&mut self) {
        let now = crate::clock::now_ms();
        let default = self.ctx.broker.config.consumer_timeout;
        let mut next: Option<u64> = None;
        let mut expired = Vec::new();
        for ch in self.channels.values() {
            if ch.state != ChannelState::Open {
                continue;
            }
            if let Some((deadline, timeout)) = ch.oldest_deadline(default) {
                if deadline <= now {
                    expired.push((ch.id, timeout));
                } else if next.is_none_or(|n| deadline < n) {
                    next = Some(deadline);
                }
            }
        }
        self.ctx.timeout_check = next;
        for (id, timeout) in expired {
            warn!(
                conn = self.ctx.id,
                channel = id,
                timeout,
                "consumer ack timed out on channel"
            );
            self.close_channel(
                id,
                AmqpError::precondition_failed(format!(
                    "delivery acknowledgement on channel {id} timed out. Timeout value used: \
                     {timeout} ms. This timeout value can be configured, see consumers doc \
                     guide to learn more"
                )),
            );
        }
    }

    fn next_heartbeat_deadline(&self, hb: Duration) -> Option<Instant> {
        if hb.is_zero() {
            return None;
        }
        Some((self.last_sent + hb / 2).min(self.last_recv + hb * 2))
    }

    /// Stop the loop after this turn's output is flushed.
    fn stopped(&mut self, reason: String) -> Flow {
        self.stop_reason = Some(reason);
        Flow::Stop
    }

    /// Whether the socket's output backlog is over its limit. Then nothing more is read from
    /// the client until the writer has drained half of it (it sends `Drained`): replies,
    /// returns, `get-ok`s and confirms the client does not read cannot grow without bound.
    fn output_full(&self) -> bool {
        let backlog = &self.ctx.backlog;
        if backlog.socket.load(std::sync::atomic::Ordering::Relaxed) < MAX_CONNECTION_BACKLOG {
            return false;
        }
        backlog
            .blocked
            .store(true, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Stop reading from the socket until the alarms clear (RabbitMQ blocks a connection
    /// when it publishes during a memory or disk alarm; its heartbeat monitor pauses meanwhile).
    fn block(&mut self) {
        self.blocked = true;
        let reason = self.alarm.borrow_and_update().reason();
        if self.ctx.blocked_notify {
            self.ctx.send_method(
                0,
                AMQPClass::Connection(amq_protocol::protocol::connection::AMQPMethod::Blocked(
                    amq_protocol::protocol::connection::Blocked {
                        reason: reason.as_str().into(),
                    },
                )),
            );
            self.sent_blocked = true;
        }
        info!(conn = self.ctx.id, %reason, "connection blocked: resource alarm");
    }

    fn unblock(&mut self) {
        self.blocked = false;
        self.last_recv = Instant::now();
        if std::mem::take(&mut self.sent_blocked) {
            self.ctx.send_method(
                0,
                AMQPClass::Connection(amq_protocol::protocol::connection::AMQPMethod::Unblocked(
                    amq_protocol::protocol::connection::Unblocked {},
                )),
            );
        }
        info!(conn = self.ctx.id, "connection unblocked");
    }

    fn on_heartbeat_timer(&mut self, hb: Duration) -> Flow {
        let now = Instant::now();
        if self.blocked || self.output_full() {
            // Not reading: the client's heartbeats wait in the socket.
            self.last_recv = now;
        }
        if now >= self.last_recv + hb * 2 {
            self.stop_reason = Some(format!(
                "missed heartbeats from client, timeout: {}s",
                hb.as_secs()
            ));
            return Flow::Stop;
        }
        if now >= self.last_sent + hb / 2 {
            put_heartbeat(&mut self.ctx.out);
        }
        Flow::Continue
    }

    /// Queue the publisher confirms owed by this loop turn.
    fn flush_confirms(&mut self) {
        for id in std::mem::take(&mut self.ctx.confirms_dirty) {
            if let Some(ch) = self.channels.get_mut(&id)
                && ch.state == ChannelState::Open
            {
                ch.flush_confirms(&mut self.ctx);
            }
        }
    }

    fn flush(&mut self) {
        self.flush_confirms();
        if !self.ctx.out.is_empty() {
            let batch = self.ctx.out.split().freeze();
            self.outbound.send(batch);
            self.last_sent = Instant::now();
        }
    }

    /// Release everything the connection holds: channels (their unacked messages are
    /// requeued), then exclusive queues.
    fn cleanup(&mut self, events: &mut mpsc::UnboundedReceiver<ConnEvent>) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            if let Some(mut ch) = self.take_channel(id) {
                ch.release(&mut self.ctx);
            }
        }
        // Deliveries already on their way go back to their queues: nothing is lost. No new
        // ones can come: every consumer of this connection is cancelled.
        events.close();
        while let Ok(ev) = events.try_recv() {
            if let ConnEvent::Deliver(d) = ev {
                d.bounce();
            }
        }
        for q in std::mem::take(&mut self.ctx.exclusive_queues) {
            self.ctx.vhost.remove_queue(&q);
        }
    }
}
