//! Consumers and delivery with a real client (lapin) and the raw client: competing consumers,
//! prefetch, acks, redelivery on failure, confirms, transactions, cancel notification.

mod common;

use amq_protocol::protocol::{AMQPClass, basic};
use amq_protocol::types::{AMQPValue, FieldTable};
use common::*;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

fn ss(s: &str) -> ShortString {
    s.into()
}

const DEADLINE: Duration = Duration::from_secs(10);

async fn setup(b: &warren::Broker, q: &str) -> (lapin::Connection, Channel) {
    let c = lapin_connect(b).await;
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare(ss(q), Default::default(), FieldTable::default())
        .await
        .unwrap();
    (c, ch)
}

async fn publish_n(ch: &Channel, q: &str, n: usize) {
    for i in 0..n {
        ch.basic_publish(
            ss(""),
            ss(q),
            Default::default(),
            format!("{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
}

async fn next(c: &mut lapin::Consumer) -> lapin::message::Delivery {
    tokio::time::timeout(DEADLINE, c.next())
        .await
        .expect("a delivery in time")
        .expect("stream open")
        .expect("delivery")
}

#[tokio::test]
async fn competing_consumers_get_each_message_once_round_robin() {
    let b = start().await;
    let (_c, ch) = setup(&b, "work").await;
    let conns: Vec<_> = futures::future::join_all((0..3).map(|_| lapin_connect(&b))).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, c) in conns.iter().enumerate() {
        let cch = c.create_channel().await.unwrap();
        cch.basic_qos(10, Default::default()).await.unwrap();
        let mut cons = cch
            .basic_consume(
                ss("work"),
                ss(&format!("c{i}")),
                Default::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = cons.next().await {
                let _ = tx.send((i, d.data.clone()));
                d.ack(BasicAckOptions::default()).await.unwrap();
            }
        });
    }
    publish_n(&ch, "work", 300).await;
    let mut seen = HashSet::new();
    let mut per_consumer = [0usize; 3];
    while seen.len() < 300 {
        let (i, data) = tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .expect("in time")
            .unwrap();
        assert!(seen.insert(data), "duplicate delivery");
        per_consumer[i] += 1;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), rx.recv())
            .await
            .is_err(),
        "no extra deliveries"
    );
    // Round-robin among consumers with room: every consumer gets a share.
    for n in per_consumer {
        assert!(n >= 30, "uneven spread: {per_consumer:?}");
    }
}

#[tokio::test]
async fn prefetch_is_never_exceeded() {
    let b = start().await;
    let (c, ch) = setup(&b, "pf").await;
    publish_n(&ch, "pf", 50).await;
    let cch = c.create_channel().await.unwrap();
    cch.basic_qos(5, Default::default()).await.unwrap();
    let mut cons = cch
        .basic_consume(ss("pf"), ss("t"), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(next(&mut cons).await);
    }
    // A sixth delivery must not arrive while five are unacked.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), cons.next())
            .await
            .is_err()
    );
    // The queue still has the rest.
    let q = b.state().vhost("/").unwrap().queue("pf").unwrap();
    assert_eq!(q.message_count(), 45);
    // Ack one: exactly one more arrives.
    held.remove(0)
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    held.push(next(&mut cons).await);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), cons.next())
            .await
            .is_err()
    );
    // Ack all with multiple: the window refills.
    let last = held.last().unwrap().delivery_tag;
    cch.basic_ack(last, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    for _ in 0..5 {
        next(&mut cons).await;
    }
}

