//! Framing: the 7-byte frame header, `frame_max`, the frame-end octet, and zero-copy `Bytes`
//! payloads. Pure and synchronous; knows nothing of channels' state, vhosts or queues.
//!
//! amq-protocol's `parse_frame` is not used as the frame layer: it copies bodies, does not check
//! `frame_max` and cannot tell unknown methods from bad bytes. Method payloads are decoded later
//! (see [`super::method`]) so that errors can name the offending class and method.

use super::error::AmqpError;
use amq_protocol::frame::AMQPFrame;
use amq_protocol::frame::gen_frame;
use amq_protocol::protocol::AMQPClass;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use cookie_factory::{BackToTheBuffer, GenError, GenResult, WriteContext};
use std::fmt::Write as _;
use std::io;
use tokio_util::codec::Decoder;

/// Frame type octets.
pub const FRAME_METHOD: u8 = 1;
/// Content header frame type.
pub const FRAME_HEADER: u8 = 2;
/// Content body frame type.
pub const FRAME_BODY: u8 = 3;
/// Heartbeat frame type.
pub const FRAME_HEARTBEAT: u8 = 8;
/// Frame-end octet.
pub const FRAME_END: u8 = 0xCE;
/// Header (7) plus frame-end (1).
pub const FRAME_OVERHEAD: usize = 8;
/// The smallest frame_max a peer may negotiate (RabbitMQ's `?FRAME_MIN_SIZE`).
pub const FRAME_MIN_SIZE: u32 = 4096;

/// One inbound frame; payloads share the socket read buffer.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A method frame; `payload` starts at the class id.
    Method {
        /// Channel number.
        channel: u16,
        /// Class id (first two payload octets).
        class_id: u16,
        /// Method id (octets 2..4).
        method_id: u16,
        /// The whole method payload including class and method id.
        payload: Bytes,
    },
    /// A content header frame, properties kept raw.
    Header {
        /// Channel number.
        channel: u16,
        /// Class id (must be 60, basic).
        class_id: u16,
        /// Weight (must be 0).
        weight: u16,
        /// Declared body size.
        body_size: u64,
        /// Raw property flags + property list, forwarded byte for byte.
        properties: Bytes,
    },
    /// A content body frame.
    Body {
        /// Channel number.
        channel: u16,
        /// Body bytes.
        payload: Bytes,
    },
    /// A heartbeat frame.
    Heartbeat {
        /// Channel number (must be 0).
        channel: u16,
    },
}

impl Frame {
    /// The frame's size on the wire (header, payload and frame-end octet).
    pub fn wire_len(&self) -> usize {
        FRAME_OVERHEAD
            + match self {
                Frame::Method { payload, .. } | Frame::Body { payload, .. } => payload.len(),
                Frame::Header { properties, .. } => 12 + properties.len(),
                Frame::Heartbeat { .. } => 0,
            }
    }

    /// The channel the frame is on.
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. }
            | Frame::Heartbeat { channel } => *channel,
        }
    }
}

/// Errors of the frame layer. They all close the connection.
#[derive(Debug)]
pub enum CodecError {
    /// A framing error the peer caused; becomes `connection.close` with this error.
    Protocol(AmqpError),
    /// The socket failed.
    Io(io::Error),
}

impl From<io::Error> for CodecError {
    fn from(e: io::Error) -> Self {
        CodecError::Io(e)
    }
}

/// Format bytes as an Erlang binary literal, as RabbitMQ prints frames in its errors.
pub fn erlang_binary(bytes: &[u8]) -> String {
    let mut s = String::from("<<");
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{b}");
    }
    s.push_str(">>");
    s
}

/// Whether Erlang's `~p` prints these bytes as a string (`io_lib:printable_latin1_list`).
fn erlang_printable(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|b| matches!(b, 32..=126 | 160..=255 | b'\n' | b'\r' | b'\t' | 8 | 11 | 12 | 27))
}

