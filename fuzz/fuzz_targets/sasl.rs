//! SASL responses of `connection.start-ok`: `sasl::parse` must never panic.
//!
//! Input: byte 0 picks the mechanism (PLAIN, AMQPLAIN, or one Warren does not know); the rest
//! is the response.
#![no_main]

use libfuzzer_sys::fuzz_target;

const MECHANISMS: [&str; 3] = ["PLAIN", "AMQPLAIN", "EXTERNAL"];

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let [sel, response @ ..] = data else {
        return;
    };
    let mechanism = MECHANISMS[*sel as usize % MECHANISMS.len()];
    let creds = warren::protocol::sasl::parse(mechanism, response);
    if mechanism == "EXTERNAL" {
        assert!(creds.is_none());
    }
});
