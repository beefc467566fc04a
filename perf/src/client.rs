//! A minimal AMQP 0-9-1 client on tokio over Warren's frame codec: URI parsing, the handshake,
//! synchronous request/reply for setup methods and a graceful close. The hot paths (publish,
//! deliver, ack) are hand-coded by the producer and consumer modules on top of the raw halves.

use amq_protocol::protocol::{AMQPClass, channel as chan, connection as conn, parse_class};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::{BufMut, BytesMut};
use futures::StreamExt;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::FramedRead;
use warren::protocol::codec::{Frame, FrameCodec, put_method};

/// Errors are reported as text.
pub type Res<T> = Result<T, String>;

/// Read buffer size of every connection.
pub const READ_CAPACITY: usize = 256 * 1024;

/// A parsed `amqp://user:pass@host:port/vhost` URI.
#[derive(Debug, Clone, PartialEq)]
pub struct Uri {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User name.
    pub user: String,
    /// Password.
    pub pass: String,
    /// Virtual host.
    pub vhost: String,
}

fn percent_decode(s: &str) -> Res<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8"))
}

impl Uri {
    /// Parse an AMQP URI (amqp scheme only; no TLS).
    pub fn parse(s: &str) -> Res<Uri> {
        let rest = s
            .strip_prefix("amqp://")
            .ok_or_else(|| format!("{s:?}: only amqp:// URIs are supported"))?;
        let rest = rest.split(['?', '#']).next().unwrap_or("");
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, pass) = match userinfo {
            Some(ui) => match ui.split_once(':') {
                Some((u, p)) => (percent_decode(u)?, percent_decode(p)?),
                None => (percent_decode(ui)?, String::new()),
            },
            None => ("guest".to_string(), "guest".to_string()),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: unterminated IPv6 address"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            Some(p) if !p.is_empty() => p.parse().map_err(|_| format!("{s:?}: bad port {p:?}"))?,
            _ => 5672,
        };
        let host = if host.is_empty() {
            "localhost".to_string()
        } else {
            percent_decode(&host)?
        };
        let vhost = if path.is_empty() {
            "/".to_string()
        } else {
            percent_decode(path)?
        };
        Ok(Uri {
            host,
            port,
            user,
            pass,
            vhost,
        })
    }
}

/// An open connection: the framed read half, the write half and the negotiated limits.
pub struct Conn {
    /// Inbound frames.
    pub rd: FramedRead<OwnedReadHalf, FrameCodec>,
    /// The socket's write half.
    pub wr: OwnedWriteHalf,
    /// Negotiated frame_max (0 = unlimited).
    pub frame_max: u32,
    /// The broker's product and version, from connection.start.
    pub server: String,
    out: BytesMut,
}

/// "reply_code reply_text (class/method)" of a connection.close or channel.close payload.
pub fn describe_close(payload: &[u8]) -> String {
    match parse_class(payload) {
        Ok((_, AMQPClass::Connection(conn::AMQPMethod::Close(c)))) => format!(
            "connection closed by the broker: {} {} (class {} method {})",
            c.reply_code, c.reply_text, c.class_id, c.method_id
        ),
        Ok((_, AMQPClass::Channel(chan::AMQPMethod::Close(c)))) => format!(
            "channel closed by the broker: {} {} (class {} method {})",
            c.reply_code, c.reply_text, c.class_id, c.method_id
        ),
        _ => "closed by the broker (undecodable close)".to_string(),
    }
}

fn client_properties(name: &str) -> FieldTable {
    let mut caps = FieldTable::default();
    for c in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        caps.insert(c.into(), AMQPValue::Boolean(true));
    }
    let mut t = FieldTable::default();
    let s = |v: &str| AMQPValue::LongString(v.into());
    t.insert("product".into(), s("warren-perf"));
    t.insert("version".into(), s(env!("CARGO_PKG_VERSION")));
    t.insert("platform".into(), s("Rust/tokio"));
    t.insert("information".into(), s("AMQP 0-9-1 load generator"));
    t.insert("connection_name".into(), s(name));
    t.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    t
}

