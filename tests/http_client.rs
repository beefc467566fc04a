//! The management API driven through `rabbitmq_http_client`, the Rust client RabbitMQ's own
//! `rabbitmqadmin` v2 is built on: every call parses Warren's JSON with the structs RabbitMQ's
//! tools use, so a missing or mistyped field fails here.

mod common;

use common::*;
use lapin::options::*;
use rabbitmq_http_client::api::Client;
use rabbitmq_http_client::commons::{
    BindingDestinationType, ExchangeType, PolicyTarget, SupportedProtocol,
};
use rabbitmq_http_client::requests::{
    BindingDeletionParams, ExchangeParams, PolicyParams, QueueParams,
};
use serde_json::{Map, Value, json};
use std::time::Duration;
use warren::Config;

type Http = Client<String, &'static str, &'static str>;

async fn broker() -> (warren::Broker, Http) {
    let mut cfg = Config::for_tests();
    cfg.management.enabled = true;
    cfg.management.port = 0;
    cfg.management.stats_interval_ms = 100;
    let b = start_with(cfg).await;
    let endpoint = format!("http://{}/api", b.management_addr().unwrap());
    (b, Client::new(endpoint, "guest", "guest"))
}

fn args(v: Value) -> Option<Map<String, Value>> {
    v.as_object().cloned()
}

#[tokio::test]
async fn overview_nodes_and_health_checks() {
    let (b, http) = broker().await;
    let o = http.overview().await.unwrap();
    assert_eq!(o.rabbitmq_version, "3.10.8");
    assert_eq!(o.product_name, "Warren");
    assert!(
        o.listeners
            .iter()
            .any(|l| l.port == b.local_addr().port() as u32)
    );
    let nodes = http.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert!(nodes[0].fd_total > 0);
    http.get_node_info(&nodes[0].name).await.unwrap();
    http.health_check_cluster_wide_alarms().await.unwrap();
    http.health_check_local_alarms().await.unwrap();
    http.health_check_if_node_is_quorum_critical()
        .await
        .unwrap();
    http.health_check_port_listener(b.local_addr().port())
        .await
        .unwrap();
    assert!(http.health_check_port_listener(1).await.is_err());
    http.health_check_protocol_listener(SupportedProtocol::AMQP)
        .await
        .unwrap();
    assert!(
        http.health_check_protocol_listener(SupportedProtocol::MQTT)
            .await
            .is_err()
    );
    assert_eq!(
        http.get_cluster_name().await.unwrap().name,
        "warren@localhost"
    );
}

