//! `rust-node`: run a native macula_dht node, look a service up as a one-shot client, control
//! a running node through its local socket, or run a local network of nodes.
//!
//! Every failure a user can cause (a bad flag, a port in use, an unreachable bootstrap node, a
//! bad config file) ends the process with one plain line on stderr and a non-zero status.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use macula_dht::settings;
use macula_dht_node::config::{
    resolve_addr, ConfigError, RunOptions, RunSettings, DEFAULT_TTL_SECS,
};
use macula_dht_node::ctl::{self, CtlError, CtlRequest, CtlResponse, CtlServer};
use macula_dht_node::metrics::{Exposure, MetricsError, MetricsServer};
use macula_dht_node::record::{unhex, unix_now, ProviderView};
use macula_dht_node::testnet::{
    ProcessTestnet, ProcessTestnetConfig, ProcessTestnetError, MAX_PROCESS_NODES,
};
use macula_dht_node::{
    id_hex, Identity, IdentityError, Node, NodeConfig, NodeError, Strategy, UnknownStrategy,
};

#[derive(Parser)]
#[command(
    name = "rust-node",
    version,
    about = "Native macula_dht node",
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node until SIGINT or SIGTERM.
    // Boxed: its many settings make it much larger than the other commands.
    Run(Box<RunArgs>),
    /// Look a service up through a node and print its providers (exit 1 if there are none).
    Discover(DiscoverArgs),
    /// Advertise, remove or inspect on a running node through its control socket.
    Ctl(CtlArgs),
    /// Run N nodes on 127.0.0.1 as one network (N `rust-node run` processes, the first the
    /// others' bootstrap node), print a line per node (name, listen address, id, control socket,
    /// pid), and stop them all on SIGINT or SIGTERM.
    Testnet(TestnetArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Address to listen on (UDP), e.g. 127.0.0.1:4000.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// A node to join through (repeatable).
    #[arg(long = "bootstrap", value_name = "ADDR")]
    bootstrap: Vec<String>,
    /// Key file of the node's identity (created if missing); default: a new identity per run.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Advertise a service from the start (repeatable); TTL in seconds, default 300.
    #[arg(long = "advertise", value_name = "SERVICE=ENDPOINT[@TTL]")]
    advertise: Vec<String>,
    /// Bucket size and replication width.
    #[arg(long, value_name = "N")]
    k: Option<usize>,
    /// Lookup requests in flight.
    #[arg(long, value_name = "N")]
    alpha: Option<usize>,
    /// TOML file with the same settings (flags override it).
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// Serve a control socket at this path (mode 0600).
    #[arg(long, value_name = "PATH")]
    ctl: Option<PathBuf>,
    /// Log level on stderr: error, warn, info (default), debug, trace.
    #[arg(long, value_name = "LEVEL")]
    log: Option<String>,
    /// Timeout of one request to a peer, in milliseconds.
    #[arg(long, value_name = "MS")]
    request_timeout_ms: Option<u64>,
    /// Longest a lookup runs before it answers with what it found, in milliseconds.
    #[arg(long, value_name = "MS")]
    lookup_timeout_ms: Option<u64>,
    /// Most provider records the store holds.
    #[arg(long, value_name = "N")]
    max_records: Option<usize>,
    /// Most bytes of keys, records and seals the store holds.
    #[arg(long, value_name = "BYTES")]
    max_bytes: Option<usize>,
    /// Percent of the store's records and bytes one other publisher may hold.
    #[arg(long, value_name = "PCT")]
    publisher_share_pct: Option<usize>,
    /// STOREs per second one peer may send (bursts of five seconds' worth pass).
    #[arg(long, value_name = "N")]
    peer_stores_per_s: Option<usize>,
    /// Exit with an error when no bootstrap node answers at start (by default the node serves
    /// and keeps trying to join, backing off up to a minute).
    #[arg(long)]
    require_bootstrap: bool,
    /// Serve OpenMetrics at http://ADDR/metrics (port 0 picks one, printed on stdout after the
    /// listening line). A loopback address only, unless --metrics-public.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Let --metrics bind an address other hosts can reach.
    #[arg(long, requires = "metrics")]
    metrics_public: bool,
}

