//! Exchanges, queues and bindings with a real client (lapin): RabbitMQ's routing model and each
//! reply code. Expected texts were compared with RabbitMQ 3.10.8 where noted.

mod common;

use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use lapin::options::*;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, ExchangeKind};

fn ss(s: &str) -> ShortString {
    s.into()
}

async fn channel(c: &lapin::Connection) -> Channel {
    c.create_channel().await.expect("channel")
}

async fn declare_q(ch: &Channel, name: &str) -> lapin::Queue {
    ch.queue_declare(
        ss(name),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue")
}

async fn publish(ch: &Channel, x: &str, rk: &str, body: &[u8], props: BasicProperties) {
    ch.basic_publish(ss(x), ss(rk), BasicPublishOptions::default(), body, props)
        .await
        .expect("publish");
}

/// Drain a queue with basic.get (no-ack); returns bodies.
async fn drain(ch: &Channel, q: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(ss(q), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    out
}

async fn count(ch: &Channel, q: &str) -> u32 {
    ch.queue_declare(
        ss(q),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare")
    .message_count()
}

#[tokio::test]
async fn default_exchange_routes_by_queue_name() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = channel(&c).await;
    declare_q(&ch, "q1").await;
    publish(&ch, "", "q1", b"hello", BasicProperties::default()).await;
    publish(&ch, "", "nope", b"lost", BasicProperties::default()).await;
    assert_eq!(drain(&ch, "q1").await, vec!["hello"]);
}

#[tokio::test]
async fn direct_fanout_topic_routing() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = channel(&c).await;
    for q in ["d1", "d2", "f1", "f2", "t1", "t2", "t3"] {
        declare_q(&ch, q).await;
    }
    ch.queue_bind(
        ss("d1"),
        ss("amq.direct"),
        ss("k1"),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        ss("d2"),
        ss("amq.direct"),
        ss("k2"),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        ss("f1"),
        ss("amq.fanout"),
        ss(""),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        ss("f2"),
        ss("amq.fanout"),
        ss("ignored"),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        ss("t1"),
        ss("amq.topic"),
        ss("a.*.c"),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        ss("t2"),
        ss("amq.topic"),
        ss("a.#"),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        ss("t3"),
        ss("amq.topic"),
        ss("#.z"),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "amq.direct", "k1", b"d-k1", Default::default()).await;
    publish(&ch, "amq.direct", "k3", b"d-k3", Default::default()).await;
    publish(&ch, "amq.fanout", "whatever", b"fan", Default::default()).await;
    publish(&ch, "amq.topic", "a.b.c", b"abc", Default::default()).await;
    publish(&ch, "amq.topic", "a", b"a", Default::default()).await;
    publish(&ch, "amq.topic", "x.y.z", b"xyz", Default::default()).await;
    assert_eq!(drain(&ch, "d1").await, vec!["d-k1"]);
    assert!(drain(&ch, "d2").await.is_empty());
    assert_eq!(drain(&ch, "f1").await, vec!["fan"]);
    assert_eq!(drain(&ch, "f2").await, vec!["fan"]);
    assert_eq!(drain(&ch, "t1").await, vec!["abc"]);
    assert_eq!(drain(&ch, "t2").await, vec!["abc", "a"]);
    assert_eq!(drain(&ch, "t3").await, vec!["xyz"]);
}

#[tokio::test]
async fn headers_exchange_all_and_any() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = channel(&c).await;
    declare_q(&ch, "hall").await;
    declare_q(&ch, "hany").await;
    ch.queue_bind(
        ss("hall"),
        ss("amq.headers"),
        ss(""),
        Default::default(),
        table(&[("a", s("1")), ("b", s("2"))]),
    )
    .await
    .unwrap();
    ch.queue_bind(
        ss("hany"),
        ss("amq.match"),
        ss(""),
        Default::default(),
        table(&[("x-match", s("any")), ("a", s("1")), ("b", s("2"))]),
    )
    .await
    .unwrap();
    ch.exchange_bind(
        ss("amq.match"),
        ss("amq.headers"),
        ss(""),
        Default::default(),
        table(&[]),
    )
    .await
    .unwrap();
    let props = |kv: &[(&str, AMQPValue)]| BasicProperties::default().with_headers(table(kv));
    publish(
        &ch,
        "amq.headers",
        "",
        b"both",
        props(&[("a", s("1")), ("b", s("2"))]),
    )
    .await;
    publish(&ch, "amq.headers", "", b"only-a", props(&[("a", s("1"))])).await;
    publish(&ch, "amq.headers", "", b"none", props(&[("c", s("3"))])).await;
    assert_eq!(drain(&ch, "hall").await, vec!["both"]);
    // amq.headers -> amq.match (e2e, empty args = match all) -> hany (any)
    assert_eq!(drain(&ch, "hany").await, vec!["both", "only-a"]);
    // Bad x-match: 406 (text compared with RabbitMQ 3.10.8).
    let e = ch
        .queue_bind(
            ss("hall"),
            ss("amq.headers"),
            ss(""),
            Default::default(),
            table(&[("x-match", s("foo"))]),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (406, "PRECONDITION_FAILED - Invalid x-match field value <<\"foo\">>; expected all, any, all-with-x, or any-with-x".into())
    );
}

