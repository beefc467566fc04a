//! `warren`: command line, configuration and logging, then [`warren::Broker::start`]. Nothing else.

use clap::Parser;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use warren::{Broker, Config};

/// jemalloc: its statistics let the memory alarm see the whole heap (connection buffers,
/// partial bodies, transactions, not only queued messages), and its background threads give
/// freed memory back to the OS when the broker goes idle.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Warren, an AMQP 0-9-1 message broker compatible with RabbitMQ clients.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Configuration file (default: the embedded broker.toml).
    #[arg(long, env = "WARREN_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the AMQP listener (overrides amqp.bind).
    #[arg(long, env = "WARREN_BIND")]
    bind: Option<String>,
    /// Port of the AMQP listener, 0 for any free port (overrides amqp.port).
    #[arg(long, env = "WARREN_PORT")]
    port: Option<u16>,
    /// Directory for durable state (overrides data_dir).
    #[arg(long, env = "WARREN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log filter, e.g. info or debug (overrides log_level).
    #[arg(long, env = "WARREN_LOG_LEVEL")]
    log_level: Option<String>,
    /// Serve the management HTTP API on this port, 0 for any free port (sets
    /// management.enabled and management.port).
    #[arg(long, env = "WARREN_MANAGEMENT_PORT")]
    management_port: Option<u16>,
    /// Serve Prometheus metrics on this port, 0 for any free port (sets prometheus.enabled
    /// and prometheus.port).
    #[arg(long, env = "WARREN_PROMETHEUS_PORT")]
    prometheus_port: Option<u16>,
    /// Import this RabbitMQ definitions file at start (sets load_definitions).
    #[arg(long, env = "WARREN_DEFINITIONS")]
    definitions: Option<PathBuf>,
    /// Keep nothing on disk (storage.mode = "memory").
    #[arg(long, env = "WARREN_IN_MEMORY")]
    in_memory: bool,
    /// Test environments only: the broker's time for TTLs, x-expires, delayed messages,
    /// consumer timeouts and x-death stands still until advanced through
    /// `POST /api/warren/clock` (testing.clock = "manual").
    #[arg(long)]
    test_clock: bool,
    /// Join a cluster as this node (sets cluster.enabled and cluster.node).
    #[arg(long, env = "WARREN_CLUSTER_NODE")]
    cluster_node: Option<String>,
    /// The cluster's members, name@host:port, comma-separated (cluster.seeds).
    #[arg(long, env = "WARREN_CLUSTER_SEEDS", value_delimiter = ',')]
    cluster_seeds: Option<Vec<String>>,
    /// The inter-node listener, host:port (cluster.listen).
    #[arg(long, env = "WARREN_CLUSTER_LISTEN")]
    cluster_listen: Option<String>,
    /// The secret members share (cluster.secret).
    #[arg(long, env = "WARREN_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// A tool instead of the broker.
    #[command(subcommand)]
    command: Option<Command>,
}

