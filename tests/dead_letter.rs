//! Dead-lettering, TTL, length limits, delivery limits, priorities and direct reply-to, with a
//! real client. Header layouts follow RabbitMQ 3.10 (see integration/python/test_dead_letter.py
//! for the field-by-field comparison recorded from RabbitMQ).

mod common;

use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use std::sync::Arc;
use std::time::Duration;

fn ss(s: &str) -> ShortString {
    s.into()
}

const DEADLINE: Duration = Duration::from_secs(10);

async fn declare(ch: &Channel, q: &str, args: &[(&str, AMQPValue)]) {
    ch.queue_declare(ss(q), Default::default(), table(args))
        .await
        .unwrap();
}

async fn get(ch: &Channel, q: &str) -> Option<lapin::message::BasicGetMessage> {
    ch.basic_get(ss(q), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
}

async fn get_eventually(ch: &Channel, q: &str) -> lapin::message::BasicGetMessage {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(m) = get(ch, q).await {
            return m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing arrived in {q}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn header<'a>(m: &'a lapin::message::BasicGetMessage, k: &str) -> Option<&'a AMQPValue> {
    m.delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(k))
}

fn x_death(m: &lapin::message::BasicGetMessage) -> Vec<FieldTable> {
    match header(m, "x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("{other:?}"),
            })
            .collect(),
        other => panic!("no x-death: {other:?}"),
    }
}

fn field<'a>(t: &'a FieldTable, k: &str) -> &'a AMQPValue {
    t.inner()
        .get(k)
        .unwrap_or_else(|| panic!("x-death has no {k}: {t:?}"))
}