#[tokio::test]
async fn message_reaching_a_queue_twice_is_enqueued_once() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = channel(&c).await;
    declare_q(&ch, "once").await;
    ch.queue_bind(
        ss("once"),
        ss("amq.topic"),
        ss("a.*"),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        ss("once"),
        ss("amq.topic"),
        ss("#"),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        ss("e2e"),
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_bind(
        ss("e2e"),
        ss("amq.topic"),
        ss("#"),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        ss("once"),
        ss("e2e"),
        ss(""),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // A loop: e2e -> amq.topic. Routing must terminate and still deliver once.
    ch.exchange_bind(
        ss("amq.topic"),
        ss("e2e"),
        ss(""),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "amq.topic", "a.b", b"m", Default::default()).await;
    assert_eq!(drain(&ch, "once").await, vec!["m"]);
}

#[tokio::test]
async fn cc_and_bcc_route_and_bcc_is_stripped() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = channel(&c).await;
    for q in ["main", "cc1", "bcc1"] {
        declare_q(&ch, q).await;
    }
    let headers = table(&[
        ("CC", AMQPValue::FieldArray(vec![s("cc1")].into())),
        ("BCC", AMQPValue::FieldArray(vec![s("bcc1")].into())),
    ]);
    publish(
        &ch,
        "",
        "main",
        b"m",
        BasicProperties::default().with_headers(headers),
    )
    .await;
    for q in ["main", "cc1", "bcc1"] {
        let m = ch
            .basic_get(ss(q), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect(q);
        let h = m.delivery.properties.headers().clone().unwrap();
        assert!(h.contains_key("CC"), "CC stays");
        assert!(!h.contains_key("BCC"), "BCC is removed");
    }
}

#[tokio::test]
async fn alternate_exchange_catches_unroutable() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = channel(&c).await;
    ch.exchange_declare(
        ss("ae"),
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        ss("main-x"),
        ExchangeKind::Direct,
        Default::default(),
        table(&[("alternate-exchange", s("ae"))]),
    )
    .await
    .unwrap();
    declare_q(&ch, "routed").await;
    declare_q(&ch, "unrouted").await;
    ch.queue_bind(
        ss("routed"),
        ss("main-x"),
        ss("k"),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        ss("unrouted"),
        ss("ae"),
        ss(""),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "main-x", "k", b"good", Default::default()).await;
    publish(&ch, "main-x", "other", b"stray", Default::default()).await;
    assert_eq!(drain(&ch, "routed").await, vec!["good"]);
    assert_eq!(drain(&ch, "unrouted").await, vec!["stray"]);
}

