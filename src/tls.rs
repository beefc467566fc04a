//! TLS for the AMQPS listener and the management API (rustls with the ring provider; no
//! OpenSSL): the server certificate chain and key from PEM files, optional client certificate
//! verification against a CA bundle (RabbitMQ's `verify_peer` and `fail_if_no_peer_cert`),
//! TLS 1.2 and 1.3. The verified client certificate's common name is the user name for the
//! `EXTERNAL` SASL mechanism (RabbitMQ's `rabbitmq_auth_mechanism_ssl` with
//! `ssl_cert_login_from = common_name`).

use crate::config::Tls;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

/// Build the acceptor for `tls` (files are read now: a bad file fails the start).
pub(crate) fn acceptor(tls: &Tls) -> io::Result<TlsAcceptor> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("tls.{what}: {e}"))
    };
    let cert_file = tls
        .cert_file
        .as_ref()
        .ok_or_else(|| bad("cert_file", &"required"))?;
    let key_file = tls
        .key_file
        .as_ref()
        .ok_or_else(|| bad("key_file", &"required"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| bad("cert_file", &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("cert_file", &e))?;
    if certs.is_empty() {
        return Err(bad("cert_file", &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| bad("key_file", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("versions", &e))?;
    let builder = if tls.verify_peer {
        let ca = tls
            .ca_file
            .as_ref()
            .ok_or_else(|| bad("ca_file", &"required with verify_peer"))?;
        let roots = roots(ca)?;
        let v =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let v = if tls.fail_if_no_peer_cert {
            v
        } else {
            v.allow_unauthenticated()
        };
        builder.with_client_cert_verifier(v.build().map_err(|e| bad("ca_file", &e))?)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| bad("key_file", &e))?;
    config.alpn_protocols = Vec::new();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The CA certificates of `ca_file`.
fn roots(ca: &std::path::Path) -> io::Result<RootCertStore> {
    let bad = |e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("tls.ca_file: {e}"))
    };
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))? {
        roots.add(c.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    Ok(roots)
}

/// TLS between cluster nodes (`cluster.tls`): mutual, every node presenting its `[tls]`
/// certificate as server and as client, each verified against `ca_file`.
pub(crate) fn cluster(tls: &Tls) -> io::Result<(TlsAcceptor, tokio_rustls::TlsConnector)> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("tls.{what}: {e}"))
    };
    let ca = tls
        .ca_file
        .as_ref()
        .ok_or_else(|| bad("ca_file", &"required with cluster.tls"))?;
    let acceptor = acceptor(&Tls {
        verify_peer: true,
        fail_if_no_peer_cert: true,
        ..tls.clone()
    })?;
    let roots = roots(ca)?;
    // acceptor() checked that both files are there and readable.
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(tls.cert_file.as_ref().unwrap())
            .map_err(|e| bad("cert_file", &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad("cert_file", &e))?;
    let key = PrivateKeyDer::from_pem_file(tls.key_file.as_ref().unwrap())
        .map_err(|e| bad("key_file", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("versions", &e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| bad("key_file", &e))?;
    Ok((acceptor, tokio_rustls::TlsConnector::from(Arc::new(config))))
}

/// The common name of the (verified) client certificate of a TLS connection.
pub(crate) fn peer_common_name(conn: &rustls::ServerConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// A TLS listener for the management API: TCP accepts, and TLS handshakes run concurrently
/// (at most `MAX_PENDING`, each within `timeout`) so a slow client delays no one else.
pub(crate) struct HttpsListener {
    rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

const MAX_PENDING: usize = 256;

impl HttpsListener {
    /// Start accepting on `listener` with `acceptor`; stops when `shutdown` is cancelled.
    pub(crate) fn new(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        timeout: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> io::Result<HttpsListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING));
        tokio::spawn(async move {
            loop {
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    p = pending.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                };
                let (sock, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::error!(error = %e, "management accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(s)) = tokio::time::timeout(timeout, acceptor.accept(sock)).await {
                        let _ = tx.send((s, peer)).await;
                    }
                    drop(permit);
                });
            }
        });
        Ok(HttpsListener { rx, local })
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The acceptor stopped (shutdown): never resolve; graceful shutdown ends serving.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
