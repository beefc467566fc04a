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
            *b.state().memory_alarm.borrow()
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
