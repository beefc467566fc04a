//! Shared test harness: an in-process broker on an ephemeral loopback port, lapin helpers, and a
//! raw AMQP client (decoding replies with amq-protocol, independent of Warren's codec).
#![allow(dead_code)]

pub mod certs;

use amq_protocol::frame::{AMQPFrame, parse_frame};
use amq_protocol::protocol::{AMQPClass, channel as chan, connection as conn};
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::{Broker, Config};

/// Start a broker on 127.0.0.1:0 with the test configuration.
pub async fn start() -> Broker {
    start_with(Config::for_tests()).await
}

/// Start a broker with a custom configuration.
pub async fn start_with(config: Config) -> Broker {
    Broker::start(config).await.expect("broker starts")
}

/// The AMQP URI of a broker.
pub fn uri(b: &Broker) -> String {
    format!("amqp://guest:guest@{}/%2f", b.local_addr())
}

/// Connect with lapin.
pub async fn lapin_connect(b: &Broker) -> lapin::Connection {
    lapin::Connection::connect(&uri(b), lapin::ConnectionProperties::default())
        .await
        .expect("lapin connects")
}

/// Poll `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the raw client saw.
#[derive(Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    /// A decoded frame.
    Frame(AMQPFrame),
    /// The server closed the socket.
    Eof,
    /// Nothing arrived in time.
    Timeout,
}

/// A raw AMQP client for error-path tests.
pub struct Raw {
    pub sock: TcpStream,
    buf: Vec<u8>,
}

/// Tune-ok values the raw client answers with.
pub struct Tune {
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
}

impl Default for Tune {
    fn default() -> Self {
        Tune {
            channel_max: 2047,
            frame_max: 131072,
            heartbeat: 0,
        }
    }
}

/// Encode a method frame with amq-protocol's generator.
pub fn method_frame(channel: u16, m: AMQPClass) -> Vec<u8> {
    let f = AMQPFrame::Method(channel, m);
    let (buf, _) = cookie_factory::r#gen(amq_protocol::frame::gen_frame(&f), Vec::new()).unwrap();
    buf
}

/// A raw frame from its parts.
pub fn raw_frame(ty: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&channel.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v.push(0xCE);
    v
}

/// A method frame from class id, method id and raw argument bytes.
pub fn raw_method(channel: u16, class_id: u16, method_id: u16, args: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&class_id.to_be_bytes());
    p.extend_from_slice(&method_id.to_be_bytes());
    p.extend_from_slice(args);
    raw_frame(1, channel, &p)
}

/// A content header frame (class 60) with empty properties.
pub fn raw_header(channel: u16, body_size: u64) -> Vec<u8> {
    let mut p = vec![0, 60, 0, 0];
    p.extend_from_slice(&body_size.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    raw_frame(2, channel, &p)
}

/// `connection.start-ok`: PLAIN `guest` with `password`, announcing the capabilities
/// `authentication_failure_close` and `connection.blocked`.
pub fn start_ok(password: &str) -> Vec<u8> {
    let mut caps = amq_protocol::types::FieldTable::default();
    for cap in ["authentication_failure_close", "connection.blocked"] {
        caps.insert(cap.into(), amq_protocol::types::AMQPValue::Boolean(true));
    }
    let mut props = amq_protocol::types::FieldTable::default();
    props.insert(
        "capabilities".into(),
        amq_protocol::types::AMQPValue::FieldTable(caps),
    );
    method_frame(
        0,
        AMQPClass::Connection(conn::AMQPMethod::StartOk(conn::StartOk {
            client_properties: props,
            mechanism: "PLAIN".into(),
            response: format!("\0guest\0{password}").as_str().into(),
            locale: "en_US".into(),
        })),
    )
}

/// Encode a shortstr.
pub fn shortstr(s: &[u8]) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s);
    v
}

impl Raw {
    /// Connect without sending anything.
    pub async fn connect(b: &Broker) -> Raw {
        let sock = TcpStream::connect(b.local_addr()).await.unwrap();
        sock.set_nodelay(true).unwrap();
        Raw {
            sock,
            buf: Vec::new(),
        }
    }

