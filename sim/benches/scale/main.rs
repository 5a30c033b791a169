//! `make bench-scale`: the DHT at 1 k, 10 k and 100 k nodes in the simulator (same engine code
//! as the nodes, virtual time, wide-area links, churn). Writes `target/bench/scale.json` (rows
//! `{"name", "unit", "ours", "baseline", "ratio"}`, no baseline) and the plots of docs/scale.md
//! as SVG files in `target/bench/`.
//!
//! Arguments (after `--`) select scenarios by a part of their name: `cargo bench -p
//! macula_dht_sim --bench scale -- 10k` runs the 10 k ones only (`1k`, `10k_static`,
//! `10k_churn`, `100k`). Rows of scenarios not run are kept from the earlier scale.json, and the
//! plots are drawn from all rows: an argument that selects nothing (`-- plots`) only redraws
//! them (the latency CDF needs the samples of a `10k_static` run).

mod memory;
mod plots;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use macula_dht_sim::{sorted_quantile, Report, Scenario, Sessions};

#[global_allocator]
static ALLOCATOR: memory::Counting = memory::Counting;

const SEED: u64 = 0x5ca1_e000;

/// One row of scale.json.
struct Row {
    name: String,
    unit: String,
    ours: f64,
}

/// A scenario's report and what it cost on this machine.
struct Measured {
    report: Report,
    wall: Duration,
    /// Heap bytes the engine nodes hold at the end, per node.
    bytes_per_node: f64,
}

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let selected =
        |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out).expect("target/bench is writable");

    let mut rows = Vec::new();
    if selected("1k_static_and_churn") {
        let m = measure(&scenario("sim_1k_static", 1_000));
        rows.push(row(
            "sim_1k_static_success_pct",
            "%",
            m.report.success_all_pct(),
        ));
        hop_rows(&mut rows, "sim_1k", &m.report);
        for median_min in CHURN_SWEEP_MINUTES {
            let name = format!("sim_1k_churn_{median_min}min");
            let m = measure(&churn_scenario(
                &name,
                1_000,
                median_min,
                Duration::from_secs(1_200),
            ));
            rows.push(row(
                &format!("{name}_success_pct"),
                "%",
                m.report.success_all_pct(),
            ));
        }
    }
    if selected("10k_static") {
        let m = measure(&scenario("sim_10k_static", 10_000));
        let r = &m.report;
        rows.push(row("sim_10k_static_success_pct", "%", r.success_all_pct()));
        hop_rows(&mut rows, "sim_10k", r);
        rows.push(row(
            "sim_10k_replica_recall_pct",
            "%",
            r.replica_recall_pct(),
        ));
        rows.push(row(
            "sim_10k_messages_per_lookup",
            "messages",
            r.messages_per_lookup(),
        ));
        let first = r.first_provider_rtts();
        let full = r.full_lookup_rtts();
        rows.push(row(
            "sim_10k_lookup_p50_rtts",
            "median RTTs",
            sorted_quantile(&first, 0.5),
        ));
        rows.push(row(
            "sim_10k_full_lookup_p50_rtts",
            "median RTTs",
            sorted_quantile(&full, 0.5),
        ));
        rows.push(row("sim_10k_static_wall_s", "s", m.wall.as_secs_f64()));
        rows.push(row("sim_10k_bytes_per_node", "bytes", m.bytes_per_node));
        plots::latency_cdf(&out.join("scale_latency_10k.svg"), &first, &full);
    }
    if selected("10k_churn") {
        let m = measure(&churn_scenario("sim_10k_churn", 10_000, 30, churn_period()));
        let r = &m.report;
        rows.push(row("sim_10k_churn_success_pct", "%", r.success_all_pct()));
        rows.push(row(
            "sim_10k_churn_first_provider_pct",
            "%",
            r.success_one_pct(),
        ));
        rows.push(row(
            "sim_10k_churn_p99_hops",
            "hops",
            r.path_hops_quantile(0.99).into(),
        ));
        rows.push(row(
            "sim_10k_churn_replica_recall_pct",
            "%",
            r.replica_recall_pct(),
        ));
        rows.push(row("sim_10k_churn_wall_s", "s", m.wall.as_secs_f64()));
    }
    if selected("100k") {
        let m = measure(&scenario("sim_100k_static", 100_000));
        let r = &m.report;
        rows.push(row("sim_100k_static_success_pct", "%", r.success_all_pct()));
        hop_rows(&mut rows, "sim_100k", r);
        rows.push(row(
            "sim_100k_replica_recall_pct",
            "%",
            r.replica_recall_pct(),
        ));
        rows.push(row("sim_100k_wall_s", "s", m.wall.as_secs_f64()));
        rows.push(row("sim_100k_bytes_per_node", "bytes", m.bytes_per_node));
    }

    // The plots come from every row so far, this run's and earlier runs' of other scenarios.
    let all = write_json(&out.join("scale.json"), rows);
    let hops: Vec<(usize, f64, f64)> = [
        (1_000, "sim_1k"),
        (10_000, "sim_10k"),
        (100_000, "sim_100k"),
    ]
    .into_iter()
    .filter_map(|(nodes, prefix)| {
        let p50 = all.get(&format!("{prefix}_p50_hops"))?;
        Some((nodes, *p50, *all.get(&format!("{prefix}_p99_hops"))?))
    })
    .collect();
    plots::hops_by_size(&out.join("scale_hops.svg"), &hops);
    let mut churn = vec![
        (1_000, "sim_1k_static_success_pct".to_string(), 0.0),
        (10_000, "sim_10k_static_success_pct".to_string(), 0.0),
        (
            10_000,
            "sim_10k_churn_success_pct".to_string(),
            churn_rate(30),
        ),
    ];
    for median_min in CHURN_SWEEP_MINUTES {
        let name = format!("sim_1k_churn_{median_min}min_success_pct");
        churn.push((1_000, name, churn_rate(median_min)));
    }
    let churn: Vec<(usize, f64, f64)> = churn
        .into_iter()
        .filter_map(|(nodes, name, rate)| Some((nodes, rate, *all.get(&name)?)))
        .collect();
    plots::success_by_churn(&out.join("scale_churn.svg"), &churn);
}

