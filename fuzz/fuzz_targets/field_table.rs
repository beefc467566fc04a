//! Field tables: `table::check_container` and `table::check_properties` must never panic, and
//! whatever they accept must be safe to hand to amq-protocol's recursive parsers — which must
//! then not panic and must stay within a small stack (the point of the depth limit).
//!
//! Input: the bytes of a field table (4-byte length first), read as a table and as an array,
//! and again as raw content-header properties (flags first).
//!
//! The stack bound: the parse of an accepted input runs on a helper thread with a 256 KiB
//! stack; a parse that nests deeper than the check saw overflows it, which libFuzzer reports
//! as a crash ("deadly signal", or ASan's "stack-overflow"). Spawning a thread per input
//! would cost ~20 µs each, so one thread lives for the whole run and inputs are handed to it
//! over a channel; and only inputs holding an 'F' or 'A' byte (the only type letters that
//! nest) go there at all: without one no parse can nest, and they are parsed inline. (Depth
//! 100, the limit, needs less than 128 KiB here, with or without ASan.)
//!
//! Also checked: what the walk refuses as malformed, amq-protocol refuses too (Warren must not
//! refuse a table RabbitMQ clients may send), but for infinite and NaN floats, which Warren
//! refuses on purpose.
#![no_main]

use amq_protocol::protocol::basic::parse_properties;
use amq_protocol::types::parsing::{parse_field_array, parse_field_table};
use libfuzzer_sys::fuzz_target;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Mutex, OnceLock};
use warren::protocol::table::{TableError, check_container, check_properties};

/// Stack of the thread that parses accepted input holding nested containers.
const SMALL_STACK: usize = 256 * 1024;

#[derive(Clone, Copy)]
enum Parse {
    Table,
    Array,
    Properties,
}

fn parse(what: Parse, data: &[u8]) -> bool {
    match what {
        Parse::Table => parse_field_table(data).is_ok(),
        Parse::Array => parse_field_array(data).is_ok(),
        Parse::Properties => parse_properties(data).is_ok(),
    }
}

struct SmallStack {
    jobs: SyncSender<(Parse, Vec<u8>)>,
    done: Receiver<bool>,
}

fn small_stack() -> &'static Mutex<SmallStack> {
    static WORKER: OnceLock<Mutex<SmallStack>> = OnceLock::new();
    WORKER.get_or_init(|| {
        let (jobs, job_rx) = sync_channel::<(Parse, Vec<u8>)>(0);
        let (done_tx, done) = sync_channel(1);
        std::thread::Builder::new()
            .name("parse-on-256k-stack".into())
            .stack_size(SMALL_STACK)
            .spawn(move || {
                handle_segv_on_alt_stack();
                for (what, data) in job_rx {
                    if done_tx.send(parse(what, &data)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn the small-stack parser thread");
        Mutex::new(SmallStack { jobs, done })
    })
}

/// Without a sanitizer, libFuzzer's SIGSEGV handler runs on the faulting thread's stack: an
/// overflow would kill the process before libFuzzer saves the input. So this thread gets an
/// alternate signal stack and the handler `SA_ONSTACK` (ASan sets both up itself).
fn handle_segv_on_alt_stack() {
    const ALT_STACK: usize = 256 * 1024;
    // SAFETY: plain libc calls on zero-initialized structs; the alternate stack is leaked, so
    // it outlives the thread.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut sa) != 0
            || sa.sa_flags & libc::SA_ONSTACK != 0
        {
            return;
        }
        let stack: &'static mut [u8] = Box::leak(vec![0u8; ALT_STACK].into_boxed_slice());
        let ss = libc::stack_t {
            ss_sp: stack.as_mut_ptr().cast(),
            ss_flags: 0,
            ss_size: ALT_STACK,
        };
        if libc::sigaltstack(&ss, std::ptr::null_mut()) == 0 {
            sa.sa_flags |= libc::SA_ONSTACK;
            libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut());
        }
    }
}

/// Parse input a check accepted; on the small stack when it can nest.
fn parse_accepted(what: Parse, data: &[u8]) -> bool {
    if !data.iter().any(|b| *b == b'F' || *b == b'A') {
        return parse(what, data);
    }
    let w = small_stack().lock().unwrap();
    w.jobs.send((what, data.to_vec())).unwrap();
    // A parse that overflowed the stack aborted the process; a parse that panicked closed
    // the channel: report that as the panic it was.
    w.done
        .recv()
        .expect("the amq-protocol parser panicked on input the check accepted")
}

#[path = "common.rs"]
mod common;

/// amq-protocol parses it and every float in it is finite (Warren refuses infinities and NaN
/// on purpose: RabbitMQ cannot decode them, and JSON cannot store them). amq-protocol keeps
/// the last of duplicate keys, so a non-finite value it dropped is looked for in the bytes: a
/// `d` or `f` type letter followed by a non-finite number anywhere counts.
fn parses_with_finite_floats(table: bool, data: &[u8]) -> bool {
    let raw_non_finite = data.windows(9).any(|w| {
        (w[0] == b'd' && !f64::from_be_bytes(w[1..9].try_into().unwrap()).is_finite())
            || (w[0] == b'f' && !f32::from_be_bytes(w[1..5].try_into().unwrap()).is_finite())
    }) || data
        .windows(5)
        .any(|w| w[0] == b'f' && !f32::from_be_bytes(w[1..5].try_into().unwrap()).is_finite());
    if raw_non_finite {
        return false;
    }
    use warren::store::finite;
    if table {
        parse_field_table(data).is_ok_and(|(_, t)| t.inner().values().all(finite))
    } else {
        parse_field_array(data).is_ok_and(|(_, a)| a.as_slice().iter().all(finite))
    }
}

fuzz_target!(|data: &[u8]| {
    for (table, what) in [(true, Parse::Table), (false, Parse::Array)] {
        match check_container(data, 0, table) {
            Ok(end) => {
                assert!(end <= data.len());
                parse_accepted(what, data);
            }
            // The walk stops at the first error; on bounded input the parse cannot blow the
            // main thread's 8 MiB stack, so this runs inline.
            Err(TableError::Malformed) if data.len() <= 16 * 1024 => {
                assert!(
                    !parses_with_finite_floats(table, data),
                    "check refused as malformed a {} that amq-protocol parses",
                    if table { "table" } else { "array" }
                );
            }
            Err(_) => {}
        }
    }
    if check_properties(data).is_ok() {
        parse_accepted(Parse::Properties, data);
    }
});
