//! The manual test clock (`testing.clock = "manual"`, `POST /api/warren/clock`): time stands
//! still until advanced, and advancing runs what that much time would, in deadline order.
//! The clock is process-wide, so this binary holds one test that runs its scenarios in turn.

mod common;

use amq_protocol::types::{AMQPValue, FieldTable};
use common::{http_body, table};
use futures::StreamExt;
use lapin::options::*;
use lapin::{BasicProperties, Channel};
use std::time::{Duration, Instant};
use warren::clock;
use warren::config::ClockMode;
use warren::testing::Broker;

const HOUR: u64 = 3_600_000;

async fn advance(b: &Broker, ms: u64) -> serde_json::Value {
    let addr = b
        .management_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let (status, body) = http_body(
        addr,
        "POST",
        "/api/warren/clock",
        Some("guest:guest"),
        Some(&format!("{{\"advance_ms\": {ms}}}")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn declare(ch: &Channel, name: &str, args: FieldTable) {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
}

async fn depth(ch: &Channel, name: &str) -> u32 {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap()
    .message_count()
}

fn long(v: u64) -> AMQPValue {
    AMQPValue::LongLongInt(v as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_clock() {
    let mut config = warren::Config::for_tests();
    config.testing.clock = ClockMode::Manual;
    let b = Broker::start_with(config).await.unwrap();
    assert!(clock::is_manual());
    let c = lapin::Connection::connect(&b.amqp_uri(), Default::default())
        .await
        .unwrap();
    let ch = c.create_channel().await.unwrap();
    let real = Instant::now();

    // Time stands still.
    let (t0, w0) = (clock::now_ms(), clock::wall_ms());
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!((clock::now_ms(), clock::wall_ms()), (t0, w0));

    // A TTL → DLX → retry chain with hour-long TTLs: a → (1 h) → b → (1 h) → c.
    declare(
        &ch,
        "a",
        table(&[
            ("x-message-ttl", long(HOUR)),
            ("x-dead-letter-exchange", common::s("")),
            ("x-dead-letter-routing-key", common::s("b")),
        ]),
    )
    .await;
    declare(
        &ch,
        "b",
        table(&[
            ("x-message-ttl", long(HOUR)),
            ("x-dead-letter-exchange", common::s("")),
            ("x-dead-letter-routing-key", common::s("c")),
        ]),
    )
    .await;
    declare(&ch, "c", FieldTable::default()).await;
    ch.basic_publish(
        "".into(),
        "a".into(),
        BasicPublishOptions::default(),
        b"job",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            depth(&ch, "a").await == 1
        })
        .await
    );
    advance(&b, 59 * 60_000).await;
    assert_eq!((depth(&ch, "a").await, depth(&ch, "c").await), (1, 0));
    // Two hours at once: expired from a at 1 h, from b at 2 h (its TTL counted from its
    // arrival in b), in that order.
    let body = advance(&b, 2 * HOUR).await;
    assert_eq!(body["mode"], "manual");
    assert_eq!((depth(&ch, "a").await, depth(&ch, "b").await), (0, 0));
    let m = ch
        .basic_get("c".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the job went through the chain");
    let deaths = match m
        .delivery
        .properties
        .headers()
        .as_ref()
        .unwrap()
        .inner()
        .get("x-death")
    {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        other => panic!("{other:?}"),
    };
    let time_of = |queue: &str| {
        deaths
            .iter()
            .find_map(|d| match d {
                AMQPValue::FieldTable(t)
                    if t.inner().get("queue") == Some(&AMQPValue::LongString(queue.into())) =>
                {
                    match t.inner().get("time") {
                        Some(AMQPValue::Timestamp(s)) => Some(*s),
                        _ => None,
                    }
                }
                _ => None,
            })
            .unwrap()
    };
    let start = w0 / 1000;
    assert!((time_of("a") as i64 - (start + 3600) as i64).abs() <= 1);
    assert!((time_of("b") as i64 - (start + 7200) as i64).abs() <= 1);

    // A delayed message of a day.
    ch.exchange_declare(
        "later".into(),
        lapin::ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions::default(),
        table(&[("x-delayed-type", common::s("fanout"))]),
    )
    .await
    .unwrap();
    declare(&ch, "tomorrow", FieldTable::default()).await;
    ch.queue_bind(
        "tomorrow".into(),
        "later".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "later".into(),
        "".into(),
        BasicPublishOptions::default(),
        b"reminder",
        BasicProperties::default().with_headers(table(&[("x-delay", long(24 * HOUR))])),
    )
    .await
    .unwrap();
    // A round trip on the same channel: the broker has taken the publish (and read the clock
    // for its due time) before the clock moves. Without it the HTTP advance could overtake the
    // publish frame and the day would be counted from 23 h later.
    assert_eq!(depth(&ch, "tomorrow").await, 0);
    advance(&b, 23 * HOUR).await;
    assert_eq!(depth(&ch, "tomorrow").await, 0);
    advance(&b, HOUR).await;
    assert_eq!(depth(&ch, "tomorrow").await, 1);

    // x-expires: an unused queue goes after its hour.
    declare(&ch, "temp", table(&[("x-expires", long(HOUR))])).await;
    let exists = || b.state().vhost("/").unwrap().queues.contains_key("temp");
    advance(&b, HOUR - 1000).await;
    assert!(exists());
    advance(&b, 2000).await;
    assert!(!exists(), "expired after an hour unused");

    // Consumer timeout: a delivery unacked for 30 minutes of broker time closes its channel.
    let ch = c.create_channel().await.unwrap();
    declare(&ch, "slow", FieldTable::default()).await;
    ch.basic_publish(
        "".into(),
        "slow".into(),
        BasicPublishOptions::default(),
        b"work",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            "slow".into(),
            "".into(),
            BasicConsumeOptions::default(),
            table(&[("x-consumer-timeout", long(30 * 60_000))]),
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.data, b"work");
    advance(&b, 29 * 60_000).await;
    assert!(ch.status().connected());
    advance(&b, 2 * 60_000).await;
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            !ch.status().connected()
        })
        .await,
        "the channel is closed for the ack timeout"
    );

    // All of it (more than a day of broker time) took seconds.
    assert!(
        real.elapsed() < Duration::from_secs(30),
        "{:?}",
        real.elapsed()
    );
    let advanced = 59 * 60_000 + 2 * HOUR + 23 * HOUR + HOUR + (HOUR - 1000) + 2000 + 31 * 60_000;
    assert_eq!(clock::wall_ms() - w0, advanced);
    b.stop().await;
}
