//! The `warren-perf` load generator: end-to-end runs against an in-process Warren (autoack,
//! manual acks with confirms, fanout) and the verifier's own check against the tool's
//! in-process fake broker, which loses or duplicates every 100th delivery on request.

use std::process::Output;
use std::time::Duration;

/// Run the tool with `args`; (exit code, the JSON summary line).
async fn perf(args: &[&str]) -> (i32, String) {
    let out: Output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_warren-perf"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("warren-perf finishes")
    .expect("warren-perf runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "--json prints exactly one line on stdout: {stdout:?}; stderr: {stderr}"
    );
    (out.status.code().unwrap_or(-1), lines[0].to_string())
}

/// A number of the flat JSON summary (keys are unique in it).
fn num(json: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    let at = json.find(&pat).unwrap_or_else(|| panic!("{key} in {json}")) + pat.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{key} is a number in {json}"))
}

fn verdict(json: &str) -> &str {
    let at = json.find("\"verify\":\"").expect("verify key") + 10;
    let rest = &json[at..];
    &rest[..rest.find('"').unwrap()]
}

/// Run against a fresh in-process Warren.
async fn against_warren(extra: &[&str]) -> (i32, String) {
    let b = warren::Broker::start(warren::Config::for_tests())
        .await
        .expect("broker starts");
    let uri = format!("amqp://guest:guest@{}/%2f", b.local_addr());
    let mut args = vec!["--uri", uri.as_str(), "--count", "2000", "--json"];
    args.extend_from_slice(extra);
    perf(&args).await
}

fn assert_ok(code: i32, json: &str, received: f64) {
    assert_eq!(verdict(json), "ok", "{json}");
    assert_eq!(code, 0, "{json}");
    assert_eq!(num(json, "sent"), 2000.0, "{json}");
    assert_eq!(num(json, "received"), received, "{json}");
    assert_eq!(num(json, "lost"), 0.0, "{json}");
    assert_eq!(num(json, "duplicated"), 0.0, "{json}");
    assert!(num(json, "send_rate") > 0.0, "{json}");
    assert!(json.contains("\"latency_us\":{\"p50\":"), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoack_run_verifies() {
    let (code, json) = against_warren(&["--autoack"]).await;
    assert_ok(code, &json, 2000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_ack_with_confirms_and_multi_ack_verifies() {
    let (code, json) =
        against_warren(&["--confirm", "100", "--multi-ack", "10", "--prefetch", "100"]).await;
    assert_ok(code, &json, 2000.0);
    assert_eq!(num(&json, "confirmed"), 2000.0, "{json}");
    assert_eq!(num(&json, "nacked"), 0.0, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_to_every_queue() {
    let (code, json) = against_warren(&["--fanout", "3", "--producers", "2"]).await;
    assert_eq!(verdict(&json), "ok", "{json}");
    assert_eq!(code, 0);
    assert_eq!(num(&json, "sent"), 4000.0, "{json}");
    assert_eq!(num(&json, "received"), 12000.0, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_spread_producers_and_consumers() {
    let (code, json) = against_warren(&[
        "--queues",
        "2",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--exchange-type",
        "direct",
    ])
    .await;
    assert_eq!(verdict(&json), "ok", "{json}");
    assert_eq!(code, 0);
    assert_eq!(num(&json, "received"), 4000.0, "{json}");
}

#[tokio::test]
async fn discard_peer_measures_the_publish_ceiling() {
    let (code, json) = perf(&[
        "--discard-peer",
        "--count",
        "5000",
        "--confirm",
        "500",
        "--json",
    ])
    .await;
    assert_eq!(code, 0, "{json}");
    assert_eq!(verdict(&json), "skipped", "{json}");
    assert_eq!(num(&json, "sent"), 5000.0, "{json}");
    assert_eq!(num(&json, "confirmed"), 5000.0, "{json}");
}

#[tokio::test]
async fn faithful_fake_broker_passes() {
    let (code, json) = perf(&["--fault", "none", "--count", "2000", "--json"]).await;
    assert_ok(code, &json, 2000.0);
}

#[tokio::test]
async fn verifier_catches_lost_messages() {
    let (code, json) = perf(&[
        "--fault",
        "drop",
        "--count",
        "2000",
        "--confirm",
        "50",
        "--drain-timeout",
        "1",
        "--json",
    ])
    .await;
    assert_eq!(verdict(&json), "failed", "{json}");
    assert_eq!(code, 1, "{json}");
    assert_eq!(num(&json, "confirmed"), 2000.0, "{json}");
    assert_eq!(num(&json, "received"), 1980.0, "{json}");
    assert_eq!(num(&json, "lost"), 20.0, "{json}");
    assert_eq!(num(&json, "duplicated"), 0.0, "{json}");
}

#[tokio::test]
async fn verifier_catches_duplicates() {
    let (code, json) = perf(&["--fault", "dup", "--count", "2000", "--json"]).await;
    assert_eq!(verdict(&json), "failed", "{json}");
    assert_eq!(code, 1, "{json}");
    assert_eq!(num(&json, "received"), 2020.0, "{json}");
    assert_eq!(num(&json, "lost"), 0.0, "{json}");
    assert_eq!(num(&json, "duplicated"), 20.0, "{json}");
}

#[tokio::test]
async fn verifier_catches_duplicates_on_one_fanout_queue() {
    let (code, json) = perf(&[
        "--fault",
        "dup",
        "--fanout",
        "2",
        "--count",
        "1000",
        "--autoack",
        "--json",
    ])
    .await;
    assert_eq!(code, 1, "{json}");
    assert_eq!(num(&json, "received"), 2020.0, "{json}");
    assert_eq!(num(&json, "duplicated"), 20.0, "{json}");
}