#[tokio::test]
async fn global_qos_is_shared_by_the_channel_consumers() {
    let b = start().await;
    let (c, ch) = setup(&b, "g1").await;
    ch.queue_declare(ss("g2"), Default::default(), FieldTable::default())
        .await
        .unwrap();
    publish_n(&ch, "g1", 10).await;
    publish_n(&ch, "g2", 10).await;
    let cch = c.create_channel().await.unwrap();
    cch.basic_qos(3, BasicQosOptions { global: true })
        .await
        .unwrap();
    let mut a = cch
        .basic_consume(ss("g1"), ss("a"), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let mut bb = cch
        .basic_consume(ss("g2"), ss("b"), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let mut got = 0;
    for cons in [&mut a, &mut bb] {
        while tokio::time::timeout(Duration::from_millis(200), cons.next())
            .await
            .is_ok()
        {
            got += 1;
        }
    }
    assert_eq!(got, 3, "3 unacked across both consumers");
}

#[tokio::test]
async fn reject_requeue_returns_to_original_position_redelivered() {
    let b = start().await;
    let (c, ch) = setup(&b, "rq").await;
    publish_n(&ch, "rq", 3).await;
    let cch = c.create_channel().await.unwrap();
    cch.basic_qos(2, Default::default()).await.unwrap();
    let mut cons = cch
        .basic_consume(ss("rq"), ss("t"), Default::default(), FieldTable::default())
        .await
        .unwrap();
    let d0 = next(&mut cons).await;
    let d1 = next(&mut cons).await;
    assert_eq!((d0.data.as_slice(), d0.redelivered), (&b"0"[..], false));
    // Requeue both (nack multiple): they go back ahead of "2", in their original order.
    let _ = d0;
    cch.basic_nack(
        d1.delivery_tag,
        BasicNackOptions {
            requeue: true,
            multiple: true,
        },
    )
    .await
    .unwrap();
    let mut order = Vec::new();
    for _ in 0..3 {
        let d = next(&mut cons).await;
        order.push((String::from_utf8(d.data.clone()).unwrap(), d.redelivered));
        d.ack(Default::default()).await.unwrap();
    }
    assert_eq!(
        order,
        vec![("0".into(), true), ("1".into(), true), ("2".into(), false)]
    );
}

#[tokio::test]
async fn nack_without_requeue_drops() {
    let b = start().await;
    let (c, ch) = setup(&b, "drop").await;
    publish_n(&ch, "drop", 2).await;
    let cch = c.create_channel().await.unwrap();
    let mut cons = cch
        .basic_consume(
            ss("drop"),
            ss("t"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _d0 = next(&mut cons).await;
    let d1 = next(&mut cons).await;
    cch.basic_nack(
        d1.delivery_tag,
        BasicNackOptions {
            multiple: true,
            requeue: false,
        },
    )
    .await
    .unwrap();
    cch.close(200, "bye".into()).await.unwrap();
    let q = b.state().vhost("/").unwrap().queue("drop").unwrap();
    assert!(
        eventually(DEADLINE, || async {
            q.message_count() == 0 && q.consumer_count() == 0
        })
        .await
    );
}

#[tokio::test]
async fn dropped_connection_redelivers_everything_unacked() {
    let b = start().await;
    let (c, ch) = setup(&b, "crash").await;
    publish_n(&ch, "crash", 100).await;
    // A raw consumer takes 10 messages and vanishes without closing (TCP drop).
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    r.send(&method_frame(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 10,
            global: false,
        })),
    ))
    .await;
    r.expect_method(1, 60, 11).await;
    r.send(&method_frame(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "crash".into(),
            consumer_tag: "doomed".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    ))
    .await;
    r.expect_method(1, 60, 21).await;
    let mut delivered = 0;
    while delivered < 10 {
        if let Reply::Frame(amq_protocol::frame::AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(_)),
        )) = r.next().await
        {
            delivered += 1;
        }
    }
    drop(r);
    // A surviving consumer gets all 100: the first 10 marked redelivered, in order.
    let cch = c.create_channel().await.unwrap();
    let mut cons = cch
        .basic_consume(
            ss("crash"),
            ss("survivor"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..100 {
        let d = next(&mut cons).await;
        got.push((
            String::from_utf8(d.data.clone())
                .unwrap()
                .parse::<u32>()
                .unwrap(),
            d.redelivered,
        ));
        d.ack(Default::default()).await.unwrap();
    }
    let want: Vec<(u32, bool)> = (0..100).map(|i| (i, i < 10)).collect();
    assert_eq!(got, want);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), cons.next())
            .await
            .is_err(),
        "no duplicates"
    );
}

