//! Message-log recovery on arbitrary segment files: `store::log::open` must never panic nor
//! allocate absurdly (run with `-rss_limit_mb=2048`), every message it recovers must be
//! readable, and the writer started on the recovered state must not delete a segment that
//! still holds one of them.
//!
//! Segments have no file header: a segment is `NNNNNNNNNNNN.seg` (12-digit number, from 1) in
//! the log directory, a sequence of records, each a self-checking 16-byte header (magic,
//! length, payload crc32, header crc32) and its payload (see src/store/record.rs). Random
//! bytes almost never pass the checksums, so the input has two forms:
//!
//! - byte 0 bit 0 clear, "raw": the rest of the input is segment 1, byte for byte (this is the
//!   form of segments copied from a real broker, and what finds framing and torn-tail bugs);
//! - bit 0 set, "framed": the rest is a list of records `hdr u16 | payload`, for which the
//!   harness writes a valid header, so the fuzzer works on the payloads: `hdr` bit 15 starts
//!   the next segment file before the record, bit 14 spoils the payload checksum, bit 13
//!   writes 3 garbage bytes before the record (damage recovery must step over), bits 0..13
//!   are the payload length. A record cut short by the end of the input is written cut short
//!   (a torn tail). Bits 13 and 14 both set write a skip header instead (records the writer
//!   left out), the payload being the space it covers: recovery must step over it whatever it
//!   holds, and cut a last segment that ends inside it.
//!
//! Byte 0 bits 1..3 pick the segment size the writer rolls at.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;
use warren::message::Message;
use warren::store::log::{self, Options, SyncPolicy};
use warren::store::record;

#[path = "common.rs"]
mod common;

const SEGMENT_SIZES: [u64; 4] = [256, 4096, 65536, log::SEGMENT_SIZE];

fn segment_name(n: u64) -> String {
    format!("{n:012}.seg")
}

/// The segment files an input describes, numbered from 1.
fn segments(data: &[u8]) -> Vec<Vec<u8>> {
    let [mode, rest @ ..] = data else {
        return vec![];
    };
    if mode & 1 == 0 {
        return vec![rest.to_vec()];
    }
    let mut segs = vec![Vec::new()];
    let mut p = rest;
    while p.len() >= 2 {
        let hdr = u16::from_be_bytes([p[0], p[1]]);
        p = &p[2..];
        let len = (hdr & 0x1fff) as usize;
        let payload = &p[..len.min(p.len())];
        p = &p[payload.len()..];
        if hdr & 0x8000 != 0 {
            segs.push(Vec::new());
        }
        let mut crc = crc32fast::hash(payload);
        if hdr & 0x4000 != 0 {
            crc ^= 1;
        }
        let seg = segs.last_mut().unwrap();
        if hdr & 0x6000 == 0x6000 {
            seg.extend_from_slice(&record::skip_header((record::HEADER + len) as u64));
            seg.extend_from_slice(payload);
            continue;
        }
        if hdr & 0x2000 != 0 {
            seg.extend_from_slice(b"\x57\x52\x00");
        }
        seg.extend_from_slice(&record::header(len as u32, crc));
        seg.extend_from_slice(payload);
    }
    segs
}

fuzz_target!(|data: &[u8]| {
    let Some(&mode) = data.first() else {
        return;
    };
    let tmp = common::scratch_dir("log");
    let dir = tmp.path().join("msgs");
    std::fs::create_dir(&dir).unwrap();
    for (i, seg) in segments(data).iter().enumerate() {
        std::fs::write(dir.join(segment_name(i as u64 + 1)), seg).unwrap();
    }
    let opts = Options {
        policy: SyncPolicy::Never,
        interval: Duration::from_millis(1),
        queue_memory: 0,
        segment_size: SEGMENT_SIZES[(mode as usize >> 1) & 3],
        journal_dir: None,
    };
    // Queues whose names end in '!' were deleted (their messages are dropped at recovery).
    let opened = match log::open(&dir, opts, &|q: &str| !q.ends_with('!')) {
        Ok(o) => o,
        Err(_) => return,
    };
    let log = opened.log;
    let check_readable = |when: &str| {
        for (q, msgs) in &opened.queues {
            for m in msgs {
                match log.read(m.loc, m.size) {
                    Ok(msg) => assert_eq!(msg.body.len(), m.size as usize),
                    Err(e) => panic!("{when}: recovered message {:#x} of {q:?}: {e}", m.loc),
                }
            }
        }
    };
    check_readable("after recovery");
    // Keep writing on the recovered state: a publish to a new queue rolls segments when the
    // segment size is small, and the writer then deletes segments it thinks are dead.
    let msg = Message::recovered(
        0,
        Bytes::from_static(b""),
        Bytes::from_static(b"rk"),
        Bytes::from_static(&[0x10, 0, 2]), // delivery-mode 2
        Bytes::from(vec![b'x'; 300]),
    );
    let rec = log::publish_record(0, 0, &[("fuzz.new", false, 0)], &msg);
    let loc = log.append(rec, None).expect("the log takes a publish");
    log.barrier();
    assert!(log.is_written(loc), "append not written after a barrier");
    let again = log.read(loc, 300).expect("read back the appended message");
    assert_eq!(again.body.len(), 300);
    check_readable("after an append");
    log.close();
});