#[tokio::test]
async fn declare_bind_publish_get_and_delete() {
    let (_b, http) = broker().await;
    http.declare_exchange(
        "/",
        &ExchangeParams::durable("orders", ExchangeType::Topic, None),
    )
    .await
    .unwrap();
    http.declare_queue(
        "/",
        &QueueParams::new_durable_classic_queue("orders.eu", args(json!({"x-max-length": 100}))),
    )
    .await
    .unwrap();
    http.bind_queue("/", "orders.eu", "orders", Some("eu.#"), None)
        .await
        .unwrap();
    let q = http.get_queue_info("/", "orders.eu").await.unwrap();
    assert!(q.durable);
    assert_eq!(q.arguments.0.get("x-max-length"), Some(&json!(100)));
    let x = http.get_exchange_info("/", "orders").await.unwrap();
    assert_eq!(x.exchange_type, "topic");

    let bindings = http.list_queue_bindings("/", "orders.eu").await.unwrap();
    // The default exchange's implicit binding, then ours.
    assert_eq!(bindings.len(), 2, "{bindings:?}");
    assert_eq!(bindings[1].source, "orders");
    assert_eq!(
        http.list_exchange_bindings_with_source("/", "orders")
            .await
            .unwrap()
            .len(),
        1
    );

    let mut props = Map::new();
    props.insert("delivery_mode".into(), json!(2));
    props.insert("headers".into(), json!({"tenant": "acme"}));
    let routed = http
        .publish_message("/", "orders", "eu.de", "order 1", props.clone())
        .await
        .unwrap();
    assert!(routed.routed);
    let unrouted = http
        .publish_message("/", "orders", "us.ny", "order 2", props)
        .await
        .unwrap();
    assert!(!unrouted.routed);

    let got = http
        .get_messages("/", "orders.eu", 1, "ack_requeue_true")
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, "order 1");
    assert_eq!(got[0].routing_key, "eu.de");
    // Requeued: still there, now redelivered.
    let again = http
        .get_messages("/", "orders.eu", 1, "ack_requeue_false")
        .await
        .unwrap();
    assert!(again[0].redelivered);
    assert!(
        http.get_messages("/", "orders.eu", 1, "ack_requeue_false")
            .await
            .unwrap()
            .is_empty()
    );

    http.delete_binding(
        &BindingDeletionParams {
            virtual_host: "/",
            source: "orders",
            destination: "orders.eu",
            destination_type: BindingDestinationType::Queue,
            routing_key: "eu.#",
            arguments: None,
        },
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        http.list_queue_bindings("/", "orders.eu")
            .await
            .unwrap()
            .len(),
        1
    );
    http.purge_queue("/", "orders.eu").await.unwrap();
    http.delete_queue("/", "orders.eu", false).await.unwrap();
    assert!(http.delete_queue("/", "orders.eu", false).await.is_err());
    http.delete_queue("/", "orders.eu", true).await.unwrap();
    http.delete_exchange("/", "orders", false).await.unwrap();
    assert!(http.get_exchange_info("/", "orders").await.is_err());
}

#[tokio::test]
async fn connections_channels_consumers_and_close() {
    let (b, http) = broker().await;
    let c = lapin::Connection::connect(
        &uri(&b),
        lapin::ConnectionProperties::default()
            .with_client_property("connection_name".into(), "billing-worker".into()),
    )
    .await
    .unwrap();
    let ch = c.create_channel().await.unwrap();
    ch.basic_qos(5, BasicQosOptions::default()).await.unwrap();
    ch.queue_declare(
        "jobs".into(),
        QueueDeclareOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let _consumer = ch
        .basic_consume(
            "jobs".into(),
            "worker-1".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();

    let conns = http.list_connections().await.unwrap();
    assert_eq!(conns.len(), 1);
    let conn = &conns[0];
    assert_eq!(conn.client_properties.connection_name, "billing-worker");
    assert_eq!(conn.username, "guest");
    assert_eq!(conn.channel_count, 1);
    let one = http.get_connection_info(&conn.name).await.unwrap();
    assert_eq!(one.name, conn.name);

    let channels = http.list_channels().await.unwrap();
    assert_eq!(channels.len(), 1);
    assert_eq!(channels[0].consumer_count, 1);
    assert_eq!(channels[0].prefetch_count, 5);
    http.get_channel_info(&channels[0].name).await.unwrap();

    let consumers = http.list_consumers().await.unwrap();
    assert_eq!(consumers.len(), 1);
    assert_eq!(consumers[0].consumer_tag, "worker-1");
    assert_eq!(consumers[0].queue.name, "jobs");

    http.close_connection(&conn.name, Some("maintenance"), false)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async { !c.status().connected() }).await,
        "the connection was not closed"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            http.list_connections().await.unwrap().is_empty()
        })
        .await
    );
}

