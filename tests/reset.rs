//! The test-environment broker: `warren::testing::Broker` (embedded, in memory, ephemeral
//! ports) and reset (`POST /api/warren/reset`): everything back to the boot state, or one
//! vhost; connections closed with 320 "reset"; fast with many queues and messages.

mod common;

use amq_protocol::types::FieldTable;
use common::{amqp_error, http_body, table};
use lapin::options::*;
use lapin::{BasicProperties, Connection};
use std::time::{Duration, Instant};
use warren::testing::Broker;

async fn connect(b: &Broker, vhost: &str) -> Connection {
    let uri = format!(
        "amqp://guest:guest@{}/{}",
        b.amqp_addr(),
        vhost.replace('/', "%2f")
    );
    Connection::connect(&uri, Default::default()).await.unwrap()
}

type Closed = std::sync::Arc<std::sync::Mutex<Option<(u16, String)>>>;

/// Records how the broker closes `c`.
fn watch_close(c: &Connection) -> Closed {
    use futures::StreamExt;
    let closed: Closed = Default::default();
    let seen = closed.clone();
    let mut events = c.events_listener();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            if let lapin::Event::Error(e) = e {
                *seen.lock().unwrap() = Some(amqp_error(&e));
                return;
            }
        }
    });
    closed
}

/// Wait until `closed` says the broker closed the connection; its code and text.
async fn closed_with(closed: &Closed) -> (u16, String) {
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            closed.lock().unwrap().is_some()
        })
        .await,
        "the connection was not closed"
    );
    closed.lock().unwrap().clone().unwrap()
}

fn mgmt(b: &Broker) -> std::net::SocketAddr {
    b.management_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap()
}

