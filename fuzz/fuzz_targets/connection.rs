//! The whole connection: the handshake, the channel table, content assembly, every method's
//! handler, deliveries, confirms and the close handshakes, driven by frame sequences against a
//! broker running in this process (in memory, loopback, ephemeral port). Not sans-IO yet (the
//! channel state machine needs its connection task): each input is one TCP connection.
//!
//! Input: byte 0 picks the start (< 192: logged in with channel 1 open, as a client would be;
//! else: only the protocol header sent); the rest is written as is, then the write side is
//! shut down so the broker sees EOF after handling everything, and what it answers is read
//! until it closes. A panic anywhere in the broker aborts the process (libFuzzer saves the
//! input); every 256 inputs a normal client must still be served; every 20,000 the broker is
//! restarted, so what inputs declared cannot pile up for a whole run. `WARREN_FUZZ_LOG=FILE`
//! writes the broker's debug log there.
//!
//! Found on its first runs: replies to the frames read in the same turn as a client's EOF were
//! never sent (a half-closing client lost its last replies), and refused logins waiting out
//! their delay held handshake places.
#![no_main]

use amq_protocol::protocol::{AMQPClass, channel as chan, connection as conn};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::Duration;
use warren::protocol::codec::put_method;

#[path = "common.rs"]
mod common;

struct Env {
    rt: tokio::runtime::Runtime,
    broker: Option<warren::Broker>,
    addr: SocketAddr,
    inputs: u64,
}

static ENV: Mutex<Option<Env>> = Mutex::new(None);

fn start(rt: &tokio::runtime::Runtime) -> (warren::Broker, SocketAddr) {
    let mut config = warren::Config::for_tests();
    config.limits.heartbeat = 0;
    config.handshake_timeout = 2;
    config.consumer_timeout = 0;
    let broker = rt
        .block_on(warren::Broker::start(config))
        .expect("broker starts");
    let addr = broker.local_addr();
    (broker, addr)
}

/// Header, start-ok (PLAIN guest/guest), tune-ok, open "/", channel.open 1.
fn login() -> Vec<u8> {
    let mut b = BytesMut::new();
    b.extend_from_slice(b"AMQP\x00\x00\x09\x01");
    let mut caps = FieldTable::default();
    for c in [
        "authentication_failure_close",
        "consumer_cancel_notify",
        "connection.blocked",
    ] {
        caps.insert(c.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    put_method(
        &mut b,
        0,
        AMQPClass::Connection(conn::AMQPMethod::StartOk(conn::StartOk {
            client_properties: props,
            mechanism: "PLAIN".into(),
            response: "\0guest\0guest".into(),
            locale: "en_US".into(),
        })),
    );
    put_method(
        &mut b,
        0,
        AMQPClass::Connection(conn::AMQPMethod::TuneOk(conn::TuneOk {
            channel_max: 2047,
            frame_max: 131072,
            heartbeat: 0,
        })),
    );
    put_method(
        &mut b,
        0,
        AMQPClass::Connection(conn::AMQPMethod::Open(conn::Open {
            virtual_host: "/".into(),
        })),
    );
    put_method(
        &mut b,
        1,
        AMQPClass::Channel(chan::AMQPMethod::Open(chan::Open {})),
    );
    b.to_vec()
}

/// Send `bytes`, half-close, read until the broker closes or is silent for `patience`.
fn exchange(addr: SocketAddr, bytes: &[u8], patience: Duration) -> Vec<u8> {
    let Ok(mut s) = TcpStream::connect(addr) else {
        panic!("the broker does not accept connections");
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(patience));
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = std::time::Instant::now() + patience * 10;
    while std::time::Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.len() < 1 << 20 {
                    out.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let env = guard.get_or_insert_with(|| {
        // libFuzzer's C main does not ignore SIGPIPE as a Rust binary's does: writing to a
        // socket the broker closed would kill the process.
        // SAFETY: setting a signal disposition, before any thread of ours exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        // A panic in any broker task must not be swallowed by tokio: abort, so libFuzzer
        // keeps the input.
        std::panic::set_hook(Box::new(|info| {
            eprintln!("==warren-fuzz== panic: {info}");
            std::process::abort();
        }));
        if let Ok(path) = std::env::var("WARREN_FUZZ_LOG") {
            let file = std::fs::File::create(path).expect("log file");
            tracing_subscriber::fmt()
                .with_env_filter("warren=debug")
                .with_writer(std::sync::Mutex::new(file))
                .with_ansi(false)
                .init();
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (broker, addr) = start(&rt);
        Env {
            rt,
            broker: Some(broker),
            addr,
            inputs: 0,
        }
    });
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = if mode < 192 {
        login()
    } else {
        b"AMQP\x00\x00\x09\x01".to_vec()
    };
    bytes.extend_from_slice(rest);
    exchange(env.addr, &bytes, Duration::from_millis(500));
    env.inputs += 1;
    if env.inputs.is_multiple_of(256) {
        // Still serving: a fresh client logs in and gets channel.open-ok.
        // Patient: the broker may still be busy with what earlier inputs left (expiring
        // messages, a dead-letter cascade), and the machine with other fuzzers.
        let answer = exchange(env.addr, &login(), Duration::from_secs(10));
        assert!(
            answer.windows(4).any(|w| w == [0, 20, 0, 11]),
            "a normal client was not served after {} inputs: {} bytes back: {:?}",
            env.inputs,
            answer.len(),
            &answer[..answer.len().min(400)]
        );
    }
    if env.inputs.is_multiple_of(20_000) {
        if let Some(b) = env.broker.take() {
            env.rt.block_on(b.shutdown(Duration::from_secs(2)));
        }
        let (broker, addr) = start(&env.rt);
        env.broker = Some(broker);
        env.addr = addr;
    }
});
