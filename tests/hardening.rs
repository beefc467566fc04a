//! Hostile input must never crash, stall or exhaust the broker: each test sends what once
//! could, checks RabbitMQ's reply, then checks that the broker still serves a normal client.
//!
//! Every test runs on a multi-threaded runtime, so the broker's connection tasks run on
//! tokio's worker threads with their default 2 MiB stacks (a test on the main thread's 8 MiB
//! stack would hide a stack overflow).

mod common;

use common::*;
use warren::protocol::table::MAX_TABLE_DEPTH;

/// A field table (length first) nesting `depth` tables: `{a: {a: {...}}}`.
fn nested_table(depth: usize) -> Vec<u8> {
    let mut inner: Vec<u8> = Vec::new();
    for _ in 1..depth {
        inner = [&b"\x01aF"[..], &(inner.len() as u32).to_be_bytes(), &inner].concat();
    }
    [&(inner.len() as u32).to_be_bytes()[..], &inner].concat()
}

/// A queue.declare (name `q`, not durable) whose arguments are `args` (a table, length first).
fn queue_declare_with(ch: u16, args: &[u8]) -> Vec<u8> {
    let mut a = vec![0, 0];
    a.extend_from_slice(&shortstr(b"q"));
    a.push(0);
    a.extend_from_slice(args);
    raw_method(ch, 50, 10, &a)
}

/// The reproduction from the hardening issue: a 126 KB `connection.start-ok` whose client
/// properties nest 18,000 tables, sent before authentication. It used to overflow a worker's
/// stack and abort the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_ok_nesting_18000_tables_does_not_crash() {
    let b = start().await;
    let mut r = Raw::connect(&b).await;
    r.send(b"AMQP\x00\x00\x09\x01").await;
    r.expect_method(0, 10, 10).await;
    let mut args = nested_table(18_000);
    args.extend_from_slice(&shortstr(b"PLAIN"));
    args.extend_from_slice(&12u32.to_be_bytes());
    args.extend_from_slice(b"\0guest\0guest");
    args.extend_from_slice(&shortstr(b"en_US"));
    assert!(args.len() > 100_000);
    r.send(&raw_method(0, 10, 11, &args)).await;
    // Before tuning RabbitMQ closes the socket without a close frame.
    r.expect_eof().await;
    assert_still_serving(&b).await;
}

/// The same depth inside the 4 KiB a client may send before tuning: still refused, silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_ok_too_deep_within_the_pre_tune_frame_is_refused() {
    let b = start().await;
    let mut r = Raw::connect(&b).await;
    r.send(b"AMQP\x00\x00\x09\x01").await;
    r.expect_method(0, 10, 10).await;
    let mut args = nested_table(MAX_TABLE_DEPTH + 1);
    args.extend_from_slice(&shortstr(b"PLAIN"));
    args.extend_from_slice(&12u32.to_be_bytes());
    args.extend_from_slice(b"\0guest\0guest");
    args.extend_from_slice(&shortstr(b"en_US"));
    r.send(&raw_method(0, 10, 11, &args)).await;
    r.expect_eof().await;
    assert_still_serving(&b).await;
}

/// After login: method arguments nested 18,000 deep in one 128 KiB frame are an undecodable
/// method (501, connection closed); 100 levels are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_method_arguments_are_a_frame_error() {
    let b = start().await;
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    r.send(&queue_declare_with(1, &nested_table(MAX_TABLE_DEPTH)))
        .await;
    r.expect_method(1, 50, 11).await;
    r.send(&queue_declare_with(1, &nested_table(18_000))).await;
    let (code, text, class, method) = r.expect_connection_close().await;
    assert_eq!((code, class, method), (501, 50, 10));
    assert!(text.starts_with("FRAME_ERROR - cannot decode <<"), "{text}");
    assert_still_serving(&b).await;
}

/// Message headers nested 18,000 deep: refused like undecodable headers, nothing queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_message_headers_are_refused() {
    let b = start().await;
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    r.send(&queue_declare_with(1, &[0, 0, 0, 0])).await;
    r.expect_method(1, 50, 11).await;
    let mut publish = vec![0, 0];
    publish.extend_from_slice(&shortstr(b""));
    publish.extend_from_slice(&shortstr(b"q"));
    publish.push(0);
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&1u64.to_be_bytes());
    header.extend_from_slice(&(1u16 << 13).to_be_bytes());
    header.extend_from_slice(&nested_table(18_000));
    let mut bytes = raw_method(1, 60, 40, &publish);
    bytes.extend_from_slice(&raw_frame(2, 1, &header));
    bytes.extend_from_slice(&raw_frame(3, 1, b"x"));
    r.send(&bytes).await;
    // What RabbitMQ 3.10.8 answers for headers it cannot decode (its channel process
    // crashes): a bare 541 on the connection, 0/0.
    assert_eq!(
        r.expect_connection_close().await,
        (541, "INTERNAL_ERROR".to_string(), 0, 0)
    );
    assert_still_serving(&b).await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "q".into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    // The raw connection's non-exclusive queue outlives it, empty.
    assert_eq!(q.map(|q| q.message_count()).unwrap_or(0), 0);
}