#[derive(Args)]
struct DiscoverArgs {
    /// A node to ask first (repeatable).
    #[arg(long = "bootstrap", value_name = "ADDR", required = true)]
    bootstrap: Vec<String>,
    /// The service name.
    service: String,
    /// Print the providers as a JSON list.
    #[arg(long)]
    json: bool,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    /// Stop once this many providers are known.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    want: u64,
}

#[derive(Args)]
struct CtlArgs {
    /// The node's control socket (its `run --ctl PATH`).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    #[command(subcommand)]
    action: CtlAction,
}

#[derive(Args)]
struct TestnetArgs {
    /// How many nodes.
    #[arg(value_name = "N", value_parser = clap::value_parser!(u16).range(1..=MAX_PROCESS_NODES as i64))]
    nodes: u16,
    /// Every node's bucket size and replication width.
    #[arg(long, value_name = "K")]
    k: Option<usize>,
    /// Node i listens on port P+i (default: ports of the system's choice).
    #[arg(long, value_name = "P")]
    base_port: Option<u16>,
    /// Keep the nodes' identities (nI.key), control sockets (nI.sock) and logs (nI.log) here, and
    /// keep the directory at exit (default: a temporary directory, removed at exit).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CtlAction {
    /// Advertise SERVICE at ENDPOINT (republished until removed, unless --once).
    Advertise {
        service: String,
        endpoint: String,
        /// Seconds the record lives without a refresh.
        #[arg(long, default_value_t = DEFAULT_TTL_SECS, value_parser = clap::value_parser!(u32).range(1..))]
        ttl: u32,
        /// A metadata entry (repeatable).
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
        /// Publish once and never refresh: the record expires after its ttl.
        #[arg(long)]
        once: bool,
    },
    /// Stop advertising SERVICE and remove it from the network.
    Remove { service: String },
    /// Print the providers of SERVICE as the node finds them (exit 1 if there are none).
    Discover {
        service: String,
        /// Stop once this many providers are known.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
        want: u64,
        /// Print the providers as a JSON list.
        #[arg(long)]
        json: bool,
    },
    /// Print one provider of SERVICE chosen by a strategy (exit 1 if there is none).
    Pick {
        service: String,
        /// round-robin, random, least-loaded (metadata `load`) or nearest (measured round trip).
        #[arg(long, default_value = "round-robin", value_parser = parse_strategy)]
        strategy: Strategy,
        /// Print the provider as a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Tell the node that a provider of SERVICE could not be reached: `pick` skips it for a
    /// back-off that doubles on each report (5 s up to 5 min), or until it is advertised again.
    ReportFailure {
        service: String,
        /// The provider's node_id, hex (as `discover` and `pick` print it).
        #[arg(value_parser = parse_hex_id)]
        node_id: String,
    },
    /// Print the node's id, address, peers and stored records.
    Status {
        #[arg(long)]
        json: bool,
    },
}

/// Everything that ends the process with status 1.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Ctl(#[from] CtlError),
    #[error(transparent)]
    Testnet(#[from] ProcessTestnetError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Message(String),
}

fn main() -> ExitCode {
    let parsed = with_setting_ranges(Cli::command())
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Discover(args) => discover(args),
        Command::Ctl(args) => control(args),
        Command::Testnet(args) => testnet(args),
    };
    result.unwrap_or_else(|e| {
        fail(&e.to_string());
        ExitCode::FAILURE
    })
}

/// `run`'s help for the engine's settings ends with their range and default, from the settings
/// table (where `run` checks them too).
fn with_setting_ranges(cli: clap::Command) -> clap::Command {
    cli.mut_subcommand("run", |run| {
        [
            settings::K,
            settings::ALPHA,
            settings::REQUEST_TIMEOUT_MS,
            settings::LOOKUP_TIMEOUT_MS,
            settings::MAX_RECORDS,
            settings::MAX_BYTES,
            settings::PUBLISHER_SHARE_PCT,
            settings::PEER_STORES_PER_S,
        ]
        .into_iter()
        .fold(run, |run, setting| {
            run.mut_arg(setting.name, |arg| {
                let text = arg.get_help().map(ToString::to_string).unwrap_or_default();
                arg.help(format!(
                    "{text} ({}-{}, default {})",
                    setting.min, setting.max, setting.default
                ))
            })
        })
    })
}

