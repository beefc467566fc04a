//! `warren-perf`: an AMQP 0-9-1 load generator and delivery verifier for any broker (Warren,
//! RabbitMQ), in the spirit of RabbitMQ's PerfTest and lavinmqperf.
//!
//! Producers publish bodies whose first 16 bytes are the message id (producer << 48 | sequence)
//! and the send time (ns since the tool started); consumers measure end-to-end latency and mark
//! every id in per-(queue, producer) bitsets. At the end every id sent (with confirms: every id
//! confirmed) must have arrived exactly once on every queue it was routed to.
//!
//! The client is minimal and built on Warren's own frame codec; `--discard-peer` runs the
//! producers against an in-process server that discards everything, measuring the tool's own
//! publish ceiling.

mod client;

mod consumer;

mod peer;

mod producer;

mod stats;

use amq_protocol::protocol::{AMQPClass, exchange, queue};
use clap::Parser;
use client::{Conn, Res, Uri};
use consumer::{ConsumerCfg, ConsumerStats, SeenRow};
use parking_lot::Mutex;
use producer::{ProducerCfg, ProducerResult, ProducerStats};
use stats::{AtomicBits, Histogram};
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The sequence-number part of a message id.
pub const ID_MASK: u64 = (1 << 48) - 1;

/// How long consumers keep going after every expected message arrived.
const SETTLE: Duration = Duration::from_millis(250);

static START: OnceLock<std::time::Instant> = OnceLock::new();

