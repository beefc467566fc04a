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
}

/// Estimated memory of a message held in memory beyond its body and properties (the
/// `Message`, its `Arc`, buffers).
pub const MEM_OVERHEAD: u64 = 256;

impl Message {
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
        let (priority, expiration) = crate::store::log::peek_properties(&properties);
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
        }
    }
}