/// Median session lengths, in minutes, of the 1 k churn sweep (the success-against-churn plot).
const CHURN_SWEEP_MINUTES: [u64; 3] = [60, 30, 15];

/// The p50 and p99 hops rows of a scenario: path hops (to the first provider, or to the closest
/// node), and the longest chain of answers a lookup followed.
fn hop_rows(rows: &mut Vec<Row>, prefix: &str, report: &Report) {
    for (q, at) in [(0.5, "p50"), (0.99, "p99")] {
        rows.push(row(
            &format!("{prefix}_{at}_hops"),
            "hops",
            report.path_hops_quantile(q).into(),
        ));
        rows.push(row(
            &format!("{prefix}_{at}_longest_chain_hops"),
            "hops",
            report.hops_quantile(q).into(),
        ));
    }
}

/// `scenario` with nodes leaving after exponentially distributed sessions of `median_min`
/// minutes median, over `period`, with lookups spread over it.
fn churn_scenario(name: &str, nodes: usize, median_min: u64, period: Duration) -> Scenario {
    let minutes = period.as_secs() / 60;
    Scenario {
        sessions: Some(Sessions::exponential(Duration::from_secs(60 * median_min))),
        period,
        // 30 provider and 6 node lookups a minute, at least 1 000 and 200.
        provider_lookups: (minutes as usize * 30).max(1_000),
        node_lookups: (minutes as usize * 6).max(200),
        ..scenario(name, nodes)
    }
}

