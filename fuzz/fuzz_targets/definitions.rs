//! `definitions.json` as found on disk: `store::load_definitions` must never panic, and what
//! it loads must survive `save_definitions` and load again (the broker rewrites the file on
//! every durable declare or delete, and must be able to start from what it wrote).
//!
//! Input: the file's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren::store::{load_definitions, save_definitions};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let tmp = common::scratch_dir("definitions");
    let (dir, out) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("definitions.json"), data).unwrap();
    let Ok(defs) = load_definitions(&dir) else {
        return;
    };
    let first = serde_json::to_string(&defs).expect("loaded definitions serialize");
    save_definitions(&out, &defs).expect("save definitions");
    let again = load_definitions(&out)
        .unwrap_or_else(|e| panic!("definitions saved by Warren do not load again: {e}"));
    let second = serde_json::to_string(&again).expect("reloaded definitions serialize");
    assert_eq!(first, second, "definitions changed through save and load");
});
