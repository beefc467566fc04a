//! The memory alarm: while messages in memory exceed `memory.high_watermark(_bytes)`, a
//! connection that publishes is blocked (`connection.blocked` to clients with the capability,
//! then nothing more is read from it) until the alarm clears (`connection.unblocked`).
//! Connections that do not publish keep working, so consumers can drain the backlog.

mod common;

use amq_protocol::protocol::AMQPClass;
use amq_protocol::protocol::connection as conn;
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use std::time::Duration;
use warren::Config;

#[tokio::test]
async fn publishing_during_a_memory_alarm_blocks_the_connection_until_it_clears() {
    let mut cfg = Config::for_tests();
    cfg.memory.high_watermark_bytes = 256 * 1024;
    let b = start_with(cfg).await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare(
        "backlog".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let q = b.state().vhost("/").unwrap().queue("backlog").unwrap();
    let mut p = Raw::open(&b).await;
    p.open_channel(1).await;
    for _ in 0..64 {
        p.publish(1, "", "backlog", 0, &[7u8; 16 * 1024]).await;
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.state().alarms.borrow().memory
        })
        .await,
        "1 MiB queued, watermark 256 KiB: the alarm is raised"
    );
    // The next publish blocks the connection.
    p.publish(1, "", "backlog", 0, b"trigger").await;
    match p.expect_method(0, 10, 60).await {
        AMQPClass::Connection(conn::AMQPMethod::Blocked(m)) => {
            assert_eq!(m.reason.as_str(), "low on memory")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(q.message_count(), 65);
    // Nothing more is read from it meanwhile.
    p.publish(1, "", "backlog", 0, b"held back").await;
    // Another connection (not publishing) is not blocked: it purges, the alarm clears.
    let purged = ch
        .queue_purge("backlog".into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(
        purged, 65,
        "the held-back message was not read while blocked"
    );
    p.expect_method(0, 10, 61).await;
    assert!(eventually(Duration::from_secs(5), || async { q.message_count() == 1 }).await);
    // And the connection works as before.
    p.publish(1, "", "backlog", 0, b"after").await;
    assert!(eventually(Duration::from_secs(5), || async { q.message_count() == 2 }).await);
    assert_still_serving(&b).await;
}

/// Bytes a client makes the broker hold before anything is queued count too: publishes in an
/// uncommitted transaction and a large body still arriving raise the alarm, and releasing
/// them (rollback, closing the channel) clears it.
#[tokio::test]
async fn uncommitted_transactions_and_partial_bodies_count_toward_the_alarm() {
    let mut cfg = Config::for_tests();
    cfg.memory.high_watermark_bytes = 512 * 1024;
    let b = start_with(cfg).await;
    let alarm = |on: bool| {
        let b = &b;
        async move {
            eventually(Duration::from_secs(5), || async {
                b.state().alarms.borrow().memory == on
            })
            .await
        }
    };
    let mut p = Raw::open(&b).await;
    p.open_channel(1).await;
    p.send(&raw_method(1, 90, 10, &[])).await; // tx.select
    p.expect_method(1, 90, 11).await;
    for _ in 0..64 {
        p.publish(1, "amq.direct", "nowhere", 0, &[1u8; 16 * 1024])
            .await;
    }
    assert!(alarm(true).await, "1 MiB in a transaction raises the alarm");
    p.send(&raw_method(1, 90, 30, &[])).await; // tx.rollback
    p.expect_method(1, 90, 31).await;
    assert!(alarm(false).await, "rollback releases it");
    assert_eq!(
        b.state()
            .buffered
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // A 4 MiB body of which 1 MiB has arrived (frames of 128 KiB).
    p.open_channel(2).await;
    let mut args = vec![0, 0];
    args.extend_from_slice(&shortstr(b""));
    args.extend_from_slice(&shortstr(b"nowhere"));
    args.push(0);
    let mut bytes = raw_method(2, 60, 40, &args);
    bytes.extend_from_slice(&raw_header(2, 4 * 1024 * 1024));
    for _ in 0..8 {
        bytes.extend_from_slice(&raw_frame(3, 2, &[2u8; 131072 - 8]));
    }
    p.send(&bytes).await;
    assert!(alarm(true).await, "a partial body raises the alarm");
    // A method in the middle of a body is a 505 (connection close): its channels go.
    p.send(&raw_method(2, 60, 10, &[0, 0, 0, 0, 0, 1, 0])).await;
    let (code, _, _, _) = p.expect_connection_close().await;
    assert_eq!(code, 505);
    assert!(alarm(false).await, "closing the connection releases it");
    assert_eq!(
        b.state()
            .buffered
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}
