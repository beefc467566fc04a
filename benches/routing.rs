//! Routing cost with many bindings: `cargo bench --bench routing`.
//!
//! Builds a vhost with 10,000 bindings on a topic exchange (and, for comparison, a direct
//! exchange) and routes keys through `VHost::route`, the function `basic.publish` calls. Prints
//! messages routed per second and ns per route. Plain timing (no criterion): the figures in
//! docs/benchmarks.md come from this program.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;
use warren::exchange::{BindingDef, Destination, ExchangeDef, ExchangeKind};
use warren::queue::QueueDef;
use warren::vhost::VHost;

fn setup(
    kind: ExchangeKind,
    n: usize,
    pattern: impl Fn(usize) -> String,
) -> (Arc<VHost>, Arc<warren::exchange::Exchange>) {
    let v = VHost::new("/");
    let x = format!("bench.{}", kind.as_str());
    v.declare_exchange(
        ExchangeDef {
            name: x.clone(),
            kind,
            durable: false,
            auto_delete: false,
            internal: false,
            arguments: Default::default(),
        },
        kind.as_str(),
        false,
    )
    .unwrap();
    for i in 0..n {
        let q = format!("q{i}");
        v.declare_queue(
            QueueDef {
                name: q.clone(),
                durable: false,
                exclusive: false,
                auto_delete: false,
                arguments: Default::default(),
            },
            false,
            false,
            1,
        )
        .unwrap();
        v.bind(
            BindingDef {
                source: x.clone(),
                destination: Destination::Queue(q.as_str().into()),
                routing_key: pattern(i),
                arguments: Default::default(),
            },
            1,
        )
        .unwrap();
    }
    let ex = v.exchange(&x).unwrap();
    (v, ex)
}

fn run(name: &str, v: &VHost, x: &Arc<warren::exchange::Exchange>, keys: &[String], rounds: usize) {
    let start = Instant::now();
    let mut routed = 0usize;
    for r in 0..rounds {
        let k = &keys[r % keys.len()];
        let qs = v.route(x, &[k.as_bytes()], None);
        routed += black_box(qs.len());
    }
    let el = start.elapsed();
    let per = el.as_nanos() as f64 / rounds as f64;
    println!(
        "{name:<58} {:>10.0} msg/s  {:>8.0} ns/route  ({:.2} queues/msg)",
        rounds as f64 / el.as_secs_f64(),
        per,
        routed as f64 / rounds as f64
    );
}

fn main() {
    let n = 10_000;
    // Topic: 100 regions x 100 services, half with `*`, a few with `#`.
    let (v, x) = setup(ExchangeKind::Topic, n, |i| match i % 10 {
        0 => format!("region{}.#", i % 100),
        1..=4 => format!("region{}.service{}.*", i % 100, i / 100),
        _ => format!("region{}.service{}.created", i % 100, i / 100),
    });
    let matching: Vec<String> = (0..1000)
        .map(|i| format!("region{}.service{}.created", i % 100, (i * 7) % 100))
        .collect();
    let missing: Vec<String> = (0..1000)
        .map(|i| format!("zone{}.service{}.created", i % 100, i % 100))
        .collect();
    let rounds = 1_000_000;
    println!("10,000 bindings, {rounds} routes per row, one thread (VHost::route):");
    run(
        "topic, keys matching 1-3 bindings",
        &v,
        &x,
        &matching,
        rounds,
    );
    run("topic, keys matching nothing", &v, &x, &missing, rounds);
    let (v, x) = setup(ExchangeKind::Direct, n, |i| format!("key{i}"));
    let keys: Vec<String> = (0..1000).map(|i| format!("key{}", i * 10)).collect();
    run("direct, keys matching 1 binding", &v, &x, &keys, rounds);
    let (v1, x1) = setup(ExchangeKind::Direct, 1, |i| format!("key{i}"));
    let keys1: Vec<String> = vec!["key0".into()];
    run("direct, 1 binding (baseline)", &v1, &x1, &keys1, rounds);
}