/// AMQPLAIN's response is a field table too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_amqplain_response_is_refused() {
    let b = start().await;
    let mut r = Raw::connect(&b).await;
    r.send(b"AMQP\x00\x00\x09\x01").await;
    r.expect_method(0, 10, 10).await;
    let table = nested_table(MAX_TABLE_DEPTH + 1);
    let mut args = 0u32.to_be_bytes().to_vec(); // empty client properties
    args.extend_from_slice(&shortstr(b"AMQPLAIN"));
    // the response is the table without its length prefix
    args.extend_from_slice(&((table.len() - 4) as u32).to_be_bytes());
    args.extend_from_slice(&table[4..]);
    args.extend_from_slice(&shortstr(b"en_US"));
    r.send(&raw_method(0, 10, 11, &args)).await;
    r.expect_eof().await;
    assert_still_serving(&b).await;
}

/// Dead-lettering does not recurse: a chain of 1,000 queues with a TTL of 0, each
/// dead-lettering into the next, delivers the message to the end of the chain from one
/// publish (it used to take one stack frame group per hop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_zero_dead_letter_chain_of_1000_queues_does_not_overflow() {
    use amq_protocol::types::AMQPValue;
    use lapin::options::QueueDeclareOptions;
    const N: usize = 1000;
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    for i in 0..N {
        let args = table(&[
            ("x-message-ttl", AMQPValue::LongInt(0)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&format!("chain-{}", i + 1))),
        ]);
        ch.queue_declare(
            format!("chain-{i}").as_str().into(),
            QueueDeclareOptions {
                nowait: i + 1 < N,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    }
    ch.queue_declare(
        format!("chain-{N}").as_str().into(),
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "".into(),
        "chain-0".into(),
        Default::default(),
        b"hop",
        Default::default(),
    )
    .await
    .unwrap();
    let end = format!("chain-{N}");
    let arrived = eventually(std::time::Duration::from_secs(20), || async {
        ch.queue_declare(
            end.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .map(|q| q.message_count() == 1)
        .unwrap_or(false)
    })
    .await;
    assert!(arrived, "the message reached the end of the chain");
    assert_still_serving(&b).await;
}

/// A fanout dead-letter exchange bound to 8 queues that expire (TTL 0) into it: every
/// message multiplies at each hop until x-death cycle detection ends each path (about 110,000
/// dead letters from one publish). The publisher's connection does a bounded part inline, the
/// rest runs in a task of its own; other clients keep being served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanout_dead_letter_cycle_does_not_pin_the_broker() {
    use amq_protocol::types::AMQPValue;
    use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
    const K: usize = 8;
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    ch.exchange_declare(
        "fx".into(),
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();
    for i in 0..K {
        let name = format!("cyc-{i}");
        let args = table(&[
            ("x-message-ttl", AMQPValue::LongInt(0)),
            ("x-dead-letter-exchange", s("fx")),
        ]);
        ch.queue_declare(name.as_str().into(), QueueDeclareOptions::default(), args)
            .await
            .unwrap();
        ch.queue_bind(
            name.as_str().into(),
            "fx".into(),
            "".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    }
    ch.basic_publish(
        "".into(),
        "cyc-0".into(),
        Default::default(),
        b"multiply",
        Default::default(),
    )
    .await
    .unwrap();
    // Meanwhile another client is served promptly, round trip after round trip.
    let other = lapin_connect(&b).await;
    let och = other.create_channel().await.unwrap();
    for _ in 0..20 {
        let t0 = std::time::Instant::now();
        och.queue_declare(
            "cyc-0".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "a round trip took {:?}",
            t0.elapsed()
        );
    }
    assert_still_serving(&b).await;
}

/// Start-ok with PLAIN credentials; returns what the broker answered within 10 s.
async fn login(b: &warren::Broker, password: &str) -> (bool, std::time::Duration) {
    use amq_protocol::protocol::{AMQPClass, connection as conn};
    let mut r = Raw::connect(b).await;
    r.send(b"AMQP\x00\x00\x09\x01").await;
    r.expect_method(0, 10, 10).await;
    let t0 = std::time::Instant::now();
    r.send(&start_ok(password)).await;
    let ok = match r.next().await {
        Reply::Frame(amq_protocol::frame::AMQPFrame::Method(
            0,
            AMQPClass::Connection(conn::AMQPMethod::Tune(_)),
        )) => true,
        Reply::Frame(amq_protocol::frame::AMQPFrame::Method(
            0,
            AMQPClass::Connection(conn::AMQPMethod::Close(c)),
        )) => {
            assert_eq!(c.reply_code, 403);
            false
        }
        other => panic!("unexpected {other:?}"),
    };
    (ok, t0.elapsed())
}

/// Repeated failed logins from one address are answered more and more slowly (5 free, then
/// 200 ms more each); a good login from the same address is not slowed (the bounds leave room
/// for a loaded machine: the 8th failure waits at least 600 ms, a 9th would wait 800 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_logins_are_slowed_down_good_ones_are_not() {
    let b = start().await;
    let mut times = Vec::new();
    for _ in 0..8 {
        let (ok, t) = login(&b, "wrong").await;
        assert!(!ok);
        times.push(t);
    }
    assert!(
        times[..5]
            .iter()
            .all(|t| *t < std::time::Duration::from_millis(500)),
        "{times:?}"
    );
    assert!(
        times[7] >= std::time::Duration::from_millis(600),
        "{times:?}"
    );
    let (ok, t) = login(&b, "guest").await;
    assert!(ok);
    assert!(
        t < std::time::Duration::from_millis(500),
        "good login took {t:?}"
    );
}

/// At most `limits.max_handshakes` sockets may be mid-handshake; more are closed at once,
/// and a slot frees when a handshake ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_in_progress_are_bounded() {
    let mut config = warren::Config::for_tests();
    config.limits.max_handshakes = 3;
    let b = start_with(config).await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        let mut r = Raw::connect(&b).await;
        r.send(b"AMQP\x00\x00\x09\x01").await;
        r.expect_method(0, 10, 10).await;
        silent.push(r);
    }
    let mut fourth = Raw::connect(&b).await;
    fourth.send(b"AMQP\x00\x00\x09\x01").await;
    fourth.expect_eof().await;
    drop(silent.pop());
    // The freed slot serves a normal client (the broker notices the close first).
    let served = eventually(std::time::Duration::from_secs(5), || async {
        let mut r = Raw::connect(&b).await;
        r.send(b"AMQP\x00\x00\x09\x01").await;
        matches!(r.next().await, Reply::Frame(_))
    })
    .await;
    assert!(served);
}

