//! The AMQP handshake: protocol header, start/start-ok (SASL PLAIN or AMQPLAIN), tune/tune-ok
//! (RabbitMQ's negotiation rules), open/open-ok (vhost and permission checks).

use super::writer::Outbound;
use super::{ConnCtx, Reader};
use crate::protocol::codec::{CodecError, FRAME_MIN_SIZE, Frame, FrameCodec, put_method};
use crate::protocol::method::{self, Method};
use crate::protocol::{AmqpError, sasl};
use crate::state::BrokerState;
use amq_protocol::protocol::{AMQPClass, connection as conn};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio_util::codec::FramedRead;
use tracing::{info, warn};

/// Initial read buffer of a connection.
const READ_BUFFER_INITIAL: usize = 1024;

/// The only protocol header Warren speaks, sent back to clients that ask for another.
pub(super) const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// The pre-standard 0-9-1 header RabbitMQ also accepts.
const PROTOCOL_HEADER_ALT: &[u8; 8] = b"AMQP\x01\x01\x00\x09";

/// Capabilities advertised in `connection.start`. Only what works: see docs/compatibility.md.
pub(super) const CAPABILITIES: &[&str] = &[
    "authentication_failure_close",
    "basic.nack",
    "connection.blocked",
    "consumer_cancel_notify",
    "consumer_priorities",
    "direct_reply_to",
    "exchange_exchange_bindings",
    "per_consumer_qos",
    "publisher_confirms",
];

pub(super) struct Handshake {
    pub broker: Arc<BrokerState>,
    pub id: u64,
    pub peer: SocketAddr,
    pub outbound: Outbound,
    pub events: tokio::sync::mpsc::UnboundedSender<crate::queue::consumer::ConnEvent>,
    pub backlog: Arc<crate::queue::consumer::Backlog>,
    /// How long a refused login waits before it is answered (ms; repeated failures from one
    /// address, see `admission`).
    pub refusal_delay_ms: std::sync::atomic::AtomicU64,
    /// This handshake's place among `limits.max_handshakes`, given back when it ends, or
    /// before a refused login waits (waiting refusals have their own, smaller bound).
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Set on AMQPS connections.
    pub tls: Option<super::TlsInfo>,
}

pub(super) struct Opened {
    pub ctx: ConnCtx,
    pub heartbeat: u16,
    pub channel_max: u16,
    pub reader: Reader,
    /// What the client said of itself in `start-ok`.
    pub client_properties: FieldTable,
    /// The SASL mechanism it logged in with.
    pub mechanism: String,
}

pub(super) enum Outcome {
    Opened(Box<Opened>),
    /// The handshake failed; the reader (if any) is drained before the socket closes.
    Failed(Option<Reader>),
}

/// What `start-ok` said.
struct Started {
    client_properties: FieldTable,
    failure_close: bool,
    cancel_notify: bool,
    blocked_notify: bool,
    mechanism: String,
    response: Vec<u8>,
}

/// Why the handshake stopped early.
enum Stop {
    /// Send `connection.close` with this error, then drain.
    Close(AmqpError),
    /// Just close the socket (EOF, I/O error, auth failure without the client capability).
    Silent(String),
}

impl From<AmqpError> for Stop {
    fn from(e: AmqpError) -> Self {
        Stop::Close(e)
    }
}

/// `connection.start` server-properties, as RabbitMQ sends them (keys sorted by the BTreeMap).
pub(super) fn server_properties(cluster_name: &str) -> FieldTable {
    let mut caps = FieldTable::default();
    for c in CAPABILITIES {
        caps.insert((*c).into(), AMQPValue::Boolean(true));
    }
    let mut p = FieldTable::default();
    p.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    p.insert("cluster_name".into(), text(cluster_name));
    p.insert("copyright".into(), text("Copyright (c) the Warren authors"));
    p.insert(
        "information".into(),
        text("Licensed under the Apache License 2.0. Website: https://github.com/warren-mq/warren"),
    );
    p.insert(
        "platform".into(),
        text(&format!("Rust/tokio ({})", std::env::consts::OS)),
    );
    p.insert("product".into(), text("Warren"));
    p.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
    p
}

impl Handshake {
    fn send(&self, m: conn::AMQPMethod) {
        let mut b = BytesMut::new();
        put_method(&mut b, 0, AMQPClass::Connection(m));
        self.outbound.send(b.freeze());
    }