fn table_str(t: &FieldTable, key: &str) -> String {
    t.inner()
        .iter()
        .find(|(k, _)| k.as_str() == key)
        .map(|(_, v)| match v {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            AMQPValue::ShortString(s) => s.as_str().to_string(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

impl Conn {
    /// Connect, complete the handshake (PLAIN) and open the URI's vhost.
    pub async fn connect(uri: &Uri, name: &str) -> Res<Conn> {
        let what = format!("{}:{}", uri.host, uri.port);
        let mut sock = TcpStream::connect((uri.host.as_str(), uri.port))
            .await
            .map_err(|e| format!("connect to {what}: {e}"))?;
        sock.set_nodelay(true).map_err(|e| e.to_string())?;
        sock.write_all(b"AMQP\x00\x00\x09\x01")
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        // A broker refusing the protocol version answers with its own header and closes.
        let mut peek = [0u8; 1];
        let n = sock.peek(&mut peek).await.map_err(|e| e.to_string())?;
        if n == 1 && peek[0] == b'A' {
            let mut hdr = [0u8; 8];
            let _ = sock.read_exact(&mut hdr).await;
            return Err(format!("{what} refused AMQP 0-9-1 (answered {hdr:?})"));
        }
        let (r, w) = sock.into_split();
        let mut c = Conn {
            rd: FramedRead::with_capacity(r, FrameCodec { frame_max: 0 }, READ_CAPACITY),
            wr: w,
            frame_max: 0,
            server: String::new(),
            out: BytesMut::new(),
        };
        let start = match c.expect(0, 10, 10).await? {
            AMQPClass::Connection(conn::AMQPMethod::Start(s)) => s,
            _ => unreachable!(),
        };
        c.server = format!(
            "{} {}",
            table_str(&start.server_properties, "product"),
            table_str(&start.server_properties, "version")
        );
        let mechs = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
        if !mechs.split(' ').any(|m| m == "PLAIN") {
            return Err(format!("{what} does not offer PLAIN (offers {mechs:?})"));
        }
        c.send_method(
            0,
            AMQPClass::Connection(conn::AMQPMethod::StartOk(conn::StartOk {
                client_properties: client_properties(name),
                mechanism: "PLAIN".into(),
                response: format!("\0{}\0{}", uri.user, uri.pass).as_str().into(),
                locale: "en_US".into(),
            })),
        )
        .await?;
        let tune = match c.expect(0, 10, 30).await? {
            AMQPClass::Connection(conn::AMQPMethod::Tune(t)) => t,
            _ => unreachable!(),
        };
        c.frame_max = tune.frame_max;
        c.rd.decoder_mut().frame_max = tune.frame_max;
        c.send_method(
            0,
            AMQPClass::Connection(conn::AMQPMethod::TuneOk(conn::TuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat: 0,
            })),
        )
        .await?;
        c.send_method(
            0,
            AMQPClass::Connection(conn::AMQPMethod::Open(conn::Open {
                virtual_host: uri.vhost.as_str().into(),
            })),
        )
        .await?;
        c.expect(0, 10, 41).await?;
        Ok(c)
    }

    /// Send one method frame.
    pub async fn send_method(&mut self, ch: u16, m: AMQPClass) -> Res<()> {
        self.out.clear();
        put_method(&mut self.out, ch, m);
        self.wr
            .write_all(&self.out)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// The next frame (heartbeats skipped). EOF and codec errors are errors.
    pub async fn recv(&mut self) -> Res<Frame> {
        loop {
            match self.rd.next().await {
                None => return Err("the broker closed the connection".to_string()),
                Some(Err(e)) => return Err(format!("bad frame from the broker: {e:?}")),
                Some(Ok(Frame::Heartbeat { .. })) => {}
                Some(Ok(f)) => return Ok(f),
            }
        }
    }

    /// Wait for a method on `ch`, skipping unrelated frames; a close of the connection or of
    /// `ch` is answered and becomes an error.
    pub async fn expect(&mut self, ch: u16, class_id: u16, method_id: u16) -> Res<AMQPClass> {
        loop {
            if let Frame::Method {
                channel,
                class_id: c,
                method_id: m,
                payload,
            } = self.recv().await?
            {
                if (c, m) == (10, 50) {
                    let _ = self
                        .send_method(
                            0,
                            AMQPClass::Connection(conn::AMQPMethod::CloseOk(conn::CloseOk {})),
                        )
                        .await;
                    return Err(describe_close(&payload));
                }
                if channel == ch && (c, m) == (20, 40) {
                    let _ = self
                        .send_method(
                            ch,
                            AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
                        )
                        .await;
                    return Err(describe_close(&payload));
                }
                if channel == ch && (c, m) == (class_id, method_id) {
                    return parse_class(&payload[..])
                        .map(|(_, m)| m)
                        .map_err(|e| format!("undecodable {c}/{m}: {e:?}"));
                }
            }
        }
    }

    /// Send a method and wait for its reply.
    pub async fn rpc(&mut self, ch: u16, m: AMQPClass, reply: (u16, u16)) -> Res<AMQPClass> {
        self.send_method(ch, m).await?;
        self.expect(ch, reply.0, reply.1).await
    }

    /// Open a channel.
    pub async fn open_channel(&mut self, ch: u16) -> Res<()> {
        self.rpc(
            ch,
            AMQPClass::Channel(chan::AMQPMethod::Open(chan::Open {})),
            (20, 11),
        )
        .await
        .map(|_| ())
    }

    /// Close the connection and wait (briefly) for close-ok.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            self.send_method(
                0,
                AMQPClass::Connection(conn::AMQPMethod::Close(conn::Close {
                    reply_code: 200,
                    reply_text: "done".into(),
                    class_id: 0,
                    method_id: 0,
                })),
            )
            .await?;
            loop {
                if let Frame::Method {
                    class_id: 10,
                    method_id: 51,
                    ..
                } = self.recv().await?
                {
                    return Ok::<(), String>(());
                }
            }
        })
        .await;
    }
}