/// Erlang's `~p` of a binary starting at column `col`: a string when printable, else the
/// bytes, wrapped at RabbitMQ's line width with continuation lines indented under the first
/// byte (io_lib_pretty).
fn erlang_pretty_binary(bytes: &[u8], col: usize) -> String {
    if erlang_printable(bytes) {
        let mut s = String::from("<<\"");
        let mut raw = Vec::new();
        for b in bytes {
            match b {
                b'"' => raw.extend_from_slice(b"\\\""),
                b'\\' => raw.extend_from_slice(b"\\\\"),
                b'\n' => raw.extend_from_slice(b"\\n"),
                b'\r' => raw.extend_from_slice(b"\\r"),
                b'\t' => raw.extend_from_slice(b"\\t"),
                8 => raw.extend_from_slice(b"\\b"),
                11 => raw.extend_from_slice(b"\\v"),
                12 => raw.extend_from_slice(b"\\f"),
                27 => raw.extend_from_slice(b"\\e"),
                b => raw.push(*b),
            }
        }
        // Latin-1 bytes are copied raw, as RabbitMQ does; a reply text must be UTF-8 here.
        s.push_str(&String::from_utf8_lossy(&raw));
        s.push_str("\">>");
        return s;
    }
    let flat = erlang_binary(bytes);
    if col + flat.len() <= PRETTY_WIDTH {
        return flat;
    }
    let indent = col + 2;
    let mut s = String::from("<<");
    let mut at = indent;
    for (i, b) in bytes.iter().enumerate() {
        let last = i + 1 == bytes.len();
        let piece = if last {
            format!("{b}>>")
        } else {
            format!("{b},")
        };
        if at + piece.len() > PRETTY_WIDTH && at > indent {
            s.push('\n');
            s.push_str(&" ".repeat(indent));
            at = indent;
        }
        s.push_str(&piece);
        at += piece.len();
    }
    s
}

/// Erlang's `~p` of a tuple of already formatted elements at column `col`: one line if it
/// fits, else one element per line aligned after the brace.
pub fn erlang_pretty_tuple(elems: &[String], col: usize) -> String {
    let flat = format!("{{{}}}", elems.join(","));
    if col + flat.len() <= PRETTY_WIDTH {
        return flat;
    }
    let sep = format!(",\n{}", " ".repeat(col + 1));
    format!("{{{}}}", elems.join(&sep))
}

/// Last column a pretty-printed term may reach on a line (measured on RabbitMQ 3.10.8 texts).
const PRETTY_WIDTH: usize = 78;

/// Why a frame was refused, as RabbitMQ prints it.
enum FrameReason {
    /// `{frame_too_large,Size,Max}`.
    TooLarge(u32, usize),
    /// `{invalid_frame_end_marker,Byte}`.
    BadEnd(u8),
    /// `unknown_frame`.
    Unknown,
}

/// RabbitMQ's `fatal_frame_error` text: `type T, all octets = <<..>>: reason`, formatted with
/// Erlang's `~p` as RabbitMQ does (strings for printable payloads, line wrapping).
fn frame_error(ty: u8, payload: &[u8], reason: FrameReason) -> CodecError {
    let (which, shown) = if payload.len() > 16 {
        ("first 16", &payload[..16])
    } else {
        ("all", payload)
    };
    let mut text = format!("type {ty}, {which} octets = ");
    let bin = erlang_pretty_binary(shown, text.len());
    text.push_str(&bin);
    text.push_str(": ");
    let col = text.len() - text.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let reason = match reason {
        FrameReason::TooLarge(size, max) => erlang_pretty_tuple(
            &["frame_too_large".into(), size.to_string(), max.to_string()],
            col,
        ),
        FrameReason::BadEnd(b) => {
            erlang_pretty_tuple(&["invalid_frame_end_marker".into(), b.to_string()], col)
        }
        FrameReason::Unknown => "unknown_frame".into(),
    };
    text.push_str(&reason);
    CodecError::Protocol(AmqpError::frame_error(text).on(0, 0))
}

/// The most the decoder reserves ahead of the bytes that have arrived.
const RESERVE_STEP: usize = 256 * 1024;

