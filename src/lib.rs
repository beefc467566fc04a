//! Warren: an AMQP 0-9-1 message broker, a drop-in replacement for RabbitMQ.
//!
//! Data flows socket → [`protocol::codec`] → [`connection`] → [`channel`] → (exchanges, queues)
//! → consumers → socket. The broker is a library: `main.rs` and the tests start it with
//! [`Broker::start`].

pub mod args;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod config;
pub mod connection;
pub mod defs;
pub mod exchange;
pub mod management;
pub mod message;
pub mod protocol;
pub mod queue;
pub mod state;
pub mod store;
pub mod tls;
pub mod vhost;

pub use broker::Broker;
pub use config::Config;