#[tokio::test]
async fn channel_close_requeues_unacked() {
    let b = start().await;
    let (c, ch) = setup(&b, "cc").await;
    publish_n(&ch, "cc", 5).await;
    let cch = c.create_channel().await.unwrap();
    let mut cons = cch
        .basic_consume(ss("cc"), ss("t"), Default::default(), FieldTable::default())
        .await
        .unwrap();
    for _ in 0..5 {
        next(&mut cons).await;
    }
    cch.close(200, "bye".into()).await.unwrap();
    let q = b.state().vhost("/").unwrap().queue("cc").unwrap();
    assert!(eventually(DEADLINE, || async { q.message_count() == 5 }).await);
    let (e, _) = q.get(true).unwrap();
    assert!(e.redelivered);
}

#[tokio::test]
async fn basic_get_counts_and_get_empty() {
    let b = start().await;
    let (_c, ch) = setup(&b, "get").await;
    assert!(
        ch.basic_get(ss("get"), Default::default())
            .await
            .unwrap()
            .is_none()
    );
    publish_n(&ch, "get", 3).await;
    let m = ch
        .basic_get(ss("get"), Default::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.message_count, 2);
    assert_eq!(m.delivery.data, b"0");
    m.delivery.ack(Default::default()).await.unwrap();
    let m = ch
        .basic_get(ss("get"), Default::default())
        .await
        .unwrap()
        .unwrap();
    m.delivery
        .reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let m = ch
        .basic_get(ss("get"), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert!(m.delivery.redelivered);
    assert_eq!(m.delivery.data, b"1");
}

#[tokio::test]
async fn ack_errors() {
    let b = start().await;
    let (_c, ch) = setup(&b, "acks").await;
    publish_n(&ch, "acks", 2).await;
    // Unknown tag → 406 channel close. (Raw client: with lapin the close can overtake the
    // next call, which then reports a channel state error instead.)
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    r.send(&method_frame(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 42,
            multiple: false,
        })),
    ))
    .await;
    assert_eq!(
        r.expect_channel_close(1).await,
        (
            406,
            "PRECONDITION_FAILED - unknown delivery tag 42".into(),
            60,
            80
        )
    );
    // Double ack → 406.
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    r.send(&method_frame(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "acks".into(),
            no_ack: false,
        })),
    ))
    .await;
    r.expect_method(1, 60, 71).await;
    let ack = method_frame(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 1,
            multiple: false,
        })),
    );
    r.send(&ack).await;
    r.send(&ack).await;
    let (code, text, class, method) = loop {
        if let Reply::Frame(amq_protocol::frame::AMQPFrame::Method(
            1,
            AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Close(c)),
        )) = r.next().await
        {
            break (
                c.reply_code,
                c.reply_text.to_string(),
                c.class_id,
                c.method_id,
            );
        }
    };
    assert_eq!(
        (code, text.as_str(), class, method),
        (406, "PRECONDITION_FAILED - unknown delivery tag 1", 60, 80)
    );
}

