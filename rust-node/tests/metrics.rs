//! The metrics endpoint: a node in a small network on loopback serves `/metrics`; after lookups
//! and requests, a scrape over HTTP reads as strict OpenMetrics text (`openmetrics` below) and
//! counts them. Also `rust-node run --metrics`: the address it prints serves the same, and a
//! non-loopback address is refused unless `--metrics-public` is given.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use macula_dht::wire::Request;
use macula_dht_node::metrics::{Exposure, MetricsError, MetricsServer, CONTENT_TYPE};
use macula_dht_node::{service_key, Endpoint, Identity, Node, Testnet, TransportConfig};
use openmetrics::{Exposition, Kind};
use support::fast_config;
use support::procs::{Procs, BIN};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent()
}

/// The status, content type and body of a GET of `url`.
fn get(url: &str) -> (u16, String, String) {
    let mut response = agent().get(url).call().unwrap();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.body_mut().read_to_string().unwrap();
    (response.status().as_u16(), content_type, body)
}

/// A scrape of `/metrics` at `addr`, checked to be OpenMetrics text and parsed.
fn scrape(addr: SocketAddr) -> Exposition {
    let (status, content_type, body) = get(&format!("http://{addr}/metrics"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, CONTENT_TYPE);
    openmetrics::parse(&body).unwrap_or_else(|e| panic!("not OpenMetrics: {e}\n{body}"))
}

/// The value of `family`'s sample with exactly `labels` (a counter's `_total`, a gauge, a
/// histogram's `_count`), if there is one.
fn value(exposition: &Exposition, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let family = exposition.get(family)?;
    let suffix = match family.kind {
        Kind::Counter => "_total",
        Kind::Gauge => "",
        Kind::Histogram => "_count",
    };
    family.value(suffix, labels)
}

fn family_type(exposition: &Exposition, family: &str) -> Kind {
    exposition
        .get(family)
        .unwrap_or_else(|| panic!("no family {family}"))
        .kind
}

/// A client that only sends raw frames.
fn raw_client() -> Endpoint {
    Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &Identity::generate().unwrap(),
        TransportConfig::default(),
    )
    .unwrap()
}

