//! A fault-injection proxy for the links between nodes (tests and by hand): one [`Link`] per
//! direction of a pair of nodes listens on its own loopback port and forwards to the target
//! node. A link can be cut (its connections dropped and new ones closed at once: a partition
//! when both directions of a pair are cut), slowed (every chunk held back by a delay), and
//! healed.

use parking_lot::Mutex;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct State {
    cut: AtomicBool,
    delay_ms: AtomicU64,
    /// Cancelled to drop every connection of the link; replaced on each cut.
    conns: Mutex<CancellationToken>,
    stop: CancellationToken,
}

/// One direction of a link between two nodes.
#[derive(Clone)]
pub struct Link {
    addr: SocketAddr,
    state: Arc<State>,
}

impl Link {
    /// Listen on an ephemeral loopback port and forward to `target`.
    pub async fn start(target: SocketAddr) -> io::Result<Link> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            cut: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            conns: Mutex::new(CancellationToken::new()),
            stop: CancellationToken::new(),
        });
        let s = state.clone();
        tokio::spawn(async move {
            loop {
                let sock = tokio::select! {
                    _ = s.stop.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok((sock, _)) => sock,
                        Err(_) => continue,
                    },
                };
                if s.cut.load(Ordering::SeqCst) {
                    drop(sock);
                    continue;
                }
                let token = s.conns.lock().clone();
                let s = s.clone();
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = up.set_nodelay(true);
                    let _ = sock.set_nodelay(true);
                    let (ar, aw) = sock.into_split();
                    let (br, bw) = up.into_split();
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = s.stop.cancelled() => {}
                        _ = pipe(ar, bw, &s) => {}
                        _ = pipe(br, aw, &s) => {}
                    }
                });
            }
        });
        Ok(Link { addr, state })
    }

    /// Where the link listens (dial this instead of the target).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drop the link's connections and refuse new ones until [`Link::heal`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        let old = std::mem::replace(&mut *self.state.conns.lock(), CancellationToken::new());
        old.cancel();
    }

    /// Hold every chunk back by `delay` (zero: none).
    pub fn delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Let connections through again, without delay.
    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
        self.delay(Duration::ZERO);
    }

    /// Stop listening and drop every connection.
    pub fn close(&self) {
        self.state.stop.cancel();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    s: &State,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let d = s.delay_ms.load(Ordering::SeqCst);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        if s.cut.load(Ordering::SeqCst) || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
