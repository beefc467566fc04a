//! A published message as queues hold it: raw properties and body shared as `Bytes`, so a
//! message routed to many queues is never copied.

use bytes::Bytes;

/// A message, shared (`Arc<Message>`) by every queue it was routed to. Compact (112 bytes,
/// one jemalloc size class of 128 with its `Arc`): the exchange, routing key and properties
/// share one allocation of their exact size, and what most messages lack (expiration, store
/// location, BCC keys) takes no more than a word.
#[derive(Debug, Clone)]
pub struct Message {
    /// Exchange ++ routing key ++ raw properties, in an allocation of their own.
    head: Bytes,
    exchange_len: u32,
    routing_key_len: u32,
    /// The body.
    pub body: Bytes,
    /// `priority` property (0 if absent).
    pub priority: u8,
    /// `delivery_mode` 2.
    pub persistent: bool,
    /// `expiration` in ms, validated at publish ([`NONE`]: absent).
    expiration: u64,
    /// Location of its publish record in the message log, when stored (persistent, routed to
    /// a durable queue; [`NONE`]: not stored).
    store_id: u64,
    /// BCC routing keys (the header is stripped; dead-lettering still routes with them).
    /// Boxed: a thin pointer (8 bytes; a `Vec` is 24) for what few messages have.
    #[allow(clippy::box_collection)]
    bcc: Option<Box<Vec<Bytes>>>,
    /// The publisher confirm waiting for this message's record to be synced, released early
    /// when every durable queue that took it has settled it (see [`ConfirmGate`]).
    pub confirm: Option<std::sync::Arc<ConfirmGate>>,
}

/// An absent `expiration` or store location (neither reaches it: expirations are at most
/// ten years in ms, locations are a segment number and an offset of 32 bits each, below it).
const NONE: u64 = u64::MAX;

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
    /// Whether the message's record may be left unwritten: it went to one durable queue (see
    /// [`ConfirmGate::cancel_write`]); and, if so, [`WRITE_OPEN`], [`WRITE_TAKEN`] or
    /// [`WRITE_CANCELLED`].
    skippable: bool,
    write: std::sync::atomic::AtomicU8,
    /// Handed to a no-ack consumer of its only durable queue: it will be settled as soon as
    /// that consumer's connection writes it out, so the writer may put off a sync for it a
    /// little (see [`ConfirmGate::handed`]).
    handed: std::sync::atomic::AtomicBool,
}

/// The writer has not reached the record yet.
const WRITE_OPEN: u8 = 0;
/// The writer took the record: it is (being) written.
const WRITE_TAKEN: u8 = 1;
/// The message left its queue first: the record is never written.
const WRITE_CANCELLED: u8 = 2;

impl std::fmt::Debug for ConfirmGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfirmGate")
            .field("pending", &self.pending())
            .finish()
    }
}

impl ConfirmGate {
    /// A gate released by `holders` settlements or by [`ConfirmGate::fire`].
    /// A message routed to a single durable queue (`holders == 1`) may have its record
    /// left unwritten (see [`ConfirmGate::cancel_write`]).
    pub fn new(done: Done, holders: usize) -> std::sync::Arc<Self> {
        Self::with(Some(done), holders)
    }