async fn dlx_setup(ch: &Channel, work: &str, dlq: &str, extra: &[(&str, AMQPValue)]) {
    ch.exchange_declare(
        ss("dlx"),
        lapin::ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(ch, dlq, &[]).await;
    ch.queue_bind(
        ss(dlq),
        ss("dlx"),
        ss(""),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = vec![("x-dead-letter-exchange", s("dlx"))];
    args.extend(extra.iter().cloned());
    declare(ch, work, &args).await;
}

#[tokio::test]
async fn rejected_message_is_dead_lettered_with_rabbitmq_headers() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    dlx_setup(&ch, "work", "dlq", &[]).await;
    let props = BasicProperties::default()
        .with_expiration(ss("60000"))
        .with_headers(table(&[("k", s("v"))]));
    ch.basic_publish(ss(""), ss("work"), Default::default(), b"m", props)
        .await
        .unwrap();
    let m = ch
        .basic_get(ss("work"), Default::default())
        .await
        .unwrap()
        .unwrap();
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let d = get_eventually(&ch, "dlq").await;
    assert_eq!(d.delivery.data, b"m");
    assert_eq!(d.delivery.exchange.as_str(), "dlx");
    assert_eq!(d.delivery.routing_key.as_str(), "work");
    assert!(
        d.delivery.properties.expiration().is_none(),
        "expiration moves into x-death"
    );
    let deaths = x_death(&d);
    assert_eq!(deaths.len(), 1);
    let t = &deaths[0];
    assert_eq!(field(t, "count"), &AMQPValue::LongLongInt(1));
    assert_eq!(field(t, "reason"), &s("rejected"));
    assert_eq!(field(t, "queue"), &s("work"));
    assert_eq!(field(t, "exchange"), &s(""));
    assert_eq!(
        field(t, "routing-keys"),
        &AMQPValue::FieldArray(vec![s("work")].into())
    );
    assert_eq!(field(t, "original-expiration"), &s("60000"));
    assert!(matches!(field(t, "time"), AMQPValue::Timestamp(_)));
    assert_eq!(t.inner().len(), 7, "{t:?}");
    assert_eq!(header(&d, "x-first-death-reason"), Some(&s("rejected")));
    assert_eq!(header(&d, "x-first-death-queue"), Some(&s("work")));
    assert_eq!(header(&d, "x-first-death-exchange"), Some(&s("")));
    assert_eq!(header(&d, "x-last-death-reason"), Some(&s("rejected")));
    assert_eq!(header(&d, "k"), Some(&s("v")));
}

#[tokio::test]
async fn dead_letter_routing_key_and_count_merging() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    ch.exchange_declare(
        ss("dlx2"),
        lapin::ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(
        &ch,
        "w2",
        &[
            ("x-dead-letter-exchange", s("dlx2")),
            ("x-dead-letter-routing-key", s("back")),
        ],
    )
    .await;
    // Rejected messages come back to w2 itself through dlx2 ("back" is bound to w2).
    ch.queue_bind(
        ss("w2"),
        ss("dlx2"),
        ss("back"),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        ss(""),
        ss("w2"),
        Default::default(),
        b"loop",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    for round in 1..=3i64 {
        let m = ch
            .basic_get(ss("w2"), Default::default())
            .await
            .unwrap()
            .expect("message back");
        if round > 1 {
            let deaths = x_death(&m);
            assert_eq!(deaths.len(), 1, "merged per (queue, reason)");
            assert_eq!(
                field(&deaths[0], "count"),
                &AMQPValue::LongLongInt(round - 1)
            );
            assert_eq!(m.delivery.routing_key.as_str(), "back");
        }
        m.delivery
            .reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn ttl_expires_to_the_dead_letter_exchange() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    dlx_setup(
        &ch,
        "ttlq",
        "ttl-dlq",
        &[("x-message-ttl", AMQPValue::LongInt(100))],
    )
    .await;
    ch.basic_publish(
        ss(""),
        ss("ttlq"),
        Default::default(),
        b"old",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    // Per-message expiration: the smaller wins.
    let quick = BasicProperties::default().with_expiration(ss("10"));
    ch.basic_publish(ss(""), ss("ttlq"), Default::default(), b"quick", quick)
        .await
        .unwrap();
    let d = get_eventually(&ch, "ttl-dlq").await;
    assert_eq!(d.delivery.data, b"old");
    assert_eq!(field(&x_death(&d)[0], "reason"), &s("expired"));
    let d = get_eventually(&ch, "ttl-dlq").await;
    assert_eq!(d.delivery.data, b"quick");
    assert_eq!(field(&x_death(&d)[0], "original-expiration"), &s("10"));
    assert!(
        get(&ch, "ttlq").await.is_none(),
        "expired messages are never delivered"
    );
}

#[tokio::test]
async fn invalid_expiration_is_406() {
    let b = start().await;
    let mut r = Raw::open(&b).await;
    for (i, (exp, text)) in [
        (
            "abc",
            "PRECONDITION_FAILED - invalid expiration 'abc': no_integer",
        ),
        (
            "-1",
            "PRECONDITION_FAILED - invalid expiration '-1': {value_negative,-1}",
        ),
        (
            "1.5",
            "PRECONDITION_FAILED - invalid expiration '1.5': {leftover_string,\".5\"}",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let ch = i as u16 + 1;
        r.open_channel(ch).await;
        // publish with properties: expiration only (flag bit 8)
        let mut args = vec![0, 0];
        args.extend_from_slice(&shortstr(b""));
        args.extend_from_slice(&shortstr(b"x"));
        args.push(0);
        let mut bytes = raw_method(ch, 60, 40, &args);
        let mut p = vec![0, 60, 0, 0];
        p.extend_from_slice(&0u64.to_be_bytes());
        p.extend_from_slice(&0x0100u16.to_be_bytes());
        p.extend_from_slice(&shortstr(exp.as_bytes()));
        bytes.extend_from_slice(&raw_frame(2, ch, &p));
        r.send(&bytes).await;
        assert_eq!(
            r.expect_channel_close(ch).await,
            (406, text.to_string(), 60, 40)
        );
    }
}

#[tokio::test]
async fn a_million_expiring_messages_go_without_a_consumer_or_spinning() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    declare(
        &ch,
        "million",
        &[("x-message-ttl", AMQPValue::LongInt(1000))],
    )
    .await;
    // Enqueue in-process (a client would take longer than the TTL in a debug build).
    let q = b.state().vhost("/").unwrap().queue("million").unwrap();
    let msg = Arc::new(warren::message::Message::new(
        b"",
        b"million",
        &[0, 0],
        bytes::Bytes::from_static(b"0123456789abcdef"),
    ));
    for _ in 0..1_000_000 {
        q.publish(msg.clone());
    }
    assert!(q.message_count() > 0);
    let cpu_before = cpu_time();
    let wall = std::time::Instant::now();
    assert!(eventually(Duration::from_secs(20), || async { q.message_count() == 0 }).await);
    let idle = cpu_time() - cpu_before;
    // The expiry task sleeps until the head's deadline, then drops in batches: the process
    // uses far less CPU than the wall time it waited (no polling loop).
    assert!(
        idle < wall.elapsed().mul_f64(0.9),
        "cpu {idle:?} over {:?}",
        wall.elapsed()
    );
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit(") ").next().unwrap().split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[tokio::test]
async fn max_length_drop_head_and_reject_publish() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    dlx_setup(
        &ch,
        "short",
        "short-dlq",
        &[("x-max-length", AMQPValue::LongInt(2))],
    )
    .await;
    for i in 0..4 {
        ch.basic_publish(
            ss(""),
            ss("short"),
            Default::default(),
            format!("{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    assert_eq!(get(&ch, "short").await.unwrap().delivery.data, b"2");
    let d = get_eventually(&ch, "short-dlq").await;
    assert_eq!(
        (d.delivery.data.as_slice(), field(&x_death(&d)[0], "reason")),
        (&b"0"[..], &s("maxlen"))
    );
    // reject-publish: the refused message is nacked to a confirming publisher.
    declare(
        &ch,
        "full",
        &[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish")),
        ],
    )
    .await;
    ch.confirm_select(Default::default()).await.unwrap();
    let first = ch
        .basic_publish(
            ss(""),
            ss("full"),
            Default::default(),
            b"a",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let second = ch
        .basic_publish(
            ss(""),
            ss("full"),
            Default::default(),
            b"b",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    assert!(first.await.unwrap().is_ack());
    assert!(second.await.unwrap().is_nack());
    // max-length-bytes
    declare(
        &ch,
        "bytes",
        &[("x-max-length-bytes", AMQPValue::LongInt(10))],
    )
    .await;
    for body in [&b"12345"[..], b"67890", b"abcde"] {
        ch.basic_publish(
            ss(""),
            ss("bytes"),
            Default::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    assert_eq!(get(&ch, "bytes").await.unwrap().delivery.data, b"67890");
}

#[tokio::test]
async fn delivery_limit_dead_letters_after_n_redeliveries() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    dlx_setup(
        &ch,
        "poison",
        "poison-dlq",
        &[("x-delivery-limit", AMQPValue::LongInt(3))],
    )
    .await;
    ch.basic_publish(
        ss(""),
        ss("poison"),
        Default::default(),
        b"bad",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let cch = c.create_channel().await.unwrap();
    let mut cons = cch
        .basic_consume(
            ss("poison"),
            ss("t"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut counts = Vec::new();
    for _ in 0..4 {
        let d = tokio::time::timeout(DEADLINE, cons.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        counts.push(
            d.properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-delivery-count").cloned()),
        );
        d.nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .unwrap();
    }
    assert_eq!(
        counts,
        vec![
            None,
            Some(AMQPValue::LongLongInt(1)),
            Some(AMQPValue::LongLongInt(2)),
            Some(AMQPValue::LongLongInt(3))
        ]
    );
    let d = get_eventually(&ch, "poison-dlq").await;
    assert_eq!(field(&x_death(&d)[0], "reason"), &s("delivery_limit"));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), cons.next())
            .await
            .is_err(),
        "no 5th delivery"
    );
}

#[tokio::test]
async fn retry_pattern_three_rounds_then_park() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    // work -(reject)-> retry-x -> retry (TTL 50) -(expire)-> work-x -> work ; park after 3 rounds.
    for (x, kind) in [
        ("retry-x", lapin::ExchangeKind::Fanout),
        ("work-x", lapin::ExchangeKind::Fanout),
    ] {
        ch.exchange_declare(ss(x), kind, Default::default(), FieldTable::default())
            .await
            .unwrap();
    }
    declare(&ch, "jobs", &[("x-dead-letter-exchange", s("retry-x"))]).await;
    declare(
        &ch,
        "retry",
        &[
            ("x-dead-letter-exchange", s("work-x")),
            ("x-message-ttl", AMQPValue::LongInt(50)),
        ],
    )
    .await;
    declare(&ch, "parked", &[]).await;
    ch.queue_bind(
        ss("retry"),
        ss("retry-x"),
        ss(""),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        ss("jobs"),
        ss("work-x"),
        ss(""),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        ss(""),
        ss("jobs"),
        Default::default(),
        b"job",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let mut rounds = 0;
    loop {
        let m = ch.basic_get(ss("jobs"), Default::default()).await.unwrap();
        let Some(m) = m else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let rejected = match header(&m, "x-death") {
            None => 0,
            Some(_) => x_death(&m)
                .iter()
                .find(|t| field(t, "queue") == &s("jobs") && field(t, "reason") == &s("rejected"))
                .map(|t| match field(t, "count") {
                    AMQPValue::LongLongInt(n) => *n,
                    other => panic!("{other:?}"),
                })
                .unwrap_or(0),
        };
        assert_eq!(rejected, rounds);
        if rounds == 3 {
            ch.basic_publish(
                ss(""),
                ss("parked"),
                Default::default(),
                &m.delivery.data,
                BasicProperties::default(),
            )
            .await
            .unwrap();
            m.delivery.ack(Default::default()).await.unwrap();
            break;
        }
        m.delivery
            .reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
        rounds += 1;
    }
    assert_eq!(get_eventually(&ch, "parked").await.delivery.data, b"job");
}

#[tokio::test]
async fn expired_messages_cycling_without_rejection_are_dropped() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    // A queue whose dead letters come straight back to itself on expiry: RabbitMQ drops the
    // message the second time instead of looping forever.
    declare(
        &ch,
        "cyc",
        &[
            ("x-dead-letter-exchange", s("")),
            ("x-message-ttl", AMQPValue::LongInt(20)),
        ],
    )
    .await;
    ch.basic_publish(
        ss(""),
        ss("cyc"),
        Default::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let q = b.state().vhost("/").unwrap().queue("cyc").unwrap();
    assert!(eventually(DEADLINE, || async { q.message_count() == 0 }).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(q.message_count(), 0, "not looping");
}

#[tokio::test]
async fn priority_queue_serves_higher_first() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    declare(&ch, "prio", &[("x-max-priority", AMQPValue::LongInt(5))]).await;
    for (body, p) in [
        ("low1", 1u8),
        ("high1", 5),
        ("none", 0),
        ("low2", 1),
        ("over", 9),
        ("high2", 5),
    ] {
        let props = if body == "none" {
            BasicProperties::default()
        } else {
            BasicProperties::default().with_priority(p)
        };
        ch.basic_publish(
            ss(""),
            ss("prio"),
            Default::default(),
            body.as_bytes(),
            props,
        )
        .await
        .unwrap();
    }
    let mut order = Vec::new();
    while let Some(m) = get(&ch, "prio").await {
        order.push(String::from_utf8(m.delivery.data.clone()).unwrap());
    }
    // Above the maximum counts as the maximum; FIFO within a priority.
    assert_eq!(
        order,
        vec!["high1", "over", "high2", "low1", "low2", "none"]
    );
}

#[tokio::test]
async fn direct_reply_to_rpc() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let server = c.create_channel().await.unwrap();
    declare(&server, "rpc", &[]).await;
    let mut requests = server
        .basic_consume(
            ss("rpc"),
            ss("srv"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let client = c.create_channel().await.unwrap();
    let mut replies = client
        .basic_consume(
            ss("amq.rabbitmq.reply-to"),
            ss("cli"),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let props = BasicProperties::default()
        .with_reply_to(ss("amq.rabbitmq.reply-to"))
        .with_correlation_id(ss("42"));
    client
        .basic_publish(ss(""), ss("rpc"), Default::default(), b"ping", props)
        .await
        .unwrap();
    let req = tokio::time::timeout(DEADLINE, requests.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let reply_to = req.properties.reply_to().clone().unwrap();
    assert!(
        reply_to.as_str().starts_with("amq.rabbitmq.reply-to."),
        "{reply_to}"
    );
    server
        .basic_publish(
            ss(""),
            reply_to,
            Default::default(),
            b"pong",
            BasicProperties::default().with_correlation_id(ss("42")),
        )
        .await
        .unwrap();
    req.ack(Default::default()).await.unwrap();
    let rep = tokio::time::timeout(DEADLINE, replies.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(rep.data, b"pong");
    // Errors as RabbitMQ: replying needs a reply consumer; the consumer must be no-ack.
    // (Raw client: with lapin the channel close can overtake the next call.)
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    let mut args = vec![0, 0];
    args.extend_from_slice(&shortstr(b""));
    args.extend_from_slice(&shortstr(b"rpc"));
    args.push(0);
    let mut bytes = raw_method(1, 60, 40, &args);
    let mut header = vec![0, 60, 0, 0];
    header.extend_from_slice(&1u64.to_be_bytes());
    header.extend_from_slice(&0x0200u16.to_be_bytes()); // reply-to
    header.extend_from_slice(&shortstr(b"amq.rabbitmq.reply-to"));
    bytes.extend_from_slice(&raw_frame(2, 1, &header));
    bytes.extend_from_slice(&raw_frame(3, 1, b"x"));
    r.send(&bytes).await;
    assert_eq!(
        r.expect_channel_close(1).await,
        (
            406,
            "PRECONDITION_FAILED - fast reply consumer does not exist".into(),
            60,
            40
        )
    );
    let other = c.create_channel().await.unwrap();
    let e = other
        .basic_consume(
            ss("amq.rabbitmq.reply-to"),
            ss("x"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (
            406,
            "PRECONDITION_FAILED - reply consumer cannot acknowledge".into()
        )
    );
}