#[tokio::test]
async fn consumer_tag_and_exclusive_rules() {
    let b = start().await;
    let (c, ch) = setup(&b, "ex").await;
    let _a = ch
        .basic_consume(
            ss("ex"),
            ss("same"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Generated tags look like RabbitMQ's.
    let g = ch
        .basic_consume(ss("ex"), ss(""), Default::default(), FieldTable::default())
        .await
        .unwrap();
    assert!(g.tag().as_str().starts_with("amq.ctag-"), "{}", g.tag());
    // Exclusive consume on a queue with consumers → 403.
    let c2 = c.create_channel().await.unwrap();
    let e = c2
        .basic_consume(
            ss("ex"),
            ss("x"),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (
            403,
            "ACCESS_REFUSED - queue 'ex' in vhost '/' in exclusive use".into()
        )
    );
    // Duplicate tag on a channel → 530 (connection close).
    let e = ch
        .basic_consume(
            ss("ex"),
            ss("same"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (
            530,
            "NOT_ALLOWED - attempt to reuse consumer tag 'same'".into()
        )
    );
}

#[tokio::test]
async fn cancel_and_auto_delete() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare(
        ss("ad"),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let v = b.state().vhost("/").unwrap();
    let cons = ch
        .basic_consume(ss("ad"), ss("t"), Default::default(), FieldTable::default())
        .await
        .unwrap();
    assert_eq!(v.queue("ad").unwrap().consumer_count(), 1);
    ch.basic_cancel(cons.tag(), Default::default())
        .await
        .unwrap();
    assert!(
        v.queue("ad").is_err(),
        "auto-delete queue goes with its last consumer"
    );
}

#[tokio::test]
async fn deleting_a_queue_cancels_its_consumers() {
    let b = start().await;
    let (c, ch) = setup(&b, "gone").await;
    let cch = c.create_channel().await.unwrap();
    let mut cons = cch
        .basic_consume(
            ss("gone"),
            ss("t"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_delete(ss("gone"), Default::default())
        .await
        .unwrap();
    // lapin ends the consumer stream when the server cancels it.
    let end = tokio::time::timeout(DEADLINE, cons.next())
        .await
        .expect("stream ends");
    assert!(end.is_none(), "{end:?}");
}

#[tokio::test]
async fn consumer_priorities() {
    let b = start().await;
    let (c, ch) = setup(&b, "prio").await;
    let low_ch = c.create_channel().await.unwrap();
    let high_ch = c.create_channel().await.unwrap();
    let mut low = low_ch
        .basic_consume(
            ss("prio"),
            ss("low"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut high = high_ch
        .basic_consume(
            ss("prio"),
            ss("high"),
            Default::default(),
            table(&[("x-priority", AMQPValue::LongInt(10))]),
        )
        .await
        .unwrap();
    publish_n(&ch, "prio", 20).await;
    let mut n_high = 0;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(200), high.next()).await
    {
        n_high += 1;
    }
    assert_eq!(
        n_high, 20,
        "the high-priority consumer has room, so it gets everything"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), low.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn single_active_consumer_fails_over() {
    let b = start().await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare(
        ss("sac"),
        Default::default(),
        table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await
    .unwrap();
    let ch1 = c.create_channel().await.unwrap();
    let ch2 = c.create_channel().await.unwrap();
    let mut first = ch1
        .basic_consume(
            ss("sac"),
            ss("first"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut second = ch2
        .basic_consume(
            ss("sac"),
            ss("second"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish_n(&ch, "sac", 5).await;
    for _ in 0..5 {
        next(&mut first)
            .await
            .ack(Default::default())
            .await
            .unwrap();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), second.next())
            .await
            .is_err()
    );
    ch1.close(200, "bye".into()).await.unwrap();
    publish_n(&ch, "sac", 3).await;
    for _ in 0..3 {
        next(&mut second).await;
    }
}

#[tokio::test]
async fn confirms_for_100k_publishes_arrive_in_order() {
    let b = start().await;
    let (_c, ch) = setup(&b, "conf").await;
    ch.confirm_select(Default::default()).await.unwrap();
    let mut pending = Vec::with_capacity(100_000);
    for _ in 0..100_000u32 {
        pending.push(
            ch.basic_publish(
                ss(""),
                ss("conf"),
                Default::default(),
                b"x",
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    for p in pending {
        assert!(p.await.unwrap().is_ack());
    }
    assert_eq!(
        b.state()
            .vhost("/")
            .unwrap()
            .queue("conf")
            .unwrap()
            .message_count(),
        100_000
    );
}

#[tokio::test]
async fn confirm_tags_are_sequential_and_returns_come_first() {
    let b = start().await;
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    r.send(&method_frame(
        1,
        AMQPClass::Confirm(amq_protocol::protocol::confirm::AMQPMethod::Select(
            amq_protocol::protocol::confirm::Select { nowait: false },
        )),
    ))
    .await;
    r.expect_method(1, 85, 11).await;
    r.publish(1, "amq.direct", "nowhere", 1, b"x").await; // mandatory, unroutable
    let mut events = Vec::new();
    let mut acked_upto = 0;
    while acked_upto < 1 {
        match r.next().await {
            Reply::Frame(amq_protocol::frame::AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Return(_)),
            )) => events.push("return"),
            Reply::Frame(amq_protocol::frame::AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Ack(a)),
            )) => {
                events.push("ack");
                acked_upto = a.delivery_tag;
            }
            Reply::Frame(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(events, vec!["return", "ack"]);
    for _ in 0..5 {
        r.publish(1, "", "nowhere", 0, b"y").await;
    }
    while acked_upto < 6 {
        if let Reply::Frame(amq_protocol::frame::AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)),
        )) = r.next().await
        {
            assert!(a.delivery_tag > acked_upto);
            assert!(a.multiple || a.delivery_tag == acked_upto + 1);
            acked_upto = a.delivery_tag;
        }
    }
    assert_eq!(acked_upto, 6);
}

#[tokio::test]
async fn transactions_commit_and_rollback() {
    let b = start().await;
    let (c, ch) = setup(&b, "tx").await;
    let q = b.state().vhost("/").unwrap().queue("tx").unwrap();
    let t = c.create_channel().await.unwrap();
    t.tx_select().await.unwrap();
    publish_n(&t, "tx", 3).await;
    assert_eq!(q.message_count(), 0, "nothing before commit");
    t.tx_rollback().await.unwrap();
    assert_eq!(q.message_count(), 0);
    publish_n(&t, "tx", 2).await;
    t.tx_commit().await.unwrap();
    assert_eq!(q.message_count(), 2);
    // Acks in a transaction take effect at commit.
    let m = t
        .basic_get(ss("tx"), Default::default())
        .await
        .unwrap()
        .unwrap();
    m.delivery.ack(Default::default()).await.unwrap();
    t.tx_rollback().await.unwrap();
    t.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    assert!(
        eventually(DEADLINE, || async { q.message_count() == 2 }).await,
        "rolled-back ack: message still there"
    );
    // confirm.select on a tx channel → 406.
    let e = t.confirm_select(Default::default()).await.unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (
            406,
            "PRECONDITION_FAILED - cannot switch from tx to confirm mode".into()
        )
    );
    let _ = ch;
}

#[tokio::test]
async fn recover_requeue_false_is_540() {
    let b = start().await;
    let (c, _ch) = setup(&b, "rec").await;
    let t = c.create_channel().await.unwrap();
    let e = t
        .basic_recover(BasicRecoverOptions { requeue: false })
        .await
        .unwrap_err();
    assert_eq!(
        amqp_error(&e),
        (540, "NOT_IMPLEMENTED - requeue=false".into())
    );
}

#[tokio::test]
async fn a_consumer_that_does_not_read_does_not_stall_others() {
    let b = start().await;
    let (c, ch) = setup(&b, "slow").await;
    ch.queue_declare(ss("fast"), Default::default(), FieldTable::default())
        .await
        .unwrap();
    // The raw client consumes "slow" with no-ack and never reads its socket.
    let mut r = Raw::open(&b).await;
    r.open_channel(1).await;
    r.send(&method_frame(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "slow".into(),
            consumer_tag: "stuck".into(),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    ))
    .await;
    r.expect_method(1, 60, 21).await;
    // 32 MiB of messages for the stuck consumer: the broker must hold them in the queue, not
    // in an ever-growing socket buffer.
    let body = vec![0u8; 64 * 1024];
    for _ in 0..512 {
        ch.basic_publish(
            ss(""),
            ss("slow"),
            Default::default(),
            &body,
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    let q = b.state().vhost("/").unwrap().queue("slow").unwrap();
    assert!(eventually(DEADLINE, || async { q.message_count() > 0 }).await);
    // Meanwhile another consumer on another queue works normally.
    let cch = c.create_channel().await.unwrap();
    let mut fast = cch
        .basic_consume(
            ss("fast"),
            ss("f"),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish_n(&ch, "fast", 10).await;
    for _ in 0..10 {
        next(&mut fast).await.ack(Default::default()).await.unwrap();
    }
    // Most of the 32 MiB is still queued (the backlog bound is a few MiB plus socket buffers).
    assert!(q.message_count() > 256, "{}", q.message_count());
    // Once the client reads, everything arrives.
    let mut seen = HashMap::new();
    while seen.len() < 512 {
        match r.next().await {
            Reply::Frame(amq_protocol::frame::AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Deliver(d)),
            )) => {
                seen.insert(d.delivery_tag, ());
            }
            Reply::Frame(_) => {}
            other => panic!("{other:?}"),
        }
    }
}