/// The scenario of `nodes` nodes, run on every core (or `SCALE_THREADS` threads): the report is
/// the same with any number.
fn scenario(name: &str, nodes: usize) -> Scenario {
    let threads = std::env::var("SCALE_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(Into::into))
        .unwrap_or(1);
    Scenario {
        threads,
        ..Scenario::new(name, SEED, nodes)
    }
}

/// The 10 k churn scenario's measured period: an hour, or `SCALE_CHURN_MINUTES` (a shorter run
/// while the full one takes too long).
fn churn_period() -> Duration {
    let minutes = std::env::var("SCALE_CHURN_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(60 * minutes)
}

/// Departures per node and hour of sessions with median `median_min` minutes.
fn churn_rate(median_min: u64) -> f64 {
    Sessions::exponential(Duration::from_secs(60 * median_min)).departures_per_node_hour()
}

/// Runs `scenario`, timing it and measuring what its nodes hold at the end.
fn measure(scenario: &Scenario) -> Measured {
    let started = Instant::now();
    let (report, net) = scenario.run_keeping_network();
    let wall = started.elapsed();
    let nodes = net.into_nodes(); // the rest of the network is freed here
    let with_nodes = memory::in_use();
    let count = nodes.len();
    drop(nodes);
    let bytes_per_node = (with_nodes - memory::in_use()) as f64 / count as f64;
    eprintln!(
        "{}: {:.1} s wall, {:.0} B/node, {}, full p50 {:.2} RTTs, {:?}",
        report.name,
        wall.as_secs_f64(),
        bytes_per_node,
        report.summary(),
        sorted_quantile(&report.full_lookup_rtts(), 0.5),
        report.net,
    );
    let failed: Vec<_> = report
        .provider_lookups
        .iter()
        .filter(|s| !s.found_all)
        .collect();
    let mut missed_ages: Vec<u64> = failed
        .iter()
        .filter_map(|s| s.youngest_missed.map(|d| d.as_secs()))
        .collect();
    missed_ages.sort_unstable();
    eprintln!(
        "{}: {} lookups missed a live provider, {} of them timed out; ages (s) of the missed \
         providers' publishes: {missed_ages:?}",
        report.name,
        failed.len(),
        failed.iter().filter(|s| s.timed_out).count(),
    );
    Measured {
        report,
        wall,
        bytes_per_node,
    }
}

fn row(name: &str, unit: &str, ours: f64) -> Row {
    Row {
        name: name.to_string(),
        unit: unit.to_string(),
        ours,
    }
}

/// Writes `rows` to `path`, keeping the rows of an earlier run that this one did not measure
/// (a run of some scenarios updates theirs only), and returns every row's figure by name.
fn write_json(path: &Path, mut rows: Vec<Row>) -> BTreeMap<String, f64> {
    let earlier = std::fs::read_to_string(path).unwrap_or_default();
    for old in earlier.lines().filter_map(parse_row) {
        if !rows.iter().any(|r| r.name == old.name) {
            rows.push(old);
        }
    }
    // 1 k, then 10 k, then 100 k; by name within each.
    rows.sort_by_key(|r| {
        (
            r.name.contains("_100k"),
            r.name.contains("_10k"),
            r.name.clone(),
        )
    });
    let lines: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "  {{\"name\": \"{}\", \"unit\": \"{}\", \"ours\": {:.4}, \"baseline\": null, \"ratio\": null}}",
                r.name, r.unit, r.ours
            )
        })
        .collect();
    std::fs::write(path, format!("[\n{}\n]\n", lines.join(",\n"))).expect("scale.json is writable");
    eprintln!("wrote {}", path.display());
    rows.into_iter().map(|r| (r.name, r.ours)).collect()
}

/// A row as [`write_json`] writes it, one a line.
fn parse_row(line: &str) -> Option<Row> {
    let field = |key: &str| {
        let start = line.find(&format!("\"{key}\": "))? + key.len() + 4;
        let rest = line[start..].trim_start_matches('"');
        Some(&rest[..rest.find(['"', ','])?])
    };
    Some(Row {
        name: field("name")?.to_string(),
        unit: field("unit")?.to_string(),
        ours: field("ours")?.parse().ok()?,
    })
}