    fn with(done: Option<Done>, holders: usize) -> std::sync::Arc<Self> {
        std::sync::Arc::new(ConfirmGate {
            done: parking_lot::Mutex::new(done),
            fired: std::sync::atomic::AtomicBool::new(false),
            holders: std::sync::atomic::AtomicUsize::new(holders),
            skippable: holders == 1,
            write: std::sync::atomic::AtomicU8::new(WRITE_OPEN),
            handed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The message was handed to a no-ack consumer of its only durable queue.
    pub fn hand(&self) {
        if self.skippable {
            self.handed
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Whether the message was handed to a no-ack consumer of its only durable queue: its
    /// confirm goes out when that consumer's connection writes it, usually well within a
    /// sync's time, and then its record is not written at all. The writer does not sync for
    /// such a confirm at once (it waits up to [`crate::store::log::HANDED_GRACE`]).
    pub fn handed(&self) -> bool {
        self.handed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A gate for a message stored for one durable queue that no publisher confirm waits
    /// for: it only lets the record be left out if the queue is done with the message first
    /// (see [`ConfirmGate::cancel_write`]).
    pub fn without_confirm() -> std::sync::Arc<Self> {
        Self::with(None, 1)
    }

    /// Whether the record this gate waits for may be left unwritten (one durable queue).
    pub fn skippable(&self) -> bool {
        self.skippable
    }

    /// The message's only durable queue is done with it (it left the queue for good): if the
    /// log's writer has not taken its record yet, it never will (RabbitMQ does not write a
    /// message consumed before it needs to be), and the queue must not write a removal for
    /// it. False: the record is (being) written, so the queue records the removal as usual.
    pub fn cancel_write(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.skippable
            && match self.write.compare_exchange(
                WRITE_OPEN,
                WRITE_CANCELLED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => true,
                Err(now) => now == WRITE_CANCELLED,
            }
    }

    /// Whether the message's queue cancelled the write (see [`ConfirmGate::cancel_write`]).
    pub fn write_cancelled(&self) -> bool {
        self.write.load(std::sync::atomic::Ordering::Acquire) == WRITE_CANCELLED
    }

    /// The log's writer is about to write the record: false if it was cancelled (the writer
    /// leaves the record's space empty), true otherwise (from then on it cannot be).
    pub fn take_write(&self) -> bool {
        use std::sync::atomic::Ordering;
        match self.write.compare_exchange(
            WRITE_OPEN,
            WRITE_TAKEN,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(now) => now != WRITE_CANCELLED,
        }
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

/// Bodies up to this size are copied into an allocation of their own when a message is
/// re-homed (see [`Message::rehome`]); a larger one is copied only if it shares one.
pub const INLINE_BODY: usize = 64 * 1024;

/// A body re-homed so that it shares no allocation with anything else: frames are slices of
/// a connection's read buffer, and a message kept in a queue would otherwise hold the whole
/// buffer it was read into (with other messages' bytes, long consumed) for as long as it
/// lives. Measured before this: 16 B messages read between 64 KiB ones held 2.2 KB each once
/// the large ones were gone, 1.2 KB after. A body over [`INLINE_BODY`] is copied only if it
/// shares its allocation (a single frame of the read buffer; one joined from several frames
/// has its own).
pub fn own_body(body: Bytes) -> Bytes {
    if body.len() > INLINE_BODY && body.is_unique() {
        body
    } else {
        // An exact-size `Vec` becomes a `Bytes` without a second allocation.
        Bytes::from(body.to_vec())
    }
}

/// Estimated memory of a message held in memory beyond its body and properties (the
/// `Message`, its `Arc`, buffers).
pub const MEM_OVERHEAD: u64 = 256;

impl Message {
    /// A message with these parts (the exchange, routing key and properties are copied into
    /// one allocation), priority 0, not persistent, no expiration, not stored, no BCC keys,
    /// no confirm.
    pub fn new(exchange: &[u8], routing_key: &[u8], properties: &[u8], body: Bytes) -> Message {
        Message {
            head: Bytes::from([exchange, routing_key, properties].concat()),
            exchange_len: exchange.len() as u32,
            routing_key_len: routing_key.len() as u32,
            body,
            priority: 0,
            persistent: false,
            expiration: NONE,
            store_id: NONE,
            bcc: None,
            confirm: None,
        }
    }

    /// Exchange it was published to.
    pub fn exchange(&self) -> &[u8] {
        &self.head[..self.exchange_len as usize]
    }

    /// Routing key it was published with.
    pub fn routing_key(&self) -> &[u8] {
        let x = self.exchange_len as usize;
        &self.head[x..x + self.routing_key_len as usize]
    }

    /// Raw content-header properties (flags + list), forwarded byte for byte.
    pub fn properties(&self) -> &[u8] {
        &self.head[(self.exchange_len + self.routing_key_len) as usize..]
    }

    /// Replace the exchange and routing key (dead-lettering, shovels).
    pub fn set_route(&mut self, exchange: &[u8], routing_key: &[u8]) {
        let props = self.properties();
        self.head = Bytes::from([exchange, routing_key, props].concat());
        self.exchange_len = exchange.len() as u32;
        self.routing_key_len = routing_key.len() as u32;
    }

    /// Replace the raw properties.
    pub fn set_properties(&mut self, properties: &[u8]) {
        let route = &self.head[..(self.exchange_len + self.routing_key_len) as usize];
        self.head = Bytes::from([route, properties].concat());
    }

    /// `expiration` in ms, validated at publish.
    pub fn expiration(&self) -> Option<u64> {
        (self.expiration != NONE).then_some(self.expiration)
    }

    /// Set or clear `expiration` (ms).
    pub fn set_expiration(&mut self, ms: Option<u64>) {
        self.expiration = ms.unwrap_or(NONE);
    }

    /// Location of its publish record in the message log, when stored.
    pub fn store_id(&self) -> Option<u64> {
        (self.store_id != NONE).then_some(self.store_id)
    }

    /// Set or clear its location in the message log.
    pub fn set_store_id(&mut self, id: Option<u64>) {
        self.store_id = id.unwrap_or(NONE);
    }

    /// BCC routing keys.
    pub fn bcc(&self) -> &[Bytes] {
        self.bcc.as_deref().map_or(&[], |v| &v[..])
    }

    /// Set the BCC routing keys.
    pub fn set_bcc(&mut self, keys: Vec<Bytes>) {
        self.bcc = (!keys.is_empty()).then(|| Box::new(keys));
    }

    /// Give the message's body an allocation of its own (see [`own_body`]; the rest has one
    /// already): done at publish for a message that may stay in a queue (one of its queues
    /// has no consumer, or it is delayed).
    pub fn rehome(&mut self) {
        self.body = own_body(std::mem::take(&mut self.body));
    }

    /// Estimated memory this message holds (paging budget, memory alarm).
    pub fn memory_cost(&self) -> u64 {
        self.body.len() as u64 + self.properties().len() as u64 + MEM_OVERHEAD
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
        let mut m = Message::new(&exchange, &routing_key, &properties, body);
        m.priority = peek.priority;
        m.set_expiration(peek.expiration());
        m.persistent = true;
        m.set_store_id(Some(id));
        m
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
        let within = |b: &[u8]| {
            let r = read.as_ptr() as usize..read.as_ptr() as usize + read.len();
            !b.is_empty() && r.contains(&(b.as_ptr() as usize))
        };
        let mut m = Message::new(b"amq.direct", b"key", &read[..3], read.slice(100..116));
        m.rehome();
        assert_eq!(
            (m.exchange(), m.routing_key(), m.properties()),
            (&b"amq.direct"[..], &b"key"[..], &[7u8; 3][..])
        );
        assert_eq!(m.body, read.slice(100..116));
        assert!(![&m.head[..], &m.body[..]].into_iter().any(within));
        // A body over INLINE_BODY keeps an allocation of its own (a joined body)...
        let big = Bytes::from(vec![1u8; INLINE_BODY + 1]);
        let ptr = big.as_ptr();
        assert_eq!(own_body(big).as_ptr(), ptr);
        // ...and is copied out of a shared one (a single frame of the read buffer).
        let read = Bytes::from(vec![2u8; INLINE_BODY + 100]);
        let frame = read.slice(..INLINE_BODY + 1);
        let body = own_body(frame.clone());
        assert_eq!(body, frame);
        let r = read.as_ptr() as usize..read.as_ptr() as usize + read.len();
        assert!(!r.contains(&(body.as_ptr() as usize)));
    }

    #[test]
    fn a_message_is_compact_and_its_parts_read_back() {
        // 112 bytes: with the Arc's two counters, jemalloc's 128-byte size class.
        assert!(std::mem::size_of::<Message>() <= 112);
        let mut m = Message::new(b"x", b"rk", b"\x00\x00", Bytes::from_static(b"body"));
        assert_eq!(
            (m.exchange(), m.routing_key(), m.properties()),
            (&b"x"[..], &b"rk"[..], &b"\x00\x00"[..])
        );
        assert_eq!(
            (m.expiration(), m.store_id(), m.bcc().len()),
            (None, None, 0)
        );
        m.set_expiration(Some(0));
        m.set_store_id(Some(0));
        m.set_bcc(vec![Bytes::from_static(b"b")]);
        assert_eq!(
            (m.expiration(), m.store_id(), m.bcc().len()),
            (Some(0), Some(0), 1)
        );
        m.set_route(b"", b"q");
        m.set_properties(b"\x10\x00\x02");
        assert_eq!(
            (m.exchange(), m.routing_key(), m.properties()),
            (&b""[..], &b"q"[..], &b"\x10\x00\x02"[..])
        );
        m.set_properties(b"");
        assert_eq!((m.routing_key(), m.properties()), (&b"q"[..], &b""[..]));
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