#[tokio::test]
async fn message_rates_are_sampled() {
    let (b, http) = broker().await;
    let c = lapin_connect(&b).await;
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare(
        "rated".into(),
        QueueDeclareOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();
    for _ in 0..20 {
        ch.basic_publish(
            "".into(),
            "rated".into(),
            BasicPublishOptions::default(),
            b"x",
            Default::default(),
        )
        .await
        .unwrap();
    }
    // The sampler runs every 100 ms here (RabbitMQ: collect_statistics_interval, 5 s).
    assert!(
        eventually(Duration::from_secs(5), || async {
            let o = http.overview().await.unwrap();
            o.queue_totals.messages == 20
                && o.message_stats
                    .publishing_details
                    .is_some_and(|r| r.rate >= 0.0)
        })
        .await
    );
    let q = http.get_queue_info("/", "rated").await.unwrap();
    assert_eq!(q.message_count, 20);
}

#[tokio::test]
async fn policies_parameters_users_and_definitions() {
    let (_b, http) = broker().await;
    let mut def = Map::new();
    def.insert("max-length".into(), json!(1000));
    def.insert("dead-letter-exchange".into(), json!("dlx"));
    http.declare_policy(&PolicyParams {
        vhost: "/",
        name: "dlx",
        pattern: "^orders\\.",
        apply_to: PolicyTarget::Queues,
        priority: 5,
        definition: def,
    })
    .await
    .unwrap();
    let ps = http.list_policies().await.unwrap();
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].priority, 5);
    let bad = http
        .declare_policy(&PolicyParams {
            vhost: "/",
            name: "bad",
            pattern: "x",
            apply_to: PolicyTarget::Queues,
            priority: 0,
            definition: args(json!({"max-length": "lots"})).unwrap(),
        })
        .await;
    assert!(bad.is_err());

    http.declare_queue("/", &QueueParams::new_durable_classic_queue("kept", None))
        .await
        .unwrap();
    let defs = http
        .export_cluster_wide_definitions_as_data()
        .await
        .unwrap();
    assert!(defs.queues.iter().any(|q| q.name == "kept"));
    assert_eq!(defs.policies.len(), 1);

    // Round trip into a fresh broker.
    let (_b2, other) = broker().await;
    let text = http.export_cluster_wide_definitions().await.unwrap();
    let parsed: Value = serde_json::from_str(&text).unwrap();
    other.import_cluster_wide_definitions(parsed).await.unwrap();
    other.get_queue_info("/", "kept").await.unwrap();
    assert_eq!(other.list_policies().await.unwrap().len(), 1);

    http.delete_policy("/", "dlx", false).await.unwrap();
    assert!(http.list_policies().await.unwrap().is_empty());
}

/// The parts of a definitions document that must survive a round trip, normalised (sets of
/// objects; RabbitMQ's own `cluster_name` and `internal_cluster_id` global parameters are
/// the broker's, not the file's).
fn normalised(d: &Value) -> Vec<(String, std::collections::BTreeSet<String>)> {
    let pick = |v: &Value, keys: &[&str]| -> String {
        let mut o = Map::new();
        for k in keys {
            if let Some(x) = v.get(*k) {
                o.insert((*k).to_string(), x.clone());
            }
        }
        Value::Object(o).to_string()
    };
    let section = |name: &str, keys: &[&str]| {
        let set = d[name]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .filter(|v| {
                !matches!(
                    v.get("name").and_then(Value::as_str),
                    Some("cluster_name" | "internal_cluster_id")
                ) || name != "global_parameters"
            })
            .map(|v| pick(v, keys))
            .collect();
        (name.to_string(), set)
    };
    vec![
        section(
            "users",
            &[
                "name",
                "password_hash",
                "hashing_algorithm",
                "tags",
                "limits",
            ],
        ),
        section("vhosts", &["name"]),
        section(
            "permissions",
            &["user", "vhost", "configure", "write", "read"],
        ),
        section(
            "topic_permissions",
            &["user", "vhost", "exchange", "write", "read"],
        ),
        section("parameters", &["vhost", "component", "name", "value"]),
        section("global_parameters", &["name", "value"]),
        section(
            "policies",
            &[
                "vhost",
                "name",
                "pattern",
                "apply-to",
                "definition",
                "priority",
            ],
        ),
        section(
            "queues",
            &["name", "vhost", "durable", "auto_delete", "arguments"],
        ),
        section(
            "exchanges",
            &[
                "name",
                "vhost",
                "type",
                "durable",
                "auto_delete",
                "internal",
                "arguments",
            ],
        ),
        section(
            "bindings",
            &[
                "source",
                "vhost",
                "destination",
                "destination_type",
                "routing_key",
                "arguments",
            ],
        ),
    ]
}

