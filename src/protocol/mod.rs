//! The AMQP 0-9-1 wire layer: pure, synchronous, no broker state.
//!
//! - [`codec`]: framing (frame header, `frame_max`, frame-end), zero-copy `Bytes` payloads, and
//!   frame serialization into a `BytesMut`.
//! - [`method`]: method payload decoding (fast path for `basic.publish`, amq-protocol otherwise).
//! - [`error`]: [`AmqpError`](error::AmqpError), reply codes and their scope.
//! - [`sasl`]: PLAIN / AMQPLAIN credentials.
//! - [`table`]: the depth and size check run on field tables before amq-protocol parses them.

pub mod codec;
pub mod error;
pub mod method;
pub mod sasl;
pub mod table;

pub use error::{AmqpError, ReplyCode};