/// The frame decoder. `frame_max` is the negotiated maximum frame size (0 = unlimited).
#[derive(Debug)]
pub struct FrameCodec {
    /// Negotiated frame_max; payloads larger than this are a 501.
    pub frame_max: u32,
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if src.len() < 7 {
            return Ok(None);
        }
        let ty = src[0];
        let channel = u16::from_be_bytes([src[1], src[2]]);
        let size = u32::from_be_bytes([src[3], src[4], src[5], src[6]]);
        // RabbitMQ allows payloads up to frame_max (frame_max - 8 + FRAME_SIZE_FUDGE of 8).
        if self.frame_max != 0 && size > self.frame_max {
            return Err(frame_error(
                ty,
                &[],
                FrameReason::TooLarge(size, self.frame_max as usize - FRAME_OVERHEAD),
            ));
        }
        let total = size as usize + FRAME_OVERHEAD;
        if src.len() < total {
            // Room for what is still missing, at most RESERVE_STEP at a time: memory follows
            // the bytes that actually arrive, not a length the peer claims (frame_max 0 is
            // unlimited).
            src.reserve((total - src.len()).min(RESERVE_STEP));
            return Ok(None);
        }
        let end = src[total - 1];
        let mut payload = src.split_to(total).freeze();
        payload.advance(7);
        payload.truncate(size as usize);
        if end != FRAME_END {
            return Err(frame_error(ty, &payload, FrameReason::BadEnd(end)));
        }
        let frame = match ty {
            FRAME_METHOD => {
                if payload.len() < 4 {
                    return Err(frame_error(ty, &payload, FrameReason::Unknown));
                }
                Frame::Method {
                    channel,
                    class_id: u16::from_be_bytes([payload[0], payload[1]]),
                    method_id: u16::from_be_bytes([payload[2], payload[3]]),
                    payload,
                }
            }
            FRAME_HEADER => {
                if payload.len() < 14 {
                    return Err(frame_error(ty, &payload, FrameReason::Unknown));
                }
                let mut p = payload.clone();
                let class_id = p.get_u16();
                let weight = p.get_u16();
                let body_size = p.get_u64();
                Frame::Header {
                    channel,
                    class_id,
                    weight,
                    body_size,
                    properties: p,
                }
            }
            FRAME_BODY => Frame::Body { channel, payload },
            FRAME_HEARTBEAT => Frame::Heartbeat { channel },
            _ => return Err(frame_error(ty, &payload, FrameReason::Unknown)),
        };
        Ok(Some(frame))
    }
}

/// A `cookie_factory` writer appending to a `BytesMut` without temporary allocations for the
/// back-patched length prefixes.
struct BufW<'a> {
    buf: &'a mut BytesMut,
    overwrite_at: Option<usize>,
}

