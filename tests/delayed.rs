//! The `x-delayed-message` exchange (RabbitMQ's delayed message exchange plugin): declare
//! checks with the plugin's texts, delays and due order, routing at delivery time, mandatory
//! as the plugin handles it, dead-lettering into a delayed exchange, and durable delayed
//! messages across restarts, paging and log compaction.

mod common;

use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use futures::StreamExt;
use lapin::Confirmation;
use lapin::options::*;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use std::path::Path;
use std::time::{Duration, Instant};
use warren::Config;
use warren::config::StorageMode;

fn disk_config(dir: &Path) -> Config {
    let mut c = Config::for_tests();
    c.storage.mode = StorageMode::Disk;
    c.data_dir = dir.to_path_buf();
    c
}

async fn open(c: &Connection) -> Channel {
    c.create_channel().await.unwrap()
}

/// `exchange.declare` of an `x-delayed-message` exchange with these arguments.
async fn declare_delayed(
    ch: &Channel,
    x: &str,
    durable: bool,
    args: FieldTable,
) -> lapin::Result<()> {
    ch.exchange_declare(
        x.into(),
        ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions {
            durable,
            ..Default::default()
        },
        args,
    )
    .await
}

fn routing_as(kind: &str) -> FieldTable {
    table(&[("x-delayed-type", s(kind))])
}

