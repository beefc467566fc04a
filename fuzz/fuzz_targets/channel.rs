//! The channel state machine without a socket (`warren::testing::ChannelHarness`): content
//! assembly, every channel-level method's handler, the close handshake and reopening, deliveries
//! and confirms, over an in-memory broker. Sans-IO, so it runs far more inputs per second than
//! the `connection` target and reaches states that need many frames.
//!
//! Input: a sequence of frames on channel 1, each `[kind][len: u16 BE][payload: len bytes]`;
//! kind % 4 picks method (1), header (2), body (3) or heartbeat (8), and the envelope (type,
//! channel, size, frame-end octet) is written around the payload, so every input is well framed
//! and the fuzzer spends its time on what the frames say. A panic aborts the process.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use warren::protocol::codec::{Frame, FrameCodec};
use std::sync::OnceLock;

#[path = "common.rs"]
mod common;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn frames(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    while data.len() >= 3 {
        let kind = [1u8, 2, 3, 8][(data[0] % 4) as usize];
        let len = (u16::from_be_bytes([data[1], data[2]]) as usize).min(data.len() - 3);
        let payload = &data[3..3 + len];
        out.push(kind);
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out.push(0xCE);
        data = &data[3 + len..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let bytes = frames(data);
    runtime().block_on(async {
        let mut h = warren::testing::ChannelHarness::new();
        h.feed_bytes(&bytes);
        // Whatever the channel wrote must be well-formed frames, and every content header
        // must hold the properties its flags announce (short strings are passed through as
        // bytes, as RabbitMQ does, so they are not checked as UTF-8).
        let mut out = h.take_output();
        let mut codec = FrameCodec { frame_max: 0 };
        while !out.is_empty() {
            match codec.decode(&mut out) {
                Ok(Some(Frame::Header { properties, .. })) => assert!(
                    warren::protocol::table::properties_fit(&properties),
                    "the channel wrote a content header whose properties do not fit"
                ),
                Ok(Some(_)) => {}
                Ok(None) => panic!("the channel wrote a truncated frame"),
                Err(e) => panic!("the channel wrote an invalid frame: {e:?}"),
            }
        }
    });
});