/// Help and version go to stdout as clap formats them; a usage error is one line.
fn usage_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            fail("missing command: run, discover, ctl or testnet (see rust-node --help)");
            ExitCode::from(2)
        }
        _ => {
            // clap's first paragraph is the message (a list of missing arguments spans a few
            // lines); tips and usage follow after a blank line.
            let text = e.render().to_string();
            let first = text.split("\n\n").next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            let words: Vec<&str> = first.split_whitespace().collect();
            fail(&format!("{} (see rust-node --help)", words.join(" ")));
            ExitCode::from(2)
        }
    }
}

fn fail(message: &str) {
    let one_line = message.replace('\n', " ");
    let _ = writeln!(std::io::stderr(), "rust-node: {one_line}");
}

fn run(args: RunArgs) -> Result<ExitCode, Failure> {
    let flags = RunOptions {
        listen: args.listen,
        bootstrap: (!args.bootstrap.is_empty()).then_some(args.bootstrap),
        identity: args.identity,
        advertise: (!args.advertise.is_empty()).then_some(args.advertise),
        k: args.k,
        alpha: args.alpha,
        ctl: args.ctl,
        log: args.log,
        request_timeout_ms: args.request_timeout_ms,
        lookup_timeout_ms: args.lookup_timeout_ms,
        max_records: args.max_records,
        max_bytes: args.max_bytes,
        publisher_share_pct: args.publisher_share_pct,
        peer_stores_per_s: args.peer_stores_per_s,
        require_bootstrap: args.require_bootstrap.then_some(true),
    };
    let file = match &args.config {
        Some(path) => RunOptions::from_file(path)?,
        None => RunOptions::default(),
    };
    let settings = flags.over(file).resolve()?;
    let metrics = match &args.metrics {
        Some(addr) => {
            let exposure = if args.metrics_public {
                Exposure::Public
            } else {
                Exposure::LoopbackOnly
            };
            let addr = resolve_addr(addr)?;
            // Checked again when the server starts; here, before a node starts.
            exposure.check(addr)?;
            Some((addr, exposure))
        }
        None => None,
    };
    init_logging(&settings.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_node(settings, metrics))
}

async fn run_node(
    settings: RunSettings,
    metrics: Option<(SocketAddr, Exposure)>,
) -> Result<ExitCode, Failure> {
    let identity = match &settings.identity {
        Some(path) => Identity::load_or_create(path)?,
        None => Identity::generate()?,
    };
    let node = Arc::new(Node::start(&identity, settings.listen, settings.node.clone()).await?);
    let metrics = metrics
        .map(|(addr, exposure)| MetricsServer::start(addr, exposure, node.clone()))
        .transpose();
    let result = match metrics {
        Ok(metrics) => serve_until_signal(&node, &settings, metrics.as_ref()).await,
        Err(e) => Err(e.into()),
    };
    node.shutdown().await;
    result
}

