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
}