/// Nanoseconds since the tool started (the clock of the timestamps in message bodies).
#[inline]
pub fn now_ns() -> u64 {
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

/// Run-wide stop signals and the first fatal error.
pub struct Control {
    /// Stop publishing (deadline, Ctrl-C or a fatal error).
    pub stop: CancellationToken,
    /// Stop everything (end of the drain or a fatal error).
    pub halt: CancellationToken,
    error: Mutex<Option<String>>,
}

impl Control {
    /// Record a fatal error and stop the run.
    pub fn fail(&self, msg: String) {
        let mut e = self.error.lock();
        if e.is_none() {
            *e = Some(msg);
        }
        self.stop.cancel();
        self.halt.cancel();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum ExchangeType {
    Direct,
    Fanout,
    Topic,
}

impl ExchangeType {
    fn name(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Topic => "topic",
        }
    }
}

/// AMQP 0-9-1 load generator and delivery verifier (Warren, RabbitMQ, any 0-9-1 broker).
///
/// Prints a progress line per second on stderr and a summary at the end (stdout). Exit status:
/// 0 = ok, 1 = verification failed, 2 = error.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Broker URI.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    uri: String,
    /// Number of producers (one connection each).
    #[arg(long, short = 'x', default_value_t = 1)]
    producers: usize,
    /// Number of consumers (one connection each; with --fanout: per queue; at least one per
    /// queue).
    #[arg(long, short = 'y', default_value_t = 1)]
    consumers: usize,
    /// Message body size in bytes (below 16: no latency, no verification).
    #[arg(long, short = 's', default_value_t = 16)]
    size: usize,
    /// Publishing time in seconds (default 10 unless --count is given).
    #[arg(long, short = 'z')]
    duration: Option<f64>,
    /// Messages per producer.
    #[arg(long, short = 'C')]
    count: Option<u64>,
    /// Messages per second per producer (0 = unlimited).
    #[arg(long, short = 'r', default_value_t = 0)]
    rate: u64,
    /// Publisher confirms with at most N unconfirmed messages per producer (0 = off).
    #[arg(long, short = 'c', default_value_t = 0)]
    confirm: u64,
    /// Persistent messages (delivery_mode 2) on durable queues.
    #[arg(long)]
    persistent: bool,
    /// basic.qos prefetch of manual-ack consumers (default 1000; 0 = unlimited).
    #[arg(long, short = 'q')]
    prefetch: Option<u16>,
    /// Consume without acknowledgements (no-ack).
    #[arg(long, short = 'a')]
    autoack: bool,
    /// With manual acks: ack every K messages (multiple=true when K > 1; at most the prefetch).
    #[arg(long, short = 'A', default_value_t = 1)]
    multi_ack: u64,
    /// Queue name (with --queues/--fanout: the prefix of NAME-0..NAME-(N-1)).
    #[arg(long, short = 'u', default_value = "perf-test")]
    queue: String,
    /// Number of queues; producers and consumers are spread over them round-robin.
    #[arg(long)]
    queues: Option<usize>,
    /// Publish through an exchange "perf-<type>" (default: the default exchange).
    #[arg(long, value_enum)]
    exchange_type: Option<ExchangeType>,
    /// Publish to a fanout exchange bound to N queues, each with its own consumer(s).
    #[arg(long)]
    fanout: Option<usize>,
    /// Routing key (default: the queue name; with an exchange: also the binding key).
    #[arg(long, short = 'k')]
    routing_key: Option<String>,
    /// Print one JSON summary line on stdout (and nothing else there).
    #[arg(long)]
    json: bool,
    /// Publish to an in-process server that discards everything: the tool's own ceiling.
    #[arg(long)]
    discard_peer: bool,
    /// Do not track message ids.
    #[arg(long)]
    no_verify: bool,
    /// End the drain after this many seconds without a delivery.
    #[arg(long, default_value_t = 5.0)]
    drain_timeout: f64,
    /// Keep the queues at the end (default: delete them).
    #[arg(long)]
    keep_queues: bool,
    /// Runtime worker threads (default: the number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Testing aid: run against an in-process echo broker that loses or duplicates every
    /// 100th delivery (implies an in-process peer).
    #[arg(long, value_enum, hide = true)]
    fault: Option<peer::Fault>,
    /// Benchmark aid: run only the echo peer (a toy broker) as a process of its own, print
    /// `listening on ADDR` and serve until killed: an out-of-process floor for latency (the
    /// client and the broker in separate processes, as with a real broker).
    #[arg(long, hide = true)]
    serve_echo: bool,
}

/// Where messages go.
struct Topology {
    exchange: String,
    exchange_type: Option<ExchangeType>,
    queues: Vec<String>,
    bind_keys: Vec<String>,
    producer_keys: Vec<String>,
    /// Per producer: the queues its messages are routed to.
    routes: Vec<Vec<usize>>,
    /// Per consumer: its queue.
    consumers: Vec<usize>,
}

fn topology(cli: &Cli, consumers: usize) -> Topology {
    let nq = cli.fanout.or(cli.queues).unwrap_or(1).max(1);
    let queues: Vec<String> = if nq == 1 {
        vec![cli.queue.clone()]
    } else {
        (0..nq).map(|i| format!("{}-{i}", cli.queue)).collect()
    };
    let exchange_type = if cli.fanout.is_some() {
        Some(ExchangeType::Fanout)
    } else {
        cli.exchange_type
    };
    let exchange = exchange_type
        .map(|t| format!("perf-{}", t.name()))
        .unwrap_or_default();
    let bind_keys: Vec<String> = queues
        .iter()
        .map(|q| match exchange_type {
            Some(ExchangeType::Fanout) => String::new(),
            _ => cli.routing_key.clone().unwrap_or_else(|| q.clone()),
        })
        .collect();
    let producer_keys: Vec<String> = (0..cli.producers)
        .map(|p| match (&cli.routing_key, exchange_type) {
            (Some(k), _) => k.clone(),
            (None, Some(ExchangeType::Fanout)) => String::new(),
            (None, _) => queues[p % nq].clone(),
        })
        .collect();
    let routes = producer_keys
        .iter()
        .map(|key| match exchange_type {
            None => queues.iter().position(|q| q == key).into_iter().collect(),
            Some(ExchangeType::Fanout) => (0..nq).collect(),
            Some(_) => (0..nq).filter(|&q| bind_keys[q] == *key).collect(),
        })
        .collect();
    let consumers = if consumers == 0 {
        Vec::new()
    } else if cli.fanout.is_some() {
        (0..nq)
            .flat_map(|q| std::iter::repeat_n(q, consumers))
            .collect()
    } else {
        (0..consumers.max(nq)).map(|c| c % nq).collect()
    };
    Topology {
        exchange,
        exchange_type,
        queues,
        bind_keys,
        producer_keys,
        routes,
        consumers,
    }
}

async fn declare_queue(c: &mut Conn, name: &str, durable: bool) -> Res<()> {
    let decl = || {
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.into(),
            passive: false,
            durable,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: Default::default(),
        }))
    };
    match c.rpc(1, decl(), (50, 11)).await {
        Ok(_) => Ok(()),
        Err(e) if e.contains(": 406 ") => {
            eprintln!("warren-perf: queue {name} exists with other properties; recreating it");
            c.open_channel(1).await?;
            delete_queue(c, name).await?;
            c.rpc(1, decl(), (50, 11)).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

async fn delete_queue(c: &mut Conn, name: &str) -> Res<()> {
    c.rpc(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: name.into(),
            if_unused: false,
            if_empty: false,
            nowait: false,
        })),
        (50, 41),
    )
    .await
    .map(|_| ())
}

