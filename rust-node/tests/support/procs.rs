//! Separate `rust-node` processes for tests: start nodes on free loopback ports, run one-shot
//! commands with a deadline, and kill every child by its pid when the test ends, pass or fail.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_rust-node");

/// How long a node may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a `ctl` command may take.
const CTL_TIMEOUT: Duration = Duration::from_secs(30);

/// Children of one test, and a scratch directory. Dropping it kills every child still running
/// (SIGKILL to its pid), reaps it, and removes the directory.
pub struct Procs {
    children: Vec<Child>,
    dir: PathBuf,
}

/// A node process that printed its ready line.
#[derive(Debug, Clone)]
pub struct NodeProc {
    pub name: String,
    pub pid: u32,
    pub addr: SocketAddr,
    /// Its id, hex.
    pub id: String,
    /// Its control socket.
    pub ctl: PathBuf,
}

/// A node process started but not known ready yet.
pub struct Pending {
    name: String,
    pid: u32,
    ctl: PathBuf,
    args: Vec<String>,
    ready: mpsc::Receiver<String>,
}

/// What a one-shot command did.
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Procs {
    pub fn new(test: &str) -> Procs {
        let nonce = RandomState::new().hash_one(test);
        let dir =
            std::env::temp_dir().join(format!("rust-node-{test}-{}-{nonce:x}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Procs {
            children: Vec::new(),
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `rust-node run` with a control socket, plus `args`; on a random loopback port
    /// unless `args` has a `--listen`.
    pub fn spawn_node(&mut self, name: &str, args: &[String]) -> Pending {
        let ctl = self.dir.join(format!("{name}.sock"));
        let mut full = vec![
            "run".to_string(),
            "--ctl".into(),
            ctl.display().to_string(),
            "--log".into(),
            "warn".into(),
        ];
        if !args.iter().any(|a| a == "--listen") {
            full.extend(["--listen".into(), format!("127.0.0.1:{}", random_port())]);
        }
        full.extend_from_slice(args);
        let stderr = std::fs::File::create(self.dir.join(format!("{name}.err"))).unwrap();
        let mut child = Command::new(BIN)
            .args(&full)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let pid = child.id();
        let stdout = child.stdout.take().unwrap();
        self.children.push(child);
        let (tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            // Keeps reading until the child exits, so its stdout never fills up.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Pending {
            name: name.to_string(),
            pid,
            ctl,
            args: args.to_vec(),
            ready,
        }
    }

    /// Waits for the ready line; a node that could not bind its port is restarted on another
    /// random port (up to 20 times). Panics with the node's stderr on any other failure.
    pub fn wait_ready(&mut self, mut pending: Pending) -> NodeProc {
        for _ in 0..20 {
            match pending.ready.recv_timeout(READY_TIMEOUT) {
                Ok(line) => return parse_ready(&pending, &line),
                Err(_) => {
                    let stderr = self.stderr_of(&pending.name);
                    self.kill(pending.pid);
                    if stderr.contains("Address already in use") {
                        let (name, args) = (pending.name.clone(), pending.args.clone());
                        pending = self.spawn_node(&name, &args);
                        continue;
                    }
                    panic!("node {} did not start: {stderr}", pending.name);
                }
            }
        }
        panic!("node {}: no free port found", pending.name);
    }

    /// `spawn_node` + `wait_ready`.
    pub fn start_node(&mut self, name: &str, args: &[String]) -> NodeProc {
        let pending = self.spawn_node(name, args);
        self.wait_ready(pending)
    }

    /// `count` nodes with `args`: `n0`, then `n1`... joining through it, started together.
    pub fn start_cluster(&mut self, count: usize, args: &[String]) -> Vec<NodeProc> {
        let first = self.start_node("n0", args);
        let mut join = vec!["--bootstrap".to_string(), first.addr.to_string()];
        join.extend_from_slice(args);
        let pending: Vec<_> = (1..count)
            .map(|i| self.spawn_node(&format!("n{i}"), &join))
            .collect();
        let mut nodes = vec![first];
        for p in pending {
            nodes.push(self.wait_ready(p));
        }
        nodes
    }

    /// SIGKILL to `pid` (one of our children), and reap it.
    pub fn kill(&mut self, pid: u32) {
        if let Some(at) = self.children.iter().position(|c| c.id() == pid) {
            let mut child = self.children.remove(at);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM to `pid` and wait (at most `within`) for it to exit; its status, if it did.
    pub fn terminate(&mut self, pid: u32, within: Duration) -> Option<ExitStatus> {
        let at = self.children.iter().position(|c| c.id() == pid)?;
        let mut child = self.children.remove(at);
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.children.push(child); // still running: killed by `Drop`
        None
    }

    /// `rust-node ctl --socket <node's socket> args...`: its stdout; panics unless it succeeds.
    pub fn ctl(&mut self, node: &NodeProc, args: &[&str]) -> String {
        let socket = node.ctl.display().to_string();
        let mut full = vec!["ctl", "--socket", &socket];
        full.extend_from_slice(args);
        let ran = self.run(&full, CTL_TIMEOUT);
        assert!(
            ran.status.success(),
            "ctl {args:?} on {}: {ran:?}",
            node.name
        );
        ran.stdout
    }

    pub fn stderr_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.err"))).unwrap_or_default()
    }

    /// Runs `rust-node args...` to completion, killed if it outlives `within`.
    pub fn run(&mut self, args: &[&str], within: Duration) -> Ran {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = Instant::now() + within;
        let exited = loop {
            match child.try_wait() {
                Ok(Some(_)) => break true,
                _ if Instant::now() >= deadline => break false,
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        if !exited {
            // Reaped by `Drop` (or now): never left running.
            self.children.push(child);
            self.kill(pid);
            panic!(
                "`rust-node {}` still running after {within:?}",
                args.join(" ")
            );
        }
        let output = child.wait_with_output().unwrap();
        Ran {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for mut child in self.children.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn parse_ready(pending: &Pending, line: &str) -> NodeProc {
    // "rust-node listening on 127.0.0.1:PORT id HEX"
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["rust-node", "listening", "on", addr, "id", id] => NodeProc {
            name: pending.name.clone(),
            pid: pending.pid,
            addr: addr.parse().unwrap(),
            id: id.to_string(),
            ctl: pending.ctl.clone(),
        },
        _ => panic!("node {}: unexpected first line {line:?}", pending.name),
    }
}

/// A random port in 20000..60000.
pub fn random_port() -> u16 {
    let r = RandomState::new().hash_one(Instant::now());
    20_000 + (r % 40_000) as u16
}