async fn post_reset(b: &Broker, body: &str) -> (u16, serde_json::Value) {
    http_body(
        mgmt(b),
        "POST",
        "/api/warren/reset",
        Some("guest:guest"),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn reset_returns_the_broker_to_its_boot_state() {
    let b = Broker::start().await.unwrap();
    let addr = mgmt(&b);
    let admin = Some("guest:guest");
    // State a test leaves behind: a vhost, a user, a policy, topology, messages, a shovel.
    for (path, body) in [
        ("/api/vhosts/scratch", "{}"),
        ("/api/users/alice", r#"{"password":"x","tags":""}"#),
        (
            "/api/policies/%2f/ttl",
            r#"{"pattern":".*","definition":{"message-ttl":60000}}"#,
        ),
        (
            "/api/parameters/shovel/%2f/mover",
            r#"{"value":{"src-uri":"amqp://","src-queue":"a","dest-uri":"amqp://","dest-queue":"b"}}"#,
        ),
    ] {
        let (status, _) = http_body(addr, "PUT", path, admin, Some(body)).await;
        assert!(status == 201 || status == 204, "{path}: {status}");
    }
    let c = connect(&b, "/").await;
    let closed = watch_close(&c);
    let ch = c.create_channel().await.unwrap();
    ch.exchange_declare(
        "x".into(),
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        "q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "q".into(),
        "x".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for _ in 0..10 {
        ch.basic_publish(
            "x".into(),
            "".into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    let v = b.state().vhost("/").unwrap();
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            v.queues.get("q").is_some_and(|q| q.message_count() == 10)
        })
        .await
    );
    drop(v);

    let (status, body) = post_reset(&b, "{}").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reset"], "all");

    // The open connection was closed: 320 CONNECTION_FORCED - reset.
    assert_eq!(
        closed_with(&closed).await,
        (320, "CONNECTION_FORCED - reset".to_string())
    );
    // Boot state: `/` with only the predeclared exchanges, no queue, no policy, no shovel;
    // the configuration's user and vhost only.
    let v = b.state().vhost("/").unwrap();
    assert!(v.queues.is_empty());
    assert!(!v.exchanges.contains_key("x"));
    assert!(b.state().vhost("scratch").is_none());
    assert!(b.state().shovels.is_empty());
    let (_, users) = http_body(addr, "GET", "/api/users", admin, None).await;
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["guest"]);
    let (_, policies) = http_body(addr, "GET", "/api/policies", admin, None).await;
    assert_eq!(policies, serde_json::json!([]));
    // And it works as new.
    let c = connect(&b, "/").await;
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare(
        "q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    b.stop().await;
}

#[tokio::test]
async fn reset_of_one_vhost_leaves_the_others() {
    let b = Broker::start().await.unwrap();
    let addr = mgmt(&b);
    let admin = Some("guest:guest");
    assert_eq!(
        http_body(addr, "PUT", "/api/vhosts/tenant", admin, Some("{}"))
            .await
            .0,
        201
    );
    let (status, _) = http_body(
        addr,
        "PUT",
        "/api/policies/tenant/p",
        admin,
        Some(r#"{"pattern":".*","definition":{"max-length":5}}"#),
    )
    .await;
    assert_eq!(status, 201);
    let keep = connect(&b, "/").await;
    let kch = keep.create_channel().await.unwrap();
    kch.queue_declare(
        "stays".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let gone = connect(&b, "tenant").await;
    let gone_closed = watch_close(&gone);
    let gch = gone.create_channel().await.unwrap();
    gch.queue_declare("goes".into(), QueueDeclareOptions::default(), table(&[]))
        .await
        .unwrap();

    let (status, body) = post_reset(&b, r#"{"vhost":"tenant"}"#).await;
    assert_eq!(
        (status, body["reset"].as_str()),
        (200, Some("vhost 'tenant'"))
    );
    assert_eq!(closed_with(&gone_closed).await.0, 320);
    let tenant = b.state().vhost("tenant").expect("the vhost itself stays");
    assert!(tenant.queues.is_empty());
    let (_, policies) = http_body(addr, "GET", "/api/policies/tenant", admin, None).await;
    assert_eq!(policies, serde_json::json!([]));
    // `/` and its connection are untouched.
    kch.queue_declare(
        "stays".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Unknown vhost: 404.
    assert_eq!(post_reset(&b, r#"{"vhost":"nope"}"#).await.0, 404);
    // The test clock is refused unless configured (tests/test_clock.rs runs with it on).
    let (status, body) = http_body(
        addr,
        "POST",
        "/api/warren/clock",
        admin,
        Some(r#"{"advance_ms": 1000}"#),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = http_body(addr, "GET", "/api/warren/clock", admin, None).await;
    assert_eq!((status, body["mode"].as_str()), (200, Some("real")));
    b.stop().await;
}

#[tokio::test]
async fn reset_of_1000_queues_holding_100000_messages_is_fast() {
    let b = Broker::start().await.unwrap();
    let v = b.state().vhost("/").unwrap();
    for i in 0..1000 {
        v.declare_queue(
            warren::defs::QueueDef {
                name: format!("q{i}"),
                durable: false,
                exclusive: false,
                auto_delete: false,
                arguments: FieldTable::default(),
            },
            false,
            false,
            0,
        )
        .unwrap();
    }
    let queues: Vec<_> = v.queues.iter().map(|q| q.clone()).collect();
    for q in &queues {
        for _ in 0..100 {
            let m = warren::message::Message::new(
                b"",
                q.name.as_bytes(),
                &[0, 0],
                bytes::Bytes::from_static(b"0123456789abcdef"),
            );
            v.publish_to(std::slice::from_ref(q), m, None);
        }
    }
    drop((queues, v));
    let started = Instant::now();
    b.reset().await.unwrap();
    let took = started.elapsed();
    assert!(b.state().vhost("/").unwrap().queues.is_empty());
    // The target is 50 ms (docs/testing.md measures it); a loaded CI machine gets slack.
    assert!(took < Duration::from_millis(500), "{took:?}");
    println!("reset of 1,000 queues and 100,000 messages: {took:?}");
    b.stop().await;
}
