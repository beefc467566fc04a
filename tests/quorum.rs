//! Quorum queues keep their contract on one node (with lapin): every message is stored
//! whatever its delivery mode, declarations follow RabbitMQ's rules and texts (recorded from
//! 3.10.8), `x-delivery-count` as RabbitMQ sets it, and RabbitMQ 4.x's default delivery limit
//! of 20.

mod common;

use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use lapin::BasicProperties;
use lapin::options::*;
use std::path::Path;
use std::time::Duration;
use warren::Config;
use warren::config::StorageMode;

fn disk_config(dir: &Path) -> Config {
    let mut c = Config::for_tests();
    c.storage.mode = StorageMode::Disk;
    c.data_dir = dir.to_path_buf();
    c
}

fn quorum_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut kv = vec![("x-queue-type", s("quorum"))];
    kv.extend(extra.iter().cloned());
    table(&kv)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Declare on a fresh channel; the error's (code, text) if refused.
async fn declare(
    c: &lapin::Connection,
    name: &str,
    opts: QueueDeclareOptions,
    args: FieldTable,
) -> DeclareReply {
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare(name.into(), opts, args)
        .await
        .map(|_| ())
        .map_err(|e| amqp_error(&e))
}

type DeclareReply = Result<(), (u16, String)>;

fn refused(text: &str) -> DeclareReply {
    Err((406, format!("PRECONDITION_FAILED - {text}")))
}

#[tokio::test]
async fn declarations_follow_rabbitmqs_rules() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let q = |opts, extra: &[(&str, AMQPValue)]| (opts, quorum_args(extra));
    let cases: Vec<(&str, (QueueDeclareOptions, FieldTable), DeclareReply)> = vec![
        (
            "qq.1",
            q(QueueDeclareOptions::default(), &[]),
            refused("invalid property 'non-durable' for queue 'qq.1' in vhost '/'"),
        ),
        (
            "qq.2",
            q(
                QueueDeclareOptions {
                    durable: true,
                    exclusive: true,
                    ..Default::default()
                },
                &[],
            ),
            refused("invalid property 'exclusive-owner' for queue 'qq.2' in vhost '/'"),
        ),
        (
            "qq.3",
            q(
                QueueDeclareOptions {
                    auto_delete: true,
                    exclusive: true,
                    ..Default::default()
                },
                &[],
            ),
            refused("invalid property 'auto-delete' for queue 'qq.3' in vhost '/'"),
        ),
        (
            "qq.5",
            q(
                QueueDeclareOptions::default(),
                &[
                    ("x-queue-mode", s("lazy")),
                    ("x-max-priority", AMQPValue::LongInt(10)),
                ],
            ),
            refused(
                "invalid arg 'x-max-priority' for queue 'qq.5' in vhost '/' of queue type rabbit_quorum_queue",
            ),
        ),
        (
            "qq.27",
            q(
                durable(),
                &[("x-quorum-initial-group-size", AMQPValue::LongInt(0))],
            ),
            refused(
                "invalid arg 'x-quorum-initial-group-size' for queue 'qq.27' in vhost '/': {value_zero,0}",
            ),
        ),
        (
            "qq.22",
            q(durable(), &[("x-dead-letter-strategy", s("bogus"))]),
            refused(
                "invalid arg 'x-dead-letter-strategy' for queue 'qq.22' in vhost '/': invalid_dlx_strategy",
            ),
        ),
        (
            "qq.ok",
            q(
                durable(),
                &[
                    ("x-message-ttl", AMQPValue::LongInt(1000)),
                    ("x-overflow", s("reject-publish")),
                    ("x-dead-letter-strategy", s("at-least-once")),
                    ("x-quorum-initial-group-size", AMQPValue::LongInt(3)),
                    ("x-delivery-limit", AMQPValue::LongInt(-1)),
                ],
            ),
            Ok(()),
        ),
        (
            "",
            q(durable(), &[]),
            refused("Cannot declare a server-named queue for type rabbit_quorum_queue"),
        ),
    ];
    for (name, (opts, args), want) in cases {
        assert_eq!(declare(&c, name, opts, args).await, want, "{name}");
    }
    // Redeclaring: `classic` and none are the same; other types and limits differ.
    assert_eq!(
        declare(&c, "qq.ok", durable(), quorum_args(&[])).await,
        refused(
            "inequivalent arg 'x-delivery-limit' for queue 'qq.ok' in vhost '/': received none but current is the value '-1' of type 'signedint'"
        )
    );
    declare(&c, "qq.base", durable(), quorum_args(&[]))
        .await
        .unwrap();
    assert_eq!(
        declare(
            &c,
            "qq.base",
            durable(),
            table(&[("x-queue-type", s("classic"))])
        )
        .await,
        refused(
            "inequivalent arg 'x-queue-type' for queue 'qq.base' in vhost '/': received 'classic' but current is 'quorum'"
        )
    );
    assert_eq!(
        declare(&c, "qq.base", durable(), FieldTable::default()).await,
        refused(
            "inequivalent arg 'x-queue-type' for queue 'qq.base' in vhost '/': received none but current is the value 'quorum' of type 'longstr'"
        )
    );
    declare(&c, "cq.base", durable(), FieldTable::default())
        .await
        .unwrap();
    declare(
        &c,
        "cq.base",
        durable(),
        table(&[("x-queue-type", s("classic"))]),
    )
    .await
    .unwrap();
    assert_eq!(
        declare(&c, "cq.base", durable(), quorum_args(&[])).await,
        refused(
            "inequivalent arg 'x-queue-type' for queue 'cq.base' in vhost '/': received the value 'quorum' of type 'longstr' but current is none"
        )
    );
    declare(
        &c,
        "qq.dl",
        durable(),
        quorum_args(&[("x-delivery-limit", AMQPValue::LongInt(2))]),
    )
    .await
    .unwrap();
    assert_eq!(
        declare(
            &c,
            "qq.dl",
            durable(),
            quorum_args(&[("x-delivery-limit", AMQPValue::LongInt(3))])
        )
        .await,
        refused(
            "inequivalent arg 'x-delivery-limit' for queue 'qq.dl' in vhost '/': received '3' but current is '2'"
        )
    );
}