/// Tools that talk to a running broker's management API.
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Empty the broker back to its boot state (POST /api/warren/reset): every queue,
    /// exchange, binding, message, policy, shovel and connection gone.
    Reset {
        /// Only this vhost.
        #[arg(long)]
        vhost: Option<String>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Show the broker's clock, or advance the manual test clock (--test-clock).
    Clock {
        /// Move the manual clock forward by this many ms.
        #[arg(long)]
        advance_ms: Option<u64>,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

/// Where the management API is (as rabbitmqadmin takes it).
#[derive(clap::Args, Debug)]
struct ConnArgs {
    /// Management API URL (default: $WARREN_MANAGEMENT_URL, else http://127.0.0.1:15672).
    #[arg(long)]
    url: Option<String>,
    /// User (default: $RABBITMQ_DEFAULT_USER, else guest).
    #[arg(long, short = 'u')]
    username: Option<String>,
    /// Password (default: $RABBITMQ_DEFAULT_PASS, else guest).
    #[arg(long)]
    password: Option<String>,
}

impl ConnArgs {
    fn conn(&self) -> warren::tools::Conn {
        warren::tools::Conn {
            url: self.url.clone(),
            user: self.username.clone(),
            pass: self.password.clone(),
            ..Default::default()
        }
    }
}

fn load(cli: &Cli) -> Result<Config, String> {
    let mut config = match &cli.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => Config::embedded(),
    };
    // RabbitMQ's variables and rabbitmq.conf (official image, test containers), before
    // Warren's own flags.
    let applied = warren::rabbitmq_env::apply(&mut config, &|k| std::env::var(k).ok())?;
    for k in &applied.ignored {
        eprintln!("warren: RabbitMQ setting not supported, ignored: {k}");
    }
    if let Some(b) = &cli.bind {
        config.amqp.bind = b.clone();
    }
    if let Some(p) = cli.port {
        config.amqp.port = p;
    }
    if let Some(d) = &cli.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(l) = &cli.log_level {
        config.log_level = l.clone();
    }
    if cli.in_memory {
        config.storage.mode = warren::config::StorageMode::Memory;
    }
    if cli.test_clock {
        config.testing.clock = warren::config::ClockMode::Manual;
    }
    if let Some(p) = cli.management_port {
        config.management.enabled = true;
        config.management.port = p;
    }
    if let Some(p) = cli.prometheus_port {
        config.prometheus.enabled = true;
        config.prometheus.port = p;
    }
    if let Some(d) = &cli.definitions {
        config.load_definitions = Some(d.clone());
    }
    if let Some(n) = &cli.cluster_node {
        config.cluster.enabled = true;
        config.cluster.node = n.clone();
    }
    if let Some(s) = &cli.cluster_seeds {
        config.cluster.seeds = s.clone();
    }
    if let Some(l) = &cli.cluster_listen {
        config.cluster.listen = l.clone();
    }
    if let Some(s) = &cli.cluster_secret {
        config.cluster.secret = s.clone();
    }
    config.validate()?;
    Ok(config)
}

fn main() -> ExitCode {
    // Purge freed pages in the background (jemalloc's decay, 10 s by default), so an idle
    // broker shrinks back after a burst.
    #[cfg(feature = "jemalloc")]
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    // Invoked as rabbitmqadmin, rabbitmqctl or rabbitmq-plugins (symlinks in the image).
    let argv: Vec<String> = std::env::args().collect();
    if let Some(tool) = argv.first().and_then(|a| warren::tools::invoked_as(a)) {
        return warren::tools::run(tool, &argv[1..]);
    }
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Reset { vhost, conn }) => {
            return warren::tools::reset(&conn.conn(), vhost.as_deref());
        }
        Some(Command::Clock { advance_ms, conn }) => {
            return warren::tools::clock(&conn.conn(), *advance_ms);
        }
        None => {}
    }
    let config = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warren: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{}", toml::to_string(&config).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log_level))
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A closed stderr (the parent went away, `warren 2>&1 | head`) must not turn a log
        // line into a panic: the default reports the failed write on stderr, which panics.
        .log_internal_errors(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warren: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let broker = match Broker::start(config).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        // RabbitMQ's line, which test containers wait for (a compatibility line: keep it).
        let plugins = u8::from(broker.management_addr().is_some())
            + u8::from(broker.prometheus_addr().is_some());
        tracing::info!("Server startup complete; {plugins} plugins started.");
        // One machine-readable line on stdout (logs go to stderr) for test harnesses that
        // start the binary with --port 0: where each listener is.
        let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string());
        // Written, not printed: a closed stdout must not panic the broker.
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            serde_json::json!({
                "warren": "ready",
                "amqp": broker.local_addr().to_string(),
                "amqps": addr(broker.amqps_addr()),
                "management": addr(broker.management_addr()),
                "prometheus": addr(broker.prometheus_addr()),
            })
        );
        wait_for_signal().await;
        tracing::info!("shutting down: closing connections with 320 CONNECTION_FORCED");
        broker.shutdown(Duration::from_millis(800)).await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
