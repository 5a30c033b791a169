//! Local networks on 127.0.0.1: many nodes in one process ([`Testnet`], for tests and
//! benches), or many `rust-node run` processes ([`ProcessTestnet`], what `rust-node testnet`
//! runs).
//!
//! Every node bootstraps off the first one, so that by the end each node has met the first and,
//! through its own-id lookup, its neighbourhood. [`Testnet`] nodes bind port 0 and have fresh
//! identities each run.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::identity::Identity;
use crate::node::{Node, NodeConfig, NodeError};

/// Bootstrap attempts of a node of an in-process testnet (see [`bootstrap_patiently`]).
const BOOTSTRAP_TRIES: u32 = 3;

/// A running in-process network.
#[derive(Debug)]
pub struct Testnet {
    nodes: Vec<Node>,
}

impl Testnet {
    /// Starts `n` nodes (at least 1) with `config` and bootstraps nodes 1.. off node 0.
    pub async fn start(n: usize, config: NodeConfig) -> Result<Testnet, NodeError> {
        Testnet::start_on(n, config, |_| None).await
    }

    /// [`Testnet::start`], with node `i` on the runtime `on(i)` names (for `None`, the current
    /// one): the node's timer, its requests and connections, and its answers all run there. A
    /// test stops such nodes as `kill -9` stops a process, as far as their peers can tell, by
    /// shutting that runtime down (`Runtime::shutdown_background`): every task stops where it is
    /// and no packet leaves (no QUIC close); while the [`Node`] value is kept (see
    /// [`Testnet::take`]) its socket stays bound and unread, so what peers send is swallowed
    /// (no ICMP port unreachable either).
    pub async fn start_on(
        n: usize,
        config: NodeConfig,
        on: impl Fn(usize) -> Option<tokio::runtime::Handle>,
    ) -> Result<Testnet, NodeError> {
        let loopback: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut nodes: Vec<Node> = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let identity = Identity::generate()?;
            let node = match on(i) {
                None => Node::start(&identity, loopback, config.clone()).await?,
                Some(runtime) => {
                    let config = config.clone();
                    let started = runtime
                        .spawn(async move { Node::start(&identity, loopback, config).await })
                        .await;
                    match started {
                        Ok(node) => node?,
                        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                        // That runtime is shutting down.
                        Err(_) => return Err(NodeError::Closed),
                    }
                }
            };
            if i > 0 {
                bootstrap_patiently(&node, nodes_first_addr(&nodes)).await?;
            }
            nodes.push(node);
        }
        Ok(Testnet { nodes })
    }

    /// Takes node `i` out of the network as it is, still running (later indices shift down):
    /// the caller decides how it ends. `None` if there is no such node.
    pub fn take(&mut self, i: usize) -> Option<Node> {
        (i < self.nodes.len()).then(|| self.nodes.remove(i))
    }

    /// The running nodes, in start order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `i`, if there is one.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.nodes.get(i)
    }

    /// How many nodes run.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The address of node 0, to bootstrap more nodes (or clients) off it.
    pub fn bootstrap_addr(&self) -> SocketAddr {
        nodes_first_addr(&self.nodes)
    }

    /// Shuts down node `i` and takes it out of the network (its records are not withdrawn);
    /// later indices shift down. Returns false if there is no such node.
    pub async fn stop(&mut self, i: usize) -> bool {
        if i >= self.nodes.len() {
            return false;
        }
        let node = self.nodes.remove(i);
        node.shutdown().await;
        true
    }

    /// Shuts every node down, all at once.
    pub async fn shutdown(self) {
        let mut closing = tokio::task::JoinSet::new();
        for node in self.nodes {
            closing.spawn(async move { node.shutdown().await });
        }
        while closing.join_next().await.is_some() {}
    }
}

/// Bootstraps `node` through `via`, trying again (at most [`BOOTSTRAP_TRIES`] times) when no
/// answer came in time: in a network of hundreds of nodes in one process on a small machine, the
/// first node may be too busy for a moment (a running node re-joins with backoff the same way).
async fn bootstrap_patiently(node: &Node, via: SocketAddr) -> Result<usize, NodeError> {
    let mut tries = 1;
    loop {
        match node.bootstrap(&[via]).await {
            Err(NodeError::Bootstrap(_)) if tries < BOOTSTRAP_TRIES => tries += 1,
            done => return done,
        }
    }
}

