//! A published message as queues hold it: raw properties and body shared as `Bytes`, so a
//! message routed to many queues is never copied.

use bytes::Bytes;

/// A message, shared (`Arc<Message>`) by every queue it was routed to.
#[derive(Debug, Clone)]
pub struct Message {
    /// Exchange it was published to.
    pub exchange: Bytes,
    /// Routing key it was published with.
    pub routing_key: Bytes,
    /// Raw content-header properties (flags + list), forwarded byte for byte.
    pub properties: Bytes,
    /// The body.
    pub body: Bytes,
    /// `priority` property (0 if absent).
    pub priority: u8,
    /// `expiration` property in ms, validated at publish.
    pub expiration: Option<u64>,
    /// `delivery_mode` 2.
    pub persistent: bool,
    /// Location of its publish record in the message log, when stored (persistent, routed to
    /// a durable queue).
    pub store_id: Option<u64>,
    /// BCC routing keys (the header is stripped; dead-lettering still routes with them).
    pub bcc: Vec<Bytes>,
    /// The publisher confirm waiting for this message's record to be synced, released early
    /// when every durable queue that took it has settled it (see [`ConfirmGate`]).
    pub confirm: Option<std::sync::Arc<ConfirmGate>>,
}

/// A callback run once with whether a publish can be confirmed (`true`) or must be nacked.
pub type Done = Box<dyn FnOnce(bool) + Send>;

/// A publisher confirm waiting for a stored message. The message log releases it once the
/// message's record is synced (or nacks it if the record cannot be written); before that, it is
/// released as soon as every durable queue that took the message has settled it: acked, or
/// delivered to a no-ack consumer. That is RabbitMQ's rule: a message consumed before it is
/// written is the consumer's, and its publisher need not wait for the disk. Other removals
/// (expiry, purge, dead-lettering, overflow) wait for the sync.
pub struct ConfirmGate {
    done: parking_lot::Mutex<Option<Done>>,
    /// Released (or nacked): read by the writer for every waiting confirm on each of its
    /// rounds, so without the lock.
    fired: std::sync::atomic::AtomicBool,
    /// Durable queues that hold the message and have not settled it.
    holders: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for ConfirmGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfirmGate")
            .field("pending", &self.pending())
            .finish()
    }
}

impl ConfirmGate {
    /// A gate released by `holders` settlements or by [`ConfirmGate::fire`].
    pub fn new(done: Done, holders: usize) -> std::sync::Arc<Self> {
        std::sync::Arc::new(ConfirmGate {
            done: parking_lot::Mutex::new(Some(done)),
            fired: std::sync::atomic::AtomicBool::new(false),
            holders: std::sync::atomic::AtomicUsize::new(holders),
        })
    }

    /// Release the confirm (`true`) or nack it (`false`), unless it was released already.
    pub fn fire(&self, ok: bool) {
        if self.fired.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let done = self.done.lock().take();
        if let Some(d) = done {
            d(ok);
        }
    }

    /// One holder settled the message; the last one releases the confirm.
    pub fn settle(&self) {
        use std::sync::atomic::Ordering;
        let prev = self
            .holders
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| h.checked_sub(1));
        if prev == Ok(1) {
            self.fire(true);
        }
    }

    /// The confirm is still waiting.
    pub fn pending(&self) -> bool {
        !self.fired.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The properties the broker acts on, read from raw content-header properties without
/// decoding them all.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Peek<'a> {
    /// `delivery_mode`.
    pub delivery_mode: Option<u8>,
    /// `priority` (0 if absent).
    pub priority: u8,
    /// `expiration`, raw.
    pub expiration: Option<&'a [u8]>,
}

impl Peek<'_> {
    /// `expiration` in ms, if present and numeric (validated at publish).
    pub fn expiration(&self) -> Option<u64> {
        std::str::from_utf8(self.expiration?).ok()?.parse().ok()
    }
}

/// Walk the property flags up to `expiration` (the 8th property): content-type and
/// content-encoding (shortstrs), headers (a table), delivery-mode, priority (octets),
/// correlation-id and reply-to (shortstrs). Malformed or continued flags: all absent.
pub fn peek_properties(raw: &[u8]) -> Peek<'_> {
    /// Fills `peek` field by field; stops at the first one cut short.
    fn go<'a>(raw: &'a [u8], peek: &mut Peek<'a>) -> Option<()> {
        let flags = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
        if flags & 1 != 0 {
            return None; // a continuation flag word: not used by AMQP 0-9-1 basic
        }
        let mut pos = 2usize;
        for bit in (8..=15).rev() {
            if flags & (1 << bit) == 0 {
                continue;
            }
            match bit {
                13 => {
                    let len = u32::from_be_bytes(raw.get(pos..pos + 4)?.try_into().ok()?);
                    pos += 4 + len as usize;
                }
                12 => {
                    peek.delivery_mode = Some(*raw.get(pos)?);
                    pos += 1;
                }
                11 => {
                    peek.priority = *raw.get(pos)?;
                    pos += 1;
                }
                8 => {
                    let n = *raw.get(pos)? as usize;
                    peek.expiration = Some(raw.get(pos + 1..pos + 1 + n)?);
                }
                _ => pos += 1 + *raw.get(pos)? as usize,
            }
        }
        Some(())
    }
    let mut peek = Peek::default();
    go(raw, &mut peek);
    peek
}

/// Bodies up to this size are copied with the message's exchange, routing key and properties
/// into one allocation of exactly their size (see [`own`]).
pub const INLINE_BODY: usize = 64 * 1024;