async fn serve_until_signal(
    node: &Arc<Node>,
    settings: &RunSettings,
    metrics: Option<&MetricsServer>,
) -> Result<ExitCode, Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed first, so a signal during the bootstrap is not lost.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let startup = async {
        if !settings.bootstrap.is_empty() {
            match node.bootstrap(&settings.bootstrap).await {
                Err(NodeError::Bootstrap(detail)) if !settings.require_bootstrap => {
                    // The node retries in the background; it serves meanwhile, so that nodes
                    // of a cluster may start in any order.
                    tracing::warn!(error = %detail, "no bootstrap node answered; serving, and retrying to join");
                }
                joined => {
                    joined?;
                }
            }
        }
        for spec in &settings.advertise {
            node.advertise(
                &spec.service,
                &spec.endpoint,
                BTreeMap::new(),
                spec.ttl_secs,
            )
            .await?;
        }
        let ctl = match &settings.ctl {
            Some(path) => Some(CtlServer::bind(path, node.clone())?),
            None => None,
        };
        Ok::<_, Failure>(ctl)
    };
    let _ctl = tokio::select! {
        ctl = startup => ctl?,
        _ = terminate.recv() => return Ok(ExitCode::SUCCESS),
        _ = interrupt.recv() => return Ok(ExitCode::SUCCESS),
    };
    // The line a supervisor (or a test) waits for.
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "rust-node listening on {} id {}",
        node.local_addr(),
        id_hex(&node.id())
    );
    if let Some(metrics) = metrics {
        let _ = writeln!(
            out,
            "rust-node metrics on http://{}{}",
            metrics.local_addr(),
            macula_dht_node::metrics::PATH
        );
    }
    let _ = out.flush();
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM, shutting down"),
        _ = interrupt.recv() => tracing::info!("SIGINT, shutting down"),
    }
    Ok(ExitCode::SUCCESS)
}

