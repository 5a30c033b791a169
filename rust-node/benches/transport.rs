//! Loopback request/response benches of the QUIC transport.
//!
//! The server runs on its own single-threaded tokio runtime on its own OS thread and the client
//! on another, like two node processes on one machine (2 cores here). Criterion measures the
//! per-request round trip (tiny frame) and the throughput of 64 concurrent callers sharing one
//! connection; a plain timed loop after it prints latency percentiles (criterion reports means
//! of batches, the budget is a p50 of single requests).
//!
//! Budgets (docs performance.md): p50 <= 60 us, >= 40 k req/s with 64 callers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use macula_dht_node::{Endpoint, Peer};
use tokio::runtime::Runtime;

mod support;
use support::{client_endpoint, current_thread, percentile, udp_round_trips, ServerThread};

const CALLERS: usize = 64;
const FRAME: &[u8] = b"find_value:0123456789abcdef";

/// An echo server on its own thread and runtime.
fn start_server() -> ServerThread {
    ServerThread::start(|| async {
        let server = client_endpoint();
        server
            .serve(|_peer: Peer, frame: Vec<u8>| async move { frame })
            .expect("serve");
        let addr = server.local_addr();
        (addr, async move { server.close().await })
    })
}

fn bench_transport(c: &mut Criterion, rt: &Runtime, client: &Endpoint, addr: SocketAddr) {
    let mut group = c.benchmark_group("transport");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    group.bench_function("round_trip_tiny_frame", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    client
                        .request(addr, None, FRAME.to_vec())
                        .await
                        .expect("request");
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("64_concurrent_callers", |b| {
        b.iter_custom(|iters| rt.block_on(concurrent(client, addr, iters as usize)))
    });
    group.finish();
}

/// Runs `total` requests split over 64 concurrent callers; returns the wall time.
async fn concurrent(client: &Endpoint, addr: SocketAddr, total: usize) -> Duration {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..CALLERS {
        let n = total / CALLERS + usize::from(caller < total % CALLERS);
        let client = client.clone();
        tasks.spawn(async move {
            for _ in 0..n {
                client
                    .request(addr, None, FRAME.to_vec())
                    .await
                    .expect("request");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("caller");
    }
    start.elapsed()
}

fn percentiles(rt: &Runtime, client: &Endpoint, addr: SocketAddr) {
    const SAMPLES: usize = 20_000;
    let floor = udp_round_trips(SAMPLES);
    println!(
        "floor: UDP round trip on loopback, {SAMPLES} sequential: p50 {:?}",
        percentile(&floor, 0.50)
    );
    let mut lat: Vec<Duration> = rt.block_on(async {
        let mut lat = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let start = Instant::now();
            client
                .request(addr, None, FRAME.to_vec())
                .await
                .expect("request");
            lat.push(start.elapsed());
        }
        lat
    });
    lat.sort_unstable();
    let pct = |p: f64| percentile(&lat, p);
    println!(
        "round trip, {SAMPLES} sequential requests ({} B frame): p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        FRAME.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        lat[lat.len() - 1]
    );
    let total = 200_000;
    let elapsed = rt.block_on(concurrent(client, addr, total));
    println!(
        "throughput, {CALLERS} concurrent callers, one connection: {:.0} req/s ({total} requests in {elapsed:?})",
        total as f64 / elapsed.as_secs_f64()
    );
}

fn main() {
    let server = start_server();
    let addr = server.addr;
    let rt = current_thread();
    let client = rt.block_on(async {
        let client = client_endpoint();
        // Warm up: dial and settle the connection.
        for _ in 0..1_000 {
            client
                .request(addr, None, FRAME.to_vec())
                .await
                .expect("warm-up request");
        }
        client
    });

    let mut criterion = Criterion::default().configure_from_args();
    bench_transport(&mut criterion, &rt, &client, addr);
    criterion.final_summary();
    percentiles(&rt, &client, addr);

    rt.block_on(client.close());
    server.stop();
}
