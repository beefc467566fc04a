//! The frame layer on arbitrary socket bytes: `FrameCodec` must never panic, whatever the
//! bytes and however they are split across reads, and must not reserve memory for lengths the
//! peer merely claims.
//!
//! Input: byte 0 picks `frame_max` (0 = unlimited, 4096, 131072); byte 1 the read size the
//! stream is delivered in (0: all at once, else 1..=255 bytes per read); the rest is the
//! stream. Decoded method frames and content headers go on to the method and property
//! checks, as the connection would.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use warren::protocol::codec::{Frame, FrameCodec};

const FRAME_MAX: [u32; 3] = [0, 4096, 131072];
/// `codec::RESERVE_STEP` (private): the most the decoder reserves ahead of what arrived.
const RESERVE_STEP: usize = 256 * 1024;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let [sel, step, stream @ ..] = data else {
        return;
    };
    let frame_max = FRAME_MAX[*sel as usize % FRAME_MAX.len()];
    let step = if *step == 0 {
        stream.len().max(1)
    } else {
        *step as usize
    };
    let mut codec = FrameCodec { frame_max };
    let mut buf = BytesMut::new();
    for chunk in stream.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => check(frame, frame_max),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // Memory follows the bytes that arrived, not a length the peer claims.
        assert!(
            buf.capacity() <= 2 * (buf.len() + RESERVE_STEP) + 64 * 1024,
            "capacity {} for {} buffered bytes",
            buf.capacity(),
            buf.len()
        );
    }
    let _ = codec.decode_eof(&mut buf);
});

fn check(frame: Frame, frame_max: u32) {
    let size = match &frame {
        Frame::Method {
            class_id,
            method_id,
            payload,
            ..
        } => {
            let _ = warren::protocol::method::decode(*class_id, *method_id, payload);
            payload.len()
        }
        Frame::Header { properties, .. } => {
            let _ = warren::protocol::table::check_properties(properties);
            properties.len() + 12
        }
        Frame::Body { payload, .. } => payload.len(),
        Frame::Heartbeat { .. } => 0,
    };
    assert!(frame_max == 0 || size <= frame_max as usize);
}
