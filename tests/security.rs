//! Users, hashes, permissions and limits as runtime, durable state: a RabbitMQ definitions
//! export imported over HTTP lets the same users in with the same rights; changes survive a
//! restart; the configuration seeds only the first start.

mod common;

use common::{http, http_body, start_with};
use lapin::options::*;
use lapin::types::FieldTable;
use std::net::SocketAddr;
use warren::{Broker, Config};

fn config() -> Config {
    let mut cfg = Config::for_tests();
    cfg.management.enabled = true;
    cfg.management.bind = "127.0.0.1".into();
    cfg.management.port = 0;
    cfg
}

async fn connect(
    b: &Broker,
    user: &str,
    pw: &str,
    vhost: &str,
) -> lapin::Result<lapin::Connection> {
    let vhost = vhost.replace('/', "%2f");
    let uri = format!("amqp://{user}:{pw}@{}/{vhost}", b.local_addr());
    lapin::Connection::connect(&uri, lapin::ConnectionProperties::default()).await
}

async fn put(addr: SocketAddr, path: &str, body: &str) -> u16 {
    http_body(addr, "PUT", path, Some("guest:guest"), Some(body))
        .await
        .0
}

#[tokio::test]
async fn a_rabbitmq_definitions_export_brings_its_users_and_rights() {
    let b = start_with(config()).await;
    let addr = b.management_addr().unwrap();
    let export = include_str!("fixtures/rabbitmq-3.10.8-definitions.json");
    let (status, body) = http_body(
        addr,
        "POST",
        "/api/definitions",
        Some("guest:guest"),
        Some(export),
    )
    .await;
    assert_eq!(status, 204, "{body}");

    // The hashes RabbitMQ exported authenticate the same passwords.
    assert!(connect(&b, "svc-orders", "wrong", "orders").await.is_err());
    let c = connect(&b, "svc-orders", "orders-pw", "orders")
        .await
        .unwrap();
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare(
        "orders.created".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let err = ch
        .queue_declare(
            "payments".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(
            "ACCESS_REFUSED - access to queue 'payments' in vhost 'orders' refused for user 'svc-orders'"
        ),
        "{err}"
    );
    // The topic permission, with {username} expanded.
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.basic_publish(
        "amq.topic".into(),
        "orders.svc-orders.created".into(),
        BasicPublishOptions::default(),
        b"ok",
        Default::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let refused = ch
        .basic_publish(
            "amq.topic".into(),
            "payments.x".into(),
            BasicPublishOptions::default(),
            b"no",
            Default::default(),
        )
        .await;
    let closed = match refused {
        Err(e) => e.to_string(),
        Ok(confirm) => match confirm.await {
            Err(e) => e.to_string(),
            Ok(_) => ch
                .queue_declare(
                    "orders.created".into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap_err()
                .to_string(),
        },
    };
    assert!(
        closed.contains("access to topic 'payments.x' in exchange 'amq.topic' in vhost 'orders'"),
        "{closed}"
    );
    // svc-orders has no rights in "/".
    let err = connect(&b, "svc-orders", "orders-pw", "/")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("access to vhost '/' refused"),
        "{err}"
    );
    // The user limit came along (max-connections 2).
    let _second = connect(&b, "svc-orders", "orders-pw", "orders")
        .await
        .unwrap();
    let err = connect(&b, "svc-orders", "orders-pw", "orders")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("user connection limit (2) is reached"),
        "{err}"
    );
    // alice is a management user.
    let (status, me) = http(addr, "GET", "/api/whoami", Some("alice:alice-pw")).await;
    assert_eq!((status, me["tags"][0].as_str()), (200, Some("management")));
    // The vhost limit came along.
    let (_, limits) = http(addr, "GET", "/api/vhost-limits/orders", Some("guest:guest")).await;
    assert_eq!(limits[0]["value"]["max-queues"], 10);
    // And the export gives back what was imported: the same hash.
    let (_, defs) = http(addr, "GET", "/api/definitions", Some("guest:guest")).await;
    let alice = defs["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "alice")
        .unwrap();
    assert_eq!(
        alice["password_hash"],
        "SiHIMaSRXklvQNuV2xBiVo5gg+Fg6sOQ2ZmU5eWx8e0qRkyF"
    );
    b.shutdown(std::time::Duration::from_secs(2)).await;
}

#[tokio::test]
async fn users_vhosts_and_permissions_survive_a_restart_and_the_config_seeds_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.storage.mode = warren::config::StorageMode::Disk;
    cfg.data_dir = dir.path().to_path_buf();
    let b = start_with(cfg.clone()).await;
    let addr = b.management_addr().unwrap();
    assert_eq!(put(addr, "/api/vhosts/v2", "{}").await, 201);
    assert_eq!(
        put(
            addr,
            "/api/users/carol",
            r#"{"password":"c-pw","tags":"administrator"}"#
        )
        .await,
        201
    );
    assert_eq!(
        put(
            addr,
            "/api/permissions/v2/carol",
            r#"{"configure":"^c","write":".*","read":".*"}"#
        )
        .await,
        201
    );
    let c = connect(&b, "carol", "c-pw", "v2").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare(
        "cq".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    // The default user is deleted: it must not come back from the configuration.
    let (status, _) = http(addr, "DELETE", "/api/users/guest", Some("carol:c-pw")).await;
    assert_eq!(status, 204);
    b.shutdown(std::time::Duration::from_secs(2)).await;

    let b = start_with(cfg).await;
    let addr = b.management_addr().unwrap();
    assert!(connect(&b, "guest", "guest", "/").await.is_err());
    let c = connect(&b, "carol", "c-pw", "v2").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    let q = ch
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
    assert_eq!(q.name().as_str(), "cq");
    let err = ch
        .queue_declare(
            "dq".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("access to queue 'dq' in vhost 'v2'"),
        "{err}"
    );
    let (status, perm) = http(addr, "GET", "/api/permissions/v2/carol", Some("carol:c-pw")).await;
    assert_eq!((status, perm["configure"].as_str()), (200, Some("^c")));
    // Deleting the vhost removes its files; a vhost of that name starts empty.
    let (status, _) = http(addr, "DELETE", "/api/vhosts/v2", Some("carol:c-pw")).await;
    assert_eq!(status, 204);
    assert!(!warren::store::vhost_dir(dir.path(), "v2").exists());
    b.shutdown(std::time::Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_configured_password_hash_logs_in() {
    let mut cfg = config();
    let mut u = warren::config::User::with_password("hashed", "unused", &["*"]);
    u.password = None;
    // From RabbitMQ 3.10.8: `rabbitmqctl add_user u pw`.
    u.password_hash = Some("SqCulEq8Pz7lqSQp/ubd+CE/wmKrte5Zfw+KEUmiU3TWKl7S".into());
    cfg.users.push(u);
    let b = start_with(cfg).await;
    connect(&b, "hashed", "pw", "/").await.unwrap();
    assert!(connect(&b, "hashed", "unused", "/").await.is_err());
    // No management tag: the HTTP API refuses it as RabbitMQ does.
    let (status, body) = http(
        b.management_addr().unwrap(),
        "GET",
        "/api/overview",
        Some("hashed:pw"),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["reason"], "Not management user");
}