/// `connection_max`, as RabbitMQ 3.10.8 applies it: no refusal, the next client waits (its TCP
/// connect completes in the backlog, no connection.start) until a connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_max_holds_new_clients_until_one_closes() {
    let mut config = warren::Config::for_tests();
    config.connection_max = 2;
    let b = start_with(config).await;
    let first = Raw::open(&b).await;
    let _second = Raw::open(&b).await;
    let mut third = Raw::connect(&b).await;
    third.send(b"AMQP\x00\x00\x09\x01").await;
    let waited = tokio::time::timeout(std::time::Duration::from_millis(500), third.next()).await;
    assert!(waited.is_err(), "served past connection_max: {waited:?}");
    drop(first);
    // Once the first is gone the third gets connection.start.
    third.expect_method(0, 10, 10).await;
}

/// Refused logins waiting out their delay do not hold handshake places: with room for 3
/// handshakes, 5 slowed-down refusals in flight still leave a good client served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowed_refusals_do_not_hold_handshake_places() {
    let mut config = warren::Config::for_tests();
    config.limits.max_handshakes = 3;
    let b = std::sync::Arc::new(start_with(config).await);
    for _ in 0..6 {
        assert!(!login(&b, "wrong").await.0);
    }
    let mut waiting = Vec::new();
    for _ in 0..5 {
        let b = b.clone();
        waiting.push(tokio::spawn(async move { login(&b, "wrong").await }));
        // One after the other through the handshake (3 places), all five then waiting out
        // their delays together (the 7th to 11th failures wait 0.4 to 1.2 s).
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (ok, t) = login(&b, "guest").await;
    assert!(ok, "the good client was turned away");
    assert!(t < std::time::Duration::from_millis(300), "took {t:?}");
    for w in waiting {
        let (ok, t) = w.await.unwrap();
        assert!(!ok);
        assert!(t >= std::time::Duration::from_millis(400), "{t:?}");
    }
}
