//! One DHT node inside the BEAM: the engine's routing table and provider store behind locks, so
//! that any process can read on its own scheduler while writes serialise only on the data they touch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use macula_dht::store::{ProviderStore, StoreLimits};
use macula_dht::table::{RoutingTable, TableConfig};
use macula_dht::NodeId;
use parking_lot::RwLock;
use rustler::{Env, LocalPid, Monitor, Resource};

use crate::read_cache::ReadCache;

/// NodeInfo maps as stored in the table: their ETF bytes without the version byte.
pub type NodeInfoBytes = Box<[u8]>;

pub struct Node {
    pub table: RwLock<RoutingTable<NodeInfoBytes>>,
    pub store: RwLock<ProviderStore>,
    /// Decoded lists of hot keys. Lock order: `store`, then `read_cache`.
    pub read_cache: RwLock<ReadCache>,
    started: Instant,
    /// Set when the owning server process dies, so callers holding the handle see it gone
    /// (as they would with a dead gen_server) instead of a store nobody maintains.
    closed: AtomicBool,
}

#[rustler::resource_impl]
impl Resource for Node {
    const IMPLEMENTS_DOWN: bool = true;

    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _monitor: Monitor) {
        self.close();
    }
}

impl Node {
    pub fn new(local: NodeId, table: TableConfig, limits: StoreLimits, read_cache: usize) -> Self {
        Node {
            table: RwLock::new(RoutingTable::new(local, table)),
            store: RwLock::new(ProviderStore::new(limits)),
            read_cache: RwLock::new(ReadCache::new(read_cache)),
            started: Instant::now(),
            closed: AtomicBool::new(false),
        }
    }

    /// Monotonic milliseconds: the engine's clock for record expiry.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Wall-clock milliseconds, the unit of a NodeInfo's `last_seen`.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
