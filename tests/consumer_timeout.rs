//! RabbitMQ's consumer timeout: a delivery left unacknowledged past the timeout closes its
//! channel with 406 and its messages go back to the queue, redelivered. Timeouts are made
//! short through configuration and arguments; nothing sleeps through them.

mod common;

use amq_protocol::protocol::{AMQPClass, basic, queue as qu};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use futures::StreamExt;
use lapin::options::*;
use std::time::Duration;
use warren::Config;

const DEADLINE: Duration = Duration::from_secs(10);

fn with_timeout(ms: u64) -> Config {
    let mut c = Config::for_tests();
    c.consumer_timeout = ms;
    c
}

fn text(channel: u16, ms: u64) -> String {
    format!(
        "PRECONDITION_FAILED - delivery acknowledgement on channel {channel} timed out. \
         Timeout value used: {ms} ms. This timeout value can be configured, see consumers doc \
         guide to learn more"
    )
}

fn declare(q: &str, args: FieldTable) -> Vec<u8> {
    method_frame(
        1,
        AMQPClass::Queue(qu::AMQPMethod::Declare(qu::Declare {
            queue: q.into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: args,
        })),
    )
}

fn consume(ch: u16, q: &str, args: FieldTable) -> Vec<u8> {
    method_frame(
        ch,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: q.into(),
            consumer_tag: "".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: args,
        })),
    )
}

/// The broker-wide timeout, with lapin: the hung consumer's channel is closed and the message
/// goes to the other consumer with redelivered=true.
#[tokio::test]
async fn hung_consumer_loses_its_delivery_to_another_lapin() {
    let b = start_with(with_timeout(300)).await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare("work".into(), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let mut hung = ch
        .basic_consume(
            "work".into(),
            "hung".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.basic_publish(
        "".into(),
        "work".into(),
        Default::default(),
        b"job",
        Default::default(),
    )
    .await
    .unwrap();
    let first = tokio::time::timeout(DEADLINE, hung.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!first.redelivered);
    // Never acked: the consumer's stream ends when the broker closes the channel.
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(_)) = hung.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the channel was not closed");
    let c2 = lapin_connect(&b).await;
    let ch2 = c2.create_channel().await.unwrap();
    let mut other = ch2
        .basic_consume(
            "work".into(),
            "other".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let again = tokio::time::timeout(DEADLINE, other.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&again.data[..], b"job");
    assert!(again.redelivered);
    again.ack(BasicAckOptions::default()).await.unwrap();
}

/// The close names the channel and the timeout, as RabbitMQ's does; acked deliveries do not
/// count, only the oldest unacked one.
#[tokio::test]
async fn close_text_is_rabbitmqs_and_acks_keep_a_channel_alive() {
    let b = start_with(with_timeout(1000)).await;
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    r.send(&declare("q", FieldTable::default())).await;
    r.expect_method(1, 50, 11).await;
    r.open_channel(3).await;
    r.send(&consume(3, "q", FieldTable::default())).await;
    r.expect_method(3, 60, 21).await;
    // Ten deliveries acked promptly over more than the timeout (1 s; generous for a loaded
    // machine): the channel stays open.
    let started = std::time::Instant::now();
    for i in 1..=10u64 {
        r.publish(1, "", "q", 0, b"m").await;
        r.wait_method(3, 60, 60).await;
        r.send(&method_frame(
            3,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: i,
                multiple: false,
            })),
        ))
        .await;
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    assert!(started.elapsed() > Duration::from_millis(1000));
    // One left unacked: channel 3 is closed with RabbitMQ's text, class/method 0/0.
    r.publish(1, "", "q", 0, b"late").await;
    assert_eq!(r.wait_channel_close(3).await, (406, text(3, 1000), 0, 0));
}

/// `x-consumer-timeout` on the queue (RabbitMQ 3.12+) overrides the broker's (off here), and
/// applies to `basic.get` too; the consumer's own argument overrides the queue's.
#[tokio::test]
async fn queue_and_consumer_arguments_override_the_broker() {
    let b = start_with(with_timeout(0)).await;
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    let args = table(&[("x-consumer-timeout", AMQPValue::LongInt(200))]);
    r.send(&declare("short", args)).await;
    r.expect_method(1, 50, 11).await;
    r.publish(1, "", "short", 0, b"a").await;
    r.publish(1, "", "short", 0, b"b").await;
    // basic.get on channel 2: timed out by the queue's argument.
    r.open_channel(2).await;
    r.send(&method_frame(
        2,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "short".into(),
            no_ack: false,
        })),
    ))
    .await;
    r.wait_method(2, 60, 71).await;
    assert_eq!(r.wait_channel_close(2).await, (406, text(2, 200), 0, 0));
    // A consumer with its own, longer timeout keeps its delivery past the queue's.
    r.open_channel(4).await;
    let longer = table(&[("x-consumer-timeout", AMQPValue::LongInt(1500))]);
    r.send(&consume(4, "short", longer)).await;
    r.expect_method(4, 60, 21).await;
    r.wait_method(4, 60, 60).await;
    let t0 = std::time::Instant::now();
    assert_eq!(r.wait_channel_close(4).await, (406, text(4, 1500), 0, 0));
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "closed too early"
    );
    // A bad argument is refused as RabbitMQ refuses integer arguments.
    r.open_channel(5).await;
    let bad = table(&[("x-consumer-timeout", AMQPValue::LongInt(-1))]);
    r.send(&consume(5, "short", bad)).await;
    let (code, _, class, method) = r.wait_channel_close(5).await;
    assert_eq!((code, class, method), (406, 60, 20));
}

/// A `consumer-timeout` policy (RabbitMQ 3.12+) times out a queue's deliveries like the
/// argument; with both, the lower wins.
#[tokio::test]
async fn a_consumer_timeout_policy_applies_to_the_queue() {
    let b = start_with(with_timeout(0)).await;
    let v = b.state().vhost("/").unwrap();
    let definition = serde_json::json!({"consumer-timeout": 200});
    v.set_policies(warren::defs::Policies {
        policies: vec![warren::defs::Policy {
            name: "ct".into(),
            pattern: regex::Regex::new("^timed").unwrap(),
            queues: true,
            exchanges: false,
            priority: 0,
            definition: definition.as_object().unwrap().clone(),
        }],
        operator: Vec::new(),
    });
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    // The argument (5 s) is longer: the policy's 200 ms wins.
    let args = table(&[("x-consumer-timeout", AMQPValue::LongInt(5000))]);
    r.send(&declare("timed", args)).await;
    r.expect_method(1, 50, 11).await;
    assert_eq!(v.queue("timed").unwrap().consumer_timeout(), Some(200));
    r.publish(1, "", "timed", 0, b"a").await;
    r.open_channel(2).await;
    r.send(&consume(2, "timed", FieldTable::default())).await;
    r.expect_method(2, 60, 21).await;
    r.wait_method(2, 60, 60).await;
    let t0 = std::time::Instant::now();
    assert_eq!(r.wait_channel_close(2).await, (406, text(2, 200), 0, 0));
    assert!(t0.elapsed() < Duration::from_millis(4000));
}
