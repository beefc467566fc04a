//! Method payload decoding on arbitrary bytes: `method::decode` must never panic, and a
//! method that decodes must serialize again.
//!
//! Input: the method frame payload, class id and method id first, exactly as the frame codec
//! hands it over (`decode` takes the ids the codec read from the payload's first 4 bytes; it
//! is never called with ids that differ from them, so neither is it here).
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use warren::protocol::method::{self, Method};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let class_id = u16::from_be_bytes([data[0], data[1]]);
    let method_id = u16::from_be_bytes([data[2], data[3]]);
    let payload = Bytes::copy_from_slice(data);
    if let Ok(Method::Other(m)) = method::decode(class_id, method_id, &payload) {
        // What the broker decodes it can echo (e.g. in tracing) and re-serialize.
        let _ = format!("{m:?}");
        let mut out = BytesMut::new();
        warren::protocol::codec::put_method(&mut out, 1, m);
    }
});