/// Node 0's address; `start` always creates node 0 before calling this.
fn nodes_first_addr(nodes: &[Node]) -> SocketAddr {
    nodes
        .first()
        .map(Node::local_addr)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Most nodes a [`ProcessTestnet`] starts.
pub const MAX_PROCESS_NODES: usize = 256;

/// Nodes started at once after node 0 (each bootstraps off node 0).
const START_BATCH: usize = 16;

/// How often waits look at the children and at the cancel flag.
const POLL: Duration = Duration::from_millis(50);

/// Bytes of a node's log quoted in an error.
const LOG_TAIL_BYTES: u64 = 512;

/// The printed line a `rust-node run` process is ready with, before its address.
const READY_PREFIX: &str = "rust-node listening on ";

/// What [`ProcessTestnet::start`] starts.
#[derive(Debug, Clone)]
pub struct ProcessTestnetConfig {
    /// The `rust-node` binary.
    pub binary: PathBuf,
    /// How many nodes: 1..=[`MAX_PROCESS_NODES`].
    pub nodes: usize,
    /// Every node's `--k`; the default when `None`.
    pub k: Option<usize>,
    /// Node `i` listens on `base_port + i`; when `None`, on a port of the system's choice.
    pub base_port: Option<u16>,
    /// Where node `i` keeps `n{i}.key` (its identity), `n{i}.sock` (its control socket) and
    /// `n{i}.log` (its stderr); created if missing.
    pub dir: PathBuf,
    /// How long a node may take to print its listening line.
    pub ready_timeout: Duration,
}

/// A node of a [`ProcessTestnet`], ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProcess {
    /// `n0`, `n1`, ...
    pub name: String,
    /// Its listen address.
    pub addr: SocketAddr,
    /// Its node id, hex.
    pub id: String,
    /// Its control socket, for `rust-node ctl --socket`.
    pub ctl: PathBuf,
    /// Its log (stderr).
    pub log: PathBuf,
    /// Its OS process id.
    pub pid: u32,
}