/// Declare the exchange, the queues (purged) and the bindings.
async fn declare(c: &mut Conn, t: &Topology, durable: bool) -> Res<()> {
    c.open_channel(1).await?;
    if let Some(kind) = t.exchange_type {
        c.rpc(
            1,
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: t.exchange.as_str().into(),
                kind: kind.name().into(),
                passive: false,
                durable: true,
                auto_delete: false,
                internal: false,
                nowait: false,
                arguments: Default::default(),
            })),
            (40, 11),
        )
        .await?;
    }
    for (i, q) in t.queues.iter().enumerate() {
        declare_queue(c, q, durable).await?;
        c.rpc(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                queue: q.as_str().into(),
                nowait: false,
            })),
            (50, 31),
        )
        .await?;
        if t.exchange_type.is_some() {
            c.rpc(
                1,
                AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                    queue: q.as_str().into(),
                    exchange: t.exchange.as_str().into(),
                    routing_key: t.bind_keys[i].as_str().into(),
                    nowait: false,
                    arguments: Default::default(),
                })),
                (50, 21),
            )
            .await?;
        }
    }
    Ok(())
}

fn us(ns: u64) -> u64 {
    (ns + 500) / 1000
}

/// The progress line, once a second, on stderr.
async fn reporter(
    producers: Vec<Arc<ProducerStats>>,
    consumers: Vec<Arc<ConsumerStats>>,
    t0: Instant,
    confirms: bool,
) {
    let mut tick = tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
    let (mut last_sent, mut last_recv, mut last_conf, mut last_t) = (0u64, 0u64, 0u64, t0);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let dt = (now - last_t).as_secs_f64().max(1e-9);
        last_t = now;
        let sent: u64 = producers.iter().map(|p| p.sent.load(Relaxed)).sum();
        let conf: u64 = producers.iter().map(|p| p.confirmed.load(Relaxed)).sum();
        let recv: u64 = consumers.iter().map(|c| c.received.load(Relaxed)).sum();
        let mut h = Histogram::default();
        for c in &consumers {
            c.latency.drain_into(&mut h);
        }
        let lat = if h.n > 0 {
            format!(
                "{}/{}/{}/{}/{} µs",
                us(h.min),
                us(h.quantile(0.5)),
                us(h.quantile(0.75)),
                us(h.quantile(0.95)),
                us(h.quantile(0.99))
            )
        } else {
            "-".to_string()
        };
        let mut line = format!(
            "time {}s, sent {:.0} msg/s",
            (now - t0).as_secs_f64().round(),
            (sent - last_sent) as f64 / dt
        );
        if confirms {
            let _ = write!(
                line,
                ", confirmed {:.0} msg/s",
                (conf - last_conf) as f64 / dt
            );
        }
        let _ = write!(
            line,
            ", received {:.0} msg/s, min/median/75th/95th/99th latency: {lat}",
            (recv - last_recv) as f64 / dt
        );
        eprintln!("{line}");
        (last_sent, last_recv, last_conf) = (sent, recv, conf);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    START.get_or_init(std::time::Instant::now);
    let threads = cli.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren-perf: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("warren-perf: {e}");
            ExitCode::from(2)
        }
    }
}

/// The verdict of the verifier.
#[derive(Default)]
struct Verdict {
    checked: bool,
    lost: u64,
    duplicated: u64,
    unexpected: u64,
}