    pub(super) async fn run(mut self, mut read: super::ReadHalf) -> Outcome {
        let mut header = [0u8; 8];
        if read.read_exact(&mut header).await.is_err() {
            return Outcome::Failed(None);
        }
        let reader = FramedRead::with_capacity(
            read,
            // Before tune-ok a client may send frames of at most RabbitMQ's minimum frame size
            // (its reader starts with `frame_max = ?FRAME_MIN_SIZE`): nothing larger is
            // buffered from a peer that has not logged in.
            FrameCodec {
                frame_max: FRAME_MIN_SIZE,
            },
            // Small to start: an idle connection costs little; the buffer grows (and stays
            // grown) for connections that send bursts or large frames.
            READ_BUFFER_INITIAL,
        );
        if &header != PROTOCOL_HEADER && &header != PROTOCOL_HEADER_ALT {
            // AMQP 0-9-1 §4.2.2: answer with the header we support, then close.
            info!(conn = self.id, peer = %self.peer, header = ?header, "unsupported protocol header");
            self.outbound.send(Bytes::from_static(PROTOCOL_HEADER));
            return Outcome::Failed(Some(reader));
        }
        let mut reader = reader;
        let negotiated = self.negotiate(&mut reader).await;
        // The handshake is over: its place goes to the next client, whatever happens now.
        drop(self.permit.take());
        let delay = self
            .refusal_delay_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if delay > 0
            && let Ok(_waiting) = self.broker.delayed_refusals.clone().try_acquire_owned()
        {
            // Repeated failed logins from this address: answer slowly. At most
            // `admission::MAX_DELAYED_REFUSALS` wait at once (past it, refusals are at once), so
            // failing logins cannot hold the handshake places other clients need.
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        match negotiated {
            Ok((ctx, heartbeat, channel_max, started)) => Outcome::Opened(Box::new(Opened {
                ctx,
                heartbeat,
                channel_max,
                reader,
                client_properties: started.client_properties,
                mechanism: started.mechanism,
            })),
            Err(Stop::Close(e)) => {
                warn!(conn = self.id, peer = %self.peer, error = %e, "handshake failed");
                self.send(conn::AMQPMethod::Close(conn::Close {
                    reply_code: e.code.code(),
                    reply_text: e.short_text().into(),
                    class_id: e.class_id,
                    method_id: e.method_id,
                }));
                Outcome::Failed(Some(reader))
            }
            Err(Stop::Silent(reason)) => {
                info!(conn = self.id, peer = %self.peer, %reason, "handshake stopped");
                Outcome::Failed(Some(reader))
            }
        }
    }

    /// The handshake's steps in order: start/start-ok, authentication, tune/tune-ok, open.
    async fn negotiate(&self, reader: &mut Reader) -> Result<(ConnCtx, u16, u16, Started), Stop> {
        let started = self.start(reader).await?;
        let user = self.authenticate(&started)?;
        let (frame_max, channel_max, heartbeat) = self.tune(reader).await?;
        let (vhost, vhost_name) = self.open(reader, &user).await?;
        Ok((
            ConnCtx {
                broker: self.broker.clone(),
                id: self.id,
                peer: self.peer,
                user: user.name.clone(),
                access: crate::auth::Access::new(&self.broker.auth, user.clone(), &vhost_name),
                vhost,
                frame_max,
                out: BytesMut::new(),
                exclusive_queues: Vec::new(),
                events: self.events.clone(),
                backlog: self.backlog.clone(),
                cancel_notify: started.cancel_notify,
                blocked_notify: started.blocked_notify,
                published: false,
                topology_changed: false,
                confirms_dirty: Vec::new(),
                clock: None,
                timeout_check: None,
            },
            heartbeat,
            channel_max,
            started,
        ))
    }

    /// `connection.start` out, `start-ok` in: the client's capabilities, mechanism, response.
    async fn start(&self, reader: &mut Reader) -> Result<Started, Stop> {
        self.send(conn::AMQPMethod::Start(conn::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(&self.broker.config.cluster_name),
            mechanisms: self.mechanisms().into(),
            locales: "en_US".into(),
        }));
        let AMQPClass::Connection(conn::AMQPMethod::StartOk(start_ok)) =
            next_method(reader, "starting").await?
        else {
            unreachable!("next_method only returns connection methods")
        };
        let caps = match start_ok.client_properties.inner().get("capabilities") {
            Some(AMQPValue::FieldTable(t)) => t.clone(),
            _ => FieldTable::default(),
        };
        let cap = |name: &str| matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)));
        let mechanism = start_ok.mechanism.as_str().to_string();
        if !self.mechanisms().split(' ').any(|m| m == mechanism) {
            // RabbitMQ 3.10.8: no close frame before the connection is tuned.
            return Err(Stop::Silent(format!(
                "unknown authentication mechanism '{mechanism}'"
            )));
        }
        Ok(Started {
            client_properties: start_ok.client_properties.clone(),
            failure_close: cap("authentication_failure_close"),
            cancel_notify: cap("consumer_cancel_notify"),
            blocked_notify: cap("connection.blocked"),
            mechanism,
            response: start_ok.response.as_bytes().to_vec(),
        })
    }

    /// Who the client is: SASL PLAIN/AMQPLAIN checked against the password hashes, or EXTERNAL
    /// (the verified certificate's common name); then `loopback_users`. A refusal is logged,
    /// slows the next ones from this address, and is RabbitMQ's 403 (or a silent close for
    /// clients without `authentication_failure_close`).
    fn authenticate(&self, started: &Started) -> Result<Arc<crate::auth::User>, Stop> {
        let mechanism = &started.mechanism;
        let refused = |why: String| -> Stop {
            warn!(conn = self.id, peer = %self.peer, "login refused: {why}");
            let delay = self.broker.login_failures.failed(self.peer.ip());
            self.refusal_delay_ms.store(
                delay.as_millis() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            let e = AmqpError::access_refused(format!(
                "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
            ))
            .on(0, 0)
            .connection();
            if started.failure_close {
                Stop::Close(e)
            } else {
                Stop::Silent(why)
            }
        };
        let (name, login) = if mechanism == "EXTERNAL" {
            // The user is the verified certificate's common name; the response (an optional
            // authorisation identity) is not used, as rabbitmq_auth_mechanism_ssl.
            let name = self
                .tls
                .as_ref()
                .and_then(|t| t.peer_cn.clone())
                .unwrap_or_default();
            let user = self.broker.auth.user(&name);
            (name, user.ok_or(crate::auth::LoginError::NoUser))
        } else {
            let Some(creds) = sasl::parse(mechanism, &started.response) else {
                return Err(refused("malformed SASL response".into()));
            };
            let login = self.broker.auth.login(&creds.username, &creds.password);
            (creds.username, login)
        };
        let user = match login {
            Ok(u) => u,
            Err(crate::auth::LoginError::NoUser) => {
                return Err(refused(format!("user '{name}' does not exist")));
            }
            Err(crate::auth::LoginError::BadPassword) => {
                return Err(refused(format!("invalid credentials for user '{name}'")));
            }
        };
        if self.broker.config.loopback_only(&user.name)
            && !self.peer.ip().to_canonical().is_loopback()
        {
            return Err(refused(format!(
                "user '{}' can only connect via localhost",
                user.name
            )));
        }
        Ok(user)
    }

    /// `connection.tune` out, `tune-ok` in, RabbitMQ's negotiation rules; the reader takes the
    /// negotiated frame_max. Returns (frame_max, channel_max, heartbeat).
    async fn tune(&self, reader: &mut Reader) -> Result<(u32, u16, u16), Stop> {
        let limits = &self.broker.config.limits;
        self.send(conn::AMQPMethod::Tune(conn::Tune {
            channel_max: limits.channel_max,
            frame_max: limits.frame_max,
            heartbeat: limits.heartbeat,
        }));
        let AMQPClass::Connection(conn::AMQPMethod::TuneOk(tune)) =
            next_method(reader, "tuning").await?
        else {
            unreachable!()
        };
        // RabbitMQ 3.10.8 logs the reason and closes the socket without a close frame.
        negotiate_value(
            "frame_max",
            FRAME_MIN_SIZE,
            limits.frame_max,
            tune.frame_max,
        )
        .map_err(|e| Stop::Silent(e.text))?;
        negotiate_value(
            "channel_max",
            0,
            limits.channel_max as u32,
            tune.channel_max as u32,
        )
        .map_err(|e| Stop::Silent(e.text))?;
        let frame_max = if tune.frame_max == 0 {
            limits.frame_max
        } else {
            tune.frame_max
        };
        let channel_max = if tune.channel_max == 0 {
            limits.channel_max
        } else {
            tune.channel_max
        };
        reader.decoder_mut().frame_max = frame_max;
        Ok((frame_max, channel_max, tune.heartbeat))
    }

    /// `connection.open` in: the vhost must exist, then [`Handshake::admit`]; `open-ok` out.
    async fn open(
        &self,
        reader: &mut Reader,
        user: &crate::auth::User,
    ) -> Result<(Arc<crate::vhost::VHost>, String), Stop> {
        let AMQPClass::Connection(conn::AMQPMethod::Open(open)) =
            next_method(reader, "opening").await?
        else {
            unreachable!()
        };
        let vhost_name = open.virtual_host.as_str();
        let Some(vhost) = self.broker.vhost(vhost_name) else {
            return Err(
                AmqpError::not_allowed(format!("vhost {vhost_name} not found"))
                    .on(10, 40)
                    .into(),
            );
        };
        self.admit(user, vhost_name)?;
        self.send(conn::AMQPMethod::OpenOk(conn::OpenOk {}));
        Ok((vhost, vhost_name.to_string()))
    }
}

