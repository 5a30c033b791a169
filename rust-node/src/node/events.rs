//! What a node tells its host as it runs: peers entering and leaving the routing table, and
//! every lookup's outcome; plus the window of recent lookup durations behind the node's
//! latency percentiles.
//!
//! Events are delivered by calling the host's sink on the runtime thread that saw them, so a
//! sink must be quick and must not block (the NIF's sends one message to an Erlang process).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use macula_dht::wire::NodeInfo;
use macula_dht::{Inserted, NodeId, Removed};

use super::Shared;

/// Receives a node's events.
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A peer entered the routing table.
    PeerUp(NodeInfo),
    /// A peer left the routing table (it stopped answering).
    PeerDown(NodeInfo),
    Lookup(LookupSummary),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupKind {
    FindNode,
    FindValue,
}

impl LookupKind {
    pub fn name(self) -> &'static str {
        match self {
            LookupKind::FindNode => "find_node",
            LookupKind::FindValue => "find_value",
        }
    }
}

/// The outcome of one lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupSummary {
    pub kind: LookupKind,
    pub target: NodeId,
    pub providers: usize,
    pub queried: usize,
    pub failed: usize,
    pub hops: u32,
    pub elapsed: Duration,
    pub timed_out: bool,
}

/// Lookup durations kept for the percentiles.
const LATENCY_WINDOW: usize = 1024;

/// The most recent lookup durations, in microseconds.
#[derive(Debug, Default)]
pub(super) struct LookupLatencies(VecDeque<u64>);

impl LookupLatencies {
    pub(super) fn record(&mut self, elapsed: Duration) {
        if self.0.len() == LATENCY_WINDOW {
            self.0.pop_front();
        }
        self.0
            .push_back(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    /// (p50, p99) of the window; zeros when no lookup ran yet.
    pub(super) fn percentiles_us(&self) -> (u64, u64) {
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

impl Shared {
    pub(super) fn emit(&self, event: Event) {
        if let Some(sink) = &self.events {
            sink(event);
        }
    }

    /// Puts a peer that answered in the table, telling the host when it is new there.
    pub(super) fn table_insert(&self, id: NodeId, addr: SocketAddr) -> Inserted {
        let inserted = self.table.lock().insert(id, addr);
        if inserted == Inserted::Added {
            self.emit(Event::PeerUp(NodeInfo { id, addr }));
        }
        inserted
    }

    /// Takes a peer out of the table, telling the host it left and which replacement, if any,
    /// took its slot. Returns whether it was in a bucket.
    pub(super) fn table_remove(&self, id: &NodeId) -> bool {
        let (addr, removed, promoted) = {
            let mut table = self.table.lock();
            let addr = table.get(id).copied();
            let removed = table.remove(id);
            let promoted = match removed {
                Removed::Node {
                    promoted: Some(next),
                } => table.get(&next).map(|addr| NodeInfo {
                    id: next,
                    addr: *addr,
                }),
                _ => None,
            };
            (addr, removed, promoted)
        };
        if let (Some(addr), Removed::Node { .. }) = (addr, removed) {
            self.emit(Event::PeerDown(NodeInfo { id: *id, addr }));
        }
        if let Some(info) = promoted {
            self.emit(Event::PeerUp(info));
        }
        matches!(removed, Removed::Node { .. })
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
