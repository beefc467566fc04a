//! Password hashes as RabbitMQ's internal backend stores them: a 4-byte random salt followed
//! by `digest(salt ++ password)`, base64-encoded, with the digest named by
//! `hashing_algorithm` (`rabbit_password_hashing_sha256`, the default; `_sha512` and `_md5`
//! are accepted on import). Verification compares digests in constant time.

use base64::Engine;
use md5::Md5;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

const SALT_LEN: usize = 4;

/// A password hashing algorithm, by RabbitMQ's module name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hashing {
    /// Salted SHA-256 (RabbitMQ's default since 3.6).
    #[default]
    #[serde(rename = "rabbit_password_hashing_sha256")]
    Sha256,
    /// Salted SHA-512.
    #[serde(rename = "rabbit_password_hashing_sha512")]
    Sha512,
    /// Salted MD5 (RabbitMQ before 3.6).
    #[serde(rename = "rabbit_password_hashing_md5")]
    Md5,
}

impl Hashing {
    /// RabbitMQ's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Hashing::Sha256 => "rabbit_password_hashing_sha256",
            Hashing::Sha512 => "rabbit_password_hashing_sha512",
            Hashing::Md5 => "rabbit_password_hashing_md5",
        }
    }

    /// The algorithm RabbitMQ names `name`.
    pub fn parse(name: &str) -> Option<Hashing> {
        [Hashing::Sha256, Hashing::Sha512, Hashing::Md5]
            .into_iter()
            .find(|h| h.name() == name)
    }

    fn digest(self, salt: &[u8], password: &[u8]) -> Vec<u8> {
        fn run<D: Digest>(salt: &[u8], password: &[u8]) -> Vec<u8> {
            let mut d = D::new();
            d.update(salt);
            d.update(password);
            d.finalize().to_vec()
        }
        match self {
            Hashing::Sha256 => run::<Sha256>(salt, password),
            Hashing::Sha512 => run::<Sha512>(salt, password),
            Hashing::Md5 => run::<Md5>(salt, password),
        }
    }
}

/// A stored password: salt and digest. Empty when the user has no password (it may then log
/// in only by a mechanism that needs none, such as EXTERNAL).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PasswordHash {
    /// The digest algorithm.
    pub algorithm: Hashing,
    bytes: Vec<u8>,
}

impl PasswordHash {
    /// Hash `password` with a fresh random salt (SHA-256, as RabbitMQ does by default).
    pub fn new(password: &str) -> PasswordHash {
        let mut salt = [0u8; SALT_LEN];
        rand::thread_rng().fill_bytes(&mut salt);
        let mut bytes = salt.to_vec();
        bytes.extend(Hashing::Sha256.digest(&salt, password.as_bytes()));
        PasswordHash {
            algorithm: Hashing::Sha256,
            bytes,
        }
    }

    /// No password: no password login succeeds.
    pub fn none() -> PasswordHash {
        PasswordHash::default()
    }

    /// A hash as RabbitMQ exports it (`password_hash`, base64). An empty string is no password.
    pub fn from_base64(algorithm: Hashing, encoded: &str) -> Result<PasswordHash, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| "password_hash is not valid base64".to_string())?;
        if !bytes.is_empty() && bytes.len() <= SALT_LEN {
            return Err("password_hash is too short".into());
        }
        Ok(PasswordHash { algorithm, bytes })
    }

    /// The base64 form RabbitMQ exports.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.bytes)
    }

    /// Whether `password` is the one hashed (constant time in the digest comparison). A blank
    /// password never matches, as RabbitMQ's internal backend refuses blank passwords.
    pub fn verify(&self, password: &[u8]) -> bool {
        if self.bytes.len() <= SALT_LEN || password.is_empty() {
            return false;
        }
        let (salt, expected) = self.bytes.split_at(SALT_LEN);
        let actual = self.algorithm.digest(salt, password);
        actual.len() == expected.len() && bool::from(actual.ct_eq(expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_hashes_exported_by_rabbitmq() {
        // From RabbitMQ 3.10.8: `rabbitmqctl add_user u pw`, then GET /api/users/u.
        let h = PasswordHash::from_base64(
            Hashing::Sha256,
            "SqCulEq8Pz7lqSQp/ubd+CE/wmKrte5Zfw+KEUmiU3TWKl7S",
        )
        .unwrap();
        assert!(h.verify(b"pw"));
        assert!(!h.verify(b"pW"));
        assert!(!h.verify(b""));
    }

    #[test]
    fn new_hashes_round_trip_and_are_salted() {
        let a = PasswordHash::new("secret");
        let b = PasswordHash::new("secret");
        assert_ne!(a.to_base64(), b.to_base64());
        let c = PasswordHash::from_base64(a.algorithm, &a.to_base64()).unwrap();
        assert!(c.verify(b"secret"));
        assert!(!c.verify(b"secreT"));
    }

    #[test]
    fn sha512_and_md5_hashes_verify() {
        for algo in [Hashing::Sha512, Hashing::Md5] {
            let salt = [1u8, 2, 3, 4];
            let mut bytes = salt.to_vec();
            bytes.extend(algo.digest(&salt, b"pw"));
            let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let h = PasswordHash::from_base64(algo, &encoded).unwrap();
            assert!(h.verify(b"pw"));
            assert!(!h.verify(b"px"));
        }
    }

    #[test]
    fn no_password_never_verifies() {
        assert!(!PasswordHash::none().verify(b"anything"));
        assert!(PasswordHash::from_base64(Hashing::Sha256, "").is_ok());
        assert!(PasswordHash::from_base64(Hashing::Sha256, "AAA=").is_err());
        assert!(PasswordHash::from_base64(Hashing::Sha256, "!!").is_err());
    }
}