impl Handshake {
    /// The SASL mechanisms offered: EXTERNAL only to TLS clients with a verified certificate.
    fn mechanisms(&self) -> &'static str {
        if self.tls.as_ref().is_some_and(|t| t.peer_cn.is_some()) {
            "PLAIN AMQPLAIN EXTERNAL"
        } else {
            "PLAIN AMQPLAIN"
        }
    }

    /// `connection.open`'s checks in RabbitMQ's order: the vhost's connection limit, the
    /// user's connection limit, then the user's access to the vhost (any permission there).
    fn admit(&self, user: &crate::auth::User, vhost: &str) -> Result<(), AmqpError> {
        let data = self.broker.auth.snapshot();
        let refused = |why: String| Err(AmqpError::not_allowed(why).on(10, 40));
        if let Some(limit) = data
            .vhosts
            .get(vhost)
            .and_then(|v| v.limit("max-connections"))
            && self.broker.vhost_connections(vhost) >= limit
        {
            return refused(format!(
                "access to vhost '{vhost}' refused for user '{}': connection limit ({limit}) is reached",
                user.name
            ));
        }
        if let Some(limit) = user.limit("max-connections")
            && self.broker.user_usage(&user.name).0 >= limit
        {
            return refused(format!(
                "connection refused for user '{}': user connection limit ({limit}) is reached",
                user.name
            ));
        }
        if data.permission(vhost, &user.name).is_none() {
            return refused(format!(
                "access to vhost '{vhost}' refused for user '{}'",
                user.name
            ));
        }
        Ok(())
    }
}

