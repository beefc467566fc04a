//! Test certificates made at run time (rcgen): a CA, a server certificate for localhost and
//! 127.0.0.1, a client certificate (CN `tls-user`) signed by the CA, and one signed by an
//! unrelated CA that the broker must not trust. Written as PEM files into a directory.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::path::Path;

fn ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (Issuer::new(params, key), cert.pem())
}

fn leaf(issuer: &Issuer<'static, KeyPair>, cn: &str, sans: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Write `ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key` (CN `client_cn`) and
/// `untrusted.pem`/`untrusted.key` into `dir`.
pub fn write(dir: &Path, client_cn: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let (issuer, ca_pem) = ca("Warren test CA");
    let (server, server_key) = leaf(&issuer, "localhost", &["localhost", "127.0.0.1"]);
    let (client, client_key) = leaf(&issuer, client_cn, &[]);
    let (other, _) = ca("Some other CA");
    let (untrusted, untrusted_key) = leaf(&other, client_cn, &[]);
    for (name, text) in [
        ("ca.pem", ca_pem),
        ("server.pem", server),
        ("server.key", server_key),
        ("client.pem", client),
        ("client.key", client_key),
        ("untrusted.pem", untrusted),
        ("untrusted.key", untrusted_key),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
}