/// Run the benchmark: set it up, publish, drain, verify and report.
async fn run(cli: Cli) -> Res<ExitCode> {
    if cli.serve_echo {
        let addr = peer::start(peer::Mode::Echo(peer::Fault::None))
            .await
            .map_err(|e| e.to_string())?;
        println!("listening on {addr}");
        std::future::pending::<()>().await;
    }
    validate(&cli)?;
    let peer_mode = peer_mode(&cli);
    let uri = broker_uri(&cli, peer_mode).await?;
    let plan = plan(&cli, peer_mode);
    let topo = &plan.topo;

    let mut setup = Conn::connect(&uri, "warren-perf setup").await?;
    announce(&cli, &uri, &setup, topo);
    declare(&mut setup, topo, cli.persistent).await?;

    let ctl = Arc::new(Control {
        stop: CancellationToken::new(),
        halt: CancellationToken::new(),
        error: Mutex::new(None),
    });
    let np = cli.producers;
    let capacity = capacity(&cli, plan.duration);
    let seen = plan.verify.then(|| seen_bitsets(topo, np, capacity));
    let (clients, tasks) = start(&cli, &uri, &plan, &seen, &ctl).await?;

    // Publish.
    let presults = await_producers(tasks.producers, clients.deadline, clients.t0, &ctl).await;
    let seconds = publish_seconds(&clients.pstats, clients.t0_ns);

    // Drain: until every expected message arrived, or 5 s without anything new.
    if !topo.consumers.is_empty() && np > 0 {
        let expected = expected_per_queue(&cli, topo, &presults, &clients.pstats);
        drain(&cli, topo, plan.verify, &ctl, &clients.cstats, &expected).await;
    }
    let latency = stop(&ctl, tasks.consumers, tasks.reporter, tasks.signals).await;
    clean_up(&cli, setup, topo, &ctl).await;
    if let Some(e) = ctl.error.lock().clone() {
        return Err(e);
    }

    // Verify.
    let v = verify(
        plan.verify && np > 0,
        seen.as_deref(),
        topo,
        &clients.cstats,
        &presults,
    );

    let s = summarize(&cli, &presults, &clients, seconds, &latency, v);
    if cli.json {
        print_json(&cli, &s);
    } else {
        print_text(&cli, topo, &s);
    }
    Ok(if s.failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Refuse option values the run cannot work with.
fn validate(cli: &Cli) -> Res<()> {
    if cli.multi_ack == 0 {
        return Err("--multi-ack must be at least 1".into());
    }
    if cli.producers > 1 << 16 {
        return Err("at most 65536 producers".into());
    }
    if cli.fanout == Some(0) || cli.queues == Some(0) {
        return Err("--fanout and --queues need at least 1".into());
    }
    Ok(())
}

/// The in-process peer the options ask for, if any.
fn peer_mode(cli: &Cli) -> Option<peer::Mode> {
    match (cli.fault, cli.discard_peer) {
        (Some(f), _) => Some(peer::Mode::Echo(f)),
        (None, true) => Some(peer::Mode::Discard),
        (None, false) => None,
    }
}

/// The broker to run against: the in-process peer (started here) or `--uri`.
async fn broker_uri(cli: &Cli, peer_mode: Option<peer::Mode>) -> Res<Uri> {
    Ok(match peer_mode {
        Some(mode) => {
            let addr = peer::start(mode).await.map_err(|e| e.to_string())?;
            Uri {
                host: addr.ip().to_string(),
                port: addr.port(),
                user: "guest".into(),
                pass: "guest".into(),
                vhost: "/".into(),
            }
        }
        None => Uri::parse(&cli.uri)?,
    })
}

/// The run's parameters, derived from the command line.
struct Plan {
    topo: Topology,
    prefetch: u16,
    /// Whether message ids are tracked and checked.
    verify: bool,
    /// How long to publish (`None`: until `--count`).
    duration: Option<Duration>,
}

/// Derive the topology, prefetch, verification and publishing time from the options.
fn plan(cli: &Cli, peer_mode: Option<peer::Mode>) -> Plan {
    let n_consumers = if peer_mode == Some(peer::Mode::Discard) {
        0
    } else {
        cli.consumers
    };
    let topo = topology(cli, n_consumers);
    let prefetch = if cli.autoack {
        0
    } else {
        cli.prefetch.unwrap_or(1000)
    };
    let verify = !cli.no_verify && cli.size >= 16 && !topo.consumers.is_empty();
    let duration = match (cli.duration, cli.count) {
        (Some(d), _) => Some(Duration::from_secs_f64(d.max(0.0))),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    Plan {
        topo,
        prefetch,
        verify,
        duration,
    }
}

/// The line on stderr that says what runs against what.
fn announce(cli: &Cli, uri: &Uri, setup: &Conn, topo: &Topology) {
    eprintln!(
        "warren-perf: {} at {}:{} vhost {:?}: {} producer(s), {} consumer(s), {} B messages, queue(s) {}{}",
        setup.server.trim(),
        uri.host,
        uri.port,
        uri.vhost,
        cli.producers,
        topo.consumers.len(),
        cli.size,
        topo.queues.join(","),
        if topo.exchange.is_empty() {
            String::new()
        } else {
            format!(" via exchange {}", topo.exchange)
        }
    );
}

/// How many ids per producer the verifier's bitsets hold.
fn capacity(cli: &Cli, duration: Option<Duration>) -> u64 {
    match cli.count {
        Some(c) => c,
        None if cli.rate > 0 => {
            (cli.rate as f64 * duration.unwrap_or_default().as_secs_f64() * 1.2) as u64 + 100_000
        }
        None => 1 << 30,
    }
    .min(1 << 32)
}

/// Per queue, per producer: the ids seen (only for the producers routed to that queue).
fn seen_bitsets(topo: &Topology, np: usize, capacity: u64) -> Arc<Vec<SeenRow>> {
    Arc::new(
        (0..topo.queues.len())
            .map(|q| {
                (0..np)
                    .map(|p| {
                        topo.routes[p]
                            .contains(&q)
                            .then(|| AtomicBits::new(capacity))
                    })
                    .collect()
            })
            .collect(),
    )
}

/// One consumer configuration per consumer of the topology.
fn consumer_cfgs(cli: &Cli, topo: &Topology, prefetch: u16) -> Vec<ConsumerCfg> {
    topo.consumers
        .iter()
        .enumerate()
        .map(|(id, &q)| ConsumerCfg {
            id,
            queue_idx: q,
            queue: topo.queues[q].clone(),
            autoack: cli.autoack,
            prefetch,
            multi_ack: cli.multi_ack,
        })
        .collect()
}

/// One producer configuration per producer.
fn producer_cfgs(cli: &Cli, topo: &Topology) -> Vec<ProducerCfg> {
    (0..cli.producers)
        .map(|p| ProducerCfg {
            id: p as u64,
            exchange: topo.exchange.clone(),
            routing_key: topo.producer_keys[p].clone(),
            size: cli.size,
            persistent: cli.persistent,
            confirm: cli.confirm,
            rate: cli.rate,
            count: cli.count,
        })
        .collect()
}

/// The started clients' statistics and clock.
struct Clients {
    cstats: Vec<Arc<ConsumerStats>>,
    pstats: Vec<Arc<ProducerStats>>,
    /// When publishing started.
    t0: Instant,
    /// `t0` on the clock of message bodies.
    t0_ns: u64,
    /// When publishing ends (`None`: at `--count`).
    deadline: Option<Instant>,
}

/// The tasks of a started run.
struct Tasks {
    consumers: Vec<JoinHandle<Res<Histogram>>>,
    producers: Vec<JoinHandle<Res<ProducerResult>>>,
    reporter: JoinHandle<()>,
    signals: JoinHandle<()>,
}

/// Connect the consumers, then the producers, and start them with the reporter and Ctrl-C.
async fn start(
    cli: &Cli,
    uri: &Uri,
    plan: &Plan,
    seen: &Option<Arc<Vec<SeenRow>>>,
    ctl: &Arc<Control>,
) -> Res<(Clients, Tasks)> {
    // Consumers first, so that no message is published before every queue has its consumer.
    let ccfgs = consumer_cfgs(cli, &plan.topo, plan.prefetch);
    let cconns =
        futures::future::try_join_all(ccfgs.iter().map(|c| consumer::setup(uri, c))).await?;
    let pcfgs = producer_cfgs(cli, &plan.topo);
    let pconns =
        futures::future::try_join_all(pcfgs.iter().map(|p| producer::setup(uri, p))).await?;

    let cstats: Vec<Arc<ConsumerStats>> = ccfgs.iter().map(|_| Default::default()).collect();
    let pstats: Vec<Arc<ProducerStats>> = pcfgs.iter().map(|_| Default::default()).collect();
    let t0 = Instant::now();
    let t0_ns = now_ns();
    let deadline = plan.duration.map(|d| t0 + d);
    let consumers: Vec<_> = cconns
        .into_iter()
        .zip(&ccfgs)
        .zip(&cstats)
        .map(|((conn, cfg), st)| {
            tokio::spawn(consumer::run(
                conn,
                cfg.clone(),
                st.clone(),
                seen.clone(),
                ctl.clone(),
            ))
        })
        .collect();
    let producers: Vec<_> = pconns
        .into_iter()
        .zip(&pcfgs)
        .zip(&pstats)
        .map(|((conn, cfg), st)| {
            tokio::spawn(producer::run(
                conn,
                cfg.clone(),
                deadline,
                st.clone(),
                ctl.clone(),
            ))
        })
        .collect();
    let reporter = tokio::spawn(reporter(
        pstats.clone(),
        cstats.clone(),
        t0,
        cli.confirm > 0,
    ));
    let signals = spawn_signals(ctl.clone());
    let clients = Clients {
        cstats,
        pstats,
        t0,
        t0_ns,
        deadline,
    };
    let tasks = Tasks {
        consumers,
        producers,
        reporter,
        signals,
    };
    Ok((clients, tasks))
}

/// Ctrl-C stops the producers; a second one stops everything.
fn spawn_signals(ctl: Arc<Control>) -> JoinHandle<()> {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("warren-perf: interrupted, stopping the producers");
            ctl.stop.cancel();
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            ctl.halt.cancel();
        }
    })
}