/// RabbitMQ's `validate_negotiated_integer_value`: below the minimum or above the server's
/// maximum is a 530.
fn negotiate_value(field: &str, min: u32, server: u32, client: u32) -> Result<(), AmqpError> {
    if client != 0 && client < min {
        return Err(AmqpError::not_allowed(format!(
            "negotiated {field} = {client} is lower than the minimum allowed value ({min})"
        ))
        .on(10, 31));
    }
    if server != 0 && (client == 0 || client > server) {
        return Err(AmqpError::not_allowed(format!(
            "negotiated {field} = {client} is higher than the maximum allowed value ({server})"
        ))
        .on(10, 31));
    }
    Ok(())
}

/// The next connection-class method on channel 0 (heartbeats skipped); anything else is an error
/// for the given connection state.
async fn next_method(reader: &mut Reader, state: &str) -> Result<AMQPClass, Stop> {
    let expected = match state {
        "starting" => 11,
        "tuning" => 31,
        _ => 40,
    };
    loop {
        let frame = match reader.next().await {
            None => {
                return Err(Stop::Silent(
                    "client closed the socket during the handshake".into(),
                ));
            }
            Some(Err(CodecError::Io(e))) => return Err(Stop::Silent(format!("socket error: {e}"))),
            // Before the connection is tuned RabbitMQ 3.10.8 closes the socket without a close
            // frame (a frame over 4096 bytes, a malformed start-ok: observed).
            Some(Err(CodecError::Protocol(e))) if state != "opening" => {
                return Err(Stop::Silent(e.text));
            }
            Some(Err(CodecError::Protocol(e))) => return Err(Stop::Close(e)),
            Some(Ok(f)) => f,
        };
        match frame {
            Frame::Heartbeat { .. } => continue,
            Frame::Method {
                channel: 0,
                class_id: 10,
                method_id,
                payload,
            } if method_id == expected => {
                return match method::decode(10, method_id, &payload) {
                    Ok(Method::Other(m)) => Ok(m),
                    Ok(Method::Publish(_)) => unreachable!(),
                    Err(method::DecodeError::Invalid(e)) if state != "opening" => {
                        Err(Stop::Silent(e.text))
                    }
                    Err(method::DecodeError::Invalid(e)) => Err(Stop::Close(e)),
                    Err(method::DecodeError::Unknown) => Err(Stop::Silent("unknown method".into())),
                };
            }
            Frame::Method {
                channel: 0,
                class_id: 10,
                method_id: 50,
                ..
            } => {
                return Err(Stop::Silent(
                    "client closed the connection during the handshake".into(),
                ));
            }
            // Before connection.open, RabbitMQ 3.10.8 drops the socket without a close frame.
            Frame::Method { .. } if state != "opening" => {
                return Err(Stop::Silent(format!(
                    "unexpected method in connection state {state}"
                )));
            }
            Frame::Method {
                class_id,
                method_id,
                ..
            } => {
                return Err(Stop::Close(
                    AmqpError::channel_error(format!(
                        "unexpected method in connection state {state}"
                    ))
                    .on(class_id, method_id),
                ));
            }
            _ => {
                return Err(Stop::Close(AmqpError::unexpected_frame(
                    "expected method frame, got non method frame instead",
                )));
            }
        }
    }
}