fn discover(args: DiscoverArgs) -> Result<ExitCode, Failure> {
    init_logging("error");
    let bootstrap = args
        .bootstrap
        .iter()
        .map(|a| resolve_addr(a))
        .collect::<Result<Vec<SocketAddr>, _>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let found = runtime.block_on(async {
        let identity = Identity::generate()?;
        let bind = match bootstrap.first() {
            Some(SocketAddr::V6(_)) => SocketAddr::from(([0u16; 8], 0)),
            _ => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let mut config = NodeConfig::default();
        config.dht.serve = false;
        let node = Node::start(&identity, bind, config).await?;
        let lookup = async {
            node.contact(&bootstrap).await?;
            node.discover(&args.service, args.want as usize).await
        };
        let found = tokio::time::timeout(Duration::from_secs(args.timeout), lookup).await;
        node.shutdown().await;
        match found {
            Ok(result) => Ok(result?),
            Err(_) => Err(Failure::Message(format!(
                "no answer within {}s while looking up {}",
                args.timeout, args.service
            ))),
        }
    })?;
    let views: Vec<ProviderView> = found.iter().map(ProviderView::from).collect();
    print_providers(&args.service, &views, args.json)
}

/// The providers one per line (or as a JSON list); exit status 1 when there are none.
fn print_providers(service: &str, found: &[ProviderView], json: bool) -> Result<ExitCode, Failure> {
    if found.is_empty() {
        fail(&format!("no provider of {service} found"));
        return Ok(ExitCode::FAILURE);
    }
    let now = unix_now();
    let mut out = std::io::stdout().lock();
    if json {
        let list: Vec<serde_json::Value> = found.iter().map(|p| provider_json(p, now)).collect();
        writeln!(out, "{}", serde_json::Value::Array(list))?;
    } else {
        for p in found {
            writeln!(out, "{}", provider_line(p, now))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_picked(provider: &ProviderView, json: bool) -> Result<ExitCode, Failure> {
    let now = unix_now();
    if json {
        println!("{}", provider_json(provider, now));
    } else {
        println!("{}", provider_line(provider, now));
    }
    Ok(ExitCode::SUCCESS)
}

fn provider_line(p: &ProviderView, now: u64) -> String {
    let ttl_left = p
        .ttl_left(now)
        .map_or_else(|| "?".to_string(), |s| s.to_string());
    let metadata = serde_json::to_string(&p.metadata).unwrap_or_default();
    format!(
        "node_id={} endpoint={} ttl_left={ttl_left}s metadata={metadata}",
        p.node_id,
        p.endpoint.as_deref().unwrap_or("-"),
    )
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    s.parse().map_err(|e: UnknownStrategy| e.to_string())
}

fn parse_hex_id(s: &str) -> Result<String, String> {
    match unhex(s.as_bytes()) {
        Some(bytes) if !bytes.is_empty() => Ok(s.to_string()),
        _ => Err("expected hex digits (an even number of them)".into()),
    }
}

fn provider_json(p: &ProviderView, now: u64) -> serde_json::Value {
    serde_json::json!({
        "node_id": p.node_id,
        "endpoint": p.endpoint,
        "metadata": p.metadata,
        "ttl": p.ttl,
        "ttl_left": p.ttl_left(now),
        "advertised_at": p.advertised_at,
    })
}

fn control(args: CtlArgs) -> Result<ExitCode, Failure> {
    let (request, verb) = match args.action {
        CtlAction::Advertise {
            service,
            endpoint,
            ttl,
            meta,
            once,
        } => {
            let mut metadata = BTreeMap::new();
            for entry in meta {
                let (k, v) = entry.split_once('=').ok_or_else(|| {
                    Failure::Message(format!("invalid --meta {entry:?}: expected KEY=VALUE"))
                })?;
                metadata.insert(k.to_string(), v.to_string());
            }
            let request = CtlRequest::Advertise {
                service: service.clone(),
                endpoint,
                ttl,
                metadata,
                once,
            };
            (request, format!("advertised {service}"))
        }
        CtlAction::Remove { service } => (
            CtlRequest::Remove {
                service: service.clone(),
            },
            format!("removed {service}"),
        ),
        CtlAction::Status { json } => {
            return print_status(ctl::call(&args.socket, &CtlRequest::Status)?, json);
        }
        CtlAction::Discover {
            service,
            want,
            json,
        } => {
            let request = CtlRequest::Discover {
                service: service.clone(),
                want: want as usize,
            };
            return match ctl::call(&args.socket, &request)? {
                CtlResponse::Providers { providers } => print_providers(&service, &providers, json),
                CtlResponse::Error { message } => Err(Failure::Message(message)),
                _ => Err(Failure::Message("unexpected reply to discover".into())),
            };
        }
        CtlAction::Pick {
            service,
            strategy,
            json,
        } => {
            let request = CtlRequest::Pick {
                service,
                strategy: strategy.name().to_string(),
            };
            return match ctl::call(&args.socket, &request)? {
                CtlResponse::Picked { provider } => print_picked(&provider, json),
                CtlResponse::Error { message } => Err(Failure::Message(message)),
                _ => Err(Failure::Message("unexpected reply to pick".into())),
            };
        }
        CtlAction::ReportFailure { service, node_id } => {
            let request = CtlRequest::ReportFailure {
                service: service.clone(),
                node_id: node_id.clone(),
            };
            return match ctl::call(&args.socket, &request)? {
                CtlResponse::Reported { skipped_for_ms } => {
                    println!("reported {node_id} of {service}: skipped for {skipped_for_ms} ms");
                    Ok(ExitCode::SUCCESS)
                }
                CtlResponse::Error { message } => Err(Failure::Message(message)),
                _ => Err(Failure::Message(
                    "unexpected reply to report-failure".into(),
                )),
            };
        }
    };
    match ctl::call(&args.socket, &request)? {
        CtlResponse::Published(p) => {
            println!(
                "{verb}: key {}, acknowledged by {} of {} closest nodes",
                p.key, p.acked, p.targets
            );
            Ok(ExitCode::SUCCESS)
        }
        CtlResponse::Error { message } => Err(Failure::Message(message)),
        _ => Err(Failure::Message("unexpected reply".into())),
    }
}

fn print_status(reply: CtlResponse, json: bool) -> Result<ExitCode, Failure> {
    let status = match reply {
        CtlResponse::Status(status) => status,
        CtlResponse::Error { message } => return Err(Failure::Message(message)),
        _ => return Err(Failure::Message("unexpected reply to status".into())),
    };
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&status).unwrap_or_default()
        )?;
    } else {
        writeln!(out, "id: {}", status.id)?;
        writeln!(out, "addr: {}", status.addr)?;
        writeln!(
            out,
            "protocol: {} ({} exchanges with peers of other versions refused)",
            status.protocol, status.refused_version
        )?;
        let joined = if status.joined {
            "joined"
        } else {
            "not joined yet"
        };
        writeln!(
            out,
            "peers: {} ({joined}; {} suspect)",
            status.peers, status.suspects
        )?;
        writeln!(out, "keys: {}", status.keys)?;
        writeln!(out, "records: {}", status.records)?;
        writeln!(out, "tombstones: {}", status.tombstones)?;
        writeln!(out, "adverts: {}", status.adverts.join(" "))?;
        writeln!(
            out,
            "requests: {} ({} bad)",
            status.requests, status.bad_requests
        )?;
        writeln!(
            out,
            "lookups: {} ({} timed out, {} unanswered), p50 {} us, p99 {} us",
            status.lookups,
            status.lookup_timeouts,
            status.lookup_failures,
            status.lookup_p50_us,
            status.lookup_p99_us
        )?;
        writeln!(
            out,
            "refused: {} forged, {} wrong publisher, {} stale, {} replayed, {} over quota, {} \
             too fast; {} forged providers dropped from replies",
            status.refused_forged,
            status.refused_wrong_publisher,
            status.refused_stale,
            status.refused_replay,
            status.refused_quota,
            status.refused_rate,
            status.forged_in_replies
        )?;
        writeln!(
            out,
            "not acknowledged: {} stores, {} removes; {} hand-offs stopped",
            status.store_failures, status.remove_failures, status.handoff_failures
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// How long a testnet node may take to be ready, and to exit once told to stop.
const TESTNET_READY: Duration = Duration::from_secs(20);
const TESTNET_GRACE: Duration = Duration::from_secs(5);
/// How often the testnet looks at its nodes and for a signal.
const TESTNET_POLL: Duration = Duration::from_millis(100);

fn testnet(args: TestnetArgs) -> Result<ExitCode, Failure> {
    let (dir, temporary) = match args.dir {
        Some(dir) => (dir, false),
        None => (
            std::env::temp_dir().join(format!("rust-node-testnet.{}", std::process::id())),
            true,
        ),
    };
    let config = ProcessTestnetConfig {
        binary: std::env::current_exe()?,
        nodes: usize::from(args.nodes),
        k: args.k,
        base_port: args.base_port,
        dir: dir.clone(),
        ready_timeout: TESTNET_READY,
    };
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(stop.clone())?;
    let result = run_testnet(&config, &stop);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Starts the nodes, prints them, reports any that exits, and stops them all once `stop` is set.
fn run_testnet(config: &ProcessTestnetConfig, stop: &AtomicBool) -> Result<ExitCode, Failure> {
    let mut net = match ProcessTestnet::start(config, stop) {
        Ok(net) => net,
        Err(ProcessTestnetError::Interrupted) => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(e.into()),
    };
    {
        let mut out = std::io::stdout().lock();
        for n in net.nodes() {
            writeln!(
                out,
                "{} listening on {} id {} ctl {} pid {}",
                n.name,
                n.addr,
                n.id,
                n.ctl.display(),
                n.pid
            )?;
        }
        out.flush()?;
    }
    let _ = writeln!(
        std::io::stderr(),
        "rust-node: testnet of {} nodes running, logs in {}; SIGINT or SIGTERM stops it",
        net.nodes().len(),
        config.dir.display()
    );
    while !stop.load(Ordering::Relaxed) {
        for (name, status) in net.reap() {
            fail(&format!("{name} exited ({status})"));
        }
        if net.running() == 0 {
            return Err(Failure::Message("every node of the testnet exited".into()));
        }
        std::thread::sleep(TESTNET_POLL);
    }
    let killed = net.stop(TESTNET_GRACE);
    if !killed.is_empty() {
        fail(&format!(
            "killed after {} s without exiting: {}",
            TESTNET_GRACE.as_secs(),
            killed.join(" ")
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// Sets `stop` on the first SIGINT or SIGTERM. The handlers are in place when this returns, so
/// from then on neither signal ends the process before its nodes are stopped.
fn watch_signals(stop: Arc<AtomicBool>) -> Result<(), Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut terminate, mut interrupt) = {
        let _entered = runtime.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        )
    };
    std::thread::spawn(move || {
        runtime.block_on(async {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        });
        stop.store(true, Ordering::Relaxed);
    });
    Ok(())
}

/// Logs to stderr at `level` (already validated; anything else means `info`).
fn init_logging(level: &str) {
    let level = level.parse().unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .try_init();
}