/// The parts of a message as it arrived, re-homed so that it shares no allocation with
/// anything else: frames are slices of a connection's read buffer, and a message kept in a
/// queue would otherwise hold the whole buffer it was read into (with other messages' bytes,
/// long consumed) for as long as it lives. Measured before this: 16 B messages read between
/// 64 KiB ones held 2.2 KB each once the large ones were gone, 1.2 KB after. A body up to
/// [`INLINE_BODY`] goes in the same allocation as the rest; a larger one is copied into its
/// own unless it has one already (a body joined from several frames).
pub fn own(exchange: &[u8], routing_key: &[u8], properties: &[u8], body: Bytes) -> [Bytes; 4] {
    let head = exchange.len() + routing_key.len() + properties.len();
    let inline = body.len() <= INLINE_BODY;
    let mut buf = bytes::BytesMut::with_capacity(head + if inline { body.len() } else { 0 });
    buf.extend_from_slice(exchange);
    buf.extend_from_slice(routing_key);
    buf.extend_from_slice(properties);
    if inline {
        buf.extend_from_slice(&body);
    }
    let exchange = buf.split_to(exchange.len()).freeze();
    let routing_key = buf.split_to(routing_key.len()).freeze();
    let properties = buf.split_to(properties.len()).freeze();
    let body = match inline {
        true => buf.freeze(),
        false if body.is_unique() => body,
        false => Bytes::copy_from_slice(&body),
    };
    [exchange, routing_key, properties, body]
}

/// Estimated memory of a message held in memory beyond its body and properties (the
/// `Message`, its `Arc`, buffers).
pub const MEM_OVERHEAD: u64 = 256;

impl Message {
    /// Give the message bytes of its own (see [`own`]): done at publish for a message that
    /// may stay in a queue (one of its queues has no consumer, or it is delayed).
    pub fn rehome(&mut self) {
        let body = std::mem::take(&mut self.body);
        let [exchange, routing_key, properties, body] =
            own(&self.exchange, &self.routing_key, &self.properties, body);
        self.exchange = exchange;
        self.routing_key = routing_key;
        self.properties = properties;
        self.body = body;
    }

    /// Estimated memory this message holds (paging budget, memory alarm).
    pub fn memory_cost(&self) -> u64 {
        self.body.len() as u64 + self.properties.len() as u64 + MEM_OVERHEAD
    }

    /// A message read back from the message log (`id`: its location).
    pub fn recovered(
        id: u64,
        exchange: Bytes,
        routing_key: Bytes,
        properties: Bytes,
        body: Bytes,
    ) -> Message {
        let peek = peek_properties(&properties);
        let (priority, expiration) = (peek.priority, peek.expiration());
        Message {
            exchange,
            routing_key,
            priority,
            expiration,
            properties,
            body,
            persistent: true,
            store_id: Some(id),
            bcc: Vec::new(),
            confirm: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::BasicProperties;
    use amq_protocol::types::{AMQPValue, FieldTable};

    #[test]
    fn owned_parts_share_nothing_with_the_read_buffer() {
        let read = Bytes::from(vec![7u8; 64 * 1024]);
        let within = |b: &Bytes| {
            let r = read.as_ptr() as usize..read.as_ptr() as usize + read.len();
            !b.is_empty() && r.contains(&(b.as_ptr() as usize))
        };
        let [x, rk, props, body] = own(b"amq.direct", b"key", &read[..3], read.slice(100..116));
        assert_eq!(
            (&x[..], &rk[..], &props[..]),
            (&b"amq.direct"[..], &b"key"[..], &[7u8; 3][..])
        );
        assert_eq!(body, read.slice(100..116));
        assert!(![&x, &rk, &props, &body].into_iter().any(within));
        // A body over INLINE_BODY keeps an allocation of its own (a joined body)...
        let big = Bytes::from(vec![1u8; INLINE_BODY + 1]);
        let ptr = big.as_ptr();
        let [_, _, _, body] = own(b"", b"q", b"", big);
        assert_eq!(body.as_ptr(), ptr);
        // ...and is copied out of a shared one (a single frame of the read buffer).
        let read = Bytes::from(vec![2u8; INLINE_BODY + 100]);
        let frame = read.slice(..INLINE_BODY + 1);
        let [_, _, _, body] = own(b"", b"q", b"", frame.clone());
        assert_eq!(body, frame);
        let r = read.as_ptr() as usize..read.as_ptr() as usize + read.len();
        assert!(!r.contains(&(body.as_ptr() as usize)));
    }

    #[test]
    fn peek_reads_what_the_full_parser_reads() {
        let mut headers = FieldTable::default();
        headers.insert("k".into(), AMQPValue::LongString("v".into()));
        let props = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_content_encoding("gzip".into())
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_priority(7)
            .with_correlation_id("c-1".into())
            .with_reply_to("r".into())
            .with_expiration("1500".into())
            .with_message_id("m".into());
        let raw = crate::protocol::codec::encode_properties(&props);
        let peek = peek_properties(&raw);
        assert_eq!(peek.delivery_mode, Some(2));
        assert_eq!(peek.priority, 7);
        assert_eq!(peek.expiration(), Some(1500));
        let bare = crate::protocol::codec::encode_properties(&BasicProperties::default());
        assert_eq!(peek_properties(&bare), Peek::default());
        // Cut short after delivery-mode: what came before is still read.
        let cut = &raw[..raw.len() - 12];
        assert_eq!(peek_properties(cut).delivery_mode, Some(2));
        assert_eq!(peek_properties(&[]), Peek::default());
    }
}
