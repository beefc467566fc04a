//! The cluster's Raft log file (`data_dir/cluster/raft.log`, src/cluster/log.rs) opened from
//! arbitrary bytes: `LogStore::open` must never panic nor allocate absurdly; it keeps the
//! records up to the first damaged one and cuts the file there, so a second open of the same
//! file finds exactly as much and cuts nothing.
//!
//! Byte 0 bit 0 clear, "raw": the rest is the file. Set, "framed": the rest is a list of
//! `len u16 | body` for which the harness writes each record's header (length, crc32), so the
//! fuzzer reaches the JSON of the records (appended entries, truncations, purges, votes).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut out = Vec::new();
        let mut r = rest;
        while r.len() >= 2 {
            let len = (u16::from_le_bytes([r[0], r[1]]) as usize).min(r.len() - 2);
            let body = &r[2..2 + len];
            out.extend_from_slice(&(len as u32).to_le_bytes());
            out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
            out.extend_from_slice(body);
            r = &r[2 + len..];
        }
        out
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft.log");
    std::fs::write(&path, &file).unwrap();
    if warren::cluster::log::LogStore::open(dir.path()).is_err() {
        return;
    }
    let kept = std::fs::metadata(&path).unwrap().len();
    assert!(kept <= file.len() as u64);
    warren::cluster::log::LogStore::open(dir.path()).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), kept, "a second open cut more");
});