#[tokio::test]
async fn rabbitmq_definitions_round_trip() {
    // Exported from RabbitMQ 3.10.8: every exchange type, exchange-to-exchange bindings,
    // headers bindings with arguments, classic and quorum queues with their arguments,
    // policies, an operator policy, a shovel parameter, vhost limits, users with hashes,
    // permissions and topic permissions.
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rabbitmq-3.10.8-definitions-topology.json"
    ))
    .unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let (_b, http) = broker().await;
    http.import_cluster_wide_definitions(reference.clone())
        .await
        .unwrap();
    let exported: Value =
        serde_json::from_str(&http.export_cluster_wide_definitions().await.unwrap()).unwrap();
    for ((name, want), (_, got)) in normalised(&reference)
        .into_iter()
        .zip(normalised(&exported))
    {
        assert!(!want.is_empty(), "the reference file has {name}");
        let missing: Vec<_> = want.difference(&got).collect();
        let extra: Vec<_> = got.difference(&want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name}: missing {missing:#?}\nextra {extra:#?}"
        );
    }
    // And the imported topology is live: a queue with its arguments, the imported policies
    // applied to the queues they match.
    let q = http.get_queue_info("shop", "shop.prio").await.unwrap();
    assert_eq!(q.arguments.0.get("x-max-priority"), Some(&json!(10)));
    let q = http.get_queue_info("shop", "policy.orders").await.unwrap();
    assert_eq!(q.policy.as_deref(), Some("dlx-ttl"));
    let q = http.get_queue_info("shop", "shop.temp").await.unwrap();
    assert_eq!(q.policy.as_deref(), Some("all-lazy"));
}

#[tokio::test]
async fn users_vhosts_permissions_limits_and_parameters() {
    use rabbitmq_http_client::commons::VirtualHostLimitTarget;
    use rabbitmq_http_client::password_hashing;
    use rabbitmq_http_client::requests::{
        EnforcedLimitParams, GlobalRuntimeParameterDefinition, Permissions,
        RuntimeParameterDefinition, UserParams, VirtualHostParams,
    };
    let (b, http) = broker().await;
    http.create_vhost(&VirtualHostParams::builder("billing").build())
        .await
        .unwrap();
    assert!(
        http.list_vhosts()
            .await
            .unwrap()
            .iter()
            .any(|v| v.name == "billing")
    );
    // A hash made by the client's own RabbitMQ-compatible hashing logs in over AMQP.
    let salt = password_hashing::salt();
    let hash = password_hashing::base64_encoded_salted_password_hash_sha256(&salt, "s3cret");
    http.create_user(&UserParams {
        name: "biller",
        password_hash: &hash,
        tags: "monitoring",
    })
    .await
    .unwrap();
    http.declare_permissions(&Permissions {
        user: "biller",
        vhost: "billing",
        configure: "^billing\\.",
        read: ".*",
        write: ".*",
    })
    .await
    .unwrap();
    let p = http.get_permissions("billing", "biller").await.unwrap();
    assert_eq!(p.configure, "^billing\\.");
    let uri = format!("amqp://biller:s3cret@{}/billing", b.local_addr());
    lapin::Connection::connect(&uri, Default::default())
        .await
        .expect("the user created over HTTP logs in");

    http.set_vhost_limit(
        "billing",
        EnforcedLimitParams::new(VirtualHostLimitTarget::MaxQueues, 10),
    )
    .await
    .unwrap();
    let limits = http.list_vhost_limits("billing").await.unwrap();
    assert_eq!(limits.len(), 1);

    // A component Warren keeps without running (shovels are tested in test_shovel.py).
    let mut value = Map::new();
    value.insert("uri".into(), json!("amqp://upstream.example"));
    http.upsert_runtime_parameter(&RuntimeParameterDefinition {
        name: "upstream",
        vhost: "billing",
        component: "federation-upstream",
        value,
    })
    .await
    .unwrap();
    let params = http.list_runtime_parameters().await.unwrap();
    assert!(
        params
            .iter()
            .any(|p| p.name == "upstream" && p.component == "federation-upstream")
    );
    let mut g = Map::new();
    g.insert("env".into(), json!("test"));
    http.upsert_global_runtime_parameter(&GlobalRuntimeParameterDefinition {
        name: "deployment",
        value: g,
    })
    .await
    .unwrap();
    http.get_global_runtime_parameter("deployment")
        .await
        .unwrap();

    let mut op = Map::new();
    op.insert("max-length".into(), json!(5000));
    http.declare_operator_policy(&PolicyParams {
        vhost: "billing",
        name: "cap",
        pattern: ".*",
        apply_to: PolicyTarget::Queues,
        priority: 0,
        definition: op,
    })
    .await
    .unwrap();
    assert_eq!(http.list_operator_policies().await.unwrap().len(), 1);

    http.delete_user("biller", false).await.unwrap();
    http.delete_vhost("billing", false).await.unwrap();
    assert!(http.list_operator_policies().await.unwrap().is_empty());
}

