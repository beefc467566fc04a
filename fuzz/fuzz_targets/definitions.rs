//! Durable definitions as found on disk: `definitions.json` and the definitions journal.
//! `store::load_definitions` and `store::journal::replay` must never panic, and what they
//! load must survive `save_definitions` and load again (the broker folds the journal into a
//! new snapshot at start, and must be able to start from what it wrote).
//!
//! Input: the bytes of `definitions.json`; or, after a leading `J`, a list of journal changes,
//! each `len u16 | JSON`, which the harness frames as journal records (valid headers, so the
//! fuzzer works on the JSON), replayed over an empty snapshot; a length past the end of the
//! input is written cut short (a torn tail).
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren::store::{journal, load_definitions, record, save_definitions};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let tmp = common::scratch_dir("definitions");
    let (dir, out) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir(&dir).unwrap();
    let defs = if let Some(rest) = data.strip_prefix(b"J") {
        let mut j = Vec::new();
        let mut p = rest;
        while p.len() >= 2 {
            let n = u16::from_be_bytes([p[0], p[1]]) as usize;
            p = &p[2..];
            let json = &p[..n.min(p.len())];
            p = &p[json.len()..];
            let mut rec = record::framed(json);
            if json.len() < n {
                // Cut short: the header promises more than the file holds.
                rec = record::header(n as u32, 0).to_vec();
                rec.extend_from_slice(json);
            }
            j.extend_from_slice(&rec);
        }
        std::fs::write(dir.join(journal::FILE), &j).unwrap();
        let Ok(r) = journal::replay(&dir, Default::default()) else {
            return;
        };
        r.defs
    } else {
        std::fs::write(dir.join("definitions.json"), data).unwrap();
        let Ok(defs) = load_definitions(&dir) else {
            return;
        };
        defs
    };
    let first = serde_json::to_string(&defs).expect("loaded definitions serialize");
    save_definitions(&out, &defs).expect("save definitions");
    let again = load_definitions(&out)
        .unwrap_or_else(|e| panic!("definitions saved by Warren do not load again: {e}"));
    let second = serde_json::to_string(&again).expect("reloaded definitions serialize");
    assert_eq!(first, second, "definitions changed through save and load");
});
