//! The message log's record format: encoding, the self-checking header, decoding.
//!
//! Record: a 16-byte header `magic u32 | len u32 | crc32(payload) u32 | crc32(header[0..12]) u32`,
//! then `len` bytes of payload. The magic and the header checksum let recovery tell a real
//! record from damage without trusting any length it has not verified: after damaged bytes it
//! scans forward to the next valid header and keeps everything from there (see
//! [`super::recovery`]). Payload types:
//! - 1 publish: `order u64` (0: its own location; else the location of the original publish,
//!   kept by compaction so recovery restores queue order), `from u64` (0: a new message; else
//!   the location this record supersedes for the listed queues: a compaction move),
//!   `queues (u32 count; each shortstr name, u8 delivered, u32 delivery count)`,
//!   `exchange shortstr, routing key shortstr, properties (u32 len + bytes),
//!   body (u32 len + bytes)`, then, if the message had BCC routing keys, `u32 count` and a
//!   shortstr each (dead-lettering routes with them) — one record per message however many
//!   durable queues it went to;
//! - 2 remove: `loc u64, queue shortstr` (acked, dropped, dead-lettered away, purged);
//! - 3 delivered: `loc u64, queue shortstr` (first delivery: comes back redelivered);
//! - 4 delivery count: `loc u64, queue shortstr, count u32`;
//! - 5 queue deleted: `queue shortstr`;
//! - 6 spooled: the layout of a publish with no queues — a transient message (or one in a
//!   non-durable queue) paged out of memory. Never recovered: after a restart it is dead.
//!
//! A skip header ([`SKIP_MAGIC`], [`skip_header`]) stands where the writer left out records
//! whose messages were consumed before it reached them: locations are reserved at publish, so
//! their space stays (a hole in the file, never written) and recovery steps over it.

use crate::message::Message;
use bytes::{BufMut, Bytes, BytesMut};

/// First four bytes of every record ("WRL2": Warren record log, format 2).
pub const MAGIC: u32 = 0x5752_4c32;

/// Size of a record header.
pub const HEADER: usize = 16;

/// First four bytes of a skip header ("WRLS"): the space of records that were never written
/// follows (a message consumed before the writer reached its record). Same layout as a record
/// header, with no payload checksum: what follows is a hole in the file, never read.
pub const SKIP_MAGIC: u32 = 0x5752_4c53;

/// A skip header covering `total` bytes (itself included; at least [`HEADER`]).
pub fn skip_header(total: u64) -> [u8; HEADER] {
    debug_assert!(total >= HEADER as u64 && total - HEADER as u64 <= u32::MAX as u64);
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&SKIP_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&((total - HEADER as u64) as u32).to_be_bytes());
    let hcrc = crc32fast::hash(&h[0..12]);
    h[12..16].copy_from_slice(&hcrc.to_be_bytes());
    h
}

/// A verified skip header: the length of the space after it, or `None`.
pub fn parse_skip(h: &[u8]) -> Option<u32> {
    let h: &[u8; HEADER] = h.get(..HEADER)?.try_into().ok()?;
    let word = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    (word(0) == SKIP_MAGIC && word(8) == 0 && crc32fast::hash(&h[0..12]) == word(12))
        .then(|| word(4))
}

/// The largest payload a record may declare (a message body is at most 512 MiB in AMQP
/// terms here; the rest is names). Anything longer is damage.
pub const MAX_PAYLOAD: u32 = 1 << 30;

/// Encode a header for a payload of `len` bytes whose checksum is `crc`.
pub fn header(len: u32, crc: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&len.to_be_bytes());
    h[8..12].copy_from_slice(&crc.to_be_bytes());
    let hcrc = crc32fast::hash(&h[0..12]);
    h[12..16].copy_from_slice(&hcrc.to_be_bytes());
    h
}

/// A verified header: the payload length and checksum, or `None` if these 16 bytes are not
/// a record header (wrong magic, header checksum, or an impossible length).
pub fn parse_header(h: &[u8]) -> Option<(u32, u32)> {
    let h: &[u8; HEADER] = h.get(..HEADER)?.try_into().ok()?;
    let word = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    if word(0) != MAGIC || crc32fast::hash(&h[0..12]) != word(12) || word(4) > MAX_PAYLOAD {
        return None;
    }
    Some((word(4), word(8)))
}