#[tokio::test]
async fn load_definitions_at_boot() {
    // RabbitMQ's `load_definitions`: the file is imported before clients are served.
    let mut cfg = Config::for_tests();
    cfg.management.enabled = true;
    cfg.management.port = 0;
    cfg.load_definitions = Some(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/rabbitmq-3.10.8-definitions-topology.json"
        )
        .into(),
    );
    let b = start_with(cfg).await;
    let http: Http = Client::new(
        format!("http://{}/api", b.management_addr().unwrap()),
        "guest",
        "guest",
    );
    let x = http
        .get_exchange_info("shop", "shop.with-ae")
        .await
        .unwrap();
    assert_eq!(
        x.arguments.0.get("alternate-exchange"),
        Some(&json!("shop.unrouted"))
    );
    assert!(!http.list_queues_in("shop").await.unwrap().is_empty());
    assert_eq!(http.list_policies_in("shop").await.unwrap().len(), 3);

    // A file that does not parse stops the start with its name in the error.
    let mut bad = Config::for_tests();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.json");
    std::fs::write(&path, b"{not json").unwrap();
    bad.load_definitions = Some(path);
    let err = warren::Broker::start(bad).await.err().expect("refused");
    assert!(err.to_string().contains("broken.json"), "{err}");
}

#[tokio::test]
async fn large_definitions_files_import() {
    // 12,000 queues and bindings: a 3 MB file, over axum's default body limit of 2 MiB and
    // under RabbitMQ's management.http.max_body_size (20 MiB).
    let queues: Vec<Value> = (0..12_000)
        .map(|i| {
            json!({"name": format!("tenant-{i:05}.jobs"), "vhost": "/", "durable": true,
                   "auto_delete": false, "arguments": {"x-max-length": 1000}})
        })
        .collect();
    let bindings: Vec<Value> = (0..12_000)
        .map(|i| {
            json!({"source": "amq.direct", "vhost": "/", "destination": format!("tenant-{i:05}.jobs"),
                   "destination_type": "queue", "routing_key": format!("tenant-{i:05}"),
                   "arguments": {}})
        })
        .collect();
    let defs = json!({"queues": queues, "bindings": bindings});
    assert!(defs.to_string().len() > 2 * 1024 * 1024);
    let (_b, http) = broker().await;
    let started = std::time::Instant::now();
    http.import_cluster_wide_definitions(defs).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(http.list_queues().await.unwrap().len(), 12_000);
    eprintln!("imported 12,000 queues and bindings in {elapsed:?}");
}
