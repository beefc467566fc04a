//! Admission: what a client can make the broker spend before it has logged in. Handshakes in
//! progress are bounded (`limits.max_handshakes`: a semaphore in the broker state; each costs
//! a task and a small read buffer until `handshake_timeout`); repeated failed logins from one
//! address are answered more and more slowly ([`LoginFailures`]), while successful logins
//! never wait.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Refusals waiting out their delay at once (each holds a socket); past it, refusals are
/// answered at once.
pub(crate) const MAX_DELAYED_REFUSALS: usize = 256;

/// Failed logins from one address within [`FAILURE_WINDOW`] that are answered at once.
const FREE_FAILURES: u32 = 5;
/// Each failure past [`FREE_FAILURES`] waits this much longer before its refusal is sent.
const FAILURE_STEP: Duration = Duration::from_millis(200);
/// The longest a refusal waits (RabbitMQ's own pause before closing a failed handshake).
const MAX_FAILURE_DELAY: Duration = Duration::from_secs(3);
/// Failures older than this are forgotten.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most (a flood from many addresses cannot grow the table).
const MAX_ADDRESSES: usize = 4096;

/// Recent failed logins per peer address.
#[derive(Default)]
pub struct LoginFailures {
    by_addr: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl LoginFailures {
    /// Record a failed login from `ip`; returns how long to wait before refusing it.
    pub fn failed(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        let mut map = self.by_addr.lock();
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, (_, last)| now.duration_since(*last) < FAILURE_WINDOW);
            if map.len() >= MAX_ADDRESSES {
                map.clear();
            }
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= FAILURE_WINDOW {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = now;
        let past = entry.0.saturating_sub(FREE_FAILURES);
        (FAILURE_STEP * past).min(MAX_FAILURE_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_slow_down_per_address_up_to_a_cap() {
        let f = LoginFailures::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let delays: Vec<Duration> = (0..30).map(|_| f.failed(a)).collect();
        assert!(delays[..5].iter().all(|d| d.is_zero()));
        assert_eq!(delays[5], FAILURE_STEP);
        assert_eq!(delays[29], MAX_FAILURE_DELAY);
        // Another address is not slowed by the first one's failures.
        assert!(f.failed(b).is_zero());
    }

    #[test]
    fn the_table_stays_bounded() {
        let f = LoginFailures::default();
        for i in 0..(MAX_ADDRESSES as u32 * 3) {
            f.failed(IpAddr::from(i.to_be_bytes()));
        }
        assert!(f.by_addr.lock().len() <= MAX_ADDRESSES);
    }
}
