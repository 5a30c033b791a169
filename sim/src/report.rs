//! What a scenario measured: one sample per lookup, and the figures drawn from them.

use std::time::Duration;

use crate::NetStats;

/// One provider lookup (FIND_VALUE run to the end) of a service with live providers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSample {
    /// Every live, published provider of the service was found.
    pub found_all: bool,
    /// At least one of them was found.
    pub found_one: bool,
    /// Longest chain of answers the lookup followed.
    pub hops: u32,
    /// Hops to the peer that brought the first provider (else to the closest that answered).
    pub path_hops: u32,
    /// Requests the lookup sent.
    pub messages: usize,
    /// Virtual time from start to end.
    pub elapsed: Duration,
    /// Virtual time until the first live provider arrived.
    pub first_provider: Option<Duration>,
    /// The lookup hit its timeout and ended with what it had.
    pub timed_out: bool,
    /// Of the live providers it missed, how long before the lookup the latest one's publish
    /// ended (to tell a record not yet where lookups look from one lost).
    pub youngest_missed: Option<Duration>,
}

/// One node lookup (FIND_NODE of a random id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSample {
    /// Of the `k` closest live nodes to the target, how many the lookup returned.
    pub recalled: usize,
    /// `k`, or fewer in a network smaller than `k`.
    pub truth: usize,
    /// Longest chain of answers the lookup followed.
    pub hops: u32,
    /// Hops to the closest peer that answered.
    pub path_hops: u32,
    /// Requests the lookup sent.
    pub messages: usize,
    /// Virtual time from start to end.
    pub elapsed: Duration,
}

/// Everything one scenario run measured. Two runs with one seed give equal reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The scenario's name.
    pub name: String,
    /// Nodes running at the start of the measured period.
    pub nodes: usize,
    /// The median round-trip time the latencies are measured against.
    pub median_rtt: Duration,
    /// Provider lookups, in start order.
    pub provider_lookups: Vec<ProviderSample>,
    /// Node lookups, in start order.
    pub node_lookups: Vec<NodeSample>,
    /// Lookups whose node left before they ended (no sample).
    pub abandoned: usize,
    /// Nodes that left during the measured period (each replaced by a new one).
    pub departures: usize,
    /// What crossed the network over the whole run.
    pub net: NetStats,
    /// Virtual time at the end.
    pub virtual_time: Duration,
}

impl Report {
    /// The figures of a run on one line: success, hops, recall, messages, latency to the first
    /// provider, churn.
    pub fn summary(&self) -> String {
        format!(
            "success all {:.2} % one {:.2} %, path hops p50 {} p99 {} (longest chain p50 {} p99 \
             {}), recall {:.2} %, {:.1} messages/lookup, first provider p50 {:.2} RTTs, {} \
             departures, {} abandoned",
            self.success_all_pct(),
            self.success_one_pct(),
            self.path_hops_quantile(0.5),
            self.path_hops_quantile(0.99),
            self.hops_quantile(0.5),
            self.hops_quantile(0.99),
            self.replica_recall_pct(),
            self.messages_per_lookup(),
            sorted_quantile(&self.first_provider_rtts(), 0.5),
            self.departures,
            self.abandoned,
        )
    }

    /// Percent of provider lookups that found every live provider.
    pub fn success_all_pct(&self) -> f64 {
        percent(
            self.provider_lookups.iter().filter(|s| s.found_all).count(),
            self.provider_lookups.len(),
        )
    }

    /// Percent of provider lookups that found at least one live provider.
    pub fn success_one_pct(&self) -> f64 {
        percent(
            self.provider_lookups.iter().filter(|s| s.found_one).count(),
            self.provider_lookups.len(),
        )
    }

    /// Percent of the true `k` closest live nodes that node lookups returned, over all of them.
    pub fn replica_recall_pct(&self) -> f64 {
        let recalled = self.node_lookups.iter().map(|s| s.recalled).sum();
        percent(recalled, self.node_lookups.iter().map(|s| s.truth).sum())
    }

    /// The `q`-quantile of the longest chain of answers over every lookup of either kind.
    pub fn hops_quantile(&self, q: f64) -> u32 {
        self.quantile_over_lookups(q, |s| s.hops, |s| s.hops)
    }

    /// The `q`-quantile of path hops (to the first provider, or to the closest node) over every
    /// lookup of either kind.
    pub fn path_hops_quantile(&self, q: f64) -> u32 {
        self.quantile_over_lookups(q, |s| s.path_hops, |s| s.path_hops)
    }

    fn quantile_over_lookups(
        &self,
        q: f64,
        provider: fn(&ProviderSample) -> u32,
        node: fn(&NodeSample) -> u32,
    ) -> u32 {
        let all = self.provider_lookups.iter().map(provider);
        quantile(all.chain(self.node_lookups.iter().map(node)).collect(), q).unwrap_or(0)
    }

    /// Mean requests sent per lookup, over every lookup of either kind.
    pub fn messages_per_lookup(&self) -> f64 {
        let provider = self.provider_lookups.iter().map(|s| s.messages);
        let sent: usize = provider
            .chain(self.node_lookups.iter().map(|s| s.messages))
            .sum();
        let lookups = self.provider_lookups.len() + self.node_lookups.len();
        sent as f64 / lookups.max(1) as f64
    }

    /// Virtual latencies until the first provider, in median round-trip times, sorted (lookups
    /// that found none are left out).
    pub fn first_provider_rtts(&self) -> Vec<f64> {
        let found = self
            .provider_lookups
            .iter()
            .filter_map(|s| s.first_provider);
        self.in_rtts(found)
    }

    /// Virtual latencies of whole provider lookups, in median round-trip times, sorted.
    pub fn full_lookup_rtts(&self) -> Vec<f64> {
        self.in_rtts(self.provider_lookups.iter().map(|s| s.elapsed))
    }

    fn in_rtts(&self, latencies: impl Iterator<Item = Duration>) -> Vec<f64> {
        let median = self.median_rtt.as_secs_f64();
        let mut rtts: Vec<f64> = latencies.map(|d| d.as_secs_f64() / median).collect();
        rtts.sort_by(f64::total_cmp);
        rtts
    }
}

/// The `q`-quantile (nearest rank) of `values`; `None` when empty.
pub fn quantile<T: Copy + Ord>(mut values: Vec<T>, q: f64) -> Option<T> {
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len().max(1));
    values.get(rank - 1).copied()
}

/// The `q`-quantile (nearest rank) of sorted `values`; 0 when empty.
pub fn sorted_quantile(values: &[f64], q: f64) -> f64 {
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len().max(1));
    values.get(rank - 1).copied().unwrap_or(0.0)
}

fn percent(part: usize, whole: usize) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        assert_eq!(quantile((1..=100).collect(), 0.99), Some(99));
        assert_eq!(quantile(vec![3, 1, 2], 0.5), Some(2));
        assert_eq!(quantile(Vec::<u32>::new(), 0.5), None);
        assert_eq!(sorted_quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
    }
}
