//! What a node tells its host as it runs, and the window of recent lookup durations behind its
//! latency percentiles.

use std::collections::VecDeque;
use std::time::Duration;

use super::{PublishError, Published};
use crate::time::micros;
use crate::wire::NodeInfo;
use crate::NodeId;

/// Something the host may want to show, log or count. Carrying it out is never required: the
/// node's behaviour does not depend on what the host does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A peer entered the routing table.
    PeerUp(NodeInfo),
    /// A peer left the routing table (it stopped answering).
    PeerDown(NodeInfo),
    /// A lookup ended.
    Lookup(LookupSummary),
    /// A service's provider record was stored here and sent to the closest nodes.
    Published {
        /// The service's name.
        service: String,
        /// What the STOREs reached.
        outcome: Published,
        /// Published again by the node itself, not at a caller's request.
        republish: bool,
    },
    /// A service was withdrawn: its record removed here and REMOVE sent to every copy.
    Withdrawn {
        /// The service's name.
        service: String,
        /// What the REMOVEs reached.
        outcome: Published,
    },
    /// A bootstrap (or a re-join through the bootstrap nodes) filled the routing table.
    Joined {
        /// Nodes in the table afterwards.
        peers: usize,
    },
    /// Background work went wrong; the node carries on. Also counted in the node's stats.
    Trouble(Trouble),
}

/// Background work that went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trouble {
    /// The local store refused a republished record; the next republish tries again.
    RepublishFailed {
        /// The service's name.
        service: String,
        /// Why it was refused.
        error: PublishError,
    },
    /// A re-join through the bootstrap nodes found none of them answering.
    RejoinFailed {
        /// The last error seen.
        detail: String,
        /// When the next re-join runs.
        retry_in: Duration,
        /// Nodes in the table (none: the node has not joined any network yet).
        peers: usize,
    },
    /// A hand-off to a newcomer stopped at a failed STORE; the newcomer gets the rest when the
    /// records are published again.
    HandOffStopped {
        /// The newcomer.
        peer: NodeInfo,
        /// Why the STORE failed.
        detail: String,
    },
}

/// Which kind of lookup ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupKind {
    /// The closest nodes to an id.
    FindNode,
    /// The providers stored under a key.
    FindValue,
}

impl LookupKind {
    /// `find_node` or `find_value`.
    pub fn name(self) -> &'static str {
        match self {
            LookupKind::FindNode => "find_node",
            LookupKind::FindValue => "find_value",
        }
    }
}

/// The outcome of one lookup, in figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupSummary {
    /// Which kind of lookup.
    pub kind: LookupKind,
    /// The id looked up (for a key, its normalised id).
    pub target: NodeId,
    /// Distinct providers found.
    pub providers: usize,
    /// Queries sent.
    pub queried: usize,
    /// Queries answered.
    pub answered: usize,
    /// Queries that failed or timed out.
    pub failed: usize,
    /// Longest chain of answers that led to a queried peer.
    pub hops: u32,
    /// From start to end, on the host's clock.
    pub elapsed: Duration,
    /// It hit the lookup timeout and ended with what it had.
    pub timed_out: bool,
}

/// Lookup durations kept for the percentiles.
const LATENCY_WINDOW: usize = 1024;

/// The most recent lookup durations, in microseconds.
#[derive(Debug, Default)]
pub(crate) struct LookupLatencies(VecDeque<u64>);

impl LookupLatencies {
    pub(crate) fn record(&mut self, elapsed: Duration) {
        if self.0.len() == LATENCY_WINDOW {
            self.0.pop_front();
        }
        self.0.push_back(micros(elapsed));
    }

    /// (p50, p99) of the window; zeros when no lookup ran yet.
    pub(crate) fn percentiles_us(&self) -> (u64, u64) {
        let mut sorted: Vec<u64> = self.0.iter().copied().collect();
        sorted.sort_unstable();
        let at = |q: usize| {
            sorted
                .get((sorted.len().saturating_sub(1)) * q / 100)
                .copied()
                .unwrap_or(0)
        };
        (at(50), at(99))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_most_recent_window() {
        let mut window = LookupLatencies::default();
        assert_eq!(window.percentiles_us(), (0, 0));
        for us in 1..=100 {
            window.record(Duration::from_micros(us));
        }
        assert_eq!(window.percentiles_us(), (50, 99));
        for _ in 0..LATENCY_WINDOW {
            window.record(Duration::from_micros(7));
        }
        assert_eq!(window.percentiles_us(), (7, 7));
    }
}
