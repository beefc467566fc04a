//! Durability: restart the in-process broker on the same data directory; durable vs transient
//! rules; unacked messages come back redelivered; delivery counts survive; damaged log records
//! are dropped one by one; acked data is reclaimed from disk.

mod common;

use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use lapin::options::*;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use std::path::Path;
use std::time::Duration;
use warren::config::StorageMode;
use warren::{Broker, Config};

fn ss(s: &str) -> ShortString {
    s.into()
}

fn disk_config(dir: &Path) -> Config {
    let mut c = Config::for_tests();
    c.storage.mode = StorageMode::Disk;
    c.data_dir = dir.to_path_buf();
    c
}

async fn restart(b: Broker, dir: &Path) -> Broker {
    b.shutdown(Duration::from_secs(2)).await;
    start_with(disk_config(dir)).await
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn channel(b: &Broker) -> (lapin::Connection, Channel) {
    let c = lapin_connect(b).await;
    let ch = c.create_channel().await.unwrap();
    (c, ch)
}

async fn drain(ch: &Channel, q: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(ss(q), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push((
            String::from_utf8(m.delivery.data.clone()).unwrap(),
            m.delivery.redelivered,
        ));
    }
    out
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let msgs = warren::store::vhost_dir(dir, "/").join("msgs");
    let mut v: Vec<_> = std::fs::read_dir(msgs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn durable_definitions_and_persistent_messages_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_with(disk_config(dir.path())).await;
    {
        let (c, ch) = channel(&b).await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(
            ss("dq"),
            durable,
            table(&[("x-max-length", AMQPValue::LongInt(100))]),
        )
        .await
        .unwrap();
        ch.queue_declare(ss("tq"), Default::default(), FieldTable::default())
            .await
            .unwrap();
        ch.queue_declare(
            ss("xq"),
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.exchange_declare(
            ss("dx"),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.exchange_declare(
            ss("tx"),
            lapin::ExchangeKind::Topic,
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            ss("dq"),
            ss("dx"),
            ss("a.#"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            ss("tq"),
            ss("dx"),
            ss("a.#"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        for (body, props) in [
            ("p1", persistent()),
            ("t1", BasicProperties::default()),
            ("p2", persistent()),
        ] {
            ch.basic_publish(
                ss("dx"),
                ss("a.b"),
                Default::default(),
                body.as_bytes(),
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
        c.close(200, "bye".into()).await.unwrap();
    }
    let b = restart(b, dir.path()).await;
    let (_c, ch) = channel(&b).await;
    // The durable queue keeps its persistent messages only, in order, never delivered.
    assert_eq!(
        drain(&ch, "dq").await,
        vec![("p1".into(), false), ("p2".into(), false)]
    );
    // Its arguments came back too (a redeclare with other arguments is refused).
    let e = ch
        .queue_declare(
            ss("dq"),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_error(&e).0, 406);
    let (_c, ch) = channel(&b).await;
    let v = b.state().vhost("/").unwrap();
    assert!(v.queue("tq").is_err(), "transient queue gone");
    assert!(v.queue("xq").is_err(), "exclusive queues never survive");
    assert!(v.exchange("tx").is_err(), "transient exchange gone");
    // The durable binding survived: routing still works.
    ch.basic_publish(
        ss("dx"),
        ss("a.c"),
        Default::default(),
        b"again",
        persistent(),
    )
    .await
    .unwrap();
    assert_eq!(drain(&ch, "dq").await, vec![("again".into(), false)]);
}

#[tokio::test]
async fn unacked_messages_come_back_redelivered_and_acked_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_with(disk_config(dir.path())).await;
    {
        let (_c, ch) = channel(&b).await;
        ch.queue_declare(
            ss("work"),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        for i in 0..4 {
            ch.basic_publish(
                ss(""),
                ss("work"),
                Default::default(),
                format!("m{i}").as_bytes(),
                persistent(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
        let m0 = ch
            .basic_get(ss("work"), Default::default())
            .await
            .unwrap()
            .unwrap();
        m0.delivery.ack(Default::default()).await.unwrap();
        let _m1 = ch
            .basic_get(ss("work"), Default::default())
            .await
            .unwrap()
            .unwrap(); // never acked
        // Make sure the ack reached the log before the "crash".
        b.state().vhost("/").unwrap().log().unwrap().barrier();
    }
    let b = restart(b, dir.path()).await;
    let (_c, ch) = channel(&b).await;
    assert_eq!(
        drain(&ch, "work").await,
        vec![
            ("m1".into(), true),
            ("m2".into(), false),
            ("m3".into(), false)
        ]
    );
}

#[tokio::test]
async fn delivery_counts_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_with(disk_config(dir.path())).await;
    {
        let (_c, ch) = channel(&b).await;
        ch.queue_declare(
            ss("limited"),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            table(&[("x-delivery-limit", AMQPValue::LongInt(5))]),
        )
        .await
        .unwrap();
        ch.basic_publish(
            ss(""),
            ss("limited"),
            Default::default(),
            b"x",
            persistent(),
        )
        .await
        .unwrap();
        for _ in 0..2 {
            let m = ch
                .basic_get(ss("limited"), Default::default())
                .await
                .unwrap()
                .unwrap();
            m.delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await
                .unwrap();
        }
        // A round trip on the channel: the nacks before it have been handled.
        ch.basic_qos(0, Default::default()).await.unwrap();
        b.state().vhost("/").unwrap().log().unwrap().barrier();
    }
    let b = restart(b, dir.path()).await;
    let (_c, ch) = channel(&b).await;
    let m = ch
        .basic_get(ss("limited"), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    let count = m
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned());
    assert_eq!(count, Some(AMQPValue::LongLongInt(2)));
    assert!(m.delivery.redelivered);
}

#[tokio::test]
async fn damaged_records_are_dropped_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_with(disk_config(dir.path())).await;
    {
        let (_c, ch) = channel(&b).await;
        ch.queue_declare(
            ss("q"),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.confirm_select(Default::default()).await.unwrap();
        for i in 0..5 {
            ch.basic_publish(
                ss(""),
                ss("q"),
                Default::default(),
                format!("message-{i}").as_bytes(),
                persistent(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    }
    b.shutdown(Duration::from_secs(2)).await;
    let seg = segments(dir.path()).pop().unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    // Flip a byte inside the body of the third message: exactly that record is dropped.
    let at = data.windows(9).position(|w| w == b"message-2").unwrap();
    data[at + 3] ^= 0xff;
    // And cut the last record in half, as a crash during the write would.
    let last = data.windows(9).rposition(|w| w == b"message-4").unwrap();
    data.truncate(last + 4);
    std::fs::write(&seg, &data).unwrap();
    let b = start_with(disk_config(dir.path())).await;
    let (_c, ch) = channel(&b).await;
    let got: Vec<String> = drain(&ch, "q").await.into_iter().map(|(m, _)| m).collect();
    assert_eq!(got, vec!["message-0", "message-1", "message-3"]);
    // New writes after recovery are readable after another restart.
    ch.confirm_select(Default::default()).await.unwrap();
    ch.basic_publish(ss(""), ss("q"), Default::default(), b"after", persistent())
        .await
        .unwrap()
        .await
        .unwrap();
    let b = restart(b, dir.path()).await;
    let (_c, ch) = channel(&b).await;
    assert_eq!(drain(&ch, "q").await, vec![("after".into(), false)]);
}

#[tokio::test]
async fn acked_data_is_reclaimed_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_with(disk_config(dir.path())).await;
    let v = b.state().vhost("/").unwrap();
    let (_c, ch) = channel(&b).await;
    ch.queue_declare(
        ss("big"),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let q = v.queue("big").unwrap();
    // 1 GiB in total through the log (in-process, 256 KiB messages), consumed as it goes.
    let body = bytes::Bytes::from(vec![7u8; 256 * 1024]);
    for _ in 0..4096 {
        let msg = warren::message::Message {
            exchange: bytes::Bytes::new(),
            routing_key: bytes::Bytes::from_static(b"big"),
            properties: bytes::Bytes::from_static(&[0x10, 0x00, 2]),
            body: body.clone(),
            priority: 0,
            expiration: None,
            persistent: true,
            store_id: None,
            bcc: Vec::new(),
        };
        v.publish_to(std::slice::from_ref(&q), msg, None);
        let (e, _) = q.get(false).unwrap();
        q.ack(&[e.seq]);
    }
    v.log().unwrap().barrier();
    let size: u64 = segments(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        size < 2 * warren::store::log::SEGMENT_SIZE,
        "{size} bytes left of 1 GiB written"
    );
}