fn put_str<B: BufMut>(b: &mut B, s: &[u8]) {
    let s = &s[..s.len().min(255)];
    b.put_u8(s.len() as u8);
    b.put_slice(s);
}

/// A buffer for a record: room for the header [`frame`] fills in, then the payload.
fn record(capacity: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(HEADER + capacity);
    b.put_bytes(0, HEADER);
    b
}

/// Fill in the header of a [`record`], in place: the body is copied once, into the record.
fn frame(mut rec: BytesMut) -> Bytes {
    let len = (rec.len() - HEADER) as u32;
    let crc = crc32fast::hash(&rec[HEADER..]);
    rec[0..HEADER].copy_from_slice(&header(len, crc));
    rec.freeze()
}

/// A whole record (header and payload) for `payload` (tests and fuzzing).
pub fn framed(payload: &[u8]) -> Vec<u8> {
    let mut v = header(payload.len() as u32, crc32fast::hash(payload)).to_vec();
    v.extend_from_slice(payload);
    v
}

/// A queue's state in a publish record: name, delivered before, delivery count.
pub type QueueState<'a> = (&'a str, bool, u32);

/// Encode a publish record (`order`/`from` 0 for a new message; see the module docs).
pub fn publish_record(order: u64, from: u64, queues: &[QueueState<'_>], msg: &Message) -> Bytes {
    message_record(1, order, from, queues, msg)
}

/// Encode a spooled record: a message paged out of memory that no restart brings back.
pub fn spool_record(msg: &Message) -> Bytes {
    message_record(6, 0, 0, &[], msg)
}

fn message_record(
    ty: u8,
    order: u64,
    from: u64,
    queues: &[QueueState<'_>],
    msg: &Message,
) -> Bytes {
    let names: usize = queues.iter().map(|(q, _, _)| q.len().min(255) + 6).sum();
    let mut p = record(64 + names + msg.properties().len() + msg.body.len());
    put_message(&mut p, ty, order, from, queues, msg);
    frame(p)
}

/// The length (header included) of a new message's publish record for one queue: what
/// [`encode_publish_into`] appends.
pub fn publish_len(queue: &str, msg: &Message) -> u64 {
    let s = |b: &[u8]| 1 + b.len().min(255) as u64;
    let bcc = msg.bcc();
    HEADER as u64
        + 21
        + s(queue.as_bytes())
        + 5
        + s(msg.exchange())
        + s(msg.routing_key())
        + 4
        + msg.properties().len() as u64
        + 4
        + msg.body.len() as u64
        + if bcc.is_empty() {
            0
        } else {
            4 + bcc.iter().map(|k| s(k)).sum::<u64>()
        }
}

/// Append a new message's publish record for one queue (header included) to `buf`: the
/// writer encodes it only if it writes it (see [`super::log::Rec`]).
pub fn encode_publish_into(buf: &mut Vec<u8>, queue: &str, msg: &Message) {
    let start = buf.len();
    buf.resize(start + HEADER, 0);
    put_message(buf, 1, 0, 0, &[(queue, false, 0)], msg);
    let len = (buf.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start..start + HEADER].copy_from_slice(&header(len, crc));
}

fn put_message<B: BufMut>(
    p: &mut B,
    ty: u8,
    order: u64,
    from: u64,
    queues: &[QueueState<'_>],
    msg: &Message,
) {
    p.put_u8(ty);
    p.put_u64(order);
    p.put_u64(from);
    p.put_u32(queues.len() as u32);
    for (q, delivered, count) in queues {
        put_str(p, q.as_bytes());
        p.put_u8(*delivered as u8);
        p.put_u32(*count);
    }
    put_str(p, msg.exchange());
    put_str(p, msg.routing_key());
    p.put_u32(msg.properties().len() as u32);
    p.put_slice(msg.properties());
    p.put_u32(msg.body.len() as u32);
    p.put_slice(&msg.body);
    if !msg.bcc().is_empty() {
        p.put_u32(msg.bcc().len() as u32);
        for k in msg.bcc() {
            put_str(p, k);
        }
    }
}

fn small_record(ty: u8, loc: u64, queue: &str, count: Option<u32>) -> Bytes {
    let mut p = record(16 + queue.len());
    p.put_u8(ty);
    if ty != 5 {
        p.put_u64(loc);
    }
    put_str(&mut p, queue.as_bytes());
    if let Some(c) = count {
        p.put_u32(c);
    }
    frame(p)
}

/// Encode a remove record.
pub fn remove_record(loc: u64, queue: &str) -> Bytes {
    small_record(2, loc, queue, None)
}

/// Encode a delivered record.
pub fn delivered_record(loc: u64, queue: &str) -> Bytes {
    small_record(3, loc, queue, None)
}

/// Encode a delivery-count record.
pub fn count_record(loc: u64, queue: &str, count: u32) -> Bytes {
    small_record(4, loc, queue, Some(count))
}

/// Encode a queue-deleted record.
pub fn queue_deleted_record(queue: &str) -> Bytes {
    small_record(5, 0, queue, None)
}

/// Whether an encoded record (header included) is a publish, and the (queue, message) pairs
/// it adds and the location it supersedes (`from`): the writer's accounting reads only this
/// fixed prefix.
pub fn publish_prefix(rec: &[u8]) -> Option<(u64, u64)> {
    let p = rec.get(HEADER..)?;
    if *p.first()? != 1 {
        return None;
    }
    fixed_prefix(p)
}

/// Whether an encoded record is a spooled message.
pub fn is_spool(rec: &[u8]) -> bool {
    rec.get(HEADER) == Some(&6)
}

fn fixed_prefix(p: &[u8]) -> Option<(u64, u64)> {
    let from = u64::from_be_bytes(p.get(9..17)?.try_into().ok()?);
    let n = u32::from_be_bytes(p.get(17..21)?.try_into().ok()?);
    Some((n as u64, from))
}

/// The location a remove record cancels (accounting).
pub fn remove_prefix(rec: &[u8]) -> Option<u64> {
    let p = rec.get(HEADER..)?;
    if *p.first()? != 2 {
        return None;
    }
    Some(u64::from_be_bytes(p.get(1..9)?.try_into().ok()?))
}

/// A decoded publish record (fields borrow the payload).
pub struct Publish<'a> {
    pub order: u64,
    pub from: u64,
    /// (queue, delivered, delivery count).
    pub queues: Vec<(&'a [u8], bool, u32)>,
    pub exchange: &'a [u8],
    pub routing_key: &'a [u8],
    pub properties: &'a [u8],
    pub body: &'a [u8],
    pub bcc: Vec<&'a [u8]>,
}

/// A decoded record.
pub enum Record<'a> {
    Publish(Publish<'a>),
    /// A spooled message (same layout as a publish, no queues).
    Spool(Publish<'a>),
    Remove(u64, &'a [u8]),
    Delivered(u64, &'a [u8]),
    Count(u64, &'a [u8], u32),
    QueueDeleted(&'a [u8]),
}

/// A cursor over a payload; every read checks the length left first.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()? as usize;
        self.take(n)
    }
    fn blob(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// Decode a payload; `None` if its layout is wrong. Counts are checked against the bytes
/// left before anything is allocated for them.
pub fn decode(p: &[u8]) -> Option<Record<'_>> {
    let mut c = Cursor(p);
    let ty = c.u8()?;
    if ty == 5 {
        return Some(Record::QueueDeleted(c.str()?));
    }
    let loc = c.u64()?;
    Some(match ty {
        1 | 6 => {
            let from = c.u64()?;
            let n = c.u32()? as usize;
            // Each queue takes at least 6 bytes.
            if n > c.0.len() / 6 {
                return None;
            }
            let mut queues = Vec::with_capacity(n);
            for _ in 0..n {
                let name = c.str()?;
                queues.push((name, c.u8()? != 0, c.u32()?));
            }
            let exchange = c.str()?;
            let routing_key = c.str()?;
            let properties = c.blob()?;
            let body = c.blob()?;
            let mut bcc = Vec::new();
            if !c.0.is_empty() {
                let n = c.u32()? as usize;
                if n > c.0.len() {
                    return None;
                }
                for _ in 0..n {
                    bcc.push(c.str()?);
                }
            }
            let p = Publish {
                order: loc,
                from,
                queues,
                exchange,
                routing_key,
                properties,
                body,
                bcc,
            };
            if ty == 1 {
                Record::Publish(p)
            } else {
                Record::Spool(p)
            }
        }
        2 => Record::Remove(loc, c.str()?),
        3 => Record::Delivered(loc, c.str()?),
        4 => {
            let q = c.str()?;
            Record::Count(loc, q, c.u32()?)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_check_themselves() {
        let h = header(1234, 0xdead_beef);
        assert_eq!(parse_header(&h), Some((1234, 0xdead_beef)));
        for i in 0..HEADER {
            let mut bad = h;
            bad[i] ^= 0x01;
            assert_eq!(parse_header(&bad), None, "flipped byte {i}");
        }
        assert_eq!(parse_header(&h[..15]), None);
        assert_eq!(parse_header(&[0u8; HEADER]), None);
        assert_eq!(parse_header(&header(MAX_PAYLOAD + 1, 0)), None);
    }

    #[test]
    fn skip_headers_check_themselves_and_are_not_records() {
        let h = skip_header(HEADER as u64 + 5000);
        assert_eq!(parse_skip(&h), Some(5000));
        assert_eq!(parse_header(&h), None);
        assert_eq!(parse_skip(&header(5000, 0)), None);
        assert_eq!(parse_skip(&skip_header(HEADER as u64)), Some(0));
        for i in 0..HEADER {
            let mut bad = h;
            bad[i] ^= 0x01;
            assert_eq!(parse_skip(&bad), None, "flipped byte {i}");
        }
    }

    #[test]
    fn a_publish_encoded_by_the_writer_has_the_length_reserved_for_it_and_decodes() {
        let long = vec![b'x'; 300];
        for (exchange, key, bcc, queue) in [
            (&b""[..], &b"k"[..], vec![], "q"),
            (
                &long[..],
                &long[..],
                vec![Bytes::from_static(b"b1"), Bytes::from(long.clone())],
                "q2",
            ),
        ] {
            let mut msg = Message::recovered(
                0,
                Bytes::copy_from_slice(exchange),
                Bytes::copy_from_slice(key),
                Bytes::from_static(&[0x10, 0, 2]),
                Bytes::from_static(b"body"),
            );
            msg.set_bcc(bcc);
            let mut buf = vec![7u8; 3];
            encode_publish_into(&mut buf, queue, &msg);
            assert_eq!((buf.len() - 3) as u64, publish_len(queue, &msg));
            let rec = &buf[3..];
            let (len, crc) = parse_header(rec).unwrap();
            assert_eq!(len as usize, rec.len() - HEADER);
            assert_eq!(crc, crc32fast::hash(&rec[HEADER..]));
            assert_eq!(publish_prefix(rec), Some((1, 0)));
            let same = publish_record(0, 0, &[(queue, false, 0)], &msg);
            assert_eq!(
                &same[..],
                rec,
                "the same bytes as an eagerly encoded record"
            );
        }
    }

    #[test]
    fn a_fan_out_past_u16_queues_round_trips() {
        let names: Vec<String> = (0..70_000).map(|i| format!("q{i}")).collect();
        let queues: Vec<QueueState<'_>> = names.iter().map(|n| (n.as_str(), false, 0)).collect();
        let msg = Message::recovered(
            0,
            Bytes::from_static(b"x"),
            Bytes::from_static(b"rk"),
            Bytes::from_static(&[0, 0]),
            Bytes::from_static(b"body"),
        );
        let rec = publish_record(0, 0, &queues, &msg);
        assert_eq!(publish_prefix(&rec), Some((70_000, 0)));
        let (len, crc) = parse_header(&rec).unwrap();
        assert_eq!(len as usize, rec.len() - HEADER);
        assert_eq!(crc, crc32fast::hash(&rec[HEADER..]));
        let Some(Record::Publish(p)) = decode(&rec[HEADER..]) else {
            panic!("not a publish")
        };
        assert_eq!(p.queues.len(), 70_000);
        assert_eq!(p.queues[69_999].0, b"q69999");
        assert_eq!(p.body, b"body");
    }

    #[test]
    fn counts_larger_than_the_payload_are_refused_before_allocating() {
        let mut p = vec![1u8];
        p.extend_from_slice(&0u64.to_be_bytes());
        p.extend_from_slice(&0u64.to_be_bytes());
        p.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&p).is_none());
    }
}
