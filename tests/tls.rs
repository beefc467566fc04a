//! AMQPS and HTTPS with certificates made at run time: lapin (rustls) connects with a custom
//! CA, with a client certificate and the EXTERNAL mechanism (the user is the certificate's
//! common name), and is refused with a certificate from an untrusted CA; EXTERNAL is offered
//! only to TLS clients with a verified certificate; the management API answers over HTTPS.

mod common;

use common::certs;
use lapin::options::*;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::{Broker, Config};

fn config(dir: &Path, fail_if_no_peer_cert: bool) -> Config {
    let mut cfg = Config::for_tests();
    cfg.amqps.enabled = true;
    cfg.amqps.bind = "127.0.0.1".into();
    cfg.amqps.port = 0;
    cfg.management.enabled = true;
    cfg.management.bind = "127.0.0.1".into();
    cfg.management.port = 0;
    cfg.management.tls = true;
    cfg.tls.cert_file = Some(dir.join("server.pem"));
    cfg.tls.key_file = Some(dir.join("server.key"));
    cfg.tls.ca_file = Some(dir.join("ca.pem"));
    cfg.tls.verify_peer = true;
    cfg.tls.fail_if_no_peer_cert = fail_if_no_peer_cert;
    // The certificate's user: no password, so only EXTERNAL lets it in.
    let mut u = warren::config::User::with_password("tls-user", "x", &["*"]);
    u.password = None;
    cfg.users.push(u);
    cfg
}

fn tls(dir: &Path, identity: Option<&str>) -> OwnedTLSConfig {
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    OwnedTLSConfig {
        identity: identity.map(|name| OwnedIdentity::PKCS8 {
            pem: read(&format!("{name}.pem")),
            key: read(&format!("{name}.key")),
        }),
        cert_chain: Some(String::from_utf8(read("ca.pem")).unwrap()),
    }
}

async fn connect(uri: &str, tls: OwnedTLSConfig) -> lapin::Result<lapin::Connection> {
    lapin::Connection::connect_with_config(
        uri,
        lapin::ConnectionProperties::default(),
        tls,
        lapin::runtime::default_runtime().unwrap(),
    )
    .await
}

async fn round_trip(c: &lapin::Connection) {
    let ch = c.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.basic_publish(
        "".into(),
        q.name().as_str().into(),
        BasicPublishOptions::default(),
        b"over tls",
        Default::default(),
    )
    .await
    .unwrap();
    let got = loop {
        if let Some(m) = ch
            .basic_get(q.name().as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            break m;
        }
    };
    assert_eq!(got.delivery.data, b"over tls");
}

#[tokio::test]
async fn amqps_with_a_custom_ca_a_client_certificate_and_external() {
    let dir = tempfile::tempdir().unwrap();
    certs::write(dir.path(), "tls-user");
    let b = Broker::start(config(dir.path(), false)).await.unwrap();
    let port = b.amqps_addr().unwrap().port();

    // Password login over TLS, without a client certificate (not required here).
    let c = connect(
        &format!("amqps://guest:guest@localhost:{port}/%2f"),
        tls(dir.path(), None),
    )
    .await
    .unwrap();
    round_trip(&c).await;

    // EXTERNAL: the user is the certificate's CN, no password.
    let uri = format!("amqps://localhost:{port}/%2f?auth_mechanism=external");
    let c = connect(&uri, tls(dir.path(), Some("client")))
        .await
        .unwrap();
    round_trip(&c).await;

    // EXTERNAL without a certificate is not offered: refused.
    assert!(connect(&uri, tls(dir.path(), None)).await.is_err());
    // A certificate from another CA fails the TLS handshake.
    assert!(
        connect(&uri, tls(dir.path(), Some("untrusted")))
            .await
            .is_err()
    );
    // The plain listener never offers EXTERNAL.
    let plain = format!(
        "amqp://localhost:{}/%2f?auth_mechanism=external",
        b.local_addr().port()
    );
    assert!(
        lapin::Connection::connect(&plain, lapin::ConnectionProperties::default())
            .await
            .is_err()
    );
    // The broker serves on.
    let c = connect(
        &format!("amqps://guest:guest@localhost:{port}/%2f"),
        tls(dir.path(), None),
    )
    .await
    .unwrap();
    round_trip(&c).await;
    b.shutdown(std::time::Duration::from_secs(2)).await;
}

#[tokio::test]
async fn fail_if_no_peer_cert_refuses_clients_without_one() {
    let dir = tempfile::tempdir().unwrap();
    certs::write(dir.path(), "tls-user");
    let b = Broker::start(config(dir.path(), true)).await.unwrap();
    let port = b.amqps_addr().unwrap().port();
    let uri = format!("amqps://guest:guest@localhost:{port}/%2f");
    assert!(connect(&uri, tls(dir.path(), None)).await.is_err());
    let c = connect(&uri, tls(dir.path(), Some("client")))
        .await
        .unwrap();
    round_trip(&c).await;
    b.shutdown(std::time::Duration::from_secs(2)).await;
}

#[tokio::test]
async fn the_management_api_over_https() {
    let dir = tempfile::tempdir().unwrap();
    certs::write(dir.path(), "tls-user");
    let b = Broker::start(config(dir.path(), false)).await.unwrap();
    let addr = b.management_addr().unwrap();
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    for c in rustls_pki_types::pem::PemObject::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let client = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = connector.connect(name, tcp).await.unwrap();
    s.write_all(
        b"GET /api/whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
          Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(r#""name":"guest""#), "{text}");
    // Plain HTTP on the HTTPS port gets no answer.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /api/whoami HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        plain.read_to_end(&mut buf),
    )
    .await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    b.shutdown(std::time::Duration::from_secs(2)).await;
}
