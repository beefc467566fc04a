//! An embedded broker for Rust test suites: in memory, on ephemeral loopback ports, with the
//! management API, stopped when dropped. See docs/testing.md.

use crate::Config;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// A broker running inside the test process.
///
/// ```
/// # tokio_test_block_on(async {
/// let broker = warren::testing::Broker::start().await.unwrap();
/// let conn = lapin::Connection::connect(&broker.amqp_uri(), Default::default())
///     .await
///     .unwrap();
/// let ch = conn.create_channel().await.unwrap();
/// ch.queue_declare("jobs".into(), Default::default(), Default::default())
///     .await
///     .unwrap();
/// // Between tests: back to the boot state (queues, messages, connections gone).
/// broker.reset().await.unwrap();
/// assert!(broker.state().vhost("/").unwrap().queues.is_empty());
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Runtime::new().unwrap().block_on(f)
/// # }
/// ```
pub struct Broker {
    inner: Option<crate::Broker>,
}

impl Broker {
    /// Start an in-memory broker on 127.0.0.1 with ephemeral AMQP and management ports, user
    /// `guest`/`guest`, vhost `/`.
    pub async fn start() -> io::Result<Broker> {
        Self::start_with(Config::for_tests()).await
    }

    /// Start with a configuration of your own; the AMQP and management listeners are still
    /// bound to ephemeral loopback ports.
    pub async fn start_with(mut config: Config) -> io::Result<Broker> {
        config.amqp.bind = "127.0.0.1".into();
        config.amqp.port = 0;
        config.management.enabled = true;
        config.management.bind = "127.0.0.1".into();
        config.management.port = 0;
        Ok(Broker {
            inner: Some(crate::Broker::start(config).await?),
        })
    }

    fn broker(&self) -> &crate::Broker {
        self.inner.as_ref().expect("running until dropped")
    }

    /// The AMQP URI of the default vhost (`amqp://guest:guest@127.0.0.1:PORT/%2f`).
    pub fn amqp_uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.broker().local_addr())
    }

    /// The AMQP listener's address.
    pub fn amqp_addr(&self) -> SocketAddr {
        self.broker().local_addr()
    }

    /// The management API's base URL (`http://127.0.0.1:PORT`).
    pub fn management_url(&self) -> String {
        format!(
            "http://{}",
            self.broker()
                .management_addr()
                .expect("management is enabled")
        )
    }

    /// The broker's shared state (vhosts, queues, connections) for assertions.
    pub fn state(&self) -> &std::sync::Arc<crate::state::BrokerState> {
        self.broker().state()
    }

    /// Back to the boot state: connections closed (320, "reset"), every queue, exchange,
    /// binding, message, policy and shovel gone (`POST /api/warren/reset`).
    pub async fn reset(&self) -> Result<(), String> {
        crate::management::reset(self.state(), None).await
    }

    /// Stop: connections closed with 320, then the listeners.
    pub async fn stop(mut self) {
        if let Some(b) = self.inner.take() {
            b.shutdown(Duration::from_secs(2)).await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // Not awaited: listeners and connections stop as the runtime runs their tasks.
        if let Some(b) = &self.inner {
            b.state().shutdown.cancel();
        }
    }
}
