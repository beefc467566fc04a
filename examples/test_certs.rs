//! `cargo run --example test_certs -- DIR [CLIENT_CN]`: the TLS test certificates (a CA, a
//! server certificate for localhost/127.0.0.1, a client certificate, an untrusted one) as PEM
//! files in DIR, for the client suites in integration/ (made at run time with rcgen).

#[path = "../tests/common/certs.rs"]
mod certs;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: test_certs DIR [CLIENT_CN]");
    let cn = args.next().unwrap_or_else(|| "tls-user".into());
    certs::write(std::path::Path::new(&dir), &cn);
}