#[tokio::test]
async fn exchange_declare_rules() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    // Reserved prefix: 403.
    let ch = channel(&c).await;
    let e = ch
        .exchange_declare(
            ss("amq.mine"),
            ExchangeKind::Direct,
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (
            403,
            "ACCESS_REFUSED - exchange name 'amq.mine' contains reserved prefix 'amq.*'".into()
        )
    );
    // Redeclaring a predeclared exchange with the same properties is fine.
    let ch = channel(&c).await;
    ch.exchange_declare(
        ss("amq.direct"),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Passive on a missing exchange: 404.
    let e = ch
        .exchange_declare(
            ss("missing"),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (404, "NOT_FOUND - no exchange 'missing' in vhost '/'".into())
    );
    // Redeclare with another type / durability: 406.
    let ch = channel(&c).await;
    ch.exchange_declare(
        ss("x1"),
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let e = ch
        .exchange_declare(
            ss("x1"),
            ExchangeKind::Fanout,
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (406, "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x1' in vhost '/': received 'fanout' but current is 'direct'".into())
    );
    let ch = channel(&c).await;
    let e = ch
        .exchange_declare(
            ss("x1"),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (406, "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'x1' in vhost '/': received 'true' but current is 'false'".into())
    );
    // The default exchange cannot be declared, bound or deleted: 403.
    let ch = channel(&c).await;
    let e = ch
        .exchange_delete(ss(""), Default::default())
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (
            403,
            "ACCESS_REFUSED - operation not permitted on the default exchange".into()
        )
    );
    let ch = channel(&c).await;
    declare_q(&ch, "qd").await;
    let e = ch
        .queue_bind(
            ss("qd"),
            ss(""),
            ss("qd"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (
            403,
            "ACCESS_REFUSED - operation not permitted on the default exchange".into()
        )
    );
    // Unknown type: 503 COMMAND_INVALID closes the connection.
    let ch = channel(&c).await;
    let e = ch
        .exchange_declare(
            ss("x2"),
            ExchangeKind::Custom("nonsense".into()),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (
            503,
            "COMMAND_INVALID - invalid exchange type 'nonsense'".into()
        )
    );
    assert!(
        !c.status().connected()
            || common::eventually(std::time::Duration::from_secs(2), || async {
                !c.status().connected()
            })
            .await
    );
}

#[tokio::test]
async fn exchange_delete_and_auto_delete() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = channel(&c).await;
    ch.exchange_declare(
        ss("used"),
        ExchangeKind::Topic,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare_q(&ch, "qq").await;
    ch.queue_bind(
        ss("qq"),
        ss("used"),
        ss("#"),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let e = ch
        .exchange_delete(
            ss("used"),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (
            406,
            "PRECONDITION_FAILED - exchange 'used' in vhost '/' in use".into()
        )
    );
    // Predeclared exchanges cannot be deleted (text recorded from RabbitMQ 3.10.8).
    let ch = channel(&c).await;
    let e = ch
        .exchange_delete(ss("amq.direct"), Default::default())
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (
            403,
            "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed"
                .into()
        )
    );
    let ch = channel(&c).await;
    ch.exchange_delete(ss("used"), Default::default())
        .await
        .unwrap();
    ch.exchange_delete(ss("never-existed"), Default::default())
        .await
        .unwrap();
    // Auto-delete: gone when its last binding goes (not before it had one).
    ch.exchange_declare(
        ss("ad"),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        ss("qq"),
        ss("ad"),
        ss("k"),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_unbind(ss("qq"), ss("ad"), ss("k"), FieldTable::default())
        .await
        .unwrap();
    let e = ch
        .exchange_declare(
            ss("ad"),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_error(&e).0, 404);
}

#[tokio::test]
async fn publish_errors() {
    let b = start().await;
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    r.publish(1, "missing", "k", 0, b"x").await;
    assert_eq!(
        r.expect_channel_close(1).await,
        (
            404,
            "NOT_FOUND - no exchange 'missing' in vhost '/'".into(),
            60,
            40
        )
    );
    let c = lapin_connect(&b).await;
    let ch = channel(&c).await;
    ch.exchange_declare(
        ss("int"),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    r.open_channel(2).await;
    r.publish(2, "int", "", 0, b"x").await;
    assert_eq!(
        r.expect_channel_close(2).await,
        (
            403,
            "ACCESS_REFUSED - cannot publish to internal exchange 'int' in vhost '/'".into(),
            60,
            40
        )
    );
}

#[tokio::test]
async fn mandatory_unroutable_is_returned() {
    let b = start().await;
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    r.publish(1, "amq.direct", "nowhere", 1, b"back").await;
    match r.expect_method(1, 60, 50).await {
        amq_protocol::protocol::AMQPClass::Basic(
            amq_protocol::protocol::basic::AMQPMethod::Return(ret),
        ) => {
            assert_eq!((ret.reply_code, ret.reply_text.as_str()), (312, "NO_ROUTE"));
            assert_eq!(
                (ret.exchange.as_str(), ret.routing_key.as_str()),
                ("amq.direct", "nowhere")
            );
        }
        _ => unreachable!(),
    }
    match r.next().await {
        Reply::Frame(amq_protocol::frame::AMQPFrame::Header(1, h)) => assert_eq!(h.body_size, 4),
        other => panic!("{other:?}"),
    }
    match r.next().await {
        Reply::Frame(amq_protocol::frame::AMQPFrame::Body(1, body)) => assert_eq!(body, b"back"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn queue_declare_rules() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = channel(&c).await;
    // Server-named queue.
    let q = declare_q(&ch, "").await;
    assert!(
        q.name().as_str().starts_with("amq.gen-") && q.name().as_str().len() == 30,
        "{}",
        q.name()
    );
    // declare-ok counts.
    declare_q(&ch, "counted").await;
    publish(&ch, "", "counted", b"1", Default::default()).await;
    publish(&ch, "", "counted", b"2", Default::default()).await;
    assert_eq!(count(&ch, "counted").await, 2);
    assert_eq!(declare_q(&ch, "counted").await.message_count(), 2);
    // Reserved prefix.
    let e = ch
        .queue_declare(ss("amq.q"), Default::default(), FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (
            403,
            "ACCESS_REFUSED - queue name 'amq.q' contains reserved prefix 'amq.*'".into()
        )
    );
    // Passive missing.
    let ch = channel(&c).await;
    let e = ch
        .queue_declare(
            ss("nope"),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (404, "NOT_FOUND - no queue 'nope' in vhost '/'".into())
    );
    // Inequivalent flags / args.
    let ch = channel(&c).await;
    let e = ch
        .queue_declare(
            ss("counted"),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (406, "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'counted' in vhost '/': received 'true' but current is 'false'".into())
    );
    let ch = channel(&c).await;
    ch.queue_declare(
        ss("ttl"),
        Default::default(),
        table(&[("x-message-ttl", AMQPValue::LongInt(1000))]),
    )
    .await
    .unwrap();
    // The same value in another integer width is equivalent.
    ch.queue_declare(
        ss("ttl"),
        Default::default(),
        table(&[("x-message-ttl", AMQPValue::LongLongInt(1000))]),
    )
    .await
    .unwrap();
    let e = ch
        .queue_declare(
            ss("ttl"),
            Default::default(),
            table(&[("x-message-ttl", AMQPValue::LongInt(2000))]),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (406, "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue 'ttl' in vhost '/': received the value '2000' of type 'signedint' but current is the value '1000' of type 'signedint'".into())
    );
    // Invalid argument values.
    let ch = channel(&c).await;
    let e = ch
        .queue_declare(
            ss("bad"),
            Default::default(),
            table(&[("x-max-length", AMQPValue::LongInt(-1))]),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (406, "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'bad' in vhost '/': {value_negative,-1}".into())
    );
    let ch = channel(&c).await;
    let e = ch
        .queue_declare(
            ss("bad"),
            Default::default(),
            table(&[("x-expires", s("soon"))]),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (406, "PRECONDITION_FAILED - invalid arg 'x-expires' for queue 'bad' in vhost '/': \"expected integer, got longstr\"".into())
    );
}

#[tokio::test]
async fn exclusive_queues() {
    let b = start().await;
    let c1 = lapin_connect(&b).await;
    let c2 = lapin_connect(&b).await;
    let ch1 = channel(&c1).await;
    ch1.queue_declare(
        ss("excl"),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let locked = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'excl' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.";
    let ch2 = channel(&c2).await;
    let e = ch2
        .queue_declare(
            ss("excl"),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(amqp_error(&e), (405, locked.into()));
    let ch2 = channel(&c2).await;
    let e = ch2
        .basic_get(ss("excl"), Default::default())
        .await
        .unwrap_err();
    assert_eq!(amqp_error(&e), (405, locked.into()));
    let ch2 = channel(&c2).await;
    let e = ch2
        .queue_purge(ss("excl"), Default::default())
        .await
        .unwrap_err();
    assert_eq!(amqp_error(&e).0, 405);
    // Deleted when the owner closes.
    c1.close(200, "bye".into()).await.unwrap();
    let ch2 = channel(&c2).await;
    let gone = common::eventually(std::time::Duration::from_secs(2), || {
        let ch2 = ch2.clone();
        async move {
            ch2.queue_declare(
                ss("excl"),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok()
        }
    })
    .await;
    assert!(gone, "c2 can declare 'excl' once c1 closed");
}

#[tokio::test]
async fn bind_unbind_purge_delete() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = channel(&c).await;
    declare_q(&ch, "p").await;
    // Binding to a missing queue / exchange: 404.
    let e = ch
        .queue_bind(
            ss("missing"),
            ss("amq.direct"),
            ss("k"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (404, "NOT_FOUND - no queue 'missing' in vhost '/'".into())
    );
    let ch = channel(&c).await;
    let e = ch
        .queue_bind(
            ss("p"),
            ss("missing-x"),
            ss("k"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (
            404,
            "NOT_FOUND - no exchange 'missing-x' in vhost '/'".into()
        )
    );
    // Unbinding a binding that does not exist is fine.
    let ch = channel(&c).await;
    ch.queue_unbind(
        ss("p"),
        ss("amq.direct"),
        ss("never"),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Purge returns the count.
    for i in 0..3 {
        publish(&ch, "", "p", format!("{i}").as_bytes(), Default::default()).await;
    }
    assert_eq!(
        ch.queue_purge(ss("p"), Default::default()).await.unwrap(),
        3
    );
    // Delete if-empty / returns the count.
    publish(&ch, "", "p", b"x", Default::default()).await;
    let e = ch
        .queue_delete(
            ss("p"),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (
            406,
            "PRECONDITION_FAILED - queue 'p' in vhost '/' not empty".into()
        )
    );
    let ch = channel(&c).await;
    assert_eq!(
        ch.queue_delete(ss("p"), Default::default()).await.unwrap(),
        1
    );
    // Deleting a missing queue succeeds (RabbitMQ 3.10) with 0.
    assert_eq!(
        ch.queue_delete(ss("p"), Default::default()).await.unwrap(),
        0
    );
    // Bindings go with the queue: a new queue of the same name is not bound.
    ch.queue_declare(ss("p2"), Default::default(), FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        ss("p2"),
        ss("amq.fanout"),
        ss(""),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_delete(ss("p2"), Default::default()).await.unwrap();
    declare_q(&ch, "p2").await;
    publish(&ch, "amq.fanout", "", b"x", Default::default()).await;
    assert_eq!(count(&ch, "p2").await, 0);
}

#[tokio::test]
async fn x_expires_deletes_unused_queue() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = channel(&c).await;
    ch.queue_declare(
        ss("exp"),
        Default::default(),
        table(&[("x-expires", AMQPValue::LongInt(200))]),
    )
    .await
    .unwrap();
    let gone = common::eventually(std::time::Duration::from_secs(5), || {
        let b = &b;
        async move { b.state().vhost("/").unwrap().queues.get("exp").is_none() }
    })
    .await;
    assert!(gone);
}

#[tokio::test]
async fn fanout_shares_one_body() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = channel(&c).await;
    for i in 0..100 {
        let q = format!("fan{i}");
        declare_q(&ch, &q).await;
        ch.queue_bind(
            ss(&q),
            ss("amq.fanout"),
            ss(""),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    publish(&ch, "amq.fanout", "", &vec![7u8; 4096], Default::default()).await;
    assert_eq!(count(&ch, "fan99").await, 1);
    // Every queue holds the same Arc<Message>, hence the same body allocation.
    let v = b.state().vhost("/").unwrap();
    let ptrs: Vec<usize> = (0..100)
        .map(|i| {
            let q = v.queues.get(&format!("fan{i}")).unwrap().clone();
            let (e, _) = q.get(true).unwrap();
            e.msg.body.as_ptr() as usize
        })
        .collect();
    assert!(ptrs.windows(2).all(|w| w[0] == w[1]));
}
