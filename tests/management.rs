//! The management HTTP API: RabbitMQ's paths, field names and error bodies for the subset
//! Warren serves (overview, vhosts, queues with their depths, exchanges, purge), basic auth.
//! Field names, status codes and error bodies were recorded from RabbitMQ 3.10.8 with the
//! `rabbitmq_management` plugin enabled.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use serde_json::Value;
use std::net::SocketAddr;
use warren::Config;

async fn broker() -> (warren::Broker, SocketAddr) {
    let mut cfg = Config::for_tests();
    cfg.management.enabled = true;
    cfg.management.bind = "127.0.0.1".into();
    cfg.management.port = 0;
    let b = start_with(cfg).await;
    let addr = b.management_addr().unwrap();
    (b, addr)
}

const GUEST: Option<&str> = Some("guest:guest");

#[tokio::test]
async fn requests_need_valid_credentials() {
    let (_b, addr) = broker().await;
    // Recorded from RabbitMQ 3.10.8's management plugin.
    assert_eq!(
        http(addr, "GET", "/api/overview", None).await,
        (401, Value::Null)
    );
    for user in [Some("guest:wrong"), Some("nobody:guest")] {
        let (status, body) = http(addr, "GET", "/api/overview", user).await;
        assert_eq!(status, 401, "{user:?}");
        assert_eq!(
            body,
            serde_json::json!({"error": "not_authorized", "reason": "Login failed"})
        );
    }
    assert_eq!(http(addr, "GET", "/api/overview", GUEST).await.0, 200);
}

#[tokio::test]
async fn queue_depths_counts_and_purge() {
    let (b, addr) = broker().await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare(
        "dlq".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        table(&[("x-max-length", amq_protocol::types::AMQPValue::LongInt(100))]),
    )
    .await
    .unwrap();
    for body in [b"a", b"b", b"c"] {
        ch.basic_publish(
            "".into(),
            "dlq".into(),
            BasicPublishOptions::default(),
            body,
            Default::default(),
        )
        .await
        .unwrap();
    }
    // One delivered and not acked.
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            ch.basic_get("dlq".into(), BasicGetOptions::default())
                .await
                .unwrap()
                .is_some()
        })
        .await
    );
    let (status, q) = http(addr, "GET", "/api/queues/%2F/dlq", GUEST).await;
    assert_eq!(status, 200);
    assert_eq!(q["name"], "dlq");
    assert_eq!(q["vhost"], "/");
    assert_eq!(q["durable"], true);
    assert_eq!(q["type"], "classic");
    assert_eq!(q["arguments"], serde_json::json!({"x-max-length": 100}));
    assert_eq!(
        (
            &q["messages"],
            &q["messages_ready"],
            &q["messages_unacknowledged"]
        ),
        (&Value::from(3), &Value::from(2), &Value::from(1))
    );
    assert_eq!(q["consumers"], 0);
    let (_, all) = http(addr, "GET", "/api/queues", GUEST).await;
    assert!(all.as_array().unwrap().iter().any(|x| x["name"] == "dlq"));
    let (_, in_vhost) = http(addr, "GET", "/api/queues/%2F", GUEST).await;
    assert_eq!(in_vhost.as_array().unwrap().len(), 1);
    let (status, body) = http(addr, "GET", "/api/queues/%2F/missing", GUEST).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        serde_json::json!({"error": "Object Not Found", "reason": "Not Found"})
    );
    assert_eq!(
        http(addr, "GET", "/api/queues/nope/dlq", GUEST).await.0,
        404
    );
    // Purge: the ready ones go, the unacked one stays (as in RabbitMQ).
    let (status, _) = http(addr, "DELETE", "/api/queues/%2F/dlq/contents", GUEST).await;
    assert_eq!(status, 204);
    let (_, q) = http(addr, "GET", "/api/queues/%2F/dlq", GUEST).await;
    assert_eq!(
        (&q["messages_ready"], &q["messages_unacknowledged"]),
        (&Value::from(0), &Value::from(1))
    );
    let (_, o) = http(addr, "GET", "/api/overview", GUEST).await;
    assert_eq!(o["queue_totals"]["messages"], 1);
    assert_eq!(o["object_totals"]["queues"], 1);
    assert!(o["object_totals"]["connections"].as_u64().unwrap() >= 1);
    let (_, vhosts) = http(addr, "GET", "/api/vhosts", GUEST).await;
    assert_eq!(vhosts[0]["name"], "/");
    assert_eq!(vhosts[0]["messages"], 1);
    ch.queue_declare(
        "qq".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        table(&[("x-queue-type", s("quorum"))]),
    )
    .await
    .unwrap();
    let (_, qq) = http(addr, "GET", "/api/queues/%2F/qq", GUEST).await;
    assert_eq!(qq["type"], "quorum");
}

#[tokio::test]
async fn exchanges_are_listed_with_their_types() {
    let (b, addr) = broker().await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    ch.exchange_declare(
        "events".into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let (status, xs) = http(addr, "GET", "/api/exchanges/%2F", GUEST).await;
    assert_eq!(status, 200);
    let xs = xs.as_array().unwrap();
    let find = |n: &str| xs.iter().find(|x| x["name"] == n).cloned().unwrap();
    assert_eq!(find("events")["type"], "topic");
    assert_eq!(find("amq.direct")["type"], "direct");
    assert_eq!(find("")["type"], "direct");
    let (_, all) = http(addr, "GET", "/api/exchanges", GUEST).await;
    assert_eq!(all.as_array().unwrap().len(), xs.len());
}