/// A node on a free loopback port, in no network yet.
async fn lone_node() -> Arc<Node> {
    let node = Node::start(
        &Identity::generate().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        fast_config(),
    )
    .await
    .unwrap();
    Arc::new(node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_the_lookups_and_requests_of_a_node() {
    let net = Testnet::start(4, fast_config()).await.unwrap();
    let node = lone_node().await;
    node.bootstrap(&[net.bootstrap_addr()]).await.unwrap();
    let server = MetricsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Exposure::LoopbackOnly,
        node.clone(),
    )
    .unwrap();
    let addr = server.local_addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0);

    // Work: a publish (STOREs out), a lookup of it (FIND_VALUEs out), and requests in.
    let published = node
        .advertise("calc", "https://calc:1", BTreeMap::new(), 300)
        .await
        .unwrap();
    assert!(published.acked > 0, "{published:?}");
    let report = node
        .find_providers(&service_key("calc"), None)
        .await
        .unwrap();
    assert_eq!(report.providers.len(), 1);
    let client = raw_client();
    for _ in 0..3 {
        client
            .request(node.local_addr(), None, Request::Ping.encode())
            .await
            .unwrap();
    }
    // The ETF version byte, then no term: a request that does not decode.
    client
        .request(node.local_addr(), None, vec![131, 1, 2, 3])
        .await
        .unwrap();

    let metrics = tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .unwrap();
    let at_least_one = |family: &str, labels: &[(&str, &str)]| {
        let v = value(&metrics, family, labels);
        assert!(v.is_some_and(|v| v >= 1.0), "{family} {labels:?}: {v:?}");
    };
    // Lookups: the bootstrap's FIND_NODE and the FIND_VALUE, with their durations and hops.
    at_least_one(
        "macula_dht_lookups",
        &[("kind", "find_node"), ("outcome", "ok")],
    );
    at_least_one(
        "macula_dht_lookups",
        &[("kind", "find_value"), ("outcome", "ok")],
    );
    at_least_one(
        "macula_dht_lookup_duration_seconds",
        &[("kind", "find_value")],
    );
    at_least_one("macula_dht_lookup_hops", &[("kind", "find_value")]);
    let status = node.status();
    let lookups: f64 = ["find_node", "find_value"]
        .iter()
        .flat_map(|kind| {
            ["ok", "timed_out", "no_answer"]
                .iter()
                .map(|outcome| {
                    value(
                        &metrics,
                        "macula_dht_lookups",
                        &[("kind", kind), ("outcome", outcome)],
                    )
                    .unwrap()
                })
                .collect::<Vec<_>>()
        })
        .sum();
    assert!(
        lookups >= 2.0 && lookups <= status.lookups as f64,
        "{lookups} vs {status:?}"
    );
    // Requests both ways, by type and outcome.
    at_least_one(
        "macula_dht_requests",
        &[
            ("direction", "outbound"),
            ("type", "store"),
            ("outcome", "ok"),
        ],
    );
    at_least_one(
        "macula_dht_requests",
        &[
            ("direction", "outbound"),
            ("type", "find_value"),
            ("outcome", "ok"),
        ],
    );
    let pings_in = value(
        &metrics,
        "macula_dht_requests",
        &[
            ("direction", "inbound"),
            ("type", "ping"),
            ("outcome", "ok"),
        ],
    );
    assert!(pings_in.is_some_and(|n| n >= 3.0), "{pings_in:?}");
    assert_eq!(
        value(
            &metrics,
            "macula_dht_bad_requests",
            &[("reason", "malformed")]
        ),
        Some(1.0)
    );
    // State, computed at the scrape.
    at_least_one("macula_dht_peers", &[]);
    at_least_one("macula_dht_records", &[]);
    at_least_one("macula_dht_store_bytes", &[]);
    assert_eq!(value(&metrics, "macula_dht_joined", &[]), Some(1.0));
    assert_eq!(value(&metrics, "macula_dht_adverts", &[]), Some(1.0));
    assert_eq!(
        value(&metrics, "macula_dht_refusals", &[("reason", "forged")]),
        Some(0.0)
    );
    assert_eq!(family_type(&metrics, "macula_dht_lookups"), Kind::Counter);
    assert_eq!(
        family_type(&metrics, "macula_dht_lookup_duration_seconds"),
        Kind::Histogram
    );
    assert_eq!(family_type(&metrics, "macula_dht_peers"), Kind::Gauge);

    // Only /metrics is served, and only to GET and HEAD.
    let (status, others) = tokio::task::spawn_blocking(move || {
        let (status, _, _) = get(&format!("http://{addr}/other"));
        let posted = agent()
            .post(format!("http://{addr}/metrics"))
            .send_empty()
            .unwrap()
            .status()
            .as_u16();
        (status, posted)
    })
    .await
    .unwrap();
    assert_eq!((status, others), (404, 405));

    drop(server);
    client.close().await;
    node.shutdown().await;
    net.shutdown().await;
}

#[tokio::test]
async fn a_non_loopback_address_needs_public_exposure() {
    let node = lone_node().await;
    let public: SocketAddr = "0.0.0.0:9100".parse().unwrap();
    match MetricsServer::start(public, Exposure::LoopbackOnly, node.clone()) {
        Err(MetricsError::NotLoopback(addr)) => assert_eq!(addr, public),
        other => panic!("expected NotLoopback, got {other:?}"),
    }
    // Checked only, not bound: tests listen on loopback.
    assert!(Exposure::Public.check(public).is_ok());
    assert!(Exposure::LoopbackOnly
        .check("[::1]:9100".parse().unwrap())
        .is_ok());
    node.shutdown().await;
}

/// A child process, killed (by its pid) and reaped when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn rust_node_run_serves_metrics_on_the_address_it_prints() {
    let mut child = Running(
        Command::new(BIN)
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--metrics",
                "127.0.0.1:0",
                "--log",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next_line = || {
        lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_default()
    };
    let ready = next_line();
    assert!(ready.starts_with("rust-node listening on "), "{ready:?}");
    let announced = next_line();
    let url = announced
        .strip_prefix("rust-node metrics on ")
        .unwrap_or_else(|| panic!("{announced:?}"));
    let addr: SocketAddr = url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{url:?}"));
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    let metrics = scrape(addr);
    assert_eq!(value(&metrics, "macula_dht_peers", &[]), Some(0.0));
    assert_eq!(value(&metrics, "macula_dht_joined", &[]), Some(0.0));
    assert_eq!(
        value(&metrics, "macula_dht_protocol_version", &[]),
        Some(f64::from(macula_dht::wire::PROTOCOL_VERSION))
    );
    drop(child);
}

