//! How loud the runtime is about what happens: which level each event and refusal is logged at,
//! and a limit on warnings about one peer.
//!
//! Operator actions and changes of state (a first publish, a withdrawal, a join, a peer lost, a
//! refusal) are INFO or WARN; routine repetition (republishes, peers added, lookups, re-joins of a
//! node that still has peers) is DEBUG. A peer that keeps failing or misbehaving is warned about at
//! most once per [`WARN_INTERVAL`], with the number of warnings held back since the last one; the
//! rest go to DEBUG.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use macula_dht::dht::{Event, Trouble};
use macula_dht::wire::ErrorReason;
use macula_dht::Time;
use tracing::Level;

/// At most one warning per peer this often.
pub(super) const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Peers [`PeerWarnings`] keeps track of at once.
pub(super) const MAX_WARNED_PEERS: usize = 1024;

/// Logs through `tracing` at a level chosen at run time (`tracing`'s macros take a constant one).
macro_rules! log_at {
    ($level:expr, $($rest:tt)+) => {
        match $level {
            tracing::Level::ERROR => tracing::error!($($rest)+),
            tracing::Level::WARN => tracing::warn!($($rest)+),
            tracing::Level::INFO => tracing::info!($($rest)+),
            tracing::Level::DEBUG => tracing::debug!($($rest)+),
            _ => tracing::trace!($($rest)+),
        }
    };
}
pub(super) use log_at;

/// The level an event of the node is logged at.
pub(super) fn event_level(event: &Event) -> Level {
    match event {
        Event::PeerDown(_)
        | Event::Withdrawn { .. }
        | Event::Joined { .. }
        | Event::Published {
            republish: false, ..
        } => Level::INFO,
        Event::Trouble(Trouble::RepublishFailed { .. })
        | Event::Trouble(Trouble::RejoinFailed { peers: 0, .. }) => Level::WARN,
        Event::PeerUp(_)
        | Event::Lookup(_)
        | Event::Published {
            republish: true, ..
        }
        | Event::Trouble(Trouble::RejoinFailed { .. })
        | Event::Trouble(Trouble::HandOffStopped { .. }) => Level::DEBUG,
    }
}

/// The level a request refused with `reason` (by this node or by a peer) is logged at: WARN
/// (limited per peer) for what points at a misbehaving or incompatible peer, DEBUG for the races
/// that copies of one record run into as a matter of course (an older sequence arriving after a
/// newer one, a copy arriving after its removal).
pub(super) fn refusal_level(reason: ErrorReason) -> Level {
    match reason {
        ErrorReason::Stale | ErrorReason::Removed => Level::DEBUG,
        _ => Level::WARN,
    }
}

/// Which peers were warned about of late, to warn about each at most once per interval. Holds at
/// most `capacity` peers: when it is full of peers warned about within the interval, a new peer
/// is not warned about either, so that many addresses cannot flood the log.
#[derive(Debug)]
pub(super) struct PeerWarnings {
    interval: Duration,
    capacity: usize,
    peers: HashMap<SocketAddr, Warned>,
}

#[derive(Debug)]
struct Warned {
    at: Time,
    /// Warnings held back since.
    held_back: u64,
}

impl PeerWarnings {
    pub(super) fn new(interval: Duration, capacity: usize) -> PeerWarnings {
        PeerWarnings {
            interval,
            capacity,
            peers: HashMap::new(),
        }
    }

    /// Whether a warning about `peer` may be logged `now`: `Some(held_back)` with the number of
    /// warnings about it held back since the last one, or `None` to hold this one back.
    pub(super) fn admit(&mut self, peer: SocketAddr, now: Time) -> Option<u64> {
        let interval = self.interval;
        if let Some(warned) = self.peers.get_mut(&peer) {
            if now.since(warned.at) < interval {
                warned.held_back += 1;
                return None;
            }
            warned.at = now;
            return Some(std::mem::take(&mut warned.held_back));
        }
        if self.peers.len() >= self.capacity {
            self.peers.retain(|_, w| now.since(w.at) < interval);
            if self.peers.len() >= self.capacity {
                return None;
            }
        }
        self.peers.insert(
            peer,
            Warned {
                at: now,
                held_back: 0,
            },
        );
        Some(0)
    }

