//! The metrics endpoint of a node (`rust-node run --metrics ADDR`): `GET /metrics` answers in the
//! OpenMetrics text format; any other path is 404.
//!
//! Nothing is kept for it beyond what the node keeps anyway: each scrape reads the node's
//! [`Status`] (its state and the engine's counters) and [`ActivitySnapshot`] (requests and
//! lookups, counted with atomics where they end) and encodes them with `prometheus-client`.
//! The server is `tiny_http` on a thread of its own, so a scrape never runs on the node's
//! runtime. It listens on a loopback address unless told otherwise ([`Exposure::Public`]).
//!
//! The series, all named `macula_dht_*`:
//!
//! | series | type | labels |
//! |---|---|---|
//! | `lookups_total` | counter | `kind` (find_node, find_value), `outcome` (ok, timed_out, no_answer) |
//! | `lookup_duration_seconds` | histogram | `kind` |
//! | `lookup_hops` | histogram | `kind` |
//! | `lookup_timeouts_total` | counter | |
//! | `requests_total` | counter | `direction` (inbound, outbound), `type`, `outcome` |
//! | `bad_requests_total` | counter | `reason` |
//! | `refusals_total` | counter | `reason` (version, forged, wrong_publisher, stale, replay, quota, rate) |
//! | `forged_in_replies_total` | counter | |
//! | `background_failures_total` | counter | `work` (store, remove, handoff) |
//! | `peers`, `suspect_peers` | gauge | |
//! | `connections` | gauge | `direction` |
//! | `joined` | gauge | |
//! | `keys`, `records`, `tombstones`, `store_bytes`, `adverts` | gauge | |
//! | `protocol_version` | gauge | |

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::node::{ActivitySnapshot, HistogramSnapshot, Node, Status};

/// The media type of what `/metrics` serves.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The path metrics are served at.
pub const PATH: &str = "/metrics";

/// Who may reach the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Only a loopback address may be bound: the metrics stay on this host.
    LoopbackOnly,
    /// Any address may be bound, reachable from other hosts.
    Public,
}

impl Exposure {
    /// Whether `addr` may be bound: any address when public, else a loopback one.
    pub fn check(self, addr: SocketAddr) -> Result<(), MetricsError> {
        if self == Exposure::LoopbackOnly && !addr.ip().is_loopback() {
            return Err(MetricsError::NotLoopback(addr));
        }
        Ok(())
    }
}