#[test]
fn rust_node_run_refuses_a_public_metrics_address_in_one_line() {
    let mut procs = Procs::new("metrics_public");
    let ran = procs.run(
        &["run", "--listen", "127.0.0.1:0", "--metrics", "0.0.0.0:0"],
        Duration::from_secs(30),
    );
    assert_eq!(ran.status.code(), Some(1), "{ran:?}");
    assert_eq!(ran.stderr.lines().count(), 1, "{ran:?}");
    assert!(ran.stderr.contains("--metrics-public"), "{ran:?}");
    assert!(ran.stdout.is_empty(), "no node started: {ran:?}");
}

/// A strict reader of the OpenMetrics text format, for the types this endpoint serves (counter,
/// gauge, histogram): families contiguous, each with one HELP and one TYPE (and an optional UNIT
/// its name ends with) before its samples; sample names the family's name plus a suffix its type
/// allows, label sets well formed and unique, values numbers; histograms' buckets ascending and
/// cumulative up to `+Inf`, which equals `_count`; counters not negative; no blank line; `# EOF`
/// last.
mod openmetrics {
    use std::collections::{BTreeMap, HashMap};

    pub type Exposition = HashMap<String, Family>;
    type Labels = BTreeMap<String, String>;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        Counter,
        Gauge,
        Histogram,
    }

    #[derive(Debug)]
    pub struct Family {
        pub kind: Kind,
        help: bool,
        /// `(suffix, labels, value)` in order.
        samples: Vec<(String, Labels, f64)>,
    }

    impl Family {
        /// The value of the sample `suffix` with exactly `labels`.
        pub fn value(&self, suffix: &str, labels: &[(&str, &str)]) -> Option<f64> {
            let wanted: Labels = labels
                .iter()
                .map(|&(k, v)| (k.to_string(), v.to_string()))
                .collect();
            self.samples
                .iter()
                .find(|(s, l, _)| s == suffix && *l == wanted)
                .map(|&(_, _, v)| v)
        }
    }

    pub fn parse(text: &str) -> Result<Exposition, String> {
        let body = text.strip_suffix("# EOF\n").ok_or("not ended by `# EOF`")?;
        let mut families: Exposition = HashMap::new();
        let mut current: Option<String> = None;
        for (n, line) in body.lines().enumerate() {
            let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
            if let Some(meta) = line.strip_prefix("# ") {
                let (what, rest) = meta
                    .split_once(' ')
                    .ok_or_else(|| at("bad comment".into()))?;
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                if current.as_deref() != Some(name) {
                    if families.contains_key(name) || what != "HELP" {
                        return Err(at("family not contiguous, or not opened by HELP".into()));
                    }
                    check_name(name).map_err(at)?;
                    current = Some(name.to_string());
                }
                let family = families.entry(name.to_string()).or_insert(Family {
                    kind: Kind::Gauge,
                    help: false,
                    samples: Vec::new(),
                });
                match what {
                    "HELP" if !family.help => family.help = true,
                    "TYPE" if family.samples.is_empty() => {
                        family.kind = match text {
                            "counter" => Kind::Counter,
                            "gauge" => Kind::Gauge,
                            "histogram" => Kind::Histogram,
                            other => return Err(at(format!("unexpected type {other}"))),
                        }
                    }
                    "UNIT" if name.ends_with(&format!("_{text}")) => {}
                    _ => return Err(at("unexpected metadata".into())),
                }
                continue;
            }
            let name = current
                .as_deref()
                .ok_or_else(|| at("sample outside a family".into()))?;
            let family = families
                .get_mut(name)
                .ok_or_else(|| at("no family".into()))?;
            let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value".into()))?;
            let (sample_name, labels) = match series.split_once('{') {
                Some((sample_name, labels)) => {
                    let labels = labels
                        .strip_suffix('}')
                        .ok_or_else(|| at("unclosed labels".into()))?;
                    (sample_name, parse_labels(labels).map_err(at)?)
                }
                None => (series, Labels::new()),
            };
            let suffix = sample_name
                .strip_prefix(name)
                .ok_or_else(|| at(format!("sample not of family {name}")))?;
            let allowed: &[&str] = match family.kind {
                Kind::Counter => &["_total", "_created"],
                Kind::Gauge => &[""],
                Kind::Histogram => &["_bucket", "_sum", "_count", "_created"],
            };
            if !allowed.contains(&suffix) {
                return Err(at(format!(
                    "suffix {suffix:?} not allowed for {:?}",
                    family.kind
                )));
            }
            let value = parse_number(value).ok_or_else(|| at("value not a number".into()))?;
            if family
                .samples
                .iter()
                .any(|(s, l, _)| s == suffix && *l == labels)
            {
                return Err(at("label set repeated".into()));
            }
            if family.kind == Kind::Counter && value < 0.0 {
                return Err(at("counter below zero".into()));
            }
            family.samples.push((suffix.to_string(), labels, value));
        }
        for (name, family) in &families {
            if !family.help {
                return Err(format!("{name}: no HELP"));
            }
            if family.kind == Kind::Histogram {
                check_histogram(family).map_err(|e| format!("{name}: {e}"))?;
            }
        }
        Ok(families)
    }

    /// For each label set: buckets in ascending `le`, cumulative, ending at `+Inf` = `_count`.
    fn check_histogram(family: &Family) -> Result<(), String> {
        let mut counts = family.samples.iter().filter(|(s, _, _)| s == "_count");
        counts.try_for_each(|(_, labels, count)| {
            let buckets: Vec<(f64, f64)> = family
                .samples
                .iter()
                .filter(|(s, l, _)| {
                    s == "_bucket" && l.iter().filter(|(k, _)| *k != "le").eq(labels.iter())
                })
                .map(|(_, l, v)| {
                    (
                        l.get("le")
                            .and_then(|le| parse_number(le))
                            .unwrap_or(f64::NAN),
                        *v,
                    )
                })
                .collect();
            let ascending = buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
            match buckets.last() {
                Some(&(le, last)) if ascending && le == f64::INFINITY && last == *count => Ok(()),
                _ => Err(format!(
                    "bad buckets for {labels:?}: {buckets:?}, count {count}"
                )),
            }
        })?;
        if family
            .samples
            .iter()
            .filter(|(s, _, _)| s == "_sum")
            .count()
            != family
                .samples
                .iter()
                .filter(|(s, _, _)| s == "_count")
                .count()
        {
            return Err("a _sum per _count".into());
        }
        Ok(())
    }

    /// `name="value",...`, values with `\\`, `\"` and `\n` escapes.
    fn parse_labels(text: &str) -> Result<Labels, String> {
        let mut labels = Labels::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (name, after) = rest.split_once("=\"").ok_or("label without =\"")?;
            check_name(name)?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('"' | '\\'))) => value.push(c),
                        _ => return Err("bad escape".into()),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            };
            if labels.insert(name.to_string(), value).is_some() {
                return Err(format!("label {name} twice"));
            }
            rest = &after[end + 1..];
            if !rest.is_empty() {
                rest = rest.strip_prefix(',').ok_or("labels not separated by ,")?;
            }
        }
        Ok(labels)
    }

    fn check_name(name: &str) -> Result<(), String> {
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            Ok(())
        } else {
            Err(format!("bad name {name:?}"))
        }
    }

    fn parse_number(text: &str) -> Option<f64> {
        match text {
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            "NaN" => Some(f64::NAN),
            _ if text.starts_with(|c: char| c.is_ascii_digit() || c == '-') => text.parse().ok(),
            _ => None,
        }
    }

    #[test]
    fn the_reader_refuses_what_the_format_does_not_allow() {
        let good = "# HELP a_seconds A.\n# TYPE a_seconds histogram\n# UNIT a_seconds seconds\n\
                    a_seconds_sum{k=\"x\"} 1.5\na_seconds_count{k=\"x\"} 2\n\
                    a_seconds_bucket{le=\"1.0\",k=\"x\"} 1\na_seconds_bucket{le=\"+Inf\",k=\"x\"} 2\n\
                    # HELP b B.\n# TYPE b counter\nb_total{q=\"a\\\"b\"} 3\n# EOF\n";
        let parsed = parse(good).unwrap();
        assert_eq!(
            parsed["a_seconds"].value("_count", &[("k", "x")]),
            Some(2.0)
        );
        assert_eq!(parsed["b"].value("_total", &[("q", "a\"b")]), Some(3.0));
        for bad in [
            good.trim_end_matches("# EOF\n"),
            &good.replace("# HELP b B.\n", ""),
            &good.replace("le=\"+Inf\",k=\"x\"} 2", "le=\"+Inf\",k=\"x\"} 3"),
            &good.replace(
                "a_seconds_bucket{le=\"1.0\",k=\"x\"} 1",
                "a_seconds_bucket{le=\"1.0\",k=\"x\"} 5",
            ),
            &good.replace("b_total", "b"),
            &good.replace("b_total{q=\"a\\\"b\"} 3", "b_total{q=\"a\"} x"),
            &good.replace("# EOF", "\n# EOF"),
            &good.replace("UNIT a_seconds seconds", "UNIT a_seconds bytes"),
        ] {
            assert!(parse(bad).is_err(), "accepted: {bad}");
        }
    }
}