/// Wait for every producer (without any: for the deadline or a stop); their results.
async fn await_producers(
    handles: Vec<JoinHandle<Res<ProducerResult>>>,
    deadline: Option<Instant>,
    t0: Instant,
    ctl: &Control,
) -> Vec<Option<ProducerResult>> {
    let mut presults = Vec::with_capacity(handles.len());
    if handles.is_empty() {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.unwrap_or(t0 + Duration::from_secs(10))) => {}
            _ = ctl.stop.cancelled() => {}
        }
    }
    for h in handles {
        match h.await {
            Ok(Ok(r)) => presults.push(Some(r)),
            Ok(Err(_)) => presults.push(None),
            Err(e) => {
                ctl.fail(format!("producer task: {e}"));
                presults.push(None);
            }
        }
    }
    presults
}

/// Seconds from the start to the last producer's end of publishing.
fn publish_seconds(pstats: &[Arc<ProducerStats>], t0_ns: u64) -> f64 {
    let end_ns = pstats
        .iter()
        .map(|p| p.done_ns.load(Acquire))
        .max()
        .unwrap_or_else(now_ns);
    (end_ns.saturating_sub(t0_ns)) as f64 / 1e9
}

/// How many messages producer `p` sent (0 if it failed).
fn sent_of(presults: &[Option<ProducerResult>], p: usize) -> u64 {
    presults[p].as_ref().map_or(0, |r| r.sent)
}

