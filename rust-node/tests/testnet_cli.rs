//! `rust-node testnet N`: N `rust-node run` processes on loopback as one network, a line per
//! node, `rust-node ctl` against each, and every node stopped on SIGTERM.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::procs::{NodeProc, Procs, BIN};

const WITHIN: Duration = Duration::from_secs(20);
/// How long the testnet may take to print its nodes.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A running `rust-node testnet` and the nodes it printed. Dropping it SIGKILLs the testnet and
/// every node still there, pass or fail.
struct Running {
    child: Child,
    nodes: Vec<NodeProc>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for node in &self.nodes {
            if is_alive(node.pid) {
                signal("KILL", node.pid);
            }
        }
    }
}

/// Starts `rust-node testnet args...` and reads its `nodes` lines.
fn start(args: &[&str], nodes: usize, stderr: &Path) -> Running {
    let child = Command::new(BIN)
        .arg("testnet")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap();
    let mut running = Running {
        child,
        nodes: Vec::new(),
    };
    let stdout = running.child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + READY_WITHIN;
    while running.nodes.len() < nodes {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => running.nodes.push(parse(&line)),
            Err(e) => panic!(
                "testnet printed {} of {nodes} lines ({e}); stderr: {}",
                running.nodes.len(),
                std::fs::read_to_string(stderr).unwrap_or_default()
            ),
        }
    }
    running
}

/// A node line: `n1 listening on 127.0.0.1:PORT id HEX ctl PATH pid PID`.
fn parse(line: &str) -> NodeProc {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [name, "listening", "on", addr, "id", id, "ctl", ctl, "pid", pid] => NodeProc {
            name: name.to_string(),
            addr: addr.parse().unwrap(),
            id: id.to_string(),
            ctl: PathBuf::from(ctl),
            pid: pid.parse().unwrap(),
        },
        _ => panic!("unexpected testnet line {line:?}"),
    }
}

fn signal(name: &str, pid: u32) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// Whether `pid` is a process (a zombie included: its parent has not reaped it).
fn is_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn three_nodes_answer_ctl_and_stop_on_sigterm() {
    let mut procs = Procs::new("testnet-cli-three");
    let dir = procs.dir().join("net");
    let stderr = procs.dir().join("testnet.err");
    let mut net = start(&["3", "--dir", dir.to_str().unwrap()], 3, &stderr);

    let names: Vec<&str> = net.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["n0", "n1", "n2"]);
    for node in &net.nodes {
        assert!(node.addr.ip().is_loopback(), "{node:?}");
        assert_eq!(node.id.len(), 64, "{node:?}");
        assert_eq!(node.ctl, dir.join(format!("{}.sock", node.name)));
        assert!(is_alive(node.pid), "{node:?}");
        let status = procs.ctl(node, &["status", "--json"]);
        assert!(status.contains(&node.id), "{status}");
    }

    let (advertiser, finder) = (&net.nodes[1], &net.nodes[2]);
    procs.ctl(
        advertiser,
        &[
            "advertise",
            "testnet.svc",
            "https://svc:9443",
            "--ttl",
            "60",
        ],
    );
    let deadline = Instant::now() + WITHIN;
    let found = loop {
        let socket = finder.ctl.display().to_string();
        let ran = procs.run(
            &[
                "ctl",
                "--socket",
                &socket,
                "discover",
                "testnet.svc",
                "--json",
            ],
            WITHIN,
        );
        if ran.status.success() || Instant::now() >= deadline {
            break ran;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(found.status.success(), "{found:?}");
    assert!(found.stdout.contains(&advertiser.id), "{found:?}");
    assert!(found.stdout.contains("https://svc:9443"), "{found:?}");

    signal("TERM", net.child.id());
    let status = wait_exit(&mut net.child, WITHIN).expect("testnet exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    let left: Vec<&NodeProc> = net.nodes.iter().filter(|n| is_alive(n.pid)).collect();
    assert!(left.is_empty(), "nodes still running: {left:?}");
    for node in &net.nodes {
        assert!(!node.ctl.exists(), "{} left behind", node.ctl.display());
        assert!(
            dir.join(format!("{}.key", node.name)).exists(),
            "--dir keeps identities"
        );
    }
}

#[test]
fn without_dir_the_temporary_directory_is_removed() {
    let procs = Procs::new("testnet-cli-tmp");
    let stderr = procs.dir().join("testnet.err");
    let mut net = start(&["1"], 1, &stderr);
    let dir = net.nodes[0].ctl.parent().unwrap().to_path_buf();
    assert!(dir.is_dir());
    signal("TERM", net.child.id());
    let status = wait_exit(&mut net.child, WITHIN).expect("testnet exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!is_alive(net.nodes[0].pid));
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn bad_sizes_and_settings_are_one_line() {
    let mut procs = Procs::new("testnet-cli-usage");
    for (args, code, needle) in [
        (&["testnet", "0"][..], 2, "1..=256"),
        (&["testnet", "257"][..], 2, "1..=256"),
        (&["testnet", "many"][..], 2, "many"),
        (&["testnet", "2", "--k", "0"][..], 1, "k must be between"),
        (
            &["testnet", "3", "--base-port", "65534"][..],
            1,
            "goes past port 65535",
        ),
    ] {
        let ran = procs.run(args, WITHIN);
        assert_eq!(ran.status.code(), Some(code), "{args:?}: {ran:?}");
        assert_eq!(ran.stderr.lines().count(), 1, "{args:?}: {ran:?}");
        assert!(ran.stderr.starts_with("rust-node: "), "{args:?}: {ran:?}");
        assert!(ran.stderr.contains(needle), "{args:?}: {ran:?}");
    }
    let help = procs.run(&["testnet", "--help"], WITHIN);
    assert!(help.status.success());
    assert!(help.stdout.contains("SIGTERM"), "{}", help.stdout);
}