/// A transient message (delivery mode 1, or no properties) in a quorum queue survives a
/// restart, as in RabbitMQ; the same message stays transient in a classic queue it was also
/// routed to.
#[tokio::test]
async fn transient_messages_in_quorum_queues_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_with(disk_config(dir.path())).await;
    {
        let (_c, ch) = channel(&b).await;
        ch.confirm_select(Default::default()).await.unwrap();
        ch.queue_declare("qq".into(), durable(), quorum_args(&[]))
            .await
            .unwrap();
        ch.queue_declare("cq".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        for q in ["qq", "cq"] {
            ch.queue_bind(
                q.into(),
                "amq.fanout".into(),
                "".into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        }
        for (i, props) in [
            BasicProperties::default(),
            BasicProperties::default().with_delivery_mode(1),
            BasicProperties::default().with_delivery_mode(2),
        ]
        .into_iter()
        .enumerate()
        {
            let confirm = ch
                .basic_publish(
                    "amq.fanout".into(),
                    "".into(),
                    Default::default(),
                    format!("m{i}").as_bytes(),
                    props,
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack());
        }
    }
    b.shutdown(Duration::from_secs(2)).await;
    let b = start_with(disk_config(dir.path())).await;
    let (_c, ch) = channel(&b).await;
    let mut got = Vec::new();
    while let Some(m) = ch
        .basic_get("qq".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        got.push((
            String::from_utf8(m.delivery.data.clone()).unwrap(),
            m.delivery.properties.delivery_mode().unwrap_or(0),
        ));
    }
    assert_eq!(
        got,
        vec![("m0".into(), 0), ("m1".into(), 1), ("m2".into(), 2)],
        "kept, with their delivery modes"
    );
    let classic = ch
        .queue_declare(
            "cq".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(classic.message_count(), 1, "only the persistent one");
}

fn delivery_count(p: &BasicProperties) -> Option<i64> {
    match p.headers().as_ref()?.inner().get("x-delivery-count")? {
        AMQPValue::LongLongInt(n) => Some(*n),
        other => panic!("x-delivery-count is {other:?}, RabbitMQ sends a long long"),
    }
}

/// `x-delivery-count`: on every basic.get (0 the first time), on consumer deliveries only
/// from the second; RabbitMQ 4.x's default delivery limit of 20 drops (or dead-letters) the
/// message on its 21st return.
#[tokio::test]
async fn delivery_count_and_the_default_delivery_limit() {
    let b = start().await;
    let (_c, ch) = channel(&b).await;
    ch.queue_declare("dlq".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let args = quorum_args(&[
        ("x-dead-letter-exchange", s("")),
        ("x-dead-letter-routing-key", s("dlq")),
    ]);
    ch.queue_declare("work".into(), durable(), args)
        .await
        .unwrap();
    ch.basic_publish(
        "".into(),
        "work".into(),
        Default::default(),
        b"poison",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let got = ch
        .basic_get("work".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery_count(&got.delivery.properties), Some(0));
    got.delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(
            "work".into(),
            "c".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    use futures::StreamExt;
    // Delivered 21 times in all (limit 20, as RabbitMQ 3.10.8 delivers a limit-2 message 3
    // times): the 21st return dead-letters it.
    for n in 1..=20 {
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(delivery_count(&d.properties), Some(n));
        d.nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let dead = eventually(Duration::from_secs(5), || async {
        ch.basic_get("dlq".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .map(|m| {
                let h = m.delivery.properties.headers().clone().unwrap();
                let death = match h.inner().get("x-death") {
                    Some(AMQPValue::FieldArray(a)) => a.as_slice()[0].clone(),
                    _ => panic!("no x-death"),
                };
                assert!(h.inner().get("x-delivery-count").is_none());
                match death {
                    AMQPValue::FieldTable(t) => {
                        t.inner().get("reason") == Some(&s("delivery_limit"))
                    }
                    _ => false,
                }
            })
            .unwrap_or(false)
    })
    .await;
    assert!(dead, "dead-lettered with reason delivery_limit");
}

/// A quorum queue refuses a consumer on a channel with a global prefetch, as 3.10.8 does (a
/// connection error).
#[tokio::test]
async fn global_qos_is_refused_for_quorum_consumers() {
    let b = start().await;
    let (c, ch) = channel(&b).await;
    ch.queue_declare("qq.qos".into(), durable(), quorum_args(&[]))
        .await
        .unwrap();
    ch.basic_qos(10, BasicQosOptions { global: true })
        .await
        .unwrap();
    let e = ch
        .basic_consume(
            "qq.qos".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (
            540,
            "NOT_IMPLEMENTED - queue 'qq.qos' in vhost '/' does not support global qos".into()
        )
    );
    assert!(!c.status().connected());
}
