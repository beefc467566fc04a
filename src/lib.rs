//! Warren: an AMQP 0-9-1 message broker, a drop-in replacement for RabbitMQ.
//!
//! Data flows socket → [`protocol::codec`] → [`connection`] → [`channel`] → (exchanges, queues)
//! → consumers → socket. The broker is a library: `main.rs` and the tests start it with
//! [`Broker::start`].

#![warn(unreachable_pub)]

// The public surface: what the binary, the tests, the fuzz targets and the load generator
// use (starting a broker, its configuration and state, the codec, the store's formats, the
// topology types). The protocol layers above the vhost are internal.
pub(crate) mod args;
pub(crate) mod auth;
pub mod broker;
pub(crate) mod channel;
pub mod clock;
pub mod cluster;
pub mod config;
pub(crate) mod connection;
pub mod defs;
mod embedded;
pub mod exchange;
pub(crate) mod management;
pub mod message;
pub(crate) mod prometheus;
pub mod protocol;
pub mod queue;
pub mod rabbitmq_env;
pub(crate) mod shovel;
pub mod state;
pub mod stats;
pub mod store;
pub(crate) mod tls;
pub mod tools;
pub mod vhost;

pub use broker::Broker;
pub use config::Config;

/// For test suites: [`testing::Broker`], an embedded broker (in memory, ephemeral ports, reset
/// between tests, stopped on drop); and sans-IO harnesses for Warren's own tests and fuzz
/// targets (not a stable API).
pub mod testing {
    #[doc(hidden)]
    pub use crate::channel::harness::{ChannelHarness, State};
    pub use crate::embedded::Broker;
}