impl io::Write for BufW<'_> {
    fn write(&mut self, d: &[u8]) -> io::Result<usize> {
        match self.overwrite_at {
            Some(p) => {
                self.buf[p..p + d.len()].copy_from_slice(d);
                self.overwrite_at = Some(p + d.len());
            }
            None => self.buf.extend_from_slice(d),
        }
        Ok(d.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BackToTheBuffer for BufW<'_> {
    fn reserve_write_use<
        Tmp,
        Gen: Fn(WriteContext<Self>) -> Result<(WriteContext<Self>, Tmp), GenError>,
        Before: Fn(WriteContext<Self>, Tmp) -> GenResult<Self>,
    >(
        s: WriteContext<Self>,
        reserved: usize,
        generate: &Gen,
        before: &Before,
    ) -> Result<WriteContext<Self>, GenError> {
        let WriteContext { write, position } = s;
        let start = write.buf.len();
        write.buf.put_bytes(0, reserved);
        let (ctx, tmp) = generate(WriteContext {
            write,
            position: position + reserved as u64,
        })?;
        let end = ctx.position;
        let mut write = ctx.write;
        let saved = write.overwrite_at.replace(start);
        let ctx = before(WriteContext { write, position }, tmp)?;
        if ctx.position != position + reserved as u64 {
            return Err(GenError::BufferTooBig(reserved));
        }
        let mut write = ctx.write;
        write.overwrite_at = saved;
        Ok(WriteContext {
            write,
            position: end,
        })
    }
}

/// Append a method frame to `dst`.
pub fn put_method(dst: &mut BytesMut, channel: u16, method: AMQPClass) {
    let frame = AMQPFrame::Method(channel, method);
    let start = dst.len();
    let w = BufW {
        buf: &mut *dst,
        overwrite_at: None,
    };
    let failed = gen_frame(&frame)(WriteContext::from(w)).err();
    if let Some(e) = failed {
        // Only reachable with a programming error (e.g. a ShortString over 255 bytes).
        tracing::error!(error = ?e, "failed to serialize method frame");
        dst.truncate(start);
    }
}

/// Append a heartbeat frame.
pub fn put_heartbeat(dst: &mut BytesMut) {
    dst.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Append a content header (raw properties, forwarded unchanged) and the body, split into body
/// frames of at most `frame_max - 8` bytes.
pub fn put_content(
    dst: &mut BytesMut,
    channel: u16,
    properties: &[u8],
    body: &[u8],
    frame_max: u32,
) {
    let header_len = 12 + properties.len();
    dst.reserve(FRAME_OVERHEAD * 2 + header_len + body.len());
    dst.put_u8(FRAME_HEADER);
    dst.put_u16(channel);
    dst.put_u32(header_len as u32);
    dst.put_u16(60);
    dst.put_u16(0);
    dst.put_u64(body.len() as u64);
    dst.extend_from_slice(properties);
    dst.put_u8(FRAME_END);
    let chunk = if frame_max == 0 {
        usize::MAX
    } else {
        frame_max as usize - FRAME_OVERHEAD
    };
    for part in body.chunks(chunk) {
        dst.put_u8(FRAME_BODY);
        dst.put_u16(channel);
        dst.put_u32(part.len() as u32);
        dst.extend_from_slice(part);
        dst.put_u8(FRAME_END);
    }
}

/// Append a method frame from raw argument bytes (hand-written fast paths).
fn put_raw_method(
    dst: &mut BytesMut,
    channel: u16,
    class_id: u16,
    method_id: u16,
    args: impl FnOnce(&mut BytesMut),
) {
    dst.put_u8(FRAME_METHOD);
    dst.put_u16(channel);
    let len_at = dst.len();
    dst.put_u32(0);
    dst.put_u16(class_id);
    dst.put_u16(method_id);
    args(dst);
    let len = (dst.len() - len_at - 4) as u32;
    dst[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
    dst.put_u8(FRAME_END);
}

/// Append a shortstr, truncated to 255 bytes.
fn put_shortstr(dst: &mut BytesMut, s: &[u8]) {
    let s = &s[..s.len().min(255)];
    dst.put_u8(s.len() as u8);
    dst.extend_from_slice(s);
}

/// `basic.deliver` (hand-written: this is the hot path).
pub fn put_basic_deliver(
    dst: &mut BytesMut,
    channel: u16,
    consumer_tag: &[u8],
    delivery_tag: u64,
    redelivered: bool,
    exchange: &[u8],
    routing_key: &[u8],
) {
    put_raw_method(dst, channel, 60, 60, |d| {
        put_shortstr(d, consumer_tag);
        d.put_u64(delivery_tag);
        d.put_u8(redelivered as u8);
        put_shortstr(d, exchange);
        put_shortstr(d, routing_key);
    });
}

/// `basic.get-ok`.
pub fn put_basic_get_ok(
    dst: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &[u8],
    routing_key: &[u8],
    message_count: u32,
) {
    put_raw_method(dst, channel, 60, 71, |d| {
        d.put_u64(delivery_tag);
        d.put_u8(redelivered as u8);
        put_shortstr(d, exchange);
        put_shortstr(d, routing_key);
        d.put_u32(message_count);
    });
}

/// `basic.return`.
pub fn put_basic_return(
    dst: &mut BytesMut,
    channel: u16,
    code: u16,
    text: &str,
    exchange: &[u8],
    routing_key: &[u8],
) {
    put_raw_method(dst, channel, 60, 50, |d| {
        d.put_u16(code);
        put_shortstr(d, text.as_bytes());
        put_shortstr(d, exchange);
        put_shortstr(d, routing_key);
    });
}

/// Serialize content-header properties (flags + list) with amq-protocol's generator.
pub fn encode_properties(props: &amq_protocol::protocol::BasicProperties) -> Bytes {
    let mut dst = BytesMut::new();
    let w = BufW {
        buf: &mut dst,
        overwrite_at: None,
    };
    let failed =
        amq_protocol::protocol::basic::gen_properties(props)(WriteContext::from(w)).is_err();
    if failed {
        return Bytes::from_static(&[0, 0]);
    }
    dst.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::{basic, channel};

    fn frame_bytes(ty: u8, ch: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![ty];
        v.extend_from_slice(&ch.to_be_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v.push(FRAME_END);
        v
    }

    #[test]
    fn decodes_byte_by_byte() {
        let mut out = BytesMut::new();
        put_method(
            &mut out,
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "rk".into(),
                mandatory: true,
                immediate: false,
            })),
        );
        put_content(&mut out, 1, &[0, 0], b"hello world", 8192);
        put_heartbeat(&mut out);
        let mut codec = FrameCodec { frame_max: 8192 };
        let mut buf = BytesMut::new();
        let mut frames = vec![];
        for b in out.iter() {
            buf.put_u8(*b);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 4);
        assert!(matches!(
            frames[0],
            Frame::Method {
                channel: 1,
                class_id: 60,
                method_id: 40,
                ..
            }
        ));
        assert!(matches!(
            frames[1],
            Frame::Header {
                body_size: 11,
                class_id: 60,
                ..
            }
        ));
        match &frames[2] {
            Frame::Body { payload, .. } => assert_eq!(&payload[..], b"hello world"),
            f => panic!("{f:?}"),
        }
        assert!(matches!(frames[3], Frame::Heartbeat { channel: 0 }));
    }

    #[test]
    fn rejects_oversized_frames_before_buffering() {
        let mut codec = FrameCodec { frame_max: 131072 };
        let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 3, 13, 64][..]); // 200000 bytes
        match codec.decode(&mut buf) {
            Err(CodecError::Protocol(e)) => assert_eq!(
                e.text,
                "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,200000,131064}"
            ),
            other => panic!("{other:?}"),
        }
    }

    /// With frame_max 0 (unlimited) a header claiming 4 GiB reserves a bounded step, not the
    /// claimed size.
    #[test]
    fn unlimited_frame_max_reserves_what_arrives() {
        let mut codec = FrameCodec { frame_max: 0 };
        let mut buf = BytesMut::from(&[3u8, 0, 1, 0xff, 0xff, 0xff, 0xf0][..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() <= RESERVE_STEP + 64, "{}", buf.capacity());
    }

    #[test]
    fn rejects_bad_frame_end() {
        let mut v = frame_bytes(1, 0, &[0, 20, 0, 10, 0]);
        *v.last_mut().unwrap() = 0;
        let mut codec = FrameCodec { frame_max: 131072 };
        match codec.decode(&mut BytesMut::from(&v[..])) {
            Err(CodecError::Protocol(e)) => {
                assert_eq!(e.code.code(), 501);
                assert!(
                    e.text.ends_with("{invalid_frame_end_marker,0}"),
                    "{}",
                    e.text
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// Texts recorded from RabbitMQ 3.10.8 (integration/python/test_wire_errors.py).
    #[test]
    fn frame_error_texts_match_rabbitmq_pretty_printing() {
        let text = |ty, p: &[u8], r| match frame_error(ty, p, r) {
            CodecError::Protocol(e) => e.text,
            CodecError::Io(_) => unreachable!(),
        };
        assert_eq!(
            text(
                1,
                &[0, 60, 0, 10, 0, 0, 0, 0, 0, 10, 0],
                FrameReason::BadEnd(0)
            ),
            format!(
                "FRAME_ERROR - type 1, all octets = <<0,60,0,10,0,0,0,0,0,10,0>>: {{invalid_frame_end_marker,\n{}0}}",
                " ".repeat(52)
            )
        );
        let mut p = vec![0, 50, 0, 10, 0, 0, 40];
        p.extend_from_slice(&[113; 20]);
        assert_eq!(
            text(1, &p, FrameReason::BadEnd(0)),
            format!(
                "FRAME_ERROR - type 1, first 16 octets = <<0,50,0,10,0,0,40,113,113,113,113,113,113,113,113,\n{}113>>: {{invalid_frame_end_marker,0}}",
                " ".repeat(28)
            )
        );
        assert_eq!(
            text(3, b"hello", FrameReason::BadEnd(0)),
            "FRAME_ERROR - type 3, all octets = <<\"hello\">>: {invalid_frame_end_marker,0}"
        );
        assert_eq!(
            text(3, b"a\nb\tc\"d", FrameReason::BadEnd(0)),
            "FRAME_ERROR - type 3, all octets = <<\"a\\nb\\tc\\\"d\">>: {invalid_frame_end_marker,0}"
        );
        assert_eq!(
            text(3, &[b'x'; 40], FrameReason::BadEnd(0)),
            "FRAME_ERROR - type 3, first 16 octets = <<\"xxxxxxxxxxxxxxxx\">>: {invalid_frame_end_marker,0}"
        );
        assert_eq!(
            text(9, b"abc", FrameReason::Unknown),
            "FRAME_ERROR - type 9, all octets = <<\"abc\">>: unknown_frame"
        );
        assert_eq!(
            text(9, b"", FrameReason::Unknown),
            "FRAME_ERROR - type 9, all octets = <<>>: unknown_frame"
        );
    }

    #[test]
    fn splits_bodies_at_frame_max() {
        let mut out = BytesMut::new();
        let body = vec![7u8; 10000];
        put_content(&mut out, 3, &[0, 0], &body, 4096);
        let mut codec = FrameCodec { frame_max: 4096 };
        let mut sizes = vec![];
        while let Some(f) = codec.decode(&mut out).unwrap() {
            if let Frame::Body { payload, .. } = f {
                sizes.push(payload.len());
            }
        }
        assert_eq!(sizes, vec![4088, 4088, 1824]);
    }

    /// The hand-written deliver/get-ok/return agree with amq-protocol's parser.
    #[test]
    fn fast_path_methods_parse_with_amq_protocol() {
        use amq_protocol::protocol::basic::AMQPMethod as B;
        let mut out = BytesMut::new();
        put_basic_deliver(&mut out, 7, b"ctag", 42, true, b"amq.topic", b"a.b");
        put_basic_get_ok(&mut out, 7, 43, false, b"", b"q", 9);
        put_basic_return(&mut out, 7, 312, "NO_ROUTE", b"x", b"rk");
        let mut rest = &out[..];
        let mut got = vec![];
        while !rest.is_empty() {
            let (r, f) = amq_protocol::frame::parse_frame(rest).unwrap();
            rest = r;
            got.push(f);
        }
        match &got[0] {
            AMQPFrame::Method(7, AMQPClass::Basic(B::Deliver(d))) => {
                assert_eq!(
                    (d.consumer_tag.as_str(), d.delivery_tag, d.redelivered),
                    ("ctag", 42, true)
                );
                assert_eq!(
                    (d.exchange.as_str(), d.routing_key.as_str()),
                    ("amq.topic", "a.b")
                );
            }
            f => panic!("{f:?}"),
        }
        match &got[1] {
            AMQPFrame::Method(7, AMQPClass::Basic(B::GetOk(g))) => {
                assert_eq!(
                    (g.delivery_tag, g.redelivered, g.message_count),
                    (43, false, 9)
                );
                assert_eq!(g.routing_key.as_str(), "q");
            }
            f => panic!("{f:?}"),
        }
        match &got[2] {
            AMQPFrame::Method(7, AMQPClass::Basic(B::Return(r))) => {
                assert_eq!((r.reply_code, r.reply_text.as_str()), (312, "NO_ROUTE"));
                assert_eq!((r.exchange.as_str(), r.routing_key.as_str()), ("x", "rk"));
            }
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn method_round_trip_through_amq_protocol() {
        let mut out = BytesMut::new();
        put_method(
            &mut out,
            5,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        );
        let (rest, f) = amq_protocol::frame::parse_frame(&out[..]).unwrap();
        assert!(rest.is_empty());
        assert!(matches!(
            f,
            AMQPFrame::Method(5, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)))
        ));
    }
}