/// Declare a durable delayed exchange routing as `kind`, a durable queue bound to it with
/// `key`.
async fn topology(ch: &Channel, x: &str, kind: &str, q: &str, key: &str) {
    declare_delayed(ch, x, true, routing_as(kind))
        .await
        .unwrap();
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        q.into(),
        x.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

fn props(delay: Option<AMQPValue>, persistent: bool) -> BasicProperties {
    let mut p = BasicProperties::default();
    if let Some(d) = delay {
        p = p.with_headers(table(&[("x-delay", d)]));
    }
    if persistent {
        p = p.with_delivery_mode(2);
    }
    p
}

async fn publish(ch: &Channel, x: &str, key: &str, body: &str, p: BasicProperties) {
    ch.basic_publish(
        x.into(),
        key.into(),
        BasicPublishOptions::default(),
        body.as_bytes(),
        p,
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// Consume `n` messages from `q`: (body, when it arrived, its `x-delay` header).
async fn receive(ch: &Channel, q: &str, n: usize) -> Vec<(String, Instant, Option<AMQPValue>)> {
    let mut consumer = ch
        .basic_consume(
            q.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("a delayed message arrives")
            .unwrap()
            .unwrap();
        let delay = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delay").cloned());
        out.push((
            String::from_utf8(d.data.clone()).unwrap(),
            Instant::now(),
            delay,
        ));
    }
    out
}

#[tokio::test]
async fn declare_checks_the_delayed_type_with_the_plugins_texts() {
    let b = start().await;
    let cases: &[(FieldTable, u16, &str)] = &[
        (
            FieldTable::default(),
            406,
            "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type",
        ),
        (
            table(&[("x-delayed-type", AMQPValue::LongInt(1))]),
            406,
            "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type",
        ),
        (
            table(&[("x-delayed-type", s("x-delayed-message"))]),
            406,
            "PRECONDITION_FAILED - Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'",
        ),
        (
            table(&[("x-delayed-type", s("nope"))]),
            503,
            "COMMAND_INVALID - invalid exchange type 'nope'",
        ),
    ];
    for (args, code, text) in cases {
        // 503 is a connection error: a connection per case.
        let c = lapin_connect(&b).await;
        let ch = open(&c).await;
        let e = declare_delayed(&ch, "dx", false, args.clone())
            .await
            .unwrap_err();
        assert_eq!(amqp_error(&e), (*code, text.to_string()));
    }
    // A valid one, redeclared equivalently; it lists with its type.
    let c = lapin_connect(&b).await;
    let ch = open(&c).await;
    for _ in 0..2 {
        declare_delayed(&ch, "dx", false, routing_as("topic"))
            .await
            .unwrap();
    }
    let x = b.state().vhost("/").unwrap().exchange("dx").unwrap();
    assert_eq!(x.def.kind.as_str(), "x-delayed-message");
    assert!(x.is_delayed());
}

#[tokio::test]
async fn messages_wait_for_their_delay_and_come_out_in_due_order() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = open(&c).await;
    topology(&ch, "dx", "direct", "dq", "k").await;
    let t0 = Instant::now();
    publish(
        &ch,
        "dx",
        "k",
        "late",
        props(Some(AMQPValue::LongInt(600)), false),
    )
    .await;
    publish(&ch, "dx", "k", "early", props(Some(s("300")), false)).await;
    // No delay: absent, zero, negative, or not a number. Routed at once, header unchanged.
    publish(&ch, "dx", "k", "none", props(None, false)).await;
    publish(
        &ch,
        "dx",
        "k",
        "zero",
        props(Some(AMQPValue::LongInt(0)), false),
    )
    .await;
    publish(
        &ch,
        "dx",
        "k",
        "negative",
        props(Some(AMQPValue::LongInt(-5)), false),
    )
    .await;
    publish(&ch, "dx", "k", "text", props(Some(s("soon")), false)).await;
    let got = receive(&ch, "dq", 6).await;
    let bodies: Vec<&str> = got.iter().map(|(b, _, _)| b.as_str()).collect();
    assert_eq!(
        bodies,
        ["none", "zero", "negative", "text", "early", "late"]
    );
    // (The undelayed ones come first: routed at once, before anything is due.)
    let waited = |i: usize| got[i].1.duration_since(t0);
    assert!(waited(4) >= Duration::from_millis(300), "{:?}", waited(4));
    assert!(waited(5) >= Duration::from_millis(600), "{:?}", waited(5));
    assert!(waited(5) < Duration::from_secs(5), "{:?}", waited(5));
    // The plugin leaves `x-delay` negated on what it delayed, as a signed 32-bit integer.
    assert_eq!(got[4].2, Some(AMQPValue::LongInt(-300)));
    assert_eq!(got[5].2, Some(AMQPValue::LongInt(-600)));
    assert_eq!(got[2].2, Some(AMQPValue::LongInt(-5)));
    assert_eq!(got[0].2, None);
    assert_eq!(b.state().vhost("/").unwrap().delays.total(), 0);
}

#[tokio::test]
async fn routing_happens_when_the_delay_ends_and_mandatory_returns_at_once() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = open(&c).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_delayed(&ch, "tx", false, routing_as("topic"))
        .await
        .unwrap();
    ch.queue_declare(
        "later".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Mandatory, with no binding yet: the plugin routes a delayed message to no queue at
    // publish time, so it is returned (312 NO_ROUTE) at once, and confirmed.
    let confirm = ch
        .basic_publish(
            "tx".into(),
            "a.b".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"m",
            props(Some(AMQPValue::LongInt(400)), false),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    match confirm {
        Confirmation::Ack(Some(ret)) => {
            assert_eq!(ret.reply_code, 312);
            assert_eq!(ret.reply_text.as_str(), "NO_ROUTE");
            // Returned as published: `x-delay` still positive.
            let h = ret.properties.headers().clone().unwrap();
            assert_eq!(h.inner().get("x-delay"), Some(&AMQPValue::LongInt(400)));
        }
        other => panic!("expected a returned message: {other:?}"),
    }
    // Bound after the publish: the message follows the bindings of its delivery time.
    ch.queue_bind(
        "later".into(),
        "tx".into(),
        "a.*".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let got = receive(&ch, "later", 1).await;
    assert_eq!(got[0].0, "m");
}

#[tokio::test]
async fn a_delayed_exchange_as_dead_letter_exchange_delays_the_retry() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = open(&c).await;
    topology(&ch, "retry-x", "direct", "work", "work").await;
    // "work" dead-letters rejected messages back into the delayed exchange.
    ch.queue_delete("work".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    ch.queue_declare(
        "work".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        table(&[
            ("x-dead-letter-exchange", s("retry-x")),
            ("x-dead-letter-routing-key", s("retry")),
        ]),
    )
    .await
    .unwrap();
    ch.queue_declare(
        "retry".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "retry".into(),
        "retry-x".into(),
        "retry".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(
        &ch,
        "",
        "work",
        "job",
        props(Some(AMQPValue::LongInt(300)), true),
    )
    .await;
    let m = ch
        .basic_get("work".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("the job is in the work queue");
    let t0 = Instant::now();
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let got = receive(&ch, "retry", 1).await;
    assert!(got[0].1.duration_since(t0) >= Duration::from_millis(300));
    assert_eq!(got[0].0, "job");
    assert_eq!(got[0].2, Some(AMQPValue::LongInt(-300)));
}

#[tokio::test]
async fn durable_delayed_messages_survive_a_restart_in_due_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = disk_config(dir.path());
    // A small budget: most of them wait as index entries, their bodies on disk.
    cfg.storage.queue_memory_bytes = 64 * 1024;
    let b = start_with(cfg.clone()).await;
    let c = lapin_connect(&b).await;
    let ch = open(&c).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    topology(&ch, "dx", "fanout", "dq", "").await;
    // A non-durable delayed exchange's messages do not survive.
    declare_delayed(&ch, "gone-x", false, routing_as("fanout"))
        .await
        .unwrap();
    // A durable exchange deleted with messages waiting: they go with it.
    topology(&ch, "deleted-x", "fanout", "dq", "").await;
    publish(
        &ch,
        "deleted-x",
        "",
        "never",
        props(Some(AMQPValue::LongInt(1000)), true),
    )
    .await;
    ch.exchange_delete("deleted-x".into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    let body = "x".repeat(1024);
    // Due in reverse publish order: 1,000 ms + 40 ms × i. Published back to back (confirms
    // awaited at the end), so the order of due times does not depend on publishing speed,
    // unless two consecutive publishes are more than 40 ms apart (10 ms was too little on a
    // loaded CI machine: a stall between two of them swapped their due times, as it should).
    // 100 messages of 1 KiB: most still wait paged out (64 KiB budget).
    let mut confirms = Vec::new();
    for i in (0..100).rev() {
        let d = AMQPValue::LongInt(1000 + 40 * i);
        let c = ch
            .basic_publish(
                "dx".into(),
                "".into(),
                BasicPublishOptions::default(),
                format!("{i}:{body}").as_bytes(),
                props(Some(d), true),
            )
            .await
            .unwrap();
        confirms.push(c);
    }
    for c in confirms {
        c.await.unwrap();
    }
    publish(
        &ch,
        "dx",
        "",
        "transient",
        props(Some(AMQPValue::LongInt(1000)), false),
    )
    .await;
    publish(
        &ch,
        "gone-x",
        "",
        "non-durable exchange",
        props(Some(AMQPValue::LongInt(1000)), true),
    )
    .await;
    assert_eq!(b.state().vhost("/").unwrap().delays.waiting("dx"), 101);
    drop((ch, c));
    b.shutdown(Duration::from_secs(2)).await;
    let b = start_with(cfg).await;
    let v = b.state().vhost("/").unwrap();
    assert_eq!(v.delays.waiting("dx"), 100);
    assert_eq!(v.delays.total(), 100);
    let c = lapin_connect(&b).await;
    let ch = open(&c).await;
    let got = receive(&ch, "dq", 100).await;
    let order: Vec<usize> = got
        .iter()
        .map(|(b, _, _)| b.split(':').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(order, (0..100).collect::<Vec<_>>());
    assert!(got.iter().all(|(b, _, _)| b.ends_with(&body)));
    // Nothing else arrives: not the transient one, nor the deleted exchange's.
    let extra = ch
        .basic_get("dq".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(extra.is_none());
    assert_eq!(v.delays.total(), 0);
}

#[tokio::test]
async fn compaction_moves_a_long_delayed_message_so_old_segments_can_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = disk_config(dir.path());
    cfg.storage.segment_bytes = 1024 * 1024;
    let b = start_with(cfg.clone()).await;
    let c = lapin_connect(&b).await;
    let ch = open(&c).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    topology(&ch, "dx", "direct", "dq", "k").await;
    ch.queue_declare(
        "flow".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Due long after the segments it was written in would otherwise have gone.
    publish(
        &ch,
        "dx",
        "k",
        "patient",
        props(Some(AMQPValue::LongInt(12_000)), true),
    )
    .await;
    // Traffic through segment after segment, consumed at once.
    let chunk = vec![7u8; 64 * 1024];
    for _ in 0..64 {
        ch.basic_publish(
            "".into(),
            "flow".into(),
            BasicPublishOptions::default(),
            &chunk,
            props(None, true),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        let m = ch
            .basic_get("flow".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        assert!(m.is_some());
    }
    let msgs = warren::store::vhost_dir(dir.path(), "/").join("msgs");
    let first = || {
        let mut v: Vec<u64> = std::fs::read_dir(&msgs)
            .unwrap()
            .filter_map(|e| {
                e.unwrap()
                    .file_name()
                    .to_str()?
                    .strip_suffix(".seg")?
                    .parse()
                    .ok()
            })
            .collect();
        v.sort();
        v
    };
    let log = b.state().vhost("/").unwrap().log().unwrap().clone();
    assert!(
        eventually(Duration::from_secs(8), || async {
            log.barrier();
            first().first() > Some(&1) && first().len() <= 3
        })
        .await,
        "segments left: {:?}",
        first()
    );
    drop((ch, c, log));
    b.shutdown(Duration::from_secs(2)).await;
    let b = start_with(cfg).await;
    let c = lapin_connect(&b).await;
    let ch = open(&c).await;
    assert_eq!(b.state().vhost("/").unwrap().delays.waiting("dx"), 1);
    let got = receive(&ch, "dq", 1).await;
    assert_eq!(got[0].0, "patient");
    assert_eq!(got[0].2, Some(AMQPValue::LongInt(-12_000)));
}
