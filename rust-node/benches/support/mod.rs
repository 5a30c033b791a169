//! What the node benches share: a server on its own OS thread and single-threaded runtime (like
//! a separate node process on this machine), a client endpoint, percentiles; and echo servers for
//! floors measured beside a request ([`echo`]).

// Only the cluster bench measures the echoes; the transport bench compiles this module too.
#[allow(dead_code)]
pub mod echo;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;

use macula_dht_node::{Endpoint, Identity, TransportConfig};
use tokio::runtime::Runtime;

pub fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The value at fraction `p` of an ascending `sorted`.
pub fn percentile<T: Copy + Ord>(sorted: &[T], p: f64) -> T {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// The machine's floor for a loopback round trip: `n` sequential UDP ping-pongs between this
/// thread and an echo thread, blocking sockets, no QUIC; sorted. Latency figures are read beside
/// it (on an idle guest VM most of a round trip is waking halted vCPUs).
pub fn udp_round_trips(n: usize) -> Vec<std::time::Duration> {
    use std::net::UdpSocket;
    let server = UdpSocket::bind("127.0.0.1:0").expect("bind echo");
    let server_addr = server.local_addr().expect("echo address");
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..n {
            let (len, from) = server.recv_from(&mut buf).expect("echo recv");
            server.send_to(&buf[..len], from).expect("echo send");
        }
    });
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    let mut buf = [0u8; 64];
    let mut rtts = Vec::with_capacity(n);
    for _ in 0..n {
        let start = std::time::Instant::now();
        client.send_to(b"ping", server_addr).expect("send");
        client.recv_from(&mut buf).expect("recv");
        rtts.push(start.elapsed());
    }
    echo.join().expect("echo thread");
    rtts.sort_unstable();
    rtts
}

/// A client endpoint on a free loopback port with a fresh identity.
pub fn client_endpoint() -> Endpoint {
    Endpoint::bind(
        "127.0.0.1:0".parse().expect("addr"),
        &Identity::generate().expect("identity"),
        TransportConfig::default(),
    )
    .expect("bind client")
}

/// A server running on its own thread until [`ServerThread::stop`]; `addr` says where to reach it
/// (a tuple of addresses when the thread serves several things).
pub struct ServerThread<A = SocketAddr> {
    pub addr: A,
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl<A: Send + 'static> ServerThread<A> {
    /// Runs `start` on the new thread's runtime; it returns the server's address and the future
    /// that shuts it down (which owns the server, keeping it alive until then). Tasks it spawned
    /// run until then too, and end with the runtime.
    pub fn start<F, Fut, Close>(start: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = (A, Close)>,
        Close: Future<Output = ()>,
    {
        let (addr_tx, addr_rx) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            current_thread().block_on(async move {
                let (addr, close) = start().await;
                addr_tx.send(addr).expect("send addr");
                // Park until told to stop, without blocking the runtime's thread.
                let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                close.await;
            });
        });
        let addr = addr_rx.recv().expect("server address");
        ServerThread { addr, stop, thread }
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// One row of a bench's JSON file in `target/bench/` (the format every bench writes; this crate
/// has no baseline to give).
#[allow(dead_code)] // not by the transport bench
pub struct Row {
    pub name: &'static str,
    pub unit: &'static str,
    pub ours: f64,
}

/// Writes `rows` to `target/bench/<file>` (under `CARGO_TARGET_DIR` if set) and says where.
// The transport bench compiles this module but writes no rows.
#[allow(dead_code)]
pub fn write_rows(file: &str, rows: &[Row]) {
    let lines: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "  {{\"name\": \"{}\", \"unit\": \"{}\", \"ours\": {:.4}, \"baseline\": null, \"ratio\": null}}",
                r.name, r.unit, r.ours
            )
        })
        .collect();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            // The workspace root is the parent of this package.
            let package = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            package.parent().unwrap_or(package).join("target")
        });
    let path = target.join("bench").join(file);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create target/bench");
    }
    std::fs::write(&path, format!("[\n{}\n]\n", lines.join(",\n"))).expect("write the rows");
    println!("wrote {}", path.display());
}