/// Why the endpoint could not be started.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A non-loopback address with [`Exposure::LoopbackOnly`].
    #[error(
        "metrics address {0} is not a loopback address (add --metrics-public to serve metrics to \
         other hosts)"
    )]
    NotLoopback(SocketAddr),
    /// The address could not be bound, or the server thread not started.
    #[error("cannot serve metrics on {addr}: {reason}")]
    Start {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// A running metrics endpoint. Dropping it stops the server and joins its thread.
pub struct MetricsServer {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `node`'s metrics at `http://addr/metrics` (port 0 picks one) from a thread of its
    /// own.
    pub fn start(
        addr: SocketAddr,
        exposure: Exposure,
        node: Arc<Node>,
    ) -> Result<MetricsServer, MetricsError> {
        exposure.check(addr)?;
        let start_error = |reason: String| MetricsError::Start { addr, reason };
        let server = tiny_http::Server::http(addr).map_err(|e| start_error(e.to_string()))?;
        let bound = server.server_addr().to_ip().unwrap_or(addr);
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&serving, &node))
            .map_err(|e| start_error(e.to_string()))?;
        tracing::info!(addr = %bound, "serving metrics");
        Ok(MetricsServer {
            addr: bound,
            server,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// `node`'s metrics in the OpenMetrics text format, `# EOF` included.
pub fn encode(node: &Node) -> Result<String, fmt::Error> {
    let mut registry = Registry::with_prefix("macula_dht");
    registry.register_collector(Box::new(Scrape {
        status: node.status(),
        activity: node.activity(),
    }));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// Answers requests until the server is unblocked.
fn serve(server: &tiny_http::Server, node: &Node) {
    for request in server.incoming_requests() {
        let response = respond(request.method(), request.url(), node);
        // A client that went away is none of the node's business.
        let _ = request.respond(response);
    }
}

fn respond(
    method: &tiny_http::Method,
    url: &str,
    node: &Node,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    use tiny_http::{Method, Response};
    let path = url.split('?').next().unwrap_or(url);
    let text = |status: u16, body: &str| {
        let response = Response::from_string(body).with_status_code(status);
        with_header(response, "Content-Type", "text/plain; charset=utf-8")
    };
    if path != PATH {
        return text(404, "not found\n");
    }
    if !matches!(method, Method::Get | Method::Head) {
        return with_header(text(405, "only GET and HEAD\n"), "Allow", "GET, HEAD");
    }
    match encode(node) {
        Ok(body) => with_header(Response::from_string(body), "Content-Type", CONTENT_TYPE),
        Err(_) => text(500, "metrics could not be encoded\n"),
    }
}

/// `response` with a header of fixed text. `tiny_http` refuses only non-ASCII text, which these
/// constants do not hold.
fn with_header<R: std::io::Read>(
    response: tiny_http::Response<R>,
    name: &'static str,
    value: &'static str,
) -> tiny_http::Response<R> {
    match tiny_http::Header::from_bytes(name, value) {
        Ok(header) => response.with_header(header),
        Err(()) => response,
    }
}

/// One scrape's figures, encoded by `prometheus-client` as a collector.
#[derive(Debug)]
struct Scrape {
    status: Status,
    activity: ActivitySnapshot,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        self.encode_lookups(e)?;
        self.encode_requests(e)?;
        self.encode_refusals(e)?;
        self.encode_state(e)
    }
}

impl Scrape {
    fn encode_lookups(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let lookups = &self.activity.lookups;
        counters(
            e,
            "lookups",
            "Lookups run, by kind and outcome (no_answer: no peer answered; timed_out: it hit \
             the lookup timeout with answers).",
            lookups.iter().flat_map(|l| {
                l.outcomes
                    .iter()
                    .map(|&(outcome, n)| (vec![("kind", l.kind.name()), ("outcome", outcome)], n))
            }),
        )?;
        let mut duration = e.encode_descriptor(
            "lookup_duration",
            "How long lookups took, from start to end.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for l in lookups {
            histogram(
                &mut duration,
                &[("kind", l.kind.name())],
                &l.duration_us,
                1e6,
            )?;
        }
        let mut hops = e.encode_descriptor(
            "lookup_hops",
            "Hops of lookups: the longest chain of answers that led to a queried peer.",
            None,
            MetricType::Histogram,
        )?;
        for l in lookups {
            histogram(&mut hops, &[("kind", l.kind.name())], &l.hops, 1.0)?;
        }
        counter(
            e,
            "lookup_timeouts",
            "Lookups that hit the lookup timeout (with or without answers).",
            self.status.lookup_timeouts,
        )
    }

    fn encode_requests(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        counters(
            e,
            "requests",
            "Requests that ended: answered here (inbound) or sent to peers (outbound), by type \
             and outcome (ok, the error reason of the reply, or how sending failed).",
            self.activity.requests.iter().map(|r| {
                let labels = vec![
                    ("direction", r.direction.name()),
                    ("type", r.request),
                    ("outcome", r.outcome),
                ];
                (labels, r.count)
            }),
        )?;
        counters(
            e,
            "bad_requests",
            "Requests from peers that did not decode, by the reason answered.",
            self.activity
                .bad_requests
                .iter()
                .map(|&(reason, n)| (vec![("reason", reason)], n)),
        )
    }

    fn encode_refusals(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let s = &self.status;
        let refusals = [
            ("version", s.refused_version),
            ("forged", s.refused_forged),
            ("wrong_publisher", s.refused_wrong_publisher),
            ("stale", s.refused_stale),
            ("replay", s.refused_replay),
            ("quota", s.refused_quota),
            ("rate", s.refused_rate),
        ];
        counters(
            e,
            "refusals",
            "STOREs and REMOVEs refused, and exchanges with peers of another protocol version, \
             by reason.",
            refusals
                .into_iter()
                .map(|(reason, n)| (vec![("reason", reason)], n)),
        )?;
        counter(
            e,
            "forged_in_replies",
            "Providers dropped from find_value replies: their signature did not verify.",
            s.forged_in_replies,
        )?;
        let failures = [
            ("store", s.store_failures),
            ("remove", s.remove_failures),
            ("handoff", s.handoff_failures),
        ];
        counters(
            e,
            "background_failures",
            "Work the node does on its own that failed: STOREs and REMOVEs not acknowledged, \
             hand-offs to newcomers stopped or skipped.",
            failures
                .into_iter()
                .map(|(work, n)| (vec![("work", work)], n)),
        )
    }

    fn encode_state(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let s = &self.status;
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        gauge(
            e,
            "peers",
            "Nodes in the routing table.",
            None,
            count(s.peers),
        )?;
        gauge(
            e,
            "suspect_peers",
            "Peers that failed of late: not asked and not offered to others for a while.",
            None,
            count(s.suspects),
        )?;
        let mut connections = e.encode_descriptor(
            "connections",
            "QUIC connections open: opened by peers (inbound) or by this node (outbound).",
            None,
            MetricType::Gauge,
        )?;
        for (direction, n) in [
            ("inbound", s.inbound_connections),
            ("outbound", s.outbound_connections),
        ] {
            connections
                .encode_family(&[("direction", direction)])?
                .encode_gauge(&count(n))?;
        }
        gauge(
            e,
            "joined",
            "1 when the node knows at least one peer.",
            None,
            u64::from(s.joined),
        )?;
        gauge(e, "keys", "Keys in the store.", None, count(s.keys))?;
        gauge(
            e,
            "records",
            "Provider records in the store.",
            None,
            count(s.records),
        )?;
        gauge(
            e,
            "tombstones",
            "Tombstones of removed records kept.",
            None,
            count(s.tombstones),
        )?;
        gauge(
            e,
            "store",
            "Key, record and seal bytes in the store.",
            Some(&Unit::Bytes),
            count(s.store_bytes),
        )?;
        gauge(
            e,
            "adverts",
            "Services this node advertises and republishes.",
            None,
            count(s.adverts.len()),
        )?;
        gauge(
            e,
            "protocol_version",
            "The protocol version this node speaks.",
            None,
            u64::from(s.protocol),
        )
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn counters<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (Vec<(&'a str, &'a str)>, u64)>,
) -> fmt::Result {
    let mut metric = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        metric
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> fmt::Result {
    e.encode_descriptor(name, help, unit, MetricType::Gauge)?
        .encode_gauge(&value)
}

/// One labelled histogram, its bounds and sum divided by `per_unit` (1e6: microseconds to
/// seconds; a division, so that 25 000 us is exactly the nearest double to 0.025).
fn histogram(
    metric: &mut prometheus_client::encoding::MetricEncoder,
    labels: &impl EncodeLabelSet,
    snapshot: &HistogramSnapshot,
    per_unit: f64,
) -> fmt::Result {
    // Read once, so that the count and the +Inf bucket agree as the format requires.
    let buckets: Vec<(f64, u64)> = snapshot
        .buckets
        .iter()
        .map(|&(bound, n)| (bound.map_or(f64::INFINITY, |b| b as f64 / per_unit), n))
        .collect();
    let count = buckets.iter().map(|&(_, n)| n).sum();
    metric
        .encode_family(labels)?
        .encode_histogram::<NoLabelSet>(snapshot.sum as f64 / per_unit, count, &buckets, None)
}