/// Why a [`ProcessTestnet`] did not start.
#[derive(Debug, thiserror::Error)]
pub enum ProcessTestnetError {
    /// The node count is out of range.
    #[error("testnet size must be between 1 and {MAX_PROCESS_NODES}, not {0}")]
    Size(usize),
    /// A node's `k` is out of range.
    #[error(transparent)]
    Setting(#[from] macula_dht::settings::SettingError),
    /// `base_port + nodes - 1` is not a port.
    #[error("base port {base} with {nodes} nodes goes past port 65535")]
    Ports {
        /// The first port.
        base: u16,
        /// How many nodes.
        nodes: usize,
    },
    /// The directory could not be created.
    #[error("directory {}: {source}", .path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A node's process or its log could not be started.
    #[error("{name}: cannot start {}: {source}", .binary.display())]
    Spawn {
        /// The node.
        name: String,
        /// The binary run.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A node exited before it was ready.
    #[error("{name} exited ({status}) before it was ready: {log_tail}")]
    Exited {
        /// The node.
        name: String,
        /// How it ended.
        status: ExitStatus,
        /// The end of its log.
        log_tail: String,
    },
    /// A node printed no listening line in time.
    #[error("{name} not ready within {}s: {log_tail}", .timeout.as_secs())]
    NotReady {
        /// The node.
        name: String,
        /// The time it had.
        timeout: Duration,
        /// The end of its log.
        log_tail: String,
    },
    /// A node's first line was not its listening line.
    #[error("{name} printed {line:?} instead of its listening line")]
    Unexpected {
        /// The node.
        name: String,
        /// What it printed.
        line: String,
    },
    /// The cancel flag was set while starting.
    #[error("interrupted while starting")]
    Interrupted,
}

/// `rust-node run` processes on 127.0.0.1 as one network: what `rust-node testnet N` runs, for
/// a local cluster that `rust-node ctl` reaches node by node and whose nodes can be stopped or
/// killed one at a time by their pids (unlike [`Testnet`], whose nodes share one process).
///
/// Node 0 starts first; the others bootstrap off it, a batch at a time. Every child is ended by
/// its pid: [`ProcessTestnet::stop`] (SIGTERM, then SIGKILL after a grace period), or `Drop`
/// (SIGKILL).
#[derive(Debug)]
pub struct ProcessTestnet {
    nodes: Vec<NodeProcess>,
    /// Every child started, in start order (ready or not), and its status once reaped.
    children: Vec<(String, Child, Option<ExitStatus>)>,
}

/// A child that has not printed its listening line yet.
struct Pending {
    name: String,
    ctl: PathBuf,
    log: PathBuf,
    pid: u32,
    lines: mpsc::Receiver<String>,
}

impl ProcessTestnet {
    /// Starts the nodes and waits until every one is ready. Setting `cancel` stops the start
    /// ([`ProcessTestnetError::Interrupted`]). On any error every child started is stopped
    /// first.
    pub fn start(
        config: &ProcessTestnetConfig,
        cancel: &AtomicBool,
    ) -> Result<ProcessTestnet, ProcessTestnetError> {
        if config.nodes == 0 || config.nodes > MAX_PROCESS_NODES {
            return Err(ProcessTestnetError::Size(config.nodes));
        }
        if let Some(k) = config.k {
            macula_dht::settings::K.check_usize(k)?;
        }
        if let Some(base) = config.base_port {
            if usize::from(base) + config.nodes > usize::from(u16::MAX) + 1 || base == 0 {
                return Err(ProcessTestnetError::Ports {
                    base,
                    nodes: config.nodes,
                });
            }
        }
        std::fs::create_dir_all(&config.dir).map_err(|source| ProcessTestnetError::Dir {
            path: config.dir.clone(),
            source,
        })?;
        let mut net = ProcessTestnet {
            nodes: Vec::with_capacity(config.nodes),
            children: Vec::with_capacity(config.nodes),
        };
        match net.start_all(config, cancel) {
            Ok(()) => Ok(net),
            Err(e) => {
                net.stop(Duration::from_secs(5));
                Err(e)
            }
        }
    }

    /// The nodes, in start order.
    pub fn nodes(&self) -> &[NodeProcess] {
        &self.nodes
    }

    /// The nodes that exited since the last call, with how.
    pub fn reap(&mut self) -> Vec<(String, ExitStatus)> {
        let mut exited = Vec::new();
        for (name, child, status) in &mut self.children {
            if status.is_none() {
                if let Ok(Some(ended)) = child.try_wait() {
                    *status = Some(ended);
                    exited.push((name.clone(), ended));
                }
            }
        }
        exited
    }

    /// How many nodes have not exited (as far as the last [`ProcessTestnet::reap`] knows).
    pub fn running(&self) -> usize {
        self.children.iter().filter(|c| c.2.is_none()).count()
    }

    /// SIGTERM to every node still running, then SIGKILL to those that have not exited within
    /// `grace`; every child is reaped. Returns the names of the nodes that had to be killed.
    pub fn stop(&mut self, grace: Duration) -> Vec<String> {
        let _ = self.reap();
        for (_, child, status) in &self.children {
            if status.is_none() {
                terminate(child.id());
            }
        }
        let deadline = Instant::now() + grace;
        while self.running() > 0 && Instant::now() < deadline {
            std::thread::sleep(POLL);
            let _ = self.reap();
        }
        let mut killed = Vec::new();
        for (name, child, status) in &mut self.children {
            if status.is_none() {
                let _ = child.kill();
                *status = child.wait().ok();
                killed.push(name.clone());
            }
        }
        killed
    }

    fn start_all(
        &mut self,
        config: &ProcessTestnetConfig,
        cancel: &AtomicBool,
    ) -> Result<(), ProcessTestnetError> {
        let first = self.spawn(config, 0, None)?;
        self.await_ready(vec![first], config.ready_timeout, cancel)?;
        let seed = self.nodes[0].addr;
        let rest: Vec<usize> = (1..config.nodes).collect();
        for batch in rest.chunks(START_BATCH) {
            let mut pending = Vec::with_capacity(batch.len());
            for &i in batch {
                pending.push(self.spawn(config, i, Some(seed))?);
            }
            self.await_ready(pending, config.ready_timeout, cancel)?;
        }
        Ok(())
    }

    /// Starts node `i`; it bootstraps off `seed`.
    fn spawn(
        &mut self,
        config: &ProcessTestnetConfig,
        i: usize,
        seed: Option<SocketAddr>,
    ) -> Result<Pending, ProcessTestnetError> {
        let name = format!("n{i}");
        let file = |ext: &str| config.dir.join(format!("{name}.{ext}"));
        let (ctl, log) = (file("sock"), file("log"));
        // Checked in `start`: base + i < 65536.
        let port = config
            .base_port
            .map_or(0, |base| base.saturating_add(i as u16));
        let mut command = Command::new(&config.binary);
        command
            .arg("run")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--identity")
            .arg(file("key"))
            .arg("--ctl")
            .arg(&ctl)
            .args(["--log", "warn"]);
        if let Some(k) = config.k {
            command.args(["--k", &k.to_string()]);
        }
        if let Some(seed) = seed {
            command.args(["--bootstrap", &seed.to_string()]);
        }
        let spawn_error = |source| ProcessTestnetError::Spawn {
            name: name.clone(),
            binary: config.binary.clone(),
            source,
        };
        let stderr = std::fs::File::create(&log).map_err(spawn_error)?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(spawn_error)?;
        let pid = child.id();
        let stdout = child.stdout.take();
        self.children.push((name.clone(), child, None));
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = stdout {
            // Reads until the child exits, so that its stdout never fills up.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Ok(Pending {
            name,
            ctl,
            log,
            pid,
            lines,
        })
    }

    /// Waits for the listening line of each of `pending`.
    fn await_ready(
        &mut self,
        pending: Vec<Pending>,
        timeout: Duration,
        cancel: &AtomicBool,
    ) -> Result<(), ProcessTestnetError> {
        let deadline = Instant::now() + timeout;
        for node in pending {
            loop {
                if cancel.load(Ordering::Relaxed) {
                    return Err(ProcessTestnetError::Interrupted);
                }
                match node.lines.recv_timeout(POLL) {
                    Ok(line) => {
                        self.nodes.push(ready(&node, &line)?);
                        break;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    // Its stdout closed: the exit follows shortly.
                    Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(POLL),
                }
                if let Some(status) = self.exit_of(&node.name) {
                    return Err(ProcessTestnetError::Exited {
                        name: node.name,
                        status,
                        log_tail: log_tail(&node.log),
                    });
                }
                if Instant::now() >= deadline {
                    return Err(ProcessTestnetError::NotReady {
                        name: node.name,
                        timeout,
                        log_tail: log_tail(&node.log),
                    });
                }
            }
        }
        Ok(())
    }

    /// How node `name` ended, if it has.
    fn exit_of(&mut self, name: &str) -> Option<ExitStatus> {
        let (_, child, status) = self.children.iter_mut().find(|c| c.0 == name)?;
        if status.is_none() {
            *status = child.try_wait().ok().flatten();
        }
        *status
    }
}

impl Drop for ProcessTestnet {
    /// SIGKILL to every child still running, and reap it: none outlives the value.
    fn drop(&mut self) {
        for (_, child, status) in &mut self.children {
            if status.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The node of a listening line: `rust-node listening on ADDR id HEX`.
fn ready(node: &Pending, line: &str) -> Result<NodeProcess, ProcessTestnetError> {
    let unexpected = || ProcessTestnetError::Unexpected {
        name: node.name.clone(),
        line: line.chars().take(200).collect(),
    };
    let rest = line.strip_prefix(READY_PREFIX).ok_or_else(unexpected)?;
    let (addr, id) = rest.split_once(" id ").ok_or_else(unexpected)?;
    Ok(NodeProcess {
        name: node.name.clone(),
        addr: addr.parse().map_err(|_| unexpected())?,
        id: id.to_string(),
        ctl: node.ctl.clone(),
        log: node.log.clone(),
        pid: node.pid,
    })
}

/// SIGTERM to `pid` (a child not reaped yet, so the pid is still its own). std sends only
/// SIGKILL; the shell's `kill` builtin is there wherever `/bin/sh` is.
fn terminate(pid: u32) {
    let _ = Command::new("/bin/sh")
        .args([
            "-c",
            "kill -s TERM \"$1\" 2>/dev/null",
            "sh",
            &pid.to_string(),
        ])
        .stdin(Stdio::null())
        .status();
}

/// The last line or so of a log, on one line.
fn log_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let last = text.trim().lines().last().unwrap_or("").trim();
    if last.is_empty() {
        format!("see {}", path.display())
    } else {
        last.to_string()
    }
}