    /// Peers kept track of.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use macula_dht::dht::{PublishError, Published};
    use macula_dht::wire::NodeInfo;
    use macula_dht::NodeId;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn secs(s: u64) -> Time {
        Time::from_millis(s * 1000)
    }

    fn published(republish: bool) -> Event {
        Event::Published {
            service: "calc".into(),
            outcome: Published {
                key: "01".into(),
                targets: 3,
                acked: 3,
            },
            republish,
        }
    }

    #[test]
    fn a_first_publish_is_info_and_a_republish_debug() {
        assert_eq!(event_level(&published(false)), Level::INFO);
        assert_eq!(event_level(&published(true)), Level::DEBUG);
    }

    #[test]
    fn changes_of_state_are_info_or_warn_and_routine_is_debug() {
        let peer = NodeInfo {
            id: NodeId([7; 32]),
            addr: addr(1),
        };
        let rejoin = |peers| {
            Event::Trouble(Trouble::RejoinFailed {
                detail: "timed out".into(),
                retry_in: Duration::from_secs(1),
                peers,
            })
        };
        assert_eq!(event_level(&Event::PeerDown(peer)), Level::INFO);
        assert_eq!(event_level(&Event::Joined { peers: 4 }), Level::INFO);
        assert_eq!(event_level(&Event::PeerUp(peer)), Level::DEBUG);
        assert_eq!(event_level(&rejoin(0)), Level::WARN, "not joined at all");
        assert_eq!(event_level(&rejoin(3)), Level::DEBUG, "still has peers");
        let republish = Event::Trouble(Trouble::RepublishFailed {
            service: "calc".into(),
            error: PublishError::NoNodeId,
        });
        assert_eq!(event_level(&republish), Level::WARN);
    }

    #[test]
    fn refusals_that_point_at_a_peer_warn_and_races_do_not() {
        assert_eq!(refusal_level(ErrorReason::Forged), Level::WARN);
        assert_eq!(refusal_level(ErrorReason::RateLimited), Level::WARN);
        assert_eq!(refusal_level(ErrorReason::Malformed), Level::WARN);
        assert_eq!(refusal_level(ErrorReason::Stale), Level::DEBUG);
        assert_eq!(refusal_level(ErrorReason::Removed), Level::DEBUG);
    }

    #[test]
    fn one_warning_per_peer_per_interval_with_the_count_held_back() {
        let mut warnings = PeerWarnings::new(Duration::from_secs(60), 16);
        assert_eq!(warnings.admit(addr(1), secs(0)), Some(0));
        assert_eq!(warnings.admit(addr(1), secs(1)), None);
        assert_eq!(warnings.admit(addr(1), secs(59)), None);
        assert_eq!(warnings.admit(addr(2), secs(30)), Some(0), "another peer");
        assert_eq!(warnings.admit(addr(1), secs(60)), Some(2), "two held back");
        assert_eq!(warnings.admit(addr(1), secs(61)), None);
        assert_eq!(warnings.admit(addr(1), secs(200)), Some(1));
    }

    #[test]
    fn the_map_is_bounded_and_a_full_one_of_recent_peers_holds_new_warnings_back() {
        let mut warnings = PeerWarnings::new(Duration::from_secs(60), 3);
        for port in 1..=3 {
            assert_eq!(warnings.admit(addr(port), secs(port.into())), Some(0));
        }
        assert_eq!(
            warnings.admit(addr(4), secs(10)),
            None,
            "full of recent peers"
        );
        assert_eq!(warnings.len(), 3);
        // Once the first ones are past the interval they make room.
        assert_eq!(warnings.admit(addr(4), secs(62)), Some(0));
        assert_eq!(warnings.len(), 2, "peers 1 and 2 dropped, 3 and 4 kept");
        assert_eq!(
            warnings.admit(addr(3), secs(62)),
            None,
            "still within its interval"
        );
    }
}