/// Append a shortstr (at most 255 bytes).
pub fn put_shortstr(dst: &mut BytesMut, s: &[u8]) {
    let s = &s[..s.len().min(255)];
    dst.put_u8(s.len() as u8);
    dst.extend_from_slice(s);
}

/// Hand-encoded `basic.publish` method frame (ticket 0, mandatory set).
pub fn publish_frame(ch: u16, exchange: &str, routing_key: &str) -> Vec<u8> {
    let mut args = BytesMut::new();
    args.put_u16(60);
    args.put_u16(40);
    args.put_u16(0);
    put_shortstr(&mut args, exchange.as_bytes());
    put_shortstr(&mut args, routing_key.as_bytes());
    args.put_u8(1);
    let mut f = Vec::with_capacity(args.len() + 8);
    f.push(1);
    f.extend_from_slice(&ch.to_be_bytes());
    f.extend_from_slice(&(args.len() as u32).to_be_bytes());
    f.extend_from_slice(&args);
    f.push(0xCE);
    f
}

/// Append a hand-encoded `basic.ack`.
#[inline]
pub fn put_ack(dst: &mut BytesMut, ch: u16, tag: u64, multiple: bool) {
    dst.put_u8(1);
    dst.put_u16(ch);
    dst.put_u32(13);
    dst.put_u16(60);
    dst.put_u16(80);
    dst.put_u64(tag);
    dst.put_u8(multiple as u8);
    dst.put_u8(0xCE);
}

/// Read a shortstr from `p` at `*at`.
#[inline]
fn skip_shortstr(p: &[u8], at: &mut usize) -> Option<()> {
    let len = *p.get(*at)? as usize;
    *at += 1 + len;
    (*at <= p.len()).then_some(())
}

/// Decode `basic.deliver` arguments from a method payload (starting at the class id):
/// (delivery_tag, redelivered).
#[inline]
pub fn decode_deliver(p: &[u8]) -> Option<(u64, bool)> {
    let mut at = 4;
    skip_shortstr(p, &mut at)?;
    let tag = u64::from_be_bytes(p.get(at..at + 8)?.try_into().ok()?);
    let redelivered = *p.get(at + 8)? & 1 != 0;
    let mut at = at + 9;
    skip_shortstr(p, &mut at)?;
    skip_shortstr(p, &mut at)?;
    Some((tag, redelivered))
}

/// Decode `basic.ack` / `basic.nack` arguments: (delivery_tag, multiple).
#[inline]
pub fn decode_ack(p: &[u8]) -> Option<(u64, bool)> {
    let tag = u64::from_be_bytes(p.get(4..12)?.try_into().ok()?);
    Some((tag, *p.get(12)? & 1 != 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren::protocol::codec::put_basic_deliver;

    #[test]
    fn uris() {
        let u = Uri::parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.user.as_str(), u.vhost.as_str()),
            ("127.0.0.1", 5672, "guest", "/")
        );
        let u = Uri::parse("amqp://a%40b:p%3Aw@[::1]:5699/v1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.user.as_str(), u.pass.as_str()),
            ("::1", 5699, "a@b", "p:w")
        );
        assert_eq!(u.vhost, "v1");
        let u = Uri::parse("amqp://host").unwrap();
        assert_eq!((u.port, u.vhost.as_str()), (5672, "/"));
        assert!(Uri::parse("amqps://host").is_err());
    }

    #[test]
    fn hand_coded_methods_agree_with_amq_protocol() {
        let mut b = BytesMut::new();
        put_basic_deliver(&mut b, 1, b"ctag", 77, true, b"ex", b"rk");
        assert_eq!(decode_deliver(&b[7..b.len() - 1]), Some((77, true)));
        let f = publish_frame(3, "perf-fanout", "key");
        let (_, frame) = amq_protocol::frame::parse_frame(&f[..]).unwrap();
        let s = format!("{frame:?}");
        assert!(
            s.contains("perf-fanout") && s.contains("mandatory: true"),
            "{s}"
        );
        let mut a = BytesMut::new();
        put_ack(&mut a, 2, 99, true);
        let (_, frame) = amq_protocol::frame::parse_frame(&a[..]).unwrap();
        assert!(format!("{frame:?}").contains("delivery_tag: 99, multiple: true"));
        assert_eq!(decode_ack(&a[7..a.len() - 1]), Some((99, true)));
    }
}