/// Per queue: how many messages should arrive (with confirms: only the confirmed ones).
fn expected_per_queue(
    cli: &Cli,
    topo: &Topology,
    presults: &[Option<ProducerResult>],
    pstats: &[Arc<ProducerStats>],
) -> Vec<u64> {
    let expected_of = |p: usize| {
        if cli.confirm > 0 {
            pstats[p].confirmed.load(Acquire)
        } else {
            sent_of(presults, p)
        }
    };
    let mut expected = vec![0u64; topo.queues.len()];
    for p in 0..cli.producers {
        for &q in &topo.routes[p] {
            expected[q] += expected_of(p);
        }
    }
    expected
}

/// Wait until every queue got what it should, or `--drain-timeout` passed without a delivery.
async fn drain(
    cli: &Cli,
    topo: &Topology,
    verify: bool,
    ctl: &Control,
    cstats: &[Arc<ConsumerStats>],
    expected: &[u64],
) {
    let total_expected: u64 = expected.iter().sum();
    let mut last = u64::MAX;
    let mut since = Instant::now();
    while !ctl.halt.is_cancelled() {
        let recv: u64 = cstats.iter().map(|c| c.received.load(Relaxed)).sum();
        let done = if verify {
            (0..topo.queues.len()).all(|q| {
                let got: u64 = topo
                    .consumers
                    .iter()
                    .zip(cstats)
                    .filter(|(cq, _)| **cq == q)
                    .map(|(_, c)| c.unique.load(Relaxed))
                    .sum();
                got >= expected[q]
            })
        } else {
            recv >= total_expected
        };
        if done {
            // Give late duplicates a moment to show up.
            tokio::time::sleep(SETTLE).await;
            break;
        }
        if recv != last {
            last = recv;
            since = Instant::now();
        } else if since.elapsed().as_secs_f64() >= cli.drain_timeout {
            eprintln!(
                "warren-perf: nothing received for {} s, ending the drain",
                cli.drain_timeout
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Halt the consumers and merge their latencies; end the reporter and the Ctrl-C handler.
async fn stop(
    ctl: &Control,
    consumers: Vec<JoinHandle<Res<Histogram>>>,
    reporter: JoinHandle<()>,
    signals: JoinHandle<()>,
) -> Histogram {
    ctl.halt.cancel();
    let mut latency = Histogram::default();
    for h in consumers {
        if let Ok(Ok(hist)) = h.await {
            latency.merge(&hist);
        }
    }
    reporter.abort();
    signals.abort();
    latency
}

/// Delete the queues (unless kept or the run failed) and close the setup connection.
async fn clean_up(cli: &Cli, mut setup: Conn, topo: &Topology, ctl: &Control) {
    if !cli.keep_queues && ctl.error.lock().is_none() {
        for q in &topo.queues {
            if let Err(e) = delete_queue(&mut setup, q).await {
                eprintln!("warren-perf: deleting queue {q}: {e}");
                break;
            }
        }
    }
    setup.close().await;
}

/// Check that every id sent (with confirms: confirmed) arrived once on each of its queues.
fn verify(
    checked: bool,
    seen: Option<&Vec<SeenRow>>,
    topo: &Topology,
    cstats: &[Arc<ConsumerStats>],
    presults: &[Option<ProducerResult>],
) -> Verdict {
    let mut v = Verdict {
        checked,
        ..Default::default()
    };
    for c in cstats {
        v.duplicated += c.duplicated.load(Relaxed);
        v.unexpected += c.unexpected.load(Relaxed);
    }
    if let (true, Some(seen)) = (v.checked, seen) {
        for p in 0..presults.len() {
            let sent = sent_of(presults, p);
            let confirmed = presults[p].as_ref().and_then(|r| r.confirmed.as_ref());
            for (q, row) in seen.iter().enumerate() {
                let Some(bits) = &row[p] else { continue };
                debug_assert!(topo.routes[p].contains(&q));
                let limit = sent.min(bits.capacity());
                for w in 0..limit.div_ceil(64) as usize {
                    let mut expect = match confirmed {
                        Some(c) => c.word(w),
                        None => !0,
                    };
                    let base = w as u64 * 64;
                    if limit - base < 64 {
                        expect &= (1u64 << (limit - base)) - 1;
                    }
                    v.lost += (expect & !bits.word(w)).count_ones() as u64;
                }
                v.unexpected += bits.count_from(sent);
            }
        }
    }
    v
}

/// The totals, rates and verdict of a finished run, as reported.
struct Summary {
    sent: u64,
    received: u64,
    confirmed: u64,
    nacked: u64,
    returned: u64,
    redelivered: u64,
    /// Publishing time.
    seconds: f64,
    /// Time to the last delivery.
    recv_seconds: f64,
    send_rate: f64,
    receive_rate: f64,
    /// Whether any latency was measured (the quantiles are 0 otherwise).
    has_latency: bool,
    p50: u64,
    p95: u64,
    p99: u64,
    max: u64,
    v: Verdict,
    verdict: &'static str,
    failed: bool,
}

/// Add up the clients' counts and work out the rates, latency quantiles and verdict.
fn summarize(
    cli: &Cli,
    presults: &[Option<ProducerResult>],
    clients: &Clients,
    seconds: f64,
    latency: &Histogram,
    v: Verdict,
) -> Summary {
    let (cstats, pstats) = (&clients.cstats, &clients.pstats);
    let sent: u64 = (0..cli.producers).map(|p| sent_of(presults, p)).sum();
    let received: u64 = cstats.iter().map(|c| c.received.load(Relaxed)).sum();
    let confirmed: u64 = pstats.iter().map(|p| p.confirmed.load(Relaxed)).sum();
    let nacked: u64 = pstats.iter().map(|p| p.nacked.load(Relaxed)).sum();
    let returned: u64 = pstats.iter().map(|p| p.returned.load(Relaxed)).sum();
    let redelivered: u64 = cstats.iter().map(|c| c.redelivered.load(Relaxed)).sum();
    let last_recv = cstats
        .iter()
        .map(|c| c.last_ns.load(Relaxed))
        .max()
        .unwrap_or(0);
    let recv_seconds = last_recv.saturating_sub(clients.t0_ns) as f64 / 1e9;
    let rate = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let send_rate = rate(sent, seconds);
    let receive_rate = rate(received, recv_seconds);
    let failed = v.checked && (v.lost > 0 || v.duplicated > 0 || v.unexpected > 0);
    let verdict = if !v.checked {
        "skipped"
    } else if failed {
        "failed"
    } else {
        "ok"
    };
    let (p50, p95, p99, max) = if latency.n > 0 {
        (
            us(latency.quantile(0.5)),
            us(latency.quantile(0.95)),
            us(latency.quantile(0.99)),
            us(latency.max),
        )
    } else {
        (0, 0, 0, 0)
    };
    Summary {
        sent,
        received,
        confirmed,
        nacked,
        returned,
        redelivered,
        seconds,
        recv_seconds,
        send_rate,
        receive_rate,
        has_latency: latency.n > 0,
        p50,
        p95,
        p99,
        max,
        v,
        verdict,
        failed,
    }
}

/// MiB/s of `rate` messages per second of `--size` bytes.
fn mib(cli: &Cli, rate: f64) -> f64 {
    rate * cli.size as f64 / (1024.0 * 1024.0)
}

/// The summary as one JSON line on stdout (`--json`).
fn print_json(cli: &Cli, s: &Summary) {
    let Summary {
        sent,
        received,
        confirmed,
        nacked,
        returned,
        redelivered,
        seconds,
        send_rate,
        receive_rate,
        p50,
        p95,
        p99,
        max,
        ref v,
        verdict,
        ..
    } = *s;
    println!(
        "{{\"sent\":{sent},\"received\":{received},\"seconds\":{seconds:.3},\"send_rate\":{send_rate:.1},\"receive_rate\":{receive_rate:.1},\"send_mib_s\":{:.3},\"receive_mib_s\":{:.3},\"latency_us\":{{\"p50\":{p50},\"p95\":{p95},\"p99\":{p99},\"max\":{max}}},\"lost\":{},\"duplicated\":{},\"unexpected\":{},\"redelivered\":{redelivered},\"confirmed\":{confirmed},\"nacked\":{nacked},\"returned\":{returned},\"verify\":\"{verdict}\"}}",
        mib(cli, send_rate),
        mib(cli, receive_rate),
        v.lost,
        v.duplicated,
        v.unexpected,
    );
}

/// The summary as readable lines on stdout.
fn print_text(cli: &Cli, topo: &Topology, s: &Summary) {
    let Summary {
        sent,
        received,
        confirmed,
        nacked,
        returned,
        redelivered,
        seconds,
        recv_seconds,
        send_rate,
        receive_rate,
        has_latency,
        p50,
        p95,
        p99,
        max,
        ref v,
        verdict,
        ..
    } = *s;
    println!(
        "sent:      {sent} msgs in {seconds:.2} s = {send_rate:.0} msg/s, {:.2} MiB/s",
        mib(cli, send_rate)
    );
    if cli.confirm > 0 {
        println!("confirmed: {confirmed} ({nacked} nacked)");
    }
    if returned > 0 {
        println!("returned:  {returned}");
    }
    println!(
        "received:  {received} msgs in {recv_seconds:.2} s = {receive_rate:.0} msg/s, {:.2} MiB/s",
        mib(cli, receive_rate)
    );
    if has_latency {
        println!("latency:   p50 {p50} µs, p95 {p95} µs, p99 {p99} µs, max {max} µs");
    }
    if redelivered > 0 {
        println!("redelivered: {redelivered}");
    }
    let extra = if v.unexpected > 0 {
        format!(", {} unexpected", v.unexpected)
    } else {
        String::new()
    };
    match verdict {
        "ok" => println!("verify: OK ({received} received, 0 lost, 0 duplicated{extra})"),
        "failed" => println!(
            "verify: FAILED ({} lost, {} duplicated{extra})",
            v.lost, v.duplicated
        ),
        _ => println!("verify: skipped ({})", skip_reason(cli, topo)),
    }
}

/// Why the verification was skipped.
fn skip_reason(cli: &Cli, topo: &Topology) -> &'static str {
    if cli.no_verify {
        "--no-verify"
    } else if cli.size < 16 {
        "--size below 16"
    } else if topo.consumers.is_empty() {
        "no consumers"
    } else {
        "no producers"
    }
}