    /// Connect and complete the handshake with default tune values.
    pub async fn open(b: &Broker) -> Raw {
        Self::open_with(b, Tune::default(), "/").await
    }

    /// Connect and complete the handshake.
    pub async fn open_with(b: &Broker, tune: Tune, vhost: &str) -> Raw {
        let mut r = Raw::connect(b).await;
        r.start(tune).await;
        r.send(&method_frame(
            0,
            AMQPClass::Connection(conn::AMQPMethod::Open(conn::Open {
                virtual_host: vhost.into(),
            })),
        ))
        .await;
        r.expect_method(0, 10, 41).await;
        r
    }

    /// Header, start-ok (PLAIN guest/guest), tune-ok; stops before connection.open.
    pub async fn start(&mut self, tune: Tune) {
        self.send(b"AMQP\x00\x00\x09\x01").await;
        self.expect_method(0, 10, 10).await;
        self.send(&start_ok("guest")).await;
        self.expect_method(0, 10, 30).await;
        self.send(&method_frame(
            0,
            AMQPClass::Connection(conn::AMQPMethod::TuneOk(conn::TuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat: tune.heartbeat,
            })),
        ))
        .await;
    }

    /// Open a channel and wait for open-ok.
    pub async fn open_channel(&mut self, ch: u16) {
        self.send(&method_frame(
            ch,
            AMQPClass::Channel(chan::AMQPMethod::Open(chan::Open {})),
        ))
        .await;
        self.expect_method(ch, 20, 11).await;
    }

    /// Publish a message (method, empty-properties header, one body frame).
    pub async fn publish(
        &mut self,
        ch: u16,
        exchange: &str,
        routing_key: &str,
        flags: u8,
        body: &[u8],
    ) {
        let mut args = vec![0, 0];
        args.extend_from_slice(&shortstr(exchange.as_bytes()));
        args.extend_from_slice(&shortstr(routing_key.as_bytes()));
        args.push(flags);
        let mut bytes = raw_method(ch, 60, 40, &args);
        bytes.extend_from_slice(&raw_header(ch, body.len() as u64));
        if !body.is_empty() {
            bytes.extend_from_slice(&raw_frame(3, ch, body));
        }
        self.send(&bytes).await;
    }

    /// Send raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.sock.write_all(bytes).await;
    }

    /// Next frame (heartbeats skipped), EOF, or timeout after 5 s.
    pub async fn next(&mut self) -> Reply {
        loop {
            match parse_frame(&self.buf[..]) {
                Ok((rest, frame)) => {
                    let used = self.buf.len() - rest.len();
                    self.buf.drain(..used);
                    if matches!(frame, AMQPFrame::Heartbeat) {
                        continue;
                    }
                    return Reply::Frame(frame);
                }
                Err(nom::Err::Incomplete(_)) => {}
                Err(e) => panic!("server sent an undecodable frame: {e:?} {:?}", self.buf),
            }
            let mut chunk = vec![0u8; 65536];
            match tokio::time::timeout(Duration::from_secs(5), self.sock.read(&mut chunk)).await {
                Err(_) => return Reply::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Reply::Eof,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Raw bytes until EOF (for protocol-header replies).
    pub async fn read_to_eof(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.sock.read_to_end(&mut out)).await;
        out
    }

    /// Expect a method with the given ids on the channel.
    pub async fn expect_method(&mut self, ch: u16, class_id: u16, method_id: u16) -> AMQPClass {
        match self.next().await {
            Reply::Frame(AMQPFrame::Method(c, m))
                if c == ch
                    && m.get_amqp_class_id() == class_id
                    && m.get_amqp_method_id() == method_id =>
            {
                m
            }
            other => panic!("expected {class_id}/{method_id} on channel {ch}, got {other:?}"),
        }
    }

    /// Expect `connection.close`, answer close-ok; returns (code, text, class, method).
    pub async fn expect_connection_close(&mut self) -> (u16, String, u16, u16) {
        match self.expect_method(0, 10, 50).await {
            AMQPClass::Connection(conn::AMQPMethod::Close(c)) => {
                self.send(&method_frame(
                    0,
                    AMQPClass::Connection(conn::AMQPMethod::CloseOk(conn::CloseOk {})),
                ))
                .await;
                (
                    c.reply_code,
                    c.reply_text.to_string(),
                    c.class_id,
                    c.method_id,
                )
            }
            _ => unreachable!(),
        }
    }

    /// Expect `channel.close` on `ch`, answer close-ok; returns (code, text, class, method).
    pub async fn expect_channel_close(&mut self, ch: u16) -> (u16, String, u16, u16) {
        let m = self.expect_method(ch, 20, 40).await;
        self.channel_close_ok(ch, m).await
    }

    /// Answer a `channel.close` with close-ok; returns its (code, text, class, method).
    async fn channel_close_ok(&mut self, ch: u16, m: AMQPClass) -> (u16, String, u16, u16) {
        let AMQPClass::Channel(chan::AMQPMethod::Close(c)) = m else {
            unreachable!("a channel.close")
        };
        self.send(&method_frame(
            ch,
            AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
        ))
        .await;
        (
            c.reply_code,
            c.reply_text.to_string(),
            c.class_id,
            c.method_id,
        )
    }

    /// Skip frames (deliveries, content) until a method `class_id`/`method_id` on `ch`.
    pub async fn wait_method(&mut self, ch: u16, class_id: u16, method_id: u16) -> AMQPClass {
        loop {
            match self.next().await {
                Reply::Frame(AMQPFrame::Method(c, m))
                    if c == ch
                        && m.get_amqp_class_id() == class_id
                        && m.get_amqp_method_id() == method_id =>
                {
                    return m;
                }
                Reply::Frame(_) => {}
                other => panic!("expected {class_id}/{method_id} on channel {ch}, got {other:?}"),
            }
        }
    }

    /// Like [`Raw::expect_channel_close`], skipping the frames that come before it.
    pub async fn wait_channel_close(&mut self, ch: u16) -> (u16, String, u16, u16) {
        let m = self.wait_method(ch, 20, 40).await;
        self.channel_close_ok(ch, m).await
    }

    /// Expect the server to close the socket (possibly after frames we ignore).
    pub async fn expect_eof(&mut self) {
        loop {
            match self.next().await {
                Reply::Eof => return,
                Reply::Timeout => panic!("server did not close the socket"),
                Reply::Frame(_) => {}
            }
        }
    }
}

/// Check that the broker still serves a fresh client: connect, open a channel, close.
pub async fn assert_still_serving(b: &Broker) {
    let mut r = Raw::open(b).await;
    r.open_channel(1).await;
    r.send(&method_frame(
        0,
        AMQPClass::Connection(conn::AMQPMethod::Close(conn::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    ))
    .await;
    r.expect_method(0, 10, 51).await;
}

/// The AMQP reply code and text of a lapin error (channel or connection close).
pub fn amqp_error(e: &lapin::Error) -> (u16, String) {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(err) => (err.get_id(), err.get_message().to_string()),
        other => panic!("not an AMQP error: {other:?}"),
    }
}

/// A table from string pairs (values as longstr).
pub fn table(kv: &[(&str, amq_protocol::types::AMQPValue)]) -> amq_protocol::types::FieldTable {
    let mut t = amq_protocol::types::FieldTable::default();
    for (k, v) in kv {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// A longstr value.
pub fn s(v: &str) -> amq_protocol::types::AMQPValue {
    amq_protocol::types::AMQPValue::LongString(v.into())
}

/// One HTTP/1.1 request to the management API (basic auth as `user:password`): the status
/// and the JSON body (`Null` if none).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    user: Option<&str>,
) -> (u16, serde_json::Value) {
    http_body(addr, method, path, user, None).await
}

/// An HTTP/1.1 request with an optional JSON body; the status and the parsed JSON reply.
pub async fn http_body(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    user: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(u) = user {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(u);
        req.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let status: u16 = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// A lapin connection to `b` and a channel on it.
pub async fn channel(b: &Broker) -> (lapin::Connection, lapin::Channel) {
    let c = lapin_connect(b).await;
    let ch = c.create_channel().await.unwrap();
    (c, ch)
}

/// Properties of a persistent message (delivery mode 2).
pub fn persistent() -> lapin::BasicProperties {
    lapin::BasicProperties::default().with_delivery_mode(2)
}
